//! The net device with its vmnet backend, against a real Linux network stack, on Linux: the
//! `vmnet` binding runs against `vmnet-model` (a model of vmnet.framework; it stands in for the
//! framework and does not replace a run on a Mac).
//!
//! Like `tap_ping_peer`: the simulated driver sends an ARP request and an ICMP echo request
//! through the device and the vmnet backend into a host-mode interface of the model; a TAP
//! joined to the model's host network, living in a "peer" network namespace with
//! 10.77.0.1/24, brings them to the peer's kernel, which answers both. Afterwards nothing the
//! binding got from the model (xpc objects, queues, blocks, the interface) may be left over.
//! Needs root; prints SKIPPED otherwise. Run with
//! `cargo test -p devices --features vmnet-model --test vmnet_ping_peer`.

#![cfg(target_os = "linux")]

mod common;

#[cfg(not(feature = "vmnet-model"))]
#[test]
#[ignore = "model-only: runs with cargo test -p devices --features vmnet-model (a step of scripts/test)"]
fn vmnet_ping_peer() {
    panic!("this test runs against the vmnet model only");
}

#[cfg(feature = "vmnet-model")]
#[test]
fn vmnet_ping_peer() {
    use std::process::Command;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use common::{
        EVENT_IDX, GUEST_IP, MAC, MRG_RXBUF, PEER_IP, arp_request, echo_request, ip, is_arp_reply,
        is_echo_reply, skip_reason, try_wait_frame, wait_frame,
    };
    use devices::net::vmnet::VmnetBackend;
    use devices::testing::attach;
    use devices::virtio::GuestMemory;
    use devices::virtio::net::{Net, NetConfig};
    use vm_memory::GuestAddress;

    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    if let Some(reason) = skip_reason() {
        println!("SKIPPED: vmnet_ping_peer: {reason}");
        return;
    }
    let before = vmnet_model::accounting();
    let pid = std::process::id();
    let ns = Netns(format!("vnt-vmnet-{pid}"));
    ip(&["netns", "add", &ns.0]);
    let tap = vmnet_model::vmnet::attach_tap(
        &format!("vnm{}", pid % 1_000_000),
        vmnet_model::vmnet::TapSegment::Host,
    )
    .expect("create the model's TAP");
    ip(&["link", "set", tap.name(), "netns", &ns.0]);
    ip(&[
        "-n",
        &ns.0,
        "addr",
        "add",
        "10.77.0.1/24",
        "dev",
        tap.name(),
    ]);
    ip(&["-n", &ns.0, "link", "set", tap.name(), "up"]);

    let backend = VmnetBackend::start(&vmnet::Options::host(), Duration::from_secs(10))
        .expect("start the vmnet backend on the model");
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
    let net = Net::new(
        Box::new(backend),
        NetConfig {
            mac: Some(MAC),
            ..Default::default()
        },
    );
    let metrics = Arc::clone(net.metrics());
    let (mut sim, transport) = attach(Box::new(net), mem, GuestAddress(0x1000), 7 << 20).unwrap();
    sim.init(MRG_RXBUF | EVENT_IDX, 256)
        .expect("driver handshake");
    sim.post_rx_buffers(64, 2048).unwrap();

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
    let t1 = Instant::now();
    sim.send_frame(&echo_request(peer_mac, 0x4243, 1, &payload))
        .unwrap();
    let echo = wait_frame(&mut sim, Duration::from_secs(10), is_echo_reply);
    let rtt = t1.elapsed();
    assert_eq!(&echo[26..30], &PEER_IP, "echo reply comes from the peer");
    assert_eq!(&echo[30..34], &GUEST_IP);
    assert_eq!(&echo[42..], &payload[..], "echo payload comes back intact");
    let rx = metrics.rx_frames.load(Ordering::Relaxed);
    let tx = metrics.tx_frames.load(Ordering::Relaxed);
    assert!(tx >= 2 && rx >= 2, "tx {tx} rx {rx}");
    assert_eq!(metrics.bad_chains.load(Ordering::Relaxed), 0);
    println!("vmnet_ping_peer: ARP reply after {arp_time:?}, ICMP echo RTT {rtt:?}");

    // Stopping the device stops the interface (the backend's Drop); then nothing may be left.
    drop(sim);
    drop(transport);
    drop(tap);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut leaks = vmnet_model::accounting().leaks_since(&before);
    while !leaks.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        leaks = vmnet_model::accounting().leaks_since(&before);
    }
    assert!(leaks.is_empty(), "leak check: {leaks:#?}");
}
