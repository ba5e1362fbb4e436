//! The soak run (`firmware soak`): our VMM under sustained bidirectional load in the emulated
//! arm64 host, judged on what must hold after a long run.
//!
//! The host (`host.run=soak`) boots the bench guest under our VMM, warms it up with one short
//! iperf3 transfer, then runs `iperf3 --bidir` and a ping from the peer namespace for the
//! requested time while sampling, every 30 s, the VMM process's resident memory and open
//! descriptors and the TAP device's packet counters. The run passes when no counter went
//! backwards, traffic flowed, every ping was answered, iperf3 succeeded, the VMM's memory and
//! descriptor count did not grow, and the guest powered off with the VMM exiting 0.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::{Layout, RunOptions, progress};

/// Resident memory growth tolerated over the run: allocator noise, not a leak (a leak of even
/// one small buffer per packet grows by hundreds of MiB over ten minutes).
pub const RSS_SLACK_KB: u64 = 1024;

/// How to run the soak.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Length of the loaded phase.
    pub seconds: u32,
    /// The command line, for the report.
    pub command: String,
    /// Extra options for our vmm (e.g. `--tx-hold-us 0`), one word each.
    pub ours_args: Vec<String>,
    /// Also write the report (Markdown) here.
    pub results: Option<PathBuf>,
}

/// One `SOAK-SAMPLE` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Seconds into the loaded phase, or `None` for the final sample.
    pub t: Option<u64>,
    /// The VMM's resident memory, guest RAM included.
    pub rss_kb: u64,
    /// The VMM's resident memory less the guest's RAM: what a leak would grow.
    pub own_rss_kb: u64,
    /// The VMM's open descriptors.
    pub fds: u64,
    /// The TAP device's counters: rx packets, tx packets, rx dropped, tx dropped.
    pub tap: [u64; 4],
}

/// What the soak run printed, and the verdict.
#[derive(Debug, Default)]
pub struct SoakReport {
    /// The samples in order.
    pub samples: Vec<Sample>,
    /// Echo requests sent and answered.
    pub ping: Option<(u64, u64)>,
    /// iperf3's exit code and the receivers' rates (Mbit/s).
    pub iperf: Option<(i64, String)>,
    /// The VMM's exit code.
    pub vmm_exit: Option<i64>,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn num(line: &str, key: &str) -> Option<u64> {
    field(line, key)?.parse().ok()
}

impl SoakReport {
    /// Reads the `SOAK-*` and `BENCH-EXIT` lines of a console.
    pub fn parse(console: &str) -> Self {
        let mut r = Self::default();
        for line in console.lines().map(|l| l.trim_end_matches('\r')) {
            if let Some(rest) = line.strip_prefix("SOAK-SAMPLE ") {
                let t = field(rest, "t").and_then(|t| t.parse().ok());
                let tap = [
                    "tap_rx_packets",
                    "tap_tx_packets",
                    "tap_rx_dropped",
                    "tap_tx_dropped",
                ]
                .map(|k| num(rest, k).unwrap_or(0));
                r.samples.push(Sample {
                    t,
                    rss_kb: num(rest, "rss_kb").unwrap_or(0),
                    own_rss_kb: num(rest, "own_rss_kb").unwrap_or(0),
                    fds: num(rest, "fds").unwrap_or(0),
                    tap,
                });
            } else if let Some(rest) = line.strip_prefix("SOAK-PING ") {
                r.ping = num(rest, "sent").zip(num(rest, "received"));
            } else if let Some(rest) = line.strip_prefix("SOAK-IPERF ") {
                let rc = field(rest, "rc").and_then(|v| v.parse().ok());
                let rates = field(rest, "receiver_mbits").unwrap_or("").to_string();
                r.iperf = rc.map(|rc| (rc, rates));
            } else if line.starts_with("BENCH-EXIT vmm=ours") {
                r.vmm_exit = field(line, "code").and_then(|v| v.parse().ok());
            }
        }
        r
    }

    /// What failed; empty when the run passed.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) else {
            return vec!["no samples: the soak did not run".into()];
        };
        if self.samples.len() < 3 {
            p.push(format!("only {} samples", self.samples.len()));
        }
        for w in self.samples.windows(2) {
            for (k, name) in [
                "tap rx packets",
                "tap tx packets",
                "tap rx dropped",
                "tap tx dropped",
            ]
            .iter()
            .enumerate()
            {
                if w[1].tap[k] < w[0].tap[k] {
                    p.push(format!(
                        "{name} went backwards: {} -> {}",
                        w[0].tap[k], w[1].tap[k]
                    ));
                }
            }
        }
        if last.tap[0] <= first.tap[0] || last.tap[1] <= first.tap[1] {
            p.push("no traffic through the TAP device".into());
        }
        // Memory is judged from the first sample under load (the first 30 s settle the
        // buffers the load needs), on the VMM's own memory: guest RAM grows with the guest.
        let settled = self.samples.get(1).unwrap_or(first);
        if last.own_rss_kb > settled.own_rss_kb + RSS_SLACK_KB {
            p.push(format!(
                "VMM memory (guest RAM excluded) grew from {} KiB to {} KiB",
                settled.own_rss_kb, last.own_rss_kb
            ));
        }
        if last.fds != first.fds {
            p.push(format!(
                "VMM descriptors went from {} to {}",
                first.fds, last.fds
            ));
        }
        match self.ping {
            Some((sent, received)) if sent > 0 && sent == received => {}
            Some((sent, received)) => p.push(format!("ping: {received} of {sent} answered")),
            None => p.push("no ping result".into()),
        }
        match &self.iperf {
            Some((0, _)) => {}
            Some((rc, _)) => p.push(format!("iperf3 failed (exit code {rc})")),
            None => p.push("no iperf3 result".into()),
        }
        if self.vmm_exit != Some(0) {
            p.push(format!("the VMM exited with {:?}", self.vmm_exit));
        }
        p
    }

    /// The report as Markdown.
    pub fn markdown(&self, date: &str, opts: &SoakOptions) -> String {
        let mut s = format!(
            "# Soak: {} s of bidirectional iperf3 and ping through our VMM\n\n- Date: {date}\n- Command: `{}`\n\n",
            opts.seconds, opts.command
        );
        s.push_str("| t (s) | VMM RSS (KiB) | VMM RSS without guest RAM (KiB) | VMM fds | tap rx packets | tap tx packets | tap rx dropped | tap tx dropped |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for x in &self.samples {
            let t = x.t.map_or("end".to_string(), |t| t.to_string());
            s.push_str(&format!(
                "| {t} | {} | {} | {} | {} | {} | {} | {} |\n",
                x.rss_kb, x.own_rss_kb, x.fds, x.tap[0], x.tap[1], x.tap[2], x.tap[3]
            ));
        }
        if let Some((sent, received)) = self.ping {
            s.push_str(&format!("\nPing: {received} of {sent} answered.\n"));
        }
        if let Some((rc, rates)) = &self.iperf {
            s.push_str(&format!(
                "iperf3 --bidir: exit code {rc}, receiver rates {rates} Mbit/s.\n"
            ));
        }
        let problems = self.problems();
        if problems.is_empty() {
            s.push_str("\nResult: **pass** (no counter went backwards, no ping lost, VMM memory and descriptors flat, clean exit).\n");
        } else {
            s.push_str(&format!("\nResult: **fail**: {}.\n", problems.join("; ")));
        }
        s
    }
}

/// Builds the bench images, runs the soak and reports.
pub fn run(layout: &Layout, opts: &SoakOptions) -> Result<SoakReport> {
    let missing = crate::missing_tools();
    if !missing.is_empty() {
        bail!("the soak needs:\n  {}", missing.join("\n  "));
    }
    crate::bench::check_ours_args(&opts.ours_args)?;
    let vmm = crate::build_vmm(layout)?;
    let images = crate::build_bench_images(layout, &vmm, false)?;
    progress(format!(
        "soak: {} s of load after the guest boots; a sample every 30 s",
        opts.seconds
    ));
    let run_opts = RunOptions {
        timeout: Duration::from_secs(u64::from(opts.seconds) + 600),
        append: format!(
            "host.run=soak host.soak.seconds={} host.bench.ours_args={}",
            opts.seconds,
            opts.ours_args.join(",")
        ),
        echo: true,
    };
    let outcome = crate::run_host(layout, &images.host, &run_opts)?;
    let report = SoakReport::parse(&outcome.console);
    let date = crate::bench::utc_date(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let md = report.markdown(&date, opts);
    println!("\n{md}");
    if let Some(path) = &opts.results {
        std::fs::write(path, &md).with_context(|| format!("cannot write {}", path.display()))?;
        progress(format!("soak: report written to {}", path.display()));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
SOAK-CONFIG seconds=60\r
SOAK-SAMPLE t=0 rss_kb=20000 own_rss_kb=3000 fds=12 tap_rx_packets=10 tap_tx_packets=20 tap_rx_dropped=0 tap_tx_dropped=0\r
SOAK-SAMPLE t=30 rss_kb=20100 own_rss_kb=5000 fds=12 tap_rx_packets=5000 tap_tx_packets=6000 tap_rx_dropped=0 tap_tx_dropped=3\r
SOAK-SAMPLE t=end rss_kb=20200 own_rss_kb=5100 fds=12 tap_rx_packets=9000 tap_tx_packets=9500 tap_rx_dropped=0 tap_tx_dropped=3\r
SOAK-PING sent=120 received=120\r
SOAK-IPERF rc=0 receiver_mbits=95.1,88.2\r
BENCH-EXIT vmm=ours round=1 code=0\r
";

    #[test]
    fn a_clean_run_passes() {
        let r = SoakReport::parse(GOOD);
        assert_eq!(r.samples.len(), 3);
        assert_eq!(r.samples[2].t, None);
        assert!(r.problems().is_empty(), "{:?}", r.problems());
    }

    #[test]
    fn a_counter_going_backwards_fails() {
        let r = SoakReport::parse(&GOOD.replace("tap_rx_packets=9000", "tap_rx_packets=4000"));
        assert!(r.problems().iter().any(|p| p.contains("went backwards")));
    }

    #[test]
    fn a_lost_ping_fails() {
        let r = SoakReport::parse(&GOOD.replace("received=120", "received=119"));
        assert!(r.problems().iter().any(|p| p.contains("119 of 120")));
    }

    #[test]
    fn memory_or_descriptor_growth_fails() {
        let r = SoakReport::parse(&GOOD.replace(
            "end rss_kb=20200 own_rss_kb=5100 fds=12",
            "end rss_kb=40000 own_rss_kb=9000 fds=13",
        ));
        let p = r.problems();
        assert!(
            p.iter()
                .any(|p| p.contains("memory (guest RAM excluded) grew")),
            "{p:?}"
        );
        assert!(p.iter().any(|p| p.contains("descriptors")), "{p:?}");
    }

    #[test]
    fn guest_ram_growth_alone_passes() {
        let r = SoakReport::parse(&GOOD.replace("t=end rss_kb=20200", "t=end rss_kb=90000"));
        assert!(r.problems().is_empty(), "{:?}", r.problems());
    }

    #[test]
    fn a_run_that_never_started_fails() {
        assert!(!SoakReport::parse("").problems().is_empty());
    }
}
