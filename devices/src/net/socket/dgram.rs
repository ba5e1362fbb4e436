//! The datagram socket backend: one Ethernet frame per datagram on a `SOCK_DGRAM` socket (QEMU's
//! `-netdev dgram`, and the protocol of vfkit, gvproxy and vmnet-helper).
//!
//! Connecting to a path binds the socket to an address of its own first (a file in the
//! temporary directory, removed when the backend is dropped), since the helper answers to the
//! sender's address; with the vfkit hello the backend then sends the 4 bytes `VFKT`, which
//! gvproxy waits for before it sends anything.
//!
//! Frames move straight between guest memory and the socket: `recvmmsg`/`sendmmsg` with one
//! message per frame on Linux, a `recvmsg`/`sendmsg` loop on macOS. A datagram longer than the
//! guest's buffers arrives cut (`MSG_TRUNC`) and is dropped ([`SocketStats::truncated`]); an
//! empty one is skipped ([`SocketStats::zero_length`]).
//!
//! A full socket (`EAGAIN`, or `ENOBUFS`, which macOS returns when the receiver's buffer is
//! full) is congestion: the backend waits a little for room and tries again, a bounded number
//! of times per call (under 2 ms in all), then leaves the rest of the batch untaken
//! ([`SocketStats::congestion_drops`], and the device's `tx_dropped`). A peer that went away
//! (`ECONNREFUSED` and the like) takes the link down; a backend connected to a path then looks
//! for it there once a second on a thread of its own (a guest whose link is down sends
//! nothing), which wakes the backend's poller when the path answers; the worker's
//! [`Backend::on_ready`] then connects the backend's socket again (with the hello), so a
//! restarted helper brings the link back up. The descriptor the worker polls is therefore a
//! poller of the backend's own, holding the socket and that thread's notifier.
//!
//! Listening ([`DgramBackend::listen`]) binds the socket at a path and links with the first
//! peer that sends to it (another VMM's `dgram:PATH`, whose hello makes it known at once): two
//! VMs linked without root and without a helper. The link is down until a peer is known, and
//! again after it went away, until the next one sends.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{
    Kind, MAX_IOVECS, RECONNECT_EVERY, Redial, SEND_FLAGS, SocketError, SocketOptions, SocketStats,
    bump, congested, peer_gone,
};
use crate::event::{Notifier, Poller, Token};
use crate::net::{Backend, BackendInfo, GuestSlice, Offloads, RxFrame, TxFrame};
use crate::ratelimit::RateLimit;
use crate::warn_limited;

/// The hello vfkit sends first on a datagram socket, which gvproxy waits for.
pub const VFKIT_HELLO: &[u8; 4] = b"VFKT";

/// Waits for room before giving up on the rest of a batch.
const CONGESTION_RETRIES: u32 = 4;

/// The socket, in the backend's own poller.
const SOCKET: Token = Token(0);
/// The redial thread found the peer at its path again.
const REDIALED: Token = Token(1);

/// A [`Backend`] on a datagram socket.
#[derive(Debug)]
pub struct DgramBackend {
    sock: OwnedFd,
    opts: SocketOptions,
    /// The peer's path, when connected to one: reconnected to after the peer went away.
    peer: Option<PathBuf>,
    /// Our own address, removed on drop.
    local: Option<PathBuf>,
    hello: bool,
    up: bool,
    /// Listening at `local` for the next peer to send.
    awaiting_peer: bool,
    last_reconnect: Option<Instant>,
    /// The poller the worker watches: the socket, and the notifier of `redial`.
    poller: Poller,
    /// Raised by the redial thread; registered in `poller` when connected to a path.
    ready: Option<Arc<Notifier>>,
    /// Looks for the lost peer at `peer` while the link is down.
    redial: Option<Redial>,
    stats: Arc<SocketStats>,
    log: RateLimit,
    /// Tests: fail the next sends with this error, this many times.
    #[cfg(test)]
    inject: Option<(i32, u32)>,
}

/// A fresh path for our own address.
fn local_path() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("vmm-net-{}-{n}.sock", std::process::id()))
}

impl DgramBackend {
    /// Binds a socket to an address of its own and connects it to the datagram socket at
    /// `path`; with `vfkit_hello`, sends [`VFKIT_HELLO`] first (gvproxy's vfkit mode needs it).
    pub fn connect(
        path: &Path,
        opts: SocketOptions,
        vfkit_hello: bool,
    ) -> Result<Self, SocketError> {
        let sock = super::new_socket(Kind::Dgram).map_err(super::io_err("socket"))?;
        let local = local_path();
        let (addr, len) = super::unix_addr(&local)?;
        // A file left by an earlier process that had our process ID.
        let _ = std::fs::remove_file(&local);
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
        if unsafe { libc::bind(sock.as_raw_fd(), (&raw const addr).cast(), len) } < 0 {
            return Err(SocketError::Io {
                what: "binding our own datagram address in the temporary directory",
                source: io::Error::last_os_error(),
            });
        }
        let mut b = Self::new(sock, opts, Some(local))?;
        b.peer = Some(path.to_owned());
        b.hello = vfkit_hello;
        let ready = Notifier::new().map_err(super::io_err("creating a notifier"))?;
        b.poller
            .add_notifier(&ready, REDIALED)
            .map_err(super::io_err("registering the notifier"))?;
        b.ready = Some(Arc::new(ready));
        super::connect_path(b.sock.as_fd(), path, Kind::Dgram)?;
        if vfkit_hello {
            b.send_hello()
                .map_err(super::io_err("sending the vfkit hello"))?;
        }
        Ok(b)
    }

    /// Binds a socket at `path` and links with the first peer that sends to it; until then the
    /// link is down. A socket file left at `path` by a process that is gone is replaced; a
    /// path in use, or that is not a socket, is refused.
    pub fn listen(path: &Path, opts: SocketOptions) -> Result<Self, SocketError> {
        use std::os::unix::fs::FileTypeExt;
        let (addr, len) = super::unix_addr(path)?;
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if !m.file_type().is_socket() {
                return Err(SocketError::NotASocketPath {
                    path: path.to_owned(),
                });
            }
            let probe = super::new_socket(Kind::Dgram).map_err(super::io_err("socket"))?;
            match super::connect_path(probe.as_fd(), path, Kind::Dgram) {
                Err(SocketError::Refused { .. }) => {
                    let _ = std::fs::remove_file(path);
                }
                _ => {
                    return Err(SocketError::InUse {
                        path: path.to_owned(),
                    });
                }
            }
        }
        let sock = super::new_socket(Kind::Dgram).map_err(super::io_err("socket"))?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
        if unsafe { libc::bind(sock.as_raw_fd(), (&raw const addr).cast(), len) } < 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EACCES) {
                SocketError::Permission {
                    path: path.to_owned(),
                }
            } else {
                SocketError::Io {
                    what: "binding the listening path",
                    source: e,
                }
            });
        }
        let mut b = Self::new(sock, opts, Some(path.to_owned()))?;
        b.up = false;
        b.awaiting_peer = true;
        Ok(b)
    }

    /// Receives one datagram into `frame` from whoever sends, and links with the sender.
    fn accept_peer(&mut self, frame: &mut RxFrame<'_, '_>) -> io::Result<usize> {
        let mut iovs = Vec::with_capacity(frame.bufs.len());
        let mut msgs = messages(std::iter::once(frame.bufs), &mut iovs);
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        let mut from: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        #[cfg(target_os = "linux")]
        let h = &mut msgs[0].msg_hdr;
        #[cfg(not(target_os = "linux"))]
        let h = &mut msgs[0];
        h.msg_name = (&raw mut from).cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: the message points to iovecs over guest memory checked against the memory
        // map and borrowed for the call, and to `from`, sized as said; the kernel writes at
        // most that much to each.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &raw mut *h, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if congested(&e) || e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let cut = h.msg_flags & libc::MSG_TRUNC != 0;
        let namelen = h.msg_namelen;
        drop(msgs);
        let family = std::mem::size_of::<libc::sa_family_t>() as libc::socklen_t;
        if namelen <= family {
            warn_limited!(
                self.log,
                "network datagram socket: a datagram from an unbound socket, which cannot be answered, was dropped"
            );
            frame.len = 0;
            return Ok(1);
        }
        // SAFETY: `from` holds the sender's address of `namelen` bytes, as the kernel wrote it.
        if unsafe { libc::connect(self.sock.as_raw_fd(), (&raw const from).cast(), namelen) } < 0 {
            let e = io::Error::last_os_error();
            warn_limited!(self.log, error = %e, "network datagram socket: cannot link with the sender");
            frame.len = 0;
            return Ok(1);
        }
        self.awaiting_peer = false;
        self.up = true;
        bump(&self.stats.reconnects, 1);
        tracing::info!("network datagram socket: a peer linked; the link is up");
        let n = n as usize;
        // The peer's hello is no frame.
        let hello = n == VFKIT_HELLO.len()
            && super::read_guest(frame.bufs, n).as_slice() == VFKIT_HELLO.as_slice();
        frame.len = if cut || hello { 0 } else { n };
        Ok(1)
    }

    /// Takes a connected datagram socket (one end of a `socketpair`, or a descriptor inherited
    /// from the process that started the VMM).
    pub fn from_fd(sock: OwnedFd, opts: SocketOptions) -> Result<Self, SocketError> {
        Self::new(sock, opts, None)
    }

    fn new(
        sock: OwnedFd,
        opts: SocketOptions,
        local: Option<PathBuf>,
    ) -> Result<Self, SocketError> {
        let poller = Poller::new().map_err(super::io_err("creating a poller"))?;
        let b = Self {
            sock,
            opts,
            peer: None,
            local,
            hello: false,
            up: true,
            awaiting_peer: false,
            last_reconnect: None,
            poller,
            ready: None,
            redial: None,
            stats: Arc::default(),
            log: RateLimit::new(Duration::from_secs(5), 5),
            #[cfg(test)]
            inject: None,
        };
        super::check_fd(b.sock.as_raw_fd(), Kind::Dgram)?;
        super::prepare(b.sock.as_fd(), Kind::Dgram)?;
        b.poller
            .add(b.sock.as_fd(), SOCKET)
            .map_err(super::io_err("registering the socket"))?;
        Ok(b)
    }

    /// The backend's counters, shared: keep a clone to read them once the device owns the
    /// backend.
    pub fn stats(&self) -> &Arc<SocketStats> {
        &self.stats
    }

    /// The address the backend bound to, if it bound one.
    pub fn local_path(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    fn send_hello(&self) -> io::Result<()> {
        // SAFETY: the hello is a live 4-byte buffer.
        let n = unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                VFKIT_HELLO.as_ptr().cast(),
                VFKIT_HELLO.len(),
                SEND_FLAGS,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn go_down(&mut self, e: &io::Error) {
        if self.up {
            self.up = false;
            bump(&self.stats.disconnects, 1);
            tracing::warn!(error = %e, "network datagram socket: the peer is gone; the link is down");
        }
        self.start_redial();
        if self.peer.is_none() && self.local.is_some() && !self.awaiting_peer {
            // Listening: forget the peer (connect to AF_UNSPEC) and wait for the next one.
            // SAFETY: sockaddr is plain data; all zeroes is AF_UNSPEC.
            let unspec: libc::sockaddr = unsafe { std::mem::zeroed() };
            // SAFETY: a valid sockaddr of the size passed.
            unsafe {
                libc::connect(
                    self.sock.as_raw_fd(),
                    &raw const unspec,
                    std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
                )
            };
            self.awaiting_peer = true;
        }
    }

    /// Starts looking for a lost peer at its path (connected to a path only): the guest, its
    /// link down, sends nothing that would make [`try_reconnect`](Self::try_reconnect) run.
    fn start_redial(&mut self) {
        if self.redial.is_some() {
            return;
        }
        let (Some(path), Some(ready)) = (&self.peer, &self.ready) else {
            return;
        };
        match Redial::start(path.clone(), Kind::Dgram, Arc::clone(ready)) {
            Ok(r) => self.redial = Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "network datagram socket: cannot look for the peer in the background");
            }
        }
    }

    /// Looks for a lost peer at its path again, at most once per [`RECONNECT_EVERY`].
    fn try_reconnect(&mut self) {
        let Some(path) = self.peer.clone() else {
            return;
        };
        let now = Instant::now();
        if self
            .last_reconnect
            .is_some_and(|t| now.duration_since(t) < RECONNECT_EVERY)
        {
            return;
        }
        self.last_reconnect = Some(now);
        if super::connect_path(self.sock.as_fd(), &path, Kind::Dgram).is_ok()
            && (!self.hello || self.send_hello().is_ok())
        {
            self.up = true;
            self.redial = None;
            bump(&self.stats.reconnects, 1);
            tracing::info!(path = %path.display(), "network datagram socket: the peer is back; the link is up");
        }
    }

    /// Sends messages from the first on (see [`send_batch`]); in tests, fails first as told.
    fn send_some(&mut self, msgs: &mut [Msg]) -> io::Result<usize> {
        #[cfg(test)]
        if let Some((errno, left)) = &mut self.inject
            && *left > 0
        {
            *left -= 1;
            return Err(io::Error::from_raw_os_error(*errno));
        }
        send_batch(self.sock.as_fd(), msgs)
    }

    /// Waits a little for room in the socket, longer at each `attempt`.
    fn wait_writable(&self, attempt: u32) {
        let wait = Duration::from_micros(100 << attempt);
        #[cfg(target_os = "linux")]
        {
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: wait.as_nanos() as libc::c_long,
            };
            // SAFETY: one valid pollfd and a timespec, both live across the call; a null signal
            // mask leaves the mask alone.
            unsafe { libc::ppoll(&raw mut pfd, 1, &raw const ts, std::ptr::null()) };
        }
        // macOS reports a datagram socket writable while its peer's buffer is full (sends
        // fail with ENOBUFS), so polling would return at once: sleep instead.
        #[cfg(not(target_os = "linux"))]
        std::thread::sleep(wait);
    }
}

impl Drop for DgramBackend {
    fn drop(&mut self) {
        if let Some(p) = &self.local {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The message type of a batch: `mmsghdr` where the system has `recvmmsg`/`sendmmsg`.
#[cfg(target_os = "linux")]
type Msg = libc::mmsghdr;
#[cfg(not(target_os = "linux"))]
type Msg = libc::msghdr;

fn new_msg(iov: *mut libc::iovec, iovlen: usize) -> Msg {
    // SAFETY: msghdr is plain data; all zeroes is a valid empty message.
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_iov = iov;
    h.msg_iovlen = iovlen as _;
    #[cfg(target_os = "linux")]
    {
        libc::mmsghdr {
            msg_hdr: h,
            msg_len: 0,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        h
    }
}

/// Builds one message per frame over `bufs`, with at most [`MAX_IOVECS`] iovecs each. The
/// iovecs live in `iovs`, which must not move while the messages are used.
fn messages<'s, 'm: 's>(
    frames: impl Iterator<Item = &'s [GuestSlice<'m>]>,
    iovs: &mut Vec<libc::iovec>,
) -> Vec<Msg> {
    let mut spans = Vec::new();
    for bufs in frames {
        let s = iovs.len();
        iovs.extend(bufs.iter().take(MAX_IOVECS).map(|b| libc::iovec {
            iov_base: b.ptr_guard_mut().as_ptr().cast(),
            iov_len: b.len(),
        }));
        spans.push((s, iovs.len() - s));
    }
    let base = iovs.as_mut_ptr();
    spans
        .into_iter()
        .map(|(s, n)| new_msg(base.wrapping_add(s), n))
        .collect()
}

/// Receives into `msgs`; returns how many datagrams came, with their lengths in `lens` and
/// whether each was cut.
fn recv_batch(
    fd: BorrowedFd<'_>,
    msgs: &mut [Msg],
    lens: &mut Vec<(usize, bool)>,
) -> io::Result<usize> {
    lens.clear();
    #[cfg(target_os = "linux")]
    {
        // SAFETY: every message points to iovecs over guest memory checked against the memory
        // map and borrowed for the call; the kernel writes at most iov_len bytes to each.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        lens.extend(msgs[..n].iter().map(|m| {
            (
                m.msg_len as usize,
                m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            )
        }));
        Ok(n)
    }
    #[cfg(not(target_os = "linux"))]
    {
        for m in msgs.iter_mut() {
            // SAFETY: as above, for one message.
            let n = unsafe { libc::recvmsg(fd.as_raw_fd(), m, libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return if lens.is_empty() {
                    Err(e)
                } else {
                    Ok(lens.len())
                };
            }
            lens.push((n as usize, m.msg_flags & libc::MSG_TRUNC != 0));
        }
        Ok(lens.len())
    }
}

/// Sends messages from the first on; returns how many went (at least one), or the error of
/// the first.
fn send_batch(fd: BorrowedFd<'_>, msgs: &mut [Msg]) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: every message points to iovecs over guest memory checked against the memory
        // map and borrowed for the call; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                SEND_FLAGS,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        for (i, m) in msgs.iter().enumerate() {
            // SAFETY: as above, for one message.
            let n = unsafe { libc::sendmsg(fd.as_raw_fd(), m, SEND_FLAGS) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return if i > 0 { Ok(i) } else { Err(e) };
            }
        }
        Ok(msgs.len())
    }
}

impl Backend for DgramBackend {
    fn info(&self) -> BackendInfo {
        self.opts.backend_info()
    }

    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.poller.as_fd()
    }

    fn on_ready(&mut self) -> io::Result<()> {
        // Empty the backend's own poller, or (on macOS) it would not report again.
        let mut events = Vec::with_capacity(4);
        while self.poller.wait(&mut events, Some(Duration::ZERO))? == events.capacity() {}
        if let Some(ready) = &self.ready {
            ready.consume()?;
        }
        // The redial thread reached the peer (its socket is of no use: ours has the address the
        // peer answers to): connect ours now.
        if !self.up && self.redial.as_ref().and_then(Redial::take).is_some() {
            self.redial = None;
            self.last_reconnect = None;
            self.try_reconnect();
            if !self.up {
                self.start_redial();
            }
        }
        Ok(())
    }

    fn recv(&mut self, frames: &mut [RxFrame<'_, '_>]) -> io::Result<usize> {
        if self.awaiting_peer {
            match frames.first_mut() {
                Some(f) => {
                    let n = self.accept_peer(f)?;
                    if n == 0 || self.awaiting_peer {
                        return Ok(n);
                    }
                    return Ok(n + self.recv(&mut frames[1..])?);
                }
                None => return Ok(0),
            }
        }
        let mut iovs = Vec::with_capacity(frames.len() * 2);
        let mut msgs = messages(frames.iter().map(|f| f.bufs), &mut iovs);
        let mut lens = Vec::with_capacity(frames.len());
        let n = loop {
            match recv_batch(self.sock.as_fd(), &mut msgs, &mut lens) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if congested(&e) => return Ok(0),
                Err(e) if peer_gone(&e) => {
                    self.go_down(&e);
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
        };
        drop(msgs);
        for (f, &(len, cut)) in frames.iter_mut().zip(&lens[..n]) {
            f.len = if cut {
                bump(&self.stats.truncated, 1);
                warn_limited!(
                    self.log,
                    len,
                    "network datagram socket: a frame larger than the guest's buffers was dropped"
                );
                0
            } else {
                if len == 0 {
                    bump(&self.stats.zero_length, 1);
                }
                len
            };
        }
        Ok(n)
    }

    fn send(&mut self, frames: &[TxFrame<'_, '_>]) -> io::Result<usize> {
        if !self.up {
            if self.awaiting_peer {
                return Ok(0);
            }
            self.try_reconnect();
            if !self.up {
                return Ok(0);
            }
        }
        let mut iovs = Vec::with_capacity(frames.len() * 2);
        let mut msgs = messages(frames.iter().map(|f| f.bufs), &mut iovs);
        // A frame in more pieces than one call takes would go out cut: it is dropped instead
        // (no guest driver builds one), and a batch stops before it.
        let too_many = |i: usize| frames[i].bufs.len() > MAX_IOVECS;
        let mut start = 0;
        let mut retries = 0;
        while start < msgs.len() {
            if too_many(start) {
                bump(&self.stats.oversized, 1);
                start += 1;
                continue;
            }
            let end = (start..msgs.len())
                .find(|&i| too_many(i))
                .unwrap_or(msgs.len());
            match self.send_some(&mut msgs[start..end]) {
                Ok(n) => start += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if congested(&e) => {
                    if retries < CONGESTION_RETRIES {
                        self.wait_writable(retries);
                        retries += 1;
                        continue;
                    }
                    let dropped = (msgs.len() - start) as u64;
                    bump(&self.stats.congestion_drops, dropped);
                    warn_limited!(
                        self.log,
                        dropped,
                        error = %e,
                        "network datagram socket: the peer does not keep up; frames dropped"
                    );
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    bump(&self.stats.oversized, 1);
                    warn_limited!(
                        self.log,
                        "network datagram socket: a frame too large for the socket was dropped"
                    );
                    start += 1;
                }
                Err(e) if peer_gone(&e) => {
                    self.go_down(&e);
                    break;
                }
                Err(e) if start > 0 => {
                    warn_limited!(self.log, error = %e, "network datagram socket: send failed");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        drop(msgs);
        Ok(start)
    }

    fn set_rx_offloads(&mut self, _offloads: Offloads) -> io::Result<()> {
        Ok(())
    }

    fn link_up(&self) -> bool {
        self.up
    }
}

#[cfg(test)]
mod tests;
