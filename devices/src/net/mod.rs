//! Network backends: where the frames of a virtio-net device come from and go to.
//!
//! The [`Backend`] trait is shaped by what the two real backends need, not by file descriptors:
//! a TAP device moves one frame per `readv`/`writev` and can carry a virtio-net header, while
//! vmnet.framework moves up to a few hundred frames per call, carries no header, and signals
//! readiness through a GCD callback. Both are covered by *batches of frames described as lists of
//! guest-memory slices* plus *one descriptor that becomes readable when frames are pending*.

use std::io;
use std::os::fd::BorrowedFd;

use vm_memory::VolatileSlice;

#[cfg(any(test, feature = "test-utils"))]
pub mod mem;
#[cfg(target_os = "linux")]
mod short_rx;
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub mod socket;
#[cfg(target_os = "linux")]
pub mod tap;
// Off macOS only with the test-only `vmnet-model` feature (the binding against a model).
#[cfg(all(any(target_os = "macos", feature = "vmnet-model"), feature = "vmnet"))]
pub mod vmnet;

/// A slice of guest memory, as handed to backends.
pub type GuestSlice<'m> = VolatileSlice<'m, ()>;

/// Length of the virtio-net header every frame starts with on the queues (`virtio_net_hdr_v1`,
/// used with `VIRTIO_F_VERSION_1`; virtio 1.2 section 5.1.6).
pub const VNET_HDR_LEN: usize = 12;

/// The longest network interface name: `IFNAMSIZ` (16) less the terminating NUL, on Linux
/// (`include/uapi/linux/if.h`) and macOS (`<net/if.h>`) alike.
pub const MAX_IFNAME_LEN: usize = 15;

/// Checks a network interface name (a TAP device, the host interface of vmnet's bridged mode)
/// the way Linux's `dev_valid_name` does: 1 to [`MAX_IFNAME_LEN`] bytes, not `.` or `..`, no
/// `/`, `:` or whitespace. Control characters (NUL among them) are refused too: no kernel takes
/// them in a name. macOS has the same length limit. Returns what is wrong, as a phrase that
/// follows "the name is invalid:".
///
/// ```
/// use devices::net::check_ifname;
/// assert_eq!(check_ifname("tap0"), Ok(()));
/// assert_eq!(check_ifname(""), Err("it is empty"));
/// assert!(check_ifname("0123456789abcdef").is_err()); // 16 bytes
/// ```
pub fn check_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("it is empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Err("it is longer than 15 characters")
    } else if name == "." || name == ".." {
        Err("'.' and '..' are reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Err("it contains '/', ':', whitespace or a control character")
    } else {
        Ok(())
    }
}

/// Offloads a backend can perform or accept, in virtio-net terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Frames may carry a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub csum: bool,
    /// TCP segmentation offload over IPv4.
    pub tso4: bool,
    /// TCP segmentation offload over IPv6.
    pub tso6: bool,
}

impl Offloads {
    /// No offload at all.
    pub const NONE: Self = Self {
        csum: false,
        tso4: false,
        tso6: false,
    };
}

/// The offloads of a backend whose own offload switches are set when it starts (vmnet): with a
/// virtio-net header the frames may carry partial checksums, and TSO segments when `tso` is on;
/// without the header no offload can be described to the guest, so checksum offload or TSO
/// without it is refused. Returns `None` for a header-less backend.
pub fn header_offloads(
    virtio_header: bool,
    tso: bool,
    checksum_offload: bool,
) -> Result<Option<Offloads>, &'static str> {
    match (virtio_header, tso, checksum_offload) {
        (true, _, true) => Err(
            "vmnet's checksum offload cannot be combined with the virtio-net header: the header carries checksum state itself",
        ),
        (true, tso, false) => Ok(Some(Offloads {
            csum: true,
            tso4: tso,
            tso6: tso,
        })),
        (false, false, false) => Ok(None),
        (false, _, _) => Err(
            "without the virtio-net header (vmnet's virtio-header mode), TSO and checksum offload cannot be passed to the guest",
        ),
    }
}

/// Checks that a guest accepted every receive offload of a backend that cannot turn them off
/// (vmnet fixes them when the interface starts).
pub fn fixed_rx_offloads(backend: Offloads, guest: Offloads) -> Result<(), String> {
    let missing = [
        (backend.csum && !guest.csum, "GUEST_CSUM"),
        (backend.tso4 && !guest.tso4, "GUEST_TSO4"),
        (backend.tso6 && !guest.tso6, "GUEST_TSO6"),
    ];
    let missing: Vec<&str> = missing.iter().filter(|m| m.0).map(|m| m.1).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the guest declined {}, which the backend delivers and cannot turn off: start it without those offloads",
            missing.join(", ")
        ))
    }
}

/// What a backend is and can do; read once when the device is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// Frames exchanged with the backend start with a [`VNET_HDR_LEN`]-byte virtio-net header
    /// (TAP with `IFF_VNET_HDR`). When `false`, the device writes and strips the header itself and
    /// the backend sees bare Ethernet frames (vmnet).
    pub vnet_hdr: bool,
    /// Offloads the backend can take from the guest and hand to it. Only meaningful with
    /// `vnet_hdr`, since the header is what carries them.
    pub offloads: Offloads,
    /// The link MTU, if the backend knows it (offered to the guest with `VIRTIO_NET_F_MTU`).
    pub mtu: Option<u16>,
    /// A MAC address the backend assigns to the guest (vmnet does), used unless the VMM sets one.
    pub mac: Option<[u8; 6]>,
    /// The largest frame the backend moves, Ethernet header included, virtio-net header excluded.
    pub max_frame_len: usize,
    /// How many frames one [`Backend::recv`] call can fill at most.
    pub rx_batch: usize,
    /// How many frames one [`Backend::send`] call can take at most.
    pub tx_batch: usize,
}

/// A backend of plain Ethernet frames: no virtio-net header, no offloads, no MTU or MAC of its
/// own, frames of up to 1518 bytes (1500 of payload, a VLAN tag), 64 frames per call.
impl Default for BackendInfo {
    fn default() -> Self {
        Self {
            vnet_hdr: false,
            offloads: Offloads::NONE,
            mtu: None,
            mac: None,
            max_frame_len: 1518,
            rx_batch: 64,
            tx_batch: 64,
        }
    }
}

/// One frame's destination: guest buffers the backend fills.
#[derive(Debug)]
pub struct RxFrame<'s, 'm> {
    /// The buffers, in order. With [`BackendInfo::vnet_hdr`] they start with room for the header.
    pub bufs: &'s [GuestSlice<'m>],
    /// Set by the backend: bytes written (header included when the backend carries one).
    pub len: usize,
}

/// One frame to send, gathered from guest buffers.
#[derive(Debug)]
pub struct TxFrame<'s, 'm> {
    /// The frame's bytes in order. With [`BackendInfo::vnet_hdr`] they start with the header.
    pub bufs: &'s [GuestSlice<'m>],
}

impl TxFrame<'_, '_> {
    /// The frame's total length.
    pub fn len(&self) -> usize {
        self.bufs.iter().map(|b| b.len()).sum()
    }

    /// Whether the frame has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A source and sink of Ethernet frames for a virtio-net device.
///
/// The device's worker thread owns the backend (hence `Send`), calls it only from that thread,
/// and hands it back when the device is reset, so one backend serves successive activations.
pub trait Backend: Send {
    /// What the backend is and can do.
    fn info(&self) -> BackendInfo;

    /// A descriptor that becomes readable, edge-style, when frames are pending.
    ///
    /// The worker registers it with its poller and, once woken, calls [`recv`](Self::recv) until
    /// it returns fewer frames than asked. A backend whose descriptor is a notifier clears it
    /// inside `recv` before reading, so that no wake-up is lost.
    fn ready_fd(&self) -> BorrowedFd<'_>;

    /// Fills up to `frames.len()` frames, setting each one's `len`; returns how many were
    /// filled. Fewer than asked (0 included) means nothing more is pending now.
    fn recv(&mut self, frames: &mut [RxFrame<'_, '_>]) -> io::Result<usize>;

    /// Sends the frames in order; returns how many were taken. The device counts the rest as
    /// dropped (a full host queue behaves like a full NIC ring), so a backend never blocks.
    fn send(&mut self, frames: &[TxFrame<'_, '_>]) -> io::Result<usize>;

    /// Tells the backend which offloads the guest accepted on receive, so it only hands the guest
    /// frames the guest can take (TAP: `TUNSETOFFLOAD`).
    fn set_rx_offloads(&mut self, offloads: Offloads) -> io::Result<()>;

    /// Whether the link is up: frames can reach a peer. The worker reads it after each pass
    /// and, when it changed, updates `VIRTIO_NET_S_LINK_UP` in the configuration space and
    /// raises a configuration change interrupt. A socket whose peer went away reports `false`.
    fn link_up(&self) -> bool {
        true
    }

    /// Called by the worker each time [`ready_fd`](Self::ready_fd) fired, before it receives
    /// (which it only does while the guest has buffers): work of the backend's own, such as
    /// finishing a frame the socket took only part of. The default does nothing.
    fn on_ready(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn info(&self) -> BackendInfo {
        (**self).info()
    }
    fn ready_fd(&self) -> BorrowedFd<'_> {
        (**self).ready_fd()
    }
    fn recv(&mut self, frames: &mut [RxFrame<'_, '_>]) -> io::Result<usize> {
        (**self).recv(frames)
    }
    fn send(&mut self, frames: &[TxFrame<'_, '_>]) -> io::Result<usize> {
        (**self).send(frames)
    }
    fn set_rx_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        (**self).set_rx_offloads(offloads)
    }
    fn link_up(&self) -> bool {
        (**self).link_up()
    }
    fn on_ready(&mut self) -> io::Result<()> {
        (**self).on_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernels_rules() {
        for good in ["tap0", "abcdefghijklmno", "en0", "vnet-lan.1"] {
            assert_eq!(check_ifname(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            "abcdefghijklmnop",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\0b",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
        // The limit is in bytes, as the kernel counts: 8 two-byte characters are too many.
        assert!(check_ifname("éééééééé").is_err());
    }

    #[test]
    fn the_virtio_header_brings_checksum_offload_and_tso_when_asked() {
        let o = header_offloads(true, true, false).unwrap().unwrap();
        assert!(o.csum && o.tso4 && o.tso6);
        let o = header_offloads(true, false, false).unwrap().unwrap();
        assert!(o.csum && !o.tso4 && !o.tso6);
    }

    #[test]
    fn offloads_without_the_header_are_refused() {
        assert!(header_offloads(false, true, false).is_err());
        assert!(header_offloads(false, false, true).is_err());
        assert_eq!(header_offloads(false, false, false), Ok(None));
    }

    #[test]
    fn header_and_checksum_offload_together_are_refused() {
        assert!(header_offloads(true, false, true).is_err());
    }

    #[test]
    fn a_guest_declining_fixed_offloads_is_told_which() {
        let all = Offloads {
            csum: true,
            tso4: true,
            tso6: true,
        };
        assert!(fixed_rx_offloads(all, all).is_ok());
        assert!(fixed_rx_offloads(Offloads::NONE, Offloads::NONE).is_ok());
        let e = fixed_rx_offloads(
            all,
            Offloads {
                csum: true,
                tso4: false,
                tso6: true,
            },
        )
        .unwrap_err();
        assert!(e.contains("GUEST_TSO4") && !e.contains("GUEST_TSO6"), "{e}");
    }
}
