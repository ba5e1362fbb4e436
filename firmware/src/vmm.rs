//! Cross-building the `vmm` binary for the emulated arm64 host.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{Layout, apt, deb, elf, progress, workspace_root};

/// The target of the emulated host.
pub const TARGET: &str = "aarch64-unknown-linux-gnu";
/// The rustup name of Debian's rustc-web/cargo-web, which ship std for [`TARGET`]
/// (`rustup toolchain link debian-web /usr`; docs/design.md, "Toolchain and test bed").
pub const TOOLCHAIN: &str = "+debian-web";

/// Runs `cargo +debian-web build --release --target aarch64-unknown-linux-gnu -p vmm` in the
/// workspace and returns the static binary. The linker and `+crt-static` come from the
/// workspace's `.cargo/config.toml`.
pub fn build_vmm(_layout: &Layout) -> Result<PathBuf> {
    cross_build(&[], &[])
}

/// The Debian package whose arm64 `libBlocksRuntime.a` the model build links (it cannot be
/// installed beside the host's amd64 one: the package is not multi-arch).
const BLOCKS_RUNTIME_PACKAGE: &str = "libblocksruntime-dev:arm64";

/// [`build_vmm`] with the test-only `vmnet-model` feature: `--net vmnet-*` runs the vmnet
/// backend over vmnet-model, the model of vmnet.framework (the end-to-end run over the model).
/// The Blocks runtime comes from Debian's `libblocksruntime-dev:arm64`, downloaded with apt
/// and unpacked into the cache. The binary is copied to `<root>/vmnet-model/vmm`, so that a
/// later [`build_vmm`] does not replace it.
pub fn build_vmm_model(layout: &Layout) -> Result<PathBuf> {
    let deb = apt::download(BLOCKS_RUNTIME_PACKAGE, &layout.cache())?;
    let unpacked = deb::unpack_cached(&deb, &layout.cache())?;
    let archive = unpacked.join("usr/lib/aarch64-linux-gnu/libBlocksRuntime.a");
    // A directory with the static library alone: the static link must not find the `.so`.
    let lib_dir = layout.root.join("vmnet-model").join("lib");
    std::fs::create_dir_all(&lib_dir)?;
    std::fs::copy(&archive, lib_dir.join("libBlocksRuntime.a"))
        .with_context(|| format!("{BLOCKS_RUNTIME_PACKAGE} has no {}", archive.display()))?;
    let lib_dir = lib_dir.to_str().context("non-UTF-8 firmware directory")?;
    let built = cross_build(
        &["--features", "vmnet-model"],
        &[("VMNET_MODEL_LIB_DIR", lib_dir)],
    )?;
    let bin = layout.root.join("vmnet-model").join("vmm");
    std::fs::copy(&built, &bin)
        .with_context(|| format!("cannot copy {} to {}", built.display(), bin.display()))?;
    Ok(bin)
}

/// `cargo +debian-web build --release --target aarch64-unknown-linux-gnu -p vmm` with `args`
/// and `env` added; returns the binary after checking it is static aarch64.
fn cross_build(args: &[&str], env: &[(&str, &str)]) -> Result<PathBuf> {
    let root = workspace_root();
    let start = Instant::now();
    progress(format!(
        "cross-building vmm: cargo {TOOLCHAIN} build --release --target {TARGET} -p vmm {}",
        args.join(" ")
    ));
    let mut cmd = Command::new("cargo");
    cmd.arg(TOOLCHAIN)
        .args(["build", "--release", "--target", TARGET, "-p", "vmm"])
        .args(args)
        .envs(env.iter().copied())
        .current_dir(&root);
    // When we run under cargo (`cargo run`, `cargo test`), these would pick the outer
    // toolchain, and RUSTFLAGS would replace the config's `+crt-static` (cargo uses only one
    // source of flags).
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .context("cannot run cargo (is rustup installed?)")?;
    if !status.success() {
        bail!(
            "cross-building vmm failed ({status}); needs Debian's rustc-web, cargo-web, \
             libstd-rust-web-dev:arm64, gcc-aarch64-linux-gnu and `rustup toolchain link \
             debian-web /usr`"
        );
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_relative() { root.join(d) } else { d })
        .unwrap_or_else(|| root.join("target"));
    let bin = target_dir.join(TARGET).join("release").join("vmm");
    let data = std::fs::read(&bin).with_context(|| {
        format!(
            "cargo built no {}: does the vmm package have a `vmm` binary (src/main.rs)?",
            bin.display()
        )
    })?;
    elf::check_static_aarch64(&data).with_context(|| format!("{}", bin.display()))?;
    progress(format!(
        "vmm built in {:.1} s: {} ({:.1} MiB, static aarch64)",
        start.elapsed().as_secs_f64(),
        bin.display(),
        data.len() as f64 / (1024.0 * 1024.0)
    ));
    Ok(bin)
}

/// The tools the end-to-end run needs that this machine lacks, each with a reason (empty if
/// none is missing).
pub fn missing_tools() -> Vec<String> {
    let runs = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .env_remove("RUSTUP_TOOLCHAIN")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut missing = Vec::new();
    if !runs(crate::runner::QEMU, &["--version"]) {
        missing.push(format!(
            "{} not found (Debian package qemu-system-arm)",
            crate::runner::QEMU
        ));
    }
    if !runs("aarch64-linux-gnu-gcc", &["--version"]) {
        missing
            .push("aarch64-linux-gnu-gcc not found (Debian package gcc-aarch64-linux-gnu)".into());
    }
    if !runs("cargo", &[TOOLCHAIN, "--version"]) {
        missing.push(format!(
            "`cargo {TOOLCHAIN}` does not run (Debian's cargo-web and `rustup toolchain link \
             debian-web /usr`)"
        ));
    } else {
        let std_present = Command::new("rustc")
            .args([TOOLCHAIN, "--print", "target-libdir", "--target", TARGET])
            .env_remove("RUSTUP_TOOLCHAIN")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .is_some_and(|dir| {
                std::fs::read_dir(dir.trim()).is_ok_and(|mut d| {
                    d.any(|e| {
                        e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
                    })
                })
            });
        if !std_present {
            missing.push(format!(
                "no Rust std for {TARGET} in {TOOLCHAIN} (Debian package libstd-rust-web-dev:arm64)"
            ));
        }
    }
    if !runs("apt-get", &["--version"]) {
        missing.push("apt-get not found: the images are made from Debian packages".into());
    }
    missing
}
