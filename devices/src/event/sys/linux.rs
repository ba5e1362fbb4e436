//! Linux: `eventfd(2)` notifiers and an `epoll(7)` poller.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::event::{Event, Token, timeout_ms};

use super::cvt;

/// Set once `epoll_pwait2` (Linux 5.11) turned out to be missing.
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
pub struct Notifier {
    fd: OwnedFd,
}

impl Notifier {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the returned descriptor is checked and owned below.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    pub fn notify(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
        if n == 8 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        // EAGAIN means the counter is at its maximum: the notifier is raised already.
        if err.kind() == io::ErrorKind::WouldBlock {
            Ok(())
        } else {
            Err(err)
        }
    }

    pub fn consume(&self) -> io::Result<bool> {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from a descriptor we own.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut value).cast(), 8) };
        if n == 8 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            Ok(false)
        } else {
            Err(err)
        }
    }

    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        if self.consume()? {
            return Ok(true);
        }
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that lives across the call.
        let r = unsafe { libc::poll(&raw mut pfd, 1, timeout_ms(timeout)) };
        if r < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(err)
            };
        }
        self.consume()
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
        })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[derive(Debug)]
pub struct Poller {
    fd: OwnedFd,
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; the descriptor is checked and owned below.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    pub fn add(&self, fd: RawFd, token: Token) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: token.0,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call; the kernel checks fd.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut ev) })?;
        Ok(())
    }

    pub fn watch_writable(&self, fd: RawFd, token: Token, on: bool) -> io::Result<()> {
        let mut events = (libc::EPOLLIN | libc::EPOLLET) as u32;
        if on {
            events |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event {
            events,
            u64: token.0,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call; the kernel checks fd.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &raw mut ev) })?;
        Ok(())
    }

    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: EPOLL_CTL_DEL ignores the event pointer; null is allowed since Linux 2.6.9.
        cvt(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    pub fn wait(&self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        const MAX: usize = 64;
        let mut raw = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        let cap = events.capacity().clamp(1, MAX);
        let n = match timeout {
            // Not a whole number of milliseconds: epoll_pwait2 keeps the precision.
            Some(t) if t.subsec_nanos() % 1_000_000 != 0 && !NO_PWAIT2.load(Ordering::Relaxed) => {
                let ts = libc::timespec {
                    tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
                    tv_nsec: t.subsec_nanos().into(),
                };
                // SAFETY: `raw` has room for `cap` events and `ts` is a valid timespec, both
                // outliving the call; a null signal mask leaves the mask alone (its size is
                // then ignored).
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_epoll_pwait2,
                        self.fd.as_raw_fd(),
                        raw.as_mut_ptr(),
                        cap as libc::c_int,
                        &ts as *const libc::timespec,
                        std::ptr::null::<libc::sigset_t>(),
                        0usize,
                    )
                };
                if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                    // Before Linux 5.11: whole milliseconds from now on.
                    NO_PWAIT2.store(true, Ordering::Relaxed);
                    self.epoll_wait(&mut raw[..cap], timeout)
                } else {
                    r as libc::c_int
                }
            }
            _ => self.epoll_wait(&mut raw[..cap], timeout),
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        events.extend(raw[..n as usize].iter().map(|e| {
            let flags = e.events;
            Event {
                token: Token(e.u64),
                readable: flags & libc::EPOLLIN as u32 != 0,
                closed: flags & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0,
            }
        }));
        Ok(())
    }

    /// `epoll_wait` with the timeout rounded up to whole milliseconds; returns its result.
    fn epoll_wait(&self, raw: &mut [libc::epoll_event], timeout: Option<Duration>) -> libc::c_int {
        // SAFETY: `raw` has room for `raw.len()` events and outlives the call.
        unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                raw.as_mut_ptr(),
                raw.len() as libc::c_int,
                timeout_ms(timeout),
            )
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
