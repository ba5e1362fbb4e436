//! End-to-end tests of the vmm (docs/design.md, "Tests, from fast to real", step 4).
//!
//! The tests live in `tests/`; this library holds what they share: the skip rule, a watchdog,
//! so that a hang fails the test instead of blocking CI, and the first checks of every run in
//! the emulated host.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Why the end-to-end tests cannot run on this machine, if they cannot: qemu-system-aarch64,
/// the arm64 cross toolchain or apt is missing.
pub fn skip_reason() -> Option<String> {
    let missing = firmware::missing_tools();
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// Runs `f` on its own thread and panics if it takes longer than `limit`.
///
/// `f` should bound its own child processes too (the runner kills qemu on its timeout): a
/// thread that overruns is abandoned, not stopped.
pub fn within<T: Send + 'static>(
    name: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("cannot spawn the test thread");
    match rx.recv_timeout(limit) {
        Ok(value) => {
            let _ = worker.join();
            value
        }
        // The sender went away without a value: `f` panicked; re-raise its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it returns"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{name}: no result after {} s", limit.as_secs())
        }
    }
}

/// The checks every run in the emulated host starts with, after printing how long run `name`
/// took: the host did not time out, and it had `/dev/kvm`; with `lan`, its LAN came up too.
/// Each failure points at the console log.
pub fn assert_host_came_up(name: &str, outcome: &firmware::RunOutcome, lan: bool) {
    let c = &outcome.console;
    let log = outcome.log.display();
    println!("{name}: whole run {:.1} s", outcome.elapsed.as_secs_f64());
    assert!(
        !outcome.timed_out,
        "the emulated host timed out; console in {log}"
    );
    assert!(
        c.contains("HOST-KVM ok"),
        "no /dev/kvm in the emulated host; console in {log}"
    );
    assert!(
        !lan || c.contains("HOST-LAN ok"),
        "the emulated host's LAN setup failed; console in {log}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_returns_the_value() {
        assert_eq!(within("quick", Duration::from_secs(5), || 7), 7);
    }

    #[test]
    #[should_panic(expected = "no result after 0 s")]
    fn within_panics_on_overrun() {
        within("slow", Duration::from_millis(50), || {
            thread::sleep(Duration::from_secs(2))
        });
    }

    #[test]
    #[should_panic(expected = "inner")]
    fn within_propagates_a_panic() {
        within("panics", Duration::from_secs(5), || panic!("inner"));
    }
}
