//! The binding allocates nothing per read or write in steady state (Linux,
//! `cargo test -p vmnet --features model`).
//!
//! A counting global allocator (`examples::alloc`) counts the allocations made on the test
//! thread outside the model's vmnet functions (`vmnet_model::vmnet::in_call`: what the framework
//! allocates is not the binding's), while two host-mode interfaces exchange batches of frames
//! through both APIs: `write_batch`/`read_batch` and the zero-copy
//! `write_iovecs`/`read_iovecs` with caller-owned, reused batches. After warm-up batches (the
//! scratch vectors grow once) the count must stay at zero.
//! Without the feature (and on macOS) the name exists, ignored.

#[cfg(not(all(not(target_os = "macos"), feature = "model")))]
#[macro_use]
#[path = "common/model_only.rs"]
mod model_only;

#[cfg(not(all(not(target_os = "macos"), feature = "model")))]
mod without_model {
    model_only!(reads_and_writes_allocate_nothing_in_steady_state);
}

#[cfg(all(not(target_os = "macos"), feature = "model"))]
#[path = "common/model_guard.rs"]
mod model_guard;

#[cfg(all(not(target_os = "macos"), feature = "model"))]
mod with_model {
    use std::time::Duration;

    use examples::alloc::Counting;
    use vmnet::batch::Batch;
    use vmnet::iov::{iovec_mut, iovec_ref};
    use vmnet::{Interface, Options};

    use super::model_guard::Guard;

    /// What the model allocates inside its vmnet functions stands for the framework's.
    #[global_allocator]
    static GLOBAL: Counting = Counting::new(vmnet_model::vmnet::in_call);

    /// Allocations made on this thread, outside the model, while `f` runs.
    fn allocations_in(f: impl FnOnce()) -> u64 {
        GLOBAL.allocations_in(f)
    }

    const T: Duration = Duration::from_secs(5);
    const FRAMES: usize = 32;
    const WARM_UP: usize = 4;
    const ROUNDS: usize = 100;

    fn start() -> Interface {
        Interface::start(&Options::host(), T).unwrap_or_else(|e| panic!("start: {e:?}"))
    }

    /// Frames of 60 to 1514 bytes from `src` to everyone (local experimental EtherType).
    fn frames(src: [u8; 6]) -> Vec<Vec<u8>> {
        (0..FRAMES)
            .map(|i| {
                let mut f = vec![0x5a; 60 + i * (1514 - 60) / (FRAMES - 1)];
                f[..6].fill(0xff);
                f[6..12].copy_from_slice(&src);
                f[12..14].copy_from_slice(&[0x88, 0xb5]);
                f
            })
            .collect()
    }

    #[test]
    fn reads_and_writes_allocate_nothing_in_steady_state() {
        let _g = Guard::new();
        let (a, b) = (start(), start());
        let frames = frames(a.params().mac.unwrap());
        let cap = b.limits().read_capacity();
        let mut bufs = vec![vec![0u8; cap]; FRAMES];
        let mut lens = [0usize; FRAMES];
        let (mut tx, mut rx) = (Batch::new(), Batch::new());

        // One round: the frames through write_batch/read_batch, then through the iovec API.
        let mut round = || {
            assert_eq!(a.write_batch(&frames).unwrap(), FRAMES);
            assert_eq!(b.read_batch(&mut bufs, &mut lens).unwrap(), FRAMES);
            assert_eq!(lens[FRAMES - 1], frames[FRAMES - 1].len());

            tx.clear();
            for f in &frames {
                tx.push([iovec_ref(f)], 0).unwrap();
            }
            // SAFETY: `frames` is live and not written during the call.
            assert_eq!(unsafe { a.write_iovecs(&mut tx) }.unwrap(), FRAMES);
            rx.clear();
            for buf in &mut bufs {
                rx.push_capped([iovec_mut(buf)], 0, cap).unwrap();
            }
            // SAFETY: `bufs` is live and only reached through the batch during the call.
            assert_eq!(unsafe { b.read_iovecs(&mut rx) }.unwrap(), FRAMES);
            assert_eq!(rx.received_len(0), frames[0].len());
        };
        for _ in 0..WARM_UP {
            round();
        }
        let n = allocations_in(|| {
            for _ in 0..ROUNDS {
                round();
            }
        });
        assert_eq!(
            n,
            0,
            "{n} allocations in {ROUNDS} rounds of {} frames",
            FRAMES * 4
        );
        a.stop(T).unwrap();
        b.stop(T).unwrap();
    }
}
