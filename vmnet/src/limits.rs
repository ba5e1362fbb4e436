//! Size limits of vmnet packets and of one `vmnet_read`/`vmnet_write` call (portable: built and
//! tested on every host).
//!
//! # What the documentation settles, and what it does not
//!
//! - `vmnet_max_packet_size_key` (Apple's page): "The maximum size of the packet that an app can
//!   write to the interface. This also defines the minimum size of the packet an app needs to
//!   pass to the vmnet function for a successful read." `vmnet_read`'s page repeats the read
//!   rule: every packet buffer at least that large.
//! - `vmnet_enable_virtio_header_key` (Apple's page, macOS 15.4): "Enable virtio headers in all
//!   packets", pointing at section 5.1.6 of the virtio specification (the 12-byte
//!   `virtio_net_hdr_v1`). The page does **not** say whether the maximum packet size counts that
//!   header.
//! - `vmnet_enable_tso_key` (Apple's page, macOS 11): no discussion at all. With TSO a packet is a
//!   GSO segment of up to 64 KiB of IP packet; the page does not say whether the maximum packet
//!   size grows with it.
//! - Apple's vmnet documentation, as QEMU's `net/vmnet_int.h` quotes it: "Each read/write call
//!   allows up to 200 packets to be read or written for a maximum of 256KB."
//!
//! [`FrameLimits`] therefore works under every plausible reading: in virtio-header mode the
//! header is added on top of the maximum packet size (if vmnet counted it already, our limit is
//! 12 bytes generous, and vmnet refuses what it must — the caller counts that refusal); with TSO
//! the limit is the largest GSO frame whatever `max_packet_size` says. Read buffers get the same
//! size, so they are large enough under either reading. The unit tests below check each reading.

/// Length of the virtio-net header vmnet puts in front of every packet in virtio-header mode
/// (`virtio_net_hdr_v1`, virtio 1.1 section 5.1.6, which Apple's page for
/// `vmnet_enable_virtio_header_key` cites).
pub const VIRTIO_NET_HDR_LEN: usize = 12;

/// Length of an Ethernet header with one 802.1Q tag.
pub const ETHERNET_VLAN_HEADER_LEN: usize = 18;

/// The largest frame a TSO packet can carry: a 64 KiB IP packet behind an Ethernet header with a
/// VLAN tag (the same bound the virtio-net device uses for GSO frames).
pub const MAX_GSO_FRAME: usize = 65535 + ETHERNET_VLAN_HEADER_LEN;

/// The most packets one `vmnet_read` or `vmnet_write` call may move (Apple's vmnet
/// documentation, as quoted in QEMU's `net/vmnet_int.h`: "Each read/write call allows up to 200
/// packets to be read or written for a maximum of 256KB").
pub const MAX_PACKETS_PER_CALL: usize = 200;

/// The most bytes one `vmnet_read` or `vmnet_write` call may move (same source as
/// [`MAX_PACKETS_PER_CALL`]; "256KB" is taken as 256 KiB). For reads the bytes counted are the
/// buffer capacities offered, since those are what vmnet sees before it reads.
pub const MAX_BYTES_PER_CALL: usize = 256 * 1024;

/// The packet sizes of one interface, following its mode.
///
/// ```
/// use vmnet::limits::FrameLimits;
///
/// // Plain mode: the maximum packet size is the whole story.
/// let plain = FrameLimits::new(1514, false, false);
/// assert_eq!((plain.max_packet(), plain.read_capacity()), (1514, 1514));
///
/// // Virtio-header mode: a full 1514-byte frame plus its 12-byte header passes.
/// let hdr = FrameLimits::new(1514, true, false);
/// assert_eq!(hdr.max_packet(), 1526);
/// assert_eq!(hdr.max_frame(), 1514);
///
/// // TSO: a 64 KiB segment passes, whatever the maximum packet size says.
/// let tso = FrameLimits::new(1514, true, true);
/// assert!(tso.allows_write(12 + 65535 + 14));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    frame: usize,
    header: usize,
}

impl FrameLimits {
    /// The limits of an interface that reported `max_packet_size`, started with or without the
    /// virtio-net header and TSO.
    ///
    /// ```
    /// let l = vmnet::limits::FrameLimits::new(1514, true, true);
    /// assert_eq!(l.header_len(), 12);
    /// assert_eq!(l.max_frame(), vmnet::limits::MAX_GSO_FRAME);
    /// ```
    pub fn new(max_packet_size: usize, virtio_header: bool, tso: bool) -> Self {
        let frame = if tso {
            max_packet_size.max(MAX_GSO_FRAME)
        } else {
            max_packet_size
        };
        let header = if virtio_header { VIRTIO_NET_HDR_LEN } else { 0 };
        Self { frame, header }
    }

    /// The largest frame, virtio-net header excluded: what a guest's receive buffers must hold
    /// after the header.
    ///
    /// ```
    /// assert_eq!(vmnet::limits::FrameLimits::new(1514, true, false).max_frame(), 1514);
    /// ```
    pub fn max_frame(&self) -> usize {
        self.frame
    }

    /// Bytes of virtio-net header in every packet: 12 in virtio-header mode, else 0.
    ///
    /// ```
    /// assert_eq!(vmnet::limits::FrameLimits::new(1514, false, false).header_len(), 0);
    /// ```
    pub fn header_len(&self) -> usize {
        self.header
    }

    /// The largest packet handed to `vmnet_write` (header included), and the capacity every
    /// `vmnet_read` buffer gets.
    ///
    /// ```
    /// assert_eq!(vmnet::limits::FrameLimits::new(1514, true, false).max_packet(), 1526);
    /// ```
    pub fn max_packet(&self) -> usize {
        self.frame + self.header
    }

    /// The capacity each packet of a `vmnet_read` must have (and is trimmed to).
    ///
    /// ```
    /// assert_eq!(vmnet::limits::FrameLimits::new(1514, true, false).read_capacity(), 1526);
    /// ```
    pub fn read_capacity(&self) -> usize {
        self.max_packet()
    }

    /// Whether a packet of `len` bytes (header included) may be handed to `vmnet_write`.
    ///
    /// ```
    /// let l = vmnet::limits::FrameLimits::new(1514, true, false);
    /// assert!(l.allows_write(1526));
    /// assert!(!l.allows_write(1527));
    /// ```
    pub fn allows_write(&self, len: usize) -> bool {
        len <= self.max_packet()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One reading of Apple's documentation: what vmnet reports and what it then accepts.
    #[derive(Clone, Copy, Debug)]
    enum Reading {
        /// `max_packet_size` counts the Ethernet frame only; packets may carry the header on top.
        ExcludesHeader,
        /// `max_packet_size` counts the header too.
        IncludesHeader,
    }

    /// What vmnet would do under `reading` for an interface whose frames are at most `frame`
    /// bytes: (reported max_packet_size, largest packet accepted, smallest read buffer needed).
    fn vmnet_under(reading: Reading, frame: usize, header: bool) -> (usize, usize, usize) {
        let h = if header { VIRTIO_NET_HDR_LEN } else { 0 };
        match reading {
            Reading::ExcludesHeader => (frame, frame + h, frame + h),
            Reading::IncludesHeader => (frame + h, frame + h, frame + h),
        }
    }

    const READINGS: [Reading; 2] = [Reading::ExcludesHeader, Reading::IncludesHeader];

    #[test]
    fn every_frame_vmnet_accepts_passes_our_check_under_each_reading() {
        for reading in READINGS {
            for header in [false, true] {
                for frame in [1514, 1518, 9014] {
                    let (reported, accepted, _) = vmnet_under(reading, frame, header);
                    let l = FrameLimits::new(reported, header, false);
                    assert!(
                        l.allows_write(accepted),
                        "{reading:?} header={header} {frame}"
                    );
                    // A full-size frame with its header, as the guest sends it.
                    let guest = frame + if header { VIRTIO_NET_HDR_LEN } else { 0 };
                    assert!(l.allows_write(guest), "{reading:?} header={header} {frame}");
                }
            }
        }
    }

    #[test]
    fn read_buffers_are_large_enough_under_each_reading() {
        for reading in READINGS {
            for header in [false, true] {
                for frame in [1514, 1518, 9014] {
                    let (reported, _, needed) = vmnet_under(reading, frame, header);
                    let l = FrameLimits::new(reported, header, false);
                    assert!(l.read_capacity() >= needed, "{reading:?} header={header}");
                    // The guest buffers behind the header hold the largest frame.
                    assert!(l.max_frame() >= frame, "{reading:?} header={header}");
                }
            }
        }
    }

    #[test]
    fn the_local_limit_is_never_more_than_one_header_generous() {
        // Under the includes-header reading vmnet refuses packets above max_packet_size; we let
        // at most 12 more bytes through (and count vmnet's refusal), never a whole extra frame.
        for reading in READINGS {
            let (reported, accepted, _) = vmnet_under(reading, 1514, true);
            let l = FrameLimits::new(reported, true, false);
            assert!(
                l.max_packet() <= accepted + VIRTIO_NET_HDR_LEN,
                "{reading:?}"
            );
            assert!(!l.allows_write(reported + VIRTIO_NET_HDR_LEN + 1));
        }
        // Plain mode is exact.
        let l = FrameLimits::new(1514, false, false);
        assert!(l.allows_write(1514) && !l.allows_write(1515));
    }

    #[test]
    fn tso_segments_pass_whatever_max_packet_size_says() {
        let largest = VIRTIO_NET_HDR_LEN + 65535 + 14;
        for reading in READINGS {
            // vmnet may report the MTU frame, or a 64 KiB one, with or without the header.
            for frame in [1514, MAX_GSO_FRAME] {
                let (reported, _, needed) = vmnet_under(reading, frame, true);
                let l = FrameLimits::new(reported, true, true);
                assert!(l.allows_write(largest), "{reading:?} {frame}");
                assert!(l.read_capacity() >= needed, "{reading:?} {frame}");
                assert!(l.read_capacity() >= largest, "{reading:?} {frame}");
                assert!(l.max_frame() >= MAX_GSO_FRAME);
            }
        }
    }

    #[test]
    fn today_s_plain_check_would_drop_a_full_frame_with_its_header() {
        // The defect this module fixes: comparing a header-mode packet with max_packet_size.
        let reported = 1514;
        let full = reported + VIRTIO_NET_HDR_LEN;
        assert!(full > reported);
        assert!(FrameLimits::new(reported, true, false).allows_write(full));
    }
}
