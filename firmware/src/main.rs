//! `firmware`: builds the guest and emulated-host images and boots them (see the library docs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use firmware::fetch::Mirror;
use firmware::{GuestImages, HostImages, Lan, Layout, RunOptions, RunOutcome};

#[derive(Debug, Parser)]
#[command(about = "Guest and emulated arm64 host images for vmnet-rs, and their runner")]
struct Cli {
    /// Output directory [default: $FIRMWARE_DIR or <workspace>/target/firmware].
    #[arg(long, global = true)]
    out_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build guest/Image and guest/initramfs.cpio.gz from Debian's arm64 packages.
    ///
    /// With --mirror (or $VMNET_DEBIAN_MIRROR) the packages are fetched from that Debian
    /// mirror and verified against Debian's archive keys, on any OS; otherwise apt finds and
    /// downloads them; offline, give the two `.deb` files.
    Guest {
        /// A Debian mirror to fetch the packages from without apt, e.g.
        /// https://HOST/debian [default: $VMNET_DEBIAN_MIRROR].
        #[arg(long, value_name = "URL", conflicts_with = "kernel_deb")]
        mirror: Option<String>,
        /// Its security archive [default: $VMNET_DEBIAN_SECURITY_MIRROR, or the mirror URL
        /// with `-security` appended, e.g. https://HOST/debian-security].
        #[arg(long, value_name = "URL", requires = "mirror")]
        security_mirror: Option<String>,
        /// Ask the mirror for new indexes even if cached ones exist (a run without it reuses
        /// the cache and makes no network request).
        #[arg(long)]
        refresh: bool,
        /// A `linux-image-*-arm64_*.deb` to use instead of asking apt.
        #[arg(long, value_name = "DEB", requires = "busybox_deb")]
        kernel_deb: Option<PathBuf>,
        /// A `busybox-static_*_arm64.deb` to use instead of asking apt.
        #[arg(long, value_name = "DEB", requires = "kernel_deb")]
        busybox_deb: Option<PathBuf>,
    },
    /// Build host/Image and host/initramfs.cpio.gz (holding the guest and the vmm).
    Host {
        /// The static aarch64 vmm binary to put in the host [without it the host only sets
        /// up its LAN].
        #[arg(long)]
        vmm: Option<PathBuf>,
        /// Also put Debian's arm64 qemu-system-aarch64 (and its libraries) in the host, for
        /// `--append host.run=qemu`.
        #[arg(long)]
        with_qemu: bool,
    },
    /// Boot the emulated host under qemu-system-aarch64; exits 0 if it printed VMM-EXIT code=0.
    RunHost {
        /// Stop qemu after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Extra kernel parameters, e.g. "host.run=none" or "vmnet.count=10".
        #[arg(long, default_value = "")]
        append: String,
    },
    /// Boot the guest directly under qemu (TCG) on a throw-away LAN (needs root); exits 0 if
    /// the guest reported VMNET-RESULT status=ok. Checks the guest image without the vmm.
    RunGuest {
        /// Stop qemu after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Extra kernel parameters, e.g. "vmnet.count=10".
        #[arg(long, default_value = "")]
        append: String,
    },
    /// Benchmark our vmm against Debian's arm64 QEMU (vhost=off, vhost=on) on the same guest
    /// in one emulated host, and print one Markdown table (bench/README.md).
    Bench {
        /// Length of each iperf3 run, in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Echo requests from the peer to the guest, per VMM.
        #[arg(long, default_value_t = 50)]
        pings: u32,
        /// Repeat the whole series this many times (every other round in reverse order); the
        /// table shows the median of the rounds.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// The VMMs to run, comma-separated, in order: ours, qemu-vhost-off, qemu-vhost-on.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "ours,qemu-vhost-off,qemu-vhost-on"
        )]
        vmms: Vec<String>,
        /// The transfers to run, comma-separated: tcp_g2p, tcp_p2g, udp_g2p, udp_p2g.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "tcp_g2p,tcp_p2g,udp_g2p,udp_p2g"
        )]
        tests: Vec<String>,
        /// Extra options for our vmm, e.g. --ours-args="--tx-hold-us 0".
        #[arg(
            long,
            value_name = "ARGS",
            allow_hyphen_values = true,
            default_value = ""
        )]
        ours_args: String,
        /// Stop the emulated host after this many seconds [default: 900 per round, 1500
        /// with --profile].
        #[arg(long)]
        timeout: Option<u64>,
        /// Also write the table (Markdown) to this file, e.g. bench/results.md.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Profile the UDP 64 B runs with Debian's perf inside the host (per thread and per
        /// symbol); each report is saved beside the table (bench/README.md, "Where the CPU
        /// goes"). The host image then carries perf, and the figures are not comparable with
        /// an unprofiled run.
        #[arg(long)]
        profile: bool,
    },
    /// Our VMM under bidirectional iperf3 and ping for a long time (issue: robustness under
    /// load): memory, descriptors and packet counters checked at the end.
    Soak {
        /// Length of the loaded phase, in seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u32,
        /// Also write the report (Markdown) to this file, e.g. bench/soak.md.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Extra options for our vmm, e.g. --ours-args="--tx-hold-us 0".
        #[arg(
            long,
            value_name = "ARGS",
            allow_hyphen_values = true,
            default_value = ""
        )]
        ours_args: String,
    },
    /// Cross-build the vmm, build guest and host, boot the host: the whole demo.
    Demo {
        /// Stop qemu after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("firmware: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    let layout = cli
        .out_dir
        .map(Layout::new)
        .unwrap_or_else(Layout::default_for_workspace);
    match cli.command {
        Cmd::Guest {
            mirror,
            security_mirror,
            refresh,
            kernel_deb,
            busybox_deb,
        } => {
            let mirror = if kernel_deb.is_some() {
                None
            } else {
                Mirror::from_args_or_env(mirror.as_deref(), security_mirror.as_deref())
            };
            if mirror.is_none() && kernel_deb.is_none() && !has_apt() {
                anyhow::bail!(
                    "no apt here: give a Debian mirror, e.g. `firmware guest --mirror \
                     https://HOST/debian` (or set {}), or the two .deb files with \
                     --kernel-deb and --busybox-deb",
                    firmware::fetch::MIRROR_ENV
                );
            }
            let sources = firmware::DebSources {
                kernel: kernel_deb,
                busybox: busybox_deb,
                mirror,
                refresh,
            };
            firmware::build_guest_from(&layout, &sources)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Host { vmm, with_qemu } => {
            let guest = existing_guest(&layout)?;
            firmware::build_host_with(&layout, vmm.as_deref(), &guest, with_qemu)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::RunHost { timeout, append } => {
            let host = existing_host(&layout)?;
            let opts = RunOptions {
                timeout: Duration::from_secs(timeout),
                append,
                echo: true,
            };
            let outcome = firmware::run_host(&layout, &host, &opts)?;
            Ok(report_host(&outcome))
        }
        Cmd::RunGuest { timeout, append } => {
            let guest = existing_guest(&layout)?;
            let lan = Lan::create()?;
            let opts = RunOptions {
                timeout: Duration::from_secs(timeout),
                append,
                echo: true,
            };
            let outcome = firmware::run_guest_direct(&layout, &guest, &lan, &opts)?;
            drop(lan);
            Ok(report_guest(&outcome))
        }
        Cmd::Soak {
            seconds,
            results,
            ours_args,
        } => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            let opts = firmware::soak::SoakOptions {
                seconds,
                command: format!("cargo run --release -p firmware -- {}", args.join(" ")),
                ours_args: ours_args.split_whitespace().map(str::to_string).collect(),
                results,
            };
            let report = firmware::soak::run(&layout, &opts)?;
            let problems = report.problems();
            if problems.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("firmware: soak failed: {}", problems.join("; "));
                Ok(ExitCode::FAILURE)
            }
        }
        Cmd::Bench {
            seconds,
            pings,
            rounds,
            vmms,
            tests,
            ours_args,
            timeout,
            results,
            profile,
        } => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            // A profiled round also records and reports (slow under emulation).
            let per_round = if profile { 1500 } else { 900 };
            let opts = firmware::bench::BenchOptions {
                seconds,
                pings,
                rounds: rounds.max(1),
                vmms,
                tests,
                ours_args: ours_args.split_whitespace().map(str::to_string).collect(),
                timeout: Duration::from_secs(
                    timeout.unwrap_or(per_round * u64::from(rounds.max(1))),
                ),
                command: format!("cargo run --release -p firmware -- {}", args.join(" ")),
                results,
                profile,
            };
            let report = firmware::bench::run(&layout, &opts)?;
            let problems = report.problems();
            for p in &problems {
                eprintln!("firmware: bench: {p}");
            }
            Ok(if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Demo { timeout } => {
            let missing = firmware::missing_tools();
            if !missing.is_empty() {
                anyhow::bail!("the demo needs:\n  {}", missing.join("\n  "));
            }
            let vmm = firmware::build_vmm(&layout)?;
            let guest = firmware::build_guest(&layout)?;
            let host = firmware::build_host(&layout, Some(&vmm), &guest)?;
            let opts = RunOptions {
                timeout: Duration::from_secs(timeout),
                ..RunOptions::default()
            };
            let outcome = firmware::run_host(&layout, &host, &opts)?;
            Ok(report_host(&outcome))
        }
    }
}

/// Whether `apt-get` is on the PATH.
fn has_apt() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("apt-get").is_file()))
}

fn existing_guest(layout: &Layout) -> Result<GuestImages> {
    let dir = layout.guest_dir();
    let guest = GuestImages {
        image: dir.join("Image"),
        initramfs: dir.join("initramfs.cpio.gz"),
        kernel_release: String::new(),
    };
    for path in [&guest.image, &guest.initramfs] {
        std::fs::metadata(path).with_context(|| {
            format!("{} is missing: run `firmware guest` first", path.display())
        })?;
    }
    Ok(guest)
}

fn existing_host(layout: &Layout) -> Result<HostImages> {
    let dir = layout.host_dir();
    let host = HostImages {
        image: dir.join("Image"),
        initramfs: dir.join("initramfs.cpio.gz"),
        has_vmm: true,
    };
    for path in [&host.image, &host.initramfs] {
        std::fs::metadata(path)
            .with_context(|| format!("{} is missing: run `firmware host` first", path.display()))?;
    }
    Ok(host)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn print_ping(outcome: &RunOutcome) {
    match outcome.vmnet_result() {
        Some(r) => eprintln!(
            "  guest result:          status={} sent={} received={} rtt min/avg/max={} ms{}",
            r.status,
            r.sent.map_or("-".into(), |n| n.to_string()),
            r.received.map_or("-".into(), |n| n.to_string()),
            r.rtt_ms
                .map_or("-".into(), |(a, b, c)| format!("{a}/{b}/{c}")),
            r.reason.map_or(String::new(), |r| format!(" reason={r}")),
        ),
        None => eprintln!("  guest result:          no VMNET-RESULT line"),
    }
}

fn report_host(outcome: &RunOutcome) -> ExitCode {
    let console = &outcome.console;
    eprintln!("firmware: summary (wall time since qemu start)");
    eprintln!(
        "  host init:             {} (host uptime {} s)",
        secs(outcome.first("HOST-INIT")),
        firmware::console::uptime(console, "HOST-INIT ").map_or("-".into(), |u| u.to_string())
    );
    eprintln!(
        "  host LAN ready:        {}",
        secs(outcome.first("HOST-LAN"))
    );
    eprintln!(
        "  guest kernel started:  {}",
        secs(outcome.first("Machine model: vmnet-rs"))
    );
    eprintln!(
        "  guest init:            {} (guest uptime {} s)",
        secs(outcome.first("GUEST-INIT")),
        firmware::console::uptime(console, "GUEST-INIT ").map_or("-".into(), |u| u.to_string())
    );
    print_ping(outcome);
    eprintln!(
        "  VMM-EXIT:              {} code={}",
        secs(outcome.first("VMM-EXIT")),
        outcome
            .vmm_exit_code()
            .map_or("-".into(), |c| c.to_string())
    );
    eprintln!(
        "  total:                 {:.1} s{}",
        outcome.elapsed.as_secs_f64(),
        if outcome.timed_out {
            " (timed out)"
        } else {
            ""
        }
    );
    if outcome.vmm_exit_code() == Some(0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn report_guest(outcome: &RunOutcome) -> ExitCode {
    eprintln!("firmware: summary (wall time since qemu start)");
    eprintln!(
        "  guest init:            {} (guest uptime {} s)",
        secs(outcome.first("GUEST-INIT")),
        firmware::console::uptime(&outcome.console, "GUEST-INIT ")
            .map_or("-".into(), |u| u.to_string())
    );
    print_ping(outcome);
    eprintln!(
        "  total:                 {:.1} s{}",
        outcome.elapsed.as_secs_f64(),
        if outcome.timed_out {
            " (timed out)"
        } else {
            ""
        }
    );
    if outcome.vmnet_result().is_some_and(|r| r.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
