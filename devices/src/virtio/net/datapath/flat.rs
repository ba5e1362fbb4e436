//! Guest memory as the data path reads it: one region found once per pass instead of at every
//! access.
//!
//! vm-memory resolves every guest address by searching the region list and building a slice
//! iterator over the regions the range crosses; the data path makes about ten such accesses
//! per frame (the avail ring, each descriptor, the range check, the iovec, the used ring), and
//! in the instruction profile of a small frame that lookup was the largest single cost. A
//! guest's RAM is almost always one region (the VMM maps it so), so [`FlatMem`] takes a slice
//! of that whole region once per pass and answers every access with a bounds check and an
//! offset. With more than one region it falls back on vm-memory's own lookup, access by access.
//!
//! [`FlatMem`] implements vm-memory's [`GuestMemory`] so that virtio-queue's ring and
//! descriptor reads (`Queue::iter`, `DescriptorChain`) go through the same fast path; every
//! access stays checked against guest memory, and answers as vm-memory's would (the same
//! slices, the same errors where a range leaves memory).

use std::iter::FusedIterator;

use vm_memory::bitmap::BS;
use vm_memory::guest_memory::{GuestMemoryBackendSliceIterator, GuestMemorySliceIterator};
use vm_memory::{
    GuestAddress, GuestMemory as GuestMemoryT, GuestMemoryBackend, GuestMemoryError,
    GuestMemoryRegion, GuestUsize, Permissions,
};

use crate::net::GuestSlice;
use crate::virtio::GuestMemory;

/// Guest memory for one pass of the data path (see the module documentation).
#[derive(Debug)]
pub(crate) struct FlatMem<'m> {
    mem: &'m GuestMemory,
    /// The only region, when there is one: its guest address and all of its bytes.
    flat: Option<(u64, GuestSlice<'m>)>,
}

impl<'m> FlatMem<'m> {
    pub(crate) fn new(mem: &'m GuestMemory) -> Self {
        let mut regions = mem.iter();
        let flat = match (regions.next(), regions.next()) {
            (Some(r), None) => r.as_volatile_slice().ok().map(|s| (r.start_addr().0, s)),
            _ => None,
        };
        Self { mem, flat }
    }

    /// The `len` bytes at `addr`, if they lie in one region (always so with one region, for
    /// any range inside guest memory).
    #[inline]
    pub(crate) fn slice(&self, addr: GuestAddress, len: usize) -> Option<GuestSlice<'m>> {
        match &self.flat {
            Some((base, all)) => {
                let off = usize::try_from(addr.0.checked_sub(*base)?).ok()?;
                // Like vm-memory, even an empty slice must start inside the region.
                if off >= all.len() {
                    return None;
                }
                all.subslice(off, len).ok()
            }
            None => GuestMemoryBackend::get_slice(self.mem, addr, len).ok(),
        }
    }

    /// Whether the `len` bytes at `addr` are all guest memory.
    #[inline]
    pub(crate) fn check(&self, addr: GuestAddress, len: usize) -> bool {
        match &self.flat {
            // An empty range is always in memory, as vm-memory counts it.
            Some(_) => len == 0 || self.slice(addr, len).is_some(),
            None => GuestMemoryBackend::check_range(self.mem, addr, len),
        }
    }

    /// The slices of guest memory that together hold the `count` bytes at `addr`, as
    /// vm-memory's `get_slices` gives them (an error ends the iteration where the range
    /// leaves memory).
    #[inline]
    pub(crate) fn slices(&self, addr: GuestAddress, count: usize) -> Slices<'m> {
        let Some((base, all)) = &self.flat else {
            return Slices::Regions(GuestMemoryBackend::get_slices(self.mem, addr, count));
        };
        if count == 0 {
            return Slices::Flat(None, Past::Nothing);
        }
        let off = addr
            .0
            .checked_sub(*base)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|&o| o < all.len());
        let Some(off) = off else {
            return Slices::Flat(None, Past::Outside(addr));
        };
        let len = count.min(all.len() - off);
        let Ok(first) = all.subslice(off, len) else {
            return Slices::Flat(None, Past::Outside(addr));
        };
        // Past the region's end there is no memory (one region): the rest is an error, as
        // vm-memory reports it.
        let past = if len == count {
            Past::Nothing
        } else {
            match addr.0.overflowing_add(len as GuestUsize) {
                (a, false) => Past::Outside(GuestAddress(a)),
                (_, true) => Past::Overflow,
            }
        };
        Slices::Flat(Some(first), past)
    }
}

/// What follows the slice of a range in the one region.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Past {
    /// The range ended in the region.
    Nothing,
    /// The range goes on at an address outside guest memory.
    Outside(GuestAddress),
    /// The range goes on past the end of the address space.
    Overflow,
}

/// The slices of a range of guest memory: see [`FlatMem::slices`].
#[derive(Debug)]
pub(crate) enum Slices<'m> {
    /// One region: the slice in it, then what the range meets past it. (The errors are made
    /// only when reached: building and dropping them costs more than the rest of an access.)
    Flat(Option<GuestSlice<'m>>, Past),
    /// Several regions: vm-memory's own iterator.
    Regions(GuestMemoryBackendSliceIterator<'m, GuestMemory>),
}

impl<'m> Iterator for Slices<'m> {
    type Item = Result<GuestSlice<'m>, GuestMemoryError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Flat(first, past) => {
                if let Some(s) = first.take() {
                    return Some(Ok(s));
                }
                match std::mem::replace(past, Past::Nothing) {
                    Past::Nothing => None,
                    Past::Outside(a) => Some(Err(GuestMemoryError::InvalidGuestAddress(a))),
                    Past::Overflow => Some(Err(GuestMemoryError::GuestAddressOverflow)),
                }
            }
            Self::Regions(it) => it.next(),
        }
    }
}

impl FusedIterator for Slices<'_> {}

impl<'m> GuestMemorySliceIterator<'m, BS<'m, ()>> for Slices<'m> {}

impl GuestMemoryT for FlatMem<'_> {
    type PhysicalMemory = GuestMemory;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, _access: Permissions) -> bool {
        self.check(addr, count)
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        _access: Permissions,
    ) -> Result<impl GuestMemorySliceIterator<'a, BS<'a, ()>>, GuestMemoryError> {
        Ok(self.slices(addr, count))
    }

    fn physical_memory(&self) -> Option<&GuestMemory> {
        Some(self.mem)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    /// Every access through the flat view answers as vm-memory's own: same bytes, same
    /// successes and failures, at the edges of memory and across holes.
    fn same_as_vm_memory(mem: &GuestMemory, flat_expected: bool) {
        let f = FlatMem::new(mem);
        assert_eq!(f.flat.is_some(), flat_expected);
        let edges = [
            0u64, 1, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x2fff, 0x3000,
        ];
        let lens = [0usize, 1, 2, 8, 0x1000, 0x1001, 0x3000];
        for &a in edges.iter().chain(&[u64::MAX, u64::MAX - 3]) {
            for &len in &lens {
                let at = GuestAddress(a);
                assert_eq!(
                    f.check(at, len),
                    GuestMemoryBackend::check_range(mem, at, len),
                    "check {a:#x}/{len}"
                );
                assert_eq!(
                    GuestMemoryT::check_range(&f, at, len, Permissions::Read),
                    GuestMemoryBackend::check_range(mem, at, len)
                );
                let ours: Vec<_> = f
                    .slices(at, len)
                    .map(|s| s.map(|s| (s.ptr_guard().as_ptr(), s.len())).is_ok())
                    .collect();
                let theirs: Vec<_> = GuestMemoryBackend::get_slices(mem, at, len)
                    .map(|s| s.map(|s| (s.ptr_guard().as_ptr(), s.len())).is_ok())
                    .collect();
                assert_eq!(ours, theirs, "slices {a:#x}/{len}");
                let ours: Vec<_> = f.slices(at, len).filter_map(Result::ok).collect();
                let theirs: Vec<_> = GuestMemoryBackend::get_slices(mem, at, len)
                    .filter_map(Result::ok)
                    .collect();
                assert_eq!(ours.len(), theirs.len());
                for (o, t) in ours.iter().zip(&theirs) {
                    assert_eq!(o.ptr_guard().as_ptr(), t.ptr_guard().as_ptr());
                    assert_eq!(o.len(), t.len());
                }
                assert_eq!(
                    f.slice(at, len).map(|s| s.len()).is_some(),
                    GuestMemoryBackend::get_slice(mem, at, len).is_ok(),
                    "slice {a:#x}/{len}"
                );
                let mut buf = vec![0u8; len];
                let mut want = vec![0u8; len];
                assert_eq!(
                    f.read(&mut buf, at).ok(),
                    mem.read(&mut want, at).ok(),
                    "read {a:#x}/{len}"
                );
                assert_eq!(buf, want);
            }
        }
    }

    #[test]
    fn one_region_answers_as_vm_memory() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0x1000), 0x2000)]).unwrap();
        for i in 0..0x2000u64 {
            mem.write_obj(i as u8, GuestAddress(0x1000 + i)).unwrap();
        }
        same_as_vm_memory(&mem, true);
    }

    #[test]
    fn several_regions_answer_as_vm_memory() {
        let mem = GuestMemory::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x3000), 0x1000),
        ])
        .unwrap();
        same_as_vm_memory(&mem, false);
    }

    #[test]
    fn writes_land_where_vm_memory_puts_them() {
        let ranges = [(GuestAddress(0x1000), 0x2000)];
        let (mem, reference) = (
            GuestMemory::from_ranges(&ranges).unwrap(),
            GuestMemory::from_ranges(&ranges).unwrap(),
        );
        let f = FlatMem::new(&mem);
        for (at, v) in [
            (0x2ffc, 0x1234_5678u32),
            (0x2ffd, 0xaabb_ccdd),
            (0xffc, 7),
            (0x1000, 9),
        ] {
            let at = GuestAddress(at);
            assert_eq!(
                f.write_obj(v, at).is_ok(),
                reference.write_obj(v, at).is_ok()
            );
        }
        let (mut ours, mut theirs) = (vec![0u8; 0x2000], vec![0u8; 0x2000]);
        mem.read_slice(&mut ours, GuestAddress(0x1000)).unwrap();
        reference
            .read_slice(&mut theirs, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 9);
    }
}
