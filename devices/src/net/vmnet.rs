//! macOS vmnet.framework backend (feature `vmnet`).
//!
//! The GCD event callback of the interface only fires the worker's [`Notifier`]; all packet work
//! happens on the worker thread: [`recv`](Backend::recv) reads with `vmnet_read` straight into
//! the guest's RX buffers (the device has already skipped the virtio-net header, and zero-length
//! iovecs are dropped because vmnet rejects them), in batches of at most
//! `min(128, read max packets)`, and keeps reading until vmnet has nothing more or the guest has
//! no more buffers; [`send`](Backend::send) writes the guest's TX chains in batches with
//! `vmnet_write`, and falls back to copying each packet into one contiguous buffer when the
//! system refuses multi-iovec packets (the `vmnet` crate remembers that per interface).
//!
//! Offloads: by default vmnet frames carry no virtio-net header, so [`BackendInfo::vnet_hdr`] is
//! false and no offload is offered (a TSO or partially checksummed frame could not be described
//! to the guest). With vmnet's virtio-header mode (`vmnet_enable_virtio_header_key`, macOS 15.4;
//! Apple documents it as a 12-byte virtio-net header on every packet, not to be combined with
//! `vmnet_enable_checksum_offload_key`) the header passes untouched between the guest's queues
//! and vmnet: the backend reports `vnet_hdr` with checksum offload, and TSO when
//! `vmnet_enable_tso_key` is set too, so the device offers `CSUM`/`GUEST_CSUM` and
//! `HOST_TSO4/6`/`GUEST_TSO4/6`. vmnet cannot change offloads on a running interface, so a guest
//! that declines offloads the interface was started with fails activation with a clear error.
//!
//! Sizes follow the mode ([`vmnet::limits::FrameLimits`]): in virtio-header mode every packet
//! may be the maximum packet size plus the 12-byte header (Apple's documentation does not say
//! whether `vmnet_max_packet_size_key` counts the header, so the limit holds under either
//! reading), with TSO a whole 64 KiB GSO frame; receive buffers get the same capacity. A TX frame
//! above the limit is dropped, counted ([`VmnetBackend::dropped_oversize`]) and logged at warn,
//! rate-limited; when vmnet refuses a batch as too big (`VMNET_PACKET_TOO_BIG`), its packets are
//! written one by one and only those vmnet refuses are dropped, counted
//! ([`VmnetBackend::refused_too_big`]) and logged the same way. Every `vmnet_read` and
//! `vmnet_write` stays within Apple's per-call limits (200 packets, 256 KiB), which the `vmnet`
//! crate enforces by splitting a batch into several calls.
//!
//! ```no_run
//! use std::time::Duration;
//! use devices::net::{Backend, vmnet::VmnetBackend};
//!
//! let backend = VmnetBackend::start(&vmnet::Options::shared(), Duration::from_secs(10))?;
//! println!("guest MAC {:?}", backend.info().mac);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use vmnet::batch::{Batch, batch_len};
use vmnet::iov::iovec_from;
use vmnet::limits::FrameLimits;
use vmnet::{Interface, Options, Status};

use super::{Backend, BackendInfo, Offloads, RxFrame, TxFrame};
use crate::event::Notifier;
use crate::ratelimit::RateLimit;
use crate::warn_limited;

fn to_io(e: vmnet::Error) -> io::Error {
    let kind = match e.status() {
        Some(Status::BufferExhausted) => io::ErrorKind::WouldBlock,
        Some(Status::InvalidAccess | Status::NotAuthorized) => io::ErrorKind::PermissionDenied,
        _ if matches!(e, vmnet::Error::BufferTooSmall { .. }) => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// The offloads frames will carry with `options`: `None` without the virtio-net header.
fn offloads_for(options: &Options) -> io::Result<Option<Offloads>> {
    super::header_offloads(
        options.virtio_header_enabled(),
        options.tso_enabled(),
        options.checksum_offload_enabled(),
    )
    .map_err(|m| io::Error::new(io::ErrorKind::Unsupported, m))
}

/// A [`Backend`] on a vmnet interface.
#[derive(Debug)]
pub struct VmnetBackend {
    iface: Interface,
    notifier: Notifier,
    info: BackendInfo,
    rx: Batch,
    tx: Batch,
    /// For each packet of `tx`, the index of its frame.
    tx_frames: Vec<usize>,
    /// One packet of `tx` at a time, after vmnet refused a batch as too big.
    single: Batch,
    limits: FrameLimits,
    dropped_oversize: u64,
    refused_too_big: u64,
    log: RateLimit,
}

impl VmnetBackend {
    /// Starts a vmnet interface with `options` and wraps it.
    ///
    /// With `virtio_header(true)` (and optionally `tso(true)`) frames carry the virtio-net header
    /// and offloads reach the guest; vmnet's header-less checksum offload, and TSO without the
    /// header, are refused (see the module documentation).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// let b = devices::net::vmnet::VmnetBackend::start(&vmnet::Options::host(), Duration::from_secs(10))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    /// The `vmnet::Error` (with its advice) is the `io::Error`'s inner error.
    pub fn start(options: &Options, timeout: Duration) -> io::Result<Self> {
        let offloads = offloads_for(options)?;
        let iface = Interface::start(options, timeout).map_err(to_io)?;
        Self::with_offloads(iface, offloads)
    }

    /// Wraps a started interface: its event callback now fires this backend's notifier.
    ///
    /// ```no_run
    /// # fn f(iface: vmnet::Interface) -> std::io::Result<()> {
    /// let b = devices::net::vmnet::VmnetBackend::from_interface(iface)?;
    /// # Ok(()) }
    /// ```
    pub fn from_interface(iface: Interface) -> io::Result<Self> {
        if iface.limits().header_len() != 0 {
            // The offloads it was started with are not known here.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "an interface in virtio-header mode needs VmnetBackend::start",
            ));
        }
        Self::with_offloads(iface, None)
    }

    /// Wraps a started interface; `offloads` is `Some` when it was started in virtio-header
    /// mode (frames carry the 12-byte virtio-net header) with those offloads.
    fn with_offloads(iface: Interface, offloads: Option<Offloads>) -> io::Result<Self> {
        let notifier = Notifier::new()?;
        let fire = notifier.try_clone()?;
        iface.set_event_callback(move |ev| {
            if ev.packets_available {
                // A failed kevent cannot be reported from a GCD callback; the worker still reads
                // when the guest refills RX buffers.
                let _ = fire.notify();
            }
        });
        // Packets may already be pending, and no event will repeat them.
        notifier.notify()?;
        let p = iface.params();
        let limits = iface.limits();
        let info = BackendInfo {
            vnet_hdr: offloads.is_some(),
            offloads: offloads.unwrap_or(Offloads::NONE),
            mtu: u16::try_from(p.mtu).ok(),
            mac: p.mac,
            // The device gives every RX frame room for this plus the virtio-net header, which is
            // the read capacity vmnet needs (`FrameLimits::read_capacity`).
            max_frame_len: limits.max_frame(),
            rx_batch: p.read_batch(),
            tx_batch: p.write_batch(),
        };
        let (rb, wb) = (p.read_batch(), p.write_batch());
        Ok(Self {
            iface,
            notifier,
            info,
            rx: Batch::with_capacity(rb, rb * 2),
            tx: Batch::with_capacity(wb, wb * 4),
            tx_frames: Vec::with_capacity(wb),
            single: Batch::with_capacity(1, 8),
            limits,
            dropped_oversize: 0,
            refused_too_big: 0,
            log: RateLimit::guest_errors(),
        })
    }

    /// The interface underneath.
    ///
    /// ```no_run
    /// # fn f(b: &devices::net::vmnet::VmnetBackend) { let mtu = b.interface().params().mtu; }
    /// ```
    pub fn interface(&self) -> &Interface {
        &self.iface
    }

    /// Frames dropped on send because they exceeded the interface's packet limit
    /// ([`FrameLimits::max_packet`]: the maximum packet size, plus the header in virtio-header
    /// mode, or a GSO frame with TSO).
    ///
    /// ```no_run
    /// # fn f(b: &devices::net::vmnet::VmnetBackend) { assert_eq!(b.dropped_oversize(), 0); }
    /// ```
    pub fn dropped_oversize(&self) -> u64 {
        self.dropped_oversize
    }

    /// TX frames vmnet refused with `VMNET_PACKET_TOO_BIG` (they were dropped; the other frames
    /// of their batch were sent one by one).
    ///
    /// ```no_run
    /// # fn f(b: &devices::net::vmnet::VmnetBackend) { assert_eq!(b.refused_too_big(), 0); }
    /// ```
    pub fn refused_too_big(&self) -> u64 {
        self.refused_too_big
    }

    /// After vmnet refused the TX batch with `VMNET_PACKET_TOO_BIG` (Apple's documentation:
    /// "packet size exceeding the maximum transmission unit"): writes its packets one per call,
    /// so that only the packets vmnet refuses are dropped (counted and logged at warn,
    /// rate-limited). Returns what [`Backend::send`] returns for `frames_len` frames.
    ///
    /// Assumes a refused `vmnet_write` wrote nothing (not documented either way).
    fn send_singly(&mut self, frames_len: usize) -> io::Result<usize> {
        for k in 0..self.tx.len() {
            self.single.clear();
            self.single.push(self.tx.packet_iovs(k).iter().copied(), 0);
            // SAFETY: the iovecs are those of `self.tx`, which describe the guest buffers of the
            // frames `send` was given: valid for `'m`, only read by vmnet, not written meanwhile.
            match unsafe { self.iface.write_iovecs(&mut self.single) } {
                Ok(1) => {}
                // The host's queue is full (or took nothing): the rest is dropped like a full ring.
                Ok(_) => return Ok(self.tx_frames[k]),
                Err(e) if e.status() == Some(Status::BufferExhausted) => {
                    return Ok(self.tx_frames[k]);
                }
                Err(e) if e.status() == Some(Status::PacketTooBig) => {
                    self.refused_too_big += 1;
                    warn_limited!(
                        self.log,
                        len = self.tx.packet_len(k),
                        max = self.limits.max_packet(),
                        refused = self.refused_too_big,
                        "vmnet: the interface refused a TX frame as too big; dropping it"
                    );
                }
                Err(e) if k == 0 => return Err(to_io(e)),
                // Report what went before the failure rather than losing it.
                Err(_) => return Ok(self.tx_frames[k]),
            }
        }
        Ok(frames_len)
    }

    /// Lays out `frames` into the RX batch; returns how many frames it holds.
    fn fill_rx(&mut self, frames: &[RxFrame<'_, '_>]) -> io::Result<usize> {
        let max = self.limits.read_capacity();
        self.rx.clear();
        for (i, f) in frames.iter().enumerate() {
            let room: usize = f.bufs.iter().map(|s| s.len()).sum();
            if room < max {
                // vmnet needs room for a whole maximum-size packet in every buffer
                // (`vmnet_read`: "at least as large as" the maximum packet size; plus the
                // header in virtio-header mode).
                if i == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "guest RX buffer of {room} bytes is smaller than the {max} bytes \
                             a vmnet packet may need"
                        ),
                    ));
                }
                return Ok(i);
            }
            // The guard of a plain mmap region is a no-op; the pointer stays valid for `'m`.
            let iovs = f
                .bufs
                .iter()
                .map(|s| iovec_from(s.ptr_guard_mut().as_ptr(), s.len()));
            // Exactly the capacity vmnet may fill: a call's byte count stays what it needs.
            self.rx.push_capped(iovs, 0, max);
        }
        Ok(frames.len())
    }
}

impl Backend for VmnetBackend {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.notifier.as_fd()
    }

    fn recv(&mut self, frames: &mut [RxFrame<'_, '_>]) -> io::Result<usize> {
        // Clear before reading, so an event during the read wakes the worker again.
        self.notifier.consume()?;
        let read_max = self.iface.params().read_max_packets;
        let mut filled = 0;
        while filled < frames.len() {
            let want = batch_len(frames.len() - filled, read_max);
            let chunk = &mut frames[filled..filled + want];
            let usable = self.fill_rx(chunk)?;
            if usable == 0 {
                break;
            }
            // SAFETY: the iovecs describe the guest buffers of `chunk` (plain mmap guest memory,
            // valid for `'m`), handed to this backend for writing by the device, which does not
            // touch them until `recv` returns; no Rust reference aliases guest memory.
            let got = unsafe { self.iface.read_iovecs(&mut self.rx) }.map_err(to_io)?;
            for (i, f) in chunk[..got].iter_mut().enumerate() {
                f.len = self.rx.received_len(i);
            }
            filled += got;
            if got < usable || usable < want {
                // vmnet has nothing more, or the guest's buffers ran short.
                break;
            }
        }
        if filled < frames.len() && self.iface.wait_readable(Some(Duration::ZERO)) {
            // The binding still says packets may be pending: a read that vmnet cut short with an
            // error after some packets (or an event during the read, which fired the notifier
            // already). vmnet will not announce those packets again, so wake the worker for
            // them; the notifier is edge-triggered, so a wake-up that finds nothing costs one
            // pass.
            self.notifier.notify()?;
        }
        Ok(filled)
    }

    fn send(&mut self, frames: &[TxFrame<'_, '_>]) -> io::Result<usize> {
        self.tx.clear();
        self.tx_frames.clear();
        for (i, f) in frames.iter().enumerate() {
            if !self.limits.allows_write(f.len()) {
                self.dropped_oversize += 1;
                warn_limited!(
                    self.log,
                    len = f.len(),
                    max = self.limits.max_packet(),
                    dropped = self.dropped_oversize,
                    "vmnet: dropping a TX frame larger than the interface takes"
                );
                continue;
            }
            let iovs = f
                .bufs
                .iter()
                .map(|s| iovec_from(s.ptr_guard().as_ptr().cast_mut(), s.len()));
            if self.tx.push(iovs, 0).is_some() {
                self.tx_frames.push(i);
            }
        }
        if self.tx.is_empty() {
            return Ok(frames.len());
        }
        // SAFETY: the iovecs describe the guest buffers of `frames`: slices of guest memory
        // valid for `'m`, only read by vmnet, and not written by the device during `send`.
        let written = match unsafe { self.iface.write_iovecs(&mut self.tx) } {
            Ok(n) => n,
            // The host's queue is full: like a full NIC ring, the device drops the frames.
            Err(e) if e.status() == Some(Status::BufferExhausted) => 0,
            // vmnet's own size limit is below ours (it counts the header in the maximum packet
            // size after all, or refuses a TSO frame): find the packets it refuses.
            Err(e) if e.status() == Some(Status::PacketTooBig) => {
                return self.send_singly(frames.len());
            }
            Err(e) => return Err(to_io(e)),
        };
        // Frames before the first unwritten packet were sent or dropped on purpose.
        Ok(match self.tx_frames.get(written) {
            Some(&frame) => frame,
            None => frames.len(),
        })
    }

    fn set_rx_offloads(&mut self, guest: Offloads) -> io::Result<()> {
        // vmnet fixes offloads when the interface starts: the guest must take what it produces.
        super::fixed_rx_offloads(self.info.offloads, guest)
            .map_err(|m| io::Error::new(io::ErrorKind::Unsupported, m))
    }
}
