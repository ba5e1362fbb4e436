//! One I/O thread per active virtio device, the same for every device.
//!
//! A device hands its queues (and a backend, if it has one) to a [`QueueHandler`] when the
//! driver sets `DRIVER_OK`, and starts a [`Worker`] with it. The worker owns the thread, the
//! [`Poller`], the stop notifier and the waiting; the handler owns what the device does. The
//! thread sleeps until a queue's notifier fires (the driver kicked), one of the handler's own
//! descriptors turns readable (a backend has data) or the handler's timer is due, and hands each
//! wake-up to the handler as a [`Wake`]. Reset stops the thread, joins it and gives the handler
//! back, so the device can take its backend again.
//!
//! The handler reports used buffers itself, through the [`Interrupt`] it was given, after
//! deciding whether the driver asked for one: [`signal_used_if_needed`] takes that decision for
//! a handler that completes chains with virtio-queue's `add_used` (the net device publishes its
//! own way and decides in its data path).

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use virtio_queue::{Queue, QueueT};

use super::{GuestMemory, Interrupt};
use crate::event::{Event, Notifier, Poller, Token};

/// The most queues, and separately the most sources, one worker watches.
pub const MAX_WATCHED: usize = 64;

/// Poller tokens: queue `q` is `Token(q)`, source `i` is `Token(SOURCE_BASE + i)`.
const SOURCE_BASE: u64 = MAX_WATCHED as u64;
const STOP: Token = Token(u64::MAX);

/// What a device does on its worker thread.
///
/// The worker calls [`sources`](Self::sources) once when it starts, then
/// [`start`](Self::start), then [`wake`](Self::wake) after every wait that found something,
/// until the device is reset. All calls come from the worker thread, so the handler needs no
/// lock of its own.
pub trait QueueHandler: Send + 'static {
    /// Descriptors to watch besides the queue notifiers, such as a backend's readiness
    /// descriptor; a wake-up names each one that fired by its index in this list
    /// ([`Wake::source`]). They are watched edge-style: once woken, read until empty. Each must
    /// stay open as long as the handler lives (the handler owning it is the simple way). At
    /// most [`MAX_WATCHED`].
    fn sources(&self) -> Vec<BorrowedFd<'_>>;

    /// Runs once on the new thread before its first wait: buffers and backend data may be
    /// pending from before activation, while the kicks that announced them are gone. Returns
    /// when the worker must wake the handler even if nothing fires (`None`: only on events).
    fn start(&mut self) -> Option<Instant>;

    /// Handles one wake-up: the queues the driver kicked, the sources that fired, or the
    /// timer the last call asked for (check it against [`Wake::now`]). Returns the next timer,
    /// as [`start`](Self::start) does.
    fn wake(&mut self, wake: &Wake) -> Option<Instant>;
}

/// Why the worker woke its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wake {
    /// When the wait ended: a timer at or before it is due.
    pub now: Instant,
    kicked: u64,
    sources: u64,
}

impl Wake {
    /// Whether the driver kicked queue `q` (its notifier fired; the worker consumed it).
    pub fn kicked(&self, q: usize) -> bool {
        q < MAX_WATCHED && self.kicked & (1 << q) != 0
    }

    /// Whether source `i` of [`QueueHandler::sources`] fired.
    pub fn source(&self, i: usize) -> bool {
        i < MAX_WATCHED && self.sources & (1 << i) != 0
    }

    /// Whether the timer the handler asked for, `at`, is due.
    pub fn due(&self, at: Option<Instant>) -> bool {
        at.is_some_and(|at| at <= self.now)
    }
}

/// A running worker thread and the handler it drives.
pub struct Worker<H> {
    stop: Notifier,
    handle: JoinHandle<H>,
}

impl<H> std::fmt::Debug for Worker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("thread", &self.handle.thread().name())
            .finish_non_exhaustive()
    }
}

impl<H: QueueHandler> Worker<H> {
    /// Registers the queue notifiers (queue `q` is `queue_notifiers[q]`), the handler's sources
    /// and a stop notifier, and starts the thread named `name`. On error the handler is handed
    /// back, unless the thread itself could not be created (it then went down with the thread's
    /// closure).
    pub fn spawn(
        name: String,
        handler: H,
        queue_notifiers: Vec<Arc<Notifier>>,
    ) -> Result<Self, (io::Error, Option<H>)> {
        let setup = (|| {
            if queue_notifiers.len() > MAX_WATCHED {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a worker watches at most {MAX_WATCHED} queues"),
                ));
            }
            let sources = handler.sources();
            if sources.len() > MAX_WATCHED {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a worker watches at most {MAX_WATCHED} sources"),
                ));
            }
            let poller = Poller::new()?;
            let stop = Notifier::new()?;
            for (q, n) in (0u64..).zip(&queue_notifiers) {
                poller.add_notifier(n, Token(q))?;
            }
            for (i, fd) in (0u64..).zip(sources) {
                poller.add(fd, Token(SOURCE_BASE + i))?;
            }
            poller.add_notifier(&stop, STOP)?;
            let stop_thread = stop.try_clone()?;
            Ok::<_, io::Error>((poller, stop, stop_thread))
        })();
        let (poller, stop, stop_thread) = match setup {
            Ok(v) => v,
            Err(e) => return Err((e, Some(handler))),
        };
        let thread_name = name.clone();
        let handle = thread::Builder::new().name(name).spawn(move || {
            let mut handler = handler;
            run(
                &thread_name,
                &poller,
                &mut handler,
                &queue_notifiers,
                &stop_thread,
            );
            handler
        });
        match handle {
            Ok(handle) => Ok(Self { stop, handle }),
            Err(e) => Err((e, None)),
        }
    }

    /// Stops the thread and returns the handler; `None` if the thread panicked.
    pub fn stop(self) -> Option<H> {
        let name = self.handle.thread().name().unwrap_or("worker").to_owned();
        if let Err(e) = self.stop.notify() {
            tracing::error!(worker = %name, error = %e, "cannot signal the worker to stop");
        }
        match self.handle.join() {
            Ok(handler) => Some(handler),
            Err(_) => {
                tracing::error!(worker = %name, "the worker thread panicked; its state is lost");
                None
            }
        }
    }
}

fn run<H: QueueHandler>(
    name: &str,
    poller: &Poller,
    handler: &mut H,
    queue_notifiers: &[Arc<Notifier>],
    stop: &Notifier,
) {
    let mut timer = handler.start();
    let mut events: Vec<Event> = Vec::with_capacity(8);
    loop {
        let timeout = timer.map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(e) = poller.wait(&mut events, timeout) {
            tracing::error!(worker = %name, error = %e, "poller failed; worker stops");
            return;
        }
        let mut wake = Wake {
            now: Instant::now(),
            kicked: 0,
            sources: 0,
        };
        for ev in &events {
            match ev.token {
                STOP => {
                    let _ = stop.consume();
                    return;
                }
                Token(t) if t < SOURCE_BASE => {
                    if let Some(n) = usize::try_from(t).ok().and_then(|q| queue_notifiers.get(q)) {
                        let _ = n.consume();
                        wake.kicked |= 1 << t;
                    }
                }
                Token(t) => {
                    if let Some(i) = t.checked_sub(SOURCE_BASE).filter(|&i| i < SOURCE_BASE) {
                        wake.sources |= 1 << i;
                    }
                }
            }
        }
        timer = handler.wake(&wake);
    }
}

/// Raises the used-buffer interrupt if the driver asked for one, as virtio-queue's
/// `needs_notification` decides over the elements `add_used` put on the ring since its last
/// call: with `VIRTIO_RING_F_EVENT_IDX`, when the used index passed the driver's `used_event`
/// (virtio 1.2, 2.7.10); without, always (virtio-queue does not read the `NO_INTERRUPT` flag,
/// which the specification makes a hint). Returns whether it signalled. A ring it cannot read
/// counts as asking, so no completion goes unannounced.
pub fn signal_used_if_needed(
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &Interrupt,
) -> io::Result<bool> {
    if queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used()?;
        return Ok(true);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// How long a test waits for a worker to answer.
    const TEST_WAIT: Duration = Duration::from_secs(5);

    /// A handler that reports every call on a channel and watches one notifier as its source.
    struct Recorder {
        source: Notifier,
        calls: mpsc::Sender<(bool, u64, u64, bool)>,
        /// The timer `wake` returns, once.
        timer: Option<Duration>,
        last_timer: Option<Instant>,
    }

    impl QueueHandler for Recorder {
        fn sources(&self) -> Vec<BorrowedFd<'_>> {
            use std::os::fd::AsFd;
            vec![self.source.as_fd()]
        }
        fn start(&mut self) -> Option<Instant> {
            let _ = self.calls.send((true, 0, 0, false));
            None
        }
        fn wake(&mut self, wake: &Wake) -> Option<Instant> {
            if wake.source(0) {
                let _ = self.source.consume();
            }
            let due = wake.due(self.last_timer);
            let _ = self.calls.send((false, wake.kicked, wake.sources, due));
            self.last_timer = self.timer.take().map(|d| wake.now + d);
            self.last_timer
        }
    }

    #[test]
    fn kicks_sources_and_timers_reach_the_handler_and_stop_hands_it_back() {
        let (tx, rx) = mpsc::channel();
        let source = Notifier::new().unwrap();
        let fire_source = source.try_clone().unwrap();
        let queues: Vec<Arc<Notifier>> =
            (0..3).map(|_| Arc::new(Notifier::new().unwrap())).collect();
        let h = Recorder {
            source,
            calls: tx,
            timer: Some(Duration::from_millis(20)),
            last_timer: None,
        };
        let w = Worker::spawn("worker-test".into(), h, queues.clone())
            .map_err(|e| e.0)
            .unwrap();
        assert_eq!(rx.recv_timeout(TEST_WAIT).unwrap(), (true, 0, 0, false));
        queues[2].notify().unwrap();
        assert_eq!(
            rx.recv_timeout(TEST_WAIT).unwrap(),
            (false, 1 << 2, 0, false)
        );
        // The wake-up above asked for a timer: it fires with nothing else.
        assert_eq!(rx.recv_timeout(TEST_WAIT).unwrap(), (false, 0, 0, true));
        fire_source.notify().unwrap();
        assert_eq!(rx.recv_timeout(TEST_WAIT).unwrap(), (false, 0, 1, false));
        // No timer now: nothing comes without an event.
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        let h = w.stop().expect("the handler comes back");
        assert!(h.timer.is_none());
    }

    #[test]
    fn too_many_queues_hand_the_handler_back() {
        let (tx, _rx) = mpsc::channel();
        let h = Recorder {
            source: Notifier::new().unwrap(),
            calls: tx,
            timer: None,
            last_timer: None,
        };
        let queues: Vec<Arc<Notifier>> = (0..=MAX_WATCHED)
            .map(|_| Arc::new(Notifier::new().unwrap()))
            .collect();
        let (e, back) = Worker::spawn("worker-test".into(), h, queues).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(back.is_some());
    }
}
