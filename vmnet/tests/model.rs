//! Tests of the binding that only the model of vmnet.framework can make (Linux,
//! `cargo test -p vmnet --features model`): every declared vmnet function called, shared mode's
//! DHCP/ARP/ICMP gateway, injected faults, and each reading of what Apple's documentation leaves
//! open. After each test the model's accounting must show nothing leaked or over-released.
//! Without the feature (and on macOS) the names exist, ignored.

#[cfg(not(all(not(target_os = "macos"), feature = "model")))]
#[macro_use]
#[path = "common/model_only.rs"]
mod model_only;

#[cfg(not(all(not(target_os = "macos"), feature = "model")))]
mod without_model {
    model_only!(
        every_declared_vmnet_function_is_called,
        shared_mode_serves_dhcp_and_answers_the_gateway,
        read_and_write_faults_are_errors_and_the_interface_keeps_working,
        a_read_cut_short_by_an_error_leaves_the_rest_readable,
        short_reads_and_writes_are_reported,
        an_event_after_stop_is_harmless,
        missing_privileges_are_permission_errors,
        every_reading_of_the_virtio_header_size_carries_a_full_frame,
        multi_iovec_refusal_falls_back_to_linearised_writes,
        releases_without_newer_keys,
        the_model_enforces_the_documented_call_limits,
        the_leak_check_catches_a_leak,
        host_mode_reaches_a_linux_stack_over_a_tap,
        a_stop_while_reads_are_in_flight_is_safe,
    );
}

#[cfg(all(not(target_os = "macos"), feature = "model"))]
#[path = "common/model_guard.rs"]
mod model_guard;

#[cfg(all(not(target_os = "macos"), feature = "model"))]
mod with_model {
    use std::collections::BTreeSet;
    use std::ffi::{c_int, c_void};
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use block2::RcBlock;
    use examples::echo::{arp_request, echo_request};
    use vmnet::batch::{Batch, VmPktDesc};
    use vmnet::forward::{Family, PortForward, Protocol};
    use vmnet::iov::{iovec_mut, iovec_ref};
    use vmnet::{Error, Interface, Options, Status, sys};
    use vmnet_model::vmnet::{self as model, Fault, Privileges};

    use super::model_guard::Guard;

    const T: Duration = Duration::from_secs(5);

    fn start(options: &Options) -> Interface {
        Interface::start(options, T).unwrap_or_else(|e| panic!("start: {e:?}"))
    }

    /// A broadcast frame of `len` bytes (local experimental EtherType 0x88b5).
    fn broadcast(src: [u8; 6], len: usize) -> Vec<u8> {
        let mut f = vec![0x5a; len];
        f[..6].fill(0xff);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
        f
    }

    /// Reads frames from `iface` until `want` matches one (or 5 s pass).
    fn expect(iface: &Interface, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let mut bufs = vec![vec![0u8; iface.limits().read_capacity()]; 16];
        let mut lens = [0usize; 16];
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            iface.wait_readable(Some(Duration::from_millis(50)));
            let n = iface.read_batch(&mut bufs, &mut lens).unwrap();
            if let Some(i) = (0..n).find(|&i| want(&bufs[i][..lens[i]])) {
                return Some(bufs[i][..lens[i]].to_vec());
            }
        }
        None
    }

    /// The vmnet functions `vmnet::sys` declares in this build (its `pub fn vmnet_*`, without
    /// the extern blocks of features that are off).
    fn declared() -> BTreeSet<String> {
        let src = include_str!("../src/sys.rs");
        let mut out = BTreeSet::new();
        let mut gate_on = true;
        let mut prev: Vec<&str> = Vec::new();
        for line in src.lines() {
            if line.starts_with("unsafe extern \"C\" {") {
                gate_on = prev.iter().rev().take(3).all(|l| {
                    let Some(f) = l.strip_prefix("#[cfg(feature = \"") else {
                        return true;
                    };
                    let f = f.trim_end_matches("\")]");
                    !matches!(
                        (f, cfg!(feature = "macos-12"), cfg!(feature = "macos-15")),
                        ("macos-12", false, _) | ("macos-15", _, false)
                    ) && !matches!(
                        (f, cfg!(feature = "macos-15-4"), cfg!(feature = "macos-26")),
                        ("macos-15-4", false, _) | ("macos-26", _, false)
                    )
                });
            }
            if let Some(rest) = line.trim().strip_prefix("pub fn vmnet_") {
                let name = rest.split('(').next().unwrap_or_default();
                if gate_on {
                    out.insert(format!("vmnet_{name}"));
                }
            }
            prev.push(line);
        }
        out
    }

    #[test]
    fn every_declared_vmnet_function_is_called() {
        let _g = Guard::new();
        let before = model::calls();
        // The safe API.
        assert_eq!(vmnet::shared_interface_list(), ["en0"]);
        let a = start(&Options::shared());
        let b = start(&Options::shared());
        a.write_batch(&[broadcast(a.params().mac.unwrap(), 60)])
            .unwrap();
        assert!(expect(&b, |f| f[12..14] == [0x88, 0xb5]).is_some());
        let v4 = PortForward::new(Protocol::Tcp, 2222, "192.168.64.2".parse().unwrap(), 22);
        let v6 = PortForward::new(Protocol::Udp, 5353, "fd00::2".parse().unwrap(), 53);
        a.add_port_forward(&v4, T).unwrap();
        a.add_port_forward(&v6, T).unwrap();
        assert_eq!(a.port_forwards(Family::V4, T).unwrap(), [v4]);
        assert_eq!(a.port_forwards(Family::V6, T).unwrap(), [v6]);
        a.remove_port_forward(Protocol::Udp, 5353, Family::V6, T)
            .unwrap();
        // The pre-macOS 12 forwarding functions, which the safe layer does not use.
        let (tx, rx) = crossbeam_channel::bounded::<u32>(4);
        let status = RcBlock::new(move |s: u32| {
            let _ = tx.send(s);
        });
        // SAFETY: started interface; the model copies the block.
        let raw = unsafe { a.as_raw() };
        let addr = libc::in_addr {
            s_addr: u32::from_ne_bytes([192, 168, 64, 3]),
        };
        // SAFETY: a started interface, a live block.
        let s = unsafe {
            sys::vmnet_interface_add_port_forwarding_rule(
                raw,
                17,
                6000,
                addr,
                60,
                RcBlock::as_ptr(&status),
            )
        };
        assert_eq!(s, sys::VMNET_SUCCESS);
        assert_eq!(rx.recv_timeout(T), Ok(sys::VMNET_SUCCESS));
        let (rtx, rrx) = crossbeam_channel::bounded::<Vec<(u8, u16, [u8; 4], u16)>>(1);
        let rules = RcBlock::new(move |arr: *mut c_void| {
            let mut out = Vec::new();
            // SAFETY: the rules array is alive during the handler.
            let n = unsafe { vmnet::xpc::xpc_array_get_count(arr) };
            for i in 0..n {
                let (mut p, mut e, mut ip, mut a) = (0u8, 0u16, libc::in_addr { s_addr: 0 }, 0u16);
                // SAFETY: a rule of the array; live out-pointers.
                let s = unsafe {
                    sys::vmnet_port_forwarding_rule_get_details(
                        vmnet::xpc::xpc_array_get_value(arr, i),
                        &mut p,
                        &mut e,
                        &mut ip,
                        &mut a,
                    )
                };
                if s == sys::VMNET_SUCCESS {
                    out.push((p, e, ip.s_addr.to_ne_bytes(), a));
                }
            }
            let _ = rtx.send(out);
        });
        // SAFETY: started interface, live block.
        let s =
            unsafe { sys::vmnet_interface_get_port_forwarding_rules(raw, RcBlock::as_ptr(&rules)) };
        assert_eq!(s, sys::VMNET_SUCCESS);
        let got = rrx.recv_timeout(T).unwrap();
        assert!(got.contains(&(17, 6000, [192, 168, 64, 3], 60)), "{got:?}");
        assert!(got.contains(&(6, 2222, [192, 168, 64, 2], 22)), "{got:?}");
        // SAFETY: started interface, live block.
        let s = unsafe {
            sys::vmnet_interface_remove_port_forwarding_rule(
                raw,
                17,
                6000,
                RcBlock::as_ptr(&status),
            )
        };
        assert_eq!(s, sys::VMNET_SUCCESS);
        assert_eq!(rx.recv_timeout(T), Ok(sys::VMNET_SUCCESS));
        a.stop(T).unwrap();
        b.stop(T).unwrap();
        #[cfg(feature = "macos-26")]
        network_tour();

        let after = model::calls();
        let called: BTreeSet<String> = after
            .iter()
            .filter(|(k, n)| **n > before.get(*k).copied().unwrap_or(0))
            .map(|(k, _)| k.to_string())
            .collect();
        let declared = declared();
        let uncalled: Vec<&String> = declared.difference(&called).collect();
        println!(
            "vmnet functions declared by vmnet::sys in this build ({}):",
            declared.len()
        );
        for f in &declared {
            let n = after.get(f.as_str()).copied().unwrap_or(0)
                - before.get(f.as_str()).copied().unwrap_or(0);
            println!("  {f:50} called {n} times");
        }
        println!("declared but never called: {uncalled:?}");
        assert!(
            declared.len() >= 14,
            "the parse of sys.rs found too little: {declared:?}"
        );
        assert!(
            uncalled.is_empty(),
            "declared but never called: {uncalled:?}"
        );
    }

    /// A DHCP message (RFC 2131) of `kind` from `mac`.
    fn dhcp(mac: [u8; 6], kind: u8, xid: u32, requested: Option<Ipv4Addr>) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&xid.to_be_bytes());
        b[28..34].copy_from_slice(&mac);
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(&[53, 1, kind]);
        if let Some(ip) = requested {
            b.extend_from_slice(&[50, 4]);
            b.extend_from_slice(&ip.octets());
        }
        b.push(255);
        let mut udp = vec![0, 68, 0, 67];
        udp.extend_from_slice(&((8 + b.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&b);
        let len = (20 + udp.len()) as u16;
        let mut ip = vec![
            0x45,
            0,
            (len >> 8) as u8,
            len as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
            0,
            0,
            0,
            0,
            255,
            255,
            255,
            255,
        ];
        let c = examples::echo::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&udp);
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[8, 0]);
        f.extend_from_slice(&ip);
        f
    }

    fn dhcp_reply(f: &[u8], xid: u32) -> Option<(u8, Ipv4Addr)> {
        let b = f.get(14 + 20 + 8..)?;
        if f[12..14] != [8, 0]
            || f[23] != 17
            || b.len() < 243
            || b[0] != 2
            || b[4..8] != xid.to_be_bytes()
        {
            return None;
        }
        (b[240] == 53).then(|| (b[242], Ipv4Addr::new(b[16], b[17], b[18], b[19])))
    }

    /// The macOS 26 path: a configuration, a network, its serialization and a second network
    /// from it; one interface on each, which see each other (the same network) and get DHCP from
    /// the configured subnet.
    #[cfg(feature = "macos-26")]
    fn network_tour() {
        use vmnet::network::{Network, NetworkConfiguration};
        let mut c = NetworkConfiguration::new(vmnet::Mode::Shared).unwrap();
        c.set_ipv4_subnet(Ipv4Addr::new(10, 99, 0, 0), Ipv4Addr::new(255, 255, 255, 0))
            .unwrap();
        assert!(
            c.set_ipv4_subnet(Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(255, 255, 255, 0))
                .is_err()
        );
        c.set_ipv6_prefix("fd00:99::".parse().unwrap(), 64).unwrap();
        c.set_mtu(1500).unwrap();
        c.set_external_interface("en0").unwrap();
        c.add_dhcp_reservation([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 99, 0, 50))
            .unwrap();
        c.add_port_forward(&PortForward::new(
            Protocol::Tcp,
            8080,
            "10.99.0.50".parse().unwrap(),
            80,
        ))
        .unwrap();
        c.disable_dns_proxy();
        c.disable_nat66();
        c.disable_router_advertisement();
        let n = Network::new(&c).unwrap();
        assert_eq!(
            n.ipv4_subnet(),
            (Ipv4Addr::new(10, 99, 0, 0), Ipv4Addr::new(255, 255, 255, 0))
        );
        assert_eq!(n.ipv6_prefix(), ("fd00:99::".parse().unwrap(), 64));
        let again = Network::from_serialization(&n.serialize().unwrap()).unwrap();
        let a = Interface::start_with_network(&n, &Options::shared(), T).unwrap();
        let b = Interface::start_with_network(&again, &Options::shared(), T).unwrap();
        assert_eq!(a.params().start_address, Some(Ipv4Addr::new(10, 99, 0, 1)));
        let mac = a.params().mac.unwrap();
        a.write_batch(&[dhcp(mac, 1, 99, None)]).unwrap();
        let offer = expect(&a, |f| dhcp_reply(f, 99).is_some()).expect("no DHCPOFFER");
        assert_eq!(dhcp_reply(&offer, 99).unwrap().1.octets()[..3], [10, 99, 0]);
        a.write_batch(&[broadcast(mac, 60)]).unwrap();
        assert!(expect(&b, |f| f[6..12] == mac).is_some(), "same network");
        a.stop(T).unwrap();
        b.stop(T).unwrap();
        // A network without DHCP: no answer.
        c.disable_dhcp();
        c.disable_nat44();
        let quiet = Network::new(&c).unwrap();
        let q = Interface::start_with_network(&quiet, &Options::shared(), T).unwrap();
        let qmac = q.params().mac.unwrap();
        q.write_batch(&[dhcp(qmac, 1, 100, None)]).unwrap();
        assert!(expect(&q, |f| dhcp_reply(f, 100).is_some()).is_none());
        q.stop(T).unwrap();
    }

    #[test]
    fn shared_mode_serves_dhcp_and_answers_the_gateway() {
        let _g = Guard::new();
        let iface = start(&Options::shared());
        let mac = iface.params().mac.unwrap();
        let gw = iface.params().start_address.unwrap();
        iface.write_batch(&[dhcp(mac, 1, 7, None)]).unwrap();
        let offer = expect(&iface, |f| dhcp_reply(f, 7).is_some_and(|(k, _)| k == 2))
            .expect("no DHCPOFFER");
        let (_, ip) = dhcp_reply(&offer, 7).unwrap();
        assert!(
            u32::from(ip) > u32::from(gw)
                && u32::from(ip) <= u32::from(iface.params().end_address.unwrap())
        );
        iface.write_batch(&[dhcp(mac, 3, 8, Some(ip))]).unwrap();
        let ack =
            expect(&iface, |f| dhcp_reply(f, 8).is_some_and(|(k, _)| k == 5)).expect("no DHCPACK");
        assert_eq!(dhcp_reply(&ack, 8).unwrap().1, ip);
        iface.write_batch(&[arp_request(mac, ip, gw)]).unwrap();
        let arp = expect(&iface, |f| {
            f[12..14] == [8, 6] && f[20..22] == [0, 2] && f[28..32] == gw.octets()
        })
        .expect("no ARP reply from the gateway");
        let gw_mac: [u8; 6] = arp[22..28].try_into().unwrap();
        iface
            .write_batch(&[echo_request(mac, gw_mac, ip, gw, 3, 1, b"gateway")])
            .unwrap();
        let pong = expect(&iface, |f| {
            f.len() >= 42 && f[23] == 1 && f[34] == 0 && f[26..30] == gw.octets()
        })
        .expect("no echo reply from the gateway");
        assert!(pong.ends_with(b"gateway"));
        iface.stop(T).unwrap();
    }

    #[test]
    fn read_and_write_faults_are_errors_and_the_interface_keeps_working() {
        let _g = Guard::new();
        let a = start(&Options::host());
        let b = start(&Options::host());
        let frame = broadcast(a.params().mac.unwrap(), 100);
        for status in [
            sys::VMNET_FAILURE,
            sys::VMNET_BUFFER_EXHAUSTED,
            sys::VMNET_TOO_MANY_PACKETS,
        ] {
            model::inject_write(Fault::Status(status));
            let e = a.write_batch(std::slice::from_ref(&frame)).unwrap_err();
            assert_eq!(e.status().map(|s| s as u32), Some(status), "{e:?}");
        }
        assert_eq!(a.write_batch(std::slice::from_ref(&frame)).unwrap(), 1);
        // The event for it has come (vmnet will not repeat it) before the reads fail.
        assert!(b.wait_readable(Some(T)));
        let mut bufs = vec![vec![0u8; b.limits().read_capacity()]; 4];
        let mut lens = [0usize; 4];
        for status in [sys::VMNET_FAILURE, sys::VMNET_BUFFER_EXHAUSTED] {
            model::inject_read(Fault::Status(status));
            let e = b.read_batch(&mut bufs, &mut lens).unwrap_err();
            assert_eq!(e.status().map(|s| s as u32), Some(status), "{e:?}");
        }
        // The packet waited through the failed reads, and so did its readiness: a reader that
        // waits before reading again is not left asleep.
        assert!(b.wait_readable(Some(Duration::ZERO)));
        assert_eq!(b.read_batch(&mut bufs, &mut lens).unwrap(), 1);
        assert_eq!(&bufs[0][..lens[0]], &frame[..]);
        let _ = Status::Failure;
        a.stop(T).unwrap();
        b.stop(T).unwrap();
    }

    #[test]
    fn a_read_cut_short_by_an_error_leaves_the_rest_readable() {
        let _g = Guard::new();
        let a = start(&Options::host());
        let b = start(&Options::host());
        let frames: Vec<Vec<u8>> = (0..8)
            .map(|i| broadcast(a.params().mac.unwrap(), 60 + i))
            .collect();
        assert_eq!(a.write_batch(&frames).unwrap(), 8);
        assert!(b.wait_readable(Some(T)));
        // Packets of 64 KiB capacity: four to a call (256 KiB), so eight take two calls. The
        // first moves its four, the second fails.
        const CAP: usize = 64 << 10;
        let mut bufs = vec![vec![0u8; CAP]; 8];
        let mut batch = Batch::new();
        for buf in &mut bufs {
            batch.push_capped([iovec_mut(buf)], 0, CAP).unwrap();
        }
        assert_eq!(batch.calls(0..8, usize::MAX).len(), 2);
        model::inject_read(Fault::Short(4));
        model::inject_read(Fault::Status(sys::VMNET_FAILURE));
        // SAFETY: `bufs` is live and only reached through the batch during the call.
        assert_eq!(unsafe { b.read_iovecs(&mut batch) }.unwrap(), 4);
        assert!(
            b.wait_readable(Some(Duration::ZERO)),
            "four packets are left and no event will announce them"
        );
        let mut lens = [0usize; 8];
        let mut small = vec![vec![0u8; b.limits().read_capacity()]; 8];
        assert_eq!(b.read_batch(&mut small, &mut lens).unwrap(), 4);
        assert_eq!(lens[..4], [64, 65, 66, 67]);
        a.stop(T).unwrap();
        b.stop(T).unwrap();
    }

    #[test]
    fn short_reads_and_writes_are_reported() {
        let _g = Guard::new();
        let a = start(&Options::host());
        let b = start(&Options::host());
        let frames: Vec<Vec<u8>> = (0..10)
            .map(|i| broadcast(a.params().mac.unwrap(), 60 + i))
            .collect();
        model::inject_write(Fault::Short(3));
        assert_eq!(a.write_batch(&frames).unwrap(), 3);
        assert_eq!(a.write_batch(&frames[3..]).unwrap(), 7);
        let mut bufs = vec![vec![0u8; b.limits().read_capacity()]; 16];
        let mut lens = [0usize; 16];
        model::inject_read(Fault::Short(2));
        assert_eq!(b.read_batch(&mut bufs, &mut lens).unwrap(), 2);
        assert_eq!(lens[..2], [60, 61]);
        assert_eq!(b.read_batch(&mut bufs, &mut lens).unwrap(), 8);
        assert_eq!(lens[..8], [62, 63, 64, 65, 66, 67, 68, 69]);
        a.stop(T).unwrap();
        b.stop(T).unwrap();
    }

    #[test]
    fn an_event_after_stop_is_harmless() {
        let _g = Guard::new();
        model::configure(|c| c.event_after_stop = true);
        let a = start(&Options::host());
        let b = start(&Options::host());
        let events = Arc::new(AtomicU64::new(0));
        let e = Arc::clone(&events);
        b.set_event_callback(move |_| {
            e.fetch_add(1, Ordering::SeqCst);
        });
        a.write_batch(&[broadcast(a.params().mac.unwrap(), 60)])
            .unwrap();
        let deadline = Instant::now() + T;
        while events.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(events.load(Ordering::SeqCst) > 0, "no event");
        b.stop(T).unwrap();
        a.stop(T).unwrap();
        // The late event ran (or runs now) on the old queue; the leak check waits for it.
    }

    #[test]
    fn missing_privileges_are_permission_errors() {
        let _g = Guard::new();
        for p in [
            Privileges::DeniedNullHandle,
            Privileges::DeniedStatus(sys::VMNET_INVALID_ACCESS),
        ] {
            model::configure(|c| c.privileges = p);
            let e = Interface::start(&Options::shared(), T).unwrap_err();
            assert!(e.is_permission(), "{p:?}: {e:?}");
        }
    }

    /// A full-MTU frame with its virtio-net header from `b` to `a`.
    fn header_exchange() {
        let opts = Options::host().virtio_header(true);
        let a = start(&opts);
        let b = start(&opts);
        let p = b.params().clone();
        let frame = broadcast(p.mac.unwrap(), 14 + p.mtu as usize);
        let mut packet = vec![0u8; 12];
        packet.extend_from_slice(&frame);
        assert_eq!(b.write_batch(std::slice::from_ref(&packet)).unwrap(), 1);
        assert!(expect(&a, |f| f.len() == packet.len() && f[12..] == frame[..]).is_some());
        a.stop(T).unwrap();
        b.stop(T).unwrap();
    }

    #[test]
    fn every_reading_of_the_virtio_header_size_carries_a_full_frame() {
        let _g = Guard::new();
        for counted in [false, true] {
            model::configure(|c| c.header_counts_in_max_packet_size = counted);
            header_exchange();
        }
    }

    #[test]
    fn multi_iovec_refusal_falls_back_to_linearised_writes() {
        let _g = Guard::new();
        for refuse in [false, true] {
            model::configure(|c| c.refuse_multi_iovec = refuse);
            let a = start(&Options::host());
            let b = start(&Options::host());
            let frame = broadcast(a.params().mac.unwrap(), 80);
            let mut batch = Batch::new();
            batch.push([iovec_ref(&frame[..14]), iovec_ref(&frame[14..])], 0);
            // SAFETY: `frame` outlives the call.
            assert_eq!(unsafe { a.write_iovecs(&mut batch) }.unwrap(), 1);
            assert_eq!(a.linearizing(), refuse);
            assert!(expect(&b, |f| f == &frame[..]).is_some());
            a.stop(T).unwrap();
            b.stop(T).unwrap();
        }
    }

    #[test]
    fn releases_without_newer_keys() {
        let _g = Guard::new();
        // macOS 11: no virtio header key, no batch maxima (the defaults apply).
        model::configure(|c| {
            c.release = (11, 0);
            c.report_batch_maxima = false;
        });
        // A build with the `macos-15-4` feature links the key itself (and would not load on
        // macOS 11); without it the key is looked up at run time and found missing.
        if !cfg!(feature = "macos-15-4") {
            let e = Interface::start(&Options::host().virtio_header(true), T).unwrap_err();
            assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
        }
        let a = start(&Options::host());
        assert_eq!(
            a.params().write_max_packets,
            vmnet::params::DEFAULT_MAX_PACKETS
        );
        a.stop(T).unwrap();
        // macOS 15: the batch maxima are read.
        model::configure(|c| {
            c.release = (15, 0);
            c.report_batch_maxima = true;
        });
        let a = start(&Options::host());
        assert_eq!(a.params().write_max_packets, 200);
        a.stop(T).unwrap();
    }

    /// One raw `vmnet_write` or `vmnet_read` of `descs`.
    fn raw(iface: &Interface, write: bool, descs: &mut [VmPktDesc]) -> (u32, c_int) {
        let mut n = descs.len() as c_int;
        // SAFETY: a started interface; descriptors over live buffers (or deliberately bad ones
        // the model must refuse without touching them).
        let s = unsafe {
            if write {
                sys::vmnet_write(iface.as_raw(), descs.as_mut_ptr(), &mut n)
            } else {
                sys::vmnet_read(iface.as_raw(), descs.as_mut_ptr(), &mut n)
            }
        };
        (s, n)
    }

    #[test]
    fn the_model_enforces_the_documented_call_limits() {
        let _g = Guard::new();
        let a = start(&Options::host());
        let frame = broadcast(a.params().mac.unwrap(), 1514);
        let mut iov = iovec_ref(&frame);
        let desc = |iov: &mut libc::iovec, size| VmPktDesc {
            vm_pkt_size: size,
            vm_pkt_iov: iov,
            vm_pkt_iovcnt: 1,
            vm_flags: 0,
        };
        // 201 packets: too many.
        let mut d: Vec<VmPktDesc> = (0..201).map(|_| desc(&mut iov, 60)).collect();
        iov.iov_len = 60;
        assert_eq!(raw(&a, true, &mut d).0, sys::VMNET_TOO_MANY_PACKETS);
        // 180 full frames: over 256 KiB.
        iov.iov_len = 1514;
        let mut d: Vec<VmPktDesc> = (0..180).map(|_| desc(&mut iov, 1514)).collect();
        assert_eq!(raw(&a, true, &mut d).0, sys::VMNET_TOO_MANY_PACKETS);
        // Larger than the maximum packet size.
        let big = vec![0u8; 1515];
        let mut big_iov = iovec_ref(&big);
        assert_eq!(
            raw(&a, true, &mut [desc(&mut big_iov, 1515)]).0,
            sys::VMNET_PACKET_TOO_BIG
        );
        // vm_pkt_size not the iovecs' total; a zero-length iovec.
        assert_eq!(
            raw(&a, true, &mut [desc(&mut iov, 100)]).0,
            sys::VMNET_INVALID_ARGUMENT
        );
        let mut empty = iovec_ref(&frame[..0]);
        assert_eq!(
            raw(&a, true, &mut [desc(&mut empty, 0)]).0,
            sys::VMNET_INVALID_ARGUMENT
        );
        // A read buffer smaller than the maximum packet size.
        let mut small = vec![0u8; 1000];
        let mut small_iov = libc::iovec {
            iov_base: small.as_mut_ptr().cast(),
            iov_len: small.len(),
        };
        assert_eq!(
            raw(&a, false, &mut [desc(&mut small_iov, 1000)]).0,
            sys::VMNET_INVALID_ARGUMENT
        );
        // Within the limits: accepted, and a read of nothing returns 0 packets.
        assert_eq!(
            raw(&a, true, &mut [desc(&mut iov, 1514)]),
            (sys::VMNET_SUCCESS, 1)
        );
        let mut buf = vec![0u8; 1514];
        let mut buf_iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        assert_eq!(
            raw(&a, false, &mut [desc(&mut buf_iov, 1514)]),
            (sys::VMNET_SUCCESS, 0)
        );
        let refused = model::refused();
        assert!(
            refused.contains_key("more than 200 packets in one call"),
            "{refused:?}"
        );
        a.stop(T).unwrap();
    }

    #[test]
    fn a_stop_while_reads_are_in_flight_is_safe() {
        let _g = Guard::new();
        let a = start(&Options::host());
        let b = start(&Options::host());
        let frame = broadcast(a.params().mac.unwrap(), 60);
        // SAFETY: only used by the reader below, which the stop races on purpose: the raw
        // handle outlives the interface, and the model must refuse it once stopped.
        let h = unsafe { b.as_raw() } as usize;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1514];
            let (mut ok, mut refused) = (0u64, 0u64);
            while !s.load(Ordering::SeqCst) {
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                let mut d = VmPktDesc {
                    vm_pkt_size: 1514,
                    vm_pkt_iov: &mut iov,
                    vm_pkt_iovcnt: 1,
                    vm_flags: 0,
                };
                let mut n: c_int = 1;
                // SAFETY: a live descriptor over `buf`; the handle may be stopped meanwhile.
                match unsafe { sys::vmnet_read(h as sys::interface_ref, &mut d, &mut n) } {
                    sys::VMNET_SUCCESS => ok += 1,
                    sys::VMNET_INVALID_ARGUMENT => refused += 1,
                    other => panic!("vmnet_read during stop: {other}"),
                }
            }
            (ok, refused)
        });
        for _ in 0..50 {
            a.write_batch(std::slice::from_ref(&frame)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        b.stop(T).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::SeqCst);
        let (ok, refused) = reader.join().unwrap();
        assert!(
            ok > 0 && refused > 0,
            "reads before ({ok}) and after ({refused}) the stop"
        );
        a.stop(T).unwrap();
    }

    #[test]
    fn the_leak_check_catches_a_leak() {
        let g = Guard::new();
        let obj = vmnet::xpc::XpcDictionary::new().into_object();
        let raw = obj.as_raw();
        std::mem::forget(obj);
        let leaks = g.leaks(Duration::from_millis(100));
        assert_eq!(leaks.len(), 1, "{leaks:?}");
        assert!(leaks[0].starts_with("live xpc objects"), "{leaks:?}");
        // Give the reference back: nothing is left over, and this test's own check passes.
        // SAFETY: the one reference `obj` owned.
        unsafe { vmnet::xpc::xpc_release(raw) };
        assert!(g.leaks(Duration::ZERO).is_empty());
    }

    #[test]
    fn host_mode_reaches_a_linux_stack_over_a_tap() {
        let _g = Guard::new();
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "needs root (a TAP device and a network namespace): run the model tests as root"
        );
        let pid = std::process::id();
        // The TAP is the host's side of the host-mode network; its Linux end lives in a peer
        // namespace with the host address 192.168.128.1 (the start address of the model's host
        // network).
        let peer = model::Peer::new(
            &format!("vmnet-model-{pid}"),
            &format!("vmt{}", pid % 1_000_000),
            model::TapSegment::Host,
            "192.168.128.1/24",
        )
        .expect("a peer namespace behind the model's TAP");

        let iface = start(&Options::host());
        let mac = iface.params().mac.unwrap();
        let (me, host) = (
            Ipv4Addr::new(192, 168, 128, 2),
            Ipv4Addr::new(192, 168, 128, 1),
        );
        let mut reply = None;
        for _ in 0..5 {
            iface.write_batch(&[arp_request(mac, me, host)]).unwrap();
            reply = expect(&iface, |f| {
                f.len() >= 42
                    && f[12..14] == [8, 6]
                    && f[20..22] == [0, 2]
                    && f[28..32] == host.octets()
            });
            if reply.is_some() {
                break;
            }
        }
        let reply = reply.expect("Linux answers ARP over the TAP");
        let host_mac: [u8; 6] = reply[22..28].try_into().unwrap();
        iface
            .write_batch(&[echo_request(
                mac,
                host_mac,
                me,
                host,
                11,
                1,
                b"over-the-tap",
            )])
            .unwrap();
        let pong = expect(&iface, |f| f.len() >= 42 && f[23] == 1 && f[34] == 0)
            .expect("Linux answers ICMP echo over the TAP");
        assert!(pong.ends_with(b"over-the-tap"));
        iface.stop(T).unwrap();
        drop(peer);
    }
}
