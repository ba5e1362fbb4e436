//! The net device's I/O thread: waits for work and runs the data path.
//!
//! One thread per device owns the queues and the backend from activation to reset, so the data
//! path takes no lock shared with vCPU threads. It sleeps in a [`Poller`] on four sources: the
//! TX queue's notifier, the RX queue's notifier, the backend's readiness descriptor and a stop
//! notifier. Reset fires the stop notifier, joins the thread and gets the backend back.

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::datapath::DataPath;
use crate::event::{Event, Notifier, Poller, Token};
use crate::net::Backend;

const TX_KICK: Token = Token(0);
const RX_KICK: Token = Token(1);
const BACKEND: Token = Token(2);
const STOP: Token = Token(3);

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
        mut path: DataPath,
        mut backend: Box<dyn Backend>,
        rx_kick: Arc<Notifier>,
        tx_kick: Arc<Notifier>,
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
                &mut path,
                backend.as_mut(),
                &rx_kick,
                &tx_kick,
                &stop_thread,
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

fn run(
    poller: &Poller,
    path: &mut DataPath,
    backend: &mut dyn Backend,
    rx_kick: &Notifier,
    tx_kick: &Notifier,
    stop: &Notifier,
) {
    // Work may be pending from before the thread existed: kicks the transport consumed on
    // reset are gone, but buffers and frames are not.
    path.process_tx(backend);
    path.process_rx(backend);
    let mut events: Vec<Event> = Vec::with_capacity(8);
    loop {
        if let Err(e) = poller.wait(&mut events, None) {
            tracing::error!(error = %e, "virtio-net: poller failed; worker stops");
            return;
        }
        let (mut tx, mut rx) = (false, false);
        for ev in &events {
            match ev.token {
                STOP => {
                    let _ = stop.consume();
                    return;
                }
                TX_KICK => {
                    let _ = tx_kick.consume();
                    tx = true;
                }
                RX_KICK => {
                    let _ = rx_kick.consume();
                    rx = true;
                }
                BACKEND => rx = true,
                _ => {}
            }
        }
        // TX first: its completions free guest memory the guest may turn into RX buffers.
        if tx {
            path.process_tx(backend);
        }
        if rx {
            path.process_rx(backend);
        }
    }
}
