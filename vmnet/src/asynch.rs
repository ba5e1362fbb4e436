//! The async API, runtime-agnostic (macOS only).
//!
//! The vmnet event callback, running on the interface's dispatch queue, wakes the task through
//! an atomic waker ([`crate::ready::Readiness`]); no executor is assumed, so tokio, smol or a
//! hand-written `block_on` all work.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::interface::Interface;
use crate::options::Options;
use crate::ready::Readiness;

/// An [`Interface`] with `async` receive and send.
///
/// ```no_run
/// # async fn run() -> vmnet::Result<()> {
/// use std::time::Duration;
/// use vmnet::{AsyncInterface, Options};
///
/// let iface = AsyncInterface::start(&Options::shared(), Duration::from_secs(10))?;
/// let size = iface.get_ref().limits().read_capacity();
/// let mut bufs = vec![vec![0u8; size]; 16];
/// let mut lens = [0usize; 16];
/// let n = iface.recv_batch(&mut bufs, &mut lens).await?;
/// let frames: Vec<&[u8]> = (0..n).map(|i| &bufs[i][..lens[i]]).collect();
/// iface.send_batch(&frames).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncInterface {
    inner: Interface,
}

impl AsyncInterface {
    /// Starts an interface (blocking until the framework's completion, like
    /// [`Interface::start`]) and wraps it.
    ///
    /// ```no_run
    /// let i = vmnet::AsyncInterface::start(&vmnet::Options::host(), std::time::Duration::from_secs(5))?;
    /// # Ok::<(), vmnet::Error>(())
    /// ```
    #[doc(alias = "vmnet_start_interface")]
    pub fn start(options: &Options, timeout: Duration) -> Result<Self> {
        Interface::start(options, timeout).map(Self::new)
    }

    /// Wraps a started interface.
    ///
    /// ```no_run
    /// # fn f(i: vmnet::Interface) { let a = vmnet::AsyncInterface::new(i); }
    /// ```
    pub fn new(inner: Interface) -> Self {
        Self { inner }
    }

    /// The blocking interface underneath.
    ///
    /// ```no_run
    /// # fn f(a: &vmnet::AsyncInterface) { let mtu = a.get_ref().params().mtu; }
    /// ```
    pub fn get_ref(&self) -> &Interface {
        &self.inner
    }

    /// Unwraps the blocking interface.
    ///
    /// ```no_run
    /// # fn f(a: vmnet::AsyncInterface) { let i: vmnet::Interface = a.into_inner(); }
    /// ```
    pub fn into_inner(self) -> Interface {
        self.inner
    }

    /// A future that resolves when the framework signals packets (`true`), or when the
    /// interface is stopping (`false`).
    ///
    /// ```no_run
    /// # async fn f(a: &vmnet::AsyncInterface) { let _ = a.readable().await; }
    /// ```
    pub fn readable(&self) -> Readable<'_> {
        Readable {
            ready: &self.inner.shared.ready,
        }
    }

    /// Waits until at least one packet is read, then returns how many (up to
    /// `min(bufs.len(), lens.len(), 128, read_max_packets)`); `lens[i]` is packet `i`'s length.
    /// Returns 0 at once when no buffer is given.
    ///
    /// ```no_run
    /// # async fn f(a: &vmnet::AsyncInterface) -> vmnet::Result<()> {
    /// let mut bufs = vec![vec![0u8; a.get_ref().limits().read_capacity()]; 8];
    /// let mut lens = [0usize; 8];
    /// let n = a.recv_batch(&mut bufs, &mut lens).await?;
    /// assert!(n >= 1);
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_read")]
    pub async fn recv_batch<B: AsMut<[u8]>>(
        &self,
        bufs: &mut [B],
        lens: &mut [usize],
    ) -> Result<usize> {
        loop {
            let n = self.inner.read_batch(bufs, lens)?;
            if n > 0 || bufs.is_empty() || lens.is_empty() {
                return Ok(n);
            }
            if !self.readable().await {
                return Err(Error::Stopped);
            }
        }
    }

    /// Writes the packets (see [`Interface::write_batch`]). vmnet's write never blocks, so this
    /// completes on its first poll; it is `async` so that callers treat both directions alike.
    ///
    /// ```no_run
    /// # async fn f(a: &vmnet::AsyncInterface, frame: &[u8]) -> vmnet::Result<()> {
    /// a.send_batch(&[frame]).await?;
    /// # Ok(()) }
    /// ```
    #[doc(alias = "vmnet_write")]
    pub async fn send_batch<B: AsRef<[u8]>>(&self, packets: &[B]) -> Result<usize> {
        self.inner.write_batch(packets)
    }
}

/// The future of [`AsyncInterface::readable`].
///
/// ```no_run
/// # async fn f(a: &vmnet::AsyncInterface) {
/// let fut: vmnet::Readable<'_> = a.readable();
/// let _ = fut.await;
/// # }
/// ```
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Readable<'a> {
    ready: &'a Readiness,
}

impl Future for Readable<'_> {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        self.ready.poll_ready(cx)
    }
}
