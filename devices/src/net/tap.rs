//! The Linux TAP backend.
//!
//! Opens (or creates) a TAP interface with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, sets the
//! virtio-net header size to the 12 bytes of `virtio_net_hdr_v1` so that frames move between
//! the guest's buffers and the kernel with no header translation, and makes the descriptor
//! non-blocking. Each frame is one `readv`/`writev` on guest memory; a received frame larger than
//! its first buffers, after small ones, is copied in part from a host buffer (`short_rx`).
//! Facts from the kernel's `Documentation/networking/tuntap.rst` and `include/uapi/linux/if_tun.h`.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::short_rx::{ShortRx, iovecs};
use super::{Backend, BackendInfo, Offloads, RxFrame, TxFrame, VNET_HDR_LEN};
use crate::scratch::recycle;

// ioctl numbers from <linux/if_tun.h>: _IOW('T', nr, int/unsigned int). They are the same on
// every Linux architecture this project targets (x86_64, aarch64).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// Errors opening a TAP device, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is one the kernel would refuse ([`super::check_ifname`]).
    #[error(
        "invalid TAP name {name:?}: {reason} (use 1 to 15 characters without '/', ':' or whitespace)"
    )]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `/dev/net/tun` is missing.
    #[error("cannot open /dev/net/tun: load the tun module (modprobe tun)")]
    NoTunDevice(#[source] io::Error),
    /// Not allowed to open or create the interface.
    #[error(
        "not allowed to open TAP {name:?}: run as root, or create it for your user first (ip tuntap add {name} mode tap user $USER)"
    )]
    Permission {
        /// The interface name.
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The interface exists but is not a TAP device, or is busy.
    #[error("cannot attach to {name:?}: it is not a TAP device or it is in use")]
    Attach {
        /// The interface name.
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another ioctl or fcntl failed.
    #[error("cannot configure TAP {name:?} ({what})")]
    Configure {
        /// The interface name.
        name: String,
        /// The step that failed.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// `struct ifreq` with the MTU member of its union.
#[repr(C)]
struct IfReqMtu {
    name: [libc::c_char; libc::IFNAMSIZ],
    mtu: libc::c_int,
    _pad: [u8; 20],
}

fn ifname(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], TapError> {
    super::check_ifname(name).map_err(|reason| TapError::BadName {
        name: name.to_owned(),
        reason,
    })?;
    let bytes = name.as_bytes();
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, &b) in out.iter_mut().zip(bytes) {
        *o = b as libc::c_char;
    }
    Ok(out)
}

/// A TAP interface opened for a virtio-net device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    mtu: u16,
    /// The iovec buffer of `readv`/`writev`, kept between calls (empty, and typed without the
    /// raw pointers that would make the backend `!Send`): no allocation per frame.
    iov: Vec<(usize, usize)>,
    /// Receives each frame with a short iovec while frames are small.
    rx: ShortRx,
}

// `Tap::iov` keeps its buffer only while the layouts match (see `crate::scratch::recycle`).
const _: () = assert!(
    size_of::<libc::iovec>() == size_of::<(usize, usize)>()
        && align_of::<libc::iovec>() == align_of::<(usize, usize)>()
);

impl Tap {
    /// Opens the TAP interface `name`, creating it if it does not exist (a created interface
    /// goes away when the device closes it, unless it was made persistent beforehand).
    pub fn open(name: &str) -> Result<Self, TapError> {
        let ifr_name = ifname(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => TapError::Permission {
                    name: name.to_owned(),
                    source: e,
                },
                _ => TapError::NoTunDevice(e),
            })?;
        let mut req = IfReqFlags {
            name: ifr_name,
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        // SAFETY: TUNSETIFF reads (and writes back) a `struct ifreq`; `req` has its layout and
        // size (40 bytes) and lives across the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &raw mut req) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission {
                    name: name.to_owned(),
                    source: e,
                },
                _ => TapError::Attach {
                    name: name.to_owned(),
                    source: e,
                },
            });
        }
        // The kernel may have completed a name template such as "tap%d".
        // SAFETY: the kernel NUL-terminates the name within IFNAMSIZ.
        let actual = unsafe { CStr::from_ptr(req.name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let err_name = actual.clone();
        let configure = move |what: &'static str, source: io::Error| TapError::Configure {
            name: err_name.clone(),
            what,
            source,
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int from the pointer, which points to a live int.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &raw const hdr_len) };
        if r < 0 {
            return Err(configure("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        let mtu = query_mtu(&ifr_name).map_err(|e| configure("SIOCGIFMTU", e))?;
        let tap = Self {
            file,
            name: actual,
            mtu,
            iov: Vec::new(),
            rx: ShortRx::default(),
        };
        tap.set_offload_flags(0)
            .map_err(|e| configure("TUNSETOFFLOAD", e))?;
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface's MTU when it was opened.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    fn set_offload_flags(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value, no memory is accessed.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

fn query_mtu(name: &[libc::c_char; libc::IFNAMSIZ]) -> io::Result<u16> {
    // SAFETY: socket takes no pointers; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReqMtu {
        name: *name,
        mtu: 0,
        _pad: [0; 20],
    };
    // SAFETY: SIOCGIFMTU fills the mtu member of a `struct ifreq`; `req` has that layout and
    // lives across the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &raw mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u16::try_from(req.mtu).unwrap_or(u16::MAX))
}

/// The outcome of one frame's `readv`/`writev` (`n`), the `done` frames before it moved:
/// `Ok(bytes)` to go on, or `Err(result)` to end the batch. A full or empty device ends it with
/// the count so far; another error ends it with the count if some frames moved (the error comes
/// again on the next call), or with the error itself.
fn frame_done(n: isize, done: usize) -> Result<usize, io::Result<usize>> {
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = io::Error::last_os_error();
    Err(if would_block(&e) || done > 0 {
        Ok(done)
    } else {
        Err(e)
    })
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR)
    )
}

impl Backend for Tap {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            vnet_hdr: true,
            offloads: Offloads {
                csum: true,
                tso4: true,
                tso6: true,
            },
            mtu: Some(self.mtu),
            mac: None,
            max_frame_len: usize::from(self.mtu) + 18,
            rx_batch: 64,
            tx_batch: 64,
        }
    }

    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn recv(&mut self, frames: &mut [RxFrame<'_, '_>]) -> io::Result<usize> {
        let fd = self.file.as_raw_fd();
        let mut iov: Vec<libc::iovec> = recycle(std::mem::take(&mut self.iov));
        let result = (|| {
            for (i, f) in frames.iter_mut().enumerate() {
                let n = self.rx.readv(fd, f.bufs, &mut iov);
                match frame_done(n, i) {
                    Ok(len) => f.len = len,
                    Err(stop) => return stop,
                }
            }
            Ok(frames.len())
        })();
        self.iov = recycle(iov);
        result
    }

    fn send(&mut self, frames: &[TxFrame<'_, '_>]) -> io::Result<usize> {
        let fd = self.file.as_raw_fd();
        let mut iov: Vec<libc::iovec> = recycle(std::mem::take(&mut self.iov));
        let result = (|| {
            for (i, f) in frames.iter().enumerate() {
                iovecs(f.bufs, &mut iov);
                // SAFETY: each iovec describes a VolatileSlice of guest memory checked against
                // the guest memory map and borrowed for the call; the kernel only reads from
                // them.
                let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
                if let Err(stop) = frame_done(n, i) {
                    return stop;
                }
            }
            Ok(frames.len())
        })();
        self.iov = recycle(iov);
        result
    }

    fn set_rx_offloads(&mut self, o: Offloads) -> io::Result<()> {
        let mut flags = 0;
        if o.csum {
            flags |= TUN_F_CSUM;
            if o.tso4 {
                flags |= TUN_F_TSO4;
            }
            if o.tso6 {
                flags |= TUN_F_TSO6;
            }
        }
        self.set_offload_flags(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_fit_ifnamsiz() {
        assert!(matches!(ifname(""), Err(TapError::BadName { .. })));
        assert!(matches!(
            ifname("0123456789abcdef"),
            Err(TapError::BadName { .. })
        ));
        assert!(ifname("0123456789abcde").is_ok());
        assert!(matches!(ifname("a\0b"), Err(TapError::BadName { .. })));
        // The shared rules (`check_ifname`), not only the length: the kernel refuses these too.
        assert!(matches!(ifname("a/b"), Err(TapError::BadName { .. })));
        assert!(matches!(ifname(".."), Err(TapError::BadName { .. })));
    }

    #[test]
    fn ifreq_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(std::mem::size_of::<IfReqMtu>(), 40);
    }
}
