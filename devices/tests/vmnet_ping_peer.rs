//! The net device with its vmnet backend, against a real Linux network stack, on Linux: the
//! `vmnet` binding runs against `vmnet-model` (a model of vmnet.framework; it stands in for the
//! framework and does not replace a run on a Mac).
//!
//! Like `tap_ping_peer`: the simulated driver sends an ARP request and an ICMP echo request
//! through the device and the vmnet backend into a host-mode interface of the model; a TAP
//! joined to the model's host network, living in a "peer" network namespace with
//! 10.77.0.1/24, brings them to the peer's kernel, which answers both. Afterwards nothing the
//! binding got from the model (xpc objects, queues, blocks, the interface) may be left over.
//! `vmnet_faults_are_counted_and_the_device_keeps_serving` makes the model fail reads and writes
//! (`VMNET_BUFFER_EXHAUSTED`, `VMNET_FAILURE`, a short read) while the guest talks to the peer.
//! Needs root; prints SKIPPED otherwise. Run with
//! `cargo test -p devices --features vmnet-model --test vmnet_ping_peer`.

#![cfg(target_os = "linux")]

mod common;

#[cfg(not(feature = "vmnet-model"))]
mod without_model {
    #[test]
    #[ignore = "model-only: runs with cargo test -p devices --features vmnet-model (a step of scripts/test)"]
    fn vmnet_ping_peer() {
        panic!("this test runs against the vmnet model only");
    }

    #[test]
    #[ignore = "model-only: runs with cargo test -p devices --features vmnet-model (a step of scripts/test)"]
    fn vmnet_faults_are_counted_and_the_device_keeps_serving() {
        panic!("this test runs against the vmnet model only");
    }
}

#[cfg(feature = "vmnet-model")]
mod with_model {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
    use std::time::{Duration, Instant};

    use super::common::{
        EVENT_IDX, GUEST_IP, MAC, MRG_RXBUF, PEER_IP, arp_request, echo_request, is_arp_reply,
        is_echo_reply, skip_reason, try_wait_frame, wait_frame,
    };
    use devices::net::vmnet::VmnetBackend;
    use devices::testing::{DriverSim, attach};
    use devices::virtio::GuestMemory;
    use devices::virtio::mmio::MmioTransport;
    use devices::virtio::net::{Net, NetConfig, NetMetrics};
    use vm_memory::GuestAddress;
    use vmnet_model::vmnet::{self as model, Fault, TapSegment};

    /// The model's faults and counts are process-wide: one test at a time.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    /// The guest's device on a host-mode interface of the model, whose host network reaches a
    /// peer namespace (10.77.0.1/24) through a TAP.
    struct Setup {
        sim: DriverSim,
        transport: Arc<Mutex<MmioTransport>>,
        metrics: Arc<NetMetrics>,
        _peer: model::Peer,
        before: vmnet_model::Accounting,
        _lock: MutexGuard<'static, ()>,
    }

    fn setup(tag: &str) -> Option<Setup> {
        if let Some(reason) = skip_reason() {
            println!("SKIPPED: {tag}: {reason}");
            return None;
        }
        let lock = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        model::reset();
        let before = vmnet_model::accounting();
        let pid = std::process::id();
        let peer = model::Peer::new(
            &format!("vnt-{tag}-{pid}"),
            &format!("v{tag}{}", pid % 1_000_000),
            TapSegment::Host,
            "10.77.0.1/24",
        )
        .expect("a peer namespace behind the model's TAP");

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
        let (mut sim, transport) =
            attach(Box::new(net), mem, GuestAddress(0x1000), 7 << 20).unwrap();
        sim.init(MRG_RXBUF | EVENT_IDX, 256)
            .expect("driver handshake");
        sim.post_rx_buffers(64, 2048).unwrap();
        Some(Setup {
            sim,
            transport,
            metrics,
            _peer: peer,
            before,
            _lock: lock,
        })
    }

    impl Setup {
        /// ARP for the peer until it answers (10 tries); the peer's MAC.
        fn arp(&mut self) -> [u8; 6] {
            for _ in 0..10 {
                self.sim.send_frame(&arp_request()).unwrap();
                if let Some(f) = try_wait_frame(&mut self.sim, Duration::from_secs(1), is_arp_reply)
                {
                    assert_eq!(&f[0..6], &MAC, "ARP reply is addressed to the guest");
                    assert_eq!(&f[38..42], &GUEST_IP);
                    return f[22..28].try_into().unwrap();
                }
            }
            panic!("the peer does not answer the ARP request");
        }

        fn ping(&mut self, peer_mac: [u8; 6], seq: u16) {
            let payload: Vec<u8> = (0..56u8).collect();
            self.sim
                .send_frame(&echo_request(peer_mac, 0x4243, seq, &payload))
                .unwrap();
            let echo = wait_frame(&mut self.sim, Duration::from_secs(10), is_echo_reply);
            assert_eq!(&echo[26..30], &PEER_IP, "echo reply comes from the peer");
            assert_eq!(&echo[30..34], &GUEST_IP);
            assert_eq!(&echo[42..], &payload[..], "echo payload comes back intact");
        }

        fn metric(&self, m: impl Fn(&NetMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
            m(&self.metrics).load(Ordering::Relaxed)
        }

        /// Stops the device (the backend's Drop stops the interface) and checks that nothing
        /// the binding got from the model is left over.
        fn finish(self) {
            let Setup {
                sim,
                transport,
                metrics,
                _peer: peer,
                before,
                ..
            } = self;
            assert_eq!(metrics.bad_chains.load(Ordering::Relaxed), 0);
            drop((sim, transport, metrics, peer));
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut leaks = vmnet_model::accounting().leaks_since(&before);
            while !leaks.is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                leaks = vmnet_model::accounting().leaks_since(&before);
            }
            model::reset();
            assert!(leaks.is_empty(), "leak check: {leaks:#?}");
        }
    }

    /// Waits up to 5 s for `f` to hold.
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn vmnet_ping_peer() {
        let Some(mut s) = setup("ping") else { return };
        let t0 = Instant::now();
        let peer_mac = s.arp();
        let arp_time = t0.elapsed();
        let t1 = Instant::now();
        s.ping(peer_mac, 1);
        let rtt = t1.elapsed();
        let (rx, tx) = (s.metric(|m| &m.rx_frames), s.metric(|m| &m.tx_frames));
        assert!(tx >= 2 && rx >= 2, "tx {tx} rx {rx}");
        println!("vmnet_ping_peer: ARP reply after {arp_time:?}, ICMP echo RTT {rtt:?}");
        s.finish();
    }

    #[test]
    fn vmnet_faults_are_counted_and_the_device_keeps_serving() {
        let Some(mut s) = setup("fault") else { return };
        let peer_mac = s.arp();

        // The host's queue is full: the frame is dropped like on a full ring, and counted.
        let dropped = s.metric(|m| &m.tx_dropped);
        let errors = s.metric(|m| &m.tx_errors);
        model::inject_write(Fault::Status(vmnet::sys::VMNET_BUFFER_EXHAUSTED));
        s.sim.send_frame(&arp_request()).unwrap();
        eventually(
            "a TX frame refused with VMNET_BUFFER_EXHAUSTED is counted as dropped",
            || s.metric(|m| &m.tx_dropped) > dropped,
        );

        assert_eq!(
            s.metric(|m| &m.tx_errors),
            errors,
            "a full host queue is no error"
        );

        // A failing write: a TX error, counted.
        model::inject_write(Fault::Status(vmnet::sys::VMNET_FAILURE));
        s.sim.send_frame(&arp_request()).unwrap();
        eventually("a failing vmnet_write is counted as a TX error", || {
            s.metric(|m| &m.tx_errors) > errors
        });
        s.ping(peer_mac, 2);

        // A failing read, then a short one: counted; the frames still arrive.
        let rx_errors = s.metric(|m| &m.rx_errors);
        model::inject_read(Fault::Status(vmnet::sys::VMNET_FAILURE));
        model::inject_read(Fault::Short(1));
        for seq in 3..6 {
            s.ping(peer_mac, seq);
        }
        assert!(
            s.metric(|m| &m.rx_errors) > rx_errors,
            "a failing vmnet_read is counted as an RX error"
        );
        println!(
            "vmnet faults: tx_dropped {}, tx_errors {}, rx_errors {}",
            s.metric(|m| &m.tx_dropped),
            s.metric(|m| &m.tx_errors),
            s.metric(|m| &m.rx_errors)
        );
        s.finish();
    }
}
