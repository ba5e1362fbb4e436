//! The data path allocates nothing per frame in steady state.
//!
//! A counting global allocator (this test binary's own) counts the allocations made on the test
//! thread while the data path moves batches of frames both ways, driven directly (no worker
//! thread) over queues in guest memory, against a backend that allocates nothing itself. After a
//! few warm-up batches (the scratch vectors grow to the largest batch once) the count must stay
//! at zero.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use devices::event::Notifier;
use devices::net::{Backend, BackendInfo, Offloads, RxFrame, TxFrame, VNET_HDR_LEN};
use devices::testing::{RawDescriptor, VRING_DESC_F_WRITE};
use devices::virtio::net::{DataPath, NetMetrics, PathConfig, RxEnd};
use devices::virtio::{GuestMemory, Interrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Counts the allocations (and reallocations) of threads that turned counting on.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to the system allocator unchanged; counting touches no memory the
// allocator hands out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

const QUEUE: u16 = 256;
const BATCH: usize = 64;
const FRAME: usize = 64;
const RX_BUF: u32 = 1536;
const RX_RINGS: (u64, u64, u64) = (0x0000, 0x1000, 0x2000);
const TX_RINGS: (u64, u64, u64) = (0x4000, 0x5000, 0x6000);
const TX_BUFS: u64 = 0x1_0000;
const RX_BUFS: u64 = 0x2_0000;

/// A backend that allocates nothing: it reads every frame sent into a fixed buffer, and fills
/// every receive with `pending` copies of one frame.
struct FixedBackend {
    ready: Notifier,
    scratch: [u8; 2048],
    frame: [u8; FRAME],
    pending: usize,
    sent: u64,
}

impl Backend for FixedBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo::default()
    }
    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.ready.as_fd()
    }
    fn recv(&mut self, frames: &mut [RxFrame<'_, '_>]) -> io::Result<usize> {
        let n = frames.len().min(self.pending);
        for f in &mut frames[..n] {
            let buf = f.bufs.first().expect("a frame has room");
            buf.copy_from(&self.frame);
            f.len = FRAME;
        }
        self.pending -= n;
        Ok(n)
    }
    fn send(&mut self, frames: &[TxFrame<'_, '_>]) -> io::Result<usize> {
        for f in frames {
            for b in f.bufs {
                b.copy_to(&mut self.scratch[..]);
            }
            self.sent += 1;
        }
        Ok(frames.len())
    }
    fn set_rx_offloads(&mut self, _: Offloads) -> io::Result<()> {
        Ok(())
    }
}

/// The driver's side of one queue: the avail ring it fills and the used index it has seen.
struct Driver {
    rings: (u64, u64, u64),
    avail_idx: u16,
}

impl Driver {
    fn device_queue(&self, mem: &GuestMemory) -> Queue {
        let mut q = Queue::new(QUEUE).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.rings.0))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.rings.1))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.rings.2))
            .unwrap();
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }

    /// Makes descriptors `0..BATCH` available again, one single-descriptor chain each.
    fn post(&mut self, mem: &GuestMemory, buf: impl Fn(u16) -> RawDescriptor) {
        for i in 0..BATCH as u16 {
            buf(i)
                .write(mem, RawDescriptor::entry(GuestAddress(self.rings.0), i))
                .unwrap();
            let slot = u64::from(self.avail_idx % QUEUE);
            mem.write_obj(i.to_le(), GuestAddress(self.rings.1 + 4 + 2 * slot))
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.rings.1 + 2))
            .unwrap();
    }

    fn used_idx(&self, mem: &GuestMemory) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(self.rings.2 + 2)).unwrap())
    }
}

#[test]
fn steady_state_batches_allocate_nothing() {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut rx = Driver {
        rings: RX_RINGS,
        avail_idx: 0,
    };
    let mut tx = Driver {
        rings: TX_RINGS,
        avail_idx: 0,
    };
    let cfg = PathConfig {
        backend_vnet_hdr: false,
        mrg_rxbuf: true,
        rx_room: VNET_HDR_LEN + 1518,
        tx_max: VNET_HDR_LEN + 1518,
        rx_batch: BATCH,
        tx_batch: BATCH,
    };
    let metrics = Arc::new(NetMetrics::default());
    let mut path = DataPath::new(
        mem.clone(),
        rx.device_queue(&mem),
        tx.device_queue(&mem),
        Interrupt::new(Notifier::new().unwrap()),
        cfg,
        Arc::clone(&metrics),
    );
    let mut backend = FixedBackend {
        ready: Notifier::new().unwrap(),
        scratch: [0; 2048],
        frame: [0x5a; FRAME],
        pending: 0,
        sent: 0,
    };
    let tx_buf = |i: u16| RawDescriptor {
        addr: TX_BUFS + u64::from(i) * 256,
        len: (VNET_HDR_LEN + FRAME) as u32,
        flags: 0,
        next: 0,
    };
    let rx_buf = |i: u16| RawDescriptor {
        addr: RX_BUFS + u64::from(i) * u64::from(RX_BUF),
        len: RX_BUF,
        flags: VRING_DESC_F_WRITE,
        next: 0,
    };
    // One round: a batch of frames each way.
    let mut round = |path: &mut DataPath, backend: &mut FixedBackend| {
        tx.post(&mem, tx_buf);
        path.process_tx(backend);
        rx.post(&mem, rx_buf);
        backend.pending = BATCH;
        // The batch fills every buffer posted; the next round finds none left.
        assert_eq!(path.process_rx(backend), RxEnd::NoBuffers);
    };
    const WARM_UP: u64 = 4;
    const ROUNDS: u64 = 200;
    for _ in 0..WARM_UP {
        round(&mut path, &mut backend);
    }
    let n = allocations_in(|| {
        for _ in 0..ROUNDS {
            round(&mut path, &mut backend);
        }
    });
    // The frames really moved, every one of them.
    let frames = (WARM_UP + ROUNDS) * BATCH as u64;
    assert_eq!(backend.sent, frames);
    assert_eq!(metrics.tx_frames.load(Ordering::Relaxed), frames);
    assert_eq!(metrics.rx_frames.load(Ordering::Relaxed), frames);
    assert_eq!(metrics.bad_chains.load(Ordering::Relaxed), 0);
    assert_eq!(tx.used_idx(&mem), frames as u16);
    assert_eq!(rx.used_idx(&mem), frames as u16);
    assert_eq!(
        n, 0,
        "{n} allocations in {ROUNDS} rounds of {BATCH} frames each way"
    );
}
