//! `vmm check` on Linux: the host, KVM (arm64 only) and TAP.

use std::ffi::CStr;

use devices::net::tap::{Tap, TapError};

use super::{Fact, Report, error_chain};
use crate::hv::HvError;

/// Probes this host.
pub fn probe() -> Report {
    let mut report = Report::new();
    host(&mut report);
    kvm(&mut report);
    tap(&mut report);
    report
}

fn host(report: &mut Report) {
    // SAFETY: `uname` fills the struct we pass, which lives across the call.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&raw mut u) } == 0 {
        // SAFETY: uname NUL-terminates each field within its array.
        let field = |f: &[libc::c_char]| unsafe { CStr::from_ptr(f.as_ptr()) }.to_string_lossy();
        report.push(Fact::info(
            "host",
            format!(
                "{} {} {}",
                field(&u.sysname),
                field(&u.release),
                field(&u.machine)
            ),
        ));
    }
    let arch = std::env::consts::ARCH;
    report.push(
        Fact::check(
            arch == "aarch64",
            "arm64",
            arch,
            "the VMM runs guests on arm64 Linux with KVM (or an Apple-silicon Mac); on this \
             host run it inside the emulated arm64 host: cargo run --release -p firmware -- demo",
        )
        .needed(),
    );
}

/// `/dev/kvm` itself, on any architecture (so an x86_64 user learns both facts).
fn dev_kvm(report: &mut Report) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => {
            report.push(Fact::ok("/dev/kvm", "opened read/write").needed());
            true
        }
        Err(e) => {
            let advice = HvError::kvm_open(e.raw_os_error().unwrap_or(libc::ENOENT)).to_string();
            report.push(Fact::fail("/dev/kvm", e.to_string(), advice).needed());
            false
        }
    }
}

#[cfg(not(target_arch = "aarch64"))]
fn kvm(report: &mut Report) {
    dev_kvm(report);
    report.push(Fact::info(
        "KVM capabilities",
        "not probed: this VMM's KVM backend exists on arm64 only",
    ));
}

#[cfg(target_arch = "aarch64")]
fn kvm(report: &mut Report) {
    use kvm_bindings::{
        KVM_CREATE_DEVICE_TEST, kvm_create_device, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        kvm_vcpu_init,
    };
    use kvm_ioctls::{Cap, Kvm};

    if !dev_kvm(report) {
        return;
    }
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            report.push(
                Fact::fail(
                    "KVM",
                    e.to_string(),
                    HvError::kvm_open(e.errno()).to_string(),
                )
                .needed(),
            );
            return;
        }
    };
    let api = kvm.get_api_version();
    report.push(
        Fact::check(
            api == 12,
            "KVM API version",
            api.to_string(),
            "KVM_GET_API_VERSION must be 12 (api.rst): this kernel's KVM is not usable",
        )
        .needed(),
    );
    for (cap, name, what) in [
        (Cap::Irqfd, "irqfd", "device interrupts"),
        (Cap::Ioeventfd, "ioeventfd", "queue notifications"),
        (Cap::ArmPsci02, "PSCI 0.2", "secondary vCPUs"),
    ] {
        let has = kvm.check_extension(cap);
        report.push(
            Fact::check(
                has,
                name,
                if has { "supported" } else { "missing" },
                format!("the VMM needs KVM's {name} for {what}: use a newer kernel"),
            )
            .needed(),
        );
    }
    let max = kvm.get_max_vcpus();
    report.push(Fact::info(
        "KVM_CAP_MAX_VCPUS",
        format!(
            "{max} (the memory map allows {})",
            crate::arch::aarch64::layout::max_vcpus()
        ),
    ));
    let vm = match kvm.create_vm() {
        Ok(vm) => {
            report.push(Fact::ok("KVM_CREATE_VM", "created").needed());
            vm
        }
        Err(e) => {
            report.push(
                Fact::fail(
                    "KVM_CREATE_VM",
                    e.to_string(),
                    "KVM refused a VM: check dmesg",
                )
                .needed(),
            );
            return;
        }
    };
    // vm.rst, KVM_ARM_VM_SMCCC_CTRL (Linux 6.4+): with it the VMM answers PSCI itself.
    let filter = kvm_bindings::kvm_device_attr {
        flags: 0,
        group: kvm_bindings::KVM_ARM_VM_SMCCC_CTRL,
        attr: u64::from(kvm_bindings::KVM_ARM_VM_SMCCC_FILTER),
        addr: 0,
    };
    report.push(Fact::info(
        "SMCCC filter",
        if vm.has_device_attr(&filter).is_ok() {
            "present: PSCI goes to the VMM's own handler"
        } else {
            "absent (Linux before 6.4): KVM answers PSCI itself"
        },
    ));
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: KVM_CREATE_DEVICE_TEST,
    };
    report.push(
        match vm.create_device(&mut dev) {
            Ok(_) => Fact::ok("vGICv3", "KVM can create it"),
            Err(e) => Fact::fail(
                "vGICv3",
                e.to_string(),
                "the VMM needs a GICv3 host (KVM_DEV_TYPE_ARM_VGIC_V3); a GICv2-only host \
                 cannot run it",
            ),
        }
        .needed(),
    );
    let mut init = kvm_vcpu_init::default();
    let vcpu = vm
        .get_preferred_target(&mut init)
        .and_then(|()| vm.create_vcpu(0))
        .and_then(|fd| fd.vcpu_init(&init));
    report.push(
        match vcpu {
            Ok(()) => Fact::ok("vCPU", "created and initialized (preferred target)"),
            Err(e) => Fact::fail(
                "vCPU",
                e.to_string(),
                "KVM cannot create or initialize an arm64 vCPU: check dmesg",
            ),
        }
        .needed(),
    );
}

fn tap(report: &mut Report) {
    let name = format!("vmmchk{}", std::process::id() % 100_000_000);
    match Tap::open(&name) {
        Ok(tap) => {
            report.push(Fact::ok("TAP creation", format!("created {}", tap.name())).needed());
            report.push(
                Fact::ok(
                    "TAP vnet header",
                    "IFF_VNET_HDR and a 12-byte header accepted",
                )
                .needed(),
            );
            // The interface was not made persistent: it goes away with the descriptor.
        }
        Err(TapError::Configure {
            what: "TUNSETVNETHDRSZ",
            source,
            ..
        }) => {
            report.push(Fact::ok("TAP creation", "allowed").needed());
            report.push(
                Fact::fail(
                    "TAP vnet header",
                    source.to_string(),
                    "this kernel's TUN driver refuses the 12-byte virtio-net header: use a \
                     kernel with IFF_VNET_HDR and TUNSETVNETHDRSZ (2.6.32 and later)",
                )
                .needed(),
            );
        }
        Err(e) => {
            let advice = match &e {
                TapError::Permission { .. } => {
                    "run as root, or create the TAP for your user first: ip tuntap add NAME \
                     mode tap user $USER, then --net tap:NAME"
                }
                TapError::NoTunDevice(_) => "load the tun module: modprobe tun",
                _ => "see the error",
            };
            report.push(Fact::fail("TAP creation", error_chain(&e), advice).needed());
        }
    }
}
