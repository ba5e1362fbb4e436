use std::os::unix::net::{UnixDatagram, UnixListener};
use std::sync::atomic::Ordering;

use super::*;
use crate::net::socket::testutil::{memory, recv_frames, send_frames, slices, write};
use crate::virtio::GuestMemory;

fn pair() -> (DgramBackend, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    let backend = DgramBackend::from_fd(a.into(), SocketOptions::default()).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (backend, b)
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

/// Receives into `count` frames of two buffers each; returns the frames as filled.
fn recv(b: &mut DgramBackend, mem: &GuestMemory, count: usize, cap: usize) -> Vec<Vec<u8>> {
    recv_frames(b, mem, 0, count, cap)
}

fn recv_peer(peer: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0u8; 70000];
    let n = peer.recv(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn frames_pass_both_ways_one_per_datagram_in_batches() {
    let mem = memory();
    let (mut b, peer) = pair();
    let inbound = [frame(60, 1), frame(1514, 2), frame(300, 3)];
    for f in &inbound {
        peer.send(f).unwrap();
    }
    // One call takes all three (recvmmsg on Linux).
    assert_eq!(recv(&mut b, &mem, 8, 1600), inbound);
    assert!(recv(&mut b, &mem, 8, 1600).is_empty());
    let out = vec![frame(42, 4), frame(1514, 5), frame(99, 6)];
    assert_eq!(send_frames(&mut b, &mem, &out), 3);
    for f in &out {
        assert_eq!(&recv_peer(&peer), f);
    }
    assert!(b.link_up());
}

#[test]
fn empty_and_oversized_datagrams_are_dropped_and_counted() {
    let mem = memory();
    let (mut b, peer) = pair();
    let ok = frame(64, 7);
    peer.send(&[]).unwrap();
    peer.send(&frame(400, 8)).unwrap();
    peer.send(&ok).unwrap();
    assert_eq!(recv(&mut b, &mem, 8, 300), vec![vec![], vec![], ok]);
    assert_eq!(b.stats().zero_length.load(Ordering::Relaxed), 1);
    assert_eq!(b.stats().truncated.load(Ordering::Relaxed), 1);
}

#[test]
fn a_full_socket_is_retried_a_bounded_time_then_frames_are_dropped() {
    let mem = memory();
    let (mut b, peer) = pair();
    let batch: Vec<Vec<u8>> = (0..64).map(|i| frame(1514, i)).collect();
    let mut taken = 0;
    let mut full = false;
    for _ in 0..200 {
        let start = Instant::now();
        let n = send_frames(&mut b, &mem, &batch);
        // Never a long block: the retries are bounded.
        assert!(
            start.elapsed() < Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
        taken += n;
        if n < batch.len() {
            full = true;
            break;
        }
    }
    assert!(full, "the socket never filled");
    assert!(b.stats().congestion_drops.load(Ordering::Relaxed) > 0);
    assert!(b.link_up());
    // What was taken arrives whole, in order.
    peer.set_nonblocking(true).unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 2000];
    while let Ok(n) = peer.recv(&mut buf) {
        assert_eq!(buf[..n], batch[got % batch.len()]);
        got += 1;
    }
    assert_eq!(got, taken);
    // With room again, frames go.
    assert_eq!(send_frames(&mut b, &mem, &batch[..1]), 1);
}

#[test]
fn enobufs_is_congestion_retried_then_dropped() {
    let mem = memory();
    let (mut b, peer) = pair();
    let three = [frame(60, 1), frame(60, 2), frame(60, 3)];
    // A short burst of ENOBUFS (macOS's full receiver) is waited out.
    b.inject = Some((libc::ENOBUFS, 2));
    assert_eq!(send_frames(&mut b, &mem, &three), 3);
    for f in &three {
        assert_eq!(&recv_peer(&peer), f);
    }
    assert_eq!(b.stats().congestion_drops.load(Ordering::Relaxed), 0);
    // A lasting one is given up on after the bound: the frames are dropped and counted.
    b.inject = Some((libc::ENOBUFS, 100));
    let start = Instant::now();
    assert_eq!(send_frames(&mut b, &mem, &three), 0);
    assert!(start.elapsed() < Duration::from_millis(100));
    assert_eq!(b.stats().congestion_drops.load(Ordering::Relaxed), 3);
    assert!(b.link_up());
}

#[test]
fn a_peer_that_closes_takes_the_link_down() {
    let mem = memory();
    let (mut b, peer) = pair();
    drop(peer);
    assert!(recv(&mut b, &mem, 4, 1600).is_empty());
    assert_eq!(send_frames(&mut b, &mem, &[frame(60, 0)]), 0);
    assert!(!b.link_up());
    assert_eq!(b.stats().disconnects.load(Ordering::Relaxed), 1);
    // Nothing more goes, and nothing fails.
    assert_eq!(send_frames(&mut b, &mem, &[frame(60, 0)]), 0);
}

fn temp_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("devices-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn a_path_peer_gets_the_vfkit_hello_answers_to_our_address_and_is_found_again() {
    let mem = memory();
    let path = temp_path("vfkit");
    let helper = UnixDatagram::bind(&path).unwrap();
    helper
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = DgramBackend::connect(&path, SocketOptions::default(), true).unwrap();
    let mut buf = [0u8; 2000];
    let (n, from) = helper.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], VFKIT_HELLO);
    let ours = from.as_pathname().unwrap().to_owned();
    assert_eq!(Some(ours.as_path()), b.local_path());
    // The helper answers to the address the hello came from.
    let x = frame(90, 1);
    helper.send_to(&x, &ours).unwrap();
    assert_eq!(recv(&mut b, &mem, 2, 1600), vec![x]);
    // The helper restarts: the link goes down, then up again with a new hello.
    drop(helper);
    assert_eq!(send_frames(&mut b, &mem, &[frame(60, 2)]), 0);
    assert!(!b.link_up());
    std::fs::remove_file(&path).unwrap();
    let helper = UnixDatagram::bind(&path).unwrap();
    helper
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let y = frame(70, 3);
    assert_eq!(send_frames(&mut b, &mem, std::slice::from_ref(&y)), 1);
    assert!(b.link_up());
    assert_eq!(b.stats().reconnects.load(Ordering::Relaxed), 1);
    let n = helper.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], VFKIT_HELLO);
    let n = helper.recv(&mut buf).unwrap();
    assert_eq!(buf[..n], y);
    drop(b);
    assert!(!ours.exists(), "our address was not removed");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bad_paths_and_descriptors_are_refused_with_what_to_do() {
    let o = SocketOptions::default();
    let missing = temp_path("missing");
    let e = DgramBackend::connect(&missing, o, false).unwrap_err();
    assert!(matches!(e, SocketError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("start the network helper"), "{e}");

    let stream = temp_path("stream");
    let _l = UnixListener::bind(&stream).unwrap();
    let e = DgramBackend::connect(&stream, o, false).unwrap_err();
    assert!(matches!(e, SocketError::WrongTypePath { .. }), "{e}");
    assert!(e.to_string().contains("--net stream:"), "{e}");
    let _ = std::fs::remove_file(&stream);

    let file = temp_path("file");
    std::fs::write(&file, b"").unwrap();
    let e = DgramBackend::connect(&file, o, false).unwrap_err();
    assert!(matches!(e, SocketError::NotASocketPath { .. }), "{e}");
    let _ = std::fs::remove_file(&file);

    let e = DgramBackend::connect(Path::new(&"x".repeat(200)), o, false).unwrap_err();
    assert!(matches!(e, SocketError::PathTooLong { .. }), "{e}");

    let (s, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let e = DgramBackend::from_fd(s.into(), o).unwrap_err();
    assert!(matches!(e, SocketError::WrongTypeFd { .. }), "{e}");
    assert!(e.to_string().contains(",stream"), "{e}");

    let f = std::fs::File::open("/dev/null").unwrap();
    let e = DgramBackend::from_fd(f.into(), o).unwrap_err();
    assert!(matches!(e, SocketError::NotASocketFd { .. }), "{e}");

    assert!(matches!(
        super::super::check_fd(1 << 20, Kind::Dgram),
        Err(SocketError::BadFd { .. })
    ));
    assert!(matches!(
        super::super::check_fd(1, Kind::Dgram),
        Err(SocketError::StdioFd { .. })
    ));
}

#[test]
fn a_listener_links_with_the_first_peer_and_with_the_next_one_after_it_left() {
    let mem = memory();
    let path = temp_path("listen");
    let o = SocketOptions::default();
    let mut a = DgramBackend::listen(&path, o).unwrap();
    assert!(!a.link_up(), "no peer yet: the link is down");
    assert_eq!(send_frames(&mut a, &mem, &[frame(60, 1)]), 0);
    // A second listener at the same path is refused.
    let e = DgramBackend::listen(&path, o).unwrap_err();
    assert!(matches!(e, SocketError::InUse { .. }), "{e}");
    for round in 0..2u8 {
        let mut b = DgramBackend::connect(&path, o, true).unwrap();
        // The hello links the two; it is no frame for the guest.
        assert_eq!(recv(&mut a, &mem, 4, 1600), vec![Vec::<u8>::new()]);
        assert!(a.link_up());
        let (x, y) = (frame(98, round), frame(1514, round + 10));
        assert_eq!(send_frames(&mut b, &mem, std::slice::from_ref(&x)), 1);
        assert_eq!(recv(&mut a, &mem, 4, 1600), vec![x]);
        assert_eq!(send_frames(&mut a, &mem, std::slice::from_ref(&y)), 1);
        assert_eq!(recv(&mut b, &mem, 4, 1600), vec![y]);
        // The peer leaves: the listener notices on its next send and waits for another.
        drop(b);
        assert_eq!(send_frames(&mut a, &mem, &[frame(60, 2)]), 0);
        assert!(!a.link_up());
    }
    drop(a);
    assert!(!path.exists(), "the listening path was not removed");
}

#[test]
fn a_listener_replaces_a_socket_file_left_behind() {
    let path = temp_path("stale");
    drop(UnixDatagram::bind(&path).unwrap());
    assert!(path.exists());
    let a = DgramBackend::listen(&path, SocketOptions::default()).unwrap();
    assert!(!a.link_up());
}

#[test]
fn a_frame_in_more_pieces_than_a_call_takes_is_dropped_not_cut() {
    let mem = memory();
    let (mut b, peer) = pair();
    let (x, y) = (frame(60, 1), frame(70, 2));
    let xs = slices(&mem, 0x1000, &[60]);
    write(&xs, &x);
    let pieces = slices(&mem, 0x2000, &vec![1; MAX_IOVECS + 1]);
    let ys = slices(&mem, 0x4000, &[70]);
    write(&ys, &y);
    let frames = [
        TxFrame { bufs: &xs },
        TxFrame { bufs: &pieces },
        TxFrame { bufs: &ys },
    ];
    assert_eq!(b.send(&frames).unwrap(), 3);
    assert_eq!(b.stats().oversized.load(Ordering::Relaxed), 1);
    assert_eq!(recv_peer(&peer), x);
    assert_eq!(recv_peer(&peer), y);
    peer.set_nonblocking(true).unwrap();
    assert!(peer.recv(&mut [0u8; 2000]).is_err(), "a cut frame went out");
}
