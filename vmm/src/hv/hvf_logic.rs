//! The portable half of the Hypervisor.framework backend: everything `super::hvf` decides,
//! written against small traits so that it compiles and is unit-tested on every host.
//!
//! - [`IrqForwarder`]: the VMM's interrupt thread. It waits on the devices' interrupt
//!   [`Notifier`]s with a [`Poller`] and pulses the matching SPI of a [`Gic`] each time one fires.
//! - [`GicIrqLine`]: a level-triggered [`IrqLine`] (the PL011's) on top of a [`Gic`].
//! - [`handle_exception`]: what to do with an exception exit, from its `ESR_EL2` syndrome and the
//!   guest's registers ([`GuestRegisters`]): MMIO emulation through the [`MmioBus`] (data abort
//!   decode, register writeback with XZR and sign extension, PC advance), hypercalls, WFx and
//!   trapped system registers.
//! - [`check_gic_layout`], [`required_ipa_bits`], [`wfi_timeout`]: the checks and arithmetic the
//!   glue does with the values the framework reports.
//!
//! The glue in `hvf.rs` only reads registers, calls the framework and maps its errors.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use devices::bus::MmioBus;
use devices::event::{Event, Notifier, Poller, Token};
use devices::irq::IrqLine;
use devices::ratelimit::RateLimit;
use devices::warn_limited;

use super::{HvError, Result, VcpuExit};
use crate::arch::aarch64::esr::{
    DataAbort, Esr, ExceptionClass, GpRegister, SysRegAccess, WfxKind,
};
use crate::arch::aarch64::layout;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Interrupts
// ---------------------------------------------------------------------------------------------

/// The one operation the backend needs from an interrupt controller: drive an SPI input.
///
/// Hypervisor.framework's `hv_gic_set_spi(intid, level)` (hv_gic.h, macOS 15): "Setting a level
/// value causes level interrupts. To cause an edge interrupt, call this method with a level of
/// true. The framework ignores a level of false for an edge interrupt." Whether an SPI is edge or
/// level is what the guest programmed in `GICD_ICFGR`, from the device tree's trigger flags.
pub trait Gic: Send + Sync + 'static {
    /// Drives SPI `intid` (a GIC INTID, 32 and up) to `level`.
    fn set_spi(&self, intid: u32, level: bool) -> io::Result<()>;
}

/// Signals one edge on SPI `intid`: high, then low.
///
/// The device tree declares virtio-mmio interrupts edge-rising (`fdt.rs`), so the `true` makes
/// the edge and the framework ignores the `false`. The `false` is still sent so that a guest
/// which configured the SPI as level-sensitive sees a pulse, not a line stuck high that nothing
/// would ever lower (virtio-mmio has no "line low" event: the driver acknowledges through
/// `InterruptACK`, which the VMM does not turn into a GIC call).
pub fn pulse_spi(gic: &(impl Gic + ?Sized), intid: u32) -> io::Result<()> {
    gic.set_spi(intid, true)?;
    gic.set_spi(intid, false)
}

/// A level-triggered interrupt line on SPI `intid` of a [`Gic`] (for the PL011, whose device
/// tree node says level-high).
#[derive(Debug)]
pub struct GicIrqLine<G> {
    gic: Arc<G>,
    intid: u32,
}

impl<G: Gic> GicIrqLine<G> {
    /// The line for device-tree SPI number `spi` (INTID `spi + 32`).
    pub fn new(gic: Arc<G>, spi: u32) -> Self {
        Self {
            gic,
            intid: layout::spi_to_intid(spi),
        }
    }
}

impl<G: Gic> IrqLine for GicIrqLine<G> {
    fn set_level(&self, high: bool) -> io::Result<()> {
        self.gic.set_spi(self.intid, high)
    }
}

/// What [`IrqForwarder::step`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep waiting.
    Continue,
    /// The forwarder was asked to stop.
    Stop,
}

/// The token of the forwarder's own stop notifier; routes use `index + 1`.
const STOP_TOKEN: Token = Token(0);

#[derive(Debug)]
struct Route {
    notifier: Notifier,
    intid: u32,
}

#[derive(Debug)]
struct Shared<G> {
    gic: Arc<G>,
    poller: Poller,
    stop: Notifier,
    routes: Mutex<Vec<Route>>,
    errors: RateLimit,
}

impl<G: Gic> Shared<G> {
    fn step(&self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<Step> {
        self.poller.wait(events, timeout)?;
        for ev in events.iter() {
            if ev.token == STOP_TOKEN {
                let _ = self.stop.consume();
                return Ok(Step::Stop);
            }
            let routes = lock(&self.routes);
            let Some(route) = usize::try_from(ev.token.0 - 1)
                .ok()
                .and_then(|i| routes.get(i))
            else {
                continue;
            };
            match route.notifier.consume() {
                // Readiness is edge-style and notifications coalesce: one pulse per wake-up.
                Ok(true) => {
                    if let Err(e) = pulse_spi(&*self.gic, route.intid) {
                        warn_limited!(self.errors, intid = route.intid, error = %e, "cannot raise a device interrupt");
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    warn_limited!(self.errors, intid = route.intid, error = %e, "cannot read a device interrupt notifier");
                }
            }
        }
        Ok(Step::Continue)
    }

    fn run(&self) {
        let mut events = Vec::with_capacity(16);
        loop {
            match self.step(&mut events, None) {
                Ok(Step::Continue) => {}
                Ok(Step::Stop) => return,
                Err(e) => {
                    warn_limited!(self.errors, error = %e, "interrupt thread: waiting for device interrupts failed");
                    // Do not spin on a persistent error.
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// The VMM's interrupt thread on Hypervisor.framework: turns each firing of a device's interrupt
/// [`Notifier`] into an edge on its SPI ([`pulse_spi`]).
///
/// KVM consumes the same notifiers in the kernel (irqfd); Hypervisor.framework has no such
/// mechanism, so one thread waits on all of them with a [`Poller`] (kqueue on macOS).
#[derive(Debug)]
pub struct IrqForwarder<G: Gic> {
    shared: Arc<Shared<G>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<G: Gic> IrqForwarder<G> {
    /// A forwarder to `gic` with no sources yet and no thread running.
    pub fn new(gic: Arc<G>) -> io::Result<Self> {
        let poller = Poller::new()?;
        let stop = Notifier::new()?;
        poller.add_notifier(&stop, STOP_TOKEN)?;
        Ok(Self {
            shared: Arc::new(Shared {
                gic,
                poller,
                stop,
                routes: Mutex::new(Vec::new()),
                errors: RateLimit::guest_errors(),
            }),
            thread: Mutex::new(None),
        })
    }

    /// Pulses INTID `intid` each time `notifier` fires, from now on. Works before and after
    /// [`start`](Self::start). The forwarder keeps its own handle (a duplicate) of the notifier.
    pub fn connect(&self, notifier: &Notifier, intid: u32) -> io::Result<()> {
        let mut routes = lock(&self.shared.routes);
        let token = Token(routes.len() as u64 + 1);
        let notifier = notifier.try_clone()?;
        // Registered while holding the lock, so a wake-up for this token finds its route.
        self.shared.poller.add_notifier(&notifier, token)?;
        routes.push(Route { notifier, intid });
        Ok(())
    }

    /// Waits up to `timeout` (`None`: forever) for notifiers, consumes those that fired and
    /// pulses their SPIs. `events` is scratch space kept by the caller between calls.
    ///
    /// A failing GIC call is logged (rate-limited) and does not stop the forwarder.
    pub fn step(&self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<Step> {
        self.shared.step(events, timeout)
    }

    /// Starts the interrupt thread (once; later calls do nothing).
    pub fn start(&self) -> io::Result<()> {
        let mut thread = lock(&self.thread);
        if thread.is_some() {
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        *thread = Some(
            thread::Builder::new()
                .name("hvf-irq".into())
                .spawn(move || shared.run())?,
        );
        Ok(())
    }

    /// Stops the interrupt thread and waits for it to end. Idempotent.
    pub fn stop(&self) {
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle {
            let _ = self.shared.stop.notify();
            let _ = handle.join();
        }
    }
}

impl<G: Gic> Drop for IrqForwarder<G> {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Exceptions
// ---------------------------------------------------------------------------------------------

/// Access to the trapped vCPU's registers, as the exception handlers need them.
pub trait GuestRegisters {
    /// Reads `Xn`, `n` in 0..=30.
    fn x(&self, n: u8) -> Result<u64>;
    /// Writes `Xn`, `n` in 0..=30.
    fn set_x(&mut self, n: u8, value: u64) -> Result<()>;
    /// Adds `bytes` to PC.
    fn advance_pc(&mut self, bytes: u64) -> Result<()>;
}

/// A decoded guest MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioAccess {
    /// A load of `size` bytes from `addr`, written back as `abort` says.
    Read {
        /// Guest physical address.
        addr: u64,
        /// Access width in bytes (1, 2, 4, 8).
        size: usize,
        /// The syndrome: destination register, sign extension, register width.
        abort: DataAbort,
    },
    /// A store of the low `size` bytes of `value` to `addr`.
    Write {
        /// Guest physical address.
        addr: u64,
        /// Access width in bytes (1, 2, 4, 8).
        size: usize,
        /// The value stored (0 for XZR), already truncated to `size` bytes.
        value: u64,
    },
}

fn low_bytes(value: u64, size: usize) -> u64 {
    if size >= 8 {
        value
    } else {
        value & ((1u64 << (size * 8)) - 1)
    }
}

/// Decodes a data abort at guest physical address `ipa` into an MMIO access, reading the source
/// register of a store.
///
/// # Errors
///
/// [`HvError::Unhandled`] when the syndrome is not valid (ISV = 0: for example a load/store pair
/// or a post-indexed access to MMIO, which the hardware does not describe) or the fault happened
/// on a stage-1 page-table walk (the guest's page tables point outside RAM): neither can be
/// emulated from the syndrome.
pub fn decode_mmio(esr: Esr, ipa: u64, regs: &impl GuestRegisters) -> Result<MmioAccess> {
    let abort = esr.data_abort().map_err(|e| {
        HvError::Unhandled(format!(
            "{e} (ESR {:#x}, guest physical address {ipa:#x})",
            esr.0
        ))
    })?;
    if abort.s1ptw {
        return Err(HvError::Unhandled(format!(
            "the guest's stage-1 page table walk touched {ipa:#x}, which is not RAM (ESR {:#x})",
            esr.0
        )));
    }
    let size = usize::from(abort.access_size);
    if abort.is_write {
        let value = match abort.register {
            GpRegister::Xzr => 0,
            GpRegister::X(n) => regs.x(n)?,
        };
        Ok(MmioAccess::Write {
            addr: ipa,
            size,
            value: low_bytes(value, size),
        })
    } else {
        Ok(MmioAccess::Read {
            addr: ipa,
            size,
            abort,
        })
    }
}

/// Emulates one MMIO access: decodes it, performs it on `bus`, writes a load's result back to
/// its register (nothing for XZR; sign-extended and `Wn`-truncated as the syndrome says), and
/// moves PC past the instruction.
///
/// Returns whether a device owned the address. An access nobody owns reads as zero and its
/// store is dropped; the caller logs it.
///
/// # Errors
///
/// See [`decode_mmio`]; register access errors of the backend.
pub fn emulate_mmio(
    esr: Esr,
    ipa: u64,
    regs: &mut impl GuestRegisters,
    bus: &MmioBus,
) -> Result<bool> {
    let claimed = match decode_mmio(esr, ipa, regs)? {
        MmioAccess::Write { addr, size, value } => bus.write(addr, &value.to_le_bytes()[..size]),
        MmioAccess::Read { addr, size, abort } => {
            let mut buf = [0u8; 8];
            let claimed = bus.read(addr, &mut buf[..size]);
            if let GpRegister::X(n) = abort.register {
                regs.set_x(n, abort.load_value(u64::from_le_bytes(buf)))?;
            }
            claimed
        }
    };
    regs.advance_pc(esr.instruction_length())?;
    Ok(claimed)
}

/// Answers a trapped MSR/MRS: a read gives 0 (RAZ), a write is ignored (WI), PC moves on.
///
/// Hypervisor.framework traps few registers to the host (debug and implementation-defined ones
/// mostly); read-as-zero/write-ignored is what the architecture gives for absent optional
/// features, and Linux probes features through the ID registers, which the framework answers
/// itself. Returns the access for the caller's (rate-limited) log.
///
/// # Errors
///
/// [`HvError::Unhandled`] if `esr` is not a system register trap; register access errors.
pub fn emulate_sysreg_trap(esr: Esr, regs: &mut impl GuestRegisters) -> Result<SysRegAccess> {
    let access = esr
        .sysreg()
        .map_err(|e| HvError::Unhandled(format!("{e} (ESR {:#x})", esr.0)))?;
    if access.is_read
        && let GpRegister::X(n) = access.rt
    {
        regs.set_x(n, 0)?;
    }
    regs.advance_pc(esr.instruction_length())?;
    Ok(access)
}

/// What the glue must do after [`handle_exception`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExceptionAction {
    /// Return this to the vCPU loop.
    Exit(VcpuExit),
    /// The guest executed WFI (PC already advanced): block until an interrupt may be pending,
    /// bounded by [`wfi_timeout`], then continue.
    WaitForInterrupt,
    /// The guest executed WFE (PC already advanced): yield the host CPU, then continue.
    Yield,
    /// A system register access was answered RAZ/WI (PC advanced); log it, then continue.
    SysRegTrapped(SysRegAccess),
    /// An MMIO access at `addr` matched no device (reads gave 0); log it, then continue.
    UnclaimedMmio {
        /// Guest physical address.
        addr: u64,
    },
}

/// Handles an exception exit with syndrome `esr` and faulting guest physical address `ipa`.
///
/// - Data abort: [`emulate_mmio`].
/// - HVC: a hypercall with `x0`..`x3`. PC is not moved: for an HVC the exception's preferred
///   return address is already the next instruction (Arm ARM, "Preferred exception return
///   address": HVC is an exception-generating instruction).
/// - SMC: a hypercall too, and PC += 4, because a trapped SMC returns to the SMC instruction
///   itself (Arm ARM D1.4, SMC trapped by `HCR_EL2.TSC`).
/// - WFI/WFE: PC += 4, then [`ExceptionAction::WaitForInterrupt`] or [`ExceptionAction::Yield`].
/// - System register trap: [`emulate_sysreg_trap`].
///
/// # Errors
///
/// [`HvError::Unhandled`] for data aborts that cannot be emulated and for every other class
/// (instruction aborts, BRK, unknown): the guest did something the VMM cannot continue from.
pub fn handle_exception(
    esr: Esr,
    ipa: u64,
    regs: &mut impl GuestRegisters,
    bus: &MmioBus,
) -> Result<ExceptionAction> {
    match esr.class() {
        ExceptionClass::DataAbortLowerEl | ExceptionClass::DataAbortSameEl => {
            if emulate_mmio(esr, ipa, regs, bus)? {
                Ok(ExceptionAction::Exit(VcpuExit::Continue))
            } else {
                Ok(ExceptionAction::UnclaimedMmio { addr: ipa })
            }
        }
        class @ (ExceptionClass::Hvc64 | ExceptionClass::Smc64) => {
            let x0 = regs.x(0)?;
            let args = [regs.x(1)?, regs.x(2)?, regs.x(3)?];
            if class == ExceptionClass::Smc64 {
                regs.advance_pc(esr.instruction_length())?;
            }
            Ok(ExceptionAction::Exit(VcpuExit::Hypercall { x0, args }))
        }
        ExceptionClass::Wfx => {
            regs.advance_pc(esr.instruction_length())?;
            match esr.wfx() {
                Some(WfxKind::Wfe | WfxKind::Wfet) => Ok(ExceptionAction::Yield),
                _ => Ok(ExceptionAction::WaitForInterrupt),
            }
        }
        ExceptionClass::SysReg => Ok(ExceptionAction::SysRegTrapped(emulate_sysreg_trap(
            esr, regs,
        )?)),
        other => Err(HvError::Unhandled(format!(
            "guest exception the VMM does not emulate: class {:#04x} ({other:?}), ESR {:#x}, address {ipa:#x}",
            other.raw(),
            esr.0
        ))),
    }
}

/// `CNTV_CTL_EL0.ENABLE`.
const CNTV_CTL_ENABLE: u64 = 1 << 0;
/// `CNTV_CTL_EL0.IMASK`.
const CNTV_CTL_IMASK: u64 = 1 << 1;

/// How long a vCPU that executed WFI may sleep: until its virtual timer fires
/// (`CNTV_CVAL_EL0`, compared with the guest's virtual count `now` ticking at `freq_hz`), at
/// most `cap` (other interrupts can arrive meanwhile and nothing wakes the vCPU for them), zero
/// when the timer condition is already met.
///
/// A disabled or masked timer (`CNTV_CTL_EL0` ENABLE clear or IMASK set) will not wake the vCPU,
/// so the wait is `cap`.
pub fn wfi_timeout(
    cntv_ctl: u64,
    cntv_cval: u64,
    now: u64,
    freq_hz: u64,
    cap: Duration,
) -> Duration {
    if cntv_ctl & CNTV_CTL_ENABLE == 0 || cntv_ctl & CNTV_CTL_IMASK != 0 || freq_hz == 0 {
        return cap;
    }
    if cntv_cval <= now {
        return Duration::ZERO;
    }
    let ticks = u128::from(cntv_cval - now);
    let nanos = ticks * 1_000_000_000 / u128::from(freq_hz);
    let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
    Duration::from_nanos(nanos).min(cap)
}

// ---------------------------------------------------------------------------------------------
// Setup checks
// ---------------------------------------------------------------------------------------------

/// The GIC geometry Hypervisor.framework reports (`hv_gic_get_*`, hv_gic.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GicLimits {
    /// `hv_gic_get_distributor_size`.
    pub distributor_size: u64,
    /// `hv_gic_get_distributor_base_alignment`.
    pub distributor_alignment: u64,
    /// `hv_gic_get_redistributor_size`: one vCPU's redistributor.
    pub redistributor_size: u64,
    /// `hv_gic_get_redistributor_region_size`: the redistributors of every vCPU the framework
    /// supports.
    pub redistributor_region_size: u64,
    /// `hv_gic_get_redistributor_base_alignment`.
    pub redistributor_alignment: u64,
    /// `hv_gic_get_spi_interrupt_range`: first SPI INTID.
    pub spi_base: u32,
    /// `hv_gic_get_spi_interrupt_range`: number of SPIs.
    pub spi_count: u32,
}

/// Why the framework's GIC does not fit the memory map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GicLayoutError {
    /// A base address is not aligned as the framework requires.
    #[error(
        "the GIC {what} base {base:#x} is not aligned to the {alignment:#x} bytes Hypervisor.framework requires"
    )]
    Misaligned {
        /// "distributor" or "redistributor".
        what: &'static str,
        /// The base in the memory map.
        base: u64,
        /// The framework's alignment.
        alignment: u64,
    },
    /// The distributor runs into the redistributors.
    #[error(
        "the GIC distributor of Hypervisor.framework is {size:#x} bytes and does not fit below the redistributors at {limit:#x}"
    )]
    DistributorTooLarge {
        /// The framework's distributor size.
        size: u64,
        /// Where the redistributors start.
        limit: u64,
    },
    /// One redistributor is not the 128 KiB the device tree describes.
    #[error(
        "Hypervisor.framework's GIC redistributor is {size:#x} bytes per vCPU, but the device tree lays them out every {expected:#x} bytes"
    )]
    RedistributorSize {
        /// The framework's size.
        size: u64,
        /// What the memory map assumes.
        expected: u64,
    },
    /// The redistributors of all vCPUs run into the UART.
    #[error(
        "{vcpus} vCPUs need {needed:#x} bytes of GIC redistributors from {base:#x}, past the UART at {limit:#x}: use fewer vCPUs"
    )]
    TooManyVcpus {
        /// Requested vCPUs.
        vcpus: usize,
        /// Bytes of redistributors they need.
        needed: u64,
        /// Redistributor base.
        base: u64,
        /// The next device.
        limit: u64,
    },
    /// The framework placed a vCPU's redistributor outside the frames the device tree says.
    #[error(
        "Hypervisor.framework put vCPU {vcpu}'s GIC redistributor at {reported:#x}, but the device tree tells the guest the redistributors are the {stride:#x}-byte frames from {start:#x} to {end:#x}",
        stride = layout::GIC_REDIST_SIZE_PER_VCPU
    )]
    RedistributorPlacement {
        /// The vCPU.
        vcpu: usize,
        /// `hv_gic_get_redistributor_base`.
        reported: u64,
        /// The device tree's first frame.
        start: u64,
        /// The end (exclusive) of the device tree's frames.
        end: u64,
    },
    /// Two vCPUs got the same redistributor.
    #[error(
        "Hypervisor.framework gave vCPU {vcpu} the GIC redistributor at {reported:#x}, which vCPU {other} already has"
    )]
    RedistributorShared {
        /// The vCPU.
        vcpu: usize,
        /// The other vCPU.
        other: usize,
        /// `hv_gic_get_redistributor_base`.
        reported: u64,
    },
    /// The distributor is not the frame the device tree describes.
    #[error(
        "Hypervisor.framework's GIC distributor is {size:#x} bytes, but the device tree describes {expected:#x} bytes at {base:#x}",
        base = layout::GIC_DIST_BASE
    )]
    DistributorSize {
        /// `hv_gic_get_distributor_size`.
        size: u64,
        /// The device tree's size.
        expected: u64,
    },
    /// A GIC region overlaps another device or RAM.
    #[error(
        "Hypervisor.framework's {gic} {gic_start:#x}..{gic_end:#x} overlaps the {device} {device_start:#x}..{device_end:#x}"
    )]
    Overlap {
        /// Which GIC region.
        gic: &'static str,
        /// Its start.
        gic_start: u64,
        /// Its end (exclusive).
        gic_end: u64,
        /// Which device.
        device: &'static str,
        /// Its start.
        device_start: u64,
        /// Its end (exclusive).
        device_end: u64,
    },
    /// The SPIs the devices use are outside the framework's SPI range.
    #[error(
        "the devices use GIC INTIDs {first}..={last} but Hypervisor.framework's SPIs are {base}..{end}"
    )]
    SpiRange {
        /// Lowest INTID used.
        first: u32,
        /// Highest INTID used.
        last: u32,
        /// First framework SPI.
        base: u32,
        /// One past the last framework SPI.
        end: u32,
    },
}

/// Checks that the framework's GIC fits the memory map of `layout` for `vcpus` vCPUs.
///
/// # Errors
///
/// The first [`GicLayoutError`] found.
pub fn check_gic_layout(
    limits: &GicLimits,
    vcpus: usize,
) -> std::result::Result<(), GicLayoutError> {
    for (what, base, alignment) in [
        (
            "distributor",
            layout::GIC_DIST_BASE,
            limits.distributor_alignment,
        ),
        (
            "redistributor",
            layout::GIC_REDIST_BASE,
            limits.redistributor_alignment,
        ),
    ] {
        if alignment != 0 && base % alignment != 0 {
            return Err(GicLayoutError::Misaligned {
                what,
                base,
                alignment,
            });
        }
    }
    if layout::GIC_DIST_BASE.saturating_add(limits.distributor_size) > layout::GIC_REDIST_BASE {
        return Err(GicLayoutError::DistributorTooLarge {
            size: limits.distributor_size,
            limit: layout::GIC_REDIST_BASE,
        });
    }
    if limits.redistributor_size != layout::GIC_REDIST_SIZE_PER_VCPU {
        return Err(GicLayoutError::RedistributorSize {
            size: limits.redistributor_size,
            expected: layout::GIC_REDIST_SIZE_PER_VCPU,
        });
    }
    let needed = (vcpus as u64).saturating_mul(limits.redistributor_size);
    if layout::GIC_REDIST_BASE.saturating_add(needed) > layout::UART_BASE {
        return Err(GicLayoutError::TooManyVcpus {
            vcpus,
            needed,
            base: layout::GIC_REDIST_BASE,
            limit: layout::UART_BASE,
        });
    }
    let first = layout::spi_to_intid(layout::UART_SPI.min(layout::VIRTIO_MMIO_FIRST_SPI));
    let last = layout::spi_to_intid(
        layout::UART_SPI
            .max(layout::VIRTIO_MMIO_FIRST_SPI + layout::VIRTIO_MMIO_MAX_SLOTS as u32 - 1),
    );
    let end = limits.spi_base.saturating_add(limits.spi_count);
    if first < limits.spi_base || last >= end {
        return Err(GicLayoutError::SpiRange {
            first,
            last,
            base: limits.spi_base,
            end,
        });
    }
    Ok(())
}

/// The intermediate physical address width needed to map guest memory ending at `end`
/// (exclusive): the number of significant bits of `end - 1`.
pub fn required_ipa_bits(end: u64) -> u32 {
    64 - end.saturating_sub(1).leading_zeros()
}

// ---------------------------------------------------------------------------------------------
// Setup order and placement checks
// ---------------------------------------------------------------------------------------------

/// The framework calls that create the VM and its GIC, in the order [`create_vm_with_gic`] makes
/// them. The glue implements it with Hypervisor.framework; tests with a fake that records calls.
pub trait GicSetup {
    /// The created VM; dropping it destroys the VM.
    type Vm;
    /// `hv_vm_create` (with the IPA size the RAM needs).
    fn create_vm(&mut self) -> Result<Self::Vm>;
    /// The GIC geometry (`hv_gic_get_*`), read once the VM exists.
    fn gic_limits(&mut self, vm: &Self::Vm) -> Result<GicLimits>;
    /// `hv_gic_config_create`, `hv_gic_config_set_distributor_base`,
    /// `hv_gic_config_set_redistributor_base`, `hv_gic_create`.
    fn create_gic(
        &mut self,
        vm: &Self::Vm,
        distributor_base: u64,
        redistributor_base: u64,
    ) -> Result<()>;
}

/// Creates the VM and then its GIC, in the order hv_gic.h asks for: `hv_gic_config_create`
/// "Create the GIC configuration after the virtual machine has been created", and
/// `hv_gic_create` "must only be called after a virtual machine has been created" and before any
/// vCPU. The geometry is read and checked ([`check_gic_layout`], [`check_gic_regions`]) between
/// the two, so that a GIC that does not fit the memory map is never configured; the VM is then
/// dropped (destroyed) with the error.
///
/// # Errors
///
/// The first failing call, or the layout error ([`HvError::Call`] wrapping a
/// [`GicLayoutError`]).
pub fn create_vm_with_gic<S: GicSetup>(setup: &mut S, vcpus: usize) -> Result<(S::Vm, GicLimits)> {
    let vm = setup.create_vm()?;
    let limits = setup.gic_limits(&vm)?;
    check_gic_layout(&limits, vcpus)
        .and_then(|()| check_gic_regions(&limits))
        .map_err(|e| HvError::call("checking the GIC geometry", io::Error::other(e)))?;
    setup.create_gic(&vm, layout::GIC_DIST_BASE, layout::GIC_REDIST_BASE)?;
    Ok((vm, limits))
}

/// The redistributor frames of a VM's vCPUs, as the framework reports them
/// (`hv_gic_get_redistributor_base`, which hv_gic.h says "Must be called after the affinity of
/// the given vCPU has been set in its MPIDR_EL1 register").
///
/// The device tree describes the redistributors as the [`layout::GIC_REDIST_SIZE_PER_VCPU`]
/// frames from [`layout::GIC_REDIST_BASE`], one per vCPU; the guest finds its own frame in that
/// range by the affinity in each frame's `GICR_TYPER`. So every vCPU's frame must be one of
/// those frames, and no two vCPUs may share one. Which vCPU gets which frame is not checked:
/// whether the framework hands frames out by affinity or by creation order (the vCPU threads
/// create their vCPUs concurrently) is not documented, and the guest does not care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedistributorFrames {
    owners: Vec<Option<usize>>,
}

impl RedistributorFrames {
    /// The frames of a VM with `vcpus` vCPUs, none claimed yet.
    pub fn new(vcpus: usize) -> Self {
        Self {
            owners: vec![None; vcpus],
        }
    }

    /// Records that vCPU `vcpu` got the redistributor at `reported`.
    ///
    /// # Errors
    ///
    /// [`GicLayoutError::RedistributorPlacement`] (naming the address and the device tree's
    /// range) when `reported` is not one of the frames; [`GicLayoutError::RedistributorShared`]
    /// when another vCPU has it.
    pub fn claim(&mut self, vcpu: usize, reported: u64) -> std::result::Result<(), GicLayoutError> {
        let start = layout::GIC_REDIST_BASE;
        let stride = layout::GIC_REDIST_SIZE_PER_VCPU;
        let end = start.saturating_add(stride.saturating_mul(self.owners.len() as u64));
        let slot = reported
            .checked_sub(start)
            .filter(|off| off % stride == 0)
            .and_then(|off| usize::try_from(off / stride).ok())
            .and_then(|i| self.owners.get_mut(i));
        let Some(slot) = slot else {
            return Err(GicLayoutError::RedistributorPlacement {
                vcpu,
                reported,
                start,
                end,
            });
        };
        match *slot {
            Some(other) if other != vcpu => Err(GicLayoutError::RedistributorShared {
                vcpu,
                other,
                reported,
            }),
            _ => {
                *slot = Some(vcpu);
                Ok(())
            }
        }
    }
}

/// A guest physical range `[start, start + len)` with a name, for overlap checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// What it is.
    pub what: &'static str,
    /// Guest physical start.
    pub start: u64,
    /// Size in bytes.
    pub len: u64,
}

impl Region {
    fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    fn overlaps(&self, other: &Region) -> bool {
        self.start < other.end() && other.start < self.end()
    }
}

/// The device windows of the memory map the GIC must stay clear of: the UART, every
/// virtio-mmio slot, RAM.
fn device_regions() -> [Region; 3] {
    [
        Region {
            what: "UART",
            start: layout::UART_BASE,
            len: layout::UART_SIZE,
        },
        Region {
            what: "virtio-mmio window",
            start: layout::VIRTIO_MMIO_BASE,
            len: layout::VIRTIO_MMIO_MAX_SLOTS as u64 * layout::VIRTIO_MMIO_SLOT_SIZE,
        },
        Region {
            what: "RAM",
            start: layout::RAM_BASE,
            len: layout::RAM_MAX_SIZE,
        },
    ]
}

/// Checks that the framework's GIC regions are what the device tree describes and clear of every
/// other device: the distributor is exactly the [`layout::GIC_DIST_SIZE`] frame at
/// [`layout::GIC_DIST_BASE`], and neither it nor the whole redistributor region (hv_gic.h,
/// `hv_gic_config_set_redistributor_base`: "The redistributor region will contain
/// redistributors for all vCPUs supported by the virtual machine", so it is sized by
/// `hv_gic_get_redistributor_region_size`, not by the vCPUs created) overlaps the UART, the
/// virtio-mmio window or RAM. Whether the framework decodes the frames of vCPUs that do not
/// exist is not documented; under the reading that it does, an overlap would hide a device from
/// the guest, so it is refused.
///
/// # Errors
///
/// [`GicLayoutError::DistributorSize`] or [`GicLayoutError::Overlap`].
pub fn check_gic_regions(limits: &GicLimits) -> std::result::Result<(), GicLayoutError> {
    if limits.distributor_size != layout::GIC_DIST_SIZE {
        return Err(GicLayoutError::DistributorSize {
            size: limits.distributor_size,
            expected: layout::GIC_DIST_SIZE,
        });
    }
    let gic = [
        Region {
            what: "GIC distributor",
            start: layout::GIC_DIST_BASE,
            len: limits.distributor_size,
        },
        Region {
            what: "GIC redistributor region",
            start: layout::GIC_REDIST_BASE,
            len: limits.redistributor_region_size,
        },
    ];
    for g in &gic {
        for d in &device_regions() {
            if g.overlaps(d) {
                return Err(GicLayoutError::Overlap {
                    gic: g.what,
                    gic_start: g.start,
                    gic_end: g.end(),
                    device: d.what,
                    device_start: d.start,
                    device_end: d.end(),
                });
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The virtual timer
// ---------------------------------------------------------------------------------------------

/// `CNTV_CTL_EL0.ISTATUS`: the timer condition is met.
const CNTV_CTL_ISTATUS: u64 = 1 << 2;

/// Whether the virtual timer drives its interrupt: enabled, not masked, condition met
/// (Arm ARM, `CNTV_CTL_EL0`).
pub fn vtimer_asserted(cntv_ctl: u64) -> bool {
    cntv_ctl & (CNTV_CTL_ENABLE | CNTV_CTL_IMASK | CNTV_CTL_ISTATUS)
        == CNTV_CTL_ENABLE | CNTV_CTL_ISTATUS
}

/// The vTimer mask of one vCPU, as Hypervisor.framework documents it.
///
/// hv_vcpu.h / `hv_vcpu_set_vtimer_mask`: after `hv_vcpu_run` returns
/// `HV_EXIT_REASON_VTIMER_ACTIVATED` "the timer is masked automatically. The vCPU won't exit
/// with this reason again until the mask is cleared"; the caller "needs to make the interrupts
/// to the vTimer pending in the guest's virtual interrupt controller. It also needs to detect
/// when the guest has serviced this interrupt."
///
/// So: on the exit, make the timer PPI pending ([`VtimerMask::on_activated`] returns its INTID)
/// and keep the mask; before each later run, [`VtimerMask::before_run`] says to unmask only
/// once the guest has dealt with the timer (`CNTV_CTL_EL0` shows it disabled, masked, or its
/// condition no longer met). Unmasking while the condition holds would exit again at once: a
/// busy loop of exits with nothing delivered.
///
/// With the in-kernel GIC (`hv_gic_create`) the framework should deliver the timer itself and
/// this exit should not come (QEMU's HVF backend treats it as impossible there); if it does, the
/// same rule applies and the PPI is made pending in the in-kernel GIC's redistributor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtimerMask {
    masked: bool,
}

impl VtimerMask {
    /// A VTIMER_ACTIVATED exit arrived: the framework masked the timer. Returns the INTID to
    /// make pending for this vCPU (the virtual timer's PPI, 27).
    pub fn on_activated(&mut self) -> u32 {
        self.masked = true;
        layout::ppi_to_intid(layout::TIMER_VIRT_PPI)
    }

    /// Whether the framework's mask is set (by an earlier exit, not yet cleared).
    pub fn is_masked(&self) -> bool {
        self.masked
    }

    /// Before running the vCPU, with its `CNTV_CTL_EL0`: `true` when the mask is to be cleared
    /// now (`hv_vcpu_set_vtimer_mask(vcpu, false)`), which this records.
    pub fn before_run(&mut self, cntv_ctl: u64) -> bool {
        if self.masked && !vtimer_asserted(cntv_ctl) {
            self.masked = false;
            return true;
        }
        false
    }
}

/// The virtual counter of the whole VM: one `hv_vcpu_set_vtimer_offset` value, taken once when
/// the VM is created and set on every vCPU, so that vCPUs created at different times on
/// different threads read the same `CNTVCT_EL0` (QEMU's HVF backend does the same). The guest's
/// count is the host's `CNTVCT_EL0` minus the offset, so it starts at zero with the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmClock {
    offset: u64,
}

/// The one timer call a vCPU needs at creation.
pub trait VcpuTimer {
    /// `hv_vcpu_set_vtimer_offset`.
    fn set_vtimer_offset(&self, offset: u64) -> Result<()>;
}

impl VmClock {
    /// The clock of a VM created when the host counter read `host_count`.
    pub fn new(host_count: u64) -> Self {
        Self { offset: host_count }
    }

    /// The offset every vCPU gets.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The guest's virtual count when the host's reads `host_count`.
    pub fn guest_count(&self, host_count: u64) -> u64 {
        host_count.wrapping_sub(self.offset)
    }

    /// Gives a new vCPU the VM's offset.
    ///
    /// # Errors
    ///
    /// The framework's.
    pub fn init_vcpu(&self, vcpu: &impl VcpuTimer) -> Result<()> {
        vcpu.set_vtimer_offset(self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::MmioDevice;

    // ---- fakes -------------------------------------------------------------------------------

    #[derive(Debug, Default)]
    struct FakeGic {
        calls: Mutex<Vec<(u32, bool)>>,
        fail: bool,
    }

    impl FakeGic {
        fn calls(&self) -> Vec<(u32, bool)> {
            lock(&self.calls).clone()
        }
    }

    impl Gic for FakeGic {
        fn set_spi(&self, intid: u32, level: bool) -> io::Result<()> {
            if self.fail {
                return Err(io::Error::other("fake GIC failure"));
            }
            lock(&self.calls).push((intid, level));
            Ok(())
        }
    }

    #[derive(Debug, Default)]
    struct FakeRegs {
        x: [u64; 31],
        pc: u64,
    }

    impl GuestRegisters for FakeRegs {
        fn x(&self, n: u8) -> Result<u64> {
            Ok(self.x[usize::from(n)])
        }
        fn set_x(&mut self, n: u8, value: u64) -> Result<()> {
            self.x[usize::from(n)] = value;
            Ok(())
        }
        fn advance_pc(&mut self, bytes: u64) -> Result<()> {
            self.pc += bytes;
            Ok(())
        }
    }

    /// Writes a device saw: `(offset, bytes)`.
    type Writes = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

    /// A device that answers every read with `value` and records writes.
    struct FakeDevice {
        value: u64,
        writes: Writes,
    }

    impl MmioDevice for FakeDevice {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            let len = data.len();
            data.copy_from_slice(&self.value.to_le_bytes()[..len]);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            lock(&self.writes).push((offset, data.to_vec()));
        }
    }

    const DEV_BASE: u64 = 0x0a00_0000;

    fn bus_with(value: u64) -> (MmioBus, Writes) {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let mut bus = MmioBus::new();
        let dev = FakeDevice {
            value,
            writes: Arc::clone(&writes),
        };
        bus.insert(DEV_BASE, 0x200, Arc::new(Mutex::new(dev)))
            .unwrap();
        (bus, writes)
    }

    /// A data-abort ESR: EC 0x24, IL, ISV, and the given SAS/SSE/SRT/SF/WnR.
    fn da(sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool) -> Esr {
        Esr((0x24 << 26)
            | (1 << 25)
            | (1 << 24)
            | (sas << 22)
            | (u64::from(sse) << 21)
            | (srt << 16)
            | (u64::from(sf) << 15)
            | (u64::from(wnr) << 6)
            | 0x06)
    }

    fn limits() -> GicLimits {
        GicLimits {
            distributor_size: 0x1_0000,
            distributor_alignment: 0x1_0000,
            redistributor_size: 0x2_0000,
            redistributor_region_size: 0x2_0000 * 64,
            redistributor_alignment: 0x1_0000,
            spi_base: 32,
            spi_count: 988,
        }
    }

    fn wait_for_calls(gic: &FakeGic, n: usize) -> Vec<(u32, bool)> {
        for _ in 0..500 {
            let calls = gic.calls();
            if calls.len() >= n {
                return calls;
            }
            thread::sleep(Duration::from_millis(2));
        }
        gic.calls()
    }

    // ---- interrupts --------------------------------------------------------------------------

    #[test]
    fn pulse_drives_the_spi_high_then_low() {
        let gic = FakeGic::default();
        pulse_spi(&gic, 48).unwrap();
        assert_eq!(gic.calls(), [(48, true), (48, false)]);
    }

    #[test]
    fn irq_line_sets_the_level_on_the_intid_of_its_spi() {
        let gic = Arc::new(FakeGic::default());
        let line = GicIrqLine::new(Arc::clone(&gic), layout::UART_SPI);
        line.set_level(true).unwrap();
        line.set_level(false).unwrap();
        assert_eq!(gic.calls(), [(33, true), (33, false)]);
    }

    #[test]
    fn irq_line_reports_a_gic_failure() {
        let gic = Arc::new(FakeGic {
            fail: true,
            ..Default::default()
        });
        assert!(GicIrqLine::new(gic, 1).set_level(true).is_err());
    }

    #[test]
    fn fired_notifier_pulses_its_intid() {
        let gic = Arc::new(FakeGic::default());
        let fwd = IrqForwarder::new(Arc::clone(&gic)).unwrap();
        let n = Notifier::new().unwrap();
        fwd.connect(&n, 48).unwrap();
        n.notify().unwrap();
        let step = fwd
            .step(&mut Vec::with_capacity(8), Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(step, Step::Continue);
        assert_eq!(gic.calls(), [(48, true), (48, false)]);
    }

    #[test]
    fn forwarder_consumes_the_notifier_it_was_woken_for() {
        let gic = Arc::new(FakeGic::default());
        let fwd = IrqForwarder::new(Arc::clone(&gic)).unwrap();
        let n = Notifier::new().unwrap();
        fwd.connect(&n, 48).unwrap();
        n.notify().unwrap();
        fwd.step(&mut Vec::with_capacity(8), Some(Duration::from_secs(5)))
            .unwrap();
        assert!(!n.consume().unwrap());
    }

    #[test]
    fn coalesced_notifications_give_one_pulse() {
        let gic = Arc::new(FakeGic::default());
        let fwd = IrqForwarder::new(Arc::clone(&gic)).unwrap();
        let n = Notifier::new().unwrap();
        fwd.connect(&n, 48).unwrap();
        n.notify().unwrap();
        n.notify().unwrap();
        fwd.step(&mut Vec::with_capacity(8), Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(gic.calls().len(), 2);
    }

    #[test]
    fn only_the_fired_source_of_several_is_pulsed() {
        let gic = Arc::new(FakeGic::default());
        let fwd = IrqForwarder::new(Arc::clone(&gic)).unwrap();
        let a = Notifier::new().unwrap();
        let b = Notifier::new().unwrap();
        let c = Notifier::new().unwrap();
        fwd.connect(&a, 48).unwrap();
        fwd.connect(&b, 49).unwrap();
        fwd.connect(&c, 50).unwrap();
        b.notify().unwrap();
        fwd.step(&mut Vec::with_capacity(8), Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(gic.calls(), [(49, true), (49, false)]);
    }

    #[test]
    fn several_fired_sources_each_pulse_their_own_intid() {
        let gic = Arc::new(FakeGic::default());
        let fwd = IrqForwarder::new(Arc::clone(&gic)).unwrap();
        let a = Notifier::new().unwrap();
        let b = Notifier::new().unwrap();
        fwd.connect(&a, 48).unwrap();
        fwd.connect(&b, 49).unwrap();
        a.notify().unwrap();
        b.notify().unwrap();
        let mut events = Vec::with_capacity(8);
        let mut calls = Vec::new();
        for _ in 0..10 {
            fwd.step(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            calls = gic.calls();
            if calls.len() >= 4 {
                break;
            }
        }
        calls.sort();
        assert_eq!(calls, [(48, false), (48, true), (49, false), (49, true)]);
    }

    #[test]
    fn step_times_out_without_pulses_when_nothing_fired() {
        let gic = Arc::new(FakeGic::default());
        let fwd = IrqForwarder::new(Arc::clone(&gic)).unwrap();
        let n = Notifier::new().unwrap();
        fwd.connect(&n, 48).unwrap();
        let step = fwd
            .step(&mut Vec::with_capacity(8), Some(Duration::from_millis(10)))
            .unwrap();
        assert_eq!(step, Step::Continue);
        assert!(gic.calls().is_empty());
    }

    #[test]
    fn gic_failure_does_not_stop_the_forwarder() {
        let gic = Arc::new(FakeGic {
            fail: true,
            ..Default::default()
        });
        let fwd = IrqForwarder::new(gic).unwrap();
        let n = Notifier::new().unwrap();
        fwd.connect(&n, 48).unwrap();
        n.notify().unwrap();
        let step = fwd
            .step(&mut Vec::with_capacity(8), Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(step, Step::Continue);
    }

    #[test]
    fn started_thread_forwards_notifications() {
        let gic = Arc::new(FakeGic::default());
        let fwd = IrqForwarder::new(Arc::clone(&gic)).unwrap();
        let n = Notifier::new().unwrap();
        fwd.connect(&n, 50).unwrap();
        fwd.start().unwrap();
        n.notify().unwrap();
        assert_eq!(wait_for_calls(&gic, 2), [(50, true), (50, false)]);
    }

    #[test]
    fn source_connected_after_start_is_forwarded() {
        let gic = Arc::new(FakeGic::default());
        let fwd = IrqForwarder::new(Arc::clone(&gic)).unwrap();
        fwd.start().unwrap();
        let n = Notifier::new().unwrap();
        fwd.connect(&n, 51).unwrap();
        n.notify().unwrap();
        assert_eq!(wait_for_calls(&gic, 2), [(51, true), (51, false)]);
    }

    #[test]
    fn stop_ends_the_thread() {
        let gic = Arc::new(FakeGic::default());
        let fwd = IrqForwarder::new(gic).unwrap();
        fwd.start().unwrap();
        fwd.stop();
        assert!(lock(&fwd.thread).is_none());
    }

    #[test]
    fn step_reports_stop_when_stop_fired() {
        let fwd = IrqForwarder::new(Arc::new(FakeGic::default())).unwrap();
        fwd.shared.stop.notify().unwrap();
        let step = fwd
            .step(&mut Vec::with_capacity(8), Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(step, Step::Stop);
    }

    #[test]
    fn dropping_a_started_forwarder_joins_its_thread() {
        let fwd = IrqForwarder::new(Arc::new(FakeGic::default())).unwrap();
        fwd.start().unwrap();
        drop(fwd); // Must return (a hang here is the failure).
    }

    // ---- MMIO --------------------------------------------------------------------------------

    #[test]
    fn store_of_w1_writes_its_low_4_bytes() {
        let (bus, writes) = bus_with(0);
        let mut regs = FakeRegs::default();
        regs.x[1] = 0xdead_beef_1234_5678;
        emulate_mmio(
            da(2, false, 1, false, true),
            DEV_BASE + 0x50,
            &mut regs,
            &bus,
        )
        .unwrap();
        assert_eq!(
            *lock(&writes),
            [(0x50, 0x1234_5678u32.to_le_bytes().to_vec())]
        );
    }

    #[test]
    fn store_of_xzr_writes_zero() {
        let (bus, writes) = bus_with(0);
        let mut regs = FakeRegs::default();
        emulate_mmio(da(2, false, 31, false, true), DEV_BASE, &mut regs, &bus).unwrap();
        assert_eq!(*lock(&writes), [(0, vec![0, 0, 0, 0])]);
    }

    #[test]
    fn store_of_a_byte_writes_one_byte() {
        let (bus, writes) = bus_with(0);
        let mut regs = FakeRegs::default();
        regs.x[3] = 0x1ff;
        emulate_mmio(da(0, false, 3, false, true), DEV_BASE, &mut regs, &bus).unwrap();
        assert_eq!(*lock(&writes), [(0, vec![0xff])]);
    }

    #[test]
    fn load_writes_the_value_to_the_target_register() {
        let (bus, _) = bus_with(0x7473_6576);
        let mut regs = FakeRegs::default();
        emulate_mmio(da(2, false, 5, false, false), DEV_BASE, &mut regs, &bus).unwrap();
        assert_eq!(regs.x[5], 0x7473_6576);
    }

    #[test]
    fn load_into_w_register_clears_the_upper_half() {
        let (bus, _) = bus_with(0x8000_0000);
        let mut regs = FakeRegs::default();
        regs.x[2] = u64::MAX;
        emulate_mmio(da(2, false, 2, false, false), DEV_BASE, &mut regs, &bus).unwrap();
        assert_eq!(regs.x[2], 0x8000_0000);
    }

    #[test]
    fn sign_extending_byte_load_into_x_register_extends_to_64_bits() {
        let (bus, _) = bus_with(0x80);
        let mut regs = FakeRegs::default();
        emulate_mmio(da(0, true, 4, true, false), DEV_BASE, &mut regs, &bus).unwrap();
        assert_eq!(regs.x[4], 0xffff_ffff_ffff_ff80);
    }

    #[test]
    fn load_into_xzr_changes_no_register() {
        let (bus, _) = bus_with(0x1234);
        let mut regs = FakeRegs::default();
        emulate_mmio(da(2, false, 31, false, false), DEV_BASE, &mut regs, &bus).unwrap();
        assert!(regs.x.iter().all(|&v| v == 0));
    }

    #[test]
    fn emulated_access_advances_pc_by_4() {
        let (bus, _) = bus_with(0);
        let mut regs = FakeRegs::default();
        emulate_mmio(da(2, false, 1, false, false), DEV_BASE, &mut regs, &bus).unwrap();
        assert_eq!(regs.pc, 4);
    }

    #[test]
    fn load_from_unclaimed_address_reads_zero_and_reports_it() {
        let (bus, _) = bus_with(0xffff);
        let mut regs = FakeRegs::default();
        regs.x[1] = 7;
        let claimed =
            emulate_mmio(da(2, false, 1, false, false), 0x0c00_0000, &mut regs, &bus).unwrap();
        assert!(!claimed);
        assert_eq!(regs.x[1], 0);
        assert_eq!(regs.pc, 4);
    }

    #[test]
    fn abort_without_valid_syndrome_is_unhandled_and_leaves_pc() {
        let (bus, _) = bus_with(0);
        let mut regs = FakeRegs::default();
        let esr = Esr(da(2, false, 1, false, true).0 & !(1 << 24));
        let err = emulate_mmio(esr, DEV_BASE, &mut regs, &bus).unwrap_err();
        assert!(matches!(err, HvError::Unhandled(_)));
        assert_eq!(regs.pc, 0);
    }

    #[test]
    fn abort_on_stage1_walk_is_unhandled() {
        let regs = FakeRegs::default();
        let esr = Esr(da(3, false, 1, true, false).0 | (1 << 7));
        assert!(matches!(
            decode_mmio(esr, DEV_BASE, &regs),
            Err(HvError::Unhandled(_))
        ));
    }

    #[test]
    fn decode_of_a_store_reports_address_size_and_value() {
        let mut regs = FakeRegs::default();
        regs.x[9] = 0xaabb;
        let access = decode_mmio(da(1, false, 9, false, true), 0x0900_0000, &regs).unwrap();
        assert_eq!(
            access,
            MmioAccess::Write {
                addr: 0x0900_0000,
                size: 2,
                value: 0xaabb
            }
        );
    }

    // ---- exception dispatch ------------------------------------------------------------------

    #[test]
    fn hvc_is_a_hypercall_with_x0_to_x3_and_pc_unchanged() {
        let (bus, _) = bus_with(0);
        let mut regs = FakeRegs::default();
        regs.x[..4].copy_from_slice(&[0x8400_0000, 1, 2, 3]);
        let action = handle_exception(Esr(0x5a00_0000), 0, &mut regs, &bus).unwrap();
        assert_eq!(
            action,
            ExceptionAction::Exit(VcpuExit::Hypercall {
                x0: 0x8400_0000,
                args: [1, 2, 3]
            })
        );
        assert_eq!(regs.pc, 0);
    }

    #[test]
    fn smc_is_a_hypercall_and_advances_pc() {
        let (bus, _) = bus_with(0);
        let mut regs = FakeRegs::default();
        regs.x[0] = 0x8400_0008;
        let action = handle_exception(Esr(0x5e00_0000), 0, &mut regs, &bus).unwrap();
        assert!(matches!(
            action,
            ExceptionAction::Exit(VcpuExit::Hypercall {
                x0: 0x8400_0008,
                ..
            })
        ));
        assert_eq!(regs.pc, 4);
    }

    #[test]
    fn wfi_advances_pc_and_asks_to_wait() {
        let (bus, _) = bus_with(0);
        let mut regs = FakeRegs::default();
        let action = handle_exception(Esr(0x0600_0000), 0, &mut regs, &bus).unwrap();
        assert_eq!(action, ExceptionAction::WaitForInterrupt);
        assert_eq!(regs.pc, 4);
    }

    #[test]
    fn wfe_advances_pc_and_asks_to_yield() {
        let (bus, _) = bus_with(0);
        let mut regs = FakeRegs::default();
        let action = handle_exception(Esr(0x0600_0001), 0, &mut regs, &bus).unwrap();
        assert_eq!(action, ExceptionAction::Yield);
        assert_eq!(regs.pc, 4);
    }

    #[test]
    fn data_abort_to_a_device_continues() {
        let (bus, _) = bus_with(0);
        let mut regs = FakeRegs::default();
        let action =
            handle_exception(da(2, false, 0, false, false), DEV_BASE, &mut regs, &bus).unwrap();
        assert_eq!(action, ExceptionAction::Exit(VcpuExit::Continue));
    }

    #[test]
    fn data_abort_to_no_device_is_reported_as_unclaimed() {
        let (bus, _) = bus_with(0);
        let mut regs = FakeRegs::default();
        let action =
            handle_exception(da(2, false, 0, false, false), 0x10, &mut regs, &bus).unwrap();
        assert_eq!(action, ExceptionAction::UnclaimedMmio { addr: 0x10 });
    }

    #[test]
    fn instruction_abort_is_unhandled() {
        let (bus, _) = bus_with(0);
        let mut regs = FakeRegs::default();
        let err =
            handle_exception(Esr((0x20 << 26) | (1 << 25)), 0x10, &mut regs, &bus).unwrap_err();
        assert!(matches!(err, HvError::Unhandled(msg) if msg.contains("0x20")));
    }

    #[test]
    fn every_exception_class_is_handled_without_panic() {
        let (bus, _) = bus_with(0);
        for ec in 0..64u64 {
            for iss in [0, 0x1ff_ffff, 0x155_5555] {
                let mut regs = FakeRegs::default();
                let _ =
                    handle_exception(Esr((ec << 26) | (1 << 25) | iss), DEV_BASE, &mut regs, &bus);
            }
        }
    }

    // ---- system registers --------------------------------------------------------------------

    /// ESR of a trapped MRS/MSR of OSLSR_EL1 (op0 2, op1 0, CRn 1, CRm 1, op2 4).
    fn sysreg_esr(rt: u64, read: bool) -> Esr {
        Esr((0x18 << 26)
            | (1 << 25)
            | (2 << 20)
            | (4 << 17)
            | (1 << 10)
            | (rt << 5)
            | (1 << 1)
            | u64::from(read))
    }

    #[test]
    fn trapped_sysreg_read_gives_zero() {
        let mut regs = FakeRegs::default();
        regs.x[7] = 0x55;
        emulate_sysreg_trap(sysreg_esr(7, true), &mut regs).unwrap();
        assert_eq!(regs.x[7], 0);
    }

    #[test]
    fn trapped_sysreg_write_changes_no_register() {
        let mut regs = FakeRegs::default();
        regs.x[7] = 0x55;
        emulate_sysreg_trap(sysreg_esr(7, false), &mut regs).unwrap();
        assert_eq!(regs.x[7], 0x55);
    }

    #[test]
    fn trapped_sysreg_read_into_xzr_changes_no_register() {
        let mut regs = FakeRegs::default();
        regs.x[30] = 0x55;
        emulate_sysreg_trap(sysreg_esr(31, true), &mut regs).unwrap();
        assert_eq!(regs.x[30], 0x55);
    }

    #[test]
    fn trapped_sysreg_advances_pc() {
        let mut regs = FakeRegs::default();
        emulate_sysreg_trap(sysreg_esr(1, true), &mut regs).unwrap();
        assert_eq!(regs.pc, 4);
    }

    #[test]
    fn sysreg_trap_is_reported_for_logging() {
        let (bus, _) = bus_with(0);
        let mut regs = FakeRegs::default();
        let action = handle_exception(sysreg_esr(1, true), 0, &mut regs, &bus).unwrap();
        assert!(matches!(action, ExceptionAction::SysRegTrapped(a) if a.is_read));
    }

    // ---- WFI timeout -------------------------------------------------------------------------

    const CAP: Duration = Duration::from_millis(10);
    const FREQ: u64 = 24_000_000;

    #[test]
    fn wfi_waits_until_the_timer_deadline() {
        // 24_000 ticks at 24 MHz = 1 ms.
        assert_eq!(
            wfi_timeout(1, 1_024_000, 1_000_000, FREQ, CAP),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn wfi_wait_is_capped() {
        assert_eq!(wfi_timeout(1, u64::MAX, 0, FREQ, CAP), CAP);
    }

    #[test]
    fn wfi_does_not_wait_when_the_timer_already_fired() {
        assert_eq!(wfi_timeout(1, 5, 10, FREQ, CAP), Duration::ZERO);
    }

    #[test]
    fn wfi_with_disabled_timer_waits_the_cap() {
        assert_eq!(wfi_timeout(0, 5, 10, FREQ, CAP), CAP);
    }

    #[test]
    fn wfi_with_masked_timer_waits_the_cap() {
        assert_eq!(wfi_timeout(0b11, 5, 10, FREQ, CAP), CAP);
    }

    #[test]
    fn wfi_with_unknown_frequency_waits_the_cap() {
        assert_eq!(wfi_timeout(1, 100, 10, 0, CAP), CAP);
    }

    // ---- setup checks ------------------------------------------------------------------------

    #[test]
    fn usual_framework_gic_fits_the_layout() {
        assert_eq!(check_gic_layout(&limits(), 8), Ok(()));
    }

    #[test]
    fn redistributors_past_the_uart_are_refused() {
        let err = check_gic_layout(&limits(), layout::max_vcpus() + 1).unwrap_err();
        assert!(matches!(err, GicLayoutError::TooManyVcpus { .. }));
        assert!(err.to_string().contains("use fewer vCPUs"));
    }

    #[test]
    fn most_vcpus_the_layout_has_room_for_fit() {
        assert_eq!(check_gic_layout(&limits(), layout::max_vcpus()), Ok(()));
    }

    #[test]
    fn redistributor_size_other_than_the_device_tree_stride_is_refused() {
        let l = GicLimits {
            redistributor_size: 0x4_0000,
            ..limits()
        };
        assert!(matches!(
            check_gic_layout(&l, 1),
            Err(GicLayoutError::RedistributorSize { size: 0x4_0000, .. })
        ));
    }

    #[test]
    fn distributor_running_into_the_redistributors_is_refused() {
        let l = GicLimits {
            distributor_size: 0x10_0000,
            ..limits()
        };
        assert!(matches!(
            check_gic_layout(&l, 1),
            Err(GicLayoutError::DistributorTooLarge { .. })
        ));
    }

    #[test]
    fn misaligned_redistributor_base_is_refused() {
        let l = GicLimits {
            redistributor_alignment: 0x10_0000,
            ..limits()
        };
        assert!(matches!(
            check_gic_layout(&l, 1),
            Err(GicLayoutError::Misaligned {
                what: "redistributor",
                ..
            })
        ));
    }

    #[test]
    fn spi_range_too_small_for_the_virtio_slots_is_refused() {
        let l = GicLimits {
            spi_count: 32,
            ..limits()
        };
        assert!(matches!(
            check_gic_layout(&l, 1),
            Err(GicLayoutError::SpiRange { .. })
        ));
    }

    #[test]
    fn region_for_64_vcpus_is_clear_of_every_device() {
        assert_eq!(check_gic_regions(&limits()), Ok(()));
    }

    #[test]
    fn redistributor_region_reaching_the_uart_is_refused_naming_both_ranges() {
        let l = GicLimits {
            redistributor_region_size: 0x2_0000 * 256,
            ..limits()
        };
        let err = check_gic_regions(&l).unwrap_err();
        assert!(
            matches!(
                err,
                GicLayoutError::Overlap {
                    gic: "GIC redistributor region",
                    device: "UART",
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("0x80a0000") && msg.contains("0x9000000"),
            "{msg}"
        );
    }

    #[test]
    fn region_overlap_is_found_for_every_device_window() {
        // A redistributor region is contiguous from its base, so the UART is met first; the
        // windows after it are checked as well.
        for (start, device) in [
            (layout::UART_BASE + 0x10, "UART"),
            (layout::VIRTIO_MMIO_BASE + 0x1000, "virtio-mmio window"),
            (layout::RAM_BASE + (1 << 30), "RAM"),
        ] {
            let gic = Region {
                what: "g",
                start,
                len: 0x10,
            };
            let hit: Vec<_> = device_regions()
                .into_iter()
                .filter(|d| gic.overlaps(d))
                .map(|d| d.what)
                .collect();
            assert_eq!(hit, [device]);
        }
        let clear = Region {
            what: "g",
            start: layout::UART_BASE + layout::UART_SIZE,
            len: 0x1000,
        };
        assert!(!device_regions().iter().any(|d| clear.overlaps(d)));
    }

    #[test]
    fn distributor_other_than_the_device_tree_frame_is_refused() {
        let l = GicLimits {
            distributor_size: 0x2_0000,
            ..limits()
        };
        let err = check_gic_regions(&l).unwrap_err();
        assert_eq!(
            err,
            GicLayoutError::DistributorSize {
                size: 0x2_0000,
                expected: layout::GIC_DIST_SIZE
            }
        );
        assert!(err.to_string().contains("0x8000000"), "{err}");
    }

    #[test]
    fn redistributors_in_the_device_tree_frames_are_accepted_in_any_order() {
        let mut frames = RedistributorFrames::new(3);
        // vCPU 2 created first, by another thread, and given the first frame.
        assert_eq!(frames.claim(2, 0x080A_0000), Ok(()));
        assert_eq!(frames.claim(0, 0x080A_0000 + 2 * 0x2_0000), Ok(()));
        assert_eq!(frames.claim(1, 0x080C_0000), Ok(()));
    }

    #[test]
    fn redistributor_outside_the_device_tree_frames_is_refused_naming_both_addresses() {
        for reported in [
            0x080A_0000 + 2 * 0x2_0000, // the frame of a third vCPU the guest is not told of
            0x0809_0000,                // below the region
            0x080A_1000,                // inside, not on a frame boundary
            0,
        ] {
            let err = RedistributorFrames::new(2).claim(1, reported).unwrap_err();
            assert_eq!(
                err,
                GicLayoutError::RedistributorPlacement {
                    vcpu: 1,
                    reported,
                    start: 0x080A_0000,
                    end: 0x080E_0000
                }
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{reported:#x}")) && msg.contains("0x80a0000"),
                "{msg}"
            );
        }
    }

    #[test]
    fn one_redistributor_for_two_vcpus_is_refused() {
        let mut frames = RedistributorFrames::new(2);
        frames.claim(0, 0x080A_0000).unwrap();
        assert_eq!(
            frames.claim(1, 0x080A_0000),
            Err(GicLayoutError::RedistributorShared {
                vcpu: 1,
                other: 0,
                reported: 0x080A_0000
            })
        );
    }

    // ---- setup order -------------------------------------------------------------------------

    /// Records the framework calls in order.
    struct FakeSetup {
        calls: Vec<String>,
        limits: GicLimits,
        fail_vm: bool,
        vm_alive: Arc<Mutex<bool>>,
    }

    struct FakeSetupVm(Arc<Mutex<bool>>);

    impl Drop for FakeSetupVm {
        fn drop(&mut self) {
            *lock(&self.0) = false;
        }
    }

    impl FakeSetup {
        fn new(limits: GicLimits) -> Self {
            Self {
                calls: Vec::new(),
                limits,
                fail_vm: false,
                vm_alive: Arc::new(Mutex::new(false)),
            }
        }
    }

    impl GicSetup for FakeSetup {
        type Vm = FakeSetupVm;
        fn create_vm(&mut self) -> Result<FakeSetupVm> {
            self.calls.push("hv_vm_create".into());
            if self.fail_vm {
                return Err(HvError::Unhandled("denied".into()));
            }
            *lock(&self.vm_alive) = true;
            Ok(FakeSetupVm(Arc::clone(&self.vm_alive)))
        }
        fn gic_limits(&mut self, _vm: &FakeSetupVm) -> Result<GicLimits> {
            assert!(*lock(&self.vm_alive), "GIC geometry read without a VM");
            self.calls.push("hv_gic_get_*".into());
            Ok(self.limits)
        }
        fn create_gic(&mut self, _vm: &FakeSetupVm, dist: u64, redist: u64) -> Result<()> {
            assert!(*lock(&self.vm_alive), "GIC configured without a VM");
            self.calls
                .push(format!("hv_gic_create({dist:#x}, {redist:#x})"));
            Ok(())
        }
    }

    #[test]
    fn the_vm_is_created_before_the_gic_is_configured() {
        let mut setup = FakeSetup::new(limits());
        let (vm, got) = create_vm_with_gic(&mut setup, 2).unwrap();
        assert_eq!(got, limits());
        assert_eq!(
            setup.calls,
            [
                "hv_vm_create",
                "hv_gic_get_*",
                "hv_gic_create(0x8000000, 0x80a0000)"
            ]
        );
        drop(vm);
    }

    #[test]
    fn no_gic_is_configured_when_the_vm_cannot_be_created() {
        let mut setup = FakeSetup::new(limits());
        setup.fail_vm = true;
        assert!(create_vm_with_gic(&mut setup, 1).is_err());
        assert_eq!(setup.calls, ["hv_vm_create"]);
    }

    #[test]
    fn a_gic_that_does_not_fit_is_never_created_and_the_vm_is_destroyed() {
        let mut setup = FakeSetup::new(GicLimits {
            redistributor_region_size: 0x2_0000 * 256,
            ..limits()
        });
        let err = create_vm_with_gic(&mut setup, 1).err().unwrap();
        assert!(err.to_string().contains("GIC geometry"), "{err}");
        assert_eq!(setup.calls, ["hv_vm_create", "hv_gic_get_*"]);
        assert!(!*lock(&setup.vm_alive), "the VM outlived the error");
    }

    // ---- virtual timer -----------------------------------------------------------------------

    const ENABLE: u64 = 1;
    const IMASK: u64 = 2;
    const ISTATUS: u64 = 4;

    #[test]
    fn an_activated_timer_makes_the_virtual_timer_ppi_pending() {
        let mut m = VtimerMask::default();
        assert!(!m.is_masked());
        assert_eq!(m.on_activated(), 27);
        assert!(m.is_masked());
    }

    #[test]
    fn the_timer_stays_masked_while_its_condition_holds() {
        let mut m = VtimerMask::default();
        m.on_activated();
        // The guest has not dealt with it yet: unmasking now would exit again at once.
        for _ in 0..3 {
            assert!(!m.before_run(ENABLE | ISTATUS));
            assert!(m.is_masked());
        }
    }

    #[test]
    fn the_timer_is_unmasked_once_the_guest_dealt_with_it() {
        for ctl in [ENABLE, ENABLE | IMASK | ISTATUS, ISTATUS, 0] {
            let mut m = VtimerMask::default();
            m.on_activated();
            assert!(m.before_run(ctl), "CNTV_CTL_EL0 {ctl:#x}");
            assert!(!m.is_masked());
            // Once: the mask is cleared a single time.
            assert!(!m.before_run(ctl));
        }
    }

    #[test]
    fn an_unmasked_timer_is_left_alone() {
        let mut m = VtimerMask::default();
        assert!(!m.before_run(ENABLE | ISTATUS));
        assert!(!m.before_run(ENABLE));
    }

    #[test]
    fn timer_asserts_only_enabled_unmasked_and_met() {
        assert!(vtimer_asserted(ENABLE | ISTATUS));
        assert!(!vtimer_asserted(ENABLE | IMASK | ISTATUS));
        assert!(!vtimer_asserted(ENABLE));
        assert!(!vtimer_asserted(ISTATUS));
    }

    struct FakeTimer(Mutex<Vec<u64>>);

    impl VcpuTimer for FakeTimer {
        fn set_vtimer_offset(&self, offset: u64) -> Result<()> {
            lock(&self.0).push(offset);
            Ok(())
        }
    }

    #[test]
    fn every_vcpu_gets_the_offset_taken_at_vm_creation() {
        let clock = VmClock::new(1_000);
        let vcpus: Vec<FakeTimer> = (0..3).map(|_| FakeTimer(Mutex::new(Vec::new()))).collect();
        // vCPUs are created later, on their own threads: the host counter has moved on.
        for v in &vcpus {
            thread::scope(|s| {
                s.spawn(|| clock.init_vcpu(v).unwrap());
            });
        }
        for v in &vcpus {
            assert_eq!(*lock(&v.0), [1_000]);
        }
        assert_eq!(clock.offset(), 1_000);
    }

    #[test]
    fn the_guest_counter_starts_at_zero_with_the_vm() {
        let clock = VmClock::new(5_000);
        assert_eq!(clock.guest_count(5_000), 0);
        assert_eq!(clock.guest_count(5_240), 240);
    }

    #[test]
    fn ipa_bits_cover_the_end_of_ram() {
        // 1 GiB of RAM at 1 GiB ends at 2 GiB: 31 bits.
        assert_eq!(required_ipa_bits(0x8000_0000), 31);
        assert_eq!(required_ipa_bits(0x8000_0001), 32);
        // 63 GiB at 1 GiB ends at 64 GiB: the 36 bits of an M1.
        assert_eq!(required_ipa_bits(64 << 30), 36);
    }
}
