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
//!
//! The parts:
//!
//! - a *pass* (`tx_rounds`, `rx_rounds`) is rounds of work with the driver's kicks off, ended
//!   by `rearm`, which turns kicks back on and looks once more for buffers added meanwhile;
//! - TX: `fill_tx_batch` pops and checks chains into a [`TxBatch`],
//!   `send_tx_batch` hands it to the backend and returns its chains, and `publish_used_batch`
//!   makes them (and the refused ones) visible to the driver in one go;
//! - RX: `refill_stash` pops and checks chains into the [`RxBuffers`], which plan
//!   frames into them, receive from the backend and complete the frames; `publish_used_batch`
//!   then makes them visible to the driver in one go;
//! - `notify_used` decides on the interrupt for both queues;
//! - `chain.rs` walks and checks descriptor chains and turns them into guest-memory slices;
//! - `flat.rs` is guest memory as a pass sees it: the region looked up once, not per access.
//!
//! Every vector a batch needs is kept from batch to batch (see `crate::scratch`): once the
//! largest batch has been seen, moving frames allocates nothing (`devices/tests/no_alloc.rs`).

use std::mem::{offset_of, size_of};
use std::num::Wrapping;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use virtio_bindings::virtio_ring::{vring_avail, vring_used, vring_used_elem};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::net::{Backend, VNET_HDR_LEN};
use crate::ratelimit::RateLimit;
use crate::virtio::{GuestMemory, Interrupt};
use crate::warn_limited;

mod chain;
mod flat;
mod rx;
mod tx;

use chain::collect_chain;
use flat::FlatMem;
use rx::RxBuffers;
use tx::TxBatch;

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

/// The virtqueues of one net device and the state that moves frames through them.
#[derive(Debug)]
pub struct DataPath {
    mem: Arc<GuestMemory>,
    rx: Queue,
    tx: Queue,
    interrupt: Interrupt,
    cfg: PathConfig,
    pub(crate) metrics: Arc<NetMetrics>,
    /// The RX chains the device holds and the scratch of a receive.
    rx_bufs: RxBuffers,
    /// The scratch of a TX batch.
    tx_batch: TxBatch,
    /// The descriptors of the RX chain being checked.
    descs: Vec<(GuestAddress, u32)>,
    /// Chains refused while popping, logged and counted once the queue's iterator is done
    /// (it borrows the queue, and logging borrows the whole data path).
    refused: Vec<(u16, ChainError)>,
    log: RateLimit,
    /// A queue the driver broke: nothing more is processed until reset.
    broken: bool,
    /// The used index of each queue (RX, TX) when the device last decided whether to
    /// interrupt: the elements since then are what `used_event` is checked against.
    checked_used: [Wrapping<u16>; 2],
}

/// What re-enabling the driver's kicks at the end of a round found.
enum Rearmed {
    /// Nothing new: kicks are on and the pass ends.
    Idle,
    /// The driver added buffers meanwhile: run another round.
    More,
    /// The queue cannot be used (broken, or its rings unreadable): the pass ends.
    Stopped,
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
            rx_bufs: RxBuffers::default(),
            tx_batch: TxBatch::default(),
            descs: Vec::new(),
            refused: Vec::new(),
            log: RateLimit::guest_errors(),
            broken: false,
            checked_used,
        }
    }

    /// The data path's counters.
    pub fn metrics(&self) -> &Arc<NetMetrics> {
        &self.metrics
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

    /// Delivers pending backend frames into the guest's RX buffers until the backend has no
    /// more, the guest has no room left, or the backend fails. The guest hears of each batch
    /// as it is published (its interrupt, as its event index asks).
    pub fn process_rx(&mut self, backend: &mut dyn Backend) -> RxEnd {
        self.rx_pass(backend, true).end
    }

    /// [`process_rx`](Self::process_rx) that leaves the guest's interrupt for the frames it
    /// delivers to the caller, who decides when to call [`notify_rx`](Self::notify_rx): RX
    /// interrupt holding. A pass that runs out of guest buffers
    /// ([`RxEnd::NoBuffers`]) still interrupts, since the driver posts more only once it has
    /// taken the used ones.
    pub fn process_rx_unnotified(&mut self, backend: &mut dyn Backend) -> RxPass {
        self.rx_pass(backend, false)
    }

    /// Interrupts the guest for the RX buffers used since the last interrupt decision, if its
    /// event index asks for one (or always, without `VIRTIO_RING_F_EVENT_IDX`).
    pub fn notify_rx(&mut self) {
        let mem_arc = Arc::clone(&self.mem);
        let mem = FlatMem::new(&mem_arc);
        self.notify_used(Which::Rx, &mem);
    }

    fn rx_pass(&mut self, backend: &mut dyn Backend, notify: bool) -> RxPass {
        let mem_arc = Arc::clone(&self.mem);
        let mem = FlatMem::new(&mem_arc);
        let mut bufs = std::mem::take(&mut self.rx_bufs);
        let pass = self.rx_rounds(&mem, backend, &mut bufs, notify);
        self.rx_bufs = bufs;
        pass
    }

    fn tx_pass(&mut self, backend: &mut dyn Backend, hold_at: Option<usize>) -> TxEnd {
        let mem_arc = Arc::clone(&self.mem);
        let mem = FlatMem::new(&mem_arc);
        let mut batch = std::mem::take(&mut self.tx_batch);
        let end = self.tx_rounds(&mem, backend, hold_at, &mut batch);
        self.tx_batch = batch;
        end
    }

    /// A TX pass: rounds of batches until a round finds the queue empty once kicks are back
    /// on, or, with `hold_at`, until a round finds that many frames.
    fn tx_rounds(
        &mut self,
        mem: &FlatMem<'_>,
        backend: &mut dyn Backend,
        hold_at: Option<usize>,
        batch: &mut TxBatch,
    ) -> TxEnd {
        let mut announced_unpopped = false;
        loop {
            if !self.start_round(Which::Tx, mem) {
                return TxEnd::Idle;
            }
            let mut popped = 0;
            loop {
                popped += self.fill_tx_batch(mem, batch);
                if !batch.is_empty() {
                    self.send_tx_batch(mem, batch, backend);
                }
                // The batch's chains, sent or refused, go back in one publication.
                self.publish_used_batch(Which::Tx, mem, &mut batch.used);
                if batch.is_empty() {
                    break;
                }
                // Completions go out per batch: the guest frees its buffers (and its TCP stack
                // lets more data go) while the next batch is sent.
                self.notify_used(Which::Tx, mem);
            }
            if popped > 0 {
                announced_unpopped = false;
            }
            let end = if hold_at.is_some_and(|n| popped >= n) {
                TxEnd::Holding
            } else {
                match self.rearm(Which::Tx, mem, &mut announced_unpopped) {
                    Rearmed::More => continue,
                    Rearmed::Idle | Rearmed::Stopped => TxEnd::Idle,
                }
            };
            // Refused chains returned since the last batch.
            self.notify_used(Which::Tx, mem);
            return end;
        }
    }

    /// An RX pass: rounds of one backend receive each, until the backend has no more frames,
    /// the guest no more room, or the backend fails.
    fn rx_rounds(
        &mut self,
        mem: &FlatMem<'_>,
        backend: &mut dyn Backend,
        bufs: &mut RxBuffers,
        notify: bool,
    ) -> RxPass {
        let hdr_skip = self.hdr_skip();
        let mut announced_unpopped = false;
        let mut delivered = 0;
        loop {
            if !self.start_round(Which::Rx, mem) {
                return RxPass {
                    end: RxEnd::NoBuffers,
                    frames: delivered,
                };
            }
            if self.refill_stash(mem, bufs) > 0 {
                announced_unpopped = false;
            }
            let planned = bufs.plan(self.cfg.rx_batch.max(1), &self.cfg);
            if planned == 0 {
                // No room: ask the driver to kick when it posts buffers, and look once more in
                // case it did so meanwhile. Frames stay in the backend until then.
                match self.rearm(Which::Rx, mem, &mut announced_unpopped) {
                    Rearmed::More => continue,
                    Rearmed::Idle => add(&self.metrics.rx_no_buffers, 1),
                    Rearmed::Stopped => {}
                }
                // Refused chains returned by this pass, and with `notify` off, the frames it
                // delivered: the driver posts more buffers only once it has taken those.
                self.notify_used(Which::Rx, mem);
                return RxPass {
                    end: RxEnd::NoBuffers,
                    frames: delivered,
                };
            }
            let (got, end) = match bufs.receive(mem, hdr_skip, backend) {
                Ok(n) => (n, RxEnd::Drained),
                Err(e) => {
                    add(&self.metrics.rx_errors, 1);
                    warn_limited!(self.log, error = %e, "virtio-net: backend receive failed");
                    (0, RxEnd::BackendError)
                }
            };
            let (frames, bytes) = bufs.complete(mem, hdr_skip, |head, err| {
                self.refuse_chain("rx", head, err)
            });
            add(&self.metrics.rx_bytes, bytes);
            add(&self.metrics.rx_frames, frames);
            delivered += frames;
            self.publish_used_batch(Which::Rx, mem, &mut bufs.used);
            if notify {
                // Per batch, so the guest starts on these frames while the next are read.
                self.notify_used(Which::Rx, mem);
            }
            if got < planned {
                return RxPass {
                    end,
                    frames: delivered,
                };
            }
        }
    }

    /// Bytes of the virtio-net header the device handles itself: all of it for a backend
    /// without headers, none for one that carries them.
    fn hdr_skip(&self) -> usize {
        if self.cfg.backend_vnet_hdr {
            0
        } else {
            VNET_HDR_LEN
        }
    }

    fn queue(&self, which: Which) -> &Queue {
        match which {
            Which::Rx => &self.rx,
            Which::Tx => &self.tx,
        }
    }

    fn queue_mut(&mut self, which: Which) -> &mut Queue {
        match which {
            Which::Rx => &mut self.rx,
            Which::Tx => &mut self.tx,
        }
    }

    /// Starts a round on `which`: the queue must be usable, and the driver's kicks go off
    /// while the device works through it. `false` ends the pass.
    fn start_round(&mut self, which: Which, mem: &FlatMem<'_>) -> bool {
        if !self.check_avail(which, mem) {
            return false;
        }
        match self.queue_mut(which).disable_notification(mem) {
            Ok(()) => true,
            Err(e) => {
                self.queue_error(which, e);
                false
            }
        }
    }

    /// Ends a round on `which` that left the queue empty: kicks go back on, and the avail ring
    /// is looked at once more for buffers added meanwhile. `announced_unpopped` is set while
    /// the driver announced buffers and none was popped since: announced a second time, they
    /// cannot be read (virtio-queue refuses the ring), and going on would spin, so the queue
    /// is marked broken.
    fn rearm(&mut self, which: Which, mem: &FlatMem<'_>, announced_unpopped: &mut bool) -> Rearmed {
        match self.queue_mut(which).enable_notification(mem) {
            Ok(true) if *announced_unpopped => {
                self.mark_broken(which, "the driver announces buffers that cannot be read");
                Rearmed::Stopped
            }
            Ok(true) => {
                *announced_unpopped = true;
                Rearmed::More
            }
            Ok(false) => Rearmed::Idle,
            Err(e) => {
                self.queue_error(which, e);
                Rearmed::Stopped
            }
        }
    }

    /// Pops up to a batch of TX chains into `batch`; malformed ones are counted and queued in
    /// `batch.used` with length 0. Returns how many chains were popped.
    ///
    /// The chains come from one `Queue::iter`, which reads the avail index once for the
    /// batch (`pop_descriptor_chain` reads it again for every chain); buffers the driver adds
    /// meanwhile are found by the next round.
    fn fill_tx_batch(&mut self, mem: &FlatMem<'_>, batch: &mut TxBatch) -> usize {
        batch.clear();
        let max = self.cfg.tx_batch.max(1);
        let mut popped = 0;
        // Not ready (a ring at address 0) or an unreadable avail index: nothing to pop, as
        // `pop_descriptor_chain` would answer; `check_avail` and `rearm` deal with the queue.
        if let Ok(mut chains) = self.tx.iter(mem) {
            while batch.len() < max {
                let Some(chain) = chains.next() else {
                    break;
                };
                popped += 1;
                let head = chain.head_index();
                if let Err(err) = batch.add(chain, mem, self.cfg.tx_max) {
                    self.refused.push((head, err));
                    batch.used.push((head, 0));
                }
            }
        }
        self.log_refused("tx");
        popped
    }

    /// Counts and logs the chains refused while popping.
    fn log_refused(&mut self, queue: &str) {
        let mut refused = std::mem::take(&mut self.refused);
        for &(head, err) in &refused {
            self.refuse_chain(queue, head, err);
        }
        refused.clear();
        self.refused = refused;
    }

    /// Sends a batch, counts what went and what was dropped, and returns its chains as used.
    fn send_tx_batch(&mut self, mem: &FlatMem<'_>, batch: &mut TxBatch, backend: &mut dyn Backend) {
        let hdr_skip = self.hdr_skip();
        add(&self.metrics.tx_batches, 1);
        let (sent, bytes) = batch.send(mem, hdr_skip, backend);
        let sent = sent.unwrap_or_else(|e| {
            add(&self.metrics.tx_errors, 1);
            warn_limited!(self.log, error = %e, "virtio-net: backend send failed");
            0
        });
        add(&self.metrics.tx_frames, sent as u64);
        add(
            &self.metrics.tx_bytes,
            (bytes - sent * (VNET_HDR_LEN - hdr_skip)) as u64,
        );
        add(&self.metrics.tx_dropped, (batch.len() - sent) as u64);
        batch.return_chains();
    }

    /// Pops every RX chain the guest has posted into `bufs`' stash (one `Queue::iter`, as in
    /// [`fill_tx_batch`](Self::fill_tx_batch)), handing malformed ones back as used; returns
    /// how many were popped.
    fn refill_stash(&mut self, mem: &FlatMem<'_>, bufs: &mut RxBuffers) -> usize {
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
        // `bufs.used` is empty here: the last round published its elements.
        if let Ok(chains) = self.rx.iter(mem) {
            for chain in chains {
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
                    Ok(cap) => bufs.push(head, &self.descs, cap),
                    Err(err) => {
                        self.refused.push((head, err));
                        bufs.used.push((head, 0));
                    }
                }
            }
        }
        self.log_refused("rx");
        self.publish_used_batch(Which::Rx, mem, &mut bufs.used);
        popped
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

    fn queue_error(&self, which: Which, err: virtio_queue::Error) {
        let queue = which.name();
        warn_limited!(self.log, queue, error = %err, "virtio-net: cannot access the queue rings");
    }

    /// Checks the avail index of `which` against the device's position: a driver can never be
    /// more than the queue size ahead. If it is, the ring is unusable (virtio-queue refuses to
    /// pop from it while its notification check keeps reporting work): the device stops
    /// processing and asks for a reset instead of spinning.
    fn check_avail(&mut self, which: Which, mem: &FlatMem<'_>) -> bool {
        if self.broken {
            return false;
        }
        let q = self.queue(which);
        let ahead = q
            .avail_idx(mem, Ordering::Acquire)
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

    /// Raises the interrupt if the driver asked for one by now (`VIRTIO_RING_F_EVENT_IDX`, or
    /// the `NO_INTERRUPT` flag without it). Does nothing when no element was used since the
    /// last decision.
    ///
    /// The decision is virtio-queue's `needs_notification` rule (Linux's `vring_need_event`),
    /// taken over the used elements since the last decision by index rather than by counting
    /// `add_used` calls, because RX publishes its elements without `add_used` (see
    /// [`publish_used_batch`](Self::publish_used_batch)): that is why this is not
    /// virtio-queue's own check.
    fn notify_used(&mut self, which: Which, mem: &FlatMem<'_>) {
        let slot = which as usize;
        let q = self.queue(which);
        let used_idx = Wrapping(q.next_used());
        let old = std::mem::replace(&mut self.checked_used[slot], used_idx);
        if used_idx == old {
            return;
        }
        let q = self.queue(which);
        let needed = if q.event_idx_enabled() {
            // The used ring's writes before the read of used_event (virtio 1.2, 2.7.10).
            fence(Ordering::SeqCst);
            // `used_event` follows the avail ring's `size` entries (virtio 1.2, 2.7.6).
            let at = GuestAddress(q.avail_ring())
                .checked_add(offset_of!(vring_avail, ring) as u64 + 2 * u64::from(q.size()));
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

    /// Publishes a batch of used elements: all of them are written before the used index
    /// moves, and it moves once, with one store.
    ///
    /// This is why neither queue uses virtio-queue's `add_used`, which moves the index at
    /// every element. On RX a frame spread over several buffers (`num_buffers` > 1) must never
    /// show partly: Linux's driver, finding the first buffer without the rest, drops the frame
    /// and then reads the late buffers as frames of their own (a soak test lost pings that
    /// way). On both queues it is also cheaper: each element is one 8-byte write into the ring,
    /// looked up once per batch, where `add_used` makes three guest-memory accesses per element.
    /// An element whose head is outside the queue is not written, as `add_used` refuses it (the
    /// chain was counted as malformed when it was popped).
    fn publish_used_batch(&mut self, which: Which, mem: &FlatMem<'_>, used: &mut Vec<(u16, u32)>) {
        if used.is_empty() {
            return;
        }
        const RING: u64 = offset_of!(vring_used, ring) as u64;
        const ELEM: usize = size_of::<vring_used_elem>();
        const ID_AT: usize = offset_of!(vring_used_elem, id);
        const LEN_AT: usize = offset_of!(vring_used_elem, len);
        let q = self.queue(which);
        let size = q.size().max(1);
        let ring = GuestAddress(q.used_ring());
        let mut next = Wrapping(q.next_used());
        // The ring's elements, found once (checked at activation, so always found).
        let elems = ring
            .checked_add(RING)
            .and_then(|a| mem.slice(a, ELEM * usize::from(size)));
        let mut failed = false;
        for &(head, len) in used.iter() {
            if head >= size {
                continue;
            }
            let (id, len) = (u32::from(head).to_le(), len.to_le());
            let slot = ELEM * usize::from(next.0 % size);
            // Two aligned 4-byte stores (the ring is 4-aligned: checked at activation); the
            // index's release store below orders them before it.
            let written = elems.as_ref().is_some_and(|e| {
                e.store(id, slot + ID_AT, Ordering::Relaxed).is_ok()
                    && e.store(len, slot + LEN_AT, Ordering::Relaxed).is_ok()
            }) || {
                let mut elem = [0u8; ELEM];
                elem[ID_AT..ID_AT + 4].copy_from_slice(&id.to_ne_bytes());
                elem[LEN_AT..LEN_AT + 4].copy_from_slice(&len.to_ne_bytes());
                ring.checked_add(RING + slot as u64)
                    .is_some_and(|a| mem.write_slice(&elem, a).is_ok())
            };
            if !written {
                failed = true;
                break;
            }
            next += Wrapping(1);
        }
        used.clear();
        let idx_at = ring.checked_add(offset_of!(vring_used, idx) as u64);
        let stored =
            idx_at.is_some_and(|a| mem.store(u16::to_le(next.0), a, Ordering::Release).is_ok());
        self.queue_mut(which).set_next_used(next.0);
        if failed || !stored {
            // The ring was checked against memory at activation: only a memory map changed
            // under the device gets here.
            self.mark_broken(which, "the used ring is not writable");
        }
    }
}

/// The two queues of the device (the value is the queue's index).
#[derive(Clone, Copy, Debug)]
enum Which {
    Rx = 0,
    Tx = 1,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Self::Rx => "rx",
            Self::Tx => "tx",
        }
    }
}

/// What an RX pass ([`DataPath::process_rx_unnotified`]) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxPass {
    /// How it stopped.
    pub end: RxEnd,
    /// The frames it delivered to the guest.
    pub frames: u64,
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

#[cfg(test)]
mod rx_hold_tests;
