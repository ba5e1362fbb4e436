//! Regression tests for bugs the fuzz targets found (`fuzz/`, target `net_datapath`). Each test
//! drives [`DataPath`] directly over rings written in guest memory, as the fuzz harness does.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{DataPath, NetMetrics, PathConfig};
use crate::event::Notifier;
use crate::net::VNET_HDR_LEN;
use crate::net::mem::{MemBackend, MemBackendConfig};
use crate::testing::{RawDescriptor, VRING_DESC_F_WRITE};
use crate::virtio::{GuestMemory, Interrupt};

pub(super) const SIZE: u16 = 4;
pub(super) const RX_DESC: u64 = 0x0000;
pub(super) const RX_AVAIL: u64 = 0x0400;
pub(super) const RX_USED: u64 = 0x0600;

/// A data path configuration for 1518-byte frames, batches of 32, no mergeable buffers.
pub(super) fn path_config(backend_vnet_hdr: bool) -> PathConfig {
    PathConfig {
        backend_vnet_hdr,
        mrg_rxbuf: false,
        rx_room: VNET_HDR_LEN + 1518,
        tx_max: VNET_HDR_LEN + 1518,
        rx_batch: 32,
        tx_batch: 32,
    }
}

/// A ready queue of [`SIZE`] entries with its rings at these addresses.
pub(super) fn queue(mem: &GuestMemory, desc: u64, avail: u64, used: u64) -> Queue {
    let mut q = Queue::new(SIZE).unwrap();
    q.try_set_desc_table_address(GuestAddress(desc)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(avail)).unwrap();
    q.try_set_used_ring_address(GuestAddress(used)).unwrap();
    q.set_ready(true);
    assert!(q.is_valid(mem));
    q
}

fn write_desc(mem: &GuestMemory, index: u16, addr: u64, len: u32, flags: u16) {
    write_desc_at(mem, RX_DESC, index, addr, len, flags);
}

/// Writes descriptor `index` of the table at `table` (no `next`).
pub(super) fn write_desc_at(
    mem: &GuestMemory,
    table: u64,
    index: u16,
    addr: u64,
    len: u32,
    flags: u16,
) {
    let d = RawDescriptor {
        addr,
        len,
        flags,
        next: 0,
    };
    d.write(mem, RawDescriptor::entry(GuestAddress(table), index))
        .unwrap();
}

/// Found by `net_datapath` (input `fuzz/regressions/net_datapath-header-only-rx-buffer`): with a
/// backend that carries the virtio-net header (TAP) and without `VIRTIO_NET_F_MRG_RXBUF`, the
/// device accepts an RX chain of exactly 12 bytes (`refill_stash` requires only
/// `VNET_HDR_LEN` bytes of room for such a backend). A frame planned into it is taken from the
/// backend, cut to its 12-byte header, judged "no payload" (`len <= VNET_HDR_LEN`) and dropped
/// without any counter, and the chain goes back to the front of the stash: every later frame is
/// planned into the same chain and dropped the same way, so RX never delivers again, whatever
/// buffers the guest posts after it.
#[test]
fn rx_buffer_holding_only_the_header_does_not_swallow_the_frames_behind_it() {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    let rx = queue(&mem, RX_DESC, RX_AVAIL, RX_USED);
    let tx = queue(&mem, 0x1000, 0x1400, 0x1600);
    // Head 0: room for the header only; head 1: room for a whole frame.
    write_desc(&mem, 0, 0x4000, VNET_HDR_LEN as u32, VRING_DESC_F_WRITE);
    write_desc(&mem, 1, 0x5000, 2048, VRING_DESC_F_WRITE);
    for (slot, head) in [0u16, 1].into_iter().enumerate() {
        mem.write_obj(head, GuestAddress(RX_AVAIL + 4 + 2 * slot as u64))
            .unwrap();
    }
    mem.write_obj(2u16, GuestAddress(RX_AVAIL + 2)).unwrap();

    let mut backend = MemBackend::new(MemBackendConfig {
        vnet_hdr: true,
        ..Default::default()
    })
    .unwrap();
    let handle = backend.handle();
    let metrics = Arc::new(NetMetrics::default());
    let cfg = path_config(true);
    let mut path = DataPath::new(
        mem.clone(),
        rx,
        tx,
        Interrupt::new(Notifier::new().unwrap()),
        cfg,
        Arc::clone(&metrics),
    );
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend((0..64u8).map(|i| i.wrapping_mul(7)));

    handle.inject(&frame);
    path.process_rx(&mut backend);

    // The frame lands whole in the buffer that can hold it.
    assert_eq!(metrics.rx_frames.load(Ordering::Relaxed), 1);
    let used_idx: u16 = mem.read_obj(GuestAddress(RX_USED + 2)).unwrap();
    let delivered: Vec<(u32, u32)> = (0..u64::from(used_idx))
        .map(|k| {
            let at = RX_USED + 4 + 8 * (k % u64::from(SIZE));
            (
                mem.read_obj(GuestAddress(at)).unwrap(),
                mem.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        })
        .filter(|&(_, len)| len > 0)
        .collect();
    assert_eq!(delivered, vec![(1, frame.len() as u32)]);
    let mut got = vec![0u8; frame.len()];
    mem.read_slice(&mut got, GuestAddress(0x5000)).unwrap();
    assert_eq!(&got[VNET_HDR_LEN..], &frame[VNET_HDR_LEN..]);
}

/// Runs `f` on a thread; `true` if it returned within five seconds. A test that finds the data
/// path spinning fails instead of hanging (the spinning thread is left behind).
fn returns_in_time(f: impl FnOnce() + Send + 'static) -> bool {
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    wait.recv_timeout(std::time::Duration::from_secs(5)).is_ok()
}

/// A data path whose queue `bogus` has an avail `idx` more than the queue size ahead of the
/// device, as a guest writing a wrong `idx` leaves it.
fn path_with_avail_idx_far_ahead(bogus_tx: bool) -> (DataPath, MemBackend) {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    let rx = queue(&mem, RX_DESC, RX_AVAIL, RX_USED);
    let tx = queue(&mem, 0x1000, 0x1400, 0x1600);
    let avail = if bogus_tx { 0x1400 } else { RX_AVAIL };
    mem.write_obj(SIZE + 1, GuestAddress(avail + 2)).unwrap();
    let backend = MemBackend::new(MemBackendConfig::default()).unwrap();
    let cfg = path_config(false);
    let path = DataPath::new(
        mem,
        rx,
        tx,
        Interrupt::new(Notifier::new().unwrap()),
        cfg,
        Arc::new(NetMetrics::default()),
    );
    (path, backend)
}

/// Found by `mmio_transport` as a hang: the driver's reset (`Status` = 0) joined a worker that
/// never returned, on the vCPU thread, with the transport's lock held. With the avail `idx`
/// more than the queue size ahead of the device's `next_avail`, virtio-queue's
/// `pop_descriptor_chain` fails every time (`InvalidAvailRingIndex`, so it returns `None`),
/// while `enable_notification` only compares `idx` with `next_avail` and keeps answering "more
/// buffers": `process_tx` goes round its outer loop forever. The worker then burns a host CPU,
/// no TX or RX is processed again, and a reset hangs the VMM.
#[test]
fn avail_index_far_ahead_of_the_device_does_not_make_process_tx_spin() {
    let (mut path, mut backend) = path_with_avail_idx_far_ahead(true);
    assert!(
        returns_in_time(move || {
            path.process_tx(&mut backend);
        }),
        "process_tx did not return"
    );
}

/// The same on the RX queue: `refill_stash` pops nothing, the plan is empty,
/// `enable_notification` says more is available, and `process_rx` loops forever.
#[test]
fn avail_index_far_ahead_of_the_device_does_not_make_process_rx_spin() {
    let (mut path, mut backend) = path_with_avail_idx_far_ahead(false);
    backend.handle().inject(&[0u8; 60]);
    assert!(
        returns_in_time(move || {
            let _ = path.process_rx(&mut backend);
        }),
        "process_rx did not return"
    );
}

/// A data path whose queue `bogus` has its avail ring at guest address 0, with one chain made
/// available (avail `idx` 1); the other queue's rings are elsewhere.
fn path_with_avail_ring_at_zero(bogus_tx: bool) -> (DataPath, MemBackend) {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    let (rx, tx) = if bogus_tx {
        (
            queue(&mem, 0x2000, 0x2400, 0x2600),
            queue(&mem, 0x1000, 0, 0x1600),
        )
    } else {
        (
            queue(&mem, 0x2000, 0, 0x2600),
            queue(&mem, 0x1000, 0x1400, 0x1600),
        )
    };
    mem.write_obj(1u16, GuestAddress(2)).unwrap();
    let backend = MemBackend::new(MemBackendConfig::default()).unwrap();
    let cfg = path_config(false);
    let path = DataPath::new(
        mem,
        rx,
        tx,
        Interrupt::new(Notifier::new().unwrap()),
        cfg,
        Arc::new(NetMetrics::default()),
    );
    (path, backend)
}

/// Found by `mmio_transport` as a hang after the fix above (input
/// `fuzz/regressions/mmio_transport-avail-ring-at-zero`): the transport accepts an avail ring at
/// guest address 0 (aligned, in memory), but virtio-queue 0.18 treats `avail_ring == 0` as "not
/// ready" (`QueueOwnedT::iter` returns `QueueNotReady`), so `pop_descriptor_chain` never yields
/// anything, while `enable_notification` compares the avail `idx` read at address 2 with
/// `next_avail` and keeps answering "more buffers". With `idx` within the queue size the new
/// `check_avail` passes, and `process_tx` spins forever; a reset then hangs the VMM.
#[test]
fn avail_ring_at_address_zero_does_not_make_process_tx_spin() {
    let (mut path, mut backend) = path_with_avail_ring_at_zero(true);
    assert!(
        returns_in_time(move || {
            path.process_tx(&mut backend);
        }),
        "process_tx did not return"
    );
}

/// The same on the RX queue (`refill_stash` pops nothing, the plan is empty, `process_rx`
/// loops).
#[test]
fn avail_ring_at_address_zero_does_not_make_process_rx_spin() {
    let (mut path, mut backend) = path_with_avail_ring_at_zero(false);
    backend.handle().inject(&[0u8; 60]);
    assert!(
        returns_in_time(move || {
            let _ = path.process_rx(&mut backend);
        }),
        "process_rx did not return"
    );
}
