//! The net device's I/O thread: waits for work and runs the data path.
//!
//! One thread per device owns the queues and the backend from activation to reset, so the data
//! path takes no lock shared with vCPU threads. It sleeps in a [`Poller`] on four sources: the
//! TX queue's notifier, the RX queue's notifier, the backend's readiness descriptor and a stop
//! notifier. Reset fires the stop notifier, joins the thread and gets the backend back.

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::Link;
use super::datapath::{DataPath, RxEnd, TxEnd, add};
use crate::event::{Event, Notifier, Poller, Token};
use crate::net::Backend;

const TX_KICK: Token = Token(0);
const RX_KICK: Token = Token(1);
const BACKEND: Token = Token(2);
const STOP: Token = Token(3);

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

/// A running worker thread.
#[derive(Debug)]
pub(crate) struct Worker {
    stop: Notifier,
    handle: JoinHandle<Box<dyn Backend>>,
}

impl Worker {
    /// Registers the sources and starts the thread. On error the backend is handed back, unless
    /// the thread itself could not be created (it then went down with the thread's closure).
    pub(crate) fn spawn(
        name: String,
        tx_hold: Duration,
        mut path: DataPath,
        mut backend: Box<dyn Backend>,
        rx_kick: Arc<Notifier>,
        tx_kick: Arc<Notifier>,
        link: Arc<Link>,
    ) -> Result<Self, (io::Error, Option<Box<dyn Backend>>)> {
        let setup = (|| {
            let poller = Poller::new()?;
            let stop = Notifier::new()?;
            poller.add_notifier(&tx_kick, TX_KICK)?;
            poller.add_notifier(&rx_kick, RX_KICK)?;
            poller.add_notifier(&stop, STOP)?;
            poller.add(backend.ready_fd(), BACKEND)?;
            let stop_thread = stop.try_clone()?;
            Ok::<_, io::Error>((poller, stop, stop_thread))
        })();
        let (poller, stop, stop_thread) = match setup {
            Ok(v) => v,
            Err(e) => return Err((e, Some(backend))),
        };
        let handle = thread::Builder::new().name(name).spawn(move || {
            run(
                &poller,
                tx_hold,
                &mut path,
                backend.as_mut(),
                &rx_kick,
                &tx_kick,
                &stop_thread,
                &link,
            );
            backend
        });
        match handle {
            Ok(handle) => Ok(Self { stop, handle }),
            Err(e) => Err((e, None)),
        }
    }

    /// Stops the thread and returns the backend; `None` if the thread panicked.
    pub(crate) fn stop(self) -> Option<Box<dyn Backend>> {
        if let Err(e) = self.stop.notify() {
            tracing::error!(error = %e, "virtio-net: cannot signal the worker to stop");
        }
        match self.handle.join() {
            Ok(backend) => Some(backend),
            Err(_) => {
                tracing::error!("virtio-net: the worker thread panicked; the backend is lost");
                None
            }
        }
    }
}

/// A pass that finds this many frames after a kick means the guest sends faster than one
/// frame per wake-up: the worker holds kicks off. One frame per kick (request/response, ping)
/// never holds, so it gets no added latency.
const HOLD_FROM_KICK: usize = 2;

#[expect(
    clippy::too_many_arguments,
    reason = "the thread's whole state, borrowed from Worker::spawn"
)]
fn run(
    poller: &Poller,
    tx_hold: Duration,
    path: &mut DataPath,
    backend: &mut dyn Backend,
    rx_kick: &Notifier,
    tx_kick: &Notifier,
    stop: &Notifier,
    link: &Link,
) {
    // Work may be pending from before the thread existed: kicks the transport consumed on
    // reset are gone, but buffers and frames are not.
    path.process_tx(backend);
    let mut rx_retry = next_retry(path.process_rx(backend), None);
    update_link(path, backend, link);
    let mut rx_retry_at = rx_retry.map(|d| Instant::now() + d);
    // While TX holds kicks off (the guest is sending faster than a frame per wake-up), when
    // the next pass is due: the guest queues frames without kicking until then.
    let mut tx_due: Option<Instant> = None;
    let mut events: Vec<Event> = Vec::with_capacity(8);
    loop {
        let now = Instant::now();
        let timeout = [tx_due, rx_retry_at]
            .into_iter()
            .flatten()
            .min()
            .map(|at| at.saturating_duration_since(now));
        if let Err(e) = poller.wait(&mut events, timeout) {
            tracing::error!(error = %e, "virtio-net: poller failed; worker stops");
            return;
        }
        let now = Instant::now();
        let mut tx = tx_due.is_some_and(|at| at <= now);
        let mut rx = rx_retry_at.is_some_and(|at| at <= now);
        let mut backend_ready = false;
        for ev in &events {
            match ev.token {
                STOP => {
                    let _ = stop.consume();
                    return;
                }
                TX_KICK => {
                    let _ = tx_kick.consume();
                    add(&path.metrics.tx_kicks, 1);
                    tx = true;
                }
                RX_KICK => {
                    let _ = rx_kick.consume();
                    add(&path.metrics.rx_kicks, 1);
                    rx = true;
                }
                BACKEND => {
                    rx = true;
                    backend_ready = true;
                }
                _ => {}
            }
        }
        if backend_ready && let Err(e) = backend.on_ready() {
            add(&path.metrics.rx_errors, 1);
            tracing::debug!(error = %e, "virtio-net: backend readiness work failed");
        }
        // TX first: its completions free guest memory the guest may turn into RX buffers.
        if tx {
            let end = if tx_hold.is_zero() {
                path.process_tx(backend);
                TxEnd::Idle
            } else {
                // Once holding, any frame keeps the hold: the guest is still sending.
                let hold_at = if tx_due.is_some() { 1 } else { HOLD_FROM_KICK };
                path.process_tx_or_hold(backend, hold_at)
            };
            tx_due = (end == TxEnd::Holding).then(|| Instant::now() + tx_hold);
        }
        if rx {
            rx_retry = next_retry(path.process_rx(backend), rx_retry);
            rx_retry_at = rx_retry.map(|d| Instant::now() + d);
        }
        update_link(path, backend, link);
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

    #[test]
    fn a_working_receive_clears_the_retry() {
        let d = Some(Duration::from_millis(80));
        assert_eq!(next_retry(RxEnd::Drained, d), None);
        assert_eq!(next_retry(RxEnd::NoBuffers, d), None);
    }
}
