//! The PSCI 1.0 firmware interface, answered by the VMM (conduit: HVC).
//!
//! Facts from Arm DEN 0022 ("Arm Power State Coordination Interface", PSCI 1.0 and later):
//! function IDs (section 5.1, table 6), return codes (section 5.2.2), `CPU_ON` (5.6),
//! `AFFINITY_INFO` (5.7: "lowest affinity level" other than 0 is optional, we refuse it),
//! `MIGRATE_INFO_TYPE` (5.9: 2 = "Trusted OS is either not present or does not require
//! migration"), `PSCI_FEATURES` (5.15), and from Arm DEN 0028 (SMC Calling Convention):
//! `SMCCC_VERSION` 0x8000_0000 and `SMCCC_ARCH_FEATURES` 0x8000_0001 (section 7), the function
//! ID in W0 (bit 30 set for the SMC64 convention), and arguments of SMC32/HVC32 calls in the
//! low 32 bits of X1..X3.
//!
//! [`Psci`] holds the power state of every vCPU behind a mutex so vCPU threads can share it.
//! [`Psci::handle`] never blocks on the guest and never panics: what the guest passes is
//! untrusted. It returns the value for `x0` and what the VMM must do ([`PsciAction`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::layout::MPIDR_AFFINITY_MASK;

/// `SMCCC_VERSION`.
pub const SMCCC_VERSION: u32 = 0x8000_0000;
/// `SMCCC_ARCH_FEATURES`.
pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
/// `PSCI_VERSION`.
pub const PSCI_VERSION: u32 = 0x8400_0000;
/// `CPU_SUSPEND`, SMC32 form (not supported here).
pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
/// `CPU_SUSPEND`, SMC64 form (not supported here).
pub const CPU_SUSPEND_64: u32 = 0xC400_0001;
/// `CPU_OFF`.
pub const CPU_OFF: u32 = 0x8400_0002;
/// `CPU_ON`, SMC32 form.
pub const CPU_ON_32: u32 = 0x8400_0003;
/// `CPU_ON`, SMC64 form.
pub const CPU_ON_64: u32 = 0xC400_0003;
/// `AFFINITY_INFO`, SMC32 form.
pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
/// `AFFINITY_INFO`, SMC64 form.
pub const AFFINITY_INFO_64: u32 = 0xC400_0004;
/// `MIGRATE_INFO_TYPE`.
pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
/// `SYSTEM_OFF`.
pub const SYSTEM_OFF: u32 = 0x8400_0008;
/// `SYSTEM_RESET`.
pub const SYSTEM_RESET: u32 = 0x8400_0009;
/// `PSCI_FEATURES`.
pub const PSCI_FEATURES: u32 = 0x8400_000A;

/// PSCI version 1.0 as `PSCI_VERSION` returns it (major in bits 31:16).
pub const PSCI_VERSION_1_0: u32 = 0x0001_0000;
/// SMCCC version 1.1 as `SMCCC_VERSION` returns it (major in bits 30:16); 1.1 is the version
/// that defines `SMCCC_ARCH_FEATURES`.
pub const SMCCC_VERSION_1_1: u32 = 0x0001_0001;
/// `MIGRATE_INFO_TYPE` answer: no Trusted OS needs migrating.
pub const MIGRATE_INFO_NOT_REQUIRED: u32 = 2;

/// Bit 30 of a function ID: the SMC64/HVC64 calling convention.
const SMC64_BIT: u32 = 1 << 30;

/// PSCI return codes (DEN 0022 section 5.2.2); `x0` holds them sign-extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum PsciReturn {
    /// The call succeeded.
    Success = 0,
    /// The function is not implemented.
    NotSupported = -1,
    /// An argument is invalid (for example an unknown MPIDR).
    InvalidParameters = -2,
    /// The call is not allowed now.
    Denied = -3,
    /// `CPU_ON`: the target is already on.
    AlreadyOn = -4,
    /// `CPU_ON`: an earlier `CPU_ON` for the target has not completed.
    OnPending = -5,
    /// The implementation failed.
    InternalFailure = -6,
}

impl PsciReturn {
    /// The value for `x0`: the code sign-extended to 64 bits.
    pub fn to_x0(self) -> u64 {
        i64::from(self as i32) as u64
    }
}

/// The power state of one vCPU, as `AFFINITY_INFO` reports it (0 on, 1 off, 2 on pending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// Running.
    On = 0,
    /// Stopped (never started, or after `CPU_OFF`).
    Off = 1,
    /// `CPU_ON` accepted; the VMM has not yet started it ([`Psci::cpu_started`]).
    OnPending = 2,
}

/// What the VMM must do after a PSCI call, besides writing `x0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciAction {
    /// Start vCPU `cpu` (an index) at `entry` with `x0 = context_id`, MMU off, in EL1 with
    /// DAIF masked (DEN 0022 section 6.4.3), then call [`Psci::cpu_started`].
    StartCpu {
        /// Index of the vCPU to start.
        cpu: usize,
        /// Physical address where it starts.
        entry: u64,
        /// Value for its `x0`.
        context_id: u64,
    },
    /// Stop the calling vCPU; it was marked off. It does not return to the guest.
    CpuOff,
    /// Power the machine off.
    SystemOff,
    /// Reset the machine.
    SystemReset,
}

/// The result of one PSCI or SMCCC call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PsciOutcome {
    /// Value for the caller's `x0` (ignored when the action means the caller does not resume).
    pub x0: u64,
    /// What the VMM must do, if anything.
    pub action: Option<PsciAction>,
}

impl PsciOutcome {
    fn ret(code: PsciReturn) -> Self {
        Self::value(code.to_x0())
    }

    fn value(x0: u64) -> Self {
        Self { x0, action: None }
    }

    fn with(code: PsciReturn, action: PsciAction) -> Self {
        Self {
            x0: code.to_x0(),
            action: Some(action),
        }
    }
}

/// How many calls [`Psci::handle`] answered, for the log at the end of a run (and the
/// end-to-end test, which checks that the VMM's PSCI served the guest's CPU hotplug).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PsciServed {
    /// Every call, of any function.
    pub calls: u64,
    /// `CPU_ON` calls that started a vCPU.
    pub cpu_on: u64,
    /// `CPU_OFF` calls that stopped one.
    pub cpu_off: u64,
}

/// The VMM's PSCI implementation: per-vCPU power state and the call dispatcher.
#[derive(Debug)]
pub struct Psci {
    /// MPIDR affinity of each vCPU, by index.
    mpidrs: Vec<u64>,
    states: Mutex<Vec<PowerState>>,
    calls: AtomicU64,
    cpu_on: AtomicU64,
    cpu_off: AtomicU64,
}

impl Psci {
    /// A PSCI state for vCPUs with the given MPIDR affinities (index order). vCPU 0, the boot
    /// CPU, starts [`PowerState::On`]; the others [`PowerState::Off`].
    pub fn new(mpidrs: Vec<u64>) -> Self {
        let states = Self::initial_states(mpidrs.len());
        Self {
            mpidrs: mpidrs
                .into_iter()
                .map(|m| m & MPIDR_AFFINITY_MASK)
                .collect(),
            states: Mutex::new(states),
            calls: AtomicU64::new(0),
            cpu_on: AtomicU64::new(0),
            cpu_off: AtomicU64::new(0),
        }
    }

    /// The calls answered so far.
    pub fn served(&self) -> PsciServed {
        PsciServed {
            calls: self.calls.load(Ordering::Relaxed),
            cpu_on: self.cpu_on.load(Ordering::Relaxed),
            cpu_off: self.cpu_off.load(Ordering::Relaxed),
        }
    }

    fn initial_states(count: usize) -> Vec<PowerState> {
        (0..count)
            .map(|i| {
                if i == 0 {
                    PowerState::On
                } else {
                    PowerState::Off
                }
            })
            .collect()
    }

    /// The state is a plain vector of enums, valid after any panic elsewhere: recover it from
    /// poisoning rather than panic a vCPU thread.
    fn lock(&self) -> MutexGuard<'_, Vec<PowerState>> {
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The power state of vCPU `cpu`, or `None` for an unknown index.
    pub fn state(&self, cpu: usize) -> Option<PowerState> {
        self.lock().get(cpu).copied()
    }

    /// Records that the VMM started vCPU `cpu` (after a [`PsciAction::StartCpu`]). Unknown
    /// indices are ignored.
    pub fn cpu_started(&self, cpu: usize) {
        if let Some(state) = self.lock().get_mut(cpu) {
            *state = PowerState::On;
        }
    }

    /// Records that the VMM failed to start vCPU `cpu` after a [`PsciAction::StartCpu`], so a
    /// later `CPU_ON` may try again. Unknown indices are ignored.
    pub fn cpu_start_failed(&self, cpu: usize) {
        if let Some(state) = self.lock().get_mut(cpu) {
            *state = PowerState::Off;
        }
    }

    /// Returns every vCPU to its initial state (after a system reset).
    pub fn reset(&self) {
        let mut states = self.lock();
        *states = Self::initial_states(states.len());
    }

    /// The index of the vCPU with affinity `mpidr`.
    fn index_of(&self, mpidr: u64) -> Option<usize> {
        let mpidr = mpidr & MPIDR_AFFINITY_MASK;
        self.mpidrs.iter().position(|&m| m == mpidr)
    }

    /// Handles one call from vCPU `caller`: `x0` holds the function ID and `args` are
    /// `x1`..`x3`.
    ///
    /// Unknown function IDs return `NOT_SUPPORTED` (-1). Never panics, whatever the values.
    pub fn handle(&self, caller: usize, x0: u64, args: [u64; 3]) -> PsciOutcome {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let outcome = self.dispatch(caller, x0, args);
        match outcome.action {
            Some(PsciAction::StartCpu { .. }) => self.cpu_on.fetch_add(1, Ordering::Relaxed),
            Some(PsciAction::CpuOff) => self.cpu_off.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        outcome
    }

    fn dispatch(&self, caller: usize, x0: u64, args: [u64; 3]) -> PsciOutcome {
        // SMCCC: the function ID is W0; SMC32 arguments are the low halves of X1..X3.
        let function = x0 as u32;
        let args = if function & SMC64_BIT == 0 {
            args.map(|a| a & u64::from(u32::MAX))
        } else {
            args
        };
        match function {
            SMCCC_VERSION => PsciOutcome::value(u64::from(SMCCC_VERSION_1_1)),
            // No SMCCC architectural workaround is implemented.
            SMCCC_ARCH_FEATURES => PsciOutcome::ret(PsciReturn::NotSupported),
            PSCI_VERSION => PsciOutcome::value(u64::from(PSCI_VERSION_1_0)),
            PSCI_FEATURES => self.features(args[0] as u32),
            MIGRATE_INFO_TYPE => PsciOutcome::value(u64::from(MIGRATE_INFO_NOT_REQUIRED)),
            CPU_ON_32 | CPU_ON_64 => self.cpu_on(args[0], args[1], args[2]),
            CPU_OFF => self.cpu_off(caller),
            AFFINITY_INFO_32 | AFFINITY_INFO_64 => self.affinity_info(args[0], args[1]),
            SYSTEM_OFF => PsciOutcome::with(PsciReturn::Success, PsciAction::SystemOff),
            SYSTEM_RESET => PsciOutcome::with(PsciReturn::Success, PsciAction::SystemReset),
            _ => PsciOutcome::ret(PsciReturn::NotSupported),
        }
    }

    /// `PSCI_FEATURES`: 0 (no feature flags) for every implemented function.
    fn features(&self, function: u32) -> PsciOutcome {
        match function {
            SMCCC_VERSION | PSCI_VERSION | PSCI_FEATURES | MIGRATE_INFO_TYPE | CPU_ON_32
            | CPU_ON_64 | CPU_OFF | AFFINITY_INFO_32 | AFFINITY_INFO_64 | SYSTEM_OFF
            | SYSTEM_RESET => PsciOutcome::ret(PsciReturn::Success),
            _ => PsciOutcome::ret(PsciReturn::NotSupported),
        }
    }

    fn cpu_on(&self, target: u64, entry: u64, context_id: u64) -> PsciOutcome {
        let Some(cpu) = self.index_of(target) else {
            return PsciOutcome::ret(PsciReturn::InvalidParameters);
        };
        let mut states = self.lock();
        let Some(state) = states.get_mut(cpu) else {
            return PsciOutcome::ret(PsciReturn::InternalFailure);
        };
        match *state {
            PowerState::On => PsciOutcome::ret(PsciReturn::AlreadyOn),
            PowerState::OnPending => PsciOutcome::ret(PsciReturn::OnPending),
            PowerState::Off => {
                *state = PowerState::OnPending;
                PsciOutcome::with(
                    PsciReturn::Success,
                    PsciAction::StartCpu {
                        cpu,
                        entry,
                        context_id,
                    },
                )
            }
        }
    }

    fn cpu_off(&self, caller: usize) -> PsciOutcome {
        match self.lock().get_mut(caller) {
            Some(state) => {
                *state = PowerState::Off;
                PsciOutcome::with(PsciReturn::Success, PsciAction::CpuOff)
            }
            None => PsciOutcome::ret(PsciReturn::Denied),
        }
    }

    fn affinity_info(&self, target: u64, lowest_level: u64) -> PsciOutcome {
        if lowest_level != 0 {
            return PsciOutcome::ret(PsciReturn::InvalidParameters);
        }
        match self.index_of(target).and_then(|cpu| self.state(cpu)) {
            Some(state) => PsciOutcome::value(state as u64),
            None => PsciOutcome::ret(PsciReturn::InvalidParameters),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::mpidr_affinity;
    use super::*;

    fn psci(cpus: usize) -> Psci {
        Psci::new((0..cpus).map(mpidr_affinity).collect())
    }

    fn code(outcome: PsciOutcome) -> i64 {
        outcome.x0 as i64
    }

    #[test]
    fn version_is_1_0() {
        assert_eq!(psci(1).handle(0, PSCI_VERSION as u64, [0; 3]).x0, 0x1_0000);
    }

    #[test]
    fn smccc_version_is_1_1() {
        assert_eq!(psci(1).handle(0, SMCCC_VERSION as u64, [0; 3]).x0, 0x1_0001);
    }

    #[test]
    fn smccc_arch_features_reports_no_workarounds() {
        let out = psci(1).handle(0, SMCCC_ARCH_FEATURES as u64, [0x8000_8000, 0, 0]);
        assert_eq!(code(out), -1);
    }

    #[test]
    fn features_of_implemented_functions_is_success() {
        let p = psci(1);
        for f in [
            PSCI_VERSION,
            CPU_ON_64,
            CPU_ON_32,
            CPU_OFF,
            AFFINITY_INFO_64,
            SYSTEM_OFF,
            SYSTEM_RESET,
            SMCCC_VERSION,
            PSCI_FEATURES,
            MIGRATE_INFO_TYPE,
        ] {
            assert_eq!(
                code(p.handle(0, PSCI_FEATURES as u64, [f as u64, 0, 0])),
                0,
                "{f:#x}"
            );
        }
    }

    #[test]
    fn features_of_cpu_suspend_is_not_supported() {
        let p = psci(1);
        assert_eq!(
            code(p.handle(0, PSCI_FEATURES as u64, [CPU_SUSPEND_64 as u64, 0, 0])),
            -1
        );
        assert_eq!(
            code(p.handle(0, PSCI_FEATURES as u64, [CPU_SUSPEND_32 as u64, 0, 0])),
            -1
        );
    }

    #[test]
    fn migrate_info_type_is_not_required() {
        assert_eq!(psci(1).handle(0, MIGRATE_INFO_TYPE as u64, [0; 3]).x0, 2);
    }

    #[test]
    fn unknown_function_is_not_supported() {
        let out = psci(1).handle(0, 0x8400_00ff, [0; 3]);
        assert_eq!(out.x0, u64::MAX);
        assert_eq!(out.action, None);
    }

    #[test]
    fn cpu_suspend_is_not_supported() {
        assert_eq!(code(psci(1).handle(0, CPU_SUSPEND_64 as u64, [0; 3])), -1);
    }

    #[test]
    fn upper_half_of_x0_is_ignored() {
        let out = psci(1).handle(0, 0xdead_beef_0000_0000 | PSCI_VERSION as u64, [0; 3]);
        assert_eq!(out.x0, 0x1_0000);
    }

    #[test]
    fn boot_cpu_starts_on_and_secondaries_off() {
        let p = psci(3);
        assert_eq!(p.state(0), Some(PowerState::On));
        assert_eq!(p.state(1), Some(PowerState::Off));
        assert_eq!(p.state(2), Some(PowerState::Off));
        assert_eq!(p.state(3), None);
    }

    #[test]
    fn cpu_on_of_an_off_cpu_asks_the_vmm_to_start_it() {
        let p = psci(2);
        let out = p.handle(0, CPU_ON_64 as u64, [1, 0x4008_0000, 0xabcd]);
        assert_eq!(out.x0, 0);
        assert_eq!(
            out.action,
            Some(PsciAction::StartCpu {
                cpu: 1,
                entry: 0x4008_0000,
                context_id: 0xabcd
            })
        );
        assert_eq!(p.state(1), Some(PowerState::OnPending));
    }

    #[test]
    fn cpu_on_finds_the_cpu_by_mpidr_not_index() {
        let p = psci(18);
        let out = p.handle(0, CPU_ON_64 as u64, [0x101, 0x4000_0000, 0]);
        assert!(matches!(
            out.action,
            Some(PsciAction::StartCpu { cpu: 17, .. })
        ));
    }

    #[test]
    fn cpu_on_ignores_non_affinity_mpidr_bits() {
        let p = psci(2);
        let out = p.handle(0, CPU_ON_64 as u64, [0x8000_0001, 0x4000_0000, 0]);
        assert!(matches!(
            out.action,
            Some(PsciAction::StartCpu { cpu: 1, .. })
        ));
    }

    #[test]
    fn cpu_on_smc32_truncates_arguments_to_32_bits() {
        let p = psci(2);
        let out = p.handle(
            0,
            CPU_ON_32 as u64,
            [0xffff_ffff_0000_0001, 0x1_4000_0000, 0x1_0000_0007],
        );
        assert_eq!(
            out.action,
            Some(PsciAction::StartCpu {
                cpu: 1,
                entry: 0x4000_0000,
                context_id: 7
            })
        );
    }

    #[test]
    fn cpu_on_while_pending_returns_on_pending() {
        let p = psci(2);
        p.handle(0, CPU_ON_64 as u64, [1, 0x4000_0000, 0]);
        let out = p.handle(0, CPU_ON_64 as u64, [1, 0x4000_0000, 0]);
        assert_eq!(code(out), -5);
        assert_eq!(out.action, None);
    }

    #[test]
    fn cpu_on_after_start_returns_already_on() {
        let p = psci(2);
        p.handle(0, CPU_ON_64 as u64, [1, 0x4000_0000, 0]);
        p.cpu_started(1);
        assert_eq!(code(p.handle(0, CPU_ON_64 as u64, [1, 0x4000_0000, 0])), -4);
    }

    #[test]
    fn cpu_on_of_the_boot_cpu_returns_already_on() {
        assert_eq!(
            code(psci(2).handle(1, CPU_ON_64 as u64, [0, 0x4000_0000, 0])),
            -4
        );
    }

    #[test]
    fn cpu_on_of_an_unknown_mpidr_is_invalid_parameters() {
        let out = psci(2).handle(0, CPU_ON_64 as u64, [7, 0x4000_0000, 0]);
        assert_eq!(code(out), -2);
        assert_eq!(out.action, None);
    }

    #[test]
    fn failed_start_lets_cpu_on_try_again() {
        let p = psci(2);
        p.handle(0, CPU_ON_64 as u64, [1, 0x4000_0000, 0]);
        p.cpu_start_failed(1);
        assert_eq!(p.state(1), Some(PowerState::Off));
        assert_eq!(code(p.handle(0, CPU_ON_64 as u64, [1, 0x4000_0000, 0])), 0);
    }

    #[test]
    fn cpu_off_marks_the_caller_off_and_stops_it() {
        let p = psci(2);
        p.cpu_started(1);
        let out = p.handle(1, CPU_OFF as u64, [0; 3]);
        assert_eq!(out.action, Some(PsciAction::CpuOff));
        assert_eq!(p.state(1), Some(PowerState::Off));
    }

    #[test]
    fn cpu_off_then_cpu_on_starts_the_cpu_again() {
        let p = psci(2);
        p.cpu_started(1);
        p.handle(1, CPU_OFF as u64, [0; 3]);
        let out = p.handle(0, CPU_ON_64 as u64, [1, 0x4000_0000, 0]);
        assert!(matches!(
            out.action,
            Some(PsciAction::StartCpu { cpu: 1, .. })
        ));
    }

    #[test]
    fn cpu_off_from_an_unknown_caller_is_denied_without_panic() {
        assert_eq!(code(psci(1).handle(99, CPU_OFF as u64, [0; 3])), -3);
    }

    #[test]
    fn affinity_info_reports_on_off_and_pending() {
        let p = psci(3);
        p.handle(0, CPU_ON_64 as u64, [2, 0x4000_0000, 0]);
        assert_eq!(p.handle(0, AFFINITY_INFO_64 as u64, [0, 0, 0]).x0, 0);
        assert_eq!(p.handle(0, AFFINITY_INFO_64 as u64, [1, 0, 0]).x0, 1);
        assert_eq!(p.handle(0, AFFINITY_INFO_32 as u64, [2, 0, 0]).x0, 2);
    }

    #[test]
    fn affinity_info_above_level_0_is_invalid_parameters() {
        assert_eq!(
            code(psci(2).handle(0, AFFINITY_INFO_64 as u64, [0, 1, 0])),
            -2
        );
    }

    #[test]
    fn affinity_info_of_an_unknown_mpidr_is_invalid_parameters() {
        assert_eq!(
            code(psci(2).handle(0, AFFINITY_INFO_64 as u64, [0x300, 0, 0])),
            -2
        );
    }

    #[test]
    fn system_off_asks_the_vmm_to_power_off() {
        assert_eq!(
            psci(1).handle(0, SYSTEM_OFF as u64, [0; 3]).action,
            Some(PsciAction::SystemOff)
        );
    }

    #[test]
    fn system_reset_asks_the_vmm_to_reset() {
        assert_eq!(
            psci(1).handle(0, SYSTEM_RESET as u64, [0; 3]).action,
            Some(PsciAction::SystemReset)
        );
    }

    #[test]
    fn reset_returns_cpus_to_their_initial_state() {
        let p = psci(2);
        p.cpu_started(1);
        p.handle(0, CPU_OFF as u64, [0; 3]);
        p.reset();
        assert_eq!(p.state(0), Some(PowerState::On));
        assert_eq!(p.state(1), Some(PowerState::Off));
    }

    #[test]
    fn cpu_started_with_unknown_index_is_ignored() {
        let p = psci(1);
        p.cpu_started(5);
        p.cpu_start_failed(5);
        assert_eq!(p.state(5), None);
    }

    #[test]
    fn handle_with_no_cpus_never_panics() {
        let p = Psci::new(Vec::new());
        for f in [CPU_ON_64, CPU_OFF, AFFINITY_INFO_64, PSCI_VERSION] {
            let _ = p.handle(0, f as u64, [0; 3]);
        }
    }

    #[test]
    fn served_counts_calls_and_the_cpu_on_and_off_that_took() {
        let p = psci(2);
        p.handle(0, PSCI_VERSION as u64, [0; 3]);
        p.handle(0, CPU_ON_64 as u64, [1, 0x4000_0000, 0]);
        // Refused: already pending.
        p.handle(0, CPU_ON_64 as u64, [1, 0x4000_0000, 0]);
        p.cpu_started(1);
        p.handle(1, CPU_OFF as u64, [0; 3]);
        assert_eq!(
            p.served(),
            PsciServed {
                calls: 4,
                cpu_on: 1,
                cpu_off: 1
            }
        );
    }

    #[test]
    fn concurrent_cpu_on_starts_the_cpu_exactly_once() {
        let p = std::sync::Arc::new(psci(2));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || p.handle(0, CPU_ON_64 as u64, [1, 0x4000_0000, 0]))
            })
            .collect();
        let starts = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|o| o.action.is_some())
            .count();
        assert_eq!(starts, 1);
    }
}
