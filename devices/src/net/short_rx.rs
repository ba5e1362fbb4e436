//! Receiving one frame per `readv` with a short iovec.
//!
//! With mergeable buffers the device sets aside, for each frame it may receive, room for the
//! largest frame the guest accepts: with `GUEST_TSO4` that is 64 KiB, some 40 of the 1.5 KiB
//! buffers Linux posts while its traffic is small. A `readv` over the whole room makes the
//! kernel import and check all those iovecs for every frame (and once more for the call that
//! finds nothing), when most frames are 64 bytes. [`ShortRx`] reads the first
//! [`DIRECT_BYTES`] or so of the room straight into guest memory and the rest into one host
//! buffer, copied to the guest only for a longer frame. After a longer frame it reads into the
//! whole room, with no copy, until a frame fits the short part again, so a stream of large
//! frames (TCP with segmentation offload) is not copied either.
//!
//! A descriptor that keeps frames whole (TAP: one `read` returns one frame, cut to the room
//! given) is all it needs; it is plain POSIX `readv`.

use std::os::fd::RawFd;

use super::GuestSlice;

/// Most iovecs per call (`UIO_MAXIOV` on Linux, `IOV_MAX` on macOS).
pub(crate) const MAX_IOVECS: usize = 1024;

/// The guest bytes of a frame's room read directly while frames are short: the buffers that
/// hold the first this many bytes (two of Linux's 1.5 KiB buffers, room for a 1500-byte-MTU
/// frame and its virtio-net header).
pub(crate) const DIRECT_BYTES: usize = 2048;

/// Builds iovecs for `bufs` into `iov` (at most [`MAX_IOVECS`]).
pub(crate) fn iovecs(bufs: &[GuestSlice<'_>], iov: &mut Vec<libc::iovec>) {
    iov.clear();
    iov.extend(bufs.iter().take(MAX_IOVECS).map(|b| libc::iovec {
        iov_base: b.ptr_guard_mut().as_ptr().cast(),
        iov_len: b.len(),
    }));
}

/// How many of `bufs`, from the first, hold the first [`DIRECT_BYTES`] (at least one), and
/// their bytes.
fn direct_part(bufs: &[GuestSlice<'_>]) -> (usize, usize) {
    let mut bytes = 0;
    for (i, b) in bufs.iter().enumerate().take(MAX_IOVECS - 1) {
        if bytes >= DIRECT_BYTES {
            return (i, bytes);
        }
        bytes += b.len();
    }
    (bufs.len().min(MAX_IOVECS - 1), bytes)
}

/// One backend's state for [`readv`](Self::readv): the host buffer and whether the last frame
/// was long.
#[derive(Debug, Default)]
pub(crate) struct ShortRx {
    /// The rest of the room while frames are short; grows once to the largest room seen.
    bounce: Vec<u8>,
    /// The last frame did not fit the direct part: read into the whole room.
    long: bool,
    /// Bytes copied from the host buffer to guest memory, for tests and the curious.
    pub(crate) copied: u64,
}

impl ShortRx {
    /// Reads one frame from `fd` into `bufs`, as one `readv(2)` over them would: returns what
    /// `readv` returned (bytes read, or -1 with `errno` set), and the bytes are in `bufs` in
    /// order. `iov` is scratch.
    pub(crate) fn readv(
        &mut self,
        fd: RawFd,
        bufs: &[GuestSlice<'_>],
        iov: &mut Vec<libc::iovec>,
    ) -> isize {
        if self.long {
            // Straight into the whole room: nothing to copy, nothing to size.
            iovecs(bufs, iov);
            // SAFETY: each iovec describes a VolatileSlice the caller borrows for the call
            // (guest memory checked against the memory map, or host memory); the kernel
            // writes at most `iov_len` bytes to each.
            let n = unsafe { libc::readv(fd, iov.as_ptr(), iov.len() as libc::c_int) };
            if let Ok(len) = usize::try_from(n) {
                self.long = len > direct_part(bufs).1;
            }
            return n;
        }
        let (direct, direct_len) = direct_part(bufs);
        let rest = &bufs[direct..bufs.len().min(MAX_IOVECS)];
        let rest_len: usize = rest.iter().map(|b| b.len()).sum();
        if rest_len == 0 {
            iovecs(bufs, iov);
        } else {
            if self.bounce.len() < rest_len {
                self.bounce.resize(rest_len, 0);
            }
            iovecs(&bufs[..direct], iov);
            iov.push(libc::iovec {
                iov_base: self.bounce.as_mut_ptr().cast(),
                iov_len: rest_len,
            });
        }
        // SAFETY: each iovec describes either a VolatileSlice the caller borrows for the call
        // (guest memory checked against the memory map, or host memory) or the first
        // `rest_len` bytes of `self.bounce`, which is at least that long and not otherwise
        // touched during the call; the kernel writes at most `iov_len` bytes to each.
        let n = unsafe { libc::readv(fd, iov.as_ptr(), iov.len() as libc::c_int) };
        let Ok(len) = usize::try_from(n) else {
            return n;
        };
        if len > direct_len {
            let mut from = &self.bounce[..len - direct_len];
            for b in rest {
                let k = from.len().min(b.len());
                b.copy_from(&from[..k]);
                from = &from[k..];
            }
            self.copied += (len - direct_len) as u64;
        }
        self.long = len > direct_len;
        n
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    /// A pair of connected `SOCK_SEQPACKET` sockets: like TAP, each read returns one whole
    /// frame, cut to the room given.
    fn pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        // SAFETY: both descriptors were just created and are owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn send(fd: &OwnedFd, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "{}", io::Error::last_os_error());
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
            .collect()
    }

    /// A room of `count` buffers of `size` bytes (stand-ins for guest buffers); receives one
    /// frame and returns `readv`'s result and the room's bytes.
    fn receive(rx: &mut ShortRx, fd: &OwnedFd, count: usize, size: usize) -> (isize, Vec<u8>) {
        let mut mem = vec![0u8; count * size];
        let n = {
            let bufs: Vec<GuestSlice<'_>> = mem.chunks_mut(size).map(GuestSlice::from).collect();
            rx.readv(fd.as_raw_fd(), &bufs, &mut Vec::new())
        };
        (n, mem)
    }

    #[test]
    fn frames_land_whole_and_in_order_and_only_a_long_one_after_short_ones_is_copied() {
        let (tx, rx_fd) = pair();
        let mut rx = ShortRx::default();
        // 43 buffers of 1536 bytes: room for a 64 KiB frame, as the device plans it.
        let (count, size) = (43, 1536);
        // The direct part is the first two buffers.
        let direct = 2 * size;
        let mut copied = 0;
        for (len, copies) in [
            (64, false),
            (direct, false),
            (direct + 1, true),
            (60_000, false),
            (1500, false),
            (65_000, true),
            (count * size, false),
        ] {
            send(&tx, &frame(len, len as u8));
            let (n, mem) = receive(&mut rx, &rx_fd, count, size);
            assert_eq!(n, len as isize, "frame of {len}");
            assert_eq!(&mem[..len], frame(len, len as u8), "frame of {len}");
            assert!(mem[len..].iter().all(|&b| b == 0), "frame of {len}");
            if copies {
                copied += (len - direct) as u64;
            }
            assert_eq!(rx.copied, copied, "after the frame of {len}");
        }
    }

    #[test]
    fn nothing_pending_is_readvs_own_answer_and_changes_nothing() {
        let (_tx, rx_fd) = pair();
        let mut rx = ShortRx::default();
        let (n, mem) = receive(&mut rx, &rx_fd, 43, 1536);
        assert_eq!(n, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::EAGAIN)
        );
        assert!(mem.iter().all(|&b| b == 0));
        assert!(!rx.long);
    }

    #[test]
    fn a_frame_longer_than_the_room_is_cut_to_it_as_readv_would() {
        let (tx, rx_fd) = pair();
        let mut rx = ShortRx::default();
        let f = frame(20_000, 3);
        send(&tx, &f);
        let (n, mem) = receive(&mut rx, &rx_fd, 8, 1536);
        assert_eq!(n, (8 * 1536) as isize);
        assert_eq!(mem, f[..8 * 1536]);
    }

    #[test]
    fn a_room_that_is_all_direct_needs_no_host_buffer() {
        let (tx, rx_fd) = pair();
        let mut rx = ShortRx::default();
        let f = frame(1800, 4);
        send(&tx, &f);
        let (n, mem) = receive(&mut rx, &rx_fd, 1, 2048);
        assert_eq!(n, 1800);
        assert_eq!(mem[..1800], f);
        assert!(rx.bounce.is_empty());
    }
}
