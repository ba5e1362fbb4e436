//! The end-to-end test on a Mac: the VMM boots the guest on Hypervisor.framework with vmnet
//! shared mode; the guest gets an address by DHCP from vmnet, pings the gateway and powers off.
//!
//! One command on an Apple-silicon Mac (macOS 15 or later; root, or macOS 26 where the
//! ad-hoc-signable virtualization entitlement is enough for vmnet), after building the guest
//! images (`cargo run -p firmware -- guest --kernel-deb ... --busybox-deb ...`):
//!
//! ```text
//! sudo cargo test -p vmm --test macos_e2e -- --include-ignored --nocapture
//! ```
//!
//! It is ignored unless asked for: elsewhere it cannot run (cargo counts it as ignored, not
//! passed), and on a Mac it needs Hypervisor.framework, vmnet privileges and the guest images.
//! When asked for it runs for real: anything missing fails it with the reason.

#[cfg(not(target_os = "macos"))]
#[test]
#[ignore = "macOS-only: Hypervisor.framework and vmnet on Apple silicon"]
fn macos_guest_pings_gateway() {
    panic!("Hypervisor.framework and vmnet exist on macOS only; this test cannot run here");
}

#[cfg(target_os = "macos")]
#[test]
#[ignore = "needs Apple silicon, root (vmnet) and the guest images (sudo ... -- --include-ignored)"]
fn macos_guest_pings_gateway() {
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let image = root.join("target/firmware/guest/Image");
    let initrd = root.join("target/firmware/guest/initramfs.cpio.gz");
    assert!(
        image.exists() && initrd.exists(),
        "no guest images in target/firmware/guest (build them with `cargo run -p firmware -- guest --kernel-deb ... --busybox-deb ...`)"
    );
    let vmm = env!("CARGO_BIN_EXE_vmm");
    // Hypervisor.framework and (on macOS 26) vmnet need the entitlements; sign as the runner does.
    let plist = root.join("vmm/macos/entitlements.plist");
    let signed = Command::new("codesign")
        .args(["--sign", "-", "--force", "--entitlements"])
        .arg(&plist)
        .arg(vmm)
        .status();
    assert!(
        matches!(signed, Ok(s) if s.success()),
        "codesign failed (install the Xcode command line tools)"
    );
    let start = Instant::now();
    let mut child = Command::new(vmm)
        .args(["--kernel"])
        .arg(&image)
        .arg("--initrd")
        .arg(&initrd)
        .args([
            "--net",
            "vmnet-shared",
            "--memory",
            "512M",
            "--cpus",
            "2",
            "--cmdline",
            "console=ttyAMA0 panic=-1 quiet vmnet.ip=dhcp vmnet.count=5",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the vmm");
    let deadline = start + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the vmm") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the guest did not power off within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().expect("collect the console");
    let console = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("vmnet needs root"),
        "no vmnet privileges: {}",
        stderr.trim()
    );
    println!("{console}");
    println!(
        "macos_guest_pings_gateway: whole run {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        console.contains("GUEST-MODEL model=vmnet-rs arm64 virt"),
        "the guest did not boot on our device tree; stderr: {stderr}"
    );
    let result = console
        .lines()
        .find(|l| l.starts_with("VMNET-RESULT"))
        .unwrap_or_else(|| panic!("no VMNET-RESULT line; stderr: {stderr}"));
    assert!(result.contains("status=ok"), "{result}");
    assert!(result.contains("sent=5 received=5"), "{result}");
    assert!(
        status.success(),
        "the vmm exited with {status}; stderr: {stderr}"
    );
}
