//! The flattened device tree the kernel receives in `x0`.
//!
//! It describes exactly what [`super::layout`] puts in the guest, in the shape of QEMU's `virt`
//! machine so that distribution kernels need nothing special. Bindings followed (Linux
//! `Documentation/devicetree/bindings/`):
//!
//! - `arm/cpus.yaml`: `cpu@N` nodes, `reg` = MPIDR affinity bits, one address cell while Aff3 is
//!   zero; `enable-method = "psci"`.
//! - `arm/psci.yaml`: `compatible = "arm,psci-1.0", "arm,psci-0.2"`, `method = "hvc"`.
//! - `interrupt-controller/arm,gic-v3.yaml`: three interrupt cells (type: 0 SPI / 1 PPI, number,
//!   flags: 1 edge rising, 4 level high, 8 level low), `reg` = distributor then redistributor
//!   region.
//! - `timer/arm,arch_timer.yaml`: four PPIs in the order secure physical, non-secure physical,
//!   virtual, hypervisor physical. They are described level-low like kvmtool and real hardware
//!   device trees (QEMU says level-high; Linux's arch timer driver accepts both for PPIs).
//! - `serial/pl011.yaml` and `clock/fixed-clock.yaml`: the PL011 with a 24 MHz fixed clock.
//! - `virtio/mmio.yaml`: `compatible = "virtio,mmio"`, one interrupt (edge rising here: the
//!   virtio-mmio transport signals by raising its line per notification batch).
//! - `chosen.yaml`: `bootargs`, `stdout-path`, `linux,initrd-start`/`-end` (end exclusive).

use thiserror::Error;
use vm_fdt::FdtWriter;

use super::layout::{self, MmioSlot};
use super::placement::GuestRange;

/// The root `model` property; the guest prints it as `Machine model: ...` when it boots.
pub const MODEL: &str = "vmnet-rs arm64 virt";
/// The root `compatible` property: the one QEMU `virt` uses, which names no particular board.
pub const COMPATIBLE: &str = "linux,dummy-virt";

/// Phandle of the GIC node (the root's `interrupt-parent`).
pub const GIC_PHANDLE: u32 = 1;
/// Phandle of the fixed `apb-pclk` clock.
pub const CLOCK_PHANDLE: u32 = 2;

/// Device-tree interrupt type cell for an SPI.
pub const IRQ_TYPE_SPI: u32 = 0;
/// Device-tree interrupt type cell for a PPI.
pub const IRQ_TYPE_PPI: u32 = 1;
/// Interrupt flags cell: edge, rising.
pub const IRQ_EDGE_RISING: u32 = 1;
/// Interrupt flags cell: level, active high.
pub const IRQ_LEVEL_HIGH: u32 = 4;
/// Interrupt flags cell: level, active low.
pub const IRQ_LEVEL_LOW: u32 = 8;

/// Where the GICv3 frames are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GicConfig {
    /// The distributor frame.
    pub dist: GuestRange,
    /// The redistributor region (one 128 KiB redistributor per vCPU).
    pub redist: GuestRange,
}

/// Everything the device tree describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdtConfig {
    /// MPIDR affinity of each vCPU, in vCPU index order (see [`layout::mpidr_affinity`]).
    pub cpu_mpidrs: Vec<u64>,
    /// Guest RAM.
    pub memory: GuestRange,
    /// The kernel command line (`bootargs`).
    pub cmdline: String,
    /// Where the initrd was loaded, if there is one.
    pub initrd: Option<GuestRange>,
    /// The PL011 UART (base, size, SPI), if there is one; it becomes `stdout-path`.
    pub uart: Option<MmioSlot>,
    /// The GICv3 frames.
    pub gic: GicConfig,
    /// The virtio-mmio devices, one node each.
    pub virtio_mmio: Vec<MmioSlot>,
    /// Whether the VMM answers PSCI calls (over HVC). Needed to start secondary vCPUs.
    pub psci: bool,
}

impl FdtConfig {
    /// A configuration for this VMM's memory map ([`super::layout`]): `vcpus` vCPUs with
    /// their default MPIDRs, `ram_size` bytes of RAM at [`layout::RAM_BASE`], the PL011, the
    /// GICv3 and PSCI; no initrd and no virtio device yet (set [`FdtConfig::initrd`] and push
    /// to [`FdtConfig::virtio_mmio`]).
    pub fn with_default_layout(vcpus: usize, ram_size: u64, cmdline: impl Into<String>) -> Self {
        Self {
            cpu_mpidrs: (0..vcpus).map(layout::mpidr_affinity).collect(),
            memory: GuestRange {
                start: layout::RAM_BASE,
                len: ram_size,
            },
            cmdline: cmdline.into(),
            initrd: None,
            uart: Some(MmioSlot {
                base: layout::UART_BASE,
                size: layout::UART_SIZE,
                spi: layout::UART_SPI,
            }),
            gic: GicConfig {
                dist: GuestRange {
                    start: layout::GIC_DIST_BASE,
                    len: layout::GIC_DIST_SIZE,
                },
                redist: GuestRange {
                    start: layout::GIC_REDIST_BASE,
                    len: layout::gic_redist_size(vcpus),
                },
            },
            virtio_mmio: Vec::new(),
            psci: true,
        }
    }
}

/// Why the device tree could not be built.
#[derive(Debug, Error)]
pub enum FdtError {
    /// The configuration has no vCPU.
    #[error("the device tree needs at least one vCPU")]
    NoCpus,
    /// Secondary vCPUs are configured but PSCI is not: the guest could never start them.
    #[error("{cpus} vCPUs need PSCI to start the secondary ones: enable PSCI or use one vCPU")]
    SecondaryCpusNeedPsci {
        /// Number of vCPUs configured.
        cpus: usize,
    },
    /// The finished blob is larger than the 2 MiB the kernel accepts.
    #[error("the device tree is {size} bytes, more than the {max} bytes the kernel accepts")]
    TooLarge {
        /// Size of the blob.
        size: usize,
        /// The limit.
        max: u64,
    },
    /// The writer refused a node or property (for example a NUL byte in the command line).
    #[error("writing the device tree failed")]
    Writer(#[source] vm_fdt::Error),
}

impl From<vm_fdt::Error> for FdtError {
    fn from(err: vm_fdt::Error) -> Self {
        FdtError::Writer(err)
    }
}

type Result<T> = std::result::Result<T, FdtError>;

/// Splits a 64-bit value into two big-endian device-tree cells.
fn cells64(value: u64) -> [u32; 2] {
    [(value >> 32) as u32, value as u32]
}

/// A `reg` value with two address and two size cells.
fn reg64(base: u64, size: u64) -> [u32; 4] {
    let [a0, a1] = cells64(base);
    let [s0, s1] = cells64(size);
    [a0, a1, s0, s1]
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

/// Builds the device tree blob for `config`.
///
/// # Errors
///
/// [`FdtError`]: no vCPU, secondaries without PSCI, a string the writer refuses, or a blob
/// above 2 MiB.
pub fn build(config: &FdtConfig) -> Result<Vec<u8>> {
    if config.cpu_mpidrs.is_empty() {
        return Err(FdtError::NoCpus);
    }
    if config.cpu_mpidrs.len() > 1 && !config.psci {
        return Err(FdtError::SecondaryCpusNeedPsci {
            cpus: config.cpu_mpidrs.len(),
        });
    }

    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", COMPATIBLE)?;
    fdt.property_string("model", MODEL)?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    write_cpus(&mut fdt, config)?;
    write_memory(&mut fdt, config.memory)?;
    if config.psci {
        write_psci(&mut fdt)?;
    }
    write_gic(&mut fdt, &config.gic)?;
    write_timer(&mut fdt)?;
    if let Some(uart) = &config.uart {
        write_uart(&mut fdt, uart)?;
    }
    for device in &config.virtio_mmio {
        write_virtio_mmio(&mut fdt, device)?;
    }
    write_chosen(&mut fdt, config)?;

    fdt.end_node(root)?;
    let blob = fdt.finish()?;
    if blob.len() as u64 > layout::DTB_MAX_SIZE {
        return Err(FdtError::TooLarge {
            size: blob.len(),
            max: layout::DTB_MAX_SIZE,
        });
    }
    Ok(blob)
}

fn write_cpus(fdt: &mut FdtWriter, config: &FdtConfig) -> Result<()> {
    // One address cell is enough while every Aff3 is zero (arm/cpus.yaml).
    let two_cells = config
        .cpu_mpidrs
        .iter()
        .any(|&m| m & layout::MPIDR_AFFINITY_MASK > u64::from(u32::MAX));
    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", if two_cells { 2 } else { 1 })?;
    fdt.property_u32("#size-cells", 0)?;
    for &mpidr in &config.cpu_mpidrs {
        let reg = mpidr & layout::MPIDR_AFFINITY_MASK;
        let cpu = fdt.begin_node(&format!("cpu@{reg:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        if config.psci {
            fdt.property_string("enable-method", "psci")?;
        }
        if two_cells {
            fdt.property_u64("reg", reg)?;
        } else {
            fdt.property_u32("reg", reg as u32)?;
        }
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;
    Ok(())
}

fn write_memory(fdt: &mut FdtWriter, memory: GuestRange) -> Result<()> {
    let node = fdt.begin_node(&format!("memory@{:x}", memory.start))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u32("reg", &reg64(memory.start, memory.len))?;
    fdt.end_node(node)?;
    Ok(())
}

fn write_psci(fdt: &mut FdtWriter) -> Result<()> {
    let node = fdt.begin_node("psci")?;
    fdt.property_string_list("compatible", strings(&["arm,psci-1.0", "arm,psci-0.2"]))?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(node)?;
    Ok(())
}

fn write_gic(fdt: &mut FdtWriter, gic: &GicConfig) -> Result<()> {
    let node = fdt.begin_node(&format!("intc@{:x}", gic.dist.start))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_null("interrupt-controller")?;
    // An interrupt provider states its address cells (for `interrupt-map` users); two address
    // and size cells with an identity `ranges`, as QEMU, leave room for an ITS child later.
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    let dist = reg64(gic.dist.start, gic.dist.len);
    let redist = reg64(gic.redist.start, gic.redist.len);
    let reg: Vec<u32> = dist.iter().chain(redist.iter()).copied().collect();
    fdt.property_array_u32("reg", &reg)?;
    fdt.property_u32("#redistributor-regions", 1)?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.end_node(node)?;
    Ok(())
}

fn write_timer(fdt: &mut FdtWriter) -> Result<()> {
    let node = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    let ppis = [
        layout::TIMER_SECURE_PHYS_PPI,
        layout::TIMER_NONSECURE_PHYS_PPI,
        layout::TIMER_VIRT_PPI,
        layout::TIMER_HYP_PPI,
    ];
    let interrupts: Vec<u32> = ppis
        .iter()
        .flat_map(|&ppi| [IRQ_TYPE_PPI, ppi, IRQ_LEVEL_LOW])
        .collect();
    fdt.property_array_u32("interrupts", &interrupts)?;
    fdt.property_null("always-on")?;
    fdt.end_node(node)?;
    Ok(())
}

fn write_uart(fdt: &mut FdtWriter, uart: &MmioSlot) -> Result<()> {
    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", layout::UART_CLOCK_HZ)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(CLOCK_PHANDLE)?;
    fdt.end_node(clock)?;

    let node = fdt.begin_node(&uart_node_name(uart))?;
    fdt.property_string_list("compatible", strings(&["arm,pl011", "arm,primecell"]))?;
    fdt.property_array_u32("reg", &reg64(uart.base, uart.size))?;
    fdt.property_array_u32("interrupts", &[IRQ_TYPE_SPI, uart.spi, IRQ_LEVEL_HIGH])?;
    fdt.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    fdt.property_string_list("clock-names", strings(&["uartclk", "apb_pclk"]))?;
    fdt.end_node(node)?;
    Ok(())
}

fn uart_node_name(uart: &MmioSlot) -> String {
    format!("pl011@{:x}", uart.base)
}

fn write_virtio_mmio(fdt: &mut FdtWriter, device: &MmioSlot) -> Result<()> {
    let node = fdt.begin_node(&format!("virtio_mmio@{:x}", device.base))?;
    fdt.property_string("compatible", "virtio,mmio")?;
    fdt.property_array_u32("reg", &reg64(device.base, device.size))?;
    fdt.property_array_u32("interrupts", &[IRQ_TYPE_SPI, device.spi, IRQ_EDGE_RISING])?;
    fdt.property_null("dma-coherent")?;
    fdt.end_node(node)?;
    Ok(())
}

fn write_chosen(fdt: &mut FdtWriter, config: &FdtConfig) -> Result<()> {
    let node = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &config.cmdline)?;
    if let Some(uart) = &config.uart {
        fdt.property_string("stdout-path", &format!("/{}", uart_node_name(uart)))?;
    }
    if let Some(initrd) = config.initrd {
        fdt.property_u64("linux,initrd-start", initrd.start)?;
        fdt.property_u64("linux,initrd-end", initrd.end())?;
    }
    fdt.end_node(node)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn config(vcpus: usize) -> FdtConfig {
        let mut c = FdtConfig::with_default_layout(vcpus, 512 * MIB, "console=ttyAMA0");
        c.virtio_mmio.push(layout::virtio_mmio_slot(0).unwrap());
        c
    }

    fn blob(config: &FdtConfig) -> Vec<u8> {
        build(config).expect("device tree builds")
    }

    fn prop<'a>(tree: &'a fdt::Fdt<'a>, path: &str, name: &str) -> &'a [u8] {
        tree.find_node(path)
            .unwrap_or_else(|| panic!("node {path} missing"))
            .property(name)
            .unwrap_or_else(|| panic!("property {path}:{name} missing"))
            .value
    }

    fn cells(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn u64s(bytes: &[u8]) -> Vec<u64> {
        cells(bytes)
            .chunks_exact(2)
            .map(|c| (u64::from(c[0]) << 32) | u64::from(c[1]))
            .collect()
    }

    fn string_list(bytes: &[u8]) -> Vec<&str> {
        bytes
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| std::str::from_utf8(s).unwrap())
            .collect()
    }

    fn string(bytes: &[u8]) -> &str {
        string_list(bytes)[0]
    }

    fn has_prop(tree: &fdt::Fdt, path: &str, name: &str) -> bool {
        tree.find_node(path)
            .and_then(|n| n.property(name))
            .is_some()
    }

    #[test]
    fn root_has_model_compatible_and_two_cells() {
        let b = blob(&config(1));
        let t = fdt::Fdt::new(&b).unwrap();
        assert_eq!(string(prop(&t, "/", "model")), "vmnet-rs arm64 virt");
        assert_eq!(string(prop(&t, "/", "compatible")), COMPATIBLE);
        assert_eq!(cells(prop(&t, "/", "#address-cells")), [2]);
        assert_eq!(cells(prop(&t, "/", "#size-cells")), [2]);
    }

    #[test]
    fn root_interrupt_parent_is_the_gic_phandle() {
        let b = blob(&config(1));
        let t = fdt::Fdt::new(&b).unwrap();
        assert_eq!(cells(prop(&t, "/", "interrupt-parent")), [GIC_PHANDLE]);
        assert_eq!(cells(prop(&t, "/intc@8000000", "phandle")), [GIC_PHANDLE]);
    }

    #[test]
    fn one_cpu_node_per_vcpu_with_mpidr_reg() {
        let b = blob(&config(18));
        let t = fdt::Fdt::new(&b).unwrap();
        assert_eq!(cells(prop(&t, "/cpus", "#address-cells")), [1]);
        assert_eq!(cells(prop(&t, "/cpus", "#size-cells")), [0]);
        assert_eq!(t.cpus().count(), 18);
        assert_eq!(cells(prop(&t, "/cpus/cpu@0", "reg")), [0]);
        assert_eq!(cells(prop(&t, "/cpus/cpu@f", "reg")), [0xf]);
        assert_eq!(cells(prop(&t, "/cpus/cpu@101", "reg")), [0x101]);
    }

    #[test]
    fn cpu_nodes_are_psci_armv8_cpus() {
        let b = blob(&config(2));
        let t = fdt::Fdt::new(&b).unwrap();
        for path in ["/cpus/cpu@0", "/cpus/cpu@1"] {
            assert_eq!(string(prop(&t, path, "device_type")), "cpu");
            assert_eq!(string(prop(&t, path, "compatible")), "arm,arm-v8");
            assert_eq!(string(prop(&t, path, "enable-method")), "psci");
        }
    }

    #[test]
    fn cpus_with_aff3_use_two_address_cells() {
        let mut c = config(1);
        c.cpu_mpidrs = vec![0, 0x1_0000_0000];
        let b = blob(&c);
        let t = fdt::Fdt::new(&b).unwrap();
        assert_eq!(cells(prop(&t, "/cpus", "#address-cells")), [2]);
        assert_eq!(
            u64s(prop(&t, "/cpus/cpu@100000000", "reg")),
            [0x1_0000_0000]
        );
    }

    #[test]
    fn memory_node_covers_ram() {
        let b = blob(&config(1));
        let t = fdt::Fdt::new(&b).unwrap();
        assert_eq!(
            string(prop(&t, "/memory@40000000", "device_type")),
            "memory"
        );
        assert_eq!(
            u64s(prop(&t, "/memory@40000000", "reg")),
            [layout::RAM_BASE, 512 * MIB]
        );
    }

    #[test]
    fn psci_node_uses_hvc_and_names_both_versions() {
        let b = blob(&config(1));
        let t = fdt::Fdt::new(&b).unwrap();
        assert_eq!(
            string_list(prop(&t, "/psci", "compatible")),
            ["arm,psci-1.0", "arm,psci-0.2"]
        );
        assert_eq!(string(prop(&t, "/psci", "method")), "hvc");
    }

    #[test]
    fn without_psci_a_single_cpu_has_no_enable_method_and_no_psci_node() {
        let mut c = config(1);
        c.psci = false;
        let b = blob(&c);
        let t = fdt::Fdt::new(&b).unwrap();
        assert!(t.find_node("/psci").is_none());
        assert!(!has_prop(&t, "/cpus/cpu@0", "enable-method"));
    }

    #[test]
    fn secondary_cpus_without_psci_are_refused() {
        let mut c = config(2);
        c.psci = false;
        assert!(matches!(
            build(&c),
            Err(FdtError::SecondaryCpusNeedPsci { cpus: 2 })
        ));
    }

    #[test]
    fn zero_cpus_are_refused() {
        let mut c = config(1);
        c.cpu_mpidrs.clear();
        assert!(matches!(build(&c), Err(FdtError::NoCpus)));
    }

    #[test]
    fn gic_node_describes_distributor_and_redistributors() {
        let b = blob(&config(4));
        let t = fdt::Fdt::new(&b).unwrap();
        let gic = "/intc@8000000";
        assert_eq!(string(prop(&t, gic, "compatible")), "arm,gic-v3");
        assert_eq!(cells(prop(&t, gic, "#interrupt-cells")), [3]);
        assert!(prop(&t, gic, "interrupt-controller").is_empty());
        assert_eq!(
            u64s(prop(&t, gic, "reg")),
            [0x0800_0000, 0x1_0000, 0x080A_0000, 4 * 0x2_0000]
        );
        assert_eq!(cells(prop(&t, gic, "#redistributor-regions")), [1]);
        assert_eq!(cells(prop(&t, gic, "#address-cells")), [2]);
    }

    #[test]
    fn timer_node_lists_four_level_low_ppis_in_binding_order() {
        let b = blob(&config(1));
        let t = fdt::Fdt::new(&b).unwrap();
        assert_eq!(string(prop(&t, "/timer", "compatible")), "arm,armv8-timer");
        assert_eq!(
            cells(prop(&t, "/timer", "interrupts")),
            [1, 13, 8, 1, 14, 8, 1, 11, 8, 1, 10, 8]
        );
        assert!(has_prop(&t, "/timer", "always-on"));
    }

    #[test]
    fn uart_node_is_a_pl011_on_spi_1_level_high() {
        let b = blob(&config(1));
        let t = fdt::Fdt::new(&b).unwrap();
        let uart = "/pl011@9000000";
        assert_eq!(
            string_list(prop(&t, uart, "compatible")),
            ["arm,pl011", "arm,primecell"]
        );
        assert_eq!(u64s(prop(&t, uart, "reg")), [0x0900_0000, 0x1000]);
        assert_eq!(cells(prop(&t, uart, "interrupts")), [0, 1, 4]);
    }

    #[test]
    fn uart_clocks_point_to_a_24_mhz_fixed_clock() {
        let b = blob(&config(1));
        let t = fdt::Fdt::new(&b).unwrap();
        let uart = "/pl011@9000000";
        assert_eq!(
            cells(prop(&t, uart, "clocks")),
            [CLOCK_PHANDLE, CLOCK_PHANDLE]
        );
        assert_eq!(
            string_list(prop(&t, uart, "clock-names")),
            ["uartclk", "apb_pclk"]
        );
        assert_eq!(string(prop(&t, "/apb-pclk", "compatible")), "fixed-clock");
        assert_eq!(
            cells(prop(&t, "/apb-pclk", "clock-frequency")),
            [24_000_000]
        );
        assert_eq!(cells(prop(&t, "/apb-pclk", "#clock-cells")), [0]);
        assert_eq!(cells(prop(&t, "/apb-pclk", "phandle")), [CLOCK_PHANDLE]);
    }

    #[test]
    fn chosen_has_bootargs_and_stdout_path_to_the_uart() {
        let b = blob(&config(1));
        let t = fdt::Fdt::new(&b).unwrap();
        assert_eq!(string(prop(&t, "/chosen", "bootargs")), "console=ttyAMA0");
        assert_eq!(string(prop(&t, "/chosen", "stdout-path")), "/pl011@9000000");
        assert!(
            t.find_node(string(prop(&t, "/chosen", "stdout-path")))
                .is_some()
        );
    }

    #[test]
    fn chosen_has_initrd_start_and_exclusive_end_when_present() {
        let mut c = config(1);
        c.initrd = Some(GuestRange {
            start: 0x5000_0000,
            len: 0x1234,
        });
        let b = blob(&c);
        let t = fdt::Fdt::new(&b).unwrap();
        assert_eq!(
            u64s(prop(&t, "/chosen", "linux,initrd-start")),
            [0x5000_0000]
        );
        assert_eq!(u64s(prop(&t, "/chosen", "linux,initrd-end")), [0x5000_1234]);
    }

    #[test]
    fn chosen_has_no_initrd_properties_without_an_initrd() {
        let b = blob(&config(1));
        let t = fdt::Fdt::new(&b).unwrap();
        assert!(!has_prop(&t, "/chosen", "linux,initrd-start"));
        assert!(!has_prop(&t, "/chosen", "linux,initrd-end"));
    }

    #[test]
    fn without_uart_there_is_no_pl011_and_no_stdout_path() {
        let mut c = config(1);
        c.uart = None;
        let b = blob(&c);
        let t = fdt::Fdt::new(&b).unwrap();
        assert!(t.find_node("/pl011@9000000").is_none());
        assert!(!has_prop(&t, "/chosen", "stdout-path"));
    }

    #[test]
    fn each_virtio_device_gets_an_edge_rising_dma_coherent_node() {
        let mut c = config(1);
        c.virtio_mmio.push(layout::virtio_mmio_slot(1).unwrap());
        let b = blob(&c);
        let t = fdt::Fdt::new(&b).unwrap();
        for (path, base, spi) in [
            ("/virtio_mmio@a000000", 0x0A00_0000u64, 16u32),
            ("/virtio_mmio@a000200", 0x0A00_0200, 17),
        ] {
            assert_eq!(string(prop(&t, path, "compatible")), "virtio,mmio");
            assert_eq!(u64s(prop(&t, path, "reg")), [base, 0x200]);
            assert_eq!(cells(prop(&t, path, "interrupts")), [0, spi, 1]);
            assert!(has_prop(&t, path, "dma-coherent"));
        }
    }

    #[test]
    fn cmdline_with_nul_is_a_writer_error() {
        let mut c = config(1);
        c.cmdline = "console=ttyAMA0\0evil".into();
        assert!(matches!(build(&c), Err(FdtError::Writer(_))));
    }

    #[test]
    fn blob_for_the_largest_machine_fits_in_2_mib() {
        let mut c = FdtConfig::with_default_layout(layout::max_vcpus(), 1 << 30, "x".repeat(4096));
        c.virtio_mmio = (0..layout::VIRTIO_MMIO_MAX_SLOTS)
            .filter_map(layout::virtio_mmio_slot)
            .collect();
        assert!(blob(&c).len() as u64 <= layout::DTB_MAX_SIZE);
    }

    /// Cross-checks the blob with the reference compiler when it is installed: dtc must read
    /// it back without warnings (node names matching `reg`, phandles resolving, and so on).
    #[test]
    fn dtc_decompiles_the_blob_without_warnings() {
        let dtc = std::path::Path::new("/usr/bin/dtc");
        if !dtc.exists() {
            eprintln!(
                "SKIPPED dtc_decompiles_the_blob_without_warnings: /usr/bin/dtc not installed"
            );
            return;
        }
        let mut c = config(2);
        c.initrd = Some(GuestRange {
            start: 0x5000_0000,
            len: 0x1000,
        });
        let path = std::env::temp_dir().join(format!("vmm-fdt-test-{}.dtb", std::process::id()));
        std::fs::write(&path, blob(&c)).unwrap();
        let out = std::process::Command::new(dtc)
            .args(["-I", "dtb", "-O", "dts"])
            .arg(&path)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "dtc failed: {stderr}");
        assert!(stderr.trim().is_empty(), "dtc warnings: {stderr}");
        let dts = String::from_utf8_lossy(&out.stdout);
        assert!(dts.contains("model = \"vmnet-rs arm64 virt\";"));
    }
}
