//! Replays inputs through a target without libFuzzer: `replay <target> <file or directory>...`
//! (for timing, for debugging a crash outside the sanitizer build, and in CI, where every seed
//! and regression input goes through every target so the harnesses cannot rot). A directory
//! stands for the files in it. `REPS=n` repeats the whole set n times.
//!
//! Exits non-zero when there is no input at all (a glob that matched nothing is not a replay);
//! a failing input panics with the harness's message and the input's path.

use std::path::PathBuf;
use std::sync::Mutex;

/// The input being replayed, for the panic message.
static CURRENT: Mutex<String> = Mutex::new(String::new());

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .expect("usage: replay <target> <file or directory>...");
    let run: fn(&[u8]) = match target.as_str() {
        "net_datapath" => vmm_fuzz::datapath::run,
        "mmio_transport" => vmm_fuzz::transport::run,
        "boot_image" => vmm_fuzz::boot::run,
        "esr_psci" => vmm_fuzz::esr_psci::run,
        other => panic!("unknown target {other}"),
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for arg in args {
        let path = PathBuf::from(arg);
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
                .map(|e| e.expect("directory entry").path())
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            paths.extend(entries);
        } else {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        eprintln!("replay {target}: no input files");
        std::process::exit(2);
    }
    let files: Vec<(PathBuf, Vec<u8>)> = paths
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (p, data)
        })
        .collect();
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let current = CURRENT.lock().map(|c| c.clone()).unwrap_or_default();
        eprintln!("replay: the input that failed: {current}");
    }));
    let t = std::time::Instant::now();
    for _ in 0..reps {
        for (path, data) in &files {
            *CURRENT.lock().expect("replay's own lock") = format!("{target} {}", path.display());
            run(data);
        }
    }
    let n = reps * files.len();
    eprintln!(
        "replay {target}: {n} runs of {} inputs in {:?} ({:.0} runs/s)",
        files.len(),
        t.elapsed(),
        n as f64 / t.elapsed().as_secs_f64()
    );
}
