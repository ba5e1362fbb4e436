//! Data path micro-benchmark: frames through the whole device (virtio-mmio transport, queues in
//! guest memory, the I/O worker thread, notifiers) against an in-memory backend, beside a plain
//! `memcpy` of the same bytes measured in the same run: the physical limit of moving them once.
//! The simulated driver drives the device two ways (see [`Drive`]): keeping the ring full, as
//! a loaded guest does (the device's throughput), and half a ring at a time, waiting for each
//! half (driver, device and their hand-offs one after the other).
//!
//! A second table times the data path alone (`rig/direct.rs`: `DataPath` driven directly, no
//! transport, thread or notifier wait), the per-frame cost of the device code itself.
//!
//! Run with `cargo bench -p devices --bench datapath`. Prints Markdown tables.
//! `cargo bench -p devices --bench datapath -- direct [frames=N] [size=B]` runs only the second
//! table (N frames per row, only B-byte frames): two runs under `valgrind --tool=callgrind` with
//! different N give the instructions per frame, which a loaded machine does not change.
//! `-- device` runs only the first table (for a profile of the whole device).

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::net::Offloads;
use devices::net::mem::{MemBackend, MemBackendConfig, MemBackendHandle};
use devices::testing::{DriverSim, attach};
use devices::virtio::GuestMemory;
use devices::virtio::mmio::MmioTransport;
use devices::virtio::net::{Net, NetConfig};
use vm_memory::{Bytes, GuestAddress};

mod rig;

use rig::direct;

const QUEUE: u16 = 256;
const MRG_RXBUF: u64 = 1 << 15;
const HOST_TSO4: u64 = 1 << 11;
const GUEST_TSO4: u64 = 1 << 7;
const CSUM: u64 = 1;
const GUEST_CSUM: u64 = 1 << 1;
const EVENT_IDX: u64 = 1 << 29;
const HDR: usize = 12;
const T: Duration = Duration::from_secs(30);

struct Rig {
    sim: DriverSim,
    backend: MemBackendHandle,
    _transport: Arc<Mutex<MmioTransport>>,
}

fn rig(guest_tso: bool) -> Rig {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let backend = MemBackend::new(MemBackendConfig {
        vnet_hdr: true,
        offloads: Offloads {
            csum: true,
            tso4: true,
            tso6: true,
        },
        rx_batch: 64,
        tx_batch: 64,
        ..Default::default()
    })
    .unwrap();
    let handle = backend.handle();
    handle.discard_sent(true);
    let net = Net::new(Box::new(backend), NetConfig::default());
    let (mut sim, transport) = attach(Box::new(net), mem, GuestAddress(0x1000), 63 << 20).unwrap();
    // Receiving 64 KiB frames needs GUEST_TSO4; without it the device reserves only an
    // MTU-sized frame per receive, as it must for a guest that cannot take larger ones.
    let rx_gso = if guest_tso { GUEST_TSO4 } else { 0 };
    sim.init(
        MRG_RXBUF | EVENT_IDX | CSUM | GUEST_CSUM | HOST_TSO4 | rx_gso,
        QUEUE,
    )
    .unwrap();
    Rig {
        sim,
        backend: handle,
        _transport: transport,
    }
}

/// How the simulated driver hands frames to the device.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drive {
    /// Half a ring at a time, waiting for all of it before the next: driver and device take
    /// turns, so a frame costs the driver's work, the device's and the hand-off between them.
    Batch,
    /// The ring kept full, as a guest driver under load keeps it (Linux's NAPI): buffers are
    /// added whenever a quarter of the ring is free, the device is kicked only when it asked
    /// for a kick (`EVENT_IDX`), and the driver reaps whatever is used, sleeping on the
    /// interrupt only when nothing is. Driver and device work at the same time (on two CPUs
    /// when there are two), so a frame costs the slower of the two: the device's throughput.
    Fed,
}

/// Keeps `queue` full with one-descriptor chains over `bufs` (one per ring slot) until
/// `frames` of them are used.
fn feed(r: &mut Rig, queue: u16, frames: u64, bufs: &[GuestAddress], len: u32, writable: bool) {
    let ring = bufs.len() as u64;
    let (mut posted, mut done) = (0u64, 0u64);
    while done < frames {
        let room = ring - (posted - done);
        if posted < frames && room >= ring / 4 {
            let n = room.min(frames - posted);
            for i in posted..posted + n {
                let b = bufs[(i % ring) as usize];
                r.sim.add_chain(queue, &[(b, len, writable)]).unwrap();
            }
            posted += n;
            r.sim.kick(queue).unwrap();
        }
        done += r.sim.wait_used(queue, 1, T).unwrap().len() as u64;
    }
}

/// Guest-to-backend: returns ns per frame.
fn tx(size: usize, frames: u64, drive: Drive) -> f64 {
    let mut r = rig(false);
    let batch = u64::from(QUEUE / 2);
    let nbufs = if drive == Drive::Fed {
        QUEUE.into()
    } else {
        batch
    };
    let bufs: Vec<GuestAddress> = (0..nbufs)
        .map(|_| r.sim.alloc((HDR + size) as u64, 64).unwrap())
        .collect();
    for &b in &bufs {
        r.sim.mem().write_slice(&vec![0xab; HDR + size], b).unwrap();
    }
    if drive == Drive::Fed {
        let start = Instant::now();
        feed(&mut r, 1, frames, &bufs, (HDR + size) as u32, false);
        let ns = start.elapsed().as_nanos() as f64 / frames as f64;
        assert_eq!(r.backend.sent_count(), frames);
        return ns;
    }
    let start = Instant::now();
    let mut sent = 0;
    while sent < frames {
        let n = batch.min(frames - sent);
        for &b in &bufs[..n as usize] {
            r.sim
                .add_chain(1, &[(b, (HDR + size) as u32, false)])
                .unwrap();
        }
        r.sim.notify(1);
        r.sim.wait_used(1, n as usize, T).unwrap();
        sent += n;
    }
    let ns = start.elapsed().as_nanos() as f64 / frames as f64;
    assert_eq!(r.backend.sent_count(), frames);
    ns
}

/// Backend-to-guest: returns ns per frame.
fn rx(size: usize, frames: u64, drive: Drive) -> f64 {
    let big = size > 1518;
    let mut r = rig(big);
    // Linux posts mergeable buffers of at least 1536 bytes; a 64 KiB frame gets one big buffer
    // here so that every frame fits in one (the device reserves 64 KiB of room per frame).
    let room = if big { 65_536 + 64 } else { 1536u32 as usize } as u32;
    let batch = u64::from(QUEUE / 2);
    let nbufs = if drive == Drive::Fed {
        QUEUE.into()
    } else {
        batch
    };
    let bufs: Vec<GuestAddress> = (0..nbufs)
        .map(|_| r.sim.alloc(u64::from(room), 64).unwrap())
        .collect();
    let mut frame = vec![0u8; HDR + size];
    frame[HDR..].fill(0xcd);
    if drive == Drive::Fed {
        let start = Instant::now();
        r.backend.inject_repeated(&frame, frames);
        feed(&mut r, 0, frames, &bufs, room, true);
        return start.elapsed().as_nanos() as f64 / frames as f64;
    }
    let start = Instant::now();
    let mut got = 0;
    while got < frames {
        let n = batch.min(frames - got);
        for &b in &bufs[..n as usize] {
            r.sim.add_chain(0, &[(b, room, true)]).unwrap();
        }
        r.sim.notify(0);
        r.backend.inject_repeated(&frame, n);
        r.sim.wait_used(0, n as usize, T).unwrap();
        got += n;
    }
    start.elapsed().as_nanos() as f64 / frames as f64
}

/// A plain copy of `size` bytes per frame between two buffers: ns per frame.
fn memcpy(size: usize, frames: u64) -> f64 {
    let src = vec![0x5au8; size];
    let mut dst = vec![0u8; size];
    let start = Instant::now();
    for _ in 0..frames {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }
    start.elapsed().as_nanos() as f64 / frames as f64
}

/// The data path's copies without the data path: `size` bytes per frame between one buffer and
/// `bufs` buffers taken in turn, as the rig's guest buffers are (TX reads them, RX writes them):
/// ns per frame, TX then RX. With 64 KiB frames the `bufs` buffers outgrow the
/// CPU's caches where one buffer does not, so this is the copy the data path cannot avoid.
fn memcpy_spread(size: usize, frames: u64, bufs: usize) -> (f64, f64) {
    let one = vec![0x5au8; size];
    let mut many: Vec<Vec<u8>> = (0..bufs).map(|_| vec![0x5au8; size]).collect();
    let mut scratch = vec![0u8; size];
    let start = Instant::now();
    for i in 0..frames {
        scratch.copy_from_slice(black_box(&many[i as usize % bufs]));
        black_box(&mut scratch);
    }
    let tx = start.elapsed().as_nanos() as f64 / frames as f64;
    let start = Instant::now();
    for i in 0..frames {
        let dst = &mut many[i as usize % bufs];
        dst.copy_from_slice(black_box(&one));
        black_box(dst);
    }
    let rx = start.elapsed().as_nanos() as f64 / frames as f64;
    (tx, rx)
}

/// Frames per batch of the direct rig.
const DIRECT_BATCH: u16 = 64;

/// The data path alone, guest-to-backend then backend-to-guest: ns per frame each way.
fn direct(size: usize, frames: u64) -> (f64, f64) {
    let mut r = direct::Rig::new(size, DIRECT_BATCH);
    let rounds = frames.div_ceil(u64::from(DIRECT_BATCH));
    // One round of warm-up: the scratch vectors reach their size.
    r.tx_batch();
    r.rx_batch();
    let start = Instant::now();
    for _ in 0..rounds {
        r.tx_batch();
    }
    let tx = start.elapsed().as_nanos() as f64;
    let start = Instant::now();
    for _ in 0..rounds {
        r.rx_batch();
    }
    let rx = start.elapsed().as_nanos() as f64;
    r.assert_moved((rounds + 1) * u64::from(DIRECT_BATCH));
    let n = (rounds * u64::from(DIRECT_BATCH)) as f64;
    (tx / n, rx / n)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run a short pass.
    let args: Vec<String> = std::env::args().collect();
    let quick = !args.iter().any(|a| a == "--bench");
    let direct_only = args.iter().any(|a| a == "direct");
    let device_only = args.iter().any(|a| a == "device");
    let forced: Option<u64> = args
        .iter()
        .find_map(|a| a.strip_prefix("frames=").and_then(|n| n.parse().ok()));
    let sizes = [
        (64usize, 200_000u64),
        (1500, 200_000),
        (65_536 - HDR - 14, 20_000),
    ];
    let only_size: Option<usize> = args
        .iter()
        .find_map(|a| a.strip_prefix("size=").and_then(|n| n.parse().ok()));
    let sizes: Vec<(usize, u64)> = sizes
        .into_iter()
        .filter(|s| only_size.is_none_or(|o| o == s.0))
        .collect();
    let count = |frames: u64| forced.unwrap_or(if quick { frames / 100 } else { frames });
    if !direct_only {
        println!(
            "| frame | direction | device ns/frame, ring kept fed | device Mpps | device Gbit/s | device ns/frame, half a ring at a time | memcpy ns/frame | fed / memcpy |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for &(size, frames) in &sizes {
            let frames = count(frames);
            let m = memcpy(size, frames * 10);
            let runs = [
                (
                    "TX",
                    tx(size, frames, Drive::Fed),
                    tx(size, frames, Drive::Batch),
                ),
                (
                    "RX",
                    rx(size, frames, Drive::Fed),
                    rx(size, frames, Drive::Batch),
                ),
            ];
            for (dir, ns, batch) in runs {
                let mpps = 1e3 / ns;
                let gbit = size as f64 * 8.0 / ns;
                println!(
                    "| {size} B | {dir} | {ns:.0} | {mpps:.2} | {gbit:.2} | {batch:.0} | {m:.0} | {:.1}x |",
                    ns / m
                );
            }
        }
        println!();
    }
    if device_only {
        return;
    }
    println!("Data path alone (no transport, no thread):");
    println!();
    println!(
        "| frame | direction | data path ns/frame | memcpy ns/frame | data path / memcpy | memcpy, {DIRECT_BATCH} buffers in turn, ns/frame | data path / that |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &(size, frames) in &sizes {
        let frames = count(frames);
        let m = memcpy(size, frames * 10);
        let (mtx, mrx) = memcpy_spread(size, frames, usize::from(DIRECT_BATCH));
        let (tx, rx) = direct(size, frames);
        for (dir, ns, spread) in [("TX", tx, mtx), ("RX", rx, mrx)] {
            println!(
                "| {size} B | {dir} | {ns:.0} | {m:.0} | {:.1}x | {spread:.0} | {:.1}x |",
                ns / m,
                ns / spread
            );
        }
    }
}
