//! A second virtio device on the generic worker (`devices::virtio::worker`), built only from
//! the crate's public API, to show that a device other than virtio-net runs on the same thread
//! loop without copying it.
//!
//! The device is entropy-like (virtio 1.2, 5.4: device ID 4, one request queue, no
//! configuration space): it fills the driver's device-writable buffers with bytes, which here
//! come from a byte stream (a Unix socket the test writes into) instead of a random source, so
//! that the test can check every byte. Its handler watches that socket as a source, so both
//! wake-up paths of the worker are used: a kick when the driver adds buffers, the source when
//! bytes arrive. The simulated driver (`devices::testing`) is the guest.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use devices::testing::{Used, attach};
use devices::virtio::worker::{QueueHandler, Wake, Worker, signal_used_if_needed};
use devices::virtio::{
    ActivateContext, ActivateError, GuestMemory, Interrupt, VirtioDevice, features,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const DEVICE_ID_ENTROPY: u32 = 4;
/// The most bytes the device holds between the socket and the guest.
const HELD_MAX: usize = 4096;
const WAIT: Duration = Duration::from_secs(5);

/// What the device counts; shared with the test.
#[derive(Debug, Default)]
struct Counters {
    kicks: AtomicU64,
    source_wakes: AtomicU64,
    /// Bytes read from the socket.
    taken: AtomicU64,
    /// Bytes delivered to the guest.
    bytes: AtomicU64,
    bad_chains: AtomicU64,
}

/// The handler: the request queue, and bytes read from the socket but not yet delivered.
struct StreamHandler {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Interrupt,
    source: UnixStream,
    held: VecDeque<u8>,
    counters: Arc<Counters>,
}

impl StreamHandler {
    /// Reads the socket until it is empty (edge-style readiness) or the device holds enough.
    fn read_source(&mut self) {
        let mut buf = [0u8; 512];
        while self.held.len() < HELD_MAX {
            let room = (HELD_MAX - self.held.len()).min(buf.len());
            match self.source.read(&mut buf[..room]) {
                Ok(0) => break,
                Ok(n) => {
                    self.held.extend(&buf[..n]);
                    self.counters.taken.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Fills buffers while bytes and buffers last; returns how many chains it completed.
    fn fill_buffers(&mut self) -> usize {
        let mut done = 0;
        while !self.held.is_empty() {
            let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            // Untrusted: every buffer must be device-writable and inside guest memory.
            let ok = descs.iter().all(|d| {
                d.is_write_only()
                    && GuestMemoryBackend::check_range(&self.mem, d.addr(), d.len() as usize)
            });
            let mut written = 0u32;
            if ok {
                for d in &descs {
                    let n = self.held.len().min(d.len() as usize);
                    let bytes: Vec<u8> = self.held.drain(..n).collect();
                    if self.mem.write_slice(&bytes, d.addr()).is_err() {
                        break;
                    }
                    written += n as u32;
                }
            } else {
                self.counters.bad_chains.fetch_add(1, Ordering::Relaxed);
            }
            self.counters
                .bytes
                .fetch_add(u64::from(written), Ordering::Relaxed);
            if self.queue.add_used(&self.mem, head, written).is_err() {
                break;
            }
            done += 1;
        }
        done
    }

    /// Reads and delivers until either side runs dry, then lets the driver know.
    fn pass(&mut self) {
        let mut done = 0;
        loop {
            self.read_source();
            let n = self.fill_buffers();
            done += n;
            if n == 0 || self.held.len() == HELD_MAX {
                break;
            }
        }
        // Kicks back on; buffers added meanwhile are taken at once.
        while self.queue.enable_notification(&self.mem).unwrap_or(false) && !self.held.is_empty() {
            done += self.fill_buffers();
        }
        if done > 0 {
            let _ = signal_used_if_needed(&mut self.queue, &self.mem, &self.interrupt);
        }
    }
}

impl QueueHandler for StreamHandler {
    fn sources(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.source.as_fd()]
    }

    fn start(&mut self) -> Option<Instant> {
        self.pass();
        None
    }

    fn wake(&mut self, wake: &Wake) -> Option<Instant> {
        if wake.kicked(0) {
            self.counters.kicks.fetch_add(1, Ordering::Relaxed);
        }
        if wake.source(0) {
            self.counters.source_wakes.fetch_add(1, Ordering::Relaxed);
        }
        self.pass();
        None
    }
}

/// The device: holds the socket while inactive, the worker while active.
struct StreamDevice {
    source: Option<UnixStream>,
    worker: Option<Worker<StreamHandler>>,
    counters: Arc<Counters>,
}

impl VirtioDevice for StreamDevice {
    fn device_type(&self) -> u32 {
        DEVICE_ID_ENTROPY
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_EVENT_IDX
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let queue = ctx
            .queues
            .into_iter()
            .next()
            .filter(|q| q.ready())
            .ok_or(ActivateError::QueueNotReady(0))?;
        let source = self
            .source
            .take()
            .ok_or_else(|| ActivateError::Io(io::Error::other("source lost")))?;
        let handler = StreamHandler {
            mem: ctx.mem,
            queue,
            interrupt: ctx.interrupt,
            source,
            held: VecDeque::new(),
            counters: Arc::clone(&self.counters),
        };
        match Worker::spawn("stream-io".into(), handler, ctx.queue_notifiers) {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err((e, h)) => {
                self.source = h.map(|h| h.source);
                Err(ActivateError::Io(e))
            }
        }
    }
    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            self.source = w.stop().map(|h| h.source);
        }
    }
}

struct Rig {
    sim: devices::testing::DriverSim,
    peer: UnixStream,
    counters: Arc<Counters>,
    transport: Arc<std::sync::Mutex<devices::virtio::mmio::MmioTransport>>,
}

fn rig() -> Rig {
    let (source, peer) = UnixStream::pair().unwrap();
    source.set_nonblocking(true).unwrap();
    let counters = Arc::new(Counters::default());
    let dev = StreamDevice {
        source: Some(source),
        worker: None,
        counters: Arc::clone(&counters),
    };
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (mut sim, transport) = attach(Box::new(dev), mem, GuestAddress(0x1000), 0xf_0000).unwrap();
    sim.init(features::RING_EVENT_IDX, 16).unwrap();
    assert!(transport.lock().unwrap().is_active());
    Rig {
        sim,
        peer,
        counters,
        transport,
    }
}

impl Rig {
    /// Posts `n` device-writable buffers of `len` bytes on queue 0, kicking as a driver does.
    fn post(&mut self, n: usize, len: u32) -> Vec<(u16, GuestAddress)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let a = self.sim.alloc(u64::from(len), 8).unwrap();
            out.push((self.sim.add_chain(0, &[(a, len, true)]).unwrap(), a));
        }
        self.sim.kick(0).unwrap();
        out
    }

    fn read(&self, at: GuestAddress, len: u32) -> Vec<u8> {
        let mut b = vec![0u8; len as usize];
        self.sim.mem().read_slice(&mut b, at).unwrap();
        b
    }

    /// Waits for `n` used buffers, waking on the device's interrupt.
    fn used(&mut self, n: usize) -> Vec<Used> {
        self.sim.rearm(0).unwrap();
        self.sim.wait_used(0, n, WAIT).unwrap()
    }
}

#[test]
fn bytes_that_arrive_after_the_buffers_fill_them_in_order() {
    let mut r = rig();
    let bufs = r.post(3, 8);
    // Nothing to deliver yet: the buffers wait.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.sim.take_used(0).unwrap(), []);
    let data: Vec<u8> = (1..=20).collect();
    r.peer.write_all(&data).unwrap();
    let used = r.used(3);
    let want = [(bufs[0].0, 8), (bufs[1].0, 8), (bufs[2].0, 4)];
    let got: Vec<(u16, u32)> = used.iter().map(|u| (u.id, u.len)).collect();
    assert_eq!(got, want);
    let mut seen = Vec::new();
    for (&(_, at), &(_, len)) in bufs.iter().zip(&want) {
        seen.extend(r.read(at, len));
    }
    assert_eq!(seen, data);
    assert!(r.counters.source_wakes.load(Ordering::Relaxed) >= 1);
    assert_eq!(r.counters.bytes.load(Ordering::Relaxed), 20);
}

#[test]
fn bytes_that_wait_for_buffers_go_out_on_the_kick() {
    let mut r = rig();
    r.peer.write_all(b"hello, worker").unwrap();
    // Let the device read the bytes (on its source's wake-up, or in its first pass if they
    // came before it) with no buffer to put them in.
    let deadline = Instant::now() + WAIT;
    while r.counters.taken.load(Ordering::Relaxed) < 13 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let kicks = r.counters.kicks.load(Ordering::Relaxed);
    let bufs = r.post(1, 64);
    let used = r.used(1);
    assert_eq!(
        used,
        [Used {
            id: bufs[0].0,
            len: 13
        }]
    );
    assert_eq!(r.read(bufs[0].1, 13), b"hello, worker");
    // The buffer went out on the kick: the bytes were held before it came.
    assert_eq!(r.counters.taken.load(Ordering::Relaxed), 13);
    assert!(r.counters.kicks.load(Ordering::Relaxed) > kicks);
}

#[test]
fn a_chain_the_device_cannot_write_is_refused_and_the_next_one_still_works() {
    let mut r = rig();
    let a = r.sim.alloc(16, 8).unwrap();
    // Device-readable: the driver broke the device's contract.
    let bad = r.sim.add_chain(0, &[(a, 16, false)]).unwrap();
    // Outside guest memory.
    let far = r
        .sim
        .add_chain(0, &[(GuestAddress(0x4000_0000), 16, true)])
        .unwrap();
    let good = r.post(1, 4);
    r.peer.write_all(b"abcd").unwrap();
    let used = r.used(3);
    assert_eq!(
        used,
        [
            Used { id: bad, len: 0 },
            Used { id: far, len: 0 },
            Used {
                id: good[0].0,
                len: 4
            }
        ]
    );
    assert_eq!(r.read(good[0].1, 4), b"abcd");
    assert_eq!(r.counters.bad_chains.load(Ordering::Relaxed), 2);
}

#[test]
fn reset_hands_the_source_back_and_the_device_runs_again() {
    let mut r = rig();
    r.peer.write_all(b"one").unwrap();
    let b = r.post(1, 3);
    assert_eq!(r.used(1), [Used { id: b[0].0, len: 3 }]);
    // The driver resets and starts over: a new worker, the same socket.
    r.sim.init(features::RING_EVENT_IDX, 16).unwrap();
    assert!(r.transport.lock().unwrap().is_active());
    r.peer.write_all(b"two").unwrap();
    let b = r.post(1, 3);
    assert_eq!(r.used(1), [Used { id: b[0].0, len: 3 }]);
    assert_eq!(r.read(b[0].1, 3), b"two");
}
