//! What the examples share with the workspace's tests.
//!
//! The programs of this package are its examples (`cargo run -p examples --example NAME`):
//!
//! - `embed_net_device`: how another VMM embeds the virtio-net device of `devices` — the MMIO
//!   routing, the interrupt notifier and the queue notifiers it must wire — driven by the
//!   register-level driver simulator on the in-memory backend. Runs anywhere.
//! - `vmnet_echo`: an ARP/ICMP responder on a vmnet interface with the blocking API (macOS).
//! - `vmnet_async`: the same with the async API and no runtime (macOS).
//!
//! The library holds the pieces those programs and the tests have in common: [`echo`], a small
//! ARP/ICMP responder and the frames it answers, [`exec::block_on`], enough of an executor to
//! run the async API, [`threads`], which tells whether a thread sleeps in a system call, and
//! [`alloc`], the counting allocator of the zero-allocation tests. It
//! depends on nothing, so `vmnet` and `devices` take it as a dev-dependency without a dependency
//! cycle.
#![warn(missing_docs)]

pub mod alloc;
pub mod echo;
pub mod exec;
pub mod threads;
