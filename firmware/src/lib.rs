//! Images and runner for the end-to-end test bed (docs/design.md, "Tests, from fast to real"
//! and "Toolchain and test bed").
//!
//! Everything is made from Debian's arm64 packages, so a fresh CI machine can rebuild it:
//!
//! - the **guest**: Debian's arm64 kernel `Image` and an initramfs with a static busybox, the
//!   virtio-mmio/virtio-net modules and [`GUEST_INIT`], which brings up `eth0`, pings a peer and
//!   prints one `VMNET-RESULT ...` line on the console;
//! - the **emulated host**: Debian's arm64 kernel from bookworm-backports (6.12: KVM built in,
//!   with the SMCCC filter that lets the VMM's own PSCI serve the guest) with an initramfs
//!   holding busybox, the tun/bridge/veth modules, the `vmm` binary, the guest images and
//!   [`HOST_INIT`], which builds a LAN (bridge `br0`, `tap0`, a veth to the network namespace
//!   `peer` at 10.0.2.1/24), runs the vmm on the guest and prints `VMM-EXIT code=N`;
//! - the **runner**: boots the emulated host under `qemu-system-aarch64` (TCG, with EL2 so the
//!   host's kernel runs real KVM), streams its console and stops it on a timeout.
//!
//! ```no_run
//! use firmware::{Layout, RunOptions};
//! # fn main() -> anyhow::Result<()> {
//! let layout = Layout::default_for_workspace();
//! let vmm = firmware::build_vmm(&layout)?;
//! let guest = firmware::build_guest(&layout)?;
//! let host = firmware::build_host(&layout, Some(&vmm), &guest)?;
//! let outcome = firmware::run_host(&layout, &host, &RunOptions::default())?;
//! assert_eq!(outcome.vmm_exit_code(), Some(0));
//! # Ok(()) }
//! ```

mod apt;
pub mod bench;
mod bundle;
pub mod console;
pub mod cpio;
mod deb;
mod elf;
pub mod fetch;
mod images;
mod initramfs;
mod lan;
mod modules;
mod runner;
pub mod soak;
mod vmm;

pub use console::{Marker, PingResult};
pub use images::{
    BenchImages, DebSources, GuestImages, HostImages, build_bench_images, build_guest,
    build_guest_from, build_host, build_host_with, build_link_host, build_model_images,
};
pub use initramfs::Initramfs;
pub use lan::Lan;
pub use runner::{RunOptions, RunOutcome, run_guest_direct, run_host};
pub use vmm::{build_vmm, build_vmm_model, missing_tools};

use std::path::{Path, PathBuf};

/// The guest's `/init` (busybox sh), kept as a file in `firmware/guest/init`.
pub const GUEST_INIT: &str = include_str!("../guest/init");
/// The guest's udhcpc hook, used with `vmnet.ip=dhcp`.
pub const GUEST_UDHCPC_SCRIPT: &str = include_str!("../guest/udhcpc.script");
/// The emulated host's `/init` (busybox sh), kept as a file in `firmware/host/init`.
pub const HOST_INIT: &str = include_str!("../host/init");

/// The MAC address the host init gives the guest's NIC, and the tests expect.
pub const GUEST_MAC: &str = "52:54:00:12:34:56";

/// Where the images, the package cache and the logs go.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The output root (`target/firmware` of the workspace by default).
    pub root: PathBuf,
}

impl Layout {
    /// A layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$FIRMWARE_DIR` if set, otherwise `<workspace>/target/firmware`.
    pub fn default_for_workspace() -> Self {
        match std::env::var_os("FIRMWARE_DIR") {
            Some(dir) => Self::new(dir),
            None => Self::new(workspace_root().join("target").join("firmware")),
        }
    }

    /// Downloaded `.deb` files and their unpacked contents.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// `Image` and `initramfs.cpio.gz` of the guest.
    pub fn guest_dir(&self) -> PathBuf {
        self.root.join("guest")
    }

    /// `Image` and `initramfs.cpio.gz` of the emulated host.
    pub fn host_dir(&self) -> PathBuf {
        self.root.join("host")
    }

    /// The images of `firmware bench` (`guest/`, `host/`), apart from the default ones.
    pub fn bench_dir(&self) -> PathBuf {
        self.root.join("bench")
    }

    /// Console logs of the runs.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
}

/// The workspace this crate was built in (the parent of `firmware/`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Prints a progress line on stderr (stdout carries the consoles).
pub(crate) fn progress(msg: impl std::fmt::Display) {
    eprintln!("firmware: {msg}");
}
