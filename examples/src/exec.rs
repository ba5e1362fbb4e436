//! A runtime-free executor: enough to drive the `vmnet` async API from a test or an example.
//!
//! The futures of `vmnet::AsyncInterface` are woken by the interface's event callback through an
//! ordinary [`Waker`]; they need no runtime. [`block_on`] polls one future on the calling
//! thread and parks between polls; the waker unparks it. tokio or smol drive the same futures.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `fut` to completion on this thread, parking while it is pending.
///
/// A wake that comes between a poll and the park is not lost: `unpark` before `park` makes the
/// park return at once.
///
/// ```
/// assert_eq!(examples::exec::block_on(async { 6 * 7 }), 42);
/// ```
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// As [`block_on`], but gives up after `limit`: `None` if `fut` is still pending then (it is
/// dropped). For tests that wait for a frame that may never come.
///
/// ```
/// use std::time::Duration;
/// use examples::exec::block_on_timeout;
/// assert_eq!(block_on_timeout(async { 6 * 7 }, Duration::from_secs(1)), Some(42));
/// assert_eq!(block_on_timeout(std::future::pending::<u8>(), Duration::from_millis(10)), None);
/// ```
pub fn block_on_timeout<F: Future>(fut: F, limit: Duration) -> Option<F::Output> {
    let deadline = Instant::now() + limit;
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        thread::park_timeout(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A future that is pending until another thread completes it and wakes the waker.
    #[derive(Default)]
    struct Slot {
        value: Option<u32>,
        waker: Option<Waker>,
    }

    struct Wait(Arc<Mutex<Slot>>);

    impl Future for Wait {
        type Output = u32;
        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            let mut s = self.0.lock().unwrap();
            match s.value {
                Some(v) => Poll::Ready(v),
                None => {
                    s.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    #[test]
    fn a_future_completed_by_another_thread_wakes_the_caller() {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let other = slot.clone();
        // block_on runs on its own thread, so that a lost wake-up fails the test (no answer
        // within the timeout) instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(block_on(Wait(slot)));
        });
        thread::sleep(Duration::from_millis(20));
        {
            let mut s = other.lock().unwrap();
            s.value = Some(7);
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(7));
    }
}
