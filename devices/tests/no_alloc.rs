//! The data path allocates nothing per frame in steady state.
//!
//! A counting global allocator (`examples::alloc`) counts the allocations made on the test
//! thread while the data path moves batches of frames both ways, driven directly (no worker
//! thread, see `benches/rig/direct.rs`) against a backend that allocates nothing itself, and
//! (with `--features vmnet-model`) against the vmnet backend, the Mac's, over the model of
//! vmnet.framework; what the model allocates inside its vmnet functions stands for the
//! framework's and is not counted. After the warm-up batches (the scratch vectors grow to the
//! largest batch once; RX plans double from round to round up to the batch, so that takes a
//! few batches) the count must stay at zero.

use examples::alloc::Counting;

#[path = "../benches/rig/direct.rs"]
mod direct;

/// Whether this thread is inside a function of the vmnet model, whose allocations stand for the
/// framework's (not ours to count).
fn in_framework() -> bool {
    #[cfg(feature = "vmnet-model")]
    return vmnet_model::vmnet::in_call();
    #[cfg(not(feature = "vmnet-model"))]
    false
}

#[global_allocator]
static GLOBAL: Counting = Counting::new(in_framework);

/// Allocations made on this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> u64 {
    GLOBAL.allocations_in(f)
}

const BATCH: u16 = 64;
const WARM_UP: u64 = 8;
const ROUNDS: u64 = 200;

fn steady_state(frame: usize) {
    let mut rig = direct::Rig::new(frame, BATCH);
    for _ in 0..WARM_UP {
        rig.tx_batch();
        rig.rx_batch();
    }
    let n = allocations_in(|| {
        for _ in 0..ROUNDS {
            rig.tx_batch();
            rig.rx_batch();
        }
    });
    // The frames really moved, every one of them.
    rig.assert_moved((WARM_UP + ROUNDS) * u64::from(BATCH));
    assert_eq!(
        n, 0,
        "{n} allocations in {ROUNDS} rounds of {BATCH} {frame}-byte frames each way"
    );
}

#[test]
fn steady_state_batches_of_small_frames_allocate_nothing() {
    steady_state(64);
}

#[test]
fn steady_state_batches_of_64k_frames_allocate_nothing() {
    steady_state(65_536 - 12 - 14);
}

#[cfg(not(feature = "vmnet-model"))]
#[test]
#[ignore = "model-only: runs with cargo test -p devices --features vmnet-model (a step of scripts/test)"]
fn steady_state_batches_through_the_vmnet_backend_allocate_nothing() {
    panic!("this test runs against the vmnet model only");
}

/// The Mac's data path: the device and its vmnet backend on a host-mode interface of the model,
/// with a peer interface that takes what the guest sends and sends what the guest receives.
#[cfg(feature = "vmnet-model")]
#[test]
fn steady_state_batches_through_the_vmnet_backend_allocate_nothing() {
    use devices::net::vmnet::VmnetBackend;
    use std::time::Duration;
    use vmnet::{Interface, Options};

    const T: Duration = Duration::from_secs(5);
    const FRAME: usize = 64;
    let backend = VmnetBackend::start(&Options::host(), T).unwrap();
    let peer = Interface::start(&Options::host(), T).unwrap();
    let mut rig = direct::Rig::with_backend(FRAME, BATCH, backend);
    // Broadcasts from the peer: the model's host network floods them to the guest's interface.
    let mut frame = vec![0x5a; FRAME];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&peer.params().mac.unwrap());
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    let frames = vec![frame; usize::from(BATCH)];
    let mut bufs = vec![vec![0u8; peer.limits().read_capacity()]; usize::from(BATCH)];
    let mut lens = [0usize; BATCH as usize];
    let mut round = |rig: &mut direct::Rig<VmnetBackend>| {
        rig.tx_batch();
        // The guest's frames are all-zero, source and destination: the model's learning switch
        // floods the first and then keeps them on the guest's port. The peer drains what it got.
        while peer.read_batch(&mut bufs, &mut lens).unwrap() > 0 {}
        assert_eq!(peer.write_batch(&frames).unwrap(), frames.len());
        rig.rx_posted_batch();
    };
    for _ in 0..WARM_UP {
        round(&mut rig);
    }
    let n = allocations_in(|| {
        for _ in 0..ROUNDS {
            round(&mut rig);
        }
    });
    rig.assert_moved_by_the_device((WARM_UP + ROUNDS) * u64::from(BATCH));
    assert_eq!(
        n, 0,
        "{n} allocations in {ROUNDS} rounds of {BATCH} {FRAME}-byte frames each way"
    );
    drop(rig);
    peer.stop(T).unwrap();
}
