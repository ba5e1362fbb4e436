//! The net device under faults: backends that fail and guests that misbehave.
//!
//! Each test drives the device through the simulated driver, injects one fault and checks one
//! behaviour: counters that account for every frame, every buffer given back to the guest, a
//! worker thread that sleeps instead of spinning (its CPU time, read from `/proc`), and a device
//! that serves again once the fault is gone.
//!
//! The TAP tests build a LAN of network namespaces (see `common`) and need root; they print
//! SKIPPED otherwise. The in-memory backend tests only need Linux's `/proc`. Every device has a
//! worker name of its own, so the thread lookups of tests running in parallel do not collide.

#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    EVENT_IDX, Lan, MAC, MRG_RXBUF, echo_request, is_echo_reply, resolve_peer, skip_reason,
    try_wait_frame,
};
use devices::net::mem::{MemBackend, MemBackendConfig, MemBackendHandle};
use devices::net::{Backend, VNET_HDR_LEN};
use devices::testing::{DriverSim, attach};
use devices::virtio::mmio::{MmioTransport, regs};
use devices::virtio::net::{Net, NetConfig, NetMetrics};
use devices::virtio::{GuestMemory, interrupt_status};
use vm_memory::{Bytes, GuestAddress};

/// How long any wait for the device may take before the test fails; generous, for slow CI.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long the worker's CPU time is watched for spinning.
const WATCH: Duration = Duration::from_millis(1500);
/// Size of each RX buffer the guest posts.
const RX_BUF: u32 = 2048;
/// Guest memory: rings, buffers and frames all come from it.
const MEM_SIZE: usize = 64 << 20;

/// The reset test counts the process's open descriptors, which the other tests open and close
/// (TAP devices, notifiers, pipes to `ip`): it runs alone, the others run alongside each other.
static FD_COUNTING: RwLock<()> = RwLock::new(());

fn alongside_others() -> RwLockReadGuard<'static, ()> {
    FD_COUNTING.read().unwrap_or_else(PoisonError::into_inner)
}

fn alone() -> RwLockWriteGuard<'static, ()> {
    FD_COUNTING.write().unwrap_or_else(PoisonError::into_inner)
}

/// A snapshot of the device's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    tx_frames: u64,
    tx_dropped: u64,
    tx_errors: u64,
    rx_frames: u64,
    rx_errors: u64,
    rx_no_buffers: u64,
    bad_chains: u64,
    interrupts: u64,
}

impl Counts {
    fn of(m: &NetMetrics) -> Self {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        Self {
            tx_frames: get(&m.tx_frames),
            tx_dropped: get(&m.tx_dropped),
            tx_errors: get(&m.tx_errors),
            rx_frames: get(&m.rx_frames),
            rx_errors: get(&m.rx_errors),
            rx_no_buffers: get(&m.rx_no_buffers),
            bad_chains: get(&m.bad_chains),
            interrupts: get(&m.interrupts),
        }
    }

    /// The counts added since `earlier`.
    fn since(self, earlier: Self) -> Self {
        Self {
            tx_frames: self.tx_frames - earlier.tx_frames,
            tx_dropped: self.tx_dropped - earlier.tx_dropped,
            tx_errors: self.tx_errors - earlier.tx_errors,
            rx_frames: self.rx_frames - earlier.rx_frames,
            rx_errors: self.rx_errors - earlier.rx_errors,
            rx_no_buffers: self.rx_no_buffers - earlier.rx_no_buffers,
            bad_chains: self.bad_chains - earlier.bad_chains,
            interrupts: self.interrupts - earlier.interrupts,
        }
    }
}

/// A frame written once into guest memory and sent as often as needed (the device only reads
/// it), so that long-running senders do not use up the simulator's memory.
#[derive(Clone, Copy, Debug)]
struct TxBuf {
    hdr: GuestAddress,
    body: GuestAddress,
    len: u32,
}

/// A 64-byte Ethernet frame to the guest's MAC (local experimental EtherType) carrying `n`.
fn frame(n: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&n.to_be_bytes());
    f.resize(64, 0xa5);
    f
}

/// The ids of this process's threads whose kernel name (`comm`) is `comm`.
fn threads_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let tid = e.file_name().to_str()?.parse().ok()?;
            let name = fs::read_to_string(e.path().join("comm")).ok()?;
            (name.trim_end_matches('\n') == comm).then_some(tid)
        })
        .collect()
}

/// The CPU time (user + system) thread `tid` of this process has used; `None` once it is gone.
fn cpu_time(tid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // proc_pid_stat(5): the name, field 2, is in parentheses and may hold spaces; after it come
    // state (field 3) ... utime (14) and stime (15), in clock ticks.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&hz| hz > 0)?;
    Some(Duration::from_nanos((utime + stime) * 1_000_000_000 / hz))
}

/// How many descriptors this process has open.
fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// Polls `cond` until it holds; fails the test after [`TIMEOUT`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting until {what}"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// A net device behind its transport, and the simulated driver that drives it.
struct Rig {
    sim: DriverSim,
    transport: Arc<Mutex<MmioTransport>>,
    metrics: Arc<NetMetrics>,
    /// The worker thread's name as the kernel keeps it (`comm`: at most 15 bytes).
    worker: String,
}

impl Rig {
    /// A device named `name` (at most 12 characters, so that `<name>-io` fits in `comm`).
    fn new(backend: Box<dyn Backend>, name: &str) -> Self {
        assert!(name.len() <= 12, "worker name {name:?} would be truncated");
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let net = Net::new(
            backend,
            NetConfig {
                mac: Some(MAC),
                name: name.to_owned(),
                ..Default::default()
            },
        );
        let metrics = Arc::clone(net.metrics());
        let (sim, transport) = attach(
            Box::new(net),
            mem,
            GuestAddress(0x1000),
            MEM_SIZE as u64 - 0x1000,
        )
        .unwrap();
        Self {
            sim,
            transport,
            metrics,
            worker: format!("{name}-io"),
        }
    }

    /// A device in front of an in-memory backend, and the backend's test handle.
    fn with_mem_backend(name: &str) -> (Self, MemBackendHandle) {
        let backend = MemBackend::new(MemBackendConfig::default()).unwrap();
        let handle = backend.handle();
        (Self::new(Box::new(backend), name), handle)
    }

    fn counts(&self) -> Counts {
        Counts::of(&self.metrics)
    }

    fn is_active(&self) -> bool {
        self.transport
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_active()
    }

    /// Writes `frame` into guest memory behind a zeroed virtio-net header.
    fn tx_buf(&mut self, frame: &[u8]) -> TxBuf {
        let hdr = self.sim.alloc(VNET_HDR_LEN as u64, 8).unwrap();
        let body = self.sim.alloc(frame.len() as u64, 8).unwrap();
        self.sim.mem().write_slice(frame, body).unwrap();
        TxBuf {
            hdr,
            body,
            len: frame.len() as u32,
        }
    }

    /// Queues `buf` on the TX queue as a header and a payload descriptor, and notifies.
    fn send(&mut self, buf: TxBuf) {
        self.sim
            .add_chain(
                1,
                &[
                    (buf.hdr, VNET_HDR_LEN as u32, false),
                    (buf.body, buf.len, false),
                ],
            )
            .expect("free TX descriptors");
        self.sim.notify(1);
    }

    /// Waits until the device has returned at least `n` TX buffers; returns how many it did.
    fn wait_tx_used(&mut self, n: usize) -> usize {
        self.sim
            .wait_used(1, n, TIMEOUT)
            .unwrap_or_else(|e| {
                panic!(
                    "{n} TX buffers back within {TIMEOUT:?}: {e} (metrics: {:?})",
                    self.metrics
                )
            })
            .len()
    }

    /// Sends `buf` and waits for the device to return it: one frame per backend send call.
    fn send_one(&mut self, buf: TxBuf) {
        self.send(buf);
        assert_eq!(self.wait_tx_used(1), 1);
    }

    /// The worker thread's id; fails unless exactly one thread has its name. A new thread names
    /// itself once it runs, so a worker just activated may take a moment to appear.
    fn worker_tid(&self) -> u32 {
        let mut tids = Vec::new();
        wait_until(&format!("a thread is named {:?}", self.worker), || {
            tids = threads_named(&self.worker);
            !tids.is_empty()
        });
        assert_eq!(
            tids.len(),
            1,
            "exactly one thread named {:?}: {tids:?}",
            self.worker
        );
        tids[0]
    }

    /// Asserts that the worker uses under 5% of a CPU over [`WATCH`] (a spinning worker uses a
    /// whole one) while `meanwhile` runs every 100 ms, and that it is still alive afterwards.
    fn assert_worker_sleeps(&self, when: &str, mut meanwhile: impl FnMut()) {
        let tid = self.worker_tid();
        let before = cpu_time(tid).expect("the worker is alive");
        let start = Instant::now();
        // Not a synchronisation: this is the span over which CPU use is measured.
        while start.elapsed() < WATCH {
            meanwhile();
            thread::sleep(Duration::from_millis(100));
        }
        let wall = start.elapsed();
        let used = cpu_time(tid).expect("the worker is still alive (it did not panic)") - before;
        println!("{}: worker CPU {used:?} over {wall:?} {when}", self.worker);
        assert!(
            used < wall / 20,
            "{}: the worker used {used:?} of CPU over {wall:?} {when}: it spins",
            self.worker
        );
        assert_eq!(
            threads_named(&self.worker),
            [tid],
            "the worker is still running"
        );
    }

    /// Resets the device as a driver does (status 0) and waits for its worker thread to go.
    fn reset(&mut self) {
        self.sim.write_reg(regs::STATUS, 0);
        assert!(!self.is_active(), "reset deactivates the device");
        // The join has returned; the kernel removes the task entry right after.
        wait_until(&format!("no thread is named {:?}", self.worker), || {
            threads_named(&self.worker).is_empty()
        });
    }
}

/// Sends `buf` over and over while `fault` (a child process) runs, and `after` more times once
/// it has finished, keeping at most 100 frames in flight and RX buffers posted; returns how many
/// frames were sent and how many TX buffers came back so far.
fn send_through(
    r: &mut Rig,
    buf: TxBuf,
    fault: &mut std::process::Child,
    after: u64,
) -> (u64, u64) {
    let deadline = Instant::now() + TIMEOUT;
    let (mut sent, mut used) = (0u64, 0u64);
    let mut sent_when_done = None;
    loop {
        if sent_when_done.is_none()
            && let Some(status) = fault.try_wait().expect("wait for ip")
        {
            assert!(status.success(), "the fault command failed: {status}");
            sent_when_done = Some(sent);
        }
        if sent_when_done.is_some_and(|s| sent >= s + after) {
            return (sent, used);
        }
        assert!(Instant::now() < deadline, "sending took over {TIMEOUT:?}");
        if sent - used >= 100 {
            used += r.wait_tx_used(1) as u64;
        }
        r.send(buf);
        sent += 1;
        used += r.sim.take_used(1).unwrap().len() as u64;
        // Keep RX buffers posted, so the receive side meets the fault too.
        let rx_done = r.sim.take_used(0).unwrap().len();
        if rx_done > 0 {
            r.sim.post_rx_buffers(rx_done, RX_BUF).unwrap();
        }
    }
}

/// The start of the TAP fault tests: a rig on a TAP into a peer LAN (`lan_tag`, `rig_tag` name
/// them), the driver up with 64 receive buffers, and the peer's MAC, which the peer gave in
/// answer to ARP before any fault. `None`, after printing SKIPPED for `test`, where TAP tests
/// cannot run.
fn tap_rig(test: &str, lan_tag: &str, rig_tag: &str) -> Option<(Lan, Rig, [u8; 6])> {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED: {test}: {reason}");
        return None;
    }
    let (lan, tap) = Lan::build(lan_tag);
    let mut r = Rig::new(Box::new(tap), rig_tag);
    r.sim.init(MRG_RXBUF | EVENT_IDX, 256).unwrap();
    r.sim.post_rx_buffers(64, RX_BUF).unwrap();
    let peer_mac = resolve_peer(&mut r.sim, 10).expect("the peer answers ARP before the fault");
    Some((lan, r, peer_mac))
}

#[test]
fn tap_deleted_while_the_guest_sends_counts_errors_returns_every_buffer_and_does_not_spin() {
    let _guard = alongside_others();
    let Some((lan, mut r, peer_mac)) = tap_rig(
        "tap_deleted_while_the_guest_sends_counts_errors_returns_every_buffer_and_does_not_spin",
        "del",
        "flt-tapdel",
    ) else {
        return;
    };
    let echo = r.tx_buf(&echo_request(peer_mac, 0x4401, 1, &[0x5a; 56]));
    let before = r.counts();

    let mut delete = Command::new("ip")
        .args(["-n", &lan.lan_ns, "link", "del", &lan.tap_name])
        .spawn()
        .expect("run ip link del");
    let (sent, mut used) = send_through(&mut r, echo, &mut delete, 200);
    used += r.wait_tx_used((sent - used) as usize) as u64;

    let d = r.counts().since(before);
    println!("after the deletion: sent {sent}, {d:?}");
    assert_eq!(used, sent, "every TX buffer comes back to the guest");
    assert_eq!(
        d.tx_frames + d.tx_dropped,
        sent,
        "every frame is sent or counted as dropped: {d:?}"
    );
    assert!(
        d.tx_dropped >= 200,
        "the frames sent after the deletion are dropped: {d:?}"
    );
    assert!(
        d.tx_errors > 0,
        "the backend's send errors are counted: {d:?}"
    );
    assert_eq!(d.bad_chains, 0);
    // The receive side reports the error too, once the guest offers buffers.
    r.sim.post_rx_buffers(8, RX_BUF).unwrap();
    wait_until("a receive error is counted", || {
        r.counts().since(before).rx_errors > 0
    });
    r.assert_worker_sleeps("after the TAP was deleted", || {});
    r.reset();
}

#[test]
fn tap_set_down_while_the_guest_sends_counts_drops_and_traffic_resumes_when_it_is_up() {
    let _guard = alongside_others();
    let Some((lan, mut r, peer_mac)) = tap_rig(
        "tap_set_down_while_the_guest_sends_counts_drops_and_traffic_resumes_when_it_is_up",
        "dwn",
        "flt-tapdown",
    ) else {
        return;
    };
    let echo = r.tx_buf(&echo_request(peer_mac, 0x4402, 1, &[0x5a; 56]));
    let before = r.counts();

    let mut down = Command::new("ip")
        .args(["-n", &lan.lan_ns, "link", "set", &lan.tap_name, "down"])
        .spawn()
        .expect("run ip link set down");
    let (sent, mut used) = send_through(&mut r, echo, &mut down, 200);
    used += r.wait_tx_used((sent - used) as usize) as u64;
    let d = r.counts().since(before);
    println!("while the TAP is down: sent {sent}, {d:?}");
    assert_eq!(used, sent, "every TX buffer comes back to the guest");
    assert_eq!(
        d.tx_frames + d.tx_dropped,
        sent,
        "every frame is sent or counted as dropped: {d:?}"
    );
    assert!(
        d.tx_dropped >= 200,
        "the frames sent while the TAP is down are counted as dropped: {d:?}"
    );
    r.assert_worker_sleeps("while the TAP is down", || {});

    lan.set_tap(&["up"]);
    let peer_mac = resolve_peer(&mut r.sim, 10).expect("ARP works again once the TAP is up");
    let payload: Vec<u8> = (0..56u8).collect();
    let reply = (1..=10u16).find_map(|seq| {
        r.sim
            .send_frame(&echo_request(peer_mac, 0x4402, 1000 + seq, &payload))
            .unwrap();
        try_wait_frame(&mut r.sim, Duration::from_secs(1), |f| {
            is_echo_reply(f) && f[38..40] == 0x4402u16.to_be_bytes() && f[42..] == payload[..]
        })
    });
    assert!(reply.is_some(), "the peer answers ICMP echo again");
    r.reset();
}

#[test]
fn backend_enobufs_bursts_are_counted_as_drops_and_the_device_keeps_serving() {
    let _guard = alongside_others();
    let (mut r, backend) = Rig::with_mem_backend("flt-enobufs");
    r.sim.init(MRG_RXBUF | EVENT_IDX, 256).unwrap();
    let doomed = r.tx_buf(&frame(0xdead));
    let mut expected = Vec::new();
    for burst in 0..3u64 {
        backend.fail_sends(4);
        // One frame in flight at a time: each is one send call, and the next four fail.
        for _ in 0..4 {
            r.send_one(doomed);
        }
        for k in 0..5 {
            let f = frame(burst * 100 + k);
            let buf = r.tx_buf(&f);
            r.send_one(buf);
            expected.push(f);
        }
    }

    let c = r.counts();
    assert_eq!((c.tx_errors, c.tx_dropped), (12, 12), "{c:?}");
    assert_eq!(c.tx_frames, 15, "{c:?}");
    assert_eq!(
        backend.take_sent(),
        expected,
        "the frames between bursts go out, in order"
    );
    r.sim.post_rx_buffers(4, RX_BUF).unwrap();
    backend.inject(&frame(7));
    assert_eq!(
        r.sim.recv_frames(1, TIMEOUT).expect("receive still works"),
        [frame(7)]
    );
    r.assert_worker_sleeps("after ENOBUFS bursts", || {});
    r.reset();
}

#[test]
fn backend_refusing_frames_in_bursts_counts_drops_and_the_device_keeps_serving() {
    let _guard = alongside_others();
    let (mut r, backend) = Rig::with_mem_backend("flt-full");
    r.sim.init(MRG_RXBUF | EVENT_IDX, 256).unwrap();
    let buf = r.tx_buf(&frame(1));

    // A full host queue (EAGAIN): the backend takes nothing.
    backend.set_send_limit(Some(0));
    for _ in 0..100 {
        r.send(buf);
    }
    assert_eq!(r.wait_tx_used(100), 100, "every TX buffer comes back");
    let c = r.counts();
    assert_eq!(
        (c.tx_frames, c.tx_dropped, c.tx_errors),
        (0, 100, 0),
        "{c:?}"
    );
    assert_eq!(backend.sent_count(), 0);

    // A nearly full one: one frame per send call, the rest of each batch dropped.
    backend.set_send_limit(Some(1));
    for _ in 0..100 {
        r.send(buf);
    }
    assert_eq!(r.wait_tx_used(100), 100, "every TX buffer comes back");
    let d = r.counts().since(c);
    assert_eq!(d.tx_frames + d.tx_dropped, 100, "{d:?}");
    assert!(d.tx_frames >= 1, "each send call takes a frame: {d:?}");
    assert_eq!(backend.sent_count(), d.tx_frames);

    // Room again: everything goes.
    backend.set_send_limit(None);
    backend.take_sent();
    let good = frame(2);
    let good_buf = r.tx_buf(&good);
    for _ in 0..10 {
        r.send(good_buf);
    }
    assert_eq!(r.wait_tx_used(10), 10);
    assert_eq!(backend.take_sent(), vec![good; 10]);
    r.assert_worker_sleeps("after bursts of refused frames", || {});
    r.reset();
}

#[test]
fn backend_receive_error_burst_is_counted_and_waiting_frames_are_still_delivered() {
    let _guard = alongside_others();
    let (mut r, backend) = Rig::with_mem_backend("flt-rxerr");
    r.sim.init(MRG_RXBUF | EVENT_IDX, 256).unwrap();
    let expected: Vec<Vec<u8>> = (0..3).map(frame).collect();
    for f in &expected {
        backend.inject(f);
    }
    wait_until("the device has found no RX buffer", || {
        r.counts().rx_no_buffers > 0
    });
    // The next three receive calls fail (EIO); the first comes once the guest posts buffers.
    // No new frame arrives after that: the device must come back for the waiting ones itself.
    backend.fail_recvs(3);
    r.sim.post_rx_buffers(8, RX_BUF).unwrap();
    let got = r.sim.recv_frames(expected.len(), TIMEOUT);
    let c = r.counts();
    assert!(
        got.is_ok(),
        "the frames waiting behind a burst of receive errors are delivered within {TIMEOUT:?} \
         (still waiting in the backend: {}; {c:?})",
        backend.pending()
    );
    assert_eq!(got.unwrap(), expected, "all of them, in order");
    assert_eq!(c.rx_errors, 3, "each failed receive is counted: {c:?}");
    r.assert_worker_sleeps("after a burst of receive errors", || {});
    r.reset();
}

#[test]
fn guest_reset_mid_traffic_joins_the_worker_releases_its_fds_and_reactivates() {
    let _guard = alone();
    let (mut r, backend) = Rig::with_mem_backend("flt-reset");
    let buf = r.tx_buf(&frame(0xbeef));

    // The host side: frames for the guest arrive all the time, at most 256 waiting.
    let stop = Arc::new(AtomicBool::new(false));
    let injected = Arc::new(AtomicU64::new(0));
    let pump = thread::spawn({
        let (backend, stop, injected) = (backend.clone(), Arc::clone(&stop), Arc::clone(&injected));
        move || {
            while !stop.load(Ordering::SeqCst) {
                if backend.pending() < 256 {
                    backend.inject(&frame(injected.load(Ordering::SeqCst)));
                    injected.fetch_add(1, Ordering::SeqCst);
                } else {
                    thread::sleep(Duration::from_micros(200));
                }
            }
        }
    });

    let fds_before_activation = open_fds();
    for round in 0..5 {
        r.sim.init(MRG_RXBUF | EVENT_IDX, 256).unwrap();
        assert!(r.is_active(), "round {round}: the device reactivates");
        r.worker_tid();
        r.sim.post_rx_buffers(128, RX_BUF).unwrap();

        // Traffic both ways until each direction moved 50 frames in this activation.
        let start = r.counts();
        let deadline = Instant::now() + TIMEOUT;
        let mut in_flight = 0usize;
        loop {
            let d = r.counts().since(start);
            if d.tx_frames >= 50 && d.rx_frames >= 50 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: frames flow both ways after activation: {d:?}"
            );
            if in_flight < 64 {
                r.send(buf);
                in_flight += 1;
            }
            in_flight -= r.sim.take_used(1).unwrap().len();
            let rx_done = r.sim.take_used(0).unwrap().len();
            if rx_done > 0 {
                r.sim.post_rx_buffers(rx_done, RX_BUF).unwrap();
            }
            thread::yield_now();
        }
        // Reset with TX frames queued and RX frames arriving.
        for _ in 0..32 {
            r.send(buf);
        }
        r.reset();
        assert_eq!(
            open_fds(),
            fds_before_activation,
            "round {round}: the worker's descriptors are closed"
        );
    }

    // The host stops; a last activation drains what waits: no frame was lost to the resets.
    stop.store(true, Ordering::SeqCst);
    pump.join().unwrap();
    let injected = injected.load(Ordering::SeqCst);
    r.sim.init(MRG_RXBUF | EVENT_IDX, 256).unwrap();
    r.sim.post_rx_buffers(128, RX_BUF).unwrap();
    wait_until("every injected frame is delivered", || {
        let done = r.sim.take_used(0).unwrap().len();
        if done > 0 {
            r.sim.post_rx_buffers(done, RX_BUF).unwrap();
        }
        backend.pending() == 0 && r.counts().rx_frames == injected
    });
    let c = r.counts();
    assert_eq!(c.rx_frames, injected, "{c:?}");
    assert_eq!(c.tx_frames, backend.sent_count(), "{c:?}");
    assert_eq!((c.tx_dropped, c.bad_chains, backend.truncated()), (0, 0, 0));
    r.reset();
    assert_eq!(open_fds(), fds_before_activation);
}

#[test]
fn rx_starved_device_sleeps_while_frames_wait_and_delivers_them_once_buffers_come() {
    let _guard = alongside_others();
    let (mut r, backend) = Rig::with_mem_backend("flt-norx");
    r.sim.init(MRG_RXBUF | EVENT_IDX, 256).unwrap();
    let mut expected: Vec<Vec<u8>> = (0..50).map(frame).collect();
    for f in &expected {
        backend.inject(f);
    }
    wait_until("the device has found no RX buffer", || {
        r.counts().rx_no_buffers > 0
    });

    // More frames keep arriving while the guest posts nothing.
    let mut next = 50;
    let mut late = Vec::new();
    r.assert_worker_sleeps("with frames pending and no RX buffers", || {
        let f = frame(next);
        backend.inject(&f);
        late.push(f);
        next += 1;
    });
    expected.extend(late);
    assert_eq!(
        backend.pending(),
        expected.len(),
        "the frames wait in the backend"
    );
    assert_eq!(r.counts().rx_frames, 0);

    r.sim.post_rx_buffers(128, RX_BUF).unwrap();
    let got = r
        .sim
        .recv_frames(expected.len(), TIMEOUT)
        .expect("the waiting frames are delivered once buffers come");
    assert_eq!(got, expected, "all of them, in order");
    assert_eq!(backend.pending(), 0);
    r.reset();
}

#[test]
fn guest_that_never_acknowledges_interrupts_keeps_getting_used_buffers_and_interrupts() {
    let _guard = alongside_others();
    let (mut r, backend) = Rig::with_mem_backend("flt-noack");
    r.sim.init(MRG_RXBUF | EVENT_IDX, 256).unwrap();
    r.sim.post_rx_buffers(64, RX_BUF).unwrap();
    let out = r.tx_buf(&frame(0xfeed));

    for i in 0..300 {
        let before = r.counts();
        // Ask for an interrupt on the next used buffer of each queue, as a driver does before
        // it sleeps; with EVENT_IDX the device interrupts only when asked.
        r.sim.rearm(0).unwrap();
        r.sim.rearm(1).unwrap();
        r.send(out);
        backend.inject(&frame(i));
        assert_eq!(r.wait_tx_used(1), 1, "frame {i}: the TX buffer comes back");
        assert_eq!(
            r.sim.recv_frames(1, TIMEOUT).expect("a frame arrives"),
            [frame(i)],
            "frame {i}"
        );
        r.sim.post_rx_buffers(1, RX_BUF).unwrap();
        wait_until(&format!("frame {i}: the device interrupts"), || {
            r.counts().interrupts > before.interrupts
        });
        let status = r.sim.read_reg(regs::INTERRUPT_STATUS);
        assert_ne!(
            status & interrupt_status::USED_RING,
            0,
            "frame {i}: InterruptStatus stays set"
        );
    }
    // The interrupt notifier itself still fires for new used buffers (once the driver asks for
    // one, as a driver going to sleep does).
    r.sim.wait_interrupt(Duration::ZERO).unwrap();
    r.sim.rearm(1).unwrap();
    r.send(out);
    assert!(
        r.sim.wait_interrupt(TIMEOUT).unwrap(),
        "the interrupt notifier fires"
    );
    assert_eq!(r.wait_tx_used(1), 1);
    let c = r.counts();
    assert_eq!((c.tx_frames, c.rx_frames), (301, 300), "{c:?}");
    assert_eq!(backend.sent_count(), 301);
    r.assert_worker_sleeps("with InterruptStatus never acknowledged", || {});
    r.reset();
}
