//! Reading the machine-readable lines the init scripts print on the console.
//!
//! | line | printed by |
//! |---|---|
//! | `HOST-INIT uptime=S` | host init, first thing (seconds since the host kernel started) |
//! | `HOST-TIME <event> uptime=S` | host init, at each step |
//! | `HOST-KVM ok` / `HOST-KVM missing` | host init |
//! | `HOST-LAN ok` / `HOST-LAN fail reason=...` | host init |
//! | `GUEST-INIT uptime=S` | guest init, first thing |
//! | `eth0 mac=52:54:00:12:34:56` | guest init |
//! | `VMNET-RESULT status=ok|fail [reason=R] mac=M sent=N received=N rtt_min=.. rtt_avg=.. rtt_max=..` | guest init |
//! | `VMM-EXIT code=N` | host init, after the vmm (or qemu) exits |

use std::collections::BTreeMap;
use std::time::Duration;

/// A console line the runner noticed, with when it arrived (since qemu started).
#[derive(Debug, Clone)]
pub struct Marker {
    /// Time since the emulator was started.
    pub at: Duration,
    /// The line, without the line ending.
    pub line: String,
}

/// Console lines worth a timestamp.
pub const MARKER_PATTERNS: &[&str] = &[
    "Booting Linux on physical CPU",
    "Machine model:",
    "Run /init as init process",
    "HOST-INIT",
    "HOST-TIME",
    "HOST-KVM",
    "HOST-LAN",
    "GUEST-INIT",
    "GUEST-MODEL",
    " mac=",
    "VMNET-RESULT",
    "VMM-EXIT",
    "Kernel panic",
];

/// The guest's `VMNET-RESULT` line, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct PingResult {
    /// `ok` or `fail`.
    pub status: String,
    /// Why it failed (`reason=`), if it did.
    pub reason: Option<String>,
    /// The guest NIC's MAC address.
    pub mac: Option<String>,
    /// Echo requests sent.
    pub sent: Option<u32>,
    /// Echo replies received.
    pub received: Option<u32>,
    /// Round-trip times in milliseconds: min, avg, max.
    pub rtt_ms: Option<(f64, f64, f64)>,
}

impl PingResult {
    /// `status=ok` and every request answered.
    pub fn is_ok(&self) -> bool {
        self.status == "ok" && self.sent.is_some() && self.sent == self.received
    }
}

/// The `key=value` fields after `tag` on the last line that carries `tag`.
pub fn fields<'a>(console: &'a str, tag: &str) -> Option<BTreeMap<&'a str, &'a str>> {
    let line = console.lines().rev().find(|l| l.contains(tag))?;
    let rest = &line[line.find(tag)? + tag.len()..];
    Some(
        rest.split_whitespace()
            .filter_map(|field| field.split_once('='))
            .collect(),
    )
}

/// The last `VMNET-RESULT` line.
pub fn vmnet_result(console: &str) -> Option<PingResult> {
    let f = fields(console, "VMNET-RESULT ")?;
    let num = |k: &str| f.get(k).and_then(|v| v.parse::<u32>().ok());
    let ms = |k: &str| f.get(k).and_then(|v| v.parse::<f64>().ok());
    let rtt_ms = match (ms("rtt_min"), ms("rtt_avg"), ms("rtt_max")) {
        (Some(a), Some(b), Some(c)) => Some((a, b, c)),
        _ => None,
    };
    Some(PingResult {
        status: f.get("status")?.to_string(),
        reason: f.get("reason").map(|s| s.to_string()),
        mac: f.get("mac").map(|s| s.to_string()),
        sent: num("sent"),
        received: num("received"),
        rtt_ms,
    })
}

/// `N` from the last `VMM-EXIT code=N` line.
pub fn vmm_exit_code(console: &str) -> Option<i32> {
    fields(console, "VMM-EXIT ")?.get("code")?.parse().ok()
}

/// `S` from the last `<tag> uptime=S` line (seconds since that kernel started).
pub fn uptime(console: &str, tag: &str) -> Option<f64> {
    fields(console, tag)?.get("uptime")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
[    0.000000] Machine model: vmnet-rs arm64 virt\r
GUEST-INIT uptime=1.52\r
eth0 mac=52:54:00:12:34:56\r
VMNET-RESULT status=ok mac=52:54:00:12:34:56 sent=5 received=5 rtt_min=0.312 rtt_avg=0.5 rtt_max=1.1\r
VMM-EXIT code=0\r
";

    #[test]
    fn ok_result_line_is_parsed() {
        let r = vmnet_result(CONSOLE).unwrap();
        assert!(r.is_ok());
        assert_eq!(r.mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!((r.sent, r.received), (Some(5), Some(5)));
        assert_eq!(r.rtt_ms, Some((0.312, 0.5, 1.1)));
    }

    #[test]
    fn fail_result_carries_its_reason() {
        let r = vmnet_result("VMNET-RESULT status=fail reason=no_eth0\n").unwrap();
        assert!(!r.is_ok());
        assert_eq!(r.reason.as_deref(), Some("no_eth0"));
    }

    #[test]
    fn partial_loss_is_not_ok() {
        let r = vmnet_result("VMNET-RESULT status=ok sent=5 received=4\n").unwrap();
        assert!(!r.is_ok());
    }

    #[test]
    fn exit_code_and_uptime_are_read() {
        assert_eq!(vmm_exit_code(CONSOLE), Some(0));
        assert_eq!(uptime(CONSOLE, "GUEST-INIT "), Some(1.52));
        assert_eq!(vmm_exit_code("nothing"), None);
    }
}
