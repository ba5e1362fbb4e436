//! `esr_psci`: the `ESR_EL2` decoder, the Hypervisor.framework backend's portable exception step
//! ([`handle_exception`]: MMIO emulation from the syndrome and the registers, hypercalls, WFx,
//! trapped system registers) and the PSCI handler, with fuzzer-chosen syndromes, addresses and
//! registers, several calls in sequence from several vCPUs.
//!
//! Invariants:
//!
//! - ESR: the class round-trips through its raw value; a decoded data abort only comes from EC
//!   0x24/0x25 with ISV set and its fields are the syndrome's bits; `load_value` keeps to the
//!   access size (or sign-extends it) and to 32 bits for a `Wn` register.
//! - Exception step: never panics; registers are only read and written in 0..=30; an emulated
//!   store reaches the device with exactly the low `size` bytes of the source register (0 for
//!   XZR); a load writes exactly the target register with the syndrome's extension; no other
//!   register changes; PC moves by the instruction length exactly when the instruction is
//!   completed (MMIO, SMC, WFx, system register) and not for an HVC or an error.
//! - PSCI: a model of each vCPU's power state (the spec's state machine: CPU_ON on an off CPU
//!   makes it pending and asks the VMM to start it; the VMM's start makes it on; CPU_OFF makes
//!   the caller off; reset returns to boot state) predicts every return value and action;
//!   AFFINITY_INFO agrees with `state()`; every return code is a valid PSCI code.

use std::sync::{Arc, Mutex};

use devices::bus::{MmioBus, MmioDevice};
use vmm::arch::aarch64::esr::{Esr, ExceptionClass, GpRegister};
use vmm::arch::aarch64::layout::{MPIDR_AFFINITY_MASK, mpidr_affinity};
use vmm::arch::aarch64::psci::{self, PowerState, Psci, PsciAction, PsciReturn};
use vmm::hv::hvf_logic::{ExceptionAction, GuestRegisters, handle_exception};
use vmm::hv::{HvError, VcpuExit};

use crate::input::Src;

const DEV_BASE: u64 = 0x0a00_0000;
const DEV_LEN: u64 = 0x200;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Regs {
    x: [u64; 31],
    pc: u64,
}

impl GuestRegisters for Regs {
    fn x(&self, n: u8) -> vmm::hv::Result<u64> {
        assert!(n <= 30, "register X{n} read");
        Ok(self.x[usize::from(n)])
    }
    fn set_x(&mut self, n: u8, value: u64) -> vmm::hv::Result<()> {
        assert!(n <= 30, "register X{n} written");
        self.x[usize::from(n)] = value;
        Ok(())
    }
    fn advance_pc(&mut self, bytes: u64) -> vmm::hv::Result<()> {
        self.pc = self.pc.wrapping_add(bytes);
        Ok(())
    }
}

/// The accesses a [`Recorder`] saw: (store, offset, bytes).
type AccessLog = Mutex<Vec<(bool, u64, Vec<u8>)>>;

/// A device that answers loads with a fixed value and records stores.
struct Recorder {
    value: u64,
    log: Arc<AccessLog>,
}

impl MmioDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let n = data.len().min(8);
        data[..n].copy_from_slice(&self.value.to_le_bytes()[..n]);
        self.log
            .lock()
            .unwrap()
            .push((false, offset, data.to_vec()));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.log.lock().unwrap().push((true, offset, data.to_vec()));
    }
}

fn check_esr(esr: Esr) {
    let ec = ((esr.0 >> 26) & 0x3f) as u8;
    assert_eq!(esr.class().raw(), ec);
    assert_eq!(ExceptionClass::from_raw(ec), esr.class());
    assert_eq!(esr.iss(), (esr.0 & 0x1ff_ffff) as u32);
    assert!(matches!(esr.instruction_length(), 2 | 4));
    match esr.data_abort() {
        Ok(da) => {
            assert!(
                ec == 0x24 || ec == 0x25,
                "data abort decoded from EC {ec:#x}"
            );
            assert_ne!(esr.0 & (1 << 24), 0, "data abort decoded without ISV");
            assert_eq!(u64::from(da.access_size), 1 << ((esr.0 >> 22) & 3));
            let srt = ((esr.0 >> 16) & 31) as u8;
            assert_eq!(da.register.index(), (srt != 31).then_some(srt));
            assert_eq!(da.is_write, esr.0 & (1 << 6) != 0);
            assert_eq!(da.sixty_four, esr.0 & (1 << 15) != 0);
            assert_eq!(da.sign_extend, esr.0 & (1 << 21) != 0);
            assert_eq!(u64::from(da.dfsc), esr.0 & 0x3f);
        }
        Err(_) => assert!(ec != 0x24 && ec != 0x25 || esr.0 & (1 << 24) == 0),
    }
    if let Ok(sr) = esr.sysreg() {
        assert_eq!(ec, 0x18);
        assert_eq!(sr.is_read, esr.0 & 1 != 0);
        let rt = ((esr.0 >> 5) & 31) as u8;
        assert_eq!(sr.rt.index(), (rt != 31).then_some(rt));
        assert!(
            sr.reg.op0 < 4
                && sr.reg.op1 < 8
                && sr.reg.crn < 16
                && sr.reg.crm < 16
                && sr.reg.op2 < 8
        );
    } else {
        assert_ne!(ec, 0x18);
    }
    assert_eq!(esr.hvc_smc_imm().is_some(), ec == 0x16 || ec == 0x17);
    assert_eq!(esr.wfx().is_some(), ec == 0x01);
}

fn expected_load(size: u8, sse: bool, sf: bool, raw: u64) -> u64 {
    let bits = u32::from(size) * 8;
    let mut v = if bits == 64 {
        raw
    } else {
        raw & ((1 << bits) - 1)
    };
    if sse && bits < 64 && v >> (bits - 1) & 1 == 1 {
        v |= !0u64 << bits;
    }
    if !sf {
        v &= 0xffff_ffff;
    }
    v
}

fn exception(s: &mut Src<'_>, regs: &mut Regs, bus: &MmioBus, dev_value: u64, log: &AccessLog) {
    let sel = s.u8();
    // Mostly data aborts on the device window; sometimes any syndrome and address.
    let raw = s.u32();
    let esr = match sel % 4 {
        0 | 1 => Esr((0x24 << 26) | (1 << 25) | (1 << 24) | u64::from(raw & 0x00ff_ffff)),
        2 => Esr(u64::from(raw)),
        _ => Esr(u64::from(raw) | (s.u64() & 0xffff_ffff_0000_0000)),
    };
    let ipa = if sel & 0x80 == 0 {
        DEV_BASE + u64::from(s.u16()) % (DEV_LEN + 8)
    } else {
        s.u64()
    };
    check_esr(esr);
    let before = regs.clone();
    log.lock().unwrap().clear();
    let r = handle_exception(esr, ipa, regs, bus);
    let len = esr.instruction_length();
    let advanced = regs.pc == before.pc.wrapping_add(len);
    let accesses = std::mem::take(&mut *log.lock().unwrap());
    match r {
        Err(HvError::Unhandled(_)) | Err(_) => {
            assert_eq!(*regs, before, "registers changed by a refused exception");
            assert!(
                accesses.is_empty(),
                "device accessed for a refused exception"
            );
        }
        Ok(action) => {
            let da = esr.data_abort();
            match action {
                ExceptionAction::Exit(VcpuExit::Continue)
                | ExceptionAction::UnclaimedMmio { .. } => {
                    let da = da.expect("MMIO completed for a non-data-abort");
                    assert!(!da.s1ptw, "stage-1 walk fault emulated as MMIO");
                    assert!(advanced, "PC not moved past the MMIO access");
                    let size = usize::from(da.access_size);
                    let claimed = matches!(action, ExceptionAction::Exit(_));
                    let on_dev = ipa >= DEV_BASE
                        && ipa
                            .checked_add(size as u64)
                            .is_some_and(|e| e <= DEV_BASE + DEV_LEN);
                    assert_eq!(claimed, on_dev, "claimed flag wrong for {ipa:#x}/{size}");
                    let mut after = regs.clone();
                    after.pc = before.pc;
                    if da.is_write {
                        assert_eq!(after, before, "a store changed a register");
                        let src = match da.register {
                            GpRegister::Xzr => 0,
                            GpRegister::X(n) => before.x[usize::from(n)],
                        };
                        if on_dev {
                            assert_eq!(accesses.len(), 1);
                            let (w, off, bytes) = &accesses[0];
                            assert!(*w && *off == ipa - DEV_BASE);
                            assert_eq!(bytes[..], src.to_le_bytes()[..size], "stored bytes");
                        } else {
                            assert!(accesses.is_empty());
                        }
                    } else {
                        let raw = if on_dev { dev_value } else { 0 };
                        let mut want = before.clone();
                        if let GpRegister::X(n) = da.register {
                            want.x[usize::from(n)] =
                                expected_load(da.access_size, da.sign_extend, da.sixty_four, raw);
                        }
                        assert_eq!(after, want, "load wrote the wrong registers");
                        assert_eq!(accesses.len(), usize::from(on_dev));
                    }
                }
                ExceptionAction::Exit(VcpuExit::Hypercall { x0, args }) => {
                    let class = esr.class();
                    assert!(matches!(
                        class,
                        ExceptionClass::Hvc64 | ExceptionClass::Smc64
                    ));
                    assert_eq!(
                        (x0, args),
                        (before.x[0], [before.x[1], before.x[2], before.x[3]])
                    );
                    let want_pc = if class == ExceptionClass::Smc64 {
                        before.pc.wrapping_add(len)
                    } else {
                        before.pc
                    };
                    assert_eq!(regs.pc, want_pc, "PC after a hypercall");
                    assert_eq!(regs.x, before.x);
                }
                ExceptionAction::WaitForInterrupt | ExceptionAction::Yield => {
                    assert_eq!(esr.class(), ExceptionClass::Wfx);
                    assert!(advanced);
                    assert_eq!(regs.x, before.x);
                }
                ExceptionAction::SysRegTrapped(a) => {
                    assert_eq!(esr.class(), ExceptionClass::SysReg);
                    assert!(advanced);
                    let mut want = before.x;
                    if let (true, GpRegister::X(n)) = (a.is_read, a.rt) {
                        want[usize::from(n)] = 0;
                    }
                    assert_eq!(regs.x, want);
                }
                other => panic!("unexpected action {other:?}"),
            }
        }
    }
}

const FUNCTIONS: [u32; 16] = [
    psci::SMCCC_VERSION,
    psci::SMCCC_ARCH_FEATURES,
    psci::PSCI_VERSION,
    psci::CPU_SUSPEND_32,
    psci::CPU_SUSPEND_64,
    psci::CPU_OFF,
    psci::CPU_ON_32,
    psci::CPU_ON_64,
    psci::AFFINITY_INFO_32,
    psci::AFFINITY_INFO_64,
    psci::MIGRATE_INFO_TYPE,
    psci::SYSTEM_OFF,
    psci::SYSTEM_RESET,
    psci::PSCI_FEATURES,
    0x8400_0005,
    0xC400_0012,
];

fn code(c: PsciReturn) -> u64 {
    c.to_x0()
}

struct PsciModel {
    mpidrs: Vec<u64>,
    states: Vec<PowerState>,
}

impl PsciModel {
    fn index_of(&self, target: u64) -> Option<usize> {
        self.mpidrs
            .iter()
            .position(|&m| m == target & MPIDR_AFFINITY_MASK)
    }
}

fn psci_call(s: &mut Src<'_>, p: &Psci, m: &mut PsciModel) {
    let n = m.mpidrs.len();
    let caller = usize::from(s.u8()) % (n + 1);
    let sel = s.u8();
    let upper = if sel & 0x40 != 0 { s.u32() } else { 0 };
    let function = if sel & 0x80 == 0 {
        FUNCTIONS[usize::from(sel) % FUNCTIONS.len()]
    } else {
        s.u32()
    };
    let x0 = (u64::from(upper) << 32) | u64::from(function);
    let mut args = [0u64; 3];
    for a in &mut args {
        let k = s.u8();
        *a = match k % 4 {
            0 => m
                .mpidrs
                .get(usize::from(k >> 2) % n.max(1))
                .copied()
                .unwrap_or(0),
            1 => u64::from(k >> 2),
            2 => s.u64(),
            _ => {
                m.mpidrs
                    .get(usize::from(k >> 2) % n.max(1))
                    .copied()
                    .unwrap_or(0)
                    | (s.u64() & !MPIDR_AFFINITY_MASK)
            }
        };
    }
    let out = p.handle(caller, x0, args);
    let smc64 = function & (1 << 30) != 0;
    let a = if smc64 {
        args
    } else {
        args.map(|v| v & 0xffff_ffff)
    };
    let (want_x0, want_action) = match function {
        psci::SMCCC_VERSION => (u64::from(psci::SMCCC_VERSION_1_1), None),
        psci::SMCCC_ARCH_FEATURES => (code(PsciReturn::NotSupported), None),
        psci::PSCI_VERSION => (u64::from(psci::PSCI_VERSION_1_0), None),
        psci::MIGRATE_INFO_TYPE => (u64::from(psci::MIGRATE_INFO_NOT_REQUIRED), None),
        psci::PSCI_FEATURES => {
            let f = a[0] as u32;
            let known = [
                psci::SMCCC_VERSION,
                psci::PSCI_VERSION,
                psci::PSCI_FEATURES,
                psci::MIGRATE_INFO_TYPE,
                psci::CPU_ON_32,
                psci::CPU_ON_64,
                psci::CPU_OFF,
                psci::AFFINITY_INFO_32,
                psci::AFFINITY_INFO_64,
                psci::SYSTEM_OFF,
                psci::SYSTEM_RESET,
            ];
            (
                code(if known.contains(&f) {
                    PsciReturn::Success
                } else {
                    PsciReturn::NotSupported
                }),
                None,
            )
        }
        psci::CPU_ON_32 | psci::CPU_ON_64 => match m.index_of(a[0]) {
            None => (code(PsciReturn::InvalidParameters), None),
            Some(cpu) => match m.states[cpu] {
                PowerState::On => (code(PsciReturn::AlreadyOn), None),
                PowerState::OnPending => (code(PsciReturn::OnPending), None),
                PowerState::Off => {
                    m.states[cpu] = PowerState::OnPending;
                    (
                        0,
                        Some(PsciAction::StartCpu {
                            cpu,
                            entry: a[1],
                            context_id: a[2],
                        }),
                    )
                }
            },
        },
        psci::CPU_OFF => {
            if caller < n {
                m.states[caller] = PowerState::Off;
                (0, Some(PsciAction::CpuOff))
            } else {
                (code(PsciReturn::Denied), None)
            }
        }
        psci::AFFINITY_INFO_32 | psci::AFFINITY_INFO_64 => {
            if a[1] != 0 {
                (code(PsciReturn::InvalidParameters), None)
            } else {
                match m.index_of(a[0]) {
                    Some(cpu) => (m.states[cpu] as u64, None),
                    None => (code(PsciReturn::InvalidParameters), None),
                }
            }
        }
        psci::SYSTEM_OFF => (0, Some(PsciAction::SystemOff)),
        psci::SYSTEM_RESET => (0, Some(PsciAction::SystemReset)),
        _ => (code(PsciReturn::NotSupported), None),
    };
    assert_eq!(
        (out.x0, out.action),
        (want_x0, want_action),
        "PSCI {function:#x} from CPU {caller} args {args:x?}"
    );
    let valid = (out.x0 as i64) >= -6 && (out.x0 as i64) <= 0
        || matches!(
            function,
            psci::SMCCC_VERSION
                | psci::PSCI_VERSION
                | psci::MIGRATE_INFO_TYPE
                | psci::AFFINITY_INFO_32
                | psci::AFFINITY_INFO_64
        );
    assert!(valid, "invalid PSCI return {:#x}", out.x0);
    // The VMM's side: start the CPU (or fail to), as machine.rs does.
    if let Some(PsciAction::StartCpu { cpu, .. }) = out.action {
        if s.u8().is_multiple_of(4) {
            p.cpu_start_failed(cpu);
            m.states[cpu] = PowerState::Off;
        } else {
            p.cpu_started(cpu);
            m.states[cpu] = PowerState::On;
            // Reported On right away.
            let r = p.handle(0, u64::from(psci::AFFINITY_INFO_64), [m.mpidrs[cpu], 0, 0]);
            let first = m.index_of(m.mpidrs[cpu]).unwrap();
            assert_eq!(
                r.x0, m.states[first] as u64,
                "AFFINITY_INFO after cpu_started"
            );
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut s = Src::new(data);
    let n = usize::from(s.u8() % 8) + 1;
    let custom = s.bool();
    let mpidrs: Vec<u64> = (0..n)
        .map(|i| if custom { s.u64() } else { mpidr_affinity(i) })
        .collect();
    let p = Psci::new(mpidrs.clone());
    let mut m = PsciModel {
        mpidrs: mpidrs.iter().map(|v| v & MPIDR_AFFINITY_MASK).collect(),
        states: (0..n)
            .map(|i| {
                if i == 0 {
                    PowerState::On
                } else {
                    PowerState::Off
                }
            })
            .collect(),
    };
    let dev_value = s.u64();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut bus = MmioBus::new();
    bus.insert(
        DEV_BASE,
        DEV_LEN,
        Arc::new(Mutex::new(Recorder {
            value: dev_value,
            log: log.clone(),
        })),
    )
    .unwrap();
    let mut regs: Vec<Regs> = (0..n).map(|_| Regs::default()).collect();
    for r in &mut regs {
        for x in r.x.iter_mut() {
            *x = s.u64();
        }
        r.pc = s.u64();
    }

    for _ in 0..128 {
        if s.is_empty() {
            break;
        }
        match s.u8() % 6 {
            0 | 1 => {
                let cpu = usize::from(s.u8()) % n;
                exception(&mut s, &mut regs[cpu], &bus, dev_value, &log);
            }
            2 | 3 => psci_call(&mut s, &p, &mut m),
            4 => {
                let cpu = usize::from(s.u8()) % (n + 2);
                if s.bool() {
                    p.cpu_started(cpu);
                    if cpu < n {
                        m.states[cpu] = PowerState::On;
                    }
                } else {
                    p.cpu_start_failed(cpu);
                    if cpu < n {
                        m.states[cpu] = PowerState::Off;
                    }
                }
            }
            _ => {
                p.reset();
                for (i, st) in m.states.iter_mut().enumerate() {
                    *st = if i == 0 {
                        PowerState::On
                    } else {
                        PowerState::Off
                    };
                }
            }
        }
        for cpu in 0..n + 1 {
            assert_eq!(
                p.state(cpu),
                m.states.get(cpu).copied(),
                "state of CPU {cpu}"
            );
        }
    }
}
