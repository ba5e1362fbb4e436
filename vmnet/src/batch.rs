//! Batches of packet descriptors for `vmnet_read` and `vmnet_write` (portable: built and tested on
//! every host).
//!
//! A [`Batch`] owns the iovec array and the `struct vmpktdesc` array that one framework call
//! takes, reusing their allocations from call to call. Packets are added as iovec lists (trimmed
//! by [`crate::iov::push_trimmed`]); [`Batch::descriptors`] then lays out the descriptors, each
//! pointing at its run of iovecs. After a read, each descriptor's `vm_pkt_size` is the received
//! length ([`Batch::received_len`]).
//!
//! Batch sizes (docs/design.md): at most [`MAX_BATCH`] (128) packets per call, because public
//! tuning found no gain above 128, and never more than the interface's read/write maximum.
//! Each call also stays within Apple's per-call limits (at most
//! [`MAX_PACKETS_PER_CALL`] packets and
//! [`MAX_BYTES_PER_CALL`] bytes): [`split_calls`] and
//! [`Batch::calls`] cut a batch into calls that respect all of these, and
//! [`Batch::next_call`] takes them one at a time without allocating.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::iov::{iovec, push_trimmed};
use crate::limits::{MAX_BYTES_PER_CALL, MAX_PACKETS_PER_CALL};

/// The most packets moved per framework call.
pub const MAX_BATCH: usize = 128;

/// `struct vmpktdesc` of `<vmnet/vmnet.h>`: one packet of a `vmnet_read`/`vmnet_write` batch.
///
/// ```
/// assert_eq!(std::mem::size_of::<vmnet::batch::VmPktDesc>(), 3 * std::mem::size_of::<usize>());
/// ```
#[derive(Clone, Copy, Debug)]
#[repr(C)]
#[doc(alias = "vmpktdesc")]
pub struct VmPktDesc {
    /// `size_t vm_pkt_size`: the packet's size (in: buffer capacity for reads; out: bytes read).
    pub vm_pkt_size: usize,
    /// `struct iovec *vm_pkt_iov`: the buffers making up the packet.
    pub vm_pkt_iov: *mut iovec,
    /// `uint32_t vm_pkt_iovcnt`: the number of entries of `vm_pkt_iov`.
    pub vm_pkt_iovcnt: u32,
    /// `uint32_t vm_flags`: flags (none are defined; 0).
    pub vm_flags: u32,
}

/// How many packets one call moves: `available`, at most `interface_max`, at most
/// [`MAX_BATCH`], and at least 1 when anything is available.
///
/// ```
/// assert_eq!(vmnet::batch::batch_len(500, 256), 128);
/// assert_eq!(vmnet::batch::batch_len(10, 256), 10);
/// assert_eq!(vmnet::batch::batch_len(10, 4), 4);
/// assert_eq!(vmnet::batch::batch_len(0, 4), 0);
/// ```
pub fn batch_len(available: usize, interface_max: usize) -> usize {
    available.min(interface_max.clamp(1, MAX_BATCH))
}

/// Splits `total` packets into consecutive chunks of at most `max` (itself capped as in
/// [`batch_len`]).
///
/// ```
/// let chunks: Vec<_> = vmnet::batch::chunks(300, 256).collect();
/// assert_eq!(chunks, vec![0..128, 128..256, 256..300]);
/// ```
pub fn chunks(total: usize, max: usize) -> impl Iterator<Item = Range<usize>> {
    let step = max.clamp(1, MAX_BATCH);
    (0..total)
        .step_by(step)
        .map(move |s| s..(s + step).min(total))
}

/// Cuts packets of lengths `lens` into consecutive calls: each call has at most
/// `min(interface_max, 128, 200)` packets (at least 1) and at most `max_bytes` bytes in total,
/// except that a single packet larger than `max_bytes` gets a call of its own (a packet cannot be
/// split). Every packet is in exactly one call, in order.
///
/// ```
/// use vmnet::batch::split_calls;
/// use vmnet::limits::MAX_BYTES_PER_CALL;
///
/// // 128 receive rooms of 64 KiB + 30 bytes: 3 per call keeps each call within 256 KiB.
/// let calls = split_calls(vec![65_565; 128], 256, MAX_BYTES_PER_CALL);
/// assert_eq!(calls[0], 0..3);
/// assert_eq!(calls.len(), 43);
/// ```
pub fn split_calls(
    lens: impl IntoIterator<Item = usize>,
    interface_max: usize,
    max_bytes: usize,
) -> Vec<Range<usize>> {
    let lens: Vec<usize> = lens.into_iter().collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start < lens.len() {
        let n = first_call_len(lens[start..].iter().copied(), interface_max, max_bytes);
        out.push(start..start + n);
        start += n;
    }
    out
}

/// How many of the packets of lengths `lens` the first call of [`split_calls`] takes (0 only
/// when `lens` is empty). It allocates nothing, so the read and write paths call it once per
/// framework call.
fn first_call_len(
    lens: impl IntoIterator<Item = usize>,
    interface_max: usize,
    max_bytes: usize,
) -> usize {
    let max_packets = interface_max.clamp(1, MAX_BATCH.min(MAX_PACKETS_PER_CALL));
    let (mut count, mut bytes) = (0usize, 0usize);
    for len in lens {
        if count > 0 && (count == max_packets || bytes.saturating_add(len) > max_bytes) {
            break;
        }
        count += 1;
        bytes = bytes.saturating_add(len);
    }
    count
}

#[derive(Clone, Copy, Debug)]
struct Span {
    first_iov: usize,
    iovs: usize,
    len: usize,
}

/// The iovecs and descriptors of one framework call.
///
/// A batch stores addresses only; it never reads or writes through them. The `unsafe` calls that
/// hand it to the framework (or to [`crate::linearize::Linearizer`]) are where the memory is
/// vouched for.
///
/// ```
/// use vmnet::batch::Batch;
/// use vmnet::iov::iovec_ref;
///
/// let (a, b) = ([0u8; 60], [0u8; 40]);
/// let mut batch = Batch::new();
/// assert_eq!(batch.push([iovec_ref(&a), iovec_ref(&b)], 0), Some(0));
/// assert_eq!(batch.packet_len(0), 100);
/// let descs = batch.descriptors(0..1);
/// assert_eq!(descs[0].vm_pkt_iovcnt, 2);
/// assert_eq!(descs[0].vm_pkt_size, 100);
/// ```
#[derive(Debug, Default)]
pub struct Batch {
    iovs: Vec<iovec>,
    spans: Vec<Span>,
    descs: Vec<VmPktDesc>,
    laid_out_from: usize,
    received: Vec<usize>,
}

// SAFETY: a `Batch` holds addresses as plain data and never dereferences them; every use of the
// memory they describe goes through an `unsafe fn` whose caller guarantees it is valid on the
// calling thread. Moving the addresses to another thread is therefore harmless.
unsafe impl Send for Batch {}

impl Batch {
    /// An empty batch.
    ///
    /// ```
    /// assert!(vmnet::batch::Batch::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `packets` packets of `iovs` iovecs in total.
    ///
    /// ```
    /// let b = vmnet::batch::Batch::with_capacity(128, 256);
    /// assert_eq!(b.len(), 0);
    /// ```
    pub fn with_capacity(packets: usize, iovs: usize) -> Self {
        Self {
            iovs: Vec::with_capacity(iovs),
            spans: Vec::with_capacity(packets),
            descs: Vec::with_capacity(packets),
            laid_out_from: 0,
            received: Vec::with_capacity(packets),
        }
    }

    /// Forgets every packet, keeping the allocations.
    ///
    /// ```
    /// let mut b = vmnet::batch::Batch::new();
    /// let buf = [0u8; 4];
    /// b.push([vmnet::iov::iovec_ref(&buf)], 0);
    /// b.clear();
    /// assert!(b.is_empty());
    /// ```
    pub fn clear(&mut self) {
        self.iovs.clear();
        self.spans.clear();
        self.descs.clear();
        self.received.clear();
    }

    /// The number of packets.
    ///
    /// ```
    /// assert_eq!(vmnet::batch::Batch::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are no packets.
    ///
    /// ```
    /// assert!(vmnet::batch::Batch::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Adds a packet made of `iovs` minus its first `skip` bytes, without zero-length entries.
    ///
    /// Returns the packet's index, or `None` (adding nothing) when no byte is left.
    ///
    /// ```
    /// use vmnet::{batch::Batch, iov::iovec_ref};
    ///
    /// let hdr = [0u8; 12];
    /// let mut b = Batch::new();
    /// assert_eq!(b.push([iovec_ref(&hdr)], 12), None);
    /// assert!(b.is_empty());
    /// ```
    pub fn push(&mut self, iovs: impl IntoIterator<Item = iovec>, skip: usize) -> Option<usize> {
        let first_iov = self.iovs.len();
        let len = push_trimmed(&mut self.iovs, iovs, skip);
        if len == 0 {
            return None;
        }
        self.spans.push(Span {
            first_iov,
            iovs: self.iovs.len() - first_iov,
            len,
        });
        Some(self.spans.len() - 1)
    }

    /// Adds a packet like [`push`](Self::push), keeping at most `cap` bytes of it (later bytes
    /// and entries are left out). For reads: a packet's capacity is then exactly what vmnet may
    /// fill, so that the bytes a call offers stay small.
    ///
    /// ```
    /// use vmnet::{batch::Batch, iov::iovec_ref};
    ///
    /// let (a, b, c) = ([0u8; 1000], [0u8; 1000], [0u8; 1000]);
    /// let mut batch = Batch::new();
    /// batch.push_capped([iovec_ref(&a), iovec_ref(&b), iovec_ref(&c)], 0, 1526);
    /// assert_eq!(batch.packet_len(0), 1526);
    /// assert_eq!(batch.packet_iovs(0).len(), 2);
    /// assert_eq!(batch.packet_iovs(0)[1].iov_len, 526);
    /// ```
    pub fn push_capped(
        &mut self,
        iovs: impl IntoIterator<Item = iovec>,
        skip: usize,
        cap: usize,
    ) -> Option<usize> {
        let i = self.push(iovs, skip)?;
        let span = &mut self.spans[i];
        if span.len > cap {
            let mut kept = 0;
            let mut entries = 0;
            for v in &mut self.iovs[span.first_iov..span.first_iov + span.iovs] {
                if kept == cap {
                    break;
                }
                v.iov_len = v.iov_len.min(cap - kept);
                kept += v.iov_len;
                entries += 1;
            }
            self.iovs.truncate(span.first_iov + entries);
            span.iovs = entries;
            span.len = kept;
            if kept == 0 {
                self.spans.pop();
                return None;
            }
        }
        Some(i)
    }

    /// The first call of `self[range]` within the interface's maximum and Apple's per-call
    /// limits ([`split_calls`] over the packet lengths; for reads, the capacities), as an absolute
    /// range; empty only when `range` is. Allocation-free: the read and write paths take one call
    /// at a time.
    ///
    /// ```
    /// let buf = [0u8; 100 * 1024];
    /// let mut b = vmnet::batch::Batch::new();
    /// for _ in 0..4 {
    ///     b.push([vmnet::iov::iovec_ref(&buf)], 0);
    /// }
    /// // 100 KiB packets: two fit in 256 KiB.
    /// assert_eq!(b.next_call(1..4, 256), 1..3);
    /// assert_eq!(b.next_call(3..4, 256), 3..4);
    /// ```
    pub fn next_call(&self, range: Range<usize>, interface_max: usize) -> Range<usize> {
        let lens = self.spans[range.clone()].iter().map(|s| s.len);
        range.start..range.start + first_call_len(lens, interface_max, MAX_BYTES_PER_CALL)
    }

    /// Every call of `self[range]`, as [`next_call`](Self::next_call) takes them one after
    /// another.
    ///
    /// ```
    /// let buf = [0u8; 100 * 1024];
    /// let mut b = vmnet::batch::Batch::new();
    /// for _ in 0..4 {
    ///     b.push([vmnet::iov::iovec_ref(&buf)], 0);
    /// }
    /// assert_eq!(b.calls(0..4, 256), vec![0..2, 2..4]);
    /// ```
    pub fn calls(&self, range: Range<usize>, interface_max: usize) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut start = range.start;
        while start < range.end {
            let call = self.next_call(start..range.end, interface_max);
            start = call.end;
            out.push(call);
        }
        out
    }

    /// The length of packet `i` as added (for reads: its capacity).
    ///
    /// # Panics
    ///
    /// If `i` is out of range.
    ///
    /// ```
    /// let buf = [0u8; 9];
    /// let mut b = vmnet::batch::Batch::new();
    /// b.push([vmnet::iov::iovec_ref(&buf)], 0);
    /// assert_eq!(b.packet_len(0), 9);
    /// ```
    pub fn packet_len(&self, i: usize) -> usize {
        self.spans[i].len
    }

    /// The iovecs of packet `i`.
    ///
    /// # Panics
    ///
    /// If `i` is out of range.
    ///
    /// ```
    /// let buf = [0u8; 9];
    /// let mut b = vmnet::batch::Batch::new();
    /// b.push([vmnet::iov::iovec_ref(&buf)], 2);
    /// assert_eq!(b.packet_iovs(0)[0].iov_len, 7);
    /// ```
    pub fn packet_iovs(&self, i: usize) -> &[iovec] {
        let s = self.spans[i];
        &self.iovs[s.first_iov..s.first_iov + s.iovs]
    }

    /// Whether any packet in `range` has more than one iovec.
    ///
    /// ```
    /// let (a, b) = ([0u8; 2], [0u8; 2]);
    /// let mut batch = vmnet::batch::Batch::new();
    /// batch.push([vmnet::iov::iovec_ref(&a)], 0);
    /// batch.push([vmnet::iov::iovec_ref(&a), vmnet::iov::iovec_ref(&b)], 0);
    /// assert!(!batch.has_multi_iov(0..1));
    /// assert!(batch.has_multi_iov(0..2));
    /// ```
    pub fn has_multi_iov(&self, range: Range<usize>) -> bool {
        self.spans[range].iter().any(|s| s.iovs > 1)
    }

    /// Checks that every packet can receive a whole packet: capacity of at least
    /// `max_packet_size` (the header's requirement for `vmnet_read` buffers; pass
    /// [`FrameLimits::read_capacity`](crate::limits::FrameLimits::read_capacity), which adds the
    /// virtio-net header where the interface carries it).
    ///
    /// ```
    /// let buf = [0u8; 1000];
    /// let mut b = vmnet::batch::Batch::new();
    /// b.push([vmnet::iov::iovec_ref(&buf)], 0);
    /// assert!(b.check_read_capacity(1514).is_err());
    /// assert!(b.check_read_capacity(1000).is_ok());
    /// ```
    pub fn check_read_capacity(&self, max_packet_size: usize) -> Result<()> {
        match self.spans.iter().position(|s| s.len < max_packet_size) {
            None => Ok(()),
            Some(index) => Err(Error::BufferTooSmall {
                index,
                len: self.spans[index].len,
                required: max_packet_size,
            }),
        }
    }

    /// Checks that no packet is larger than `max_packet_size` (the header's limit for
    /// `vmnet_write`; pass [`FrameLimits::max_packet`](crate::limits::FrameLimits::max_packet),
    /// which follows the interface's mode).
    ///
    /// ```
    /// let buf = [0u8; 2000];
    /// let mut b = vmnet::batch::Batch::new();
    /// b.push([vmnet::iov::iovec_ref(&buf)], 0);
    /// assert!(b.check_write_sizes(1514).is_err());
    /// ```
    pub fn check_write_sizes(&self, max_packet_size: usize) -> Result<()> {
        match self.spans.iter().position(|s| s.len > max_packet_size) {
            None => Ok(()),
            Some(index) => Err(Error::PacketTooLarge {
                index,
                len: self.spans[index].len,
                max: max_packet_size,
            }),
        }
    }

    /// Lays out the descriptors of the packets in `range` (sizes = packet lengths, flags 0) and
    /// returns them, ready for one framework call.
    ///
    /// The descriptors point into this batch's iovec array, which cannot change while they are
    /// borrowed.
    ///
    /// # Panics
    ///
    /// If `range` is out of bounds, or a packet has more than `u32::MAX` iovecs.
    ///
    /// ```
    /// let buf = [0u8; 64];
    /// let mut b = vmnet::batch::Batch::new();
    /// b.push([vmnet::iov::iovec_ref(&buf[..32])], 0);
    /// b.push([vmnet::iov::iovec_ref(&buf[32..])], 0);
    /// let d = b.descriptors(1..2);
    /// assert_eq!(d.len(), 1);
    /// assert_eq!(d[0].vm_pkt_size, 32);
    /// ```
    pub fn descriptors(&mut self, range: Range<usize>) -> &mut [VmPktDesc] {
        let base = self.iovs.as_mut_ptr();
        self.descs.clear();
        self.laid_out_from = range.start;
        self.received.resize(self.spans.len(), 0);
        self.descs
            .extend(self.spans[range.clone()].iter().map(|s| VmPktDesc {
                vm_pkt_size: s.len,
                // wrapping_add: address computation only; first_iov <= iovs.len() always holds.
                vm_pkt_iov: base.wrapping_add(s.first_iov),
                vm_pkt_iovcnt:
                    u32::try_from(s.iovs).expect("more than u32::MAX iovecs in a packet"),
                vm_flags: 0,
            }));
        &mut self.descs
    }

    /// After a read into the descriptors laid out by the last [`descriptors`](Self::descriptors)
    /// call, records each one's received length (`vm_pkt_size`, capped at the packet's capacity:
    /// a framework bug cannot make a caller read past its buffer) for
    /// [`received_len`](Self::received_len). Call it once per read call.
    ///
    /// ```
    /// let buf = [0u8; 64];
    /// let mut b = vmnet::batch::Batch::new();
    /// b.push([vmnet::iov::iovec_ref(&buf)], 0);
    /// b.descriptors(0..1)[0].vm_pkt_size = 42; // as vmnet_read would
    /// b.record_received();
    /// assert_eq!(b.received_len(0), 42);
    /// ```
    pub fn record_received(&mut self) {
        let from = self.laid_out_from;
        for (k, d) in self.descs.iter().enumerate() {
            let i = from + k;
            self.received[i] = d.vm_pkt_size.min(self.spans[i].len);
        }
    }

    /// Sets the received length of packet `i` (capped at its capacity): for a read that went
    /// through a bounce buffer.
    ///
    /// # Panics
    ///
    /// If `i` is out of range.
    ///
    /// ```
    /// let buf = [0u8; 64];
    /// let mut b = vmnet::batch::Batch::new();
    /// b.push([vmnet::iov::iovec_ref(&buf)], 0);
    /// b.set_received(0, 100);
    /// assert_eq!(b.received_len(0), 64);
    /// ```
    pub fn set_received(&mut self, i: usize, len: usize) {
        if self.received.len() < self.spans.len() {
            self.received.resize(self.spans.len(), 0);
        }
        self.received[i] = len.min(self.spans[i].len);
    }

    /// The length received into packet `i` (0 when nothing was recorded for it).
    ///
    /// ```
    /// let buf = [0u8; 64];
    /// let mut b = vmnet::batch::Batch::new();
    /// b.push([vmnet::iov::iovec_ref(&buf)], 0);
    /// assert_eq!(b.received_len(0), 0);
    /// ```
    pub fn received_len(&self, i: usize) -> usize {
        self.received.get(i).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iov::iovec_ref;

    #[test]
    fn batch_len_caps_at_128_and_the_interface_maximum() {
        assert_eq!(batch_len(1000, 1000), 128);
        assert_eq!(batch_len(1000, 200), 128);
        assert_eq!(batch_len(1000, 64), 64);
        assert_eq!(batch_len(3, 64), 3);
        assert_eq!(batch_len(0, 64), 0);
        // A zero maximum (missing key) still moves one packet at a time.
        assert_eq!(batch_len(5, 0), 1);
    }

    #[test]
    fn chunks_cover_everything_once_in_order() {
        let c: Vec<_> = chunks(10, 4).collect();
        assert_eq!(c, vec![0..4, 4..8, 8..10]);
        assert_eq!(chunks(0, 4).count(), 0);
        assert_eq!(chunks(128, 256).collect::<Vec<_>>(), vec![0..128]);
        assert_eq!(chunks(3, 0).count(), 3);
    }

    /// Checks every call of `calls` against Apple's limits and that `calls` covers `lens` once,
    /// in order.
    fn assert_within_limits(calls: &[Range<usize>], lens: &[usize]) {
        let mut next = 0;
        for c in calls {
            assert_eq!(c.start, next, "{calls:?}");
            assert!(!c.is_empty(), "{calls:?}");
            assert!(c.len() <= MAX_PACKETS_PER_CALL.min(MAX_BATCH), "{calls:?}");
            let bytes: usize = lens[c.clone()].iter().sum();
            assert!(
                bytes <= MAX_BYTES_PER_CALL || c.len() == 1,
                "call {c:?} moves {bytes} bytes"
            );
            next = c.end;
        }
        assert_eq!(next, lens.len());
    }

    #[test]
    fn a_batch_of_large_rx_rooms_is_split_by_bytes() {
        // 128 frames of 64 KiB mergeable rooms (12 + 65553 bytes each): 8 MiB in one call today.
        let lens = vec![12 + 65553; 128];
        let calls = split_calls(lens.iter().copied(), 256, MAX_BYTES_PER_CALL);
        assert_within_limits(&calls, &lens);
        assert_eq!(calls[0], 0..3);
        assert_eq!(calls.len(), 43);
    }

    #[test]
    fn small_packets_are_split_by_count_only() {
        let lens = vec![1514; 300];
        let calls = split_calls(lens.iter().copied(), 256, MAX_BYTES_PER_CALL);
        assert_within_limits(&calls, &lens);
        // 128 * 1514 = 189 KiB: the packet cap binds first.
        assert_eq!(calls, vec![0..128, 128..256, 256..300]);
        // The interface's own maximum binds when lower.
        let calls = split_calls(lens.iter().copied(), 50, MAX_BYTES_PER_CALL);
        assert_eq!(calls[0], 0..50);
        assert_within_limits(&calls, &lens);
    }

    #[test]
    fn mixed_sizes_stay_within_both_limits() {
        let lens: Vec<usize> = (0..500)
            .map(|i| [60, 1514, 9014, 65565, 1526][i % 5])
            .collect();
        for max in [1, 7, 64, 128, 200, 256, 1000] {
            let calls = split_calls(lens.iter().copied(), max, MAX_BYTES_PER_CALL);
            assert_within_limits(&calls, &lens);
            assert!(calls.iter().all(|c| c.len() <= max.max(1)));
        }
        assert!(split_calls(std::iter::empty(), 128, MAX_BYTES_PER_CALL).is_empty());
    }

    #[test]
    fn an_oversized_packet_gets_a_call_of_its_own() {
        let lens = [100, MAX_BYTES_PER_CALL + 1, 100];
        let calls = split_calls(lens, 128, MAX_BYTES_PER_CALL);
        assert_eq!(calls, vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn batch_calls_are_absolute_ranges_of_the_sub_range() {
        let big = vec![0u8; 100 * 1024];
        let mut batch = Batch::new();
        for _ in 0..6 {
            batch.push([iovec_ref(&big)], 0);
        }
        assert_eq!(batch.calls(1..6, 128), vec![1..3, 3..5, 5..6]);
    }

    #[test]
    fn push_capped_trims_the_tail_and_keeps_short_packets() {
        let (a, b) = ([0u8; 10], [0u8; 10]);
        let mut batch = Batch::new();
        assert_eq!(
            batch.push_capped([iovec_ref(&a), iovec_ref(&b)], 0, 10),
            Some(0)
        );
        assert_eq!(batch.packet_iovs(0).len(), 1);
        assert_eq!(batch.packet_len(0), 10);
        assert_eq!(
            batch.push_capped([iovec_ref(&a), iovec_ref(&b)], 2, 100),
            Some(1)
        );
        assert_eq!(batch.packet_len(1), 18);
        assert_eq!(batch.push_capped([iovec_ref(&a)], 0, 0), None);
        assert_eq!(batch.len(), 2);
        // The next packet's iovecs start right after the trimmed ones.
        batch.push([iovec_ref(&b)], 0);
        assert_eq!(batch.packet_iovs(2)[0].iov_len, 10);
        assert_eq!(batch.descriptors(0..3)[2].vm_pkt_iovcnt, 1);
    }

    #[test]
    fn descriptors_point_at_each_packets_iovecs() {
        let (a, b, c) = ([0u8; 10], [0u8; 20], [0u8; 30]);
        let mut batch = Batch::new();
        batch.push([iovec_ref(&a), iovec_ref(&b)], 0);
        batch.push([iovec_ref(&c)], 0);
        let descs = batch.descriptors(0..2).to_vec();
        assert_eq!(descs.len(), 2);
        assert_eq!((descs[0].vm_pkt_size, descs[0].vm_pkt_iovcnt), (30, 2));
        assert_eq!((descs[1].vm_pkt_size, descs[1].vm_pkt_iovcnt), (30, 1));
        assert_eq!(descs[0].vm_flags, 0);
        // SAFETY: the descriptors point into `batch`'s iovec array, alive and unchanged here.
        let second = unsafe { *descs[1].vm_pkt_iov };
        assert_eq!(second.iov_base.cast::<u8>().cast_const(), c.as_ptr());
        // SAFETY: as above; the first packet has two iovecs.
        let first_b = unsafe { *descs[0].vm_pkt_iov.add(1) };
        assert_eq!(first_b.iov_base.cast::<u8>().cast_const(), b.as_ptr());
    }

    #[test]
    fn descriptors_of_a_sub_range_start_at_that_packet() {
        let bufs = [[0u8; 8]; 4];
        let mut batch = Batch::new();
        for b in &bufs {
            batch.push([iovec_ref(b)], 0);
        }
        let d = batch.descriptors(2..4);
        assert_eq!(d.len(), 2);
        // SAFETY: points into the live iovec array of `batch`.
        let iov = unsafe { *d[0].vm_pkt_iov };
        assert_eq!(iov.iov_base.cast::<u8>().cast_const(), bufs[2].as_ptr());
    }

    #[test]
    fn push_with_skip_and_empty_entries_keeps_indices_dense() {
        let (h, d) = ([0u8; 12], [0u8; 50]);
        let empty: [u8; 0] = [];
        let mut batch = Batch::new();
        assert_eq!(batch.push([iovec_ref(&h)], 12), None);
        assert_eq!(
            batch.push([iovec_ref(&h), iovec_ref(&empty), iovec_ref(&d)], 12),
            Some(0)
        );
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.packet_iovs(0).len(), 1);
        assert_eq!(batch.packet_len(0), 50);
    }

    #[test]
    fn read_capacity_check_names_the_first_short_buffer() {
        let (big, small) = ([0u8; 2048], [0u8; 100]);
        let mut batch = Batch::new();
        batch.push([iovec_ref(&big)], 0);
        batch.push([iovec_ref(&small)], 0);
        match batch.check_read_capacity(1514) {
            Err(Error::BufferTooSmall {
                index,
                len,
                required,
            }) => assert_eq!((index, len, required), (1, 100, 1514)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn read_capacity_counts_all_iovecs_of_a_packet() {
        let (a, b) = ([0u8; 1000], [0u8; 600]);
        let mut batch = Batch::new();
        batch.push([iovec_ref(&a), iovec_ref(&b)], 0);
        assert!(batch.check_read_capacity(1514).is_ok());
    }

    #[test]
    fn write_size_check_names_the_first_large_packet() {
        let (ok, big) = ([0u8; 60], [0u8; 1600]);
        let mut batch = Batch::new();
        batch.push([iovec_ref(&ok)], 0);
        batch.push([iovec_ref(&big)], 0);
        assert!(matches!(
            batch.check_write_sizes(1514),
            Err(Error::PacketTooLarge {
                index: 1,
                len: 1600,
                max: 1514
            })
        ));
        assert!(batch.check_write_sizes(1600).is_ok());
    }

    #[test]
    fn received_len_reads_back_the_descriptor_and_is_capped() {
        let (a, b) = ([0u8; 100], [0u8; 100]);
        let mut batch = Batch::new();
        batch.push([iovec_ref(&a)], 0);
        batch.push([iovec_ref(&b)], 0);
        let d = batch.descriptors(0..2);
        d[0].vm_pkt_size = 60;
        d[1].vm_pkt_size = 1000; // a lying framework
        batch.record_received();
        assert_eq!(batch.received_len(0), 60);
        assert_eq!(batch.received_len(1), 100);
    }

    #[test]
    fn received_lengths_of_every_call_are_kept() {
        // A read split into two calls: the first call's lengths must survive the second.
        let bufs = [[0u8; 100]; 4];
        let mut batch = Batch::new();
        for b in &bufs {
            batch.push([iovec_ref(b)], 0);
        }
        for (k, d) in batch.descriptors(0..2).iter_mut().enumerate() {
            d.vm_pkt_size = 10 + k;
        }
        batch.record_received();
        for (k, d) in batch.descriptors(2..4).iter_mut().enumerate() {
            d.vm_pkt_size = 20 + k;
        }
        batch.record_received();
        let got: Vec<usize> = (0..4).map(|i| batch.received_len(i)).collect();
        assert_eq!(got, vec![10, 11, 20, 21]);
    }

    #[test]
    fn clear_keeps_capacity_and_forgets_packets() {
        let a = [0u8; 10];
        let mut batch = Batch::with_capacity(4, 4);
        batch.push([iovec_ref(&a)], 0);
        batch.descriptors(0..1);
        batch.clear();
        assert!(batch.is_empty());
        assert!(batch.descriptors(0..0).is_empty());
    }

    #[test]
    fn vmpktdesc_has_the_c_layout() {
        use std::mem::{align_of, offset_of, size_of};
        assert_eq!(offset_of!(VmPktDesc, vm_pkt_size), 0);
        assert_eq!(offset_of!(VmPktDesc, vm_pkt_iov), size_of::<usize>());
        assert_eq!(offset_of!(VmPktDesc, vm_pkt_iovcnt), 2 * size_of::<usize>());
        assert_eq!(offset_of!(VmPktDesc, vm_flags), 2 * size_of::<usize>() + 4);
        assert_eq!(size_of::<VmPktDesc>(), 3 * size_of::<usize>());
        assert_eq!(align_of::<VmPktDesc>(), align_of::<usize>());
    }
}
