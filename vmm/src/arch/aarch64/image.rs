//! The arm64 Linux `Image` header: parsing and validation.
//!
//! Facts from Linux `Documentation/arch/arm64/booting.rst`, section 4 "Call the kernel image":
//! the decompressed kernel image starts with a 64-byte little-endian header:
//!
//! | offset | size | field                                                      |
//! |--------|------|------------------------------------------------------------|
//! | 0      | 4    | `code0` (executable code; "MZ" when the kernel has an EFI stub) |
//! | 4      | 4    | `code1`                                                    |
//! | 8      | 8    | `text_offset`: image load offset from a 2 MiB aligned base |
//! | 16     | 8    | `image_size`: effective image size, BSS included           |
//! | 24     | 8    | `flags`                                                    |
//! | 32     | 24   | reserved                                                   |
//! | 56     | 4    | magic `"ARM\x64"`                                          |
//! | 60     | 4    | reserved (PE header offset with an EFI stub)               |
//!
//! Before Linux 3.17 `image_size` and `flags` were zero and `text_offset` was not guaranteed to
//! be little-endian; "where image_size is zero, text_offset can be assumed to be 0x80000".
//! `flags` bit 0 is the kernel endianness (1 = big-endian), bits 1-2 the kernel page size
//! (0 unspecified, 1 4K, 2 16K, 3 64K), bit 3 the physical placement (0: the 2 MiB aligned base
//! should be as close as possible to the base of DRAM; 1: anywhere in physical memory).

use thiserror::Error;

/// Size of the `Image` header.
pub const HEADER_SIZE: usize = 64;
/// The magic at offset 56: `"ARM\x64"`.
pub const MAGIC: [u8; 4] = *b"ARM\x64";
/// The `text_offset` to assume for kernels older than 3.17, whose `image_size` is zero.
pub const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;

const MAGIC_OFFSET: usize = 56;
const FLAG_BIG_ENDIAN: u64 = 1 << 0;
const FLAG_PAGE_SIZE_SHIFT: u64 = 1;
const FLAG_PAGE_SIZE_MASK: u64 = 0b11;
const FLAG_PLACEMENT_ANYWHERE: u64 = 1 << 3;

/// Errors found in a kernel file that is not a bootable arm64 `Image`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImageError {
    /// The file is shorter than the 64-byte header.
    #[error(
        "kernel file is {len} bytes, shorter than the 64-byte arm64 Image header: not an arm64 Linux Image"
    )]
    TooShort {
        /// Length of the file.
        len: u64,
    },
    /// The file is gzip-compressed (a distribution `vmlinuz` on some systems).
    #[error(
        "the kernel file is gzip-compressed: decompress it first (gunzip -c vmlinuz > Image) and pass the Image"
    )]
    Gzip,
    /// The file is an EFI zboot image: a PE/COFF wrapper around a compressed kernel.
    #[error(
        "the kernel file is an EFI zboot image ({compression}-compressed): extract the Image from it first (for example with the kernel's scripts/extract-vmlinux or by decompressing its payload)"
    )]
    EfiZboot {
        /// The compression named in the zboot header, e.g. `gzip` or `zstd`.
        compression: String,
    },
    /// The file is an ELF `vmlinux`, not the raw `Image`.
    #[error(
        "the kernel file is an ELF vmlinux: pass the raw Image instead (arch/arm64/boot/Image, or objcopy -O binary vmlinux Image)"
    )]
    Elf,
    /// The magic at offset 56 is not `"ARM\x64"`.
    #[error(
        "not an arm64 Linux Image (no \"ARM\\x64\" magic at offset 56): if this is a compressed vmlinuz (gzip) or an EFI zboot image, decompress it first"
    )]
    BadMagic,
    /// The header's flags say the kernel is big-endian.
    #[error(
        "the kernel is built big-endian (Image flags bit 0): only little-endian arm64 kernels are supported"
    )]
    BigEndian,
    /// The header's `image_size` is smaller than the file: the header is corrupt, or data was
    /// appended that loading would place outside the reserved image.
    #[error(
        "the Image header says image_size is {image_size} bytes but the file is {file_len} bytes: the header is corrupt or the file is not a plain arm64 Image"
    )]
    ImageSizeSmallerThanFile {
        /// `image_size` from the header.
        image_size: u64,
        /// Length of the file.
        file_len: u64,
    },
}

/// The kernel page size declared in the header flags (bits 1-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// Not specified (flags bits 1-2 = 0, or a pre-3.17 kernel).
    Unspecified,
    /// 4 KiB pages.
    Size4K,
    /// 16 KiB pages.
    Size16K,
    /// 64 KiB pages.
    Size64K,
}

/// Where the kernel may be placed in physical memory (flags bit 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The 2 MiB aligned base should be as close as possible to the base of DRAM.
    NearDramBase,
    /// The 2 MiB aligned base may be anywhere in physical memory.
    Anywhere,
}

/// A parsed and validated arm64 `Image` header.
///
/// The fields are the *effective* values: for a pre-3.17 kernel (`image_size` 0 in the file)
/// `text_offset` is [`LEGACY_TEXT_OFFSET`] and `image_size` is the file length, and
/// [`ImageHeader::legacy`] is true.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Load offset from a 2 MiB aligned base address.
    pub text_offset: u64,
    /// Bytes to reserve from the load address: the file plus BSS and early allocations. Never
    /// smaller than the file.
    pub image_size: u64,
    /// The raw `flags` field (0 for a pre-3.17 kernel).
    pub flags: u64,
    /// Kernel page size from the flags.
    pub page_size: PageSize,
    /// Placement constraint from the flags.
    pub placement: Placement,
    /// True for a kernel older than 3.17 (`image_size` 0): the values above were assumed.
    pub legacy: bool,
    /// True when `code0` starts with "MZ": the kernel carries an EFI stub (it still boots as a
    /// plain Image).
    pub efi_stub: bool,
}

fn le_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut buf = [0u8; 8];
    if let Some(src) = bytes.get(offset..offset + 8) {
        buf.copy_from_slice(src);
    }
    u64::from_le_bytes(buf)
}

/// Recognises the formats people pass by mistake, to name them in the error.
fn identify_wrong_format(head: &[u8]) -> Option<ImageError> {
    if head.starts_with(&[0x1f, 0x8b]) {
        return Some(ImageError::Gzip);
    }
    if head.starts_with(b"\x7fELF") {
        return Some(ImageError::Elf);
    }
    // EFI zboot (Linux drivers/firmware/efi/libstub/zboot-header.S): "MZ" at 0, "zimg" at 4, and
    // the compression type as a NUL-padded string at offset 24.
    if head.starts_with(b"MZ") && head.get(4..8) == Some(b"zimg") {
        let name: String = head
            .get(24..56)
            .unwrap_or(&[])
            .iter()
            .take_while(|&&b| b != 0)
            .take_while(|b| b.is_ascii_alphanumeric())
            .map(|&b| char::from(b))
            .collect();
        let compression = if name.is_empty() {
            "unknown".to_string()
        } else {
            name
        };
        return Some(ImageError::EfiZboot { compression });
    }
    None
}

impl ImageHeader {
    /// Parses and validates the header at the start of `head`, for a kernel file of `file_len`
    /// bytes. `head` needs only the first 64 bytes of the file (more is ignored).
    ///
    /// # Errors
    ///
    /// [`ImageError`] names what the file is instead (gzip, EFI zboot, ELF, too short, no
    /// magic) or what is wrong with the header (big-endian, `image_size` below the file size).
    pub fn parse(head: &[u8], file_len: u64) -> Result<Self, ImageError> {
        if let Some(err) = identify_wrong_format(head) {
            return Err(err);
        }
        let available = (head.len() as u64).min(file_len);
        if available < HEADER_SIZE as u64 {
            return Err(ImageError::TooShort { len: available });
        }
        if head.get(MAGIC_OFFSET..MAGIC_OFFSET + 4) != Some(&MAGIC[..]) {
            return Err(ImageError::BadMagic);
        }
        let text_offset = le_u64(head, 8);
        let image_size = le_u64(head, 16);
        let flags = le_u64(head, 24);
        let efi_stub = head.starts_with(b"MZ");

        if image_size == 0 {
            return Ok(Self {
                text_offset: LEGACY_TEXT_OFFSET,
                image_size: file_len,
                flags: 0,
                page_size: PageSize::Unspecified,
                placement: Placement::NearDramBase,
                legacy: true,
                efi_stub,
            });
        }
        if flags & FLAG_BIG_ENDIAN != 0 {
            return Err(ImageError::BigEndian);
        }
        if image_size < file_len {
            return Err(ImageError::ImageSizeSmallerThanFile {
                image_size,
                file_len,
            });
        }
        let page_size = match (flags >> FLAG_PAGE_SIZE_SHIFT) & FLAG_PAGE_SIZE_MASK {
            1 => PageSize::Size4K,
            2 => PageSize::Size16K,
            3 => PageSize::Size64K,
            _ => PageSize::Unspecified,
        };
        let placement = if flags & FLAG_PLACEMENT_ANYWHERE != 0 {
            Placement::Anywhere
        } else {
            Placement::NearDramBase
        };
        Ok(Self {
            text_offset,
            image_size,
            flags,
            page_size,
            placement,
            legacy: false,
            efi_stub,
        })
    }

    /// Parses the header of a kernel held whole in memory: [`ImageHeader::parse`] with the
    /// slice's length as the file length.
    ///
    /// # Errors
    ///
    /// As [`ImageHeader::parse`].
    pub fn from_image(image: &[u8]) -> Result<Self, ImageError> {
        Self::parse(image, image.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a header the way the kernel's `head.S`/`image.h` lay it out.
    fn header(text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_SIZE];
        h[0..4].copy_from_slice(&[0x4d, 0x5a, 0x40, 0xfa]); // "MZ" + ccmp: EFI stub code0
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[56..60].copy_from_slice(&MAGIC);
        h
    }

    #[test]
    fn modern_header_yields_its_fields() {
        // A Debian 6.1 kernel: text_offset 0, LE, 4K pages, anywhere (flags 0xa).
        let h = header(0, 0x0200_0000, 0xa);
        let parsed = ImageHeader::parse(&h, 0x0100_0000).unwrap();
        assert_eq!(parsed.text_offset, 0);
        assert_eq!(parsed.image_size, 0x0200_0000);
        assert_eq!(parsed.flags, 0xa);
        assert_eq!(parsed.page_size, PageSize::Size4K);
        assert_eq!(parsed.placement, Placement::Anywhere);
        assert!(!parsed.legacy);
        assert!(parsed.efi_stub);
    }

    #[test]
    fn page_size_flags_decode_to_16k_and_64k() {
        let p16 = ImageHeader::parse(&header(0, 4096, 2 << 1), 64).unwrap();
        let p64 = ImageHeader::parse(&header(0, 4096, 3 << 1), 64).unwrap();
        let none = ImageHeader::parse(&header(0, 4096, 0), 64).unwrap();
        assert_eq!(p16.page_size, PageSize::Size16K);
        assert_eq!(p64.page_size, PageSize::Size64K);
        assert_eq!(none.page_size, PageSize::Unspecified);
    }

    #[test]
    fn placement_flag_clear_means_near_dram_base() {
        let parsed = ImageHeader::parse(&header(0, 4096, 0), 64).unwrap();
        assert_eq!(parsed.placement, Placement::NearDramBase);
    }

    #[test]
    fn zero_image_size_assumes_legacy_text_offset_and_file_length() {
        let h = header(0x1234, 0, 0);
        let parsed = ImageHeader::parse(&h, 5_000_000).unwrap();
        assert_eq!(parsed.text_offset, LEGACY_TEXT_OFFSET);
        assert_eq!(parsed.image_size, 5_000_000);
        assert!(parsed.legacy);
    }

    #[test]
    fn code0_without_mz_is_not_an_efi_stub() {
        let mut h = header(0, 4096, 0);
        h[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b #0x40
        assert!(!ImageHeader::parse(&h, 64).unwrap().efi_stub);
    }

    #[test]
    fn extra_bytes_after_header_are_ignored() {
        let mut image = header(0, 8192, 0);
        image.resize(4096, 0xaa);
        let parsed = ImageHeader::from_image(&image).unwrap();
        assert_eq!(parsed.image_size, 8192);
    }

    #[test]
    fn short_file_is_too_short() {
        let h = header(0, 4096, 0);
        assert_eq!(
            ImageHeader::parse(&h[..40], 40),
            Err(ImageError::TooShort { len: 40 })
        );
    }

    #[test]
    fn file_length_below_header_size_is_too_short_even_with_a_full_buffer() {
        let h = header(0, 4096, 0);
        assert_eq!(
            ImageHeader::parse(&h, 10),
            Err(ImageError::TooShort { len: 10 })
        );
    }

    #[test]
    fn empty_file_is_too_short() {
        assert_eq!(
            ImageHeader::from_image(&[]),
            Err(ImageError::TooShort { len: 0 })
        );
    }

    #[test]
    fn missing_magic_is_bad_magic_with_decompress_advice() {
        let mut h = header(0, 4096, 0);
        h[56] = b'X';
        let err = ImageHeader::parse(&h, 64).unwrap_err();
        assert_eq!(err, ImageError::BadMagic);
        let msg = err.to_string();
        assert!(msg.contains("not an arm64 Linux Image"));
        assert!(msg.contains("decompress it first"));
    }

    #[test]
    fn gzip_file_is_recognised() {
        let mut gz = vec![0x1f, 0x8b, 0x08, 0x00];
        gz.resize(100, 0);
        let err = ImageHeader::from_image(&gz).unwrap_err();
        assert_eq!(err, ImageError::Gzip);
        assert!(err.to_string().contains("gzip"));
    }

    #[test]
    fn tiny_gzip_file_is_still_called_gzip() {
        assert_eq!(
            ImageHeader::from_image(&[0x1f, 0x8b]),
            Err(ImageError::Gzip)
        );
    }

    #[test]
    fn efi_zboot_file_is_recognised_with_its_compression() {
        let mut z = vec![0u8; 128];
        z[0..2].copy_from_slice(b"MZ");
        z[4..8].copy_from_slice(b"zimg");
        z[24..28].copy_from_slice(b"zstd");
        let err = ImageHeader::from_image(&z).unwrap_err();
        assert_eq!(
            err,
            ImageError::EfiZboot {
                compression: "zstd".into()
            }
        );
        assert!(err.to_string().contains("zboot"));
    }

    #[test]
    fn efi_zboot_with_garbage_compression_name_says_unknown() {
        let mut z = vec![0u8; 64];
        z[0..2].copy_from_slice(b"MZ");
        z[4..8].copy_from_slice(b"zimg");
        z[24] = 0xff;
        assert_eq!(
            ImageHeader::from_image(&z),
            Err(ImageError::EfiZboot {
                compression: "unknown".into()
            })
        );
    }

    #[test]
    fn elf_vmlinux_is_recognised() {
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(64, 0);
        assert_eq!(ImageHeader::from_image(&elf), Err(ImageError::Elf));
    }

    #[test]
    fn big_endian_kernel_is_refused() {
        let h = header(0, 4096, 1);
        assert_eq!(ImageHeader::parse(&h, 64), Err(ImageError::BigEndian));
    }

    #[test]
    fn image_size_smaller_than_file_is_refused() {
        let h = header(0, 4096, 0);
        let err = ImageHeader::parse(&h, 8192).unwrap_err();
        assert_eq!(
            err,
            ImageError::ImageSizeSmallerThanFile {
                image_size: 4096,
                file_len: 8192
            }
        );
        assert!(err.to_string().contains("4096"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for len in 0..200usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = ImageHeader::from_image(&bytes);
            let _ = ImageHeader::parse(&bytes, u64::MAX);
        }
    }
}
