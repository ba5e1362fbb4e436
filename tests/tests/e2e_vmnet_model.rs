//! The vmm over vmnet-model, end to end: the vmm cross-built for arm64 Linux with the test-only
//! `vmnet-model` feature runs the guest in the emulated arm64 host (real KVM) with
//! `--net vmnet-shared`, the command line of a Mac, so the vmnet binding and the devices vmnet
//! backend carry the guest's traffic through vmnet-model, the model of vmnet.framework. The
//! model stands in for the framework: this is no substitute for a run on a Mac.
//!
//! One boot of the emulated host runs the guest twice (`host.run=vmnet-model`, see
//! firmware/host/init). tap0, on the host's bridge, is the host's side of the model's shared
//! network, and the peer namespace joins that network at [`PEER`].
//!
//! 1. `--vmnet-offloads off`: the guest takes its address by DHCP from the model, pings the
//!    gateway (the check `vmm/tests/macos_e2e.rs` makes on a Mac), then the peer.
//! 2. `--vmnet-offloads on` (the virtio-net header and TSO): the same, then an iperf3 TCP
//!    transfer of [`SECONDS`] s from the guest to the peer, which must complete and move at
//!    least [`MIN_BYTES`] (a size check that drops the guest's TSO frames stalls it).
//!
//! Needs what `e2e_guest_pings_lan` needs (qemu-system-aarch64, the arm64 cross toolchain,
//! apt with the arm64 architecture); without it the test prints `SKIPPED: ...` and returns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use firmware::{GUEST_MAC, Layout, RunOptions, console};

/// The whole test, builds included; a hang fails instead of blocking CI.
const OVERALL: Duration = Duration::from_secs(900);
/// The boot with both runs.
const RUN: Duration = Duration::from_secs(600);
/// The model's shared network (its default: `vmnet-model/src/vmnet.rs`) and its gateway.
const SUBNET: &str = "192.168.64.";
const GATEWAY: &str = "192.168.64.1";
/// The peer namespace's address on the model's network (firmware/host/init).
const PEER: &str = "192.168.64.254";
/// The length of the iperf3 transfer.
const SECONDS: u64 = 6;
/// What the transfer must move at least: far more than a stalled connection gets through
/// before its first TSO frame, far less than the slowest run measured.
const MIN_BYTES: u64 = 1 << 20;
/// Echo requests per ping (the host init's default `vmnet.count`).
const PINGS: u32 = 5;

/// The fields of the last line holding `tag` in `text`, or a panic naming the log.
fn fields<'a>(text: &'a str, tag: &str, log: &str) -> BTreeMap<&'a str, &'a str> {
    console::fields(text, tag).unwrap_or_else(|| panic!("no {tag:?} line; console in {log}"))
}

/// Checks one run of the guest (`part`: the console from its start to its `VMM-EXIT`).
fn check_run(part: &str, offloads: &str, log: &str) {
    let what = format!("offloads={offloads}");
    assert!(
        part.contains("GUEST-MODEL model=vmnet-rs arm64 virt"),
        "{what}: the guest did not boot on our device tree; console in {log}"
    );
    assert!(
        part.contains(&format!("eth0 mac={GUEST_MAC}")),
        "{what}: the guest has no eth0 with MAC {GUEST_MAC}; console in {log}"
    );
    let started = if offloads == "on" {
        "vmnet interface started with the virtio-net header and TSO"
    } else {
        "vmnet interface started without offloads"
    };
    assert!(
        part.contains(started),
        "{what}: the vmm did not log {started:?}; console in {log}"
    );
    let dhcp = fields(part, "GUEST-DHCP ", log);
    assert!(
        dhcp.get("address")
            .is_some_and(|a| a.starts_with(SUBNET) && a.ends_with("/24")),
        "{what}: no DHCP lease from the model's network: {dhcp:?}; console in {log}"
    );
    assert_eq!(
        dhcp.get("router"),
        Some(&GATEWAY),
        "{what}: {dhcp:?}; console in {log}"
    );
    // The gateway (the DHCP router; busybox ping's first line names it).
    assert!(
        part.contains(&format!("PING {GATEWAY} ")),
        "{what}: the guest did not ping the gateway; console in {log}"
    );
    let lan = fields(part, "GUEST-LAN-PING ", log);
    assert_eq!(lan.get("peer"), Some(&PEER), "{what}: {lan:?}");
    let sent: u32 = lan["sent"].parse().unwrap_or(0);
    assert!(
        sent >= PINGS,
        "{what}: only {sent} echo requests to the peer"
    );
    assert_eq!(
        lan.get("received").and_then(|r| r.parse::<u32>().ok()),
        Some(sent),
        "{what}: lost replies from the peer: {lan:?}; console in {log}"
    );
    // The backend warns when it drops or vmnet refuses a frame (e.g. a TSO frame above its
    // size limit): none may in a run of this guest.
    let warned: Vec<&str> = part
        .lines()
        .filter(|l| l.contains(" WARN devices::net::vmnet"))
        .collect();
    assert!(
        warned.is_empty(),
        "{what}: the vmnet backend warned: {warned:#?}; console in {log}"
    );
    if offloads == "on" {
        let x = fields(part, "VMNET-IPERF3 ", log);
        println!("iperf3 from the guest to the peer, header and TSO on: {x:?}");
        assert_eq!(
            x.get("rc"),
            Some(&"0"),
            "{what}: iperf3 failed: {x:?}; console in {log}"
        );
        let seconds: f64 = x.get("seconds").and_then(|s| s.parse().ok()).unwrap_or(0.0);
        assert!(
            seconds >= 5.0,
            "{what}: the transfer lasted {seconds} s: {x:?}; console in {log}"
        );
        let bytes: u64 = x.get("bytes").and_then(|b| b.parse().ok()).unwrap_or(0);
        assert!(
            bytes >= MIN_BYTES,
            "{what}: the transfer stalled ({bytes} bytes received in {seconds} s): {x:?}; \
             console in {log}"
        );
    }
    // Only after the transfer: a failed one also fails the guest's result line.
    let result = console::vmnet_result(part)
        .unwrap_or_else(|| panic!("{what}: no VMNET-RESULT line; console in {log}"));
    assert_eq!(result.status, "ok", "{what}: {result:?}; console in {log}");
    let sent = result.sent.unwrap_or(0);
    assert!(
        sent >= PINGS,
        "{what}: only {sent} echo requests to the gateway"
    );
    assert_eq!(
        result.received,
        Some(sent),
        "{what}: lost replies from the gateway: {result:?}; console in {log}"
    );
    let exit = fields(part, "VMM-EXIT ", log);
    assert_eq!(
        (exit.get("code"), exit.get("offloads")),
        (Some(&"0"), Some(&offloads)),
        "{what}: the vmm did not exit 0; console in {log}"
    );
}

#[test]
fn e2e_vmnet_model_dhcp_ping_and_tso_transfer() {
    if let Some(reason) = e2e::skip_reason() {
        println!("SKIPPED: e2e_vmnet_model_dhcp_ping_and_tso_transfer: {reason}");
        return;
    }
    let outcome = e2e::within("e2e_vmnet_model", OVERALL, || {
        let start = Instant::now();
        let layout = Layout::default_for_workspace();
        let t = Instant::now();
        let vmm = firmware::build_vmm_model(&layout).expect("cross-build the vmm with the model");
        println!(
            "build vmm (vmnet-model): {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let (_, host) = firmware::build_model_images(&layout, &vmm).expect("build the images");
        println!("build images: {:.1} s", t.elapsed().as_secs_f64());
        let opts = RunOptions {
            timeout: RUN.min(OVERALL.saturating_sub(start.elapsed() + Duration::from_secs(10))),
            // nowatchdog: on a loaded machine a TCG vCPU of the emulated host can stall for
            // seconds; the hard-lockup detector then took it for a lockup and its NMI backtrace
            // hung the host once here.
            append: format!(
                "host.run=vmnet-model host.log=info host.model.seconds={SECONDS} nowatchdog"
            ),
            ..RunOptions::default()
        };
        firmware::run_host(&layout, &host, &opts).expect("run qemu")
    });
    e2e::assert_host_came_up("e2e_vmnet_model", &outcome, true);
    let c = &outcome.console;
    let log = outcome.log.display().to_string();
    // The two runs, each up to and including its VMM-EXIT line.
    let end_off = c
        .match_indices("VMM-EXIT ")
        .map(|(i, _)| i + c[i..].find('\n').unwrap_or(c.len() - i))
        .find(|&end| c[..end].trim_end().ends_with("offloads=off"))
        .unwrap_or_else(|| panic!("the first run (offloads off) did not end; console in {log}"));
    let (plain, tso) = c.split_at(end_off);
    check_run(plain, "off", &log);
    check_run(tso, "on", &log);
}
