//! The guest and emulated-host images.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::initramfs::Initramfs;
use crate::modules::ModuleTree;
use crate::{
    GUEST_INIT, GUEST_UDHCPC_SCRIPT, HOST_INIT, Layout, apt, bundle, deb, elf, fetch, progress,
};

/// The metapackage that names Debian's current arm64 kernel.
const KERNEL_METAPACKAGE: &str = "linux-image-arm64:arm64";
/// Where the emulated host's kernel comes from: bookworm's backports (6.12), because KVM's
/// SMCCC filter, which lets the VMM's own PSCI serve the guest under KVM, came with Linux 6.4
/// and bookworm itself has 6.1. The guest keeps bookworm's kernel.
const HOST_KERNEL_RELEASE: &str = "bookworm-backports";
/// The oldest host kernel with the SMCCC filter (`KVM_ARM_VM_SMCCC_FILTER`).
const HOST_KERNEL_MIN: (u32, u32) = (6, 4);
const BUSYBOX_PACKAGE: &str = "busybox-static:arm64";
/// Debian's arm64 qemu, for the `host.run=qemu` baseline.
const QEMU_PACKAGE: &str = "qemu-system-arm:arm64";
/// Debian's arm64 iperf3 (with libiperf0), for `firmware bench` in the guest and the host.
const IPERF3_PACKAGE: &str = "iperf3:arm64";
/// Debian's arm64 passt, the user-mode network the `host.link=passt` run puts in front of a
/// guest.
const PASST_PACKAGE: &str = "passt:arm64";
/// Debian's arm64 `perf`, for `firmware bench --profile`: the `linux-perf` of the same
/// Debian kernel version as the host kernel (same source package), so that its version matches
/// the kernel it samples.
const PERF_PACKAGE: &str = "linux-perf:arm64";

/// The guest's network modules. Their dependencies (`failover`, `net_failover`, and `virtio`,
/// `virtio_ring` where a flavour builds those as modules) come from the modules' modinfo.
const GUEST_MODULES: &[&str] = &["virtio_mmio", "virtio_net"];
/// The host's LAN modules (bridge pulls in `stp` and `llc`).
const HOST_MODULES: &[&str] = &["tun", "bridge", "veth"];
/// The bench host's extra modules: `vhost_net` (with `vhost`, `vhost_iotlb`, `tap`) for
/// qemu's `vhost=on`, which opens `/dev/vhost-net`.
const BENCH_HOST_MODULES: &[&str] = &["vhost_net"];

/// The built guest: kernel `Image` and initramfs.
#[derive(Debug, Clone)]
pub struct GuestImages {
    /// The raw arm64 `Image`.
    pub image: PathBuf,
    /// The gzip-compressed cpio initramfs.
    pub initramfs: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-arm64`.
    pub kernel_release: String,
}

/// The built emulated host: kernel `Image` and initramfs (holding the guest and the vmm).
#[derive(Debug, Clone)]
pub struct HostImages {
    /// The raw arm64 `Image`.
    pub image: PathBuf,
    /// The gzip-compressed cpio initramfs.
    pub initramfs: PathBuf,
    /// Whether a vmm binary is inside.
    pub has_vmm: bool,
}

/// An unpacked Debian arm64 kernel package.
struct Kernel {
    release: String,
    /// The Debian version of the kernel package, e.g. `6.1.192-3` (from its `.deb` name).
    version: String,
    image: PathBuf,
    modules: ModuleTree,
}

/// Where the guest's packages come from instead of apt (a Mac has no apt): `.deb` files the
/// user downloaded, or a Debian mirror the fetcher reads directly.
#[derive(Debug, Clone, Default)]
pub struct DebSources {
    /// A `linux-image-*-arm64` package.
    pub kernel: Option<PathBuf>,
    /// A `busybox-static` arm64 package.
    pub busybox: Option<PathBuf>,
    /// A Debian mirror to fetch (and verify) both packages from, when they are not given.
    pub mirror: Option<fetch::Mirror>,
    /// With `mirror`: ask it for new indexes even if cached ones exist.
    pub refresh: bool,
}

impl DebSources {
    /// The packages from `mirror` (see [`fetch`]).
    pub fn mirror(mirror: fetch::Mirror) -> Self {
        Self {
            mirror: Some(mirror),
            ..Self::default()
        }
    }

    /// With a mirror and no `.deb` files given: the two files fetched and verified from it.
    fn fetched(&self, layout: &Layout) -> Result<Self> {
        let Some(mirror) = self.mirror.as_ref().filter(|_| self.kernel.is_none()) else {
            return Ok(self.clone());
        };
        progress(format!(
            "fetching the guest's packages from {} and {} (no apt)",
            mirror.debian, mirror.security
        ));
        let (kernel, busybox) = fetch::fetch_guest_debs(&layout.cache(), mirror, self.refresh)?;
        Ok(Self {
            kernel: Some(kernel.path),
            busybox: self.busybox.clone().or(Some(busybox.path)),
            mirror: None,
            refresh: false,
        })
    }
}

fn prepare_kernel(layout: &Layout, sources: &DebSources) -> Result<Kernel> {
    let (package, deb) = match &sources.kernel {
        Some(deb) => (deb.display().to_string(), deb.clone()),
        None => {
            let package = apt::resolve_kernel_package(KERNEL_METAPACKAGE)?;
            progress(format!("{KERNEL_METAPACKAGE} is {package}"));
            let deb = apt::download(&package, &layout.cache())?;
            (package, deb)
        }
    };
    unpack_kernel(layout, package, &deb)
}

/// The emulated host's kernel: [`KERNEL_METAPACKAGE`] from [`HOST_KERNEL_RELEASE`].
fn prepare_host_kernel(layout: &Layout) -> Result<Kernel> {
    let package =
        apt::resolve_kernel_package_in(KERNEL_METAPACKAGE, HOST_KERNEL_RELEASE, HOST_KERNEL_MIN)?;
    progress(format!(
        "host kernel: {KERNEL_METAPACKAGE} from {HOST_KERNEL_RELEASE} is {package}"
    ));
    let deb = apt::download(&package, &layout.cache())?;
    unpack_kernel(layout, package, &deb)
}

fn unpack_kernel(layout: &Layout, package: String, deb: &Path) -> Result<Kernel> {
    let root = deb::unpack_cached(deb, &layout.cache())?;
    let boot = root.join("boot");
    let image = fs::read_dir(&boot)
        .with_context(|| format!("{package} has no /boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{package} has no /boot/vmlinuz-*"))?;
    let release = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("odd vmlinuz name")?
        .to_string();
    let modules = ModuleTree::open(&root.join("lib/modules").join(&release))?;
    let version =
        deb_version(deb).with_context(|| format!("odd package file name {}", deb.display()))?;
    Ok(Kernel {
        release,
        version,
        image,
        modules,
    })
}

/// The Debian version in a `.deb` file name (`name_version_arch.deb`, the epoch's colon
/// written `%3a`), as apt accepts it after `=`.
fn deb_version(deb: &Path) -> Option<String> {
    let name = deb.file_name()?.to_str()?;
    let version = name.split('_').nth(1)?;
    Some(version.replace("%3a", ":"))
}

/// Debian's arm64 `perf` of the kernel's own version, with its libraries, at `/bin/perf`.
/// The package ships it as `usr/bin/perf` (bookworm's 6.1) or `usr/bin/perf_X.Y` (later
/// kernels, with a wrapper at `usr/bin/perf`).
fn perf_bundle(layout: &Layout, kernel: &Kernel) -> Result<Vec<bundle::BundleFile>> {
    let spec = format!("{PERF_PACKAGE}={}", kernel.version);
    let deb = apt::download(&spec, &layout.cache())
        .with_context(|| format!("no {spec} for the host kernel {}", kernel.release))?;
    let root = deb::unpack_cached(&deb, &layout.cache())?;
    let mut parts = kernel.release.split(['.', '-']);
    let versioned = format!(
        "usr/bin/perf_{}.{}",
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default()
    );
    let program = if root.join(&versioned).is_file() {
        versioned
    } else {
        "usr/bin/perf".to_string()
    };
    let mut files = bundle::bundle(layout, &spec, &program)?;
    for file in &mut files {
        if file.path.starts_with("/bin/perf_") {
            file.path = "/bin/perf".into();
        }
    }
    Ok(files)
}

/// Copies the kernel to `dest` after checking it is a raw arm64 `Image` (magic `ARM\x64` at
/// offset 56 of the header, `Documentation/arch/arm64/booting.rst`).
fn install_image(src: &Path, dest: &Path) -> Result<()> {
    let data = fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
    if data.get(56..60) != Some(b"ARM\x64".as_slice()) {
        bail!(
            "{} is not a raw arm64 Image (no ARM\\x64 magic at offset 56)",
            src.display()
        );
    }
    fs::write(dest, &data).with_context(|| format!("cannot write {}", dest.display()))
}

fn busybox(layout: &Layout, sources: &DebSources) -> Result<Vec<u8>> {
    let deb = match &sources.busybox {
        Some(deb) => deb.clone(),
        None => apt::download(BUSYBOX_PACKAGE, &layout.cache())?,
    };
    let root = deb::unpack_cached(&deb, &layout.cache())?;
    let path = root.join("bin/busybox");
    fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// The guest's modules: [`GUEST_MODULES`] with their dependencies, in load order.
fn guest_initramfs(layout: &Layout, kernel: &Kernel, sources: &DebSources) -> Result<Initramfs> {
    let mut fs = Initramfs::skeleton();
    let applets = fs.busybox(busybox(layout, sources)?);
    let modules = kernel.modules.load_order(GUEST_MODULES)?;
    progress(format!(
        "guest modules in load order: {} ({} busybox applets)",
        names(&modules),
        applets
    ));
    fs.modules(modules);
    fs.file("/init", 0o755, GUEST_INIT);
    fs.file("/etc/udhcpc.script", 0o755, GUEST_UDHCPC_SCRIPT);
    Ok(fs)
}

/// Adds a [`bundle::bundle`]d program and its libraries to `fs`.
fn add_bundle(fs: &mut Initramfs, files: Vec<bundle::BundleFile>) {
    for file in files {
        fs.file(&file.path, 0o755, file.data);
    }
}

fn names(modules: &[crate::modules::Module]) -> String {
    modules
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `firmware guest`: writes `guest/Image` and `guest/initramfs.cpio.gz` under the layout.
pub fn build_guest(layout: &Layout) -> Result<GuestImages> {
    build_guest_from(layout, &DebSources::default())
}

/// [`build_guest`] from `.deb` files given by the user where `sources` names them, or from
/// the mirror it names (no apt).
pub fn build_guest_from(layout: &Layout, sources: &DebSources) -> Result<GuestImages> {
    let start = Instant::now();
    let sources = &sources.fetched(layout)?;
    let kernel = prepare_kernel(layout, sources)?;
    let dir = layout.guest_dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let image = dir.join("Image");
    install_image(&kernel.image, &image)?;
    let initramfs = dir.join("initramfs.cpio.gz");
    let size = guest_initramfs(layout, &kernel, sources)?.write_gz(&initramfs, 9)?;
    progress(format!(
        "guest ready in {:.1} s: {} (kernel {}), {} ({} KiB)",
        start.elapsed().as_secs_f64(),
        image.display(),
        kernel.release,
        initramfs.display(),
        size / 1024
    ));
    Ok(GuestImages {
        image,
        initramfs,
        kernel_release: kernel.release,
    })
}

/// `firmware host`: writes `host/Image` and `host/initramfs.cpio.gz`, with `vmm` (a static
/// aarch64 binary) as `/bin/vmm` and the guest as `/guest/Image` and
/// `/guest/initramfs.cpio.gz`. Without a vmm the host still sets up the LAN and reports
/// `VMM-EXIT code=127` for `host.run=vmm`.
pub fn build_host(layout: &Layout, vmm: Option<&Path>, guest: &GuestImages) -> Result<HostImages> {
    build_host_with(layout, vmm, guest, false)
}

/// [`build_host`], and with `qemu` also Debian's arm64 `qemu-system-aarch64` and its shared
/// libraries, for `host.run=qemu` (the baseline: the same guest and tap under qemu with KVM).
pub fn build_host_with(
    layout: &Layout,
    vmm: Option<&Path>,
    guest: &GuestImages,
    qemu: bool,
) -> Result<HostImages> {
    let kernel = prepare_host_kernel(layout)?;
    let extras = HostExtras {
        qemu,
        ..HostExtras::default()
    };
    build_host_in(layout, &kernel, &layout.host_dir(), vmm, guest, &extras)
}

/// [`build_host_with`] qemu, plus Debian's arm64 `passt`: the host of the socket-link runs
/// (`host.run=link`, every `host.link`).
pub fn build_link_host(layout: &Layout, vmm: &Path, guest: &GuestImages) -> Result<HostImages> {
    let kernel = prepare_kernel(layout, &DebSources::default())?;
    let extras = HostExtras {
        qemu: true,
        passt: true,
        ..HostExtras::default()
    };
    build_host_in(
        layout,
        &kernel,
        &layout.host_dir(),
        Some(vmm),
        guest,
        &extras,
    )
}

/// What a host image carries beyond busybox, the LAN modules, the guest and the vmm.
#[derive(Debug, Default)]
struct HostExtras {
    /// Debian's arm64 `qemu-system-aarch64` and its libraries.
    qemu: bool,
    /// Debian's arm64 `iperf3` and its libraries.
    iperf3: bool,
    /// Debian's arm64 `passt` and its libraries.
    passt: bool,
    /// Debian's arm64 `perf` of the host kernel's version and its libraries.
    perf: bool,
    /// More kernel modules (with their dependencies), loaded after the LAN modules.
    modules: &'static [&'static str],
}

fn build_host_in(
    layout: &Layout,
    kernel: &Kernel,
    dir: &Path,
    vmm: Option<&Path>,
    guest: &GuestImages,
    extras: &HostExtras,
) -> Result<HostImages> {
    let start = Instant::now();
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let image = dir.join("Image");
    install_image(&kernel.image, &image)?;

    let mut fs = Initramfs::skeleton();
    fs.busybox(busybox(layout, &DebSources::default())?);
    let roots: Vec<&str> = HOST_MODULES.iter().chain(extras.modules).copied().collect();
    let modules = kernel.modules.load_order(&roots)?;
    progress(format!("host modules in load order: {}", names(&modules)));
    fs.modules(modules);
    fs.file("/init", 0o755, HOST_INIT);
    fs.dir("/run/netns");
    let read = |p: &Path| fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    fs.file("/guest/Image", 0o644, read(&guest.image)?);
    fs.file("/guest/initramfs.cpio.gz", 0o644, read(&guest.initramfs)?);
    if let Some(vmm) = vmm {
        let bin = read(vmm)?;
        elf::check_static_aarch64(&bin).with_context(|| format!("{}", vmm.display()))?;
        fs.file("/bin/vmm", 0o755, bin);
    } else {
        progress("no --vmm given: the host will set up its LAN but has no vmm to run");
    }
    if extras.qemu {
        add_bundle(
            &mut fs,
            bundle::bundle(layout, QEMU_PACKAGE, "usr/bin/qemu-system-aarch64")?,
        );
    }
    if extras.passt {
        add_bundle(
            &mut fs,
            bundle::bundle(layout, PASST_PACKAGE, "usr/bin/passt")?,
        );
    }
    if extras.iperf3 {
        add_bundle(
            &mut fs,
            bundle::bundle(layout, IPERF3_PACKAGE, "usr/bin/iperf3")?,
        );
    }
    if extras.perf {
        add_bundle(&mut fs, perf_bundle(layout, kernel)?);
    }
    let initramfs = dir.join("initramfs.cpio.gz");
    // The guest Image dominates and compresses poorly; a fast level keeps the build short.
    let size = fs.write_gz(&initramfs, 1)?;
    progress(format!(
        "host ready in {:.1} s: {}, {} ({:.1} MiB)",
        start.elapsed().as_secs_f64(),
        image.display(),
        initramfs.display(),
        size as f64 / (1024.0 * 1024.0)
    ));
    Ok(HostImages {
        image,
        initramfs,
        has_vmm: vmm.is_some(),
    })
}

/// The images of `firmware bench`, under [`Layout::bench_dir`] (the default images stay as
/// they are).
#[derive(Debug, Clone)]
pub struct BenchImages {
    /// The guest of [`build_guest`] plus `iperf3` and its libraries.
    pub guest: GuestImages,
    /// The host of [`build_host_with`] with qemu, plus `iperf3`, `passt` and their libraries
    /// and the `vhost_net` modules.
    pub host: HostImages,
}

/// Builds [`BenchImages`]: one guest, run unchanged by every VMM the bench compares, and the
/// host that runs them (`host.run=bench`). With `profile` the host also carries Debian's
/// `perf` (`firmware bench --profile`) and is written to `host-profile/`, so the host of the
/// plain bench stays as it is.
pub fn build_bench_images(layout: &Layout, vmm: &Path, profile: bool) -> Result<BenchImages> {
    let kernel = prepare_kernel(layout, &DebSources::default())?;
    let guest = iperf3_guest(layout, &kernel, &layout.bench_dir().join("guest"))?;
    let extras = HostExtras {
        qemu: true,
        iperf3: true,
        passt: true,
        perf: profile,
        modules: BENCH_HOST_MODULES,
    };
    let host = build_host_in(
        layout,
        &kernel,
        &layout
            .bench_dir()
            .join(if profile { "host-profile" } else { "host" }),
        Some(vmm),
        &guest,
        &extras,
    )?;
    Ok(BenchImages { guest, host })
}

/// The guest of [`build_guest`] (apt's packages) plus `iperf3` and its libraries, in `dir`.
fn iperf3_guest(layout: &Layout, kernel: &Kernel, dir: &Path) -> Result<GuestImages> {
    let start = Instant::now();
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let image = dir.join("Image");
    install_image(&kernel.image, &image)?;
    let mut fs = guest_initramfs(layout, kernel, &DebSources::default())?;
    add_bundle(
        &mut fs,
        bundle::bundle(layout, IPERF3_PACKAGE, "usr/bin/iperf3")?,
    );
    let initramfs = dir.join("initramfs.cpio.gz");
    let size = fs.write_gz(&initramfs, 9)?;
    progress(format!(
        "guest with iperf3 ready in {:.1} s: {} ({} KiB)",
        start.elapsed().as_secs_f64(),
        initramfs.display(),
        size / 1024
    ));
    Ok(GuestImages {
        image,
        initramfs,
        kernel_release: kernel.release.clone(),
    })
}

/// The images of the end-to-end run over vmnet-model (`host.run=vmnet-model`), under
/// `<root>/vmnet-model`: the guest with iperf3, and the host of [`build_host`] (the
/// bookworm-backports kernel) with `vmm` (built by [`crate::build_vmm_model`]) and iperf3
/// for the peer.
pub fn build_model_images(layout: &Layout, vmm: &Path) -> Result<(GuestImages, HostImages)> {
    let dir = layout.root.join("vmnet-model");
    let kernel = prepare_kernel(layout, &DebSources::default())?;
    let guest = iperf3_guest(layout, &kernel, &dir.join("guest"))?;
    let host_kernel = prepare_host_kernel(layout)?;
    let extras = HostExtras {
        iperf3: true,
        ..HostExtras::default()
    };
    let host = build_host_in(
        layout,
        &host_kernel,
        &dir.join("host"),
        Some(vmm),
        &guest,
        &extras,
    )?;
    Ok((guest, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debian_version_is_read_from_the_deb_file_name() {
        assert_eq!(
            deb_version(Path::new(
                "/c/linux-image-6.1.0-57-arm64_6.1.192-3_arm64.deb"
            ))
            .as_deref(),
            Some("6.1.192-3")
        );
        assert_eq!(
            deb_version(Path::new(
                "busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb"
            ))
            .as_deref(),
            Some("1:1.35.0-4+deb12u1+b1")
        );
        assert_eq!(deb_version(Path::new("odd.deb")), None);
    }
}
