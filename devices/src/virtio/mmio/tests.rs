//! Transport tests: the register interface as a driver sees it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use vm_memory::GuestAddress;

use super::*;
use crate::net::mem::MemBackendConfig;
use crate::virtio::net::harness::{Harness, MAC, build, start};

/// How long a wait for the device may take.
const T: Duration = Duration::from_secs(5);
const ACK_DRV: u32 = status::ACKNOWLEDGE | status::DRIVER;
const ACK_DRV_FOK: u32 = ACK_DRV | status::FEATURES_OK;

fn harness() -> Harness {
    build(MemBackendConfig::default())
}

fn to_features_ok(h: &mut Harness) {
    h.sim.write_reg(regs::STATUS, status::ACKNOWLEDGE);
    h.sim.write_reg(regs::STATUS, ACK_DRV);
    h.sim.negotiate(features::VERSION_1).unwrap();
}

fn metric(h: &Harness, f: impl Fn(&TransportMetrics) -> &AtomicU64) -> u64 {
    let t = h.transport.lock().unwrap();
    f(t.metrics()).load(Ordering::Relaxed)
}

#[test]
fn identification_registers_describe_a_v2_net_device() {
    let h = harness();
    assert_eq!(h.sim.read_reg(regs::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(h.sim.read_reg(regs::VERSION), 2);
    assert_eq!(h.sim.read_reg(regs::DEVICE_ID), 1);
    assert_eq!(h.sim.read_reg(regs::VENDOR_ID), VENDOR_ID);
    h.sim.write_reg(regs::QUEUE_SEL, 0);
    assert_eq!(h.sim.read_reg(regs::QUEUE_NUM_MAX), 256);
    h.sim.write_reg(regs::QUEUE_SEL, 2);
    assert_eq!(h.sim.read_reg(regs::QUEUE_NUM_MAX), 0);
}

#[test]
fn device_features_are_read_in_32_bit_pages() {
    let h = harness();
    let f = h.sim.device_features();
    assert_ne!(f & features::VERSION_1, 0);
    h.sim.write_reg(regs::DEVICE_FEATURES_SEL, 7);
    assert_eq!(h.sim.read_reg(regs::DEVICE_FEATURES), 0);
}

#[test]
fn status_must_advance_one_step_at_a_time() {
    let h = harness();
    h.sim.write_reg(regs::STATUS, status::DRIVER_OK);
    assert_eq!(h.sim.read_reg(regs::STATUS), 0);
    h.sim.write_reg(regs::STATUS, status::ACKNOWLEDGE);
    h.sim
        .write_reg(regs::STATUS, status::ACKNOWLEDGE | status::FEATURES_OK);
    assert_eq!(h.sim.read_reg(regs::STATUS), status::ACKNOWLEDGE);
    assert_eq!(metric(&h, |m| &m.bad_status_transition), 2);
}

#[test]
fn clearing_status_bits_other_than_by_reset_is_refused() {
    let h = harness();
    h.sim.write_reg(regs::STATUS, status::ACKNOWLEDGE);
    h.sim.write_reg(regs::STATUS, ACK_DRV);
    h.sim.write_reg(regs::STATUS, status::DRIVER);
    assert_eq!(h.sim.read_reg(regs::STATUS), ACK_DRV);
}

#[test]
fn failed_can_be_set_at_any_time() {
    let h = harness();
    h.sim.write_reg(regs::STATUS, status::ACKNOWLEDGE);
    h.sim
        .write_reg(regs::STATUS, status::ACKNOWLEDGE | status::FAILED);
    assert_eq!(
        h.sim.read_reg(regs::STATUS),
        status::ACKNOWLEDGE | status::FAILED
    );
}

#[test]
fn the_driver_cannot_set_device_needs_reset() {
    let h = harness();
    h.sim.write_reg(regs::STATUS, status::ACKNOWLEDGE);
    h.sim.write_reg(
        regs::STATUS,
        status::ACKNOWLEDGE | status::DEVICE_NEEDS_RESET,
    );
    assert_eq!(h.sim.read_reg(regs::STATUS), status::ACKNOWLEDGE);
}

#[test]
fn features_ok_is_refused_without_version_1() {
    let mut h = harness();
    h.sim.write_reg(regs::STATUS, status::ACKNOWLEDGE);
    h.sim.write_reg(regs::STATUS, ACK_DRV);
    assert!(h.sim.negotiate(0).is_err());
    assert_eq!(h.sim.read_reg(regs::STATUS), ACK_DRV);
    assert_eq!(metric(&h, |m| &m.bad_features), 1);
}

#[test]
fn features_ok_is_refused_for_features_not_offered() {
    let mut h = harness();
    h.sim.write_reg(regs::STATUS, status::ACKNOWLEDGE);
    h.sim.write_reg(regs::STATUS, ACK_DRV);
    // Bit 17 (VIRTIO_NET_F_CTRL_VQ) is not offered.
    assert!(h.sim.negotiate(features::VERSION_1 | 1 << 17).is_err());
}

#[test]
fn driver_features_cannot_change_after_features_ok() {
    let mut h = harness();
    to_features_ok(&mut h);
    h.sim.write_reg(regs::DRIVER_FEATURES_SEL, 0);
    h.sim.write_reg(regs::DRIVER_FEATURES, 0xffff_ffff);
    assert_eq!(metric(&h, |m| &m.bad_features), 1);
}

#[test]
fn queue_size_must_be_a_power_of_two_within_the_maximum() {
    let mut h = harness();
    to_features_ok(&mut h);
    h.sim.write_reg(regs::QUEUE_SEL, 0);
    for bad in [0, 3, 100, 512, 0x1_0000] {
        h.sim.write_reg(regs::QUEUE_NUM, bad);
    }
    assert_eq!(metric(&h, |m| &m.bad_queue_config), 5);
    h.sim.write_reg(regs::QUEUE_NUM, 128);
    assert_eq!(metric(&h, |m| &m.bad_queue_config), 5);
}

#[test]
fn queue_with_rings_outside_memory_cannot_be_made_ready() {
    let mut h = harness();
    to_features_ok(&mut h);
    h.sim.write_reg(regs::QUEUE_SEL, 0);
    h.sim.write_reg(regs::QUEUE_NUM, 256);
    // The descriptor table would start in the hole between the memory regions.
    h.sim.write_reg(regs::QUEUE_DESC_LOW, 0x10_0000);
    h.sim.write_reg(regs::QUEUE_DRIVER_LOW, 0x20_0000);
    h.sim.write_reg(regs::QUEUE_DEVICE_LOW, 0x20_1000);
    h.sim.write_reg(regs::QUEUE_READY, 1);
    assert_eq!(h.sim.read_reg(regs::QUEUE_READY), 0);
    // A table that starts inside memory but runs into the hole is refused too.
    h.sim.write_reg(regs::QUEUE_DESC_LOW, 0x10_0000 - 16 * 128);
    h.sim.write_reg(regs::QUEUE_READY, 1);
    assert_eq!(h.sim.read_reg(regs::QUEUE_READY), 0);
    h.sim.write_reg(regs::QUEUE_DESC_LOW, 0x20_2000);
    h.sim.write_reg(regs::QUEUE_READY, 1);
    assert_eq!(h.sim.read_reg(regs::QUEUE_READY), 1);
}

#[test]
fn misaligned_ring_addresses_are_refused() {
    let mut h = harness();
    to_features_ok(&mut h);
    h.sim.write_reg(regs::QUEUE_SEL, 0);
    h.sim.write_reg(regs::QUEUE_DESC_LOW, 0x20_0008);
    h.sim.write_reg(regs::QUEUE_DEVICE_LOW, 0x20_0002);
    assert_eq!(metric(&h, |m| &m.bad_queue_config), 2);
}

#[test]
fn queue_registers_are_read_only_outside_setup() {
    let mut h = harness();
    h.sim.write_reg(regs::QUEUE_SEL, 0);
    h.sim.write_reg(regs::QUEUE_NUM, 128);
    assert_eq!(metric(&h, |m| &m.bad_queue_config), 1);
    to_features_ok(&mut h);
    h.sim.setup_queue(0, 128).unwrap();
    // Ready queues cannot be reconfigured.
    h.sim.write_reg(regs::QUEUE_NUM, 64);
    assert_eq!(metric(&h, |m| &m.bad_queue_config), 2);
}

#[test]
fn driver_ok_with_a_queue_not_ready_sets_device_needs_reset() {
    let mut h = harness();
    to_features_ok(&mut h);
    h.sim.setup_queue(0, 64).unwrap();
    h.sim
        .write_reg(regs::STATUS, ACK_DRV_FOK | status::DRIVER_OK);
    let s = h.sim.read_reg(regs::STATUS);
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0);
    assert!(!h.transport.lock().unwrap().is_active());
    assert_eq!(h.sim.read_reg(regs::INTERRUPT_STATUS) & 2, 2);
    // Reset recovers.
    h.sim.init(0, 64).unwrap();
    assert!(h.transport.lock().unwrap().is_active());
}

#[test]
fn queue_notify_fires_the_queue_notifier() {
    let h = harness();
    let n = h.transport.lock().unwrap().queue_notifiers()[1].clone();
    h.sim.write_reg(regs::QUEUE_NOTIFY, 1);
    assert!(n.consume().unwrap());
    h.sim.write_reg(regs::QUEUE_NOTIFY, 9);
    assert_eq!(metric(&h, |m| &m.bad_notify), 1);
}

#[test]
fn interrupt_ack_clears_only_the_acknowledged_bits() {
    let h = harness();
    let irq = h.transport.lock().unwrap().interrupt().clone();
    irq.signal_used().unwrap();
    irq.signal_config().unwrap();
    assert_eq!(h.sim.read_reg(regs::INTERRUPT_STATUS), 3);
    h.sim.write_reg(regs::INTERRUPT_ACK, 1);
    assert_eq!(h.sim.read_reg(regs::INTERRUPT_STATUS), 2);
    h.sim.write_reg(regs::INTERRUPT_ACK, 0xffff_fffc);
    assert_eq!(h.sim.read_reg(regs::INTERRUPT_STATUS), 2);
}

#[test]
fn config_space_reads_the_mac_at_any_width() {
    let h = harness();
    let mut mac = [0u8; 6];
    h.sim.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    let mut b = [0u8; 1];
    h.sim.read_config(5, &mut b);
    assert_eq!(b[0], MAC[5]);
    assert_eq!(h.sim.read_reg(regs::CONFIG_GENERATION), 0);
    // Writes are ignored and do not change the generation.
    h.transport
        .lock()
        .unwrap()
        .write(regs::CONFIG, &[0xff, 0xff]);
    h.sim.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    assert_eq!(h.sim.read_reg(regs::CONFIG_GENERATION), 0);
}

#[test]
fn odd_widths_and_offsets_read_zero_and_write_nothing() {
    let h = harness();
    let mut t = h.transport.lock().unwrap();
    let mut b2 = [0xffu8; 2];
    t.read(regs::MAGIC_VALUE, &mut b2);
    assert_eq!(b2, [0, 0]);
    let mut b4 = [0xffu8; 4];
    t.read(regs::MAGIC_VALUE + 1, &mut b4);
    assert_eq!(b4, [0; 4]);
    t.read(0x0f8, &mut b4);
    assert_eq!(b4, [0; 4]);
    t.write(regs::STATUS, &[1]);
    t.write(regs::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
    t.write(regs::MAGIC_VALUE, &1u32.to_le_bytes());
    assert_eq!(t.status(), 0);
    assert_eq!(t.metrics().bad_register_access.load(Ordering::Relaxed), 6);
}

#[test]
fn no_shared_memory_regions_are_reported() {
    let h = harness();
    h.sim.write_reg(regs::SHM_SEL, 0);
    assert_eq!(h.sim.read_reg(regs::SHM_LEN_LOW), u32::MAX);
    assert_eq!(h.sim.read_reg(regs::SHM_LEN_HIGH), u32::MAX);
}

#[test]
fn reset_stops_the_worker_and_returns_to_the_initial_state() {
    let mut h = start(MemBackendConfig::default(), 0);
    h.sim.post_rx_buffers(4, 2048).unwrap();
    // While the device runs, its worker fills the posted buffers with the backend's frames...
    h.backend.inject(&[0xaa; 64]);
    assert_eq!(h.sim.recv_frames(1, T).unwrap(), vec![vec![0xaa; 64]]);
    h.sim.write_reg(regs::STATUS, 0);
    {
        let t = h.transport.lock().unwrap();
        assert!(!t.is_active());
        assert_eq!(t.status(), 0);
    }
    h.sim.write_reg(regs::QUEUE_SEL, 0);
    assert_eq!(h.sim.read_reg(regs::QUEUE_READY), 0);
    assert_eq!(h.sim.read_reg(regs::INTERRUPT_STATUS), 0);
    // ...and no longer after the reset: a frame injected now stays in the backend, and the three
    // buffers still on the old RX ring stay unused.
    h.backend.inject(&[0xab; 64]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(h.backend.pending(), 1);
    assert_eq!(h.sim.take_used(0).unwrap(), []);
    // The frame waits for the next activation, which delivers it.
    h.sim.init(0, 128).unwrap();
    h.sim.post_rx_buffers(1, 2048).unwrap();
    assert_eq!(h.sim.recv_frames(1, T).unwrap(), vec![vec![0xab; 64]]);
}

#[test]
fn the_device_works_again_after_reset_and_reactivation() {
    let mut h = start(MemBackendConfig::default(), 0);
    h.sim.write_reg(regs::STATUS, 0);
    let _ = h.sim.alloc(0, 8);
    h.sim.init(0, 128).unwrap();
    h.sim.post_rx_buffers(2, 2048).unwrap();
    h.backend.inject(&[0x5a; 70]);
    assert_eq!(h.sim.recv_frames(1, T).unwrap(), vec![vec![0x5a; 70]]);
}

#[test]
fn reset_in_the_middle_of_traffic_joins_the_worker_each_time() {
    let mut h = start(MemBackendConfig::default(), 0);
    for round in 0..10u8 {
        h.sim.post_rx_buffers(8, 2048).unwrap();
        for _ in 0..20 {
            h.backend.inject(&[round; 60]);
        }
        h.sim.send_frame(&[round; 60]).unwrap();
        h.sim.write_reg(regs::STATUS, 0);
        assert!(!h.transport.lock().unwrap().is_active());
        h.sim.init(0, 64).unwrap();
    }
    // is_active() turned false only after the worker was joined; traffic still flows: the
    // frames the rounds left in the backend arrive, in order, then a marker frame, and no frame
    // was lost to the resets.
    let marker = vec![0x77; 61];
    h.backend.inject(&marker);
    h.sim.post_rx_buffers(8, 2048).unwrap();
    let mut left_over = Vec::new();
    loop {
        let f = h.sim.recv_frames(1, T).unwrap().remove(0);
        if f == marker {
            break;
        }
        assert!(
            f.len() == 60 && f[0] < 10 && f.iter().all(|&b| b == f[0]),
            "only frames of the rounds come before the marker: {f:?}"
        );
        left_over.push(f[0]);
        h.sim.post_rx_buffers(1, 2048).unwrap();
    }
    assert!(
        left_over.is_sorted(),
        "the frames left over arrive in order: {left_over:?}"
    );
    assert_eq!(h.backend.pending(), 0);
    assert_eq!(h.metrics.rx_frames.load(Ordering::Relaxed), 10 * 20 + 1);
}

#[test]
fn ready_queue_addresses_keep_their_high_halves() {
    let mut h = harness();
    to_features_ok(&mut h);
    h.sim.write_reg(regs::QUEUE_SEL, 0);
    h.sim.write_reg(regs::QUEUE_DESC_HIGH, 1);
    h.sim.write_reg(regs::QUEUE_DESC_LOW, 0x1000);
    let t = h.transport.lock().unwrap();
    assert_eq!(t.queues[0].desc_table(), GuestAddress(0x1_0000_1000).0);
}
