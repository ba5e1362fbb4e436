//! The gateway of the model's shared-mode network: the host side of vmnet's NAT network, which
//! answers ARP and ICMP echo for the gateway address and serves DHCP from the range of the
//! interface parameters (`vmnet_start_address_key` is the gateway and first address of the DHCP
//! range, `vmnet_end_address_key` its last, `vmnet_subnet_mask_key` the mask: Apple's pages of
//! those keys). NAT to the outside is not modelled.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// The gateway's MAC address (locally administered, unicast).
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x76, 0x6d, 0x6e, 0x65, 0x74];

#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) ip: Ipv4Addr,
    pub(crate) mask: Ipv4Addr,
    last: Ipv4Addr,
    leases: HashMap<[u8; 6], Ipv4Addr>,
    /// Whether DHCP is served (`vmnet_network_configuration_disable_dhcp` turns it off).
    pub(crate) dhcp: bool,
}

fn csum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&GATEWAY_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let len = 20 + payload.len();
    let mut h = vec![
        0x45,
        0,
        (len >> 8) as u8,
        len as u8,
        0,
        0,
        0x40,
        0,
        64,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

impl Gateway {
    pub(crate) fn new(ip: Ipv4Addr, last: Ipv4Addr, mask: Ipv4Addr) -> Self {
        Self {
            ip,
            mask,
            last,
            leases: HashMap::new(),
            dhcp: true,
        }
    }

    /// The replies to one frame a guest sent (none for anything not for the gateway).
    pub(crate) fn handle(&mut self, f: &[u8]) -> Vec<Vec<u8>> {
        if f.len() < 14 {
            return Vec::new();
        }
        let src_mac: [u8; 6] = f[6..12].try_into().unwrap_or_default();
        match u16::from_be_bytes([f[12], f[13]]) {
            0x0806 => self.arp(src_mac, &f[14..]).into_iter().collect(),
            0x0800 => self.ip(src_mac, &f[14..]).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    fn arp(&self, src_mac: [u8; 6], a: &[u8]) -> Option<Vec<u8>> {
        // Ethernet/IPv4 request for the gateway's address.
        if a.len() < 28 || a[0..8] != [0, 1, 8, 0, 6, 4, 0, 1] || a[24..28] != self.ip.octets() {
            return None;
        }
        let mut r = vec![0, 1, 8, 0, 6, 4, 0, 2];
        r.extend_from_slice(&GATEWAY_MAC);
        r.extend_from_slice(&self.ip.octets());
        r.extend_from_slice(&a[8..18]);
        Some(eth(src_mac, 0x0806, &r))
    }

    fn ip(&mut self, src_mac: [u8; 6], p: &[u8]) -> Option<Vec<u8>> {
        if p.len() < 20 || p[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(p[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
        if ihl < 20 || total < ihl {
            return None;
        }
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let body = &p[ihl..total];
        match p[9] {
            // ICMP echo request to the gateway.
            1 if dst == self.ip && body.len() >= 8 && body[0] == 8 => {
                let mut r = body.to_vec();
                r[0] = 0;
                r[2..4].fill(0);
                let c = csum(&r);
                r[2..4].copy_from_slice(&c.to_be_bytes());
                Some(eth(src_mac, 0x0800, &ipv4(self.ip, src, 1, &r)))
            }
            // DHCP (UDP 68 -> 67).
            17 if self.dhcp && body.len() >= 8 && body[2..4] == [0, 67] => {
                self.dhcp(src_mac, &body[8..])
            }
            _ => None,
        }
    }

    fn lease(&mut self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        if let Some(ip) = self.leases.get(&mac) {
            return Some(*ip);
        }
        let (first, last) = (u32::from(self.ip) + 1, u32::from(self.last));
        let ip = (first..=last)
            .map(Ipv4Addr::from)
            .find(|ip| !self.leases.values().any(|l| l == ip))?;
        self.leases.insert(mac, ip);
        Some(ip)
    }

    fn dhcp(&mut self, mac: [u8; 6], b: &[u8]) -> Option<Vec<u8>> {
        // BOOTREQUEST with the magic cookie (RFC 2131/2132).
        if b.len() < 240 || b[0] != 1 || b[236..240] != [99, 130, 83, 99] {
            return None;
        }
        let mut kind = 0;
        let mut opts = &b[240..];
        while let [code, rest @ ..] = opts {
            match *code {
                0 => opts = rest,
                255 => break,
                _ => {
                    let (&len, rest) = rest.split_first()?;
                    let len = usize::from(len);
                    if rest.len() < len {
                        return None;
                    }
                    if *code == 53 && len == 1 {
                        kind = rest[0];
                    }
                    opts = &rest[len..];
                }
            }
        }
        let reply_kind = match kind {
            1 => 2, // DISCOVER -> OFFER
            3 => 5, // REQUEST -> ACK
            _ => return None,
        };
        let yiaddr = self.lease(mac)?;
        let mut r = vec![0u8; 240];
        r[0] = 2;
        r[1] = 1;
        r[2] = 6;
        r[4..8].copy_from_slice(&b[4..8]); // xid
        r[10..12].copy_from_slice(&b[10..12]); // flags
        r[16..20].copy_from_slice(&yiaddr.octets());
        r[20..24].copy_from_slice(&self.ip.octets());
        r[28..44].copy_from_slice(&b[28..44]); // chaddr
        r[236..240].copy_from_slice(&[99, 130, 83, 99]);
        r.extend_from_slice(&[53, 1, reply_kind, 54, 4]);
        r.extend_from_slice(&self.ip.octets());
        r.extend_from_slice(&[51, 4, 0, 1, 0x51, 0x80, 1, 4]);
        r.extend_from_slice(&self.mask.octets());
        r.extend_from_slice(&[3, 4]);
        r.extend_from_slice(&self.ip.octets());
        r.extend_from_slice(&[6, 4]);
        r.extend_from_slice(&self.ip.octets());
        r.push(255);
        let mut udp = vec![0, 67, 0, 68, 0, 0, 0, 0];
        let ulen = (8 + r.len()) as u16;
        udp[4..6].copy_from_slice(&ulen.to_be_bytes());
        udp.extend_from_slice(&r);
        let ip = ipv4(self.ip, Ipv4Addr::BROADCAST, 17, &udp);
        Some(eth([0xff; 6], 0x0800, &ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_icmp_and_dhcp_for_the_gateway() {
        let mut g = Gateway::new(
            Ipv4Addr::new(192, 168, 64, 1),
            Ipv4Addr::new(192, 168, 64, 254),
            Ipv4Addr::new(255, 255, 255, 0),
        );
        let guest = [2, 0, 0, 0, 0, 9];
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&guest);
        arp.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&guest);
        arp.extend_from_slice(&[192, 168, 64, 2, 0, 0, 0, 0, 0, 0, 192, 168, 64, 1]);
        let r = g.handle(&arp);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0][20..22], [0, 2]);
        assert_eq!(r[0][22..28], GATEWAY_MAC);
        // Another address: no answer.
        arp[41] = 7;
        assert!(g.handle(&arp).is_empty());

        let mut dhcp = vec![0u8; 240];
        dhcp[0] = 1;
        dhcp[28..34].copy_from_slice(&guest);
        dhcp[236..240].copy_from_slice(&[99, 130, 83, 99]);
        dhcp.extend_from_slice(&[53, 1, 1, 255]);
        let mut udp = vec![0, 68, 0, 67, 0, 0, 0, 0];
        udp.extend_from_slice(&dhcp);
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&guest);
        f.extend_from_slice(&[8, 0]);
        f.extend_from_slice(&ipv4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 17, &udp));
        let r = g.handle(&f);
        assert_eq!(r.len(), 1);
        // OFFER of the first address after the gateway.
        assert_eq!(r[0][14 + 20 + 8 + 16..14 + 20 + 8 + 20], [192, 168, 64, 2]);
        assert_eq!(r[0][14 + 20 + 8 + 242], 2);
    }
}
