//! The net device's data path: moves frames between the virtqueues and a [`Backend`].
//!
//! This module knows no threads and no events: [`DataPath::process_tx`] and
//! [`DataPath::process_rx`] do all the work available now and return, so they are tested with
//! guest memory alone. The worker (`worker.rs`) decides when to call them.
//!
//! Guest memory is untrusted. Every descriptor is checked against guest memory before any
//! access; a chain with a loop, a dangling `next`, a descriptor of the wrong direction, a
//! zero-length buffer or a frame above the negotiated maximum is returned to the driver as used
//! with length 0, counted in [`NetMetrics`] and logged at a limited rate. Frames move through
//! `VolatileSlice`s straight between guest memory and the backend: no copy in the device.

use std::collections::VecDeque;
use std::num::Wrapping;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::net::{Backend, GuestSlice, RxFrame, TxFrame, VNET_HDR_LEN};
use crate::ratelimit::RateLimit;
use crate::virtio::{GuestMemory, Interrupt};
use crate::warn_limited;

/// Offset of `num_buffers` in `virtio_net_hdr_v1` (virtio 1.2, section 5.1.6).
const NUM_BUFFERS_OFFSET: usize = 10;

/// How a TX pass left the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxEnd {
    /// Drained with kicks enabled: the driver kicks for its next frame. Also the end of a pass
    /// on a queue that is not ready or that the driver broke.
    Idle,
    /// Busy: the pass sent frames and left kicks disabled, so the driver queues frames without
    /// kicking; the caller must run another pass soon.
    Holding,
}

/// Counters of the net device, shared with whoever wants to read them.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Bytes delivered to the guest, virtio-net headers excluded.
    pub rx_bytes: AtomicU64,
    /// Frames the guest sent that the backend took.
    pub tx_frames: AtomicU64,
    /// Bytes the guest sent that the backend took, virtio-net headers excluded.
    pub tx_bytes: AtomicU64,
    /// Guest frames dropped because the backend refused them (full queue, link down).
    pub tx_dropped: AtomicU64,
    /// Descriptor chains refused as malformed (both queues).
    pub bad_chains: AtomicU64,
    /// TX frames above the negotiated maximum size.
    pub tx_oversized: AtomicU64,
    /// Times frames were pending but the guest had posted no (or too few) RX buffers.
    pub rx_no_buffers: AtomicU64,
    /// Backend receive errors.
    pub rx_errors: AtomicU64,
    /// Backend send errors.
    pub tx_errors: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
    /// Times the worker woke up for a TX queue notification (kicks that arrive while the worker
    /// is busy merge into one).
    pub tx_kicks: AtomicU64,
    /// Times the worker woke up for an RX queue notification (new RX buffers).
    pub rx_kicks: AtomicU64,
    /// Batches of frames handed to the backend: `tx_frames / tx_batches` is the mean batch.
    pub tx_batches: AtomicU64,
    /// Times the driver broke a queue (an avail index more than the queue size ahead); the
    /// queue then stops until the driver resets the device.
    pub broken_queues: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What the data path needs to know from feature negotiation and the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathConfig {
    /// The backend's frames carry the virtio-net header.
    pub backend_vnet_hdr: bool,
    /// `VIRTIO_NET_F_MRG_RXBUF` negotiated: a frame may span several RX chains.
    pub mrg_rxbuf: bool,
    /// Room to reserve for one received frame, virtio-net header included.
    pub rx_room: usize,
    /// The largest TX chain accepted, virtio-net header included.
    pub tx_max: usize,
    /// Frames per backend receive call.
    pub rx_batch: usize,
    /// Frames per backend send call.
    pub tx_batch: usize,
}

/// Why a descriptor chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// A device-writable descriptor in a TX chain or a device-readable one in an RX chain.
    WrongDirection,
    /// A zero-length descriptor.
    ZeroLength,
    /// A descriptor that points outside guest memory.
    OutsideMemory,
    /// A loop, a chain longer than the queue, a `next` outside the table, or a bad indirect
    /// table: the chain did not end properly.
    Malformed,
    /// A TX frame no longer than the virtio-net header, or an RX chain too small for it.
    BadLength,
    /// A TX frame above the negotiated maximum size.
    Oversized,
}

/// The descriptors of one chain: inline for the usual one or two, on the heap beyond, so that
/// holding a chain costs no allocation on the hot path.
#[derive(Debug)]
enum Descs {
    Inline(usize, [(GuestAddress, u32); 2]),
    Heap(Vec<(GuestAddress, u32)>),
}

impl Descs {
    fn from_slice(d: &[(GuestAddress, u32)]) -> Self {
        if d.len() <= 2 {
            let mut a = [(GuestAddress(0), 0); 2];
            a[..d.len()].copy_from_slice(d);
            Self::Inline(d.len(), a)
        } else {
            Self::Heap(d.to_vec())
        }
    }

    fn as_slice(&self) -> &[(GuestAddress, u32)] {
        match self {
            Self::Inline(n, a) => &a[..*n],
            Self::Heap(v) => v,
        }
    }
}

/// One RX chain held by the device: popped from the avail ring, not yet used.
#[derive(Debug)]
struct RxChain {
    head: u16,
    descs: Descs,
    cap: usize,
}

/// Walks a chain, checks each descriptor, and appends `(addr, len)` of each to `out`.
/// Returns the chain's total length.
fn collect_chain(
    chain: DescriptorChain<&GuestMemory>,
    writable: bool,
    mem: &GuestMemory,
    out: &mut Vec<(GuestAddress, u32)>,
) -> Result<usize, ChainError> {
    let start = out.len();
    let mut total = 0usize;
    let mut ended = false;
    let result = (|| {
        for d in chain {
            if d.is_write_only() != writable {
                return Err(ChainError::WrongDirection);
            }
            if d.len() == 0 {
                return Err(ChainError::ZeroLength);
            }
            if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
                return Err(ChainError::OutsideMemory);
            }
            total += d.len() as usize;
            out.push((d.addr(), d.len()));
            ended = !d.has_next();
        }
        // The iterator stops early, with the last descriptor still saying "next", on a loop, a
        // chain longer than the queue, a next index outside the table or a bad indirect table.
        if ended {
            Ok(total)
        } else {
            Err(ChainError::Malformed)
        }
    })();
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Appends the slices of guest memory that `descs` cover to `out`, skipping the first `skip`
/// bytes. Zero-length pieces are left out (vmnet rejects zero-length iovecs).
fn push_slices<'m>(
    mem: &'m GuestMemory,
    descs: &[(GuestAddress, u32)],
    mut skip: usize,
    out: &mut Vec<GuestSlice<'m>>,
) -> Result<(), ChainError> {
    for &(addr, len) in descs {
        let len = len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let addr = addr
            .0
            .checked_add(skip as u64)
            .ok_or(ChainError::OutsideMemory)?;
        for s in GuestMemoryBackend::get_slices(mem, GuestAddress(addr), len - skip) {
            let s = s.map_err(|_| ChainError::OutsideMemory)?;
            if !s.is_empty() {
                out.push(s);
            }
        }
        skip = 0;
    }
    Ok(())
}

/// Writes `bytes` at `offset` into the memory that `descs` cover.
fn write_across(
    mem: &GuestMemory,
    descs: &[(GuestAddress, u32)],
    mut offset: usize,
    bytes: &[u8],
) -> Result<(), ChainError> {
    let mut rest = bytes;
    for &(addr, len) in descs {
        if rest.is_empty() {
            break;
        }
        let len = len as usize;
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = rest.len().min(len - offset);
        let at = addr
            .0
            .checked_add(offset as u64)
            .ok_or(ChainError::OutsideMemory)?;
        mem.write_slice(&rest[..n], GuestAddress(at))
            .map_err(|_| ChainError::OutsideMemory)?;
        rest = &rest[n..];
        offset = 0;
    }
    if rest.is_empty() {
        Ok(())
    } else {
        Err(ChainError::BadLength)
    }
}

/// The virtqueues of one net device and the state that moves frames through them.
#[derive(Debug)]
pub struct DataPath {
    mem: Arc<GuestMemory>,
    rx: Queue,
    tx: Queue,
    interrupt: Interrupt,
    cfg: PathConfig,
    pub(crate) metrics: Arc<NetMetrics>,
    /// RX chains popped from the avail ring and not used yet, in ring order.
    stash: VecDeque<RxChain>,
    descs: Vec<(GuestAddress, u32)>,
    log: RateLimit,
    /// A queue the driver broke: nothing more is processed until reset.
    broken: bool,
    /// The used index of each queue (RX, TX) when the device last decided whether to
    /// interrupt: the elements since then are what `used_event` is checked against.
    checked_used: [Wrapping<u16>; 2],
    /// RX used elements of the current batch, published together (see `publish_rx_used`).
    rx_used: Vec<(u16, u32)>,
}

impl DataPath {
    /// Builds a data path over configured queues.
    pub fn new(
        mem: GuestMemory,
        rx: Queue,
        tx: Queue,
        interrupt: Interrupt,
        cfg: PathConfig,
        metrics: Arc<NetMetrics>,
    ) -> Self {
        let checked_used = [Wrapping(rx.next_used()), Wrapping(tx.next_used())];
        Self {
            mem: Arc::new(mem),
            rx,
            tx,
            interrupt,
            cfg,
            metrics,
            stash: VecDeque::new(),
            descs: Vec::new(),
            log: RateLimit::guest_errors(),
            broken: false,
            checked_used,
            rx_used: Vec::new(),
        }
    }

    /// The data path's counters.
    pub fn metrics(&self) -> &Arc<NetMetrics> {
        &self.metrics
    }

    fn refuse_chain(&self, queue: &str, head: u16, err: ChainError) {
        add(&self.metrics.bad_chains, 1);
        if err == ChainError::Oversized {
            add(&self.metrics.tx_oversized, 1);
        }
        warn_limited!(
            self.log,
            queue,
            head,
            ?err,
            "virtio-net: dropped a malformed descriptor chain"
        );
    }

    fn queue_error(&self, queue: &str, err: virtio_queue::Error) {
        warn_limited!(self.log, queue, error = %err, "virtio-net: cannot access the queue rings");
    }

    /// Checks the avail index of `which` against the device's position: a driver can never be
    /// more than the queue size ahead. If it is, the ring is unusable (virtio-queue refuses to
    /// pop from it while its notification check keeps reporting work): the device stops
    /// processing and asks for a reset instead of spinning.
    fn check_avail(&mut self, which: Which, mem: &GuestMemory) -> bool {
        if self.broken {
            return false;
        }
        let q = match which {
            Which::Rx => &self.rx,
            Which::Tx => &self.tx,
        };
        let ahead = q
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map(|idx| idx.0.wrapping_sub(q.next_avail()));
        match ahead {
            Ok(n) if n <= q.size() => true,
            other => {
                self.mark_broken(
                    which,
                    &format!(
                        "the avail index is {:?} entries ahead of the device",
                        other.ok()
                    ),
                );
                false
            }
        }
    }

    /// Stops processing after the driver broke a queue, and asks for a reset.
    fn mark_broken(&mut self, which: Which, why: &str) {
        self.broken = true;
        add(&self.metrics.broken_queues, 1);
        tracing::warn!(queue = ?which, "virtio-net: {why}; the device needs a reset");
        if let Err(e) = self.interrupt.set_needs_reset() {
            warn_limited!(self.log, error = %e, "virtio-net: cannot raise the interrupt");
        }
    }

    /// Raises a configuration change interrupt (the link state changed).
    pub(crate) fn signal_config(&self) {
        add(&self.metrics.interrupts, 1);
        if let Err(e) = self.interrupt.signal_config() {
            warn_limited!(self.log, error = %e, "virtio-net: cannot raise the interrupt");
        }
    }

    fn signal(&self) {
        add(&self.metrics.interrupts, 1);
        if let Err(e) = self.interrupt.signal_used() {
            warn_limited!(self.log, error = %e, "virtio-net: cannot raise the interrupt");
        }
    }

    /// Sends every frame the guest has queued; returns when the TX queue is empty, with kicks
    /// enabled.
    pub fn process_tx(&mut self, backend: &mut dyn Backend) {
        self.tx_pass(backend, None);
    }

    /// Sends every frame the guest has queued, as [`process_tx`](Self::process_tx) does,
    /// except that a pass which found at least `hold_at` frames leaves the driver's kicks
    /// disabled and returns [`TxEnd::Holding`]: the queue is busy, and the caller runs the next
    /// pass after a short while instead of having the driver kick (an exit) for every frame.
    /// A pass that finds fewer enables kicks and returns [`TxEnd::Idle`].
    pub fn process_tx_or_hold(&mut self, backend: &mut dyn Backend, hold_at: usize) -> TxEnd {
        self.tx_pass(backend, Some(hold_at.max(1)))
    }

    fn tx_pass(&mut self, backend: &mut dyn Backend, hold_at: Option<usize>) -> TxEnd {
        let mem_arc = Arc::clone(&self.mem);
        let mem: &GuestMemory = &mem_arc;
        let hdr_skip = if self.cfg.backend_vnet_hdr {
            0
        } else {
            VNET_HDR_LEN
        };
        let batch = self.cfg.tx_batch.max(1);
        let mut used_any = false;
        let mut heads: Vec<(u16, usize, usize)> = Vec::with_capacity(batch);
        // Set when the driver announced buffers (enable_notification said so) and nothing has
        // been popped since.
        let mut announced_unpopped = false;
        let mut end = TxEnd::Idle;
        loop {
            if !self.check_avail(Which::Tx, mem) {
                return TxEnd::Idle;
            }
            let mut popped = 0usize;
            if let Err(e) = self.tx.disable_notification(mem) {
                self.queue_error("tx", e);
                return TxEnd::Idle;
            }
            loop {
                heads.clear();
                self.descs.clear();
                while heads.len() < batch {
                    let Some(chain) = self.tx.pop_descriptor_chain(mem) else {
                        break;
                    };
                    popped += 1;
                    let head = chain.head_index();
                    let start = self.descs.len();
                    let res = collect_chain(chain, false, mem, &mut self.descs).and_then(|len| {
                        if len > self.cfg.tx_max {
                            Err(ChainError::Oversized)
                        } else if len <= VNET_HDR_LEN {
                            Err(ChainError::BadLength)
                        } else {
                            Ok(len)
                        }
                    });
                    match res {
                        Ok(_) => heads.push((head, start, self.descs.len())),
                        Err(err) => {
                            self.descs.truncate(start);
                            self.refuse_chain("tx", head, err);
                            if let Err(e) = self.tx.add_used(mem, head, 0) {
                                self.queue_error("tx", e);
                            }
                            used_any = true;
                        }
                    }
                }
                if heads.is_empty() {
                    break;
                }
                let mut slices = Vec::with_capacity(self.descs.len() + heads.len());
                let mut ranges = Vec::with_capacity(heads.len());
                for &(_, start, end) in &heads {
                    let s = slices.len();
                    // The chains were checked against memory above; a failure here cannot
                    // happen short of memory being unplugged, and then sends a shorter frame.
                    let _ = push_slices(mem, &self.descs[start..end], hdr_skip, &mut slices);
                    ranges.push(s..slices.len());
                }
                let frames: Vec<TxFrame<'_, '_>> = ranges
                    .iter()
                    .map(|r| TxFrame {
                        bufs: &slices[r.clone()],
                    })
                    .collect();
                add(&self.metrics.tx_batches, 1);
                let sent = match backend.send(&frames) {
                    Ok(n) => n.min(frames.len()),
                    Err(e) => {
                        add(&self.metrics.tx_errors, 1);
                        warn_limited!(self.log, error = %e, "virtio-net: backend send failed");
                        0
                    }
                };
                let bytes: usize = frames[..sent].iter().map(|f| f.len()).sum();
                add(&self.metrics.tx_frames, sent as u64);
                add(
                    &self.metrics.tx_bytes,
                    (bytes - sent * (VNET_HDR_LEN - hdr_skip)) as u64,
                );
                add(&self.metrics.tx_dropped, (frames.len() - sent) as u64);
                drop(frames);
                for &(head, _, _) in &heads {
                    if let Err(e) = self.tx.add_used(mem, head, 0) {
                        self.queue_error("tx", e);
                    }
                }
                // Completions go out per batch: the guest frees its buffers (and its TCP stack
                // lets more data go) while the next batch is sent.
                self.notify_used(Which::Tx, mem);
                used_any = false;
            }
            if popped > 0 {
                announced_unpopped = false;
            }
            if hold_at.is_some_and(|n| popped >= n) {
                end = TxEnd::Holding;
                break;
            }
            match self.tx.enable_notification(mem) {
                // Announced twice with nothing popped in between (once is the driver adding
                // buffers right after our last pop): the ring is unusable (virtio-queue refuses
                // it), and looping would spin.
                Ok(true) if announced_unpopped => {
                    self.mark_broken(
                        Which::Tx,
                        "the driver announces buffers that cannot be read",
                    );
                    break;
                }
                Ok(true) => {
                    announced_unpopped = true;
                    continue;
                }
                Ok(false) => break,
                Err(e) => {
                    self.queue_error("tx", e);
                    break;
                }
            }
        }
        if used_any {
            self.notify_used(Which::Tx, mem);
        }
        end
    }

    /// Raises the interrupt if the driver asked for one by now (`VIRTIO_RING_F_EVENT_IDX`, or
    /// the `NO_INTERRUPT` flag without it).
    ///
    /// The decision is virtio-queue's `needs_notification` rule (Linux's `vring_need_event`),
    /// taken over the used elements since the last decision by index rather than by counting
    /// `add_used` calls, because RX publishes its elements without `add_used`.
    fn notify_used(&mut self, which: Which, mem: &GuestMemory) {
        let (q, slot) = match which {
            Which::Rx => (&self.rx, 0),
            Which::Tx => (&self.tx, 1),
        };
        let used_idx = Wrapping(q.next_used());
        let old = std::mem::replace(&mut self.checked_used[slot], used_idx);
        if used_idx == old {
            return;
        }
        let needed = if q.event_idx_enabled() {
            // The used ring's writes before the read of used_event (virtio 1.2, 2.7.10).
            fence(Ordering::SeqCst);
            let at = GuestAddress(q.avail_ring()).checked_add(4 + 2 * u64::from(q.size()));
            match at.map(|a| mem.read_obj::<u16>(a)) {
                Some(Ok(event)) => {
                    let event = Wrapping(u16::from_le(event));
                    used_idx - event - Wrapping(1) < used_idx - old
                }
                // Unreadable (checked at activation, so not expected): interrupt anyway.
                _ => true,
            }
        } else {
            true
        };
        if needed {
            self.signal();
        }
    }

    /// Publishes the RX used elements collected in `rx_used`: all of them are written before
    /// the used index moves, once. A frame spread over several buffers (`num_buffers` > 1)
    /// must never show partly: Linux's driver, finding the first buffer without the rest,
    /// drops the frame and then reads the late buffers as frames of their own.
    /// (virtio-queue's `add_used` moves the index at every element.)
    fn publish_rx_used(&mut self, mem: &GuestMemory) {
        if self.rx_used.is_empty() {
            return;
        }
        let size = self.rx.size();
        let ring = GuestAddress(self.rx.used_ring());
        let mut next = Wrapping(self.rx.next_used());
        let mut failed = false;
        for &(head, len) in &self.rx_used {
            // Slot `next % size` of the ring: 4 bytes of flags and index, then 8 per element.
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            let at = ring.checked_add(4 + 8 * u64::from(next.0 % size.max(1)));
            if at.is_none_or(|a| mem.write_slice(&elem, a).is_err()) {
                failed = true;
                break;
            }
            next += Wrapping(1);
        }
        self.rx_used.clear();
        let idx_at = ring.checked_add(2);
        let stored =
            idx_at.is_some_and(|a| mem.store(u16::to_le(next.0), a, Ordering::Release).is_ok());
        self.rx.set_next_used(next.0);
        if failed || !stored {
            // The ring was checked against memory at activation: only a memory map changed
            // under the device gets here.
            self.mark_broken(Which::Rx, "the used ring is not writable");
        }
    }

    /// Pops every RX chain the guest has posted into the stash; returns how many were popped
    /// and whether malformed ones were handed back as used.
    fn refill_stash(&mut self, mem: &GuestMemory) -> (usize, bool) {
        let mut refused = false;
        let mut popped = 0usize;
        // With mergeable buffers any chain may start a frame, so each must hold the header
        // (virtio 1.2, 5.1.6.3.1). Without, each chain takes a whole frame: the spec asks for
        // room for the largest one (1526 or 65562 bytes); the 4 bytes of VLAN slack in
        // `rx_room` are not required. A smaller chain would have frames cut short (a TAP
        // device even drops them), and it would be retried for every frame after.
        let min_room = if self.cfg.mrg_rxbuf {
            VNET_HDR_LEN + usize::from(!self.cfg.backend_vnet_hdr)
        } else {
            self.cfg.rx_room.saturating_sub(4).max(VNET_HDR_LEN + 1)
        };
        while let Some(chain) = self.rx.pop_descriptor_chain(mem) {
            popped += 1;
            let head = chain.head_index();
            self.descs.clear();
            let res = collect_chain(chain, true, mem, &mut self.descs).and_then(|cap| {
                // The first chain of a frame must at least hold the header; with mergeable
                // buffers any chain may be first.
                if cap < min_room {
                    Err(ChainError::BadLength)
                } else {
                    Ok(cap)
                }
            });
            match res {
                Ok(cap) => self.stash.push_back(RxChain {
                    head,
                    descs: Descs::from_slice(&self.descs),
                    cap,
                }),
                Err(err) => {
                    self.refuse_chain("rx", head, err);
                    if let Err(e) = self.rx.add_used(mem, head, 0) {
                        self.queue_error("rx", e);
                    }
                    refused = true;
                }
            }
        }
        (popped, refused)
    }

    /// Groups stashed chains into frames: `(first chain, chain count)` per frame.
    fn plan_frames(&self, max_frames: usize) -> Vec<(usize, usize)> {
        let mut plan = Vec::new();
        let mut i = 0;
        while plan.len() < max_frames && i < self.stash.len() {
            if !self.cfg.mrg_rxbuf {
                plan.push((i, 1));
                i += 1;
                continue;
            }
            let start = i;
            let mut cap = 0;
            while i < self.stash.len() && cap < self.cfg.rx_room {
                cap += self.stash[i].cap;
                i += 1;
            }
            if cap < self.cfg.rx_room {
                break;
            }
            plan.push((start, i - start));
        }
        plan
    }

    /// Delivers pending backend frames into the guest's RX buffers until the backend has no
    /// more, the guest has no room left, or the backend fails.
    pub fn process_rx(&mut self, backend: &mut dyn Backend) -> RxEnd {
        let mem_arc = Arc::clone(&self.mem);
        let mem: &GuestMemory = &mem_arc;
        let hdr_skip = if self.cfg.backend_vnet_hdr {
            0
        } else {
            VNET_HDR_LEN
        };
        let batch = self.cfg.rx_batch.max(1);
        let mut used_any = false;
        let mut end = RxEnd::Drained;
        // As in process_tx.
        let mut announced_unpopped = false;
        loop {
            if !self.check_avail(Which::Rx, mem) {
                return RxEnd::NoBuffers;
            }
            if let Err(e) = self.rx.disable_notification(mem) {
                self.queue_error("rx", e);
                return RxEnd::NoBuffers;
            }
            let (popped, refused) = self.refill_stash(mem);
            used_any |= refused;
            if popped > 0 {
                announced_unpopped = false;
            }
            let plan = self.plan_frames(batch);
            if plan.is_empty() {
                // No room: ask the driver to kick when it posts buffers, and look once more in
                // case it did so meanwhile. Frames stay in the backend until then.
                match self.rx.enable_notification(mem) {
                    // Announced but unreadable buffers (see process_tx): stop, don't spin.
                    Ok(true) if announced_unpopped => {
                        self.mark_broken(
                            Which::Rx,
                            "the driver announces buffers that cannot be read",
                        );
                        end = RxEnd::NoBuffers;
                        break;
                    }
                    Ok(true) => {
                        announced_unpopped = true;
                        continue;
                    }
                    Ok(false) => {
                        add(&self.metrics.rx_no_buffers, 1);
                        end = RxEnd::NoBuffers;
                        break;
                    }
                    Err(e) => {
                        self.queue_error("rx", e);
                        end = RxEnd::NoBuffers;
                        break;
                    }
                }
            }
            let mut slices: Vec<GuestSlice<'_>> = Vec::with_capacity(plan.len() * 2);
            let mut ranges = Vec::with_capacity(plan.len());
            for &(first, count) in &plan {
                let s = slices.len();
                for (k, chain) in self.stash.range(first..first + count).enumerate() {
                    let skip = if k == 0 { hdr_skip } else { 0 };
                    let _ = push_slices(mem, chain.descs.as_slice(), skip, &mut slices);
                }
                ranges.push(s..slices.len());
            }
            let mut frames: Vec<RxFrame<'_, '_>> = ranges
                .iter()
                .map(|r| RxFrame {
                    bufs: &slices[r.clone()],
                    len: 0,
                })
                .collect();
            let got = match backend.recv(&mut frames) {
                Ok(n) => n.min(frames.len()),
                Err(e) => {
                    add(&self.metrics.rx_errors, 1);
                    warn_limited!(self.log, error = %e, "virtio-net: backend receive failed");
                    end = RxEnd::BackendError;
                    0
                }
            };
            let lens: Vec<usize> = frames[..got].iter().map(|f| f.len + hdr_skip).collect();
            drop(frames);
            drop(slices);

            // Hand out used chains; keep the rest, in order, for the next frames.
            let mut stash = std::mem::take(&mut self.stash);
            let mut keep: VecDeque<RxChain> = VecDeque::with_capacity(stash.len());
            let mut delivered = 0;
            for (&(_, count), &len) in plan.iter().zip(&lens) {
                if len <= VNET_HDR_LEN {
                    keep.extend(stash.drain(..count));
                    continue;
                }
                // How many chains the frame fills, and num_buffers in its header.
                let mut used = 0usize;
                let mut covered = 0usize;
                for c in stash.range(..count) {
                    if covered >= len {
                        break;
                    }
                    covered += c.cap;
                    used += 1;
                }
                let first = stash.front().map(|c| (c.head, c.descs.as_slice()));
                if let Some((head, descs)) = first {
                    let num_buffers = (used as u16).to_le_bytes();
                    let written = if hdr_skip == VNET_HDR_LEN {
                        let mut hdr = [0u8; VNET_HDR_LEN];
                        hdr[NUM_BUFFERS_OFFSET..].copy_from_slice(&num_buffers);
                        write_across(mem, descs, 0, &hdr)
                    } else {
                        write_across(mem, descs, NUM_BUFFERS_OFFSET, &num_buffers)
                    };
                    if let Err(err) = written {
                        self.refuse_chain("rx", head, err);
                    }
                }
                let mut remaining = len;
                for (k, c) in stash.drain(..count).enumerate() {
                    if k < used {
                        let n = remaining.min(c.cap);
                        remaining -= n;
                        self.rx_used.push((c.head, n as u32));
                    } else {
                        keep.push_back(c);
                    }
                }
                delivered += 1;
                add(&self.metrics.rx_bytes, (len - VNET_HDR_LEN) as u64);
            }
            add(&self.metrics.rx_frames, delivered);
            self.publish_rx_used(mem);
            // Unfilled frames' chains, then whatever was not planned, stay stashed in order.
            keep.extend(stash.drain(..));
            self.stash = keep;
            if delivered > 0 || used_any {
                // Per batch, so the guest starts on these frames while the next are read.
                self.notify_used(Which::Rx, mem);
                used_any = false;
            }
            if got < plan.len() {
                break;
            }
        }
        if used_any {
            self.notify_used(Which::Rx, mem);
        }
        end
    }
}

/// The two queues of the device.
#[derive(Clone, Copy, Debug)]
enum Which {
    Rx,
    Tx,
}

/// How [`DataPath::process_rx`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxEnd {
    /// The backend had no more frames.
    Drained,
    /// The guest has no room: the driver's next RX kick resumes.
    NoBuffers,
    /// The backend failed: frames may still be waiting and no readiness edge will announce
    /// them again, so the caller retries later.
    BackendError,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz_regressions;

#[cfg(test)]
mod tx_hold_tests;
