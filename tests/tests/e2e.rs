//! The vmm boots Debian's arm64 kernel inside an emulated arm64 host (qemu TCG with EL2, real
//! KVM inside) and the guest pings a LAN peer through our virtio-net device and the host's tap.
//!
//! Before the ping the guest takes CPU 1 offline and online again [`HOTPLUG_CYCLES`] times. The
//! host's kernel (6.12, from bookworm-backports) has KVM's SMCCC filter, so those PSCI CPU_OFF
//! and CPU_ON calls are served by the VMM's own PSCI module (the one Hypervisor.framework uses),
//! and every CPU_ON starts from a vCPU reset with `KVM_ARM_VCPU_INIT`: the test checks the
//! VMM's log for both.
//!
//! Needs qemu-system-aarch64, the arm64 cross toolchain and apt (arm64 architecture added);
//! without them the test prints `SKIPPED: ...` and returns. The guest's packages are fetched
//! without apt from the Debian mirror of the apt sources (`firmware guest --mirror`). Not root: the LAN lives inside the
//! emulated host.

use std::time::{Duration, Instant};

use firmware::{GUEST_MAC, Layout, RunOptions, RunOutcome, console};

/// The whole test, builds included; a hang fails instead of blocking CI.
const OVERALL: Duration = Duration::from_secs(600);
/// The boot itself (the run measured about 11 s; TCG on a loaded CI machine is slower).
const RUN: Duration = Duration::from_secs(300);

/// How many times the guest takes CPU 1 offline and online again (`vmnet.hotplug`).
const HOTPLUG_CYCLES: u64 = 5;

/// The console without ANSI escape sequences (`ESC [ ... letter`), should the vmm's log have
/// any.
fn plain(console: &str) -> String {
    let mut out = String::with_capacity(console.len());
    let mut chars = console.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `(major, minor)` of `kernel=6.12.95+deb12-arm64` on the `HOST-INIT` line.
fn host_kernel(console: &str) -> Option<(u32, u32)> {
    let release = console::fields(console, "HOST-INIT ")?
        .get("kernel")?
        .to_string();
    let mut parts = release.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `SCTLR_EL1.M`: the MMU is on.
const SCTLR_M: u64 = 1;

/// The vmm's "vCPU reset" log lines for vCPU 1: `(sctlr_before, sctlr_after)`.
fn vcpu1_resets(console: &str) -> Vec<(u64, u64)> {
    let hex = |f: &std::collections::BTreeMap<&str, &str>, k: &str| {
        f.get(k)
            .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
    };
    console
        .lines()
        .filter(|l| l.contains("vCPU reset to its cold state"))
        .filter_map(|l| {
            let f: std::collections::BTreeMap<&str, &str> = l
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .collect();
            (f.get("vcpu") == Some(&"1"))
                .then(|| Some((hex(&f, "sctlr_before")?, hex(&f, "sctlr_after")?)))?
        })
        .collect()
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn print_timings(builds: &[(&str, Duration)], outcome: &RunOutcome) {
    let c = &outcome.console;
    println!("e2e_guest_pings_lan timings:");
    for (what, took) in builds {
        println!("  build {what:<22} {:.1} s", took.as_secs_f64());
    }
    println!(
        "  host boot to init:         {:?} s host uptime (wall {} from qemu start)",
        console::uptime(c, "HOST-INIT "),
        secs(outcome.first("HOST-INIT"))
    );
    println!(
        "  guest boot to init:        {:?} s guest uptime (wall {} after vmm start)",
        console::uptime(c, "GUEST-INIT "),
        secs(
            outcome
                .first("GUEST-INIT")
                .zip(outcome.first("vmm-start"))
                .map(|(g, v)| g.saturating_sub(v))
        )
    );
    if let Some(r) = outcome.vmnet_result() {
        println!(
            "  ping:                      sent={:?} received={:?} rtt min/avg/max={:?} ms",
            r.sent, r.received, r.rtt_ms
        );
    }
    println!(
        "  VMM-EXIT:                  {} after qemu start; whole run {:.1} s",
        secs(outcome.first("VMM-EXIT")),
        outcome.elapsed.as_secs_f64()
    );
}

/// The lines the host's `vmm check` printed (between its markers), or "" without them.
fn vmm_check_report(console: &str) -> String {
    console
        .lines()
        .skip_while(|l| !l.contains("VMM-CHECK-BEGIN"))
        .skip(1)
        .take_while(|l| !l.contains("VMM-CHECK-END"))
        .map(|l| format!("{}\n", l.trim_end_matches('\r')))
        .collect()
}

#[test]
fn e2e_guest_pings_lan() {
    if let Some(reason) = e2e::skip_reason() {
        println!("SKIPPED: e2e_guest_pings_lan: {reason}");
        return;
    }
    let (builds, outcome) = e2e::within("e2e_guest_pings_lan", OVERALL, || {
        let start = Instant::now();
        let layout = Layout::default_for_workspace();
        let mut builds = Vec::new();
        let t = Instant::now();
        let vmm = firmware::build_vmm(&layout).expect("cross-build the vmm");
        builds.push(("vmm (aarch64 static)", t.elapsed()));
        let t = Instant::now();
        // The guest's packages come through the fetcher (no apt), from the Debian mirror the
        // machine's apt sources name: the path a Mac user takes. The host keeps apt.
        let mirror = firmware::fetch::mirror_from_apt_sources(std::path::Path::new("/etc/apt"))
            .expect("no http(s) Debian bookworm mirror in /etc/apt's sources");
        let sources = firmware::DebSources::mirror(mirror);
        let guest = firmware::build_guest_from(&layout, &sources).expect("build the guest images");
        builds.push(("guest images (fetched)", t.elapsed()));
        let t = Instant::now();
        let host = firmware::build_host(&layout, Some(&vmm), &guest).expect("build the host");
        builds.push(("host images", t.elapsed()));
        let opts = RunOptions {
            timeout: RUN.min(OVERALL.saturating_sub(start.elapsed() + Duration::from_secs(10))),
            append: format!("vmnet.hotplug={HOTPLUG_CYCLES} host.log=info"),
            ..RunOptions::default()
        };
        let outcome = firmware::run_host(&layout, &host, &opts).expect("run qemu");
        (builds, outcome)
    });
    print_timings(&builds, &outcome);

    let c = &outcome.console;
    let log = outcome.log.display();
    let check = vmm_check_report(c);
    println!("vmm check in the emulated host:\n{check}");
    assert!(
        c.contains("VMM-CHECK-END code=0"),
        "`vmm check` did not pass in the emulated host; console in {log}"
    );
    for fact in [
        "ok  * /dev/kvm",
        "ok  * irqfd",
        "ok  * ioeventfd",
        "ok  * vGICv3",
        "ok  * TAP vnet header",
        "RESULT ok",
    ] {
        assert!(check.contains(fact), "`vmm check` lacks {fact:?}: {check}");
    }
    e2e::assert_host_came_up("e2e", &outcome, true);
    assert!(
        c.contains("GUEST-MODEL model=vmnet-rs arm64 virt"),
        "the guest kernel did not start on our device tree; console in {log}"
    );
    assert!(
        c.contains(&format!("eth0 mac={GUEST_MAC}")),
        "the guest has no eth0 with MAC {GUEST_MAC}; console in {log}"
    );
    // CPU hotplug through the VMM's own PSCI, under KVM.
    let kernel = host_kernel(c);
    assert!(
        kernel.is_some_and(|k| k >= (6, 4)),
        "the emulated host runs kernel {kernel:?}, without KVM's SMCCC filter (6.4+); console in {log}"
    );
    let p = plain(c);
    assert!(
        p.contains("PSCI: served by the VMM"),
        "KVM did not forward PSCI to the VMM; console in {log}"
    );
    assert!(
        c.contains(&format!("GUEST-HOTPLUG ok cycles={HOTPLUG_CYCLES}")),
        "the guest's CPU 1 offline/online cycles failed; console in {log}"
    );
    let served = console::fields(&p, "PSCI calls served by the VMM")
        .unwrap_or_else(|| panic!("the vmm logged no PSCI summary; console in {log}"));
    let count = |k: &str| served.get(k).and_then(|v| v.parse::<u64>().ok());
    // CPU 1's boot, then one CPU_ON per cycle.
    assert_eq!(count("cpu_on"), Some(HOTPLUG_CYCLES + 1), "{served:?}");
    assert_eq!(count("cpu_off"), Some(HOTPLUG_CYCLES), "{served:?}");
    // Every start of CPU 1 began with a reset; each after a CPU_OFF found the guest's MMU on
    // and left it off.
    let resets = vcpu1_resets(&p);
    assert_eq!(
        resets.len() as u64,
        HOTPLUG_CYCLES + 1,
        "vCPU 1 resets {resets:x?}; console in {log}"
    );
    for &(before, after) in &resets[1..] {
        assert!(
            before & SCTLR_M != 0 && after & SCTLR_M == 0,
            "SCTLR_EL1 {before:#x} -> {after:#x}; console in {log}"
        );
    }

    let result = outcome
        .vmnet_result()
        .unwrap_or_else(|| panic!("the guest printed no VMNET-RESULT line; console in {log}"));
    assert_eq!(result.status, "ok", "{result:?}; console in {log}");
    let sent = result.sent.expect("VMNET-RESULT has sent=");
    assert!(sent >= 5, "only {sent} echo requests sent");
    assert_eq!(result.received, Some(sent), "lost replies: {result:?}");
    assert_eq!(
        outcome.vmm_exit_code(),
        Some(0),
        "the vmm did not exit 0; console in {log}"
    );
    // After the guest's power-off every vCPU thread must leave KVM_RUN on one kick.
    assert!(
        !c.contains("did not stop in time"),
        "a vCPU thread did not stop; console in {log}"
    );
}
