//! `firmware bench`: our vmm side by side with Debian's arm64 QEMU (vhost off and on), on the
//! same guest, in the same emulated arm64 host, under the same KVM (issue 6, "Benchmark").
//!
//! The emulated host boots once with `host.run=bench`. Its init (`firmware/host/init`, function
//! `bench_one`) starts each VMM in turn in the background on the same guest, memory, vCPUs,
//! MAC and tap, waits for the guest's `BENCH-GUEST-READY` (the guest init in
//! `vmnet.mode=bench` only serves iperf3 and keeps the console silent), then drives every
//! measurement from the peer namespace: ping, TCP and UDP iperf3 runs both ways (`-R` makes the
//! guest the sender), each bracketed by readings of the VMM's `/proc/PID/stat` (utime + stime
//! of all its threads, plus the `vhost-PID` kernel threads that do QEMU's data path with
//! `vhost=on`). It prints one `BENCH-*` line per measurement; this module reads them back and
//! renders one Markdown table. Absolute figures are small under emulation; the ratios between
//! VMMs in the same run are what we quote. With `--profile` the host also runs Debian's `perf`
//! during the UDP 64 B runs and prints per-thread ticks and `perf` reports between markers;
//! [`parse_profiles`] reads them back and each is saved beside the table (bench/README.md,
//! "Where the CPU goes").

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::{Layout, RunOptions, RunOutcome, progress};

/// The VMMs the bench compares, in the order the host runs them: (name in the `BENCH-*`
/// lines, column title).
pub const VMMS: &[(&str, &str)] = &[
    ("ours", "ours"),
    ("qemu-vhost-off", "QEMU vhost=off"),
    ("qemu-vhost-on", "QEMU vhost=on"),
    ("ours-passt", "ours, stream:"),
    ("qemu-passt", "QEMU, -netdev stream"),
];

/// The VMMs on the tap (the first table): ours first, then the baselines.
const TAP_VMMS: &[&str] = &["ours", "qemu-vhost-off", "qemu-vhost-on"];
/// The VMMs behind passt (the second table): our `--net stream:` and QEMU's `-netdev stream`
/// to the same passt. passt forwards no inbound ICMP: these have no ping.
const PASST_VMMS: &[&str] = &["ours-passt", "qemu-passt"];

/// The transfers of each VMM: (test name in `BENCH-XFER`, row label).
pub const XFERS: &[(&str, &str)] = &[
    ("tcp_g2p", "TCP guest→peer"),
    ("tcp_p2g", "TCP peer→guest"),
    ("udp_g2p", "UDP 64 B guest→peer"),
    ("udp_p2g", "UDP 64 B peer→guest"),
];

/// `BENCH-XFER` reports `/proc/PID/stat` times in clock ticks of `USER_HZ`, 100 on arm64.
const DEFAULT_HZ: f64 = 100.0;

/// Options of `firmware bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Length of each iperf3 run, in seconds.
    pub seconds: u32,
    /// Echo requests from the peer to the guest.
    pub pings: u32,
    /// How many times the whole series runs (every other round in reverse order); the table
    /// shows the median of the rounds.
    pub rounds: u32,
    /// The VMMs to run (names of [`VMMS`]), in this order.
    pub vmms: Vec<String>,
    /// The transfers to run (names of [`XFERS`]), in this order.
    pub tests: Vec<String>,
    /// Extra options for our vmm (e.g. `--tx-hold-us 0`), one word each.
    pub ours_args: Vec<String>,
    /// The whole emulated-host run is stopped after this long.
    pub timeout: Duration,
    /// The command line to print with the table (how the user ran it).
    pub command: String,
    /// Also write the table here.
    pub results: Option<PathBuf>,
    /// Profile the UDP 64 B runs with `perf` inside the host (`host.bench.profile=1`): the
    /// host image then carries Debian's `perf`, and each report is saved next to the table.
    pub profile: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            seconds: 10,
            pings: 50,
            rounds: 1,
            vmms: VMMS.iter().map(|(n, _)| n.to_string()).collect(),
            tests: XFERS.iter().map(|(n, _)| n.to_string()).collect(),
            ours_args: Vec::new(),
            timeout: Duration::from_secs(900),
            command: "cargo run --release -p firmware -- bench".into(),
            results: None,
            profile: false,
        }
    }
}

/// One iperf3 run, from its `BENCH-XFER` line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Xfer {
    /// iperf3's exit status (0 when it completed).
    pub rc: Option<i32>,
    /// The receiver's measuring interval.
    pub seconds: Option<f64>,
    /// The receiver's rate in kbit/s (payload).
    pub kbps: Option<f64>,
    /// TCP: the sender's retransmitted segments.
    pub retr: Option<u64>,
    /// UDP: datagrams the sender sent.
    pub sent: Option<u64>,
    /// UDP: datagrams the receiver missed.
    pub lost: Option<i64>,
    /// UDP: datagrams the receiver accounted for (received + lost).
    pub total: Option<u64>,
    /// CPU ticks of the VMM process (all threads) during the run.
    pub vmm_ticks: Option<u64>,
    /// CPU ticks of its vhost worker threads during the run.
    pub vhost_ticks: Option<u64>,
    /// CPU ticks of passt during the run (the passt rows; 0 or absent otherwise).
    pub passt_ticks: Option<u64>,
    /// Frames the VMM took from the tap (its `tx_packets`: what the host handed to the guest)
    /// during the run, whatever the guest then did with them. Absent through passt.
    pub tap_to_guest: Option<u64>,
    /// Frames the VMM wrote to the tap (its `rx_packets`) during the run.
    pub tap_from_guest: Option<u64>,
    /// Ticks per second.
    pub hz: f64,
}

impl Xfer {
    /// Payload bytes delivered to the receiver.
    pub fn bytes(&self) -> Option<f64> {
        Some(self.kbps? * 1000.0 / 8.0 * self.seconds?)
    }

    /// UDP datagrams delivered to the receiver.
    pub fn delivered(&self) -> Option<u64> {
        let total = self.total?;
        Some(total.saturating_sub(self.lost?.max(0) as u64))
    }

    /// Delivered datagrams per second.
    pub fn pps(&self) -> Option<f64> {
        Some(self.delivered()? as f64 / self.seconds?)
    }

    /// CPU seconds of the VMM (and its vhost threads, or the passt it sends through)
    /// during the run.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let helpers = self.vhost_ticks.unwrap_or(0) + self.passt_ticks.unwrap_or(0);
        Some((self.vmm_ticks? + helpers) as f64 / self.hz)
    }

    /// CPU seconds per gigabyte (10^9 bytes) of payload delivered.
    pub fn cpu_per_gb(&self) -> Option<f64> {
        let bytes = self.bytes().filter(|b| *b > 0.0)?;
        Some(self.cpu_seconds()? / (bytes / 1e9))
    }

    /// CPU microseconds per datagram delivered.
    pub fn cpu_us_per_packet(&self) -> Option<f64> {
        let delivered = self.delivered().filter(|d| *d > 0)?;
        Some(self.cpu_seconds()? * 1e6 / delivered as f64)
    }

    /// CPU microseconds per frame the VMM moved through the tap (`frames`: one of the
    /// `tap_*` counts).
    pub fn cpu_us_per_frame(&self, frames: Option<u64>) -> Option<f64> {
        let frames = frames.filter(|f| *f > 0)?;
        Some(self.cpu_seconds()? * 1e6 / frames as f64)
    }
}

/// What one VMM measured.
#[derive(Debug, Clone, Default)]
pub struct VmmResult {
    /// Wall time from the host starting the VMM to the guest's `GUEST-INIT` line.
    pub boot_wall: Option<Duration>,
    /// The guest kernel's own uptime when its init started.
    pub guest_uptime_at_init: Option<f64>,
    /// Echo requests sent and replies received.
    pub ping_sent: Option<u32>,
    /// Echo replies received.
    pub ping_received: Option<u32>,
    /// RTT min/avg/max in milliseconds.
    pub rtt_ms: Option<(f64, f64, f64)>,
    /// Every echo's round-trip time (ms), in the order sent (`BENCH-PING-RTTS`).
    pub rtts_ms: Vec<f64>,
    /// iperf3 runs by test name.
    pub xfers: BTreeMap<String, Xfer>,
    /// The VMM's exit status.
    pub exit_code: Option<i32>,
    /// `BENCH-FAIL` reasons.
    pub failures: Vec<String>,
}

/// The whole run, parsed.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Results by VMM name (see [`VMMS`]) and round (from 1).
    pub runs: BTreeMap<(String, u32), VmmResult>,
    /// The number of rounds the host was asked for.
    pub rounds: u32,
    /// The VMMs the host was asked to run (all of [`VMMS`] unless `BENCH-CONFIG` says).
    pub vmms: Vec<String>,
    /// The transfers the host was asked to run (all of [`XFERS`] unless `BENCH-CONFIG` says).
    pub tests: Vec<String>,
    /// The host printed `BENCH-DONE`.
    pub done: bool,
    /// `BENCH-MISSING` items (tools or devices the host image lacks).
    pub missing: Vec<String>,
    /// The `BENCH-*` lines as printed, for the record.
    pub raw: Vec<String>,
    /// CPU time the rest of the machine used while the emulated host ran, and the capacity
    /// (CPU seconds) it had: the emulated host is slowed by anything else running.
    pub other_load: Option<OtherLoad>,
}

impl Report {
    /// Reads the `BENCH-*` lines of a run, and the boot times from its markers.
    pub fn parse(outcome: &RunOutcome) -> Self {
        let mut report = Self::parse_console(&outcome.console);
        // The boot time: from the host's "HOST-TIME bench-start vmm=NAME" to the first
        // "GUEST-INIT" after it, both timestamped on arrival at the runner.
        let mut current: Option<((String, u32), Duration)> = None;
        for marker in &outcome.markers {
            if marker.line.contains("HOST-TIME bench-start ") {
                current =
                    run_key(&line_fields(&marker.line, "bench-start")).map(|k| (k, marker.at));
            } else if marker.line.contains("GUEST-INIT")
                && let Some((key, start)) = current.take()
            {
                let vmm = report.runs.entry(key).or_default();
                vmm.boot_wall = Some(marker.at.saturating_sub(start));
                vmm.guest_uptime_at_init = line_fields(&marker.line, "GUEST-INIT")
                    .get("uptime")
                    .and_then(|u| u.parse().ok());
            }
        }
        report
    }

    /// Reads the `BENCH-*` lines of a console (no boot times: those need the markers).
    pub fn parse_console(text: &str) -> Self {
        let mut report = Self {
            vmms: VMMS.iter().map(|(n, _)| n.to_string()).collect(),
            tests: XFERS.iter().map(|(n, _)| n.to_string()).collect(),
            ..Self::default()
        };
        for line in text.lines().map(|l| l.trim_end_matches('\r')) {
            let Some(at) = line.find("BENCH-") else {
                continue;
            };
            let line = &line[at..];
            let (tag, _) = line.split_once(' ').unwrap_or((line, ""));
            let f = line_fields(line, tag);
            let key = run_key(&f);
            match (tag, key) {
                ("BENCH-DONE", _) => report.done = true,
                ("BENCH-CONFIG", _) => {
                    report.rounds = num(&f, "rounds").unwrap_or(1);
                    let list = |v: &str| v.split(',').map(str::to_string).collect();
                    if let Some(v) = f.get("vmms") {
                        report.vmms = list(v);
                    }
                    if let Some(t) = f.get("tests") {
                        report.tests = list(t);
                    }
                }
                ("BENCH-MISSING", _) => {
                    report
                        .missing
                        .push(line.trim_start_matches("BENCH-MISSING").trim().into());
                }
                ("BENCH-PING", Some(key)) => {
                    let v = report.runs.entry(key).or_default();
                    v.ping_sent = num(&f, "sent");
                    v.ping_received = num(&f, "received");
                    v.rtt_ms = match (num(&f, "rtt_min"), num(&f, "rtt_avg"), num(&f, "rtt_max")) {
                        (Some(a), Some(b), Some(c)) => Some((a, b, c)),
                        _ => None,
                    };
                }
                ("BENCH-PING-RTTS", Some(key)) => {
                    let v = report.runs.entry(key).or_default();
                    v.rtts_ms = f
                        .get("ms")
                        .map(|l| l.split(',').filter_map(|t| t.parse().ok()).collect())
                        .unwrap_or_default();
                }
                ("BENCH-XFER", Some(key)) => {
                    let Some(test) = f.get("test") else { continue };
                    let xfer = Xfer {
                        rc: num(&f, "rc"),
                        seconds: num(&f, "seconds"),
                        kbps: num(&f, "kbps"),
                        retr: num(&f, "retr"),
                        sent: num(&f, "sent"),
                        lost: num(&f, "lost"),
                        total: num(&f, "total"),
                        vmm_ticks: num(&f, "vmm_ticks"),
                        vhost_ticks: num(&f, "vhost_ticks"),
                        passt_ticks: num(&f, "passt_ticks"),
                        tap_to_guest: num(&f, "tap_to_guest"),
                        tap_from_guest: num(&f, "tap_from_guest"),
                        hz: num(&f, "hz").unwrap_or(DEFAULT_HZ),
                    };
                    report
                        .runs
                        .entry(key)
                        .or_default()
                        .xfers
                        .insert(test.to_string(), xfer);
                }
                ("BENCH-EXIT", Some(key)) => {
                    report.runs.entry(key).or_default().exit_code = num(&f, "code");
                }
                ("BENCH-FAIL", Some(key)) => {
                    let reason = f.get("reason").unwrap_or(&"unknown").to_string();
                    report.runs.entry(key).or_default().failures.push(reason);
                }
                _ => {}
            }
            // The profile's blocks go to their own files (parse_profiles).
            if !matches!(
                tag,
                "BENCH-GUEST-READY"
                    | "BENCH-THREADS-BEGIN"
                    | "BENCH-THREADS-END"
                    | "BENCH-PROFILE-BEGIN"
                    | "BENCH-PROFILE-END"
            ) {
                report.raw.push(line.to_string());
            }
        }
        report
    }

    /// Problems that make the table incomplete (empty if every VMM measured every row).
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .missing
            .iter()
            .map(|m| format!("the host image lacks {m}"))
            .collect();
        if !self.done {
            problems.push("the host did not finish (no BENCH-DONE)".into());
        }
        for vmm in &self.vmms {
            for round in 1..=self.rounds.max(1) {
                self.run_problems(vmm, round, &mut problems);
            }
        }
        problems
    }

    fn run_problems(&self, vmm: &str, round: u32, problems: &mut Vec<String>) {
        let name = if self.rounds > 1 {
            format!("{vmm} (round {round})")
        } else {
            vmm.to_string()
        };
        let Some(v) = self.runs.get(&(vmm.to_string(), round)) else {
            problems.push(format!("{name}: no result"));
            return;
        };
        for reason in &v.failures {
            problems.push(format!("{name}: {reason}"));
        }
        if v.exit_code != Some(0) {
            problems.push(format!("{name}: exit code {:?}", v.exit_code));
        }
        if !PASST_VMMS.contains(&vmm) && v.ping_received.is_none_or(|r| Some(r) != v.ping_sent) {
            problems.push(format!(
                "{name}: ping {:?}/{:?} answered",
                v.ping_received, v.ping_sent
            ));
        }
        for test in &self.tests {
            match v.xfers.get(test) {
                Some(x) if x.rc == Some(0) && x.kbps.is_some() => {}
                Some(x) => problems.push(format!("{name}: {test} failed (iperf3 rc {:?})", x.rc)),
                None => problems.push(format!("{name}: {test} missing")),
            }
        }
    }

    /// The measured rounds of `vmm`.
    fn rounds_of<'a>(&'a self, vmm: &'a str) -> impl Iterator<Item = &'a VmmResult> + 'a {
        self.runs
            .iter()
            .filter(move |((name, _), _)| name == vmm)
            .map(|(_, v)| v)
    }

    /// The Markdown table of the tap rows: one column per VMM (the median of its rounds),
    /// then ours/QEMU ratios.
    pub fn table(&self) -> String {
        self.table_of(TAP_VMMS, &["ours/QEMU vhost=off", "ours/QEMU vhost=on"])
    }

    /// The Markdown table of the passt rows: our `--net stream:` and QEMU's `-netdev stream`
    /// to the same passt, and their ratio.
    pub fn passt_table(&self) -> String {
        self.table_of(PASST_VMMS, &["ours/QEMU"])
    }

    /// One table: a column per VMM of `vmms` (names of [`VMMS`]; the median of its rounds),
    /// then the first one's ratio to each of the others, headed `ratios`.
    fn table_of(&self, vmms: &[&str], ratios: &[&str]) -> String {
        type Metric = fn(&VmmResult) -> Option<f64>;
        fn xfer(v: &VmmResult, test: &str) -> Option<Xfer> {
            v.xfers.get(test).filter(|x| x.rc == Some(0)).cloned()
        }
        let rows: Vec<(&str, &str, usize, Metric)> = vec![
            (
                "Guest boot, VMM start → init (s, wall)",
                "lower",
                2,
                |v| v.boot_wall.map(|d| d.as_secs_f64()),
            ),
            (
                "Guest kernel start → init (s, guest clock)",
                "lower",
                2,
                |v| v.guest_uptime_at_init,
            ),
            ("Ping RTT min (ms)", "lower", 3, |v| v.rtt_ms.map(|r| r.0)),
            ("Ping RTT avg (ms)", "lower", 3, |v| v.rtt_ms.map(|r| r.1)),
            ("Ping RTT max (ms)", "lower", 3, |v| v.rtt_ms.map(|r| r.2)),
            ("Ping RTT median (ms)", "lower", 3, |v| {
                percentile(&v.rtts_ms, 50)
            }),
            ("Ping RTT 90th percentile (ms)", "lower", 3, |v| {
                percentile(&v.rtts_ms, 90)
            }),
            ("Ping RTT, first echo after boot (ms)", "lower", 3, |v| {
                v.rtts_ms.first().copied()
            }),
            ("TCP guest→peer (Mbit/s)", "higher", 1, |v| {
                xfer(v, "tcp_g2p")?.kbps.map(|k| k / 1000.0)
            }),
            ("TCP peer→guest (Mbit/s)", "higher", 1, |v| {
                xfer(v, "tcp_p2g")?.kbps.map(|k| k / 1000.0)
            }),
            ("UDP 64 B guest→peer (kpps delivered)", "higher", 2, |v| {
                xfer(v, "udp_g2p")?.pps().map(|p| p / 1000.0)
            }),
            ("UDP 64 B peer→guest (kpps delivered)", "higher", 2, |v| {
                xfer(v, "udp_p2g")?.pps().map(|p| p / 1000.0)
            }),
            ("UDP 64 B guest→peer (kpps sent)", "higher", 2, |v| {
                let x = xfer(v, "udp_g2p")?;
                Some(x.sent? as f64 / x.seconds? / 1000.0)
            }),
            (
                "UDP 64 B peer→guest (kpps the peer offered)",
                "-",
                2,
                |v| {
                    let x = xfer(v, "udp_p2g")?;
                    Some(x.sent? as f64 / x.seconds? / 1000.0)
                },
            ),
            ("CPU s/GB, TCP guest→peer", "lower", 2, |v| {
                xfer(v, "tcp_g2p")?.cpu_per_gb()
            }),
            ("CPU s/GB, TCP peer→guest", "lower", 2, |v| {
                xfer(v, "tcp_p2g")?.cpu_per_gb()
            }),
            ("CPU s/GB, UDP 64 B guest→peer", "lower", 0, |v| {
                xfer(v, "udp_g2p")?.cpu_per_gb()
            }),
            ("CPU s/GB, UDP 64 B peer→guest", "lower", 0, |v| {
                xfer(v, "udp_p2g")?.cpu_per_gb()
            }),
            ("CPU µs/packet, UDP 64 B guest→peer", "lower", 1, |v| {
                xfer(v, "udp_g2p")?.cpu_us_per_packet()
            }),
            ("CPU µs/packet, UDP 64 B peer→guest", "lower", 1, |v| {
                xfer(v, "udp_p2g")?.cpu_us_per_packet()
            }),
            (
                "UDP 64 B peer→guest (kpps the VMM took from the tap)",
                "higher",
                2,
                |v| {
                    let x = xfer(v, "udp_p2g")?;
                    Some(x.tap_to_guest? as f64 / x.seconds? / 1000.0)
                },
            ),
            (
                "CPU µs/frame the VMM moved, UDP 64 B guest→peer",
                "lower",
                1,
                |v| {
                    let x = xfer(v, "udp_g2p")?;
                    x.cpu_us_per_frame(x.tap_from_guest)
                },
            ),
            (
                "CPU µs/frame the VMM moved, UDP 64 B peer→guest",
                "lower",
                1,
                |v| {
                    let x = xfer(v, "udp_p2g")?;
                    x.cpu_us_per_frame(x.tap_to_guest)
                },
            ),
        ];
        let title = |name: &str| {
            VMMS.iter()
                .find(|(n, _)| *n == name)
                .map_or(name.to_string(), |(_, t)| t.to_string())
        };
        let mut out = String::new();
        let _ = write!(out, "| metric |");
        for name in vmms {
            let _ = write!(out, " {} |", title(name));
        }
        for ratio in ratios {
            let _ = write!(out, " {ratio} |");
        }
        let _ = writeln!(out, " better |");
        let _ = writeln!(
            out,
            "|---|{}{}---|",
            "---:|".repeat(vmms.len()),
            "---:|".repeat(ratios.len())
        );
        // "-": the figure is not the VMM's to improve (the peer's own send rate).
        for (label, better, decimals, metric) in rows {
            let values: Vec<Option<f64>> = vmms
                .iter()
                .map(|name| median(self.rounds_of(name).filter_map(metric).collect()))
                .collect();
            let _ = write!(out, "| {label} |");
            for v in &values {
                let _ = write!(out, " {} |", fmt_value(*v, decimals));
            }
            for baseline in &values[1..] {
                let _ = write!(out, " {} |", fmt_ratio(values[0], *baseline));
            }
            let _ = writeln!(out, " {} |", better);
        }
        out
    }

    /// The table with its title, date, command, notes and the raw lines, as Markdown.
    pub fn markdown(&self, date: &str, opts: &BenchOptions) -> String {
        let mut out = String::new();
        let ran = |group: &[&str]| self.vmms.iter().any(|v| group.contains(&v.as_str()));
        let what = match (ran(TAP_VMMS), ran(PASST_VMMS)) {
            (false, true) => "ours vs QEMU, each through passt",
            (true, true) => "ours vs QEMU (vhost off/on; and each through passt)",
            _ => "ours vs QEMU (vhost off/on)",
        };
        let _ = writeln!(out, "# Benchmark: {what} under the same KVM\n");
        let _ = writeln!(out, "- Date: {date}");
        let _ = writeln!(out, "- Command: `{}`", opts.command);
        let _ = writeln!(
            out,
            "- Setup: emulated arm64 host (qemu-system-aarch64 TCG, 2 vCPUs, EL2, real KVM \
             inside); the same guest (Debian arm64 kernel, initramfs with iperf3) under each \
             VMM, 2 vCPUs, 256 MiB, tap0 on br0 to the peer namespace; iperf3 runs of {} s; \
             {} pings at 0.2 s intervals from the peer; {} round(s), each figure the median \
             of the rounds. CPU = utime+stime of the VMM process (all threads, so the guest's \
             vCPUs too) plus its vhost kernel threads. See bench/README.md.\n",
            opts.seconds, opts.pings, opts.rounds
        );
        if opts.profile {
            let _ = writeln!(
                out,
                "- Profiled run (`--profile`): perf sampled the VMMs during the UDP 64 B runs on \
                 the same two emulated CPUs, so these figures are not comparable with an \
                 unprofiled run's. The reports are saved beside this table.\n"
            );
        }
        if !opts.ours_args.is_empty() {
            let _ = writeln!(
                out,
                "- Our vmm ran with the extra options `{}`.\n",
                opts.ours_args.join(" ")
            );
        }
        if let Some(load) = self.other_load {
            let _ = writeln!(
                out,
                "- Other load on the machine during the run: {:.0} CPU s of {:.0} ({:.0}%); \
                 the emulated host competes with it, so compare runs made on an idle machine.\n",
                load.other_cpu,
                load.capacity,
                100.0 * load.other_cpu / load.capacity.max(1.0)
            );
        }
        if ran(TAP_VMMS) {
            out.push_str(&self.table());
        }
        if ran(PASST_VMMS) {
            let _ = writeln!(
                out,
                "\n## Through passt: our `--net stream:` vs QEMU's `-netdev stream`\n\n\
                 The same guest behind one passt per VMM (Debian's arm64 passt, `-f -1 -m 1500 \
                 --no-map-gw`, as an unprivileged user), its address from passt's DHCP; passt forwards the \
                 host's TCP ports 5201 and 5999 and UDP port 5201 to the guest, and the peer \
                 measures against the host's address 10.0.2.2 through br0 and passt. CPU = the \
                 VMM process plus passt. No ping: passt forwards no inbound ICMP.\n"
            );
            out.push_str(&self.passt_table());
        }
        let problems = self.problems();
        if !problems.is_empty() {
            let _ = writeln!(out, "\nIncomplete run:");
            for p in problems {
                let _ = writeln!(out, "- {p}");
            }
        }
        let _ = writeln!(
            out,
            "\n<details><summary>Raw lines from the host</summary>\n"
        );
        let _ = writeln!(out, "```");
        for line in &self.raw {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "```\n</details>");
        out
    }
}

/// One profile of one run, from the host's `BENCH-THREADS-*` and `BENCH-PROFILE-*` blocks
/// (`host.bench.profile=1`, see `profile_end` in `firmware/host/init`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// The VMM (a name of [`VMMS`]).
    pub vmm: String,
    /// The round, from 1.
    pub round: u32,
    /// The transfer (a name of [`XFERS`]).
    pub test: String,
    /// Each block as printed: its title (`threads`, or `perf report --sort KEYS`) and lines.
    pub sections: Vec<(String, Vec<String>)>,
}

impl Profile {
    /// The file name of this profile beside the table `bench-<stamp>.md`.
    pub fn file_name(&self, stamp: &str) -> String {
        format!(
            "bench-{stamp}-profile-{}-{}-r{}.txt",
            self.vmm, self.test, self.round
        )
    }

    /// Each thread's CPU per datagram delivered, from the threads block: lines
    /// `TID COMM total_us guest_us` (ticks of `hz` per second over `delivered` datagrams;
    /// total is utime + stime, guest the part of it spent running the guest).
    pub fn per_packet(&self, delivered: u64, hz: f64) -> Vec<String> {
        let Some((_, lines)) = self.sections.iter().find(|(t, _)| t.starts_with("threads")) else {
            return Vec::new();
        };
        if delivered == 0 {
            return Vec::new();
        }
        let us = |ticks: u64| ticks as f64 / hz * 1e6 / delivered as f64;
        // vCPU threads: ours "vcpuN", QEMU's "CPU_N/KVM" (spaces made "_" by the host);
        // vhost workers "vhost-PID"; the rest are I/O threads and QEMU's main loop.
        let mut sums = [0u64; 5];
        let mut out: Vec<String> = lines
            .iter()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let (tid, comm) = (words.next()?, words.next()?);
                let f: BTreeMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
                let (u, s, g): (u64, u64, u64) =
                    (num(&f, "utime")?, num(&f, "stime")?, num(&f, "guest")?);
                if comm.starts_with("vcpu") || comm.ends_with("/KVM") {
                    sums[0] += g;
                    sums[1] += (u + s).saturating_sub(g);
                } else if comm.starts_with("vhost-") {
                    sums[4] += u + s;
                } else {
                    sums[2] += u;
                    sums[3] += s;
                }
                Some(format!(
                    "{tid} {comm} cpu_us_per_packet={:.1} guest_us_per_packet={:.1}",
                    us(u + s),
                    us(g)
                ))
            })
            .collect();
        out.push(format!(
            "summary: vcpu_in_guest={:.0} vcpu_outside_guest={:.0} other_threads_user={:.0} \
             other_threads_kernel={:.0} vhost={:.0} total={:.0} (µs per packet)",
            us(sums[0]),
            us(sums[1]),
            us(sums[2]),
            us(sums[3]),
            us(sums[4]),
            us(sums.iter().sum())
        ));
        out
    }

    /// The profile as text: a heading per block, and with the run's transfer (`xfer`) each
    /// thread's CPU per delivered datagram.
    pub fn text(&self, xfer: Option<&Xfer>) -> String {
        let mut out = format!(
            "Profile of {} (round {}), {}\n",
            self.vmm, self.round, self.test
        );
        if let Some(x) = xfer
            && let Some(delivered) = x.delivered()
        {
            let _ = writeln!(
                out,
                "\n== CPU per datagram delivered ({delivered} datagrams) ==\n{}",
                self.per_packet(delivered, x.hz).join("\n")
            );
        }
        for (title, lines) in &self.sections {
            let _ = writeln!(out, "\n== {title} ==");
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

/// The profiles in a console, in the order printed; the lines of one run's blocks go to one
/// [`Profile`]. An unterminated block (the host stopped) keeps what it has.
pub fn parse_profiles(console: &str) -> Vec<Profile> {
    let mut profiles: Vec<Profile> = Vec::new();
    let mut open: Option<(String, Vec<String>)> = None;
    for line in console.lines().map(|l| l.trim_end_matches('\r')) {
        let begin = ["BENCH-THREADS-BEGIN", "BENCH-PROFILE-BEGIN"]
            .into_iter()
            .find_map(|tag| line.find(tag).map(|at| (tag, &line[at..])));
        if let Some((tag, rest)) = begin {
            let f = line_fields(rest, tag);
            let Some((vmm, round)) = run_key(&f) else {
                continue;
            };
            let test = f.get("test").copied().unwrap_or("-").to_string();
            let title = match f.get("sort") {
                Some(keys) => format!("perf report --sort {keys}"),
                None => "threads (ticks during the run; guest = running the guest)".into(),
            };
            let same = |p: &Profile| p.vmm == vmm && p.round == round && p.test == test;
            if !profiles.last().is_some_and(same) {
                profiles.push(Profile {
                    vmm,
                    round,
                    test,
                    sections: Vec::new(),
                });
            }
            open = Some((title, Vec::new()));
        } else if line.contains("BENCH-THREADS-END") || line.contains("BENCH-PROFILE-END") {
            if let (Some(section), Some(p)) = (open.take(), profiles.last_mut()) {
                p.sections.push(section);
            }
        } else if let Some((_, lines)) = open.as_mut() {
            lines.push(line.to_string());
        }
    }
    if let (Some(section), Some(p)) = (open, profiles.last_mut()) {
        p.sections.push(section);
    }
    profiles
}

/// The host's kernel parameters for a run with `opts`.
fn host_append(opts: &BenchOptions) -> String {
    let mut append = format!(
        "host.run=bench host.bench.vmms={} host.bench.tests={} host.bench.ours_args={} \
         host.bench.seconds={} host.bench.pings={} host.bench.rounds={}",
        opts.vmms.join(","),
        opts.tests.join(","),
        opts.ours_args.join(","),
        opts.seconds,
        opts.pings,
        opts.rounds
    );
    if opts.profile {
        append.push_str(" host.bench.profile=1");
    }
    append
}

/// `(vmm, round)` of a line's fields (round 1 if the line has none).
fn run_key(f: &BTreeMap<&str, &str>) -> Option<(String, u32)> {
    Some((f.get("vmm")?.to_string(), num(f, "round").unwrap_or(1)))
}

/// The median (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The `p`th percentile by nearest rank (the smallest value with at least `p`% of the values at
/// or below it); the 50th is the median. `None` for no values.
fn percentile(values: &[f64], p: usize) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (v.len() * p).div_ceil(100).max(1);
    v.get(rank - 1).copied()
}

/// What else ran on the machine during the emulated host's run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OtherLoad {
    /// CPU seconds used by everything but the emulator (and this process).
    pub other_cpu: f64,
    /// CPU seconds the machine had (cores × wall time).
    pub capacity: f64,
}

/// Busy CPU ticks of the whole machine (`/proc/stat` line `cpu`: all but idle and iowait) and
/// the ticks of this process's reaped children (`/proc/self/stat` cutime + cstime: qemu once
/// it has been waited for), both in `USER_HZ`.
fn cpu_snapshot() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = cpu.iter().take(8).sum::<u64>() - cpu.get(3)? - cpu.get(4)?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After "pid (comm) " field N of proc(5) is at index N - 3: utime 14, stime 15, cutime 16,
    // cstime 17.
    let fields: Vec<&str> = own.rsplit_once(") ")?.1.split_whitespace().collect();
    let mine = fields
        .get(11..15)?
        .iter()
        .map(|v| v.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    Some((busy, mine))
}

fn other_load(
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
    wall: Duration,
) -> Option<OtherLoad> {
    let ((b0, m0), (b1, m1)) = (before?, after?);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some(OtherLoad {
        other_cpu: (b1.saturating_sub(b0)).saturating_sub(m1.saturating_sub(m0)) as f64
            / DEFAULT_HZ,
        capacity: cores as f64 * wall.as_secs_f64(),
    })
}

/// The `key=value` fields after `tag` on one line.
fn line_fields<'a>(line: &'a str, tag: &str) -> BTreeMap<&'a str, &'a str> {
    let rest = line.find(tag).map_or("", |i| &line[i + tag.len()..]);
    rest.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .collect()
}

fn num<T: std::str::FromStr>(f: &BTreeMap<&str, &str>, key: &str) -> Option<T> {
    f.get(key).and_then(|v| v.parse().ok())
}

fn fmt_value(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn fmt_ratio(ours: Option<f64>, baseline: Option<f64>) -> String {
    match (ours, baseline) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// `YYYY-MM-DD HH:MM UTC` for a time since the Unix epoch (Howard Hinnant's
/// `civil_from_days`).
pub fn utc_date(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let days = (secs / 86_400) as i64;
    let (hour, minute) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

/// Fails unless `names` is a non-empty list of names from `known`, each at most once.
fn check_names(what: &str, names: &[String], known: &[(&str, &str)]) -> Result<()> {
    let all = || known.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    if names.is_empty() {
        bail!("no {what} to run: name at least one of {}", all());
    }
    for (i, name) in names.iter().enumerate() {
        if !known.iter().any(|(n, _)| n == name) {
            bail!("unknown {what} {name:?}: the {what}s are {}", all());
        }
        if names[..i].contains(name) {
            bail!("{what} {name:?} is named twice");
        }
    }
    Ok(())
}

/// The host's kernel command line carries our vmm's extra options as one comma-separated word:
/// fails on an option it cannot carry.
pub(crate) fn check_ours_args(args: &[String]) -> Result<()> {
    if let Some(bad) = args
        .iter()
        .find(|a| a.is_empty() || a.contains([',', ' ', '\t', '"', '\'']))
    {
        bail!("--ours-args: {bad:?} cannot be passed on (no commas, blanks or quotes)");
    }
    Ok(())
}

/// `firmware bench`: cross-builds the vmm, builds the bench images, boots the emulated host
/// once with `host.run=bench`, prints the table (and writes it where asked). Returns the
/// report; [`Report::problems`] says whether every row was measured.
pub fn run(layout: &Layout, opts: &BenchOptions) -> Result<Report> {
    let missing = crate::missing_tools();
    if !missing.is_empty() {
        bail!("the bench needs:\n  {}", missing.join("\n  "));
    }
    check_names("VMM", &opts.vmms, VMMS)?;
    check_names("test", &opts.tests, XFERS)?;
    check_ours_args(&opts.ours_args)?;
    let vmm = crate::build_vmm(layout)?;
    let images = crate::build_bench_images(layout, &vmm, opts.profile)?;
    // Per VMM: a boot, the pings at 0.2 s, the iperf3 runs with their set-up, a power-off.
    let per_vmm = 15
        + u64::from(opts.pings) / 5
        + opts.tests.len() as u64 * (u64::from(opts.seconds) + 4)
        + 5;
    progress(format!(
        "bench: one emulated host, then {} VMMs in turn, {} round(s) (about {} s per VMM \
         under emulation; the console follows, the table comes at the end)",
        opts.vmms.len(),
        opts.rounds,
        per_vmm
    ));
    let run_opts = RunOptions {
        timeout: opts.timeout,
        append: host_append(opts),
        echo: true,
    };
    let before = cpu_snapshot();
    let outcome = crate::run_host(layout, &images.host, &run_opts)?;
    let after = cpu_snapshot();
    let mut report = Report::parse(&outcome);
    report.other_load = other_load(before, after, outcome.elapsed);
    let date = utc_date(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let markdown = report.markdown(&date, opts);
    println!("\n{markdown}");
    let stamp = outcome
        .log
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("host-"))
        .unwrap_or("latest");
    let saved = layout.log_dir().join(format!("bench-{stamp}.md"));
    for profile in parse_profiles(&outcome.console) {
        let path = layout.log_dir().join(profile.file_name(stamp));
        let xfer = report
            .runs
            .get(&(profile.vmm.clone(), profile.round))
            .and_then(|v| v.xfers.get(&profile.test));
        std::fs::write(&path, profile.text(xfer))
            .with_context(|| format!("cannot write {}", path.display()))?;
        progress(format!("bench: profile saved in {}", path.display()));
    }
    std::fs::write(&saved, &markdown)
        .with_context(|| format!("cannot write {}", saved.display()))?;
    progress(format!(
        "bench: table saved in {} (console log {})",
        saved.display(),
        outcome.log.display()
    ));
    if let Some(path) = &opts.results {
        std::fs::write(path, &markdown)
            .with_context(|| format!("cannot write {}", path.display()))?;
        progress(format!("bench: table written to {}", path.display()));
    }
    if outcome.timed_out {
        progress("bench: the emulated host timed out; the table is partial");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
BENCH-CONFIG vmms=ours,qemu-vhost-off,qemu-vhost-on seconds=10 pings=50\r
BENCH-VMM vmm=ours pid=321 vhost_pids=none\r
BENCH-PING vmm=ours sent=50 received=50 rtt_min=1.5 rtt_avg=2.5 rtt_max=9.0\r
BENCH-XFER vmm=ours test=tcp_g2p rc=0 seconds=10 kbps=80000 sent= lost= total= vmm_ticks=150 vhost_ticks=0 hz=100\r
BENCH-XFER vmm=ours test=udp_p2g rc=0 seconds=10 kbps=512 sent=20000 lost=2000 total=12000 vmm_ticks=100 vhost_ticks=50 tap_to_guest=15000 tap_from_guest=40 hz=100\r
BENCH-EXIT vmm=ours code=0\r
BENCH-DONE\r
";

    #[test]
    fn xfer_lines_give_rate_and_cpu_per_gigabyte() {
        let r = Report::parse_console(CONSOLE);
        let x = &r.runs[&("ours".into(), 1)].xfers["tcp_g2p"];
        // 80 Mbit/s for 10 s = 100 MB; 1.5 CPU s per 0.1 GB.
        assert_eq!(x.bytes(), Some(100e6));
        assert!((x.cpu_per_gb().unwrap() - 15.0).abs() < 1e-9);
    }

    #[test]
    fn udp_rate_counts_delivered_datagrams_and_vhost_time() {
        let r = Report::parse_console(CONSOLE);
        let x = &r.runs[&("ours".into(), 1)].xfers["udp_p2g"];
        assert_eq!(x.delivered(), Some(10_000));
        assert_eq!(x.pps(), Some(1000.0));
        assert_eq!(x.cpu_seconds(), Some(1.5));
        assert!((x.cpu_us_per_packet().unwrap() - 150.0).abs() < 1e-9);
        // The VMM moved 15,000 frames to the guest (some of which the guest dropped).
        assert_eq!(x.tap_to_guest, Some(15_000));
        assert!((x.cpu_us_per_frame(x.tap_to_guest).unwrap() - 100.0).abs() < 1e-9);
        let t = r.table();
        assert!(
            t.contains("| UDP 64 B peer→guest (kpps the VMM took from the tap) | 1.50 |"),
            "{t}"
        );
        assert!(
            t.contains("| CPU µs/frame the VMM moved, UDP 64 B peer→guest | 100.0 |"),
            "{t}"
        );
        // No counts (a run through passt): no figure.
        assert!(
            t.contains("| CPU µs/frame the VMM moved, UDP 64 B guest→peer | - |"),
            "{t}"
        );
    }

    #[test]
    fn ping_exit_and_done_are_read() {
        let r = Report::parse_console(CONSOLE);
        let v = &r.runs[&("ours".into(), 1)];
        assert_eq!(v.rtt_ms, Some((1.5, 2.5, 9.0)));
        assert_eq!((v.ping_sent, v.ping_received), (Some(50), Some(50)));
        assert_eq!(v.exit_code, Some(0));
        assert!(r.done);
    }

    #[test]
    fn missing_vmms_and_rows_are_problems_and_dashes() {
        let r = Report::parse_console(CONSOLE);
        let problems = r.problems();
        assert!(problems.iter().any(|p| p == "qemu-vhost-on: no result"));
        assert!(problems.iter().any(|p| p == "ours: tcp_p2g missing"));
        let table = r.table();
        assert!(table.contains("| TCP guest→peer (Mbit/s) | 80.0 | - | - | - | - | higher |"));
    }

    #[test]
    fn rounds_are_kept_apart_and_the_table_shows_their_median() {
        let console = "\
BENCH-CONFIG vmms=ours rounds=3\n\
BENCH-XFER vmm=ours round=1 test=tcp_p2g rc=0 seconds=10 kbps=1000\n\
BENCH-XFER vmm=ours round=2 test=tcp_p2g rc=0 seconds=10 kbps=9000\n\
BENCH-XFER vmm=ours round=3 test=tcp_p2g rc=0 seconds=10 kbps=2000\n";
        let r = Report::parse_console(console);
        assert_eq!(r.rounds, 3);
        assert_eq!(r.runs.len(), 3);
        assert!(
            r.table()
                .contains("| TCP peer→guest (Mbit/s) | 2.0 | - | - |")
        );
        assert!(
            r.problems()
                .iter()
                .any(|p| p == "ours (round 2): tcp_g2p missing")
        );
    }

    #[test]
    fn each_echo_time_gives_the_first_echo_median_and_90th_percentile_rows() {
        let console = "\
BENCH-CONFIG vmms=ours rounds=1\n\
BENCH-PING vmm=ours round=1 sent=10 received=10 rtt_min=1 rtt_avg=4.6 rtt_max=30\n\
BENCH-PING-RTTS vmm=ours round=1 ms=30,2,3,1,4,2,2,1,6,5\n";
        let r = Report::parse_console(console);
        let t = r.table();
        assert!(
            t.contains("| Ping RTT median (ms) | 2.000 | - | - |"),
            "{t}"
        );
        assert!(
            t.contains("| Ping RTT 90th percentile (ms) | 6.000 | - | - |"),
            "{t}"
        );
        assert!(
            t.contains("| Ping RTT, first echo after boot (ms) | 30.000 | - | - |"),
            "{t}"
        );
        // A run whose pings all got lost lists none.
        let r = Report::parse_console("BENCH-PING-RTTS vmm=ours round=1 ms=none\n");
        assert!(r.runs.values().all(|v| v.rtts_ms.is_empty()));
    }

    #[test]
    fn a_run_limited_to_some_vmms_and_tests_is_complete_when_those_are_measured() {
        let console = "\
BENCH-CONFIG vmms=ours tests=udp_g2p rounds=1\n\
BENCH-PING vmm=ours round=1 sent=5 received=5 rtt_min=1 rtt_avg=2 rtt_max=3\n\
BENCH-XFER vmm=ours round=1 test=udp_g2p rc=0 seconds=10 kbps=600 sent=12000 lost=0 total=12000\n\
BENCH-EXIT vmm=ours round=1 code=0\n\
BENCH-DONE\n";
        let r = Report::parse_console(console);
        assert_eq!(
            (r.vmms.as_slice(), r.tests.as_slice()),
            (&["ours".to_string()][..], &["udp_g2p".to_string()][..])
        );
        assert_eq!(r.problems(), Vec::<String>::new());
        assert!(
            r.table()
                .contains("| UDP 64 B guest→peer (kpps delivered) | 1.20 | - | - |")
        );
        // The same lines under a full run lack the other VMMs and transfers.
        let full = Report::parse_console(&console.replace(" vmms=ours tests=udp_g2p", ""));
        assert!(full.problems().iter().any(|p| p == "ours: tcp_g2p missing"));
        assert!(
            full.problems()
                .iter()
                .any(|p| p == "qemu-vhost-off: no result")
        );
    }

    #[test]
    fn unknown_or_repeated_names_are_refused_before_anything_is_built() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_names("VMM", &names(&["ours", "qemu-vhost-on"]), VMMS).is_ok());
        let e = check_names("VMM", &names(&["qemu"]), VMMS)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "unknown VMM \"qemu\": the VMMs are ours, qemu-vhost-off, qemu-vhost-on, ours-passt, \
             qemu-passt"
        );
        let e = check_names("test", &names(&["udp_g2p", "udp_g2p"]), XFERS)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "test \"udp_g2p\" is named twice");
        assert!(check_names("test", &[], XFERS).is_err());
    }

    #[test]
    fn extra_options_for_our_vmm_must_fit_in_one_kernel_parameter() {
        let words = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_ours_args(&words(&["--tx-hold-us", "0"])).is_ok());
        assert!(check_ours_args(&words(&["--cmdline", "a,b"])).is_err());
        assert!(check_ours_args(&words(&["\"x\""])).is_err());
    }

    #[test]
    fn passt_rows_count_passt_cpu_need_no_ping_and_get_their_own_table() {
        let console = "\
BENCH-CONFIG vmms=ours-passt,qemu-passt tests=tcp_p2g rounds=1\n\
BENCH-VMM vmm=ours-passt round=1 pid=200 vhost_pids=none passt_pid=190\n\
BENCH-PING vmm=ours-passt round=1 skipped=passt\n\
BENCH-XFER vmm=ours-passt round=1 test=tcp_p2g rc=0 seconds=10 kbps=80000 vmm_ticks=100 vhost_ticks=0 passt_ticks=50 hz=100\n\
BENCH-EXIT vmm=ours-passt round=1 code=0\n\
BENCH-PING vmm=qemu-passt round=1 skipped=passt\n\
BENCH-XFER vmm=qemu-passt round=1 test=tcp_p2g rc=0 seconds=10 kbps=40000 vmm_ticks=100 vhost_ticks=0 passt_ticks=50 hz=100\n\
BENCH-EXIT vmm=qemu-passt round=1 code=0\n\
BENCH-DONE\n";
        let r = Report::parse_console(console);
        // 1.5 CPU s (VMM 1.0 + passt 0.5) per 0.1 GB.
        let x = &r.runs[&("ours-passt".into(), 1)].xfers["tcp_p2g"];
        assert_eq!(x.cpu_seconds(), Some(1.5));
        assert_eq!(r.problems(), Vec::<String>::new());
        let table = r.passt_table();
        assert!(table.contains("| ours, stream: | QEMU, -netdev stream | ours/QEMU | better |"));
        assert!(table.contains("| TCP peer→guest (Mbit/s) | 80.0 | 40.0 | 2.00 | higher |"));
        assert!(table.contains("| CPU s/GB, TCP peer→guest | 15.00 | 30.00 | 0.50 | lower |"));
        assert!(table.contains("| Ping RTT avg (ms) | - | - | - | lower |"));
        // Only the tables of the VMMs that ran.
        let md = r.markdown("today", &BenchOptions::default());
        assert!(md.starts_with("# Benchmark: ours vs QEMU, each through passt under the same KVM"));
        assert!(md.contains("## Through passt"));
        assert!(!md.contains("QEMU vhost=off |"));
        // A tap VMM still needs its ping.
        let tap = Report::parse_console(&console.replace("ours-passt", "ours"));
        assert!(tap.problems().iter().any(|p| p.starts_with("ours: ping")));
    }

    #[test]
    fn only_a_profiled_run_asks_the_host_for_a_profile() {
        let plain = BenchOptions::default();
        assert!(!host_append(&plain).contains("profile"));
        assert!(host_append(&plain).starts_with("host.run=bench host.bench.vmms=ours,"));
        let profiled = BenchOptions {
            profile: true,
            ..BenchOptions::default()
        };
        assert!(host_append(&profiled).ends_with(" host.bench.profile=1"));
    }

    #[test]
    fn profile_blocks_of_one_run_are_gathered_and_other_lines_left_out() {
        let console = "\
BENCH-XFER vmm=ours round=1 test=udp_g2p rc=0\r
BENCH-THREADS-BEGIN vmm=ours round=1 test=udp_g2p\r
412 vcpu0 utime=500 stime=300 guest=450\r
BENCH-THREADS-END\r
[ perf record: Captured and wrote 1.2 MB /tmp/perf.data ]\r
BENCH-PROFILE-BEGIN vmm=ours round=1 test=udp_g2p sort=pid\r
# Samples: 10K of event 'cpu-clock'\r
    60.00%    412:vcpu0\r
BENCH-PROFILE-END\r
BENCH-PROFILE-BEGIN vmm=ours round=1 test=udp_g2p sort=dso,sym\r
    30.00%  [kernel.kallsyms]  [k] tun_get_user\r
BENCH-PROFILE-END\r
BENCH-PROFILE-BEGIN vmm=qemu-vhost-off round=2 test=udp_p2g sort=pid\r
    70.00%    500:CPU 0/KVM\r
";
        let p = parse_profiles(console);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].vmm.as_str(), p[0].round, p[0].test.as_str()),
            ("ours", 1, "udp_g2p")
        );
        let titles: Vec<&str> = p[0].sections.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            titles,
            [
                "threads (ticks during the run; guest = running the guest)",
                "perf report --sort pid",
                "perf report --sort dso,sym"
            ]
        );
        assert_eq!(
            p[0].sections[0].1,
            ["412 vcpu0 utime=500 stime=300 guest=450"]
        );
        assert_eq!(
            p[0].sections[2].1,
            ["    30.00%  [kernel.kallsyms]  [k] tun_get_user"]
        );
        // perf's own messages between the blocks are not part of any.
        assert!(!p[0].text(None).contains("Captured"));
        // 800 ticks at 100 Hz over 2000 datagrams: 4000 µs each, 2250 of them in the guest.
        assert_eq!(
            p[0].per_packet(2000, 100.0),
            [
                "412 vcpu0 cpu_us_per_packet=4000.0 guest_us_per_packet=2250.0",
                "summary: vcpu_in_guest=2250 vcpu_outside_guest=1750 other_threads_user=0 \
                 other_threads_kernel=0 vhost=0 total=4000 (µs per packet)"
            ]
        );
        // The host stopped inside a block: what came is kept.
        assert_eq!(p[1].sections[0].1, ["    70.00%    500:CPU 0/KVM"]);
        assert_eq!(
            p[1].file_name("x"),
            "bench-x-profile-qemu-vhost-off-udp_p2g-r2.txt"
        );
        assert!(parse_profiles(CONSOLE).is_empty());
        // The table's raw lines leave the profile's blocks to the profile files.
        let raw = Report::parse_console(console).raw;
        assert_eq!(raw, ["BENCH-XFER vmm=ours round=1 test=udp_g2p rc=0"]);
    }

    #[test]
    fn percentiles_are_by_nearest_rank() {
        let ten: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        assert_eq!(percentile(&ten, 50), Some(5.0));
        assert_eq!(percentile(&ten, 90), Some(9.0));
        assert_eq!(percentile(&ten, 100), Some(10.0));
        assert_eq!(percentile(&[7.0], 90), Some(7.0));
        assert_eq!(percentile(&[], 50), None);
        // Where the rank is not a whole number it rounds up: 7 × 50% = 3.5, the 4th value;
        // 7 × 90% = 6.3, the 7th.
        let seven: Vec<f64> = (1..=7).map(f64::from).collect();
        assert_eq!(percentile(&seven, 50), Some(4.0));
        assert_eq!(percentile(&seven, 90), Some(7.0));
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn ratio_is_ours_over_baseline() {
        assert_eq!(fmt_ratio(Some(1.0), Some(4.0)), "0.25");
        assert_eq!(fmt_ratio(Some(1.0), None), "-");
        assert_eq!(fmt_ratio(Some(1.0), Some(0.0)), "-");
    }

    #[test]
    fn cpu_snapshot_reads_this_machine() {
        let (busy, children) = cpu_snapshot().expect("/proc/stat and /proc/self/stat");
        assert!(busy > 0);
        assert!(children <= busy);
    }

    #[test]
    fn other_load_subtracts_the_emulator() {
        let load = other_load(Some((1000, 50)), Some((1500, 350)), Duration::from_secs(10));
        assert_eq!(load.map(|l| l.other_cpu), Some(2.0));
    }

    #[test]
    fn utc_date_is_civil() {
        assert_eq!(utc_date(Duration::ZERO), "1970-01-01 00:00 UTC");
        // 2024-02-29 12:34 UTC
        assert_eq!(
            utc_date(Duration::from_secs(1_709_210_040)),
            "2024-02-29 12:34 UTC"
        );
    }
}
