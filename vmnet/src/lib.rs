//! A safe binding to Apple's vmnet.framework: virtual network interfaces for virtual machines on
//! macOS, with a blocking API and a runtime-agnostic async API.
//!
//! **The binding itself is macOS-only.** On other systems this crate builds with its portable
//! modules only (status codes and errors, option validation and the exact `interface_desc`
//! contents, interface parameters, iovec and batch bookkeeping, the linearising write fallback,
//! readiness and port-forwarding rules), so that the logic that does not need a Mac is compiled
//! and unit-tested everywhere. For CI, the test-only `model` feature builds the whole binding on
//! Linux against `vmnet-model`, a model of vmnet.framework (it stands in for the framework; it
//! does not replace a run on a Mac). Programs that use the binding are in the workspace's `examples`
//! package (`vmnet_echo`, `vmnet_async`).
//!
//! # Shape
//!
//! - [`Options`] describes the interface (mode host, shared or bridged; DHCP range, MTU, offloads…)
//!   and is validated before any call into the framework.
//! - `Interface::start` (macOS) starts the interface, waits for the framework's completion handler
//!   with a timeout and returns with its [`InterfaceParams`] (MAC, MTU, maximum packet size,
//!   read/write batch maxima). `read_batch`/`write_batch` move up to 128 packets per call over
//!   caller-owned buffers, or zero-copy over iovecs; `wait_readable` blocks until the
//!   packets-available event; an event callback runs on a serial dispatch queue owned by the
//!   interface, and a panic in it never unwinds into GCD. `stop` and `Drop` unregister the
//!   callback, stop the interface and release every GCD and xpc object exactly once.
//! - `AsyncInterface` (macOS) offers `recv_batch`/`send_batch` futures woken from the vmnet event
//!   through an atomic waker: no runtime dependency, usable from tokio, smol or a hand-made
//!   executor.
//! - `sys` (macOS) declares every function, constant and key of `<vmnet/vmnet.h>`, gated by the
//!   cargo features `macos-11` … `macos-26` as the SDK gates them.
//!
//! # Privileges
//!
//! vmnet starts interfaces only for root, or for a binary signed with the restricted
//! `com.apple.vm.networking` entitlement, or — from macOS 26 — with the ad-hoc-signable
//! `com.apple.security.virtualization` entitlement. Errors caused by missing privileges say so
//! ([`Error::is_permission`]).
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(target_os = "macos")]
//! # fn main() -> vmnet::Result<()> {
//! use std::time::Duration;
//! use vmnet::{Interface, Options};
//!
//! let iface = Interface::start(&Options::shared(), Duration::from_secs(10))?;
//! let params = iface.params().clone();
//! let mut bufs = vec![vec![0u8; iface.limits().read_capacity()]; params.read_batch()];
//! let mut lens = vec![0usize; bufs.len()];
//! if iface.wait_readable(Some(Duration::from_secs(5))) {
//!     let n = iface.read_batch(&mut bufs, &mut lens)?;
//!     println!("read {n} packets");
//! }
//! iface.stop(Duration::from_secs(5))?;
//! # Ok(())
//! # }
//! # #[cfg(not(target_os = "macos"))]
//! # fn main() {}
//! ```
#![warn(missing_docs)]

pub mod batch;
pub mod error;
pub mod forward;
pub mod iov;
pub mod limits;
pub mod linearize;
pub mod options;
pub mod params;
pub mod ready;

// The runtime modules: on macOS, and off macOS with the test-only `model` feature, which links
// them against the `vmnet-model` crate instead of the framework (see Cargo.toml).
#[cfg(any(target_os = "macos", feature = "model"))]
mod asynch;
#[cfg(any(target_os = "macos", feature = "model"))]
mod interface;
#[cfg(any(target_os = "macos", feature = "model"))]
mod keys;
#[cfg(all(any(target_os = "macos", feature = "model"), feature = "macos-26"))]
pub mod network;
#[cfg(any(target_os = "macos", feature = "model"))]
pub mod sys;
#[cfg(any(target_os = "macos", feature = "model"))]
pub mod xpc;
#[cfg(all(not(target_os = "macos"), feature = "model"))]
use vmnet_model as _;

pub use error::{Error, PRIVILEGE_ADVICE, Result, Status};
pub use options::{Mode, Options};
pub use params::InterfaceParams;

#[cfg(any(target_os = "macos", feature = "model"))]
pub use asynch::{AsyncInterface, Readable};
#[cfg(any(target_os = "macos", feature = "model"))]
pub use interface::{Event, Interface, shared_interface_list};

/// Whether this build contains the vmnet binding (true on macOS; elsewhere only with the
/// test-only `model` feature, where it runs against a model of the framework).
///
/// ```
/// assert_eq!(vmnet::SUPPORTED, cfg!(any(target_os = "macos", feature = "model")));
/// ```
pub const SUPPORTED: bool = cfg!(any(target_os = "macos", feature = "model"));

// The README's examples run as doctests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
