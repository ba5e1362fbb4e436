//! What the TAP integration tests share: a small LAN of network namespaces around a TAP device,
//! and the ARP and ICMP frames a simulated guest exchanges with the peer on it (built with the
//! `examples` package's `echo` module).
//!
//! The LAN: a "lan" namespace holding the TAP device and a bridge, and a "peer" namespace whose
//! veth end (bridged in the lan namespace) has [`PEER_IP`]/24. The guest is [`GUEST_IP`] with
//! [`MAC`]. Needs root; [`skip_reason`] says why a test cannot run.

// Each test crate that includes this module uses its own subset of it.
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use devices::net::tap::Tap;
use devices::testing::DriverSim;
use examples::echo;

pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0x01];
pub const GUEST_IP: [u8; 4] = [10, 77, 0, 2];
pub const PEER_IP: [u8; 4] = [10, 77, 0, 1];
pub const MRG_RXBUF: u64 = 1 << 15;
pub const EVENT_IDX: u64 = 1 << 29;

/// Runs `ip` with `args`, panicking with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Why the TAP tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
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

/// The namespaces of one test's LAN; deletes them (and with them the bridge, veth and TAP) when
/// the test ends.
pub struct Lan {
    pub lan_ns: String,
    pub peer_ns: String,
    pub tap_name: String,
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in [&self.lan_ns, &self.peer_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Lan {
    /// Builds a LAN whose names carry `tag` (at most 4 characters, distinct per test of one
    /// process, so tests can run in parallel) and returns it with the TAP device's backend.
    pub fn build(tag: &str) -> (Self, Tap) {
        let pid = std::process::id();
        let lan = Self {
            lan_ns: format!("vnt-lan-{tag}{pid}"),
            peer_ns: format!("vnt-peer-{tag}{pid}"),
            tap_name: format!("vnt{tag}{}", pid % 1_000_000),
        };
        ip(&["netns", "add", &lan.lan_ns]);
        ip(&["netns", "add", &lan.peer_ns]);

        // The TAP is created in this namespace by the backend, then moved into the LAN.
        let tap = Tap::open(&lan.tap_name).expect("create the TAP device");
        let (n, p, t) = (
            lan.lan_ns.as_str(),
            lan.peer_ns.as_str(),
            lan.tap_name.as_str(),
        );
        ip(&["link", "set", t, "netns", n]);
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", n, "link", "set", t, "master", "br0"]);
        ip(&[
            "-n", n, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", p,
        ]);
        ip(&["-n", n, "link", "set", "v0", "master", "br0"]);
        for dev in ["br0", "v0", t] {
            ip(&["-n", n, "link", "set", dev, "up"]);
        }
        ip(&["-n", p, "addr", "add", "10.77.0.1/24", "dev", "v1"]);
        ip(&["-n", p, "link", "set", "v1", "up"]);
        (lan, tap)
    }

    /// Runs `ip -n <lan namespace> link set <tap> <args…>`.
    pub fn set_tap(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.lan_ns, "link", "set", &self.tap_name];
        all.extend_from_slice(args);
        ip(&all);
    }
}

/// The guest's ARP request for [`PEER_IP`], padded to the 60-byte Ethernet minimum as a NIC
/// pads it.
pub fn arp_request() -> Vec<u8> {
    let mut f = echo::arp_request(MAC, GUEST_IP.into(), PEER_IP.into());
    f.resize(60, 0);
    f
}

/// Whether `f` is the peer's ARP reply.
pub fn is_arp_reply(f: &[u8]) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == PEER_IP
}

/// Whether `f` is an ICMP echo reply (to anyone).
pub fn is_echo_reply(f: &[u8]) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 0
}

/// The guest's ICMP echo request to the peer.
pub fn echo_request(peer_mac: [u8; 6], id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    echo::echo_request(
        MAC,
        peer_mac,
        GUEST_IP.into(),
        PEER_IP.into(),
        id,
        seq,
        payload,
    )
}

/// Waits for a received frame that `want` accepts, skipping others (IPv6 noise and the like).
pub fn try_wait_frame(
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

pub fn wait_frame(sim: &mut DriverSim, timeout: Duration, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    try_wait_frame(sim, timeout, want)
        .unwrap_or_else(|| panic!("no matching frame within {timeout:?}"))
}

/// Resolves the peer's MAC address, asking again once a second (a fresh bridge port may take a
/// moment to forward) for up to `tries` seconds. Returns `None` if the peer never answers.
pub fn resolve_peer(sim: &mut DriverSim, tries: u32) -> Option<[u8; 6]> {
    for _ in 0..tries {
        sim.send_frame(&arp_request()).expect("send ARP request");
        // Reap the request's TX buffer, so that callers start with none in flight.
        sim.wait_used(1, 1, Duration::from_secs(10))
            .expect("the ARP request's TX buffer comes back");
        if let Some(f) = try_wait_frame(sim, Duration::from_secs(1), is_arp_reply) {
            let mut peer_mac = [0u8; 6];
            peer_mac.copy_from_slice(&f[22..28]);
            return Some(peer_mac);
        }
    }
    None
}
