//! The arm64 guest platform, shared by the Hypervisor.framework and KVM backends.
//!
//! Nothing here touches a hypervisor: these modules compute and decode, and the backends act.
//!
//! - [`layout`]: the guest physical memory map (GICv3, PL011, virtio-mmio slots, RAM), interrupt
//!   numbering and vCPU MPIDRs.
//! - [`image`]: parsing and validating the arm64 Linux `Image` header.
//! - [`placement`]: where the kernel, initrd and device tree go in guest RAM.
//! - [`fdt`]: the flattened device tree handed to the kernel in `x0`.
//! - [`psci`]: the PSCI 1.0 / SMCCC firmware interface the guest calls with `hvc`.
//! - [`cold`]: the EL1 state of a vCPU that never ran, for PSCI `CPU_ON` after `CPU_OFF`.
//! - [`esr`]: decoding `ESR_EL2` exception syndromes (Hypervisor.framework exits).
//!
//! The boot protocol these follow is Linux's `Documentation/arch/arm64/booting.rst`: the
//! primary vCPU starts at the kernel load address with `x0` = device tree address and
//! `x1`..`x3` = 0, MMU off, in EL1h with all of DAIF masked.

pub mod cold;
pub mod esr;
pub mod fdt;
pub mod image;
pub mod layout;
pub mod placement;
pub mod psci;

/// `PSTATE` (`CPSR`) a vCPU enters the kernel with: EL1h (M = 0b0101) with D, A, I and F
/// masked (booting.rst). Both backends write it; the registers `x1`..`x3` are zero.
pub const PSTATE_EL1H_DAIF: u64 = 0x3c5;
