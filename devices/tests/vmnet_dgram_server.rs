//! `vmnet-dgram` (the vmnet crate's datagram server) with the net device's `dgram:` backend as
//! its client, on Linux: the server runs as its own process, built with the vmnet crate's
//! test-only `model` feature, so its vmnet interface is one of `vmnet-model` (a model of
//! vmnet.framework; it stands in for the framework and does not replace a run on a Mac).
//!
//! The server serves a shared-mode interface (DHCP range 10.77.0.100-200, so the model's
//! gateway is 10.77.0.100) at a socket path, and joins a TAP to the model's shared segment
//! (`--model-tap`); the TAP lives in a "peer" network namespace with 10.77.0.1/24. The simulated
//! driver, through the device and `DgramBackend::connect` (with the vfkit hello), takes the MAC
//! address the server printed, exchanges ARP and ICMP echo with the peer's kernel and with the
//! model's gateway; then SIGTERM stops the server, which must exit cleanly, print counters that
//! match, and remove its socket path.
//!
//! Needs root (prints SKIPPED otherwise) and the server binary built with the model:
//! `cargo build -p vmnet --features model --bin vmnet-dgram` then
//! `cargo test -p devices --features vmnet-model --test vmnet_dgram_server` (both steps of
//! scripts/test). `VMNET_DGRAM` names another binary.

#![cfg(target_os = "linux")]

mod common;

#[cfg(not(feature = "vmnet-model"))]
mod without_model {
    #[test]
    #[ignore = "model-only: runs with cargo test -p devices --features vmnet-model (a step of scripts/test)"]
    fn vmnet_dgram_server_serves_the_dgram_backend() {
        panic!("this test runs against the vmnet model only");
    }
}

#[cfg(feature = "vmnet-model")]
mod with_model {
    use std::io::{BufRead, BufReader, Read};
    use std::net::Ipv4Addr;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::common::{EVENT_IDX, GUEST_IP, MRG_RXBUF, PEER_IP, ip, skip_reason, try_wait_frame};
    use devices::net::socket::SocketOptions;
    use devices::net::socket::dgram::DgramBackend;
    use devices::testing::{DriverSim, attach};
    use devices::virtio::GuestMemory;
    use devices::virtio::net::{Net, NetConfig, NetMetrics};
    use examples::echo;
    use vm_memory::GuestAddress;

    const GATEWAY_IP: [u8; 4] = [10, 77, 0, 100];

    /// The server binary: `VMNET_DGRAM`, or `vmnet-dgram` in the target directory of this test.
    fn server_bin() -> PathBuf {
        if let Some(p) = std::env::var_os("VMNET_DGRAM") {
            return p.into();
        }
        let exe = std::env::current_exe().expect("the test's own path");
        // target/<profile>/deps/<test> -> target/<profile>/vmnet-dgram
        let bin = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("the test lives in target/<profile>/deps")
            .join("vmnet-dgram");
        assert!(
            bin.exists(),
            "{} is missing: build it first with cargo build -p vmnet --features model --bin vmnet-dgram",
            bin.display()
        );
        bin
    }

    /// The namespace and the server process; both are removed when the test ends, even when it
    /// fails.
    struct Cleanup {
        ns: String,
        server: Option<Child>,
        dir: PathBuf,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(mut c) = self.server.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// One JSON line of the server's (its parameters on stdout, its counters on stderr).
    fn json(line: &str) -> serde_json::Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
    }

    fn parse_mac(s: &str) -> [u8; 6] {
        let v: Vec<u8> = s
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).expect("a MAC byte"))
            .collect();
        v.try_into().expect("six MAC bytes")
    }

    fn is_arp_reply_from(f: &[u8], ip: [u8; 4]) -> bool {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == ip
    }

    fn is_echo_reply_from(f: &[u8], ip: [u8; 4]) -> bool {
        f.len() >= 42 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 0 && f[26..30] == ip
    }

    /// ARPs for `target` until it answers (10 tries, a second each); its MAC.
    fn arp(sim: &mut DriverSim, mac: [u8; 6], target: [u8; 4]) -> [u8; 6] {
        for _ in 0..10 {
            let mut req = echo::arp_request(mac, GUEST_IP.into(), target.into());
            req.resize(60, 0);
            sim.send_frame(&req).unwrap();
            if let Some(f) = try_wait_frame(sim, Duration::from_secs(1), |f| {
                is_arp_reply_from(f, target)
            }) {
                assert_eq!(&f[0..6], &mac, "the ARP reply is addressed to the guest");
                return f[22..28].try_into().unwrap();
            }
        }
        panic!(
            "{} does not answer the guest's ARP request through vmnet-dgram",
            Ipv4Addr::from(target)
        );
    }

    fn ping(sim: &mut DriverSim, mac: [u8; 6], to: ([u8; 6], [u8; 4]), seq: u16) {
        let payload: Vec<u8> = (0..56u8).map(|b| b ^ seq as u8).collect();
        let req = echo::echo_request(
            mac,
            to.0,
            GUEST_IP.into(),
            to.1.into(),
            0x4744,
            seq,
            &payload,
        );
        sim.send_frame(&req).unwrap();
        let reply = try_wait_frame(sim, Duration::from_secs(10), |f| {
            is_echo_reply_from(f, to.1)
        })
        .unwrap_or_else(|| panic!("no echo reply from {}", Ipv4Addr::from(to.1)));
        assert_eq!(&reply[30..34], &GUEST_IP);
        assert_eq!(
            &reply[42..],
            &payload[..],
            "the echo payload comes back intact"
        );
    }

    #[test]
    fn vmnet_dgram_server_serves_the_dgram_backend() {
        if let Some(reason) = skip_reason() {
            println!("SKIPPED: vmnet_dgram_server: {reason}");
            return;
        }
        let bin = server_bin();
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("vmnet-dgram-test-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vmnet.sock");
        let tap = format!("vdg{}", pid % 1_000_000);
        let mut cleanup = Cleanup {
            ns: format!("vnt-dgs-{pid}"),
            server: None,
            dir: dir.clone(),
        };
        ip(&["netns", "add", &cleanup.ns]);

        let mut child = Command::new(&bin)
            .args(["--socket".as_ref(), path.as_os_str()])
            .args([
                "--mode",
                "shared",
                "--start-address",
                "10.77.0.100",
                "--end-address",
                "10.77.0.200",
                "--subnet-mask",
                "255.255.255.0",
                "--stats-interval",
                "1",
                "--model-tap",
                &tap,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        cleanup.server = Some(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        if line.is_empty() {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err);
            panic!("vmnet-dgram printed no parameters; it said: {err}");
        }
        println!("vmnet-dgram: {}", line.trim_end());
        assert_eq!(json(&line)["mode"].as_str(), Some("shared"));
        assert_eq!(json(&line)["mtu"].as_u64(), Some(1500));
        assert_eq!(json(&line)["start_address"].as_str(), Some("10.77.0.100"));
        assert_eq!(json(&line)["subnet_mask"].as_str(), Some("255.255.255.0"));
        let mac = parse_mac(json(&line)["mac"].as_str().expect("the interface's MAC"));
        assert!(path.exists(), "the socket path is bound before the line");

        // The stderr of the server, collected while it runs (stats lines and messages).
        let log = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });

        let ns = cleanup.ns.clone();
        ip(&["link", "set", &tap, "netns", &ns]);
        ip(&["-n", &ns, "addr", "add", "10.77.0.1/24", "dev", &tap]);
        ip(&["-n", &ns, "link", "set", &tap, "up"]);

        let backend = DgramBackend::connect(&path, SocketOptions::default(), true)
            .expect("the dgram backend connects to vmnet-dgram");
        let client_stats = Arc::clone(backend.stats());
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let net = Net::new(
            Box::new(backend),
            NetConfig {
                mac: Some(mac),
                ..Default::default()
            },
        );
        let metrics: Arc<NetMetrics> = Arc::clone(net.metrics());
        let (mut sim, transport) =
            attach(Box::new(net), mem, GuestAddress(0x1000), 7 << 20).unwrap();
        sim.init(MRG_RXBUF | EVENT_IDX, 256)
            .expect("driver handshake");
        sim.post_rx_buffers(64, 2048).unwrap();

        let t0 = Instant::now();
        let peer_mac = arp(&mut sim, mac, PEER_IP);
        ping(&mut sim, mac, (peer_mac, PEER_IP), 1);
        let peer_time = t0.elapsed();
        let gw_mac = arp(&mut sim, mac, GATEWAY_IP);
        ping(&mut sim, mac, (gw_mac, GATEWAY_IP), 2);
        ping(&mut sim, mac, (peer_mac, PEER_IP), 3);
        println!("vmnet_dgram_server: peer ARP + ping in {peer_time:?}; gateway ARP + ping done");
        let (tx, rx) = (
            metrics.tx_frames.load(Ordering::Relaxed),
            metrics.rx_frames.load(Ordering::Relaxed),
        );
        assert_eq!(client_stats.truncated.load(Ordering::Relaxed), 0);
        drop((sim, transport, metrics));

        // At least one --stats-interval line before the stop.
        let ran = t0.elapsed();
        if ran < Duration::from_millis(1500) {
            std::thread::sleep(Duration::from_millis(1500) - ran);
        }

        // SIGTERM: a clean stop, the counters, the path removed.
        let mut child = cleanup.server.take().unwrap();
        // SAFETY: kill takes no pointers; the child is ours and has not been reaped.
        let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(r, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("vmnet-dgram did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = log.join().unwrap();
        println!("vmnet-dgram's standard error:\n{err}");
        assert!(status.success(), "vmnet-dgram exited with {status}");
        assert!(
            !path.exists(),
            "vmnet-dgram removes its socket path at exit"
        );
        let stats = err
            .lines()
            .rev()
            .find(|l| l.starts_with("{\"stats\":"))
            .expect("counters printed at exit");
        let n = |k: &str| {
            json(stats)["stats"][k]
                .as_u64()
                .unwrap_or_else(|| panic!("{k} in {stats}"))
        };
        assert_eq!(n("hellos"), 1, "the vfkit hello is taken, not forwarded");
        assert_eq!(n("peers_linked"), 1);
        // Every frame the guest sent reached vmnet; the replies (and whatever else the segment
        // carried, such as the peer's IPv6 chatter) came back.
        assert_eq!(n("to_vmnet_frames"), tx, "frames the guest sent: {tx}");
        assert!(n("to_socket_frames") >= rx && rx >= 5, "rx {rx}: {stats}");
        for k in [
            "drop_runt",
            "drop_oversized",
            "drop_vmnet_error",
            "drop_foreign_sender",
        ] {
            assert_eq!(n(k), 0, "{k}: {stats}");
        }
        assert!(
            err.lines().filter(|l| l.starts_with("{\"stats\":")).count() >= 2,
            "--stats-interval prints counters while running too"
        );
    }
}
