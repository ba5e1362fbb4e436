//! The net device against a real Linux network stack.
//!
//! The test builds a small LAN of its own: a "lan" network namespace holding the TAP device and
//! a bridge, and a "peer" namespace whose veth end has 10.77.0.1/24. The simulated driver sends
//! an ARP request and an ICMP echo request through the device; the peer's kernel answers both.
//! Needs root (network namespaces, TAP); prints SKIPPED otherwise.

#![cfg(target_os = "linux")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    EVENT_IDX, GUEST_IP, Lan, MAC, MRG_RXBUF, PEER_IP, arp_request, echo_request, is_arp_reply,
    is_echo_reply, skip_reason, try_wait_frame, wait_frame,
};
use devices::testing::attach;
use devices::virtio::GuestMemory;
use devices::virtio::net::{Net, NetConfig};
use vm_memory::GuestAddress;

#[test]
fn tap_ping_peer() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED: tap_ping_peer: {reason}");
        return;
    }
    // No tag: this is the only test of its binary (process).
    let (_lan, tap) = Lan::build("");

    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
    let net = Net::new(
        Box::new(tap),
        NetConfig {
            mac: Some(MAC),
            ..Default::default()
        },
    );
    let metrics = Arc::clone(net.metrics());
    let (mut sim, transport) = attach(Box::new(net), mem, GuestAddress(0x1000), 7 << 20).unwrap();
    let features = sim
        .init(MRG_RXBUF | EVENT_IDX, 256)
        .expect("driver handshake");
    assert_ne!(features & MRG_RXBUF, 0);
    sim.post_rx_buffers(64, 2048).unwrap();

    // Like a real ARP client, ask again if no answer comes (a fresh bridge may take a moment).
    let t0 = Instant::now();
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
    // Ask for an interrupt at the next used RX buffer, as a driver going to sleep does: the
    // reply must raise it (with EVENT_IDX the device interrupts only when asked).
    sim.rearm(0).unwrap();
    let raised = metrics
        .interrupts
        .load(std::sync::atomic::Ordering::Relaxed);
    let t1 = Instant::now();
    sim.send_frame(&echo_request(peer_mac, 0x4242, 1, &payload))
        .unwrap();
    let echo = wait_frame(&mut sim, Duration::from_secs(10), is_echo_reply);
    let rtt = t1.elapsed();
    assert_eq!(&echo[26..30], &PEER_IP, "echo reply comes from the peer");
    assert_eq!(&echo[30..34], &GUEST_IP);
    assert_eq!(&echo[38..40], &0x4242u16.to_be_bytes(), "echo id");
    assert_eq!(&echo[40..42], &1u16.to_be_bytes(), "echo sequence");
    assert_eq!(&echo[42..], &payload[..], "echo payload comes back intact");

    assert!(
        metrics
            .interrupts
            .load(std::sync::atomic::Ordering::Relaxed)
            > raised,
        "the reply raised the interrupt the driver asked for"
    );
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
