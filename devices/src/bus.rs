//! The MMIO bus: routes a guest's physical-address accesses to the device that owns them.
//!
//! A VMM's vCPU loop hands every MMIO exit to [`MmioBus::read`] or [`MmioBus::write`]; the bus
//! finds the device whose range holds the address and calls it with the offset inside that range.
//! Devices see accesses of 1, 2, 4 or 8 bytes and decide themselves which widths they accept.

use std::fmt;
use std::sync::{Arc, Mutex};

/// A device that answers guest loads and stores in an MMIO window.
///
/// `offset` is relative to the start of the device's window; `data.len()` is the access width
/// (1, 2, 4 or 8). Values are little-endian, as on arm64. A device must not panic on any offset or
/// width: accesses it does not support read as zero and writes are ignored (and logged).
pub trait MmioDevice: Send {
    /// Handles a guest load.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest store.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (an input thread, for example).
pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice>>;

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("MMIO range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the refused range.
        base: u64,
        /// Length of the refused range.
        len: u64,
    },
    /// The range is empty or wraps around the address space.
    #[error("MMIO range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange {
        /// Start of the refused range.
        base: u64,
        /// Length of the refused range.
        len: u64,
    },
}

struct Entry {
    base: u64,
    len: u64,
    device: SharedMmioDevice,
}

/// A set of non-overlapping MMIO windows, each owned by one device.
#[derive(Default)]
pub struct MmioBus {
    // Sorted by base; lookups are a binary search.
    entries: Vec<Entry>,
}

impl fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (e.base, e.len)))
            .finish()
    }
}

impl MmioBus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: SharedMmioDevice,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let pos = self.entries.partition_point(|e| e.base < base);
        let overlaps_prev = pos > 0 && {
            let p = &self.entries[pos - 1];
            p.base + p.len > base
        };
        let overlaps_next = self.entries.get(pos).is_some_and(|n| n.base < end);
        if overlaps_prev || overlaps_next {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.insert(pos, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, width: usize) -> Option<(&Entry, u64)> {
        let pos = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(pos.checked_sub(1)?)?;
        let offset = addr - e.base;
        // The whole access must fall inside the window.
        (offset.checked_add(width as u64)? <= e.len).then_some((e, offset))
    }

    /// Routes a load; returns `false` if no device owns the address (the caller decides what
    /// the guest sees then, usually zeros).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a store; returns `false` if no device owns the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a panic elsewhere must not take every vCPU
/// down with it, and device state is valid between register accesses.
fn lock(device: &SharedMmioDevice) -> std::sync::MutexGuard<'_, dyn MmioDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads a little-endian value of `data.len()` bytes (1, 2, 4 or 8); other widths give `None`.
pub fn read_le(data: &[u8]) -> Option<u64> {
    match data.len() {
        1 | 2 | 4 | 8 => {
            let mut b = [0u8; 8];
            b[..data.len()].copy_from_slice(data);
            Some(u64::from_le_bytes(b))
        }
        _ => None,
    }
}

/// Writes the low `data.len()` bytes of `value` little-endian into `data`.
pub fn write_le(data: &mut [u8], value: u64) {
    let n = data.len().min(8);
    data[..n].copy_from_slice(&value.to_le_bytes()[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl MmioDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            write_le(data, offset);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn routes_to_the_owning_device_with_relative_offset() {
        let mut bus = MmioBus::new();
        let a = dev();
        bus.insert(0x1000, 0x100, a.clone()).unwrap();
        bus.insert(0x2000, 0x100, dev()).unwrap();
        let mut data = [0u8; 4];
        assert!(bus.read(0x1010, &mut data));
        assert_eq!(u32::from_le_bytes(data), 0x10);
        assert!(bus.write(0x10fc, &[1, 2, 3, 4]));
        assert_eq!(a.lock().unwrap().last_write, Some((0xfc, vec![1, 2, 3, 4])));
    }

    #[test]
    fn unowned_addresses_and_straddling_accesses_are_refused() {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, dev()).unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0xfff, &mut data[..1]));
        assert!(!bus.read(0x1100, &mut data));
        assert!(!bus.read(0x10fe, &mut data));
        assert!(!bus.write(u64::MAX - 1, &data));
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = MmioBus::new();
        bus.insert(0x1000, 0x100, dev()).unwrap();
        assert_eq!(
            bus.insert(0x10ff, 0x10, dev()),
            Err(BusError::Overlap {
                base: 0x10ff,
                len: 0x10
            })
        );
        assert!(bus.insert(0xf00, 0x101, dev()).is_err());
        assert!(bus.insert(0x800, 0x1000, dev()).is_err());
        assert!(bus.insert(0x3000, 0, dev()).is_err());
        assert!(bus.insert(u64::MAX, 2, dev()).is_err());
        bus.insert(0x1100, 0x100, dev()).unwrap();
        bus.insert(0xf00, 0x100, dev()).unwrap();
    }

    #[test]
    fn little_endian_helpers_round_trip() {
        let mut d = [0u8; 2];
        write_le(&mut d, 0xbeef);
        assert_eq!(d, [0xef, 0xbe]);
        assert_eq!(read_le(&d), Some(0xbeef));
        assert_eq!(read_le(&[0u8; 3]), None);
    }
}
