//! Backends on Unix sockets, for the user-mode network helpers that need no privilege in the
//! VMM: a stream socket with each frame behind a 4-byte big-endian length ([`stream`]; QEMU's
//! `-netdev stream`, passt, socket_vmnet) and a datagram socket with one frame per datagram
//! ([`dgram`]; QEMU's `-netdev dgram`, the protocol of vfkit, gvproxy and vmnet-helper).
//!
//! Both move frames straight between guest memory and the socket with gather/scatter calls
//! (`sendmsg`/`readv` for the stream; `recvmmsg`/`sendmmsg` on Linux, a `recvmsg`/`sendmsg` loop
//! on macOS for datagrams). A peer that goes away turns the link down ([`Backend::link_up`]),
//! which the device reports to the guest; frames sent meanwhile are dropped and counted.
//! Neither backend carries a virtio-net header: the frames are plain Ethernet.
//!
//! [`Backend::link_up`]: super::Backend::link_up

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::GuestSlice;
use crate::event::Notifier;

pub mod dgram;
pub mod framing;
pub mod stream;

/// The frame size the socket backends offer when not told otherwise: a 1500-byte MTU.
pub const DEFAULT_MTU: u16 = 1500;

/// Bytes of an Ethernet header with one VLAN tag: the frame limit is the MTU plus this.
const ETH_OVERHEAD: usize = 18;

/// At most this many iovecs per call (`UIO_MAXIOV` on Linux, `IOV_MAX` on macOS).
const MAX_IOVECS: usize = 1024;

/// Counters of a socket backend, beyond what the device counts itself (frames the backend did
/// not take show in the device's `tx_dropped`).
#[derive(Debug, Default)]
pub struct SocketStats {
    /// Frames of length 0 received, skipped.
    pub zero_length: AtomicU64,
    /// Frames received that did not fit the guest's buffers, dropped.
    pub truncated: AtomicU64,
    /// Guest frames dropped because the socket stayed full past the retry bound.
    pub congestion_drops: AtomicU64,
    /// Guest frames the socket refused as too large (`EMSGSIZE`), dropped.
    pub oversized: AtomicU64,
    /// Times the peer went away (the link went down).
    pub disconnects: AtomicU64,
    /// Times a lost peer was reached again (the link came back up).
    pub reconnects: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Settings shared by the socket backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// The link MTU offered to the guest; frames of up to MTU + 18 bytes are moved (an
    /// Ethernet header and a VLAN tag). Match the helper's: passt's `--mtu`, for example.
    pub mtu: u16,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self { mtu: DEFAULT_MTU }
    }
}

impl SocketOptions {
    /// The largest frame moved, Ethernet header included.
    pub fn max_frame_len(&self) -> usize {
        usize::from(self.mtu) + ETH_OVERHEAD
    }

    /// What a socket backend offers the device: plain Ethernet frames (no virtio-net header, so
    /// no offloads) of up to [`max_frame_len`](Self::max_frame_len), in batches of 64.
    pub(crate) fn backend_info(&self) -> super::BackendInfo {
        super::BackendInfo {
            vnet_hdr: false,
            offloads: super::Offloads::NONE,
            mtu: Some(self.mtu),
            mac: None,
            max_frame_len: self.max_frame_len(),
            rx_batch: 64,
            tx_batch: 64,
        }
    }
}

/// Which framing a socket carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `SOCK_STREAM`, frames behind a 4-byte length.
    Stream,
    /// `SOCK_DGRAM`, one frame per datagram.
    Dgram,
}

impl Kind {
    fn sock_type(self) -> libc::c_int {
        match self {
            Self::Stream => libc::SOCK_STREAM,
            Self::Dgram => libc::SOCK_DGRAM,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Dgram => "datagram",
        }
    }

    /// The other kind's `--net` form, to suggest when a socket turns out to be of that kind.
    fn other_form(self) -> &'static str {
        match self {
            Self::Stream => "dgram:",
            Self::Dgram => "stream:",
        }
    }
}

fn type_name(t: libc::c_int) -> &'static str {
    match t {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "raw or unknown",
    }
}

/// Errors setting up a socket backend, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The path does not fit in a `sockaddr_un`.
    #[error(
        "socket path {path:?} is {len} bytes, longer than the {max} a Unix socket address holds: use a shorter path"
    )]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The most `sun_path` takes (NUL excluded).
        max: usize,
    },
    /// Nothing at the path.
    #[error("no socket at {path:?}: start the network helper first, or check the path")]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// A socket file with nobody behind it.
    #[error(
        "nothing answers at {path:?} (a socket file left by a helper that exited?): restart the helper"
    )]
    Refused {
        /// The path.
        path: PathBuf,
    },
    /// The path is not a socket at all.
    #[error("{path:?} is not a socket: give the path of the helper's Unix socket")]
    NotASocketPath {
        /// The path.
        path: PathBuf,
    },
    /// The socket at the path is of the other kind.
    #[error("{path:?} is not a {want} socket: use --net {other}{path_display} instead", path_display = path.display())]
    WrongTypePath {
        /// The path.
        path: PathBuf,
        /// The kind asked for.
        want: &'static str,
        /// The other form.
        other: &'static str,
    },
    /// Another process listens at the path already.
    #[error("{path:?} is in use by another process: choose another path, or stop that process")]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// Not allowed to reach the path.
    #[error(
        "not allowed to connect to {path:?}: check the permissions of the socket and its directory"
    )]
    Permission {
        /// The path.
        path: PathBuf,
    },
    /// The descriptor is not open.
    #[error(
        "descriptor {fd} is not open: start the VMM with it inherited (e.g. from a socketpair made by the parent)"
    )]
    BadFd {
        /// The descriptor.
        fd: RawFd,
    },
    /// The descriptor is one the VMM itself uses.
    #[error(
        "descriptor {fd} is standard input, output or error: pass the socket as descriptor 3 or above"
    )]
    StdioFd {
        /// The descriptor.
        fd: RawFd,
    },
    /// The descriptor is not a socket.
    #[error("descriptor {fd} is not a socket: pass a connected stream or datagram socket")]
    NotASocketFd {
        /// The descriptor.
        fd: RawFd,
    },
    /// The descriptor's socket type is not the one asked for.
    #[error("descriptor {fd} is a {found} socket, not a {want} one: use fd:{fd},{hint}")]
    WrongTypeFd {
        /// The descriptor.
        fd: RawFd,
        /// The kind asked for.
        want: &'static str,
        /// The kind found.
        found: &'static str,
        /// The `fd:` suffix that matches.
        hint: &'static str,
    },
    /// Another system call failed.
    #[error("{what} failed")]
    Io {
        /// The step.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> SocketError {
    move |source| SocketError::Io { what, source }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// A Unix socket address for `path`.
pub(crate) fn unix_addr(path: &Path) -> Result<(libc::sockaddr_un, libc::socklen_t), SocketError> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    let max = addr.sun_path.len() - 1;
    if bytes.len() > max || bytes.is_empty() || bytes.contains(&0) {
        return Err(SocketError::PathTooLong {
            path: path.to_owned(),
            len: bytes.len(),
            max,
        });
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    #[cfg(target_os = "macos")]
    {
        addr.sun_len = len as u8;
    }
    Ok((addr, len as libc::socklen_t))
}

/// A new Unix socket of `kind`, close-on-exec.
fn new_socket(kind: Kind) -> io::Result<OwnedFd> {
    #[cfg(target_os = "linux")]
    let ty = kind.sock_type() | libc::SOCK_CLOEXEC;
    #[cfg(not(target_os = "linux"))]
    let ty = kind.sock_type();
    // SAFETY: socket takes no pointers; the result is checked and owned below.
    let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, ty, 0) })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    #[cfg(not(target_os = "linux"))]
    {
        // SAFETY: F_SETFD takes an int argument; no memory is passed.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    Ok(fd)
}

/// Connects `fd` to the socket at `path`, with errors that say what to do.
pub(crate) fn connect_path(fd: BorrowedFd<'_>, path: &Path, kind: Kind) -> Result<(), SocketError> {
    use std::os::unix::fs::FileTypeExt;
    let (addr, len) = unix_addr(path)?;
    if std::fs::metadata(path).is_ok_and(|m| !m.file_type().is_socket()) {
        return Err(SocketError::NotASocketPath {
            path: path.to_owned(),
        });
    }
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
    let r = unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    let path = path.to_owned();
    Err(match errno(&e) {
        libc::ENOENT => SocketError::NotFound { path },
        libc::ECONNREFUSED => SocketError::Refused { path },
        libc::ENOTSOCK => SocketError::NotASocketPath { path },
        libc::EPROTOTYPE => SocketError::WrongTypePath {
            path,
            want: kind.name(),
            other: kind.other_form(),
        },
        libc::EACCES | libc::EPERM => SocketError::Permission { path },
        _ => SocketError::Io {
            what: "connect",
            source: e,
        },
    })
}

/// Makes a connected socket ready for a backend: non-blocking, no `SIGPIPE` where the system
/// has the socket option for it (macOS; Linux takes `MSG_NOSIGNAL` per send), larger buffers
/// when the system allows (best effort: a full buffer costs drops, and frames come in bursts).
pub(crate) fn prepare(fd: BorrowedFd<'_>, kind: Kind) -> Result<(), SocketError> {
    let raw = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL take an int argument; no memory is passed.
    let flags = cvt(unsafe { libc::fcntl(raw, libc::F_GETFL) }).map_err(io_err("fcntl"))?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) })
        .map_err(io_err("fcntl"))?;
    #[cfg(target_os = "macos")]
    set_int_opt(raw, libc::SO_NOSIGPIPE, 1).map_err(io_err("setsockopt(SO_NOSIGPIPE)"))?;
    let (snd, rcv) = match kind {
        Kind::Stream => (1 << 20, 1 << 20),
        Kind::Dgram => (1 << 20, 4 << 20),
    };
    let _ = set_int_opt(raw, libc::SO_SNDBUF, snd);
    let _ = set_int_opt(raw, libc::SO_RCVBUF, rcv);
    Ok(())
}

fn set_int_opt(fd: RawFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a live int of the size passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Checks that an inherited descriptor is an open socket of `kind`, other than standard input,
/// output and error, before anything takes ownership of it.
pub fn check_fd(fd: RawFd, kind: Kind) -> Result<(), SocketError> {
    if (0..=2).contains(&fd) {
        return Err(SocketError::StdioFd { fd });
    }
    // SAFETY: F_GETFD takes no argument; any int is a valid query.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(SocketError::BadFd { fd });
    }
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `ty` and `len` are live and sized for SO_TYPE's int value.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut ty).cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(if errno(&e) == libc::ENOTSOCK {
            SocketError::NotASocketFd { fd }
        } else {
            SocketError::Io {
                what: "getsockopt(SO_TYPE)",
                source: e,
            }
        });
    }
    if ty != kind.sock_type() {
        return Err(SocketError::WrongTypeFd {
            fd,
            want: kind.name(),
            found: type_name(ty),
            hint: match ty {
                libc::SOCK_STREAM => "stream",
                _ => "dgram",
            },
        });
    }
    Ok(())
}

/// The flags of every send: never block, and no `SIGPIPE` on Linux (macOS sets `SO_NOSIGPIPE`
/// in [`prepare`] instead, having no `MSG_NOSIGNAL`).
#[cfg(target_os = "linux")]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "linux"))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// Appends iovecs for `bufs` to `iov`, skipping the first `skip` bytes and stopping after
/// `take` bytes; returns how many bytes they cover.
fn push_iovecs(
    bufs: &[GuestSlice<'_>],
    mut skip: usize,
    mut take: usize,
    iov: &mut Vec<libc::iovec>,
) -> usize {
    let mut covered = 0;
    for b in bufs {
        if take == 0 {
            break;
        }
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        let n = (b.len() - skip).min(take);
        iov.push(libc::iovec {
            // SAFETY: `skip < b.len()`, so the pointer stays inside the slice.
            iov_base: unsafe { b.ptr_guard_mut().as_ptr().add(skip) }.cast(),
            iov_len: n,
        });
        covered += n;
        take -= n;
        skip = 0;
    }
    covered
}

/// Total length of guest buffers.
fn capacity(bufs: &[GuestSlice<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Copies `bytes` into guest buffers, as many as fit.
fn write_guest(bufs: &[GuestSlice<'_>], bytes: &[u8]) {
    let mut rest = bytes;
    for b in bufs {
        if rest.is_empty() {
            break;
        }
        let k = rest.len().min(b.len());
        b.copy_from(&rest[..k]);
        rest = &rest[k..];
    }
}

/// Copies the first `len` bytes of guest buffers (fewer if they are shorter).
fn read_guest(bufs: &[GuestSlice<'_>], len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len.min(capacity(bufs))];
    let mut off = 0;
    for b in bufs {
        if off == v.len() {
            break;
        }
        let k = (v.len() - off).min(b.len());
        b.copy_to(&mut v[off..off + k]);
        off += k;
    }
    v
}

/// How often a lost peer at a path is looked for again.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// A thread that looks for a lost peer at its path once per [`RECONNECT_EVERY`], hands over
/// the first socket of `kind` that connects to it and raises `ready` (which the backend's
/// poller watches). A guest whose link is down sends nothing, so a backend cannot wait for a
/// send to try again. Dropping it stops the thread.
#[derive(Debug)]
pub(crate) struct Redial {
    stop: Arc<Notifier>,
    found: Arc<Mutex<Option<OwnedFd>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Redial {
    pub(crate) fn start(path: PathBuf, kind: Kind, ready: Arc<Notifier>) -> io::Result<Self> {
        let stop = Arc::new(Notifier::new()?);
        let found = Arc::new(Mutex::new(None));
        let (halt, slot) = (Arc::clone(&stop), Arc::clone(&found));
        let thread = std::thread::Builder::new()
            .name("net-socket-redial".into())
            .spawn(move || {
                // A failing wait ends the thread rather than letting it spin.
                while let Ok(false) = halt.wait_timeout(RECONNECT_EVERY) {
                    let Ok(sock) = new_socket(kind) else {
                        continue;
                    };
                    if connect_path(sock.as_fd(), &path, kind).is_ok() {
                        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(sock);
                        let _ = ready.notify();
                        return;
                    }
                }
            })?;
        Ok(Self {
            stop,
            found,
            thread: Some(thread),
        })
    }

    /// The connected socket, once the thread found the peer.
    pub(crate) fn take(&self) -> Option<OwnedFd> {
        self.found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl Drop for Redial {
    fn drop(&mut self) {
        let _ = self.stop.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Errors that mean the peer is gone.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        errno(e),
        libc::EPIPE
            | libc::ECONNRESET
            | libc::ECONNREFUSED
            | libc::ENOTCONN
            | libc::EDESTADDRREQ
            | libc::ECONNABORTED
    )
}

/// Errors that mean the socket (or its peer's queue) is full for now.
fn congested(e: &io::Error) -> bool {
    matches!(errno(e), libc::EAGAIN | libc::ENOBUFS)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Guest memory and frames for the socket backends' tests.

    use vm_memory::{GuestAddress, GuestMemoryBackend};

    use crate::net::{Backend, GuestSlice, RxFrame, TxFrame};
    use crate::virtio::GuestMemory;

    pub fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    /// Slices of `lens` bytes each, one after another from `at`.
    pub fn slices<'m>(mem: &'m GuestMemory, at: u64, lens: &[usize]) -> Vec<GuestSlice<'m>> {
        let mut a = at;
        lens.iter()
            .map(|&l| {
                let s = mem.get_slice(GuestAddress(a), l).unwrap();
                a += l as u64;
                s
            })
            .collect()
    }

    pub fn read(bufs: &[GuestSlice<'_>], len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for b in bufs {
            let mut tmp = vec![0u8; b.len()];
            b.copy_to(&mut tmp);
            v.extend_from_slice(&tmp);
        }
        v.truncate(len);
        v
    }

    pub fn write(bufs: &[GuestSlice<'_>], bytes: &[u8]) {
        let mut rest = bytes;
        for b in bufs {
            let k = rest.len().min(b.len());
            b.copy_from(&rest[..k]);
            rest = &rest[k..];
        }
        assert!(rest.is_empty());
    }

    /// Receives with `b` into `count` frames of two buffers each (100 bytes, then `cap - 100`),
    /// laid out from `at`; returns the frames as filled (dropped ones empty).
    pub fn recv_frames(
        b: &mut dyn Backend,
        mem: &GuestMemory,
        at: u64,
        count: usize,
        cap: usize,
    ) -> Vec<Vec<u8>> {
        let bufs: Vec<_> = (0..count)
            .map(|i| slices(mem, at + (i * cap) as u64, &[100, cap - 100]))
            .collect();
        let mut frames: Vec<RxFrame<'_, '_>> =
            bufs.iter().map(|s| RxFrame { bufs: s, len: 0 }).collect();
        let n = b.recv(&mut frames).unwrap();
        frames[..n].iter().map(|f| read(f.bufs, f.len)).collect()
    }

    /// Sends `data` with `b` as frames of two guest buffers each (up to 14 bytes, then the
    /// rest), laid out from 0x8_0000; returns how many frames `b` took.
    pub fn send_frames(b: &mut dyn Backend, mem: &GuestMemory, data: &[Vec<u8>]) -> usize {
        let mut at = 0x8_0000u64;
        let bufs: Vec<_> = data
            .iter()
            .map(|d| {
                let first = d.len().min(14);
                let s = slices(mem, at, &[first, d.len() - first]);
                write(&s, d);
                at += d.len() as u64;
                s
            })
            .collect();
        let frames: Vec<TxFrame<'_, '_>> = bufs.iter().map(|s| TxFrame { bufs: s }).collect();
        b.send(&frames).unwrap()
    }
}
