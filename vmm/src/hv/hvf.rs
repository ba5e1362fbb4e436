//! Hypervisor.framework on Apple silicon (macOS 15 or later), through applevisor.
//!
//! One VM per process (`hv_vm_create`), guest RAM mapped read/write/execute from the same
//! `GuestMemoryMmap` the devices use (`hv_vm_map`), the in-kernel GICv3 (`hv_gic_create`, macOS
//! 15) at the device-tree addresses, vCPUs created on the thread that runs them
//! (`hv_vcpu_create`: "Creates a vCPU instance for the current thread") with `MPIDR_EL1` set
//! from [`layout::mpidr_el1`], because the GIC routes by affinity.
//!
//! - MMIO, hypercalls, WFx and system register traps are decided by the portable
//!   [`hvf_logic`] module; this file reads registers and calls the framework.
//! - PSCI is the VMM's own (`handles_psci` is false): HVC and SMC come back as
//!   [`VcpuExit::Hypercall`].
//! - Device interrupts: the framework has no irqfd, so an interrupt thread
//!   ([`hvf_logic::IrqForwarder`]) waits on the devices' kqueue notifiers and calls
//!   `hv_gic_set_spi`. Queue notifications take the MMIO path (no ioeventfd either).
//! - Setup order (hv_gic.h): the VM first (`hv_vm_create`), then the GIC geometry is read and
//!   checked, then the GIC configuration is created and the GIC with it (`hv_gic_create`), then
//!   the vCPUs: [`hvf_logic::create_vm_with_gic`]. applevisor's `VirtualMachine::with_gic` takes
//!   a GIC configuration made before the VM exists, so the GIC calls go through `applevisor-sys`.
//! - Placement: after each vCPU's `MPIDR_EL1` is set, `hv_gic_get_redistributor_base` must give
//!   one of the frames the device tree describes, not shared, or the vCPU is refused
//!   ([`hvf_logic::RedistributorFrames`]); the distributor and the whole redistributor region
//!   are checked against the device tree and the other devices ([`hvf_logic::check_gic_regions`]).
//! - The virtual timer: one offset for the whole VM ([`hvf_logic::VmClock`]), taken at VM
//!   creation and set on every vCPU. With `hv_gic_create` the framework delivers the timer's PPI
//!   to the GIC itself. QEMU's HVF backend, with the same in-kernel GIC, treats a
//!   `HV_EXIT_REASON_VTIMER_ACTIVATED` exit as impossible; should one come, it is handled as
//!   `hv_vcpu_set_vtimer_mask`'s documentation says ([`hvf_logic::VtimerMask`]): the PPI is made
//!   pending in the vCPU's redistributor and the timer stays masked until the guest dealt with
//!   it.
//! - WFI: with the in-kernel GIC the framework waits in the kernel (Apple documents a
//!   per-vCPU "time spent at WFI instruction while waiting for interrupts" that exists only for
//!   VMs with a GIC). Should a WFI exit arrive anyway, the vCPU thread sleeps until the
//!   guest's timer deadline, at most [`WFI_MAX_WAIT`], or a stop request.
//! - Stopping: [`Vm::stop_vcpus`] sets a flag, calls `hv_vcpus_exit` on every vCPU and wakes any
//!   vCPU sleeping in WFI; a vCPU returns [`VcpuExit::Stopped`] on its next exit.
//!
//! Every framework call and the header it was written against are listed in
//! `docs/macos-checklist.md` (section "Hypervisor.framework").

use std::ffi::c_void;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use applevisor::error::HypervisorError;
use applevisor::gic::{GicConfig, GicRedistributorReg};
use applevisor::vcpu::{ExitReason, Reg, SysReg, Vcpu as HvVcpu, VcpuConfig, VcpuHandle};
use applevisor::vm::{GicDisabled, VirtualMachine, VirtualMachineConfig, VirtualMachineInstance};
use devices::bus::MmioBus;
use devices::event::Notifier;
use devices::irq::IrqLine;
use devices::ratelimit::RateLimit;
use devices::virtio::GuestMemory;
use devices::warn_limited;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::hvf_logic::{
    self, ExceptionAction, Gic, GicIrqLine, GicLimits, GicSetup, GuestRegisters, IrqForwarder,
    RedistributorFrames, VcpuTimer, VmClock, VtimerMask,
};
use super::{HvError, Result, Vcpu, VcpuExit, Vm};
use crate::arch::aarch64::cold;
use crate::arch::aarch64::esr::Esr;
use crate::arch::aarch64::{PSTATE_EL1H_DAIF, layout};

/// The longest a vCPU sleeps on a WFI exit: other interrupts than its timer may become pending
/// meanwhile, and nothing wakes the thread for them, so this bounds their latency.
pub const WFI_MAX_WAIT: Duration = Duration::from_millis(1);

/// How often a stop request is repeated until every vCPU thread ended
/// ([`Vm::stop_retry_interval`]).
const STOP_RETRY: Duration = Duration::from_millis(5);

/// The page size `hv_vm_map` requires alignment to on Apple silicon (16 KiB).
const HV_PAGE_SIZE: u64 = applevisor_sys::PAGE_SIZE as u64;

/// The general-purpose registers by number, for register writeback.
const GP_REGS: [Reg; 31] = [
    Reg::X0,
    Reg::X1,
    Reg::X2,
    Reg::X3,
    Reg::X4,
    Reg::X5,
    Reg::X6,
    Reg::X7,
    Reg::X8,
    Reg::X9,
    Reg::X10,
    Reg::X11,
    Reg::X12,
    Reg::X13,
    Reg::X14,
    Reg::X15,
    Reg::X16,
    Reg::X17,
    Reg::X18,
    Reg::X19,
    Reg::X20,
    Reg::X21,
    Reg::X22,
    Reg::X23,
    Reg::X24,
    Reg::X25,
    Reg::X26,
    Reg::X27,
    Reg::X28,
    Reg::X29,
    Reg::X30,
];

/// The framework's names of the registers of [`cold::COLD_EL1`], in the same order; the
/// assertion below checks at compile time that each `hv_sys_reg_t` value is the encoding the
/// portable table names.
const COLD_EL1_REGS: [SysReg; 26] = [
    SysReg::SCTLR_EL1,
    SysReg::CPACR_EL1,
    SysReg::TTBR0_EL1,
    SysReg::TTBR1_EL1,
    SysReg::TCR_EL1,
    SysReg::SPSR_EL1,
    SysReg::ELR_EL1,
    SysReg::SP_EL0,
    SysReg::AFSR0_EL1,
    SysReg::AFSR1_EL1,
    SysReg::ESR_EL1,
    SysReg::FAR_EL1,
    SysReg::PAR_EL1,
    SysReg::MAIR_EL1,
    SysReg::AMAIR_EL1,
    SysReg::VBAR_EL1,
    SysReg::CONTEXTIDR_EL1,
    SysReg::TPIDR_EL1,
    SysReg::CNTKCTL_EL1,
    SysReg::CSSELR_EL1,
    SysReg::TPIDR_EL0,
    SysReg::TPIDRRO_EL0,
    SysReg::CNTV_CTL_EL0,
    SysReg::CNTV_CVAL_EL0,
    SysReg::SP_EL1,
    SysReg::MDSCR_EL1,
];
const _: () = {
    assert!(COLD_EL1_REGS.len() == cold::COLD_EL1.len());
    let mut i = 0;
    while i < COLD_EL1_REGS.len() {
        assert!(COLD_EL1_REGS[i] as u16 == cold::COLD_EL1[i].1.0);
        i += 1;
    }
};

/// What went wrong setting up Hypervisor.framework, with what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum HvfError {
    /// `hv_vm_create` returned `HV_DENIED`.
    #[error(
        "Hypervisor.framework refused to create a VM: the vmm binary must be signed with the \
         com.apple.security.hypervisor entitlement. `cargo run` does it through \
         vmm/macos/run-signed.sh; by hand: codesign --sign - --force --entitlements \
         vmm/macos/entitlements.plist <path to vmm>"
    )]
    NoEntitlement,
    /// The framework has no hypervisor to offer.
    #[error(
        "Hypervisor.framework is not available on this Mac: it needs Apple silicon, and inside \
         another virtual machine a host that offers nested virtualization"
    )]
    Unavailable(#[source] HypervisorError),
    /// `hv_vm_create` returned `HV_BUSY`.
    #[error("a virtual machine already exists in this process (Hypervisor.framework allows one)")]
    Busy,
    /// The VM was created but its GIC was not.
    #[error(
        "the in-kernel GICv3 could not be created (hv_gic_create) with its distributor at \
         {:#x} and redistributors at {:#x}: it needs macOS 15 or later on Apple silicon",
        layout::GIC_DIST_BASE,
        layout::GIC_REDIST_BASE
    )]
    GicUnavailable(#[source] HypervisorError),
    /// Guest RAM ends above what the host can address.
    #[error(
        "guest RAM ends at {end:#x}, which needs {needed}-bit guest physical addresses, but this \
         Mac supports {max} bits: use less --memory"
    )]
    RamTooLarge {
        /// End of guest RAM.
        end: u64,
        /// Bits needed.
        needed: u32,
        /// The framework's maximum.
        max: u32,
    },
    /// A RAM region cannot be mapped because of its alignment.
    #[error(
        "guest RAM region at {ipa:#x} ({size:#x} bytes) is not aligned to the 16 KiB pages \
         Hypervisor.framework maps: use a --memory size that is a multiple of 16 KiB"
    )]
    Misaligned {
        /// Guest physical start.
        ipa: u64,
        /// Size in bytes.
        size: u64,
    },
}

fn setup_error(what: &'static str, e: HvfError) -> HvError {
    HvError::call(what, io::Error::other(e))
}

/// Maps a failed framework call to [`HvError::Call`] naming the call.
fn framework(what: &'static str) -> impl Fn(HypervisorError) -> HvError {
    move |e| HvError::call(what, io::Error::other(e))
}

/// The advice for a failed `hv_vm_create`.
fn vm_create_error(e: HypervisorError) -> HvError {
    let what = "creating the VM (hv_vm_create)";
    match e {
        HypervisorError::Denied => setup_error(what, HvfError::NoEntitlement),
        HypervisorError::Busy => setup_error(what, HvfError::Busy),
        HypervisorError::Unsupported | HypervisorError::NoDevice => {
            setup_error(what, HvfError::Unavailable(e))
        }
        other => framework(what)(other),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The VM handle: applevisor's, without its GIC layer (the GIC is created through
/// `applevisor-sys`, after the VM).
pub type VmHandle = VirtualMachineInstance<GicDisabled>;

/// Turns an `hv_return_t` into a result.
fn hv_result(ret: applevisor_sys::hv_return_t) -> std::result::Result<(), HypervisorError> {
    if ret == applevisor_sys::hv_error_t::HV_SUCCESS as applevisor_sys::hv_return_t {
        Ok(())
    } else {
        Err(HypervisorError::from(ret))
    }
}

/// The in-kernel GIC as [`hvf_logic`] sees it.
#[derive(Debug)]
pub struct HvfGic {
    /// Keeps the VM (and with it the GIC) alive.
    _vm: VmHandle,
}

impl Gic for HvfGic {
    fn set_spi(&self, intid: u32, level: bool) -> io::Result<()> {
        // SAFETY: plain values, no pointers; the GIC exists for as long as `_vm` (it was created
        // before this `HvfGic`), and an INTID outside the SPI range is refused by the framework
        // with HV_BAD_ARGUMENT (hv_gic.h, `hv_gic_set_spi`).
        hv_result(unsafe { applevisor_sys::hv_gic_set_spi(intid, level) }).map_err(io::Error::other)
    }
}

/// [`GicSetup`] on Hypervisor.framework.
struct FrameworkSetup<'a> {
    mem: &'a GuestMemory,
}

/// Releases a GIC configuration object when dropped (hv_gic.h, `hv_gic_config_create`:
/// "Release with os_release when no longer needed").
struct GicConfigObject(applevisor_sys::hv_gic_config_t);

impl Drop for GicConfigObject {
    fn drop(&mut self) {
        // SAFETY: a non-null object returned by `hv_gic_config_create`, released once.
        unsafe { applevisor_sys::os_release(self.0) }
    }
}

impl GicSetup for FrameworkSetup<'_> {
    type Vm = VmHandle;

    fn create_vm(&mut self) -> Result<VmHandle> {
        VirtualMachine::with_config(vm_config(self.mem)?).map_err(vm_create_error)
    }

    fn gic_limits(&mut self, _vm: &VmHandle) -> Result<GicLimits> {
        gic_limits()
    }

    fn create_gic(&mut self, _vm: &VmHandle, dist: u64, redist: u64) -> Result<()> {
        // SAFETY: no arguments; hv_gic.h: "Create the GIC configuration after the virtual
        // machine has been created", which `_vm` proves.
        let config = unsafe { applevisor_sys::hv_gic_config_create() };
        if config.is_null() {
            return Err(HvError::call(
                "creating the GIC configuration (hv_gic_config_create)",
                io::Error::other("the framework returned no object"),
            ));
        }
        let config = GicConfigObject(config);
        // SAFETY: `config.0` is a live configuration object; the base is a plain value.
        hv_result(unsafe { applevisor_sys::hv_gic_config_set_distributor_base(config.0, dist) })
            .map_err(framework(
                "setting the GIC distributor base (hv_gic_config_set_distributor_base)",
            ))?;
        // SAFETY: as above.
        hv_result(unsafe {
            applevisor_sys::hv_gic_config_set_redistributor_base(config.0, redist)
        })
        .map_err(framework(
            "setting the GIC redistributor base (hv_gic_config_set_redistributor_base)",
        ))?;
        // SAFETY: `config.0` is live; the VM exists and no vCPU does yet (hv_gic.h: "must only
        // be called after a virtual machine has been created. It must also be done before
        // vCPU's have been created").
        hv_result(unsafe { applevisor_sys::hv_gic_create(config.0) }).map_err(|e| {
            setup_error(
                "creating the in-kernel GIC (hv_gic_create)",
                HvfError::GicUnavailable(e),
            )
        })
    }
}

/// What the vCPU threads and [`Vm::stop_vcpus`] share.
#[derive(Debug, Default)]
struct VcpuRegistry {
    /// Set by [`Vm::stop_vcpus`]; every later exit is [`VcpuExit::Stopped`].
    stopping: AtomicBool,
    /// Some vCPU has entered the guest.
    running: AtomicBool,
    /// Every vCPU created, for `hv_vcpus_exit` (handles of destroyed vCPUs are skipped).
    handles: Mutex<Vec<VcpuHandle>>,
    /// Wakes vCPUs sleeping on a WFI exit.
    kicks: Mutex<Vec<Arc<Notifier>>>,
}

/// What a vCPU thread needs to create its vCPU: its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvfVcpuSeed {
    index: usize,
}

/// The Hypervisor.framework VM of this process.
#[derive(Debug)]
pub struct HvfVm {
    irq: IrqForwarder<HvfGic>,
    gic: Arc<HvfGic>,
    registry: Arc<VcpuRegistry>,
    mpidrs: Vec<u64>,
    seeds: Vec<HvfVcpuSeed>,
    /// `(guest physical address, size)` of every `hv_vm_map`, unmapped on drop.
    mapped: Vec<(u64, usize)>,
    /// The virtual counter every vCPU shares.
    clock: VmClock,
    /// Which vCPU got which redistributor frame.
    frames: Mutex<RedistributorFrames>,
    vm: VmHandle,
    /// Keeps the mapped host memory alive as long as the VM may use it.
    _mem: GuestMemory,
}

impl HvfVm {
    /// Creates the VM for `vcpus` vCPUs: every region of `mem` mapped read/write/execute at its
    /// guest address, and the in-kernel GICv3 at [`layout::GIC_DIST_BASE`] /
    /// [`layout::GIC_REDIST_BASE`].
    ///
    /// # Errors
    ///
    /// With the advice a user needs: a binary without the `com.apple.security.hypervisor`
    /// entitlement, a Mac without Hypervisor.framework, a GIC that does not fit the memory map,
    /// more vCPUs than the framework or the map allow, more RAM than the host can address.
    pub fn new(mem: &GuestMemory, vcpus: usize) -> Result<HvfVm> {
        if vcpus > layout::max_vcpus() {
            return Err(HvError::TooManyVcpus {
                requested: vcpus,
                max: layout::max_vcpus(),
            });
        }

        let (vm, limits) = hvf_logic::create_vm_with_gic(&mut FrameworkSetup { mem }, vcpus)?;
        tracing::debug!(?limits, "Hypervisor.framework GIC geometry");
        // hv_vcpu.h, `hv_vcpu_set_vtimer_offset`; one value for every vCPU, as QEMU's HVF
        // backend takes `mach_absolute_time()` once per VM.
        let clock = VmClock::new(host_counter().map_or(0, |(count, _)| count));

        let max = HvVcpu::get_max_count().map_err(framework(
            "reading the vCPU limit (hv_vm_get_max_vcpu_count)",
        ))?;
        if vcpus > max as usize {
            return Err(HvError::TooManyVcpus {
                requested: vcpus,
                max: (max as usize).min(layout::max_vcpus()),
            });
        }

        let mapped = map_memory(mem)?;
        let gic = Arc::new(HvfGic { _vm: vm.clone() });
        let irq = IrqForwarder::new(Arc::clone(&gic))
            .map_err(|e| HvError::call("creating the interrupt thread's poller", e))?;
        irq.start()
            .map_err(|e| HvError::call("starting the interrupt thread", e))?;
        Ok(HvfVm {
            irq,
            gic,
            registry: Arc::new(VcpuRegistry::default()),
            mpidrs: (0..vcpus).map(layout::mpidr_affinity).collect(),
            seeds: (0..vcpus).map(|index| HvfVcpuSeed { index }).collect(),
            mapped,
            clock,
            frames: Mutex::new(RedistributorFrames::new(vcpus)),
            vm,
            _mem: mem.clone(),
        })
    }
}

/// For `vmm check`: a VM with its in-kernel GIC, created exactly as [`HvfVm::new`] does (for
/// one vCPU and a 16 KiB RAM, nothing mapped), and the GIC geometry read on the way. The VM is
/// destroyed when the handle drops.
///
/// # Errors
///
/// As [`HvfVm::new`]: no entitlement, no hypervisor, a GIC that cannot be created or does not
/// fit the memory map.
pub fn probe_vm() -> Result<(VmHandle, GicLimits)> {
    let mem = GuestMemory::from_ranges(&[(
        vm_memory::GuestAddress(layout::RAM_BASE),
        HV_PAGE_SIZE as usize,
    )])
    .map_err(|e| HvError::call("allocating a page of guest memory", io::Error::other(e)))?;
    hvf_logic::create_vm_with_gic(&mut FrameworkSetup { mem: &mem }, 1)
}

/// For `vmm check`: creates vCPU 0 of `vm` on this thread, sets its `MPIDR_EL1` as
/// [`Vm::create_vcpu`] does and returns the redistributor base the framework gives it. The vCPU
/// is destroyed on return.
///
/// # Errors
///
/// The framework's, naming the call.
pub fn probe_vcpu(vm: &VmHandle) -> Result<u64> {
    let vcpu = vm
        .vcpu_with_config(VcpuConfig::new())
        .map_err(framework("creating a vCPU (hv_vcpu_create)"))?;
    vcpu.set_sys_reg(SysReg::MPIDR_EL1, layout::mpidr_el1(0))
        .map_err(framework("setting MPIDR_EL1 (hv_vcpu_set_sys_reg)"))?;
    vcpu.get_redistributor_base().map_err(framework(
        "reading the vCPU's GIC redistributor base (hv_gic_get_redistributor_base)",
    ))
}

/// The GIC geometry the framework reports; read once the VM exists.
fn gic_limits() -> Result<GicLimits> {
    let size = |r: applevisor::error::Result<usize>, what: &'static str| -> Result<u64> {
        r.map(|v| v as u64).map_err(framework(what))
    };
    let (spi_base, spi_count) = GicConfig::get_spi_interrupt_range().map_err(framework(
        "reading the SPI range (hv_gic_get_spi_interrupt_range)",
    ))?;
    Ok(GicLimits {
        distributor_size: size(
            GicConfig::get_distributor_size(),
            "reading the GIC distributor size (hv_gic_get_distributor_size)",
        )?,
        distributor_alignment: size(
            GicConfig::get_distributor_base_alignment(),
            "reading the GIC distributor alignment (hv_gic_get_distributor_base_alignment)",
        )?,
        redistributor_size: size(
            GicConfig::get_redistributor_size(),
            "reading the GIC redistributor size (hv_gic_get_redistributor_size)",
        )?,
        redistributor_region_size: size(
            GicConfig::get_redistributor_region_size(),
            "reading the GIC redistributor region size (hv_gic_get_redistributor_region_size)",
        )?,
        redistributor_alignment: size(
            GicConfig::get_redistributor_base_alignment(),
            "reading the GIC redistributor alignment (hv_gic_get_redistributor_base_alignment)",
        )?,
        spi_base,
        spi_count,
    })
}

/// The VM configuration: the default, with a wider IPA space when RAM ends above the default.
fn vm_config(mem: &GuestMemory) -> Result<VirtualMachineConfig> {
    let mut config = VirtualMachineConfig::new();
    let end = mem
        .iter()
        .map(|r| r.start_addr().0.saturating_add(r.len()))
        .max()
        .unwrap_or(0);
    let needed = hvf_logic::required_ipa_bits(end);
    let default = VirtualMachineConfig::get_default_ipa_size().map_err(vm_create_error)?;
    if needed > default {
        let max = VirtualMachineConfig::get_max_ipa_size().map_err(vm_create_error)?;
        if needed > max {
            return Err(setup_error(
                "sizing the guest physical address space",
                HvfError::RamTooLarge { end, needed, max },
            ));
        }
        config.set_ipa_size(needed).map_err(framework(
            "setting the IPA size (hv_vm_config_set_ipa_size)",
        ))?;
    }
    Ok(config)
}

/// Maps every region of `mem` into the VM; returns what was mapped.
fn map_memory(mem: &GuestMemory) -> Result<Vec<(u64, usize)>> {
    let mut mapped = Vec::new();
    for region in mem.iter() {
        let ipa = region.start_addr().0;
        let size = region.len();
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| HvError::call("finding guest RAM in the VMM", io::Error::other(e)))?;
        if !ipa.is_multiple_of(HV_PAGE_SIZE)
            || !size.is_multiple_of(HV_PAGE_SIZE)
            || !(host as u64).is_multiple_of(HV_PAGE_SIZE)
        {
            return Err(setup_error(
                "mapping guest RAM",
                HvfError::Misaligned { ipa, size },
            ));
        }
        let len = usize::try_from(size)
            .map_err(|_| setup_error("mapping guest RAM", HvfError::Misaligned { ipa, size }))?;
        let flags = applevisor_sys::HV_MEMORY_READ
            | applevisor_sys::HV_MEMORY_WRITE
            | applevisor_sys::HV_MEMORY_EXEC;
        // SAFETY: `host..host + len` is one live mapping owned by a region of `mem`; `HvfVm`
        // keeps a clone of `mem` (so the mapping stays valid) and unmaps the range from the VM in
        // its `Drop` before that clone is released. The framework only reads and writes guest RAM
        // there, which the devices also access through volatile vm-memory accessors.
        let ret = unsafe { applevisor_sys::hv_vm_map(host as *const c_void, ipa, len, flags) };
        if ret != 0 {
            return Err(framework("mapping guest RAM (hv_vm_map)")(
                HypervisorError::from(ret),
            ));
        }
        mapped.push((ipa, len));
    }
    Ok(mapped)
}

impl Drop for HvfVm {
    fn drop(&mut self) {
        self.irq.stop();
        for &(ipa, len) in &self.mapped {
            // SAFETY: removes a stage-2 mapping this VM made; it has no precondition on host
            // memory, and after it the framework no longer touches our RAM, which is released
            // when `_mem` drops right after this.
            let ret = unsafe { applevisor_sys::hv_vm_unmap(ipa, len) };
            if ret != 0 {
                tracing::warn!(
                    ipa = format_args!("{ipa:#x}"),
                    error = %HypervisorError::from(ret),
                    "hv_vm_unmap failed"
                );
            }
        }
    }
}

impl Vm for HvfVm {
    type VcpuSeed = HvfVcpuSeed;
    type Vcpu = HvfVcpu;

    fn handles_psci(&self) -> bool {
        false
    }

    fn mpidrs(&self) -> Vec<u64> {
        self.mpidrs.clone()
    }

    fn take_vcpu_seeds(&mut self) -> Vec<HvfVcpuSeed> {
        std::mem::take(&mut self.seeds)
    }

    /// Creates the vCPU on the calling thread and sets its `MPIDR_EL1`.
    ///
    /// Hypervisor.framework's `hv_gic_create` documentation: "Once the virtual machine vcpus are
    /// running, its topology is considered final." Create every vCPU before any of them runs.
    fn create_vcpu(&self, seed: HvfVcpuSeed) -> Result<HvfVcpu> {
        if self.registry.running.load(Ordering::SeqCst) {
            tracing::warn!(
                vcpu = seed.index,
                "vCPU created after another one ran: Hypervisor.framework considers the GIC \
                 topology final once vCPUs run, so this vCPU may get no interrupts"
            );
        }
        let vcpu = self
            .vm
            .vcpu_with_config(VcpuConfig::new())
            .map_err(framework("creating a vCPU (hv_vcpu_create)"))?;
        vcpu.set_sys_reg(SysReg::MPIDR_EL1, layout::mpidr_el1(seed.index))
            .map_err(framework("setting MPIDR_EL1 (hv_vcpu_set_sys_reg)"))?;
        // hv_gic.h, `hv_gic_get_redistributor_base`: "Must be called after the affinity of the
        // given vCPU has been set in its MPIDR_EL1 register."
        let redist = vcpu.get_redistributor_base().map_err(framework(
            "reading the vCPU's GIC redistributor base (hv_gic_get_redistributor_base)",
        ))?;
        lock(&self.frames).claim(seed.index, redist).map_err(|e| {
            HvError::call(
                "checking the vCPU's GIC redistributor placement",
                io::Error::other(e),
            )
        })?;
        tracing::debug!(
            vcpu = seed.index,
            redistributor = format_args!("{redist:#x}"),
            "vCPU created"
        );
        self.clock.init_vcpu(&Timer(&vcpu))?;
        let kick = Arc::new(
            Notifier::new().map_err(|e| HvError::call("creating a vCPU wake-up notifier", e))?,
        );
        lock(&self.registry.handles).push(vcpu.get_handle());
        lock(&self.registry.kicks).push(Arc::clone(&kick));
        Ok(HvfVcpu {
            vcpu,
            index: seed.index,
            registry: Arc::clone(&self.registry),
            kick,
            clock: self.clock,
            vtimer: VtimerMask::default(),
            log: RateLimit::guest_errors(),
        })
    }

    fn connect_irq(&self, notifier: &Notifier, spi: u32) -> Result<()> {
        self.irq
            .connect(notifier, layout::spi_to_intid(spi))
            .map_err(|e| HvError::call("registering a device interrupt", e))
    }

    fn irq_line(&self, spi: u32) -> Arc<dyn IrqLine> {
        Arc::new(GicIrqLine::new(Arc::clone(&self.gic), spi))
    }

    /// Hypervisor.framework has no ioeventfd: queue notifications are MMIO writes.
    fn connect_queue_notify(&self, _notifier: &Notifier, _addr: u64, _queue: u32) -> Result<bool> {
        Ok(false)
    }

    fn stop_vcpus(&self) {
        self.registry.stopping.store(true, Ordering::SeqCst);
        let handles = lock(&self.registry.handles).clone();
        if !handles.is_empty()
            && let Err(e) = self.vm.vcpus_exit(&handles)
        {
            tracing::warn!(error = %e, "hv_vcpus_exit failed");
        }
        for kick in lock(&self.registry.kicks).iter() {
            let _ = kick.notify();
        }
    }

    /// `hv_vcpus_exit` is documented for running vCPUs; whether it makes the next
    /// `hv_vcpu_run` of a vCPU that was between its `stopping` check and `hv_vcpu_run` return
    /// at once is not, so the machine repeats the request until the threads end.
    fn stop_retry_interval(&self) -> Option<Duration> {
        Some(STOP_RETRY)
    }
}

/// A vCPU, bound to the thread that created it (`!Send`, as applevisor's `Vcpu`).
#[derive(Debug)]
pub struct HvfVcpu {
    vcpu: HvVcpu,
    index: usize,
    registry: Arc<VcpuRegistry>,
    kick: Arc<Notifier>,
    clock: VmClock,
    vtimer: VtimerMask,
    log: RateLimit,
}

/// [`VcpuTimer`] of an applevisor vCPU.
struct Timer<'a>(&'a HvVcpu);

impl VcpuTimer for Timer<'_> {
    fn set_vtimer_offset(&self, offset: u64) -> Result<()> {
        self.0.set_vtimer_offset(offset).map_err(framework(
            "setting the vtimer offset (hv_vcpu_set_vtimer_offset)",
        ))
    }
}

/// [`GuestRegisters`] of an applevisor vCPU.
struct Regs<'a>(&'a HvVcpu);

fn gp(n: u8) -> Result<Reg> {
    GP_REGS
        .get(usize::from(n))
        .copied()
        .ok_or_else(|| HvError::Unhandled(format!("general-purpose register x{n} does not exist")))
}

impl GuestRegisters for Regs<'_> {
    fn x(&self, n: u8) -> Result<u64> {
        self.0
            .get_reg(gp(n)?)
            .map_err(framework("reading a guest register (hv_vcpu_get_reg)"))
    }

    fn set_x(&mut self, n: u8, value: u64) -> Result<()> {
        self.0
            .set_reg(gp(n)?, value)
            .map_err(framework("writing a guest register (hv_vcpu_set_reg)"))
    }

    fn advance_pc(&mut self, bytes: u64) -> Result<()> {
        let pc = self
            .0
            .get_reg(Reg::PC)
            .map_err(framework("reading PC (hv_vcpu_get_reg)"))?;
        self.0
            .set_reg(Reg::PC, pc.wrapping_add(bytes))
            .map_err(framework("writing PC (hv_vcpu_set_reg)"))
    }
}

/// The host's virtual counter and its frequency.
#[cfg(target_arch = "aarch64")]
fn host_counter() -> Option<(u64, u64)> {
    let (count, freq): (u64, u64);
    // SAFETY: CNTVCT_EL0 and CNTFRQ_EL0 are readable at EL0 on macOS (mach_absolute_time reads
    // the counter from user space); the instructions only read system registers, touch no
    // memory and change no flags.
    unsafe {
        core::arch::asm!(
            "mrs {c}, cntvct_el0",
            "mrs {f}, cntfrq_el0",
            c = out(reg) count,
            f = out(reg) freq,
            options(nomem, nostack, preserves_flags)
        );
    }
    Some((count, freq))
}

#[cfg(not(target_arch = "aarch64"))]
fn host_counter() -> Option<(u64, u64)> {
    None
}

impl HvfVcpu {
    fn stopping(&self) -> bool {
        self.registry.stopping.load(Ordering::SeqCst)
    }

    /// How long a WFI may sleep: until the guest's virtual timer fires, at most
    /// [`WFI_MAX_WAIT`]. The guest's count is the host's minus the VM's vtimer offset.
    fn wfi_wait(&self) -> Duration {
        let timer = (
            self.vcpu.get_sys_reg(SysReg::CNTV_CTL_EL0),
            self.vcpu.get_sys_reg(SysReg::CNTV_CVAL_EL0),
            host_counter(),
        );
        match timer {
            (Ok(ctl), Ok(cval), Some((now, freq))) => {
                hvf_logic::wfi_timeout(ctl, cval, self.clock.guest_count(now), freq, WFI_MAX_WAIT)
            }
            _ => WFI_MAX_WAIT,
        }
    }

    /// Clears the framework's vtimer mask once the guest has dealt with the timer
    /// ([`VtimerMask::before_run`]).
    fn sync_vtimer(&mut self) -> Result<()> {
        if !self.vtimer.is_masked() {
            return Ok(());
        }
        let ctl = self
            .vcpu
            .get_sys_reg(SysReg::CNTV_CTL_EL0)
            .map_err(framework("reading CNTV_CTL_EL0 (hv_vcpu_get_sys_reg)"))?;
        if self.vtimer.before_run(ctl) {
            self.vcpu.set_vtimer_mask(false).map_err(framework(
                "unmasking the virtual timer (hv_vcpu_set_vtimer_mask)",
            ))?;
        }
        Ok(())
    }

    /// A `HV_EXIT_REASON_VTIMER_ACTIVATED` exit: the framework masked the timer; make its PPI
    /// pending in this vCPU's redistributor (`GICR_ISPENDR0`, write-one-to-set) and leave the
    /// mask until the guest has dealt with it.
    fn vtimer_activated(&mut self) -> Result<()> {
        warn_limited!(
            self.log,
            vcpu = self.index,
            "unexpected virtual timer exit with the in-kernel GIC; delivering the timer \
             interrupt through the redistributor"
        );
        let intid = self.vtimer.on_activated();
        self.vcpu
            .set_redistributor_reg(GicRedistributorReg::ISPENDR0, 1u64 << intid)
            .map_err(framework(
                "making the timer interrupt pending (hv_gic_set_redistributor_reg)",
            ))
    }

    fn exception(&mut self, esr: Esr, ipa: u64, bus: &MmioBus) -> Result<VcpuExit> {
        let action = hvf_logic::handle_exception(esr, ipa, &mut Regs(&self.vcpu), bus)?;
        match action {
            ExceptionAction::Exit(exit) => return Ok(exit),
            ExceptionAction::WaitForInterrupt => {
                let wait = self.wfi_wait();
                if !wait.is_zero() && !self.stopping() {
                    let _ = self.kick.wait_timeout(wait);
                }
            }
            ExceptionAction::Yield => std::thread::yield_now(),
            ExceptionAction::SysRegTrapped(access) => {
                warn_limited!(
                    self.log,
                    vcpu = self.index,
                    register = ?access.reg,
                    read = access.is_read,
                    "guest accessed a trapped system register: reads as zero, writes ignored"
                );
            }
            ExceptionAction::UnclaimedMmio { addr } => {
                warn_limited!(
                    self.log,
                    vcpu = self.index,
                    addr = format_args!("{addr:#x}"),
                    "guest accessed an address with no device: reads as zero, writes ignored"
                );
            }
        }
        Ok(VcpuExit::Continue)
    }
}

impl Vcpu for HvfVcpu {
    /// Runs the vCPU until an exit the loop must see.
    ///
    /// `HV_EXIT_REASON_VTIMER_ACTIVATED` should not happen with the in-kernel GIC. If it does,
    /// the framework has masked the timer (`hv_vcpu_run`: "the VTimer is automatically masked");
    /// the timer PPI is made pending and the mask cleared only once the guest has dealt with the
    /// timer (see [`VtimerMask`]), never at once: while the timer condition holds, an unmasked
    /// timer exits again immediately.
    fn run(&mut self, bus: &MmioBus) -> Result<VcpuExit> {
        if self.stopping() {
            return Ok(VcpuExit::Stopped);
        }
        self.sync_vtimer()?;
        self.registry.running.store(true, Ordering::SeqCst);
        self.vcpu
            .run()
            .map_err(framework("running a vCPU (hv_vcpu_run)"))?;
        if self.stopping() {
            return Ok(VcpuExit::Stopped);
        }
        let exit = self.vcpu.get_exit_info();
        match exit.reason {
            // Only `stop_vcpus` calls hv_vcpus_exit, after setting the flag checked above; a
            // cancel without it is spurious, and the guest simply continues.
            ExitReason::CANCELED => Ok(VcpuExit::Continue),
            ExitReason::EXCEPTION => self.exception(
                Esr(exit.exception.syndrome),
                exit.exception.physical_address,
                bus,
            ),
            ExitReason::VTIMER_ACTIVATED => {
                self.vtimer_activated()?;
                Ok(VcpuExit::Continue)
            }
            ExitReason::UNKNOWN => Err(HvError::Unhandled(
                "Hypervisor.framework reported an exit of unknown reason".into(),
            )),
        }
    }

    fn set_x0(&mut self, value: u64) -> Result<()> {
        let set = |reg, value| {
            self.vcpu
                .set_reg(reg, value)
                .map_err(framework("writing x0-x3 (hv_vcpu_set_reg)"))
        };
        set(Reg::X0, value)?;
        set(Reg::X1, 0)?;
        set(Reg::X2, 0)?;
        set(Reg::X3, 0)
    }

    /// The framework has no reset call (`hv_vcpu.h` offers only `hv_vcpu_create`/`destroy`, and
    /// a vCPU is bound to its thread and to the GIC topology fixed once vCPUs ran), so the cold
    /// state is written: `x0`-`x30` zero, then [`cold::COLD_EL1`] with `hv_vcpu_set_sys_reg`,
    /// and `SCTLR_EL1` read back and checked.
    fn reset(&mut self) -> Result<()> {
        for reg in GP_REGS {
            self.vcpu.set_reg(reg, 0).map_err(framework(
                "zeroing a general-purpose register (hv_vcpu_set_reg)",
            ))?;
        }
        for (reg, (_, _, value)) in COLD_EL1_REGS.iter().zip(cold::COLD_EL1) {
            self.vcpu.set_sys_reg(*reg, *value).map_err(framework(
                "writing a cold EL1 system register (hv_vcpu_set_sys_reg)",
            ))?;
        }
        let sctlr = self
            .vcpu
            .get_sys_reg(SysReg::SCTLR_EL1)
            .map_err(framework("reading SCTLR_EL1 (hv_vcpu_get_sys_reg)"))?;
        if cold::sctlr_not_cold(sctlr) {
            return Err(HvError::Unhandled(format!(
                "vCPU {} still has SCTLR_EL1 = {sctlr:#x} (MMU or caches on) after its reset",
                self.index
            )));
        }
        Ok(())
    }

    fn set_boot_registers(&mut self, entry: u64, x0: u64) -> Result<()> {
        let set = |reg, value, what| self.vcpu.set_reg(reg, value).map_err(framework(what));
        set(Reg::PC, entry, "setting PC (hv_vcpu_set_reg)")?;
        set(Reg::X0, x0, "setting x0 (hv_vcpu_set_reg)")?;
        set(Reg::X1, 0, "setting x1 (hv_vcpu_set_reg)")?;
        set(Reg::X2, 0, "setting x2 (hv_vcpu_set_reg)")?;
        set(Reg::X3, 0, "setting x3 (hv_vcpu_set_reg)")?;
        set(
            Reg::CPSR,
            PSTATE_EL1H_DAIF,
            "setting CPSR (hv_vcpu_set_reg)",
        )
    }
}
