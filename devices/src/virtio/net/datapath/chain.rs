//! Descriptor chains as the data path holds them: checked once when popped, then walked as
//! `(address, length)` pairs and turned into slices of guest memory for the backend.

use vm_memory::{Bytes, GuestAddress};

use super::ChainError;
use super::flat::FlatMem;
use crate::net::{GuestSlice, RxFrame, TxFrame};
use virtio_queue::DescriptorChain;

/// An empty place in a kept scratch vector for one [`GuestSlice`]: the same size and alignment
/// without the borrow of guest memory (and without the raw pointer that would make the data
/// path `!Send`). [`crate::scratch::recycle`] turns the vector into one of slices for a batch
/// and back, keeping its buffer.
pub(super) type SliceRoom = [usize; 3];
/// The same for one [`RxFrame`].
pub(super) type RxFrameRoom = [usize; 3];
/// The same for one [`TxFrame`].
pub(super) type TxFrameRoom = [usize; 2];

// The buffer is only kept when the layouts match; a vm-memory whose slices change shape must
// change the rooms above, not silently allocate per batch.
const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<GuestSlice<'static>>() == size_of::<SliceRoom>());
    assert!(align_of::<GuestSlice<'static>>() == align_of::<SliceRoom>());
    assert!(size_of::<RxFrame<'static, 'static>>() == size_of::<RxFrameRoom>());
    assert!(align_of::<RxFrame<'static, 'static>>() == align_of::<RxFrameRoom>());
    assert!(size_of::<TxFrame<'static, 'static>>() == size_of::<TxFrameRoom>());
    assert!(align_of::<TxFrame<'static, 'static>>() == align_of::<TxFrameRoom>());
};

/// The descriptors of one chain: inline for the usual one or two, on the heap beyond, so that
/// holding a chain costs no allocation on the hot path.
#[derive(Debug)]
pub(super) enum Descs {
    Inline(usize, [(GuestAddress, u32); 2]),
    Heap(Vec<(GuestAddress, u32)>),
}

impl Descs {
    pub(super) fn from_slice(d: &[(GuestAddress, u32)]) -> Self {
        if d.len() <= 2 {
            let mut a = [(GuestAddress(0), 0); 2];
            a[..d.len()].copy_from_slice(d);
            Self::Inline(d.len(), a)
        } else {
            Self::Heap(d.to_vec())
        }
    }

    pub(super) fn as_slice(&self) -> &[(GuestAddress, u32)] {
        match self {
            Self::Inline(n, a) => &a[..*n],
            Self::Heap(v) => v,
        }
    }
}

/// Walks a chain, checks each descriptor, and appends `(addr, len)` of each to `out`.
/// Returns the chain's total length. On error `out` is left as it was.
pub(super) fn collect_chain(
    chain: DescriptorChain<&FlatMem<'_>>,
    writable: bool,
    mem: &FlatMem<'_>,
    out: &mut Vec<(GuestAddress, u32)>,
) -> Result<usize, ChainError> {
    let start = out.len();
    let mut total = 0usize;
    let mut ended = false;
    let result = (|| {
        for d in chain {
            if d.is_write_only() != writable {
                return Err(ChainError::WrongDirection);
            }
            if d.len() == 0 {
                return Err(ChainError::ZeroLength);
            }
            if !mem.check(d.addr(), d.len() as usize) {
                return Err(ChainError::OutsideMemory);
            }
            total += d.len() as usize;
            out.push((d.addr(), d.len()));
            ended = !d.has_next();
        }
        // The iterator stops early, with the last descriptor still saying "next", on a loop, a
        // chain longer than the queue, a next index outside the table or a bad indirect table.
        if ended {
            Ok(total)
        } else {
            Err(ChainError::Malformed)
        }
    })();
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Appends the slices of guest memory that `descs` cover to `out`, skipping the first `skip`
/// bytes. Zero-length pieces are left out (vmnet rejects zero-length iovecs).
pub(super) fn push_slices<'m>(
    mem: &FlatMem<'m>,
    descs: &[(GuestAddress, u32)],
    mut skip: usize,
    out: &mut Vec<GuestSlice<'m>>,
) -> Result<(), ChainError> {
    for &(addr, len) in descs {
        let len = len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let addr = addr
            .0
            .checked_add(skip as u64)
            .ok_or(ChainError::OutsideMemory)?;
        let (addr, len) = (GuestAddress(addr), len - skip);
        skip = 0;
        // The usual case: the whole range in one region.
        if let Some(s) = mem.slice(addr, len) {
            out.push(s);
            continue;
        }
        for s in mem.slices(addr, len) {
            let s = s.map_err(|_| ChainError::OutsideMemory)?;
            if !s.is_empty() {
                out.push(s);
            }
        }
    }
    Ok(())
}

/// Writes `bytes` at `offset` into the memory that `descs` cover.
pub(super) fn write_across(
    mem: &FlatMem<'_>,
    descs: &[(GuestAddress, u32)],
    mut offset: usize,
    bytes: &[u8],
) -> Result<(), ChainError> {
    let mut rest = bytes;
    for &(addr, len) in descs {
        if rest.is_empty() {
            break;
        }
        let len = len as usize;
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = rest.len().min(len - offset);
        let at = addr
            .0
            .checked_add(offset as u64)
            .ok_or(ChainError::OutsideMemory)?;
        match mem.slice(GuestAddress(at), n) {
            Some(s) => s.copy_from(&rest[..n]),
            // Across regions (or outside memory, which the write then refuses).
            None => mem
                .write_slice(&rest[..n], GuestAddress(at))
                .map_err(|_| ChainError::OutsideMemory)?,
        }
        rest = &rest[n..];
        offset = 0;
    }
    if rest.is_empty() {
        Ok(())
    } else {
        Err(ChainError::BadLength)
    }
}
