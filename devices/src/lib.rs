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
//!
//! Embedding the net device in a VMM takes a backend, a transport and a bus slot; the VMM then
//! turns the interrupt notifier into a guest interrupt (KVM: register it as an irqfd) and
//! describes the window as a `virtio,mmio` node in its device tree:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use devices::bus::MmioBus;
//! use devices::event::Notifier;
//! use devices::net::mem::{MemBackend, MemBackendConfig};
//! use devices::virtio::GuestMemory;
//! use devices::virtio::mmio::{MMIO_WINDOW_SIZE, MmioTransport};
//! use devices::virtio::net::{Net, NetConfig};
//! use vm_memory::GuestAddress;
//!
//! let mem = GuestMemory::from_ranges(&[(GuestAddress(0x4000_0000), 64 << 20)]).unwrap();
//! // On Linux: devices::net::tap::Tap::open("tap0"); on macOS: net::vmnet::VmnetBackend.
//! let backend = MemBackend::new(MemBackendConfig::default()).unwrap();
//! let net = Net::new(Box::new(backend), NetConfig::default());
//! let irq = Notifier::new().unwrap(); // hand a clone to the hypervisor as the device's SPI
//! let transport = MmioTransport::new(Box::new(net), mem, irq).unwrap();
//! let mut bus = MmioBus::new();
//! bus.insert(0x0a00_0000, MMIO_WINDOW_SIZE, Arc::new(Mutex::new(transport))).unwrap();
//! // vCPU loop: on an MMIO exit at `addr`, call bus.read(addr, data) or bus.write(addr, data).
//! ```
#![cfg_attr(not(any(target_os = "linux", target_os = "macos")), allow(unused))]

pub mod bus;
pub mod event;
pub mod irq;
pub mod net;
pub mod ratelimit;
mod scratch;
pub mod serial;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod virtio;

// The README's examples run as doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
