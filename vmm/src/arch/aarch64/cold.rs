//! The EL1 state of a vCPU that has never run ("cold"), for PSCI `CPU_ON` of a vCPU the guest
//! turned off before.
//!
//! A guest's `CPU_OFF` leaves the vCPU with its MMU, caches, page tables, vectors and timer as
//! the guest had them. `CPU_ON` must enter the new entry point with the MMU and the data and
//! instruction caches off (Arm DEN 0022, PSCI, section 6.4.3 "CPU_ON" entry state; Linux
//! `Documentation/arch/arm64/booting.rst`: "The MMU must be off"), and nothing of the previous
//! life may leak into the new one. KVM resets a vCPU with a second `KVM_ARM_VCPU_INIT`
//! (`Documentation/virt/kvm/api.rst`, 4.82: "reset the vcpu to its initial state");
//! Hypervisor.framework has no reset call, so the VMM writes [`COLD_EL1`] itself.
//!
//! Registers are named by their system-register encoding (op0, op1, CRn, CRm, op2) packed as
//! `op0 << 14 | op1 << 11 | CRn << 7 | CRm << 3 | op2`: the value of Hypervisor.framework's
//! `hv_sys_reg_t` (`hv_vcpu_types.h`) and the low 16 bits of KVM's `KVM_REG_ARM64_SYSREG`
//! register IDs (api.rst, "ARM64 system registers"). Encodings from the Arm Architecture
//! Reference Manual (DDI 0487), chapter D23 (AArch64 system register descriptions).

/// A system register encoding (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SysRegEnc(pub u16);

impl SysRegEnc {
    /// Packs `(op0, op1, CRn, CRm, op2)`.
    pub const fn new(op0: u16, op1: u16, crn: u16, crm: u16, op2: u16) -> Self {
        Self(op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2)
    }

    /// The KVM `ONE_REG` ID of this 64-bit system register: `KVM_REG_ARM64 |
    /// KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG | encoding` (api.rst, "ARM64 system
    /// registers have the following id bit patterns: 0x6030 0000 0013 <op0:2> <op1:3> <crn:4>
    /// <crm:4> <op2:3>").
    pub const fn kvm_reg_id(self) -> u64 {
        0x6030_0000_0013_0000 | self.0 as u64
    }
}

/// `SCTLR_EL1.M`: stage 1 translation (the MMU) enabled.
pub const SCTLR_M: u64 = 1 << 0;
/// `SCTLR_EL1.C`: data accesses cacheable (data cache on).
pub const SCTLR_C: u64 = 1 << 2;
/// `SCTLR_EL1.I`: instruction fetches cacheable (instruction cache on).
pub const SCTLR_I: u64 = 1 << 12;
/// `SCTLR_EL1.E0E`: big-endian data accesses at EL0.
pub const SCTLR_E0E: u64 = 1 << 24;
/// `SCTLR_EL1.EE`: big-endian data accesses at EL1 and translation table walks.
pub const SCTLR_EE: u64 = 1 << 25;

/// `SCTLR_EL1` of a cold vCPU: MMU, alignment checks and both caches off, little-endian, and
/// only the bits that are RES1 on an implementation without the later features that give them a
/// meaning set: EOS (11), TSCXT (20), EIS (22), SPAN (23), nTLSMD (28) and LSMAOE (29)
/// (DDI 0487, D23.2 "SCTLR_EL1"). Linux writes the same value itself first thing after entry
/// (`INIT_SCTLR_EL1_MMU_OFF`), so a guest cannot tell it from the hardware's reset value.
pub const SCTLR_EL1_COLD: u64 =
    (1 << 11) | (1 << 20) | (1 << 22) | (1 << 23) | (1 << 28) | (1 << 29);

/// `SCTLR_EL1`.
pub const SCTLR_EL1: SysRegEnc = SysRegEnc::new(3, 0, 1, 0, 0);

/// The EL1 (and EL0 context) system registers a cold vCPU has, with their values, in the order
/// they are written. `SCTLR_EL1` comes first, so that translation is off before the registers
/// it uses change.
///
/// Zero for everything but `SCTLR_EL1`: no translation tables (`TTBR0/1_EL1`, `TCR_EL1`,
/// `MAIR_EL1`, `AMAIR_EL1`), no vectors (`VBAR_EL1`), FP/SIMD trapped as after reset
/// (`CPACR_EL1`), no exception context (`ELR_EL1`, `SPSR_EL1`, `ESR_EL1`, `FAR_EL1`,
/// `AFSR0/1_EL1`, `PAR_EL1`), no stacks (`SP_EL0`, `SP_EL1`), no thread pointers or context IDs,
/// debug off (`MDSCR_EL1`), EL0 timer access off (`CNTKCTL_EL1`) and the virtual timer
/// disabled (`CNTV_CTL_EL0`, `CNTV_CVAL_EL0`). Several of these are architecturally UNKNOWN
/// after reset; zero is a value a cold vCPU may have and leaks nothing of the previous guest.
pub const COLD_EL1: &[(&str, SysRegEnc, u64)] = &[
    ("SCTLR_EL1", SCTLR_EL1, SCTLR_EL1_COLD),
    ("CPACR_EL1", SysRegEnc::new(3, 0, 1, 0, 2), 0),
    ("TTBR0_EL1", SysRegEnc::new(3, 0, 2, 0, 0), 0),
    ("TTBR1_EL1", SysRegEnc::new(3, 0, 2, 0, 1), 0),
    ("TCR_EL1", SysRegEnc::new(3, 0, 2, 0, 2), 0),
    ("SPSR_EL1", SysRegEnc::new(3, 0, 4, 0, 0), 0),
    ("ELR_EL1", SysRegEnc::new(3, 0, 4, 0, 1), 0),
    ("SP_EL0", SysRegEnc::new(3, 0, 4, 1, 0), 0),
    ("AFSR0_EL1", SysRegEnc::new(3, 0, 5, 1, 0), 0),
    ("AFSR1_EL1", SysRegEnc::new(3, 0, 5, 1, 1), 0),
    ("ESR_EL1", SysRegEnc::new(3, 0, 5, 2, 0), 0),
    ("FAR_EL1", SysRegEnc::new(3, 0, 6, 0, 0), 0),
    ("PAR_EL1", SysRegEnc::new(3, 0, 7, 4, 0), 0),
    ("MAIR_EL1", SysRegEnc::new(3, 0, 10, 2, 0), 0),
    ("AMAIR_EL1", SysRegEnc::new(3, 0, 10, 3, 0), 0),
    ("VBAR_EL1", SysRegEnc::new(3, 0, 12, 0, 0), 0),
    ("CONTEXTIDR_EL1", SysRegEnc::new(3, 0, 13, 0, 1), 0),
    ("TPIDR_EL1", SysRegEnc::new(3, 0, 13, 0, 4), 0),
    ("CNTKCTL_EL1", SysRegEnc::new(3, 0, 14, 1, 0), 0),
    ("CSSELR_EL1", SysRegEnc::new(3, 2, 0, 0, 0), 0),
    ("TPIDR_EL0", SysRegEnc::new(3, 3, 13, 0, 2), 0),
    ("TPIDRRO_EL0", SysRegEnc::new(3, 3, 13, 0, 3), 0),
    ("CNTV_CTL_EL0", SysRegEnc::new(3, 3, 14, 3, 1), 0),
    ("CNTV_CVAL_EL0", SysRegEnc::new(3, 3, 14, 3, 2), 0),
    ("SP_EL1", SysRegEnc::new(3, 4, 4, 1, 0), 0),
    ("MDSCR_EL1", SysRegEnc::new(2, 0, 0, 2, 2), 0),
];

/// Whether an `SCTLR_EL1` value is not fit to enter a `CPU_ON` entry point: the MMU or a cache
/// on, or big-endian. A reset that leaves such a value did not take.
pub const fn sctlr_not_cold(sctlr: u64) -> bool {
    sctlr & (SCTLR_M | SCTLR_C | SCTLR_I | SCTLR_EE | SCTLR_E0E) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(name: &str) -> u16 {
        COLD_EL1
            .iter()
            .find(|(n, _, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not in the table"))
            .1
            .0
    }

    #[test]
    fn encodings_match_hypervisor_framework_hv_sys_reg_t() {
        // Values of hv_sys_reg_t in Apple's hv_vcpu_types.h.
        for (name, hv) in [
            ("SCTLR_EL1", 0xc080),
            ("CPACR_EL1", 0xc082),
            ("TTBR0_EL1", 0xc100),
            ("TTBR1_EL1", 0xc101),
            ("TCR_EL1", 0xc102),
            ("SPSR_EL1", 0xc200),
            ("ELR_EL1", 0xc201),
            ("SP_EL0", 0xc208),
            ("AFSR0_EL1", 0xc288),
            ("AFSR1_EL1", 0xc289),
            ("ESR_EL1", 0xc290),
            ("FAR_EL1", 0xc300),
            ("PAR_EL1", 0xc3a0),
            ("MAIR_EL1", 0xc510),
            ("AMAIR_EL1", 0xc518),
            ("VBAR_EL1", 0xc600),
            ("CONTEXTIDR_EL1", 0xc681),
            ("TPIDR_EL1", 0xc684),
            ("CNTKCTL_EL1", 0xc708),
            ("CSSELR_EL1", 0xd000),
            ("TPIDR_EL0", 0xde82),
            ("TPIDRRO_EL0", 0xde83),
            ("CNTV_CTL_EL0", 0xdf19),
            ("CNTV_CVAL_EL0", 0xdf1a),
            ("SP_EL1", 0xe208),
            ("MDSCR_EL1", 0x8012),
        ] {
            assert_eq!(enc(name), hv, "{name}");
        }
        assert_eq!(COLD_EL1.len(), 26, "a register without a checked encoding");
    }

    #[test]
    fn kvm_register_ids_follow_api_rst() {
        // MPIDR_EL1 (3, 0, 0, 0, 5), as the KVM backend reads it.
        assert_eq!(
            SysRegEnc::new(3, 0, 0, 0, 5).kvm_reg_id(),
            0x6030_0000_0013_c005
        );
        assert_eq!(SCTLR_EL1.kvm_reg_id(), 0x6030_0000_0013_c080);
    }

    #[test]
    fn each_register_appears_once_and_sctlr_first() {
        let mut seen = std::collections::BTreeSet::new();
        for (name, e, _) in COLD_EL1 {
            assert!(seen.insert(*e), "{name} twice");
        }
        assert_eq!(COLD_EL1[0].1, SCTLR_EL1);
    }

    #[test]
    fn the_table_turns_translation_and_the_caches_off() {
        let sctlr = COLD_EL1[0].2;
        assert!(!sctlr_not_cold(sctlr), "{sctlr:#x}");
        assert_eq!(sctlr, 0x30d0_0800);
        for name in [
            "TTBR0_EL1",
            "TTBR1_EL1",
            "TCR_EL1",
            "VBAR_EL1",
            "CNTV_CTL_EL0",
        ] {
            let v = COLD_EL1.iter().find(|(n, _, _)| *n == name).unwrap().2;
            assert_eq!(v, 0, "{name}");
        }
    }

    #[test]
    fn a_guest_sctlr_with_the_mmu_or_caches_on_is_not_cold() {
        // Linux's SCTLR_EL1 while running (MMU, caches, and more on).
        assert!(sctlr_not_cold(0x0000_0000_34d4_d91d));
        for bit in [SCTLR_M, SCTLR_C, SCTLR_I, SCTLR_EE, SCTLR_E0E] {
            assert!(sctlr_not_cold(SCTLR_EL1_COLD | bit), "{bit:#x}");
        }
    }
}
