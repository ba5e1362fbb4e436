//! `vmm`: boot an arm64 Linux kernel with a serial console and virtio-net.

use std::process::ExitCode;
use std::sync::mpsc;

use clap::Parser;
use vmm::cli::Args;
use vmm::console::{self, RawTerminal};
use vmm::machine::{self, ExitReason, VmmError};

/// Prints an error and its causes on one line: "error: a: b: c".
fn report(e: &dyn std::error::Error) {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    eprintln!("error: {msg}");
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

fn main() -> ExitCode {
    let args = Args::parse();
    let level: tracing::Level = args.log_level.into();
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let machine = match build(&args) {
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
