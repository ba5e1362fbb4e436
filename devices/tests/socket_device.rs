//! The net device on the socket backends, driven by the simulated driver through its worker
//! thread: frames both ways between the guest's queues and a peer socket (for the stream
//! backend through its own poller, nested in the worker's), and the guest's link going down
//! with a configuration change interrupt when the peer leaves.

#![cfg(any(target_os = "linux", target_os = "macos"))]

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

use devices::net::Backend;
use devices::net::socket::SocketOptions;
use devices::net::socket::dgram::DgramBackend;
use devices::net::socket::stream::StreamBackend;
use devices::testing::{DriverSim, attach};
use devices::virtio::GuestMemory;
use devices::virtio::interrupt_status::CONFIG_CHANGE;
use devices::virtio::net::{Net, NetConfig};
use vm_memory::GuestAddress;

const TIMEOUT: Duration = Duration::from_secs(10);
const MRG_RXBUF: u64 = 1 << 15;
const EVENT_IDX: u64 = 1 << 29;
const STATUS: u64 = 1 << 16;
const MEM_SIZE: u64 = 16 << 20;

fn device(backend: Box<dyn Backend>) -> DriverSim {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let net = Net::new(
        backend,
        NetConfig {
            mac: Some([0x52, 0x54, 0, 0, 0, 9]),
            ..Default::default()
        },
    );
    let (mut sim, _transport) =
        attach(Box::new(net), mem, GuestAddress(0x1000), MEM_SIZE - 0x1000).unwrap();
    sim.init(MRG_RXBUF | EVENT_IDX | STATUS, 256).unwrap();
    sim.post_rx_buffers(32, 2048).unwrap();
    sim
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    f[..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 9]);
    f
}

fn link_status(sim: &DriverSim) -> u16 {
    let mut b = [0u8; 2];
    sim.read_config(6, &mut b);
    u16::from_le_bytes(b)
}

/// Waits for a configuration change interrupt; returns whether one came.
fn wait_config_change(sim: &mut DriverSim) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let _ = sim.wait_interrupt(Duration::from_millis(50));
        if sim.ack_interrupt() & CONFIG_CHANGE != 0 {
            return true;
        }
    }
    false
}

#[test]
fn the_device_on_a_stream_socket_moves_frames_both_ways_and_reports_the_peer_leaving() {
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let backend = StreamBackend::from_fd(ours.into(), SocketOptions::default()).unwrap();
    let mut sim = device(Box::new(backend));
    assert_eq!(link_status(&sim), 1);

    let inbound = [frame(60, 1), frame(1514, 2), frame(700, 3)];
    let mut bytes = Vec::new();
    for f in &inbound {
        bytes.extend_from_slice(&(f.len() as u32).to_be_bytes());
        bytes.extend_from_slice(f);
    }
    // In two pieces, the cut inside the second frame: the worker sees two readiness edges.
    peer.write_all(&bytes[..700]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    peer.write_all(&bytes[700..]).unwrap();
    assert_eq!(sim.recv_frames(3, TIMEOUT).unwrap(), inbound);

    let out = frame(1000, 4);
    sim.send_frame(&out).unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = vec![0u8; 4 + out.len()];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got[..4], (out.len() as u32).to_be_bytes());
    assert_eq!(got[4..], out);

    sim.ack_interrupt();
    drop(peer);
    assert!(
        wait_config_change(&mut sim),
        "no configuration change interrupt"
    );
    assert_eq!(link_status(&sim), 0, "the link is still up");
}

#[test]
fn the_device_on_a_datagram_socket_moves_frames_both_ways_and_reports_the_peer_leaving() {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    let backend = DgramBackend::from_fd(ours.into(), SocketOptions::default()).unwrap();
    let mut sim = device(Box::new(backend));
    assert_eq!(link_status(&sim), 1);

    let inbound = [frame(60, 1), frame(1514, 2), frame(98, 3)];
    for f in &inbound {
        peer.send(f).unwrap();
    }
    assert_eq!(sim.recv_frames(3, TIMEOUT).unwrap(), inbound);

    let out = frame(1200, 4);
    sim.send_frame(&out).unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = vec![0u8; 2000];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(buf[..n], out);

    // A datagram peer's leaving shows on the next send.
    sim.ack_interrupt();
    drop(peer);
    sim.send_frame(&frame(60, 5)).unwrap();
    assert!(
        wait_config_change(&mut sim),
        "no configuration change interrupt"
    );
    assert_eq!(link_status(&sim), 0, "the link is still up");
}

#[test]
fn the_device_on_a_stream_path_reports_the_peer_leaving_and_coming_back() {
    use std::os::unix::net::UnixListener;
    let dir = std::env::temp_dir().join(format!("devices-stream-back-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("helper.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let backend = StreamBackend::connect(&path, SocketOptions::default()).unwrap();
    let mut sim = device(Box::new(backend));
    let (first, _) = listener.accept().unwrap();
    assert_eq!(link_status(&sim), 1);

    // The helper drops the connection (as a restarting helper does) and keeps listening.
    sim.ack_interrupt();
    drop(first);
    assert!(
        wait_config_change(&mut sim),
        "no interrupt for the link going down"
    );
    assert_eq!(link_status(&sim), 0, "the link is still up");

    // The backend comes back on its own, without the guest sending anything: the guest is told.
    let (mut second, _) = listener.accept().unwrap();
    assert!(
        wait_config_change(&mut sim),
        "no interrupt for the link coming back"
    );
    assert_eq!(link_status(&sim), 1, "the link is still down");
    let x = frame(400, 6);
    second.write_all(&(x.len() as u32).to_be_bytes()).unwrap();
    second.write_all(&x).unwrap();
    assert_eq!(sim.recv_frames(1, TIMEOUT).unwrap(), vec![x]);
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_device_on_a_datagram_path_comes_back_up_without_the_guest_sending() {
    let dir = std::env::temp_dir().join(format!("devices-dgram-back-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("helper.sock");
    let helper = UnixDatagram::bind(&path).unwrap();
    let backend = DgramBackend::connect(&path, SocketOptions::default(), true).unwrap();
    let mut sim = device(Box::new(backend));
    helper.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = vec![0u8; 2000];
    let n = helper.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"VFKT");

    // The helper exits; the guest's next frame finds it gone.
    sim.ack_interrupt();
    drop(helper);
    std::fs::remove_file(&path).unwrap();
    sim.send_frame(&frame(60, 1)).unwrap();
    assert!(
        wait_config_change(&mut sim),
        "no interrupt for the link going down"
    );
    assert_eq!(link_status(&sim), 0, "the link is still up");

    // It restarts at the same path. A guest whose link is down sends nothing: the backend
    // finds the helper by itself, says hello again and the guest is told the link is up.
    let helper = UnixDatagram::bind(&path).unwrap();
    helper.set_read_timeout(Some(TIMEOUT)).unwrap();
    let n = helper.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"VFKT", "the hello, again");
    assert!(
        wait_config_change(&mut sim),
        "no interrupt for the link coming back"
    );
    assert_eq!(link_status(&sim), 1, "the link is still down");
    let out = frame(500, 2);
    sim.send_frame(&out).unwrap();
    let n = helper.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &out[..]);
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
}
