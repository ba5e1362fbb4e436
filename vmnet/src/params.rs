//! The parameters vmnet reports when an interface has started (portable: built and tested on
//! every host).
//!
//! The start completion handler receives an `interface_param` dictionary. On macOS the blocking
//! API copies its entries into a [`RawParams`] while the handler runs (the dictionary is only
//! valid then), and [`InterfaceParams::from_raw`] turns them into checked, typed values.

use std::net::Ipv4Addr;

use crate::batch::MAX_BATCH;

/// The batch size assumed when the system does not report `vmnet_read_max_packets_key` /
/// `vmnet_write_max_packets_key` (both appeared in macOS 15). Older releases document no limit;
/// this conservative value stays well under the 200-256 packets public users observed.
pub const DEFAULT_MAX_PACKETS: usize = 64;

/// Length of an Ethernet header (destination, source, EtherType).
pub const ETHERNET_HEADER_LEN: usize = 14;

/// The entries of an `interface_param` dictionary, as read from xpc.
///
/// Missing entries are `None` (or 0 for the integers, which is what `xpc_dictionary_get_uint64`
/// answers for a missing key).
///
/// ```
/// use vmnet::params::{InterfaceParams, RawParams};
///
/// let raw = RawParams {
///     mac_address: Some("a6:5:0:1:e:ff".into()),
///     mtu: 1500,
///     max_packet_size: 1514,
///     ..RawParams::default()
/// };
/// let p = InterfaceParams::from_raw(&raw).unwrap();
/// assert_eq!(p.mac, Some([0xa6, 5, 0, 1, 0xe, 0xff]));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawParams {
    /// `vmnet_mac_address_key`.
    pub mac_address: Option<String>,
    /// `vmnet_mtu_key`.
    pub mtu: u64,
    /// `vmnet_max_packet_size_key`.
    pub max_packet_size: u64,
    /// `vmnet_read_max_packets_key` (macOS 15), `None` where the key does not exist.
    pub read_max_packets: Option<u64>,
    /// `vmnet_write_max_packets_key` (macOS 15), `None` where the key does not exist.
    pub write_max_packets: Option<u64>,
    /// `vmnet_interface_id_key`.
    pub interface_id: Option<[u8; 16]>,
    /// `vmnet_start_address_key`.
    pub start_address: Option<String>,
    /// `vmnet_end_address_key`.
    pub end_address: Option<String>,
    /// `vmnet_subnet_mask_key`.
    pub subnet_mask: Option<String>,
    /// `vmnet_nat66_prefix_key`.
    pub nat66_prefix: Option<String>,
}

/// What a started interface is: checked values from `interface_param`.
///
/// ```
/// use vmnet::params::{InterfaceParams, RawParams};
///
/// let p = InterfaceParams::from_raw(&RawParams {
///     mtu: 1500,
///     max_packet_size: 1514,
///     read_max_packets: Some(256),
///     write_max_packets: Some(256),
///     ..RawParams::default()
/// })
/// .unwrap();
/// assert_eq!(p.read_max_packets, 256);
/// assert_eq!(p.read_batch(), 128);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceParams {
    /// The MAC address vmnet allocated for the guest (absent when allocation was turned off).
    pub mac: Option<[u8; 6]>,
    /// The MTU.
    pub mtu: u32,
    /// The largest packet one `vmnet_read`/`vmnet_write` descriptor holds, Ethernet header
    /// included. Every read buffer must be at least this long.
    pub max_packet_size: usize,
    /// The most packets one `vmnet_read` accepts.
    pub read_max_packets: usize,
    /// The most packets one `vmnet_write` accepts.
    pub write_max_packets: usize,
    /// The interface's UUID.
    pub interface_id: Option<[u8; 16]>,
    /// First address of the DHCP range (the host's address), in shared and host modes.
    pub start_address: Option<Ipv4Addr>,
    /// Last address of the DHCP range.
    pub end_address: Option<Ipv4Addr>,
    /// The subnet mask.
    pub subnet_mask: Option<Ipv4Addr>,
    /// The NAT66 prefix, in shared mode.
    pub nat66_prefix: Option<String>,
}

/// Why an `interface_param` dictionary was refused.
///
/// ```
/// use vmnet::params::{InterfaceParams, ParamsError, RawParams};
///
/// assert_eq!(InterfaceParams::from_raw(&RawParams::default()), Err(ParamsError::NoMtu));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamsError {
    /// `vmnet_mtu_key` missing or 0.
    #[error("the interface reported no MTU")]
    NoMtu,
    /// An MTU that does not fit 32 bits.
    #[error("the interface reported MTU {0}, which is not a plausible MTU")]
    BadMtu(u64),
    /// A maximum packet size too large to allocate.
    #[error("the interface reported maximum packet size {0}, which is not plausible")]
    BadMaxPacketSize(u64),
    /// A MAC address string that does not parse.
    #[error("the interface reported MAC address {0:?}, which does not parse")]
    BadMac(String),
}

impl InterfaceParams {
    /// Checks and converts the raw entries.
    ///
    /// A missing `max_packet_size` becomes MTU + Ethernet header; missing batch maxima become
    /// [`DEFAULT_MAX_PACKETS`]; unparsable addresses become `None`.
    ///
    /// ```
    /// use vmnet::params::{InterfaceParams, RawParams, DEFAULT_MAX_PACKETS};
    ///
    /// let p = InterfaceParams::from_raw(&RawParams { mtu: 1500, ..RawParams::default() }).unwrap();
    /// assert_eq!(p.max_packet_size, 1514);
    /// assert_eq!(p.write_max_packets, DEFAULT_MAX_PACKETS);
    /// ```
    pub fn from_raw(raw: &RawParams) -> Result<Self, ParamsError> {
        if raw.mtu == 0 {
            return Err(ParamsError::NoMtu);
        }
        let mtu = u32::try_from(raw.mtu).map_err(|_| ParamsError::BadMtu(raw.mtu))?;
        // 64 KiB frames with TSO; anything beyond 1 MiB is a broken dictionary, not a packet.
        if raw.max_packet_size > 1 << 20 {
            return Err(ParamsError::BadMaxPacketSize(raw.max_packet_size));
        }
        let max_packet_size = match raw.max_packet_size {
            0 => mtu as usize + ETHERNET_HEADER_LEN,
            n => n as usize,
        };
        let mac = match &raw.mac_address {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(parse_mac(s).ok_or_else(|| ParamsError::BadMac(s.clone()))?),
        };
        let count = |v: Option<u64>| match v {
            None | Some(0) => DEFAULT_MAX_PACKETS,
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(1 << 16),
        };
        let addr = |s: &Option<String>| s.as_deref().and_then(|s| s.parse().ok());
        Ok(Self {
            mac,
            mtu,
            max_packet_size,
            read_max_packets: count(raw.read_max_packets),
            write_max_packets: count(raw.write_max_packets),
            interface_id: raw.interface_id,
            start_address: addr(&raw.start_address),
            end_address: addr(&raw.end_address),
            subnet_mask: addr(&raw.subnet_mask),
            nat66_prefix: raw.nat66_prefix.clone(),
        })
    }

    /// How many packets to read per call: `min(128, read_max_packets)`.
    ///
    /// ```
    /// # use vmnet::params::{InterfaceParams, RawParams};
    /// let p = InterfaceParams::from_raw(&RawParams { mtu: 1500, read_max_packets: Some(32),
    ///     ..RawParams::default() }).unwrap();
    /// assert_eq!(p.read_batch(), 32);
    /// ```
    pub fn read_batch(&self) -> usize {
        self.read_max_packets.clamp(1, MAX_BATCH)
    }

    /// How many packets to write per call: `min(128, write_max_packets)`.
    ///
    /// ```
    /// # use vmnet::params::{InterfaceParams, RawParams};
    /// let p = InterfaceParams::from_raw(&RawParams { mtu: 1500, write_max_packets: Some(200),
    ///     ..RawParams::default() }).unwrap();
    /// assert_eq!(p.write_batch(), 128);
    /// ```
    pub fn write_batch(&self) -> usize {
        self.write_max_packets.clamp(1, MAX_BATCH)
    }
}

/// Parses a MAC address as vmnet prints it: six colon-separated hex bytes, where a byte may
/// have one digit (`ether_ntoa` style, e.g. `"a6:5:0:1:e:ff"`).
///
/// ```
/// assert_eq!(vmnet::params::parse_mac("2:0:0:a:b:c"), Some([2, 0, 0, 10, 11, 12]));
/// assert_eq!(vmnet::params::parse_mac("02:00:00:0A:0B:0C"), Some([2, 0, 0, 10, 11, 12]));
/// assert_eq!(vmnet::params::parse_mac("2:0:0:a:b"), None);
/// ```
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split(':');
    for byte in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RawParams {
        RawParams {
            mac_address: Some("6e:7e:67:c:93:73".into()),
            mtu: 1500,
            max_packet_size: 1514,
            read_max_packets: Some(256),
            write_max_packets: Some(256),
            interface_id: Some([5; 16]),
            start_address: Some("192.168.64.1".into()),
            end_address: Some("192.168.64.254".into()),
            subnet_mask: Some("255.255.255.0".into()),
            nat66_prefix: Some("fd9b:5a14:ba57:e3d3::".into()),
        }
    }

    #[test]
    fn full_dictionary_converts() {
        let p = InterfaceParams::from_raw(&base()).unwrap();
        assert_eq!(p.mac, Some([0x6e, 0x7e, 0x67, 0x0c, 0x93, 0x73]));
        assert_eq!(p.mtu, 1500);
        assert_eq!(p.max_packet_size, 1514);
        assert_eq!(p.read_max_packets, 256);
        assert_eq!(p.write_max_packets, 256);
        assert_eq!(p.interface_id, Some([5; 16]));
        assert_eq!(p.start_address, Some(Ipv4Addr::new(192, 168, 64, 1)));
        assert_eq!(p.end_address, Some(Ipv4Addr::new(192, 168, 64, 254)));
        assert_eq!(p.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(p.nat66_prefix.as_deref(), Some("fd9b:5a14:ba57:e3d3::"));
    }

    #[test]
    fn missing_mtu_is_refused() {
        let raw = RawParams { mtu: 0, ..base() };
        assert_eq!(InterfaceParams::from_raw(&raw), Err(ParamsError::NoMtu));
    }

    #[test]
    fn huge_mtu_is_refused() {
        let raw = RawParams {
            mtu: u64::from(u32::MAX) + 1,
            ..base()
        };
        assert!(matches!(
            InterfaceParams::from_raw(&raw),
            Err(ParamsError::BadMtu(_))
        ));
    }

    #[test]
    fn implausible_max_packet_size_is_refused() {
        let raw = RawParams {
            max_packet_size: u64::MAX,
            ..base()
        };
        assert!(matches!(
            InterfaceParams::from_raw(&raw),
            Err(ParamsError::BadMaxPacketSize(_))
        ));
    }

    #[test]
    fn tso_sized_packets_are_accepted() {
        let raw = RawParams {
            max_packet_size: 65550,
            ..base()
        };
        assert_eq!(
            InterfaceParams::from_raw(&raw).unwrap().max_packet_size,
            65550
        );
    }

    #[test]
    fn missing_max_packet_size_defaults_to_mtu_plus_header() {
        let raw = RawParams {
            max_packet_size: 0,
            mtu: 9000,
            ..base()
        };
        assert_eq!(
            InterfaceParams::from_raw(&raw).unwrap().max_packet_size,
            9014
        );
    }

    #[test]
    fn missing_batch_maxima_use_the_default() {
        let raw = RawParams {
            read_max_packets: None,
            write_max_packets: Some(0),
            ..base()
        };
        let p = InterfaceParams::from_raw(&raw).unwrap();
        assert_eq!(p.read_max_packets, DEFAULT_MAX_PACKETS);
        assert_eq!(p.write_max_packets, DEFAULT_MAX_PACKETS);
    }

    #[test]
    fn batches_are_capped_at_128_and_at_least_one() {
        let p = InterfaceParams::from_raw(&base()).unwrap();
        assert_eq!(p.read_batch(), 128);
        assert_eq!(p.write_batch(), 128);
        let p = InterfaceParams::from_raw(&RawParams {
            read_max_packets: Some(7),
            ..base()
        })
        .unwrap();
        assert_eq!(p.read_batch(), 7);
    }

    #[test]
    fn bad_mac_is_refused_and_missing_mac_is_none() {
        let raw = RawParams {
            mac_address: Some("zz:0:0:0:0:0".into()),
            ..base()
        };
        assert!(matches!(
            InterfaceParams::from_raw(&raw),
            Err(ParamsError::BadMac(_))
        ));
        for mac in [None, Some(String::new())] {
            let raw = RawParams {
                mac_address: mac,
                ..base()
            };
            assert_eq!(InterfaceParams::from_raw(&raw).unwrap().mac, None);
        }
    }

    #[test]
    fn unparsable_addresses_become_none() {
        let raw = RawParams {
            start_address: Some("nope".into()),
            ..base()
        };
        assert_eq!(InterfaceParams::from_raw(&raw).unwrap().start_address, None);
    }

    #[test]
    fn parse_mac_accepts_one_and_two_digit_bytes() {
        assert_eq!(parse_mac("0:1:2:3:4:5"), Some([0, 1, 2, 3, 4, 5]));
        assert_eq!(
            parse_mac("ff:FF:0f:F:00:10"),
            Some([255, 255, 15, 15, 0, 16])
        );
        assert_eq!(parse_mac(" 1:2:3:4:5:6\n"), Some([1, 2, 3, 4, 5, 6]));
    }

    #[test]
    fn parse_mac_refuses_malformed_strings() {
        for s in [
            "",
            "1:2:3:4:5",
            "1:2:3:4:5:6:7",
            "1:2:3:4:5:",
            "123:2:3:4:5:6",
            "g:2:3:4:5:6",
            "1-2-3-4-5-6",
        ] {
            assert_eq!(parse_mac(s), None, "{s:?}");
        }
    }
}
