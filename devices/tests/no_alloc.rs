//! The data path allocates nothing per frame in steady state.
//!
//! A counting global allocator (this test binary's own) counts the allocations made on the test
//! thread while the data path moves batches of frames both ways, driven directly (no worker
//! thread, see `benches/rig/direct.rs`) against a backend that allocates nothing itself. After
//! the warm-up batches (the scratch vectors grow to the largest batch once; RX plans double
//! from round to round up to the batch, so that takes a few batches) the count must stay at
//! zero.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

#[path = "../benches/rig/direct.rs"]
mod direct;

/// Counts the allocations (and reallocations) of threads that turned counting on.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to the system allocator unchanged; counting touches no memory the
// allocator hands out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
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
