//! TX coalescing in the data path: when a pass keeps the driver's kicks off and when it turns
//! them back on. With `VIRTIO_RING_F_EVENT_IDX` the kicks are the device's `avail_event`: the
//! driver kicks when its avail index passes it (`vring_need_event`), so an `avail_event` left
//! behind means no kick for the frames the driver adds next.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::fuzz_regressions::{
    RX_AVAIL, RX_DESC, RX_USED, SIZE, path_config, queue, write_desc_at,
};
use super::{DataPath, NetMetrics, TxEnd};
use crate::event::Notifier;
use crate::net::VNET_HDR_LEN;
use crate::net::mem::{MemBackend, MemBackendConfig, MemBackendHandle};
use crate::virtio::{GuestMemory, Interrupt};

const TX_DESC: u64 = 0x1000;
const TX_AVAIL: u64 = 0x1400;
const TX_USED: u64 = 0x1600;
const FRAMES: u64 = 0x8000;
const FRAME_LEN: u32 = VNET_HDR_LEN as u32 + 64;

struct Tx {
    mem: GuestMemory,
    path: DataPath,
    backend: MemBackend,
    sent: MemBackendHandle,
    metrics: Arc<NetMetrics>,
    /// The driver's avail index.
    avail_idx: u16,
}

impl Tx {
    fn new() -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let rx = queue(&mem, RX_DESC, RX_AVAIL, RX_USED);
        let mut tx = queue(&mem, TX_DESC, TX_AVAIL, TX_USED);
        tx.set_event_idx(true);
        let backend = MemBackend::new(MemBackendConfig::default()).unwrap();
        let sent = backend.handle();
        let metrics = Arc::new(NetMetrics::default());
        let cfg = path_config(false);
        let path = DataPath::new(
            mem.clone(),
            rx,
            tx,
            Interrupt::new(Notifier::new().unwrap()),
            cfg,
            Arc::clone(&metrics),
        );
        Self {
            mem,
            path,
            backend,
            sent,
            metrics,
            avail_idx: 0,
        }
    }

    /// The driver adds `n` frames (header and payload in one descriptor each).
    fn add_frames(&mut self, n: u16) {
        for _ in 0..n {
            let slot = self.avail_idx % SIZE;
            let addr = FRAMES + 0x100 * u64::from(slot);
            write_desc_at(&self.mem, TX_DESC, slot, addr, FRAME_LEN, 0);
            self.mem
                .write_obj(slot, GuestAddress(TX_AVAIL + 4 + 2 * u64::from(slot)))
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx, GuestAddress(TX_AVAIL + 2))
                .unwrap();
        }
    }

    /// Whether the driver kicks after adding its next frame (`vring_need_event`).
    fn next_frame_kicks(&self) -> bool {
        let event: u16 = self
            .mem
            .read_obj(GuestAddress(TX_USED + 4 + 8 * u64::from(SIZE)))
            .unwrap();
        let (old, new) = (self.avail_idx, self.avail_idx.wrapping_add(1));
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    fn hold_at(&mut self, n: usize) -> TxEnd {
        self.path.process_tx_or_hold(&mut self.backend, n)
    }

    fn sent(&self) -> u64 {
        self.sent.sent_count()
    }
}

#[test]
fn a_pass_that_finds_enough_frames_holds_kicks_until_a_pass_finds_none() {
    let mut t = Tx::new();
    t.add_frames(2);
    assert_eq!(t.hold_at(2), TxEnd::Holding);
    assert_eq!(t.sent(), 2);
    assert!(!t.next_frame_kicks(), "kicks stay off while holding");

    // Held: one frame is enough to keep holding, and the driver adds it without a kick.
    t.add_frames(1);
    assert_eq!(t.hold_at(1), TxEnd::Holding);
    assert_eq!(t.sent(), 3);
    assert!(!t.next_frame_kicks());

    // Nothing came: kicks go back on, so the next frame is not left waiting for a timer.
    assert_eq!(t.hold_at(1), TxEnd::Idle);
    assert!(t.next_frame_kicks());
    assert_eq!(t.metrics.tx_frames.load(Ordering::Relaxed), 3);
}

#[test]
fn one_frame_per_kick_never_holds() {
    let mut t = Tx::new();
    for n in 1..=3 {
        t.add_frames(1);
        assert_eq!(t.hold_at(2), TxEnd::Idle, "frame {n}");
        assert!(t.next_frame_kicks(), "frame {n}: the next frame kicks");
        assert_eq!(t.sent(), n);
    }
}

#[test]
fn process_tx_always_ends_with_kicks_on() {
    let mut t = Tx::new();
    t.add_frames(3);
    t.path.process_tx(&mut t.backend);
    assert_eq!(t.sent(), 3);
    assert!(t.next_frame_kicks());
}
