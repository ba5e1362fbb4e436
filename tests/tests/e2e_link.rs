//! Guest to guest over a Unix socket, without TAP or bridge: inside the emulated arm64 host
//! (`host.run=link`), guest A boots under our vmm and guest B under our vmm again or under
//! Debian's qemu, linked by a socket. Our VMM to our VMM: A listens (`--net dgram-listen:`),
//! B connects (`--net dgram:PATH,vfkit`). With qemu: `-netdev dgram` towards A's listening
//! socket, and `-netdev stream` as the server A connects to (`--net stream:`). Each guest
//! waits for the other and pings it, with no loss allowed. With passt: guest A alone behind
//! Debian's passt (`--net stream:`), passt and our VMM both started as an unprivileged user
//! (uid 1000, in group kvm for `/dev/kvm`), which the host checks in `/proc/PID/status`.
//!
//! Needs what `e2e.rs` needs; without it the tests print `SKIPPED: ...` and return. The host
//! image carries qemu and passt (Debian's arm64 packages, fetched with apt like the rest).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use firmware::{Layout, RunOptions, RunOutcome, console};

/// One test's builds and run.
const OVERALL: Duration = Duration::from_secs(900);
/// The run: two guests under TCG at once, each waiting for the other.
const RUN: Duration = Duration::from_secs(420);

/// The tests build the same images: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The console lines of one side (prefixed `NAME: ` by the host), prefix removed.
fn side(console: &str, name: &str) -> String {
    let prefix = format!("{name}: ");
    console
        .lines()
        .filter_map(|l| l.trim_start_matches('\r').strip_prefix(&prefix))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Builds the images (host with qemu) and runs `host.run=link` with guest B under `peer`.
fn run_link(test: &'static str, peer: &'static str) -> RunOutcome {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    e2e::within(test, OVERALL, move || {
        let start = Instant::now();
        let layout = Layout::default_for_workspace();
        let vmm = firmware::build_vmm(&layout).expect("cross-build the vmm");
        let guest = firmware::build_guest(&layout).expect("build the guest images");
        let host = firmware::build_link_host(&layout, &vmm, &guest).expect("build the host");
        let opts = RunOptions {
            timeout: RUN.min(OVERALL.saturating_sub(start.elapsed() + Duration::from_secs(10))),
            append: format!("host.run=link host.link={peer} vmnet.count=10"),
            ..RunOptions::default()
        };
        firmware::run_host(&layout, &host, &opts).expect("run qemu")
    })
}

/// Checks that both guests got every reply and both sides exited 0.
fn check(outcome: &RunOutcome, peer: &str) {
    check_sides(
        outcome,
        peer,
        &[("A", "52:54:00:00:03:01"), ("B", "52:54:00:00:03:02")],
    );
}

/// Checks that the guests of `sides` got every reply and their VMMs exited 0.
fn check_sides(outcome: &RunOutcome, peer: &str, sides: &[(&str, &str)]) {
    e2e::assert_host_came_up(&format!("link {peer}"), outcome, false);
    let c = &outcome.console;
    let log = outcome.log.display();
    assert!(
        c.contains(&format!("LINK-EXIT peer={peer} ")),
        "the link run did not finish; console in {log}"
    );
    for &(name, mac) in sides {
        let s = side(c, name);
        assert!(
            s.contains(&format!("eth0 mac={mac}")),
            "guest {name} has no eth0 with MAC {mac}; console in {log}"
        );
        let r = console::vmnet_result(&s)
            .unwrap_or_else(|| panic!("guest {name} printed no VMNET-RESULT; console in {log}"));
        println!("link {peer}: guest {name}: {r:?}");
        assert_eq!(r.status, "ok", "guest {name}: {r:?}; console in {log}");
        let sent = r.sent.expect("VMNET-RESULT has sent=");
        assert!(sent >= 10, "guest {name} sent only {sent} echo requests");
        assert_eq!(r.received, Some(sent), "guest {name} lost replies: {r:?}");
        assert_eq!(
            console::vmm_exit_code(&s),
            Some(0),
            "side {name} did not exit 0; console in {log}"
        );
    }
}

#[test]
fn e2e_two_guests_linked_by_a_datagram_socket_ping_each_other() {
    let test = "e2e_two_guests_linked_by_a_datagram_socket_ping_each_other";
    if let Some(reason) = e2e::skip_reason() {
        println!("SKIPPED: {test}: {reason}");
        return;
    }
    let outcome = run_link(test, "vmm");
    check(&outcome, "vmm");
    assert!(
        outcome
            .console
            .contains("LINK-EXIT peer=vmm socket_left=no"),
        "the listening VMM left its socket file behind; console in {}",
        outcome.log.display()
    );
}

#[test]
fn e2e_a_guest_under_qemu_and_one_under_our_vmm_ping_each_other_over_dgram() {
    let test = "e2e_a_guest_under_qemu_and_one_under_our_vmm_ping_each_other_over_dgram";
    if let Some(reason) = e2e::skip_reason() {
        println!("SKIPPED: {test}: {reason}");
        return;
    }
    check(&run_link(test, "qemu-dgram"), "qemu-dgram");
}

#[test]
fn e2e_our_vmm_connects_to_qemus_stream_server_and_the_guests_ping_each_other() {
    let test = "e2e_our_vmm_connects_to_qemus_stream_server_and_the_guests_ping_each_other";
    if let Some(reason) = e2e::skip_reason() {
        println!("SKIPPED: {test}: {reason}");
        return;
    }
    check(&run_link(test, "qemu-stream"), "qemu-stream");
}

#[test]
fn e2e_our_vmm_behind_passt_gets_dhcp_and_reaches_a_host_service() {
    let test = "e2e_our_vmm_behind_passt_gets_dhcp_and_reaches_a_host_service";
    if let Some(reason) = e2e::skip_reason() {
        println!("SKIPPED: {test}: {reason}");
        return;
    }
    let outcome = run_link(test, "passt");
    check_sides(&outcome, "passt", &[("A", "52:54:00:00:03:01")]);
    let a = side(&outcome.console, "A");
    let log = outcome.log.display();
    assert!(
        a.contains("GUEST-DHCP address="),
        "the guest took no address from passt's DHCP; console in {log}"
    );
    assert!(
        a.contains("VMNET-TCP peer=") && a.contains(" got=PASST-TCP-OK"),
        "the guest did not read the host service's line through passt; console in {log}"
    );
    // Both ran as the unprivileged user from the start, read by the host from
    // /proc/PID/status while they ran: every uid (real, effective, saved, filesystem) is the
    // user's, and the VMM holds no capability.
    for name in ["vmm", "passt"] {
        let cred = creds(&outcome.console, name).unwrap_or_else(|| {
            panic!("the host did not report {name}'s credentials; console in {log}")
        });
        println!("link passt: {name} ran with {cred:?}");
        assert_eq!(
            cred.get("uid").map(String::as_str),
            Some("1000,1000,1000,1000"),
            "{name} did not run as the unprivileged user (uid 1000): {cred:?}; console in {log}"
        );
    }
    let vmm = creds(&outcome.console, "vmm").expect("checked above");
    assert_eq!(
        vmm.get("cap_eff").map(String::as_str),
        Some("0000000000000000"),
        "the VMM held capabilities: {vmm:?}; console in {log}"
    );
    assert!(
        vmm.get("groups")
            .is_some_and(|g| g.split(',').any(|g| g == "993")),
        "the VMM was not in group kvm (993), through which it opens /dev/kvm: {vmm:?}; console in {log}"
    );
}

/// The fields of the host's `LINK-CRED name=NAME ...` line (from `/proc/PID/status`).
fn creds(console: &str, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let tag = format!("LINK-CRED name={name} ");
    let line = console.lines().find_map(|l| {
        let at = l.find(&tag)?;
        Some(&l[at + tag.len()..])
    })?;
    Some(
        line.trim_end_matches('\r')
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}
