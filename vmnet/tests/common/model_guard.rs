//! The leak check of the tests that run against `vmnet-model` (Linux, `--features model`).
//!
//! A [`Guard`] serialises the tests of one binary (the model's switches and counts are
//! process-wide), resets the model's switches, and when dropped at the end of a test that did
//! not fail already, waits briefly for the queues to drain and fails the test if any xpc object,
//! dispatch queue, block or interface is left over, or anything was released once too often.
//! A test that runs longer than [`WATCHDOG`] ends the process with a failure instead of hanging
//! CI (some tests loop until a frame arrives).
//!
//! `VMNET_MODEL_READING` selects, for every test of the run, the readings of what Apple's
//! documentation leaves open (comma-separated): `header-counted` (the maximum packet size counts
//! the virtio-net header), `multi-iovec-refused` (writes of several iovecs per packet are
//! refused), `no-batch-maxima` (no `vmnet_read_max_packets_key`/`vmnet_write_max_packets_key`,
//! as before macOS 15). Unset: the model's defaults.

#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The longest one test may hold the model.
pub const WATCHDOG: Duration = Duration::from_secs(120);

/// Holds the model for one test; see the module documentation.
pub struct Guard {
    before: vmnet_model::Accounting,
    _done: crossbeam_channel::Sender<()>,
    _lock: MutexGuard<'static, ()>,
}

impl Guard {
    /// Takes the model, with its default switches.
    pub fn new() -> Self {
        let lock = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        vmnet_model::vmnet::reset();
        apply_readings();
        let (done, rx) = crossbeam_channel::bounded::<()>(0);
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        std::thread::spawn(move || {
            if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = rx.recv_timeout(WATCHDOG) {
                eprintln!("{name}: still running after {WATCHDOG:?} against the model: failing");
                std::process::exit(101);
            }
        });
        Self {
            before: vmnet_model::accounting(),
            _done: done,
            _lock: lock,
        }
    }

    /// The leaks since the guard was taken, after waiting up to `wait` for them to go.
    pub fn leaks(&self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        loop {
            let leaks = vmnet_model::accounting().leaks_since(&self.before);
            if leaks.is_empty() || Instant::now() >= deadline {
                return leaks;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Applies `VMNET_MODEL_READING` (see the module documentation); an unknown word panics.
fn apply_readings() {
    let readings = std::env::var("VMNET_MODEL_READING").unwrap_or_default();
    for r in readings.split(',').filter(|r| !r.is_empty()) {
        vmnet_model::vmnet::configure(|c| match r {
            "header-counted" => c.header_counts_in_max_packet_size = true,
            "multi-iovec-refused" => c.refuse_multi_iovec = true,
            "no-batch-maxima" => c.report_batch_maxima = false,
            other => panic!("VMNET_MODEL_READING: unknown reading {other:?}"),
        });
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            vmnet_model::vmnet::reset();
            return;
        }
        let leaks = self.leaks(Duration::from_secs(2));
        vmnet_model::vmnet::reset();
        assert!(leaks.is_empty(), "leak check: {leaks:#?}");
    }
}
