//! One batch of TX chains: checked when popped, handed to the backend in one call.

use std::io;
use std::mem::take;

use virtio_queue::DescriptorChain;
use vm_memory::GuestAddress;

use super::ChainError;
use super::chain::{SliceRoom, TxFrameRoom, collect_chain, push_slices};
use super::flat::FlatMem;
use crate::net::{Backend, GuestSlice, TxFrame, VNET_HDR_LEN};
use crate::scratch::recycle;

/// The TX chains of one backend send.
///
/// A round is: [`clear`](Self::clear), [`add`](Self::add) each popped chain (a malformed one is
/// refused and stays out, queued in [`used`](Self::used) by the caller), [`send`](Self::send),
/// then [`return_chains`](Self::return_chains) and publish `used`. The vectors are kept from
/// batch to batch: a batch allocates nothing once the largest one has been seen.
#[derive(Debug, Default)]
pub(super) struct TxBatch {
    /// Each frame's head index and range of `descs`.
    heads: Vec<(u16, usize, usize)>,
    /// The descriptors of every frame, one frame after the other.
    descs: Vec<(GuestAddress, u32)>,
    /// The iovec scratch: every frame's guest slices, one after the other.
    slices: Vec<SliceRoom>,
    /// The range of `slices` each frame covers.
    bounds: Vec<(usize, usize)>,
    /// The frames handed to the backend.
    frames: Vec<TxFrameRoom>,
    /// Used elements `(head, length)` of the chains done with, not yet published.
    pub(super) used: Vec<(u16, u32)>,
}

impl TxBatch {
    /// Empties the batch (keeping its buffers).
    pub(super) fn clear(&mut self) {
        self.heads.clear();
        self.descs.clear();
    }

    /// Frames in the batch.
    pub(super) fn len(&self) -> usize {
        self.heads.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// Queues every chain of the batch in [`used`](Self::used), length 0 (the device wrote
    /// nothing into them).
    pub(super) fn return_chains(&mut self) {
        self.used.extend(self.heads.iter().map(|h| (h.0, 0)));
    }

    /// Checks a chain and adds it to the batch: device-readable descriptors in guest memory,
    /// more than the virtio-net header and at most `tx_max` bytes in all.
    pub(super) fn add(
        &mut self,
        chain: DescriptorChain<&FlatMem<'_>>,
        mem: &FlatMem<'_>,
        tx_max: usize,
    ) -> Result<(), ChainError> {
        let head = chain.head_index();
        let start = self.descs.len();
        let len = collect_chain(chain, false, mem, &mut self.descs)?;
        let refused = if len > tx_max {
            Some(ChainError::Oversized)
        } else if len <= VNET_HDR_LEN {
            Some(ChainError::BadLength)
        } else {
            None
        };
        if let Some(err) = refused {
            self.descs.truncate(start);
            return Err(err);
        }
        self.heads.push((head, start, self.descs.len()));
        Ok(())
    }

    /// Hands the batch to the backend, each frame without its first `hdr_skip` bytes. Returns
    /// how many frames the backend took (or its error) and their bytes as sent.
    pub(super) fn send<'m>(
        &mut self,
        mem: &FlatMem<'m>,
        hdr_skip: usize,
        backend: &mut dyn Backend,
    ) -> (io::Result<usize>, usize) {
        let mut slices: Vec<GuestSlice<'m>> = recycle(take(&mut self.slices));
        self.bounds.clear();
        for &(_, start, end) in &self.heads {
            let s = slices.len();
            // The chains were checked against memory when added; a failure here cannot
            // happen short of memory being unplugged, and then sends a shorter frame.
            let _ = push_slices(mem, &self.descs[start..end], hdr_skip, &mut slices);
            self.bounds.push((s, slices.len()));
        }
        let mut frames: Vec<TxFrame<'_, '_>> = recycle(take(&mut self.frames));
        frames.extend(self.bounds.iter().map(|&(s, e)| TxFrame {
            bufs: &slices[s..e],
        }));
        let sent = backend.send(&frames).map(|n| n.min(frames.len()));
        let bytes = match sent {
            Ok(n) => frames[..n].iter().map(TxFrame::len).sum(),
            Err(_) => 0,
        };
        self.frames = recycle(frames);
        self.slices = recycle(slices);
        (sent, bytes)
    }
}
