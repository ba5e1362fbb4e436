//! The server: the vmnet interface on one side, the datagram socket on the other, one thread
//! per direction, counters, and a clean stop on SIGINT/SIGTERM.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use vmnet::batch::Batch as VmnetBatch;
use vmnet::iov::iovec_ref;
use vmnet::{Interface, InterfaceParams, Status};

use crate::args::{Args, Endpoint};
use crate::sock::{self, Addr, Batch, Received, Sock};

/// The hello vfkit sends first on a datagram socket; no frame.
const VFKIT_HELLO: &[u8] = b"VFKT";

/// The shortest frame: an Ethernet header.
const ETHERNET_HEADER: usize = 14;

/// Waits for room in a full socket before the rest of a batch is dropped (100 µs doubling:
/// 1.5 ms at most per batch, so a stalled peer never makes the server spin or stall vmnet).
const CONGESTION_RETRIES: u32 = 4;

/// How often the threads look at the stop flag while idle.
const IDLE_MS: libc::c_int = 200;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> std::io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction is plain data; all zeroes is an empty action we fill in.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: `sa.sa_mask` is a live sigset_t.
        unsafe { libc::sigemptyset(&raw mut sa.sa_mask) };
        // SAFETY: a valid action whose handler only stores to an atomic; no old action wanted.
        if unsafe { libc::sigaction(sig, &raw const sa, std::ptr::null_mut()) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Every counter of the server.
#[derive(Debug, Default)]
pub struct Stats {
    pub to_socket_frames: AtomicU64,
    pub to_socket_bytes: AtomicU64,
    pub to_vmnet_frames: AtomicU64,
    pub to_vmnet_bytes: AtomicU64,
    pub hellos: AtomicU64,
    pub peers_linked: AtomicU64,
    pub vmnet_read_errors: AtomicU64,
    /// vmnet -> socket drops.
    pub drop_no_peer: AtomicU64,
    pub drop_socket_full: AtomicU64,
    pub drop_peer_gone: AtomicU64,
    pub drop_too_big_for_socket: AtomicU64,
    pub drop_send_error: AtomicU64,
    /// socket -> vmnet drops.
    pub drop_foreign_sender: AtomicU64,
    pub drop_unaddressable_sender: AtomicU64,
    pub drop_runt: AtomicU64,
    pub drop_oversized: AtomicU64,
    pub drop_vmnet_full: AtomicU64,
    pub drop_vmnet_error: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    /// The counters as one JSON line.
    pub fn json(&self) -> String {
        let fields: [(&str, &AtomicU64); 18] = [
            ("to_socket_frames", &self.to_socket_frames),
            ("to_socket_bytes", &self.to_socket_bytes),
            ("to_vmnet_frames", &self.to_vmnet_frames),
            ("to_vmnet_bytes", &self.to_vmnet_bytes),
            ("hellos", &self.hellos),
            ("peers_linked", &self.peers_linked),
            ("vmnet_read_errors", &self.vmnet_read_errors),
            ("drop_no_peer", &self.drop_no_peer),
            ("drop_socket_full", &self.drop_socket_full),
            ("drop_peer_gone", &self.drop_peer_gone),
            ("drop_too_big_for_socket", &self.drop_too_big_for_socket),
            ("drop_send_error", &self.drop_send_error),
            ("drop_foreign_sender", &self.drop_foreign_sender),
            ("drop_unaddressable_sender", &self.drop_unaddressable_sender),
            ("drop_runt", &self.drop_runt),
            ("drop_oversized", &self.drop_oversized),
            ("drop_vmnet_full", &self.drop_vmnet_full),
            ("drop_vmnet_error", &self.drop_vmnet_error),
        ];
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("\"{k}\":{}", v.load(Ordering::Relaxed)))
            .collect();
        format!("{{\"stats\":{{{}}}}}", body.join(","))
    }
}

/// At most `burst` warnings per `window` from one thread; the ones held back are counted and
/// mentioned with the next warning that passes.
pub struct RateLimit {
    window: Duration,
    burst: u32,
    start: Option<Instant>,
    shown: u32,
    held: u64,
}

impl RateLimit {
    pub fn new(window: Duration, burst: u32) -> Self {
        Self {
            window,
            burst,
            start: None,
            shown: 0,
            held: 0,
        }
    }

    /// Whether a warning may be printed now, and how many were held back before it.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .start
            .is_none_or(|s| now.duration_since(s) >= self.window)
        {
            self.start = Some(now);
            self.shown = 0;
        }
        if self.shown < self.burst {
            self.shown += 1;
            Some(std::mem::take(&mut self.held))
        } else {
            self.held += 1;
            None
        }
    }

    pub fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        if let Some(held) = self.allow(Instant::now()) {
            let more = if held > 0 {
                format!(" ({held} similar warnings held back)")
            } else {
                String::new()
            };
            let _ = writeln!(std::io::stderr(), "vmnet-dgram: warning: {msg}{more}");
        }
    }
}

fn info(msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "vmnet-dgram: {msg}");
}

/// Who the frames go to.
#[derive(Debug)]
enum PeerMode {
    /// The socket is connected: the kernel knows the peer.
    Connected,
    /// `--peer PATH`: always that address.
    Fixed,
    /// The first sender (again after it went away, the next one).
    FirstSender,
}

#[derive(Debug)]
struct Peer {
    mode: PeerMode,
    addr: Mutex<Option<Addr>>,
    /// Sends to the peer failed as if it were gone: a new sender may take its place.
    gone: AtomicBool,
    /// When another sender last made us look whether the peer is still there.
    last_probe: Mutex<Option<Instant>>,
}

/// Another sender makes the server look whether its peer is still there at most this often.
const PROBE_EVERY: Duration = Duration::from_secs(1);

enum Target {
    Nobody,
    Connected,
    To(Addr),
}

impl Peer {
    fn target(&self) -> Target {
        match self.mode {
            PeerMode::Connected => Target::Connected,
            _ => match *self.addr.lock().unwrap_or_else(PoisonError::into_inner) {
                Some(a) => Target::To(a),
                None => Target::Nobody,
            },
        }
    }

    /// Whether the linked peer closed its socket (a client that restarted binds a new
    /// address, and vmnet may have nothing to send that would show the old one is gone); looked
    /// at at most once per [`PROBE_EVERY`], so a flood from another sender costs little.
    fn peer_left(&self, cur: &Option<Addr>) -> bool {
        let Some(a) = cur else { return false };
        let mut last = self
            .last_probe
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < PROBE_EVERY) {
            return false;
        }
        *last = Some(now);
        let left = !sock::is_alive(a);
        if left {
            info(format_args!("the peer {a:?} has left"));
        }
        left
    }

    /// Whether a datagram from `from` is the peer's; links with it when it may be.
    fn accept(&self, from: &Addr, stats: &Stats, log: &mut RateLimit) -> bool {
        if matches!(self.mode, PeerMode::Connected) {
            return true;
        }
        let mut cur = self.addr.lock().unwrap_or_else(PoisonError::into_inner);
        match (&*cur, &self.mode) {
            (Some(a), _) if a == from => {
                if self.gone.swap(false, Ordering::Relaxed) {
                    info(format_args!("the peer {from:?} is back"));
                }
                true
            }
            (None, PeerMode::FirstSender) | (Some(_), PeerMode::FirstSender)
                if cur.is_none() || self.gone.load(Ordering::Relaxed) || self.peer_left(&cur) =>
            {
                if !from.is_addressable() {
                    bump(&stats.drop_unaddressable_sender, 1);
                    log.warn(format_args!(
                        "a datagram from an unbound socket, which cannot be answered, was dropped: \
                         the client must bind its own address"
                    ));
                    return false;
                }
                *cur = Some(*from);
                self.gone.store(false, Ordering::Relaxed);
                bump(&stats.peers_linked, 1);
                info(format_args!("linked with the peer {from:?}"));
                true
            }
            _ => {
                bump(&stats.drop_foreign_sender, 1);
                log.warn(format_args!(
                    "a datagram from {from:?}, which is not the peer, was dropped"
                ));
                false
            }
        }
    }
}

/// vmnet -> socket: read batches from the interface straight into the frame buffers and send
/// them from there, one datagram per frame.
fn vmnet_to_socket(iface: &Interface, sock: &Sock, peer: &Peer, stats: &Stats) {
    let n = iface.params().read_batch();
    let cap = iface.limits().read_capacity();
    let mut bufs = vec![vec![0u8; cap]; n];
    let mut lens = vec![0usize; n];
    let mut msgs = Batch::with_capacity(n);
    let mut log = RateLimit::new(Duration::from_secs(5), 5);
    while !STOP.load(Ordering::Relaxed) {
        if !iface.wait_readable(Some(Duration::from_millis(IDLE_MS as u64))) {
            continue;
        }
        let got = match iface.read_batch(&mut bufs, &mut lens) {
            Ok(0) => continue,
            Ok(got) => got,
            Err(e) => {
                // The next read waits for the next event: no spinning on a failing read.
                bump(&stats.vmnet_read_errors, 1);
                log.warn(format_args!("reading from vmnet failed: {e}"));
                continue;
            }
        };
        let frames = || bufs[..got].iter().zip(&lens[..got]).map(|(b, &l)| &b[..l]);
        let to = match peer.target() {
            Target::Nobody => {
                bump(&stats.drop_no_peer, got as u64);
                continue;
            }
            Target::Connected => None,
            Target::To(a) => Some(a),
        };
        msgs.prepare_send(frames(), to.as_ref());
        let mut start = 0;
        let mut retries = 0;
        while start < msgs.len() {
            // SAFETY: the frames live in `bufs`, untouched until the next read.
            match unsafe { msgs.send_from(sock, start) } {
                Ok(sent) => {
                    let bytes: usize = lens[start..start + sent].iter().sum();
                    bump(&stats.to_socket_frames, sent as u64);
                    bump(&stats.to_socket_bytes, bytes as u64);
                    start += sent;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if sock::congested(&e) && retries < CONGESTION_RETRIES => {
                    // Linux reports an unconnected datagram socket writable whatever its
                    // peer's queue holds, and macOS does so for any datagram socket: wait
                    // by sleeping, not polling.
                    std::thread::sleep(Duration::from_micros(100 << retries));
                    retries += 1;
                }
                Err(e) => {
                    let rest = (msgs.len() - start) as u64;
                    if sock::congested(&e) {
                        bump(&stats.drop_socket_full, rest);
                        log.warn(format_args!(
                            "the peer does not keep up: {rest} frames dropped ({e})"
                        ));
                        break;
                    }
                    if e.raw_os_error() == Some(libc::EMSGSIZE) {
                        bump(&stats.drop_too_big_for_socket, 1);
                        log.warn(format_args!(
                            "a {}-byte frame is too large for the socket: dropped",
                            lens[start]
                        ));
                        start += 1;
                        continue;
                    }
                    if sock::peer_gone(&e) {
                        bump(&stats.drop_peer_gone, rest);
                        if !peer.gone.swap(true, Ordering::Relaxed) {
                            info(format_args!(
                                "the peer is not there ({e}); frames are dropped until it sends again"
                            ));
                        }
                    } else {
                        bump(&stats.drop_send_error, rest);
                        log.warn(format_args!("sending to the peer failed: {e}"));
                    }
                    break;
                }
            }
        }
    }
}

/// socket -> vmnet: receive batches of datagrams into the frame buffers and write them to the
/// interface from there.
fn socket_to_vmnet(iface: &Interface, sock: &Sock, peer: &Peer, stats: &Stats) {
    let n = iface.params().write_batch();
    let max = iface.limits().max_packet();
    let min = iface.limits().header_len() + ETHERNET_HEADER;
    let mut bufs = vec![vec![0u8; max]; n];
    let mut msgs = Batch::with_capacity(n);
    let mut got: Vec<Received> = Vec::with_capacity(n);
    let mut batch = VmnetBatch::with_capacity(n, n);
    let mut log = RateLimit::new(Duration::from_secs(5), 5);
    while !STOP.load(Ordering::Relaxed) {
        if !sock.wait_readable(IDLE_MS) {
            continue;
        }
        match msgs.recv(sock, &mut bufs, &mut got) {
            Ok(_) => {}
            Err(e) if sock::congested(&e) || e.kind() == std::io::ErrorKind::Interrupted => {
                continue;
            }
            Err(e) => {
                log.warn(format_args!("receiving from the socket failed: {e}"));
                // A lasting error must not turn into a busy loop.
                std::thread::sleep(Duration::from_millis(IDLE_MS as u64));
                continue;
            }
        }
        batch.clear();
        for (r, buf) in got.iter().zip(&bufs) {
            if !peer.accept(&r.from, stats, &mut log) {
                continue;
            }
            let data = &buf[..r.len];
            if data == VFKIT_HELLO {
                bump(&stats.hellos, 1);
                continue;
            }
            if r.cut || r.len > max {
                bump(&stats.drop_oversized, 1);
                log.warn(format_args!(
                    "a datagram larger than the interface's {max}-byte packets was dropped"
                ));
                continue;
            }
            if r.len < min {
                bump(&stats.drop_runt, 1);
                log.warn(format_args!(
                    "a {}-byte datagram, shorter than a frame, was dropped",
                    r.len
                ));
                continue;
            }
            batch.push([iovec_ref(data)], 0);
        }
        if batch.is_empty() {
            continue;
        }
        let want = batch.len();
        // SAFETY: the iovecs point into `bufs`, alive and unchanged during the call.
        match unsafe { iface.write_iovecs(&mut batch) } {
            Ok(k) => {
                bump(&stats.to_vmnet_frames, k as u64);
                let bytes: usize = (0..k).map(|i| batch.packet_len(i)).sum();
                bump(&stats.to_vmnet_bytes, bytes as u64);
                if k < want {
                    bump(&stats.drop_vmnet_full, (want - k) as u64);
                }
            }
            Err(e) if e.status() == Some(Status::BufferExhausted) => {
                bump(&stats.drop_vmnet_full, want as u64);
                log.warn(format_args!("vmnet's queue is full: {want} frames dropped"));
            }
            Err(e) => {
                bump(&stats.drop_vmnet_error, want as u64);
                log.warn(format_args!("writing to vmnet failed: {e}"));
            }
        }
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The interface's parameters as the one JSON line a launcher reads.
pub fn params_json(p: &InterfaceParams, args: &Args, max_packet: usize) -> String {
    let mut f: Vec<String> = Vec::new();
    let opt = |v: Option<String>| v.map_or("null".to_string(), |s| json_str(&s));
    f.push(format!("\"mode\":\"{}\"", args.options.mode()));
    f.push(format!(
        "\"mac\":{}",
        opt(p.mac.map(|m| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        }))
    ));
    f.push(format!("\"mtu\":{}", p.mtu));
    f.push(format!("\"max_packet_size\":{}", p.max_packet_size));
    f.push(format!("\"max_datagram\":{max_packet}"));
    f.push(format!(
        "\"start_address\":{}",
        opt(p.start_address.map(|a| a.to_string()))
    ));
    f.push(format!(
        "\"end_address\":{}",
        opt(p.end_address.map(|a| a.to_string()))
    ));
    f.push(format!(
        "\"subnet_mask\":{}",
        opt(p.subnet_mask.map(|a| a.to_string()))
    ));
    f.push(format!("\"nat66_prefix\":{}", opt(p.nat66_prefix.clone())));
    f.push(format!(
        "\"interface_id\":{}",
        opt(p.interface_id.map(|u| {
            let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }))
    ));
    f.push(format!(
        "\"virtio_header\":{}",
        args.options.virtio_header_enabled()
    ));
    f.push(format!("\"tso\":{}", args.options.tso_enabled()));
    f.push(format!(
        "\"checksum_offload\":{}",
        args.options.checksum_offload_enabled()
    ));
    f.push(format!(
        "\"socket\":{}",
        match &args.endpoint {
            Endpoint::Path(p) => json_str(&p.to_string_lossy()),
            Endpoint::Fd(n) => format!("\"fd:{n}\""),
        }
    ));
    format!("{{{}}}", f.join(","))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "vmnet-dgram: {msg}");
    ExitCode::FAILURE
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: &Args) -> ExitCode {
    if let Err(e) = install_signal_handlers() {
        return fail(format_args!("installing the signal handlers: {e}"));
    }
    // The socket first: a bad path or descriptor is reported before vmnet is asked for
    // anything. Datagrams hold a whole packet (with the virtio-net header and TSO, up to 64 KiB).
    let max_datagram = vmnet::limits::FrameLimits::new(
        vmnet::limits::MAX_GSO_FRAME,
        args.options.virtio_header_enabled(),
        false,
    )
    .max_packet();
    let sock = match &args.endpoint {
        Endpoint::Path(p) => Sock::bind(p, max_datagram),
        Endpoint::Fd(n) => Sock::from_fd(*n, max_datagram),
    };
    let sock = match sock {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let (mode, addr) = match (&args.peer, sock.connected) {
        (Some(_), true) => {
            return fail("--peer is for an unconnected socket; this descriptor is connected");
        }
        (Some(p), false) => match Addr::of_path(p) {
            Ok(a) => (PeerMode::Fixed, Some(a)),
            Err(e) => return fail(e),
        },
        (None, true) => (PeerMode::Connected, None),
        (None, false) => (PeerMode::FirstSender, None),
    };
    let peer = Peer {
        mode,
        addr: Mutex::new(addr),
        gone: AtomicBool::new(false),
        last_probe: Mutex::new(None),
    };

    let iface = match Interface::start(&args.options, args.start_timeout) {
        Ok(i) => i,
        Err(e) if e.is_permission() => {
            return fail(format_args!(
                "vmnet refused to start the interface ({e}): run vmnet-dgram as root (sudo), or \
                 on macOS 26 sign it with the com.apple.security.virtualization entitlement"
            ));
        }
        Err(e) => return fail(format_args!("starting the vmnet interface: {e}")),
    };

    #[cfg(all(not(target_os = "macos"), feature = "model"))]
    let _tap = match &args.model_tap {
        Some(name) => {
            use vmnet_model::vmnet::{TapSegment, attach_tap};
            let seg = match args.options.mode() {
                vmnet::Mode::Host => TapSegment::Host,
                vmnet::Mode::Shared => TapSegment::Shared,
                vmnet::Mode::Bridged => {
                    return fail("--model-tap joins the host or shared segment, not bridged");
                }
            };
            match attach_tap(name, seg) {
                Ok(t) => Some(t),
                Err(e) => return fail(format_args!("creating the model's TAP {name}: {e}")),
            }
        }
        None => None,
    };

    let line = params_json(iface.params(), args, iface.limits().max_packet());
    {
        let mut out = std::io::stdout().lock();
        // A launcher that stopped reading is no reason to stop serving.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }

    let stats = Stats::default();
    let iface_ref = &iface;
    let outcome = std::thread::scope(|s| {
        let a = std::thread::Builder::new()
            .name("vmnet-to-socket".into())
            .spawn_scoped(s, || vmnet_to_socket(iface_ref, &sock, &peer, &stats));
        let b = std::thread::Builder::new()
            .name("socket-to-vmnet".into())
            .spawn_scoped(s, || socket_to_vmnet(iface_ref, &sock, &peer, &stats));
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                STOP.store(true, Ordering::SeqCst);
                let e = a.err().or(b.err()).map(|e| e.to_string());
                return Err(format!("starting the threads: {}", e.unwrap_or_default()));
            }
        };
        let mut next_stats = args.stats_interval.map(|d| Instant::now() + d);
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            if (a.is_finished() || b.is_finished()) && !STOP.load(Ordering::SeqCst) {
                STOP.store(true, Ordering::SeqCst);
                return Err("a forwarding thread ended unexpectedly".to_string());
            }
            if let (Some(at), Some(every)) = (next_stats, args.stats_interval)
                && Instant::now() >= at
            {
                let _ = writeln!(std::io::stderr(), "{}", stats.json());
                next_stats = Some(at + every);
            }
        }
        Ok(())
    });
    let _ = writeln!(std::io::stderr(), "{}", stats.json());
    let stopped = iface.stop(Duration::from_secs(5));
    drop(sock);
    match (outcome, stopped) {
        (Err(e), _) => fail(e),
        (Ok(()), Err(e)) => fail(format_args!("stopping the vmnet interface: {e}")),
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_lets_a_burst_through_then_counts_what_it_holds() {
        let mut r = RateLimit::new(Duration::from_secs(5), 2);
        let t = Instant::now();
        assert_eq!(r.allow(t), Some(0));
        assert_eq!(r.allow(t), Some(0));
        assert_eq!(r.allow(t), None);
        assert_eq!(r.allow(t + Duration::from_secs(1)), None);
        assert_eq!(r.allow(t + Duration::from_secs(6)), Some(2));
    }

    #[test]
    fn stats_are_one_json_line_with_every_counter() {
        let s = Stats::default();
        bump(&s.to_vmnet_frames, 3);
        bump(&s.drop_runt, 1);
        let j = s.json();
        assert!(j.starts_with("{\"stats\":{") && j.ends_with("}}"), "{j}");
        assert!(j.contains("\"to_vmnet_frames\":3"));
        assert!(j.contains("\"drop_runt\":1"));
        assert_eq!(j.matches(':').count(), 19);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
