//! Decoding `ESR_EL2`, the exception syndrome Hypervisor.framework reports on a guest exit.
//!
//! Facts from the Arm Architecture Reference Manual for A-profile (DDI 0487), section D24.2.45
//! "ESR_EL2" (named D17.2.37 in older issues):
//!
//! - EC, bits 31:26: the exception class ([`ExceptionClass`]).
//! - IL, bit 25: the trapped instruction is 32 bits (1) or 16 bits (0).
//! - ISS, bits 24:0: the class-specific syndrome.
//!
//! Data aborts (EC 0x24/0x25, "ISS encoding for an exception from a Data Abort"): ISV bit 24
//! says bits 23:14 are valid; SAS 23:22 access size (1 << SAS bytes); SSE 21 sign-extend;
//! SRT 20:16 the transfer register (31 is XZR for loads/stores of general registers); SF 15
//! 64-bit register; AR 14 acquire/release; FnV 10 FAR not valid; S1PTW 7 fault on a stage-1
//! page table walk; WnR 6 write; DFSC 5:0 fault status code.
//!
//! Trapped system register accesses (EC 0x18, "ISS encoding for an exception from MSR, MRS, or
//! System instruction execution in AArch64 state"): Op0 21:20, Op2 19:17, Op1 16:14, CRn 13:10,
//! Rt 9:5, CRm 4:1, Direction 0 (1 = read, MRS).
//!
//! HVC and SMC (EC 0x16/0x17): imm16 in ISS 15:0. WFx (EC 0x01): TI bits 1:0 (0 WFI, 1 WFE,
//! 2 WFIT, 3 WFET).

use thiserror::Error;

/// Bits of the ESR that hold the ISS.
const ISS_MASK: u64 = (1 << 25) - 1;
const IL_BIT: u64 = 1 << 25;
const EC_SHIFT: u64 = 26;

/// The exception class (ESR bits 31:26).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionClass {
    /// 0x00: unknown reason (for example an undefined instruction).
    Unknown,
    /// 0x01: trapped WFI or WFE.
    Wfx,
    /// 0x16: HVC from AArch64 (PSCI calls come this way).
    Hvc64,
    /// 0x17: SMC from AArch64.
    Smc64,
    /// 0x18: trapped MSR/MRS or system instruction.
    SysReg,
    /// 0x20: instruction abort from a lower exception level.
    InstrAbortLowerEl,
    /// 0x21: instruction abort from the same exception level.
    InstrAbortSameEl,
    /// 0x24: data abort from a lower exception level (guest MMIO).
    DataAbortLowerEl,
    /// 0x25: data abort from the same exception level.
    DataAbortSameEl,
    /// 0x3C: BRK instruction from AArch64.
    Brk64,
    /// Any other class, with its raw value.
    Other(u8),
}

impl ExceptionClass {
    /// The class of raw EC value `ec` (only the low 6 bits are used).
    pub fn from_raw(ec: u8) -> Self {
        match ec & 0x3f {
            0x00 => Self::Unknown,
            0x01 => Self::Wfx,
            0x16 => Self::Hvc64,
            0x17 => Self::Smc64,
            0x18 => Self::SysReg,
            0x20 => Self::InstrAbortLowerEl,
            0x21 => Self::InstrAbortSameEl,
            0x24 => Self::DataAbortLowerEl,
            0x25 => Self::DataAbortSameEl,
            0x3c => Self::Brk64,
            other => Self::Other(other),
        }
    }

    /// The raw EC value.
    pub fn raw(self) -> u8 {
        match self {
            Self::Unknown => 0x00,
            Self::Wfx => 0x01,
            Self::Hvc64 => 0x16,
            Self::Smc64 => 0x17,
            Self::SysReg => 0x18,
            Self::InstrAbortLowerEl => 0x20,
            Self::InstrAbortSameEl => 0x21,
            Self::DataAbortLowerEl => 0x24,
            Self::DataAbortSameEl => 0x25,
            Self::Brk64 => 0x3c,
            Self::Other(ec) => ec & 0x3f,
        }
    }
}

/// Errors decoding a syndrome as a particular kind of exit.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum EsrError {
    /// The ESR is not of the class the caller asked to decode.
    #[error("exception class {actual:#04x} is not {expected}")]
    WrongClass {
        /// The class the decoder handles.
        expected: &'static str,
        /// The EC found.
        actual: u8,
    },
    /// A data abort with ISV = 0: the access size and register are not reported.
    #[error(
        "data abort without a valid syndrome: the guest used an instruction the hypervisor cannot emulate"
    )]
    NoValidSyndrome,
}

/// A general-purpose register operand of a trapped instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpRegister {
    /// `X0`..`X30` (or `W0`..`W30`).
    X(u8),
    /// Register number 31 in a load/store or MSR/MRS: the zero register (reads 0, writes are
    /// discarded).
    Xzr,
}

impl GpRegister {
    fn from_field(n: u8) -> Self {
        if n == 31 { Self::Xzr } else { Self::X(n) }
    }

    /// The register number, 0-30, or `None` for XZR.
    pub fn index(self) -> Option<u8> {
        match self {
            Self::X(n) => Some(n),
            Self::Xzr => None,
        }
    }
}

/// The decoded syndrome of a data abort with a valid instruction syndrome (an MMIO access the
/// VMM can emulate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataAbort {
    /// Access size in bytes: 1, 2, 4 or 8.
    pub access_size: u8,
    /// SSE: a load sign-extends the value.
    pub sign_extend: bool,
    /// SRT: the register transferred.
    pub register: GpRegister,
    /// SF: the register is 64 bits wide (`Xn`), else 32 bits (`Wn`).
    pub sixty_four: bool,
    /// AR: the access has acquire/release semantics.
    pub acquire_release: bool,
    /// FnV: the fault address register is not valid.
    pub far_not_valid: bool,
    /// S1PTW: the fault happened on a stage-1 page table walk, not the access itself.
    pub s1ptw: bool,
    /// WnR: the access is a write (store).
    pub is_write: bool,
    /// DFSC: the data fault status code.
    pub dfsc: u8,
}

impl DataAbort {
    /// The value to put in the destination register for a load that read `raw` (the bytes
    /// read, little-endian, zero-extended): sign-extended from the access size when SSE is set,
    /// then limited to 32 bits when the register is a `Wn` (writing `Wn` zeroes the upper half).
    pub fn load_value(&self, raw: u64) -> u64 {
        let bits = u32::from(self.access_size) * 8;
        let mut value = if bits >= 64 {
            raw
        } else {
            raw & ((1u64 << bits) - 1)
        };
        if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            value = (((value << shift) as i64) >> shift) as u64;
        }
        if !self.sixty_four {
            value &= u64::from(u32::MAX);
        }
        value
    }
}

/// A system register, identified by its encoding fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SysReg {
    /// Op0 (2 bits).
    pub op0: u8,
    /// Op1 (3 bits).
    pub op1: u8,
    /// CRn (4 bits).
    pub crn: u8,
    /// CRm (4 bits).
    pub crm: u8,
    /// Op2 (3 bits).
    pub op2: u8,
}

impl SysReg {
    /// A system register from its encoding fields (each masked to its width).
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Self {
        Self {
            op0: op0 & 0x3,
            op1: op1 & 0x7,
            crn: crn & 0xf,
            crm: crm & 0xf,
            op2: op2 & 0x7,
        }
    }

    /// The 16-bit key `op0:op1:CRn:CRm:op2` (op0 << 14 | op1 << 11 | CRn << 7 | CRm << 3 | op2):
    /// the packing of Hypervisor.framework's `hv_sys_reg_t` values and of the low bits of KVM's
    /// `KVM_REG_ARM64_SYSREG` ids. For example `MPIDR_EL1` (3, 0, 0, 0, 5) is `0xc005`.
    pub const fn key(self) -> u16 {
        ((self.op0 as u16) << 14)
            | ((self.op1 as u16) << 11)
            | ((self.crn as u16) << 7)
            | ((self.crm as u16) << 3)
            | self.op2 as u16
    }
}

/// A trapped MSR/MRS access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    /// The register accessed.
    pub reg: SysReg,
    /// Rt: the general-purpose register read or written.
    pub rt: GpRegister,
    /// Direction: true for a read (MRS), false for a write (MSR).
    pub is_read: bool,
}

/// Which WFx instruction trapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WfxKind {
    /// WFI.
    Wfi,
    /// WFE.
    Wfe,
    /// WFIT (FEAT_WFxT).
    Wfit,
    /// WFET (FEAT_WFxT).
    Wfet,
}

/// An `ESR_EL2` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Esr(pub u64);

fn bit(value: u64, n: u32) -> bool {
    (value >> n) & 1 == 1
}

fn field(value: u64, lsb: u32, width: u32) -> u8 {
    ((value >> lsb) & ((1 << width) - 1)) as u8
}

impl Esr {
    /// The exception class.
    pub fn class(self) -> ExceptionClass {
        ExceptionClass::from_raw(field(self.0, EC_SHIFT as u32, 6))
    }

    /// The instruction-specific syndrome (bits 24:0).
    pub fn iss(self) -> u32 {
        (self.0 & ISS_MASK) as u32
    }

    /// The length in bytes of the trapped instruction, from IL: 4, or 2 for a 16-bit (T32)
    /// instruction. Add it to PC to skip an emulated instruction.
    pub fn instruction_length(self) -> u64 {
        if self.0 & IL_BIT != 0 { 4 } else { 2 }
    }

    /// Decodes a data abort (EC 0x24 or 0x25).
    ///
    /// # Errors
    ///
    /// [`EsrError::WrongClass`] for another class, [`EsrError::NoValidSyndrome`] when ISV is 0.
    pub fn data_abort(self) -> Result<DataAbort, EsrError> {
        match self.class() {
            ExceptionClass::DataAbortLowerEl | ExceptionClass::DataAbortSameEl => {}
            other => {
                return Err(EsrError::WrongClass {
                    expected: "a data abort",
                    actual: other.raw(),
                });
            }
        }
        let iss = self.0;
        if !bit(iss, 24) {
            return Err(EsrError::NoValidSyndrome);
        }
        Ok(DataAbort {
            access_size: 1 << field(iss, 22, 2),
            sign_extend: bit(iss, 21),
            register: GpRegister::from_field(field(iss, 16, 5)),
            sixty_four: bit(iss, 15),
            acquire_release: bit(iss, 14),
            far_not_valid: bit(iss, 10),
            s1ptw: bit(iss, 7),
            is_write: bit(iss, 6),
            dfsc: field(iss, 0, 6),
        })
    }

    /// Decodes a trapped system register access (EC 0x18).
    ///
    /// # Errors
    ///
    /// [`EsrError::WrongClass`] for another class.
    pub fn sysreg(self) -> Result<SysRegAccess, EsrError> {
        if self.class() != ExceptionClass::SysReg {
            return Err(EsrError::WrongClass {
                expected: "a system register trap",
                actual: self.class().raw(),
            });
        }
        let iss = self.0;
        Ok(SysRegAccess {
            reg: SysReg::new(
                field(iss, 20, 2),
                field(iss, 14, 3),
                field(iss, 10, 4),
                field(iss, 1, 4),
                field(iss, 17, 3),
            ),
            rt: GpRegister::from_field(field(iss, 5, 5)),
            is_read: bit(iss, 0),
        })
    }

    /// The imm16 of an HVC or SMC (EC 0x16 or 0x17); `None` for another class.
    pub fn hvc_smc_imm(self) -> Option<u16> {
        match self.class() {
            ExceptionClass::Hvc64 | ExceptionClass::Smc64 => Some((self.0 & 0xffff) as u16),
            _ => None,
        }
    }

    /// Which WFx instruction trapped (EC 0x01); `None` for another class.
    pub fn wfx(self) -> Option<WfxKind> {
        if self.class() != ExceptionClass::Wfx {
            return None;
        }
        Some(match field(self.0, 0, 2) {
            0 => WfxKind::Wfi,
            1 => WfxKind::Wfe,
            2 => WfxKind::Wfit,
            _ => WfxKind::Wfet,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data abort fields, as an encoder writes them (the test side of the decoder).
    #[derive(Default)]
    struct DaFields {
        sas: u64,
        sse: bool,
        srt: u64,
        sf: bool,
        ar: bool,
        fnv: bool,
        s1ptw: bool,
        wnr: bool,
        dfsc: u64,
    }

    fn data_abort_esr(f: DaFields) -> u64 {
        (0x24 << 26)
            | IL_BIT
            | (1 << 24)
            | (f.sas << 22)
            | (u64::from(f.sse) << 21)
            | (f.srt << 16)
            | (u64::from(f.sf) << 15)
            | (u64::from(f.ar) << 14)
            | (u64::from(f.fnv) << 10)
            | (u64::from(f.s1ptw) << 7)
            | (u64::from(f.wnr) << 6)
            | f.dfsc
    }

    fn sysreg_esr(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64, rt: u64, read: bool) -> u64 {
        (0x18 << 26)
            | IL_BIT
            | (op0 << 20)
            | (op2 << 17)
            | (op1 << 14)
            | (crn << 10)
            | (rt << 5)
            | (crm << 1)
            | u64::from(read)
    }

    #[test]
    fn str_w1_to_mmio_decodes_as_a_4_byte_write_of_x1() {
        // `str w1, [x0]` faulting on a stage-2 translation fault, level 2.
        let da = Esr(0x9381_0046).data_abort().unwrap();
        assert_eq!(
            da,
            DataAbort {
                access_size: 4,
                sign_extend: false,
                register: GpRegister::X(1),
                sixty_four: false,
                acquire_release: false,
                far_not_valid: false,
                s1ptw: false,
                is_write: true,
                dfsc: 0x06
            }
        );
    }

    #[test]
    fn ldr_x2_decodes_as_an_8_byte_64_bit_read() {
        let da = Esr(0x93c2_8006).data_abort().unwrap();
        assert_eq!(da.access_size, 8);
        assert!(da.sixty_four);
        assert!(!da.is_write);
        assert_eq!(da.register, GpRegister::X(2));
    }

    #[test]
    fn sas_field_gives_access_sizes_1_2_4_8() {
        for (sas, size) in [(0, 1), (1, 2), (2, 4), (3, 8)] {
            let esr = data_abort_esr(DaFields {
                sas,
                ..Default::default()
            });
            assert_eq!(Esr(esr).data_abort().unwrap().access_size, size);
        }
    }

    #[test]
    fn srt_31_is_the_zero_register() {
        let esr = data_abort_esr(DaFields {
            srt: 31,
            wnr: true,
            ..Default::default()
        });
        let da = Esr(esr).data_abort().unwrap();
        assert_eq!(da.register, GpRegister::Xzr);
        assert_eq!(da.register.index(), None);
    }

    #[test]
    fn srt_30_is_x30() {
        let esr = data_abort_esr(DaFields {
            srt: 30,
            ..Default::default()
        });
        assert_eq!(Esr(esr).data_abort().unwrap().register.index(), Some(30));
    }

    #[test]
    fn each_flag_bit_decodes_to_its_field() {
        let esr = data_abort_esr(DaFields {
            sse: true,
            ar: true,
            fnv: true,
            s1ptw: true,
            dfsc: 0x3f,
            ..Default::default()
        });
        let da = Esr(esr).data_abort().unwrap();
        assert!(da.sign_extend && da.acquire_release && da.far_not_valid && da.s1ptw);
        assert!(!da.sixty_four && !da.is_write);
        assert_eq!(da.dfsc, 0x3f);
    }

    #[test]
    fn fields_round_trip_through_encode_and_decode() {
        for srt in 0..32 {
            for sas in 0..4 {
                let esr = data_abort_esr(DaFields {
                    sas,
                    srt,
                    sf: sas == 3,
                    wnr: srt % 2 == 0,
                    dfsc: srt,
                    ..Default::default()
                });
                let da = Esr(esr).data_abort().unwrap();
                assert_eq!(u64::from(da.access_size), 1 << sas);
                assert_eq!(da.register, GpRegister::from_field(srt as u8));
                assert_eq!(da.is_write, srt % 2 == 0);
                assert_eq!(u64::from(da.dfsc), srt);
            }
        }
    }

    #[test]
    fn data_abort_without_isv_is_an_error_naming_the_problem() {
        let err = Esr(0x9200_0046).data_abort().unwrap_err();
        assert_eq!(err, EsrError::NoValidSyndrome);
        assert!(err.to_string().contains("without a valid syndrome"));
    }

    #[test]
    fn data_abort_from_same_el_also_decodes() {
        let esr = (0x9381_0046u64 & !(0x3f << 26)) | (0x25 << 26);
        assert!(Esr(esr).data_abort().is_ok());
    }

    #[test]
    fn data_abort_decode_of_another_class_is_wrong_class() {
        let err = Esr(0x5a00_0000).data_abort().unwrap_err();
        assert_eq!(
            err,
            EsrError::WrongClass {
                expected: "a data abort",
                actual: 0x16
            }
        );
    }

    #[test]
    fn load_value_zero_extends_a_byte_into_w_register() {
        let da = Esr(data_abort_esr(DaFields {
            sas: 0,
            ..Default::default()
        }))
        .data_abort()
        .unwrap();
        assert_eq!(da.load_value(0xffff_ff80), 0x80);
    }

    #[test]
    fn load_value_sign_extends_a_byte_into_x_register() {
        let da = Esr(data_abort_esr(DaFields {
            sas: 0,
            sse: true,
            sf: true,
            ..Default::default()
        }))
        .data_abort()
        .unwrap();
        assert_eq!(da.load_value(0x80), 0xffff_ffff_ffff_ff80);
    }

    #[test]
    fn load_value_sign_extends_a_halfword_into_w_register_only_to_32_bits() {
        let da = Esr(data_abort_esr(DaFields {
            sas: 1,
            sse: true,
            ..Default::default()
        }))
        .data_abort()
        .unwrap();
        assert_eq!(da.load_value(0x8000), 0xffff_8000);
    }

    #[test]
    fn load_value_keeps_all_64_bits_of_a_doubleword() {
        let da = Esr(data_abort_esr(DaFields {
            sas: 3,
            sf: true,
            ..Default::default()
        }))
        .data_abort()
        .unwrap();
        assert_eq!(da.load_value(0x1234_5678_9abc_def0), 0x1234_5678_9abc_def0);
    }

    #[test]
    fn class_decodes_known_ecs() {
        for (ec, class) in [
            (0x00, ExceptionClass::Unknown),
            (0x01, ExceptionClass::Wfx),
            (0x16, ExceptionClass::Hvc64),
            (0x17, ExceptionClass::Smc64),
            (0x18, ExceptionClass::SysReg),
            (0x20, ExceptionClass::InstrAbortLowerEl),
            (0x21, ExceptionClass::InstrAbortSameEl),
            (0x24, ExceptionClass::DataAbortLowerEl),
            (0x25, ExceptionClass::DataAbortSameEl),
            (0x3c, ExceptionClass::Brk64),
        ] {
            assert_eq!(Esr(ec << 26).class(), class);
            assert_eq!(class.raw(), ec as u8);
        }
    }

    #[test]
    fn class_keeps_unknown_ecs_raw() {
        assert_eq!(Esr(0x07 << 26).class(), ExceptionClass::Other(0x07));
        assert_eq!(ExceptionClass::Other(0x07).raw(), 0x07);
    }

    #[test]
    fn upper_esr_bits_do_not_change_the_class() {
        assert_eq!(
            Esr((0xff << 32) | (0x16 << 26)).class(),
            ExceptionClass::Hvc64
        );
    }

    #[test]
    fn il_set_means_a_4_byte_instruction() {
        assert_eq!(Esr(0x9381_0046).instruction_length(), 4);
        assert_eq!(Esr(0x9181_0046).instruction_length(), 2);
    }

    #[test]
    fn iss_is_the_low_25_bits() {
        assert_eq!(Esr(0x9381_0046).iss(), 0x0181_0046);
    }

    #[test]
    fn hvc_0_has_imm16_zero() {
        // `hvc #0`, as a PSCI call: EC 0x16, IL 1.
        assert_eq!(Esr(0x5a00_0000).hvc_smc_imm(), Some(0));
    }

    #[test]
    fn smc_imm16_is_decoded() {
        assert_eq!(Esr(0x5e00_1234).hvc_smc_imm(), Some(0x1234));
    }

    #[test]
    fn imm16_of_a_data_abort_is_none() {
        assert_eq!(Esr(0x9381_0046).hvc_smc_imm(), None);
    }

    #[test]
    fn mrs_of_mpidr_el1_into_x3_decodes() {
        let access = Esr(sysreg_esr(3, 0, 0, 0, 5, 3, true)).sysreg().unwrap();
        assert_eq!(access.reg, SysReg::new(3, 0, 0, 0, 5));
        assert_eq!(access.reg.key(), 0xc005);
        assert_eq!(access.rt, GpRegister::X(3));
        assert!(access.is_read);
    }

    #[test]
    fn msr_with_xzr_decodes_as_a_write_of_zero_register() {
        // msr oslar_el1, xzr: op0 2, op1 0, CRn 1, CRm 0, op2 4.
        let access = Esr(sysreg_esr(2, 0, 1, 0, 4, 31, false)).sysreg().unwrap();
        assert_eq!(access.reg, SysReg::new(2, 0, 1, 0, 4));
        assert_eq!(access.rt, GpRegister::Xzr);
        assert!(!access.is_read);
    }

    #[test]
    fn sysreg_fields_round_trip() {
        for (op0, op1, crn, crm, op2) in [(3, 7, 15, 15, 7), (1, 2, 3, 4, 5), (0, 0, 0, 0, 0)] {
            let access = Esr(sysreg_esr(op0, op1, crn, crm, op2, 7, false))
                .sysreg()
                .unwrap();
            assert_eq!(
                access.reg,
                SysReg::new(op0 as u8, op1 as u8, crn as u8, crm as u8, op2 as u8)
            );
        }
    }

    #[test]
    fn sysreg_key_matches_hvf_cntv_ctl_el0() {
        // HV_SYS_REG_CNTV_CTL_EL0 = 0xdf19: op0 3, op1 3, CRn 14, CRm 3, op2 1.
        assert_eq!(SysReg::new(3, 3, 14, 3, 1).key(), 0xdf19);
    }

    #[test]
    fn sysreg_decode_of_another_class_is_wrong_class() {
        assert!(matches!(
            Esr(0x9381_0046).sysreg(),
            Err(EsrError::WrongClass { actual: 0x24, .. })
        ));
    }

    #[test]
    fn wfi_and_wfe_are_told_apart() {
        assert_eq!(Esr(0x0600_0000).wfx(), Some(WfxKind::Wfi));
        assert_eq!(Esr(0x0600_0001).wfx(), Some(WfxKind::Wfe));
        assert_eq!(Esr(0x5a00_0000).wfx(), None);
    }

    #[test]
    fn every_class_decodes_without_panic() {
        for ec in 0..64u64 {
            for iss in [0, ISS_MASK, 0x0155_5555] {
                let esr = Esr((ec << 26) | IL_BIT | iss);
                let _ = esr.class();
                let _ = esr.data_abort();
                let _ = esr.sysreg();
                let _ = esr.hvc_smc_imm();
                let _ = esr.wfx();
            }
        }
    }
}
