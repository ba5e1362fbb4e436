//! Interface options: a builder, its validation, and the exact `interface_desc` dictionary it
//! produces (portable: built and tested on every host).
//!
//! [`Options::descriptor`] returns the dictionary as a list of ([`Key`], [`Value`]) pairs, so what
//! would be handed to `vmnet_start_interface` can be checked without a Mac; on macOS the blocking
//! API turns that list into an xpc dictionary one entry at a time.
//!
//! The rules enforced here come from the key documentation in `<vmnet/vmnet.h>`:
//!
//! - bridged mode needs `vmnet_shared_interface_name_key`, and "specifying the MTU in the
//!   interface_desc dictionary [in bridged mode] results in an error";
//! - the DHCP start, end and mask "must be specified along with" each other, and are "in the
//!   private IP range (RFC 1918)";
//! - `vmnet_network_identifier_key` "is only applicable to a vmnet_interface in VMNET_HOST_MODE",
//!   and "no DHCP service is provided on this network"; the host address keys are "only
//!   applicable if vmnet_network_identifier_key is also specified";
//! - the NAT66 prefix is for `VMNET_SHARED_MODE` and "must be a ULA i.e. start with fd00::/8".
//!
//! Two rules are this crate's own: the MTU range (the framework documents none), and TSO only with
//! checksum offload (a segmented TCP frame carries a partial checksum, and virtio-net likewise
//! makes its TSO features depend on the checksum ones).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The smallest MTU accepted: IPv6's minimum link MTU (RFC 8200), since every mode carries IPv6.
pub const MIN_MTU: u32 = 1280;

/// The largest MTU accepted. vmnet documents no limit; this bound is the largest MTU macOS
/// configures on its bridge and feth interfaces, so the guest cannot be promised more.
pub const MAX_MTU: u32 = 16384;

/// The longest interface name (`IFNAMSIZ` 16 minus the terminating NUL).
pub const MAX_INTERFACE_NAME: usize = 15;

/// The operating mode of an interface (`operating_modes_t`).
///
/// ```
/// assert_eq!(vmnet::Mode::Shared.raw(), 1001);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[doc(alias = "operating_modes_t")]
pub enum Mode {
    /// `VMNET_HOST_MODE` (1000): talk to the host and to other host-mode interfaces.
    Host,
    /// `VMNET_SHARED_MODE` (1001): NAT to the outside, DHCP and DNS from the host.
    Shared,
    /// `VMNET_BRIDGED_MODE` (1002, macOS 10.15): bridged to a physical interface.
    Bridged,
}

impl Mode {
    /// The raw `operating_modes_t` value.
    ///
    /// ```
    /// assert_eq!(vmnet::Mode::Bridged.raw(), 1002);
    /// ```
    pub const fn raw(self) -> u32 {
        match self {
            Mode::Host => 1000,
            Mode::Shared => 1001,
            Mode::Bridged => 1002,
        }
    }

    /// The C name of the constant.
    ///
    /// ```
    /// assert_eq!(vmnet::Mode::Host.name(), "VMNET_HOST_MODE");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Host => "VMNET_HOST_MODE",
            Mode::Shared => "VMNET_SHARED_MODE",
            Mode::Bridged => "VMNET_BRIDGED_MODE",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Host => "host",
            Mode::Shared => "shared",
            Mode::Bridged => "bridged",
        })
    }
}

/// A key of the `interface_desc` dictionary.
///
/// ```
/// use vmnet::options::Key;
///
/// assert_eq!(Key::OperationMode.c_name(), "vmnet_operation_mode_key");
/// assert_eq!(Key::EnableChecksumOffload.since(), "12.0");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// `vmnet_operation_mode_key` (uint64).
    OperationMode,
    /// `vmnet_shared_interface_name_key` (string).
    SharedInterfaceName,
    /// `vmnet_interface_id_key` (uuid).
    InterfaceId,
    /// `vmnet_allocate_mac_address_key` (bool).
    AllocateMacAddress,
    /// `vmnet_start_address_key` (string).
    StartAddress,
    /// `vmnet_end_address_key` (string).
    EndAddress,
    /// `vmnet_subnet_mask_key` (string).
    SubnetMask,
    /// `vmnet_mtu_key` (uint64).
    Mtu,
    /// `vmnet_enable_isolation_key` (bool).
    EnableIsolation,
    /// `vmnet_network_identifier_key` (uuid).
    NetworkIdentifier,
    /// `vmnet_host_ip_address_key` (string).
    HostIpAddress,
    /// `vmnet_host_subnet_mask_key` (string).
    HostSubnetMask,
    /// `vmnet_host_ipv6_address_key` (string).
    HostIpv6Address,
    /// `vmnet_nat66_prefix_key` (string).
    Nat66Prefix,
    /// `vmnet_enable_tso_key` (bool).
    EnableTso,
    /// `vmnet_enable_checksum_offload_key` (bool).
    EnableChecksumOffload,
    /// `vmnet_enable_virtio_header_key` (bool).
    EnableVirtioHeader,
}

impl Key {
    /// The C name of the key's global.
    ///
    /// ```
    /// assert_eq!(vmnet::options::Key::Mtu.c_name(), "vmnet_mtu_key");
    /// ```
    pub const fn c_name(self) -> &'static str {
        match self {
            Key::OperationMode => "vmnet_operation_mode_key",
            Key::SharedInterfaceName => "vmnet_shared_interface_name_key",
            Key::InterfaceId => "vmnet_interface_id_key",
            Key::AllocateMacAddress => "vmnet_allocate_mac_address_key",
            Key::StartAddress => "vmnet_start_address_key",
            Key::EndAddress => "vmnet_end_address_key",
            Key::SubnetMask => "vmnet_subnet_mask_key",
            Key::Mtu => "vmnet_mtu_key",
            Key::EnableIsolation => "vmnet_enable_isolation_key",
            Key::NetworkIdentifier => "vmnet_network_identifier_key",
            Key::HostIpAddress => "vmnet_host_ip_address_key",
            Key::HostSubnetMask => "vmnet_host_subnet_mask_key",
            Key::HostIpv6Address => "vmnet_host_ipv6_address_key",
            Key::Nat66Prefix => "vmnet_nat66_prefix_key",
            Key::EnableTso => "vmnet_enable_tso_key",
            Key::EnableChecksumOffload => "vmnet_enable_checksum_offload_key",
            Key::EnableVirtioHeader => "vmnet_enable_virtio_header_key",
        }
    }

    /// The first macOS release whose SDK declares the key (`API_AVAILABLE` in the header, or
    /// Apple's documentation for keys newer than the header copies we checked).
    ///
    /// ```
    /// assert_eq!(vmnet::options::Key::EnableVirtioHeader.since(), "15.4");
    /// ```
    pub const fn since(self) -> &'static str {
        match self {
            Key::OperationMode | Key::InterfaceId | Key::Mtu => "10.10",
            Key::SharedInterfaceName
            | Key::AllocateMacAddress
            | Key::StartAddress
            | Key::EndAddress
            | Key::SubnetMask
            | Key::Nat66Prefix => "10.15",
            Key::EnableIsolation
            | Key::NetworkIdentifier
            | Key::HostIpAddress
            | Key::HostSubnetMask
            | Key::HostIpv6Address
            | Key::EnableTso => "11.0",
            Key::EnableChecksumOffload => "12.0",
            Key::EnableVirtioHeader => "15.4",
        }
    }
}

/// A typed xpc value of the dictionary.
///
/// ```
/// use vmnet::options::Value;
///
/// assert_eq!(Value::U64(1001), Value::U64(1001));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `xpc_dictionary_set_uint64`.
    U64(u64),
    /// `xpc_dictionary_set_string`.
    Str(String),
    /// `xpc_dictionary_set_bool`.
    Bool(bool),
    /// `xpc_dictionary_set_uuid`.
    Uuid([u8; 16]),
}

/// The DHCP pool of a shared or host interface.
///
/// `start` is also the gateway (the host's address); vmnet hands out the addresses after it up
/// to and including `end`.
///
/// ```
/// use std::net::Ipv4Addr;
/// use vmnet::options::DhcpRange;
///
/// let r = DhcpRange::new(
///     Ipv4Addr::new(192, 168, 105, 1),
///     Ipv4Addr::new(192, 168, 105, 254),
///     Ipv4Addr::new(255, 255, 255, 0),
/// );
/// assert!(r.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhcpRange {
    /// The first address: the gateway.
    pub start: Ipv4Addr,
    /// The last address of the pool.
    pub end: Ipv4Addr,
    /// The subnet mask.
    pub mask: Ipv4Addr,
}

impl DhcpRange {
    /// A range from its three addresses.
    ///
    /// ```
    /// # use std::net::Ipv4Addr;
    /// let r = vmnet::options::DhcpRange::new(
    ///     Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::new(255, 0, 0, 0));
    /// assert_eq!(r.start, Ipv4Addr::new(10, 0, 0, 1));
    /// ```
    pub const fn new(start: Ipv4Addr, end: Ipv4Addr, mask: Ipv4Addr) -> Self {
        Self { start, end, mask }
    }

    /// Checks the range: contiguous mask, private addresses, both in one subnet, start before
    /// end, neither the subnet's network nor broadcast address.
    ///
    /// ```
    /// # use std::net::Ipv4Addr;
    /// use vmnet::options::{DhcpRange, OptionsError};
    ///
    /// let outside = DhcpRange::new(
    ///     Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(192, 168, 2, 9),
    ///     Ipv4Addr::new(255, 255, 255, 0));
    /// assert!(matches!(outside.validate(), Err(OptionsError::DhcpOutsideSubnet { .. })));
    /// ```
    pub fn validate(&self) -> Result<(), OptionsError> {
        let mask = u32::from(self.mask);
        if !is_contiguous_mask(mask) || mask == 0 || mask == u32::MAX {
            return Err(OptionsError::BadMask { mask: self.mask });
        }
        for addr in [self.start, self.end] {
            if !addr.is_private() {
                return Err(OptionsError::DhcpNotPrivate { addr });
            }
        }
        let (start, end) = (u32::from(self.start), u32::from(self.end));
        if start & mask != end & mask {
            return Err(OptionsError::DhcpOutsideSubnet {
                start: self.start,
                end: self.end,
                mask: self.mask,
            });
        }
        if start >= end {
            return Err(OptionsError::DhcpStartNotBelowEnd {
                start: self.start,
                end: self.end,
            });
        }
        for addr in [start, end] {
            let host = addr & !mask;
            if host == 0 || host == !mask {
                return Err(OptionsError::NetworkOrBroadcast {
                    addr: Ipv4Addr::from(addr),
                });
            }
        }
        Ok(())
    }
}

/// Whether `mask` is a run of ones followed by a run of zeros.
fn is_contiguous_mask(mask: u32) -> bool {
    mask.leading_ones() + mask.trailing_zeros() == 32
}

/// Why options were refused.
///
/// ```
/// use vmnet::{Mode, Options, options::OptionsError};
///
/// let err = Options::new(Mode::Bridged).validate().unwrap_err();
/// assert_eq!(err, OptionsError::BridgedWithoutInterface);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// Bridged mode without `vmnet_shared_interface_name_key`.
    #[error("bridged mode needs the name of the physical interface to bridge to (for example en0)")]
    BridgedWithoutInterface,
    /// An interface name given outside bridged mode.
    #[error("an interface to bridge to only makes sense in bridged mode, not {mode} mode")]
    InterfaceOutsideBridged {
        /// The mode asked for.
        mode: Mode,
    },
    /// An interface name that cannot be one.
    #[error("interface name {name:?} is invalid: {reason}")]
    BadInterfaceName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// An MTU in bridged mode.
    #[error("bridged mode takes the physical interface's MTU; vmnet refuses an MTU there")]
    MtuInBridgedMode,
    /// An MTU outside [`MIN_MTU`]..=[`MAX_MTU`].
    #[error("MTU {mtu} is outside {min}..={max}")]
    MtuOutOfRange {
        /// The MTU asked for.
        mtu: u32,
        /// [`MIN_MTU`].
        min: u32,
        /// [`MAX_MTU`].
        max: u32,
    },
    /// A DHCP range in bridged mode.
    #[error("bridged mode has no vmnet DHCP service: the physical network assigns addresses")]
    DhcpInBridgedMode,
    /// A subnet mask that is not a contiguous prefix of 1 to 31 bits.
    #[error("subnet mask {mask} is not a contiguous prefix of 1 to 31 bits")]
    BadMask {
        /// The mask.
        mask: Ipv4Addr,
    },
    /// A DHCP address outside RFC 1918.
    #[error("DHCP address {addr} is not a private (RFC 1918) address, which vmnet requires")]
    DhcpNotPrivate {
        /// The address.
        addr: Ipv4Addr,
    },
    /// DHCP start and end in different subnets.
    #[error("DHCP range {start}..{end} does not lie inside one subnet of mask {mask}")]
    DhcpOutsideSubnet {
        /// Start of the range.
        start: Ipv4Addr,
        /// End of the range.
        end: Ipv4Addr,
        /// The mask.
        mask: Ipv4Addr,
    },
    /// DHCP start not below end.
    #[error("DHCP start {start} must be below DHCP end {end}")]
    DhcpStartNotBelowEnd {
        /// Start of the range.
        start: Ipv4Addr,
        /// End of the range.
        end: Ipv4Addr,
    },
    /// An address that is its subnet's network or broadcast address.
    #[error("{addr} is the network or broadcast address of its subnet")]
    NetworkOrBroadcast {
        /// The address.
        addr: Ipv4Addr,
    },
    /// A network identifier outside host mode.
    #[error("a network identifier isolates a host-mode network; it is refused in {mode} mode")]
    NetworkIdentifierOutsideHostMode {
        /// The mode asked for.
        mode: Mode,
    },
    /// A DHCP range with a network identifier.
    #[error("a network identified by vmnet_network_identifier_key has no DHCP service")]
    DhcpWithNetworkIdentifier,
    /// Host addresses without a network identifier.
    #[error("host addresses are only applied with a network identifier")]
    HostAddressWithoutNetworkIdentifier,
    /// A NAT66 prefix outside shared mode.
    #[error("a NAT66 prefix only applies to shared mode, not {mode} mode")]
    Nat66OutsideSharedMode {
        /// The mode asked for.
        mode: Mode,
    },
    /// A NAT66 prefix that is not a ULA.
    #[error("NAT66 prefix {prefix} is not a unique local address (fd00::/8)")]
    Nat66NotUla {
        /// The prefix.
        prefix: Ipv6Addr,
    },
    /// TSO with no way to express partial checksums.
    #[error(
        "TCP segmentation offload needs checksum offload, or the virtio-net header that carries it"
    )]
    TsoWithoutChecksumOffload,
    /// Both the virtio-net header and vmnet's checksum offload: Apple's documentation of
    /// `vmnet_enable_virtio_header_key` forbids the combination (the header carries the checksum
    /// state itself).
    #[error("the virtio-net header and checksum offload cannot be enabled together")]
    VirtioHeaderWithChecksumOffload,
    /// An option that belongs to the network, given for an interface joining a network.
    #[error("{key} is a property of the network, not of an interface started on it")]
    NotForNetworkInterface {
        /// The C name of the key.
        key: &'static str,
    },
}

/// How to start a vmnet interface: the builder of the `interface_desc` dictionary.
///
/// Each setter records one key; keys never set are left out of the dictionary, so the
/// framework's defaults apply. [`validate`](Self::validate) (called by
/// [`descriptor`](Self::descriptor) and by `Interface::start`) refuses contradictory options
/// before any call into the framework.
///
/// ```
/// use std::net::Ipv4Addr;
/// use vmnet::{Mode, Options, options::{Key, Value}};
///
/// let opts = Options::shared()
///     .dhcp_range(
///         Ipv4Addr::new(192, 168, 105, 1),
///         Ipv4Addr::new(192, 168, 105, 254),
///         Ipv4Addr::new(255, 255, 255, 0),
///     )
///     .mtu(1500);
/// let desc = opts.descriptor().unwrap();
/// assert_eq!(desc[0], (Key::OperationMode, Value::U64(1001)));
/// assert!(desc.contains(&(Key::Mtu, Value::U64(1500))));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    mode: Mode,
    interface_name: Option<String>,
    interface_id: Option<[u8; 16]>,
    allocate_mac: Option<bool>,
    dhcp: Option<DhcpRange>,
    mtu: Option<u32>,
    isolation: Option<bool>,
    network_identifier: Option<[u8; 16]>,
    host_address: Option<(Ipv4Addr, Ipv4Addr)>,
    host_ipv6_address: Option<Ipv6Addr>,
    nat66_prefix: Option<Ipv6Addr>,
    tso: Option<bool>,
    checksum_offload: Option<bool>,
    virtio_header: Option<bool>,
}

impl Options {
    /// Options for `mode` with nothing else set.
    ///
    /// ```
    /// let o = vmnet::Options::new(vmnet::Mode::Host);
    /// assert_eq!(o.mode(), vmnet::Mode::Host);
    /// ```
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            interface_name: None,
            interface_id: None,
            allocate_mac: None,
            dhcp: None,
            mtu: None,
            isolation: None,
            network_identifier: None,
            host_address: None,
            host_ipv6_address: None,
            nat66_prefix: None,
            tso: None,
            checksum_offload: None,
            virtio_header: None,
        }
    }

    /// Shared (NAT) mode.
    ///
    /// ```
    /// assert_eq!(vmnet::Options::shared().mode(), vmnet::Mode::Shared);
    /// ```
    pub fn shared() -> Self {
        Self::new(Mode::Shared)
    }

    /// Host-only mode.
    ///
    /// ```
    /// assert_eq!(vmnet::Options::host().mode(), vmnet::Mode::Host);
    /// ```
    pub fn host() -> Self {
        Self::new(Mode::Host)
    }

    /// Bridged mode on the physical interface `interface` (see `vmnet::shared_interface_list`
    /// on macOS for the names that qualify).
    ///
    /// ```
    /// let o = vmnet::Options::bridged("en0");
    /// assert_eq!(o.interface_name(), Some("en0"));
    /// ```
    pub fn bridged(interface: impl Into<String>) -> Self {
        Self::new(Mode::Bridged).interface(interface)
    }

    /// The mode.
    ///
    /// ```
    /// assert_eq!(vmnet::Options::shared().mode(), vmnet::Mode::Shared);
    /// ```
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The bridged interface name, if set.
    ///
    /// ```
    /// assert_eq!(vmnet::Options::shared().interface_name(), None);
    /// ```
    pub fn interface_name(&self) -> Option<&str> {
        self.interface_name.as_deref()
    }

    /// The physical interface to bridge to (`vmnet_shared_interface_name_key`).
    ///
    /// ```
    /// let o = vmnet::Options::new(vmnet::Mode::Bridged).interface("en1");
    /// assert!(o.validate().is_ok());
    /// ```
    #[must_use]
    pub fn interface(mut self, name: impl Into<String>) -> Self {
        self.interface_name = Some(name.into());
        self
    }

    /// A UUID identifying this interface instance (`vmnet_interface_id_key`); the same UUID on a
    /// later start gets the same MAC address.
    ///
    /// ```
    /// let o = vmnet::Options::shared().interface_id([7; 16]);
    /// assert!(o.validate().is_ok());
    /// ```
    #[must_use]
    pub fn interface_id(mut self, uuid: [u8; 16]) -> Self {
        self.interface_id = Some(uuid);
        self
    }

    /// Whether vmnet allocates a MAC address for the guest (`vmnet_allocate_mac_address_key`,
    /// default true).
    ///
    /// ```
    /// let o = vmnet::Options::shared().allocate_mac(false);
    /// assert!(o.validate().is_ok());
    /// ```
    #[must_use]
    pub fn allocate_mac(mut self, allocate: bool) -> Self {
        self.allocate_mac = Some(allocate);
        self
    }

    /// The DHCP pool (`vmnet_start_address_key`, `vmnet_end_address_key`,
    /// `vmnet_subnet_mask_key`, always set together).
    ///
    /// ```
    /// # use std::net::Ipv4Addr;
    /// let o = vmnet::Options::shared().dhcp_range(
    ///     Ipv4Addr::new(10, 1, 2, 1), Ipv4Addr::new(10, 1, 2, 200), Ipv4Addr::new(255, 255, 255, 0));
    /// assert!(o.validate().is_ok());
    /// ```
    #[must_use]
    pub fn dhcp_range(mut self, start: Ipv4Addr, end: Ipv4Addr, mask: Ipv4Addr) -> Self {
        self.dhcp = Some(DhcpRange { start, end, mask });
        self
    }

    /// The interface MTU (`vmnet_mtu_key`; shared and host modes only).
    ///
    /// ```
    /// assert!(vmnet::Options::shared().mtu(9000).validate().is_ok());
    /// assert!(vmnet::Options::shared().mtu(100).validate().is_err());
    /// ```
    #[must_use]
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Isolate this interface from the other vmnet interfaces (`vmnet_enable_isolation_key`,
    /// macOS 11).
    ///
    /// ```
    /// assert!(vmnet::Options::host().isolation(true).validate().is_ok());
    /// ```
    #[must_use]
    pub fn isolation(mut self, enable: bool) -> Self {
        self.isolation = Some(enable);
        self
    }

    /// Put a host-mode interface on the isolated network with this UUID
    /// (`vmnet_network_identifier_key`, macOS 11). Such a network has no DHCP service.
    ///
    /// ```
    /// assert!(vmnet::Options::host().network_identifier([1; 16]).validate().is_ok());
    /// assert!(vmnet::Options::shared().network_identifier([1; 16]).validate().is_err());
    /// ```
    #[must_use]
    pub fn network_identifier(mut self, uuid: [u8; 16]) -> Self {
        self.network_identifier = Some(uuid);
        self
    }

    /// The host's IPv4 address and mask on an identified network (`vmnet_host_ip_address_key`,
    /// `vmnet_host_subnet_mask_key`, macOS 11).
    ///
    /// ```
    /// # use std::net::Ipv4Addr;
    /// let o = vmnet::Options::host()
    ///     .network_identifier([1; 16])
    ///     .host_address(Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(255, 255, 0, 0));
    /// assert!(o.validate().is_ok());
    /// ```
    #[must_use]
    pub fn host_address(mut self, address: Ipv4Addr, mask: Ipv4Addr) -> Self {
        self.host_address = Some((address, mask));
        self
    }

    /// The host's IPv6 address on an identified network (`vmnet_host_ipv6_address_key`,
    /// macOS 11).
    ///
    /// ```
    /// let o = vmnet::Options::host()
    ///     .network_identifier([1; 16])
    ///     .host_ipv6_address("fd00:1::1".parse().unwrap());
    /// assert!(o.validate().is_ok());
    /// ```
    #[must_use]
    pub fn host_ipv6_address(mut self, address: Ipv6Addr) -> Self {
        self.host_ipv6_address = Some(address);
        self
    }

    /// The IPv6 ULA prefix of a shared interface (`vmnet_nat66_prefix_key`); its length is
    /// always 64.
    ///
    /// ```
    /// let o = vmnet::Options::shared().nat66_prefix("fd12:3456:789a:1::".parse().unwrap());
    /// assert!(o.validate().is_ok());
    /// ```
    #[must_use]
    pub fn nat66_prefix(mut self, prefix: Ipv6Addr) -> Self {
        self.nat66_prefix = Some(prefix);
        self
    }

    /// TCP segmentation offload (`vmnet_enable_tso_key`, macOS 11): frames of up to 64 KiB both
    /// ways. Needs [`checksum_offload`](Self::checksum_offload).
    ///
    /// ```
    /// assert!(vmnet::Options::shared().tso(true).checksum_offload(true).validate().is_ok());
    /// assert!(vmnet::Options::shared().tso(true).validate().is_err());
    /// ```
    #[must_use]
    pub fn tso(mut self, enable: bool) -> Self {
        self.tso = Some(enable);
        self
    }

    /// Checksum offload (`vmnet_enable_checksum_offload_key`, macOS 12).
    ///
    /// ```
    /// assert!(vmnet::Options::shared().checksum_offload(true).validate().is_ok());
    /// ```
    #[must_use]
    pub fn checksum_offload(mut self, enable: bool) -> Self {
        self.checksum_offload = Some(enable);
        self
    }

    /// Prefix every packet with a virtio-net header (`vmnet_enable_virtio_header_key`,
    /// macOS 15.4).
    ///
    /// ```
    /// assert!(vmnet::Options::shared().virtio_header(true).validate().is_ok());
    /// ```
    #[must_use]
    pub fn virtio_header(mut self, enable: bool) -> Self {
        self.virtio_header = Some(enable);
        self
    }

    /// Whether TSO was asked for.
    ///
    /// ```
    /// assert!(!vmnet::Options::shared().tso_enabled());
    /// ```
    pub fn tso_enabled(&self) -> bool {
        self.tso == Some(true)
    }

    /// Whether checksum offload was asked for.
    ///
    /// ```
    /// assert!(vmnet::Options::shared().checksum_offload(true).checksum_offload_enabled());
    /// ```
    pub fn checksum_offload_enabled(&self) -> bool {
        self.checksum_offload == Some(true)
    }

    /// Whether the virtio-net header was asked for.
    ///
    /// ```
    /// assert!(!vmnet::Options::shared().virtio_header_enabled());
    /// ```
    pub fn virtio_header_enabled(&self) -> bool {
        self.virtio_header == Some(true)
    }

    /// Refuses contradictory or impossible options, with the reason.
    ///
    /// ```
    /// # use std::net::Ipv4Addr;
    /// use vmnet::options::OptionsError;
    ///
    /// let bad = vmnet::Options::bridged("en0").mtu(1500);
    /// assert_eq!(bad.validate(), Err(OptionsError::MtuInBridgedMode));
    /// ```
    pub fn validate(&self) -> Result<(), OptionsError> {
        match (&self.interface_name, self.mode) {
            (None, Mode::Bridged) => return Err(OptionsError::BridgedWithoutInterface),
            (Some(_), Mode::Host | Mode::Shared) => {
                return Err(OptionsError::InterfaceOutsideBridged { mode: self.mode });
            }
            (Some(name), Mode::Bridged) => validate_interface_name(name)?,
            (None, _) => {}
        }
        if let Some(mtu) = self.mtu {
            if self.mode == Mode::Bridged {
                return Err(OptionsError::MtuInBridgedMode);
            }
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                return Err(OptionsError::MtuOutOfRange {
                    mtu,
                    min: MIN_MTU,
                    max: MAX_MTU,
                });
            }
        }
        if let Some(dhcp) = &self.dhcp {
            if self.mode == Mode::Bridged {
                return Err(OptionsError::DhcpInBridgedMode);
            }
            if self.network_identifier.is_some() {
                return Err(OptionsError::DhcpWithNetworkIdentifier);
            }
            dhcp.validate()?;
        }
        if self.network_identifier.is_some() && self.mode != Mode::Host {
            return Err(OptionsError::NetworkIdentifierOutsideHostMode { mode: self.mode });
        }
        if (self.host_address.is_some() || self.host_ipv6_address.is_some())
            && self.network_identifier.is_none()
        {
            return Err(OptionsError::HostAddressWithoutNetworkIdentifier);
        }
        if let Some((addr, mask)) = self.host_address {
            let m = u32::from(mask);
            if !is_contiguous_mask(m) || m == 0 || m == u32::MAX {
                return Err(OptionsError::BadMask { mask });
            }
            let host = u32::from(addr) & !m;
            if host == 0 || host == !m {
                return Err(OptionsError::NetworkOrBroadcast { addr });
            }
        }
        if let Some(prefix) = self.nat66_prefix {
            if self.mode != Mode::Shared {
                return Err(OptionsError::Nat66OutsideSharedMode { mode: self.mode });
            }
            if prefix.octets()[0] != 0xfd {
                return Err(OptionsError::Nat66NotUla { prefix });
            }
        }
        self.validate_offloads()?;
        Ok(())
    }

    fn validate_offloads(&self) -> Result<(), OptionsError> {
        if self.virtio_header_enabled() && self.checksum_offload_enabled() {
            return Err(OptionsError::VirtioHeaderWithChecksumOffload);
        }
        if self.tso_enabled() && !self.checksum_offload_enabled() && !self.virtio_header_enabled() {
            return Err(OptionsError::TsoWithoutChecksumOffload);
        }
        Ok(())
    }

    /// The `interface_desc` dictionary, validated, as an ordered list of typed entries.
    ///
    /// ```
    /// use vmnet::options::{Key, Value};
    ///
    /// let desc = vmnet::Options::bridged("en0").descriptor().unwrap();
    /// assert_eq!(desc, vec![
    ///     (Key::OperationMode, Value::U64(1002)),
    ///     (Key::SharedInterfaceName, Value::Str("en0".into())),
    /// ]);
    /// ```
    pub fn descriptor(&self) -> Result<Vec<(Key, Value)>, OptionsError> {
        self.validate()?;
        let mut d = vec![(Key::OperationMode, Value::U64(u64::from(self.mode.raw())))];
        if let Some(name) = &self.interface_name {
            d.push((Key::SharedInterfaceName, Value::Str(name.clone())));
        }
        self.push_interface_entries(&mut d);
        if let Some(r) = &self.dhcp {
            d.push((Key::StartAddress, Value::Str(r.start.to_string())));
            d.push((Key::EndAddress, Value::Str(r.end.to_string())));
            d.push((Key::SubnetMask, Value::Str(r.mask.to_string())));
        }
        if let Some(mtu) = self.mtu {
            d.push((Key::Mtu, Value::U64(u64::from(mtu))));
        }
        if let Some(iso) = self.isolation {
            d.push((Key::EnableIsolation, Value::Bool(iso)));
        }
        if let Some(id) = self.network_identifier {
            d.push((Key::NetworkIdentifier, Value::Uuid(id)));
        }
        if let Some((addr, mask)) = self.host_address {
            d.push((Key::HostIpAddress, Value::Str(addr.to_string())));
            d.push((Key::HostSubnetMask, Value::Str(mask.to_string())));
        }
        if let Some(addr) = self.host_ipv6_address {
            d.push((Key::HostIpv6Address, Value::Str(addr.to_string())));
        }
        if let Some(prefix) = self.nat66_prefix {
            d.push((Key::Nat66Prefix, Value::Str(prefix.to_string())));
        }
        Ok(d)
    }

    /// The dictionary for an interface started on a macOS 26 `vmnet_network_ref`
    /// (`vmnet_interface_start_with_network`): only the per-interface keys, since mode, addresses
    /// and MTU belong to the network's configuration.
    ///
    /// ```
    /// use vmnet::options::{Key, Value, OptionsError};
    ///
    /// let d = vmnet::Options::shared().allocate_mac(true).network_interface_descriptor().unwrap();
    /// assert_eq!(d, vec![(Key::AllocateMacAddress, Value::Bool(true))]);
    /// assert!(matches!(
    ///     vmnet::Options::shared().mtu(1500).network_interface_descriptor(),
    ///     Err(OptionsError::NotForNetworkInterface { key: "vmnet_mtu_key" })
    /// ));
    /// ```
    pub fn network_interface_descriptor(&self) -> Result<Vec<(Key, Value)>, OptionsError> {
        let network_keys = [
            (self.interface_name.is_some(), Key::SharedInterfaceName),
            (self.dhcp.is_some(), Key::StartAddress),
            (self.mtu.is_some(), Key::Mtu),
            (self.network_identifier.is_some(), Key::NetworkIdentifier),
            (self.host_address.is_some(), Key::HostIpAddress),
            (self.host_ipv6_address.is_some(), Key::HostIpv6Address),
            (self.nat66_prefix.is_some(), Key::Nat66Prefix),
        ];
        if let Some((_, key)) = network_keys.iter().find(|(set, _)| *set) {
            return Err(OptionsError::NotForNetworkInterface { key: key.c_name() });
        }
        self.validate_offloads()?;
        let mut d = Vec::new();
        self.push_interface_entries(&mut d);
        if let Some(iso) = self.isolation {
            d.push((Key::EnableIsolation, Value::Bool(iso)));
        }
        Ok(d)
    }

    fn push_interface_entries(&self, d: &mut Vec<(Key, Value)>) {
        if let Some(id) = self.interface_id {
            d.push((Key::InterfaceId, Value::Uuid(id)));
        }
        if let Some(a) = self.allocate_mac {
            d.push((Key::AllocateMacAddress, Value::Bool(a)));
        }
        if let Some(t) = self.tso {
            d.push((Key::EnableTso, Value::Bool(t)));
        }
        if let Some(c) = self.checksum_offload {
            d.push((Key::EnableChecksumOffload, Value::Bool(c)));
        }
        if let Some(v) = self.virtio_header {
            d.push((Key::EnableVirtioHeader, Value::Bool(v)));
        }
    }
}

fn validate_interface_name(name: &str) -> Result<(), OptionsError> {
    let bad = |reason| {
        Err(OptionsError::BadInterfaceName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_INTERFACE_NAME {
        return bad("it is longer than 15 bytes (IFNAMSIZ)");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("it contains a NUL, a space or a non-ASCII character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(a, b, c, d)
    }

    fn mask24() -> Ipv4Addr {
        ip(255, 255, 255, 0)
    }

    #[test]
    fn mode_values_match_the_header() {
        assert_eq!(Mode::Host.raw(), 1000);
        assert_eq!(Mode::Shared.raw(), 1001);
        assert_eq!(Mode::Bridged.raw(), 1002);
        assert_eq!(Mode::Bridged.name(), "VMNET_BRIDGED_MODE");
        assert_eq!(Mode::Shared.to_string(), "shared");
    }

    #[test]
    fn every_key_c_name_is_a_vmnet_key() {
        let keys = [
            Key::OperationMode,
            Key::SharedInterfaceName,
            Key::InterfaceId,
            Key::AllocateMacAddress,
            Key::StartAddress,
            Key::EndAddress,
            Key::SubnetMask,
            Key::Mtu,
            Key::EnableIsolation,
            Key::NetworkIdentifier,
            Key::HostIpAddress,
            Key::HostSubnetMask,
            Key::HostIpv6Address,
            Key::Nat66Prefix,
            Key::EnableTso,
            Key::EnableChecksumOffload,
            Key::EnableVirtioHeader,
        ];
        for k in keys {
            assert!(k.c_name().starts_with("vmnet_") && k.c_name().ends_with("_key"));
            assert!(!k.since().is_empty());
        }
    }

    #[test]
    fn minimal_shared_descriptor_is_only_the_mode() {
        assert_eq!(
            Options::shared().descriptor().unwrap(),
            vec![(Key::OperationMode, Value::U64(1001))]
        );
    }

    #[test]
    fn minimal_host_descriptor_is_only_the_mode() {
        assert_eq!(
            Options::host().descriptor().unwrap(),
            vec![(Key::OperationMode, Value::U64(1000))]
        );
    }

    #[test]
    fn bridged_descriptor_carries_the_interface_name() {
        assert_eq!(
            Options::bridged("en0").descriptor().unwrap(),
            vec![
                (Key::OperationMode, Value::U64(1002)),
                (Key::SharedInterfaceName, Value::Str("en0".into())),
            ]
        );
    }

    #[test]
    fn full_shared_descriptor_has_every_entry_typed() {
        let d = Options::shared()
            .interface_id([9; 16])
            .allocate_mac(true)
            .dhcp_range(ip(192, 168, 64, 1), ip(192, 168, 64, 100), mask24())
            .mtu(4000)
            .isolation(false)
            .nat66_prefix("fd00:1:2:3::".parse().unwrap())
            .tso(true)
            .checksum_offload(true)
            .virtio_header(false)
            .descriptor()
            .unwrap();
        assert_eq!(
            d,
            vec![
                (Key::OperationMode, Value::U64(1001)),
                (Key::InterfaceId, Value::Uuid([9; 16])),
                (Key::AllocateMacAddress, Value::Bool(true)),
                (Key::EnableTso, Value::Bool(true)),
                (Key::EnableChecksumOffload, Value::Bool(true)),
                (Key::EnableVirtioHeader, Value::Bool(false)),
                (Key::StartAddress, Value::Str("192.168.64.1".into())),
                (Key::EndAddress, Value::Str("192.168.64.100".into())),
                (Key::SubnetMask, Value::Str("255.255.255.0".into())),
                (Key::Mtu, Value::U64(4000)),
                (Key::EnableIsolation, Value::Bool(false)),
                (Key::Nat66Prefix, Value::Str("fd00:1:2:3::".into())),
            ]
        );
    }

    #[test]
    fn identified_host_network_descriptor_has_host_addresses() {
        let d = Options::host()
            .network_identifier([3; 16])
            .host_address(ip(10, 7, 0, 1), ip(255, 255, 0, 0))
            .host_ipv6_address("fd00::1".parse().unwrap())
            .descriptor()
            .unwrap();
        assert_eq!(
            d,
            vec![
                (Key::OperationMode, Value::U64(1000)),
                (Key::NetworkIdentifier, Value::Uuid([3; 16])),
                (Key::HostIpAddress, Value::Str("10.7.0.1".into())),
                (Key::HostSubnetMask, Value::Str("255.255.0.0".into())),
                (Key::HostIpv6Address, Value::Str("fd00::1".into())),
            ]
        );
    }

    #[test]
    fn descriptor_refuses_what_validate_refuses() {
        assert_eq!(
            Options::new(Mode::Bridged).descriptor(),
            Err(OptionsError::BridgedWithoutInterface)
        );
    }

    #[test]
    fn bridged_without_interface_is_refused() {
        assert_eq!(
            Options::new(Mode::Bridged).validate(),
            Err(OptionsError::BridgedWithoutInterface)
        );
    }

    #[test]
    fn interface_name_outside_bridged_mode_is_refused() {
        for mode in [Mode::Host, Mode::Shared] {
            assert_eq!(
                Options::new(mode).interface("en0").validate(),
                Err(OptionsError::InterfaceOutsideBridged { mode })
            );
        }
    }

    #[test]
    fn bad_interface_names_are_refused() {
        for name in ["", "averyveryverylongname", "en 0", "en\x000", "é"] {
            assert!(
                matches!(
                    Options::bridged(name).validate(),
                    Err(OptionsError::BadInterfaceName { .. })
                ),
                "{name:?}"
            );
        }
        assert!(Options::bridged("bridge100").validate().is_ok());
        assert!(Options::bridged("a".repeat(15)).validate().is_ok());
    }

    #[test]
    fn mtu_in_bridged_mode_is_refused() {
        assert_eq!(
            Options::bridged("en0").mtu(1500).validate(),
            Err(OptionsError::MtuInBridgedMode)
        );
    }

    #[test]
    fn mtu_limits_are_inclusive() {
        assert!(Options::shared().mtu(MIN_MTU).validate().is_ok());
        assert!(Options::host().mtu(MAX_MTU).validate().is_ok());
        for mtu in [0, MIN_MTU - 1, MAX_MTU + 1, u32::MAX] {
            assert_eq!(
                Options::shared().mtu(mtu).validate(),
                Err(OptionsError::MtuOutOfRange {
                    mtu,
                    min: MIN_MTU,
                    max: MAX_MTU
                })
            );
        }
    }

    #[test]
    fn dhcp_in_bridged_mode_is_refused() {
        assert_eq!(
            Options::bridged("en0")
                .dhcp_range(ip(192, 168, 1, 1), ip(192, 168, 1, 9), mask24())
                .validate(),
            Err(OptionsError::DhcpInBridgedMode)
        );
    }

    #[test]
    fn dhcp_range_across_subnets_is_refused() {
        let r = DhcpRange::new(ip(192, 168, 1, 1), ip(192, 168, 2, 1), mask24());
        assert!(matches!(
            r.validate(),
            Err(OptionsError::DhcpOutsideSubnet { .. })
        ));
    }

    #[test]
    fn dhcp_range_inside_a_wider_mask_is_accepted() {
        let r = DhcpRange::new(ip(10, 0, 0, 1), ip(10, 0, 255, 254), ip(255, 255, 0, 0));
        assert!(r.validate().is_ok());
    }

    #[test]
    fn dhcp_start_must_be_below_end() {
        for (s, e) in [(10, 5), (7, 7)] {
            let r = DhcpRange::new(ip(192, 168, 1, s), ip(192, 168, 1, e), mask24());
            assert!(matches!(
                r.validate(),
                Err(OptionsError::DhcpStartNotBelowEnd { .. })
            ));
        }
    }

    #[test]
    fn dhcp_range_must_be_private() {
        let r = DhcpRange::new(ip(8, 8, 8, 1), ip(8, 8, 8, 9), mask24());
        assert_eq!(
            r.validate(),
            Err(OptionsError::DhcpNotPrivate {
                addr: ip(8, 8, 8, 1)
            })
        );
        let r = DhcpRange::new(ip(172, 16, 0, 1), ip(172, 16, 0, 9), mask24());
        assert!(r.validate().is_ok());
    }

    #[test]
    fn dhcp_range_must_not_use_network_or_broadcast() {
        let r = DhcpRange::new(ip(192, 168, 1, 0), ip(192, 168, 1, 9), mask24());
        assert_eq!(
            r.validate(),
            Err(OptionsError::NetworkOrBroadcast {
                addr: ip(192, 168, 1, 0)
            })
        );
        let r = DhcpRange::new(ip(192, 168, 1, 1), ip(192, 168, 1, 255), mask24());
        assert_eq!(
            r.validate(),
            Err(OptionsError::NetworkOrBroadcast {
                addr: ip(192, 168, 1, 255)
            })
        );
    }

    #[test]
    fn non_contiguous_or_degenerate_masks_are_refused() {
        for m in [
            ip(255, 0, 255, 0),
            ip(0, 0, 0, 0),
            ip(255, 255, 255, 255),
            ip(0, 255, 255, 255),
        ] {
            let r = DhcpRange::new(ip(10, 0, 0, 1), ip(10, 0, 0, 9), m);
            assert_eq!(r.validate(), Err(OptionsError::BadMask { mask: m }));
        }
    }

    #[test]
    fn slash_30_has_room_for_a_range() {
        let r = DhcpRange::new(ip(10, 0, 0, 1), ip(10, 0, 0, 2), ip(255, 255, 255, 252));
        assert!(r.validate().is_ok());
    }

    #[test]
    fn network_identifier_outside_host_mode_is_refused() {
        assert_eq!(
            Options::shared().network_identifier([1; 16]).validate(),
            Err(OptionsError::NetworkIdentifierOutsideHostMode { mode: Mode::Shared })
        );
    }

    #[test]
    fn dhcp_with_network_identifier_is_refused() {
        assert_eq!(
            Options::host()
                .network_identifier([1; 16])
                .dhcp_range(ip(10, 0, 0, 1), ip(10, 0, 0, 9), mask24())
                .validate(),
            Err(OptionsError::DhcpWithNetworkIdentifier)
        );
    }

    #[test]
    fn host_addresses_need_a_network_identifier() {
        assert_eq!(
            Options::host()
                .host_address(ip(10, 0, 0, 1), mask24())
                .validate(),
            Err(OptionsError::HostAddressWithoutNetworkIdentifier)
        );
        assert_eq!(
            Options::host()
                .host_ipv6_address("fd00::1".parse().unwrap())
                .validate(),
            Err(OptionsError::HostAddressWithoutNetworkIdentifier)
        );
    }

    #[test]
    fn host_address_must_be_a_host_of_its_mask() {
        assert!(matches!(
            Options::host()
                .network_identifier([1; 16])
                .host_address(ip(10, 0, 0, 0), mask24())
                .validate(),
            Err(OptionsError::NetworkOrBroadcast { .. })
        ));
        assert!(matches!(
            Options::host()
                .network_identifier([1; 16])
                .host_address(ip(10, 0, 0, 1), ip(255, 0, 255, 0))
                .validate(),
            Err(OptionsError::BadMask { .. })
        ));
    }

    #[test]
    fn nat66_prefix_is_for_shared_mode_only() {
        assert_eq!(
            Options::host()
                .nat66_prefix("fd00::".parse().unwrap())
                .validate(),
            Err(OptionsError::Nat66OutsideSharedMode { mode: Mode::Host })
        );
    }

    #[test]
    fn nat66_prefix_must_be_ula() {
        let prefix: Ipv6Addr = "2001:db8::".parse().unwrap();
        assert_eq!(
            Options::shared().nat66_prefix(prefix).validate(),
            Err(OptionsError::Nat66NotUla { prefix })
        );
        // fc00::/8 is ULA space too, but vmnet asks for fd00::/8.
        assert!(
            Options::shared()
                .nat66_prefix("fc00::".parse().unwrap())
                .validate()
                .is_err()
        );
    }

    #[test]
    fn tso_needs_checksum_offload() {
        assert_eq!(
            Options::shared().tso(true).validate(),
            Err(OptionsError::TsoWithoutChecksumOffload)
        );
        assert_eq!(
            Options::shared()
                .tso(true)
                .checksum_offload(false)
                .validate(),
            Err(OptionsError::TsoWithoutChecksumOffload)
        );
        assert!(Options::shared().tso(false).validate().is_ok());
    }

    #[test]
    fn tso_with_the_virtio_header_is_accepted() {
        assert!(
            Options::shared()
                .virtio_header(true)
                .tso(true)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn the_virtio_header_excludes_checksum_offload() {
        assert_eq!(
            Options::shared()
                .virtio_header(true)
                .checksum_offload(true)
                .validate(),
            Err(OptionsError::VirtioHeaderWithChecksumOffload)
        );
    }

    #[test]
    fn network_interface_descriptor_refuses_network_keys() {
        let cases = [
            (Options::bridged("en0"), "vmnet_shared_interface_name_key"),
            (
                Options::shared().dhcp_range(ip(10, 0, 0, 1), ip(10, 0, 0, 5), mask24()),
                "vmnet_start_address_key",
            ),
            (Options::shared().mtu(1500), "vmnet_mtu_key"),
            (
                Options::shared().nat66_prefix("fd00::".parse().unwrap()),
                "vmnet_nat66_prefix_key",
            ),
        ];
        for (opts, key) in cases {
            assert_eq!(
                opts.network_interface_descriptor(),
                Err(OptionsError::NotForNetworkInterface { key })
            );
        }
    }

    #[test]
    fn network_interface_descriptor_keeps_interface_keys() {
        let d = Options::shared()
            .interface_id([2; 16])
            .checksum_offload(true)
            .isolation(true)
            .network_interface_descriptor()
            .unwrap();
        assert_eq!(
            d,
            vec![
                (Key::InterfaceId, Value::Uuid([2; 16])),
                (Key::EnableChecksumOffload, Value::Bool(true)),
                (Key::EnableIsolation, Value::Bool(true)),
            ]
        );
    }

    #[test]
    fn error_messages_state_the_reason() {
        let msg = OptionsError::BridgedWithoutInterface.to_string();
        assert!(msg.contains("bridged"), "{msg}");
        let msg = Options::shared()
            .dhcp_range(ip(192, 168, 1, 1), ip(192, 168, 2, 1), mask24())
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("192.168.1.1") && msg.contains("255.255.255.0"),
            "{msg}"
        );
    }
}
