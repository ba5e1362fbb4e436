//! Level-triggered interrupt lines, as a device sees them.
//!
//! A device that models a wire to the interrupt controller (the PL011's combined `UARTINTR`, for
//! example) holds an [`IrqLine`] and drives it high or low whenever its interrupt condition
//! changes. The VMM implements the trait for its hypervisor: `KVM_IRQ_LINE` on KVM,
//! `hv_gic_set_spi` on Hypervisor.framework. Devices call it only on a change of level, so an
//! implementation need not filter repeats.
//!
//! Virtio devices signal through an interrupt [`Notifier`](crate::event::Notifier) instead, which
//! KVM can consume in the kernel (irqfd); a line is for devices whose interrupt is a level that
//! the guest clears through registers.

use std::io;

/// One level-triggered interrupt input of the guest's interrupt controller (a GIC SPI).
///
/// Called from whichever thread touched the device (a vCPU thread on an MMIO exit, or an input
/// thread), hence `Send + Sync`. An error is reported to the device, which logs it and keeps
/// running: a failed interrupt must not take the VMM down.
pub trait IrqLine: Send + Sync {
    /// Drives the line to `high` (asserted) or low (deasserted).
    fn set_level(&self, high: bool) -> io::Result<()>;
}

#[cfg(any(test, feature = "test-utils"))]
pub use recording::RecordingIrqLine;

#[cfg(any(test, feature = "test-utils"))]
mod recording {
    use std::io;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::IrqLine;

    /// An [`IrqLine`] for tests: remembers the current level and every level it was driven to.
    ///
    /// It has no tests of its own: the PL011's tests drive it through the device and check the
    /// levels it recorded, so a double that recorded wrongly fails them.
    ///
    /// Available to other crates with the `test-utils` feature. Share it as an
    /// `Arc<RecordingIrqLine>`: the device drives one handle, the test inspects the other.
    #[derive(Debug, Default)]
    pub struct RecordingIrqLine {
        level: AtomicBool,
        history: Mutex<Vec<bool>>,
        fail: AtomicBool,
    }

    impl RecordingIrqLine {
        /// Creates a line that is low and has never been driven.
        pub fn new() -> Self {
            Self::default()
        }

        /// The level the line was last driven to (low if never driven).
        pub fn level(&self) -> bool {
            self.level.load(Ordering::SeqCst)
        }

        /// Every level the line was successfully driven to, oldest first.
        pub fn history(&self) -> Vec<bool> {
            self.history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }

        /// Makes later [`set_level`](IrqLine::set_level) calls fail (without changing the level)
        /// while `fail` is true, to test how a device copes with a broken interrupt path.
        pub fn set_failing(&self, fail: bool) {
            self.fail.store(fail, Ordering::SeqCst);
        }
    }

    impl IrqLine for RecordingIrqLine {
        fn set_level(&self, high: bool) -> io::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(io::Error::other("RecordingIrqLine set to fail"));
            }
            let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
            self.level.store(high, Ordering::SeqCst);
            history.push(high);
            Ok(())
        }
    }
}
