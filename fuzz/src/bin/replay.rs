//! Replays inputs through a target without libFuzzer: `replay <target> <file>...` (for timing
//! and for debugging a crash outside the sanitizer build).

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("target name");
    let files: Vec<Vec<u8>> = args.map(|f| std::fs::read(f).expect("input")).collect();
    let run: fn(&[u8]) = match target.as_str() {
        "net_datapath" => vmm_fuzz::datapath::run,
        "mmio_transport" => vmm_fuzz::transport::run,
        "boot_image" => vmm_fuzz::boot::run,
        "esr_psci" => vmm_fuzz::esr_psci::run,
        other => panic!("unknown target {other}"),
    };
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let t = std::time::Instant::now();
    for _ in 0..reps {
        for f in &files {
            run(f);
        }
    }
    let n = reps * files.len();
    eprintln!(
        "{n} runs in {:?} ({:.0} runs/s)",
        t.elapsed(),
        n as f64 / t.elapsed().as_secs_f64()
    );
}
