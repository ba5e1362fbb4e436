//! `vmm check` on macOS: the system, the process's entitlements, Hypervisor.framework with its
//! in-kernel GIC, and vmnet in shared and host mode.
//!
//! Nothing here has run on a Mac yet: it is compiled and clippy-checked for
//! `aarch64-apple-darwin` only. Its output is what a first Mac user is asked to paste.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use applevisor::vcpu::Vcpu as HvVcpu;
use applevisor::vm::VirtualMachineConfig;
use devices::virtio::net::format_mac;

use super::{ARP_FRAME_LEN, Fact, Report, arp_reply_from, arp_request, error_chain};
use crate::hv::{hvf, hvf_logic};

/// How long vmnet may take to start an interface.
const VMNET_START: Duration = Duration::from_secs(15);
/// How long the probe waits for the answer to its frame.
const VMNET_ANSWER: Duration = Duration::from_secs(3);
/// The virtio-net header every packet carries in vmnet's virtio-header mode.
const VIRTIO_HDR_LEN: usize = 12;
/// The MAC the probe sends from when vmnet allocated none (locally administered).
const PROBE_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x76, 0x6d, 0x6d];

/// Probes this Mac.
pub fn probe() -> Report {
    let mut report = Report::new();
    system(&mut report);
    entitlements(&mut report);
    hypervisor(&mut report);
    vmnet_mode(&mut report, "shared", vmnet::Options::shared(), true);
    vmnet_mode(&mut report, "host", vmnet::Options::host(), false);
    report
}

/// `sysctlbyname` of a string value.
fn sysctl_string(name: &str) -> Option<String> {
    let cname = CString::new(name).ok()?;
    let mut len: libc::size_t = 0;
    // SAFETY: a size query: NULL buffer, `len` written by the kernel.
    let r = unsafe {
        libc::sysctlbyname(
            cname.as_ptr(),
            std::ptr::null_mut(),
            &raw mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if r != 0 || len == 0 {
        return None;
    }
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` has `len` writable bytes; the kernel writes at most `len` and updates it.
    let r = unsafe {
        libc::sysctlbyname(
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            &raw mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if r != 0 {
        return None;
    }
    buf.truncate(len);
    let s = String::from_utf8_lossy(&buf);
    Some(s.trim_end_matches('\0').trim().to_owned())
}

/// `sysctlbyname` of an `int` value.
fn sysctl_int(name: &str) -> Option<i32> {
    let cname = CString::new(name).ok()?;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>();
    // SAFETY: `value` is a writable int and `len` its size.
    let r = unsafe {
        libc::sysctlbyname(
            cname.as_ptr(),
            (&raw mut value).cast(),
            &raw mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (r == 0).then_some(value)
}

fn system(report: &mut Report) {
    let version = sysctl_string("kern.osproductversion").unwrap_or_default();
    report.push(super::macos_version_fact(&version));
    if let Some(build) = sysctl_string("kern.osversion") {
        report.push(Fact::info("macOS build", build));
    }
    let arm64 = sysctl_int("hw.optional.arm64") == Some(1);
    let brand = sysctl_string("machdep.cpu.brand_string").unwrap_or_else(|| "unknown".into());
    report.push(
        Fact::check(
            arm64,
            "Apple silicon",
            brand,
            "the VMM needs an Apple-silicon Mac (Hypervisor.framework runs arm64 guests there \
             only)",
        )
        .needed(),
    );
    if sysctl_int("sysctl.proc_translated") == Some(1) {
        report.push(
            Fact::fail(
                "native process",
                "running under Rosetta",
                "build for aarch64-apple-darwin (an arm64 cargo), not x86_64",
            )
            .needed(),
        );
    }
    // kern.hv_support: the kernel offers Hypervisor.framework; kern.hv_vmm_present: this macOS
    // itself runs in a virtual machine (a hosted CI runner, for example).
    let hv = sysctl_int("kern.hv_support");
    report.push(
        Fact::check(
            hv == Some(1),
            "kern.hv_support",
            hv.map_or_else(|| "absent".to_owned(), |v| v.to_string()),
            "this macOS offers no Hypervisor.framework (inside a virtual machine it needs a host \
             with nested virtualization)",
        )
        .needed(),
    );
    if let Some(v) = sysctl_int("kern.hv_vmm_present") {
        report.push(Fact::info(
            "running in a virtual machine",
            if v == 1 { "yes" } else { "no" },
        ));
    }
    if let Some(n) = sysctl_int("hw.ncpu") {
        report.push(Fact::info("host CPUs", n.to_string()));
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    report.push(Fact::info(
        "running as root",
        if root {
            "yes"
        } else {
            "no (vmnet needs root or an entitlement)"
        },
    ));
}

fn entitlements(report: &mut Report) {
    let Ok(exe) = std::env::current_exe() else {
        report.push(Fact::warn(
            "entitlements",
            "cannot find this executable",
            "run vmm from its file",
        ));
        return;
    };
    let out = Command::new("codesign")
        .args(["-d", "--entitlements", "-", "--xml"])
        .arg(&exe)
        .output();
    let text = match out {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            report.push(Fact::warn(
                "entitlements",
                format!("codesign did not run: {e}"),
                "install the Xcode command line tools (xcode-select --install)",
            ));
            return;
        }
    };
    for (key, what, needed_for) in [
        (
            "com.apple.security.hypervisor",
            "hypervisor entitlement",
            "Hypervisor.framework refuses hv_vm_create without it: use `cargo run` (it signs \
             through vmm/macos/run-signed.sh) or codesign --sign - --force --entitlements \
             vmm/macos/entitlements.plist <path to vmm>",
        ),
        (
            "com.apple.security.virtualization",
            "virtualization entitlement",
            "vmnet accepts it instead of root on macOS 26 and later",
        ),
    ] {
        let has = text.contains(key);
        report.push(if has {
            Fact::ok(what, key)
        } else {
            Fact::warn(what, "absent", needed_for)
        });
    }
}

fn hypervisor(report: &mut Report) {
    match (
        VirtualMachineConfig::get_default_ipa_size(),
        VirtualMachineConfig::get_max_ipa_size(),
    ) {
        (Ok(default), Ok(max)) => report.push(Fact::info(
            "IPA size",
            format!("default {default} bits, max {max} bits"),
        )),
        (Err(e), _) | (_, Err(e)) => report.push(Fact::warn(
            "IPA size",
            e.to_string(),
            "the framework did not answer hv_vm_config_get_*_ipa_size",
        )),
    }
    let (vm, limits) = match hvf::probe_vm() {
        Ok(v) => v,
        Err(e) => {
            report.push(
                Fact::fail(
                    "hv_vm_create + hv_gic_create",
                    error_chain(&e),
                    "see the error: it names the call and what to do",
                )
                .needed(),
            );
            return;
        }
    };
    report.push(Fact::ok("hv_vm_create", "VM created").needed());
    report.push(
        Fact::ok(
            "in-kernel GIC",
            "hv_gic_create with the device tree's addresses",
        )
        .needed(),
    );
    match HvVcpu::get_max_count() {
        Ok(n) => report.push(Fact::info("max vCPUs", n.to_string())),
        Err(e) => report.push(Fact::warn(
            "max vCPUs",
            e.to_string(),
            "hv_vm_get_max_vcpu_count failed",
        )),
    }
    report.push(Fact::info(
        "GIC geometry",
        format!(
            "distributor {:#x}+{:#x} (align {:#x}), redistributor {:#x} per vCPU, region {:#x} \
             (align {:#x}), SPIs {}..{}",
            crate::arch::aarch64::layout::GIC_DIST_BASE,
            limits.distributor_size,
            limits.distributor_alignment,
            limits.redistributor_size,
            limits.redistributor_region_size,
            limits.redistributor_alignment,
            limits.spi_base,
            limits.spi_base.saturating_add(limits.spi_count),
        ),
    ));
    report.push(
        match hvf::probe_vcpu(&vm) {
            Ok(base) => match hvf_logic::RedistributorFrames::new(1).claim(0, base) {
                Ok(()) => Fact::ok("vCPU redistributor", format!("{base:#x}")),
                Err(e) => Fact::fail(
                    "vCPU redistributor",
                    format!("{base:#x}"),
                    format!("{e}: please report this output"),
                ),
            },
            Err(e) => Fact::fail(
                "vCPU redistributor",
                error_chain(&e),
                "creating a vCPU failed",
            ),
        }
        .needed(),
    );
    drop(vm);
}

/// Starts a vmnet interface in one mode: first with the virtio-net header and TSO, then
/// without; reports what it returned, sends one ARP request to the host side and looks for the
/// answer, then stops.
fn vmnet_mode(report: &mut Report, mode: &str, opts: vmnet::Options, needed: bool) {
    let mark = |f: Fact| if needed { f.needed() } else { f };
    let name = format!("vmnet {mode}");
    let with_header = opts.clone().virtio_header(true).tso(true);
    let (iface, header) = match vmnet::Interface::start(&with_header, VMNET_START) {
        Ok(i) => {
            report.push(Fact::ok(format!("{name} virtio header+TSO"), "accepted"));
            (i, true)
        }
        Err(e) => {
            report.push(Fact::warn(
                format!("{name} virtio header+TSO"),
                error_chain(&e),
                "the VMM then starts vmnet without offloads (macOS 15.4 has the header)",
            ));
            match vmnet::Interface::start(&opts, VMNET_START) {
                Ok(i) => (i, false),
                Err(e) => {
                    report.push(mark(Fact::fail(
                        format!("{name} start"),
                        error_chain(&e),
                        vmnet::PRIVILEGE_ADVICE,
                    )));
                    return;
                }
            }
        }
    };
    report.push(mark(Fact::ok(format!("{name} start"), "interface started")));
    let p = iface.params().clone();
    let addr = |a: Option<Ipv4Addr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
    report.push(Fact::info(
        format!("{name} parameters"),
        format!(
            "mtu {} max_packet_size {} read_max_packets {} write_max_packets {} mac {}",
            p.mtu,
            p.max_packet_size,
            p.read_max_packets,
            p.write_max_packets,
            p.mac.map_or_else(|| "-".to_owned(), |m| format_mac(&m)),
        ),
    ));
    report.push(Fact::info(
        format!("{name} addresses"),
        format!(
            "start {} end {} mask {}",
            addr(p.start_address),
            addr(p.end_address),
            addr(p.subnet_mask)
        ),
    ));
    report.push(mark(exchange(&iface, &p, header, &name)));
    if let Err(e) = iface.stop(VMNET_START) {
        report.push(Fact::warn(
            format!("{name} stop"),
            error_chain(&e),
            "vmnet_stop_interface failed",
        ));
    }
}

/// Writes one ARP request for the interface's first address (the host side) and waits for its
/// answer.
fn exchange(
    iface: &vmnet::Interface,
    p: &vmnet::InterfaceParams,
    header: bool,
    name: &str,
) -> Fact {
    let what = format!("{name} frame out and back");
    let (Some(gateway), Some(ours)) = (p.start_address, p.end_address) else {
        return Fact::warn(
            what,
            "no addresses reported",
            "cannot address a probe frame",
        );
    };
    let mac = p.mac.unwrap_or(PROBE_MAC);
    let hdr = if header { VIRTIO_HDR_LEN } else { 0 };
    let mut frame = vec![0u8; hdr];
    frame.extend_from_slice(&arp_request(mac, ours, gateway));
    if let Err(e) = iface.write_batch(&[frame]) {
        return Fact::fail(
            what,
            format!("write: {}", error_chain(&e)),
            "vmnet_write failed",
        );
    }
    let deadline = std::time::Instant::now() + VMNET_ANSWER;
    // Whether vmnet's max_packet_size counts the header is not documented: room for both.
    let size = p.max_packet_size.max(ARP_FRAME_LEN) + hdr;
    let mut bufs = vec![vec![0u8; size]; 8];
    let mut lens = vec![0usize; 8];
    let mut seen = 0;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Fact::fail(
                what,
                format!(
                    "written, no answer from {gateway} in {VMNET_ANSWER:?} ({seen} other frames)"
                ),
                "vmnet accepted the frame but nothing came back: please report this output",
            );
        }
        if !iface.wait_readable(Some(left)) {
            continue;
        }
        let n = match iface.read_batch(&mut bufs, &mut lens) {
            Ok(n) => n,
            Err(e) => {
                return Fact::fail(
                    what,
                    format!("read: {}", error_chain(&e)),
                    "vmnet_read failed",
                );
            }
        };
        for (buf, &len) in bufs.iter().zip(&lens).take(n) {
            let frame = buf.get(hdr..len).unwrap_or(&[]);
            if let Some(theirs) = arp_reply_from(frame, gateway, mac) {
                return Fact::ok(
                    what,
                    format!("ARP reply from {gateway} ({})", format_mac(&theirs)),
                );
            }
            seen += 1;
        }
    }
}
