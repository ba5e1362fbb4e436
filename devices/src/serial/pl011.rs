//! An emulated ARM PrimeCell UART (PL011), the guest's serial console.
//!
//! The register interface follows the *PrimeCell UART (PL011) Technical Reference Manual*, ARM DDI
//! 0183 (r1p5), chapter 3, and the identification registers are those of QEMU's `arm,pl011`, so a
//! guest sees the same UART as on QEMU's `virt` machine. Linux drives it with `amba-pl011`
//! (`console=ttyAMA0`) and, before that, with `earlycon=pl011,<base>` (byte stores to `UARTDR`) or
//! `earlycon=pl011,mmio32,<base>`.
//!
//! What is emulated, and what is not:
//!
//! - **Transmit** is instantaneous: a byte stored to `UARTDR` is written to the output at once,
//!   so the transmit FIFO is always empty (`UARTFR.TXFE` set, `TXFF` and `BUSY` clear). Bytes go
//!   out whatever `UARTCR` says, as on QEMU: early consoles write before anyone enables the UART.
//! - **Receive** goes through a FIFO of 16 entries with `UARTLCR_H.FEN` set and of one entry
//!   without it, filled by the VMM with [`Pl011::enqueue_input`]. A character that finds the FIFO
//!   full is lost and reported as an overrun (`UARTRSR.OE`, `UARTRIS.OEIS`, and `UARTDR.OE` on the
//!   next character received), as the TRM describes.
//! - **Interrupts**: `RXRIS` when the receive FIFO reaches its `UARTIFLS` trigger level, `RTRIS`
//!   (receive timeout) as soon as characters arrive and until the FIFO is empty, because nothing
//!   follows a burst of host input so the timeout has always elapsed (Linux's driver relies on it
//!   for bursts shorter than the trigger level), `TXRIS` after every transmitted byte and at
//!   reset, `OEIS` on overrun. Each stays set until its condition goes away or the guest writes
//!   `UARTICR`. The r1p5 TRM raises `TXRIS` only when the transmit FIFO passes through its
//!   trigger level, not at reset; raising it at reset too means a driver that unmasks `TXIM`
//!   before writing anything still gets its interrupt (drivers clear it at start-up anyway).
//!   The combined `UARTINTR` output, `(UARTRIS & UARTIMSC) != 0`, drives the [`IrqLine`] (a
//!   level-triggered SPI) on every change.
//! - **Not emulated**: baud rate and line format (stored and read back, otherwise ignored), modem
//!   lines (read as inactive), framing/parity/break errors (never happen), DMA (`UARTDMACR` is
//!   stored only), IrDA.
//! - **Loopback** (`UARTCR.LBE`): transmitted bytes go to the receive FIFO instead of the output.
//!
//! The registers are 32 bits wide. Accesses of 1, 2 or 4 bytes at a register's offset are
//! accepted (narrow reads see the low bytes, narrow writes are zero-extended); any other access,
//! and any access to an offset with no register, reads as zero, is ignored when written, and is
//! logged at debug level.

use std::collections::VecDeque;
use std::fmt;
use std::io::Write;
use std::sync::Arc;

use crate::bus::{MmioDevice, read_le, write_le};
use crate::irq::IrqLine;

/// Size of the PL011's MMIO window: one 4 KiB page, with the identification registers at its end.
pub const MMIO_SIZE: u64 = 0x1000;

/// Device-tree `compatible` strings for the node describing this UART.
///
/// Linux binds the PL011 through the AMBA bus, which also wants a clock named `apb_pclk` in the
/// node's `clock-names` (Documentation/devicetree/bindings/serial/pl011.yaml).
pub const COMPATIBLE: [&str; 2] = ["arm,pl011", "arm,primecell"];

/// Receive FIFO depth with `FEN` set.
///
/// The r1p5 PL011 has 32-entry FIFOs, but we report revision 1 in `UARTPeriphID2` (as QEMU does),
/// and Linux's `amba-pl011` sizes the FIFO from that revision: 16 entries below revision 3
/// (`get_fifosize_arm`). Matching the driver keeps its trigger-level arithmetic true.
const FIFO_DEPTH: usize = 16;

// Register offsets (the TRM's register summary).
const DR: u64 = 0x000;
const RSR_ECR: u64 = 0x004;
const FR: u64 = 0x018;
const ILPR: u64 = 0x020;
const IBRD: u64 = 0x024;
const FBRD: u64 = 0x028;
const LCR_H: u64 = 0x02c;
const CR: u64 = 0x030;
const IFLS: u64 = 0x034;
const IMSC: u64 = 0x038;
const RIS: u64 = 0x03c;
const MIS: u64 = 0x040;
const ICR: u64 = 0x044;
const DMACR: u64 = 0x048;
const ID_FIRST: u64 = 0xfe0;
const ID_LAST: u64 = 0xffc;

/// `UARTPeriphID0..3` then `UARTPCellID0..3`, as QEMU's `arm,pl011`.
const ID: [u32; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

// UARTDR: error flags above the data byte.
const DR_OE: u16 = 1 << 11;
// UARTRSR.
const RSR_OE: u32 = 1 << 3;
// UARTFR.
const FR_RXFE: u32 = 1 << 4;
const FR_RXFF: u32 = 1 << 6;
const FR_TXFE: u32 = 1 << 7;
// UARTLCR_H.
const LCR_H_FEN: u32 = 1 << 4;
// UARTCR: bits 6:3 are reserved.
const CR_LBE: u32 = 1 << 7;
const CR_MASK: u32 = 0xff87;
const CR_RESET: u32 = 0x0300; // TXE | RXE, UART disabled
const IFLS_RESET: u32 = 0x12; // both trigger levels at 1/2
// Interrupt bits of UARTIMSC/RIS/MIS/ICR.
const INT_RX: u32 = 1 << 4;
const INT_TX: u32 = 1 << 5;
const INT_RT: u32 = 1 << 6;
const INT_OE: u32 = 1 << 10;
const INT_MASK: u32 = 0x7ff;

/// A PL011 UART: guest output to a writer, host input through a receive FIFO, one interrupt line.
///
/// Share it as `Arc<Mutex<Pl011>>` between the MMIO bus (it coerces to a
/// [`SharedMmioDevice`](crate::bus::SharedMmioDevice)) and the thread that reads host input.
pub struct Pl011 {
    ilpr: u32,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
    ris: u32,
    dmacr: u32,
    rsr: u32,
    /// Received characters with their `UARTDR` error flags (bits 11:8).
    rx: VecDeque<u16>,
    /// A character was lost: the next one stored in the FIFO carries `UARTDR.OE`.
    overrun_pending: bool,
    overruns: u64,
    out: Box<dyn Write + Send>,
    out_failing: bool,
    irq: Arc<dyn IrqLine>,
    /// The level the line was last driven to successfully; it is assumed low at creation.
    irq_level: bool,
    irq_failing: bool,
}

impl fmt::Debug for Pl011 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pl011")
            .field("lcr_h", &self.lcr_h)
            .field("cr", &self.cr)
            .field("ifls", &self.ifls)
            .field("imsc", &self.imsc)
            .field("ris", &self.ris)
            .field("rsr", &self.rsr)
            .field("rx_len", &self.rx.len())
            .field("overruns", &self.overruns)
            .field("irq_level", &self.irq_level)
            .finish_non_exhaustive()
    }
}

impl Pl011 {
    /// Creates a UART in its reset state that writes guest output to `out` and signals on `irq`.
    ///
    /// `irq` is assumed low; the UART drives it only when its level changes.
    pub fn new(out: Box<dyn Write + Send>, irq: Arc<dyn IrqLine>) -> Self {
        Self {
            ilpr: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            cr: CR_RESET,
            ifls: IFLS_RESET,
            imsc: 0,
            // The transmit FIFO is empty, at or below any trigger level.
            ris: INT_TX,
            dmacr: 0,
            rsr: 0,
            rx: VecDeque::with_capacity(FIFO_DEPTH),
            overrun_pending: false,
            overruns: 0,
            out,
            out_failing: false,
            irq,
            irq_level: false,
            irq_failing: false,
        }
    }

    /// Delivers host input to the guest; returns how many leading bytes of `bytes` were received.
    ///
    /// Bytes beyond the free space of the receive FIFO are lost, as on a real line, and reported
    /// to the guest as an overrun (and counted in [`overrun_count`](Self::overrun_count)). A caller
    /// that wants no loss offers at most [`input_space`](Self::input_space) bytes and keeps the
    /// rest until the guest has read the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let accepted = self.receive(bytes);
        self.update_irq();
        accepted
    }

    /// How many bytes the receive FIFO can take now without an overrun.
    pub fn input_space(&self) -> usize {
        self.fifo_depth().saturating_sub(self.rx.len())
    }

    /// How many received characters were lost because the receive FIFO was full.
    pub fn overrun_count(&self) -> u64 {
        self.overruns
    }

    fn fifo_depth(&self) -> usize {
        if self.lcr_h & LCR_H_FEN != 0 {
            FIFO_DEPTH
        } else {
            1
        }
    }

    /// FIFO occupancy at which `RXRIS` is raised (`UARTIFLS.RXIFLSEL`: "becomes >= 1/8 full"...).
    fn rx_trigger(&self) -> usize {
        if self.lcr_h & LCR_H_FEN == 0 {
            return 1;
        }
        match (self.ifls >> 3) & 0x7 {
            0 => FIFO_DEPTH / 8,
            1 => FIFO_DEPTH / 4,
            3 => FIFO_DEPTH * 3 / 4,
            4 => FIFO_DEPTH * 7 / 8,
            // 2 is 1/2; the reserved encodings 5-7 get the reset value's level.
            _ => FIFO_DEPTH / 2,
        }
    }

    fn flags(&self) -> u32 {
        let mut fr = FR_TXFE;
        if self.rx.is_empty() {
            fr |= FR_RXFE;
        }
        if self.rx.len() >= self.fifo_depth() {
            fr |= FR_RXFF;
        }
        fr
    }

    /// Puts characters into the receive FIFO and updates the status they raise; leaves the line
    /// to the caller.
    fn receive(&mut self, bytes: &[u8]) -> usize {
        let accepted = bytes.len().min(self.input_space());
        for &byte in &bytes[..accepted] {
            let mut entry = u16::from(byte);
            if std::mem::take(&mut self.overrun_pending) {
                entry |= DR_OE;
            }
            self.rx.push_back(entry);
        }
        let lost = bytes.len() - accepted;
        if lost > 0 {
            self.overruns += lost as u64;
            self.overrun_pending = true;
            self.rsr |= RSR_OE;
            self.ris |= INT_OE;
            tracing::debug!(lost, "pl011: receive FIFO full, input lost (overrun)");
        }
        if accepted > 0 {
            self.ris |= INT_RT;
            if self.rx.len() >= self.rx_trigger() {
                self.ris |= INT_RX;
            }
        }
        accepted
    }

    fn read_data(&mut self) -> u32 {
        let Some(entry) = self.rx.pop_front() else {
            return 0;
        };
        if self.rx.len() < self.rx_trigger() {
            self.ris &= !INT_RX;
        }
        if self.rx.is_empty() {
            self.ris &= !INT_RT;
        }
        u32::from(entry)
    }

    fn transmit(&mut self, byte: u8) {
        // The byte leaves the FIFO at once, taking it back through its trigger level.
        self.ris |= INT_TX;
        if self.cr & CR_LBE != 0 {
            self.receive(&[byte]);
            return;
        }
        // Flushed per store: the guest gives no sign that a burst has ended (the last character
        // before it goes quiet, a prompt or a panic message, must show at once).
        match self.out.write_all(&[byte]).and_then(|()| self.out.flush()) {
            Ok(()) => self.out_failing = false,
            Err(error) => {
                if !self.out_failing {
                    tracing::warn!(%error, "pl011: cannot write guest console output; dropping it");
                    self.out_failing = true;
                }
            }
        }
    }

    fn read_register(&mut self, offset: u64) -> Option<u32> {
        Some(match offset {
            DR => self.read_data(),
            RSR_ECR => self.rsr,
            FR => self.flags(),
            ILPR => self.ilpr,
            IBRD => self.ibrd,
            FBRD => self.fbrd,
            LCR_H => self.lcr_h,
            CR => self.cr,
            IFLS => self.ifls,
            IMSC => self.imsc,
            RIS => self.ris,
            MIS => self.ris & self.imsc,
            DMACR => self.dmacr,
            ID_FIRST..=ID_LAST => ID[((offset - ID_FIRST) / 4) as usize],
            // ICR is write-only; the rest of the window is reserved.
            _ => return None,
        })
    }

    fn write_register(&mut self, offset: u64, value: u32) -> bool {
        match offset {
            DR => self.transmit(value as u8),
            // Any write to UARTECR clears the error flags.
            RSR_ECR => self.rsr = 0,
            ILPR => self.ilpr = value & 0xff,
            IBRD => self.ibrd = value & 0xffff,
            FBRD => self.fbrd = value & 0x3f,
            LCR_H => self.lcr_h = value & 0xff,
            CR => self.cr = value & CR_MASK,
            IFLS => self.ifls = value & 0x3f,
            IMSC => self.imsc = value & INT_MASK,
            ICR => self.ris &= !(value & INT_MASK),
            DMACR => self.dmacr = value & 0x7,
            // FR, RIS, MIS and the ID registers are read-only; the rest is reserved.
            _ => return false,
        }
        true
    }

    /// Drives the line to `(UARTRIS & UARTIMSC) != 0` if that differs from its last level. A
    /// failure is logged once and retried on the next access.
    fn update_irq(&mut self) {
        let level = self.ris & self.imsc != 0;
        if level == self.irq_level {
            return;
        }
        match self.irq.set_level(level) {
            Ok(()) => {
                self.irq_level = level;
                self.irq_failing = false;
            }
            Err(error) => {
                if !self.irq_failing {
                    tracing::warn!(%error, level, "pl011: cannot drive the interrupt line");
                    self.irq_failing = true;
                }
            }
        }
    }
}

/// The register an access of `width` bytes at `offset` reaches, if it is one the UART accepts.
fn register_access(offset: u64, width: usize) -> Option<u64> {
    (matches!(width, 1 | 2 | 4) && offset & 3 == 0 && offset < MMIO_SIZE).then_some(offset)
}

impl MmioDevice for Pl011 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = register_access(offset, data.len()).and_then(|reg| self.read_register(reg));
        data.fill(0);
        match value {
            Some(value) => write_le(data, u64::from(value)),
            None => tracing::debug!(offset, width = data.len(), "pl011: read of no register"),
        }
        self.update_irq();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let written = register_access(offset, data.len())
            .zip(read_le(data))
            .is_some_and(|(reg, value)| self.write_register(reg, value as u32));
        if !written {
            tracing::debug!(
                offset,
                width = data.len(),
                "pl011: write to no register ignored"
            );
        }
        self.update_irq();
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Mutex;

    use super::*;
    use crate::bus::MmioBus;
    use crate::irq::RecordingIrqLine;

    /// A writer whose bytes and flushes the test can inspect.
    #[derive(Clone, Default)]
    struct Output {
        bytes: Arc<Mutex<Vec<u8>>>,
        flushes: Arc<Mutex<usize>>,
    }

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }

    /// A writer like a closed stdout.
    struct BrokenPipe;

    impl Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    struct Harness {
        uart: Pl011,
        line: Arc<RecordingIrqLine>,
        out: Output,
    }

    impl Harness {
        fn new() -> Self {
            let line = Arc::new(RecordingIrqLine::new());
            let out = Output::default();
            let uart = Pl011::new(Box::new(out.clone()), line.clone());
            Self { uart, line, out }
        }

        /// With FIFOs enabled and the UART, transmitter and receiver on, as Linux leaves it.
        fn enabled() -> Self {
            let mut h = Self::new();
            h.write(LCR_H, LCR_H_FEN | 0x60); // 8 bits, FIFOs on
            h.write(CR, 0x301); // UARTEN | TXE | RXE
            h
        }

        fn read(&mut self, offset: u64) -> u32 {
            let mut data = [0u8; 4];
            self.uart.read(offset, &mut data);
            u32::from_le_bytes(data)
        }

        fn write(&mut self, offset: u64, value: u32) {
            self.uart.write(offset, &value.to_le_bytes());
        }

        fn output(&self) -> Vec<u8> {
            self.out.bytes.lock().unwrap().clone()
        }
    }

    #[test]
    fn bytes_stored_to_dr_reach_the_writer() {
        let mut h = Harness::enabled();
        for &b in b"hi\n" {
            h.write(DR, u32::from(b));
        }
        assert_eq!(h.output(), b"hi\n");
    }

    #[test]
    fn byte_wide_dr_stores_from_earlycon_reach_the_writer_with_the_uart_disabled() {
        let mut h = Harness::new();
        h.uart.write(DR, b"A");
        h.uart.write(DR, &[b'B', 0]);
        assert_eq!(h.output(), b"AB");
    }

    #[test]
    fn output_is_flushed_after_each_store() {
        let mut h = Harness::enabled();
        h.write(DR, u32::from(b'x'));
        h.write(DR, u32::from(b'y'));
        assert_eq!(*h.out.flushes.lock().unwrap(), 2);
    }

    #[test]
    fn a_closed_output_drops_bytes_and_the_uart_keeps_working() {
        let line = Arc::new(RecordingIrqLine::new());
        let mut uart = Pl011::new(Box::new(BrokenPipe), line.clone());
        uart.write(IMSC, &INT_TX.to_le_bytes());
        uart.write(ICR, &INT_TX.to_le_bytes());
        uart.write(DR, b"a");
        uart.write(DR, b"b");
        assert!(line.level());
        let mut fr = [0u8; 4];
        uart.read(FR, &mut fr);
        assert_eq!(u32::from_le_bytes(fr) & FR_TXFE, FR_TXFE);
    }

    #[test]
    fn fr_reports_empty_fifos_and_an_idle_transmitter_at_reset() {
        let mut h = Harness::new();
        assert_eq!(h.read(FR), FR_TXFE | FR_RXFE);
    }

    #[test]
    fn registers_have_their_trm_reset_values() {
        let mut h = Harness::new();
        assert_eq!(h.read(CR), 0x300);
        assert_eq!(h.read(IFLS), 0x12);
        assert_eq!(h.read(LCR_H), 0);
        assert_eq!(h.read(IMSC), 0);
        assert_eq!(h.read(RSR_ECR), 0);
        assert_eq!(h.read(MIS), 0);
    }

    #[test]
    fn input_clears_rxfe_and_reads_back_from_dr_in_order() {
        let mut h = Harness::enabled();
        assert_eq!(h.uart.enqueue_input(b"ok"), 2);
        assert_eq!(h.read(FR) & FR_RXFE, 0);
        assert_eq!(h.read(DR), u32::from(b'o'));
        assert_eq!(h.read(DR), u32::from(b'k'));
        assert_eq!(h.read(FR) & FR_RXFE, FR_RXFE);
    }

    #[test]
    fn reading_dr_with_an_empty_fifo_returns_zero() {
        let mut h = Harness::enabled();
        assert_eq!(h.read(DR), 0);
        assert_eq!(h.read(FR) & FR_RXFE, FR_RXFE);
    }

    #[test]
    fn input_space_tracks_fifo_occupancy() {
        let mut h = Harness::enabled();
        assert_eq!(h.uart.input_space(), FIFO_DEPTH);
        h.uart.enqueue_input(b"abc");
        assert_eq!(h.uart.input_space(), FIFO_DEPTH - 3);
        h.read(DR);
        assert_eq!(h.uart.input_space(), FIFO_DEPTH - 2);
    }

    #[test]
    fn with_fifos_disabled_the_receiver_holds_one_character() {
        let mut h = Harness::new();
        assert_eq!(h.uart.input_space(), 1);
        assert_eq!(h.uart.enqueue_input(b"xy"), 1);
        assert_eq!(h.read(FR) & FR_RXFF, FR_RXFF);
        assert_eq!(h.read(DR) & 0xff, u32::from(b'x'));
    }

    #[test]
    fn a_full_fifo_counts_the_overrun_and_enqueue_returns_partial() {
        let mut h = Harness::enabled();
        let input = [b'z'; FIFO_DEPTH + 4];
        assert_eq!(h.uart.enqueue_input(&input), FIFO_DEPTH);
        assert_eq!(h.uart.overrun_count(), 4);
        assert_eq!(h.uart.input_space(), 0);
        assert_eq!(h.read(FR) & FR_RXFF, FR_RXFF);
        assert_eq!(h.read(RSR_ECR) & RSR_OE, RSR_OE);
        assert_eq!(h.read(RIS) & INT_OE, INT_OE);
        assert_eq!(h.uart.enqueue_input(b"more"), 0);
        assert_eq!(h.uart.overrun_count(), 8);
    }

    #[test]
    fn the_first_character_after_an_overrun_carries_dr_oe() {
        let mut h = Harness::enabled();
        h.uart.enqueue_input(&[b'a'; FIFO_DEPTH + 1]);
        for _ in 0..FIFO_DEPTH {
            assert_eq!(h.read(DR), u32::from(b'a'));
        }
        h.uart.enqueue_input(b"bc");
        assert_eq!(h.read(DR), u32::from(DR_OE) | u32::from(b'b'));
        assert_eq!(h.read(DR), u32::from(b'c'));
    }

    #[test]
    fn writing_ecr_clears_the_receive_status() {
        let mut h = Harness::enabled();
        h.uart.enqueue_input(&[0; FIFO_DEPTH + 1]);
        h.write(RSR_ECR, 0);
        assert_eq!(h.read(RSR_ECR), 0);
    }

    #[test]
    fn receive_timeout_interrupt_raised_when_input_arrives_with_rtim_set() {
        let mut h = Harness::enabled();
        h.write(IMSC, INT_RT);
        h.uart.enqueue_input(b"a");
        assert!(h.line.level());
        assert_eq!(h.read(MIS), INT_RT);
    }

    #[test]
    fn rx_interrupt_raised_when_the_fifo_reaches_its_trigger_level() {
        let mut h = Harness::enabled();
        h.write(IMSC, INT_RX);
        h.uart.enqueue_input(&[b'r'; FIFO_DEPTH / 2]); // IFLS reset value: 1/2 full
        assert!(h.line.level());
        assert_eq!(h.read(RIS) & INT_RX, INT_RX);
    }

    #[test]
    fn rx_interrupt_not_raised_below_the_trigger_level() {
        let mut h = Harness::enabled();
        h.write(IMSC, INT_RX);
        h.uart.enqueue_input(&[b'r'; FIFO_DEPTH / 2 - 1]);
        assert!(!h.line.level());
        assert_eq!(h.read(RIS) & INT_RX, 0);
    }

    #[test]
    fn rx_trigger_level_follows_ifls() {
        let mut h = Harness::enabled();
        h.write(IFLS, 0); // RX and TX at 1/8
        h.write(IMSC, INT_RX);
        h.uart.enqueue_input(&[b'r'; FIFO_DEPTH / 8]);
        assert!(h.line.level());
    }

    #[test]
    fn rx_interrupt_raised_by_one_character_when_fifos_are_disabled() {
        let mut h = Harness::new();
        h.write(IMSC, INT_RX);
        h.uart.enqueue_input(b"a");
        assert!(h.line.level());
    }

    #[test]
    fn rx_interrupts_lowered_when_the_fifo_drains() {
        let mut h = Harness::enabled();
        h.write(IMSC, INT_RX | INT_RT);
        h.uart.enqueue_input(&[b'd'; FIFO_DEPTH / 2]);
        assert!(h.line.level());
        for _ in 0..FIFO_DEPTH / 2 {
            h.read(DR);
        }
        assert!(!h.line.level());
        assert_eq!(h.read(RIS) & (INT_RX | INT_RT), 0);
    }

    #[test]
    fn rx_interrupt_cleared_once_the_fifo_falls_below_the_trigger_level() {
        let mut h = Harness::enabled();
        h.uart.enqueue_input(&[b'd'; FIFO_DEPTH / 2]);
        h.read(DR);
        assert_eq!(h.read(RIS) & (INT_RX | INT_RT), INT_RT);
    }

    #[test]
    fn rx_interrupt_lowered_when_masked() {
        let mut h = Harness::enabled();
        h.write(IMSC, INT_RT);
        h.uart.enqueue_input(b"m");
        h.write(IMSC, 0);
        assert!(!h.line.level());
        assert_eq!(h.read(RIS) & INT_RT, INT_RT);
    }

    #[test]
    fn tx_interrupt_raised_when_txim_set() {
        let mut h = Harness::enabled();
        h.write(IMSC, INT_TX);
        assert!(h.line.level());
        assert_eq!(h.read(MIS), INT_TX);
    }

    #[test]
    fn tx_interrupt_raised_again_by_each_transmitted_byte() {
        let mut h = Harness::enabled();
        h.write(IMSC, INT_TX);
        h.write(ICR, INT_TX);
        assert!(!h.line.level());
        h.write(DR, u32::from(b'.'));
        assert!(h.line.level());
    }

    #[test]
    fn icr_clears_only_the_bits_written() {
        let mut h = Harness::enabled();
        h.uart.enqueue_input(b"i");
        assert_eq!(h.read(RIS), INT_TX | INT_RT);
        h.write(ICR, INT_RT);
        assert_eq!(h.read(RIS), INT_TX);
    }

    #[test]
    fn icr_lowers_the_line() {
        let mut h = Harness::enabled();
        h.write(IMSC, INT_RT | INT_TX);
        h.uart.enqueue_input(b"i");
        h.write(ICR, INT_MASK);
        assert!(!h.line.level());
        assert_eq!(h.read(MIS), 0);
    }

    #[test]
    fn the_line_is_driven_only_when_its_level_changes() {
        let mut h = Harness::enabled();
        h.write(IMSC, INT_RT);
        h.uart.enqueue_input(b"a");
        h.uart.enqueue_input(b"b");
        h.read(FR);
        h.read(DR);
        h.read(DR);
        h.read(DR);
        assert_eq!(h.line.history(), [true, false]);
    }

    #[test]
    fn a_failed_line_update_is_retried_on_the_next_access() {
        let mut h = Harness::enabled();
        h.line.set_failing(true);
        h.write(IMSC, INT_TX);
        assert!(!h.line.level());
        h.line.set_failing(false);
        h.read(FR);
        assert!(h.line.level());
    }

    #[test]
    fn loopback_sends_transmitted_bytes_to_the_receive_fifo() {
        let mut h = Harness::enabled();
        h.write(CR, 0x301 | CR_LBE);
        h.write(DR, u32::from(b'L'));
        assert!(h.output().is_empty());
        assert_eq!(h.read(DR), u32::from(b'L'));
    }

    #[test]
    fn id_registers_read_as_qemus_arm_pl011() {
        let mut h = Harness::new();
        let ids: Vec<u32> = (0..8).map(|i| h.read(ID_FIRST + 4 * i)).collect();
        assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
    }

    #[test]
    fn writable_registers_read_back_without_reserved_bits() {
        let mut h = Harness::new();
        for (offset, mask) in [
            (ILPR, 0xff),
            (IBRD, 0xffff),
            (FBRD, 0x3f),
            (LCR_H, 0xff),
            (CR, CR_MASK),
            (IFLS, 0x3f),
            (IMSC, INT_MASK),
            (DMACR, 0x7),
        ] {
            h.write(offset, u32::MAX);
            assert_eq!(h.read(offset), mask, "register {offset:#x}");
        }
    }

    #[test]
    fn read_only_registers_ignore_writes() {
        let mut h = Harness::new();
        for offset in [FR, RIS, MIS, ID_FIRST, ID_LAST] {
            let before = h.read(offset);
            h.write(offset, 0xffff_ffff);
            assert_eq!(h.read(offset), before, "register {offset:#x}");
        }
    }

    #[test]
    fn unknown_offsets_read_zero_and_ignore_writes() {
        let mut h = Harness::enabled();
        for offset in [0x008, 0x01c, 0x04c, 0x800, 0xfdc, ICR] {
            h.write(offset, 0xffff_ffff);
            assert_eq!(h.read(offset), 0, "offset {offset:#x}");
        }
        assert!(h.output().is_empty());
        assert_eq!(h.read(IMSC), 0);
    }

    #[test]
    fn narrow_reads_return_the_low_bytes_of_a_register() {
        let mut h = Harness::new();
        let mut half = [0xaa; 2];
        h.uart.read(CR, &mut half);
        assert_eq!(half, [0x00, 0x03]);
        let mut byte = [0xaa; 1];
        h.uart.read(FR, &mut byte);
        assert_eq!(byte, [(FR_TXFE | FR_RXFE) as u8]);
    }

    #[test]
    fn odd_widths_and_unaligned_offsets_are_harmless() {
        let mut h = Harness::enabled();
        h.uart.enqueue_input(b"q");
        for (offset, width) in [
            (DR, 8),
            (DR, 3),
            (DR, 0),
            (DR + 1, 1),
            (CR + 2, 2),
            (0x1000, 4),
        ] {
            let mut data = vec![0xaa; width];
            h.uart.read(offset, &mut data);
            assert!(data.iter().all(|&b| b == 0), "read {offset:#x}/{width}");
            h.uart.write(offset, &vec![0x41; width]);
        }
        h.uart.read(u64::MAX, &mut [0; 4]);
        h.uart.write(u64::MAX - 3, &[0; 4]);
        assert!(h.output().is_empty());
        assert_eq!(h.read(CR), 0x301);
        assert_eq!(h.read(DR), u32::from(b'q'));
    }

    #[test]
    fn works_as_a_shared_device_on_the_mmio_bus() {
        const BASE: u64 = 0x0900_0000;
        let h = Harness::enabled();
        let out = h.out.clone();
        let uart = Arc::new(Mutex::new(h.uart));
        let mut bus = MmioBus::new();
        bus.insert(BASE, MMIO_SIZE, uart.clone()).unwrap();

        let input = std::thread::spawn({
            let uart = uart.clone();
            move || uart.lock().unwrap().enqueue_input(b"k")
        });
        assert_eq!(input.join().unwrap(), 1);
        let mut data = [0u8; 4];
        assert!(bus.read(BASE + DR, &mut data));
        assert_eq!(data, [b'k', 0, 0, 0]);
        assert!(bus.write(BASE + DR, b"!"));
        assert_eq!(*out.bytes.lock().unwrap(), b"!");
    }
}
