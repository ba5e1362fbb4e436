//! macOS: a notifier is a kqueue with one `EVFILT_USER` event, the poller another kqueue.
//!
//! The user event is added with `EV_CLEAR`, so delivering it resets it, and fired with
//! `NOTE_TRIGGER` (kqueue(2)). A kqueue descriptor is itself readable while it holds pending
//! events, which is how a notifier is registered with a poller or with `poll(2)`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::Duration;

use crate::event::{Event, Token};

use super::cvt;

/// The identifier of the one user event of a notifier's kqueue.
const USER_IDENT: libc::uintptr_t = 1;

fn new_kqueue() -> io::Result<OwnedFd> {
    // SAFETY: kqueue takes no arguments; the descriptor is checked and owned below.
    let fd = cvt(unsafe { libc::kqueue() })?;
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // kqueue descriptors are not inherited by children anyway; close-on-exec keeps that explicit.
    // SAFETY: fcntl on a descriptor we own, no pointers.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(fd)
}

fn kevent(
    ident: libc::uintptr_t,
    filter: i16,
    flags: u16,
    fflags: u32,
    udata: u64,
) -> libc::kevent {
    libc::kevent {
        ident,
        filter,
        flags,
        fflags,
        data: 0,
        udata: udata as usize as *mut libc::c_void,
    }
}

fn timespec(timeout: Option<Duration>) -> Option<libc::timespec> {
    timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    })
}

/// Applies `changes` to kqueue `kq` and collects up to `out.len()` events.
fn kevent_call(
    kq: RawFd,
    changes: &[libc::kevent],
    out: &mut [libc::kevent],
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let ts = timespec(timeout);
    let ts_ptr = ts
        .as_ref()
        .map_or(ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: both arrays are valid for the lengths passed and outlive the call; `ts_ptr` is null
    // or points to a live timespec.
    let n = unsafe {
        libc::kevent(
            kq,
            changes.as_ptr(),
            changes.len() as libc::c_int,
            out.as_mut_ptr(),
            out.len() as libc::c_int,
            ts_ptr,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(n as usize)
}

#[derive(Debug)]
pub struct Notifier {
    kq: OwnedFd,
}

impl Notifier {
    pub fn new() -> io::Result<Self> {
        let kq = new_kqueue()?;
        let add = kevent(
            USER_IDENT,
            libc::EVFILT_USER,
            libc::EV_ADD | libc::EV_CLEAR,
            0,
            0,
        );
        kevent_call(kq.as_raw_fd(), &[add], &mut [], Some(Duration::ZERO))?;
        Ok(Self { kq })
    }

    pub fn notify(&self) -> io::Result<()> {
        let trigger = kevent(USER_IDENT, libc::EVFILT_USER, 0, libc::NOTE_TRIGGER, 0);
        kevent_call(
            self.kq.as_raw_fd(),
            &[trigger],
            &mut [],
            Some(Duration::ZERO),
        )?;
        Ok(())
    }

    pub fn consume(&self) -> io::Result<bool> {
        self.wait(Some(Duration::ZERO))
    }

    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let mut out = [kevent(0, 0, 0, 0, 0)];
        Ok(kevent_call(self.kq.as_raw_fd(), &[], &mut out, timeout)? == 1)
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        // A duplicated descriptor refers to the same kqueue, hence the same user event.
        Ok(Self {
            kq: self.kq.try_clone()?,
        })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.kq.as_fd()
    }
}

#[derive(Debug)]
pub struct Poller {
    kq: OwnedFd,
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        Ok(Self { kq: new_kqueue()? })
    }

    pub fn add(&self, fd: RawFd, token: Token) -> io::Result<()> {
        let ident =
            libc::uintptr_t::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        let add = kevent(
            ident,
            libc::EVFILT_READ,
            libc::EV_ADD | libc::EV_CLEAR,
            0,
            token.0,
        );
        kevent_call(self.kq.as_raw_fd(), &[add], &mut [], Some(Duration::ZERO))?;
        Ok(())
    }

    pub fn watch_writable(&self, fd: RawFd, token: Token, on: bool) -> io::Result<()> {
        let ident =
            libc::uintptr_t::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        let flags = if on {
            libc::EV_ADD | libc::EV_CLEAR
        } else {
            libc::EV_DELETE
        };
        let change = kevent(ident, libc::EVFILT_WRITE, flags, 0, token.0);
        match kevent_call(
            self.kq.as_raw_fd(),
            &[change],
            &mut [],
            Some(Duration::ZERO),
        ) {
            // Dropping an interest that was never added.
            Err(e) if !on && e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }

    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        let ident =
            libc::uintptr_t::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        let del = kevent(ident, libc::EVFILT_READ, libc::EV_DELETE, 0, 0);
        kevent_call(self.kq.as_raw_fd(), &[del], &mut [], Some(Duration::ZERO))?;
        Ok(())
    }

    pub fn wait(&self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        const MAX: usize = 64;
        let mut raw = [kevent(0, 0, 0, 0, 0); MAX];
        let cap = events.capacity().clamp(1, MAX);
        let n = kevent_call(self.kq.as_raw_fd(), &[], &mut raw[..cap], timeout)?;
        events.extend(raw[..n].iter().map(|e| Event {
            token: Token(e.udata as usize as u64),
            readable: e.filter == libc::EVFILT_READ && e.flags & libc::EV_ERROR == 0,
            closed: e.flags & (libc::EV_EOF | libc::EV_ERROR) != 0,
        }));
        Ok(())
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.kq.as_fd()
    }
}
