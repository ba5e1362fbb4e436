//! A register-level virtio-mmio driver simulator (feature `test-utils`).
//!
//! [`DriverSim`] drives any [`MmioDevice`] that implements the virtio-mmio transport the way a
//! guest driver would: the initialization handshake, queue setup in guest memory, descriptor
//! chains, `QueueNotify`, reaping used buffers and watching the interrupt notifier. Other VMMs
//! can use it to test their own devices or their use of ours. It also writes raw descriptors
//! ([`RawDescriptor`]), so tests can hand a device malformed chains.
//!
//! Its waits ([`DriverSim::wait_used`], [`DriverSim::recv_frames`]) sleep on the interrupt
//! notifier, as a guest driver sleeps until its interrupt handler runs: a device that publishes
//! used buffers without interrupting makes them fail with [`SimError::LostInterrupt`]. A test
//! that wants to look at the rings regardless of interrupts opts in with
//! [`DriverSim::set_wait_mode`]`(`[`WaitMode::Poll`]`)`.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Address, Bytes, GuestAddress};

use crate::bus::{MmioDevice, SharedMmioDevice};
use crate::event::Notifier;
use crate::net::VNET_HDR_LEN;
use crate::virtio::mmio::{MAGIC_VALUE, MmioTransport, regs};
use crate::virtio::{GuestMemory, VirtioDevice, features, status};

/// Descriptor flag: the chain continues in `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// `VRING_USED_F_NO_NOTIFY`: the device asks the driver not to kick (without EVENT_IDX).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// Errors of the simulated driver.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The device is not a virtio-mmio v2 device.
    #[error("not a virtio-mmio version 2 device (magic {magic:#x}, version {version})")]
    NotVirtio {
        /// The MagicValue read.
        magic: u32,
        /// The Version read.
        version: u32,
    },
    /// The device refused the feature set.
    #[error("device refused features {0:#x}")]
    FeaturesRefused(u64),
    /// Queue setup did not stick.
    #[error("queue {0} could not be made ready")]
    QueueSetup(u16),
    /// The allocator ran out of guest memory.
    #[error("simulator out of guest memory")]
    OutOfMemory,
    /// Guest memory access failed.
    #[error("guest memory access failed")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// Waiting timed out.
    #[error("timed out waiting for the device")]
    Timeout,
    /// The device put used buffers on the queue but did not raise the interrupt the driver
    /// asked for, within the wait's timeout.
    #[error("queue {0} has used buffers but the device did not interrupt")]
    LostInterrupt(u16),
    /// A notifier failed.
    #[error("notifier error")]
    Io(#[from] io::Error),
}

/// The longest a [`DriverSim`] wait for the interrupt sleeps at a time before it sleeps again.
///
/// One long sleep would do on a well-behaved machine. On the 2-core virtual machine this
/// project is developed on, the `mmio_transport` fuzz target found (bug 5 in fuzz/README.md)
/// that the device's worker thread, freshly created or woken by a kick, sometimes got no CPU at
/// all (its `/proc` `schedstat` read `0 0 0`) for the whole 10 s the simulator slept on the
/// interrupt, and then ran within milliseconds of the simulator's thread waking up. Sleeping in
/// slices keeps a test from depending on that: the device still has to raise the interrupt.
pub const WAKE_EVERY: Duration = Duration::from_millis(50);

/// How [`DriverSim`] waits for used buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaitMode {
    /// Sleep on the interrupt notifier, having asked for an interrupt first (the default): a
    /// wait ends only when the device interrupts, as a guest driver's does.
    #[default]
    Interrupt,
    /// Look at the used ring at least this often, whether or not the device interrupts.
    Poll(Duration),
}

/// One split-ring descriptor as a driver writes it into the descriptor table (virtio 1.2,
/// 2.7.5: `addr` le64, `len` le32, `flags` le16, `next` le16). Any values, so tests and fuzz
/// harnesses can hand a device malformed chains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDescriptor {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VRING_DESC_F_*` flags.
    pub flags: u16,
    /// Index of the next descriptor (with `VRING_DESC_F_NEXT`).
    pub next: u16,
}

impl RawDescriptor {
    /// Size of one descriptor in a table.
    pub const SIZE: u64 = 16;

    /// The descriptor's 16 bytes as they sit in guest memory.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&self.addr.to_le_bytes());
        d[8..12].copy_from_slice(&self.len.to_le_bytes());
        d[12..14].copy_from_slice(&self.flags.to_le_bytes());
        d[14..].copy_from_slice(&self.next.to_le_bytes());
        d
    }

    /// Decodes 16 bytes of a descriptor table.
    pub fn from_bytes(d: [u8; 16]) -> Self {
        let (mut addr, mut len, mut flags, mut next) = ([0u8; 8], [0u8; 4], [0u8; 2], [0u8; 2]);
        addr.copy_from_slice(&d[..8]);
        len.copy_from_slice(&d[8..12]);
        flags.copy_from_slice(&d[12..14]);
        next.copy_from_slice(&d[14..]);
        Self {
            addr: u64::from_le_bytes(addr),
            len: u32::from_le_bytes(len),
            flags: u16::from_le_bytes(flags),
            next: u16::from_le_bytes(next),
        }
    }

    /// The address of entry `index` of the table at `table` (wrapping, like any value here).
    pub fn entry(table: GuestAddress, index: u16) -> GuestAddress {
        GuestAddress(table.0.wrapping_add(Self::SIZE * u64::from(index)))
    }

    /// Writes the descriptor at `at` (a table entry, or any address).
    pub fn write(&self, mem: &GuestMemory, at: GuestAddress) -> Result<(), SimError> {
        mem.write_slice(&self.to_bytes(), at)?;
        Ok(())
    }

    /// Reads the descriptor at `at`.
    pub fn read(mem: &GuestMemory, at: GuestAddress) -> Result<Self, SimError> {
        let mut d = [0u8; 16];
        mem.read_slice(&mut d, at)?;
        Ok(Self::from_bytes(d))
    }

    /// The first address after the buffer (saturating).
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(u64::from(self.len))
    }
}

/// One used-ring element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// The head descriptor index.
    pub id: u16,
    /// Bytes the device wrote.
    pub len: u32,
}

#[derive(Debug)]
struct SimQueue {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    avail_idx: u16,
    /// `avail_idx` when the driver last decided whether to kick.
    kicked_at: u16,
    last_used: u16,
    free: Vec<u16>,
    /// The descriptors (index, address, length) of the chain each outstanding head starts,
    /// indexed by head; empty for a descriptor that heads no chain. The vectors are kept and
    /// reused, so a driver in steady state allocates nothing per chain.
    chains: Vec<Vec<(u16, GuestAddress, u32)>>,
}

/// A simulated virtio driver talking to a device through its MMIO registers.
pub struct DriverSim {
    mem: GuestMemory,
    dev: SharedMmioDevice,
    irq: Notifier,
    next_alloc: u64,
    alloc_end: u64,
    queues: Vec<SimQueue>,
    features: u64,
    interrupts_seen: u64,
    wait_mode: WaitMode,
}

impl std::fmt::Debug for DriverSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverSim")
            .field("features", &self.features)
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

/// Puts `device` behind a virtio-mmio transport over `mem` and attaches a simulated driver that
/// allocates its rings and buffers in `[alloc_base, alloc_base + alloc_len)`: the usual start of
/// a device test. Returns the driver and the transport (for its metrics and notifiers).
pub fn attach(
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    alloc_base: GuestAddress,
    alloc_len: u64,
) -> io::Result<(DriverSim, Arc<Mutex<MmioTransport>>)> {
    let irq = Notifier::new()?;
    let sim_irq = irq.try_clone()?;
    let transport = Arc::new(Mutex::new(MmioTransport::new(device, mem.clone(), irq)?));
    let sim = DriverSim::new(mem, transport.clone(), sim_irq, alloc_base, alloc_len);
    Ok((sim, transport))
}

impl DriverSim {
    /// A driver for `dev`, allocating rings and buffers in `[alloc_base, alloc_base + alloc_len)`
    /// of `mem`. `irq` is (a clone of) the device's interrupt notifier.
    pub fn new(
        mem: GuestMemory,
        dev: SharedMmioDevice,
        irq: Notifier,
        alloc_base: GuestAddress,
        alloc_len: u64,
    ) -> Self {
        Self {
            mem,
            dev,
            irq,
            next_alloc: alloc_base.0,
            alloc_end: alloc_base.0 + alloc_len,
            queues: Vec::new(),
            features: 0,
            interrupts_seen: 0,
            wait_mode: WaitMode::Interrupt,
        }
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// The features negotiated by [`init`](Self::init).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Chooses how [`wait_used`](Self::wait_used) and [`recv_frames`](Self::recv_frames) wait
    /// (by default for the interrupt).
    pub fn set_wait_mode(&mut self, mode: WaitMode) {
        self.wait_mode = mode;
    }

    /// How many times a wait of the simulator saw the interrupt notifier fire.
    pub fn interrupts_seen(&self) -> u64 {
        self.interrupts_seen
    }

    /// Waits for the interrupt notifier until `deadline`, in sleeps of at most
    /// [`WAKE_EVERY`]; returns whether it fired. Waking changes nothing but the waiting thread's
    /// own schedule: the wait still ends only on the interrupt or at the deadline.
    fn wait_irq_until(&mut self, deadline: Instant) -> Result<bool, SimError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            if self.wait_irq(left.min(WAKE_EVERY))? {
                return Ok(true);
            }
        }
    }

    fn wait_irq(&mut self, timeout: Duration) -> Result<bool, SimError> {
        let fired = self.irq.wait_timeout(timeout)?;
        self.interrupts_seen += u64::from(fired);
        Ok(fired)
    }

    /// Reads a 32-bit register.
    pub fn read_reg(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.lock().read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Writes a 32-bit register.
    pub fn write_reg(&self, offset: u64, value: u32) {
        self.lock().write(offset, &value.to_le_bytes());
    }

    /// Reads `data.len()` bytes of configuration space at `offset`.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.lock().read(regs::CONFIG + offset, data);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, dyn MmioDevice + 'static> {
        self.dev.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allocates `len` bytes aligned to `align` (a power of two) and zeroes them.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<GuestAddress, SimError> {
        let start = self.next_alloc.next_multiple_of(align);
        let end = start.checked_add(len).ok_or(SimError::OutOfMemory)?;
        if end > self.alloc_end {
            return Err(SimError::OutOfMemory);
        }
        self.next_alloc = end;
        let a = GuestAddress(start);
        self.mem.write_slice(&vec![0u8; len as usize], a)?;
        Ok(a)
    }

    /// Resets the device, runs the handshake with `wanted` ∩ offered features (plus
    /// `VIRTIO_F_VERSION_1`), sets up every queue with up to `queue_size` entries and sets
    /// `DRIVER_OK`. Returns the negotiated features.
    pub fn init(&mut self, wanted: u64, queue_size: u16) -> Result<u64, SimError> {
        let (magic, version) = (
            self.read_reg(regs::MAGIC_VALUE),
            self.read_reg(regs::VERSION),
        );
        if magic != MAGIC_VALUE || version != 2 {
            return Err(SimError::NotVirtio { magic, version });
        }
        self.write_reg(regs::STATUS, 0);
        self.write_reg(regs::STATUS, status::ACKNOWLEDGE);
        self.write_reg(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let offered = self.device_features();
        let f = offered & (wanted | features::VERSION_1);
        self.negotiate(f)?;
        let mut q = 0u16;
        loop {
            self.write_reg(regs::QUEUE_SEL, u32::from(q));
            let max = self.read_reg(regs::QUEUE_NUM_MAX);
            if max == 0 {
                break;
            }
            let size = (max as u16).min(queue_size);
            self.setup_queue(q, size)?;
            q += 1;
        }
        self.write_reg(
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        Ok(f)
    }

    /// Reads the 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        self.write_reg(regs::DEVICE_FEATURES_SEL, 0);
        let lo = self.read_reg(regs::DEVICE_FEATURES);
        self.write_reg(regs::DEVICE_FEATURES_SEL, 1);
        let hi = self.read_reg(regs::DEVICE_FEATURES);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    /// Writes the driver features and sets `FEATURES_OK`; fails if the device does not keep it.
    pub fn negotiate(&mut self, f: u64) -> Result<(), SimError> {
        self.write_reg(regs::DRIVER_FEATURES_SEL, 0);
        self.write_reg(regs::DRIVER_FEATURES, f as u32);
        self.write_reg(regs::DRIVER_FEATURES_SEL, 1);
        self.write_reg(regs::DRIVER_FEATURES, (f >> 32) as u32);
        self.write_reg(
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        if self.read_reg(regs::STATUS) & status::FEATURES_OK == 0 {
            return Err(SimError::FeaturesRefused(f));
        }
        self.features = f;
        Ok(())
    }

    /// Allocates rings for queue `q` of `size` entries and makes it ready.
    pub fn setup_queue(&mut self, q: u16, size: u16) -> Result<(), SimError> {
        let n = u64::from(size);
        let desc = self.alloc(16 * n, 16)?;
        let avail = self.alloc(6 + 2 * n, 2)?;
        let used = self.alloc(6 + 8 * n, 4)?;
        self.write_reg(regs::QUEUE_SEL, u32::from(q));
        self.write_reg(regs::QUEUE_NUM, u32::from(size));
        for (lo, hi, a) in [
            (regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, desc),
            (regs::QUEUE_DRIVER_LOW, regs::QUEUE_DRIVER_HIGH, avail),
            (regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH, used),
        ] {
            self.write_reg(lo, a.0 as u32);
            self.write_reg(hi, (a.0 >> 32) as u32);
        }
        self.write_reg(regs::QUEUE_READY, 1);
        if self.read_reg(regs::QUEUE_READY) != 1 {
            return Err(SimError::QueueSetup(q));
        }
        let q = usize::from(q);
        if self.queues.len() <= q {
            self.queues.resize_with(q + 1, || SimQueue {
                size: 0,
                desc: GuestAddress(0),
                avail: GuestAddress(0),
                used: GuestAddress(0),
                avail_idx: 0,
                kicked_at: 0,
                last_used: 0,
                free: Vec::new(),
                chains: Vec::new(),
            });
        }
        self.queues[q] = SimQueue {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            kicked_at: 0,
            last_used: 0,
            free: (0..size).rev().collect(),
            chains: vec![Vec::new(); usize::from(size)],
        };
        Ok(())
    }

    /// Writes one raw descriptor (any values: for malformed-chain tests).
    pub fn write_descriptor(
        &self,
        q: u16,
        index: u16,
        addr: GuestAddress,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), SimError> {
        let table = self.queues[usize::from(q)].desc;
        RawDescriptor {
            addr: addr.0,
            len,
            flags,
            next,
        }
        .write(&self.mem, RawDescriptor::entry(table, index))
    }

    /// Puts `head` on the avail ring of queue `q` (no notification).
    pub fn publish(&mut self, q: u16, head: u16) -> Result<(), SimError> {
        let sq = &mut self.queues[usize::from(q)];
        let slot = u64::from(sq.avail_idx % sq.size);
        let (avail, idx) = (sq.avail, sq.avail_idx.wrapping_add(1));
        sq.avail_idx = idx;
        self.mem
            .write_obj(head, avail.unchecked_add(4 + 2 * slot))?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.mem.write_obj(idx, avail.unchecked_add(2))?;
        Ok(())
    }

    /// Writes the avail ring's `idx` of queue `q` directly (any value: for broken-driver tests).
    pub fn write_avail_idx(&mut self, q: u16, idx: u16) -> Result<(), SimError> {
        let sq = &mut self.queues[usize::from(q)];
        sq.avail_idx = idx;
        self.mem.write_obj(idx, sq.avail.unchecked_add(2))?;
        Ok(())
    }

    /// Writes `used_event` of queue `q` (with `VIRTIO_RING_F_EVENT_IDX`).
    pub fn set_used_event(&self, q: u16, value: u16) -> Result<(), SimError> {
        let sq = &self.queues[usize::from(q)];
        self.mem
            .write_obj(value, sq.avail.unchecked_add(4 + 2 * u64::from(sq.size)))?;
        Ok(())
    }

    /// With `VIRTIO_RING_F_EVENT_IDX`, asks for an interrupt at the next used buffer, as a
    /// driver re-enabling callbacks does (only when it is about to wait: while it finds work it
    /// keeps polling, like Linux's NAPI).
    pub fn rearm(&self, q: u16) -> Result<(), SimError> {
        if self.features & features::RING_EVENT_IDX != 0 {
            self.set_used_event(q, self.queues[usize::from(q)].last_used)?;
        }
        Ok(())
    }

    /// Builds a chain of `bufs` (address, length, device-writable) from free descriptors,
    /// publishes it and returns its head.
    pub fn add_chain(
        &mut self,
        q: u16,
        bufs: &[(GuestAddress, u32, bool)],
    ) -> Result<u16, SimError> {
        let mem = &self.mem;
        let sq = &mut self.queues[usize::from(q)];
        if bufs.is_empty() || sq.free.len() < bufs.len() {
            return Err(SimError::OutOfMemory);
        }
        // A free descriptor heads no chain, so its slot is empty (and keeps its capacity).
        let head = sq.free[sq.free.len() - 1];
        let chain = &mut sq.chains[usize::from(head)];
        chain.clear();
        for &(a, l, _) in bufs {
            let i = sq.free.pop().ok_or(SimError::OutOfMemory)?;
            chain.push((i, a, l));
        }
        for (k, &(_, _, writable)) in bufs.iter().enumerate() {
            let (index, addr, len) = chain[k];
            let next = chain.get(k + 1).map(|c| c.0);
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if next.is_some() {
                flags |= VRING_DESC_F_NEXT;
            }
            RawDescriptor {
                addr: addr.0,
                len,
                flags,
                next: next.unwrap_or(0),
            }
            .write(mem, RawDescriptor::entry(sq.desc, index))?;
        }
        self.publish(q, head)?;
        Ok(head)
    }

    /// Writes `QueueNotify` for queue `q`.
    pub fn notify(&self, q: u16) {
        self.write_reg(regs::QUEUE_NOTIFY, u32::from(q));
    }

    /// Kicks queue `q` only if the device asked for it, as Linux's `virtqueue_kick_prepare`
    /// decides: with `VIRTIO_RING_F_EVENT_IDX`, when the buffers added since the last decision
    /// passed the device's `avail_event`; without, unless the device set `NO_NOTIFY` in the used
    /// ring's flags. Returns whether it kicked.
    pub fn kick(&mut self, q: u16) -> Result<bool, SimError> {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let sq = &self.queues[usize::from(q)];
        let (old, new) = (sq.kicked_at, sq.avail_idx);
        let needed = if self.features & features::RING_EVENT_IDX != 0 {
            let event: u16 = self
                .mem
                .read_obj(sq.used.unchecked_add(4 + 8 * u64::from(sq.size)))?;
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags: u16 = self.mem.read_obj(sq.used)?;
            flags & VRING_USED_F_NO_NOTIFY == 0
        };
        self.queues[usize::from(q)].kicked_at = new;
        if needed {
            self.notify(q);
        }
        Ok(needed)
    }

    /// Returns the used elements the device added since the last call, freeing their
    /// descriptors.
    pub fn take_used(&mut self, q: u16) -> Result<Vec<Used>, SimError> {
        let mem = &self.mem;
        let sq = &mut self.queues[usize::from(q)];
        let idx: u16 = mem.read_obj(sq.used.unchecked_add(2))?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let mut out = Vec::new();
        while sq.last_used != idx {
            let slot = u64::from(sq.last_used % sq.size);
            let at = sq.used.unchecked_add(4 + 8 * slot);
            let id: u32 = mem.read_obj(at)?;
            let len: u32 = mem.read_obj(at.unchecked_add(4))?;
            let id = id as u16;
            // An id the driver never made available (a broken device) frees nothing.
            if let Some(chain) = sq.chains.get_mut(usize::from(id)) {
                sq.free.extend(chain.drain(..).map(|c| c.0));
            }
            out.push(Used { id, len });
            sq.last_used = sq.last_used.wrapping_add(1);
        }
        Ok(out)
    }

    /// Whether queue `q` has used elements not taken yet.
    fn has_used(&self, q: u16) -> Result<bool, SimError> {
        let sq = &self.queues[usize::from(q)];
        let idx: u16 = self.mem.read_obj(sq.used.unchecked_add(2))?;
        Ok(idx != sq.last_used)
    }

    /// Before sleeping, as Linux's NAPI does: ask for an interrupt at the next used element,
    /// then look once more (one may have arrived before the request). Returns whether to sleep.
    fn arm_and_recheck(&self, q: u16) -> Result<bool, SimError> {
        self.rearm(q)?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(!self.has_used(q)?)
    }

    /// Returns once queue `q` has a used element not taken yet, sleeping until the device
    /// interrupts (or, with [`WaitMode::Poll`], at most the poll interval at a time) while it has
    /// none. Fails with [`SimError::LostInterrupt`] if used elements arrived by `deadline` with no
    /// interrupt, [`SimError::Timeout`] if none did.
    fn wait_for_used(&mut self, q: u16, deadline: Instant) -> Result<(), SimError> {
        loop {
            if self.has_used(q)? || !self.arm_and_recheck(q)? {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SimError::Timeout);
            }
            match self.wait_mode {
                WaitMode::Interrupt => {
                    if !self.wait_irq_until(deadline)? {
                        return Err(if self.has_used(q)? {
                            SimError::LostInterrupt(q)
                        } else {
                            SimError::Timeout
                        });
                    }
                }
                WaitMode::Poll(every) => {
                    self.wait_irq(left.min(every))?;
                }
            }
        }
    }

    /// Waits until at least `count` used elements are available on `q` (collecting them); see
    /// [`WaitMode`] for how.
    pub fn wait_used(
        &mut self,
        q: u16,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Used>, SimError> {
        let deadline = Instant::now() + timeout;
        let mut out = self.take_used(q)?;
        while out.len() < count {
            self.wait_for_used(q, deadline)?;
            out.extend(self.take_used(q)?);
        }
        Ok(out)
    }

    /// Waits for the interrupt notifier; returns whether it fired within `timeout`.
    pub fn wait_interrupt(&mut self, timeout: Duration) -> Result<bool, SimError> {
        self.wait_irq(timeout)
    }

    /// Reads `InterruptStatus` and acknowledges every bit set; returns the bits.
    pub fn ack_interrupt(&self) -> u32 {
        let s = self.read_reg(regs::INTERRUPT_STATUS);
        self.write_reg(regs::INTERRUPT_ACK, s);
        s
    }

    /// Posts `count` RX buffers of `size` bytes each on queue 0 and notifies.
    pub fn post_rx_buffers(&mut self, count: usize, size: u32) -> Result<Vec<u16>, SimError> {
        let mut heads = Vec::with_capacity(count);
        for _ in 0..count {
            let a = self.alloc(u64::from(size), 8)?;
            heads.push(self.add_chain(0, &[(a, size, true)])?);
        }
        self.notify(0);
        Ok(heads)
    }

    /// Sends `frame` (an Ethernet frame) on queue 1 with a zeroed virtio-net header, split into
    /// two descriptors (header, payload) as Linux does, and notifies.
    pub fn send_frame(&mut self, frame: &[u8]) -> Result<u16, SimError> {
        let head = self.queue_frame(frame)?;
        self.notify(1);
        Ok(head)
    }

    /// Adds `frame` to queue 1 as [`send_frame`](Self::send_frame) does, without notifying:
    /// the caller decides, e.g. with [`kick`](Self::kick).
    pub fn queue_frame(&mut self, frame: &[u8]) -> Result<u16, SimError> {
        let hdr = self.alloc(VNET_HDR_LEN as u64, 8)?;
        let body = self.alloc(frame.len() as u64, 8)?;
        self.mem.write_slice(frame, body)?;
        let head = self.add_chain(
            1,
            &[
                (hdr, VNET_HDR_LEN as u32, false),
                (body, frame.len() as u32, false),
            ],
        )?;
        Ok(head)
    }

    /// Reads the bytes a used RX element covers (following its chain).
    fn read_chain(&self, q: u16, chain: &[(u16, GuestAddress, u32)], len: u32) -> Vec<u8> {
        let _ = q;
        let mut out = Vec::with_capacity(len as usize);
        let mut left = len as usize;
        for &(_, a, l) in chain {
            let n = left.min(l as usize);
            let mut b = vec![0u8; n];
            if self.mem.read_slice(&mut b, a).is_err() {
                break;
            }
            out.extend_from_slice(&b);
            left -= n;
            if left == 0 {
                break;
            }
        }
        out
    }

    /// Waits for `count` frames on the RX queue and returns them without their virtio-net
    /// header, reassembling mergeable buffers by `num_buffers`; waits as
    /// [`wait_used`](Self::wait_used) does.
    pub fn recv_frames(
        &mut self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Vec<u8>>, SimError> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut want_bufs = 0u16;
        while frames.len() < count {
            self.wait_for_used(0, deadline)?;
            // The used index was read before the element it covers.
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            let sq = &self.queues[0];
            let used_at = sq.used;
            let slot = u64::from(sq.last_used % sq.size);
            let at = used_at.unchecked_add(4 + 8 * slot);
            let id = self.mem.read_obj::<u32>(at)? as u16;
            let len: u32 = self.mem.read_obj(at.unchecked_add(4))?;
            let mut chain = self.queues[0]
                .chains
                .get_mut(usize::from(id))
                .map(std::mem::take)
                .unwrap_or_default();
            let bytes = self.read_chain(0, &chain, len);
            {
                let sq = &mut self.queues[0];
                sq.free.extend(chain.drain(..).map(|c| c.0));
                if let Some(slot) = sq.chains.get_mut(usize::from(id)) {
                    *slot = chain;
                }
                sq.last_used = sq.last_used.wrapping_add(1);
            }
            if want_bufs == 0 {
                if bytes.len() < VNET_HDR_LEN {
                    continue;
                }
                want_bufs = u16::from_le_bytes([bytes[10], bytes[11]]).max(1);
                pending.extend_from_slice(&bytes[VNET_HDR_LEN..]);
            } else {
                pending.extend_from_slice(&bytes);
            }
            want_bufs -= 1;
            if want_bufs == 0 {
                frames.push(std::mem::take(&mut pending));
            }
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::mem::{MemBackend, MemBackendConfig, MemBackendHandle};
    use crate::virtio::net::harness::memory;
    use crate::virtio::net::{Net, NetConfig};

    /// Long enough for the device's worker to publish a used buffer on a loaded machine.
    const WAIT: Duration = Duration::from_millis(1500);
    /// How long after a wait began the device gets the work that it then completes without an
    /// interrupt: a used buffer already there when a wait begins needs no interrupt.
    const LATER: Duration = Duration::from_millis(400);

    /// A net device and a driver listening on a notifier of its own instead of the device's:
    /// every interrupt the device raises is lost to the driver. Also returns the transport, for
    /// kicks from another thread.
    fn deaf_driver() -> (DriverSim, MemBackendHandle, SharedMmioDevice) {
        let backend = MemBackend::new(MemBackendConfig::default()).unwrap();
        let handle = backend.handle();
        let net = Net::new(Box::new(backend), NetConfig::default());
        let mem = memory();
        let device_irq = Notifier::new().unwrap();
        let transport: SharedMmioDevice = Arc::new(Mutex::new(
            MmioTransport::new(Box::new(net), mem.clone(), device_irq).unwrap(),
        ));
        let sim = DriverSim::new(
            mem,
            transport.clone(),
            Notifier::new().unwrap(),
            GuestAddress(0x20_0000),
            0x80_0000,
        );
        (sim, handle, transport)
    }

    #[test]
    fn waits_fail_when_the_interrupt_is_lost_and_polling_is_an_explicit_choice() {
        for event_idx in [0, features::RING_EVENT_IDX] {
            let (mut sim, backend, transport) = deaf_driver();
            assert_eq!(sim.init(event_idx, 64).unwrap() & event_idx, event_idx);
            // A frame received (by polling) shows the worker past its first passes: from here
            // on it sees a TX buffer only when kicked.
            sim.set_wait_mode(WaitMode::Poll(Duration::from_millis(5)));
            sim.post_rx_buffers(4, 2048).unwrap();
            backend.inject(&[0x21; 60]);
            assert_eq!(sim.recv_frames(1, WAIT).unwrap(), vec![vec![0x21; 60]]);

            // A TX buffer kicked, and an RX frame arriving, while the driver waits.
            sim.set_wait_mode(WaitMode::Interrupt);
            sim.queue_frame(&[0x11; 60]).unwrap();
            let kick = std::thread::spawn({
                let transport = transport.clone();
                move || {
                    std::thread::sleep(LATER);
                    let mut t = transport.lock().unwrap();
                    t.write(regs::QUEUE_NOTIFY, &1u32.to_le_bytes());
                }
            });
            let r = sim.wait_used(1, 1, WAIT);
            assert!(matches!(r, Err(SimError::LostInterrupt(1))), "{r:?}");
            kick.join().unwrap();
            let inject = std::thread::spawn({
                let backend = backend.clone();
                move || {
                    std::thread::sleep(LATER);
                    backend.inject(&[0x22; 60]);
                }
            });
            let r = sim.recv_frames(1, WAIT);
            assert!(matches!(r, Err(SimError::LostInterrupt(0))), "{r:?}");
            inject.join().unwrap();

            // The same waits succeed when the test asks for polling.
            sim.set_wait_mode(WaitMode::Poll(Duration::from_millis(5)));
            assert_eq!(sim.wait_used(1, 1, WAIT).unwrap().len(), 1);
            assert_eq!(sim.recv_frames(1, WAIT).unwrap(), vec![vec![0x22; 60]]);
            assert_eq!(sim.interrupts_seen(), 0);
        }
    }

    #[test]
    fn waits_end_on_the_device_interrupt() {
        for event_idx in [0, features::RING_EVENT_IDX] {
            let backend = MemBackend::new(MemBackendConfig::default()).unwrap();
            let handle = backend.handle();
            let net = Net::new(Box::new(backend), NetConfig::default());
            let (mut sim, _transport) =
                attach(Box::new(net), memory(), GuestAddress(0x20_0000), 0x80_0000).unwrap();
            sim.init(event_idx, 64).unwrap();
            for i in 0..20u8 {
                sim.send_frame(&[i; 60]).unwrap();
                assert_eq!(sim.wait_used(1, 1, WAIT).unwrap().len(), 1);
                sim.post_rx_buffers(1, 2048).unwrap();
                handle.inject(&[i; 70]);
                assert_eq!(sim.recv_frames(1, WAIT).unwrap(), vec![vec![i; 70]]);
            }
            assert!(sim.interrupts_seen() > 0);
        }
    }

    #[test]
    fn raw_descriptors_round_trip_through_their_16_bytes() {
        let d = RawDescriptor {
            addr: 0x0102_0304_0506_0708,
            len: 0x090a_0b0c,
            flags: 0x0d0e,
            next: 0x0f10,
        };
        let b = d.to_bytes();
        assert_eq!(
            b,
            [
                8, 7, 6, 5, 4, 3, 2, 1, 0xc, 0xb, 0xa, 9, 0xe, 0xd, 0x10, 0xf
            ]
        );
        assert_eq!(RawDescriptor::from_bytes(b), d);
        let mem = memory();
        let at = RawDescriptor::entry(GuestAddress(0x1000), 3);
        assert_eq!(at, GuestAddress(0x1030));
        d.write(&mem, at).unwrap();
        assert_eq!(RawDescriptor::read(&mem, at).unwrap(), d);
        assert_eq!(d.end(), 0x0102_0304_0506_0708 + 0x090a_0b0c);
    }
}
