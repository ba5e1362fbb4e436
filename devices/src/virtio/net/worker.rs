//! What the net device does on its I/O thread: when to run the data path.
//!
//! One thread per device owns the queues and the backend from activation to reset, so the data
//! path takes no lock shared with vCPU threads. The thread is the generic virtio
//! [`Worker`](crate::virtio::worker::Worker); [`NetHandler`] tells it to watch the backend's
//! readiness descriptor besides the two queue notifiers, and decides on each wake-up which
//! passes to run: TX on a TX kick or when a TX hold ends, RX on an RX kick, backend readiness
//! or a due retry; and when the guest hears of the frames received ([`RxHold`]). Reset stops the
//! worker, which hands the handler, and so the backend, back.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Link;
use super::datapath::{DataPath, RxEnd, RxPass, TxEnd, add};
use crate::net::Backend;
use crate::virtio::worker::{QueueHandler, Wake};

/// The queues' indexes (virtio 1.2, 5.1.2: receiveq1 is 0, transmitq1 is 1).
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
/// The backend's readiness descriptor, the only entry of [`NetHandler::sources`].
const BACKEND: usize = 0;

/// First and longest wait before receiving again after a backend error.
const RX_RETRY_MIN: Duration = Duration::from_millis(10);
const RX_RETRY_MAX: Duration = Duration::from_secs(1);

/// After a failed receive, frames may wait in the backend with no new readiness edge to
/// announce them: retry after a delay that doubles while the errors last (a deleted TAP costs
/// one wake-up a second), and forget it once a receive works.
fn next_retry(end: RxEnd, current: Option<Duration>) -> Option<Duration> {
    match end {
        RxEnd::BackendError => Some(current.map_or(RX_RETRY_MIN, |d| (d * 2).min(RX_RETRY_MAX))),
        RxEnd::Drained | RxEnd::NoBuffers => None,
    }
}

/// The net device's [`QueueHandler`]: the data path, the backend and the timers of TX holding,
/// RX interrupt holding and RX retries. The generic [`Worker`](crate::virtio::worker::Worker)
/// runs it; stopping the worker hands it back, and with it the backend.
pub(crate) struct NetHandler {
    path: DataPath,
    pub(crate) backend: Box<dyn Backend>,
    link: Arc<Link>,
    tx_hold: Duration,
    /// While TX holds kicks off (the guest is sending faster than a frame per wake-up), when
    /// the next pass is due: the guest queues frames without kicking until then.
    tx_due: Option<Instant>,
    /// The current back-off after a failed receive, and when the next receive is due.
    rx_retry: Option<Duration>,
    rx_retry_at: Option<Instant>,
    rx_hold: RxHold,
}

impl NetHandler {
    pub(crate) fn new(
        path: DataPath,
        backend: Box<dyn Backend>,
        link: Arc<Link>,
        tx_hold: Duration,
        rx_hold: Duration,
    ) -> Self {
        Self {
            path,
            backend,
            link,
            tx_hold,
            tx_due: None,
            rx_retry: None,
            rx_retry_at: None,
            rx_hold: RxHold::new(rx_hold),
        }
    }

    /// The earliest of the timers.
    fn timer(&self) -> Option<Instant> {
        [self.tx_due, self.rx_retry_at, self.rx_hold.due]
            .into_iter()
            .flatten()
            .min()
    }
}

/// A receive pass that delivers this many frames means frames are coming faster than the
/// worker wakes up: with holding on, the guest's interrupt waits. A lone frame (a ping, a
/// reply) never waits.
const HOLD_FROM_FRAMES: u64 = 2;

/// RX interrupt holding ([`NetConfig::rx_hold`](super::NetConfig::rx_hold)): when the guest
/// hears of the frames a receive pass delivered.
///
/// Each interrupt the guest takes costs it two exits (reading and acknowledging the interrupt
/// status) and ends the driver's polling. While frames keep arriving, holding the interrupt
/// for a short time lets the frames that come meanwhile share it; the driver then finds them
/// all in one poll. A frame that arrives alone is announced at once, so request/response
/// traffic is not delayed.
#[derive(Debug)]
struct RxHold {
    hold: Duration,
    /// When the held interrupt is due; `None` while none is held.
    due: Option<Instant>,
}

impl RxHold {
    fn new(hold: Duration) -> Self {
        Self { hold, due: None }
    }

    fn is_on(&self) -> bool {
        !self.hold.is_zero()
    }

    /// After a pass that left the interrupt to the caller: whether to interrupt now. Otherwise
    /// the interrupt is held until [`due`](Self::due) (set here if it was not).
    fn interrupt_now(&mut self, pass: RxPass, now: Instant) -> bool {
        if pass.end == RxEnd::NoBuffers {
            // The guest must take the used buffers before it posts more: no waiting.
            self.due = None;
            return true;
        }
        if self.due.is_some() {
            // Already holding: these frames join the held interrupt.
            return false;
        }
        if pass.frames >= HOLD_FROM_FRAMES {
            self.due = Some(now + self.hold);
            return false;
        }
        true
    }

    /// Whether the held interrupt is due at `now`; if so it is no longer held.
    fn fire(&mut self, now: Instant) -> bool {
        let due = self.due.is_some_and(|at| at <= now);
        if due {
            self.due = None;
        }
        due
    }
}

/// A pass that finds this many frames after a kick means the guest sends faster than one
/// frame per wake-up: the worker holds kicks off. One frame per kick (request/response, ping)
/// never holds, so it gets no added latency.
const HOLD_FROM_KICK: usize = 2;

impl QueueHandler for NetHandler {
    fn sources(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.backend.ready_fd()]
    }

    fn start(&mut self) -> Option<Instant> {
        // Work may be pending from before the thread existed: kicks the transport consumed on
        // reset are gone, but buffers and frames are not.
        let backend = self.backend.as_mut();
        self.path.process_tx(backend);
        self.rx_retry = next_retry(self.path.process_rx(backend), None);
        update_link(&self.path, backend, &self.link);
        self.rx_retry_at = self.rx_retry.map(|d| Instant::now() + d);
        self.timer()
    }

    fn wake(&mut self, wake: &Wake) -> Option<Instant> {
        let backend = self.backend.as_mut();
        let path = &mut self.path;
        let mut tx = wake.due(self.tx_due);
        let mut rx = wake.due(self.rx_retry_at);
        if wake.kicked(TX_QUEUE) {
            add(&path.metrics.tx_kicks, 1);
            tx = true;
        }
        if wake.kicked(RX_QUEUE) {
            add(&path.metrics.rx_kicks, 1);
            rx = true;
        }
        let backend_ready = wake.source(BACKEND);
        rx |= backend_ready;
        if backend_ready && let Err(e) = backend.on_ready() {
            add(&path.metrics.rx_errors, 1);
            tracing::debug!(error = %e, "virtio-net: backend readiness work failed");
        }
        // TX first: its completions free guest memory the guest may turn into RX buffers.
        if tx {
            let end = if self.tx_hold.is_zero() {
                path.process_tx(backend);
                TxEnd::Idle
            } else {
                // Once holding, any frame keeps the hold: the guest is still sending.
                let hold_at = if self.tx_due.is_some() {
                    1
                } else {
                    HOLD_FROM_KICK
                };
                path.process_tx_or_hold(backend, hold_at)
            };
            self.tx_due = (end == TxEnd::Holding).then(|| Instant::now() + self.tx_hold);
        }
        if rx {
            let end = if self.rx_hold.is_on() {
                let pass = path.process_rx_unnotified(backend);
                if self.rx_hold.interrupt_now(pass, Instant::now()) {
                    path.notify_rx();
                }
                pass.end
            } else {
                path.process_rx(backend)
            };
            self.rx_retry = next_retry(end, self.rx_retry);
            self.rx_retry_at = self.rx_retry.map(|d| Instant::now() + d);
        }
        if self.rx_hold.fire(wake.now) {
            path.notify_rx();
        }
        update_link(path, backend, &self.link);
        self.timer()
    }
}

/// Takes in the backend's link state; a change is shown in the configuration space and
/// announced with a configuration change interrupt (virtio 1.2, 5.1.4: the driver reads
/// `status` again).
fn update_link(path: &DataPath, backend: &dyn Backend, link: &Link) {
    let up = backend.link_up();
    if link.set(up) {
        tracing::info!(up, "virtio-net: the backend's link changed");
        path.signal_config();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_errors_back_off_from_10_ms_to_1_s() {
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..9 {
            d = next_retry(RxEnd::BackendError, d);
            seen.push(d.unwrap().as_millis());
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    fn pass(end: RxEnd, frames: u64) -> RxPass {
        RxPass { end, frames }
    }

    const HOLD: Duration = Duration::from_micros(200);

    #[test]
    fn a_lone_frame_interrupts_at_once() {
        let mut h = RxHold::new(HOLD);
        let now = Instant::now();
        assert!(h.interrupt_now(pass(RxEnd::Drained, 1), now));
        assert_eq!(h.due, None);
        // A pass that found nothing has nothing to hold either.
        assert!(h.interrupt_now(pass(RxEnd::Drained, 0), now));
        assert_eq!(h.due, None);
    }

    #[test]
    fn a_pass_of_several_frames_holds_the_interrupt_and_later_frames_join_it() {
        let mut h = RxHold::new(HOLD);
        let t0 = Instant::now();
        assert!(!h.interrupt_now(pass(RxEnd::Drained, 2), t0));
        assert_eq!(h.due, Some(t0 + HOLD));
        // Later passes, whatever they deliver, neither interrupt nor push the deadline back.
        let t1 = t0 + HOLD / 2;
        assert!(!h.interrupt_now(pass(RxEnd::Drained, 1), t1));
        assert!(!h.interrupt_now(pass(RxEnd::Drained, 7), t1));
        assert!(!h.interrupt_now(pass(RxEnd::BackendError, 0), t1));
        assert_eq!(h.due, Some(t0 + HOLD));
        assert!(!h.fire(t1), "not due yet");
        assert!(h.fire(t0 + HOLD));
        assert_eq!(h.due, None);
        assert!(!h.fire(t0 + HOLD * 2), "fired once");
        // Held no more: a lone frame interrupts at once again.
        assert!(h.interrupt_now(pass(RxEnd::Drained, 1), t0 + HOLD * 2));
    }

    #[test]
    fn running_out_of_guest_buffers_interrupts_at_once_even_while_holding() {
        let mut h = RxHold::new(HOLD);
        let t0 = Instant::now();
        assert!(h.interrupt_now(pass(RxEnd::NoBuffers, 5), t0));
        assert_eq!(h.due, None);
        assert!(!h.interrupt_now(pass(RxEnd::Drained, 3), t0));
        assert!(h.interrupt_now(pass(RxEnd::NoBuffers, 1), t0));
        assert_eq!(h.due, None, "the held interrupt went out with this one");
        assert!(!h.fire(t0 + HOLD));
    }

    #[test]
    fn a_zero_hold_is_off() {
        assert!(!RxHold::new(Duration::ZERO).is_on());
        assert!(RxHold::new(HOLD).is_on());
    }

    #[test]
    fn a_working_receive_clears_the_retry() {
        let d = Some(Duration::from_millis(80));
        assert_eq!(next_retry(RxEnd::Drained, d), None);
        assert_eq!(next_retry(RxEnd::NoBuffers, d), None);
    }
}
