//! The macOS 26 network API: configure a logical network, create it, share it between
//! processes, and start interfaces on it (feature `macos-26`).
//!
//! ```no_run
//! use std::time::Duration;
//! use vmnet::{Interface, Mode, Options};
//! use vmnet::network::{Network, NetworkConfiguration};
//!
//! let mut config = NetworkConfiguration::new(Mode::Shared)?;
//! config.set_mtu(1500)?;
//! let network = Network::new(&config)?;
//! let iface = Interface::start_with_network(&network, &Options::shared(), Duration::from_secs(10))?;
//! # Ok::<(), vmnet::Error>(())
//! ```

use std::ffi::{CString, c_void};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ptr::NonNull;
use std::time::Duration;

use block2::RcBlock;
use crossbeam_channel::bounded;
use dispatch2::DispatchQueue;

use crate::error::{Error, Result};
use crate::forward::PortForward;
use crate::interface::{Interface, start_handler};
use crate::keys;
use crate::options::{Mode, Options, OptionsError};
use crate::sys;
use crate::xpc::{XpcDictionary, XpcObject};

fn status_result<T>(op: &'static str, value: Option<T>, status: u32) -> Result<T> {
    match (value, Error::from_status(op, status)) {
        (Some(v), None) => Ok(v),
        (_, Some(e)) => Err(e),
        (None, None) => Err(Error::NullHandle { op }),
    }
}

/// A network configuration (`vmnet_network_configuration_ref`).
///
/// ```no_run
/// let mut c = vmnet::network::NetworkConfiguration::new(vmnet::Mode::Host)?;
/// c.disable_dhcp();
/// # Ok::<(), vmnet::Error>(())
/// ```
#[derive(Debug)]
pub struct NetworkConfiguration {
    raw: NonNull<sys::vmnet_network_configuration>,
}

// SAFETY: the configuration is a reference-counted framework object; it is mutated only through
// `&mut self`, so moving it to another thread is sound.
unsafe impl Send for NetworkConfiguration {}

impl NetworkConfiguration {
    /// A configuration for `mode` (host or shared; bridged networks are not configurable).
    ///
    /// ```no_run
    /// let c = vmnet::network::NetworkConfiguration::new(vmnet::Mode::Shared)?;
    /// # Ok::<(), vmnet::Error>(())
    /// ```
    #[doc(alias = "vmnet_network_configuration_create")]
    pub fn new(mode: Mode) -> Result<Self> {
        const OP: &str = "vmnet_network_configuration_create";
        let mut status = sys::VMNET_FAILURE;
        // SAFETY: `status` is a live out-parameter; the result is NULL or an owned reference.
        let raw = unsafe { sys::vmnet_network_configuration_create(mode.raw(), &mut status) };
        status_result(OP, NonNull::new(raw), status).map(|raw| Self { raw })
    }

    fn ptr(&self) -> sys::vmnet_network_configuration_ref {
        self.raw.as_ptr()
    }

    /// Disables the DHCP server.
    ///
    /// ```no_run
    /// # fn f(c: &mut vmnet::network::NetworkConfiguration) { c.disable_dhcp(); }
    /// ```
    #[doc(alias = "vmnet_network_configuration_disable_dhcp")]
    pub fn disable_dhcp(&mut self) {
        // SAFETY: live configuration, held mutably.
        unsafe { sys::vmnet_network_configuration_disable_dhcp(self.ptr()) }
    }

    /// Disables the DNS proxy.
    ///
    /// ```no_run
    /// # fn f(c: &mut vmnet::network::NetworkConfiguration) { c.disable_dns_proxy(); }
    /// ```
    #[doc(alias = "vmnet_network_configuration_disable_dns_proxy")]
    pub fn disable_dns_proxy(&mut self) {
        // SAFETY: live configuration, held mutably.
        unsafe { sys::vmnet_network_configuration_disable_dns_proxy(self.ptr()) }
    }

    /// Disables NAT44.
    ///
    /// ```no_run
    /// # fn f(c: &mut vmnet::network::NetworkConfiguration) { c.disable_nat44(); }
    /// ```
    #[doc(alias = "vmnet_network_configuration_disable_nat44")]
    pub fn disable_nat44(&mut self) {
        // SAFETY: live configuration, held mutably.
        unsafe { sys::vmnet_network_configuration_disable_nat44(self.ptr()) }
    }

    /// Disables NAT66.
    ///
    /// ```no_run
    /// # fn f(c: &mut vmnet::network::NetworkConfiguration) { c.disable_nat66(); }
    /// ```
    #[doc(alias = "vmnet_network_configuration_disable_nat66")]
    pub fn disable_nat66(&mut self) {
        // SAFETY: live configuration, held mutably.
        unsafe { sys::vmnet_network_configuration_disable_nat66(self.ptr()) }
    }

    /// Disables IPv6 router advertisement.
    ///
    /// ```no_run
    /// # fn f(c: &mut vmnet::network::NetworkConfiguration) { c.disable_router_advertisement(); }
    /// ```
    #[doc(alias = "vmnet_network_configuration_disable_router_advertisement")]
    pub fn disable_router_advertisement(&mut self) {
        // SAFETY: live configuration, held mutably.
        unsafe { sys::vmnet_network_configuration_disable_router_advertisement(self.ptr()) }
    }

    /// Sets the external interface of a shared network.
    ///
    /// ```no_run
    /// # fn f(c: &mut vmnet::network::NetworkConfiguration) -> vmnet::Result<()> {
    /// c.set_external_interface("en0")?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_network_configuration_set_external_interface")]
    pub fn set_external_interface(&mut self, name: &str) -> Result<()> {
        let name = CString::new(name).map_err(|_| OptionsError::BadInterfaceName {
            name: name.to_owned(),
            reason: "it contains a NUL",
        })?;
        // SAFETY: live configuration; `name` is NUL-terminated and outlives the call.
        let status = unsafe {
            sys::vmnet_network_configuration_set_external_interface(self.ptr(), name.as_ptr())
        };
        Error::check("vmnet_network_configuration_set_external_interface", status)
    }

    /// Sets the IPv4 subnet and mask.
    ///
    /// ```no_run
    /// # fn f(c: &mut vmnet::network::NetworkConfiguration) -> vmnet::Result<()> {
    /// c.set_ipv4_subnet("192.168.200.0".parse().unwrap(), "255.255.255.0".parse().unwrap())?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_network_configuration_set_ipv4_subnet")]
    pub fn set_ipv4_subnet(&mut self, subnet: Ipv4Addr, mask: Ipv4Addr) -> Result<()> {
        let s = in_addr(subnet);
        let m = in_addr(mask);
        // SAFETY: live configuration; both addresses are live for the call.
        let status =
            unsafe { sys::vmnet_network_configuration_set_ipv4_subnet(self.ptr(), &s, &m) };
        Error::check("vmnet_network_configuration_set_ipv4_subnet", status)
    }

    /// Sets the IPv6 prefix and its length.
    ///
    /// ```no_run
    /// # fn f(c: &mut vmnet::network::NetworkConfiguration) -> vmnet::Result<()> {
    /// c.set_ipv6_prefix("fd00:42::".parse().unwrap(), 64)?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_network_configuration_set_ipv6_prefix")]
    pub fn set_ipv6_prefix(&mut self, prefix: Ipv6Addr, len: u8) -> Result<()> {
        let p = sys::in6_addr {
            s6_addr: prefix.octets(),
        };
        // SAFETY: live configuration; `p` is live for the call.
        let status =
            unsafe { sys::vmnet_network_configuration_set_ipv6_prefix(self.ptr(), &p, len) };
        Error::check("vmnet_network_configuration_set_ipv6_prefix", status)
    }

    /// Sets the MTU.
    ///
    /// ```no_run
    /// # fn f(c: &mut vmnet::network::NetworkConfiguration) -> vmnet::Result<()> {
    /// c.set_mtu(1500)?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_network_configuration_set_mtu")]
    pub fn set_mtu(&mut self, mtu: u32) -> Result<()> {
        if !(crate::options::MIN_MTU..=crate::options::MAX_MTU).contains(&mtu) {
            return Err(OptionsError::MtuOutOfRange {
                mtu,
                min: crate::options::MIN_MTU,
                max: crate::options::MAX_MTU,
            }
            .into());
        }
        // SAFETY: live configuration.
        let status = unsafe { sys::vmnet_network_configuration_set_mtu(self.ptr(), mtu) };
        Error::check("vmnet_network_configuration_set_mtu", status)
    }

    /// Reserves `address` for the DHCP client `mac`.
    ///
    /// ```no_run
    /// # fn f(c: &mut vmnet::network::NetworkConfiguration) -> vmnet::Result<()> {
    /// c.add_dhcp_reservation([2, 0, 0, 0, 0, 7], "192.168.200.7".parse().unwrap())?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_network_configuration_add_dhcp_reservation")]
    pub fn add_dhcp_reservation(&mut self, mac: [u8; 6], address: Ipv4Addr) -> Result<()> {
        let client = sys::ether_addr_t { octet: mac };
        let a = in_addr(address);
        // SAFETY: live configuration; both pointers are live for the call.
        let status = unsafe {
            sys::vmnet_network_configuration_add_dhcp_reservation(self.ptr(), &client, &a)
        };
        Error::check("vmnet_network_configuration_add_dhcp_reservation", status)
    }

    /// Adds a port-forwarding rule to the network.
    ///
    /// ```no_run
    /// # fn f(c: &mut vmnet::network::NetworkConfiguration) -> vmnet::Result<()> {
    /// use vmnet::forward::{PortForward, Protocol};
    /// c.add_port_forward(&PortForward::new(Protocol::Tcp, 8080, "192.168.200.7".parse().unwrap(), 80))?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_network_configuration_add_port_forwarding_rule")]
    pub fn add_port_forward(&mut self, rule: &PortForward) -> Result<()> {
        const OP: &str = "vmnet_network_configuration_add_port_forwarding_rule";
        rule.validate()?;
        let family = rule.family().raw();
        let status = match rule.internal_address {
            IpAddr::V4(a) => {
                let addr = in_addr(a);
                // SAFETY: live configuration; `addr` is an `in_addr` as `AF_INET` requires.
                unsafe {
                    sys::vmnet_network_configuration_add_port_forwarding_rule(
                        self.ptr(),
                        rule.protocol.raw(),
                        family,
                        rule.internal_port,
                        rule.external_port,
                        (&raw const addr).cast::<c_void>(),
                    )
                }
            }
            IpAddr::V6(a) => {
                let addr = sys::in6_addr {
                    s6_addr: a.octets(),
                };
                // SAFETY: as above with an `in6_addr` for `AF_INET6`.
                unsafe {
                    sys::vmnet_network_configuration_add_port_forwarding_rule(
                        self.ptr(),
                        rule.protocol.raw(),
                        family,
                        rule.internal_port,
                        rule.external_port,
                        (&raw const addr).cast::<c_void>(),
                    )
                }
            }
        };
        Error::check(OP, status)
    }
}

impl Drop for NetworkConfiguration {
    fn drop(&mut self) {
        // SAFETY: we own one reference, released exactly once.
        unsafe { sys::CFRelease(self.raw.as_ptr().cast_const().cast()) }
    }
}

fn in_addr(a: Ipv4Addr) -> sys::in_addr {
    sys::in_addr {
        s_addr: u32::from_ne_bytes(a.octets()),
    }
}

/// A logical network (`vmnet_network_ref`).
///
/// ```no_run
/// let c = vmnet::network::NetworkConfiguration::new(vmnet::Mode::Shared)?;
/// let n = vmnet::network::Network::new(&c)?;
/// println!("{:?}", n.ipv4_subnet());
/// # Ok::<(), vmnet::Error>(())
/// ```
#[derive(Debug)]
pub struct Network {
    raw: NonNull<sys::vmnet_network>,
}

// SAFETY: a created network is an immutable, reference-counted framework object; this type
// exposes only queries and interface starts, which the framework allows from any thread.
unsafe impl Send for Network {}
// SAFETY: as above.
unsafe impl Sync for Network {}

impl Network {
    /// Creates a network from a configuration.
    ///
    /// ```no_run
    /// # fn f(c: &vmnet::network::NetworkConfiguration) -> vmnet::Result<()> {
    /// let n = vmnet::network::Network::new(c)?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_network_create")]
    pub fn new(config: &NetworkConfiguration) -> Result<Self> {
        let mut status = sys::VMNET_FAILURE;
        // SAFETY: live configuration and out-parameter; the result is NULL or owned.
        let raw = unsafe { sys::vmnet_network_create(config.ptr(), &mut status) };
        status_result("vmnet_network_create", NonNull::new(raw), status).map(|raw| Self { raw })
    }

    /// Recreates a network from a serialization (made by [`serialize`](Self::serialize), in
    /// this or another process of the same executable).
    ///
    /// ```no_run
    /// # fn f(n: &vmnet::network::Network) -> vmnet::Result<()> {
    /// let s = n.serialize()?;
    /// let again = vmnet::network::Network::from_serialization(&s)?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_network_create_with_serialization")]
    pub fn from_serialization(serialization: &XpcObject) -> Result<Self> {
        let mut status = sys::VMNET_FAILURE;
        // SAFETY: live xpc object and out-parameter; the result is NULL or owned.
        let raw = unsafe {
            sys::vmnet_network_create_with_serialization(serialization.as_raw(), &mut status)
        };
        status_result(
            "vmnet_network_create_with_serialization",
            NonNull::new(raw),
            status,
        )
        .map(|raw| Self { raw })
    }

    /// An xpc serialization of the network, to send to another process.
    ///
    /// ```no_run
    /// # fn f(n: &vmnet::network::Network) -> vmnet::Result<()> {
    /// let s: vmnet::xpc::XpcObject = n.serialize()?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_network_copy_serialization")]
    pub fn serialize(&self) -> Result<XpcObject> {
        let mut status = sys::VMNET_FAILURE;
        // SAFETY: live network and out-parameter; the result is NULL or an owned ("copy")
        // reference that `from_owned` takes over.
        let raw = unsafe { sys::vmnet_network_copy_serialization(self.raw.as_ptr(), &mut status) };
        // SAFETY: as above.
        let obj = unsafe { XpcObject::from_owned(raw) };
        status_result("vmnet_network_copy_serialization", obj, status)
    }

    /// The IPv4 subnet and mask.
    ///
    /// ```no_run
    /// # fn f(n: &vmnet::network::Network) { let (subnet, mask) = n.ipv4_subnet(); }
    /// ```
    #[doc(alias = "vmnet_network_get_ipv4_subnet")]
    pub fn ipv4_subnet(&self) -> (Ipv4Addr, Ipv4Addr) {
        let mut s = in_addr(Ipv4Addr::UNSPECIFIED);
        let mut m = in_addr(Ipv4Addr::UNSPECIFIED);
        // SAFETY: live network; both out-parameters are live.
        unsafe { sys::vmnet_network_get_ipv4_subnet(self.raw.as_ptr(), &mut s, &mut m) };
        (
            Ipv4Addr::from(s.s_addr.to_ne_bytes()),
            Ipv4Addr::from(m.s_addr.to_ne_bytes()),
        )
    }

    /// The IPv6 prefix and its length.
    ///
    /// ```no_run
    /// # fn f(n: &vmnet::network::Network) { let (prefix, len) = n.ipv6_prefix(); }
    /// ```
    #[doc(alias = "vmnet_network_get_ipv6_prefix")]
    pub fn ipv6_prefix(&self) -> (Ipv6Addr, u8) {
        let mut p = sys::in6_addr { s6_addr: [0; 16] };
        let mut len = 0u8;
        // SAFETY: live network; both out-parameters are live.
        unsafe { sys::vmnet_network_get_ipv6_prefix(self.raw.as_ptr(), &mut p, &mut len) };
        (Ipv6Addr::from(p.s6_addr), len)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // SAFETY: we own one reference, released exactly once.
        unsafe { sys::CFRelease(self.raw.as_ptr().cast_const().cast()) }
    }
}

impl Interface {
    /// Starts an interface on a macOS 26 network and waits up to `timeout` for the completion.
    ///
    /// Only the per-interface options are sent (interface id, MAC allocation, offloads,
    /// isolation): mode, addresses and MTU belong to the network; setting them is refused.
    ///
    /// ```no_run
    /// # fn f(n: &vmnet::network::Network) -> vmnet::Result<()> {
    /// let i = vmnet::Interface::start_with_network(
    ///     n, &vmnet::Options::shared(), std::time::Duration::from_secs(10))?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_interface_start_with_network")]
    pub fn start_with_network(
        network: &Network,
        options: &Options,
        timeout: Duration,
    ) -> Result<Self> {
        const OP: &str = "vmnet_interface_start_with_network";
        let entries = options.network_interface_descriptor()?;
        let desc = XpcDictionary::from_entries(&entries, keys::require)?;
        let queue = DispatchQueue::new("vmnet-rs.interface", None);
        let (tx, rx) = bounded(1);
        let handler = start_handler(OP, tx);
        // SAFETY: live network, dictionary and queue, kept alive until the completion arrived;
        // the framework copies the handler block.
        let raw = unsafe {
            sys::vmnet_interface_start_with_network(
                network.raw.as_ptr(),
                desc.as_raw(),
                &queue,
                RcBlock::as_ptr(&handler),
            )
        };
        let limits = (options.virtio_header_enabled(), options.tso_enabled());
        let iface = Interface::finish_start(OP, raw, queue, &rx, timeout, limits);
        drop(desc);
        iface
    }
}
