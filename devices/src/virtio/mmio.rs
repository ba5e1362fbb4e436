//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2).
//!
//! [`MmioTransport`] is an [`MmioDevice`]: a VMM places it on its bus (0x200 bytes are plenty)
//! and describes it in the device tree as `virtio,mmio`. It owns the driver-facing state (status,
//! feature pages, queue configuration) and the per-queue notifiers, and it activates and resets
//! the [`VirtioDevice`] behind it.
//!
//! Every value a driver writes is untrusted: invalid status transitions, feature sets and queue
//! configurations are refused (the register keeps its old value), counted in
//! [`TransportMetrics`] and logged at a limited rate; nothing a driver writes can panic the VMM.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::{
    ActivateContext, ActivateError, GuestMemory, Interrupt, VirtioDevice, features,
    interrupt_status, status,
};
use crate::bus::{MmioDevice, read_le, write_le};
use crate::event::Notifier;
use crate::ratelimit::RateLimit;
use crate::warn_limited;

/// `MagicValue`: "virt" in little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The transport version implemented (no legacy interface).
pub const VERSION: u32 = 2;
/// The vendor ID reported to the driver ("QEMU"'s value is common; ours spells "vmnt").
pub const VENDOR_ID: u32 = 0x746e_6d76;
/// The size of the register window, configuration space included.
pub const MMIO_WINDOW_SIZE: u64 = 0x200;

/// Register offsets (virtio 1.2, table 4.1).
#[allow(missing_docs)]
pub mod regs {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const QUEUE_RESET: u64 = 0x0c0;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Counters of driver mistakes the transport refused.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    /// Register accesses at an unknown offset, with a width other than 32 bits, or to a
    /// read-only/write-only register the wrong way.
    pub bad_register_access: AtomicU64,
    /// Status writes that are not a valid transition.
    pub bad_status_transition: AtomicU64,
    /// Feature sets refused at `FEATURES_OK`, or feature writes at the wrong time.
    pub bad_features: AtomicU64,
    /// Queue configuration refused (bad size, addresses outside memory, wrong time).
    pub bad_queue_config: AtomicU64,
    /// `QueueNotify` writes naming a queue that does not exist.
    pub bad_notify: AtomicU64,
    /// Activations the device refused (the device is then marked `DEVICE_NEEDS_RESET`).
    pub activate_failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The virtio-mmio register interface in front of a [`VirtioDevice`].
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Interrupt,
    queue_notifiers: Vec<Arc<Notifier>>,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    active: bool,
    metrics: Arc<TransportMetrics>,
    log_limit: RateLimit,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("acked_features", &self.acked_features)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Puts `device` behind a virtio-mmio register window. `interrupt` is the notifier the
    /// VMM turns into the device's (edge-triggered) guest interrupt.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Notifier,
    ) -> std::io::Result<Self> {
        let queues = Self::fresh_queues(device.as_ref());
        let queue_notifiers = (0..queues.len())
            .map(|_| Notifier::new().map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            device,
            mem,
            interrupt: Interrupt::new(interrupt),
            queue_notifiers,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            active: false,
            metrics: Arc::default(),
            log_limit: RateLimit::guest_errors(),
        })
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            .map(|&max| {
                // A max size of 0 or above 32768 is a device bug; fall back to the largest legal.
                Queue::new(max).unwrap_or_else(|_| Queue::new(256).expect("256 is a valid size"))
            })
            .collect()
    }

    /// The notifier fired when the driver notifies queue `index`. A VMM can bind it to an
    /// ioeventfd on `QueueNotify` (offset [`regs::QUEUE_NOTIFY`], data match `index`), so that
    /// notifications never leave the kernel.
    pub fn queue_notifiers(&self) -> &[Arc<Notifier>] {
        &self.queue_notifiers
    }

    /// The device's interrupt (status word and notifier).
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }

    /// Counters of refused driver actions.
    pub fn metrics(&self) -> &Arc<TransportMetrics> {
        &self.metrics
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is running (activated and not reset since).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        self.queues = Self::fresh_queues(self.device.as_ref());
        for n in &self.queue_notifiers {
            // Stale kicks from before the reset must not reach the next activation.
            let _ = n.consume();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
        self.interrupt.clear_needs_reset();
    }

    fn refuse(&self, counter: &AtomicU64, what: &str, offset: u64, value: u64) {
        bump(counter);
        warn_limited!(
            self.log_limit,
            device = self.device.device_type(),
            offset,
            value,
            "virtio-mmio: refused {what}"
        );
    }

    fn set_status(&mut self, value: u32) {
        use status::*;
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value == old {
            return;
        }
        // The driver may set FAILED at any time; otherwise exactly one new bit, in order.
        let added = value & !old;
        let valid = value & old == old
            && (added == FAILED
                || match (old & !(FAILED | DEVICE_NEEDS_RESET), added) {
                    (0, ACKNOWLEDGE) => true,
                    (o, DRIVER) if o == ACKNOWLEDGE => true,
                    (o, FEATURES_OK) if o == ACKNOWLEDGE | DRIVER => true,
                    (o, DRIVER_OK) if o == ACKNOWLEDGE | DRIVER | FEATURES_OK => true,
                    _ => false,
                });
        if !valid || added & DEVICE_NEEDS_RESET != 0 {
            self.refuse(
                &self.metrics.bad_status_transition,
                "status transition",
                regs::STATUS,
                u64::from(value),
            );
            return;
        }
        if added == FEATURES_OK && !self.features_acceptable() {
            // Leaving FEATURES_OK clear tells the driver the subset was not accepted.
            self.refuse(
                &self.metrics.bad_features,
                "feature set",
                regs::STATUS,
                self.acked_features,
            );
            return;
        }
        if added == DRIVER_OK {
            self.status = value;
            self.activate();
            return;
        }
        self.status = value;
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.features();
        self.acked_features & !offered == 0 && self.acked_features & features::VERSION_1 != 0
    }

    fn activate(&mut self) {
        let event_idx = self.acked_features & features::RING_EVENT_IDX != 0;
        // The transport keeps its copy of the configuration (for reads of QueueReady and the
        // like); the device gets queues of its own, rebuilt from the same state.
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            match Queue::try_from(q.state()) {
                Ok(mut q) => {
                    q.set_event_idx(event_idx);
                    queues.push(q);
                }
                Err(e) => {
                    tracing::warn!(queue = i, error = %e, "virtio-mmio: queue state refused");
                    self.fail_activation(&ActivateError::QueueNotReady(i));
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_notifiers: self.queue_notifiers.clone(),
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        match self.device.activate(ctx) {
            Ok(()) => self.active = true,
            Err(e) => self.fail_activation(&e),
        }
    }

    fn fail_activation(&mut self, e: &ActivateError) {
        bump(&self.metrics.activate_failures);
        tracing::error!(
            device = self.device.device_type(),
            error = %e,
            "virtio-mmio: activation failed; device needs reset"
        );
        self.status |= status::DEVICE_NEEDS_RESET;
        let _ = self.interrupt.signal_config();
    }

    /// Whether queue registers may be written now: after FEATURES_OK, before DRIVER_OK, and
    /// only for a queue that is not ready (virtio 1.2, 4.2.2.3).
    fn queue_writable(&self) -> bool {
        let setup = self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK;
        setup
            && self
                .queues
                .get(self.queue_sel as usize)
                .is_some_and(|q| !q.ready())
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if !self.queue_writable() {
            self.refuse(
                &self.metrics.bad_queue_config,
                "queue register write outside queue setup",
                offset,
                u64::from(v),
            );
            return;
        }
        let mem = self.mem.clone();
        let Some(q) = self.selected_queue() else {
            return;
        };
        let ok = match offset {
            regs::QUEUE_NUM => {
                let fits = u16::try_from(v)
                    .ok()
                    .filter(|&n| n != 0 && n.is_power_of_two() && n <= q.max_size());
                fits.map(|n| q.set_size(n)).is_some()
            }
            regs::QUEUE_DESC_LOW | regs::QUEUE_DESC_HIGH => {
                let a = merge_half(q.desc_table(), offset == regs::QUEUE_DESC_HIGH, v);
                q.try_set_desc_table_address(a).is_ok()
            }
            regs::QUEUE_DRIVER_LOW | regs::QUEUE_DRIVER_HIGH => {
                let a = merge_half(q.avail_ring(), offset == regs::QUEUE_DRIVER_HIGH, v);
                q.try_set_avail_ring_address(a).is_ok()
            }
            regs::QUEUE_DEVICE_LOW | regs::QUEUE_DEVICE_HIGH => {
                let a = merge_half(q.used_ring(), offset == regs::QUEUE_DEVICE_HIGH, v);
                q.try_set_used_ring_address(a).is_ok()
            }
            regs::QUEUE_READY => match v {
                0 => true,
                1 => {
                    // virtio-queue only validates a queue marked ready, and it never reads an
                    // avail ring at address 0 (it takes 0 for "not set up").
                    q.set_ready(true);
                    let valid = q.is_valid(&mem) && rings_in_memory(q, &mem) && q.avail_ring() != 0;
                    q.set_ready(valid);
                    valid
                }
                _ => false,
            },
            _ => false,
        };
        if !ok {
            self.refuse(
                &self.metrics.bad_queue_config,
                "queue configuration",
                offset,
                u64::from(v),
            );
        }
    }

    fn read_reg(&mut self, offset: u64) -> Option<u32> {
        let v = match offset {
            regs::MAGIC_VALUE => MAGIC_VALUE,
            regs::VERSION => VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            regs::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS if self.interrupt.needs_reset() => {
                self.status | status::DEVICE_NEEDS_RESET
            }
            regs::STATUS => self.status,
            // No shared memory regions: length -1 says so (virtio 1.2, 4.2.2.1).
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH => u32::MAX,
            regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => u32::MAX,
            // VIRTIO_F_RING_RESET is not offered, so the register reads as 0.
            regs::QUEUE_RESET => 0,
            regs::CONFIG_GENERATION => self.device.config_generation(),
            regs::DEVICE_FEATURES_SEL
            | regs::DRIVER_FEATURES
            | regs::DRIVER_FEATURES_SEL
            | regs::QUEUE_SEL
            | regs::QUEUE_NUM
            | regs::QUEUE_NOTIFY
            | regs::INTERRUPT_ACK
            | regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_DRIVER_LOW
            | regs::QUEUE_DRIVER_HIGH
            | regs::QUEUE_DEVICE_LOW
            | regs::QUEUE_DEVICE_HIGH
            | regs::SHM_SEL => return None,
            _ => return None,
        };
        Some(v)
    }

    fn write_reg(&mut self, offset: u64, v: u32) -> bool {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            regs::DRIVER_FEATURES => {
                let in_negotiation = self.status
                    & (status::DRIVER | status::FEATURES_OK | status::FAILED)
                    == status::DRIVER;
                if !in_negotiation || self.driver_features_sel > 1 {
                    self.refuse(
                        &self.metrics.bad_features,
                        "driver features write",
                        offset,
                        u64::from(v),
                    );
                    return true;
                }
                let shift = 32 * self.driver_features_sel;
                self.acked_features =
                    (self.acked_features & !(0xffff_ffffu64 << shift)) | (u64::from(v) << shift);
            }
            regs::QUEUE_SEL => self.queue_sel = v,
            regs::QUEUE_NUM
            | regs::QUEUE_READY
            | regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_DRIVER_LOW
            | regs::QUEUE_DRIVER_HIGH
            | regs::QUEUE_DEVICE_LOW
            | regs::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, v),
            regs::QUEUE_NOTIFY => match self.queue_notifiers.get(v as usize) {
                Some(n) => {
                    if let Err(e) = n.notify() {
                        tracing::error!(error = %e, "virtio-mmio: queue notifier failed");
                    }
                }
                None => self.refuse(&self.metrics.bad_notify, "QueueNotify", offset, v.into()),
            },
            regs::INTERRUPT_ACK => self
                .interrupt
                .ack(v & (interrupt_status::USED_RING | interrupt_status::CONFIG_CHANGE)),
            regs::STATUS => self.set_status(v),
            // SHMSel may be written; there are no regions to select.
            regs::SHM_SEL => {}
            _ => return false,
        }
        true
    }
}

/// Replaces the low or high 32 bits of a ring address.
fn merge_half(old: u64, high: bool, v: u32) -> GuestAddress {
    let v = u64::from(v);
    GuestAddress(if high {
        (old & 0xffff_ffff) | (v << 32)
    } else {
        (old & !0xffff_ffff) | v
    })
}

/// Whether each ring lies wholly inside guest memory (virtio-queue's own check covers alignment
/// and the start addresses; this covers the ends of the rings, including the event words).
fn rings_in_memory(q: &Queue, mem: &GuestMemory) -> bool {
    use vm_memory::GuestMemoryBackend;
    let n = u64::from(q.size());
    let spans = [
        (q.desc_table(), 16 * n),
        (q.avail_ring(), 6 + 2 * n),
        (q.used_ring(), 6 + 8 * n),
    ];
    spans.iter().all(|&(addr, len)| {
        usize::try_from(len).is_ok_and(|len| mem.check_range(GuestAddress(addr), len))
    })
}

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            self.device.read_config(offset - regs::CONFIG, data);
            return;
        }
        let value = if data.len() == 4 && offset.is_multiple_of(4) {
            self.read_reg(offset)
        } else {
            None
        };
        match value {
            Some(v) => write_le(data, u64::from(v)),
            None => {
                data.fill(0);
                self.refuse(
                    &self.metrics.bad_register_access,
                    "register read",
                    offset,
                    data.len() as u64,
                );
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            self.device.write_config(offset - regs::CONFIG, data);
            return;
        }
        let handled = match read_le(data) {
            Some(v) if data.len() == 4 && offset.is_multiple_of(4) => {
                self.write_reg(offset, v as u32)
            }
            _ => false,
        };
        if !handled {
            self.refuse(
                &self.metrics.bad_register_access,
                "register write",
                offset,
                read_le(data).unwrap_or(0),
            );
        }
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
    }
}

#[cfg(test)]
mod tests;
