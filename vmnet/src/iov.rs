//! iovec lists: building them, trimming a header prefix off, dropping empty entries (portable:
//! built and tested on every host).
//!
//! vmnet rejects a zero-length iovec inside a packet descriptor (docs/design.md, "vmnet facts"),
//! and a virtio-net device that skips the 12-byte virtio-net header of a descriptor chain produces
//! one whenever the header fills a whole descriptor. [`push_trimmed`] does both jobs: it skips a
//! prefix across iovec boundaries and never emits an empty entry.
//!
//! Building an iovec is safe (it is two numbers); handing one to the framework is not, and is done
//! only by `unsafe` functions whose callers vouch for the memory.

pub use libc::iovec;

/// An iovec for `len` bytes at `base`.
///
/// ```
/// let mut buf = [0u8; 4];
/// let v = vmnet::iov::iovec_from(buf.as_mut_ptr(), buf.len());
/// assert_eq!(v.iov_len, 4);
/// ```
pub fn iovec_from(base: *mut u8, len: usize) -> iovec {
    iovec {
        iov_base: base.cast(),
        iov_len: len,
    }
}

/// An iovec covering `buf` (for writes through it, the slice must stay mutably borrowed while the
/// iovec is used).
///
/// ```
/// let mut buf = vec![0u8; 10];
/// assert_eq!(vmnet::iov::iovec_mut(&mut buf).iov_len, 10);
/// ```
pub fn iovec_mut(buf: &mut [u8]) -> iovec {
    iovec_from(buf.as_mut_ptr(), buf.len())
}

/// An iovec covering `buf`, for reads only (vmnet's `struct iovec` has a mutable base pointer;
/// the framework only reads through it in `vmnet_write`).
///
/// ```
/// let buf = [1u8, 2, 3];
/// assert_eq!(vmnet::iov::iovec_ref(&buf).iov_len, 3);
/// ```
pub fn iovec_ref(buf: &[u8]) -> iovec {
    iovec_from(buf.as_ptr().cast_mut(), buf.len())
}

/// The total length of `iovs`.
///
/// ```
/// let (a, b) = ([0u8; 3], [0u8; 5]);
/// let v = [vmnet::iov::iovec_ref(&a), vmnet::iov::iovec_ref(&b)];
/// assert_eq!(vmnet::iov::total_len(&v), 8);
/// ```
pub fn total_len(iovs: &[iovec]) -> usize {
    iovs.iter().map(|v| v.iov_len).sum()
}

/// Appends `src` to `out`, leaving out the first `skip` bytes (across entry boundaries) and every
/// zero-length entry; returns the number of bytes appended.
///
/// ```
/// use vmnet::iov::{iovec_ref, push_trimmed, total_len};
///
/// let hdr = [0u8; 12];
/// let data = [0u8; 100];
/// let mut out = Vec::new();
/// // A 12-byte header alone in the first buffer: the first entry vanishes entirely.
/// let n = push_trimmed(&mut out, [iovec_ref(&hdr), iovec_ref(&data)], 12);
/// assert_eq!((n, out.len()), (100, 1));
/// assert_eq!(out[0].iov_base as *const u8, data.as_ptr());
/// ```
pub fn push_trimmed(
    out: &mut Vec<iovec>,
    src: impl IntoIterator<Item = iovec>,
    mut skip: usize,
) -> usize {
    let mut total = 0;
    for v in src {
        let mut base = v.iov_base.cast::<u8>();
        let mut len = v.iov_len;
        if skip > 0 {
            let s = skip.min(len);
            // wrapping_add: pointer arithmetic without dereferencing; the result stays inside the
            // caller's buffer because s <= len.
            base = base.wrapping_add(s);
            len -= s;
            skip -= s;
        }
        if len == 0 {
            continue;
        }
        out.push(iovec_from(base, len));
        total += len;
    }
    total
}

/// Copies the bytes described by `iovs` into `dst`; returns how many were copied (at most
/// `dst.len()`).
///
/// # Safety
///
/// Every entry of `iovs` must be valid for reads of `iov_len` bytes for the duration of the call,
/// and must not overlap `dst`.
///
/// ```
/// use vmnet::iov::{gather, iovec_ref};
///
/// let (a, b) = ([1u8, 2], [3u8, 4, 5]);
/// let mut dst = [0u8; 8];
/// // SAFETY: both iovecs describe live arrays that do not overlap `dst`.
/// let n = unsafe { gather(&[iovec_ref(&a), iovec_ref(&b)], &mut dst) };
/// assert_eq!(&dst[..n], &[1, 2, 3, 4, 5]);
/// ```
pub unsafe fn gather(iovs: &[iovec], dst: &mut [u8]) -> usize {
    let mut off = 0;
    for v in iovs {
        let n = v.iov_len.min(dst.len() - off);
        if n == 0 {
            if off == dst.len() {
                break;
            }
            continue;
        }
        // SAFETY: the caller guarantees `v` is readable for `iov_len >= n` bytes and does not
        // overlap `dst`; `dst[off..off + n]` is in bounds by the `min` above.
        unsafe {
            std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), dst[off..].as_mut_ptr(), n)
        };
        off += n;
    }
    off
}

/// Copies `src` into the memory described by `iovs`; returns how many bytes were copied (at most
/// the smaller of the two lengths).
///
/// # Safety
///
/// Every entry of `iovs` must be valid for writes of `iov_len` bytes for the duration of the
/// call, and must not overlap `src`.
///
/// ```
/// use vmnet::iov::{iovec_mut, scatter};
///
/// let (mut a, mut b) = ([0u8; 2], [0u8; 4]);
/// let iovs = [iovec_mut(&mut a), iovec_mut(&mut b)];
/// // SAFETY: the iovecs describe live arrays that nothing else accesses during the call.
/// let n = unsafe { scatter(&[9, 8, 7], &iovs) };
/// assert_eq!((n, a, b), (3, [9, 8], [7, 0, 0, 0]));
/// ```
pub unsafe fn scatter(src: &[u8], iovs: &[iovec]) -> usize {
    let mut off = 0;
    for v in iovs {
        if off == src.len() {
            break;
        }
        let n = v.iov_len.min(src.len() - off);
        // SAFETY: the caller guarantees `v` is writable for `iov_len >= n` bytes and does not
        // overlap `src`; `src[off..off + n]` is in bounds by the `min` above.
        unsafe { std::ptr::copy_nonoverlapping(src[off..].as_ptr(), v.iov_base.cast::<u8>(), n) };
        off += n;
    }
    off
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ptr(v: &iovec) -> *const u8 {
        v.iov_base.cast::<u8>().cast_const()
    }

    #[test]
    fn no_skip_keeps_every_non_empty_entry() {
        let (a, b) = ([0u8; 3], [0u8; 4]);
        let mut out = Vec::new();
        let n = push_trimmed(&mut out, [iovec_ref(&a), iovec_ref(&b)], 0);
        assert_eq!(n, 7);
        assert_eq!(out.len(), 2);
        assert_eq!(ptr(&out[0]), a.as_ptr());
        assert_eq!(ptr(&out[1]), b.as_ptr());
    }

    #[test]
    fn zero_length_entries_are_dropped_anywhere() {
        let (a, b) = ([0u8; 3], [0u8; 4]);
        let empty: [u8; 0] = [];
        let mut out = Vec::new();
        let n = push_trimmed(
            &mut out,
            [
                iovec_ref(&empty),
                iovec_ref(&a),
                iovec_ref(&empty),
                iovec_ref(&b),
                iovec_ref(&empty),
            ],
            0,
        );
        assert_eq!((n, out.len()), (7, 2));
        assert!(out.iter().all(|v| v.iov_len > 0));
    }

    #[test]
    fn skip_inside_the_first_entry_advances_its_base() {
        let a = [0u8; 20];
        let mut out = Vec::new();
        let n = push_trimmed(&mut out, [iovec_ref(&a)], 12);
        assert_eq!(n, 8);
        assert_eq!(ptr(&out[0]), a[12..].as_ptr());
        assert_eq!(out[0].iov_len, 8);
    }

    #[test]
    fn skip_of_exactly_the_first_entry_removes_it() {
        let (h, d) = ([0u8; 12], [0u8; 60]);
        let mut out = Vec::new();
        assert_eq!(
            push_trimmed(&mut out, [iovec_ref(&h), iovec_ref(&d)], 12),
            60
        );
        assert_eq!(out.len(), 1);
        assert_eq!(ptr(&out[0]), d.as_ptr());
    }

    #[test]
    fn skip_spanning_several_entries_lands_mid_entry() {
        let (a, b, c) = ([0u8; 5], [0u8; 5], [0u8; 10]);
        let mut out = Vec::new();
        let n = push_trimmed(&mut out, [iovec_ref(&a), iovec_ref(&b), iovec_ref(&c)], 12);
        assert_eq!(n, 8);
        assert_eq!(out.len(), 1);
        assert_eq!(ptr(&out[0]), c[2..].as_ptr());
    }

    #[test]
    fn skip_beyond_the_total_leaves_nothing() {
        let a = [0u8; 5];
        let mut out = Vec::new();
        assert_eq!(push_trimmed(&mut out, [iovec_ref(&a)], 12), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn push_trimmed_appends_to_existing_entries() {
        let (a, b) = ([0u8; 2], [0u8; 3]);
        let mut out = vec![iovec_ref(&a)];
        push_trimmed(&mut out, [iovec_ref(&b)], 0);
        assert_eq!(out.len(), 2);
        assert_eq!(total_len(&out), 5);
    }

    #[test]
    fn gather_concatenates_and_stops_at_the_destination_end() {
        let (a, b) = ([1u8, 2, 3], [4u8, 5, 6]);
        let mut dst = [0u8; 4];
        // SAFETY: the iovecs describe live arrays disjoint from `dst`.
        let n = unsafe { gather(&[iovec_ref(&a), iovec_ref(&b)], &mut dst) };
        assert_eq!((n, dst), (4, [1, 2, 3, 4]));
    }

    #[test]
    fn gather_skips_empty_entries() {
        let (a, b) = ([1u8], [2u8]);
        let empty: [u8; 0] = [];
        let mut dst = [0u8; 4];
        // SAFETY: the iovecs describe live arrays disjoint from `dst`.
        let n = unsafe {
            gather(
                &[
                    iovec_ref(&empty),
                    iovec_ref(&a),
                    iovec_ref(&empty),
                    iovec_ref(&b),
                ],
                &mut dst,
            )
        };
        assert_eq!(&dst[..n], &[1, 2]);
    }

    #[test]
    fn scatter_fills_entries_in_order_and_stops_at_the_source_end() {
        let (mut a, mut b, mut c) = ([0u8; 2], [0u8; 2], [0u8; 2]);
        let iovs = [iovec_mut(&mut a), iovec_mut(&mut b), iovec_mut(&mut c)];
        // SAFETY: the iovecs describe live arrays not otherwise accessed during the call.
        let n = unsafe { scatter(&[1, 2, 3], &iovs) };
        assert_eq!(n, 3);
        assert_eq!((a, b, c), ([1, 2], [3, 0], [0, 0]));
    }
}
