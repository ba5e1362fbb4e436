//! RX interrupt holding in the data path: a pass that leaves the interrupt to its caller
//! publishes the frames without interrupting, and [`DataPath::notify_rx`] interrupts for all of
//! them later. The worker's side (when to call it) is tested in `worker.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress};

use super::fuzz_regressions::{
    RX_AVAIL, RX_DESC, RX_USED, SIZE, path_config, queue, write_desc_at,
};
use super::{DataPath, NetMetrics, RxEnd, RxPass};
use crate::event::Notifier;
use crate::net::mem::{MemBackend, MemBackendConfig, MemBackendHandle};
use crate::testing::VRING_DESC_F_WRITE;
use crate::virtio::{GuestMemory, Interrupt};

struct Rx {
    mem: GuestMemory,
    path: DataPath,
    backend: MemBackend,
    peer: MemBackendHandle,
    metrics: Arc<NetMetrics>,
}

impl Rx {
    /// A data path whose RX queue holds a 2 KiB buffer in each of its [`SIZE`] entries; no
    /// `VIRTIO_RING_F_EVENT_IDX`, so every decision that finds new used buffers interrupts.
    fn new() -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x2_0000)]).unwrap();
        let rx = queue(&mem, RX_DESC, RX_AVAIL, RX_USED);
        let tx = queue(&mem, 0x1000, 0x1400, 0x1600);
        for head in 0..SIZE {
            let addr = 0x4000 + 0x800 * u64::from(head);
            write_desc_at(&mem, RX_DESC, head, addr, 0x800, VRING_DESC_F_WRITE);
            mem.write_obj(head, GuestAddress(RX_AVAIL + 4 + 2 * u64::from(head)))
                .unwrap();
        }
        mem.write_obj(SIZE, GuestAddress(RX_AVAIL + 2)).unwrap();
        let backend = MemBackend::new(MemBackendConfig::default()).unwrap();
        let peer = backend.handle();
        let metrics = Arc::new(NetMetrics::default());
        let path = DataPath::new(
            mem.clone(),
            rx,
            tx,
            Interrupt::new(Notifier::new().unwrap()),
            path_config(false),
            Arc::clone(&metrics),
        );
        Self {
            mem,
            path,
            backend,
            peer,
            metrics,
        }
    }

    fn inject(&self, n: u8) {
        for i in 0..n {
            self.peer.inject(&[i; 64]);
        }
    }

    fn interrupts(&self) -> u64 {
        self.metrics.interrupts.load(Ordering::Relaxed)
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(RX_USED + 2)).unwrap()
    }
}

#[test]
fn an_unnotified_pass_publishes_its_frames_and_notify_rx_interrupts_once_for_all() {
    let mut t = Rx::new();
    t.inject(2);
    let pass = t.path.process_rx_unnotified(&mut t.backend);
    assert_eq!(
        pass,
        RxPass {
            end: RxEnd::Drained,
            frames: 2
        }
    );
    assert_eq!(t.used_idx(), 2, "the frames are published");
    assert_eq!(t.interrupts(), 0, "the interrupt is the caller's");

    // Frames arriving while the interrupt is held are published under it.
    t.inject(1);
    let pass = t.path.process_rx_unnotified(&mut t.backend);
    assert_eq!(pass.frames, 1);
    assert_eq!((t.used_idx(), t.interrupts()), (3, 0));

    t.path.notify_rx();
    assert_eq!(t.interrupts(), 1);
    // Nothing used since: no second interrupt.
    t.path.notify_rx();
    assert_eq!(t.interrupts(), 1);
}

#[test]
fn an_unnotified_pass_that_runs_out_of_buffers_still_interrupts() {
    let mut t = Rx::new();
    t.inject(SIZE as u8 + 1);
    let pass = t.path.process_rx_unnotified(&mut t.backend);
    assert_eq!(
        pass,
        RxPass {
            end: RxEnd::NoBuffers,
            frames: u64::from(SIZE)
        }
    );
    assert_eq!(
        t.interrupts(),
        1,
        "the driver must hear of the used buffers"
    );
    assert_eq!(t.peer.pending(), 1, "the last frame waits for a buffer");
}

#[test]
fn process_rx_interrupts_by_itself() {
    let mut t = Rx::new();
    t.inject(2);
    assert_eq!(t.path.process_rx(&mut t.backend), RxEnd::Drained);
    assert_eq!(t.interrupts(), 1);
}
