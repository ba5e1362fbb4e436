//! The RX side's buffers: the chains the device took from the guest and not yet used, the frames
//! planned into them for one backend receive, and the used elements that receive produced.

use std::collections::VecDeque;
use std::io;
use std::mem::{offset_of, take};

use virtio_bindings::virtio_net::virtio_net_hdr_v1;
use vm_memory::GuestAddress;

use super::chain::{Descs, RxFrameRoom, SliceRoom, push_slices, write_across};
use super::flat::FlatMem;
use super::{ChainError, PathConfig};
use crate::net::{Backend, GuestSlice, RxFrame, VNET_HDR_LEN};
use crate::scratch::recycle;

/// Where `num_buffers` sits in the virtio-net header (virtio 1.2, section 5.1.6).
const NUM_BUFFERS_OFFSET: usize = offset_of!(virtio_net_hdr_v1, num_buffers);
const _: () = assert!(std::mem::size_of::<virtio_net_hdr_v1>() == VNET_HDR_LEN);

/// One RX chain held by the device: popped from the avail ring, not yet used.
#[derive(Debug)]
struct RxChain {
    head: u16,
    descs: Descs,
    cap: usize,
    /// Filled by the frame being completed: leaves the stash when the batch is done.
    taken: bool,
}

/// The RX chains the device holds and what one receive does with them.
///
/// A round is: [`push`](Self::push) the chains popped from the avail ring,
/// [`plan`](Self::plan) frames into them, [`receive`](Self::receive) from the backend into the
/// planned frames, [`complete`](Self::complete) the frames received (headers, used elements),
/// then publish [`used`](Self::used) in one go. Every vector here is kept from round to round:
/// a round allocates nothing once the largest batch has been seen.
#[derive(Debug, Default)]
pub(super) struct RxBuffers {
    /// Chains popped from the avail ring and not used yet, in ring order.
    stash: VecDeque<RxChain>,
    /// The planned frames, as the number of stashed chains each takes; frame `k` takes the
    /// chains after those of frames `0..k`, from the front of the stash.
    plan: Vec<usize>,
    /// Bytes in each frame the backend filled, virtio-net header included.
    lens: Vec<usize>,
    /// Used elements `(head, length)` of the completed frames, not yet published.
    pub(super) used: Vec<(u16, u32)>,
    /// The iovec scratch: every planned frame's guest slices, one after the other.
    slices: Vec<SliceRoom>,
    /// The range of `slices` each planned frame covers.
    bounds: Vec<(usize, usize)>,
    /// The frames handed to the backend.
    frames: Vec<RxFrameRoom>,
}

impl RxBuffers {
    /// Takes a checked chain with `cap` writable bytes.
    pub(super) fn push(&mut self, head: u16, descs: &[(GuestAddress, u32)], cap: usize) {
        self.stash.push_back(RxChain {
            head,
            descs: Descs::from_slice(descs),
            cap,
            taken: false,
        });
    }

    /// Groups the stashed chains into at most `max_frames` frames, each with room for a whole
    /// frame (`rx_room`); returns how many were planned.
    pub(super) fn plan(&mut self, max_frames: usize, cfg: &PathConfig) -> usize {
        self.plan.clear();
        if !cfg.mrg_rxbuf {
            // One chain per frame: refill_stash only keeps chains that hold a whole one.
            let n = self.stash.len().min(max_frames);
            self.plan.resize(n, 1);
            return n;
        }
        let mut i = 0;
        while self.plan.len() < max_frames && i < self.stash.len() {
            let start = i;
            let mut cap = 0;
            while i < self.stash.len() && cap < cfg.rx_room {
                cap += self.stash[i].cap;
                i += 1;
            }
            if cap < cfg.rx_room {
                break;
            }
            self.plan.push(i - start);
        }
        self.plan.len()
    }

    /// Has the backend fill the planned frames (their first `hdr_skip` bytes left for the
    /// header the device writes); returns how many it filled.
    pub(super) fn receive<'m>(
        &mut self,
        mem: &FlatMem<'m>,
        hdr_skip: usize,
        backend: &mut dyn Backend,
    ) -> io::Result<usize> {
        let mut slices: Vec<GuestSlice<'m>> = recycle(take(&mut self.slices));
        self.bounds.clear();
        let mut chains = self.stash.iter();
        for &count in &self.plan {
            let start = slices.len();
            for (k, chain) in chains.by_ref().take(count).enumerate() {
                let skip = if k == 0 { hdr_skip } else { 0 };
                // Checked against memory when stashed: only unplugged memory fails here, and
                // the frame is then shorter.
                let _ = push_slices(mem, chain.descs.as_slice(), skip, &mut slices);
            }
            self.bounds.push((start, slices.len()));
        }
        let mut frames: Vec<RxFrame<'_, '_>> = recycle(take(&mut self.frames));
        frames.extend(self.bounds.iter().map(|&(s, e)| RxFrame {
            bufs: &slices[s..e],
            len: 0,
        }));
        let got = backend.recv(&mut frames).map(|n| n.min(frames.len()));
        self.lens.clear();
        if let Ok(n) = got {
            self.lens
                .extend(frames[..n].iter().map(|f| f.len + hdr_skip));
        }
        self.frames = recycle(frames);
        self.slices = recycle(slices);
        got
    }

    /// Completes the frames received: writes each one's `num_buffers` (and, for a backend
    /// without headers, the whole header), queues a used element for every chain it filled,
    /// and drops those chains from the stash. A frame the backend left empty uses nothing:
    /// its chains stay, in order, for the next frames. Returns the frames and bytes (headers
    /// excluded) delivered; a header that cannot be written goes to `bad`.
    pub(super) fn complete(
        &mut self,
        mem: &FlatMem<'_>,
        hdr_skip: usize,
        mut bad: impl FnMut(u16, ChainError),
    ) -> (u64, u64) {
        let (mut frames, mut bytes) = (0u64, 0u64);
        let (mut first, mut taken) = (0usize, 0usize);
        for (&count, &len) in self.plan.iter().zip(&self.lens) {
            let chains = self.stash.range_mut(first..first + count);
            first += count;
            if len <= VNET_HDR_LEN {
                continue;
            }
            // The frame fills the chains that hold its `len` bytes: their count is
            // `num_buffers`, and each one's used length is the part of the frame in it.
            let mut remaining = len;
            let mut filled = 0u16;
            for c in chains {
                if remaining == 0 {
                    break;
                }
                let n = remaining.min(c.cap);
                remaining -= n;
                c.taken = true;
                self.used.push((c.head, n as u32));
                filled += 1;
            }
            let head = &self.stash[first - count];
            if let Err(err) = write_num_buffers(mem, head.descs.as_slice(), hdr_skip, filled) {
                bad(head.head, err);
            }
            taken += usize::from(filled);
            frames += 1;
            bytes += (len - VNET_HDR_LEN) as u64;
        }
        if taken == first {
            // Every chain of the received frames was filled (the usual case).
            self.stash.drain(..first);
        } else {
            self.stash.retain(|c| !c.taken);
        }
        (frames, bytes)
    }
}

/// Writes `num_buffers` into a frame's first chain: the whole header when the backend carries
/// none (the device's header is then all zero but for that field), the field alone otherwise.
fn write_num_buffers(
    mem: &FlatMem<'_>,
    descs: &[(GuestAddress, u32)],
    hdr_skip: usize,
    num_buffers: u16,
) -> Result<(), ChainError> {
    let field = num_buffers.to_le_bytes();
    if hdr_skip == VNET_HDR_LEN {
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + field.len()].copy_from_slice(&field);
        write_across(mem, descs, 0, &hdr)
    } else {
        write_across(mem, descs, NUM_BUFFERS_OFFSET, &field)
    }
}
