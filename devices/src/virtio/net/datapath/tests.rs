//! Data path tests: the whole device (transport, worker, data path) driven by the simulator
//! over real guest memory and an in-memory backend.

use std::sync::atomic::Ordering;
use std::time::Duration;

use vm_memory::{Address, Bytes, GuestAddress};

use crate::net::VNET_HDR_LEN;
use crate::net::mem::MemBackendConfig;
use crate::testing::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use crate::virtio::features;
use crate::virtio::net::harness::{HOLE, start};
use virtio_bindings::virtio_net as vnet;

const T: Duration = Duration::from_secs(5);
const MRG: u64 = 1 << vnet::VIRTIO_NET_F_MRG_RXBUF;

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + T;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in time"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn tx_frame_reaches_a_headerless_backend_without_the_virtio_header() {
    let mut h = start(MemBackendConfig::default(), 0);
    let f = frame(60, 1);
    let head = h.sim.send_frame(&f).unwrap();
    let used = h.sim.wait_used(1, 1, T).unwrap();
    assert_eq!(used[0].id, head);
    wait_for(|| h.backend.sent_count() == 1);
    assert_eq!(h.backend.take_sent(), vec![f]);
    assert_eq!(h.metrics.tx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(h.metrics.tx_bytes.load(Ordering::Relaxed), 60);
}

#[test]
fn tx_frame_keeps_the_virtio_header_for_a_vnet_backend() {
    let mut h = start(
        MemBackendConfig {
            vnet_hdr: true,
            ..Default::default()
        },
        0,
    );
    let f = frame(100, 2);
    h.sim.send_frame(&f).unwrap();
    h.sim.wait_used(1, 1, T).unwrap();
    let sent = h.backend.take_sent();
    assert_eq!(sent[0].len(), VNET_HDR_LEN + 100);
    assert_eq!(&sent[0][VNET_HDR_LEN..], &f[..]);
}

#[test]
fn tx_completion_raises_the_interrupt_with_the_used_ring_bit() {
    let mut h = start(MemBackendConfig::default(), 0);
    h.sim.send_frame(&frame(60, 3)).unwrap();
    h.sim.wait_used(1, 1, T).unwrap();
    wait_for(|| h.sim.read_reg(crate::virtio::mmio::regs::INTERRUPT_STATUS) & 1 == 1);
    assert_eq!(h.sim.ack_interrupt() & 1, 1);
    assert_eq!(
        h.sim.read_reg(crate::virtio::mmio::regs::INTERRUPT_STATUS),
        0
    );
}

#[test]
fn rx_frame_lands_in_a_guest_buffer_after_a_header_with_num_buffers_1() {
    let mut h = start(MemBackendConfig::default(), 0);
    h.sim.post_rx_buffers(4, 2048).unwrap();
    let f = frame(1514, 4);
    h.backend.inject(&f);
    let got = h.sim.recv_frames(1, T).unwrap();
    assert_eq!(got, vec![f]);
    assert_eq!(h.metrics.rx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(h.metrics.rx_bytes.load(Ordering::Relaxed), 1514);
}

#[test]
fn rx_frames_wait_in_the_backend_until_the_guest_posts_buffers() {
    let mut h = start(MemBackendConfig::default(), 0);
    h.backend.inject(&frame(64, 5));
    h.backend.inject(&frame(64, 6));
    wait_for(|| h.metrics.rx_no_buffers.load(Ordering::Relaxed) >= 1);
    assert_eq!(h.backend.pending(), 2);
    h.sim.post_rx_buffers(2, 2048).unwrap();
    let got = h.sim.recv_frames(2, T).unwrap();
    assert_eq!(got, vec![frame(64, 5), frame(64, 6)]);
}

#[test]
fn rx_with_mergeable_buffers_spreads_a_frame_over_several_buffers() {
    let mut h = start(MemBackendConfig::default(), MRG);
    assert_ne!(h.sim.features() & MRG, 0);
    // 1530 bytes of room are reserved per frame: 7 buffers of 256 bytes.
    h.sim.post_rx_buffers(16, 256).unwrap();
    let f = frame(1000, 7);
    h.backend.inject(&f);
    let got = h.sim.recv_frames(1, T).unwrap();
    assert_eq!(got, vec![f]);
    // The next frame uses the buffers the first one did not need.
    let g = frame(300, 8);
    h.backend.inject(&g);
    assert_eq!(h.sim.recv_frames(1, T).unwrap(), vec![g]);
}

#[test]
fn backend_without_header_gets_a_header_written_by_the_device() {
    let mut h = start(MemBackendConfig::default(), MRG);
    h.sim.post_rx_buffers(8, 2048).unwrap();
    h.backend.inject(&frame(80, 9));
    h.sim.recv_frames(1, T).unwrap();
    // recv_frames checked num_buffers == 1; the rest of the header must be zero (no offload).
    assert_eq!(h.backend.truncated(), 0);
}

#[test]
fn many_frames_in_both_directions_are_all_delivered_in_order() {
    let mut h = start(MemBackendConfig::default(), MRG | features::RING_EVENT_IDX);
    for i in 0..100u8 {
        h.backend.inject(&frame(60 + usize::from(i), i));
    }
    let mut got = Vec::new();
    while got.len() < 100 {
        h.sim.post_rx_buffers(32, 2048).unwrap();
        let n = (100 - got.len()).min(32);
        got.extend(h.sim.recv_frames(n, T).unwrap());
    }
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f, &frame(60 + i, i as u8));
    }
    for i in 0..50u8 {
        h.sim.send_frame(&frame(70, i)).unwrap();
        h.sim.wait_used(1, 1, T).unwrap();
    }
    wait_for(|| h.backend.sent_count() == 50);
}

/// Sends a good frame and checks it arrives: the device still serves traffic.
fn assert_still_serving(h: &mut crate::virtio::net::harness::Harness) {
    let f = frame(64, 0xee);
    h.sim.send_frame(&f).unwrap();
    wait_for(|| h.backend.take_sent().contains(&f));
}

#[test]
fn tx_descriptor_outside_guest_memory_is_dropped_and_counted() {
    let mut h = start(MemBackendConfig::default(), 0);
    let hdr = h.sim.alloc(12, 8).unwrap();
    let head = h
        .sim
        .add_chain(
            1,
            &[(hdr, 12, false), (HOLE.unchecked_add(0x100), 64, false)],
        )
        .unwrap();
    h.sim.notify(1);
    let used = h.sim.wait_used(1, 1, T).unwrap();
    assert_eq!(used[0].id, head);
    assert_eq!(used[0].len, 0);
    assert_eq!(h.metrics.bad_chains.load(Ordering::Relaxed), 1);
    assert_eq!(h.backend.sent_count(), 0);
    assert_still_serving(&mut h);
}

#[test]
fn descriptor_running_past_the_end_of_memory_is_dropped() {
    let mut h = start(MemBackendConfig::default(), 0);
    let end = GuestAddress(0x20_0000 + 0x80_0000 - 8);
    h.sim.add_chain(1, &[(end, 64, false)]).unwrap();
    h.sim.notify(1);
    h.sim.wait_used(1, 1, T).unwrap();
    assert_eq!(h.metrics.bad_chains.load(Ordering::Relaxed), 1);
    assert_still_serving(&mut h);
}

#[test]
fn chain_with_a_loop_is_dropped() {
    let mut h = start(MemBackendConfig::default(), 0);
    let buf = h.sim.alloc(64, 8).unwrap();
    // Descriptors 200 -> 201 -> 200 -> ...
    h.sim
        .write_descriptor(1, 200, buf, 32, VRING_DESC_F_NEXT, 201)
        .unwrap();
    h.sim
        .write_descriptor(1, 201, buf, 32, VRING_DESC_F_NEXT, 200)
        .unwrap();
    h.sim.publish(1, 200).unwrap();
    h.sim.notify(1);
    let used = h.sim.wait_used(1, 1, T).unwrap();
    assert_eq!((used[0].id, used[0].len), (200, 0));
    assert_eq!(h.metrics.bad_chains.load(Ordering::Relaxed), 1);
    assert_still_serving(&mut h);
}

#[test]
fn chain_with_next_outside_the_table_is_dropped() {
    let mut h = start(MemBackendConfig::default(), 0);
    let buf = h.sim.alloc(64, 8).unwrap();
    h.sim
        .write_descriptor(1, 210, buf, 64, VRING_DESC_F_NEXT, 4000)
        .unwrap();
    h.sim.publish(1, 210).unwrap();
    h.sim.notify(1);
    h.sim.wait_used(1, 1, T).unwrap();
    assert_eq!(h.metrics.bad_chains.load(Ordering::Relaxed), 1);
    assert_still_serving(&mut h);
}

#[test]
fn head_index_outside_the_queue_is_counted_and_gets_no_used_element() {
    // virtio-queue refuses a used element for such a head; the batched publication must too.
    for q in [0u16, 1] {
        let mut h = start(MemBackendConfig::default(), 0);
        h.sim.publish(q, 4000).unwrap();
        h.sim.notify(q);
        wait_for(|| h.metrics.bad_chains.load(Ordering::Relaxed) == 1);
        let f = frame(64, 7);
        let head = if q == 1 {
            h.sim.send_frame(&f).unwrap()
        } else {
            let heads = h.sim.post_rx_buffers(1, 1600).unwrap();
            h.backend.inject(&f);
            heads[0]
        };
        let used = h.sim.wait_used(q, 1, T).unwrap();
        let ids: Vec<u16> = used.iter().map(|u| u.id).collect();
        assert_eq!(ids, vec![head], "queue {q}");
    }
}

#[test]
fn zero_length_descriptor_is_dropped() {
    let mut h = start(MemBackendConfig::default(), 0);
    let buf = h.sim.alloc(64, 8).unwrap();
    h.sim
        .add_chain(1, &[(buf, 12, false), (buf, 0, false)])
        .unwrap();
    h.sim.notify(1);
    h.sim.wait_used(1, 1, T).unwrap();
    assert_eq!(h.metrics.bad_chains.load(Ordering::Relaxed), 1);
    assert_still_serving(&mut h);
}

#[test]
fn device_writable_descriptor_in_a_tx_chain_is_dropped() {
    let mut h = start(MemBackendConfig::default(), 0);
    let buf = h.sim.alloc(128, 8).unwrap();
    h.sim
        .add_chain(1, &[(buf, 12, false), (buf, 64, true)])
        .unwrap();
    h.sim.notify(1);
    h.sim.wait_used(1, 1, T).unwrap();
    assert_eq!(h.metrics.bad_chains.load(Ordering::Relaxed), 1);
    assert_eq!(h.backend.sent_count(), 0);
    assert_still_serving(&mut h);
}

#[test]
fn device_readable_descriptor_in_an_rx_chain_is_returned_unused() {
    let mut h = start(MemBackendConfig::default(), 0);
    let buf = h.sim.alloc(2048, 8).unwrap();
    let bad = h.sim.add_chain(0, &[(buf, 2048, false)]).unwrap();
    h.sim.notify(0);
    let used = h.sim.wait_used(0, 1, T).unwrap();
    assert_eq!((used[0].id, used[0].len), (bad, 0));
    assert_eq!(h.metrics.bad_chains.load(Ordering::Relaxed), 1);
    // Good buffers still get frames.
    h.sim.post_rx_buffers(1, 2048).unwrap();
    h.backend.inject(&frame(64, 1));
    assert_eq!(h.sim.recv_frames(1, T).unwrap(), vec![frame(64, 1)]);
}

#[test]
fn tx_frame_above_the_negotiated_maximum_is_dropped_and_counted() {
    let mut h = start(MemBackendConfig::default(), 0);
    let big = frame(1518 + 1, 3);
    h.sim.send_frame(&big).unwrap();
    h.sim.wait_used(1, 1, T).unwrap();
    assert_eq!(h.metrics.tx_oversized.load(Ordering::Relaxed), 1);
    assert_eq!(h.backend.sent_count(), 0);
    // The largest legal frame still goes through.
    let max = frame(1518, 4);
    h.sim.send_frame(&max).unwrap();
    wait_for(|| h.backend.take_sent().contains(&max));
}

#[test]
fn tx_chain_holding_only_a_header_is_dropped() {
    let mut h = start(MemBackendConfig::default(), 0);
    let hdr = h.sim.alloc(12, 8).unwrap();
    h.sim.add_chain(1, &[(hdr, 12, false)]).unwrap();
    h.sim.notify(1);
    h.sim.wait_used(1, 1, T).unwrap();
    assert_eq!(h.metrics.bad_chains.load(Ordering::Relaxed), 1);
    assert_still_serving(&mut h);
}

#[test]
fn rx_descriptor_outside_memory_is_dropped_and_good_buffers_still_fill() {
    let mut h = start(MemBackendConfig::default(), 0);
    h.sim.add_chain(0, &[(HOLE, 2048, true)]).unwrap();
    h.sim.notify(0);
    h.sim.wait_used(0, 1, T).unwrap();
    assert_eq!(h.metrics.bad_chains.load(Ordering::Relaxed), 1);
    h.sim.post_rx_buffers(1, 2048).unwrap();
    h.backend.inject(&frame(90, 2));
    assert_eq!(h.sim.recv_frames(1, T).unwrap(), vec![frame(90, 2)]);
}

#[test]
fn rx_chain_too_small_for_the_header_is_dropped() {
    let mut h = start(MemBackendConfig::default(), 0);
    let b = h.sim.alloc(8, 8).unwrap();
    h.sim.add_chain(0, &[(b, 8, true)]).unwrap();
    h.sim.notify(0);
    h.sim.wait_used(0, 1, T).unwrap();
    assert_eq!(h.metrics.bad_chains.load(Ordering::Relaxed), 1);
}

#[test]
fn rx_header_split_across_descriptors_is_written_correctly() {
    let mut h = start(MemBackendConfig::default(), 0);
    let a = h.sim.alloc(4, 8).unwrap();
    let b = h.sim.alloc(2044, 8).unwrap();
    h.sim
        .add_chain(0, &[(a, 4, true), (b, 2044, true)])
        .unwrap();
    h.sim.notify(0);
    let f = frame(200, 4);
    h.backend.inject(&f);
    let used = h.sim.wait_used(0, 1, T).unwrap();
    assert_eq!(used[0].len as usize, VNET_HDR_LEN + 200);
    let mut hdr_tail = [0u8; 8];
    h.sim.mem().read_slice(&mut hdr_tail, b).unwrap();
    // Bytes 4..12 of the header live at the start of b: num_buffers is bytes 10..12.
    assert_eq!(u16::from_le_bytes([hdr_tail[6], hdr_tail[7]]), 1);
    let mut body = vec![0u8; 200];
    h.sim
        .mem()
        .read_slice(&mut body, b.unchecked_add(8))
        .unwrap();
    assert_eq!(body, f);
}

#[test]
fn backend_send_errors_drop_frames_and_traffic_resumes() {
    let mut h = start(MemBackendConfig::default(), 0);
    h.backend.fail_sends(3);
    for i in 0..3 {
        h.sim.send_frame(&frame(64, i)).unwrap();
        h.sim.wait_used(1, 1, T).unwrap();
    }
    assert_eq!(h.metrics.tx_errors.load(Ordering::Relaxed), 3);
    assert_eq!(h.metrics.tx_dropped.load(Ordering::Relaxed), 3);
    assert_still_serving(&mut h);
}

#[test]
fn backend_taking_part_of_a_batch_counts_the_rest_as_dropped() {
    let mut h = start(MemBackendConfig::default(), 0);
    h.backend.set_send_limit(Some(0));
    h.sim.send_frame(&frame(64, 1)).unwrap();
    h.sim.wait_used(1, 1, T).unwrap();
    assert_eq!(h.metrics.tx_dropped.load(Ordering::Relaxed), 1);
    h.backend.set_send_limit(None);
    assert_still_serving(&mut h);
}

#[test]
fn backend_receive_errors_are_counted_and_receive_resumes() {
    let mut h = start(MemBackendConfig::default(), 0);
    h.sim.post_rx_buffers(2, 2048).unwrap();
    h.backend.fail_recvs(1);
    wait_for(|| h.metrics.rx_errors.load(Ordering::Relaxed) == 1);
    h.backend.inject(&frame(64, 1));
    assert_eq!(h.sim.recv_frames(1, T).unwrap(), vec![frame(64, 1)]);
}

/// With `VIRTIO_RING_F_EVENT_IDX` the device interrupts exactly when the used index passes the
/// driver's `used_event`: not before (3 buffers used), once when it does (the 4th), and not again
/// for later buffers the driver did not ask about (the 5th and 6th).
#[test]
fn event_idx_interrupts_exactly_when_the_used_index_passes_used_event() {
    for (frames, interrupts) in [(3u8, 0u64), (4, 1), (6, 1)] {
        let mut h = start(MemBackendConfig::default(), features::RING_EVENT_IDX);
        assert_ne!(h.sim.features() & features::RING_EVENT_IDX, 0);
        // Ask for an interrupt only after the 4th used TX buffer (used_event = 3).
        h.sim.set_used_event(1, 3).unwrap();
        while h.sim.wait_interrupt(Duration::ZERO).unwrap() {}
        // One frame per pass (the next is added once the backend has this one), so the device
        // decides on an interrupt once per used buffer.
        for i in 0..frames {
            h.sim.send_frame(&frame(64, i)).unwrap();
            wait_for(|| h.backend.sent_count() == u64::from(i) + 1);
        }
        // The backend gets a frame before the device decides on its interrupt: the reset joins
        // the worker, so every decision on the frames sent has been taken.
        h.sim.write_reg(crate::virtio::mmio::regs::STATUS, 0);
        assert!(!h.transport.lock().unwrap().is_active());
        assert_eq!(
            h.metrics.interrupts.load(Ordering::Relaxed),
            interrupts,
            "{frames} used buffers"
        );
        assert_eq!(
            h.sim.wait_interrupt(Duration::ZERO).unwrap(),
            interrupts > 0,
            "{frames} used buffers: the interrupt notifier"
        );
    }
}

/// RX interrupt holding is on by default: the frames of a pass that delivers several get
/// their interrupt when the hold ends, not never.
#[test]
fn a_burst_of_received_frames_gets_its_held_interrupt() {
    let mut h = start(MemBackendConfig::default(), 0);
    for i in 0..4 {
        h.backend.inject(&frame(64, i));
    }
    wait_for(|| h.metrics.rx_no_buffers.load(Ordering::Relaxed) >= 1);
    while h.sim.wait_interrupt(Duration::ZERO).unwrap() {}
    // More buffers than frames: a pass that used them all would interrupt at once anyway.
    h.sim.post_rx_buffers(8, 2048).unwrap();
    assert!(h.sim.wait_interrupt(T).unwrap(), "the held interrupt came");
    assert_eq!(h.metrics.rx_frames.load(Ordering::Relaxed), 4);
    let got = h.sim.recv_frames(4, T).unwrap();
    assert_eq!(got, (0..4).map(|i| frame(64, i)).collect::<Vec<_>>());
}

#[test]
fn without_event_idx_every_batch_raises_an_interrupt() {
    let mut h = start(MemBackendConfig::default(), 0);
    for i in 0..3 {
        h.sim.send_frame(&frame(64, i)).unwrap();
        assert!(h.sim.wait_interrupt(T).unwrap());
        h.sim.wait_used(1, 1, T).unwrap();
    }
}

#[test]
fn device_receive_offloads_follow_negotiated_guest_features() {
    let cfg = MemBackendConfig {
        vnet_hdr: true,
        offloads: crate::net::Offloads {
            csum: true,
            tso4: true,
            tso6: true,
        },
        ..Default::default()
    };
    let wanted = (1 << vnet::VIRTIO_NET_F_GUEST_CSUM) | (1 << vnet::VIRTIO_NET_F_GUEST_TSO4);
    let h = start(cfg, wanted);
    assert_eq!(
        h.backend.rx_offloads(),
        Some(crate::net::Offloads {
            csum: true,
            tso4: true,
            tso6: false,
        })
    );
}

#[test]
fn rx_chain_with_device_writable_and_readable_mix_is_dropped() {
    let mut h = start(MemBackendConfig::default(), 0);
    let b = h.sim.alloc(2048, 8).unwrap();
    h.sim
        .write_descriptor(0, 100, b, 1024, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 101)
        .unwrap();
    h.sim
        .write_descriptor(0, 101, b.unchecked_add(1024), 1024, 0, 0)
        .unwrap();
    h.sim.publish(0, 100).unwrap();
    h.sim.notify(0);
    h.sim.wait_used(0, 1, T).unwrap();
    assert_eq!(h.metrics.bad_chains.load(Ordering::Relaxed), 1);
}

#[test]
fn a_driver_breaking_the_avail_ring_gets_device_needs_reset_and_a_reset_recovers() {
    use crate::virtio::mmio::regs;
    use crate::virtio::status;
    let mut h = start(MemBackendConfig::default(), 0);
    // TX avail index 300 entries ahead of a 256-entry queue: impossible for a correct driver.
    h.sim.write_avail_idx(1, 300).unwrap();
    h.sim.notify(1);
    wait_for(|| h.sim.read_reg(regs::STATUS) & status::DEVICE_NEEDS_RESET != 0);
    assert_eq!(h.metrics.broken_queues.load(Ordering::Relaxed), 1);
    assert_ne!(
        h.sim.read_reg(regs::INTERRUPT_STATUS) & 2,
        0,
        "config interrupt"
    );
    h.sim.init(0, 128).unwrap();
    assert_eq!(h.sim.read_reg(regs::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_still_serving(&mut h);
}

/// A driver that kicks only when the device asks (Linux's `virtqueue_kick_prepare`) gets every
/// frame sent, in order, whether the device holds kicks off for a while (TX coalescing) or not:
/// frames added while kicks are off are not stranded.
#[test]
fn a_driver_that_kicks_only_when_asked_gets_every_frame_sent() {
    for wanted in [features::RING_EVENT_IDX, 0] {
        let mut h = start(MemBackendConfig::default(), wanted);
        let frames: Vec<Vec<u8>> = (0..120u8)
            .map(|i| frame(60 + usize::from(i % 40), i))
            .collect();
        let mut kicks = 0;
        for (i, f) in frames.iter().enumerate() {
            h.sim.queue_frame(f).unwrap();
            // One kick decision for every frame but every third, as xmit_more batching does.
            if i % 3 != 1 {
                kicks += usize::from(h.sim.kick(1).unwrap());
            }
            if i % 16 == 15 {
                h.sim.take_used(1).unwrap();
            }
        }
        kicks += usize::from(h.sim.kick(1).unwrap());
        wait_for(|| h.backend.sent_count() == frames.len() as u64);
        assert_eq!(h.backend.take_sent(), frames, "features {wanted:#x}");
        println!(
            "features {wanted:#x}: {} frames, {kicks} kicks, {} worker wake-ups for a kick",
            frames.len(),
            h.metrics.tx_kicks.load(Ordering::Relaxed)
        );
    }
}
