//! `vmm check`: what this host offers the VMM, probed without booting a guest.
//!
//! Each probe adds one [`Fact`] (a line `ok`, `FAIL`, `warn` or `info`, a name, what was found,
//! and for a failure what to do). A fact the VMM needs to boot a guest with networking is
//! marked [`Fact::needed`]; the report ends with one `RESULT` line and the process exits
//! non-zero exactly when a needed fact failed ([`Report::exit_code`]).
//!
//! The probes themselves are per host: `linux` (KVM, arm64, vGICv3, irqfd/ioeventfd, TAP) and
//! `macos` (Hypervisor.framework, the in-kernel GIC, vmnet). This file holds what is the same
//! everywhere and is unit-tested on every host: the report, its formatting and verdict, and the
//! frames the network probes exchange.

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "macos")]
pub mod macos;

/// How a fact turned out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// As the VMM needs it.
    Ok,
    /// Not as the VMM needs it.
    Fail,
    /// Works, but not as well as it could, or could not be decided.
    Warn,
    /// A value worth reporting, neither good nor bad.
    Info,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::Warn => "warn",
            Status::Info => "info",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    /// How it turned out.
    pub status: Status,
    /// What was probed, e.g. `/dev/kvm`.
    pub name: String,
    /// What was found.
    pub value: String,
    /// What to do about a failure or warning.
    pub advice: Option<String>,
    /// Whether booting a guest with networking depends on it.
    pub needed: bool,
}

impl Fact {
    fn new(status: Status, name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            status,
            name: name.into(),
            value: value.into(),
            advice: None,
            needed: false,
        }
    }

    /// A fact as the VMM needs it.
    pub fn ok(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(Status::Ok, name, value)
    }

    /// A failed fact, with what to do about it.
    pub fn fail(
        name: impl Into<String>,
        value: impl Into<String>,
        advice: impl Into<String>,
    ) -> Self {
        Self::new(Status::Fail, name, value).advice(advice)
    }

    /// A warning, with what to do about it.
    pub fn warn(
        name: impl Into<String>,
        value: impl Into<String>,
        advice: impl Into<String>,
    ) -> Self {
        Self::new(Status::Warn, name, value).advice(advice)
    }

    /// A value for the record.
    pub fn info(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(Status::Info, name, value)
    }

    /// `ok` when `good`, else a failure with `advice`.
    pub fn check(
        good: bool,
        name: impl Into<String>,
        value: impl Into<String>,
        advice: impl Into<String>,
    ) -> Self {
        if good {
            Self::ok(name, value)
        } else {
            Self::fail(name, value, advice)
        }
    }

    /// Sets the advice.
    pub fn advice(mut self, advice: impl Into<String>) -> Self {
        self.advice = Some(advice.into());
        self
    }

    /// Marks the fact as needed to boot with networking: its failure fails the check.
    pub fn needed(mut self) -> Self {
        self.needed = true;
        self
    }

    /// Whether this fact stops the VMM from booting a guest with networking.
    pub fn is_blocking(&self) -> bool {
        self.needed && self.status == Status::Fail
    }
}

/// The facts of one `vmm check`, in probe order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    facts: Vec<Fact>,
}

/// Width of the name column.
const NAME_WIDTH: usize = 30;

impl Report {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fact.
    pub fn push(&mut self, fact: Fact) {
        self.facts.push(fact);
    }

    /// The facts so far.
    pub fn facts(&self) -> &[Fact] {
        &self.facts
    }

    /// The needed facts that failed.
    pub fn blocking(&self) -> impl Iterator<Item = &Fact> {
        self.facts.iter().filter(|f| f.is_blocking())
    }

    /// 0 when every needed fact holds, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.blocking().next().is_some())
    }

    /// The report as printed: one line per fact (`status name value`), its advice indented on
    /// the next line, and a last `RESULT` line that names what stops a boot, if anything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.facts {
            let mark = if f.needed { "*" } else { " " };
            let _ = writeln!(
                out,
                "{:<4}{mark} {:<NAME_WIDTH$} {}",
                f.status.to_string(),
                f.name,
                f.value
            );
            if let Some(advice) = &f.advice
                && f.status != Status::Ok
            {
                let _ = writeln!(out, "{:<6}{:<NAME_WIDTH$} -> {advice}", "", "");
            }
        }
        let blocking: Vec<&str> = self.blocking().map(|f| f.name.as_str()).collect();
        if blocking.is_empty() {
            out.push_str(
                "RESULT ok: everything this host needs to boot a guest with networking works\n",
            );
        } else {
            let _ = writeln!(
                out,
                "RESULT FAIL: cannot boot a guest with networking: {} (see the advice above)",
                blocking.join(", ")
            );
        }
        out.push_str("(* = needed to boot a guest with networking)\n");
        out
    }
}

/// One error and its causes on one line: "a: b: c".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

// ---------------------------------------------------------------------------------------------
// The frame a network probe sends and the answer it looks for
// ---------------------------------------------------------------------------------------------

/// Length of an Ethernet ARP request for IPv4 (RFC 826), without padding.
pub const ARP_FRAME_LEN: usize = 42;

const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ARP_HTYPE_ETHERNET: [u8; 2] = [0, 1];
const ARP_PTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ARP_OP_REQUEST: [u8; 2] = [0, 1];
const ARP_OP_REPLY: [u8; 2] = [0, 2];

/// A broadcast ARP request from `mac`/`ip` asking who has `target`: the frame a network probe
/// writes; the host side of the network (vmnet's gateway) answers it.
pub fn arp_request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP);
    f[14..16].copy_from_slice(&ARP_HTYPE_ETHERNET);
    f[16..18].copy_from_slice(&ARP_PTYPE_IPV4);
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&ARP_OP_REQUEST);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address unknown: zero.
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// If `frame` is an ARP reply from `from` to `mac`, the MAC `from` answered with.
pub fn arp_reply_from(frame: &[u8], from: Ipv4Addr, mac: [u8; 6]) -> Option<[u8; 6]> {
    if frame.len() < ARP_FRAME_LEN
        || frame[12..14] != ETHERTYPE_ARP
        || frame[14..16] != ARP_HTYPE_ETHERNET
        || frame[16..18] != ARP_PTYPE_IPV4
        || frame[20..22] != ARP_OP_REPLY
        || frame[28..32] != from.octets()
        || frame[32..38] != mac
    {
        return None;
    }
    let mut sender = [0u8; 6];
    sender.copy_from_slice(&frame[22..28]);
    Some(sender)
}

/// A macOS version `major.minor[.patch]` as `(major, minor)`.
pub fn parse_os_version(s: &str) -> Option<(u32, u32)> {
    let mut parts = s.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// The macOS version fact: the VMM needs macOS 15 (Hypervisor.framework's in-kernel GIC,
/// `hv_gic_create`); vmnet's virtio-net header (offloads) needs 15.4.
pub fn macos_version_fact(version: &str) -> Fact {
    match parse_os_version(version) {
        Some(v) if v >= (15, 4) => Fact::ok("macOS version", version),
        Some(v) if v >= (15, 0) => Fact::warn(
            "macOS version",
            version,
            "boots, but vmnet has no virtio-net header before macOS 15.4: no checksum or \
             segmentation offload, slower bulk TCP; update macOS",
        ),
        Some(_) => Fact::fail(
            "macOS version",
            version,
            "the VMM needs macOS 15 or later (Hypervisor.framework's in-kernel GIC, \
             hv_gic_create): update macOS",
        ),
        None => Fact::warn(
            "macOS version",
            format!("unreadable ({version:?})"),
            "could not tell the version; the VMM needs macOS 15 or later",
        ),
    }
    .needed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(facts: Vec<Fact>) -> Report {
        let mut r = Report::new();
        for f in facts {
            r.push(f);
        }
        r
    }

    #[test]
    fn a_report_without_failures_exits_0_and_says_so() {
        let r = report(vec![
            Fact::ok("/dev/kvm", "opened").needed(),
            Fact::info("KVM_CAP_MAX_VCPUS", "512"),
        ]);
        assert_eq!(r.exit_code(), 0);
        let text = r.render();
        assert!(text.lines().any(|l| l.starts_with("RESULT ok")), "{text}");
    }

    #[test]
    fn a_failed_needed_fact_fails_the_check_and_is_named_in_the_result() {
        let r = report(vec![
            Fact::ok("arm64", "aarch64").needed(),
            Fact::fail("/dev/kvm", "missing", "load the kvm module").needed(),
            Fact::fail("TAP creation", "EPERM", "run as root").needed(),
        ]);
        assert_eq!(r.exit_code(), 1);
        let text = r.render();
        let last = text
            .lines()
            .find(|l| l.starts_with("RESULT"))
            .unwrap()
            .to_owned();
        assert!(last.starts_with("RESULT FAIL"), "{last}");
        assert!(
            last.contains("/dev/kvm, TAP creation") && !last.contains("arm64"),
            "{last}"
        );
    }

    #[test]
    fn failures_and_warnings_of_facts_not_needed_do_not_fail_the_check() {
        let r = report(vec![
            Fact::fail("vmnet host mode", "refused", "not needed for shared"),
            Fact::warn("virtio header", "not accepted", "update macOS").needed(),
        ]);
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn each_fact_is_one_line_with_its_advice_under_it() {
        let r = report(vec![
            Fact::fail("/dev/kvm", "No such file", "modprobe kvm").needed(),
            Fact::ok("irqfd", "yes").advice("never shown for ok"),
        ]);
        let text = r.render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("FAIL* /dev/kvm"), "{text}");
        assert!(lines[0].ends_with("No such file"), "{text}");
        assert!(
            lines[1].trim_start().starts_with("-> modprobe kvm"),
            "{text}"
        );
        assert!(lines[2].starts_with("ok    irqfd"), "{text}");
        assert!(!text.contains("never shown"), "{text}");
    }

    #[test]
    fn an_error_chain_is_one_line() {
        let e = std::io::Error::other(crate::hv::HvError::NoKvm);
        let s = error_chain(&e);
        assert!(
            s.contains("/dev/kvm does not exist") && !s.contains('\n'),
            "{s}"
        );
    }

    #[test]
    fn the_arp_request_asks_for_the_target_from_our_addresses() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let f = arp_request(
            mac,
            Ipv4Addr::new(192, 168, 64, 254),
            Ipv4Addr::new(192, 168, 64, 1),
        );
        assert_eq!(f[0..6], [0xff; 6]);
        assert_eq!(f[6..12], mac);
        assert_eq!(f[12..14], [0x08, 0x06]);
        assert_eq!(f[20..22], [0, 1]);
        assert_eq!(f[28..32], [192, 168, 64, 254]);
        assert_eq!(f[32..38], [0; 6]);
        assert_eq!(f[38..42], [192, 168, 64, 1]);
    }

    /// The reply a responder builds from a request: swap the sides, answer with `theirs`.
    fn reply_to(req: &[u8; ARP_FRAME_LEN], theirs: [u8; 6]) -> Vec<u8> {
        let mut r = req.to_vec();
        r[0..6].copy_from_slice(&req[6..12]);
        r[6..12].copy_from_slice(&theirs);
        r[20..22].copy_from_slice(&ARP_OP_REPLY);
        r[22..28].copy_from_slice(&theirs);
        r[28..32].copy_from_slice(&req[38..42]);
        r[32..38].copy_from_slice(&req[22..28]);
        r[38..42].copy_from_slice(&req[28..32]);
        r.resize(60, 0);
        r
    }

    #[test]
    fn the_reply_of_the_asked_host_is_recognised() {
        let mac = [2, 0, 0, 0, 0, 1];
        let gw = Ipv4Addr::new(192, 168, 64, 1);
        let req = arp_request(mac, Ipv4Addr::new(192, 168, 64, 254), gw);
        let theirs = [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
        assert_eq!(
            arp_reply_from(&reply_to(&req, theirs), gw, mac),
            Some(theirs)
        );
    }

    #[test]
    fn other_frames_are_not_taken_for_the_reply() {
        let mac = [2, 0, 0, 0, 0, 1];
        let gw = Ipv4Addr::new(192, 168, 64, 1);
        let req = arp_request(mac, Ipv4Addr::new(192, 168, 64, 254), gw);
        // Our own request looped back, a reply from someone else, one to another MAC, a runt.
        assert_eq!(arp_reply_from(&req, gw, mac), None);
        let theirs = [0xaa; 6];
        let other = arp_request(
            mac,
            Ipv4Addr::new(192, 168, 64, 254),
            Ipv4Addr::new(10, 0, 0, 1),
        );
        assert_eq!(arp_reply_from(&reply_to(&other, theirs), gw, mac), None);
        assert_eq!(
            arp_reply_from(&reply_to(&req, theirs), gw, [2, 0, 0, 0, 0, 2]),
            None
        );
        assert_eq!(arp_reply_from(&reply_to(&req, theirs)[..41], gw, mac), None);
    }

    #[test]
    fn os_versions_parse_with_or_without_minor_and_patch() {
        assert_eq!(parse_os_version("15.4.1"), Some((15, 4)));
        assert_eq!(parse_os_version("26.0"), Some((26, 0)));
        assert_eq!(parse_os_version("15\n"), Some((15, 0)));
        assert_eq!(parse_os_version("x.1"), None);
    }

    #[test]
    fn macos_before_15_fails_15_0_to_15_3_warns_15_4_passes() {
        assert_eq!(macos_version_fact("14.6.1").status, Status::Fail);
        assert!(macos_version_fact("14.6.1").is_blocking());
        assert_eq!(macos_version_fact("15.1").status, Status::Warn);
        assert!(!macos_version_fact("15.1").is_blocking());
        assert_eq!(macos_version_fact("15.4").status, Status::Ok);
        assert_eq!(macos_version_fact("26.1").status, Status::Ok);
    }
}
