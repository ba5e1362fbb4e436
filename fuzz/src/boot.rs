//! `boot_image`: the arm64 `Image` header parser and the placement of kernel, initrd and
//! device tree, with fuzzer-chosen headers and sizes.
//!
//! Input: eight `u64` fields (file length, RAM base, RAM size, initrd length, DTB size, and
//! overrides for `text_offset`, `image_size` and `flags`), a mode byte, then the file's first
//! bytes. Invariants:
//!
//! - `parse` never panics; what it accepts has the magic, is at least 64 bytes long, and its
//!   effective fields follow the header (or the pre-3.17 defaults when `image_size` is 0);
//!   `image_size` is never below the file length; a big-endian kernel is refused;
//!   `from_image(b)` is `parse(b, b.len())`.
//! - `place` never panics; a layout it returns has every range inside RAM, the kernel at the
//!   first 2 MiB boundary of RAM plus `text_offset` with `image_size` reserved, the DTB page
//!   aligned and at most 2 MiB, the initrd page aligned, the three disjoint, and the initrd in
//!   the 1 GiB aligned 32 GiB window that covers the kernel.
//! - Its advice is right: with RAM at the VMM's base, when it says memory is too small by naming
//!   `needed`, `needed` is above the RAM size, and RAM of that size rounded up to a MiB (what the
//!   message tells the user to pass) is no longer too small.

use vmm::arch::aarch64::image::{HEADER_SIZE, ImageError, ImageHeader, LEGACY_TEXT_OFFSET, MAGIC};
use vmm::arch::aarch64::layout::{DTB_MAX_SIZE, RAM_BASE};
use vmm::arch::aarch64::placement::{
    BootLayout, INITRD_WINDOW_ALIGN, INITRD_WINDOW_SIZE, KERNEL_BASE_ALIGN, PAGE_SIZE,
    PlacementError, place,
};

use crate::input::Src;

/// Mode bits: write the magic, override the three header fields, use the VMM's RAM base,
/// small sizes (MiB scale), no initrd.
pub mod mode {
    /// Put "ARM\x64" at offset 56.
    pub const MAGIC: u8 = 1;
    /// Use the override fields for text_offset, image_size and flags.
    pub const FIELDS: u8 = 2;
    /// RAM at the VMM's base.
    pub const VMM_BASE: u8 = 4;
    /// Scale sizes down to realistic ranges.
    pub const SMALL: u8 = 8;
    /// No initrd.
    pub const NO_INITRD: u8 = 16;
}

fn le(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn check_parse(head: &[u8], file_len: u64) -> Option<ImageHeader> {
    let r = ImageHeader::parse(head, file_len);
    let h = match r {
        Ok(h) => h,
        Err(ImageError::TooShort { len }) => {
            assert!(len < HEADER_SIZE as u64);
            return None;
        }
        Err(_) => return None,
    };
    assert!(
        head.len() >= HEADER_SIZE && file_len >= HEADER_SIZE as u64,
        "short file accepted"
    );
    assert_eq!(&head[56..60], &MAGIC, "accepted without the magic");
    assert!(
        h.image_size >= file_len,
        "image_size {} below the file {file_len}",
        h.image_size
    );
    let raw_size = le(head, 16);
    if raw_size == 0 {
        assert!(h.legacy);
        assert_eq!(h.text_offset, LEGACY_TEXT_OFFSET);
        assert_eq!(h.image_size, file_len);
    } else {
        assert!(!h.legacy);
        assert_eq!(h.text_offset, le(head, 8));
        assert_eq!(h.image_size, raw_size);
        assert_eq!(h.flags, le(head, 24));
        assert_eq!(h.flags & 1, 0, "big-endian kernel accepted");
    }
    assert_eq!(h.efi_stub, head.starts_with(b"MZ"));
    Some(h)
}

fn check_layout(
    l: &BootLayout,
    h: &ImageHeader,
    base: u64,
    size: u64,
    initrd: Option<u64>,
    dtb: u64,
) {
    let end = base + size;
    let inside = |s: u64, len: u64| s >= base && s.checked_add(len).is_some_and(|e| e <= end);
    let kbase = base.next_multiple_of(KERNEL_BASE_ALIGN);
    assert_eq!(l.kernel_load, kbase + h.text_offset);
    assert_eq!(
        (l.kernel.start, l.kernel.len),
        (l.kernel_load, h.image_size)
    );
    assert!(
        inside(l.kernel.start, l.kernel.len),
        "kernel outside RAM: {l:?}"
    );
    assert!(inside(l.dtb.start, l.dtb.len), "DTB outside RAM: {l:?}");
    assert_eq!(l.dtb.len, dtb);
    assert!(l.dtb.len <= DTB_MAX_SIZE && l.dtb.start.is_multiple_of(PAGE_SIZE));
    assert!(!l.kernel.overlaps(&l.dtb), "kernel and DTB overlap: {l:?}");
    match (l.initrd, initrd) {
        (None, None) => {}
        (Some(i), Some(len)) => {
            assert_eq!(i.len, len);
            assert!(inside(i.start, i.len), "initrd outside RAM: {l:?}");
            assert!(i.start.is_multiple_of(PAGE_SIZE));
            if i.len > 0 {
                assert!(
                    !i.overlaps(&l.kernel) && !i.overlaps(&l.dtb),
                    "initrd overlaps: {l:?}"
                );
            }
            let win = l.kernel_load - l.kernel_load % INITRD_WINDOW_ALIGN;
            assert!(
                i.end() <= win.saturating_add(INITRD_WINDOW_SIZE),
                "initrd beyond the window: {l:?}"
            );
            assert!(i.start >= l.kernel.end(), "initrd below the kernel: {l:?}");
        }
        _ => panic!("initrd presence changed: {l:?}"),
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut s = Src::new(data);
    let mut file_len = s.u64();
    let mut ram_base = s.u64();
    let mut ram_size = s.u64();
    let mut initrd_len = s.u64();
    let mut dtb = s.u64();
    let (text_offset, image_size, flags) = (s.u64(), s.u64(), s.u64());
    let m = s.u8();
    let mut head = s.bytes(256).to_vec();

    if m & mode::SMALL != 0 {
        file_len %= 64 << 20;
        ram_size %= 8 << 30;
        initrd_len %= 256 << 20;
        dtb %= DTB_MAX_SIZE + 2;
        ram_base %= 1 << 40;
    }
    if m & mode::VMM_BASE != 0 {
        ram_base = RAM_BASE;
    }
    if m & (mode::MAGIC | mode::FIELDS) != 0 && head.len() < HEADER_SIZE {
        head.resize(HEADER_SIZE, 0);
    }
    if m & mode::MAGIC != 0 {
        head[56..60].copy_from_slice(&MAGIC);
    }
    if m & mode::FIELDS != 0 {
        head[8..16].copy_from_slice(&text_offset.to_le_bytes());
        head[16..24].copy_from_slice(&image_size.to_le_bytes());
        head[24..32].copy_from_slice(&flags.to_le_bytes());
    }
    let initrd = (m & mode::NO_INITRD == 0).then_some(initrd_len);

    let whole = ImageHeader::from_image(&head);
    assert_eq!(whole, ImageHeader::parse(&head, head.len() as u64));
    let _ = check_parse(&head, head.len() as u64);
    let Some(h) = check_parse(&head, file_len) else {
        return;
    };

    match place(ram_base, ram_size, &h, file_len, initrd, dtb) {
        Ok(l) => check_layout(&l, &h, ram_base, ram_size, initrd, dtb),
        Err(PlacementError::MemoryTooSmall { needed, .. }) => {
            assert!(
                needed > ram_size,
                "too small, yet {needed} needed of {ram_size}"
            );
            // The advice is for sizes a user can pass (RAM ends below 1 TiB in the VMM's map).
            if ram_base == RAM_BASE && needed < 1 << 40 {
                let advised = needed.div_ceil(1 << 20) << 20;
                if let Ok(l) = place(ram_base, advised, &h, file_len, initrd, dtb) {
                    check_layout(&l, &h, ram_base, advised, initrd, dtb);
                } else if let Err(PlacementError::MemoryTooSmall { needed: again, .. }) =
                    place(ram_base, advised, &h, file_len, initrd, dtb)
                {
                    panic!("advised {advised} bytes of RAM, still too small (needs {again})");
                }
            }
        }
        Err(_) => {}
    }
}
