//! Serial consoles for the guest.
//!
//! [`Pl011`] is the ARM PrimeCell UART every arm64 kernel knows how to find from a device tree
//! (`arm,pl011`), usable from the first instruction as an early console and later as the guest's
//! `ttyAMA0`. A VMM places it on its [`MmioBus`](crate::bus::MmioBus), gives it a writer for the
//! guest's output and an [`IrqLine`](crate::irq::IrqLine) for its interrupt, and feeds it host
//! input with [`Pl011::enqueue_input`].

pub mod pl011;

pub use pl011::Pl011;
