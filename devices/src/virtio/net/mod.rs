//! The virtio-net device (virtio 1.2, section 5.1).
//!
//! [`Net`] offers `VIRTIO_NET_F_MAC`, `STATUS`, `MTU` (when the backend knows it),
//! `MRG_RXBUF`, `VIRTIO_RING_F_EVENT_IDX`, `VIRTIO_RING_F_INDIRECT_DESC` and, when the backend
//! carries virtio-net headers and supports them, the checksum and TSO offloads. On activation it
//! starts one worker thread that owns the queues and the backend (see `worker.rs`); reset joins
//! the thread and takes the backend back, so the device can be activated again.

use std::mem::offset_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use virtio_bindings::virtio_net as vnet;

use super::worker::Worker;
use super::{ActivateContext, ActivateError, VirtioDevice, features};
use crate::net::{Backend, BackendInfo, Offloads, VNET_HDR_LEN};

mod datapath;
mod worker;

use worker::NetHandler;

pub use datapath::{ChainError, DataPath, NetMetrics, PathConfig, RxEnd, RxPass, TxEnd};

/// The virtio device ID of a network card.
pub const DEVICE_ID_NET: u32 = 1;
/// Default size of each queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Bytes of an Ethernet header plus one VLAN tag.
const ETH_OVERHEAD: usize = 18;
/// The largest GSO frame a guest or a TAP device hands over, Ethernet header included.
const MAX_GSO_FRAME: usize = 65535 + ETH_OVERHEAD;
/// Length of the configuration space we expose: mac, status, max_virtqueue_pairs, mtu (the
/// fields of `struct virtio_net_config` before `speed`, virtio 1.2 section 5.1.4).
const CONFIG_LEN: usize = offset_of!(vnet::virtio_net_config, speed);

const fn bit(b: u32) -> u64 {
    1 << b
}

/// The link state the backend reports ([`Backend::link_up`]): the worker updates it, the
/// configuration space shows it (`VIRTIO_NET_S_LINK_UP`), and each change moves the
/// configuration generation.
#[derive(Debug)]
pub(crate) struct Link {
    up: AtomicBool,
    generation: AtomicU32,
}

impl Link {
    fn new(up: bool) -> Self {
        Self {
            up: AtomicBool::new(up),
            generation: AtomicU32::new(0),
        }
    }

    /// Records the backend's link state; returns whether it changed.
    pub(crate) fn set(&self, up: bool) -> bool {
        if self.up.swap(up, Ordering::SeqCst) == up {
            return false;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        true
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }
}

/// How to build a [`Net`] device.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The guest's MAC address. `None` takes the backend's, or a random locally administered one.
    pub mac: Option<[u8; 6]>,
    /// Size of each of the two queues (power of two, at most 32768).
    pub queue_size: u16,
    /// A name for logs and for the worker thread (`<name>-io`).
    pub name: String,
    /// TX coalescing: while the guest sends faster than the worker wakes up (a pass finds
    /// several frames), the worker keeps the guest's kicks off and looks for frames again after
    /// this long, so that a stream of frames costs timer wake-ups instead of a guest exit and a
    /// worker wake-up per frame. A guest that sends one frame at a time is never held.
    /// [`Duration::ZERO`] turns it off. Default [`DEFAULT_TX_HOLD`]. On Linux before 5.11 (no
    /// `epoll_pwait2`) the wait rounds up to a whole millisecond.
    pub tx_hold: Duration,
    /// RX interrupt holding: after a receive pass that delivered several frames (they are
    /// coming faster than the worker wakes up), the guest's interrupt waits this long, and the
    /// frames that arrive meanwhile share it. A frame that arrives alone, or a pass that finds
    /// the guest out of buffers, interrupts at once. [`Duration::ZERO`] turns it off. Default
    /// [`DEFAULT_RX_HOLD`]; longer than [`MAX_HOLD`] is clamped.
    pub rx_hold: Duration,
}

/// Default [`NetConfig::tx_hold`]: 150 µs (QEMU's virtio-net `tx=timer` mode waits as long).
pub const DEFAULT_TX_HOLD: Duration = Duration::from_micros(150);

/// Default [`NetConfig::rx_hold`]: 200 µs, measured against no holding with `firmware bench`
/// (bench/README.md, "Holding the RX interrupt").
pub const DEFAULT_RX_HOLD: Duration = Duration::from_micros(200);

/// The longest [`NetConfig::tx_hold`] and [`NetConfig::rx_hold`] taken; longer ones are
/// clamped to it: more would be a latency no guest wants.
pub const MAX_HOLD: Duration = Duration::from_millis(1);

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            mac: None,
            queue_size: DEFAULT_QUEUE_SIZE,
            name: "virtio-net".to_owned(),
            tx_hold: DEFAULT_TX_HOLD,
            rx_hold: DEFAULT_RX_HOLD,
        }
    }
}

/// A virtio-net device in front of a [`Backend`].
pub struct Net {
    name: String,
    tx_hold: Duration,
    rx_hold: Duration,
    info: BackendInfo,
    backend: Option<Box<dyn Backend>>,
    worker: Option<Worker<NetHandler>>,
    mac: [u8; 6],
    features: u64,
    queue_sizes: [u16; 2],
    metrics: Arc<NetMetrics>,
    link: Arc<Link>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("name", &self.name)
            .field("mac", &format_mac(&self.mac))
            .field("features", &format_args!("{:#x}", self.features))
            .field("tx_hold", &self.tx_hold)
            .field("rx_hold", &self.rx_hold)
            .field("active", &self.worker.is_some())
            .finish_non_exhaustive()
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A random locally administered unicast MAC address (02:xx:xx:xx:xx:xx).
fn random_mac() -> [u8; 6] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let r = h.finish().to_le_bytes();
    [0x02, r[0], r[1], r[2], r[3], r[4]]
}

/// The features a device in front of a backend with `info` offers.
fn offered_features(info: &BackendInfo) -> u64 {
    let mut f = features::VERSION_1
        | features::RING_EVENT_IDX
        | features::RING_INDIRECT_DESC
        | bit(vnet::VIRTIO_NET_F_MAC)
        | bit(vnet::VIRTIO_NET_F_STATUS)
        | bit(vnet::VIRTIO_NET_F_MRG_RXBUF);
    if info.mtu.is_some() {
        f |= bit(vnet::VIRTIO_NET_F_MTU);
    }
    // Offloads travel in the virtio-net header: only a backend that carries it can take them.
    let o = if info.vnet_hdr {
        info.offloads
    } else {
        Offloads::NONE
    };
    if o.csum {
        f |= bit(vnet::VIRTIO_NET_F_CSUM) | bit(vnet::VIRTIO_NET_F_GUEST_CSUM);
        if o.tso4 {
            f |= bit(vnet::VIRTIO_NET_F_HOST_TSO4) | bit(vnet::VIRTIO_NET_F_GUEST_TSO4);
        }
        if o.tso6 {
            f |= bit(vnet::VIRTIO_NET_F_HOST_TSO6) | bit(vnet::VIRTIO_NET_F_GUEST_TSO6);
        }
    }
    f
}

/// The data path settings that follow from the negotiated features.
fn path_config(info: &BackendInfo, acked: u64) -> PathConfig {
    let has = |b: u32| acked & bit(b) != 0;
    let mtu_frame = usize::from(info.mtu.unwrap_or(1500)) + ETH_OVERHEAD;
    let base_frame = info.max_frame_len.max(mtu_frame);
    let guest_gso = has(vnet::VIRTIO_NET_F_GUEST_TSO4) || has(vnet::VIRTIO_NET_F_GUEST_TSO6);
    let host_gso = has(vnet::VIRTIO_NET_F_HOST_TSO4) || has(vnet::VIRTIO_NET_F_HOST_TSO6);
    PathConfig {
        backend_vnet_hdr: info.vnet_hdr,
        mrg_rxbuf: has(vnet::VIRTIO_NET_F_MRG_RXBUF),
        rx_room: VNET_HDR_LEN
            + if guest_gso {
                MAX_GSO_FRAME.max(base_frame)
            } else {
                base_frame
            },
        tx_max: VNET_HDR_LEN
            + if host_gso {
                MAX_GSO_FRAME.max(base_frame)
            } else {
                base_frame
            },
        rx_batch: info.rx_batch.clamp(1, 256),
        tx_batch: info.tx_batch.clamp(1, 256),
    }
}

/// The receive offloads the guest accepted, for [`Backend::set_rx_offloads`].
fn guest_offloads(acked: u64) -> Offloads {
    let has = |b: u32| acked & bit(b) != 0;
    Offloads {
        csum: has(vnet::VIRTIO_NET_F_GUEST_CSUM),
        tso4: has(vnet::VIRTIO_NET_F_GUEST_TSO4),
        tso6: has(vnet::VIRTIO_NET_F_GUEST_TSO6),
    }
}

impl Net {
    /// Creates a device in front of `backend`.
    pub fn new(backend: Box<dyn Backend>, config: NetConfig) -> Self {
        let info = backend.info();
        let link = Arc::new(Link::new(backend.link_up()));
        let mac = config.mac.or(info.mac).unwrap_or_else(random_mac);
        let size = if config.queue_size.is_power_of_two() && config.queue_size <= 32768 {
            config.queue_size
        } else {
            DEFAULT_QUEUE_SIZE
        };
        Self {
            name: config.name,
            tx_hold: config.tx_hold.min(MAX_HOLD),
            rx_hold: config.rx_hold.min(MAX_HOLD),
            features: offered_features(&info),
            info,
            backend: Some(backend),
            worker: None,
            mac,
            queue_sizes: [size, size],
            metrics: Arc::default(),
            link,
        }
    }

    /// The device's counters (they survive resets).
    pub fn metrics(&self) -> &Arc<NetMetrics> {
        &self.metrics
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether the worker thread is running.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        use vnet::virtio_net_config as C;
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(offset_of!(C, mac), &self.mac);
        // Link status: up while we have a backend and it says the link is up.
        let status = if (self.backend.is_some() || self.worker.is_some()) && self.link.is_up() {
            vnet::VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        put(offset_of!(C, status), &status.to_le_bytes());
        put(offset_of!(C, max_virtqueue_pairs), &1u16.to_le_bytes());
        put(
            offset_of!(C, mtu),
            &self.info.mtu.unwrap_or(1500).to_le_bytes(),
        );
        c
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| cfg.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // With VIRTIO_F_VERSION_1 every field is read-only for the driver (5.1.4.2).
        tracing::debug!(device = %self.name, offset, len = data.len(), "virtio-net: config write ignored");
    }

    fn config_generation(&self) -> u32 {
        self.link.generation.load(Ordering::SeqCst)
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ActivateContext {
            mem,
            queues,
            queue_notifiers,
            interrupt,
            acked_features,
        } = ctx;
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::QueueNotReady(0));
        };
        use virtio_queue::QueueT;
        for (i, q) in [&rx, &tx].into_iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        let (Some(rx_kick), Some(tx_kick)) = (queue_notifiers.first(), queue_notifiers.get(1))
        else {
            return Err(ActivateError::QueueNotReady(0));
        };
        let mut backend = self.backend.take().ok_or_else(|| {
            ActivateError::Io(std::io::Error::other(
                "the backend was lost in an earlier failure",
            ))
        })?;
        if let Err(e) = backend.set_rx_offloads(guest_offloads(acked_features)) {
            self.backend = Some(backend);
            return Err(ActivateError::Io(e));
        }
        let cfg = path_config(&self.info, acked_features);
        tracing::debug!(device = %self.name, ?cfg, features = acked_features, "virtio-net: activating");
        let path = DataPath::new(mem, rx, tx, interrupt, cfg, Arc::clone(&self.metrics));
        let handler = NetHandler::new(
            path,
            backend,
            Arc::clone(&self.link),
            self.tx_hold,
            self.rx_hold,
        );
        match Worker::spawn(
            format!("{}-io", self.name),
            handler,
            vec![Arc::clone(rx_kick), Arc::clone(tx_kick)],
        ) {
            Ok(w) => {
                self.worker = Some(w);
                Ok(())
            }
            Err((e, handler)) => {
                self.backend = handler.map(|h| h.backend);
                Err(ActivateError::Io(e))
            }
        }
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            self.backend = w.stop().map(|h| h.backend);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(vnet_hdr: bool, offloads: Offloads, mtu: Option<u16>) -> BackendInfo {
        BackendInfo {
            vnet_hdr,
            offloads,
            mtu,
            mac: None,
            max_frame_len: 1518,
            rx_batch: 32,
            tx_batch: 32,
        }
    }

    const ALL: Offloads = Offloads {
        csum: true,
        tso4: true,
        tso6: true,
    };

    #[test]
    fn offloads_are_offered_only_with_a_vnet_header_backend() {
        let f = offered_features(&info(false, ALL, None));
        assert_eq!(f & bit(vnet::VIRTIO_NET_F_CSUM), 0);
        assert_eq!(f & bit(vnet::VIRTIO_NET_F_GUEST_TSO4), 0);
        let f = offered_features(&info(true, ALL, None));
        for b in [
            vnet::VIRTIO_NET_F_CSUM,
            vnet::VIRTIO_NET_F_GUEST_CSUM,
            vnet::VIRTIO_NET_F_HOST_TSO4,
            vnet::VIRTIO_NET_F_HOST_TSO6,
            vnet::VIRTIO_NET_F_GUEST_TSO4,
            vnet::VIRTIO_NET_F_GUEST_TSO6,
        ] {
            assert_ne!(f & bit(b), 0, "feature bit {b}");
        }
    }

    #[test]
    fn tso_is_not_offered_without_checksum_offload() {
        let f = offered_features(&info(
            true,
            Offloads {
                csum: false,
                tso4: true,
                tso6: true,
            },
            None,
        ));
        assert_eq!(f & bit(vnet::VIRTIO_NET_F_HOST_TSO4), 0);
    }

    #[test]
    fn mtu_is_offered_only_when_the_backend_knows_it() {
        assert_eq!(
            offered_features(&info(true, ALL, None)) & bit(vnet::VIRTIO_NET_F_MTU),
            0
        );
        assert_ne!(
            offered_features(&info(true, ALL, Some(9000))) & bit(vnet::VIRTIO_NET_F_MTU),
            0
        );
    }

    #[test]
    fn base_features_are_always_offered() {
        let f = offered_features(&info(false, Offloads::NONE, None));
        for want in [
            features::VERSION_1,
            features::RING_EVENT_IDX,
            bit(vnet::VIRTIO_NET_F_MAC),
            bit(vnet::VIRTIO_NET_F_STATUS),
            bit(vnet::VIRTIO_NET_F_MRG_RXBUF),
        ] {
            assert_ne!(f & want, 0);
        }
    }

    #[test]
    fn guest_tso_reserves_room_for_a_64k_frame() {
        let i = info(true, ALL, Some(1500));
        let small = path_config(&i, bit(vnet::VIRTIO_NET_F_MRG_RXBUF));
        assert_eq!(small.rx_room, VNET_HDR_LEN + 1518);
        let big = path_config(&i, bit(vnet::VIRTIO_NET_F_GUEST_TSO4));
        assert_eq!(big.rx_room, VNET_HDR_LEN + 65535 + 18);
        assert_eq!(big.tx_max, VNET_HDR_LEN + 1518);
    }

    #[test]
    fn config_space_holds_mac_link_status_pairs_and_mtu() {
        let backend = crate::net::mem::MemBackend::new(crate::net::mem::MemBackendConfig {
            mtu: Some(1400),
            ..Default::default()
        })
        .unwrap();
        let dev = Net::new(
            Box::new(backend),
            NetConfig {
                mac: Some([0x52, 0x54, 0, 1, 2, 3]),
                ..Default::default()
            },
        );
        let mut b = [0u8; 12];
        dev.read_config(0, &mut b);
        assert_eq!(&b[..6], &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 1);
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 1);
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1400);
        let mut past = [0xffu8; 4];
        dev.read_config(u64::MAX - 1, &mut past);
        assert_eq!(past, [0; 4]);
    }

    #[test]
    fn a_backend_link_change_shows_in_the_status_with_a_config_interrupt() {
        use crate::virtio::interrupt_status::CONFIG_CHANGE;
        use crate::virtio::mmio::regs;
        let mut h = harness::start(
            crate::net::mem::MemBackendConfig::default(),
            bit(vnet::VIRTIO_NET_F_STATUS) | features::VERSION_1,
        );
        let status = |h: &harness::Harness| {
            let mut b = [0u8; 2];
            h.sim.read_config(6, &mut b);
            u16::from_le_bytes(b)
        };
        let generation = |h: &harness::Harness| h.sim.read_reg(regs::CONFIG_GENERATION);
        assert_eq!(status(&h), vnet::VIRTIO_NET_S_LINK_UP as u16);
        let g0 = generation(&h);
        h.sim.ack_interrupt();
        for up in [false, true] {
            h.backend.set_link_up(up);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut bits = 0;
            while bits & CONFIG_CHANGE == 0 && std::time::Instant::now() < deadline {
                h.sim
                    .wait_interrupt(std::time::Duration::from_millis(100))
                    .unwrap();
                bits |= h.sim.ack_interrupt();
            }
            assert_ne!(
                bits & CONFIG_CHANGE,
                0,
                "no config change interrupt (up: {up})"
            );
            let want = if up {
                vnet::VIRTIO_NET_S_LINK_UP as u16
            } else {
                0
            };
            assert_eq!(status(&h), want);
        }
        assert_eq!(generation(&h), g0 + 2);
    }

    #[test]
    fn random_macs_are_locally_administered_unicast() {
        let m = random_mac();
        assert_eq!(m[0] & 0x03, 0x02);
    }
}

/// A net device behind a transport, driven by the simulator, over an in-memory backend.
#[cfg(test)]
pub(crate) mod harness {
    use std::sync::{Arc, Mutex};

    use vm_memory::GuestAddress;

    use super::{Net, NetConfig, NetMetrics};
    use crate::net::mem::{MemBackend, MemBackendConfig, MemBackendHandle};
    use crate::testing::{DriverSim, attach};
    use crate::virtio::GuestMemory;
    use crate::virtio::mmio::MmioTransport;

    /// Guest memory: two regions with a hole between them, to aim descriptors at.
    pub const HOLE: GuestAddress = GuestAddress(0x10_0000);
    pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    pub struct Harness {
        pub sim: DriverSim,
        pub backend: MemBackendHandle,
        pub transport: Arc<Mutex<MmioTransport>>,
        pub metrics: Arc<NetMetrics>,
    }

    pub fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x20_0000), 0x80_0000),
        ])
        .unwrap()
    }

    /// Builds the device without running the driver handshake.
    pub fn build(cfg: MemBackendConfig) -> Harness {
        let mem = memory();
        let backend = MemBackend::new(cfg).unwrap();
        let handle = backend.handle();
        let net = Net::new(
            Box::new(backend),
            NetConfig {
                mac: Some(MAC),
                ..Default::default()
            },
        );
        let metrics = Arc::clone(net.metrics());
        let (sim, transport) =
            attach(Box::new(net), mem, GuestAddress(0x20_0000), 0x80_0000).unwrap();
        Harness {
            sim,
            backend: handle,
            transport,
            metrics,
        }
    }

    /// Builds the device and runs the handshake with `wanted` features.
    pub fn start(cfg: MemBackendConfig, wanted: u64) -> Harness {
        let mut h = build(cfg);
        h.sim.init(wanted, 256).unwrap();
        assert!(h.transport.lock().unwrap().is_active());
        h
    }
}
