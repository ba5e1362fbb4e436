//! The linearising fallback for `vmnet_write` and `vmnet_read` (portable: built and tested on
//! every host).
//!
//! Some macOS releases answer `VMNET_INVALID_ARGUMENT` to a `vmnet_write` whose packets have more
//! than one iovec (QEMU's vmnet backend documents this and copies every packet into one buffer).
//! The fallback: when a write with multi-iovec packets fails that way, copy each such packet into
//! one contiguous bounce buffer, retry, and remember that this interface needs it so later writes
//! linearise up front.
//!
//! Reads get the same fallback, for a framework that refuses multi-iovec reads (a guest frame
//! spread over several receive buffers): [`Linearizer::bounce_for_read`] gives each such packet
//! one contiguous buffer of the same capacity, and after the read
//! [`Linearizer::scatter_back`] copies what arrived into the packet's own iovecs. Nobody has
//! seen vmnet refuse a multi-iovec read; the fallback exists so that a system which does still
//! delivers frames.
//!
//! ```
//! use vmnet::{Status, batch::Batch, iov::iovec_ref, linearize::Linearizer};
//!
//! let (hdr, body) = ([1u8, 2], [3u8, 4, 5]);
//! let mut batch = Batch::new();
//! batch.push([iovec_ref(&hdr), iovec_ref(&body)], 0);
//!
//! let mut lin = Linearizer::new();
//! assert!(lin.should_fall_back(Status::InvalidArgument, &batch, 0..1));
//! lin.mark_needed();
//! // SAFETY: the batch's iovecs describe `hdr` and `body`, alive for the call.
//! let flat = unsafe { lin.linearize(&batch, 0..1) };
//! assert_eq!(flat.packet_iovs(0).len(), 1);
//! assert_eq!(flat.packet_len(0), 5);
//! ```

use std::ops::Range;

use crate::batch::Batch;
use crate::error::Status;
use crate::iov::{gather, iovec_from, scatter};

/// Bounce buffers and the "this interface needs linear packets" flag.
#[derive(Debug, Default)]
pub struct Linearizer {
    bufs: Vec<Vec<u8>>,
    out: Batch,
    /// For reads: per packet of `out`, the bounce buffer it uses (`None`: passed through).
    bounced: Vec<Option<usize>>,
    needed: bool,
    copies: u64,
}

impl Linearizer {
    /// A linearizer that has not yet seen the framework refuse a multi-iovec packet.
    ///
    /// ```
    /// assert!(!vmnet::linearize::Linearizer::new().is_needed());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether writes on this interface must be linearised before the call.
    ///
    /// ```
    /// let mut l = vmnet::linearize::Linearizer::new();
    /// l.mark_needed();
    /// assert!(l.is_needed());
    /// ```
    pub fn is_needed(&self) -> bool {
        self.needed
    }

    /// Remembers that the framework refused multi-iovec packets.
    ///
    /// ```
    /// let mut l = vmnet::linearize::Linearizer::new();
    /// l.mark_needed();
    /// assert!(l.is_needed());
    /// ```
    pub fn mark_needed(&mut self) {
        self.needed = true;
    }

    /// How many packets were copied into bounce buffers so far.
    ///
    /// ```
    /// assert_eq!(vmnet::linearize::Linearizer::new().copies(), 0);
    /// ```
    pub fn copies(&self) -> u64 {
        self.copies
    }

    /// Whether a read or write of `batch[range]` that failed with `status` should be retried
    /// linearised:
    /// the status is `VMNET_INVALID_ARGUMENT`, some packet had several iovecs, and the fallback
    /// is not already in use (if it is, the refusal has another cause).
    ///
    /// ```
    /// use vmnet::{Status, batch::Batch, iov::iovec_ref, linearize::Linearizer};
    ///
    /// let buf = [0u8; 8];
    /// let mut b = Batch::new();
    /// b.push([iovec_ref(&buf)], 0);
    /// // A single-iovec packet refused as invalid is not the multi-iovec quirk.
    /// assert!(!Linearizer::new().should_fall_back(Status::InvalidArgument, &b, 0..1));
    /// ```
    pub fn should_fall_back(&self, status: Status, batch: &Batch, range: Range<usize>) -> bool {
        !self.needed && status == Status::InvalidArgument && batch.has_multi_iov(range)
    }

    /// Whether a read or write of `batch[range]` goes through bounce buffers up front: the
    /// framework refused multi-iovec packets before, and some packet of the range has several.
    ///
    /// ```
    /// use vmnet::{batch::Batch, iov::iovec_ref, linearize::Linearizer};
    ///
    /// let (a, b) = ([0u8; 4], [0u8; 4]);
    /// let mut batch = Batch::new();
    /// batch.push([iovec_ref(&a), iovec_ref(&b)], 0);
    /// let mut lin = Linearizer::new();
    /// assert!(!lin.bounces_up_front(&batch, 0..1));
    /// lin.mark_needed();
    /// assert!(lin.bounces_up_front(&batch, 0..1));
    /// ```
    pub fn bounces_up_front(&self, batch: &Batch, range: Range<usize>) -> bool {
        self.needed && batch.has_multi_iov(range)
    }

    /// A batch holding the packets `src[range]` with one iovec each: single-iovec packets are
    /// passed through, the others are copied into bounce buffers owned by `self`.
    ///
    /// The result borrows `self`; it stays valid until the next call.
    ///
    /// # Safety
    ///
    /// Every iovec of the packets in `src[range]` must be valid for reads of its length for the
    /// duration of this call, and — for single-iovec packets, which are passed through — for as
    /// long as the returned batch is used.
    pub unsafe fn linearize(&mut self, src: &Batch, range: Range<usize>) -> &mut Batch {
        self.out.clear();
        let multi = range
            .clone()
            .filter(|&i| src.packet_iovs(i).len() > 1)
            .count();
        if self.bufs.len() < multi {
            self.bufs.resize_with(multi, Vec::new);
        }
        let mut next = 0;
        for i in range {
            let iovs = src.packet_iovs(i);
            if iovs.len() == 1 {
                self.out.push([iovs[0]], 0);
                continue;
            }
            let buf = &mut self.bufs[next];
            next += 1;
            buf.clear();
            buf.resize(src.packet_len(i), 0);
            // SAFETY: the caller guarantees the packet's iovecs are readable; `buf` is our own
            // allocation and cannot overlap them.
            let n = unsafe { gather(iovs, buf) };
            debug_assert_eq!(n, buf.len());
            self.out.push([iovec_from(buf.as_mut_ptr(), n)], 0);
            self.copies += 1;
        }
        &mut self.out
    }
}

impl Linearizer {
    /// For a read into `dst[range]`: a batch in which every multi-iovec packet of `dst[range]` is
    /// replaced by one contiguous bounce buffer of the same capacity, single-iovec packets being
    /// passed through. Read into it (one call, all its packets), then call
    /// [`scatter_back`](Self::scatter_back).
    ///
    /// Safe: it only copies addresses and sizes its own buffers; the read is where memory is
    /// vouched for.
    ///
    /// ```
    /// use vmnet::{batch::Batch, iov::iovec_mut, linearize::Linearizer};
    ///
    /// let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
    /// let mut dst = Batch::new();
    /// dst.push([iovec_mut(&mut a), iovec_mut(&mut b)], 0);
    /// let mut lin = Linearizer::new();
    /// let bounce = lin.bounce_for_read(&dst, 0..1);
    /// assert_eq!(bounce.packet_iovs(0).len(), 1);
    /// assert_eq!(bounce.packet_len(0), 8);
    /// ```
    pub fn bounce_for_read(&mut self, dst: &Batch, range: Range<usize>) -> &mut Batch {
        self.out.clear();
        self.bounced.clear();
        let mut next = 0;
        for i in range {
            let iovs = dst.packet_iovs(i);
            if iovs.len() == 1 {
                self.out.push([iovs[0]], 0);
                self.bounced.push(None);
                continue;
            }
            if self.bufs.len() <= next {
                self.bufs.push(Vec::new());
            }
            let buf = &mut self.bufs[next];
            buf.clear();
            buf.resize(dst.packet_len(i), 0);
            self.out.push([iovec_from(buf.as_mut_ptr(), buf.len())], 0);
            self.bounced.push(Some(next));
            next += 1;
        }
        &mut self.out
    }

    /// After a read of `got` packets into the batch of the last
    /// [`bounce_for_read`](Self::bounce_for_read)`(dst, range)` (whose received lengths were
    /// recorded with [`Batch::record_received`]): copies each bounced packet's bytes into its
    /// iovecs in `dst`, and sets every read packet's received length in `dst`.
    ///
    /// # Safety
    ///
    /// Every iovec of the first `got` packets of `dst[range]` must be valid for writes of its
    /// length for the duration of the call, and not be accessed through any other path
    /// meanwhile.
    ///
    /// # Panics
    ///
    /// If `range` is not the range of the last `bounce_for_read`, or `got` exceeds it.
    ///
    /// ```
    /// use vmnet::{batch::Batch, iov::iovec_mut, linearize::Linearizer};
    ///
    /// let (mut a, mut b) = ([0u8; 2], [0u8; 4]);
    /// let mut dst = Batch::new();
    /// dst.push([iovec_mut(&mut a), iovec_mut(&mut b)], 0);
    /// let mut lin = Linearizer::new();
    /// let bounce = lin.bounce_for_read(&dst, 0..1);
    /// // What vmnet_read would do: fill the bounce buffer and say how much.
    /// let iov = bounce.packet_iovs(0)[0];
    /// // SAFETY: the bounce buffer is 6 bytes long and owned by `lin`.
    /// unsafe { std::ptr::copy_nonoverlapping([1u8, 2, 3].as_ptr(), iov.iov_base.cast(), 3) };
    /// bounce.descriptors(0..1)[0].vm_pkt_size = 3;
    /// bounce.record_received();
    /// // SAFETY: `a` and `b` are live and only reached through `dst` here.
    /// unsafe { lin.scatter_back(&mut dst, 0..1, 1) };
    /// assert_eq!(dst.received_len(0), 3);
    /// assert_eq!((a, b), ([1, 2], [3, 0, 0, 0]));
    /// ```
    pub unsafe fn scatter_back(&mut self, dst: &mut Batch, range: Range<usize>, got: usize) {
        assert_eq!(
            range.len(),
            self.bounced.len(),
            "not the last bounced range"
        );
        assert!(got <= range.len());
        for k in 0..got {
            let i = range.start + k;
            let len = self.out.received_len(k);
            if let Some(b) = self.bounced[k] {
                let src = &self.bufs[b][..len.min(self.bufs[b].len())];
                // SAFETY: the caller guarantees the packet's iovecs are writable and not
                // otherwise accessed; `src` is our own allocation and cannot overlap them.
                unsafe { scatter(src, dst.packet_iovs(i)) };
                self.copies += 1;
            }
            dst.set_received(i, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iov::iovec_ref;

    fn bytes(batch: &Batch, i: usize) -> Vec<u8> {
        let mut out = vec![0u8; batch.packet_len(i)];
        // SAFETY: the test's batches describe live local arrays or the linearizer's buffers.
        let n = unsafe { gather(batch.packet_iovs(i), &mut out) };
        out.truncate(n);
        out
    }

    #[test]
    fn multi_iovec_packets_become_one_contiguous_copy() {
        let (a, b, c) = ([1u8, 2], [3u8], [4u8, 5, 6]);
        let mut src = Batch::new();
        src.push([iovec_ref(&a), iovec_ref(&b), iovec_ref(&c)], 0);
        let mut lin = Linearizer::new();
        // SAFETY: the iovecs describe live local arrays.
        let out = unsafe { lin.linearize(&src, 0..1) };
        assert_eq!(out.len(), 1);
        assert_eq!(out.packet_iovs(0).len(), 1);
        assert_eq!(bytes(out, 0), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(lin.copies(), 1);
    }

    #[test]
    fn single_iovec_packets_pass_through_without_a_copy() {
        let a = [7u8; 10];
        let mut src = Batch::new();
        src.push([iovec_ref(&a)], 0);
        let mut lin = Linearizer::new();
        // SAFETY: the iovec describes a live local array.
        let out = unsafe { lin.linearize(&src, 0..1) };
        let iov = out.packet_iovs(0)[0];
        assert_eq!(iov.iov_base.cast::<u8>().cast_const(), a.as_ptr());
        assert_eq!(lin.copies(), 0);
    }

    #[test]
    fn mixed_batches_keep_packet_order() {
        let (a, b, c, d) = ([1u8], [2u8, 3], [4u8], [5u8, 6]);
        let mut src = Batch::new();
        src.push([iovec_ref(&a), iovec_ref(&b)], 0);
        src.push([iovec_ref(&c)], 0);
        src.push([iovec_ref(&d), iovec_ref(&a)], 0);
        let mut lin = Linearizer::new();
        // SAFETY: the iovecs describe live local arrays.
        let out = unsafe { lin.linearize(&src, 0..3) };
        assert_eq!(out.len(), 3);
        assert_eq!(bytes(out, 0), vec![1, 2, 3]);
        assert_eq!(bytes(out, 1), vec![4]);
        assert_eq!(bytes(out, 2), vec![5, 6, 1]);
        assert!(!out.has_multi_iov(0..3));
    }

    #[test]
    fn a_sub_range_is_linearised_alone() {
        let (a, b) = ([1u8], [2u8]);
        let mut src = Batch::new();
        src.push([iovec_ref(&a)], 0);
        src.push([iovec_ref(&a), iovec_ref(&b)], 0);
        let mut lin = Linearizer::new();
        // SAFETY: the iovecs describe live local arrays.
        let out = unsafe { lin.linearize(&src, 1..2) };
        assert_eq!(out.len(), 1);
        assert_eq!(bytes(out, 0), vec![1, 2]);
    }

    #[test]
    fn bounce_buffers_are_reused_across_calls() {
        let (a, b) = ([1u8; 100], [2u8; 100]);
        let mut src = Batch::new();
        src.push([iovec_ref(&a), iovec_ref(&b)], 0);
        let mut lin = Linearizer::new();
        // SAFETY: the iovecs describe live local arrays.
        let p1 = unsafe { lin.linearize(&src, 0..1) }.packet_iovs(0)[0].iov_base;
        // SAFETY: as above.
        let p2 = unsafe { lin.linearize(&src, 0..1) }.packet_iovs(0)[0].iov_base;
        assert_eq!(p1, p2);
        assert_eq!(lin.copies(), 2);
    }

    #[test]
    fn falls_back_only_for_invalid_argument_on_multi_iovec_batches() {
        let (a, b) = ([0u8; 4], [0u8; 4]);
        let mut multi = Batch::new();
        multi.push([iovec_ref(&a), iovec_ref(&b)], 0);
        let lin = Linearizer::new();
        assert!(lin.should_fall_back(Status::InvalidArgument, &multi, 0..1));
        for s in Status::ALL
            .into_iter()
            .filter(|s| *s != Status::InvalidArgument)
        {
            assert!(!lin.should_fall_back(s, &multi, 0..1), "{s:?}");
        }
    }

    /// What `vmnet_read` does to one packet of a batch: writes `data` into its iovecs and its
    /// length into the descriptor.
    fn fake_read(batch: &mut Batch, k: usize, data: &[u8]) {
        // SAFETY: the tests' batches describe live local arrays or the linearizer's buffers.
        unsafe { scatter(data, batch.packet_iovs(k)) };
    }

    #[test]
    fn a_multi_iovec_read_lands_in_the_guest_buffers_through_a_bounce() {
        use crate::iov::iovec_mut;
        let (mut a, mut b, mut c) = ([0u8; 3], [0u8; 5], [0u8; 8]);
        let (pa, pc) = (a.as_ptr(), c.as_ptr());
        let mut dst = Batch::new();
        // Packet 0 is spread over two buffers (a frame over mergeable RX buffers); packet 1 is
        // one buffer and is read in place.
        dst.push([iovec_mut(&mut a), iovec_mut(&mut b)], 0);
        dst.push([iovec_mut(&mut c)], 0);
        let mut lin = Linearizer::new();
        let bounce = lin.bounce_for_read(&dst, 0..2);
        assert_eq!(bounce.len(), 2);
        assert!(!bounce.has_multi_iov(0..2));
        assert_eq!(bounce.packet_len(0), 8);
        assert_ne!(
            bounce.packet_iovs(0)[0].iov_base.cast::<u8>().cast_const(),
            pa
        );
        assert_eq!(
            bounce.packet_iovs(1)[0].iov_base.cast::<u8>().cast_const(),
            pc
        );
        fake_read(bounce, 0, &[1, 2, 3, 4, 5, 6]);
        fake_read(bounce, 1, &[9, 9]);
        let d = bounce.descriptors(0..2);
        d[0].vm_pkt_size = 6;
        d[1].vm_pkt_size = 2;
        bounce.record_received();
        // SAFETY: the iovecs of `dst` describe live local arrays not otherwise accessed.
        unsafe { lin.scatter_back(&mut dst, 0..2, 2) };
        assert_eq!((dst.received_len(0), dst.received_len(1)), (6, 2));
        assert_eq!(lin.copies(), 1);
        assert_eq!(a, [1, 2, 3]);
        assert_eq!(b, [4, 5, 6, 0, 0]);
        assert_eq!(&c[..2], &[9, 9]);
    }

    #[test]
    fn scatter_back_of_a_sub_range_and_a_short_read() {
        use crate::iov::iovec_mut;
        let mut bufs = [[0u8; 4]; 6];
        let mut dst = Batch::new();
        {
            let [b0, b1, b2, b3, b4, b5] = &mut bufs;
            dst.push([iovec_mut(b0)], 0);
            dst.push([iovec_mut(b1), iovec_mut(b2)], 0);
            dst.push([iovec_mut(b3), iovec_mut(b4), iovec_mut(b5)], 0);
        }
        let mut lin = Linearizer::new();
        let bounce = lin.bounce_for_read(&dst, 1..3);
        assert_eq!((bounce.packet_len(0), bounce.packet_len(1)), (8, 12));
        fake_read(bounce, 0, &[7; 8]);
        bounce.descriptors(0..2)[0].vm_pkt_size = 8;
        bounce.record_received();
        // vmnet had one packet only: the second bounced packet is not copied.
        // SAFETY: the iovecs of `dst` describe `bufs`, live and not otherwise accessed.
        unsafe { lin.scatter_back(&mut dst, 1..3, 1) };
        assert_eq!(dst.received_len(1), 8);
        assert_eq!(dst.received_len(2), 0);
        assert_eq!(bufs[1], [7; 4]);
        assert_eq!(bufs[2], [7; 4]);
        assert_eq!(bufs[3], [0; 4]);
        assert_eq!(bufs[0], [0; 4]);
    }

    #[test]
    fn a_lying_read_length_copies_no_more_than_the_capacity() {
        use crate::iov::iovec_mut;
        let (mut a, mut b) = ([0u8; 2], [0u8; 2]);
        let mut dst = Batch::new();
        dst.push([iovec_mut(&mut a), iovec_mut(&mut b)], 0);
        let mut lin = Linearizer::new();
        let bounce = lin.bounce_for_read(&dst, 0..1);
        fake_read(bounce, 0, &[5; 4]);
        bounce.descriptors(0..1)[0].vm_pkt_size = 10_000;
        bounce.record_received();
        // SAFETY: as above.
        unsafe { lin.scatter_back(&mut dst, 0..1, 1) };
        assert_eq!(dst.received_len(0), 4);
        assert_eq!((a, b), ([5; 2], [5; 2]));
    }

    #[test]
    fn reads_and_writes_take_the_direct_path_until_a_refusal_then_bounce() {
        use crate::iov::iovec_mut;
        let (mut a, mut b, mut c) = ([0u8; 4], [0u8; 4], [0u8; 8]);
        let mut rx = Batch::new();
        rx.push([iovec_mut(&mut a), iovec_mut(&mut b)], 0);
        rx.push([iovec_mut(&mut c)], 0);
        let mut lin = Linearizer::new();
        // First read: direct; a refusal of the multi-iovec packet switches to bouncing.
        assert!(!lin.bounces_up_front(&rx, 0..2));
        assert!(lin.should_fall_back(Status::InvalidArgument, &rx, 0..2));
        // A refusal of single-iovec packets only has another cause.
        assert!(!lin.should_fall_back(Status::InvalidArgument, &rx, 1..2));
        lin.mark_needed();
        assert!(lin.bounces_up_front(&rx, 0..2));
        // Calls without multi-iovec packets stay direct even then.
        assert!(!lin.bounces_up_front(&rx, 1..2));
    }

    #[test]
    fn no_second_fallback_once_linearising() {
        let (a, b) = ([0u8; 4], [0u8; 4]);
        let mut multi = Batch::new();
        multi.push([iovec_ref(&a), iovec_ref(&b)], 0);
        let mut lin = Linearizer::new();
        lin.mark_needed();
        assert!(!lin.should_fall_back(Status::InvalidArgument, &multi, 0..1));
    }
}
