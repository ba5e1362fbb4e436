//! The `vmm` crate: an arm64 virtual machine monitor that boots a Linux kernel with a
//! virtio-net device, on Hypervisor.framework (macOS) or KVM (arm64 Linux).
//!
//! This library holds the parts of the VMM that are the same on every host and are unit-tested
//! on any machine, x86_64 included:
//!
//! - [`arch`]: the arm64 platform: the guest memory map, the `Image` header, the placement of
//!   kernel, initrd and device tree in guest RAM, the device tree itself, the PSCI handler and
//!   the ESR decoder the Hypervisor.framework backend needs.
//! - [`check`]: `vmm check`, the host probe a user runs before anything else.
//! - [`cli`]: the command line.
//! - [`hv`]: the hypervisor seam, with the KVM backend (arm64 Linux) and the Hypervisor.framework
//!   backend (macOS); its portable logic (`hv::hvf_logic`) is tested everywhere.
//! - [`machine`]: builds the machine from the command line (images, devices, device tree) and
//!   runs the vCPU loop, the same for both hypervisors.
//! - [`console`]: the serial console on the terminal.
//!
//! ```
//! use vmm::arch::aarch64::{fdt, layout};
//!
//! let config = fdt::FdtConfig::with_default_layout(2, 512 << 20, "console=ttyAMA0");
//! let blob = fdt::build(&config).unwrap();
//! assert!(blob.len() <= layout::DTB_MAX_SIZE as usize);
//! ```

pub mod arch;
pub mod check;
pub mod cli;
pub mod console;
pub mod hv;
pub mod machine;
#[cfg(any(target_os = "macos", feature = "vmnet-model"))]
pub mod vmnet_backend;
