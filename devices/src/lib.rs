//! Hypervisor-agnostic devices for arm64 VMMs: a virtio-mmio virtio-net device with its own I/O
//! thread, the event primitives it is built on, network backends, and a PL011 console.
//!
//! Nothing here knows which hypervisor runs the guest. A VMM routes MMIO exits to an
//! [`bus::MmioBus`], turns interrupt [`event::Notifier`]s into guest interrupts (irqfd on KVM, a
//! GIC call on Hypervisor.framework), and may bind queue-notify notifiers to ioeventfds.
//!
//! ```text
//!  vCPU thread ── MMIO exit ──► MmioBus ──► MmioTransport (virtio-mmio v2 registers)
//!                                              │ QueueNotify → queue Notifier
//!                                              │ DRIVER_OK   → VirtioDevice::activate
//!                                              ▼
//!                              virtio-net worker thread (one per device)
//!                    Poller: { tx kick, rx kick, backend readable, stop }
//!                    moves frames between guest memory and the Backend, in batches
//!                                              │
//!                                              ▼
//!                                  interrupt Notifier.notify()
//! ```
#![cfg_attr(not(any(target_os = "linux", target_os = "macos")), allow(unused))]

pub mod bus;
pub mod event;
pub mod irq;
pub mod net;
pub mod ratelimit;
pub mod serial;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod virtio;
