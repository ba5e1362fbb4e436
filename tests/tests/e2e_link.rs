//! VM to VM over a datagram socket, without TAP or bridge: inside the emulated arm64 host
//! (`host.run=link`), two guests boot, each under its own vmm. VMM A listens at a socket path
//! (`--net dgram-listen:`), VMM B connects to it (`--net dgram:PATH,vfkit`); each guest waits
//! for the other and pings it, with no loss allowed.
//!
//! Needs what `e2e.rs` needs; without it the test prints `SKIPPED: ...` and returns.

use std::time::{Duration, Instant};

use firmware::{Layout, RunOptions, console};

/// The whole test, builds included.
const OVERALL: Duration = Duration::from_secs(900);
/// The run: two guests under TCG at once, each waiting for the other.
const RUN: Duration = Duration::from_secs(420);

/// The console lines of one VMM (prefixed `NAME: ` by the host), prefix removed.
fn side(console: &str, name: &str) -> String {
    let prefix = format!("{name}: ");
    console
        .lines()
        .filter_map(|l| l.trim_start_matches('\r').strip_prefix(&prefix))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn e2e_two_guests_linked_by_a_datagram_socket_ping_each_other() {
    if let Some(reason) = e2e::skip_reason() {
        println!("SKIPPED: e2e_two_guests_linked_by_a_datagram_socket_ping_each_other: {reason}");
        return;
    }
    let outcome = e2e::within("e2e_link", OVERALL, || {
        let start = Instant::now();
        let layout = Layout::default_for_workspace();
        let vmm = firmware::build_vmm(&layout).expect("cross-build the vmm");
        let guest = firmware::build_guest(&layout).expect("build the guest images");
        let host = firmware::build_host(&layout, Some(&vmm), &guest).expect("build the host");
        let opts = RunOptions {
            timeout: RUN.min(OVERALL.saturating_sub(start.elapsed() + Duration::from_secs(10))),
            append: "host.run=link vmnet.count=10".into(),
            ..RunOptions::default()
        };
        firmware::run_host(&layout, &host, &opts).expect("run qemu")
    });
    let c = &outcome.console;
    let log = outcome.log.display();
    println!("e2e_link: whole run {:.1} s", outcome.elapsed.as_secs_f64());
    assert!(
        !outcome.timed_out,
        "the emulated host timed out; console in {log}"
    );
    assert!(
        c.contains("HOST-KVM ok"),
        "no /dev/kvm in the emulated host; console in {log}"
    );
    assert!(
        c.contains("LINK-EXIT"),
        "the link run did not finish; console in {log}"
    );
    for (name, mac) in [("A", "52:54:00:00:03:01"), ("B", "52:54:00:00:03:02")] {
        let s = side(c, name);
        assert!(
            s.contains(&format!("eth0 mac={mac}")),
            "guest {name} has no eth0 with MAC {mac}; console in {log}"
        );
        let r = console::vmnet_result(&s)
            .unwrap_or_else(|| panic!("guest {name} printed no VMNET-RESULT; console in {log}"));
        println!("e2e_link: guest {name}: {r:?}");
        assert_eq!(r.status, "ok", "guest {name}: {r:?}; console in {log}");
        let sent = r.sent.expect("VMNET-RESULT has sent=");
        assert!(sent >= 10, "guest {name} sent only {sent} echo requests");
        assert_eq!(r.received, Some(sent), "guest {name} lost replies: {r:?}");
        assert_eq!(
            console::vmm_exit_code(&s),
            Some(0),
            "VMM {name} did not exit 0; console in {log}"
        );
    }
    assert!(
        c.contains("LINK-EXIT socket_left=no"),
        "the listening VMM left its socket file behind; console in {log}"
    );
}
