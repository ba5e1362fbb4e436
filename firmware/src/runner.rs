//! Booting the images under `qemu-system-aarch64` (TCG), with the console streamed live.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::console::{self, MARKER_PATTERNS, Marker, PingResult};
use crate::{GUEST_MAC, GuestImages, HostImages, Lan, Layout, progress};

/// The emulator. Debian package `qemu-system-arm`.
pub const QEMU: &str = "qemu-system-aarch64";

/// The emulated arm64 host (docs/design.md, "Toolchain and test bed"): EL2 (`virtualization=on`) so that its
/// kernel runs real KVM, GICv3 for KVM's vGICv3, and `pauth-impdef=on` because the default
/// pointer-authentication algorithm makes TCG several times slower.
const HOST_MACHINE: &[&str] = &[
    "-M",
    "virt,virtualization=on,gic-version=3",
    "-cpu",
    "max,pauth-impdef=on",
    "-accel",
    "tcg,thread=multi",
    "-m",
    "2048",
    "-smp",
    "2",
];

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run is stopped (qemu killed) after this long.
    pub timeout: Duration,
    /// Extra kernel parameters, e.g. `host.run=none` or `vmnet.count=10` (the host init passes
    /// `vmnet.*` on to the guest).
    pub append: String,
    /// Echo the console to stdout as it arrives.
    pub echo: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(600),
            append: String::new(),
            echo: true,
        }
    }
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// The whole console (serial output, plus qemu's own stderr).
    pub console: String,
    /// Lines matching [`MARKER_PATTERNS`], with their arrival times.
    pub markers: Vec<Marker>,
    /// qemu was killed because the timeout passed.
    pub timed_out: bool,
    /// qemu's exit status (none if it could not be reaped).
    pub status: Option<ExitStatus>,
    /// Wall time from starting qemu to its exit.
    pub elapsed: Duration,
    /// Where the console was logged.
    pub log: PathBuf,
}

impl RunOutcome {
    /// `N` of the host's `VMM-EXIT code=N` line.
    pub fn vmm_exit_code(&self) -> Option<i32> {
        console::vmm_exit_code(&self.console)
    }

    /// The guest's `VMNET-RESULT` line.
    pub fn vmnet_result(&self) -> Option<PingResult> {
        console::vmnet_result(&self.console)
    }

    /// When the first line containing `pattern` (one of [`MARKER_PATTERNS`]) arrived.
    pub fn first(&self, pattern: &str) -> Option<Duration> {
        self.markers
            .iter()
            .find(|m| m.line.contains(pattern))
            .map(|m| m.at)
    }

    /// When the last line containing `pattern` arrived.
    pub fn last(&self, pattern: &str) -> Option<Duration> {
        self.markers
            .iter()
            .rev()
            .find(|m| m.line.contains(pattern))
            .map(|m| m.at)
    }
}

/// `firmware run-host`: boots the emulated host, which runs the vmm on the guest.
pub fn run_host(layout: &Layout, host: &HostImages, opts: &RunOptions) -> Result<RunOutcome> {
    let append = format!("console=ttyAMA0 panic=-1 {}", opts.append);
    let mut args: Vec<OsString> = HOST_MACHINE.iter().map(OsString::from).collect();
    args.extend(common_args(&host.image, &host.initramfs, &append));
    run(QEMU, Vec::new(), args, layout, "host", opts)
}

/// Boots the guest directly under qemu's TCG, with its NIC (`virtio-net-device`, the same
/// virtio-mmio transport our vmm offers) on the tap of `lan`. This checks the guest image
/// and its init without our vmm.
pub fn run_guest_direct(
    layout: &Layout,
    guest: &GuestImages,
    lan: &Lan,
    opts: &RunOptions,
) -> Result<RunOutcome> {
    let append = format!(
        "console=ttyAMA0 panic=-1 vmnet.ip=10.0.2.15/24 vmnet.peer={} vmnet.count=5 {}",
        Lan::PEER_ADDR,
        opts.append
    );
    let mut args: Vec<OsString> = [
        "-M",
        "virt",
        "-cpu",
        "max,pauth-impdef=on",
        "-accel",
        "tcg,thread=multi",
        "-m",
        "512",
        "-smp",
        "2",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.extend(common_args(&guest.image, &guest.initramfs, &append));
    for arg in [
        "-device".to_string(),
        format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}"),
        "-netdev".to_string(),
        format!("tap,id=n0,ifname={},script=no,downscript=no", lan.tap),
    ] {
        args.push(arg.into());
    }
    let (program, prefix) = lan.exec_prefix();
    let mut full = prefix;
    full.push(QEMU.into());
    full.extend(args);
    run(&program, Vec::new(), full, layout, "guest", opts)
}

fn common_args(
    image: &std::path::Path,
    initramfs: &std::path::Path,
    append: &str,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(image.into());
    args.push("-initrd".into());
    args.push(initramfs.into());
    args.push("-append".into());
    args.push(append.into());
    args
}

enum Chunk {
    Out(Vec<u8>),
    Err(Vec<u8>),
}

fn run(
    program: &str,
    env: Vec<(String, String)>,
    args: Vec<OsString>,
    layout: &Layout,
    what: &str,
    opts: &RunOptions,
) -> Result<RunOutcome> {
    let log_dir = layout.log_dir();
    fs::create_dir_all(&log_dir)?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let log_path = log_dir.join(format!("{what}-{stamp}.log"));
    let mut log = BufWriter::new(
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?,
    );
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    progress(format!(
        "booting the {what} (timeout {} s, console log {}):\n  {program} {}",
        opts.timeout.as_secs(),
        log_path.display(),
        shell_words(&args)
    ));
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {program} (Debian package qemu-system-arm)"))?;
    let (tx, rx) = mpsc::channel();
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let tx_err = tx.clone();
    let out_thread = thread::spawn(move || pump(&mut stdout, &tx, Chunk::Out));
    let err_thread = thread::spawn(move || pump(&mut stderr, &tx_err, Chunk::Err));

    let deadline = start + opts.timeout;
    let mut console = Vec::new();
    let mut markers = Vec::new();
    let mut line = Vec::new();
    let mut timed_out = false;
    let mut status = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(chunk) => {
                let (bytes, is_out) = match chunk {
                    Chunk::Out(b) => (b, true),
                    Chunk::Err(b) => (b, false),
                };
                if opts.echo {
                    if is_out {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&bytes);
                        let _ = out.flush();
                    } else {
                        let _ = std::io::stderr().write_all(&bytes);
                    }
                }
                let _ = log.write_all(&bytes);
                console.extend_from_slice(&bytes);
                for &b in &bytes {
                    if b == b'\n' {
                        let text = String::from_utf8_lossy(&line);
                        let text = text.trim_end_matches('\r');
                        if MARKER_PATTERNS.iter().any(|p| text.contains(p)) {
                            markers.push(Marker {
                                at: start.elapsed(),
                                line: text.to_string(),
                            });
                        }
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Both pipes closed: qemu is gone (or closed them); reap it below.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if status.is_none() {
            status = child.try_wait()?;
        }
        if status.is_none() && Instant::now() >= deadline {
            timed_out = true;
            progress(format!(
                "{what}: timeout after {} s, killing qemu",
                opts.timeout.as_secs()
            ));
            let _ = child.kill();
            status = child.wait().ok();
        }
    }
    if status.is_none() {
        status = child.wait().ok();
    }
    let elapsed = start.elapsed();
    let _ = out_thread.join();
    let _ = err_thread.join();
    log.flush()?;
    progress(format!(
        "{what}: qemu ended after {:.1} s ({}), log {}",
        elapsed.as_secs_f64(),
        status.map_or("not reaped".to_string(), |s| s.to_string()),
        log_path.display()
    ));
    Ok(RunOutcome {
        console: String::from_utf8_lossy(&console).into_owned(),
        markers,
        timed_out,
        status,
        elapsed,
        log: log_path,
    })
}

fn pump(src: &mut impl Read, tx: &mpsc::Sender<Chunk>, wrap: fn(Vec<u8>) -> Chunk) {
    let mut buf = [0u8; 4096];
    loop {
        match src.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(wrap(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
}

/// The command line as a user could paste it.
fn shell_words(args: &[OsString]) -> String {
    args.iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains([' ', '"', '\'']) {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
