//! A counting global allocator for the zero-allocation tests: a test binary installs it with
//! `#[global_allocator]`, and [`Counting::allocations_in`] counts the allocations (and
//! reallocations) its own thread makes while a closure runs; other threads are not counted.
//!
//! ```
//! use examples::alloc::Counting;
//!
//! #[global_allocator]
//! static GLOBAL: Counting = Counting::new(|| false);
//!
//! fn main() {
//!     let mut v: Vec<u8> = Vec::with_capacity(16);
//!     assert_eq!(GLOBAL.allocations_in(|| v.push(1)), 0, "within capacity");
//!     assert_eq!(GLOBAL.allocations_in(|| v.extend_from_slice(&[0; 64])), 1, "grown once");
//! }
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Whether this thread counts, and what it counted: per thread, so that tests running side
    /// by side do not count each other's allocations.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting what threads inside [`allocations_in`](Self::allocations_in)
/// allocate, except while `exempt` returns true (say, inside a model of a framework whose own
/// allocations are not the code under test's). `exempt` runs inside the allocator: it must not
/// allocate.
#[derive(Debug)]
pub struct Counting {
    exempt: fn() -> bool,
}

impl Counting {
    /// A counter with the given exemption.
    pub const fn new(exempt: fn() -> bool) -> Self {
        Self { exempt }
    }

    /// The allocations this thread made while `f` ran (0 unless a `Counting` is the global
    /// allocator).
    pub fn allocations_in(&self, f: impl FnOnce()) -> u64 {
        let before = COUNT.with(Cell::get);
        COUNTING.with(|c| c.set(true));
        f();
        COUNTING.with(|c| c.set(false));
        COUNT.with(Cell::get) - before
    }

    fn note(&self) {
        if COUNTING.try_with(Cell::get).unwrap_or(false) && !(self.exempt)() {
            // `try_with`: a thread being torn down has no counter left, and is not counting.
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    }
}

// SAFETY: every call goes to the system allocator unchanged; counting touches no memory the
// allocator hands out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}
