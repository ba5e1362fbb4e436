//! KVM on arm64 Linux.
//!
//! One VM with the guest RAM in memory slots, vCPUs initialized with the host's preferred
//! target and PSCI 0.2, the in-kernel vGICv3 at the device-tree addresses, irqfd for device
//! interrupts and ioeventfd for queue notifications. Facts from the kernel's
//! `Documentation/virt/kvm/api.rst`, `devices/vm.rst` and `devices/arm-vgic-v3.rst`.
//!
//! PSCI: where the kernel has the SMCCC filter (`KVM_ARM_VM_SMCCC_CTRL` /
//! `KVM_ARM_VM_SMCCC_FILTER`, Linux 6.4+), the PSCI function ranges are forwarded to the VMM
//! (`KVM_SMCCC_FILTER_FWD_TO_USER`) and answered by the same
//! [`crate::arch::aarch64::psci`] module Hypervisor.framework uses: every vCPU starts parked in
//! the VMM and comes up through the VMM's CPU_ON, reset with `KVM_ARM_VCPU_INIT` first. On older
//! kernels KVM's own PSCI answers (secondaries start powered off inside the kernel).

use std::cell::Cell;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::bus::MmioBus;
use devices::event::Notifier;
use devices::irq::IrqLine;
use devices::virtio::GuestMemory;
use kvm_bindings::{
    KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_ARM_VM_SMCCC_CTRL, KVM_ARM_VM_SMCCC_FILTER,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_HYPERCALL_EXIT_SMC, KVM_REG_ARM_CORE, KVM_REG_ARM64,
    KVM_REG_SIZE_U64, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
    KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST, kvm_create_device, kvm_device_attr,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, kvm_run, kvm_smccc_filter,
    kvm_smccc_filter_action_KVM_SMCCC_FILTER_FWD_TO_USER, kvm_userspace_memory_region,
    kvm_vcpu_init,
};
use kvm_ioctls::{Cap, DeviceFd, IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use super::{HvError, Result, Vcpu, VcpuExit, Vm};
use crate::arch::aarch64::{PSTATE_EL1H_DAIF, cold, layout};

/// The number of interrupts the vGIC is configured with: 32 private + 96 SPIs (a multiple of 32).
const GIC_NR_IRQS: u32 = 128;

/// Register IDs of the core registers (`struct kvm_regs`): x0 at offset 0, pc at 256, pstate at
/// 264, counted in 32-bit words.
const fn core_reg(offset_bytes: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset_bytes / 4)
}
const REG_X0: u64 = core_reg(0);
/// `x1`..`x3`: the other SMCCC argument and result registers.
const REG_X1_X3: [u64; 3] = [core_reg(8), core_reg(16), core_reg(24)];
const REG_PC: u64 = core_reg(256);
const REG_PSTATE: u64 = core_reg(264);
/// `MPIDR_EL1` as a system register ID: op0 3, op1 0, CRn 0, CRm 0, op2 5.
const REG_MPIDR_EL1: u64 = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | 0x0013_0000 | (3 << 14) | 5;

/// The PSCI function IDs forwarded to the VMM when the kernel has the SMCCC filter: the PSCI
/// range of the standard secure service calls, 0x00-0x1f, in the SMC32 and the SMC64
/// convention (Arm DEN 0028, SMC Calling Convention, "Standard Secure Service Calls"; Arm
/// DEN 0022, PSCI, section 5.1). SMCCC_VERSION and the other Arm architecture calls stay with
/// KVM, which reserves them (vm.rst: 0x8000_0000-0x8000_ffff and 0xc000_0000-0xc000_ffff).
const PSCI_RANGES: [(u32, u32); 2] = [(0x8400_0000, 0x20), (0xc400_0000, 0x20)];

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs (null when none), for [`kick_handler`].
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

/// The vCPU threads' kick signal: sets `immediate_exit` in this thread's `kvm_run`.
///
/// KVM reads `kvm_run.immediate_exit` once as `KVM_RUN` starts and, when it is non-zero,
/// returns `EINTR` without entering the guest (api.rst, "immediate_exit"). So a kick that lands
/// after the thread checked `stopping` but before it entered `KVM_RUN` is not lost: that
/// `KVM_RUN` returns at once. A kick during `KVM_RUN` interrupts it with `EINTR`.
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` is this thread's vCPU's `kvm_run` mapping, set by `create_vcpu` on this
        // thread and cleared by `KvmVcpu::drop` (on this thread) before the mapping goes away.
        // A one-byte volatile store is async-signal-safe, and the vCPU code holds no Rust
        // reference to `kvm_run` outside `KVM_RUN`'s return path.
        unsafe { ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
    }
}

/// The shared part of the VM, also reachable from the vCPU threads.
#[derive(Debug)]
struct Shared {
    vm: VmFd,
    stopping: AtomicBool,
    /// Threads running vCPUs, to kick them out of KVM_RUN: `(vCPU index, thread)`.
    threads: Mutex<Vec<(usize, libc::pthread_t)>>,
    /// Eventfds registered with KVM (dups of our notifiers' descriptors), kept alive.
    eventfds: Mutex<Vec<EventFd>>,
    /// The `KVM_ARM_VCPU_INIT` argument every vCPU got (without `KVM_ARM_VCPU_POWER_OFF`),
    /// repeated to reset a vCPU.
    init: kvm_vcpu_init,
    /// PSCI calls come to the VMM (the kernel took the SMCCC filter).
    vmm_psci: bool,
    /// The guest memory the VM's slots point at: kept as long as the VM or any vCPU exists
    /// (vCPUs hold this `Shared`), and dropped after `vm` (fields drop in order).
    _mem: GuestMemory,
}

/// A KVM virtual machine.
#[derive(Debug)]
pub struct KvmVm {
    _kvm: Kvm,
    shared: Arc<Shared>,
    _gic: DeviceFd,
    seeds: Vec<VcpuFd>,
    mpidrs: Vec<u64>,
}

/// A vCPU running on its own thread.
#[derive(Debug)]
pub struct KvmVcpu {
    fd: VcpuFd,
    shared: Arc<Shared>,
    index: usize,
}

fn open_kvm() -> Result<Kvm> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => HvError::NoKvm,
        libc::EACCES | libc::EPERM => HvError::KvmPermission,
        _ => HvError::call(
            "open /dev/kvm",
            std::io::Error::from_raw_os_error(e.errno()),
        ),
    })
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> HvError {
    move |e| HvError::call(what, std::io::Error::from_raw_os_error(e.errno()))
}

/// Asks KVM to forward the guest's PSCI calls to the VMM as `KVM_EXIT_HYPERCALL`. Returns
/// `false` when the kernel has no SMCCC filter (before Linux 6.4): KVM's own PSCI then answers.
fn forward_psci_to_vmm(vm: &VmFd) -> Result<bool> {
    let probe = kvm_device_attr {
        flags: 0,
        group: KVM_ARM_VM_SMCCC_CTRL,
        attr: u64::from(KVM_ARM_VM_SMCCC_FILTER),
        addr: 0,
    };
    if vm.has_device_attr(&probe).is_err() {
        return Ok(false);
    }
    for (base, nr_functions) in PSCI_RANGES {
        let filter = kvm_smccc_filter {
            base,
            nr_functions,
            action: kvm_smccc_filter_action_KVM_SMCCC_FILTER_FWD_TO_USER as u8,
            pad: [0; 15],
        };
        let attr = kvm_device_attr {
            addr: &raw const filter as u64,
            ..probe
        };
        // vm.rst: the filter must be set before any vCPU has run (EBUSY otherwise); no vCPU
        // exists yet.
        vm.set_device_attr(&attr)
            .map_err(kvm_err("KVM_ARM_VM_SMCCC_FILTER (forward PSCI to the VMM)"))?;
    }
    Ok(true)
}

fn set_attr(dev: &DeviceFd, group: u32, attr: u64, addr: u64, what: &'static str) -> Result<()> {
    let a = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr,
    };
    dev.set_device_attr(&a).map_err(kvm_err(what))
}

/// Takes a new descriptor for `notifier` as a vmm-sys-util `EventFd`, as kvm-ioctls wants.
fn eventfd_of(notifier: &Notifier) -> Result<EventFd> {
    // SAFETY: dup on a descriptor we hold open; the result is checked below.
    let fd = unsafe { libc::dup(notifier.as_raw_fd()) };
    if fd < 0 {
        return Err(HvError::call("dup", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh duplicate of an eventfd that nothing else owns.
    Ok(unsafe { EventFd::from_raw_fd(fd) })
}

impl KvmVm {
    /// Creates the VM: memory slots for every region of `mem`, `vcpus` vCPUs, the vGICv3.
    pub fn new(mem: &GuestMemory, vcpus: usize) -> Result<Self> {
        let kvm = open_kvm()?;
        let max = kvm.get_max_vcpus().min(layout::max_vcpus());
        if vcpus == 0 || vcpus > max {
            return Err(HvError::TooManyVcpus {
                requested: vcpus,
                max,
            });
        }
        if !kvm.check_extension(Cap::Irqfd) || !kvm.check_extension(Cap::Ioeventfd) {
            return Err(HvError::Unhandled(
                "this kernel's KVM lacks irqfd or ioeventfd".into(),
            ));
        }
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| {
                    HvError::Unhandled("guest memory region has no host mapping".into())
                })?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mmap of `memory_size` bytes owned by `mem`; the VM
            // keeps a clone of `mem` in `Shared`, which outlives the VM fd and every vCPU.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }

        let vmm_psci = forward_psci_to_vmm(&vm)?;
        if vmm_psci {
            tracing::info!(
                "PSCI: served by the VMM (KVM forwards the PSCI calls through its SMCCC filter)"
            );
        } else {
            tracing::info!(
                "PSCI: served by KVM (this kernel has no SMCCC filter, which came with Linux 6.4)"
            );
        }

        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)
            .map_err(kvm_err("KVM_ARM_PREFERRED_TARGET"))?;
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        let mut seeds = Vec::with_capacity(vcpus);
        let mut mpidrs = Vec::with_capacity(vcpus);
        for i in 0..vcpus {
            let fd = vm
                .create_vcpu(i as u64)
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let mut vi = init;
            // With KVM's PSCI the secondaries wait powered off inside the kernel; with the
            // VMM's, they wait parked in the VMM and never enter KVM_RUN before their CPU_ON.
            if i > 0 && !vmm_psci {
                vi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
            }
            fd.vcpu_init(&vi).map_err(kvm_err("KVM_ARM_VCPU_INIT"))?;
            let mut m = [0u8; 8];
            fd.get_one_reg(REG_MPIDR_EL1, &mut m)
                .map_err(kvm_err("read MPIDR_EL1"))?;
            mpidrs.push(u64::from_le_bytes(m) & layout::MPIDR_AFFINITY_MASK);
            seeds.push(fd);
        }

        // The vGIC is initialized after every vCPU exists (arm-vgic-v3.rst).
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let gic = vm.create_device(&mut dev).map_err(kvm_err(
            "KVM_CREATE_DEVICE (vGICv3): does the host have a GICv3?",
        ))?;
        let dist = layout::GIC_DIST_BASE;
        let redist = layout::GIC_REDIST_BASE;
        set_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST),
            &raw const dist as u64,
            "vGIC distributor address",
        )?;
        set_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
            &raw const redist as u64,
            "vGIC redistributor address",
        )?;
        let nr_irqs = GIC_NR_IRQS;
        set_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
            0,
            &raw const nr_irqs as u64,
            "vGIC interrupt count",
        )?;
        set_attr(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
            0,
            "vGIC init",
        )?;

        register_signal_handler(SIGRTMIN(), kick_handler).map_err(|e| {
            HvError::call(
                "install the vCPU kick signal handler",
                std::io::Error::from_raw_os_error(e.errno()),
            )
        })?;

        Ok(Self {
            _kvm: kvm,
            shared: Arc::new(Shared {
                vm,
                stopping: AtomicBool::new(false),
                threads: Mutex::new(Vec::new()),
                eventfds: Mutex::new(Vec::new()),
                init,
                vmm_psci,
                _mem: mem.clone(),
            }),
            _gic: gic,
            seeds,
            mpidrs,
        })
    }
}

/// A level-triggered SPI driven with `KVM_IRQ_LINE`.
#[derive(Debug)]
struct KvmIrqLine {
    shared: Arc<Shared>,
    irq: u32,
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, high: bool) -> std::io::Result<()> {
        self.shared
            .vm
            .set_irq_line(self.irq, high)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

impl Vm for KvmVm {
    type VcpuSeed = (usize, VcpuFd);
    type Vcpu = KvmVcpu;

    fn handles_psci(&self) -> bool {
        !self.shared.vmm_psci
    }

    fn mpidrs(&self) -> Vec<u64> {
        self.mpidrs.clone()
    }

    fn take_vcpu_seeds(&mut self) -> Vec<Self::VcpuSeed> {
        std::mem::take(&mut self.seeds)
            .into_iter()
            .enumerate()
            .collect()
    }

    fn create_vcpu(&self, (index, mut fd): Self::VcpuSeed) -> Result<KvmVcpu> {
        let run: *mut kvm_run = fd.get_kvm_run();
        KVM_RUN.with(|r| r.set(run));
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.shared
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, me));
        Ok(KvmVcpu {
            fd,
            shared: Arc::clone(&self.shared),
            index,
        })
    }

    fn connect_irq(&self, notifier: &Notifier, spi: u32) -> Result<()> {
        let efd = eventfd_of(notifier)?;
        self.shared
            .vm
            .register_irqfd(&efd, layout::spi_to_kvm_irqfd_gsi(spi))
            .map_err(kvm_err("KVM_IRQFD"))?;
        self.shared
            .eventfds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(efd);
        Ok(())
    }

    fn irq_line(&self, spi: u32) -> Arc<dyn IrqLine> {
        Arc::new(KvmIrqLine {
            shared: Arc::clone(&self.shared),
            irq: layout::kvm_irq_line_spi(spi),
        })
    }

    fn connect_queue_notify(&self, notifier: &Notifier, addr: u64, queue: u32) -> Result<bool> {
        let efd = eventfd_of(notifier)?;
        self.shared
            .vm
            .register_ioevent(&efd, &IoEventAddress::Mmio(addr), queue)
            .map_err(kvm_err("KVM_IOEVENTFD"))?;
        self.shared
            .eventfds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(efd);
        Ok(true)
    }

    /// Sets `stopping`, then signals every vCPU thread once: the handler sets `immediate_exit`,
    /// so each vCPU leaves `KVM_RUN` or does not enter it again ([`kick_handler`]). One kick is
    /// enough; nothing is retried.
    fn stop_vcpus(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let threads = self
            .shared
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &(_, t) in threads.iter() {
            // SAFETY: a thread is in the list only while its `KvmVcpu` exists (its `Drop`
            // removes it under this lock before the thread can end), so `t` names a live thread.
            unsafe {
                libc::pthread_kill(t, SIGRTMIN());
            }
        }
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        // Runs on the vCPU's own thread (`KvmVcpu` is created there and not sent elsewhere).
        self.shared
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&(index, _)| index != self.index);
        KVM_RUN.with(|r| r.set(ptr::null_mut()));
    }
}

impl Vcpu for KvmVcpu {
    fn run(&mut self, bus: &MmioBus) -> Result<VcpuExit> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Ok(VcpuExit::Stopped);
        }
        match self.fd.run() {
            Ok(kvm_ioctls::VcpuExit::MmioRead(addr, data)) => {
                if !bus.read(addr, data) {
                    data.fill(0);
                    tracing::debug!(vcpu = self.index, addr, "read from unmapped MMIO address");
                }
                Ok(VcpuExit::Continue)
            }
            Ok(kvm_ioctls::VcpuExit::MmioWrite(addr, data)) => {
                if !bus.write(addr, data) {
                    tracing::debug!(vcpu = self.index, addr, "write to unmapped MMIO address");
                }
                Ok(VcpuExit::Continue)
            }
            Ok(kvm_ioctls::VcpuExit::SystemEvent(kind, _)) => Ok(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::SystemOff,
                KVM_SYSTEM_EVENT_RESET => VcpuExit::SystemReset,
                KVM_SYSTEM_EVENT_CRASH => VcpuExit::Crash,
                other => {
                    tracing::warn!(vcpu = self.index, kind = other, "unknown system event");
                    VcpuExit::Continue
                }
            }),
            // A PSCI call the SMCCC filter forwarded. api.rst (KVM_EXIT_HYPERCALL, arm64): `nr`
            // is the function ID, the arguments are read from the vCPU's registers, the
            // `KVM_HYPERCALL_EXIT_SMC` flag tells SMC from HVC, and "at the point of exit, PC
            // points to the instruction immediately following the trapping instruction". Both
            // conduits are answered, as KVM's own PSCI does.
            Ok(kvm_ioctls::VcpuExit::Hypercall(h)) => {
                let (nr, flags) = (h.nr, h.longmode);
                let mut args = [0u64; 3];
                for (arg, reg) in args.iter_mut().zip(REG_X1_X3) {
                    let mut b = [0u8; 8];
                    self.fd
                        .get_one_reg(reg, &mut b)
                        .map_err(kvm_err("read a hypercall argument"))?;
                    *arg = u64::from_le_bytes(b);
                }
                tracing::trace!(
                    vcpu = self.index,
                    function = format_args!("{nr:#x}"),
                    smc = flags & KVM_HYPERCALL_EXIT_SMC != 0,
                    "hypercall forwarded by KVM"
                );
                Ok(VcpuExit::Hypercall { x0: nr, args })
            }
            Ok(kvm_ioctls::VcpuExit::Hlt) | Ok(kvm_ioctls::VcpuExit::Intr) => {
                Ok(VcpuExit::Continue)
            }
            Ok(kvm_ioctls::VcpuExit::Shutdown) => Ok(VcpuExit::SystemOff),
            Ok(kvm_ioctls::VcpuExit::FailEntry(reason, cpu)) => Err(HvError::Unhandled(format!(
                "KVM_RUN failed to enter the guest (reason {reason:#x}, cpu {cpu})"
            ))),
            Ok(kvm_ioctls::VcpuExit::InternalError) => {
                Err(HvError::Unhandled("KVM internal error".into()))
            }
            Ok(other) => {
                tracing::warn!(vcpu = self.index, exit = ?other, "unexpected KVM exit");
                Ok(VcpuExit::Continue)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(if self.shared.stopping.load(Ordering::SeqCst) {
                    VcpuExit::Stopped
                } else {
                    VcpuExit::Continue
                })
            }
            Err(e) => Err(kvm_err("KVM_RUN")(e)),
        }
    }

    fn set_x0(&mut self, value: u64) -> Result<()> {
        self.fd
            .set_one_reg(REG_X0, &value.to_le_bytes())
            .map_err(kvm_err("set x0"))?;
        for reg in REG_X1_X3 {
            self.fd
                .set_one_reg(reg, &0u64.to_le_bytes())
                .map_err(kvm_err("set x1-x3"))?;
        }
        Ok(())
    }

    /// A second `KVM_ARM_VCPU_INIT` with the same target and features: api.rst, 4.82
    /// KVM_ARM_VCPU_INIT, "Userspace can call this function multiple times for a given vcpu,
    /// including after the vcpu has been run. This will reset the vcpu to its initial state."
    /// `SCTLR_EL1` is read before and after, logged, and checked: a vCPU whose MMU or caches
    /// are still on is not started.
    fn reset(&mut self) -> Result<()> {
        let sctlr = |fd: &VcpuFd| -> Result<u64> {
            let mut b = [0u8; 8];
            fd.get_one_reg(cold::SCTLR_EL1.kvm_reg_id(), &mut b)
                .map_err(kvm_err("read SCTLR_EL1"))?;
            Ok(u64::from_le_bytes(b))
        };
        let before = sctlr(&self.fd)?;
        self.fd
            .vcpu_init(&self.shared.init)
            .map_err(kvm_err("KVM_ARM_VCPU_INIT (vCPU reset)"))?;
        let after = sctlr(&self.fd)?;
        tracing::info!(
            vcpu = self.index,
            sctlr_before = format_args!("{before:#x}"),
            sctlr_after = format_args!("{after:#x}"),
            "vCPU reset to its cold state (KVM_ARM_VCPU_INIT)"
        );
        if cold::sctlr_not_cold(after) {
            return Err(HvError::Unhandled(format!(
                "vCPU {} still has SCTLR_EL1 = {after:#x} (MMU or caches on) after \
                 KVM_ARM_VCPU_INIT",
                self.index
            )));
        }
        Ok(())
    }

    fn set_boot_registers(&mut self, entry: u64, x0: u64) -> Result<()> {
        for (reg, value, what) in [
            (REG_PSTATE, PSTATE_EL1H_DAIF, "set PSTATE"),
            (REG_PC, entry, "set PC"),
            (REG_X0, x0, "set x0"),
        ] {
            self.fd
                .set_one_reg(reg, &value.to_le_bytes())
                .map_err(kvm_err(what))?;
        }
        Ok(())
    }
}
