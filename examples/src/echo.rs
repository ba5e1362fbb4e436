//! A tiny ARP and ICMP echo responder over raw Ethernet frames, with the builders of the requests
//! it answers and the Internet checksum they need.
//!
//! The `vmnet_echo` and `vmnet_async` examples run it on a vmnet interface, the way a
//! MirageOS-style unikernel uses the binding: frames in, frames out, no host stack in between.
//! `embed_net_device` runs it as the network behind the virtio-net device. The workspace's tests
//! build their frames with it too (the TAP tests of `devices`, the Mac tests of `vmnet`). It
//! answers ARP requests for its address and ICMP echo requests sent to it, and ignores everything
//! else.
//!
//! ```
//! use std::net::Ipv4Addr;
//! use examples::echo::{Responder, arp_request};
//!
//! let me = Responder::new([2, 0, 0, 0, 0, 1], Ipv4Addr::new(192, 168, 105, 2));
//! let req = arp_request([2, 0, 0, 0, 0, 9], Ipv4Addr::new(192, 168, 105, 1), me.ip());
//! let mut out = [0u8; 64];
//! let n = me.reply(&req, &mut out).expect("an ARP reply");
//! assert_eq!(&out[..6], &[2, 0, 0, 0, 0, 9]); // back to the asker
//! assert_eq!(n, 42);
//! ```

use std::net::Ipv4Addr;

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// Length of an Ethernet header.
pub const ETH_LEN: usize = 14;
/// Length of an ARP packet for IPv4 over Ethernet.
pub const ARP_LEN: usize = 28;
/// The broadcast MAC address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// The Internet checksum (RFC 1071) of `data`: the ones' complement of the ones' complement sum
/// of its 16-bit big-endian words, an odd last byte padded with zero.
///
/// ```
/// // A header whose checksum field holds the right value sums to zero.
/// let mut hdr = [0x45, 0, 0, 0x54, 0, 0, 0x40, 0, 0x40, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
/// let c = examples::echo::checksum(&hdr);
/// hdr[10..12].copy_from_slice(&c.to_be_bytes());
/// assert_eq!(examples::echo::checksum(&hdr), 0);
/// ```
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Answers ARP and ICMP echo for one MAC and IPv4 address.
///
/// ```
/// # use std::net::Ipv4Addr;
/// let r = examples::echo::Responder::new([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 2));
/// assert_eq!(r.mac(), [2, 0, 0, 0, 0, 1]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Responder {
    mac: [u8; 6],
    ip: Ipv4Addr,
}

impl Responder {
    /// A responder for `mac` and `ip`.
    ///
    /// ```
    /// # use std::net::Ipv4Addr;
    /// let r = examples::echo::Responder::new([2; 6], Ipv4Addr::new(10, 0, 0, 2));
    /// assert_eq!(r.ip(), Ipv4Addr::new(10, 0, 0, 2));
    /// ```
    pub const fn new(mac: [u8; 6], ip: Ipv4Addr) -> Self {
        Self { mac, ip }
    }

    /// The responder's MAC address.
    ///
    /// ```
    /// # use std::net::Ipv4Addr;
    /// assert_eq!(examples::echo::Responder::new([3; 6], Ipv4Addr::LOCALHOST).mac(), [3; 6]);
    /// ```
    pub const fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The responder's IPv4 address.
    ///
    /// ```
    /// # use std::net::Ipv4Addr;
    /// assert_eq!(examples::echo::Responder::new([3; 6], Ipv4Addr::LOCALHOST).ip(), Ipv4Addr::LOCALHOST);
    /// ```
    pub const fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Builds the reply to `frame` into `out`; returns its length, or `None` when the frame
    /// needs no answer (not for us, not ARP or ICMP echo, malformed) or `out` is too small.
    ///
    /// ```
    /// # use std::net::Ipv4Addr;
    /// let r = examples::echo::Responder::new([2; 6], Ipv4Addr::new(10, 0, 0, 2));
    /// let mut out = [0u8; 1514];
    /// assert_eq!(r.reply(&[0u8; 10], &mut out), None);
    /// ```
    pub fn reply(&self, frame: &[u8], out: &mut [u8]) -> Option<usize> {
        if frame.len() < ETH_LEN {
            return None;
        }
        let dst: [u8; 6] = frame[0..6].try_into().ok()?;
        if dst != self.mac && dst != BROADCAST {
            return None;
        }
        match u16::from_be_bytes([frame[12], frame[13]]) {
            ETHERTYPE_ARP => self.arp_reply(frame, out),
            ETHERTYPE_IPV4 if dst == self.mac => self.icmp_reply(frame, out),
            _ => None,
        }
    }

    fn arp_reply(&self, frame: &[u8], out: &mut [u8]) -> Option<usize> {
        let arp = frame.get(ETH_LEN..ETH_LEN + ARP_LEN)?;
        // htype Ethernet, ptype IPv4, hlen 6, plen 4, oper request.
        if arp[0..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
            return None;
        }
        let sha: [u8; 6] = arp[8..14].try_into().ok()?;
        let spa = &arp[14..18];
        let tpa = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
        if tpa != self.ip {
            return None;
        }
        let out = out.get_mut(..ETH_LEN + ARP_LEN)?;
        out[0..6].copy_from_slice(&sha);
        out[6..12].copy_from_slice(&self.mac);
        out[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        let a = &mut out[ETH_LEN..];
        a[0..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
        a[6..8].copy_from_slice(&2u16.to_be_bytes());
        a[8..14].copy_from_slice(&self.mac);
        a[14..18].copy_from_slice(&self.ip.octets());
        a[18..24].copy_from_slice(&sha);
        a[24..28].copy_from_slice(spa);
        Some(ETH_LEN + ARP_LEN)
    }

    fn icmp_reply(&self, frame: &[u8], out: &mut [u8]) -> Option<usize> {
        let ip = &frame[ETH_LEN..];
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ihl < 20 || total < ihl + 8 || total > ip.len() {
            return None;
        }
        // Fragments (MF set or a non-zero offset) are not answered: we do not reassemble.
        if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
            return None;
        }
        if ip[9] != IPPROTO_ICMP || ip[16..20] != self.ip.octets() || checksum(&ip[..ihl]) != 0 {
            return None;
        }
        let icmp = &ip[ihl..total];
        if icmp[0] != 8 || icmp[1] != 0 || checksum(icmp) != 0 {
            return None;
        }
        let len = ETH_LEN + 20 + icmp.len();
        let out = out.get_mut(..len)?;
        out[0..6].copy_from_slice(&frame[6..12]);
        out[6..12].copy_from_slice(&self.mac);
        out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        // A fresh 20-byte header: request options (record route and the like) are not echoed.
        let h = &mut out[ETH_LEN..ETH_LEN + 20];
        h[0] = 0x45;
        h[1] = 0;
        h[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&ip[4..6]);
        h[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
        h[8] = 64;
        h[9] = IPPROTO_ICMP;
        h[10..12].fill(0);
        h[12..16].copy_from_slice(&self.ip.octets());
        h[16..20].copy_from_slice(&ip[12..16]);
        let c = checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        let r = &mut out[ETH_LEN + 20..];
        r.copy_from_slice(icmp);
        r[0] = 0; // echo reply
        r[2..4].fill(0);
        let c = checksum(r);
        r[2..4].copy_from_slice(&c.to_be_bytes());
        Some(len)
    }
}

/// Builds an ARP request frame (broadcast) from `sha`/`spa` asking for `tpa`; for tests and
/// probes.
///
/// ```
/// # use std::net::Ipv4Addr;
/// let f = examples::echo::arp_request([2; 6], Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
/// assert_eq!(f.len(), 42);
/// assert_eq!(&f[12..14], &[0x08, 0x06]);
/// ```
pub fn arp_request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_LEN + ARP_LEN);
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

/// Builds an ICMP echo request frame; for tests and probes.
///
/// ```
/// # use std::net::Ipv4Addr;
/// let f = examples::echo::echo_request(
///     [2; 6], [3; 6], Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 7, 1, b"hi");
/// assert_eq!(f.len(), 14 + 20 + 8 + 2);
/// ```
pub fn echo_request(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_LEN + 28 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[8] = 64;
    h[9] = IPPROTO_ICMP;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&icmp);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x09];

    fn me() -> Responder {
        Responder::new(ME_MAC, Ipv4Addr::new(192, 168, 105, 2))
    }

    fn peer_ip() -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 105, 1)
    }

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2, complemented 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    #[test]
    fn checksum_pads_an_odd_byte() {
        assert_eq!(checksum(&[0x12]), !0x1200);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn arp_request_for_us_gets_a_reply_addressed_to_the_asker() {
        let req = arp_request(PEER_MAC, peer_ip(), me().ip());
        let mut out = [0u8; 64];
        let n = me().reply(&req, &mut out).unwrap();
        let r = &out[..n];
        assert_eq!(n, 42);
        assert_eq!(&r[0..6], &PEER_MAC);
        assert_eq!(&r[6..12], &ME_MAC);
        assert_eq!(&r[12..14], &[0x08, 0x06]);
        assert_eq!(&r[20..22], &[0, 2], "opcode reply");
        assert_eq!(&r[22..28], &ME_MAC, "sender hardware address");
        assert_eq!(&r[28..32], &me().ip().octets(), "sender protocol address");
        assert_eq!(&r[32..38], &PEER_MAC, "target hardware address");
        assert_eq!(&r[38..42], &peer_ip().octets(), "target protocol address");
    }

    #[test]
    fn arp_request_for_another_address_is_ignored() {
        let req = arp_request(PEER_MAC, peer_ip(), Ipv4Addr::new(192, 168, 105, 3));
        assert_eq!(me().reply(&req, &mut [0u8; 64]), None);
    }

    #[test]
    fn arp_reply_frames_are_not_answered() {
        let mut req = arp_request(PEER_MAC, peer_ip(), me().ip());
        req[21] = 2;
        assert_eq!(me().reply(&req, &mut [0u8; 64]), None);
    }

    #[test]
    fn truncated_arp_is_ignored() {
        let req = arp_request(PEER_MAC, peer_ip(), me().ip());
        assert_eq!(me().reply(&req[..30], &mut [0u8; 64]), None);
    }

    #[test]
    fn reply_needs_room_in_the_output() {
        let req = arp_request(PEER_MAC, peer_ip(), me().ip());
        assert_eq!(me().reply(&req, &mut [0u8; 41]), None);
    }

    #[test]
    fn echo_request_to_us_gets_a_valid_echo_reply() {
        let req = echo_request(PEER_MAC, ME_MAC, peer_ip(), me().ip(), 0x1234, 7, b"abcde");
        let mut out = [0u8; 1514];
        let n = me().reply(&req, &mut out).unwrap();
        let r = &out[..n];
        assert_eq!(n, req.len());
        assert_eq!(&r[0..6], &PEER_MAC);
        assert_eq!(&r[6..12], &ME_MAC);
        let ip = &r[14..34];
        assert_eq!(checksum(ip), 0, "IP header checksum");
        assert_eq!(&ip[12..16], &me().ip().octets());
        assert_eq!(&ip[16..20], &peer_ip().octets());
        let icmp = &r[34..];
        assert_eq!(icmp[0], 0, "echo reply");
        assert_eq!(checksum(icmp), 0, "ICMP checksum");
        assert_eq!(&icmp[4..6], &0x1234u16.to_be_bytes(), "identifier kept");
        assert_eq!(&icmp[6..8], &7u16.to_be_bytes(), "sequence kept");
        assert_eq!(&icmp[8..], b"abcde", "payload echoed");
    }

    #[test]
    fn echo_request_with_ip_options_gets_a_plain_header_reply() {
        let mut req = echo_request(PEER_MAC, ME_MAC, peer_ip(), me().ip(), 1, 1, b"xy");
        // Insert 4 bytes of IP options (NOPs) and fix IHL, length and checksum.
        req.splice(34..34, [1u8, 1, 1, 1]);
        req[14] = 0x46;
        let total = u16::from_be_bytes([req[16], req[17]]) + 4;
        req[16..18].copy_from_slice(&total.to_be_bytes());
        req[24..26].fill(0);
        let c = checksum(&req[14..38]);
        req[24..26].copy_from_slice(&c.to_be_bytes());
        let mut out = [0u8; 1514];
        let n = me().reply(&req, &mut out).unwrap();
        assert_eq!(n, req.len() - 4);
        assert_eq!(out[14], 0x45);
        assert_eq!(checksum(&out[14..34]), 0);
        assert_eq!(checksum(&out[34..n]), 0);
        assert_eq!(&out[42..n], b"xy");
    }

    #[test]
    fn ethernet_padding_after_the_ip_packet_is_not_echoed() {
        let mut req = echo_request(PEER_MAC, ME_MAC, peer_ip(), me().ip(), 1, 1, b"");
        req.resize(60, 0); // minimum Ethernet frame
        let n = me().reply(&req, &mut [0u8; 1514]).unwrap();
        assert_eq!(n, 14 + 20 + 8);
    }

    #[test]
    fn echo_to_another_ip_or_mac_is_ignored() {
        let other_ip = echo_request(
            PEER_MAC,
            ME_MAC,
            peer_ip(),
            Ipv4Addr::new(192, 168, 105, 9),
            1,
            1,
            b"",
        );
        assert_eq!(me().reply(&other_ip, &mut [0u8; 1514]), None);
        let other_mac = echo_request(PEER_MAC, [2; 6], peer_ip(), me().ip(), 1, 1, b"");
        assert_eq!(me().reply(&other_mac, &mut [0u8; 1514]), None);
        let broadcast = echo_request(PEER_MAC, BROADCAST, peer_ip(), me().ip(), 1, 1, b"");
        assert_eq!(me().reply(&broadcast, &mut [0u8; 1514]), None);
    }

    #[test]
    fn corrupted_checksums_are_ignored() {
        let good = echo_request(PEER_MAC, ME_MAC, peer_ip(), me().ip(), 1, 1, b"abc");
        let mut bad_ip = good.clone();
        bad_ip[24] ^= 0xff;
        assert_eq!(me().reply(&bad_ip, &mut [0u8; 1514]), None);
        let mut bad_icmp = good;
        bad_icmp[36] ^= 0xff;
        assert_eq!(me().reply(&bad_icmp, &mut [0u8; 1514]), None);
    }

    #[test]
    fn fragments_and_non_echo_icmp_are_ignored() {
        let mut frag = echo_request(PEER_MAC, ME_MAC, peer_ip(), me().ip(), 1, 1, b"abc");
        frag[20] = 0x20; // MF
        frag[24..26].fill(0);
        let c = checksum(&frag[14..34]);
        frag[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(me().reply(&frag, &mut [0u8; 1514]), None);

        let mut reply = echo_request(PEER_MAC, ME_MAC, peer_ip(), me().ip(), 1, 1, b"abc");
        reply[34] = 0;
        reply[36..38].fill(0);
        let c = checksum(&reply[34..]);
        reply[36..38].copy_from_slice(&c.to_be_bytes());
        assert_eq!(me().reply(&reply, &mut [0u8; 1514]), None);
    }

    #[test]
    fn truncated_ip_is_ignored() {
        let req = echo_request(PEER_MAC, ME_MAC, peer_ip(), me().ip(), 1, 1, b"abcdef");
        assert_eq!(me().reply(&req[..40], &mut [0u8; 1514]), None);
        assert_eq!(me().reply(&req[..20], &mut [0u8; 1514]), None);
    }

    #[test]
    fn other_ethertypes_are_ignored() {
        let mut f = echo_request(PEER_MAC, ME_MAC, peer_ip(), me().ip(), 1, 1, b"");
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(me().reply(&f, &mut [0u8; 1514]), None);
    }
}
