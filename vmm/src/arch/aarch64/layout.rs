//! The guest physical memory map, interrupt numbering and vCPU identities.
//!
//! One map serves both hypervisors. It follows the low part of QEMU's `virt` machine for the
//! devices this VMM has, because every arm64 distribution kernel is known to boot there:
//!
//! | range                       | what                                            |
//! |-----------------------------|-------------------------------------------------|
//! | `0x0800_0000..0x0801_0000`  | GICv3 distributor (64 KiB)                      |
//! | `0x080A_0000..0x0900_0000`  | GICv3 redistributors, 128 KiB per vCPU          |
//! | `0x0900_0000..0x0900_1000`  | PL011 UART, SPI 1                               |
//! | `0x0A00_0000..0x0A00_4000`  | 32 virtio-mmio slots of 0x200, SPIs 16..48      |
//! | `0x4000_0000..`             | RAM                                             |
//!
//! Interrupt numbering follows the GICv3 architecture (Arm IHI 0069, section 2.2 "INTIDs"):
//! SGIs are INTIDs 0-15, PPIs 16-31, SPIs from 32. Device trees name PPIs and SPIs by their
//! number within their class (binding `arm,gic-v3.yaml`: cell 1 is the SPI number 0-987 or the
//! PPI number 0-15), so SPI `n` is INTID `n + 32` and PPI `n` is INTID `n + 16`.

/// Base of the GICv3 distributor (GICD) frame.
pub const GIC_DIST_BASE: u64 = 0x0800_0000;
/// Size of the GICv3 distributor frame (64 KiB, GICv3 architecture section 12.1).
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// Base of the first GICv3 redistributor; the others follow contiguously.
pub const GIC_REDIST_BASE: u64 = 0x080A_0000;
/// Size of one GICv3 redistributor: the RD_base and SGI_base 64 KiB frames (GICv3 section 12.10).
///
/// Hypervisor.framework reports its own value with `hv_gic_get_redistributor_size`; the backend
/// checks it against this constant.
pub const GIC_REDIST_SIZE_PER_VCPU: u64 = 0x2_0000;

/// Base of the PL011 UART.
pub const UART_BASE: u64 = 0x0900_0000;
/// Size of the PL011 register window (4 KiB, PL011 TRM section 3.2).
pub const UART_SIZE: u64 = 0x1000;
/// SPI number of the PL011 interrupt (INTID 33).
pub const UART_SPI: u32 = 1;
/// Frequency of the fixed `apb-pclk` clock the device tree gives the PL011, in Hz.
pub const UART_CLOCK_HZ: u32 = 24_000_000;

/// Base of the first virtio-mmio slot.
pub const VIRTIO_MMIO_BASE: u64 = 0x0A00_0000;
/// Size of one virtio-mmio slot (the virtio-mmio register block is 0x100 bytes plus config space).
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x200;
/// SPI number of the first virtio-mmio slot; slot `n` uses SPI `VIRTIO_MMIO_FIRST_SPI + n`.
pub const VIRTIO_MMIO_FIRST_SPI: u32 = 16;
/// How many virtio-mmio slots the map has.
pub const VIRTIO_MMIO_MAX_SLOTS: usize = 32;

/// Base of guest RAM (1 GiB, as on QEMU `virt`).
pub const RAM_BASE: u64 = 0x4000_0000;
/// The largest RAM size the map has room for: RAM must end below 1 TiB (a 40-bit IPA space,
/// KVM's default on arm64; Hypervisor.framework's default is 36 bits on M1, which the backend
/// checks against the host's actual limit).
pub const RAM_MAX_SIZE: u64 = (1 << 40) - RAM_BASE;

/// Largest device tree blob the kernel accepts (booting.rst section 2: "must not exceed 2
/// megabytes in size").
pub const DTB_MAX_SIZE: u64 = 2 << 20;

/// Offset of SPI 0 in the GIC INTID space.
pub const SPI_INTID_BASE: u32 = 32;
/// Offset of PPI 0 in the GIC INTID space.
pub const PPI_INTID_BASE: u32 = 16;

/// Device-tree PPI number of the secure EL1 physical timer (INTID 29).
pub const TIMER_SECURE_PHYS_PPI: u32 = 13;
/// Device-tree PPI number of the non-secure EL1 physical timer (INTID 30).
pub const TIMER_NONSECURE_PHYS_PPI: u32 = 14;
/// Device-tree PPI number of the EL1 virtual timer (INTID 27); the one Linux guests use.
pub const TIMER_VIRT_PPI: u32 = 11;
/// Device-tree PPI number of the EL2 (hypervisor) physical timer (INTID 26).
pub const TIMER_HYP_PPI: u32 = 10;

/// How many vCPUs the map has redistributor room for: the space between the first
/// redistributor and the UART, divided by the size of one redistributor (123).
pub const fn max_vcpus() -> usize {
    ((UART_BASE - GIC_REDIST_BASE) / GIC_REDIST_SIZE_PER_VCPU) as usize
}

/// Size of the redistributor region for `vcpus` vCPUs (saturating: it never overflows).
pub const fn gic_redist_size(vcpus: usize) -> u64 {
    (vcpus as u64).saturating_mul(GIC_REDIST_SIZE_PER_VCPU)
}

/// The GIC INTID of SPI number `spi` (GICv3 section 2.2: SPIs start at INTID 32). Valid SPI
/// numbers are 0-987; larger values saturate instead of wrapping.
pub const fn spi_to_intid(spi: u32) -> u32 {
    spi.saturating_add(SPI_INTID_BASE)
}

/// The GIC INTID of device-tree PPI number `ppi` (PPIs start at INTID 16).
pub const fn ppi_to_intid(ppi: u32) -> u32 {
    ppi.saturating_add(PPI_INTID_BASE)
}

/// The `gsi` to register an irqfd for SPI `spi` on KVM arm64 with the in-kernel vGIC.
///
/// KVM's default routing on arm64 maps GSI `n` to irqchip pin `n`, and the vGIC adds the 32
/// private interrupts to a pin to get the INTID, so the GSI is the SPI number itself
/// (`INTID - 32`). See Linux `arch/arm64/kvm/vgic/vgic-irqfd.c`.
pub const fn spi_to_kvm_irqfd_gsi(spi: u32) -> u32 {
    spi
}

/// The `irq` field of `KVM_IRQ_LINE` for SPI `spi` with an in-kernel GIC: type
/// `KVM_ARM_IRQ_TYPE_SPI` (1) in bits 27:24 and the INTID in bits 15:0
/// (Linux `Documentation/virt/kvm/api.rst`, section on `KVM_IRQ_LINE`).
pub const fn kvm_irq_line_spi(spi: u32) -> u32 {
    (1 << 24) | (spi_to_intid(spi) & 0xffff)
}

/// A virtio-mmio slot of the memory map: where it is and which SPI it raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest physical base address.
    pub base: u64,
    /// Size of the register window.
    pub size: u64,
    /// SPI number (device-tree numbering; INTID is `spi + 32`).
    pub spi: u32,
}

/// The virtio-mmio slot number `index`, or `None` past the last slot.
pub const fn virtio_mmio_slot(index: usize) -> Option<MmioSlot> {
    if index >= VIRTIO_MMIO_MAX_SLOTS {
        return None;
    }
    Some(MmioSlot {
        base: VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SLOT_SIZE,
        size: VIRTIO_MMIO_SLOT_SIZE,
        spi: VIRTIO_MMIO_FIRST_SPI + index as u32,
    })
}

/// Bits of MPIDR_EL1 that hold the affinity fields: Aff3 (39:32), Aff2 (23:16), Aff1 (15:8) and
/// Aff0 (7:0) (Arm ARM D23.2 "MPIDR_EL1"). PSCI and the device tree identify CPUs by these.
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// MPIDR_EL1 bit 31, RES1 on every Armv8 implementation.
pub const MPIDR_RES1: u64 = 1 << 31;

/// The affinity value of vCPU `index`: Aff0 = `index % 16`, Aff1 = `index / 16`.
///
/// This is the layout KVM gives vCPUs by default (Aff0 holds at most 16 CPUs because a GICv3
/// SGI target list has 16 bits) and the one the Hypervisor.framework backend programs into
/// `MPIDR_EL1`. It is the value of the `reg` property of the `cpu` node and the `target_cpu`
/// PSCI `CPU_ON` receives. It does not contain the RES1 bit 31: see [`mpidr_el1`].
pub const fn mpidr_affinity(index: usize) -> u64 {
    let aff0 = (index % 16) as u64;
    let aff1 = ((index / 16) % 256) as u64;
    (aff1 << 8) | aff0
}

/// The full MPIDR_EL1 register value for vCPU `index`: [`mpidr_affinity`] plus the RES1 bit 31.
///
/// Use this to program `MPIDR_EL1` (Hypervisor.framework's `hv_vcpu_set_sys_reg`); use
/// [`mpidr_affinity`] where an affinity is compared or published.
pub const fn mpidr_el1(index: usize) -> u64 {
    mpidr_affinity(index) | MPIDR_RES1
}

// The regions of the map do not overlap; checked when the crate compiles.
const _: () = assert!(GIC_DIST_BASE + GIC_DIST_SIZE <= GIC_REDIST_BASE);
const _: () = assert!(UART_BASE + UART_SIZE <= VIRTIO_MMIO_BASE);
const _: () =
    assert!(VIRTIO_MMIO_BASE + VIRTIO_MMIO_MAX_SLOTS as u64 * VIRTIO_MMIO_SLOT_SIZE <= RAM_BASE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_vcpus_fills_the_space_between_redistributors_and_uart() {
        assert_eq!(max_vcpus(), 123);
        assert!(GIC_REDIST_BASE + gic_redist_size(max_vcpus()) <= UART_BASE);
        assert!(GIC_REDIST_BASE + gic_redist_size(max_vcpus() + 1) > UART_BASE);
    }

    #[test]
    fn virtio_slots_end_before_ram() {
        let last = virtio_mmio_slot(VIRTIO_MMIO_MAX_SLOTS - 1).unwrap();
        assert!(last.base + last.size <= RAM_BASE);
    }

    #[test]
    fn virtio_slot_zero_is_at_base_on_spi_16() {
        let slot = virtio_mmio_slot(0).unwrap();
        assert_eq!(
            slot,
            MmioSlot {
                base: 0x0A00_0000,
                size: 0x200,
                spi: 16
            }
        );
    }

    #[test]
    fn virtio_slot_three_is_three_slots_up_on_spi_19() {
        let slot = virtio_mmio_slot(3).unwrap();
        assert_eq!(slot.base, 0x0A00_0600);
        assert_eq!(slot.spi, 19);
    }

    #[test]
    fn virtio_slot_past_the_last_is_none() {
        assert!(virtio_mmio_slot(VIRTIO_MMIO_MAX_SLOTS).is_none());
        assert!(virtio_mmio_slot(usize::MAX).is_none());
    }

    #[test]
    fn spi_intid_is_spi_plus_32() {
        assert_eq!(spi_to_intid(UART_SPI), 33);
        assert_eq!(spi_to_intid(16), 48);
    }

    #[test]
    fn kvm_irqfd_gsi_is_the_spi_number() {
        assert_eq!(spi_to_kvm_irqfd_gsi(16), 16);
        assert_eq!(spi_to_kvm_irqfd_gsi(16), spi_to_intid(16) - 32);
    }

    #[test]
    fn kvm_irq_line_encodes_spi_type_and_intid() {
        assert_eq!(kvm_irq_line_spi(1), 0x0100_0021);
    }

    #[test]
    fn timer_ppis_map_to_architected_intids() {
        assert_eq!(ppi_to_intid(TIMER_VIRT_PPI), 27);
        assert_eq!(ppi_to_intid(TIMER_NONSECURE_PHYS_PPI), 30);
        assert_eq!(ppi_to_intid(TIMER_SECURE_PHYS_PPI), 29);
        assert_eq!(ppi_to_intid(TIMER_HYP_PPI), 26);
    }

    #[test]
    fn mpidr_affinity_of_first_sixteen_cpus_is_aff0() {
        assert_eq!(mpidr_affinity(0), 0);
        assert_eq!(mpidr_affinity(15), 0xf);
    }

    #[test]
    fn mpidr_affinity_of_cpu_16_moves_to_aff1() {
        assert_eq!(mpidr_affinity(16), 0x100);
        assert_eq!(mpidr_affinity(37), 0x205);
    }

    #[test]
    fn mpidr_el1_sets_res1_bit_31() {
        assert_eq!(mpidr_el1(0), 0x8000_0000);
        assert_eq!(mpidr_el1(17), 0x8000_0101);
    }

    #[test]
    fn mpidr_affinity_stays_within_affinity_mask() {
        for i in 0..max_vcpus() {
            assert_eq!(mpidr_affinity(i) & !MPIDR_AFFINITY_MASK, 0);
        }
    }

    #[test]
    fn ram_max_ends_at_one_tib() {
        assert_eq!(RAM_BASE + RAM_MAX_SIZE, 1 << 40);
    }
}
