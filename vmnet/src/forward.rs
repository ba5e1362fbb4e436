//! Port forwarding rules (portable: built and tested on every host).
//!
//! A shared-mode interface can forward a TCP or UDP port of the host to an address and port of
//! the guest network (`vmnet_interface_add_ip_port_forwarding_rule`, macOS 11, and the macOS 26
//! `vmnet_network_configuration_add_port_forwarding_rule`). Ports are in host byte order, as the
//! header asks.

use std::net::IpAddr;

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;
/// `AF_INET` on macOS.
pub const AF_INET: u8 = 2;
/// `AF_INET6` on macOS (30; Linux's is 10, which is why this is not taken from `libc` here).
pub const AF_INET6: u8 = 30;

/// The transport protocol of a rule.
///
/// ```
/// assert_eq!(vmnet::forward::Protocol::Udp.raw(), 17);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    ///
    /// ```
    /// assert_eq!(vmnet::forward::Protocol::Tcp.raw(), 6);
    /// ```
    pub const fn raw(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }

    /// The protocol with this number, if TCP or UDP.
    ///
    /// ```
    /// assert_eq!(vmnet::forward::Protocol::from_raw(6), Some(vmnet::forward::Protocol::Tcp));
    /// assert_eq!(vmnet::forward::Protocol::from_raw(1), None);
    /// ```
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// The address family of rules to list or remove.
///
/// ```
/// assert_eq!(vmnet::forward::Family::V6.raw(), 30);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

impl Family {
    /// The macOS `sa_family_t` value.
    ///
    /// ```
    /// assert_eq!(vmnet::forward::Family::V4.raw(), 2);
    /// ```
    pub const fn raw(self) -> u8 {
        match self {
            Family::V4 => AF_INET,
            Family::V6 => AF_INET6,
        }
    }

    /// The family of an address.
    ///
    /// ```
    /// use vmnet::forward::Family;
    /// assert_eq!(Family::of(&"::1".parse().unwrap()), Family::V6);
    /// ```
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// One forwarding rule: traffic to `external_port` on the host goes to
/// `internal_address:internal_port`.
///
/// ```
/// use vmnet::forward::{PortForward, Protocol};
///
/// let r = PortForward::new(Protocol::Tcp, 8022, "192.168.105.2".parse().unwrap(), 22);
/// assert!(r.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortForward {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host port, host byte order.
    pub external_port: u16,
    /// The guest address.
    pub internal_address: IpAddr,
    /// The guest port, host byte order.
    pub internal_port: u16,
}

/// Why a rule was refused.
///
/// ```
/// use vmnet::forward::{PortForward, Protocol, RuleError};
///
/// let r = PortForward::new(Protocol::Udp, 0, "10.0.0.2".parse().unwrap(), 53);
/// assert_eq!(r.validate(), Err(RuleError::ZeroPort));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// Port 0.
    #[error("port 0 cannot be forwarded")]
    ZeroPort,
    /// An unspecified, loopback or multicast guest address.
    #[error("{0} cannot be a forwarding destination")]
    BadAddress(IpAddr),
}

impl PortForward {
    /// A rule.
    ///
    /// ```
    /// # use vmnet::forward::{PortForward, Protocol};
    /// let r = PortForward::new(Protocol::Tcp, 80, "10.0.0.2".parse().unwrap(), 8080);
    /// assert_eq!(r.internal_port, 8080);
    /// ```
    pub const fn new(
        protocol: Protocol,
        external_port: u16,
        internal_address: IpAddr,
        internal_port: u16,
    ) -> Self {
        Self {
            protocol,
            external_port,
            internal_address,
            internal_port,
        }
    }

    /// Refuses port 0 and addresses that cannot be a guest's.
    ///
    /// ```
    /// # use vmnet::forward::{PortForward, Protocol};
    /// let r = PortForward::new(Protocol::Tcp, 80, "127.0.0.1".parse().unwrap(), 80);
    /// assert!(r.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.external_port == 0 || self.internal_port == 0 {
            return Err(RuleError::ZeroPort);
        }
        let a = self.internal_address;
        let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() || broadcast {
            return Err(RuleError::BadAddress(a));
        }
        Ok(())
    }

    /// The address family of the guest address.
    ///
    /// ```
    /// # use vmnet::forward::{Family, PortForward, Protocol};
    /// let r = PortForward::new(Protocol::Tcp, 80, "fd00::2".parse().unwrap(), 80);
    /// assert_eq!(r.family(), Family::V6);
    /// ```
    pub fn family(&self) -> Family {
        Family::of(&self.internal_address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_numbers_are_iana() {
        assert_eq!(Protocol::Tcp.raw(), 6);
        assert_eq!(Protocol::Udp.raw(), 17);
        for p in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(Protocol::from_raw(p.raw()), Some(p));
        }
    }

    #[test]
    fn families_are_the_darwin_values() {
        assert_eq!(Family::V4.raw(), 2);
        assert_eq!(Family::V6.raw(), 30);
    }

    #[test]
    fn zero_ports_are_refused() {
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            PortForward::new(Protocol::Tcp, 0, a, 1).validate(),
            Err(RuleError::ZeroPort)
        );
        assert_eq!(
            PortForward::new(Protocol::Tcp, 1, a, 0).validate(),
            Err(RuleError::ZeroPort)
        );
    }

    #[test]
    fn impossible_destinations_are_refused() {
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
        ] {
            let a: IpAddr = a.parse().unwrap();
            assert_eq!(
                PortForward::new(Protocol::Udp, 5353, a, 53).validate(),
                Err(RuleError::BadAddress(a))
            );
        }
    }

    #[test]
    fn ordinary_rules_pass_in_both_families() {
        for a in ["192.168.105.2", "fd00::2"] {
            let r = PortForward::new(Protocol::Tcp, 2222, a.parse().unwrap(), 22);
            assert!(r.validate().is_ok());
        }
    }
}
