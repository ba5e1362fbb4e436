//! The linearising fallback for `vmnet_write` (portable: built and tested on every host).
//!
//! Some macOS releases answer `VMNET_INVALID_ARGUMENT` to a `vmnet_write` whose packets have more
//! than one iovec (QEMU's vmnet backend documents this and copies every packet into one buffer).
//! The fallback: when a write with multi-iovec packets fails that way, copy each such packet into
//! one contiguous bounce buffer, retry, and remember that this interface needs it so later writes
//! linearise up front.
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
use crate::iov::{gather, iovec_from};

/// Bounce buffers and the "this interface needs linear packets" flag.
#[derive(Debug, Default)]
pub struct Linearizer {
    bufs: Vec<Vec<u8>>,
    out: Batch,
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

    /// Whether a write of `batch[range]` that failed with `status` should be retried linearised:
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
