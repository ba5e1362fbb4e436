//! `vmnet-dgram` as a process, over the vmnet model (Linux, `cargo test -p vmnet --features
//! model`; no root needed: no TAP): clients are plain Unix datagram sockets that talk to the
//! model's shared-mode gateway through the server, at a path and on an inherited socket pair;
//! every drop reason a client can cause is counted; bad input gets a one-line error. The model
//! stands in for vmnet.framework; it does not replace a run on a Mac.

#[cfg(not(all(not(target_os = "macos"), feature = "model")))]
#[macro_use]
#[path = "common/model_only.rs"]
mod model_only;

#[cfg(not(all(not(target_os = "macos"), feature = "model")))]
mod without_model {
    model_only!(
        a_client_at_a_path_reaches_the_gateway_and_every_drop_is_counted,
        an_inherited_socket_pair_is_served,
        bad_input_gets_one_line_that_says_what_to_do,
    );
}

#[cfg(all(not(target_os = "macos"), feature = "model"))]
mod with_model {
    use std::io::{BufRead, BufReader, Read};
    use std::net::Ipv4Addr;
    use std::os::unix::net::UnixDatagram;
    use std::path::{Path, PathBuf};
    use std::process::{Child, ChildStderr, Command, Stdio};
    use std::time::{Duration, Instant};

    use examples::echo;

    const BIN: &str = env!("CARGO_BIN_EXE_vmnet-dgram");
    const GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);

    /// A scratch directory of this test, removed at the end.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let d = std::env::temp_dir().join(format!("vmnet-dgram-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Self(d)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The server process; killed if the test fails before stopping it.
    struct Server {
        child: Option<Child>,
        stderr: Option<ChildStderr>,
        params: String,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// One JSON line of the server's (its parameters on stdout, its counters on stderr).
    fn json(line: &str) -> serde_json::Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
    }

    impl Server {
        fn start(mut cmd: Command) -> Self {
            let mut child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start vmnet-dgram");
            let stdout = child.stdout.take().unwrap();
            let mut stderr = child.stderr.take().unwrap();
            let mut params = String::new();
            BufReader::new(stdout).read_line(&mut params).unwrap();
            if params.is_empty() {
                let mut e = String::new();
                let _ = stderr.read_to_string(&mut e);
                panic!("vmnet-dgram printed no parameters: {e}");
            }
            Self {
                child: Some(child),
                stderr: Some(stderr),
                params,
            }
        }

        fn mac(&self) -> [u8; 6] {
            let params = json(&self.params);
            let v: Vec<u8> = params["mac"]
                .as_str()
                .expect("a MAC address")
                .split(':')
                .map(|h| u8::from_str_radix(h, 16).unwrap())
                .collect();
            v.try_into().unwrap()
        }

        fn gateway(&self) -> Ipv4Addr {
            json(&self.params)["start_address"]
                .as_str()
                .expect("the DHCP range")
                .parse()
                .unwrap()
        }

        /// SIGTERM; the exit status must be success. Returns standard error.
        fn stop(mut self) -> String {
            let mut child = self.child.take().unwrap();
            // SAFETY: kill takes no pointers; the child is ours and not yet reaped.
            let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            assert_eq!(r, 0);
            let deadline = Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
                std::thread::sleep(Duration::from_millis(10));
            };
            let mut err = String::new();
            let _ = self.stderr.take().unwrap().read_to_string(&mut err);
            assert!(status.success(), "exit status {status}: {err}");
            err
        }
    }

    /// The last counters line of the server's standard error.
    fn last_stats(err: &str) -> &str {
        err.lines()
            .rev()
            .find(|l| l.starts_with("{\"stats\":"))
            .unwrap_or_else(|| panic!("no counters in: {err}"))
    }

    /// Sends `frame` and waits for a datagram that `want` accepts.
    fn exchange(sock: &UnixDatagram, frame: &[u8], want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        sock.send(frame).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 2048];
        loop {
            let n = sock.recv(&mut buf).expect("a reply through vmnet-dgram");
            if want(&buf[..n]) {
                return buf[..n].to_vec();
            }
        }
    }

    /// ARP and ping the gateway through `sock`.
    fn ping_gateway(sock: &UnixDatagram, mac: [u8; 6], gw: Ipv4Addr, seq: u16) {
        let arp = echo::arp_request(mac, GUEST_IP, gw);
        let reply = exchange(sock, &arp, |f| {
            f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2] && f[28..32] == gw.octets()
        });
        let gw_mac: [u8; 6] = reply[22..28].try_into().unwrap();
        let payload = [0x5a; 32];
        let req = echo::echo_request(mac, gw_mac, GUEST_IP, gw, 7, seq, &payload);
        let reply = exchange(sock, &req, |f| {
            f.len() >= 42 && f[12..14] == [8, 0] && f[34] == 0 && f[26..30] == gw.octets()
        });
        assert_eq!(&reply[42..], &payload);
    }

    fn server_at(path: &Path) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--socket").arg(path);
        c
    }

    #[test]
    fn a_client_at_a_path_reaches_the_gateway_and_every_drop_is_counted() {
        let dir = Dir::new("path");
        let path = dir.path("vmnet.sock");
        let mut cmd = server_at(&path);
        cmd.args(["--stats-interval", "0.2"]);
        let server = Server::start(cmd);
        assert_eq!(json(&server.params)["mtu"].as_u64(), Some(1500));
        let (mac, gw) = (server.mac(), server.gateway());

        let client = UnixDatagram::bind(dir.path("client.sock")).unwrap();
        client.connect(&path).unwrap();
        client.send(b"VFKT").unwrap();
        ping_gateway(&client, mac, gw, 1);

        // What the server must refuse, each counted: a runt, a datagram larger than a packet,
        // a frame from a second client while the first is linked.
        client.send(&[0u8; 5]).unwrap();
        let mut big = echo::arp_request(mac, GUEST_IP, gw);
        big.resize(2000, 0);
        client.send(&big).unwrap();
        let other = UnixDatagram::bind(dir.path("other.sock")).unwrap();
        other
            .send_to(&echo::arp_request(mac, GUEST_IP, gw), &path)
            .unwrap();
        // An unbound sender cannot be answered either.
        UnixDatagram::unbound()
            .unwrap()
            .send_to(&[0u8; 60], &path)
            .unwrap();
        // Received after all of the above: the server has dealt with them when it answers.
        ping_gateway(&client, mac, gw, 2);

        // The client leaves (its socket closes, the file stays) and comes back at a new
        // address, as a restarted client does: the server links with it.
        drop(client);
        // The foreign senders above made the server look at its peer; it looks again at most
        // once a second.
        std::thread::sleep(Duration::from_millis(1100));
        let client = UnixDatagram::bind(dir.path("client2.sock")).unwrap();
        client.connect(&path).unwrap();
        client.send(b"VFKT").unwrap();
        ping_gateway(&client, mac, gw, 3);
        std::thread::sleep(Duration::from_millis(300));

        let err = server.stop();
        assert!(!path.exists(), "the socket path is removed at exit");
        let stats = last_stats(&err);
        let n = |k: &str| {
            json(stats)["stats"][k]
                .as_u64()
                .unwrap_or_else(|| panic!("{k} in {stats}"))
        };
        assert_eq!(n("hellos"), 2);
        assert_eq!(n("peers_linked"), 2);
        assert_eq!(n("to_vmnet_frames"), 6, "{stats}");
        assert!(n("to_socket_frames") >= 6, "{stats}");
        assert_eq!(n("drop_runt"), 1, "{stats}");
        assert_eq!(n("drop_oversized"), 1, "{stats}");
        assert_eq!(n("drop_foreign_sender"), 2, "{stats}");
        assert_eq!(n("drop_vmnet_error") + n("drop_send_error"), 0, "{stats}");
        assert!(
            err.lines().filter(|l| l.starts_with("{\"stats\":")).count() >= 2,
            "--stats-interval prints while running: {err}"
        );
        assert!(err.contains("warning:"), "drops are warned about: {err}");
    }

    #[test]
    fn an_inherited_socket_pair_is_served() {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(BIN);
        cmd.args(["--fd", "3"]);
        // SAFETY: only dup2 runs between fork and exec (async-signal-safe); it makes the
        // socket descriptor 3, without close-on-exec, in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let server = Server::start(cmd);
        drop(theirs);
        assert_eq!(json(&server.params)["socket"].as_str(), Some("fd:3"));
        ping_gateway(&ours, server.mac(), server.gateway(), 1);
        let err = server.stop();
        let stats = last_stats(&err);
        assert_eq!(
            json(stats)["stats"]["to_vmnet_frames"].as_u64(),
            Some(2),
            "{stats}"
        );
        assert_eq!(
            json(stats)["stats"]["peers_linked"].as_u64(),
            Some(0),
            "connected: no linking"
        );
    }

    fn fails_with(args: &[&str], says: &str) {
        let out = Command::new(BIN).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?}: no parameters on failure");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }

    #[test]
    fn bad_input_gets_one_line_that_says_what_to_do() {
        let dir = Dir::new("bad");
        let taken = dir.path("taken");
        std::fs::write(&taken, b"").unwrap();
        let taken = taken.to_str().unwrap();
        fails_with(&["--socket", taken], "remove it");
        fails_with(&["--socket", "/nonexistent-dir/x.sock"], "does not exist");
        fails_with(&["--fd", "1"], "descriptor 3 or above");
        fails_with(&["--fd", "987"], "not open");
        fails_with(&["--socket", &"x".repeat(200)], "shorter");
        fails_with(
            &["--mode", "nat", "--socket", "s"],
            "shared, host or bridged",
        );
        fails_with(&["--socket", "s", "--tso"], "checksum");
        let out = Command::new(BIN).arg("--help").output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("--stats-interval"));
    }
}
