//! `net_datapath`: the net device's data path ([`DataPath::process_tx`] and
//! [`DataPath::process_rx`], or every other time [`DataPath::process_rx_unnotified`] and
//! [`DataPath::notify_rx`], called directly, no threads) over guest memory whose descriptor
//! tables, indirect tables, avail rings and buffers the fuzzer chooses, with an in-memory backend.
//!
//! Guest memory is three regions with holes around them:
//!
//! ```text
//! 0x0000 ┌ R0: rings (fixed addresses) and the two "good" areas of the final check
//! 0x4000 ├ hole
//! 0x8000 ├ R1 ┐ buffer area: descriptors point here (or anywhere: raw addresses,
//! 0xa000 ├ R2 ┘ ring addresses, region ends, the holes, overflowing ranges)
//! 0xc000 └ hole to the end of the address space
//! ```
//!
//! The oracle is a model of what the device may do, checked after every call:
//!
//! - **Writes**: every byte of guest memory that changed during a call lies in a used ring, or
//!   (RX only) in a device-writable buffer of a chain the driver made available and the device had
//!   not returned yet, and that chain is well formed. Every other byte of guest memory is a
//!   canary: descriptor tables, avail rings, indirect tables, TX buffers, the good areas, all of
//!   buffer memory no valid RX chain covers. Around each call of the fuzzed sequence only the
//!   call's *reach* is compared: the rings, the descriptor tables and every range a descriptor
//!   names (descriptors do not change during the sequence, so a device write, right or wrong,
//!   can only land there); the rest of memory is compared once, after the sequence, with its
//!   state before it (less the fuzzer's own buffer writes), and the final check compares all of
//!   memory around each call.
//! - **Used ring**: entries only for heads the driver made available and not yet returned, never
//!   more than outstanding; a TX entry's length is 0; an RX entry's length is 0 exactly when the
//!   chain is malformed (the reference walker below mirrors virtio-queue's chain rules) and
//!   otherwise at most the writable bytes of the chain; every TX chain is returned by the end of
//!   `process_tx`.
//! - **Frames**: what the backend received is, in order, the bytes of the valid TX chains (all of
//!   them while no backend fault was injected); the RX used entries group into the frames the
//!   backend handed out, with `num_buffers` right and (when the buffers do not overlap) the bytes
//!   right.
//! - **Still serving**: after the fuzzed sequence, backend faults cleared, a well-formed TX chain
//!   reaches the backend as exactly that frame, the frames still pending in the backend all get
//!   delivered once a good RX buffer is posted, and a marker frame then lands in the posted
//!   buffers with the exact bytes expected (the whole of guest memory is compared with a model
//!   of the writes).
//!
//! To keep the model exact, the harness keeps the guest from making the device write what it
//! reads as metadata: a device-writable descriptor that overlaps a descriptor table, an avail or
//! used ring or an indirect table loses its WRITE flag before the run, and the fuzzer's memory
//! writes skip those ranges. Descriptor tables do not change while chains are in flight.

use std::collections::VecDeque;
use std::sync::Arc;

use devices::event::Notifier;
use devices::net::VNET_HDR_LEN;
use devices::net::mem::{MemBackend, MemBackendConfig, MemBackendHandle};
use devices::virtio::net::{DataPath, NetMetrics, PathConfig};
use devices::virtio::{GuestMemory, Interrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::input::{Enc, Src};

/// Size of region R0 (rings and good areas).
pub const R0_LEN: u64 = 0x4000;
/// Start of the buffer area (regions R1 and R2, adjacent).
pub const BUF_BASE: u64 = 0x8000;
/// Length of the buffer area.
pub const BUF_LEN: u64 = 0x4000;

/// Ring addresses: (descriptor table, avail ring, used ring) of RX and TX.
pub const RX_RINGS: (u64, u64, u64) = (0x0000, 0x0400, 0x0600);
/// See [`RX_RINGS`].
pub const TX_RINGS: (u64, u64, u64) = (0x1000, 0x1400, 0x1600);
const G_TX: u64 = 0x2000;
const G_RX: u64 = 0x3000;
const G_RX_LEN: u32 = 0x1000;
/// The largest `rx_room` the fuzzer may choose (the good RX buffer holds it).
const MAX_RX_ROOM: usize = G_RX_LEN as usize;

/// Descriptor flags.
pub use devices::testing::{
    VRING_DESC_F_INDIRECT as F_INDIRECT, VRING_DESC_F_NEXT as F_NEXT, VRING_DESC_F_WRITE as F_WRITE,
};

const HDR: usize = VNET_HDR_LEN;

/// Guest memory with the layout above.
pub fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[
        (GuestAddress(0), R0_LEN as usize),
        (GuestAddress(BUF_BASE), (BUF_LEN / 2) as usize),
        (GuestAddress(BUF_BASE + BUF_LEN / 2), (BUF_LEN / 2) as usize),
    ])
    .expect("fixed layout")
}

/// Guest memory for one input: one mapping per thread, reused from input to input (mapping and
/// faulting in fresh pages cost more than the rest of a short input), with R0 zeroed; the
/// caller writes the whole buffer area.
fn fresh_memory() -> GuestMemory {
    thread_local! {
        static MEM: GuestMemory = memory();
    }
    let mem = MEM.with(GuestMemory::clone);
    mem.write_slice(&[0u8; R0_LEN as usize], GuestAddress(0))
        .expect("R0");
    mem
}

/// Whether `[addr, addr + len)` is guest memory, by the layout (independent of vm-memory).
fn in_memory(addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    end <= R0_LEN || (addr >= BUF_BASE && end <= BUF_BASE + BUF_LEN)
}

/// Clips `ranges` (`[start, end)`, any values) to the two parts of guest memory and merges
/// them: sorted, disjoint, each inside one part.
fn clip_and_merge(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = ranges
        .iter()
        .flat_map(|&(s, e)| ALL_MEMORY.map(|(lo, hi)| (s.max(lo), e.min(hi))))
        .filter(|r| r.0 < r.1)
        .collect();
    out.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(out.len());
    for (s, e) in out {
        match merged.last_mut() {
            // Ranges of one part touch or overlap: one range (the parts do not touch).
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// A copy of guest memory (of all of it, or of a reach: see [`Snap::take`]).
#[derive(Clone, PartialEq, Eq)]
struct Snap {
    /// The copied ranges, each as its start and its bytes, sorted and disjoint.
    parts: Vec<(u64, Vec<u8>)>,
}

/// All of guest memory, as ranges for [`Snap::take`].
const ALL_MEMORY: [(u64, u64); 2] = [(0, R0_LEN), (BUF_BASE, BUF_BASE + BUF_LEN)];

impl Snap {
    /// Copies the `reach` of guest memory (sorted, disjoint ranges inside memory, as
    /// [`clip_and_merge`] makes them).
    fn take(mem: &GuestMemory, reach: &[(u64, u64)]) -> Self {
        let parts = reach
            .iter()
            .map(|&(s, e)| {
                let mut b = vec![0u8; (e - s) as usize];
                mem.read_slice(&mut b, GuestAddress(s))
                    .expect("reach lies in memory");
                (s, b)
            })
            .collect();
        Self { parts }
    }

    /// The part holding `a` and `a`'s index in it.
    fn find(&self, a: u64) -> Option<(usize, usize)> {
        let i = self.parts.partition_point(|p| p.0 <= a).checked_sub(1)?;
        let (s, b) = &self.parts[i];
        let k = usize::try_from(a - s).ok()?;
        (k < b.len()).then_some((i, k))
    }

    fn byte_mut(&mut self, a: u64) -> Option<&mut u8> {
        let (i, k) = self.find(a)?;
        Some(&mut self.parts[i].1[k])
    }

    fn byte(&self, a: u64) -> Option<u8> {
        let (i, k) = self.find(a)?;
        Some(self.parts[i].1[k])
    }

    /// Bytes of `descs` in order (for valid chains, which lie in memory).
    fn gather(&self, descs: &[(u64, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(a, l) in descs {
            for i in 0..u64::from(l) {
                out.push(self.byte(a + i).expect("valid chain lies in memory"));
            }
        }
        out
    }

    /// Writes `bytes` through `descs` starting `offset` bytes in, as a device does.
    fn scatter(&mut self, descs: &[(u64, u32)], mut offset: usize, bytes: &[u8]) {
        let mut rest = bytes;
        for &(a, l) in descs {
            let l = l as usize;
            if offset >= l {
                offset -= l;
                continue;
            }
            for i in offset..l {
                let Some((&b, r)) = rest.split_first() else {
                    return;
                };
                *self
                    .byte_mut(a + i as u64)
                    .expect("valid chain lies in memory") = b;
                rest = r;
            }
            offset = 0;
        }
    }

    /// Asserts that `self` (after) equals `before` outside the `allowed` ranges.
    fn assert_unchanged_outside(&self, before: &Snap, allowed: &[(u64, u64)], what: &str) {
        if self == before {
            return;
        }
        let mut iv: Vec<(u64, u64)> = allowed.iter().copied().filter(|r| r.0 < r.1).collect();
        iv.sort_unstable();
        let check = |base: u64, a: &[u8], b: &[u8]| {
            // Compare the gaps between the allowed ranges as whole slices.
            let end = base + a.len() as u64;
            let mut pos = base;
            for &(s, e) in iv.iter().chain(std::iter::once(&(end, end))) {
                let gap_end = s.clamp(pos, end);
                let (i, j) = ((pos - base) as usize, (gap_end - base) as usize);
                if a[i..j] != b[i..j] {
                    let k = (i..j).find(|&k| a[k] != b[k]).unwrap_or(i);
                    panic!(
                        "{what}: the device changed guest byte {:#x} ({:#04x} -> {:#04x}), outside the used rings and the buffers it owned",
                        base + k as u64,
                        b[k],
                        a[k]
                    );
                }
                pos = pos.max(e.min(end));
            }
        };
        assert_eq!(
            self.parts.len(),
            before.parts.len(),
            "{what}: snapshots of one reach"
        );
        for ((base, a), (_, b)) in self.parts.iter().zip(&before.parts) {
            check(*base, a, b);
        }
    }
}

/// One descriptor as the guest wrote it (the driver simulator's raw descriptor: one layout for
/// the crate's tests and the fuzz harnesses).
pub use devices::testing::RawDescriptor as Desc;

/// Reads the descriptor at `at`, if it is in memory.
fn read_desc(mem: &GuestMemory, at: u64) -> Option<Desc> {
    Desc::read(mem, GuestAddress(at)).ok()
}

/// Writes `d` at `at`; a write outside memory is dropped (the fuzzer may aim anywhere).
fn write_desc(mem: &GuestMemory, at: u64, d: Desc) {
    let _ = d.write(mem, GuestAddress(at));
}

/// A descriptor chain as the reference walker sees it.
#[derive(Clone, Debug, Default)]
pub struct View {
    descs: Vec<Desc>,
    ended: bool,
}

impl View {
    /// Walks the chain at `head` the way virtio-queue 0.18's `DescriptorChain` iterator does: at
    /// most `size` descriptors, `next` below the table size, one level of indirect table (length
    /// a multiple of 16, at most 65535 entries, entered from any descriptor of the chain, its
    /// `next` ignored), total length within `u32`. `ended` says the last descriptor yielded had
    /// no NEXT flag (the chain ended properly).
    pub fn walk(mem: &GuestMemory, table: u64, size: u16, head: u16) -> Self {
        let (mut table, mut size, mut ttl, mut next) = (table, size, size, head);
        let mut indirect = false;
        let mut yielded = 0u32;
        let mut v = View::default();
        loop {
            if ttl == 0 || next >= size {
                break;
            }
            let Some(at) = table.checked_add(u64::from(next) * 16) else {
                break;
            };
            let Some(d) = read_desc(mem, at) else {
                break;
            };
            if d.flags & F_INDIRECT != 0 {
                if indirect || d.len % 16 != 0 || d.len / 16 > u32::from(u16::MAX) {
                    break;
                }
                table = d.addr;
                size = (d.len / 16) as u16;
                ttl = size;
                next = 0;
                indirect = true;
                continue;
            }
            let Some(y) = yielded.checked_add(d.len) else {
                break;
            };
            yielded = y;
            v.ended = d.flags & F_NEXT == 0;
            v.descs.push(d);
            if d.flags & F_NEXT != 0 {
                next = d.next;
                ttl -= 1;
            } else {
                ttl = 0;
            }
        }
        v
    }

    /// Total length if every descriptor has direction `write`, a non-zero length and lies in
    /// memory, and the chain ended properly.
    fn total(&self, write: bool) -> Option<u64> {
        if self.descs.is_empty() || !self.ended {
            return None;
        }
        let mut total = 0u64;
        for d in &self.descs {
            if (d.flags & F_WRITE != 0) != write || d.len == 0 || !in_memory(d.addr, d.len.into()) {
                return None;
            }
            total += u64::from(d.len);
        }
        Some(total)
    }

    /// The writable capacity of a valid RX chain.
    fn rx_cap(&self, min_room: u64) -> Option<u64> {
        self.total(true).filter(|&c| c >= min_room)
    }

    /// The length of a valid TX chain.
    fn tx_len(&self, tx_max: u64) -> Option<u64> {
        self.total(false).filter(|&l| l > HDR as u64 && l <= tx_max)
    }

    fn ranges(&self) -> Vec<(u64, u32)> {
        self.descs.iter().map(|d| (d.addr, d.len)).collect()
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[derive(Debug)]
struct Outstanding {
    head: u16,
    view: View,
    good: bool,
}

/// The driver's side of one queue.
#[derive(Debug)]
struct DriverQueue {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    avail_idx: u16,
    last_used: u16,
    outstanding: Vec<Outstanding>,
}

impl DriverQueue {
    fn new(rings: (u64, u64, u64), size: u16) -> Self {
        Self {
            desc: rings.0,
            avail: rings.1,
            used: rings.2,
            size,
            avail_idx: 0,
            last_used: 0,
            outstanding: Vec::new(),
        }
    }

    fn device_queue(&self, mem: &GuestMemory, event_idx: bool) -> Queue {
        let mut q = Queue::new(self.size).expect("power of two");
        q.set_size(self.size);
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .expect("aligned");
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .expect("aligned");
        q.try_set_used_ring_address(GuestAddress(self.used))
            .expect("aligned");
        q.set_event_idx(event_idx);
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }

    fn used_range(&self) -> (u64, u64) {
        (self.used, self.used + 6 + 8 * u64::from(self.size))
    }

    /// Ranges the device reads as metadata.
    fn meta(&self) -> [(u64, u64); 3] {
        let n = u64::from(self.size);
        [
            (self.desc, self.desc + 16 * n),
            (self.avail, self.avail + 6 + 2 * n),
            self.used_range(),
        ]
    }

    fn publish(&mut self, mem: &GuestMemory, head: u16, good: bool) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .expect("avail idx");
        let view = View::walk(mem, self.desc, self.size, head);
        self.outstanding.push(Outstanding { head, view, good });
    }

    /// Reads the used entries added since the last call and matches each to a chain the driver
    /// made available.
    fn take_used(&mut self, mem: &GuestMemory, what: &str) -> Vec<(u16, u32, View)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).expect("used idx");
        let new = idx.wrapping_sub(self.last_used);
        assert!(
            usize::from(new) <= self.outstanding.len(),
            "{what}: {new} used entries but only {} chains outstanding",
            self.outstanding.len()
        );
        let mut out = Vec::with_capacity(usize::from(new));
        for k in 0..new {
            let slot = u64::from(self.last_used.wrapping_add(k) % self.size);
            let at = self.used + 4 + 8 * slot;
            let id: u32 = mem.read_obj(GuestAddress(at)).expect("used ring");
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used ring");
            assert!(
                id < u32::from(self.size),
                "{what}: used id {id} outside the queue"
            );
            let pos = self
                .outstanding
                .iter()
                .position(|o| u32::from(o.head) == id)
                .unwrap_or_else(|| {
                    panic!(
                        "{what}: used entry for head {id}, which the driver did not make available"
                    )
                });
            let o = self.outstanding.remove(pos);
            out.push((id as u16, len, o.view));
        }
        self.last_used = idx;
        out
    }
}

/// The fuzzer's choices about the device.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// log2 of the RX queue size, less one (size 2..=64).
    pub rx_size_log: u8,
    /// log2 of the TX queue size, less one.
    pub tx_size_log: u8,
    /// Bit 0 EVENT_IDX, bit 1 backend carries the virtio-net header, bit 2 MRG_RXBUF, bit 3
    /// realistic sizes (1518-byte frames).
    pub flags: u8,
    /// `rx_room` (clamped to 13..=4096).
    pub rx_room: u16,
    /// `tx_max` (clamped to 13..=4108).
    pub tx_max: u16,
    /// Low 3 bits: RX batch - 1; next 3 bits: TX batch - 1.
    pub batches: u8,
    /// Seed of the initial buffer-area contents.
    pub fill: u8,
}

impl Config {
    fn read(s: &mut Src<'_>) -> Self {
        Self {
            rx_size_log: s.u8(),
            tx_size_log: s.u8(),
            flags: s.u8(),
            rx_room: s.u16(),
            tx_max: s.u16(),
            batches: s.u8(),
            fill: s.u8(),
        }
    }

    /// Writes the configuration.
    pub fn write(&self, e: &mut Enc) {
        e.u8(self.rx_size_log)
            .u8(self.tx_size_log)
            .u8(self.flags)
            .u16(self.rx_room)
            .u16(self.tx_max)
            .u8(self.batches)
            .u8(self.fill);
    }
}

/// How a descriptor's address is encoded in the input.
#[derive(Clone, Copy, Debug)]
pub enum Addr {
    /// An offset into the buffer area.
    Buf(u16),
    /// An offset into R0 (rings, good areas).
    Meta(u16),
    /// Any 64-bit address.
    Raw(u64),
    /// Near an edge of memory: index into a list of edges, plus a signed delta.
    Edge(u8, i8),
}

const EDGES: [u64; 8] = [
    R0_LEN,
    BUF_BASE,
    BUF_BASE + BUF_LEN / 2,
    BUF_BASE + BUF_LEN,
    0,
    u64::MAX,
    1 << 32,
    u64::MAX - 0xffff,
];

/// One descriptor in the input.
#[derive(Clone, Copy, Debug)]
pub struct InDesc {
    /// Address.
    pub addr: Addr,
    /// Length (a raw `u32` when `len_raw`, else a `u16`).
    pub len: u32,
    /// Whether the length is encoded on 4 bytes.
    pub len_raw: bool,
    /// Flags (low 3 bits used).
    pub flags: u8,
    /// Next index (a `u16` when `next_raw`, else a `u8`).
    pub next: u16,
    /// Whether `next` is encoded on 2 bytes.
    pub next_raw: bool,
}

impl InDesc {
    fn read(s: &mut Src<'_>) -> Self {
        let mode = s.u8();
        let addr = match mode % 8 {
            0..=4 => Addr::Buf(s.u16()),
            5 => Addr::Meta(s.u16()),
            6 => Addr::Raw(s.u64()),
            _ => Addr::Edge(s.u8(), s.u8() as i8),
        };
        let len_raw = mode & 0x10 != 0;
        let len = if len_raw { s.u32() } else { u32::from(s.u16()) };
        let flags = s.u8();
        let next_raw = mode & 0x20 != 0;
        let next = if next_raw { s.u16() } else { u16::from(s.u8()) };
        Self {
            addr,
            len,
            len_raw,
            flags,
            next,
            next_raw,
        }
    }

    /// Writes the descriptor.
    pub fn write(&self, e: &mut Enc) {
        let mut mode = match self.addr {
            Addr::Buf(_) => 0,
            Addr::Meta(_) => 5,
            Addr::Raw(_) => 6,
            Addr::Edge(..) => 7,
        };
        if self.len_raw {
            mode |= 0x10;
        }
        if self.next_raw {
            mode |= 0x20;
        }
        e.u8(mode);
        match self.addr {
            Addr::Buf(o) | Addr::Meta(o) => {
                e.u16(o);
            }
            Addr::Raw(a) => {
                e.u64(a);
            }
            Addr::Edge(i, d) => {
                e.u8(i).u8(d as u8);
            }
        }
        if self.len_raw {
            e.u32(self.len);
        } else {
            e.u16(self.len as u16);
        }
        e.u8(self.flags);
        if self.next_raw {
            e.u16(self.next);
        } else {
            e.u8(self.next as u8);
        }
    }

    fn resolve(&self) -> Desc {
        let addr = match self.addr {
            Addr::Buf(o) => BUF_BASE + u64::from(o) % BUF_LEN,
            Addr::Meta(o) => u64::from(o) % R0_LEN,
            Addr::Raw(a) => a,
            Addr::Edge(i, d) => EDGES[usize::from(i) % EDGES.len()].wrapping_add(d as i64 as u64),
        };
        Desc {
            addr,
            len: self.len,
            flags: u16::from(self.flags & 7),
            next: self.next,
        }
    }
}

/// Operations on the device, in input order.
pub mod op {
    /// Publish an RX head (`u8`: below 0xf0 taken modulo the size, else out of range).
    pub const PUBLISH_RX: u8 = 0;
    /// Publish a TX head.
    pub const PUBLISH_TX: u8 = 1;
    /// Inject a patterned frame: `u16` length, `u8` seed.
    pub const INJECT: u8 = 2;
    /// `process_tx`.
    pub const PROCESS_TX: u8 = 3;
    /// `process_rx`.
    pub const PROCESS_RX: u8 = 4;
    /// Guest write to the buffer area: `u16` offset, `u8` length, raw bytes.
    pub const WRITE_BUF: u8 = 5;
    /// `used_event` of a queue: `u8` (bit 0: TX), `u16` value.
    pub const USED_EVENT: u8 = 6;
    /// Avail ring flags of a queue: `u8`, `u16`.
    pub const AVAIL_FLAGS: u8 = 7;
    /// Fail the next `u8 % 4` backend sends.
    pub const FAIL_SENDS: u8 = 8;
    /// Fail the next `u8 % 4` backend receives.
    pub const FAIL_RECVS: u8 = 9;
    /// Backend send limit: `u8` (0: none, else `v % 4`).
    pub const SEND_LIMIT: u8 = 10;
    /// Inject a frame of raw bytes: `u8` length, bytes.
    pub const INJECT_RAW: u8 = 11;
    /// `process_tx_or_hold`: `u8 % 4` is the number of frames that holds kicks off.
    pub const PROCESS_TX_HOLD: u8 = 12;
    /// Number of operations.
    pub const COUNT: u8 = 13;
}

const MAX_OPS: usize = 96;
const MAX_FRAME: usize = 4160;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// The initial buffer-area contents (a window of it, chosen by the input), computed once.
fn fill_pattern() -> &'static [u8] {
    static FILL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FILL.get_or_init(|| pattern(BUF_LEN as usize + 256, 0x11))
}

struct Harness {
    mem: GuestMemory,
    path: DataPath,
    backend: MemBackend,
    handle: MemBackendHandle,
    rx: DriverQueue,
    tx: DriverQueue,
    cfg: PathConfig,
    /// Frames injected and not yet handed out by the backend, in order.
    inbound: VecDeque<Vec<u8>>,
    /// A send fault was injected at some point: frames may have been dropped.
    tx_faults: bool,
    meta: Vec<(u64, u64)>,
    /// What a device call could touch (see `run`): the part of guest memory snapshotted and
    /// compared around each call of the fuzzed sequence.
    reach: Vec<(u64, u64)>,
    /// Where the fuzzed sequence wrote outside the reach (buffer writes).
    driver_writes: Vec<(u64, u64)>,
    /// RX passes run so far: every other one leaves its interrupt to the caller.
    rx_passes: u64,
}

impl Harness {
    fn hdr_skip(&self) -> usize {
        if self.cfg.backend_vnet_hdr { 0 } else { HDR }
    }

    /// The smallest RX chain the device accepts (devices' `refill_stash`): the header (and a
    /// byte, for a headerless backend) with mergeable buffers, else room for a whole frame less
    /// the 4 bytes of VLAN slack.
    fn min_room(&self) -> u64 {
        let hs_byte = u64::from(!self.cfg.backend_vnet_hdr);
        if self.cfg.mrg_rxbuf {
            HDR as u64 + hs_byte
        } else {
            (self.cfg.rx_room.saturating_sub(4) as u64).max(HDR as u64 + 1)
        }
    }

    fn in_meta(&self, a: u64, e: u64) -> bool {
        self.meta.iter().any(|&m| overlaps(m, (a, e)))
    }

    /// Publishes `head` if the driver has a free avail slot (one is kept for the final check).
    fn publish(&mut self, tx: bool, h: u8) {
        let q = if tx { &mut self.tx } else { &mut self.rx };
        if q.outstanding.len() + 1 >= usize::from(q.size) {
            return;
        }
        let head = if h < 0xf0 {
            u16::from(h) % q.size
        } else if h == 0xff {
            u16::MAX
        } else {
            q.size + u16::from(h & 0xf)
        };
        q.publish(&self.mem, head, false);
    }

    fn inject(&mut self, mut frame: Vec<u8>) {
        if self.cfg.mrg_rxbuf {
            // The backend contract: no frame above the room the device reserves.
            frame.truncate(self.cfg.rx_room - self.hdr_skip());
        }
        frame.truncate(MAX_FRAME);
        self.handle.inject(&frame);
        self.inbound.push_back(frame);
    }

    fn write_buf(&mut self, off: u16, bytes: &[u8]) {
        let start = BUF_BASE + u64::from(off) % BUF_LEN;
        let end = start + bytes.len() as u64;
        // The write wraps round the buffer area's end.
        self.driver_writes
            .push((start, end.min(BUF_BASE + BUF_LEN)));
        if end > BUF_BASE + BUF_LEN {
            self.driver_writes.push((BUF_BASE, end - BUF_LEN));
        }
        for (i, &b) in bytes.iter().enumerate() {
            let a = BUF_BASE + (u64::from(off) + i as u64) % BUF_LEN;
            if !self.in_meta(a, a + 1) {
                let _ = self.mem.write_obj(b, GuestAddress(a));
            }
        }
    }

    fn used_ranges(&self) -> Vec<(u64, u64)> {
        vec![self.rx.used_range(), self.tx.used_range()]
    }

    /// `process_tx`, or `process_tx_or_hold(hold_at)`: either drains the queue.
    fn process_tx(&mut self, hold_at: Option<usize>) {
        let before = Snap::take(&self.mem, &self.reach);
        match hold_at {
            None => self.path.process_tx(&mut self.backend),
            Some(n) => {
                let _ = self.path.process_tx_or_hold(&mut self.backend, n);
            }
        }
        let after = Snap::take(&self.mem, &self.reach);
        after.assert_unchanged_outside(&before, &self.used_ranges(), "process_tx");
        let used = self.tx.take_used(&self.mem, "tx");
        // Heads out of range were consumed without a used entry; every other chain is done.
        let size = self.tx.size;
        self.tx.outstanding.retain(|o| o.head < size);
        assert!(
            self.tx.outstanding.is_empty(),
            "process_tx returned with TX chains neither used nor pending: {:?}",
            self.tx.outstanding
        );
        let hs = self.hdr_skip();
        let tx_max = self.cfg.tx_max as u64;
        let used_rings = self.used_ranges();
        let mut expected: Vec<(Vec<u8>, bool)> = Vec::new();
        for (id, len, view) in &used {
            assert_eq!(
                *len, 0,
                "TX used entry for head {id} has length {len}, not 0"
            );
            if view.tx_len(tx_max).is_some() {
                let bytes = before.gather(&view.ranges())[hs..].to_vec();
                // Bytes in a used ring may change while the device gathers: compare lengths only.
                let fuzzy = view
                    .descs
                    .iter()
                    .any(|d| used_rings.iter().any(|&r| overlaps(r, (d.addr, d.end()))));
                expected.push((bytes, fuzzy));
            }
        }
        let sent = self.handle.take_sent();
        let mut exp = expected.iter();
        for (k, s) in sent.iter().enumerate() {
            let found = exp.by_ref().any(
                |(e, fuzzy)| {
                    if *fuzzy { e.len() == s.len() } else { e == s }
                },
            );
            assert!(
                found,
                "backend frame {k} ({} bytes) is not the bytes of a valid TX chain, in order",
                s.len()
            );
        }
        if !self.tx_faults {
            assert_eq!(
                sent.len(),
                expected.len(),
                "valid TX chains and frames sent differ with no backend fault"
            );
        }
    }

    /// Runs `process_rx` and checks it; returns the pre-call snapshot and the used entries.
    fn process_rx(&mut self) -> (Snap, Snap, Vec<(u16, u32, View)>) {
        let min_room = self.min_room();
        let hs = self.hdr_skip();
        // The buffers the device owns now, and whether they overlap (then bytes are not checked).
        let owned: Vec<(u64, u64)> = self
            .rx
            .outstanding
            .iter()
            .filter(|o| o.view.rx_cap(min_room).is_some())
            .flat_map(|o| o.view.descs.iter().map(|d| (d.addr, d.end())))
            .collect();
        let disjoint = owned
            .iter()
            .enumerate()
            .all(|(i, &a)| owned[i + 1..].iter().all(|&b| !overlaps(a, b)));
        let pending_before = self.handle.pending();

        let before = Snap::take(&self.mem, &self.reach);
        self.rx_passes += 1;
        if self.rx_passes % 2 == 0 {
            // As the worker does with RX interrupt holding: publish, then interrupt later.
            let _ = self.path.process_rx_unnotified(&mut self.backend);
            self.path.notify_rx();
        } else {
            self.path.process_rx(&mut self.backend);
        }
        let after = Snap::take(&self.mem, &self.reach);

        let mut allowed = self.used_ranges();
        allowed.extend(&owned);
        after.assert_unchanged_outside(&before, &allowed, "process_rx");

        let used = self.rx.take_used(&self.mem, "rx");
        for (id, len, view) in &used {
            match view.rx_cap(min_room) {
                None => assert_eq!(
                    *len, 0,
                    "RX head {id}: malformed chain {view:?} returned with length {len}"
                ),
                Some(cap) => {
                    assert!(
                        *len > 0,
                        "RX head {id}: valid chain {view:?} returned empty"
                    );
                    assert!(
                        u64::from(*len) <= cap,
                        "RX head {id}: used length {len} above the chain's {cap} writable bytes"
                    );
                }
            }
        }

        // Group the entries into the frames the backend handed out.
        let pending_after = self.handle.pending();
        let popped = pending_before - pending_after;
        let frames: Vec<Vec<u8>> = self.inbound.drain(..popped).collect();
        let mut entries = used.iter().filter(|e| e.1 > 0).peekable();
        for (k, f) in frames.iter().enumerate() {
            let delivered_len = f.len() + hs;
            if delivered_len <= HDR {
                continue; // nothing beyond a header: not delivered
            }
            let mut chains: Vec<&(u16, u32, View)> = Vec::new();
            if self.cfg.mrg_rxbuf {
                let mut total = 0usize;
                while total < delivered_len {
                    let e = entries.next().unwrap_or_else(|| {
                        panic!(
                            "RX frame {k} ({} bytes) was taken from the backend but not delivered",
                            f.len()
                        )
                    });
                    let cap = e.2.rx_cap(min_room).unwrap_or(0) as usize;
                    total += e.1 as usize;
                    assert!(
                        total == delivered_len || e.1 as usize == cap,
                        "RX frame {k}: a buffer that is not the last is not filled ({} of {cap})",
                        e.1
                    );
                    chains.push(e);
                }
                assert_eq!(total, delivered_len, "RX frame {k}: used lengths overshoot");
            } else {
                let e = entries.next().unwrap_or_else(|| {
                    panic!(
                        "RX frame {k} ({} bytes) was taken from the backend but not delivered",
                        f.len()
                    )
                });
                let cap = e.2.rx_cap(min_room).unwrap_or(0) as usize;
                assert_eq!(
                    e.1 as usize,
                    delivered_len.min(cap),
                    "RX frame {k}: used length is not the frame length capped by the buffer"
                );
                chains.push(e);
            }
            if disjoint {
                let ranges: Vec<(u64, u32)> = chains
                    .iter()
                    .flat_map(|e| {
                        let mut left = e.1 as u64;
                        e.2.ranges()
                            .into_iter()
                            .filter_map(move |(a, l)| {
                                let n = left.min(u64::from(l));
                                left -= n;
                                (n > 0).then_some((a, n as u32))
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let got = after.gather(&ranges);
                let nb = u16::from_le_bytes([got[10], got[11]]);
                assert_eq!(
                    usize::from(nb),
                    chains.len(),
                    "RX frame {k}: num_buffers is {nb} for {} buffers",
                    chains.len()
                );
                let want: Vec<u8> = if hs == HDR {
                    let mut w = vec![0u8; HDR];
                    w.extend_from_slice(f);
                    w
                } else {
                    f.clone()
                };
                assert_eq!(&got[..10], &want[..10], "RX frame {k}: header bytes");
                assert_eq!(
                    &got[HDR..],
                    &want[HDR..got.len()],
                    "RX frame {k}: payload bytes"
                );
            }
        }
        assert!(
            entries.next().is_none(),
            "RX: used entries with data beyond the frames the backend handed out"
        );
        (before, after, used)
    }

    /// Posts the good RX buffer unless it is already posted.
    fn post_good_rx(&mut self) {
        let q = &mut self.rx;
        if q.outstanding.iter().any(|o| o.good) || q.outstanding.len() >= usize::from(q.size) {
            return;
        }
        let Some(d) = (0..q.size).find(|&i| q.outstanding.iter().all(|o| o.head != i)) else {
            return;
        };
        write_desc(
            &self.mem,
            q.desc + 16 * u64::from(d),
            Desc {
                addr: G_RX,
                len: G_RX_LEN,
                flags: F_WRITE,
                next: 0,
            },
        );
        q.publish(&self.mem, d, true);
    }

    /// After the fuzzed sequence: the device still sends and receives a good frame.
    fn final_check(&mut self) {
        // The final check writes descriptors of its own: from here every call is checked
        // against all of guest memory.
        self.reach = ALL_MEMORY.to_vec();
        self.handle.fail_sends(0);
        self.handle.fail_recvs(0);
        self.handle.set_send_limit(None);
        self.tx_faults = false;

        // TX: a well-formed two-descriptor chain reaches the backend as exactly that frame.
        self.process_tx(None);
        let body_len = 60.min(self.cfg.tx_max - HDR);
        let hdr = [0u8; HDR];
        let body = pattern(body_len, 0x5a);
        self.mem.write_slice(&hdr, GuestAddress(G_TX)).unwrap();
        self.mem
            .write_slice(&body, GuestAddress(G_TX + 64))
            .unwrap();
        let t = self.tx.desc;
        write_desc(
            &self.mem,
            t,
            Desc {
                addr: G_TX,
                len: HDR as u32,
                flags: F_NEXT,
                next: 1,
            },
        );
        write_desc(
            &self.mem,
            t + 16,
            Desc {
                addr: G_TX + 64,
                len: body_len as u32,
                flags: 0,
                next: 0,
            },
        );
        self.tx.publish(&self.mem, 0, true);
        // process_tx checks that the backend got the chain's bytes and nothing else.
        self.process_tx(None);

        // RX: every pending frame gets delivered once a good buffer is posted.
        let _ = self.process_rx();
        let pending = self.handle.pending();
        let mut rounds = 0;
        while self.handle.pending() > 0 {
            self.post_good_rx();
            let _ = self.process_rx();
            rounds += 1;
            assert!(
                rounds <= 2 * pending + usize::from(self.rx.size) + 4,
                "RX stalled: {} frames pending in the backend with a good buffer posted",
                self.handle.pending()
            );
        }

        // The marker frame, alone in its call: guest memory must be exactly the model's.
        self.post_good_rx();
        let marker = if self.cfg.backend_vnet_hdr {
            let mut m = vec![0u8; HDR];
            m.extend(pattern(64, 0xa7));
            m
        } else {
            pattern(64, 0xa7)
        };
        self.inject(marker);
        let marker = self.inbound.back().cloned().unwrap_or_default();
        let (before, after, used) = self.process_rx();
        assert_eq!(self.handle.pending(), 0, "the marker frame was not taken");
        let chains: Vec<&(u16, u32, View)> = used.iter().filter(|e| e.1 > 0).collect();
        assert!(
            !chains.is_empty(),
            "the marker frame did not land in a posted buffer"
        );
        let hs = self.hdr_skip();
        let mut model = before.clone();
        let mut ranges = Vec::new();
        for e in &chains {
            ranges.extend(e.2.ranges());
        }
        let cap: u64 = chains
            .iter()
            .map(|e| e.2.rx_cap(self.min_room()).unwrap())
            .sum();
        let fits = (cap as usize - hs).min(marker.len());
        model.scatter(&ranges, hs, &marker[..fits]);
        let first = chains[0].2.ranges();
        let nb = (chains.len() as u16).to_le_bytes();
        if hs == HDR {
            let mut h = [0u8; HDR];
            h[10..].copy_from_slice(&nb);
            model.scatter(&first, 0, &h);
        } else {
            model.scatter(&first, 10, &nb);
        }
        // Used rings are checked entry by entry; take them from the device.
        for (s, e) in self.used_ranges() {
            for a in s..e {
                if let (Some(m), Some(v)) = (model.byte_mut(a), after.byte(a)) {
                    *m = v;
                }
            }
        }
        if model != after {
            after.assert_unchanged_outside(&model, &[], "marker frame");
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut s = Src::new(data);
    let c = Config::read(&mut s);
    let rx_size = 2u16 << (c.rx_size_log % 6);
    let tx_size = 2u16 << (c.tx_size_log % 6);
    let event_idx = c.flags & 1 != 0;
    let vnet_hdr = c.flags & 2 != 0;
    let mrg = c.flags & 4 != 0;
    let (rx_room, tx_max) = if c.flags & 8 != 0 {
        (HDR + 1518, HDR + 1518)
    } else {
        (
            usize::from(c.rx_room).clamp(HDR + 1, MAX_RX_ROOM),
            usize::from(c.tx_max).clamp(HDR + 1, MAX_RX_ROOM + HDR),
        )
    };
    let cfg = PathConfig {
        backend_vnet_hdr: vnet_hdr,
        mrg_rxbuf: mrg,
        rx_room,
        tx_max,
        rx_batch: usize::from(c.batches & 7) + 1,
        tx_batch: usize::from((c.batches >> 3) & 7) + 1,
    };

    let mem = fresh_memory();
    let fill = fill_pattern();
    let off = usize::from(c.fill);
    mem.write_slice(&fill[off..off + BUF_LEN as usize], GuestAddress(BUF_BASE))
        .unwrap();
    let rx = DriverQueue::new(RX_RINGS, rx_size);
    let tx = DriverQueue::new(TX_RINGS, tx_size);

    // Descriptor tables, then indirect tables.
    for q in [&rx, &tx] {
        let n = usize::from(s.u8()).min(usize::from(q.size));
        for i in 0..n {
            write_desc(&mem, q.desc + 16 * i as u64, InDesc::read(&mut s).resolve());
        }
    }
    for _ in 0..s.u8() % 5 {
        let at = BUF_BASE + u64::from(s.u16()) % BUF_LEN;
        for i in 0..u64::from(s.u8() % 17) {
            write_desc(&mem, at + 16 * i, InDesc::read(&mut s).resolve());
        }
    }

    // What the device reads as metadata must not be device-writable: rings, descriptor tables
    // and the indirect tables the direct tables point at (clipped to memory).
    let mut meta: Vec<(u64, u64)> = rx.meta().into_iter().chain(tx.meta()).collect();
    let mut tables: Vec<(u64, u64)> = vec![
        (rx.desc, rx.desc + 16 * u64::from(rx.size)),
        (tx.desc, tx.desc + 16 * u64::from(tx.size)),
    ];
    // The rings change during the sequence (the driver's avail ring, the device's used ring):
    // an indirect table over a ring would change under the chains that use it, which the
    // model does not follow (the walker reads a chain when it is published), so such a
    // descriptor loses its INDIRECT flag. (Found as a false failure, bug 4 below in
    // fuzz/README.md.)
    let rings = [rx.meta()[1], rx.meta()[2], tx.meta()[1], tx.meta()[2]];
    for q in [&rx, &tx] {
        for i in 0..u64::from(q.size) {
            if let Some(mut d) = read_desc(&mem, q.desc + 16 * i)
                && d.flags & F_INDIRECT != 0
            {
                if rings.iter().any(|&r| overlaps(r, (d.addr, d.end()))) {
                    d.flags &= !F_INDIRECT;
                    write_desc(&mem, q.desc + 16 * i, d);
                    continue;
                }
                meta.push((d.addr, d.end()));
                for (lo, hi) in [(0, R0_LEN), (BUF_BASE, BUF_BASE + BUF_LEN)] {
                    // Entries are read at d.addr + 16 * k: keep the phase of the table.
                    let start = if d.addr >= lo {
                        d.addr
                    } else {
                        d.addr + (lo - d.addr).div_ceil(16) * 16
                    };
                    let end = d.end().min(hi);
                    if start < end && !tables.contains(&(start, end)) {
                        tables.push((start, end));
                    }
                }
            }
        }
    }
    // What a device call can touch: addresses it knows from the queue configuration (rings and
    // descriptor tables) or reads from a descriptor. Descriptors do not change during the
    // fuzzed sequence (the fuzzer's writes skip the tables), so every device write, right or
    // wrong, lands in the rings, the tables or a range that some descriptor names. Only that
    // is snapshotted around each call; the rest of memory is checked once, after the sequence.
    let mut reach = meta.clone();
    reach.extend(&tables);
    for &(start, end) in &tables {
        // One read per table (clipped to memory above), descriptors decoded from it.
        let mut bytes = vec![0u8; ((end - start) / 16 * 16) as usize];
        if mem.read_slice(&mut bytes, GuestAddress(start)).is_err() {
            continue;
        }
        for (k, raw) in bytes.chunks_exact(16).enumerate() {
            let mut d = Desc::from_bytes(raw.try_into().expect("16 bytes"));
            if d.flags & F_WRITE != 0 && meta.iter().any(|&m| overlaps(m, (d.addr, d.end()))) {
                d.flags &= !F_WRITE;
                write_desc(&mem, start + 16 * k as u64, d);
            }
            reach.push((d.addr, d.end()));
        }
    }
    let reach = clip_and_merge(&reach);
    let start_image = Snap::take(&mem, &ALL_MEMORY);

    let backend = MemBackend::new(MemBackendConfig {
        vnet_hdr,
        ..Default::default()
    })
    .expect("backend");
    let handle = backend.handle();
    let interrupt = Interrupt::new(Notifier::new().expect("notifier"));
    let path = DataPath::new(
        mem.clone(),
        rx.device_queue(&mem, event_idx),
        tx.device_queue(&mem, event_idx),
        interrupt,
        cfg,
        Arc::new(NetMetrics::default()),
    );
    let mut h = Harness {
        mem,
        path,
        backend,
        handle,
        rx,
        tx,
        cfg,
        inbound: VecDeque::new(),
        tx_faults: false,
        meta,
        reach,
        driver_writes: Vec::new(),
        rx_passes: 0,
    };

    for _ in 0..MAX_OPS {
        if s.is_empty() {
            break;
        }
        match s.u8() % op::COUNT {
            op::PUBLISH_RX => {
                let v = s.u8();
                h.publish(false, v);
            }
            op::PUBLISH_TX => {
                let v = s.u8();
                h.publish(true, v);
            }
            op::INJECT => {
                let len = usize::from(s.u16()) % (MAX_FRAME + 1);
                let seed = s.u8();
                h.inject(pattern(len, seed));
            }
            op::PROCESS_TX => h.process_tx(None),
            op::PROCESS_TX_HOLD => {
                let n = usize::from(s.u8() % 4);
                h.process_tx(Some(n));
            }
            op::PROCESS_RX => {
                let _ = h.process_rx();
            }
            op::WRITE_BUF => {
                let off = s.u16();
                let n = usize::from(s.u8());
                let b = s.bytes(n).to_vec();
                h.write_buf(off, &b);
            }
            o @ (op::USED_EVENT | op::AVAIL_FLAGS) => {
                let q = if s.bool() { &h.tx } else { &h.rx };
                let v = s.u16();
                let addr = if o == op::USED_EVENT {
                    q.avail + 4 + 2 * u64::from(q.size)
                } else {
                    q.avail
                };
                let _ = h.mem.write_obj(v, GuestAddress(addr));
            }
            op::FAIL_SENDS => {
                h.handle.fail_sends(u64::from(s.u8() % 4));
                h.tx_faults = true;
            }
            op::FAIL_RECVS => h.handle.fail_recvs(u64::from(s.u8() % 4)),
            op::SEND_LIMIT => {
                let v = s.u8();
                h.handle.set_send_limit(if v == 0 {
                    None
                } else {
                    Some(usize::from(v % 4))
                });
                h.tx_faults = true;
            }
            _ => {
                let n = usize::from(s.u8());
                let b = s.bytes(n).to_vec();
                h.inject(b);
            }
        }
    }
    // Nothing outside the reach changed but what the fuzzed sequence wrote itself.
    let now = Snap::take(&h.mem, &ALL_MEMORY);
    let mut allowed = h.reach.clone();
    allowed.extend(&h.driver_writes);
    now.assert_unchanged_outside(&start_image, &allowed, "the fuzzed sequence");
    h.final_check();
}
