//! Builds a machine from the command line and runs it: the same code for every hypervisor.
//!
//! Order matters for error messages: everything a user can get wrong (files, sizes, network
//! backends) is checked before the hypervisor is touched, so a bad command line fails with the
//! same message on any host.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use devices::bus::MmioBus;
use devices::event::Notifier;
use devices::net::Backend;
use devices::serial::Pl011;
use devices::virtio::mmio::{MmioTransport, regs};
use devices::virtio::net::{Net, NetConfig, NetMetrics};
use devices::virtio::{GuestMemory, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::aarch64::fdt::{self, FdtConfig};
use crate::arch::aarch64::image::{ImageError, ImageHeader};
use crate::arch::aarch64::layout::{self, MmioSlot};
use crate::arch::aarch64::placement::{self, GuestRange, PlacementError};
use crate::arch::aarch64::psci::{Psci, PsciAction};
use crate::cli::{Args, CliError, NetDevice, NetSpec};
use crate::hv::{self, HvError, Vcpu, VcpuExit, Vm};

/// Why the VMM could not start; each message names the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The kernel file could not be read.
    #[error("cannot read the kernel {}", path.display())]
    KernelRead {
        /// The path given.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is not an arm64 Image.
    #[error("{} is not a bootable arm64 Image", path.display())]
    Image {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: ImageError,
    },
    /// The initrd could not be read.
    #[error("cannot read the initrd {}", path.display())]
    InitrdRead {
        /// The path given.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The images do not fit in guest memory.
    #[error("the kernel, initrd and device tree do not fit")]
    Placement(#[source] PlacementError),
    /// Invalid command-line combination.
    #[error("invalid command line")]
    Cli(#[source] CliError),
    /// Guest memory could not be allocated.
    #[error("cannot allocate {size} bytes of guest memory")]
    Memory {
        /// Requested size.
        size: u64,
        /// The error.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// Writing an image into guest memory failed.
    #[error("cannot load the {what} into guest memory")]
    Load {
        /// Which image.
        what: &'static str,
        /// The error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A network backend could not be opened.
    #[error("cannot set up network device {spec}")]
    Net {
        /// The `--net` value.
        spec: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The device tree could not be built.
    #[error("cannot build the device tree")]
    Fdt(#[source] fdt::FdtError),
    /// The hypervisor refused something.
    #[error(transparent)]
    Hv(#[from] HvError),
    /// Devices or threads could not be set up.
    #[error("cannot set up {what}")]
    Setup {
        /// What.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// How the guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// PSCI SYSTEM_OFF.
    PowerOff,
    /// PSCI SYSTEM_RESET (the VMM exits; a supervisor may restart it).
    Reset,
    /// The hypervisor reported a guest crash.
    Crash,
    /// The user left with Ctrl-A x.
    Quit,
    /// A vCPU failed.
    Error(String),
}

impl ExitReason {
    /// The process exit code: 0 power-off, 2 reset, 3 crash, 130 quit, 1 error.
    pub fn code(&self) -> i32 {
        match self {
            ExitReason::PowerOff => 0,
            ExitReason::Reset => 2,
            ExitReason::Crash => 3,
            ExitReason::Quit => 130,
            ExitReason::Error(_) => 1,
        }
    }
}

/// The boot images, read and placed.
#[derive(Debug)]
pub struct BootImages {
    kernel: Vec<u8>,
    initrd: Option<Vec<u8>>,
    /// Where everything goes in guest memory.
    pub layout: placement::BootLayout,
}

fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

/// Reads and checks the kernel and initrd and places them in `memory` bytes of RAM.
pub fn load_images(args: &Args) -> Result<BootImages, VmmError> {
    let kernel = read_file(&args.kernel).map_err(|source| VmmError::KernelRead {
        path: args.kernel.clone(),
        source,
    })?;
    let header = ImageHeader::from_image(&kernel).map_err(|source| VmmError::Image {
        path: args.kernel.clone(),
        source,
    })?;
    let initrd = match &args.initrd {
        Some(p) => Some(read_file(p).map_err(|source| VmmError::InitrdRead {
            path: p.clone(),
            source,
        })?),
        None => None,
    };
    let layout = placement::place(
        layout::RAM_BASE,
        args.memory,
        &header,
        kernel.len() as u64,
        initrd.as_ref().map(|i| i.len() as u64),
        layout::DTB_MAX_SIZE,
    )
    .map_err(VmmError::Placement)?;
    Ok(BootImages {
        kernel,
        initrd,
        layout,
    })
}

/// A backend opened for one `--net`, with the socket backends' own counters (logged at the end
/// of the run beside the device's).
pub struct OpenedBackend {
    /// The backend, for the device.
    pub backend: Box<dyn Backend>,
    /// A socket backend's counters (peer lost and found again, congestion drops, ...).
    pub socket_stats: Option<Arc<devices::net::socket::SocketStats>>,
}

impl std::fmt::Debug for OpenedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedBackend")
            .field("backend", &self.backend.info())
            .field("socket_stats", &self.socket_stats)
            .finish()
    }
}

/// Opens the backend of one `--net`. TAP exists on Linux, vmnet on macOS, the socket
/// backends on both. An `fd:` backend takes its descriptor from `inherited` (see
/// [`claim_inherited`]).
pub fn open_backend(
    spec: &NetSpec,
    inherited: &mut std::collections::HashMap<i32, std::os::fd::OwnedFd>,
    vmnet_offloads: crate::cli::VmnetOffloads,
) -> Result<OpenedBackend, VmmError> {
    use devices::net::socket::{SocketOptions, dgram::DgramBackend, stream::StreamBackend};
    let err = |source: Box<dyn std::error::Error + Send + Sync>| VmmError::Net {
        spec: spec.to_string(),
        source,
    };
    let opts = |mtu: &Option<u16>| SocketOptions {
        mtu: mtu.unwrap_or(devices::net::socket::DEFAULT_MTU),
    };
    let stream = |r: Result<StreamBackend, devices::net::socket::SocketError>| {
        let b = r.map_err(|e| err(Box::new(e)))?;
        let socket_stats = Some(Arc::clone(b.stats()));
        Ok(OpenedBackend {
            backend: Box::new(b),
            socket_stats,
        })
    };
    let dgram = |r: Result<DgramBackend, devices::net::socket::SocketError>| {
        let b = r.map_err(|e| err(Box::new(e)))?;
        let socket_stats = Some(Arc::clone(b.stats()));
        Ok(OpenedBackend {
            backend: Box::new(b),
            socket_stats,
        })
    };
    let other = |backend: Box<dyn Backend>| OpenedBackend {
        backend,
        socket_stats: None,
    };
    match spec {
        NetSpec::Stream { path, mtu } => stream(StreamBackend::connect(path, opts(mtu))),
        NetSpec::Dgram { path, vfkit, mtu } => {
            dgram(DgramBackend::connect(path, opts(mtu), *vfkit))
        }
        NetSpec::DgramListen { path, mtu } => dgram(DgramBackend::listen(path, opts(mtu))),
        NetSpec::Fd { fd, dgram: is_dgram, mtu } => {
            let owned = inherited
                .remove(fd)
                .ok_or_else(|| err(format!("descriptor {fd} was not claimed").into()))?;
            if *is_dgram {
                dgram(DgramBackend::from_fd(owned, opts(mtu)))
            } else {
                stream(StreamBackend::from_fd(owned, opts(mtu)))
            }
        }
        #[cfg(target_os = "linux")]
        NetSpec::Tap { name } => devices::net::tap::Tap::open(name)
            .map(|t| other(Box::new(t)))
            .map_err(|e| err(Box::new(e))),
        #[cfg(not(target_os = "linux"))]
        NetSpec::Tap { .. } => Err(err(
            "TAP devices exist on Linux only: on macOS use --net vmnet-shared, vmnet-host or vmnet-bridged:IFACE".into(),
        )),
        #[cfg(not(any(target_os = "macos", feature = "vmnet-model")))]
        NetSpec::VmnetShared | NetSpec::VmnetHost | NetSpec::VmnetBridged { .. } => {
            let _ = vmnet_offloads;
            Err(err(
                "vmnet networking needs macOS: on Linux use --net tap:NAME".into(),
            ))
        }
        #[cfg(any(target_os = "macos", feature = "vmnet-model"))]
        NetSpec::VmnetShared | NetSpec::VmnetHost | NetSpec::VmnetBridged { .. } => {
            crate::vmnet_backend::open(spec, vmnet_offloads)
                .map(other)
                .map_err(err)
        }
    }
}

/// A network device before it is placed on the bus.
struct NetPlan {
    backend: OpenedBackend,
    mac: Option<[u8; 6]>,
    name: String,
}

/// Takes ownership of the sockets that `fd:N` backends name, after checking that each is an
/// open socket of the kind given. Called before the VMM opens any descriptor of its own, so
/// that N is the inherited descriptor and not one the VMM created.
pub fn claim_inherited(
    devs: &[NetDevice],
) -> Result<std::collections::HashMap<i32, std::os::fd::OwnedFd>, VmmError> {
    use std::os::fd::FromRawFd;
    let mut out = std::collections::HashMap::new();
    for d in devs {
        if let NetSpec::Fd { fd, dgram, .. } = d.spec {
            let kind = if dgram {
                devices::net::socket::Kind::Dgram
            } else {
                devices::net::socket::Kind::Stream
            };
            devices::net::socket::check_fd(fd, kind).map_err(|e| VmmError::Net {
                spec: d.spec.to_string(),
                source: Box::new(e),
            })?;
            if out.contains_key(&fd) {
                continue;
            }
            // SAFETY: `fd` is open and a socket (checked above), above standard error, named
            // on the command line as inherited for this device, and claimed once (the command
            // line refuses a descriptor given twice) before the VMM opens descriptors of its
            // own: nothing else in the process owns it.
            out.insert(fd, unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        }
    }
    Ok(out)
}

/// Opens every network backend (before the hypervisor is touched).
fn open_networks(
    devs: &[NetDevice],
    vmnet_offloads: crate::cli::VmnetOffloads,
) -> Result<Vec<NetPlan>, VmmError> {
    let mut inherited = claim_inherited(devs)?;
    devs.iter()
        .enumerate()
        .map(|(i, d)| {
            Ok(NetPlan {
                backend: open_backend(&d.spec, &mut inherited, vmnet_offloads)?,
                mac: d.mac.map(|m| m.bytes()),
                name: format!("net{i}"),
            })
        })
        .collect()
}

/// Allocates guest RAM.
pub fn guest_memory(size: u64) -> Result<GuestMemory, VmmError> {
    GuestMemory::from_ranges(&[(GuestAddress(layout::RAM_BASE), size as usize)])
        .map_err(|source| VmmError::Memory { size, source })
}

/// What a parked vCPU thread is told.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// Run from `entry` with `x0` (boot, or PSCI CPU_ON).
    At { entry: u64, x0: u64 },
    /// The machine is going away.
    Quit,
}

/// Everything a vCPU thread shares with the others.
struct VcpuContext<V: Vm> {
    vm: Arc<V>,
    bus: Arc<MmioBus>,
    psci: Arc<Psci>,
    /// One sender per vCPU: how a parked vCPU is started (PSCI CPU_ON) or released.
    starts: Vec<Mutex<Sender<Start>>>,
    exit: Mutex<Sender<ExitReason>>,
    ended: AtomicBool,
}

impl<V: Vm> VcpuContext<V> {
    fn report(&self, reason: ExitReason) {
        if !self.ended.swap(true, Ordering::SeqCst) {
            let _ = self
                .exit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(reason);
        }
    }

    fn send(&self, index: usize, start: Start) -> Result<(), String> {
        self.starts
            .get(index)
            .ok_or_else(|| format!("no vCPU {index}"))?
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(start)
            .map_err(|_| format!("vCPU {index} is not waiting to start"))
    }

    /// A vCPU thread: creates its vCPU, waits until every vCPU exists (Hypervisor.framework
    /// fixes the GIC topology once vCPUs run), then runs whenever it is started.
    fn vcpu_thread(
        self: Arc<Self>,
        index: usize,
        seed: V::VcpuSeed,
        created: Arc<Barrier>,
        starts: Receiver<Start>,
    ) {
        let vcpu = self.vm.create_vcpu(seed);
        created.wait();
        let mut vcpu = match vcpu {
            Ok(v) => v,
            Err(e) => return self.report(ExitReason::Error(format!("vCPU {index}: {e}"))),
        };
        if self.vm.handles_psci() {
            // The hypervisor starts secondaries itself (CPU_ON inside the kernel); only the
            // boot vCPU gets registers from us, and every thread runs from the start.
            if index == 0 {
                match starts.recv() {
                    Ok(Start::At { entry, x0 }) => {
                        if let Err(e) = vcpu.set_boot_registers(entry, x0) {
                            return self.report(ExitReason::Error(format!("vCPU {index}: {e}")));
                        }
                    }
                    _ => return,
                }
            }
            return self.finish(index, self.run_vcpu(index, &mut vcpu));
        }
        // The VMM implements PSCI: park until CPU_ON (the boot vCPU is started at once), run
        // until CPU_OFF, park again. Every start begins from a cold vCPU: after CPU_OFF it still
        // holds the guest's MMU, caches and vectors, which the new entry point must not inherit.
        while let Ok(Start::At { entry, x0 }) = starts.recv() {
            if let Err(e) = vcpu
                .reset()
                .and_then(|()| vcpu.set_boot_registers(entry, x0))
            {
                self.psci.cpu_start_failed(index);
                return self.report(ExitReason::Error(format!("vCPU {index}: {e}")));
            }
            self.psci.cpu_started(index);
            match self.run_vcpu(index, &mut vcpu) {
                Ok(None) if !self.ended.load(Ordering::SeqCst) => continue,
                other => return self.finish(index, other),
            }
        }
    }

    fn finish(&self, index: usize, result: hv::Result<Option<ExitReason>>) {
        match result {
            Ok(Some(reason)) => self.report(reason),
            Ok(None) => {}
            Err(e) => self.report(ExitReason::Error(format!("vCPU {index}: {e}"))),
        }
    }

    /// The vCPU loop; `Ok(None)` when this vCPU turned itself off (PSCI CPU_OFF) or was
    /// stopped.
    fn run_vcpu(&self, index: usize, vcpu: &mut V::Vcpu) -> hv::Result<Option<ExitReason>> {
        loop {
            match vcpu.run(&self.bus)? {
                VcpuExit::Continue => {}
                VcpuExit::Stopped => return Ok(None),
                VcpuExit::SystemOff => return Ok(Some(ExitReason::PowerOff)),
                VcpuExit::SystemReset => return Ok(Some(ExitReason::Reset)),
                VcpuExit::Crash => return Ok(Some(ExitReason::Crash)),
                VcpuExit::Hypercall { x0, args } => {
                    let out = self.psci.handle(index, x0, args);
                    match out.action {
                        None => vcpu.set_x0(out.x0)?,
                        Some(PsciAction::StartCpu {
                            cpu,
                            entry,
                            context_id,
                        }) => {
                            vcpu.set_x0(out.x0)?;
                            if let Err(e) = self.send(
                                cpu,
                                Start::At {
                                    entry,
                                    x0: context_id,
                                },
                            ) {
                                tracing::warn!("PSCI CPU_ON: {e}");
                                self.psci.cpu_start_failed(cpu);
                            }
                        }
                        Some(PsciAction::CpuOff) => return Ok(None),
                        Some(PsciAction::SystemOff) => return Ok(Some(ExitReason::PowerOff)),
                        Some(PsciAction::SystemReset) => return Ok(Some(ExitReason::Reset)),
                    }
                }
            }
        }
    }
}

/// A virtio device to put on the machine: the device and the virtio-mmio slot (register
/// window and SPI) it takes. [`build`] wires every entry of one list of these to the bus and the
/// hypervisor, and describes the same list in the device tree, whatever the device.
struct VirtioSpec {
    device: Box<dyn VirtioDevice>,
    slot: MmioSlot,
}

/// The machine's virtio devices in slot order: the `--net` devices, slot `i` for the `i`-th.
fn virtio_devices(
    nets: Vec<NetPlan>,
    args: &Args,
    net_metrics: &mut Vec<NetCounters>,
) -> Result<Vec<VirtioSpec>, VmmError> {
    let mut out = Vec::with_capacity(nets.len());
    for (i, plan) in nets.into_iter().enumerate() {
        let slot = layout::virtio_mmio_slot(i).ok_or_else(|| {
            VmmError::Cli(CliError::TooManyNets {
                given: i + 1,
                max: layout::VIRTIO_MMIO_MAX_SLOTS,
            })
        })?;
        let net = Net::new(
            plan.backend.backend,
            NetConfig {
                mac: plan.mac,
                name: plan.name.clone(),
                tx_hold: Duration::from_micros(args.tx_hold_us.into()),
                rx_hold: Duration::from_micros(args.rx_hold_us.into()),
                ..Default::default()
            },
        );
        tracing::info!(
            device = %plan.name,
            mac = %devices::virtio::net::format_mac(&net.mac()),
            base = format_args!("{:#x}", slot.base),
            spi = slot.spi,
            "virtio-net device"
        );
        net_metrics.push(NetCounters {
            metrics: Arc::clone(net.metrics()),
            socket: plan.backend.socket_stats,
            name: plan.name,
        });
        out.push(VirtioSpec {
            device: Box::new(net),
            slot,
        });
    }
    Ok(out)
}

/// Puts every device of the list on the machine ([`wire_virtio`]) and describes the same list
/// in the device tree, a `virtio,mmio` node per slot; returns the transports in list order.
fn place_virtio<V: Vm>(
    vm: &V,
    mem: &GuestMemory,
    bus: &mut MmioBus,
    fdt_cfg: &mut FdtConfig,
    devices: Vec<VirtioSpec>,
) -> Result<Vec<Arc<Mutex<MmioTransport>>>, VmmError> {
    fdt_cfg.virtio_mmio = devices.iter().map(|d| d.slot).collect();
    devices
        .into_iter()
        .map(|d| wire_virtio(vm, mem, bus, d))
        .collect()
}

/// Puts one virtio device on the machine: its transport in the slot's window on the bus, its
/// interrupt notifier on the slot's SPI, and each queue's notifier on `QueueNotify` of the
/// window (where the hypervisor can take the store itself).
fn wire_virtio<V: Vm>(
    vm: &V,
    mem: &GuestMemory,
    bus: &mut MmioBus,
    spec: VirtioSpec,
) -> Result<Arc<Mutex<MmioTransport>>, VmmError> {
    let setup = |what| move |source| VmmError::Setup { what, source };
    let VirtioSpec { device, slot } = spec;
    let irq = Notifier::new().map_err(setup("an interrupt notifier"))?;
    vm.connect_irq(&irq, slot.spi)?;
    let transport =
        MmioTransport::new(device, mem.clone(), irq).map_err(setup("a virtio-mmio transport"))?;
    for (q, n) in transport.queue_notifiers().iter().enumerate() {
        vm.connect_queue_notify(n, slot.base + regs::QUEUE_NOTIFY, q as u32)?;
    }
    let transport = Arc::new(Mutex::new(transport));
    bus.insert(slot.base, slot.size, transport.clone())
        .map_err(|e| setup("a virtio-mmio window")(std::io::Error::other(e)))?;
    Ok(transport)
}

/// What the VMM set up, for logs and tests.
#[derive(Debug)]
pub struct Machine<V: Vm> {
    vm: V,
    mem: GuestMemory,
    bus: MmioBus,
    entry: u64,
    dtb: u64,
    /// The PL011, for the console's input thread.
    pub uart: Arc<Mutex<Pl011>>,
    /// The net devices' transports, in `--net` order.
    pub nets: Vec<Arc<Mutex<MmioTransport>>>,
    /// The net devices' names and counters, logged when the guest ends.
    net_metrics: Vec<NetCounters>,
}

/// Builds the machine: images placed, backends opened, then the VM created by `create_vm`,
/// devices wired to it, the device tree written.
pub fn build<V: Vm>(
    args: &Args,
    out: Box<dyn std::io::Write + Send>,
    create_vm: impl FnOnce(&GuestMemory, usize) -> hv::Result<V>,
) -> Result<Machine<V>, VmmError> {
    let images = load_images(args)?;
    let devs = args.net_devices().map_err(VmmError::Cli)?;
    let nets = open_networks(&devs, args.vmnet_offloads)?;
    let mem = guest_memory(args.memory)?;
    let l = images.layout;
    mem.write_slice(&images.kernel, GuestAddress(l.kernel_load))
        .map_err(|source| VmmError::Load {
            what: "kernel",
            source,
        })?;
    if let (Some(data), Some(range)) = (&images.initrd, l.initrd) {
        mem.write_slice(data, GuestAddress(range.start))
            .map_err(|source| VmmError::Load {
                what: "initrd",
                source,
            })?;
    }

    let vm = create_vm(&mem, args.cpus)?;
    let setup = |what| move |source| VmmError::Setup { what, source };
    let mut bus = MmioBus::new();
    let uart = Arc::new(Mutex::new(Pl011::new(out, vm.irq_line(layout::UART_SPI))));
    bus.insert(layout::UART_BASE, layout::UART_SIZE, uart.clone())
        .map_err(|e| setup("the console")(std::io::Error::other(e)))?;

    let mut fdt_cfg = FdtConfig::with_default_layout(args.cpus, args.memory, args.cmdline.clone());
    fdt_cfg.cpu_mpidrs = vm.mpidrs();
    fdt_cfg.initrd = l.initrd;
    let mut net_metrics = Vec::new();
    let devices = virtio_devices(nets, args, &mut net_metrics)?;
    let transports = place_virtio(&vm, &mem, &mut bus, &mut fdt_cfg, devices)?;
    fdt_cfg.psci = true;
    let blob = fdt::build(&fdt_cfg).map_err(VmmError::Fdt)?;
    mem.write_slice(&blob, GuestAddress(l.dtb.start))
        .map_err(|source| VmmError::Load {
            what: "device tree",
            source,
        })?;
    tracing::info!(
        kernel = format_args!("{:#x}", l.kernel_load),
        dtb = format_args!("{:#x}", l.dtb.start),
        initrd = ?l.initrd.map(|r: GuestRange| (r.start, r.len)),
        "boot layout"
    );
    Ok(Machine {
        vm,
        mem,
        bus,
        entry: l.kernel_load,
        dtb: l.dtb.start,
        uart,
        nets: transports,
        net_metrics,
    })
}

impl<V: Vm> Machine<V> {
    /// Runs the guest until it powers off, resets, crashes or the user quits (`quit` fires).
    pub fn run(mut self, quit: mpsc::Receiver<()>) -> ExitReason {
        let seeds = self.vm.take_vcpu_seeds();
        let (tx, rx) = mpsc::channel();
        let psci = Arc::new(Psci::new(self.vm.mpidrs()));
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..seeds.len()).map(|_| mpsc::channel::<Start>()).unzip();
        let ctx = Arc::new(VcpuContext {
            vm: Arc::new(self.vm),
            bus: Arc::new(self.bus),
            psci,
            starts: senders.into_iter().map(Mutex::new).collect(),
            exit: Mutex::new(tx.clone()),
            ended: AtomicBool::new(false),
        });
        // Forward the console's quit request into the same channel.
        let quit_tx = tx;
        let _ = thread::Builder::new().name("quit".into()).spawn(move || {
            if quit.recv().is_ok() {
                let _ = quit_tx.send(ExitReason::Quit);
            }
        });
        let created = Arc::new(Barrier::new(seeds.len()));
        let mut handles = Vec::with_capacity(seeds.len());
        // Each vCPU thread reports its end here (when its guard drops, even on a panic).
        let (done_tx, done_rx) = mpsc::channel::<usize>();
        for (i, (seed, starts)) in seeds.into_iter().zip(receivers).enumerate() {
            let (c, b) = (Arc::clone(&ctx), Arc::clone(&created));
            let done = Ended(done_tx.clone(), i);
            match thread::Builder::new()
                .name(format!("vcpu{i}"))
                .spawn(move || {
                    let _done = done;
                    c.vcpu_thread(i, seed, b, starts)
                }) {
                Ok(h) => handles.push(h),
                // The threads already started wait at the barrier forever; the process exits.
                Err(e) => return ExitReason::Error(format!("cannot start vCPU {i}: {e}")),
            }
        }
        if let Err(e) = ctx.send(
            0,
            Start::At {
                entry: self.entry,
                x0: self.dtb,
            },
        ) {
            return ExitReason::Error(e);
        }
        let reason = rx
            .recv()
            .unwrap_or_else(|_| ExitReason::Error("all vCPUs ended".into()));
        let stop_started = Instant::now();
        ctx.ended.store(true, Ordering::SeqCst);
        for i in 0..ctx.starts.len() {
            let _ = ctx.send(i, Start::Quit);
        }
        // Kick every vCPU out of the guest once (again only for a hypervisor that asks for it)
        // and wait (at most STOP_TIMEOUT) for the threads to end.
        drop(done_tx);
        let ended = stop_and_wait(
            &*ctx.vm,
            &done_rx,
            handles.len(),
            stop_started + STOP_TIMEOUT,
        );
        for (i, h) in handles.into_iter().enumerate() {
            // A thread that reported its end is past the vCPU loop: joining it cannot block.
            if ended[i] {
                let _ = h.join();
            } else {
                tracing::warn!(vcpu = i, "a vCPU thread did not stop in time");
            }
        }
        tracing::info!(
            ?reason,
            stop_ms = stop_started.elapsed().as_millis() as u64,
            "vCPUs stopped"
        );
        if !ctx.vm.handles_psci() {
            let served = ctx.psci.served();
            tracing::info!(
                calls = served.calls,
                cpu_on = served.cpu_on,
                cpu_off = served.cpu_off,
                "PSCI calls served by the VMM"
            );
        }
        for c in &self.net_metrics {
            log_net_counters(&c.name, &c.metrics);
            if let Some(sock) = &c.socket {
                log_socket_counters(&c.name, sock);
            }
        }
        drop(self.mem);
        reason
    }
}

/// How long the machine waits for its vCPU threads after asking them to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Reports the end of vCPU thread `.1` on its channel when dropped.
struct Ended(Sender<usize>, usize);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

/// Asks `vm` to stop its vCPUs and waits until each of the `threads` vCPU threads reported its
/// end (its index) on `done`, or `deadline` passed. The request is repeated only at the interval
/// the hypervisor asks for ([`Vm::stop_retry_interval`]). Returns which threads ended.
fn stop_and_wait<V: Vm>(
    vm: &V,
    done: &Receiver<usize>,
    threads: usize,
    deadline: Instant,
) -> Vec<bool> {
    vm.stop_vcpus();
    let retry = vm.stop_retry_interval();
    let mut ended = vec![false; threads];
    while ended.contains(&false) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match done.recv_timeout(retry.map_or(left, |r| r.min(left))) {
            Ok(i) => {
                if let Some(e) = ended.get_mut(i) {
                    *e = true;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if retry.is_some() {
                    vm.stop_vcpus();
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    ended
}

/// A net device's counters, and its socket backend's if it has one, for the end of a run.
#[derive(Debug)]
struct NetCounters {
    name: String,
    metrics: Arc<NetMetrics>,
    socket: Option<Arc<devices::net::socket::SocketStats>>,
}

/// One line with what a socket backend saw beyond the device's counters, for the end of a run.
fn log_socket_counters(name: &str, s: &devices::net::socket::SocketStats) {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    tracing::info!(
        device = name,
        zero_length = get(&s.zero_length),
        truncated = get(&s.truncated),
        congestion_drops = get(&s.congestion_drops),
        oversized = get(&s.oversized),
        disconnects = get(&s.disconnects),
        reconnects = get(&s.reconnects),
        "socket backend counters"
    );
}

/// One line with what a net device moved and what went wrong, for the end of a run.
fn log_net_counters(name: &str, m: &NetMetrics) {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    tracing::info!(
        device = name,
        tx_frames = get(&m.tx_frames),
        tx_bytes = get(&m.tx_bytes),
        tx_batches = get(&m.tx_batches),
        tx_kicks = get(&m.tx_kicks),
        tx_dropped = get(&m.tx_dropped),
        tx_errors = get(&m.tx_errors),
        rx_frames = get(&m.rx_frames),
        rx_bytes = get(&m.rx_bytes),
        rx_kicks = get(&m.rx_kicks),
        rx_no_buffers = get(&m.rx_no_buffers),
        rx_errors = get(&m.rx_errors),
        interrupts = get(&m.interrupts),
        bad_chains = get(&m.bad_chains),
        broken_queues = get(&m.broken_queues),
        "virtio-net counters"
    );
}

#[cfg(test)]
mod tests {
    //! The machine on a scripted hypervisor: device wiring, the device tree, and the vCPU loop
    //! with PSCI in the VMM (the Hypervisor.framework shape) and in the hypervisor (KVM's).

    use super::*;
    use std::collections::{HashMap, VecDeque};
    use std::io::Write;
    use std::sync::atomic::AtomicUsize;

    use devices::irq::IrqLine;

    use crate::arch::aarch64::psci::{CPU_OFF, CPU_ON_64, PSCI_VERSION, SYSTEM_OFF};

    /// What the fake hypervisor saw.
    #[derive(Default)]
    struct Seen {
        irqs: Vec<u32>,
        notifies: Vec<(u64, u32)>,
        boot: Vec<(usize, u64, u64)>,
        x0: Vec<(usize, u64)>,
        /// `(vCPU, "reset" | "boot" | "run")` in the order they happened.
        events: Vec<(usize, &'static str)>,
    }

    /// A scripted step of a fake vCPU.
    enum Step {
        /// Return this exit.
        Exit(VcpuExit),
        /// PSCI CPU_ON of `mpidr` at `entry`, issued again until it answers SUCCESS (the target
        /// may not have finished its CPU_OFF yet).
        CpuOnUntilSuccess { mpidr: u64, entry: u64 },
    }

    struct FakeVm {
        psci_in_hv: bool,
        cpus: usize,
        scripts: Mutex<HashMap<usize, VecDeque<Step>>>,
        seen: Arc<Mutex<Seen>>,
        stop: Arc<AtomicBool>,
        /// `stop_vcpus` calls so far.
        stops: Arc<AtomicUsize>,
        /// The first this many `stop_vcpus` calls are lost (a vCPU about to enter the guest).
        lost_stops: usize,
        /// What `stop_retry_interval` answers.
        retry: Option<Duration>,
        /// How long an idle vCPU takes to return once it saw the stop.
        linger: Duration,
    }

    struct FakeVcpu {
        index: usize,
        script: VecDeque<Step>,
        /// The CPU_ON being retried, with the number of `x0` writes seen when it was issued.
        retry: Option<(VcpuExit, usize)>,
        seen: Arc<Mutex<Seen>>,
        stop: Arc<AtomicBool>,
        linger: Duration,
    }

    struct NoLine;
    impl IrqLine for NoLine {
        fn set_level(&self, _: bool) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Vcpu for FakeVcpu {
        fn run(&mut self, _bus: &MmioBus) -> hv::Result<VcpuExit> {
            self.seen.lock().unwrap().events.push((self.index, "run"));
            if let Some((exit, issued)) = self.retry.take() {
                let answer = {
                    let seen = self.seen.lock().unwrap();
                    seen.x0
                        .iter()
                        .filter(|(i, _)| *i == self.index)
                        .nth(issued)
                        .map(|&(_, v)| v)
                };
                if answer != Some(0) {
                    thread::sleep(Duration::from_millis(1));
                    return Ok(self.issue(exit));
                }
            }
            match self.script.pop_front() {
                Some(Step::Exit(e)) => return Ok(e),
                Some(Step::CpuOnUntilSuccess { mpidr, entry }) => {
                    return Ok(self.issue(hvc(CPU_ON_64, [mpidr, entry, 0])));
                }
                None => {}
            }
            // Nothing scripted: idle like a vCPU in WFI until stopped.
            while !self.stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(1));
            }
            thread::sleep(self.linger);
            Ok(VcpuExit::Stopped)
        }
        fn set_x0(&mut self, value: u64) -> hv::Result<()> {
            self.seen.lock().unwrap().x0.push((self.index, value));
            Ok(())
        }
        fn reset(&mut self) -> hv::Result<()> {
            self.seen.lock().unwrap().events.push((self.index, "reset"));
            Ok(())
        }
        fn set_boot_registers(&mut self, entry: u64, x0: u64) -> hv::Result<()> {
            let mut seen = self.seen.lock().unwrap();
            seen.boot.push((self.index, entry, x0));
            seen.events.push((self.index, "boot"));
            Ok(())
        }
    }

    impl FakeVcpu {
        /// Returns the CPU_ON `exit`, to be issued again until it answers SUCCESS.
        fn issue(&mut self, exit: VcpuExit) -> VcpuExit {
            let answered = {
                let seen = self.seen.lock().unwrap();
                seen.x0.iter().filter(|(i, _)| *i == self.index).count()
            };
            self.retry = Some((exit, answered));
            exit
        }
    }

    impl Vm for FakeVm {
        type VcpuSeed = usize;
        type Vcpu = FakeVcpu;
        fn handles_psci(&self) -> bool {
            self.psci_in_hv
        }
        fn mpidrs(&self) -> Vec<u64> {
            (0..self.cpus).map(layout::mpidr_affinity).collect()
        }
        fn take_vcpu_seeds(&mut self) -> Vec<usize> {
            (0..self.cpus).collect()
        }
        fn create_vcpu(&self, index: usize) -> hv::Result<FakeVcpu> {
            let script = self
                .scripts
                .lock()
                .unwrap()
                .remove(&index)
                .unwrap_or_default();
            Ok(FakeVcpu {
                index,
                script,
                retry: None,
                seen: Arc::clone(&self.seen),
                stop: Arc::clone(&self.stop),
                linger: self.linger,
            })
        }
        fn connect_irq(&self, _: &Notifier, spi: u32) -> hv::Result<()> {
            self.seen.lock().unwrap().irqs.push(spi);
            Ok(())
        }
        fn irq_line(&self, _: u32) -> Arc<dyn IrqLine> {
            Arc::new(NoLine)
        }
        fn connect_queue_notify(&self, _: &Notifier, addr: u64, queue: u32) -> hv::Result<bool> {
            self.seen.lock().unwrap().notifies.push((addr, queue));
            Ok(true)
        }
        fn stop_vcpus(&self) {
            if self.stops.fetch_add(1, Ordering::SeqCst) >= self.lost_stops {
                self.stop.store(true, Ordering::SeqCst);
            }
        }
        fn stop_retry_interval(&self) -> Option<Duration> {
            self.retry
        }
    }

    struct Files(PathBuf);
    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A file with a valid arm64 Image header reserving 8 MiB.
    fn kernel(tag: &str) -> (Files, PathBuf) {
        let dir = std::env::temp_dir().join(format!("vmm-machine-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut h = vec![0u8; 4096];
        h[16..24].copy_from_slice(&(8u64 << 20).to_le_bytes());
        h[24..32].copy_from_slice(&0b1010u64.to_le_bytes());
        h[56..60].copy_from_slice(b"ARM\x64");
        let path = dir.join("Image");
        std::fs::File::create(&path).unwrap().write_all(&h).unwrap();
        (Files(dir), path)
    }

    fn args(kernel: &Path, cpus: usize) -> Args {
        use clap::Parser;
        Args::parse_from([
            "vmm",
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "64M",
            "--cpus",
            &cpus.to_string(),
        ])
    }

    fn fake(psci_in_hv: bool, cpus: usize, scripts: Vec<(usize, Vec<VcpuExit>)>) -> FakeVm {
        FakeVm {
            psci_in_hv,
            cpus,
            scripts: Mutex::new(
                scripts
                    .into_iter()
                    .map(|(i, s)| (i, s.into_iter().map(Step::Exit).collect()))
                    .collect(),
            ),
            seen: Arc::default(),
            stop: Arc::default(),
            stops: Arc::default(),
            lost_stops: 0,
            retry: None,
            linger: Duration::ZERO,
        }
    }

    fn run(vm: FakeVm, cpus: usize, tag: &str) -> (ExitReason, Arc<Mutex<Seen>>) {
        let (_files, k) = kernel(tag);
        let seen = Arc::clone(&vm.seen);
        let machine = build(&args(&k, cpus), Box::new(std::io::sink()), |_, _| Ok(vm)).unwrap();
        let (_quit_tx, quit_rx) = mpsc::channel();
        (machine.run(quit_rx), seen)
    }

    fn hvc(x0: u32, args: [u64; 3]) -> VcpuExit {
        VcpuExit::Hypercall {
            x0: u64::from(x0),
            args,
        }
    }

    /// The socket backends come with their own counters (logged at the end of a run); the
    /// device's counters cover the others.
    #[test]
    fn socket_backends_come_with_their_counters() {
        use std::os::unix::net::{UnixDatagram, UnixStream};
        let (d, _dpeer) = UnixDatagram::pair().unwrap();
        let (st, _speer) = UnixStream::pair().unwrap();
        let mut inherited = HashMap::new();
        inherited.insert(100, std::os::fd::OwnedFd::from(d));
        inherited.insert(101, std::os::fd::OwnedFd::from(st));
        for (fd, dgram) in [(100, true), (101, false)] {
            let spec = NetSpec::Fd {
                fd,
                dgram,
                mtu: None,
            };
            let opened =
                open_backend(&spec, &mut inherited, crate::cli::VmnetOffloads::Auto).unwrap();
            assert!(opened.socket_stats.is_some(), "{spec}: no socket counters");
        }
        assert!(inherited.is_empty(), "each inherited socket was taken");
    }

    #[test]
    fn the_boot_vcpu_starts_at_the_kernel_with_the_device_tree_in_x0() {
        let vm = fake(true, 1, vec![(0, vec![VcpuExit::SystemOff])]);
        let (reason, seen) = run(vm, 1, "boot");
        assert_eq!(reason, ExitReason::PowerOff);
        let seen = seen.lock().unwrap();
        let (cpu, entry, dtb) = seen.boot[0];
        assert_eq!((cpu, entry), (0, layout::RAM_BASE));
        assert!(
            dtb > entry && dtb < layout::RAM_BASE + (64 << 20),
            "dtb at {dtb:#x}"
        );
    }

    #[test]
    fn psci_in_the_vmm_starts_a_secondary_at_the_cpu_on_entry() {
        let mpidr1 = layout::mpidr_affinity(1);
        let vm = fake(
            false,
            2,
            vec![
                (
                    0,
                    vec![
                        hvc(PSCI_VERSION, [0; 3]),
                        hvc(CPU_ON_64, [mpidr1, 0x4010_0000, 0xabcd]),
                    ],
                ),
                (1, vec![hvc(SYSTEM_OFF, [0; 3])]),
            ],
        );
        let (reason, seen) = run(vm, 2, "cpuon");
        assert_eq!(reason, ExitReason::PowerOff);
        let seen = seen.lock().unwrap();
        assert!(
            seen.boot.contains(&(1, 0x4010_0000, 0xabcd)),
            "{:?}",
            seen.boot
        );
        // PSCI_VERSION answered 1.0, CPU_ON answered SUCCESS (0).
        assert_eq!(seen.x0[..2], [(0, 0x1_0000), (0, 0)]);
    }

    #[test]
    fn psci_in_the_vmm_resets_a_vcpu_before_every_start_even_after_cpu_off() {
        let mpidr1 = layout::mpidr_affinity(1);
        let vm = fake(false, 2, vec![]);
        vm.scripts.lock().unwrap().extend([
            (
                0,
                [
                    Step::CpuOnUntilSuccess {
                        mpidr: mpidr1,
                        entry: 0x4010_0000,
                    },
                    Step::CpuOnUntilSuccess {
                        mpidr: mpidr1,
                        entry: 0x4020_0000,
                    },
                ]
                .into_iter()
                .collect(),
            ),
            (
                1,
                [
                    Step::Exit(hvc(CPU_OFF, [0; 3])),
                    Step::Exit(hvc(SYSTEM_OFF, [0; 3])),
                ]
                .into_iter()
                .collect(),
            ),
        ]);
        let (reason, seen) = run(vm, 2, "cpuoffon");
        assert_eq!(reason, ExitReason::PowerOff);
        let seen = seen.lock().unwrap();
        let vcpu1: Vec<&str> = seen
            .events
            .iter()
            .filter(|(i, _)| *i == 1)
            .map(|&(_, e)| e)
            .collect();
        assert_eq!(
            vcpu1,
            ["reset", "boot", "run", "reset", "boot", "run"],
            "vCPU 1 must be reset before each start"
        );
        let starts: Vec<u64> = seen.boot.iter().filter(|b| b.0 == 1).map(|b| b.1).collect();
        assert_eq!(starts, [0x4010_0000, 0x4020_0000]);
        // The boot vCPU was reset too, before its first start.
        assert_eq!(
            seen.events.iter().find(|(i, _)| *i == 0),
            Some(&(0, "reset"))
        );
    }

    #[test]
    fn with_psci_in_the_hypervisor_only_the_boot_vcpu_gets_registers() {
        let vm = fake(true, 3, vec![(2, vec![VcpuExit::SystemReset])]);
        let (reason, seen) = run(vm, 3, "kvmpsci");
        assert_eq!(reason, ExitReason::Reset);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.boot.len(), 1);
        assert_eq!(seen.boot[0].0, 0);
    }

    #[test]
    fn a_crash_reported_by_the_hypervisor_ends_the_machine() {
        let vm = fake(true, 1, vec![(0, vec![VcpuExit::Crash])]);
        assert_eq!(run(vm, 1, "crash").0, ExitReason::Crash);
    }

    #[test]
    fn exit_codes_tell_power_off_from_reset_crash_quit_and_error() {
        let codes: Vec<i32> = [
            ExitReason::PowerOff,
            ExitReason::Reset,
            ExitReason::Crash,
            ExitReason::Quit,
            ExitReason::Error("x".into()),
        ]
        .iter()
        .map(ExitReason::code)
        .collect();
        assert_eq!(codes, [0, 2, 3, 130, 1]);
    }

    #[test]
    fn user_quit_stops_an_idle_guest() {
        let vm = fake(true, 2, vec![]);
        let (_files, k) = kernel("quit");
        let machine = build(&args(&k, 2), Box::new(std::io::sink()), |_, _| Ok(vm)).unwrap();
        let (quit_tx, quit_rx) = mpsc::channel();
        quit_tx.send(()).unwrap();
        assert_eq!(machine.run(quit_rx), ExitReason::Quit);
    }

    fn quit_at_once(vm: FakeVm, cpus: usize, tag: &str) -> ExitReason {
        let (_files, k) = kernel(tag);
        let machine = build(&args(&k, cpus), Box::new(std::io::sink()), |_, _| Ok(vm)).unwrap();
        let (quit_tx, quit_rx) = mpsc::channel();
        quit_tx.send(()).unwrap();
        machine.run(quit_rx)
    }

    #[test]
    fn one_stop_request_ends_the_vcpus_of_a_hypervisor_that_needs_no_retry() {
        // The vCPUs take a while to return after the stop, as a vCPU deep in a long exit would:
        // the machine must wait for them, not ask again.
        let vm = FakeVm {
            linger: Duration::from_millis(30),
            ..fake(true, 2, vec![])
        };
        let stops = Arc::clone(&vm.stops);
        assert_eq!(quit_at_once(vm, 2, "stoponce"), ExitReason::Quit);
        assert_eq!(stops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_lost_stop_request_is_repeated_when_the_hypervisor_asks_for_it() {
        let vm = FakeVm {
            lost_stops: 2,
            retry: Some(Duration::from_millis(5)),
            ..fake(true, 2, vec![])
        };
        let stops = Arc::clone(&vm.stops);
        let started = Instant::now();
        assert_eq!(quit_at_once(vm, 2, "stopretry"), ExitReason::Quit);
        assert!(stops.load(Ordering::SeqCst) >= 3);
        assert!(started.elapsed() < STOP_TIMEOUT, "{:?}", started.elapsed());
    }

    #[test]
    fn waiting_for_stuck_vcpus_ends_at_the_deadline_without_new_requests() {
        let vm = fake(true, 2, vec![]);
        let (tx, rx) = mpsc::channel::<usize>();
        tx.send(1).unwrap();
        let started = Instant::now();
        let ended = stop_and_wait(&vm, &rx, 2, started + Duration::from_millis(50));
        assert_eq!(ended, [false, true]);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(vm.stops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn each_net_device_gets_its_slot_interrupt_and_queue_notifiers() {
        if !std::path::Path::new("/dev/net/tun").exists() || unsafe_geteuid() != 0 {
            println!(
                "SKIPPED: each_net_device_gets_its_slot_interrupt_and_queue_notifiers: needs root and /dev/net/tun"
            );
            return;
        }
        let (_files, k) = kernel("nets");
        let pid = std::process::id() % 100_000;
        let (a, b) = (format!("vmt{pid}a"), format!("vmt{pid}b"));
        use clap::Parser;
        let args = Args::parse_from([
            "vmm",
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "64M",
            "--net",
            &format!("tap:{a}"),
            "--net",
            &format!("tap:{b}"),
        ]);
        let vm = fake(true, 1, vec![(0, vec![VcpuExit::SystemOff])]);
        let seen = Arc::clone(&vm.seen);
        let machine = build(&args, Box::new(std::io::sink()), |_, _| Ok(vm)).unwrap();
        assert_eq!(machine.nets.len(), 2);
        {
            let s = seen.lock().unwrap();
            let s0 = layout::virtio_mmio_slot(0).unwrap();
            let s1 = layout::virtio_mmio_slot(1).unwrap();
            assert_eq!(s.irqs, [s0.spi, s1.spi]);
            assert_eq!(
                s.notifies,
                [
                    (s0.base + regs::QUEUE_NOTIFY, 0),
                    (s0.base + regs::QUEUE_NOTIFY, 1),
                    (s1.base + regs::QUEUE_NOTIFY, 0),
                    (s1.base + regs::QUEUE_NOTIFY, 1),
                ]
            );
        }
        // The guest finds a virtio-net device behind the first window.
        let mut id = [0u8; 4];
        assert!(
            machine
                .bus
                .read(layout::virtio_mmio_slot(0).unwrap().base + 8, &mut id)
        );
        assert_eq!(u32::from_le_bytes(id), 1);
        let (_q, quit_rx) = mpsc::channel();
        assert_eq!(machine.run(quit_rx), ExitReason::PowerOff);
    }

    /// What the transport reads of a device: its ID and queue sizes. Enough to check where
    /// the machine puts a device; nothing here activates it.
    struct Probe {
        id: u32,
        queues: Vec<u16>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            self.id
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.queues
        }
        fn features(&self) -> u64 {
            devices::virtio::features::VERSION_1
        }
        fn read_config(&self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(
            &mut self,
            _: devices::virtio::ActivateContext,
        ) -> Result<(), devices::virtio::ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn every_virtio_device_of_the_list_is_wired_and_in_the_device_tree() {
        let vm = fake(true, 1, vec![]);
        let seen = Arc::clone(&vm.seen);
        let mem = guest_memory(64 << 20).unwrap();
        let mut bus = MmioBus::new();
        let mut cfg = FdtConfig::with_default_layout(1, 64 << 20, "");
        let s0 = layout::virtio_mmio_slot(0).unwrap();
        let s5 = layout::virtio_mmio_slot(5).unwrap();
        let list = vec![
            VirtioSpec {
                device: Box::new(Probe {
                    id: 4,
                    queues: vec![8],
                }),
                slot: s0,
            },
            VirtioSpec {
                device: Box::new(Probe {
                    id: 2,
                    queues: vec![8, 8, 8],
                }),
                slot: s5,
            },
        ];
        let transports = place_virtio(&vm, &mem, &mut bus, &mut cfg, list).unwrap();
        assert_eq!(transports.len(), 2);
        assert_eq!(cfg.virtio_mmio, [s0, s5]);
        {
            let s = seen.lock().unwrap();
            assert_eq!(s.irqs, [s0.spi, s5.spi]);
            let qn = regs::QUEUE_NOTIFY;
            assert_eq!(
                s.notifies,
                [
                    (s0.base + qn, 0),
                    (s5.base + qn, 0),
                    (s5.base + qn, 1),
                    (s5.base + qn, 2)
                ]
            );
        }
        // The guest finds each device behind its own window.
        for (slot, id) in [(s0, 4u32), (s5, 2)] {
            let mut b = [0u8; 4];
            assert!(bus.read(slot.base + regs::DEVICE_ID, &mut b));
            assert_eq!(u32::from_le_bytes(b), id);
        }
        // And the device tree names the same windows.
        let blob = fdt::build(&cfg).unwrap();
        for slot in [s0, s5] {
            let node = format!("virtio_mmio@{:x}\0", slot.base);
            assert!(
                blob.windows(node.len()).any(|w| w == node.as_bytes()),
                "{node} missing"
            );
        }
    }

    fn unsafe_geteuid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }
}
