//! The Unix datagram socket of `vmnet-dgram`: bound at a path or inherited, and batched sends and
//! receives of one frame per datagram (`sendmmsg`/`recvmmsg` on Linux, a `sendmsg`/`recvmsg`
//! loop on macOS, which has no public batched calls), straight from and into the server's frame
//! buffers.

use std::io;
use std::mem::{offset_of, size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A Unix socket address (a peer's or our own).
#[derive(Clone, Copy)]
pub struct Addr {
    raw: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl Addr {
    /// The empty address, for the kernel to fill.
    fn empty() -> Self {
        Self {
            // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) value.
            raw: unsafe { zeroed() },
            len: size_of::<libc::sockaddr_un>() as libc::socklen_t,
        }
    }

    /// The address of `path`, or why it cannot be one.
    pub fn of_path(path: &Path) -> Result<Self, String> {
        use std::os::unix::ffi::OsStrExt;
        let mut a = Self::empty();
        let bytes = path.as_os_str().as_bytes();
        let max = a.raw.sun_path.len() - 1;
        if bytes.is_empty() || bytes.len() > max || bytes.contains(&0) {
            return Err(format!(
                "socket path {} is {} bytes: a Unix socket path has 1 to {max}; use a shorter one",
                path.display(),
                bytes.len()
            ));
        }
        a.raw.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, &s) in a.raw.sun_path.iter_mut().zip(bytes) {
            *d = s as libc::c_char;
        }
        let len = offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
        #[cfg(target_os = "macos")]
        {
            a.raw.sun_len = len as u8;
        }
        a.len = len as libc::socklen_t;
        Ok(a)
    }

    /// The bytes of the path (or abstract name), without the trailing NUL.
    fn name(&self) -> &[libc::c_char] {
        let n = (self.len as usize)
            .saturating_sub(offset_of!(libc::sockaddr_un, sun_path))
            .min(self.raw.sun_path.len());
        let name = &self.raw.sun_path[..n];
        match name.iter().position(|&c| c == 0) {
            // A path ends at its NUL; an abstract name (Linux) starts with one and is all bytes.
            Some(i) if i > 0 => &name[..i],
            _ => name,
        }
    }

    /// Whether a reply can reach this sender (an unbound socket has no address).
    pub fn is_addressable(&self) -> bool {
        self.name().first().is_some_and(|&c| c != 0)
            || (cfg!(target_os = "linux") && self.name().len() > 1)
    }

    /// The address for messages.
    fn as_ptr(&self) -> *mut libc::c_void {
        (&raw const self.raw).cast_mut().cast()
    }
}

impl PartialEq for Addr {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl std::fmt::Debug for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes: Vec<u8> = self.name().iter().map(|&c| c as u8).collect();
        write!(f, "{:?}", String::from_utf8_lossy(&bytes))
    }
}

/// The server's socket.
#[derive(Debug)]
pub struct Sock {
    fd: OwnedFd,
    /// The path we bound, removed on drop.
    bound: Option<PathBuf>,
    /// Connected to its peer (a socketpair end, or a connected inherited socket).
    pub connected: bool,
}

impl Drop for Sock {
    fn drop(&mut self) {
        if let Some(p) = &self.bound {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn set_int_opt(fd: RawFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a live int of the size passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Makes the socket non-blocking and gives it large buffers. On macOS a Unix datagram may be
/// no larger than the sender's send buffer (2 KiB by default, `net.local.dgram.maxdgram`), so
/// the send buffer must hold the largest frame; receive room absorbs bursts. `SIGPIPE` is
/// turned off on macOS (Linux takes `MSG_NOSIGNAL` per send).
fn prepare(fd: RawFd, max_frame: usize) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take an int argument; no memory is passed.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    // SAFETY: F_SETFD takes an int argument.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    #[cfg(target_os = "macos")]
    set_int_opt(fd, libc::SO_NOSIGPIPE, 1)?;
    let snd = (max_frame * 16).max(1 << 20);
    let snd = libc::c_int::try_from(snd).unwrap_or(libc::c_int::MAX);
    set_int_opt(fd, libc::SO_SNDBUF, snd)?;
    // Best effort: a smaller receive buffer costs drops in bursts, not function.
    let _ = set_int_opt(fd, libc::SO_RCVBUF, 4 << 20);
    Ok(())
}

impl Sock {
    /// Binds a new datagram socket at `path`, which must not exist.
    pub fn bind(path: &Path, max_frame: usize) -> Result<Self, String> {
        let addr = Addr::of_path(path)?;
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(format!(
                "{} exists: remove it if no other server uses it (rm {}), or choose another path",
                path.display(),
                path.display()
            ));
        }
        // SAFETY: socket takes no pointers; the result is checked and owned below.
        let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0) })
            .map_err(|e| format!("socket(AF_UNIX, SOCK_DGRAM): {e}"))?;
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes that outlives the call.
        if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr.raw).cast(), addr.len) } < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EACCES | libc::EPERM) => format!(
                    "cannot create {}: permission denied (check the directory's permissions)",
                    path.display()
                ),
                Some(libc::ENOENT | libc::ENOTDIR) => format!(
                    "cannot create {}: its directory does not exist",
                    path.display()
                ),
                _ => format!("cannot bind {}: {e}", path.display()),
            });
        }
        let sock = Self {
            fd,
            bound: Some(path.to_owned()),
            connected: false,
        };
        prepare(sock.fd.as_raw_fd(), max_frame)
            .map_err(|e| format!("setting up the socket at {}: {e}", path.display()))?;
        give_to_sudo_user(path)?;
        Ok(sock)
    }

    /// Takes the inherited descriptor `fd`: a Unix datagram socket, connected or bound.
    pub fn from_fd(fd: RawFd, max_frame: usize) -> Result<Self, String> {
        if (0..=2).contains(&fd) {
            return Err(format!(
                "--fd {fd} is standard input, output or error: pass the socket as descriptor 3 or above"
            ));
        }
        // SAFETY: F_GETFD takes no argument; any int is a valid query.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(format!(
                "--fd {fd} is not open: start vmnet-dgram with the socket inherited as descriptor {fd}"
            ));
        }
        let mut ty: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
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
            return Err(format!(
                "--fd {fd} is not a socket: pass a Unix datagram socket"
            ));
        }
        let mut local = Addr::empty();
        // SAFETY: `local` is a live sockaddr_un of the length passed.
        let family_ok =
            unsafe { libc::getsockname(fd, (&raw mut local.raw).cast(), &raw mut local.len) } == 0
                && i32::from(local.raw.sun_family) == libc::AF_UNIX;
        if ty != libc::SOCK_DGRAM || !family_ok {
            return Err(format!(
                "--fd {fd} is not a Unix datagram socket (make it with socketpair(AF_UNIX, SOCK_DGRAM) or bind one)"
            ));
        }
        let mut peer = Addr::empty();
        // SAFETY: as above.
        let connected =
            unsafe { libc::getpeername(fd, (&raw mut peer.raw).cast(), &raw mut peer.len) } == 0;
        // SAFETY: the caller handed this descriptor over to us; nothing else in this process
        // owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = Self {
            fd,
            bound: None,
            connected,
        };
        prepare(sock.fd.as_raw_fd(), max_frame)
            .map_err(|e| format!("setting up --fd {}: {e}", sock.fd.as_raw_fd()))?;
        Ok(sock)
    }

    /// Waits up to `timeout_ms` for a datagram; whether one is there.
    pub fn wait_readable(&self, timeout_ms: libc::c_int) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let r = unsafe { libc::poll(&raw mut pfd, 1, timeout_ms) };
        if r > 0 && pfd.revents & libc::POLLIN == 0 {
            // An error or hang-up with nothing to read would report again at once: wait out the
            // timeout rather than spin.
            std::thread::sleep(std::time::Duration::from_millis(timeout_ms.max(0) as u64));
            return false;
        }
        r > 0
    }
}

/// Started with sudo (vmnet wants root), the socket is handed to the user who ran sudo, so that
/// the client, running as that user, may connect to it (connecting needs write permission on
/// the socket file).
fn give_to_sudo_user(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let id = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
    // SAFETY: geteuid has no preconditions.
    let (Some(uid), Some(gid), 0) = (id("SUDO_UID"), id("SUDO_GID"), unsafe { libc::geteuid() })
    else {
        return Ok(());
    };
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: a path with a NUL byte", path.display()))?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::chown(c.as_ptr(), uid, gid) } < 0 {
        return Err(format!(
            "giving {} to the sudo user {uid}: {}",
            path.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The flags of every send: never block, and no `SIGPIPE` on Linux.
#[cfg(target_os = "linux")]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
#[cfg(not(target_os = "linux"))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// One message of a batch: `mmsghdr` where the system has `recvmmsg`/`sendmmsg`.
#[cfg(target_os = "linux")]
type Msg = libc::mmsghdr;
#[cfg(not(target_os = "linux"))]
type Msg = libc::msghdr;

fn hdr(m: &mut Msg) -> &mut libc::msghdr {
    #[cfg(target_os = "linux")]
    {
        &mut m.msg_hdr
    }
    #[cfg(not(target_os = "linux"))]
    {
        m
    }
}

fn new_msg() -> Msg {
    // SAFETY: msghdr and mmsghdr are plain data; all zeroes is an empty message.
    unsafe { zeroed() }
}

/// What one received datagram was.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// Its length (of what fit, when cut).
    pub len: usize,
    /// Longer than the buffer: cut by the kernel.
    pub cut: bool,
    /// The sender.
    pub from: Addr,
}

/// The reusable message arrays of one direction (each thread owns its own).
pub struct Batch {
    iovs: Vec<libc::iovec>,
    msgs: Vec<Msg>,
    names: Vec<Addr>,
}

impl Batch {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            iovs: Vec::with_capacity(n),
            msgs: Vec::with_capacity(n),
            names: vec![Addr::empty(); n],
        }
    }

    /// Receives up to `bufs.len()` datagrams, one per buffer, without waiting; fills `out`.
    pub fn recv(
        &mut self,
        sock: &Sock,
        bufs: &mut [Vec<u8>],
        out: &mut Vec<Received>,
    ) -> io::Result<usize> {
        let n = bufs.len().min(self.names.len());
        out.clear();
        self.iovs.clear();
        self.msgs.clear();
        self.iovs.extend(bufs[..n].iter_mut().map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        }));
        for (i, name) in self.names[..n].iter_mut().enumerate() {
            *name = Addr::empty();
            let mut m = new_msg();
            let h = hdr(&mut m);
            h.msg_iov = self.iovs.as_mut_ptr().wrapping_add(i);
            h.msg_iovlen = 1;
            h.msg_name = name.as_ptr();
            h.msg_namelen = name.len;
            self.msgs.push(m);
        }
        let got = self.recv_raw(sock)?;
        for (i, buf) in bufs.iter().enumerate().take(got) {
            let (len, cut, namelen) = self.result(i);
            let mut from = self.names[i];
            from.len = namelen;
            out.push(Received {
                len: len.min(buf.len()),
                cut,
                from,
            });
        }
        Ok(got)
    }

    #[cfg(target_os = "linux")]
    fn result(&mut self, i: usize) -> (usize, bool, libc::socklen_t) {
        let m = &self.msgs[i];
        (
            m.msg_len as usize,
            m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            m.msg_hdr.msg_namelen,
        )
    }

    #[cfg(not(target_os = "linux"))]
    fn result(&mut self, i: usize) -> (usize, bool, libc::socklen_t) {
        let m = &self.msgs[i];
        // msg_iov's length was overwritten with the received length by `recv_raw`.
        (
            self.iovs[i].iov_len,
            m.msg_flags & libc::MSG_TRUNC != 0,
            m.msg_namelen,
        )
    }

    #[cfg(target_os = "linux")]
    fn recv_raw(&mut self, sock: &Sock) -> io::Result<usize> {
        // SAFETY: every message points at one iovec over a live buffer of the caller's (borrowed
        // mutably for the call) and at a live sockaddr_un of `names`; the kernel writes at most
        // their lengths.
        let n = unsafe {
            libc::recvmmsg(
                sock.fd.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                self.msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn recv_raw(&mut self, sock: &Sock) -> io::Result<usize> {
        for i in 0..self.msgs.len() {
            // SAFETY: as for recvmmsg, one message at a time.
            let n = unsafe {
                libc::recvmsg(
                    sock.fd.as_raw_fd(),
                    &raw mut self.msgs[i],
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return if i == 0 { Err(e) } else { Ok(i) };
            }
            // Keep the length where `result` finds it.
            self.iovs[i].iov_len = n as usize;
        }
        Ok(self.msgs.len())
    }

    /// Lays out one message per frame, addressed to `to` (none: the socket is connected).
    pub fn prepare_send<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>, to: Option<&Addr>) {
        self.iovs.clear();
        self.msgs.clear();
        self.iovs.extend(frames.map(|f| libc::iovec {
            iov_base: f.as_ptr().cast_mut().cast(),
            iov_len: f.len(),
        }));
        if let Some(to) = to {
            self.names[0] = *to;
        }
        for i in 0..self.iovs.len() {
            let mut m = new_msg();
            let h = hdr(&mut m);
            h.msg_iov = self.iovs.as_mut_ptr().wrapping_add(i);
            h.msg_iovlen = 1;
            if to.is_some() {
                h.msg_name = self.names[0].as_ptr();
                h.msg_namelen = self.names[0].len;
            }
            self.msgs.push(m);
        }
    }

    /// Sends the prepared messages from `start` on; how many went (at least one), or the error
    /// of the first.
    ///
    /// # Safety
    ///
    /// The frames given to [`prepare_send`](Self::prepare_send) must still be alive.
    pub unsafe fn send_from(&mut self, sock: &Sock, start: usize) -> io::Result<usize> {
        let msgs = &mut self.msgs[start..];
        #[cfg(target_os = "linux")]
        {
            // SAFETY: every message points at one iovec over a live frame (the caller's
            // promise) and at a live address; the kernel only reads them.
            let n = unsafe {
                libc::sendmmsg(
                    sock.fd.as_raw_fd(),
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
                // SAFETY: as for sendmmsg, one message at a time.
                let n = unsafe { libc::sendmsg(sock.fd.as_raw_fd(), m, SEND_FLAGS) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    return if i > 0 { Ok(i) } else { Err(e) };
                }
            }
            Ok(msgs.len())
        }
    }

    /// The number of prepared messages.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }
}

/// Whether a datagram socket is still bound at `addr`: a connect sends nothing, and fails when
/// the socket is closed (`ECONNREFUSED`) or its path removed (`ENOENT`).
pub fn is_alive(addr: &Addr) -> bool {
    // SAFETY: socket takes no pointers; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        // Cannot tell: keep the peer.
        return true;
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr.raw` is a valid sockaddr_un of `addr.len` bytes that outlives the call.
    let r = unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr.raw).cast(), addr.len) };
    r == 0 || !peer_gone(&io::Error::last_os_error())
}

/// Errors that mean the peer is not there (gone, or its path removed).
pub fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::ENOENT
                | libc::ENOTCONN
                | libc::EPIPE
                | libc::ECONNRESET
                | libc::EDESTADDRREQ
        )
    )
}

/// Errors that mean the peer's queue is full for now (`ENOBUFS` is macOS's word for it).
pub fn congested(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_compare_by_path_and_unbound_ones_are_not_addressable() {
        let a = Addr::of_path(Path::new("/tmp/a.sock")).unwrap();
        let b = Addr::of_path(Path::new("/tmp/a.sock")).unwrap();
        let c = Addr::of_path(Path::new("/tmp/c.sock")).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.is_addressable());
        let mut unbound = Addr::empty();
        unbound.len = size_of::<libc::sa_family_t>() as libc::socklen_t;
        assert!(!unbound.is_addressable());
        assert!(Addr::of_path(Path::new("")).is_err());
        let long = "x".repeat(200);
        assert!(
            Addr::of_path(Path::new(&long))
                .unwrap_err()
                .contains("shorter")
        );
    }

    #[test]
    fn batches_go_both_ways_on_a_socket_pair_with_cut_datagrams_flagged() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let a = Sock::from_fd(std::os::fd::IntoRawFd::into_raw_fd(a), 2048).unwrap();
        let b = Sock::from_fd(std::os::fd::IntoRawFd::into_raw_fd(b), 2048).unwrap();
        assert!(a.connected && b.connected);
        let frames: Vec<Vec<u8>> = vec![vec![1; 60], vec![2; 1514], vec![3; 100]];
        let mut tx = Batch::with_capacity(8);
        tx.prepare_send(frames.iter().map(|f| f.as_slice()), None);
        // SAFETY: `frames` is alive.
        assert_eq!(unsafe { tx.send_from(&a, 0) }.unwrap(), 3);
        let mut rx = Batch::with_capacity(8);
        let mut bufs = vec![vec![0u8; 1000]; 8];
        let mut out = Vec::new();
        assert!(b.wait_readable(1000));
        assert_eq!(rx.recv(&b, &mut bufs, &mut out).unwrap(), 3);
        assert_eq!((out[0].len, out[0].cut), (60, false));
        assert!(out[1].cut, "a 1514-byte datagram into 1000 bytes is cut");
        assert_eq!((out[2].len, out[2].cut), (100, false));
        assert_eq!(&bufs[2][..100], &frames[2][..]);
        let e = rx.recv(&b, &mut bufs, &mut out).unwrap_err();
        assert!(congested(&e), "{e}");
    }

    #[test]
    fn a_bound_path_is_refused_while_it_exists_and_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("vmnet-dgram-sock-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let p = dir.join("s.sock");
        let s = Sock::bind(&p, 2048).unwrap();
        assert!(Sock::bind(&p, 2048).unwrap_err().contains("exists"));
        drop(s);
        assert!(!p.exists());
        let _ = std::fs::remove_dir(&dir);
        assert!(Sock::from_fd(1, 2048).unwrap_err().contains("standard"));
        assert!(Sock::from_fd(999, 2048).unwrap_err().contains("not open"));
    }
}
