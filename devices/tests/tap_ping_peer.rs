//! The net device against a real Linux network stack.
//!
//! The test builds a small LAN of its own: a "lan" network namespace holding the TAP device and
//! a bridge, and a "peer" namespace whose veth end has 10.77.0.1/24. The simulated driver sends
//! an ARP request and an ICMP echo request through the device; the peer's kernel answers both.
//! Needs root (network namespaces, TAP); prints SKIPPED otherwise.

#![cfg(target_os = "linux")]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::event::Notifier;
use devices::net::tap::Tap;
use devices::testing::DriverSim;
use devices::virtio::GuestMemory;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::{Net, NetConfig};
use vm_memory::GuestAddress;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0x01];
const GUEST_IP: [u8; 4] = [10, 77, 0, 2];
const PEER_IP: [u8; 4] = [10, 77, 0, 1];
const MRG_RXBUF: u64 = 1 << 15;
const EVENT_IDX: u64 = 1 << 29;

/// Runs `ip` with `args`, panicking with its stderr if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the namespaces (and with them the bridge, veth and TAP) when the test ends.
struct Lan {
    lan_ns: String,
    peer_ns: String,
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in [&self.lan_ns, &self.peer_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root for network namespaces and TAP devices".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` command (iproute2)".into());
    }
    None
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn arp_request() -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&PEER_IP);
    f.resize(60, 0);
    f
}

fn echo_request(peer_mac: [u8; 6], id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut iph = vec![0x45, 0];
    iph.extend_from_slice(&total.to_be_bytes());
    iph.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 1, 0, 0]);
    iph.extend_from_slice(&GUEST_IP);
    iph.extend_from_slice(&PEER_IP);
    let c = checksum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&peer_mac);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&iph);
    f.extend_from_slice(&icmp);
    f
}

/// Waits for a received frame that `want` accepts, skipping others (IPv6 noise and the like).
fn try_wait_frame(
    sim: &mut DriverSim,
    timeout: Duration,
    want: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let Ok(frames) = sim.recv_frames(1, left) else {
            return None;
        };
        // Give the buffer back, as a driver would.
        sim.post_rx_buffers(1, 2048).expect("repost");
        if let Some(f) = frames.into_iter().find(|f| want(f)) {
            return Some(f);
        }
    }
}

fn wait_frame(sim: &mut DriverSim, timeout: Duration, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    try_wait_frame(sim, timeout, want)
        .unwrap_or_else(|| panic!("no matching frame within {timeout:?}"))
}

#[test]
fn tap_ping_peer() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED: tap_ping_peer: {reason}");
        return;
    }
    let pid = std::process::id();
    let lan = Lan {
        lan_ns: format!("vnt-lan-{pid}"),
        peer_ns: format!("vnt-peer-{pid}"),
    };
    let tap_name = format!("vnt{}", pid % 1_000_000);
    ip(&["netns", "add", &lan.lan_ns]);
    ip(&["netns", "add", &lan.peer_ns]);

    // The TAP is created in this namespace by the backend, then moved into the LAN.
    let tap = Tap::open(&tap_name).expect("create the TAP device");
    ip(&["link", "set", &tap_name, "netns", &lan.lan_ns]);
    let n = lan.lan_ns.as_str();
    let p = lan.peer_ns.as_str();
    ip(&["-n", n, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", n, "link", "set", &tap_name, "master", "br0"]);
    ip(&[
        "-n", n, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", p,
    ]);
    ip(&["-n", n, "link", "set", "v0", "master", "br0"]);
    for dev in ["br0", "v0", tap_name.as_str()] {
        ip(&["-n", n, "link", "set", dev, "up"]);
    }
    ip(&["-n", p, "addr", "add", "10.77.0.1/24", "dev", "v1"]);
    ip(&["-n", p, "link", "set", "v1", "up"]);

    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
    let net = Net::new(
        Box::new(tap),
        NetConfig {
            mac: Some(MAC),
            ..Default::default()
        },
    );
    let metrics = Arc::clone(net.metrics());
    let irq = Notifier::new().unwrap();
    let sim_irq = irq.try_clone().unwrap();
    let transport = Arc::new(Mutex::new(
        MmioTransport::new(Box::new(net), mem.clone(), irq).unwrap(),
    ));
    let mut sim = DriverSim::new(
        mem,
        transport.clone(),
        sim_irq,
        GuestAddress(0x1000),
        7 << 20,
    );
    let features = sim
        .init(MRG_RXBUF | EVENT_IDX, 256)
        .expect("driver handshake");
    assert_ne!(features & MRG_RXBUF, 0);
    sim.post_rx_buffers(64, 2048).unwrap();

    // Like a real ARP client, ask again if no answer comes (a fresh bridge may take a moment).
    let t0 = Instant::now();
    let is_arp_reply = |f: &[u8]| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == PEER_IP
    };
    let mut reply = None;
    for _ in 0..10 {
        sim.send_frame(&arp_request()).unwrap();
        if let Some(f) = try_wait_frame(&mut sim, Duration::from_secs(1), is_arp_reply) {
            reply = Some(f);
            break;
        }
    }
    let reply = reply.expect("the peer answers the ARP request");
    assert_eq!(&reply[0..6], &MAC, "ARP reply is addressed to the guest");
    assert_eq!(&reply[38..42], &GUEST_IP);
    let mut peer_mac = [0u8; 6];
    peer_mac.copy_from_slice(&reply[22..28]);
    let arp_time = t0.elapsed();

    let payload: Vec<u8> = (0..56u8).collect();
    let t1 = Instant::now();
    sim.send_frame(&echo_request(peer_mac, 0x4242, 1, &payload))
        .unwrap();
    let echo = wait_frame(&mut sim, Duration::from_secs(10), |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 0
    });
    let rtt = t1.elapsed();
    assert_eq!(&echo[26..30], &PEER_IP, "echo reply comes from the peer");
    assert_eq!(&echo[30..34], &GUEST_IP);
    assert_eq!(&echo[38..40], &0x4242u16.to_be_bytes(), "echo id");
    assert_eq!(&echo[40..42], &1u16.to_be_bytes(), "echo sequence");
    assert_eq!(&echo[42..], &payload[..], "echo payload comes back intact");

    assert!(sim.interrupts_seen() > 0, "the interrupt notifier fired");
    let rx = metrics.rx_frames.load(std::sync::atomic::Ordering::Relaxed);
    let tx = metrics.tx_frames.load(std::sync::atomic::Ordering::Relaxed);
    assert!(tx >= 2 && rx >= 2, "tx {tx} rx {rx}");
    assert_eq!(
        metrics
            .bad_chains
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    println!("tap_ping_peer: ARP reply after {arp_time:?}, ICMP echo RTT {rtt:?}");
    drop(sim);
    drop(transport);
}
