//! The stream socket backend: frames behind a 4-byte big-endian length on a `SOCK_STREAM`
//! socket (QEMU's `-netdev stream`, passt, socket_vmnet).
//!
//! Receiving: one `readv` per frame takes the rest of the current frame straight into the
//! guest's buffers and the next length prefix into the [`Decoder`]'s room, so a steady stream
//! costs one call per frame. A frame split across reads is resumed on the next call; if the
//! guest's buffers change in between, the bytes already read move with it (a copy only in that
//! case). A frame longer than the guest's buffers is read and dropped
//! ([`SocketStats::truncated`]); frames of length 0 are skipped
//! ([`SocketStats::zero_length`]); a length above the frame limit closes the connection.
//!
//! Sending: one `sendmsg` gathers the prefixes and the guest's buffers of a whole batch. If the
//! socket takes only part of a frame, the rest is copied aside and sent before anything else,
//! so frames are never interleaved; meanwhile the backend watches the socket for room, and the
//! worker's call to [`Backend::on_ready`] finishes the frame. Frames that find the socket full
//! are not taken (the device counts them as dropped).
//!
//! The descriptor the worker polls is a poller of the backend's own holding the socket, so that
//! write readiness is watched only while a frame is half sent.
//!
//! A peer that goes away takes the link down. A backend connected to a path then looks for the
//! peer there again, once a second, on a thread of its own (a guest whose link is down sends
//! nothing, so sends cannot be what drives it); when a connection succeeds the thread wakes the
//! backend's poller, and the worker's next [`Backend::on_ready`] takes the new connection and
//! brings the link up (a restarted passt or socket_vmnet). A backend on an inherited descriptor
//! stays down.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::framing::{self, Decoder, LEN_BYTES};
use super::{
    Kind, MAX_IOVECS, Redial, SEND_FLAGS, SocketError, SocketOptions, SocketStats, bump, capacity,
    congested, peer_gone, push_iovecs,
};
use crate::event::{Notifier, Poller, Token};
use crate::net::{Backend, BackendInfo, GuestSlice, Offloads, RxFrame, TxFrame};

const SOCKET: Token = Token(0);
/// The redial thread found the peer again.
const REDIALED: Token = Token(1);

/// A [`Backend`] on a stream socket.
#[derive(Debug)]
pub struct StreamBackend {
    sock: OwnedFd,
    poller: Poller,
    opts: SocketOptions,
    decoder: Decoder,
    /// Bytes of the frame being received that an earlier call took from the socket.
    partial: Vec<u8>,
    /// The frame being received does not fit the guest's buffers: it is read into `discard`.
    dropping: bool,
    discard: Vec<u8>,
    zero_seen: u64,
    /// The unsent rest of a frame the socket took only part of, and how much of it went.
    pending: Vec<u8>,
    pending_off: usize,
    watching_writable: bool,
    up: bool,
    stats: Arc<SocketStats>,
    /// The peer's path and the notifier the redial thread raises, when connected to a path.
    peer: Option<(PathBuf, Arc<Notifier>)>,
    redial: Option<Redial>,
}

impl StreamBackend {
    /// Connects to the stream socket at `path`.
    pub fn connect(path: &Path, opts: SocketOptions) -> Result<Self, SocketError> {
        let sock = super::new_socket(Kind::Stream).map_err(super::io_err("socket"))?;
        super::connect_path(sock.as_fd(), path, Kind::Stream)?;
        let mut b = Self::from_fd(sock, opts)?;
        let ready = Notifier::new().map_err(super::io_err("creating a notifier"))?;
        b.poller
            .add_notifier(&ready, REDIALED)
            .map_err(super::io_err("registering the notifier"))?;
        b.peer = Some((path.to_owned(), Arc::new(ready)));
        Ok(b)
    }

    /// Takes a connected stream socket (one end of a `socketpair`, or a descriptor inherited
    /// from the process that started the VMM).
    pub fn from_fd(sock: OwnedFd, opts: SocketOptions) -> Result<Self, SocketError> {
        super::check_fd(sock.as_raw_fd(), Kind::Stream)?;
        super::prepare(sock.as_fd(), Kind::Stream)?;
        let poller = Poller::new().map_err(super::io_err("creating a poller"))?;
        poller
            .add(sock.as_fd(), SOCKET)
            .map_err(super::io_err("registering the socket"))?;
        Ok(Self {
            sock,
            poller,
            decoder: Decoder::new(opts.max_frame_len()),
            opts,
            partial: Vec::new(),
            dropping: false,
            discard: Vec::new(),
            zero_seen: 0,
            pending: Vec::new(),
            pending_off: 0,
            watching_writable: false,
            up: true,
            stats: Arc::default(),
            peer: None,
            redial: None,
        })
    }

    /// The backend's counters, shared: keep a clone to read them once the device owns the
    /// backend.
    pub fn stats(&self) -> &Arc<SocketStats> {
        &self.stats
    }

    /// Bytes of a half-sent frame still waiting for room in the socket.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len() - self.pending_off
    }

    /// The peer is gone or broke the protocol: the link goes down for good and the connection
    /// is shut so that the peer sees it closed.
    fn go_down(&mut self, why: &dyn std::fmt::Display) {
        if !self.up {
            return;
        }
        self.up = false;
        bump(&self.stats.disconnects, 1);
        self.pending.clear();
        self.pending_off = 0;
        self.partial.clear();
        tracing::warn!("network stream socket: {why}; the link is down");
        // SAFETY: shutdown takes no pointers; the descriptor is ours.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some((path, ready)) = &self.peer {
            match Redial::start(path.clone(), Kind::Stream, Arc::clone(ready)) {
                Ok(r) => {
                    self.redial = Some(r);
                    tracing::info!(path = %path.display(), "network stream socket: looking for the peer again once a second");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "network stream socket: cannot look for the peer again; the link stays down");
                }
            }
        }
    }

    /// Takes a connection the redial thread made: the link comes back up, with a fresh decoder.
    fn take_redialed(&mut self) -> io::Result<()> {
        let Some(sock) = self.redial.as_ref().and_then(Redial::take) else {
            return Ok(());
        };
        self.redial = None;
        super::prepare(sock.as_fd(), Kind::Stream).map_err(io::Error::other)?;
        // The old socket leaves the poller before it is closed.
        let _ = self.poller.remove(self.sock.as_fd());
        self.poller.add(sock.as_fd(), SOCKET)?;
        self.sock = sock;
        self.decoder = Decoder::new(self.opts.max_frame_len());
        self.zero_seen = 0;
        self.partial.clear();
        self.dropping = false;
        self.pending.clear();
        self.pending_off = 0;
        self.watching_writable = false;
        self.up = true;
        bump(&self.stats.reconnects, 1);
        tracing::info!("network stream socket: the peer is back; the link is up");
        Ok(())
    }

    fn watch_writable(&mut self, on: bool) -> io::Result<()> {
        if self.watching_writable != on {
            self.poller.watch_writable(self.sock.as_fd(), SOCKET, on)?;
            self.watching_writable = on;
        }
        Ok(())
    }

    /// Sends what is left of a half-sent frame, as far as the socket takes it.
    fn flush(&mut self) -> io::Result<()> {
        while self.pending_off < self.pending.len() {
            let rest = &self.pending[self.pending_off..];
            // SAFETY: `rest` is a live buffer of `rest.len()` bytes.
            let n = unsafe {
                libc::send(
                    self.sock.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    SEND_FLAGS,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if congested(&e) {
                    return self.watch_writable(true);
                }
                if peer_gone(&e) {
                    self.go_down(&"the peer closed the connection");
                    return Ok(());
                }
                return Err(e);
            }
            self.pending_off += n as usize;
        }
        self.pending.clear();
        self.pending_off = 0;
        self.watch_writable(false)
    }

    fn sync_zero_length(&mut self) {
        let z = self.decoder.zero_length_frames();
        if z > self.zero_seen {
            bump(&self.stats.zero_length, z - self.zero_seen);
            self.zero_seen = z;
        }
    }

    /// Reads the next frame into `bufs`: `Some(len)` when one completed (0 if it was
    /// dropped), `None` when nothing more can be read now.
    fn read_frame(&mut self, bufs: &[GuestSlice<'_>]) -> io::Result<Option<usize>> {
        let cap = capacity(bufs);
        if !self.partial.is_empty() {
            if self.partial.len() <= cap {
                super::write_guest(bufs, &self.partial);
            } else {
                // Smaller buffers than the frame had begun in: it cannot fit any more.
                self.dropping = true;
            }
            self.partial.clear();
        }
        loop {
            if let Some(e) = self.decoder.failed() {
                self.go_down(&format_args!("{e}; closing the connection"));
                return Ok(None);
            }
            let body = self.decoder.body();
            let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len() + 2);
            if let Some((len, have)) = body {
                if !self.dropping && len > cap {
                    self.dropping = true;
                }
                if self.dropping {
                    if self.discard.len() < len {
                        self.discard.resize(len, 0);
                    }
                    iov.push(libc::iovec {
                        iov_base: self.discard[have..len].as_mut_ptr().cast(),
                        iov_len: len - have,
                    });
                } else {
                    push_iovecs(bufs, have, len - have, &mut iov);
                }
            }
            let room = self.decoder.header_room();
            iov.push(libc::iovec {
                iov_base: room.as_mut_ptr().cast(),
                iov_len: room.len(),
            });
            // SAFETY: each iovec describes either guest memory checked against the memory map
            // and borrowed for the call, or a live buffer of this backend; the kernel writes at
            // most iov_len bytes to each.
            let n = unsafe {
                libc::readv(
                    self.sock.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                )
            };
            drop(iov);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if congested(&e) {
                    // Keep what came of a frame the guest's buffers will not hold until the
                    // next call: those may be other buffers.
                    if let Some((_, have)) = self.decoder.body()
                        && !self.dropping
                        && have > 0
                    {
                        self.partial = super::read_guest(bufs, have);
                    }
                    return Ok(None);
                }
                if peer_gone(&e) {
                    self.go_down(&"the peer reset the connection");
                    return Ok(None);
                }
                return Err(e);
            }
            if n == 0 {
                self.go_down(&"the peer closed the connection");
                return Ok(None);
            }
            let done = self.decoder.advance(n as usize);
            self.sync_zero_length();
            if let Some(len) = done {
                if std::mem::take(&mut self.dropping) {
                    bump(&self.stats.truncated, 1);
                    return Ok(Some(0));
                }
                return Ok(Some(len));
            }
        }
    }

    /// Keeps bytes `from..` of a frame (prefix, then its bytes) to send before anything else.
    fn keep_rest(&mut self, hdr: [u8; LEN_BYTES], bufs: &[GuestSlice<'_>], from: usize) {
        let body = super::read_guest(bufs, capacity(bufs));
        self.pending = framing::unsent(hdr, &body, from);
        self.pending_off = 0;
    }
}

impl Backend for StreamBackend {
    fn info(&self) -> BackendInfo {
        self.opts.backend_info()
    }

    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.poller.as_fd()
    }

    fn recv(&mut self, frames: &mut [RxFrame<'_, '_>]) -> io::Result<usize> {
        let mut filled = 0;
        while self.up && filled < frames.len() {
            match self.read_frame(frames[filled].bufs) {
                Ok(Some(len)) => {
                    frames[filled].len = len;
                    filled += 1;
                }
                Ok(None) => break,
                Err(e) if filled > 0 => {
                    tracing::debug!(error = %e, "network stream socket: receive failed");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    fn send(&mut self, frames: &[TxFrame<'_, '_>]) -> io::Result<usize> {
        if self.up && self.pending_bytes() > 0 {
            self.flush()?;
        }
        if !self.up || self.pending_bytes() > 0 {
            return Ok(0);
        }
        let mut start = 0;
        while self.up && start < frames.len() {
            // A frame gathered from more pieces than a call takes: dropped (no guest driver
            // builds one; a guest that does loses that frame only).
            if frames[start].bufs.len() >= MAX_IOVECS {
                bump(&self.stats.oversized, 1);
                start += 1;
                continue;
            }
            let mut hdrs: Vec<[u8; LEN_BYTES]> = Vec::new();
            let mut lens = Vec::new();
            let mut iovs = 0;
            for f in &frames[start..] {
                if iovs + 1 + f.bufs.len() > MAX_IOVECS {
                    break;
                }
                iovs += 1 + f.bufs.len();
                let len = f.len();
                lens.push(len);
                hdrs.push(framing::header(len).unwrap_or([0xff; LEN_BYTES]));
            }
            let mut iov: Vec<libc::iovec> = Vec::with_capacity(iovs);
            for (f, h) in frames[start..].iter().zip(&hdrs) {
                iov.push(libc::iovec {
                    iov_base: h.as_ptr().cast_mut().cast(),
                    iov_len: LEN_BYTES,
                });
                push_iovecs(f.bufs, 0, usize::MAX, &mut iov);
            }
            // SAFETY: msghdr is plain data; all zeroes is a valid empty message.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len() as _;
            // SAFETY: the iovecs describe guest memory checked against the memory map and
            // borrowed for the call, or the prefixes in `hdrs`; the kernel only reads them.
            let n = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &raw const msg, SEND_FLAGS) };
            drop(iov);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if congested(&e) {
                    break;
                }
                if peer_gone(&e) {
                    self.go_down(&"the peer closed the connection");
                    break;
                }
                if start > 0 {
                    break;
                }
                return Err(e);
            }
            let (whole, part) = framing::written(lens.iter().copied(), n as usize);
            let batch = lens.len();
            if let Some(k) = part {
                let cut = start + whole;
                self.keep_rest(hdrs[whole], frames[cut].bufs, k);
                start = cut + 1;
                self.flush()?;
                break;
            }
            start += whole;
            if whole < batch {
                break;
            }
        }
        Ok(start)
    }

    fn set_rx_offloads(&mut self, _offloads: Offloads) -> io::Result<()> {
        Ok(())
    }

    fn link_up(&self) -> bool {
        self.up
    }

    fn on_ready(&mut self) -> io::Result<()> {
        // Empty the backend's own poller, or (on macOS) it would not report again.
        let mut events = Vec::with_capacity(4);
        while self.poller.wait(&mut events, Some(Duration::ZERO))? == events.capacity() {}
        if !self.up {
            if let Some((_, ready)) = &self.peer {
                ready.consume()?;
            }
            self.take_redialed()?;
        }
        if self.up && self.pending_bytes() > 0 {
            self.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
