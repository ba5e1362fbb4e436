//! The hypervisor layer: the one seam between the portable VMM and KVM or Hypervisor.framework.
//!
//! A backend provides a [`Vm`] (memory mapped, interrupt controller created, devices' interrupt
//! and queue notifiers wired) and [`Vcpu`]s whose [`Vcpu::run`] decodes and completes MMIO
//! accesses itself, routing them to the [`MmioBus`]. The vCPU loop in `machine.rs` is therefore
//! the same on both: it only sees hypercalls (PSCI, when the VMM handles them), power events and
//! requests to stop.

use std::sync::Arc;

use devices::bus::MmioBus;
use devices::event::Notifier;
use devices::irq::IrqLine;

#[cfg(target_os = "macos")]
pub mod hvf;
pub mod hvf_logic;
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
pub mod kvm;

/// Why a vCPU returned to the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuExit {
    /// Nothing for the loop to do (an MMIO access was completed, a WFI woke up, ...).
    Continue,
    /// An HVC or SMC call for the VMM's PSCI/SMCCC handler: function ID in `x0`, arguments in
    /// `x1`-`x3`. The backend has already moved the PC past the HVC or SMC; write the result
    /// with [`Vcpu::set_x0`].
    Hypercall {
        /// Function ID.
        x0: u64,
        /// Arguments `x1`..`x3`.
        args: [u64; 3],
    },
    /// The guest powered the machine off (PSCI SYSTEM_OFF handled by the hypervisor).
    SystemOff,
    /// The guest asked for a reset (PSCI SYSTEM_RESET handled by the hypervisor).
    SystemReset,
    /// The hypervisor reports the guest crashed.
    Crash,
    /// The VMM asked the vCPU to stop (a kick).
    Stopped,
}

/// Errors of the hypervisor layer; each says what to do when the user can do something.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// No hypervisor device.
    #[error(
        "/dev/kvm does not exist: this VMM needs KVM on an arm64 Linux host (is virtualization enabled and the kvm module loaded?)"
    )]
    NoKvm,
    /// The hypervisor device exists but may not be opened.
    #[error("no permission to open /dev/kvm: run as root or add your user to the kvm group")]
    KvmPermission,
    /// More vCPUs than the hypervisor allows.
    #[error("{requested} vCPUs requested but the hypervisor allows at most {max}")]
    TooManyVcpus {
        /// Requested count.
        requested: usize,
        /// The hypervisor's limit.
        max: usize,
    },
    /// A hypervisor call failed.
    #[error("hypervisor call failed: {what}")]
    Call {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// This host has no hypervisor backend.
    #[error(
        "this host has no supported hypervisor: the VMM runs on arm64 Linux with KVM or on an Apple-silicon Mac (Hypervisor.framework); on x86_64 Linux run it inside the emulated arm64 host (cargo run -p firmware -- demo)"
    )]
    UnsupportedHost,
    /// A guest access the VMM cannot emulate (a data abort without syndrome, for example).
    #[error("guest fault the VMM cannot handle: {0}")]
    Unhandled(String),
}

impl HvError {
    /// The error for a failed open of `/dev/kvm` with `errno`.
    pub fn kvm_open(errno: i32) -> Self {
        match errno {
            libc::ENOENT | libc::ENXIO | libc::ENODEV => Self::NoKvm,
            libc::EACCES | libc::EPERM => Self::KvmPermission,
            _ => Self::call("open /dev/kvm", std::io::Error::from_raw_os_error(errno)),
        }
    }

    /// Wraps an OS error with what was being done.
    pub fn call(what: &'static str, source: impl Into<std::io::Error>) -> Self {
        Self::Call {
            what,
            source: source.into(),
        }
    }
}

/// Result of hypervisor operations.
pub type Result<T> = std::result::Result<T, HvError>;

/// A running vCPU, bound to the thread that created it.
pub trait Vcpu {
    /// Runs the guest until something the loop must see; MMIO is completed inside.
    fn run(&mut self, bus: &MmioBus) -> Result<VcpuExit>;

    /// Writes the result of a hypercall to `x0`, and zero to `x1`..`x3` (the other SMCCC
    /// result registers, as KVM's own PSCI leaves them).
    fn set_x0(&mut self, value: u64) -> Result<()>;

    /// Returns the vCPU to the state of a vCPU that never ran: EL1 system registers at their
    /// cold values ([`crate::arch::aarch64::cold`]), MMU and caches off, general-purpose
    /// registers zero. Called before [`Vcpu::set_boot_registers`] whenever the VMM's PSCI starts
    /// a vCPU, since one the guest turned off (`CPU_OFF`) still holds the guest's state.
    fn reset(&mut self) -> Result<()>;

    /// Sets the registers a vCPU starts with: PC, `x0`, EL1h with interrupts masked.
    fn set_boot_registers(&mut self, entry: u64, x0: u64) -> Result<()>;
}

/// A virtual machine: memory, interrupt controller, vCPU factory.
pub trait Vm: Send + Sync + 'static {
    /// What is needed to create a vCPU on its own thread.
    type VcpuSeed: Send + 'static;
    /// The vCPU type.
    type Vcpu: Vcpu;

    /// Whether the hypervisor itself implements PSCI (secondary vCPUs then start inside it,
    /// and power events arrive as [`VcpuExit::SystemOff`]/[`VcpuExit::SystemReset`]).
    fn handles_psci(&self) -> bool;

    /// The MPIDR affinity of each vCPU, as the device tree must state it.
    fn mpidrs(&self) -> Vec<u64>;

    /// Takes the per-vCPU seeds (once).
    fn take_vcpu_seeds(&mut self) -> Vec<Self::VcpuSeed>;

    /// Creates the vCPU on the calling thread.
    fn create_vcpu(&self, seed: Self::VcpuSeed) -> Result<Self::Vcpu>;

    /// Delivers an edge-triggered SPI each time `notifier` fires.
    fn connect_irq(&self, notifier: &Notifier, spi: u32) -> Result<()>;

    /// A level-triggered SPI line (for the PL011).
    fn irq_line(&self, spi: u32) -> Arc<dyn IrqLine>;

    /// Lets a 32-bit guest store of `queue` to `addr` fire `notifier` without leaving the
    /// hypervisor. Returns `false` when the backend cannot (the access then takes the MMIO path).
    fn connect_queue_notify(&self, notifier: &Notifier, addr: u64, queue: u32) -> Result<bool>;

    /// Makes every vCPU return [`VcpuExit::Stopped`] soon (power-off, reset, Ctrl-A x).
    fn stop_vcpus(&self);

    /// How often [`Vm::stop_vcpus`] must be repeated until every vCPU thread ended: `None` when
    /// one call stops every vCPU, whatever it was doing (KVM's `immediate_exit`); an interval
    /// for a hypervisor where a stop request can miss a vCPU about to enter the guest.
    fn stop_retry_interval(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The hypervisor layer of a host without a backend: creating the VM fails with
/// [`HvError::UnsupportedHost`], after the VMM has checked everything else on the command line.
#[derive(Debug)]
pub enum Unsupported {}

impl Unsupported {
    /// Always fails: there is no hypervisor to create a VM with.
    pub fn new(_mem: &devices::virtio::GuestMemory, _vcpus: usize) -> Result<Self> {
        Err(HvError::UnsupportedHost)
    }
}

impl Vcpu for Unsupported {
    fn run(&mut self, _: &MmioBus) -> Result<VcpuExit> {
        match *self {}
    }
    fn set_x0(&mut self, _: u64) -> Result<()> {
        match *self {}
    }
    fn reset(&mut self) -> Result<()> {
        match *self {}
    }
    fn set_boot_registers(&mut self, _: u64, _: u64) -> Result<()> {
        match *self {}
    }
}

impl Vm for Unsupported {
    type VcpuSeed = ();
    type Vcpu = Unsupported;
    fn handles_psci(&self) -> bool {
        match *self {}
    }
    fn mpidrs(&self) -> Vec<u64> {
        match *self {}
    }
    fn take_vcpu_seeds(&mut self) -> Vec<()> {
        match *self {}
    }
    fn create_vcpu(&self, _: ()) -> Result<Unsupported> {
        match *self {}
    }
    fn connect_irq(&self, _: &Notifier, _: u32) -> Result<()> {
        match *self {}
    }
    fn irq_line(&self, _: u32) -> Arc<dyn IrqLine> {
        match *self {}
    }
    fn connect_queue_notify(&self, _: &Notifier, _: u64, _: u32) -> Result<bool> {
        match *self {}
    }
    fn stop_vcpus(&self) {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_dev_kvm_says_kvm_is_needed() {
        let e = HvError::kvm_open(libc::ENOENT);
        assert!(matches!(e, HvError::NoKvm));
        assert!(e.to_string().contains("needs KVM"));
    }

    #[test]
    fn no_permission_on_dev_kvm_says_how_to_get_it() {
        let e = HvError::kvm_open(libc::EACCES).to_string();
        assert!(e.contains("kvm group") && e.contains("root"), "{e}");
    }

    #[test]
    fn other_open_errors_keep_the_os_error() {
        let e = HvError::kvm_open(libc::EMFILE);
        assert!(matches!(
            e,
            HvError::Call {
                what: "open /dev/kvm",
                ..
            }
        ));
    }
}
