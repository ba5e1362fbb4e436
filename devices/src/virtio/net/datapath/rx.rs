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
    /// How many frames the next round plans at most: see [`plan`](Self::plan).
    want: usize,
    /// Frames received by the rounds of the pass under way.
    pass_got: usize,
}

/// The fewest frames a round plans: one for the frame that woke the device, one more to find
/// out whether another is waiting.
const MIN_PLAN: usize = 2;

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
    ///
    /// A pass's first round plans as many frames as the last pass received (at least
    /// [`MIN_PLAN`]), and a round that fills its plan is followed by one with twice as many, up
    /// to `max_frames`: a trickle of frames does not pay for a full batch of rooms it leaves
    /// empty (with mergeable buffers a room for a 64 KiB frame is some 40 guest buffers of
    /// 1.5 KiB, each one a slice to build and an iovec for the backend), and a burst as large
    /// as the last one is taken in one round.
    pub(super) fn plan(&mut self, max_frames: usize, cfg: &PathConfig) -> usize {
        self.plan.clear();
        let max_frames = max_frames.min(self.want.max(MIN_PLAN));
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
        let n = *got.as_ref().unwrap_or(&0);
        self.pass_got += n;
        if n == frames.len() {
            self.want = n.saturating_mul(2);
        } else {
            // Fewer than planned: the backend has nothing more, and the pass ends.
            self.want = take(&mut self.pass_got);
        }
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
        // The chains filled are most often the first ones of the stash: every chain of the
        // frames received, or (one small frame) the first few of its room. Only frames that
        // left part of their room empty before another frame leave gaps to close.
        let prefix = self.stash.iter().take_while(|c| c.taken).count();
        if prefix == taken {
            self.stash.drain(..prefix);
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

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::{AsFd, BorrowedFd};

    use vm_memory::Bytes;

    use super::*;
    use crate::net::{BackendInfo, Offloads, TxFrame};
    use crate::virtio::GuestMemory;

    /// Guest buffers of the size Linux posts with mergeable buffers and small frames.
    const BUF: u32 = 1536;
    /// Room for a 64 KiB frame, as with `GUEST_TSO4` negotiated.
    const ROOM: usize = 65562;

    /// A backend that fills the frames of a script, one entry per call (how many frames, of
    /// what length), and records how many frames each call was offered.
    struct Scripted {
        script: VecDeque<(usize, usize)>,
        offered: Vec<usize>,
        null: File,
    }

    impl Backend for Scripted {
        fn info(&self) -> BackendInfo {
            BackendInfo::default()
        }
        fn ready_fd(&self) -> BorrowedFd<'_> {
            self.null.as_fd()
        }
        fn recv(&mut self, frames: &mut [RxFrame<'_, '_>]) -> io::Result<usize> {
            self.offered.push(frames.len());
            let (n, len) = self.script.pop_front().unwrap_or((0, 0));
            let n = n.min(frames.len());
            for f in &mut frames[..n] {
                f.len = len;
            }
            Ok(n)
        }
        fn send(&mut self, _: &[TxFrame<'_, '_>]) -> io::Result<usize> {
            Ok(0)
        }
        fn set_rx_offloads(&mut self, _: Offloads) -> io::Result<()> {
            Ok(())
        }
    }

    fn cfg() -> PathConfig {
        PathConfig {
            backend_vnet_hdr: true,
            mrg_rxbuf: true,
            rx_room: ROOM,
            tx_max: ROOM,
            rx_batch: 64,
            tx_batch: 64,
        }
    }

    /// One round as the data path runs it; returns the used elements it produced.
    fn round(bufs: &mut RxBuffers, mem: &FlatMem<'_>, be: &mut Scripted) -> Vec<(u16, u32)> {
        if bufs.plan(64, &cfg()) > 0 {
            bufs.receive(mem, 0, be).unwrap();
            bufs.complete(mem, 0, |h, e| panic!("chain {h}: {e:?}"));
        }
        take(&mut bufs.used)
    }

    #[test]
    fn a_trickle_of_small_frames_plans_two_rooms_and_a_burst_doubles_them() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let flat = FlatMem::new(&mem);
        let mut bufs = RxBuffers::default();
        for head in 0..1024u16 {
            let at = GuestAddress(u64::from(head) * u64::from(BUF));
            bufs.push(head, &[(at, BUF)], BUF as usize);
        }
        let chains_per_room = ROOM.div_ceil(BUF as usize); // 43
        let mut be = Scripted {
            // One small frame, nothing, then a burst of 2 + 4 + 5: the plan follows what
            // arrives, and the pass after the burst starts where the burst ended.
            script: [(1, 76), (0, 0), (2, 76), (4, 76), (5, 76), (0, 0)].into(),
            offered: Vec::new(),
            null: File::open("/dev/null").unwrap(),
        };

        // One 64-byte frame fills one buffer, the first of the stash; the rest stay, in order.
        assert_eq!(round(&mut bufs, &flat, &mut be), [(0, 76)]);
        assert_eq!(bufs.stash.front().map(|c| c.head), Some(1));
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(NUM_BUFFERS_OFFSET as u64))
                .unwrap(),
            1
        );
        assert!(round(&mut bufs, &flat, &mut be).is_empty());
        // Two frames in two rooms: the second starts a room further on, and the buffers
        // between the two stay for the next frames.
        let room = chains_per_room as u16;
        assert_eq!(round(&mut bufs, &flat, &mut be), [(1, 76), (1 + room, 76)]);
        assert_eq!(bufs.stash.len(), 1023 - 2);
        assert_eq!(bufs.stash[0].head, 2);
        assert_eq!(bufs.stash[room as usize - 1].head, 2 + room);
        for _ in 0..3 {
            round(&mut bufs, &flat, &mut be);
        }
        assert_eq!(be.offered, [2, 2, 2, 4, 8, 11]);
    }
}
