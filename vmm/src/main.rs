//! `vmm`: boot an arm64 Linux kernel with a serial console and virtio-net.

use std::process::ExitCode;
use std::sync::mpsc;

use vmm::cli::{Args, Invocation};
use vmm::console::{self, RawTerminal};
use vmm::machine::{self, ExitReason, VmmError};

/// Prints an error and its causes on one line: "error: a: b: c".
fn report(e: &dyn std::error::Error) {
    eprintln!("error: {}", vmm::check::error_chain(e));
}

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn build(args: &Args) -> Result<machine::Machine<vmm::hv::kvm::KvmVm>, VmmError> {
    machine::build(args, Box::new(std::io::stdout()), vmm::hv::kvm::KvmVm::new)
}

#[cfg(target_os = "macos")]
fn build(args: &Args) -> Result<machine::Machine<vmm::hv::hvf::HvfVm>, VmmError> {
    machine::build(args, Box::new(std::io::stdout()), vmm::hv::hvf::HvfVm::new)
}

#[cfg(not(any(all(target_os = "linux", target_arch = "aarch64"), target_os = "macos")))]
fn build(args: &Args) -> Result<machine::Machine<vmm::hv::Unsupported>, VmmError> {
    machine::build(args, Box::new(std::io::stdout()), vmm::hv::Unsupported::new)
}

/// `vmm check`: prints the report on stdout; exits 1 when a guest with networking cannot boot.
fn check() -> ExitCode {
    #[cfg(target_os = "linux")]
    let report = vmm::check::linux::probe();
    #[cfg(target_os = "macos")]
    let report = vmm::check::macos::probe();
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    let report = {
        let mut r = vmm::check::Report::new();
        r.push(
            vmm::check::Fact::fail(
                "host",
                std::env::consts::OS,
                "the VMM runs on arm64 Linux (KVM) and Apple-silicon macOS",
            )
            .needed(),
        );
        r
    };
    println!(
        "vmm check: vmm {} on {} {}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    print!("{}", report.render());
    ExitCode::from(report.exit_code())
}

fn main() -> ExitCode {
    let args = match Invocation::parse_from(std::env::args_os()) {
        Invocation::Run(args) => args,
        Invocation::Check(_) => return check(),
    };
    run(&args)
}

fn run(args: &Args) -> ExitCode {
    let level: tracing::Level = args.log_level.into();
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let machine = match build(args) {
        Ok(m) => m,
        Err(e) => {
            report(&e);
            return ExitCode::from(1);
        }
    };
    let raw = RawTerminal::enable();
    let (quit_tx, quit_rx) = mpsc::channel();
    if let Err(e) = console::spawn_input(machine.uart.clone(), quit_tx, raw.is_raw()) {
        drop(raw);
        report(&e);
        return ExitCode::from(1);
    }
    let reason = machine.run(quit_rx);
    drop(raw);
    match &reason {
        ExitReason::PowerOff => tracing::info!("guest powered off"),
        ExitReason::Error(e) => eprintln!("error: {e}"),
        other => eprintln!("vmm: guest ended: {other:?}"),
    }
    ExitCode::from(reason.code() as u8)
}
