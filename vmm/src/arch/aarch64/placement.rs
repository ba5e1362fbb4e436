//! Where the kernel, the initrd and the device tree go in guest RAM.
//!
//! The rules come from Linux `Documentation/arch/arm64/booting.rst`:
//!
//! - Section 4: "The Image must be placed text_offset bytes from a 2MB aligned base address
//!   anywhere in usable system RAM"; with flags bit 3 clear the base should be as close as
//!   possible to the start of DRAM. The kernel uses `image_size` bytes from its load address
//!   (BSS and early page tables lie past the end of the file), so that is what is reserved.
//! - Section 2: the device tree "must be placed on an 8-byte boundary and must not exceed 2
//!   megabytes in size".
//! - Section 3: the initrd "must reside entirely within a 1 GB aligned physical memory window of
//!   up to 32 GB in size that fully covers the kernel Image as well".
//!
//! The layout chosen: the kernel at the lowest 2 MiB aligned address of RAM plus `text_offset`,
//! the device tree in the last pages of RAM (page aligned, which is also 8-byte aligned), and
//! the initrd directly below the device tree (page aligned). The space between the kernel and
//! the initrd is what the kernel gets to run in.

use thiserror::Error;

use super::image::ImageHeader;
use super::layout::DTB_MAX_SIZE;

/// Alignment of the kernel's base address (booting.rst section 4).
pub const KERNEL_BASE_ALIGN: u64 = 2 << 20;
/// Page alignment used for the initrd and the device tree (4 KiB: the smallest arm64 page, so
/// any kernel can map them without sharing pages with the kernel image).
pub const PAGE_SIZE: u64 = 4096;
/// Alignment of the initrd window (booting.rst section 3).
pub const INITRD_WINDOW_ALIGN: u64 = 1 << 30;
/// Size of the initrd window (booting.rst section 3).
pub const INITRD_WINDOW_SIZE: u64 = 32 << 30;

/// A range of guest physical addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl GuestRange {
    /// One past the last address. Never overflows for ranges produced by [`place`].
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    /// True when the two ranges share at least one byte.
    pub fn overlaps(&self, other: &GuestRange) -> bool {
        self.start < other.end() && other.start < self.end()
    }
}

/// Where everything goes: the result of [`place`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootLayout {
    /// Kernel load address: copy the Image file here and start the boot vCPU's PC here.
    pub kernel_load: u64,
    /// The kernel's reservation: `image_size` bytes from [`BootLayout::kernel_load`].
    pub kernel: GuestRange,
    /// Where to copy the initrd, if there is one; its `start` and `end()` go into
    /// `linux,initrd-start` / `linux,initrd-end`.
    pub initrd: Option<GuestRange>,
    /// The space reserved for the device tree: write the blob at `dtb.start` (pass it in `x0`);
    /// the blob must not be longer than `dtb.len`.
    pub dtb: GuestRange,
}

/// Why the boot images cannot be placed in guest RAM.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum PlacementError {
    /// RAM cannot hold the kernel's reservation, the initrd and the device tree.
    #[error(
        "memory too small: kernel needs {}, initrd {}, DTB {}; use --memory {}M or more",
        human(*kernel), human(*initrd), human(*dtb), needed.div_ceil(1 << 20)
    )]
    MemoryTooSmall {
        /// Bytes from the start of RAM to the end of the kernel's reservation.
        kernel: u64,
        /// Bytes for the initrd (page-rounded; 0 without one).
        initrd: u64,
        /// Bytes reserved for the device tree (page-rounded).
        dtb: u64,
        /// The smallest RAM size that holds all three.
        needed: u64,
    },
    /// The requested device tree space is zero or above the 2 MiB the kernel accepts.
    #[error("device tree space of {size} bytes is invalid: it must be between 1 byte and 2 MiB")]
    InvalidDtbSize {
        /// The size that was asked for.
        size: u64,
    },
    /// The kernel file is longer than the header's `image_size`.
    #[error(
        "kernel file ({file_len} bytes) is longer than the image_size ({image_size} bytes) its header declares"
    )]
    KernelLargerThanImageSize {
        /// Length of the kernel file.
        file_len: u64,
        /// `image_size` from the header.
        image_size: u64,
    },
    /// The initrd cannot sit in the 32 GiB window that also covers the kernel.
    #[error(
        "initrd of {} does not fit in the 32 GiB window above the kernel that Linux can reach: use a smaller initrd",
        human(*len)
    )]
    InitrdOutsideWindow {
        /// Length of the initrd.
        len: u64,
    },
    /// RAM base plus size, or the kernel's reservation, overflows the 64-bit address space.
    #[error(
        "guest RAM at {base:#x} of {size:#x} bytes, or the kernel reservation in it, overflows the address space"
    )]
    AddressOverflow {
        /// RAM base.
        base: u64,
        /// RAM size.
        size: u64,
    },
}

/// Formats a byte count for an error message, rounded up to KiB or MiB.
fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes.div_ceil(1 << 20))
    } else {
        format!("{} KiB", bytes.div_ceil(1 << 10))
    }
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_next_multiple_of(align)
}

fn align_down(value: u64, align: u64) -> u64 {
    value - value % align
}

/// Places the kernel, the optional initrd and the device tree in RAM.
///
/// `ram_base`/`ram_size` describe guest RAM, `header` the parsed Image header,
/// `kernel_file_len` the length of the Image file, `initrd_len` the length of the initrd file,
/// and `dtb_max_size` the space to reserve for the device tree (use
/// [`super::layout::DTB_MAX_SIZE`] unless the blob is known to be smaller).
///
/// The sizes checked are only what the images occupy: a kernel needs room of its own to run
/// beyond that, which it reports itself if missing.
///
/// # Errors
///
/// [`PlacementError::MemoryTooSmall`] says how much memory the images need;
/// the other variants name an invalid input.
pub fn place(
    ram_base: u64,
    ram_size: u64,
    header: &ImageHeader,
    kernel_file_len: u64,
    initrd_len: Option<u64>,
    dtb_max_size: u64,
) -> Result<BootLayout, PlacementError> {
    if dtb_max_size == 0 || dtb_max_size > DTB_MAX_SIZE {
        return Err(PlacementError::InvalidDtbSize { size: dtb_max_size });
    }
    if kernel_file_len > header.image_size {
        return Err(PlacementError::KernelLargerThanImageSize {
            file_len: kernel_file_len,
            image_size: header.image_size,
        });
    }
    let overflow = PlacementError::AddressOverflow {
        base: ram_base,
        size: ram_size,
    };
    let ram_end = ram_base.checked_add(ram_size).ok_or(overflow)?;
    let kernel_base = align_up(ram_base, KERNEL_BASE_ALIGN).ok_or(overflow)?;
    let kernel_load = kernel_base
        .checked_add(header.text_offset)
        .ok_or(overflow)?;
    let kernel_end = kernel_load
        .checked_add(header.image_size)
        .and_then(|end| align_up(end, PAGE_SIZE))
        .ok_or(overflow)?;

    let initrd_pages = match initrd_len {
        Some(len) => align_up(len, PAGE_SIZE).ok_or(overflow)?,
        None => 0,
    };
    // Page-rounded, plus a page of slack when RAM does not end on a page boundary: the DTB
    // start is rounded down.
    let dtb_pages = align_up(dtb_max_size, PAGE_SIZE).ok_or(overflow)?
        + if ram_end % PAGE_SIZE == 0 {
            0
        } else {
            PAGE_SIZE
        };
    let kernel_need = kernel_end - ram_base;
    let needed = kernel_need
        .checked_add(initrd_pages)
        .and_then(|n| n.checked_add(dtb_pages))
        .ok_or(overflow)?;
    if needed > ram_size {
        return Err(PlacementError::MemoryTooSmall {
            kernel: kernel_need,
            initrd: initrd_pages,
            dtb: dtb_pages,
            needed,
        });
    }

    // needed <= ram_size guarantees these subtractions stay above kernel_end.
    let dtb_start = align_down(ram_end - dtb_max_size, PAGE_SIZE);
    let dtb = GuestRange {
        start: dtb_start,
        len: dtb_max_size,
    };

    let initrd = match initrd_len {
        None => None,
        Some(len) => {
            let window_end =
                align_down(kernel_load, INITRD_WINDOW_ALIGN).saturating_add(INITRD_WINDOW_SIZE);
            let limit = dtb_start.min(window_end);
            let start = limit
                .checked_sub(len)
                .map(|s| align_down(s, PAGE_SIZE))
                .filter(|&s| s >= kernel_end)
                .ok_or(PlacementError::InitrdOutsideWindow { len })?;
            Some(GuestRange { start, len })
        }
    };

    Ok(BootLayout {
        kernel_load,
        kernel: GuestRange {
            start: kernel_load,
            len: header.image_size,
        },
        initrd,
        dtb,
    })
}

#[cfg(test)]
mod tests {
    use super::super::image::{PageSize, Placement};
    use super::super::layout::RAM_BASE;
    use super::*;

    const MIB: u64 = 1 << 20;

    fn header(text_offset: u64, image_size: u64) -> ImageHeader {
        ImageHeader {
            text_offset,
            image_size,
            flags: 0xa,
            page_size: PageSize::Size4K,
            placement: Placement::Anywhere,
            legacy: false,
            efi_stub: true,
        }
    }

    #[test]
    fn kernel_loads_at_ram_base_plus_text_offset() {
        let l = place(
            RAM_BASE,
            512 * MIB,
            &header(0, 40 * MIB),
            30 * MIB,
            None,
            2 * MIB,
        )
        .unwrap();
        assert_eq!(l.kernel_load, RAM_BASE);
        let l = place(
            RAM_BASE,
            512 * MIB,
            &header(0x8_0000, 40 * MIB),
            30 * MIB,
            None,
            2 * MIB,
        )
        .unwrap();
        assert_eq!(l.kernel_load, RAM_BASE + 0x8_0000);
    }

    #[test]
    fn kernel_base_is_rounded_up_to_2_mib() {
        let l = place(
            RAM_BASE + 0x1000,
            512 * MIB,
            &header(0, 40 * MIB),
            30 * MIB,
            None,
            2 * MIB,
        )
        .unwrap();
        assert_eq!(l.kernel_load, RAM_BASE + 2 * MIB);
    }

    #[test]
    fn kernel_reservation_is_image_size_not_file_length() {
        let l = place(
            RAM_BASE,
            512 * MIB,
            &header(0, 40 * MIB),
            30 * MIB,
            None,
            2 * MIB,
        )
        .unwrap();
        assert_eq!(l.kernel.len, 40 * MIB);
    }

    #[test]
    fn dtb_sits_at_the_top_of_ram_eight_byte_aligned() {
        let l = place(
            RAM_BASE,
            512 * MIB,
            &header(0, 40 * MIB),
            30 * MIB,
            None,
            2 * MIB,
        )
        .unwrap();
        assert_eq!(l.dtb.start, RAM_BASE + 510 * MIB);
        assert_eq!(l.dtb.len, 2 * MIB);
        assert_eq!(l.dtb.start % 8, 0);
        assert!(l.dtb.end() <= RAM_BASE + 512 * MIB);
    }

    #[test]
    fn dtb_stays_inside_ram_that_ends_off_a_page_boundary() {
        let size = 512 * MIB - 100;
        let l = place(
            RAM_BASE,
            size,
            &header(0, 40 * MIB),
            30 * MIB,
            None,
            2 * MIB,
        )
        .unwrap();
        assert!(l.dtb.end() <= RAM_BASE + size);
        assert_eq!(l.dtb.start % PAGE_SIZE, 0);
    }

    #[test]
    fn initrd_sits_below_the_dtb_page_aligned_and_above_the_kernel() {
        let l = place(
            RAM_BASE,
            512 * MIB,
            &header(0, 40 * MIB),
            30 * MIB,
            Some(10 * MIB + 123),
            2 * MIB,
        )
        .unwrap();
        let initrd = l.initrd.unwrap();
        assert_eq!(initrd.len, 10 * MIB + 123);
        assert_eq!(initrd.start % PAGE_SIZE, 0);
        assert!(initrd.end() <= l.dtb.start);
        assert!(initrd.start >= l.kernel.end());
    }

    #[test]
    fn no_initrd_gives_no_initrd_range() {
        let l = place(
            RAM_BASE,
            512 * MIB,
            &header(0, 40 * MIB),
            30 * MIB,
            None,
            2 * MIB,
        )
        .unwrap();
        assert!(l.initrd.is_none());
    }

    #[test]
    fn placed_ranges_never_overlap() {
        for ram in [64 * MIB, 100 * MIB + 4096, 512 * MIB, 4096 * MIB] {
            let l = place(
                RAM_BASE,
                ram,
                &header(0x8_0000, 20 * MIB),
                20 * MIB,
                Some(30 * MIB),
                2 * MIB,
            )
            .unwrap();
            let initrd = l.initrd.unwrap();
            assert!(!l.kernel.overlaps(&initrd), "ram {ram}");
            assert!(!l.kernel.overlaps(&l.dtb), "ram {ram}");
            assert!(!initrd.overlaps(&l.dtb), "ram {ram}");
            assert!(l.dtb.end() <= RAM_BASE + ram);
        }
    }

    #[test]
    fn images_that_exactly_fill_ram_fit() {
        let l = place(
            RAM_BASE,
            44 * MIB,
            &header(0, 32 * MIB),
            20 * MIB,
            Some(10 * MIB),
            2 * MIB,
        )
        .unwrap();
        assert_eq!(l.initrd.unwrap().start, RAM_BASE + 32 * MIB);
    }

    #[test]
    fn too_small_memory_says_what_is_needed() {
        let err = place(
            RAM_BASE,
            40 * MIB,
            &header(0, 32 * MIB),
            20 * MIB,
            Some(10 * MIB),
            2 * MIB,
        )
        .unwrap_err();
        assert_eq!(
            err,
            PlacementError::MemoryTooSmall {
                kernel: 32 * MIB,
                initrd: 10 * MIB,
                dtb: 2 * MIB,
                needed: 44 * MIB
            }
        );
        assert_eq!(
            err.to_string(),
            "memory too small: kernel needs 32 MiB, initrd 10 MiB, DTB 2 MiB; use --memory 44M or more"
        );
    }

    #[test]
    fn kernel_alone_too_big_for_ram_is_memory_too_small() {
        let err = place(
            RAM_BASE,
            16 * MIB,
            &header(0, 32 * MIB),
            20 * MIB,
            None,
            2 * MIB,
        )
        .unwrap_err();
        assert!(matches!(err, PlacementError::MemoryTooSmall { needed, .. } if needed == 34 * MIB));
    }

    #[test]
    fn zero_dtb_size_is_refused() {
        let err = place(RAM_BASE, 512 * MIB, &header(0, 32 * MIB), 20 * MIB, None, 0).unwrap_err();
        assert_eq!(err, PlacementError::InvalidDtbSize { size: 0 });
    }

    #[test]
    fn dtb_size_above_2_mib_is_refused() {
        let err = place(
            RAM_BASE,
            512 * MIB,
            &header(0, 32 * MIB),
            20 * MIB,
            None,
            2 * MIB + 1,
        )
        .unwrap_err();
        assert_eq!(err, PlacementError::InvalidDtbSize { size: 2 * MIB + 1 });
    }

    #[test]
    fn kernel_file_longer_than_image_size_is_refused() {
        let err = place(
            RAM_BASE,
            512 * MIB,
            &header(0, 10 * MIB),
            20 * MIB,
            None,
            2 * MIB,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            PlacementError::KernelLargerThanImageSize { .. }
        ));
    }

    #[test]
    fn huge_text_offset_is_an_error_not_a_panic() {
        let err = place(
            RAM_BASE,
            512 * MIB,
            &header(u64::MAX - 10, 32 * MIB),
            20 * MIB,
            None,
            2 * MIB,
        )
        .unwrap_err();
        assert!(matches!(err, PlacementError::AddressOverflow { .. }));
    }

    #[test]
    fn ram_that_wraps_the_address_space_is_an_error() {
        let err = place(
            u64::MAX - MIB,
            512 * MIB,
            &header(0, 32 * MIB),
            20 * MIB,
            None,
            2 * MIB,
        )
        .unwrap_err();
        assert!(matches!(err, PlacementError::AddressOverflow { .. }));
    }

    #[test]
    fn huge_initrd_length_is_an_error_not_a_panic() {
        let err = place(
            RAM_BASE,
            512 * MIB,
            &header(0, 32 * MIB),
            20 * MIB,
            Some(u64::MAX),
            2 * MIB,
        )
        .unwrap_err();
        assert!(matches!(err, PlacementError::AddressOverflow { .. }));
    }

    #[test]
    fn initrd_stays_in_the_32_gib_window_of_the_kernel_with_large_ram() {
        let ram = 64 << 30;
        let l = place(
            RAM_BASE,
            ram,
            &header(0, 32 * MIB),
            20 * MIB,
            Some(10 * MIB),
            2 * MIB,
        )
        .unwrap();
        let initrd = l.initrd.unwrap();
        assert!(initrd.end() <= RAM_BASE + INITRD_WINDOW_SIZE);
        assert!(initrd.start >= l.kernel.end());
        assert!(l.dtb.end() == RAM_BASE + ram);
    }

    #[test]
    fn initrd_larger_than_the_window_is_refused() {
        let ram = 100 << 30;
        let err = place(
            RAM_BASE,
            ram,
            &header(0, 32 * MIB),
            20 * MIB,
            Some(40 << 30),
            2 * MIB,
        )
        .unwrap_err();
        assert_eq!(err, PlacementError::InitrdOutsideWindow { len: 40 << 30 });
    }

    #[test]
    fn empty_initrd_gets_an_empty_range_below_the_dtb() {
        let l = place(
            RAM_BASE,
            512 * MIB,
            &header(0, 32 * MIB),
            20 * MIB,
            Some(0),
            2 * MIB,
        )
        .unwrap();
        let initrd = l.initrd.unwrap();
        assert_eq!(initrd.len, 0);
        assert!(initrd.start <= l.dtb.start);
    }

    #[test]
    fn small_sizes_are_reported_in_kib() {
        assert_eq!(human(100), "1 KiB");
        assert_eq!(human(MIB + 1), "2 MiB");
    }
}
