//! An in-memory backend for tests and benchmarks (feature `test-utils`).
//!
//! [`MemBackend`] is what the device sees; [`MemBackendHandle`] is what a test holds: it
//! injects frames for the guest, collects what the guest sent, and can make the backend fail.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Backend, BackendInfo, Offloads, RxFrame, TxFrame};
use crate::event::Notifier;

/// How a [`MemBackend`] presents itself: the [`BackendInfo`] it reports to the device, as given
/// (the default is a plain Ethernet backend: no virtio-net header, no offloads, 1518-byte frames,
/// 64 frames per call). Whether it keeps the frames the guest sends is set on the handle
/// ([`MemBackendHandle::discard_sent`]).
pub type MemBackendConfig = BackendInfo;

#[derive(Debug, Default)]
struct State {
    inbound: VecDeque<Vec<u8>>,
    /// A frame to hand out `repeat` more times once `inbound` is empty (benchmarks).
    template: Option<(Vec<u8>, u64)>,
    sent: Vec<Vec<u8>>,
    /// Accept at most this many frames per send call (`None`: all).
    send_limit: Option<usize>,
    /// Fail the next this-many send calls with this error kind.
    send_errors: u64,
    recv_errors: u64,
    rx_offloads: Option<Offloads>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    ready: Notifier,
    sent_count: AtomicU64,
    truncated: AtomicU64,
    recv_calls: AtomicU64,
    discard_sent: AtomicBool,
    link_down: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The device side of an in-memory backend.
#[derive(Debug)]
pub struct MemBackend {
    cfg: MemBackendConfig,
    shared: Arc<Shared>,
    scratch: Vec<u8>,
}

/// The test side of an in-memory backend.
#[derive(Clone, Debug)]
pub struct MemBackendHandle {
    shared: Arc<Shared>,
}

impl MemBackend {
    /// Creates a backend and keeps its handle inside; get it with [`MemBackend::handle`].
    pub fn new(cfg: MemBackendConfig) -> io::Result<Self> {
        Ok(Self {
            cfg,
            scratch: Vec::new(),
            shared: Arc::new(Shared {
                state: Mutex::default(),
                ready: Notifier::new()?,
                sent_count: AtomicU64::new(0),
                truncated: AtomicU64::new(0),
                recv_calls: AtomicU64::new(0),
                discard_sent: AtomicBool::new(false),
                link_down: AtomicBool::new(false),
            }),
        })
    }

    /// A handle to inject and collect frames.
    pub fn handle(&self) -> MemBackendHandle {
        MemBackendHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl MemBackendHandle {
    /// Queues a frame for the guest (with a virtio-net header first if the backend has one).
    pub fn inject(&self, frame: &[u8]) {
        self.shared.lock().inbound.push_back(frame.to_vec());
        let _ = self.shared.ready.notify();
    }

    /// Makes the backend hand out `frame` `count` times (benchmarks: no allocation per frame).
    pub fn inject_repeated(&self, frame: &[u8], count: u64) {
        self.shared.lock().template = Some((frame.to_vec(), count));
        let _ = self.shared.ready.notify();
    }

    /// Frames still waiting for the guest.
    pub fn pending(&self) -> usize {
        let s = self.shared.lock();
        s.inbound.len() + s.template.as_ref().map_or(0, |t| t.1 as usize)
    }

    /// Takes the frames the guest sent so far.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.shared.lock().sent)
    }

    /// How many frames the guest sent in total.
    pub fn sent_count(&self) -> u64 {
        self.shared.sent_count.load(Ordering::SeqCst)
    }

    /// Frames cut short because the guest's buffers were too small.
    pub fn truncated(&self) -> u64 {
        self.shared.truncated.load(Ordering::SeqCst)
    }

    /// Number of receive calls the device made.
    pub fn recv_calls(&self) -> u64 {
        self.shared.recv_calls.load(Ordering::SeqCst)
    }

    /// Accept at most `limit` frames per send call, like a backend whose queue is full.
    pub fn set_send_limit(&self, limit: Option<usize>) {
        self.shared.lock().send_limit = limit;
    }

    /// Keep only a count of sent frames instead of their bytes (benchmarks). The bytes are
    /// still copied once, into a reused scratch buffer, as a real backend copies them into the
    /// host's network stack.
    pub fn discard_sent(&self, discard: bool) {
        self.shared.discard_sent.store(discard, Ordering::Relaxed);
    }

    /// Fail the next `n` send calls with `ENOBUFS`.
    pub fn fail_sends(&self, n: u64) {
        self.shared.lock().send_errors = n;
    }

    /// Fail the next `n` receive calls with `EIO`.
    pub fn fail_recvs(&self, n: u64) {
        self.shared.lock().recv_errors = n;
        let _ = self.shared.ready.notify();
    }

    /// Sets the link state the backend reports, and wakes the device's worker as a real
    /// backend's readiness would.
    pub fn set_link_up(&self, up: bool) {
        self.shared.link_down.store(!up, Ordering::SeqCst);
        let _ = self.shared.ready.notify();
    }

    /// The receive offloads the device last configured.
    pub fn rx_offloads(&self) -> Option<Offloads> {
        self.shared.lock().rx_offloads
    }
}

impl Backend for MemBackend {
    fn info(&self) -> BackendInfo {
        self.cfg.clone()
    }

    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.shared.ready.as_fd()
    }

    fn recv(&mut self, frames: &mut [RxFrame<'_, '_>]) -> io::Result<usize> {
        let _ = self.shared.ready.consume();
        self.shared.recv_calls.fetch_add(1, Ordering::Relaxed);
        let mut st = self.shared.lock();
        if st.recv_errors > 0 {
            st.recv_errors -= 1;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let mut n = 0;
        for f in frames.iter_mut() {
            let written = if let Some(b) = st.inbound.pop_front() {
                fill(f, &b, &self.shared.truncated)
            } else {
                match st.template.as_mut() {
                    Some((t, left)) if *left > 0 => {
                        *left -= 1;
                        fill(f, t, &self.shared.truncated)
                    }
                    _ => break,
                }
            };
            f.len = written;
            n += 1;
        }
        Ok(n)
    }

    fn send(&mut self, frames: &[TxFrame<'_, '_>]) -> io::Result<usize> {
        let mut st = self.shared.lock();
        if st.send_errors > 0 {
            st.send_errors -= 1;
            return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
        }
        let n = st.send_limit.map_or(frames.len(), |l| l.min(frames.len()));
        if self.shared.discard_sent.load(Ordering::Relaxed) {
            for f in &frames[..n] {
                let mut off = 0;
                for b in f.bufs {
                    if self.scratch.len() < off + b.len() {
                        self.scratch.resize(off + b.len(), 0);
                    }
                    b.copy_to(&mut self.scratch[off..off + b.len()]);
                    off += b.len();
                }
            }
        } else {
            for f in &frames[..n] {
                let mut v = vec![0u8; f.len()];
                let mut off = 0;
                for b in f.bufs {
                    b.copy_to(&mut v[off..off + b.len()]);
                    off += b.len();
                }
                st.sent.push(v);
            }
        }
        self.shared.sent_count.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }

    fn set_rx_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        self.shared.lock().rx_offloads = Some(offloads);
        Ok(())
    }

    fn link_up(&self) -> bool {
        !self.shared.link_down.load(Ordering::SeqCst)
    }
}

/// Copies `bytes` into the frame's buffers; returns how many fit.
fn fill(f: &RxFrame<'_, '_>, bytes: &[u8], truncated: &AtomicU64) -> usize {
    let mut rest = bytes;
    for b in f.bufs {
        if rest.is_empty() {
            break;
        }
        let k = rest.len().min(b.len());
        b.copy_from(&rest[..k]);
        rest = &rest[k..];
    }
    if !rest.is_empty() {
        truncated.fetch_add(1, Ordering::Relaxed);
    }
    bytes.len() - rest.len()
}
