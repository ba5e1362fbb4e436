//! Guest architecture support.
//!
//! The VMM runs arm64 guests only, on both of its hypervisors, so [`aarch64`] is the one
//! architecture here. It is portable code: it describes the guest, not the host, and builds and
//! is tested on any host architecture. Hypervisor-specific code lives elsewhere and uses it.

pub mod aarch64;
