//! Virtio: the device model, the virtio-mmio transport and the devices built on them.
//!
//! A [`VirtioDevice`] knows its features, configuration space and queues; the transport
//! ([`mmio::MmioTransport`]) implements the register interface a driver talks to, runs the
//! status state machine, and hands the device an [`ActivateContext`] when the driver sets
//! `DRIVER_OK`. From then on the device runs on its own (the net device on its own thread) and
//! signals used buffers through an [`Interrupt`].

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::event::Notifier;

pub mod mmio;
pub mod net;
pub mod worker;

/// The guest memory type the devices work on.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    /// The guest OS has found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest OS knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// The driver has acknowledged the features it understands.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Reserved feature bits (virtio 1.2, section 6).
pub mod features {
    /// `VIRTIO_RING_F_INDIRECT_DESC`.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `VIRTIO_RING_F_EVENT_IDX`.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// `VIRTIO_F_VERSION_1`: required by this implementation (no legacy interface).
    pub const VERSION_1: u64 = 1 << 32;
}

/// Bits of the virtio-mmio `InterruptStatus` register.
pub mod interrupt_status {
    /// A used buffer notification.
    pub const USED_RING: u32 = 1;
    /// A configuration change notification.
    pub const CONFIG_CHANGE: u32 = 2;
}

struct InterruptInner {
    status: AtomicU32,
    notifier: Notifier,
    /// Set by a device that found the driver broke the virtqueue contract.
    needs_reset: AtomicBool,
}

/// Raises a device's interrupt: sets a bit of `InterruptStatus` and fires the interrupt
/// [`Notifier`], which the VMM turns into a guest interrupt (irqfd on KVM, a GIC call on HVF).
///
/// Cheap to clone; clones share the status word and the notifier.
#[derive(Clone)]
pub struct Interrupt {
    inner: Arc<InterruptInner>,
}

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interrupt")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Interrupt {
    /// Wraps the notifier the VMM listens on.
    pub fn new(notifier: Notifier) -> Self {
        Self {
            inner: Arc::new(InterruptInner {
                status: AtomicU32::new(0),
                notifier,
                needs_reset: AtomicBool::new(false),
            }),
        }
    }

    /// Signals that used buffers are available.
    pub fn signal_used(&self) -> io::Result<()> {
        self.signal(interrupt_status::USED_RING)
    }

    /// Signals a configuration change.
    pub fn signal_config(&self) -> io::Result<()> {
        self.signal(interrupt_status::CONFIG_CHANGE)
    }

    fn signal(&self, bit: u32) -> io::Result<()> {
        self.inner.status.fetch_or(bit, Ordering::SeqCst);
        self.inner.notifier.notify()
    }

    /// The current `InterruptStatus` value.
    pub fn status(&self) -> u32 {
        self.inner.status.load(Ordering::SeqCst)
    }

    /// Clears the given `InterruptStatus` bits (`InterruptACK`).
    pub fn ack(&self, bits: u32) {
        self.inner.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Marks the device as needing a reset (`DEVICE_NEEDS_RESET` in the status register, virtio
    /// 1.2 section 2.1.2) and tells the driver with a configuration change interrupt.
    pub fn set_needs_reset(&self) -> io::Result<()> {
        if self.inner.needs_reset.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.signal_config()
    }

    /// Whether the device asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.inner.needs_reset.load(Ordering::SeqCst)
    }

    /// Forgets a reset request (the driver reset the device).
    pub fn clear_needs_reset(&self) {
        self.inner.needs_reset.store(false, Ordering::SeqCst);
    }

    /// The notifier the VMM binds to the guest interrupt.
    pub fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }
}

/// Everything a device needs to run once the driver has set `DRIVER_OK`.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemory,
    /// The queues as the driver configured them, event index set per the negotiated features.
    pub queues: Vec<Queue>,
    /// One notifier per queue, fired on `QueueNotify` (or by an ioeventfd the VMM bound to it).
    pub queue_notifiers: Vec<Arc<Notifier>>,
    /// The device's interrupt.
    pub interrupt: Interrupt,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not make every queue the device needs ready.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// The device is running already.
    #[error("device is already active")]
    AlreadyActive,
    /// The device's worker or backend could not be set up.
    #[error("device could not start")]
    Io(#[source] io::Error),
}

/// A virtio device as seen by a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (1 for network).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The features the device offers.
    fn features(&self) -> u64;

    /// Reads the device-specific configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific configuration space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// A counter the device bumps whenever its configuration space changes on its own (link
    /// status, for example); the transport reports it as `ConfigGeneration`.
    fn config_generation(&self) -> u32 {
        0
    }

    /// Starts the device.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;

    /// Stops the device (joining any worker thread) and returns it to its state before
    /// activation, ready to be activated again.
    fn reset(&mut self);
}
