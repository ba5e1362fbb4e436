//! Whether a thread sleeps in a given system call, for tests that must see a waiter blocked
//! before they wake it (a wait that spins, or returns early, then fails them).
//!
//! Linux only: the state comes from `/proc/self/task/<tid>/stat` and `.../syscall` (proc(5));
//! elsewhere the functions are absent and such tests fall back to a sleep.

/// The calling thread's id (the last component of `/proc/thread-self`), or `None` where `/proc`
/// does not have it.
#[cfg(target_os = "linux")]
pub fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Whether thread `tid` of this process sleeps (state `S`) in one of the system calls numbered
/// `nrs` (the caller's architecture's numbers, e.g. `libc::SYS_futex`).
#[cfg(target_os = "linux")]
pub fn asleep_in(tid: u32, nrs: &[i64]) -> bool {
    let task = format!("/proc/self/task/{tid}");
    let stat = std::fs::read_to_string(format!("{task}/stat")).unwrap_or_default();
    // The state is the first field after the command name, which is in parentheses and may
    // itself hold spaces and parentheses.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.trim_start().chars().next());
    let call = std::fs::read_to_string(format!("{task}/syscall")).unwrap_or_default();
    let nr: Option<i64> = call.split_whitespace().next().and_then(|n| n.parse().ok());
    state == Some('S') && nr.is_some_and(|n| nrs.contains(&n))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_thread_blocked_in_a_channel_receive_is_seen_asleep_and_a_running_one_is_not() {
        let me = current_tid().expect("this thread's id");
        // This thread is running (it reads /proc): never asleep in any call.
        assert!(!asleep_in(me, &[0, 1, 7, 202, 98]));

        let (tid_tx, tid_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tid_tx.send(current_tid().unwrap()).unwrap();
            go_rx.recv().unwrap();
        });
        let tid = tid_rx.recv().unwrap();
        // A blocked channel receive sleeps in futex(2): 202 on x86_64, 98 on aarch64.
        let futex = if cfg!(target_arch = "x86_64") {
            202
        } else {
            98
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !asleep_in(tid, &[futex]) {
            assert!(Instant::now() < deadline, "never seen asleep in futex");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Not asleep in some other call.
        assert!(!asleep_in(tid, &[futex + 1]));
        go_tx.send(()).unwrap();
        t.join().unwrap();
    }
}
