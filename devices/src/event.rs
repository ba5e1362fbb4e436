//! Eventfd-like notifiers and a readiness poller.
//!
//! A [`Notifier`] is a wake-up flag that any thread can raise with [`Notifier::notify`] and
//! that is itself a pollable file descriptor, so the same object can be
//!
//! - waited on by a thread ([`Notifier::wait`], [`Notifier::wait_timeout`]),
//! - registered with a [`Poller`] next to sockets and TAP devices,
//! - handed to a hypervisor (on KVM it is an eventfd, usable as irqfd and ioeventfd).
//!
//! On Linux a notifier is an `eventfd(2)` and the poller is `epoll(7)`. On macOS a notifier is a
//! kqueue holding one `EVFILT_USER` event (added with `EV_CLEAR`, fired with `NOTE_TRIGGER`) and
//! the poller is another kqueue; a kqueue descriptor is readable while it has pending events, so
//! notifiers nest into pollers without any pipe or emulation layer.
//!
//! Readiness is edge-style on both systems: a poller reports a source once per change, so a
//! consumer drains a source until it would block, and calls [`Notifier::consume`] on a notifier it
//! was woken for before looking at the work it signals.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

mod sys;

/// A cross-thread wake-up flag with a pollable file descriptor.
///
/// Notifications coalesce: any number of [`notify`](Self::notify) calls before the next
/// [`consume`](Self::consume) or wait are observed as one.
#[derive(Debug)]
pub struct Notifier {
    inner: sys::Notifier,
}

impl Notifier {
    /// Creates a notifier in the cleared state.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            inner: sys::Notifier::new()?,
        })
    }

    /// Raises the notifier. Never blocks; callable from any thread.
    pub fn notify(&self) -> io::Result<()> {
        self.inner.notify()
    }

    /// Clears the notifier without blocking; returns whether it was raised.
    pub fn consume(&self) -> io::Result<bool> {
        self.inner.consume()
    }

    /// Blocks until the notifier is raised, then clears it.
    pub fn wait(&self) -> io::Result<()> {
        while !self.inner.wait(None)? {}
        Ok(())
    }

    /// Blocks until the notifier is raised or `timeout` passes; clears it and returns `true` if it
    /// was raised.
    pub fn wait_timeout(&self, timeout: Duration) -> io::Result<bool> {
        self.inner.wait(Some(timeout))
    }

    /// Returns another handle to the same notifier (a `dup` of the descriptor).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            inner: self.inner.try_clone()?,
        })
    }
}

impl AsFd for Notifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl AsRawFd for Notifier {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_fd().as_raw_fd()
    }
}

/// Identifies a source registered with a [`Poller`]; returned with its readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token(pub u64);

/// One readiness report from [`Poller::wait`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The token the source was registered with.
    pub token: Token,
    /// The source is readable (or, for a notifier, raised).
    pub readable: bool,
    /// The source hung up or reported an error condition.
    pub closed: bool,
}

/// Waits for readiness of several descriptors at once (epoll on Linux, kqueue on macOS).
///
/// Sources are registered for readability with edge-style reporting.
#[derive(Debug)]
pub struct Poller {
    inner: sys::Poller,
}

impl Poller {
    /// Creates an empty poller.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            inner: sys::Poller::new()?,
        })
    }

    /// Registers `fd` for edge-style read readiness under `token`.
    ///
    /// The descriptor must stay open until it is [`remove`](Self::remove)d or the poller is
    /// dropped.
    pub fn add(&self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        self.inner.add(fd.as_raw_fd(), token)
    }

    /// Registers a notifier under `token`.
    pub fn add_notifier(&self, notifier: &Notifier, token: Token) -> io::Result<()> {
        self.add(notifier.as_fd(), token)
    }

    /// Adds (`on`) or drops interest in write readiness of a source registered with
    /// [`add`](Self::add), reported under the same token and edge-style like read readiness: a
    /// socket backend watches for room only while it holds bytes it could not send.
    pub fn watch_writable(&self, fd: BorrowedFd<'_>, token: Token, on: bool) -> io::Result<()> {
        self.inner.watch_writable(fd.as_raw_fd(), token, on)
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.inner.remove(fd.as_raw_fd())
    }

    /// Waits until at least one source is ready or `timeout` passes (`None` waits forever).
    ///
    /// Clears `events` and fills it with at most its capacity of reports; returns how many there
    /// are (0 on timeout). An interrupted wait (`EINTR`) returns 0 as a spurious wake-up.
    pub fn wait(&self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<usize> {
        events.clear();
        if events.capacity() == 0 {
            events.reserve(16);
        }
        self.inner.wait(events, timeout)?;
        Ok(events.len())
    }
}

impl AsFd for Poller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

/// Converts an optional timeout to whole milliseconds for `poll`/`epoll_wait`, rounding up so a
/// short non-zero timeout does not turn into a busy loop; `None` is -1 (forever).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn timeout_ms(timeout: Option<Duration>) -> i32 {
    match timeout {
        None => -1,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn notify_then_consume_reports_once() {
        let n = Notifier::new().unwrap();
        assert!(!n.consume().unwrap());
        n.notify().unwrap();
        n.notify().unwrap();
        assert!(n.consume().unwrap());
        assert!(!n.consume().unwrap());
    }

    #[test]
    fn wait_timeout_expires_when_not_raised() {
        let n = Notifier::new().unwrap();
        let start = Instant::now();
        assert!(!n.wait_timeout(Duration::from_millis(20)).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn poller_timeout_below_a_millisecond_expires_and_a_notifier_still_wakes_it() {
        let p = Poller::new().unwrap();
        let n = Notifier::new().unwrap();
        p.add_notifier(&n, Token(7)).unwrap();
        let mut events = Vec::with_capacity(4);
        let t = Duration::from_micros(300);
        let start = Instant::now();
        assert_eq!(p.wait(&mut events, Some(t)).unwrap(), 0);
        assert!(start.elapsed() >= t);
        n.notify().unwrap();
        assert_eq!(p.wait(&mut events, Some(t)).unwrap(), 1);
        assert_eq!(events[0].token, Token(7));
    }

    /// A waiter blocked in `Notifier::wait` when the notify comes is woken by it (and only then
    /// returns): the test sees the waiter thread asleep in `poll(2)` before it notifies.
    #[test]
    #[cfg_attr(
        not(target_os = "linux"),
        ignore = "reads the waiter's state from Linux's /proc"
    )]
    fn notify_from_another_thread_wakes_a_blocked_waiter() {
        #[cfg(target_os = "linux")]
        {
            use std::sync::Arc;
            use std::sync::atomic::{AtomicBool, Ordering};
            use std::thread;
            let n = Arc::new(Notifier::new().unwrap());
            let returned = Arc::new(AtomicBool::new(false));
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            let waiter = thread::spawn({
                let (n, returned) = (Arc::clone(&n), Arc::clone(&returned));
                move || {
                    tid_tx
                        .send(examples::threads::current_tid().unwrap())
                        .unwrap();
                    n.wait().unwrap();
                    returned.store(true, Ordering::SeqCst);
                }
            });
            let tid = tid_rx.recv().unwrap();
            #[cfg(target_arch = "x86_64")]
            let polls = [libc::SYS_poll, libc::SYS_ppoll];
            #[cfg(not(target_arch = "x86_64"))]
            let polls = [libc::SYS_ppoll];
            let deadline = Instant::now() + Duration::from_secs(10);
            while !examples::threads::asleep_in(tid, &polls) {
                assert!(
                    Instant::now() < deadline,
                    "the waiter never slept in poll(2)"
                );
                assert!(!returned.load(Ordering::SeqCst), "wait returned unnotified");
                thread::sleep(Duration::from_millis(1));
            }
            assert!(!returned.load(Ordering::SeqCst), "wait returned unnotified");
            n.notify().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !returned.load(Ordering::SeqCst) {
                assert!(
                    Instant::now() < deadline,
                    "the notify did not wake the waiter"
                );
                thread::sleep(Duration::from_millis(1));
            }
            waiter.join().unwrap();
            assert!(!n.consume().unwrap(), "the wait consumed the notification");
        }
    }

    #[test]
    fn cloned_notifier_raises_the_same_flag() {
        let n = Notifier::new().unwrap();
        let c = n.try_clone().unwrap();
        c.notify().unwrap();
        assert!(n.consume().unwrap());
    }

    #[test]
    fn poller_reports_the_raised_notifier_token() {
        let p = Poller::new().unwrap();
        let a = Notifier::new().unwrap();
        let b = Notifier::new().unwrap();
        p.add_notifier(&a, Token(1)).unwrap();
        p.add_notifier(&b, Token(2)).unwrap();
        b.notify().unwrap();
        let mut ev = Vec::with_capacity(4);
        assert_eq!(p.wait(&mut ev, Some(Duration::from_secs(5))).unwrap(), 1);
        assert_eq!(ev[0].token, Token(2));
        assert!(ev[0].readable);
    }

    #[test]
    fn poller_times_out_with_no_events() {
        let p = Poller::new().unwrap();
        let a = Notifier::new().unwrap();
        p.add_notifier(&a, Token(1)).unwrap();
        let mut ev = Vec::with_capacity(4);
        assert_eq!(p.wait(&mut ev, Some(Duration::from_millis(10))).unwrap(), 0);
    }

    #[test]
    fn poller_reports_again_after_consume_and_new_notify() {
        let p = Poller::new().unwrap();
        let a = Notifier::new().unwrap();
        p.add_notifier(&a, Token(7)).unwrap();
        let mut ev = Vec::with_capacity(4);
        for _ in 0..3 {
            a.notify().unwrap();
            assert_eq!(p.wait(&mut ev, Some(Duration::from_secs(5))).unwrap(), 1);
            assert!(a.consume().unwrap());
        }
    }

    #[test]
    fn removed_source_is_not_reported() {
        let p = Poller::new().unwrap();
        let a = Notifier::new().unwrap();
        p.add_notifier(&a, Token(1)).unwrap();
        p.remove(a.as_fd()).unwrap();
        a.notify().unwrap();
        let mut ev = Vec::with_capacity(4);
        assert_eq!(p.wait(&mut ev, Some(Duration::from_millis(10))).unwrap(), 0);
    }

    #[test]
    fn timeout_rounds_up_to_a_millisecond() {
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ms(Some(Duration::from_secs(u64::MAX))), i32::MAX);
    }
}
