//! What a user sees for bad input: one line that names the problem and the fix, a non-zero exit
//! code, no panic and no backtrace. These run the real `vmm` binary on any host: every check
//! happens before the hypervisor is touched.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run vmm")
}

/// Asserts a clean failure and returns the error line.
fn fails_cleanly(out: &Output) -> String {
    assert!(!out.status.success(), "vmm should fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(!stderr.contains("stack backtrace"), "backtrace: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    lines[0].to_owned()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vmm-bad-input-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file that passes the arm64 Image header checks: `image_size` bytes reserved.
fn fake_image(image_size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 4096];
    h[16..24].copy_from_slice(&image_size.to_le_bytes());
    h[24..32].copy_from_slice(&0b1010u64.to_le_bytes()); // LE, 4K pages, anywhere in RAM
    h[56..60].copy_from_slice(b"ARM\x64");
    h
}

#[test]
fn missing_kernel_is_named() {
    let line = fails_cleanly(&vmm(&["--kernel", "/nonexistent/Image"]));
    assert!(
        line.starts_with("error: cannot read the kernel /nonexistent/Image"),
        "{line}"
    );
}

#[test]
fn a_file_that_is_not_an_arm64_image_is_refused() {
    let d = TempDir::new("notimage");
    let k = d.file("Image", &[0x7f; 4096]);
    let line = fails_cleanly(&vmm(&["--kernel", &k]));
    assert!(line.contains("is not a bootable arm64 Image"), "{line}");
}

#[test]
fn a_gzip_kernel_is_told_to_be_decompressed() {
    let d = TempDir::new("gzip");
    let mut gz = vec![0x1f, 0x8b, 8, 0];
    gz.resize(4096, 0);
    let k = d.file("vmlinuz", &gz);
    let line = fails_cleanly(&vmm(&["--kernel", &k]));
    assert!(line.contains("decompress"), "{line}");
}

#[test]
fn memory_too_small_for_the_images_says_how_much_is_needed() {
    let d = TempDir::new("small");
    let k = d.file("Image", &fake_image(60 << 20));
    let line = fails_cleanly(&vmm(&["--kernel", &k, "--memory", "32M"]));
    assert!(line.contains("memory too small"), "{line}");
    assert!(line.contains("--memory"), "{line}");
}

#[test]
fn an_initrd_that_does_not_fit_is_refused() {
    let d = TempDir::new("initrd");
    let k = d.file("Image", &fake_image(8 << 20));
    let i = d.file("initrd", &vec![0u8; 40 << 20]);
    let line = fails_cleanly(&vmm(&["--kernel", &k, "--initrd", &i, "--memory", "32M"]));
    assert!(line.contains("memory too small"), "{line}");
}

#[test]
fn a_missing_initrd_is_named() {
    let d = TempDir::new("noinitrd");
    let k = d.file("Image", &fake_image(8 << 20));
    let line = fails_cleanly(&vmm(&["--kernel", &k, "--initrd", "/nonexistent/initrd"]));
    assert!(
        line.contains("cannot read the initrd /nonexistent/initrd"),
        "{line}"
    );
}

#[test]
fn zero_cpus_are_refused() {
    let out = vmm(&["--kernel", "/x", "--cpus", "0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cpus"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn zero_memory_is_refused() {
    let out = vmm(&["--kernel", "/x", "--memory", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--memory"));
}

#[test]
fn a_bad_net_spec_is_refused() {
    let out = vmm(&["--kernel", "/x", "--net", "nonsense"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tap:NAME"), "{stderr}");
}

#[cfg(target_os = "linux")]
#[test]
fn vmnet_on_linux_says_it_needs_macos() {
    let d = TempDir::new("vmnet");
    let k = d.file("Image", &fake_image(8 << 20));
    let line = fails_cleanly(&vmm(&["--kernel", &k, "--net", "vmnet-shared"]));
    assert!(line.contains("needs macOS"), "{line}");
    assert!(line.contains("tap:NAME"), "{line}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_tap_that_cannot_be_opened_is_named_with_the_fix() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        println!("SKIPPED: a_tap_that_cannot_be_opened_is_named_with_the_fix: no /dev/net/tun");
        return;
    }
    let d = TempDir::new("tap");
    let k = d.file("Image", &fake_image(8 << 20));
    // "lo" exists and is not a TAP device: it can be neither created nor attached.
    let line = fails_cleanly(&vmm(&["--kernel", &k, "--net", "tap:lo"]));
    assert!(line.contains("tap:lo"), "{line}");
    assert!(
        line.contains("not a TAP device") || line.contains("run as root"),
        "{line}"
    );
}

#[test]
fn a_tap_name_too_long_is_refused() {
    let out = vmm(&["--kernel", "/x", "--net", "tap:0123456789abcdefg"]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[cfg(not(any(all(target_os = "linux", target_arch = "aarch64"), target_os = "macos")))]
#[test]
fn a_host_without_a_hypervisor_backend_says_where_the_vmm_runs() {
    let d = TempDir::new("nohv");
    let k = d.file("Image", &fake_image(8 << 20));
    let line = fails_cleanly(&vmm(&["--kernel", &k]));
    assert!(line.contains("arm64 Linux with KVM"), "{line}");
}

/// A kernel that passes the image checks, so that the run gets as far as the network.
fn kernel(d: &TempDir) -> String {
    d.file("Image", &fake_image(8 << 20))
}

#[test]
fn a_socket_path_with_nothing_there_says_to_start_the_helper() {
    let d = TempDir::new("nosock");
    let k = kernel(&d);
    let sock = d.0.join("passt.socket");
    let spec = format!("stream:{}", sock.display());
    let line = fails_cleanly(&vmm(&["--kernel", &k, "--net", &spec]));
    assert!(line.contains(&spec), "{line}");
    assert!(line.contains("start the network helper first"), "{line}");
}

#[test]
fn a_socket_file_nobody_listens_on_says_to_restart_the_helper() {
    let d = TempDir::new("stale");
    let k = kernel(&d);
    let sock = d.0.join("gvproxy.sock");
    drop(std::os::unix::net::UnixDatagram::bind(&sock).unwrap());
    let spec = format!("dgram:{},vfkit", sock.display());
    let line = fails_cleanly(&vmm(&["--kernel", &k, "--net", &spec]));
    assert!(line.contains("restart the helper"), "{line}");
}

#[test]
fn a_socket_of_the_other_kind_names_the_right_form() {
    let d = TempDir::new("wrongkind");
    let k = kernel(&d);
    let sock = d.0.join("socket_vmnet");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let spec = format!("dgram:{}", sock.display());
    let line = fails_cleanly(&vmm(&["--kernel", &k, "--net", &spec]));
    assert!(line.contains("is not a datagram socket"), "{line}");
    assert!(
        line.contains(&format!("--net stream:{}", sock.display())),
        "{line}"
    );
}

#[test]
fn a_path_that_is_not_a_socket_is_named() {
    let d = TempDir::new("notsock");
    let k = kernel(&d);
    let f = d.file("plain", b"");
    let line = fails_cleanly(&vmm(&["--kernel", &k, "--net", &format!("stream:{f}")]));
    assert!(line.contains("is not a socket"), "{line}");
}

#[test]
fn a_descriptor_that_is_not_open_says_how_to_pass_one() {
    let d = TempDir::new("nofd");
    let k = kernel(&d);
    let line = fails_cleanly(&vmm(&["--kernel", &k, "--net", "fd:200,dgram"]));
    assert!(line.contains("descriptor 200 is not open"), "{line}");
}

#[test]
fn an_inherited_socket_of_the_other_kind_names_the_right_form() {
    use std::os::fd::AsRawFd;
    let d = TempDir::new("fdkind");
    let k = kernel(&d);
    let (ours, _peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let fd = ours.as_raw_fd();
    // Let the child inherit it.
    // SAFETY: F_SETFD with 0 clears close-on-exec of a descriptor this test owns.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let spec = format!("fd:{fd},stream");
    let line = fails_cleanly(&vmm(&["--kernel", &k, "--net", &spec]));
    assert!(line.contains("is a datagram socket"), "{line}");
    assert!(line.contains(&format!("fd:{fd},dgram")), "{line}");
}

#[test]
fn a_bad_socket_spec_says_what_to_write() {
    let out = vmm(&["--kernel", "/x", "--net", "fd:3"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fd:N,stream or fd:N,dgram"), "{stderr}");
}
