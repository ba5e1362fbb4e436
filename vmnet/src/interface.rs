//! The blocking API: starting, using and stopping one vmnet interface (macOS only).

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use block2::RcBlock;
use crossbeam_channel::{Receiver, RecvTimeoutError, bounded};
use dispatch2::{DispatchQueue, DispatchRetained};

use crate::batch::{Batch, MAX_BATCH, batch_len};
use crate::error::{Error, Result};
use crate::forward::{Family, PortForward, Protocol};
use crate::iov::{iovec_mut, iovec_ref};
use crate::keys::{self, Param};
use crate::limits::{FrameLimits, MAX_PACKETS_PER_CALL};
use crate::linearize::Linearizer;
use crate::options::Options;
use crate::params::{InterfaceParams, RawParams};
use crate::ready::Readiness;
use crate::sys;
use crate::xpc::{XpcArray, XpcDictionary};

/// How long `Drop` waits for `vmnet_stop_interface` to complete.
const DROP_STOP_TIMEOUT: Duration = Duration::from_secs(5);

thread_local! {
    /// Set while this thread runs one of our event callbacks on the interface's serial queue:
    /// waiting there for that same queue would deadlock.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Our mutexes guard scratch buffers and an optional callback; a panic while holding one
    // leaves nothing half-updated that a later user would trust.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One vmnet interface event, as handed to the event callback.
///
/// ```no_run
/// # fn f(iface: &vmnet::Interface) {
/// iface.set_event_callback(|ev: vmnet::Event| {
///     if ev.packets_available {
///         println!("about {:?} packets pending", ev.estimated_packets);
///     }
/// });
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The raw `interface_event_t` mask.
    pub mask: u32,
    /// `VMNET_INTERFACE_PACKETS_AVAILABLE` is set.
    pub packets_available: bool,
    /// `vmnet_estimated_packets_available_key`, if the event carried it. An estimate only:
    /// read until `vmnet_read` returns no packet.
    pub estimated_packets: Option<u64>,
}

type Callback = Box<dyn FnMut(Event) + Send>;

pub(crate) struct Shared {
    pub(crate) ready: Readiness,
    callback: Mutex<Option<Callback>>,
    panics: AtomicU64,
}

/// The `interface_ref`.
struct Handle(NonNull<sys::vmnet_interface>);

// SAFETY: vmnet interfaces are used from several threads by design: events and completions run
// on dispatch queues while `vmnet_read`/`vmnet_write` are called from the caller's threads (the
// framework's own users, e.g. QEMU, read on the event queue and write from I/O threads). The
// handle is only a pointer; `Interface` serialises scratch-buffer use with its own mutexes.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

/// A batch and its linearising fallback: one for reads, one for writes.
#[derive(Debug, Default)]
struct Scratch {
    batch: Batch,
    lin: Linearizer,
}

/// A started vmnet interface.
///
/// Created by [`Interface::start`]; stopped by [`Interface::stop`] or on drop. It is `Send` and
/// `Sync`: one thread may read while another writes.
///
/// ```no_run
/// use std::time::Duration;
/// use vmnet::{Interface, Options};
///
/// let iface = Interface::start(&Options::host(), Duration::from_secs(10))?;
/// println!("guest MAC {:?}, MTU {}", iface.params().mac, iface.params().mtu);
/// iface.stop(Duration::from_secs(5))?;
/// # Ok::<(), vmnet::Error>(())
/// ```
pub struct Interface {
    handle: Handle,
    queue: DispatchRetained<DispatchQueue>,
    params: InterfaceParams,
    limits: FrameLimits,
    pub(crate) shared: Arc<Shared>,
    rx: Mutex<Scratch>,
    tx: Mutex<Scratch>,
    stopped: bool,
}

impl std::fmt::Debug for Interface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interface")
            .field("handle", &self.handle.0)
            .field("params", &self.params)
            .field("limits", &self.limits)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

/// Copies the entries of an `interface_param` dictionary.
fn read_params(d: &XpcDictionary) -> RawParams {
    let u = |p| keys::param_key(p).map(|k| d.get_u64(k)).unwrap_or(0);
    let s = |p| keys::param_key(p).and_then(|k| d.get_string(k));
    let opt_u = |p| {
        keys::param_key(p)
            .filter(|k| d.contains(k))
            .map(|k| d.get_u64(k))
    };
    RawParams {
        mac_address: s(Param::MacAddress),
        mtu: u(Param::Mtu),
        max_packet_size: u(Param::MaxPacketSize),
        read_max_packets: opt_u(Param::ReadMaxPackets),
        write_max_packets: opt_u(Param::WriteMaxPackets),
        interface_id: keys::param_key(Param::InterfaceId).and_then(|k| d.get_uuid(k)),
        start_address: s(Param::StartAddress),
        end_address: s(Param::EndAddress),
        subnet_mask: s(Param::SubnetMask),
        nat66_prefix: s(Param::Nat66Prefix),
    }
}

/// A start completion handler that parses the parameters and sends the outcome.
pub(crate) fn start_handler(
    op: &'static str,
    tx: crossbeam_channel::Sender<Result<InterfaceParams>>,
) -> RcBlock<dyn Fn(u32, *mut c_void)> {
    RcBlock::new(move |status: u32, param: *mut c_void| {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if let Some(e) = Error::from_status(op, status) {
                return Err(e);
            }
            // SAFETY: `param` is NULL or the `interface_param` dictionary, alive for the duration
            // of this handler; `retain` keeps it alive while we read it.
            let Some(d) = (unsafe { XpcDictionary::retain(param) }) else {
                return Err(Error::Malformed {
                    op,
                    what: "no interface_param dictionary",
                });
            };
            Ok(InterfaceParams::from_raw(&read_params(&d))?)
        }))
        .unwrap_or(Err(Error::CallbackPanicked { op }));
        // A full or disconnected channel means the starter gave up waiting: nothing to do.
        let _ = tx.try_send(outcome);
    })
}

/// A completion handler that sends its status.
fn status_handler(tx: crossbeam_channel::Sender<u32>) -> RcBlock<dyn Fn(u32)> {
    RcBlock::new(move |status: u32| {
        let _ = tx.try_send(status);
    })
}

fn wait_status(op: &'static str, rx: &Receiver<u32>, timeout: Duration) -> Result<()> {
    match rx.recv_timeout(timeout) {
        Ok(status) => Error::check(op, status),
        Err(RecvTimeoutError::Timeout) => Err(Error::Timeout { op, after: timeout }),
        Err(RecvTimeoutError::Disconnected) => Err(Error::HandlerDropped { op }),
    }
}

/// Asks the framework to stop `h` and waits for the completion (unless called from our own
/// serial queue, where the completion can only run after we return).
fn stop_raw(h: sys::interface_ref, queue: &DispatchQueue, timeout: Duration) -> Result<()> {
    const OP: &str = "vmnet_stop_interface";
    let (tx, rx) = bounded(1);
    let block = status_handler(tx);
    // SAFETY: `h` is a started interface not yet stopped; `queue` is live; the framework copies
    // the block, and ours is released when `block` drops.
    let status = unsafe { sys::vmnet_stop_interface(h, queue, RcBlock::as_ptr(&block)) };
    Error::check(OP, status)?;
    if IN_CALLBACK.get() {
        return Ok(());
    }
    wait_status(OP, &rx, timeout)
}

impl Interface {
    /// Starts an interface and waits up to `timeout` for the framework's completion handler.
    ///
    /// The options are validated (and every key resolved) before any framework call. Errors
    /// caused by missing privileges answer `true` to [`Error::is_permission`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let iface = vmnet::Interface::start(&vmnet::Options::shared(), Duration::from_secs(10))?;
    /// assert!(iface.params().max_packet_size >= 1514);
    /// # Ok::<(), vmnet::Error>(())
    /// ```
    #[doc(alias = "vmnet_start_interface")]
    pub fn start(options: &Options, timeout: Duration) -> Result<Self> {
        const OP: &str = "vmnet_start_interface";
        let entries = options.descriptor()?;
        let desc = XpcDictionary::from_entries(&entries, keys::require)?;
        let queue = DispatchQueue::new("vmnet-rs.interface", None);
        let (tx, rx) = bounded(1);
        let handler = start_handler(OP, tx);
        // SAFETY: `desc` is a live dictionary and `queue` a live serial queue, both kept alive
        // until the completion was received; the framework copies the handler block.
        let raw =
            unsafe { sys::vmnet_start_interface(desc.as_raw(), &queue, RcBlock::as_ptr(&handler)) };
        let limits = (options.virtio_header_enabled(), options.tso_enabled());
        let iface = Self::finish_start(OP, raw, queue, &rx, timeout, limits);
        drop(desc);
        iface
    }

    /// Completes a start: waits for the handler, then registers the event callback.
    pub(crate) fn finish_start(
        op: &'static str,
        raw: sys::interface_ref,
        queue: DispatchRetained<DispatchQueue>,
        rx: &Receiver<Result<InterfaceParams>>,
        timeout: Duration,
        (virtio_header, tso): (bool, bool),
    ) -> Result<Self> {
        let Some(handle) = NonNull::new(raw) else {
            return Err(Error::NullHandle { op });
        };
        let params = match rx.recv_timeout(timeout) {
            Ok(Ok(p)) => p,
            // The header: on a failing status "the interface failed to be created"; there is
            // nothing to stop.
            Ok(Err(e)) => return Err(e),
            Err(RecvTimeoutError::Timeout) => {
                // Best effort: an interface that finishes starting later must not leak.
                let _ = stop_raw(raw, &queue, Duration::from_secs(1));
                return Err(Error::Timeout { op, after: timeout });
            }
            Err(RecvTimeoutError::Disconnected) => return Err(Error::HandlerDropped { op }),
        };
        let shared = Arc::new(Shared {
            ready: Readiness::new(),
            callback: Mutex::new(None),
            panics: AtomicU64::new(0),
        });
        // Packets may have arrived before the callback is registered; no event will repeat
        // them, so the first wait must not block.
        shared.ready.set_pending();
        let read_batch = params.read_batch();
        let limits = FrameLimits::new(params.max_packet_size, virtio_header, tso);
        let mut iface = Interface {
            handle: Handle(handle),
            queue,
            params,
            limits,
            shared,
            rx: Mutex::new(Scratch {
                batch: Batch::with_capacity(read_batch, read_batch),
                lin: Linearizer::new(),
            }),
            tx: Mutex::new(Scratch::default()),
            stopped: false,
        };
        if let Err(e) = iface.register_events() {
            let _ = iface.shutdown(DROP_STOP_TIMEOUT);
            return Err(e);
        }
        Ok(iface)
    }

    fn register_events(&mut self) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let block = RcBlock::new(move |mask: u32, event: *mut c_void| {
            let outer = IN_CALLBACK.replace(true);
            let r = catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: `event` is NULL or the event dictionary, alive during this callback.
                let dict = unsafe { XpcDictionary::retain(event) };
                let estimated_packets = dict.as_ref().and_then(|d| {
                    keys::param_key(Param::EstimatedPacketsAvailable)
                        .filter(|k| d.contains(k))
                        .map(|k| d.get_u64(k))
                });
                let packets_available = mask & sys::VMNET_INTERFACE_PACKETS_AVAILABLE != 0;
                if packets_available {
                    shared.ready.signal(estimated_packets.unwrap_or(0));
                }
                if let Some(cb) = lock(&shared.callback).as_mut() {
                    cb(Event {
                        mask,
                        packets_available,
                        estimated_packets,
                    });
                }
            }));
            if r.is_err() {
                shared.panics.fetch_add(1, Ordering::Relaxed);
            }
            IN_CALLBACK.set(outer);
        });
        // SAFETY: the interface is started; the queue is live and serial; the framework copies
        // the block (ours is released when `block` drops at the end of this function).
        let status = unsafe {
            sys::vmnet_interface_set_event_callback(
                self.handle.0.as_ptr(),
                sys::VMNET_INTERFACE_PACKETS_AVAILABLE,
                Some(&self.queue),
                RcBlock::as_ptr(&block),
            )
        };
        Error::check("vmnet_interface_set_event_callback", status)
    }

    /// What the interface is: MAC, MTU, maximum packet size, batch maxima.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) {
    /// let p = iface.params();
    /// let bufs = vec![vec![0u8; iface.limits().read_capacity()]; p.read_batch()];
    /// # }
    /// ```
    pub fn params(&self) -> &InterfaceParams {
        &self.params
    }

    /// The packet sizes that follow from the parameters and the mode the interface was started
    /// in (virtio-net header, TSO): the largest packet written, the capacity of read buffers.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) {
    /// let bufs = vec![vec![0u8; iface.limits().read_capacity()]; iface.params().read_batch()];
    /// # }
    /// ```
    pub fn limits(&self) -> FrameLimits {
        self.limits
    }

    /// Runs `callback` on the interface's serial dispatch queue for every event, replacing any
    /// previous callback. A panic in it is caught (and counted by
    /// [`callback_panics`](Self::callback_panics)); it never unwinds into GCD.
    ///
    /// The callback must not call `set_event_callback`, `clear_event_callback` or `stop` on this
    /// interface. Readiness for [`wait_readable`](Self::wait_readable) and the async API is kept
    /// whether or not a callback is set.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) {
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// let events = Arc::new(AtomicU64::new(0));
    /// let e = Arc::clone(&events);
    /// iface.set_event_callback(move |_| { e.fetch_add(1, Ordering::Relaxed); });
    /// # }
    /// ```
    #[doc(alias = "vmnet_interface_set_event_callback")]
    pub fn set_event_callback<F>(&self, callback: F)
    where
        F: FnMut(Event) + Send + 'static,
    {
        *lock(&self.shared.callback) = Some(Box::new(callback));
    }

    /// Removes the event callback; when this returns it is neither running nor will run again.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) {
    /// iface.set_event_callback(|_| {});
    /// iface.clear_event_callback();
    /// # }
    /// ```
    pub fn clear_event_callback(&self) {
        // The callback runs with this lock held, so taking it waits for a running one.
        let old = lock(&self.shared.callback).take();
        drop(old);
    }

    /// How many event callbacks panicked (each panic was caught).
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) {
    /// assert_eq!(iface.callback_panics(), 0);
    /// # }
    /// ```
    pub fn callback_panics(&self) -> u64 {
        self.shared.panics.load(Ordering::Relaxed)
    }

    /// Blocks until the framework signals packets (`true`) or `timeout` passes (`false`;
    /// `None` waits forever). Returns at once after a read that filled a whole batch or was cut
    /// short by an error, since more may be pending; a read that failed outright leaves
    /// readiness as it found it.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) {
    /// use std::time::Duration;
    /// if iface.wait_readable(Some(Duration::from_millis(100))) {
    ///     // read_batch until it returns 0
    /// }
    /// # }
    /// ```
    pub fn wait_readable(&self, timeout: Option<Duration>) -> bool {
        self.shared.ready.wait(timeout)
    }

    /// Reads up to `min(bufs.len(), lens.len(), 128, read_max_packets)` packets, one per buffer;
    /// sets `lens[i]` to packet `i`'s length and returns how many were read (0: none pending).
    ///
    /// Every buffer used must hold at least [`FrameLimits::read_capacity`] bytes
    /// ([`InterfaceParams::max_packet_size`], plus the 12-byte virtio-net header in
    /// virtio-header mode, more with TSO), or the call fails with [`Error::BufferTooSmall`]
    /// before reading.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) -> vmnet::Result<()> {
    /// let p = iface.params();
    /// let mut bufs = vec![vec![0u8; iface.limits().read_capacity()]; 32];
    /// let mut lens = [0usize; 32];
    /// loop {
    ///     let n = iface.read_batch(&mut bufs, &mut lens)?;
    ///     for i in 0..n {
    ///         println!("{} bytes", lens[i]);
    ///     }
    ///     if n < bufs.len() { break; }
    /// }
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_read")]
    pub fn read_batch<B: AsMut<[u8]>>(&self, bufs: &mut [B], lens: &mut [usize]) -> Result<usize> {
        let n = batch_len(bufs.len().min(lens.len()), self.params.read_max_packets);
        if n == 0 {
            return Ok(0);
        }
        let cap = self.limits.read_capacity();
        let mut rx = lock(&self.rx);
        let Scratch { batch, lin } = &mut *rx;
        batch.clear();
        for (index, b) in bufs[..n].iter_mut().enumerate() {
            if batch.push_capped([iovec_mut(b.as_mut())], 0, cap).is_none() {
                return Err(Error::BufferTooSmall {
                    index,
                    len: 0,
                    required: cap,
                });
            }
        }
        batch.check_read_capacity(cap)?;
        // SAFETY: the iovecs describe `bufs[..n]`, mutably borrowed by this call and not
        // otherwise accessed during it.
        let got = unsafe { self.read_raw(batch, lin) }?;
        for (i, len) in lens[..got].iter_mut().enumerate() {
            *len = batch.received_len(i);
        }
        Ok(got)
    }

    /// Reads straight into the packets of `batch` (zero-copy: for instance a guest's RX buffers);
    /// returns how many were filled, in order. [`Batch::received_len`] then gives each one's
    /// length.
    ///
    /// The batch is read in calls of at most `min(128, read_max_packets)` packets and 256 KiB of
    /// capacity (Apple's per-call limits, [`crate::limits`]); reading stops at the first call
    /// that fills fewer packets than it offered (vmnet has nothing more). Every packet must have
    /// a capacity of at least [`FrameLimits::read_capacity`]; push them with
    /// [`Batch::push_capped`] at that capacity so that a call offers no more than it needs. If
    /// the framework refuses a packet made of several iovecs, the packets are read through
    /// bounce buffers and copied into place (see [`crate::linearize`]), and later reads do so
    /// up front.
    ///
    /// # Safety
    ///
    /// Every iovec of `batch` must be valid for writes of its length for the duration of the call
    /// and not be accessed through any other path meanwhile.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) -> vmnet::Result<()> {
    /// use vmnet::{batch::Batch, iov::iovec_mut};
    ///
    /// let mut a = vec![0u8; iface.limits().read_capacity()];
    /// let mut batch = Batch::new();
    /// batch.push_capped([iovec_mut(&mut a)], 0, iface.limits().read_capacity());
    /// // SAFETY: `a` is live, and only reached through the batch during the call.
    /// let n = unsafe { iface.read_iovecs(&mut batch) }?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_read")]
    pub unsafe fn read_iovecs(&self, batch: &mut Batch) -> Result<usize> {
        batch.check_read_capacity(self.limits.read_capacity())?;
        let mut rx = lock(&self.rx);
        // SAFETY: forwarded from the caller.
        unsafe { self.read_raw(batch, &mut rx.lin) }
    }

    /// Whether reads go through bounce buffers because the framework refused multi-iovec
    /// packets.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) {
    /// println!("linearising reads: {}", iface.linearizing_reads());
    /// # }
    /// ```
    pub fn linearizing_reads(&self) -> bool {
        lock(&self.rx).lin.is_needed()
    }

    /// # Safety
    ///
    /// As [`read_iovecs`](Self::read_iovecs).
    unsafe fn read_raw(&self, batch: &mut Batch, lin: &mut Linearizer) -> Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        // Clear before reading: an event during the read sets the flag again.
        let was_ready = self.shared.ready.take();
        let mut total = 0;
        // Whether packets may be left that no event will announce.
        let mut more = false;
        let mut next = 0;
        while next < batch.len() {
            // One call at a time: nothing is allocated per read or write.
            let range = batch.next_call(next..batch.len(), self.params.read_max_packets);
            next = range.end;
            let want = range.len();
            let result = if lin.bounces_up_front(batch, range.clone()) {
                // SAFETY: the caller vouches for the iovecs.
                unsafe { self.read_bounced(batch, lin, range) }
            } else {
                // SAFETY: the caller vouches for the iovecs.
                match unsafe { self.read_once(batch, range.clone()) } {
                    Err(e)
                        if e.status()
                            .is_some_and(|s| lin.should_fall_back(s, batch, range.clone())) =>
                    {
                        lin.mark_needed();
                        // SAFETY: as above.
                        unsafe { self.read_bounced(batch, lin, range) }
                    }
                    r => r,
                }
            };
            match result {
                Ok(n) => {
                    total += n;
                    more = n == want;
                    if n < want {
                        break;
                    }
                }
                // The packets read before the failing call are delivered. Every call before it
                // was full, so more may be pending: readiness stays set, and the next read
                // meets the error again or reads them.
                Err(_) if total > 0 => {
                    more = true;
                    break;
                }
                // A failed read took nothing: readiness stays as it was, or a reader that
                // waits before its next read would sleep on pending packets until a new one
                // arrives (vmnet does not repeat an event).
                Err(e) => {
                    if was_ready {
                        self.shared.ready.set_pending();
                    }
                    return Err(e);
                }
            }
        }
        if more {
            // A full batch, or one cut short by an error: more may be pending, and no event
            // will say so.
            self.shared.ready.set_pending();
        }
        Ok(total)
    }

    /// One `vmnet_read` into `batch[range]` (within the per-call limits); records the lengths.
    ///
    /// # Safety
    ///
    /// The iovecs of `batch[range]` must be valid for writes during the call and not otherwise
    /// accessed.
    unsafe fn read_once(&self, batch: &mut Batch, range: std::ops::Range<usize>) -> Result<usize> {
        let n = range.len();
        debug_assert!(n <= MAX_BATCH.min(MAX_PACKETS_PER_CALL));
        let descs = batch.descriptors(range);
        let mut count = n as c_int;
        // SAFETY: the interface is started and not stopped (`stop` takes `self`); `descs` holds
        // `n` descriptors whose iovecs the caller vouches for; `count` is a live int.
        let status =
            unsafe { sys::vmnet_read(self.handle.0.as_ptr(), descs.as_mut_ptr(), &mut count) };
        Error::check("vmnet_read", status)?;
        batch.record_received();
        Ok(usize::try_from(count).unwrap_or(0).min(n))
    }

    /// One `vmnet_read` of `batch[range]` through bounce buffers, copied back into place.
    ///
    /// # Safety
    ///
    /// As [`read_once`](Self::read_once).
    unsafe fn read_bounced(
        &self,
        batch: &mut Batch,
        lin: &mut Linearizer,
        range: std::ops::Range<usize>,
    ) -> Result<usize> {
        let want = range.len();
        let flat = lin.bounce_for_read(batch, range.clone());
        // SAFETY: the flat batch points into `lin`'s buffers or the caller's memory.
        let got = unsafe { self.read_once(flat, 0..want) }?;
        // SAFETY: the caller vouches for the iovecs of `batch[range]`.
        unsafe { lin.scatter_back(batch, range, got) };
        Ok(got)
    }

    /// Writes the packets in order, in calls of at most `min(128, write_max_packets)`; returns
    /// how many were written (fewer than given when the framework took fewer).
    ///
    /// A packet larger than [`FrameLimits::max_packet`] (the maximum packet size, plus the
    /// virtio-net header in virtio-header mode, or a whole GSO frame with TSO) fails the call
    /// with [`Error::PacketTooLarge`], an empty one with [`Error::EmptyPacket`], before writing.
    /// Calls stay within Apple's per-call limits (200 packets, 256 KiB).
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface, frames: &[Vec<u8>]) -> vmnet::Result<()> {
    /// let sent = iface.write_batch(frames)?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_write")]
    pub fn write_batch<B: AsRef<[u8]>>(&self, packets: &[B]) -> Result<usize> {
        let mut tx = lock(&self.tx);
        let Scratch { batch, lin } = &mut *tx;
        batch.clear();
        for (index, p) in packets.iter().enumerate() {
            if batch.push([iovec_ref(p.as_ref())], 0).is_none() {
                return Err(Error::EmptyPacket { index });
            }
        }
        batch.check_write_sizes(self.limits.max_packet())?;
        // SAFETY: the iovecs describe `packets`, borrowed by this call; vmnet only reads them.
        unsafe { self.write_raw(batch, lin) }
    }

    /// Writes the packets of `batch` (zero-copy: for instance a guest's TX chains), with the
    /// linearising fallback for systems that refuse multi-iovec packets; returns how many were
    /// written.
    ///
    /// # Safety
    ///
    /// Every iovec of `batch` must be valid for reads of its length for the duration of the call.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) -> vmnet::Result<()> {
    /// use vmnet::{batch::Batch, iov::iovec_ref};
    ///
    /// let (hdr, body) = (vec![0u8; 14], vec![0u8; 46]);
    /// let mut batch = Batch::new();
    /// batch.push([iovec_ref(&hdr), iovec_ref(&body)], 0);
    /// // SAFETY: `hdr` and `body` are live for the call.
    /// let n = unsafe { iface.write_iovecs(&mut batch) }?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_write")]
    pub unsafe fn write_iovecs(&self, batch: &mut Batch) -> Result<usize> {
        batch.check_write_sizes(self.limits.max_packet())?;
        let mut tx = lock(&self.tx);
        // SAFETY: forwarded from the caller.
        unsafe { self.write_raw(batch, &mut tx.lin) }
    }

    /// Whether writes are being linearised because the framework refused multi-iovec packets.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) {
    /// println!("linearising: {}", iface.linearizing());
    /// # }
    /// ```
    pub fn linearizing(&self) -> bool {
        lock(&self.tx).lin.is_needed()
    }

    /// # Safety
    ///
    /// As [`write_iovecs`](Self::write_iovecs).
    unsafe fn write_raw(&self, batch: &mut Batch, lin: &mut Linearizer) -> Result<usize> {
        let mut total = 0;
        let mut next = 0;
        while next < batch.len() {
            // One call at a time: nothing is allocated per read or write.
            let range = batch.next_call(next..batch.len(), self.params.write_max_packets);
            next = range.end;
            let want = range.len();
            let result = if lin.bounces_up_front(batch, range.clone()) {
                // SAFETY: the caller vouches for the iovecs; the flat batch is used at once.
                let flat = unsafe { lin.linearize(batch, range.clone()) };
                // SAFETY: the flat batch points into `lin`'s buffers or the caller's memory.
                unsafe { self.write_once(flat, 0..want) }
            } else {
                // SAFETY: the caller vouches for the iovecs.
                match unsafe { self.write_once(batch, range.clone()) } {
                    Err(e)
                        if e.status()
                            .is_some_and(|s| lin.should_fall_back(s, batch, range.clone())) =>
                    {
                        lin.mark_needed();
                        // SAFETY: as above.
                        let flat = unsafe { lin.linearize(batch, range.clone()) };
                        // SAFETY: as above.
                        unsafe { self.write_once(flat, 0..want) }
                    }
                    r => r,
                }
            };
            match result {
                Ok(n) => {
                    total += n;
                    if n < want {
                        break;
                    }
                }
                // Report what went before the failing chunk rather than losing it.
                Err(_) if total > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// # Safety
    ///
    /// The iovecs of `batch[range]` must be valid for reads during the call.
    unsafe fn write_once(&self, batch: &mut Batch, range: std::ops::Range<usize>) -> Result<usize> {
        let n = range.len();
        debug_assert!(n <= MAX_BATCH.min(MAX_PACKETS_PER_CALL));
        let descs = batch.descriptors(range);
        let mut count = n as c_int;
        // SAFETY: started, not stopped; `n` descriptors whose iovecs the caller vouches for.
        let status =
            unsafe { sys::vmnet_write(self.handle.0.as_ptr(), descs.as_mut_ptr(), &mut count) };
        Error::check("vmnet_write", status)?;
        Ok(usize::try_from(count).unwrap_or(0).min(n))
    }

    /// Forwards a host port to the guest network (shared mode) and waits for the completion.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) -> vmnet::Result<()> {
    /// use std::time::Duration;
    /// use vmnet::forward::{PortForward, Protocol};
    ///
    /// let rule = PortForward::new(Protocol::Tcp, 2222, "192.168.105.2".parse().unwrap(), 22);
    /// iface.add_port_forward(&rule, Duration::from_secs(5))?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_interface_add_ip_port_forwarding_rule")]
    pub fn add_port_forward(&self, rule: &PortForward, timeout: Duration) -> Result<()> {
        const OP: &str = "vmnet_interface_add_ip_port_forwarding_rule";
        rule.validate()?;
        let (tx, rx) = bounded(1);
        let block = status_handler(tx);
        let h = self.handle.0.as_ptr();
        let status = match rule.internal_address {
            IpAddr::V4(a) => {
                let addr = sys::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                };
                // SAFETY: started interface; `addr` is a live `in_addr` (network byte order) as
                // `AF_INET` requires; the framework copies the block.
                unsafe {
                    sys::vmnet_interface_add_ip_port_forwarding_rule(
                        h,
                        rule.protocol.raw(),
                        rule.external_port,
                        Family::V4.raw(),
                        (&raw const addr).cast(),
                        rule.internal_port,
                        RcBlock::as_ptr(&block),
                    )
                }
            }
            IpAddr::V6(a) => {
                let addr = sys::in6_addr {
                    s6_addr: a.octets(),
                };
                // SAFETY: as above with a live `in6_addr` for `AF_INET6`.
                unsafe {
                    sys::vmnet_interface_add_ip_port_forwarding_rule(
                        h,
                        rule.protocol.raw(),
                        rule.external_port,
                        Family::V6.raw(),
                        (&raw const addr).cast(),
                        rule.internal_port,
                        RcBlock::as_ptr(&block),
                    )
                }
            }
        };
        Error::check(OP, status)?;
        wait_status(OP, &rx, timeout)
    }

    /// Removes the forwarding of `external_port` for `protocol` and `family`, and waits for the
    /// completion.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) -> vmnet::Result<()> {
    /// use std::time::Duration;
    /// use vmnet::forward::{Family, Protocol};
    ///
    /// iface.remove_port_forward(Protocol::Tcp, 2222, Family::V4, Duration::from_secs(5))?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_interface_remove_ip_port_forwarding_rule")]
    pub fn remove_port_forward(
        &self,
        protocol: Protocol,
        external_port: u16,
        family: Family,
        timeout: Duration,
    ) -> Result<()> {
        const OP: &str = "vmnet_interface_remove_ip_port_forwarding_rule";
        let (tx, rx) = bounded(1);
        let block = status_handler(tx);
        // SAFETY: started interface; the framework copies the block.
        let status = unsafe {
            sys::vmnet_interface_remove_ip_port_forwarding_rule(
                self.handle.0.as_ptr(),
                protocol.raw(),
                external_port,
                family.raw(),
                RcBlock::as_ptr(&block),
            )
        };
        Error::check(OP, status)?;
        wait_status(OP, &rx, timeout)
    }

    /// The forwarding rules of `family`.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) -> vmnet::Result<()> {
    /// use std::time::Duration;
    /// for r in iface.port_forwards(vmnet::forward::Family::V4, Duration::from_secs(5))? {
    ///     println!("{:?}", r);
    /// }
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_interface_get_ip_port_forwarding_rules")]
    #[doc(alias = "vmnet_ip_port_forwarding_rule_get_details")]
    pub fn port_forwards(&self, family: Family, timeout: Duration) -> Result<Vec<PortForward>> {
        const OP: &str = "vmnet_interface_get_ip_port_forwarding_rules";
        let (tx, rx) = bounded::<Vec<PortForward>>(1);
        let block = RcBlock::new(move |rules: *mut c_void| {
            let list = catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: `rules` is NULL or an xpc array alive during this handler.
                let Some(arr) = (unsafe { XpcArray::retain(rules) }) else {
                    return Vec::new();
                };
                (0..arr.len())
                    .filter_map(|i| rule_details(arr.get_raw(i), family))
                    .collect()
            }))
            .unwrap_or_default();
            let _ = tx.try_send(list);
        });
        // SAFETY: started interface; the framework copies the block.
        let status = unsafe {
            sys::vmnet_interface_get_ip_port_forwarding_rules(
                self.handle.0.as_ptr(),
                family.raw(),
                RcBlock::as_ptr(&block),
            )
        };
        Error::check(OP, status)?;
        match rx.recv_timeout(timeout) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout {
                op: OP,
                after: timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(Error::HandlerDropped { op: OP }),
        }
    }

    /// The raw `interface_ref`, for calls into [`crate::sys`] this binding does not wrap.
    ///
    /// # Safety
    ///
    /// The pointer is valid until the interface is stopped or dropped; the caller must not stop
    /// it, change its event callback or use it after that.
    ///
    /// ```no_run
    /// # fn f(iface: &vmnet::Interface) {
    /// // SAFETY: only inspected, not used after the interface.
    /// let raw = unsafe { iface.as_raw() };
    /// assert!(!raw.is_null());
    /// # }
    /// ```
    pub unsafe fn as_raw(&self) -> sys::interface_ref {
        self.handle.0.as_ptr()
    }

    /// Unregisters the event callback, stops the interface and waits up to `timeout` for the
    /// framework to confirm. Every GCD and xpc object is released once `self` is gone.
    ///
    /// ```no_run
    /// # fn f(iface: vmnet::Interface) -> vmnet::Result<()> {
    /// iface.stop(std::time::Duration::from_secs(5))?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_stop_interface")]
    pub fn stop(mut self, timeout: Duration) -> Result<()> {
        self.shutdown(timeout)
    }

    fn shutdown(&mut self, timeout: Duration) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let h = self.handle.0.as_ptr();
        // SAFETY: the interface is started and not yet stopped; NULL queue and block disable
        // events, as the header documents.
        let unregistered = unsafe {
            sys::vmnet_interface_set_event_callback(
                h,
                sys::VMNET_INTERFACE_PACKETS_AVAILABLE,
                None,
                ptr::null_mut(),
            )
        };
        let in_callback = IN_CALLBACK.get();
        if !in_callback {
            // The queue is serial: once this empty block ran, no earlier callback is running.
            self.queue.exec_sync(|| {});
            drop(lock(&self.shared.callback).take());
        }
        self.shared.ready.close();
        let stopped = stop_raw(h, &self.queue, timeout);
        Error::check("vmnet_interface_set_event_callback", unregistered).and(stopped)
    }
}

impl Drop for Interface {
    fn drop(&mut self) {
        let _ = self.shutdown(DROP_STOP_TIMEOUT);
        // `queue` (DispatchRetained) is released after this, once; blocks still pending on it
        // keep it alive inside libdispatch.
    }
}

/// One rule of a `get_ip_port_forwarding_rules` answer.
fn rule_details(rule: *mut c_void, family: Family) -> Option<PortForward> {
    if rule.is_null() {
        return None;
    }
    let (mut proto, mut ext, mut int) = (0u8, 0u16, 0u16);
    let mut storage = [0u8; 16];
    // SAFETY: `rule` is a live element of the rules array; every out-pointer is live and the
    // address buffer holds an `in6_addr` (16 bytes), enough for either family.
    let status = unsafe {
        sys::vmnet_ip_port_forwarding_rule_get_details(
            rule,
            &mut proto,
            &mut ext,
            family.raw(),
            storage.as_mut_ptr().cast(),
            &mut int,
        )
    };
    if status != sys::VMNET_SUCCESS {
        return None;
    }
    let addr = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(
            storage[0], storage[1], storage[2], storage[3],
        )),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(storage)),
    };
    Some(PortForward::new(Protocol::from_raw(proto)?, ext, addr, int))
}

/// The names of the physical interfaces usable with bridged mode.
///
/// ```no_run
/// for name in vmnet::shared_interface_list() {
///     println!("can bridge to {name}");
/// }
/// ```
#[doc(alias = "vmnet_copy_shared_interface_list")]
pub fn shared_interface_list() -> Vec<String> {
    // SAFETY: no arguments; the result is NULL or an owned xpc array reference that `from_owned`
    // takes over.
    let raw = unsafe { sys::vmnet_copy_shared_interface_list() };
    // SAFETY: as above.
    unsafe { XpcArray::from_owned(raw) }
        .map(|a| a.strings())
        .unwrap_or_default()
}
