use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;

use super::*;
use crate::net::socket::testutil::{memory, recv_frames, send_frames};

fn pair() -> (StreamBackend, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    let backend = StreamBackend::from_fd(a.into(), SocketOptions::default()).unwrap();
    (backend, b)
}

fn framed(frames: &[&[u8]]) -> Vec<u8> {
    let mut s = Vec::new();
    for f in frames {
        s.extend_from_slice(&(f.len() as u32).to_be_bytes());
        s.extend_from_slice(f);
    }
    s
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

/// Splits a byte stream into frames.
fn unframe(mut s: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while s.len() >= 4 {
        let len = u32::from_be_bytes(s[..4].try_into().unwrap()) as usize;
        assert!(s.len() >= 4 + len, "a frame is cut short in the stream");
        out.push(s[4..4 + len].to_vec());
        s = &s[4 + len..];
    }
    assert!(s.is_empty(), "stray bytes at the end of the stream");
    out
}

fn read_available(peer: &mut UnixStream) -> Vec<u8> {
    peer.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    out
}

#[test]
fn frames_pass_both_ways_behind_their_length() {
    let mem = memory();
    let (mut b, mut peer) = pair();
    let (x, y) = (frame(60, 1), frame(1514, 2));
    peer.write_all(&framed(&[&x, &y])).unwrap();
    assert_eq!(
        recv_frames(&mut b, &mem, 0, 4, 1600),
        vec![x.clone(), y.clone()]
    );
    let out = vec![frame(42, 3), frame(1514, 4), frame(99, 5)];
    assert_eq!(send_frames(&mut b, &mem, &out), 3);
    assert_eq!(unframe(&read_available(&mut peer)), out);
    assert!(b.link_up());
}

#[test]
fn a_frame_split_across_reads_is_resumed_in_other_buffers() {
    let mem = memory();
    let (mut b, mut peer) = pair();
    let x = frame(1000, 9);
    let s = framed(&[&x]);
    // Two bytes of the prefix, then the rest of it and part of the frame, then the end.
    peer.write_all(&s[..2]).unwrap();
    assert!(recv_frames(&mut b, &mem, 0, 2, 1600).is_empty());
    peer.write_all(&s[2..500]).unwrap();
    assert!(recv_frames(&mut b, &mem, 0x1_0000, 2, 1600).is_empty());
    // The first 500 bytes went into buffers at 0x1_0000; the frame ends in others.
    peer.write_all(&s[500..]).unwrap();
    assert_eq!(recv_frames(&mut b, &mem, 0x4_0000, 2, 1600), vec![x]);
    assert!(b.partial.is_empty());
}

#[test]
fn a_length_above_the_limit_closes_the_connection_after_the_good_frames() {
    let mem = memory();
    let (mut b, mut peer) = pair();
    let x = frame(64, 1);
    let mut s = framed(&[&x]);
    s.extend_from_slice(&1519u32.to_be_bytes());
    s.extend_from_slice(&[0; 1519]);
    peer.write_all(&s).unwrap();
    assert_eq!(recv_frames(&mut b, &mem, 0, 4, 1600), vec![x]);
    assert!(!b.link_up());
    assert_eq!(b.stats().disconnects.load(Ordering::Relaxed), 1);
    // The peer sees the connection closed: its reads end.
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(send_frames(&mut b, &mem, &[frame(60, 0)]), 0);
}

#[test]
fn a_peer_that_closes_takes_the_link_down_and_nothing_is_sent() {
    let mem = memory();
    let (mut b, peer) = pair();
    drop(peer);
    assert!(recv_frames(&mut b, &mem, 0, 4, 1600).is_empty());
    assert!(!b.link_up());
    assert_eq!(send_frames(&mut b, &mem, &[frame(60, 0)]), 0);
    // Idle afterwards: nothing to receive, no error.
    assert!(recv_frames(&mut b, &mem, 0, 4, 1600).is_empty());
}

#[test]
fn a_peer_that_closes_is_noticed_on_send_too() {
    let mem = memory();
    let (mut b, peer) = pair();
    drop(peer);
    assert_eq!(send_frames(&mut b, &mem, &[frame(60, 0)]), 0);
    assert!(!b.link_up());
}

#[test]
fn zero_length_frames_are_skipped_and_counted() {
    let mem = memory();
    let (mut b, mut peer) = pair();
    let x = frame(80, 4);
    peer.write_all(&framed(&[&[], &x, &[], &x])).unwrap();
    assert_eq!(recv_frames(&mut b, &mem, 0, 4, 1600), vec![x.clone(), x]);
    assert_eq!(b.stats().zero_length.load(Ordering::Relaxed), 2);
}

#[test]
fn a_frame_larger_than_the_buffers_is_dropped_and_the_next_one_comes() {
    let mem = memory();
    let (mut b, mut peer) = pair();
    let (big, small) = (frame(600, 1), frame(50, 2));
    peer.write_all(&framed(&[&big, &small])).unwrap();
    assert_eq!(recv_frames(&mut b, &mem, 0, 4, 300), vec![vec![], small]);
    assert_eq!(b.stats().truncated.load(Ordering::Relaxed), 1);
    assert!(b.link_up());
}

fn set_buf(fd: i32, opt: libc::c_int, v: libc::c_int) {
    // SAFETY: a live int of the size passed.
    let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&raw const v).cast(), 4) };
    assert_eq!(r, 0);
}

fn readable(fd: BorrowedFd<'_>, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&raw mut p, 1, ms) == 1 }
}

#[test]
fn a_full_socket_keeps_the_cut_frame_whole_and_finishes_it_when_room_comes() {
    let mem = memory();
    let (mut b, mut peer) = pair();
    set_buf(b.sock.as_raw_fd(), libc::SO_SNDBUF, 8192);
    set_buf(peer.as_raw_fd(), libc::SO_RCVBUF, 8192);
    let mut taken = Vec::new();
    let mut seed = 0u8;
    // Fill the socket until a frame is cut.
    for _ in 0..1000 {
        let batch: Vec<Vec<u8>> = (0..8)
            .map(|_| {
                seed = seed.wrapping_add(1);
                frame(1514, seed)
            })
            .collect();
        let n = send_frames(&mut b, &mem, &batch);
        taken.extend_from_slice(&batch[..n]);
        if b.pending_bytes() > 0 {
            break;
        }
    }
    assert!(b.pending_bytes() > 0, "the socket never cut a frame");
    // While a frame is half sent nothing else may go: the next frames are not taken.
    assert_eq!(send_frames(&mut b, &mem, &[frame(60, 0xee)]), 0);
    // The backend's descriptor reports room once the peer reads, and on_ready finishes the
    // frame without any further send.
    let mut stream = Vec::new();
    for _ in 0..100 {
        stream.extend(read_available(&mut peer));
        if b.pending_bytes() == 0 {
            break;
        }
        if readable(b.ready_fd(), 1000) {
            b.on_ready().unwrap();
        }
    }
    assert_eq!(
        b.pending_bytes(),
        0,
        "the half-sent frame was never finished"
    );
    stream.extend(read_available(&mut peer));
    assert_eq!(unframe(&stream), taken);
    // And frames flow again.
    assert_eq!(send_frames(&mut b, &mem, &[frame(60, 0xaa)]), 1);
}

/// Waits up to `within` for the backend's poller to fire, then lets the backend take what
/// fired (as the worker does); whether the link is up afterwards.
fn wait_link_up(b: &mut StreamBackend, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if readable(b.ready_fd(), 50) {
            b.on_ready().unwrap();
            if b.link_up() {
                return true;
            }
        }
    }
    false
}

#[test]
fn a_peer_at_a_path_that_comes_back_is_reconnected_at_most_once_a_second() {
    use std::os::unix::net::UnixListener;
    let mem = memory();
    let dir = std::env::temp_dir().join(format!("devices-stream-redial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("peer.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut b = StreamBackend::connect(&path, SocketOptions::default()).unwrap();
    let (first, _) = listener.accept().unwrap();

    // The peer goes away entirely (a helper that exits): the link goes down and stays down
    // while nothing listens at the path.
    drop(first);
    drop(listener);
    std::fs::remove_file(&path).unwrap();
    assert!(recv_frames(&mut b, &mem, 0, 2, 1600).is_empty());
    assert!(!b.link_up());
    assert!(!wait_link_up(&mut b, Duration::from_millis(2500)));
    assert_eq!(
        send_frames(&mut b, &mem, &[frame(60, 1)]),
        0,
        "nothing is taken while down"
    );

    // The helper restarts at the same path: the link comes back within a second or so, not
    // at once (the backend looks once a second), and frames pass both ways again.
    let listener = UnixListener::bind(&path).unwrap();
    let t = std::time::Instant::now();
    assert!(wait_link_up(&mut b, Duration::from_secs(3)), "reconnected");
    assert!(
        t.elapsed() <= Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    let (mut second, _) = listener.accept().unwrap();
    let x = frame(300, 7);
    second.write_all(&framed(&[&x])).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(readable(b.ready_fd(), 5000));
    b.on_ready().unwrap();
    assert_eq!(recv_frames(&mut b, &mem, 0, 2, 1600), vec![x]);
    let out = vec![frame(60, 8)];
    assert_eq!(send_frames(&mut b, &mem, &out), 1);
    let mut got = vec![0u8; 64];
    second.read_exact(&mut got).unwrap();
    assert_eq!(unframe(&got), out);
    assert_eq!(b.stats().disconnects.load(Ordering::Relaxed), 1);
    assert_eq!(b.stats().reconnects.load(Ordering::Relaxed), 1);

    // It leaves again while its listener stays: the first look is a second later, not at
    // once (no reconnect storm against a helper that keeps dropping us).
    drop(second);
    assert!(recv_frames(&mut b, &mem, 0, 2, 1600).is_empty());
    assert!(!b.link_up());
    let t = std::time::Instant::now();
    assert!(
        wait_link_up(&mut b, Duration::from_secs(3)),
        "reconnected again"
    );
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert_eq!(b.stats().disconnects.load(Ordering::Relaxed), 2);
    assert_eq!(b.stats().reconnects.load(Ordering::Relaxed), 2);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_backend_on_an_inherited_socket_stays_down_and_starts_no_thread() {
    let mem = memory();
    let (mut b, peer) = pair();
    drop(peer);
    assert!(recv_frames(&mut b, &mem, 0, 2, 1600).is_empty());
    assert!(!b.link_up());
    assert!(b.redial.is_none());
}
