//! The data path driven directly: no transport, no worker thread, no notifier waits. A driver
//! fills the avail rings of two queues in guest memory with single-descriptor chains, calls
//! `DataPath::process_tx` / `process_rx`, and a backend takes and hands out frames: by default
//! [`FixedBackend`], which allocates nothing, or any other (the zero-allocation test also runs
//! the vmnet backend against the model). Shared by the benchmark (`benches/datapath.rs`) and the
//! zero-allocation test (`tests/no_alloc.rs`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use devices::event::Notifier;
use devices::net::{Backend, BackendInfo, Offloads, RxFrame, TxFrame, VNET_HDR_LEN};
use devices::testing::{RawDescriptor, VRING_DESC_F_WRITE};
use devices::virtio::net::{DataPath, NetMetrics, PathConfig, RxEnd};
use devices::virtio::{GuestMemory, Interrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const QUEUE: u16 = 256;
const RX_RINGS: (u64, u64, u64) = (0x0000, 0x1000, 0x2000);
const TX_RINGS: (u64, u64, u64) = (0x4000, 0x5000, 0x6000);
const BUFS: u64 = 0x1_0000;

/// A backend that allocates nothing: it reads every frame sent into a fixed buffer, and fills
/// every receive with `pending` copies of one frame.
pub struct FixedBackend {
    ready: Notifier,
    scratch: Vec<u8>,
    frame: Vec<u8>,
    /// Frames the next receives hand out.
    pub pending: usize,
    /// Frames sent so far.
    pub sent: u64,
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
            let mut rest = &self.frame[..];
            for b in f.bufs {
                let k = rest.len().min(b.len());
                b.copy_from(&rest[..k]);
                rest = &rest[k..];
            }
            f.len = self.frame.len() - rest.len();
        }
        self.pending -= n;
        Ok(n)
    }
    fn send(&mut self, frames: &[TxFrame<'_, '_>]) -> io::Result<usize> {
        for f in frames {
            let mut at = 0;
            for b in f.bufs {
                let k = b.len().min(self.scratch.len() - at);
                b.copy_to(&mut self.scratch[at..at + k]);
                at += k;
            }
            self.sent += 1;
        }
        Ok(frames.len())
    }
    fn set_rx_offloads(&mut self, _: Offloads) -> io::Result<()> {
        Ok(())
    }
}

/// The driver's side of one queue: the avail ring it fills.
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

    /// Makes descriptors `0..n` available again, one single-descriptor chain each.
    fn post(&mut self, mem: &GuestMemory, n: u16, buf: impl Fn(u16) -> RawDescriptor) {
        for i in 0..n {
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

    /// The device's used index.
    fn used_idx(&self, mem: &GuestMemory) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(self.rings.2 + 2)).unwrap())
    }
}

/// A data path over two queues of 256 and a backend (a [`FixedBackend`] unless given), moving
/// frames of one size in batches of `batch` (at most 128): a headerless backend (the device
/// writes the virtio-net header), mergeable RX buffers of 1536 bytes, or one of 64 KiB for
/// frames above 1518 bytes.
pub struct Rig<B: Backend = FixedBackend> {
    mem: GuestMemory,
    /// The data path.
    pub path: DataPath,
    /// The backend.
    pub backend: B,
    /// The data path's counters.
    pub metrics: Arc<NetMetrics>,
    rx: Driver,
    tx: Driver,
    batch: u16,
    frame: usize,
    rx_buf: u32,
}

impl Rig {
    /// A rig for `frame`-byte frames (virtio-net header excluded) over a [`FixedBackend`].
    pub fn new(frame: usize, batch: u16) -> Self {
        let max_frame = if frame > 1518 { 65_535 + 18 } else { 1518 };
        let backend = FixedBackend {
            ready: Notifier::new().unwrap(),
            scratch: vec![0; max_frame + VNET_HDR_LEN],
            frame: vec![0x5a; frame],
            pending: 0,
            sent: 0,
        };
        Rig::with_backend(frame, batch, backend)
    }

    /// The guest posts a batch of buffers and the device fills them with as many frames.
    pub fn rx_batch(&mut self) {
        self.backend.pending = usize::from(self.batch);
        self.rx_posted_batch();
    }

    /// Checks that `n` frames went each way, every one of them whole and none refused.
    pub fn assert_moved(&self, n: u64) {
        assert_eq!(self.backend.sent, n);
        self.assert_moved_by_the_device(n);
    }
}

impl<B: Backend> Rig<B> {
    /// A rig for `frame`-byte frames (virtio-net header excluded) over `backend`, which must
    /// take headerless frames.
    pub fn with_backend(frame: usize, batch: u16, backend: B) -> Self {
        assert!(batch <= QUEUE / 2);
        assert!(
            !backend.info().vnet_hdr,
            "the rig's backend takes headerless frames"
        );
        let big = frame > 1518;
        let rx_buf: u32 = if big { 65_536 + 64 } else { 1536 };
        let mem = GuestMemory::from_ranges(&[(
            GuestAddress(0),
            (BUFS + 2 * u64::from(batch) * (u64::from(rx_buf) + 64)) as usize,
        )])
        .unwrap();
        let rx = Driver {
            rings: RX_RINGS,
            avail_idx: 0,
        };
        let tx = Driver {
            rings: TX_RINGS,
            avail_idx: 0,
        };
        let max_frame = if big { 65_535 + 18 } else { 1518 };
        let cfg = PathConfig {
            backend_vnet_hdr: false,
            mrg_rxbuf: true,
            rx_room: VNET_HDR_LEN + max_frame,
            tx_max: VNET_HDR_LEN + max_frame,
            rx_batch: usize::from(batch),
            tx_batch: usize::from(batch),
        };
        let metrics = Arc::new(NetMetrics::default());
        let path = DataPath::new(
            mem.clone(),
            rx.device_queue(&mem),
            tx.device_queue(&mem),
            Interrupt::new(Notifier::new().unwrap()),
            cfg,
            Arc::clone(&metrics),
        );
        Self {
            mem,
            path,
            backend,
            metrics,
            rx,
            tx,
            batch,
            frame,
            rx_buf,
        }
    }

    /// The guest queues a batch of frames and the device sends them.
    pub fn tx_batch(&mut self) {
        let (base, stride) = (self.tx_base(), self.stride());
        let len = (VNET_HDR_LEN + self.frame) as u32;
        self.tx.post(&self.mem, self.batch, |i| RawDescriptor {
            addr: base + u64::from(i) * stride,
            len,
            flags: 0,
            next: 0,
        });
        self.path.process_tx(&mut self.backend);
    }

    /// The guest posts a batch of buffers and the device fills them with as many frames from
    /// the backend, which must have that many to give.
    pub fn rx_posted_batch(&mut self) {
        let stride = self.stride();
        let len = self.rx_buf;
        self.rx.post(&self.mem, self.batch, |i| RawDescriptor {
            addr: BUFS + u64::from(i) * stride,
            len,
            flags: VRING_DESC_F_WRITE,
            next: 0,
        });
        // The batch fills every buffer posted; the next round finds none left.
        assert_eq!(self.path.process_rx(&mut self.backend), RxEnd::NoBuffers);
    }

    /// Checks that the device moved `n` frames each way, every one of them whole and none
    /// refused.
    pub fn assert_moved_by_the_device(&self, n: u64) {
        assert_eq!(self.metrics.tx_frames.load(Ordering::Relaxed), n);
        assert_eq!(self.metrics.rx_frames.load(Ordering::Relaxed), n);
        assert_eq!(
            self.metrics.rx_bytes.load(Ordering::Relaxed),
            n * self.frame as u64
        );
        assert_eq!(self.metrics.bad_chains.load(Ordering::Relaxed), 0);
        assert_eq!(self.tx.used_idx(&self.mem), n as u16);
        assert_eq!(self.rx.used_idx(&self.mem), n as u16);
    }

    fn stride(&self) -> u64 {
        u64::from(self.rx_buf) + 64
    }

    fn tx_base(&self) -> u64 {
        BUFS + u64::from(self.batch) * self.stride()
    }
}
