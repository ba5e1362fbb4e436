//! Readiness: the link between vmnet's packets-available event and the threads or tasks waiting
//! for packets (portable: built and tested on every host).
//!
//! The event callback runs on a GCD queue and calls [`Readiness::signal`]; a blocking reader waits
//! with [`Readiness::wait`], an async reader polls [`Readiness::poll_ready`] (an
//! [`AtomicWaker`] holds its waker). A reader clears the flag with
//! [`Readiness::take`] *before* reading, so an event that arrives during the read is not lost,
//! and reads until the framework returns no packet: vmnet never repeats an event for packets that
//! were already pending (docs/design.md, "vmnet facts"). For the same reason a read that fails,
//! or fills its whole batch, sets the flag again with [`Readiness::set_pending`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

#[derive(Debug, Default)]
struct Flags {
    pending: bool,
    closed: bool,
}

/// A level flag with a condition variable and a waker.
///
/// ```
/// use std::time::Duration;
/// use vmnet::ready::Readiness;
///
/// let r = Readiness::new();
/// assert!(!r.wait(Some(Duration::ZERO)));
/// r.signal(3);
/// assert!(r.wait(Some(Duration::ZERO)));
/// assert_eq!(r.estimate(), 3);
/// r.clear();
/// assert!(!r.is_pending());
/// ```
#[derive(Debug, Default)]
pub struct Readiness {
    flags: Mutex<Flags>,
    cv: Condvar,
    waker: AtomicWaker,
    estimate: AtomicU64,
    events: AtomicU64,
}

impl Readiness {
    /// A cleared, open readiness.
    ///
    /// ```
    /// assert!(!vmnet::ready::Readiness::new().is_pending());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    fn flags(&self) -> std::sync::MutexGuard<'_, Flags> {
        // A panic while holding this lock cannot leave the two booleans inconsistent.
        self.flags.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks packets as available (`estimate` is vmnet's estimated count, 0 if unknown) and
    /// wakes every waiter.
    ///
    /// ```
    /// let r = vmnet::ready::Readiness::new();
    /// r.signal(0);
    /// assert!(r.is_pending());
    /// ```
    pub fn signal(&self, estimate: u64) {
        self.estimate.store(estimate, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
        self.flags().pending = true;
        self.cv.notify_all();
        self.waker.wake();
    }

    /// Sets the flag without counting an event: a reader that filled a whole batch leaves it
    /// set, because more packets may be pending, and so does one whose read failed while it was
    /// set. It wakes every waiter too: one may have gone to sleep after the reader cleared the
    /// flag and before it set it again.
    ///
    /// ```
    /// let r = vmnet::ready::Readiness::new();
    /// r.set_pending();
    /// assert!(r.is_pending());
    /// assert_eq!(r.events(), 0);
    /// ```
    pub fn set_pending(&self) {
        self.flags().pending = true;
        self.cv.notify_all();
        self.waker.wake();
    }

    /// Clears the flag; call it before reading.
    ///
    /// ```
    /// let r = vmnet::ready::Readiness::new();
    /// r.signal(1);
    /// r.clear();
    /// assert!(!r.is_pending());
    /// ```
    pub fn clear(&self) {
        self.flags().pending = false;
    }

    /// Clears the flag and returns whether it was set: a reader calls it before reading and,
    /// if the read fails, sets the flag again with [`set_pending`](Self::set_pending) when it
    /// was set, so that a failed read leaves readiness as it found it.
    ///
    /// ```
    /// let r = vmnet::ready::Readiness::new();
    /// r.signal(1);
    /// assert!(r.take());
    /// assert!(!r.is_pending());
    /// assert!(!r.take());
    /// ```
    pub fn take(&self) -> bool {
        std::mem::take(&mut self.flags().pending)
    }

    /// Whether packets were signalled since the last [`clear`](Self::clear).
    ///
    /// ```
    /// assert!(!vmnet::ready::Readiness::new().is_pending());
    /// ```
    pub fn is_pending(&self) -> bool {
        self.flags().pending
    }

    /// The last estimate of pending packets.
    ///
    /// ```
    /// let r = vmnet::ready::Readiness::new();
    /// r.signal(17);
    /// assert_eq!(r.estimate(), 17);
    /// ```
    pub fn estimate(&self) -> u64 {
        self.estimate.load(Ordering::Relaxed)
    }

    /// How many times [`signal`](Self::signal) was called.
    ///
    /// ```
    /// let r = vmnet::ready::Readiness::new();
    /// r.signal(1);
    /// r.signal(1);
    /// assert_eq!(r.events(), 2);
    /// ```
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Closes: wakes every waiter for good ([`wait`](Self::wait) returns `false`,
    /// [`poll_ready`](Self::poll_ready) `Ready(false)`).
    ///
    /// ```
    /// let r = vmnet::ready::Readiness::new();
    /// r.close();
    /// assert!(r.is_closed());
    /// ```
    pub fn close(&self) {
        self.flags().closed = true;
        self.cv.notify_all();
        self.waker.wake();
    }

    /// Whether [`close`](Self::close) was called.
    ///
    /// ```
    /// assert!(!vmnet::ready::Readiness::new().is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.flags().closed
    }

    /// Blocks until packets are signalled (`true`), the readiness is closed or `timeout` passes
    /// (`false`). Does not clear the flag. `None` waits forever.
    ///
    /// ```
    /// use std::{sync::Arc, thread, time::Duration};
    ///
    /// let r = Arc::new(vmnet::ready::Readiness::new());
    /// let r2 = Arc::clone(&r);
    /// let t = thread::spawn(move || r2.signal(1));
    /// assert!(r.wait(Some(Duration::from_secs(10))));
    /// t.join().unwrap();
    /// ```
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut f = self.flags();
        loop {
            if f.closed {
                return false;
            }
            if f.pending {
                return true;
            }
            f = match (timeout, deadline) {
                (None, _) | (Some(_), None) => {
                    self.cv.wait(f).unwrap_or_else(PoisonError::into_inner)
                }
                (Some(_), Some(d)) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    self.cv
                        .wait_timeout(f, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Polls for readiness from a task: `Ready(true)` when packets are signalled, `Ready(false)`
    /// when closed, otherwise registers the task's waker and returns `Pending`.
    ///
    /// ```
    /// use std::task::{Context, Poll, Waker};
    ///
    /// let r = vmnet::ready::Readiness::new();
    /// let mut cx = Context::from_waker(Waker::noop());
    /// assert_eq!(r.poll_ready(&mut cx), Poll::Pending);
    /// r.signal(1);
    /// assert_eq!(r.poll_ready(&mut cx), Poll::Ready(true));
    /// ```
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<bool> {
        // Register first, then look: a signal between the two wakes the registered waker.
        self.waker.register(cx.waker());
        let f = self.flags();
        if f.closed {
            Poll::Ready(false)
        } else if f.pending {
            Poll::Ready(true)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::task::{Wake, Waker};
    use std::thread;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wait_times_out_when_nothing_is_signalled() {
        let r = Readiness::new();
        let start = Instant::now();
        assert!(!r.wait(Some(Duration::from_millis(20))));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn wait_returns_at_once_when_already_signalled_and_keeps_the_flag() {
        let r = Readiness::new();
        r.signal(2);
        assert!(r.wait(None));
        assert!(r.is_pending());
    }

    /// Linux: whether thread `tid` sleeps in `futex(2)`, where a condition variable waits.
    #[cfg(target_os = "linux")]
    fn asleep_in_futex(tid: Option<u32>) -> bool {
        examples::threads::asleep_in(tid.expect("a thread id"), &[libc::SYS_futex])
    }

    /// Elsewhere there is no `/proc` to look at: the waiter is given 50 ms to get there, and the
    /// test checks only that its wait had not returned before the wake-up.
    #[cfg(not(target_os = "linux"))]
    fn asleep_in_futex(_: Option<u32>) -> bool {
        thread::sleep(Duration::from_millis(50));
        true
    }

    /// A thread in `Readiness::wait(None)`, and whether that wait has returned.
    struct Waiter {
        returned: Arc<AtomicBool>,
        thread: thread::JoinHandle<bool>,
    }

    impl Waiter {
        /// Starts a waiter on `r` and returns once it sleeps in the wait (see
        /// [`asleep_in_futex`]), failing if the wait returned before.
        fn blocked_on(r: &Arc<Readiness>) -> Self {
            let returned = Arc::new(AtomicBool::new(false));
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            let thread = thread::spawn({
                let (r, returned) = (Arc::clone(r), Arc::clone(&returned));
                move || {
                    #[cfg(target_os = "linux")]
                    let tid = examples::threads::current_tid();
                    #[cfg(not(target_os = "linux"))]
                    let tid: Option<u32> = None;
                    tid_tx.send(tid).unwrap();
                    let ready = r.wait(None);
                    returned.store(true, Ordering::SeqCst);
                    ready
                }
            });
            let w = Self { returned, thread };
            let tid = tid_rx.recv().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                assert!(
                    !w.returned.load(Ordering::SeqCst),
                    "the wait returned unwoken"
                );
                if asleep_in_futex(tid) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the waiter never slept in futex(2)"
                );
                thread::sleep(Duration::from_millis(1));
            }
            assert!(
                !w.returned.load(Ordering::SeqCst),
                "the wait returned unwoken"
            );
            w
        }

        /// The wait's result, which must come within 10 s.
        fn woken(self) -> bool {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.returned.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "the waiter was not woken");
                thread::sleep(Duration::from_millis(1));
            }
            self.thread.join().unwrap()
        }
    }

    #[test]
    fn signal_from_another_thread_wakes_a_blocked_waiter() {
        let r = Arc::new(Readiness::new());
        let w = Waiter::blocked_on(&r);
        r.signal(5);
        assert!(w.woken());
        assert_eq!(r.estimate(), 5);
    }

    #[test]
    fn set_pending_wakes_a_waiter_that_slept_between_a_read_and_its_outcome() {
        let r = Arc::new(Readiness::new());
        r.signal(1);
        // A reader takes the flag; another thread then waits, and sleeps.
        assert!(r.take());
        let w = Waiter::blocked_on(&r);
        // The read failed (or filled its batch): the flag goes back, and the waiter wakes.
        r.set_pending();
        assert!(w.woken());
        assert_eq!(r.events(), 1, "not counted as an event");
    }

    #[test]
    fn set_pending_wakes_a_registered_task() {
        let r = Readiness::new();
        let w = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&w));
        let mut cx = Context::from_waker(&waker);
        assert_eq!(r.poll_ready(&mut cx), Poll::Pending);
        r.set_pending();
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        assert_eq!(r.poll_ready(&mut cx), Poll::Ready(true));
    }

    #[test]
    fn close_wakes_a_blocked_waiter_with_false() {
        let r = Arc::new(Readiness::new());
        let w = Waiter::blocked_on(&r);
        r.close();
        assert!(!w.woken());
        r.signal(1);
        assert!(!r.wait(Some(Duration::ZERO)), "closed wins over pending");
    }

    #[test]
    fn clear_then_signal_is_seen_again() {
        let r = Readiness::new();
        for _ in 0..3 {
            r.signal(1);
            assert!(r.is_pending());
            r.clear();
            assert!(!r.is_pending());
        }
        assert_eq!(r.events(), 3);
    }

    #[test]
    fn poll_registers_the_waker_and_signal_wakes_it() {
        let r = Readiness::new();
        let w = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&w));
        let mut cx = Context::from_waker(&waker);
        assert_eq!(r.poll_ready(&mut cx), Poll::Pending);
        r.signal(1);
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        assert_eq!(r.poll_ready(&mut cx), Poll::Ready(true));
    }

    #[test]
    fn poll_after_close_is_ready_false_and_close_wakes() {
        let r = Readiness::new();
        let w = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&w));
        let mut cx = Context::from_waker(&waker);
        assert_eq!(r.poll_ready(&mut cx), Poll::Pending);
        r.close();
        assert_eq!(w.0.load(Ordering::SeqCst), 1);
        assert_eq!(r.poll_ready(&mut cx), Poll::Ready(false));
    }
}
