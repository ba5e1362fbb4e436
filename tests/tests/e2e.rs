//! The vmm boots Debian's arm64 kernel inside an emulated arm64 host (qemu TCG with EL2, real
//! KVM inside) and the guest pings a LAN peer through our virtio-net device and the host's tap.
//!
//! Needs qemu-system-aarch64, the arm64 cross toolchain and apt (arm64 architecture added);
//! without them the test prints `SKIPPED: ...` and returns. Not root: the LAN lives inside the
//! emulated host.

use std::time::{Duration, Instant};

use firmware::{GUEST_MAC, Layout, RunOptions, RunOutcome, console};

/// The whole test, builds included; a hang fails instead of blocking CI.
const OVERALL: Duration = Duration::from_secs(600);
/// The boot itself (the run measured about 11 s; TCG on a loaded CI machine is slower).
const RUN: Duration = Duration::from_secs(300);

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
        let guest = firmware::build_guest(&layout).expect("build the guest images");
        builds.push(("guest images", t.elapsed()));
        let t = Instant::now();
        let host = firmware::build_host(&layout, Some(&vmm), &guest).expect("build the host");
        builds.push(("host images", t.elapsed()));
        let opts = RunOptions {
            timeout: RUN.min(OVERALL.saturating_sub(start.elapsed() + Duration::from_secs(10))),
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
    assert!(
        !outcome.timed_out,
        "the emulated host timed out; console in {log}"
    );
    assert!(
        c.contains("HOST-KVM ok"),
        "no /dev/kvm in the emulated host; console in {log}"
    );
    assert!(
        c.contains("HOST-LAN ok"),
        "the emulated host's LAN setup failed; console in {log}"
    );
    assert!(
        c.contains("GUEST-MODEL model=vmnet-rs arm64 virt"),
        "the guest kernel did not start on our device tree; console in {log}"
    );
    assert!(
        c.contains(&format!("eth0 mac={GUEST_MAC}")),
        "the guest has no eth0 with MAC {GUEST_MAC}; console in {log}"
    );
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
