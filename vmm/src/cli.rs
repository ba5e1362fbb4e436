//! The command line of the `vmm` binary.
//!
//! ```text
//! vmm --kernel Image [--initrd initramfs.cpio.gz] [--cmdline "..."] [--memory 512M] [--cpus 1]
//!     [--net tap:NAME | vmnet-shared | vmnet-host | vmnet-bridged:IFACE | stream:PATH
//!            | dgram:PATH[,vfkit] | dgram-listen:PATH | fd:N,stream|dgram]... [--mac MAC]...
//!     [--vmnet-offloads auto|on|off] [--log-level warn]
//! vmm check
//! ```
//!
//! `vmm check` probes the host without booting a guest ([`crate::check`]); every other command
//! line runs a VM ([`Invocation`]).
//!
//! Every value parser returns a [`CliError`] whose message names the problem and the fix on
//! one line; clap prints it after `invalid value '...' for '--option'`. Checks that involve
//! more than one option ([`Args::net_devices`]) or the host ([`validate_cpus`]) are run by the
//! VMM after parsing.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Parser, ValueEnum};
use thiserror::Error;

use crate::arch::aarch64::layout;

/// The kernel command line used when `--cmdline` is not given: the PL011 as console, early
/// console on the same UART before the driver probes, and power off instead of hanging on a
/// panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyAMA0 earlycon=pl011,mmio32,0x9000000 panic=-1";
/// The guest memory size used when `--memory` is not given.
pub const DEFAULT_MEMORY: &str = "512M";
/// Memory sizes are whole MiB: both hypervisors map guest memory in host pages (16 KiB on
/// Apple silicon), and the kernel is placed on a 2 MiB boundary.
pub const MEMORY_GRANULE: u64 = 1 << 20;

/// Errors in command-line values and combinations.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CliError {
    /// `--memory` is not a number with an optional unit.
    #[error(
        "'{0}' is not a memory size: use a number with an optional unit K, M, G or T (binary; a bare number is MiB), e.g. 512M or 2G"
    )]
    MemoryFormat(String),
    /// `--memory 0`.
    #[error("memory size must be more than 0: use e.g. 512M")]
    MemoryZero,
    /// `--memory` not a whole number of MiB.
    #[error("memory size of {0} bytes is not a whole number of MiB: round it to a multiple of 1M")]
    MemoryNotMibMultiple(u64),
    /// `--memory` larger than the guest memory map allows.
    #[error(
        "memory size '{given}' is more than the {max_gib} GiB the guest memory map has room for: use a smaller --memory"
    )]
    MemoryTooLarge {
        /// The value as given.
        given: String,
        /// The limit in GiB.
        max_gib: u64,
    },
    /// `--cpus` is not a number.
    #[error("'{0}' is not a vCPU count: use a whole number such as 1 or 4")]
    CpusFormat(String),
    /// `--cpus 0`.
    #[error("a VM needs at least one vCPU: use --cpus 1 or more")]
    CpusZero,
    /// `--cpus` more than the memory map (GIC redistributors) or the host allows.
    #[error(
        "--cpus {requested} is more than the {max} vCPUs {limit} supports: use --cpus {max} or fewer"
    )]
    TooManyCpus {
        /// Requested count.
        requested: usize,
        /// The limit.
        max: usize,
        /// What sets the limit ("the guest memory map", "this host").
        limit: &'static str,
    },
    /// `--net` is not one of the known forms.
    #[error(
        "'{0}' is not a network backend: use tap:NAME, vmnet-shared, vmnet-host, vmnet-bridged:IFACE, stream:PATH, dgram:PATH[,vfkit], dgram-listen:PATH or fd:N,stream|dgram"
    )]
    NetFormat(String),
    /// A socket backend without a path.
    #[error("'{0}' needs the path of a Unix socket, e.g. {0}/tmp/helper.sock")]
    NetSocketPath(String),
    /// `fd:` not followed by a descriptor and a kind.
    #[error(
        "'{0}' is not a descriptor backend: write fd:N,stream or fd:N,dgram, N being an inherited socket (3 or above)"
    )]
    NetFdFormat(String),
    /// An option of a socket backend that is unknown or does not apply.
    #[error(
        "'{option}' does not apply to '{spec}': stream takes mtu=N, dgram takes vfkit and mtu=N, dgram-listen and fd take mtu=N"
    )]
    NetOption {
        /// The `--net` value.
        spec: String,
        /// The option.
        option: String,
    },
    /// `mtu=` out of range.
    #[error("'{0}' is not a usable MTU: give mtu=N with N from 68 to 65520")]
    NetMtu(String),
    /// The same descriptor given to two devices.
    #[error("descriptor {0} is given to two network devices: give each fd: its own socket")]
    DuplicateFd(i32),
    /// An interface name that the OS would refuse.
    #[error(
        "'{name}' is not a valid interface name: {reason} (names are 1 to 15 characters without '/', ':' or whitespace)"
    )]
    InterfaceName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `--mac` is not six colon-separated hex bytes.
    #[error(
        "'{0}' is not a MAC address: write six hex bytes separated by colons, e.g. 52:54:00:12:34:56"
    )]
    MacFormat(String),
    /// `--mac ff:ff:ff:ff:ff:ff`.
    #[error(
        "{0} is the broadcast address, not a device address: use a unicast MAC such as 52:54:00:12:34:56"
    )]
    MacBroadcast(MacAddress),
    /// A MAC with the group bit set.
    #[error(
        "{0} is a multicast address (lowest bit of the first byte set): use a unicast MAC such as 52:54:00:12:34:56"
    )]
    MacMulticast(MacAddress),
    /// `--mac 00:00:00:00:00:00`.
    #[error("00:00:00:00:00:00 is not a usable MAC address: use e.g. 52:54:00:12:34:56")]
    MacZero,
    /// More `--mac` than `--net`.
    #[error(
        "{macs} --mac given for {nets} --net: give at most one --mac per --net, in the same order"
    )]
    TooManyMacs {
        /// Number of `--mac`.
        macs: usize,
        /// Number of `--net`.
        nets: usize,
    },
    /// The same MAC for two devices.
    #[error("MAC {0} is given to two network devices: give each --net its own --mac")]
    DuplicateMac(MacAddress),
    /// More `--net` than virtio-mmio slots.
    #[error("{given} --net given but the machine has {max} device slots: use at most {max}")]
    TooManyNets {
        /// Number of `--net`.
        given: usize,
        /// The slot count.
        max: usize,
    },
}

/// A network backend chosen with `--net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetSpec {
    /// `tap:NAME`: a Linux TAP device (created if missing, when permitted).
    Tap {
        /// Interface name, at most 15 characters.
        name: String,
    },
    /// `vmnet-shared`: vmnet shared mode (NAT through the host).
    VmnetShared,
    /// `vmnet-host`: vmnet host-only mode.
    VmnetHost,
    /// `vmnet-bridged:IFACE`: vmnet bridged onto a host interface.
    VmnetBridged {
        /// Host interface to bridge onto, e.g. `en0`.
        interface: String,
    },
    /// `stream:PATH[,mtu=N]`: a Unix stream socket, frames behind a 4-byte length (passt,
    /// socket_vmnet, QEMU's `-netdev stream`).
    Stream {
        /// The socket's path.
        path: PathBuf,
        /// The MTU offered to the guest (default 1500).
        mtu: Option<u16>,
    },
    /// `dgram:PATH[,vfkit][,mtu=N]`: a Unix datagram socket, a frame per datagram (gvproxy,
    /// vmnet-helper, QEMU's `-netdev dgram`); `vfkit` sends vfkit's hello first.
    Dgram {
        /// The socket's path.
        path: PathBuf,
        /// Send the `VFKT` hello.
        vfkit: bool,
        /// The MTU offered to the guest (default 1500).
        mtu: Option<u16>,
    },
    /// `dgram-listen:PATH[,mtu=N]`: binds a datagram socket at PATH and links with the first
    /// peer that sends to it (another VMM's `dgram:PATH`): VM-to-VM without root.
    DgramListen {
        /// The path to bind.
        path: PathBuf,
        /// The MTU offered to the guest (default 1500).
        mtu: Option<u16>,
    },
    /// `fd:N,stream|dgram[,mtu=N]`: a connected socket inherited as descriptor N.
    Fd {
        /// The descriptor.
        fd: i32,
        /// `true` for a datagram socket, `false` for a stream.
        dgram: bool,
        /// The MTU offered to the guest (default 1500).
        mtu: Option<u16>,
    },
}

/// Splits the trailing `,vfkit` and `,mtu=N` options off a socket backend's value (a path
/// may itself hold commas); returns the rest, whether `vfkit` was given, and the MTU.
fn socket_options(spec: &str, rest: &str) -> Result<(String, bool, Option<u16>), CliError> {
    let (mut vfkit, mut mtu) = (false, None);
    let mut end = rest.len();
    while let Some(comma) = rest[..end].rfind(',') {
        let last = &rest[comma + 1..end];
        if last == "vfkit" {
            vfkit = true;
        } else if let Some(v) = last.strip_prefix("mtu=") {
            let m: u16 = v
                .parse()
                .ok()
                .filter(|m| (68..=65520).contains(m))
                .ok_or_else(|| CliError::NetMtu(last.to_string()))?;
            mtu = Some(m);
        } else if last == "stream" || last == "dgram" {
            // The kind of an fd: backend, handled by its parser.
            break;
        } else if spec.starts_with("fd:") && rest[..comma].contains(',') {
            // Past the kind (fd:N,KIND,...): an option, and not one we know.
            return Err(CliError::NetOption {
                spec: spec.to_string(),
                option: last.to_string(),
            });
        } else {
            break;
        }
        end = comma;
    }
    let rest = rest[..end].to_string();
    Ok((rest, vfkit, mtu))
}

fn socket_spec(s: &str) -> Option<Result<NetSpec, CliError>> {
    let (prefix, rest) = s.split_once(':')?;
    if !matches!(prefix, "stream" | "dgram" | "dgram-listen" | "fd") {
        return None;
    }
    Some((|| {
        let (rest, vfkit, mtu) = socket_options(s, rest)?;
        if vfkit && prefix != "dgram" {
            return Err(CliError::NetOption {
                spec: s.to_string(),
                option: "vfkit".into(),
            });
        }
        if prefix == "fd" {
            let (n, kind) = rest
                .split_once(',')
                .ok_or_else(|| CliError::NetFdFormat(s.to_string()))?;
            let fd: i32 = n
                .parse()
                .ok()
                .filter(|&n| n >= 3)
                .ok_or_else(|| CliError::NetFdFormat(s.to_string()))?;
            let dgram = match kind {
                "stream" => false,
                "dgram" => true,
                _ => return Err(CliError::NetFdFormat(s.to_string())),
            };
            return Ok(NetSpec::Fd { fd, dgram, mtu });
        }
        if rest.is_empty() {
            return Err(CliError::NetSocketPath(format!("{prefix}:")));
        }
        let path = PathBuf::from(rest);
        Ok(match prefix {
            "stream" => NetSpec::Stream { path, mtu },
            "dgram" => NetSpec::Dgram { path, vfkit, mtu },
            _ => NetSpec::DgramListen { path, mtu },
        })
    })())
}

/// Checks an interface name with the device crate's rules ([`devices::net::check_ifname`], as
/// the TAP backend does): 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
///
/// # Errors
///
/// [`CliError::InterfaceName`] with the reason.
pub fn validate_ifname(name: &str) -> Result<(), CliError> {
    devices::net::check_ifname(name).map_err(|reason| CliError::InterfaceName {
        name: name.to_string(),
        reason,
    })
}

impl FromStr for NetSpec {
    type Err = CliError;

    fn from_str(s: &str) -> Result<Self, CliError> {
        match s {
            "vmnet-shared" => return Ok(Self::VmnetShared),
            "vmnet-host" => return Ok(Self::VmnetHost),
            _ => {}
        }
        if let Some(name) = s.strip_prefix("tap:") {
            validate_ifname(name)?;
            return Ok(Self::Tap {
                name: name.to_string(),
            });
        }
        if let Some(interface) = s.strip_prefix("vmnet-bridged:") {
            validate_ifname(interface)?;
            return Ok(Self::VmnetBridged {
                interface: interface.to_string(),
            });
        }
        if let Some(spec) = socket_spec(s) {
            return spec;
        }
        Err(CliError::NetFormat(s.to_string()))
    }
}

impl fmt::Display for NetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tap { name } => write!(f, "tap:{name}"),
            Self::VmnetShared => f.write_str("vmnet-shared"),
            Self::VmnetHost => f.write_str("vmnet-host"),
            Self::VmnetBridged { interface } => write!(f, "vmnet-bridged:{interface}"),
            Self::Stream { path, mtu } => {
                write!(f, "stream:{}", path.display())?;
                write_mtu(f, *mtu)
            }
            Self::Dgram { path, vfkit, mtu } => {
                write!(f, "dgram:{}", path.display())?;
                if *vfkit {
                    f.write_str(",vfkit")?;
                }
                write_mtu(f, *mtu)
            }
            Self::DgramListen { path, mtu } => {
                write!(f, "dgram-listen:{}", path.display())?;
                write_mtu(f, *mtu)
            }
            Self::Fd { fd, dgram, mtu } => {
                write!(f, "fd:{fd},{}", if *dgram { "dgram" } else { "stream" })?;
                write_mtu(f, *mtu)
            }
        }
    }
}

fn write_mtu(f: &mut fmt::Formatter<'_>, mtu: Option<u16>) -> fmt::Result {
    match mtu {
        Some(m) => write!(f, ",mtu={m}"),
        None => Ok(()),
    }
}

/// A unicast Ethernet MAC address given with `--mac`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// The six bytes.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddress {
    type Err = CliError;

    /// Parses `aa:bb:cc:dd:ee:ff` (either case) and refuses addresses a NIC must not use:
    /// broadcast, multicast (IEEE 802 group bit, bit 0 of the first byte) and all-zero.
    fn from_str(s: &str) -> Result<Self, CliError> {
        let format_err = || CliError::MacFormat(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(format_err)?;
            if part.len() != 2 || !part.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format_err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| format_err())?;
        }
        if parts.next().is_some() {
            return Err(format_err());
        }
        let mac = MacAddress(bytes);
        if bytes == [0xff; 6] {
            return Err(CliError::MacBroadcast(mac));
        }
        if bytes[0] & 1 != 0 {
            return Err(CliError::MacMulticast(mac));
        }
        if bytes == [0; 6] {
            return Err(CliError::MacZero);
        }
        Ok(mac)
    }
}

/// The virtio-net header and TSO on vmnet interfaces (`--vmnet-offloads`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum VmnetOffloads {
    /// Ask for them; start without where the system refuses them (before macOS 15.4).
    #[default]
    Auto,
    /// Require them: the VMM fails to start if the interface cannot have them.
    On,
    /// Never ask: every frame whole, without the header, checksums filled by the guest.
    Off,
}

/// Log verbosity (`--log-level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Also informational messages.
    Info,
    /// Also debugging detail.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// Parses a memory size into bytes: a number with an optional binary unit, case-insensitive:
/// `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB` (a trailing `B` is allowed: `512MB` is 512 MiB);
/// a bare number is MiB. The result is a whole number of MiB, more than 0 and at most
/// [`layout::RAM_MAX_SIZE`].
///
/// # Errors
///
/// [`CliError::MemoryFormat`], [`CliError::MemoryZero`], [`CliError::MemoryNotMibMultiple`]
/// or [`CliError::MemoryTooLarge`].
pub fn parse_memory(s: &str) -> Result<u64, CliError> {
    let format_err = || CliError::MemoryFormat(s.to_string());
    let trimmed = s.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    if number.is_empty() {
        return Err(format_err());
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 20,
        "k" | "kb" | "kib" => 10,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "b" => 0,
        _ => return Err(format_err()),
    };
    let too_large = || CliError::MemoryTooLarge {
        given: s.to_string(),
        max_gib: layout::RAM_MAX_SIZE >> 30,
    };
    // Digits only, so the only parse failure left is overflow.
    let value: u64 = number.parse().map_err(|_| too_large())?;
    let bytes = value.checked_mul(1 << shift).ok_or_else(too_large)?;
    if bytes == 0 {
        return Err(CliError::MemoryZero);
    }
    if bytes > layout::RAM_MAX_SIZE {
        return Err(too_large());
    }
    if bytes % MEMORY_GRANULE != 0 {
        return Err(CliError::MemoryNotMibMultiple(bytes));
    }
    Ok(bytes)
}

/// Parses a vCPU count: at least 1 and at most [`layout::max_vcpus`].
///
/// # Errors
///
/// [`CliError::CpusFormat`], [`CliError::CpusZero`] or [`CliError::TooManyCpus`].
pub fn parse_cpus(s: &str) -> Result<usize, CliError> {
    let trimmed = s.trim();
    if trimmed.is_empty() || !trimmed.chars().all(|c| c.is_ascii_digit()) {
        return Err(CliError::CpusFormat(s.to_string()));
    }
    let max = layout::max_vcpus();
    let too_many = |requested| CliError::TooManyCpus {
        requested,
        max,
        limit: "the guest memory map",
    };
    let count: usize = trimmed.parse().map_err(|_| too_many(usize::MAX))?;
    if count == 0 {
        return Err(CliError::CpusZero);
    }
    if count > max {
        return Err(too_many(count));
    }
    Ok(count)
}

/// Checks a vCPU count against what the host hypervisor supports (Hypervisor.framework's
/// `hv_vm_get_max_vcpu_count`, KVM's `KVM_CAP_MAX_VCPUS`) and the memory map. Returns the
/// count when it is accepted.
///
/// # Errors
///
/// [`CliError::CpusZero`], or [`CliError::TooManyCpus`] naming the limit that was hit.
pub fn validate_cpus(requested: usize, host_max: usize) -> Result<usize, CliError> {
    if requested == 0 {
        return Err(CliError::CpusZero);
    }
    if requested > layout::max_vcpus() {
        return Err(CliError::TooManyCpus {
            requested,
            max: layout::max_vcpus(),
            limit: "the guest memory map",
        });
    }
    if requested > host_max {
        return Err(CliError::TooManyCpus {
            requested,
            max: host_max,
            limit: "this host",
        });
    }
    Ok(requested)
}

/// One network device to create: its backend and, if given, its MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetDevice {
    /// The backend.
    pub spec: NetSpec,
    /// The MAC from `--mac`, or `None` to let the backend or the VMM choose.
    pub mac: Option<MacAddress>,
}

/// `vmm check`: what this host offers the VMM, without booting a guest.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "vmm check",
    version,
    about = "Probe this host (hypervisor, interrupt controller, networking) without booting a \
             guest: one line per fact with ok/FAIL and advice; exits non-zero when a guest \
             with networking cannot boot"
)]
pub struct CheckArgs {}

/// What the `vmm` command line asks for.
#[derive(Clone, Debug)]
pub enum Invocation {
    /// `vmm --kernel ...`: run a VM.
    Run(Args),
    /// `vmm check`.
    Check(CheckArgs),
}

/// The name of the check subcommand, the first argument.
pub const CHECK: &str = "check";

impl Invocation {
    /// Parses a command line (program name first): `check` as the first argument selects
    /// [`CheckArgs`], anything else is the VM's [`Args`], exactly as before the subcommand
    /// existed (no option of the VM takes a bare first argument). Exits with clap's message on
    /// an error, like `Parser::parse_from`.
    pub fn parse_from<I, T>(args: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        if args.get(1).is_some_and(|a| a == CHECK) {
            Self::Check(CheckArgs::parse_from(args.into_iter().skip(1)))
        } else {
            Self::Run(Args::parse_from(args))
        }
    }
}

/// The `vmm` command line.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "vmm",
    version,
    about = "Boot an arm64 Linux kernel with virtio-net, on Hypervisor.framework or KVM",
    after_help = "Run `vmm check` first: it probes this host without booting a guest and says \
                  what is missing."
)]
pub struct Args {
    /// The arm64 Linux kernel `Image` (uncompressed).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// An initrd or initramfs to load.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// The kernel command line.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,

    /// Guest memory: a number with unit K, M, G or T (binary; a bare number is MiB).
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_MEMORY, value_parser = parse_memory)]
    pub memory: u64,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_cpus)]
    pub cpus: usize,

    /// A network device. Repeat for more devices.
    ///
    /// tap:NAME (Linux), vmnet-shared, vmnet-host, vmnet-bridged:IFACE (macOS);
    /// stream:PATH: a Unix stream socket, frames behind a 4-byte length (passt,
    /// socket_vmnet, QEMU -netdev stream); dgram:PATH or dgram:PATH,vfkit: a Unix datagram socket, a
    /// frame per datagram (vmnet-helper, QEMU -netdev dgram; gvproxy needs ,vfkit);
    /// dgram-listen:PATH: bind PATH and link with the first peer that sends to it (another
    /// vmm's dgram:PATH: VM to VM without root); fd:N,stream|dgram: an inherited connected
    /// socket. Socket forms take ,mtu=N (default 1500).
    #[arg(long = "net", value_name = "SPEC", value_parser = NetSpec::from_str)]
    pub net: Vec<NetSpec>,

    /// MAC address of a network device, e.g. 52:54:00:12:34:56. The first --mac goes to the
    /// first --net, and so on; devices without one get the backend's or a generated address.
    #[arg(long = "mac", value_name = "MAC", value_parser = MacAddress::from_str)]
    pub mac: Vec<MacAddress>,

    /// TX coalescing of every network device, in microseconds: while the guest sends faster
    /// than one frame per wake-up, its kicks stay off and the device looks for frames again
    /// after this long (fewer guest exits per frame; a guest sending one frame at a time is
    /// never held). 0 turns it off; at most 1000.
    #[arg(long, value_name = "USECS", default_value_t = 150,
          value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub tx_hold_us: u16,

    /// RX interrupt holding of every network device, in microseconds: after a receive pass
    /// that delivered several frames, the guest's interrupt waits this long so that the frames
    /// arriving meanwhile share it (fewer interrupts and guest exits per frame; a frame that
    /// arrives alone is never held). 0 turns it off; at most 1000.
    #[arg(long, value_name = "USECS", default_value_t = 200,
          value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub rx_hold_us: u16,

    /// vmnet interfaces (--net vmnet-*): the virtio-net header and TCP segmentation offload,
    /// i.e. checksum and segmentation offload from the guest to vmnet (macOS 15.4 and later).
    /// auto asks for them and starts without where the system refuses; on fails instead; off
    /// never asks.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = VmnetOffloads::Auto)]
    pub vmnet_offloads: VmnetOffloads,

    /// Log verbosity.
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = LogLevel::Warn)]
    pub log_level: LogLevel,
}

impl Args {
    /// Pairs each `--net` with its `--mac` (in order) and checks the combination: at most one
    /// MAC per device, no MAC twice, no more devices than virtio-mmio slots.
    ///
    /// # Errors
    ///
    /// [`CliError::TooManyNets`], [`CliError::TooManyMacs`] or [`CliError::DuplicateMac`].
    pub fn net_devices(&self) -> Result<Vec<NetDevice>, CliError> {
        if self.net.len() > layout::VIRTIO_MMIO_MAX_SLOTS {
            return Err(CliError::TooManyNets {
                given: self.net.len(),
                max: layout::VIRTIO_MMIO_MAX_SLOTS,
            });
        }
        if self.mac.len() > self.net.len() {
            return Err(CliError::TooManyMacs {
                macs: self.mac.len(),
                nets: self.net.len(),
            });
        }
        let mut seen = HashSet::new();
        if let Some(dup) = self.mac.iter().find(|mac| !seen.insert(**mac)) {
            return Err(CliError::DuplicateMac(*dup));
        }
        let mut fds = HashSet::new();
        for spec in &self.net {
            if let NetSpec::Fd { fd, .. } = spec
                && !fds.insert(*fd)
            {
                return Err(CliError::DuplicateFd(*fd));
            }
        }
        Ok(self
            .net
            .iter()
            .enumerate()
            .map(|(i, spec)| NetDevice {
                spec: spec.clone(),
                mac: self.mac.get(i).copied(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("vmm").chain(args.iter().copied()))
    }

    fn mac(s: &str) -> MacAddress {
        s.parse().unwrap()
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn check_is_a_subcommand_and_everything_else_runs_a_vm() {
        assert!(matches!(
            Invocation::parse_from(["vmm", "check"]),
            Invocation::Check(_)
        ));
        match Invocation::parse_from(["vmm", "--kernel", "check"]) {
            Invocation::Run(a) => assert_eq!(a.kernel, PathBuf::from("check")),
            other => panic!("{other:?}"),
        }
        assert!(CheckArgs::try_parse_from(["vmm check", "--kernel", "Image"]).is_err());
        use clap::CommandFactory;
        CheckArgs::command().debug_assert();
    }

    #[test]
    fn kernel_alone_gives_the_defaults() {
        let args = parse(&["--kernel", "Image"]).unwrap();
        assert_eq!(args.kernel, PathBuf::from("Image"));
        assert_eq!(args.initrd, None);
        assert_eq!(args.cmdline, DEFAULT_CMDLINE);
        assert_eq!(args.memory, 512 * MIB);
        assert_eq!(args.cpus, 1);
        assert!(args.net.is_empty());
        assert!(args.mac.is_empty());
        assert_eq!(args.log_level, LogLevel::Warn);
    }

    #[test]
    fn missing_kernel_is_an_error() {
        let err = parse(&[]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn all_options_parse() {
        let args = parse(&[
            "--kernel",
            "Image",
            "--initrd",
            "initrd.gz",
            "--cmdline",
            "console=hvc0",
            "--memory",
            "1G",
            "--cpus",
            "4",
            "--net",
            "tap:tap0",
            "--net",
            "vmnet-shared",
            "--mac",
            "52:54:00:12:34:56",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(args.initrd, Some(PathBuf::from("initrd.gz")));
        assert_eq!(args.cmdline, "console=hvc0");
        assert_eq!(args.memory, 1 << 30);
        assert_eq!(args.cpus, 4);
        assert_eq!(
            args.net,
            [
                NetSpec::Tap {
                    name: "tap0".into()
                },
                NetSpec::VmnetShared
            ]
        );
        assert_eq!(args.mac, [mac("52:54:00:12:34:56")]);
        assert_eq!(args.log_level, LogLevel::Debug);
    }

    #[test]
    fn bad_memory_on_the_command_line_names_the_option_and_the_fix() {
        let err = parse(&["--kernel", "Image", "--memory", "lots"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--memory"), "{msg}");
        assert!(msg.contains("512M"), "{msg}");
    }

    #[test]
    fn cpus_zero_on_the_command_line_is_refused() {
        let err = parse(&["--kernel", "Image", "--cpus", "0"]).unwrap_err();
        assert!(err.to_string().contains("at least one vCPU"));
    }

    #[test]
    fn tx_hold_defaults_to_150_us_rx_hold_to_200_us_and_both_take_0_to_1000() {
        type Field = fn(&Args) -> u16;
        let holds: [(&str, u16, Field); 2] = [
            ("--tx-hold-us", 150, |a| a.tx_hold_us),
            ("--rx-hold-us", 200, |a| a.rx_hold_us),
        ];
        for (flag, default, get) in holds {
            assert_eq!(
                get(&parse(&["--kernel", "Image"]).unwrap()),
                default,
                "{flag}"
            );
            for us in [0u16, 1000] {
                let args = parse(&["--kernel", "Image", flag, &us.to_string()]).unwrap();
                assert_eq!(get(&args), us, "{flag} {us}");
            }
            let err = parse(&["--kernel", "Image", flag, "1001"]).unwrap_err();
            assert!(err.to_string().contains("0..=1000"), "{flag}: {err}");
        }
    }

    #[test]
    fn vmnet_offloads_default_to_auto_and_take_on_and_off() {
        let args = parse(&["--kernel", "Image"]).unwrap();
        assert_eq!(args.vmnet_offloads, VmnetOffloads::Auto);
        for (s, mode) in [
            ("auto", VmnetOffloads::Auto),
            ("on", VmnetOffloads::On),
            ("off", VmnetOffloads::Off),
        ] {
            let args = parse(&["--kernel", "Image", "--vmnet-offloads", s]).unwrap();
            assert_eq!(args.vmnet_offloads, mode);
        }
        let err = parse(&["--kernel", "Image", "--vmnet-offloads", "tso"]).unwrap_err();
        assert!(err.to_string().contains("--vmnet-offloads"), "{err}");
    }

    #[test]
    fn unknown_log_level_is_refused() {
        assert!(parse(&["--kernel", "Image", "--log-level", "verbose"]).is_err());
    }

    #[test]
    fn every_log_level_parses() {
        for (s, level) in [
            ("error", LogLevel::Error),
            ("warn", LogLevel::Warn),
            ("info", LogLevel::Info),
            ("debug", LogLevel::Debug),
            ("trace", LogLevel::Trace),
        ] {
            assert_eq!(
                parse(&["--kernel", "K", "--log-level", s])
                    .unwrap()
                    .log_level,
                level
            );
        }
    }

    #[test]
    fn log_level_converts_to_tracing_level() {
        assert_eq!(tracing::Level::from(LogLevel::Info), tracing::Level::INFO);
        assert_eq!(tracing::Level::from(LogLevel::Trace), tracing::Level::TRACE);
    }

    #[test]
    fn memory_units_are_binary() {
        assert_eq!(parse_memory("512M"), Ok(512 * MIB));
        assert_eq!(parse_memory("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_memory("512mb"), Ok(512 * MIB));
        assert_eq!(parse_memory("1G"), Ok(1 << 30));
        assert_eq!(parse_memory("1GiB"), Ok(1 << 30));
        assert_eq!(parse_memory("2g"), Ok(2 << 30));
    }

    #[test]
    fn bare_memory_number_is_mib() {
        assert_eq!(parse_memory("2048"), Ok(2048 * MIB));
    }

    #[test]
    fn memory_in_kib_and_bytes_is_accepted_when_whole_mib() {
        assert_eq!(parse_memory("1024K"), Ok(MIB));
        assert_eq!(parse_memory("1048576B"), Ok(MIB));
    }

    #[test]
    fn memory_not_a_whole_mib_is_refused() {
        assert_eq!(
            parse_memory("1500K"),
            Err(CliError::MemoryNotMibMultiple(1500 * 1024))
        );
    }

    #[test]
    fn memory_zero_is_refused() {
        assert_eq!(parse_memory("0"), Err(CliError::MemoryZero));
        assert_eq!(parse_memory("0G"), Err(CliError::MemoryZero));
    }

    #[test]
    fn memory_beyond_the_map_is_refused() {
        assert!(matches!(
            parse_memory("1T"),
            Err(CliError::MemoryTooLarge { max_gib: 1023, .. })
        ));
        assert!(matches!(
            parse_memory("99999999999999999999999G"),
            Err(CliError::MemoryTooLarge { .. })
        ));
        assert!(matches!(
            parse_memory("18446744073709551615G"),
            Err(CliError::MemoryTooLarge { .. })
        ));
    }

    #[test]
    fn memory_garbage_is_a_format_error() {
        for bad in ["", "M", "1.5G", "-1G", "12X", "1 G B", "0x100"] {
            assert!(
                matches!(parse_memory(bad), Err(CliError::MemoryFormat(_))),
                "{bad:?}: {:?}",
                parse_memory(bad)
            );
        }
    }

    #[test]
    fn memory_error_messages_are_one_line() {
        for bad in ["x", "0", "1500K", "5T"] {
            let msg = parse_memory(bad).unwrap_err().to_string();
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn cpus_parse_within_the_map() {
        assert_eq!(parse_cpus("1"), Ok(1));
        assert_eq!(parse_cpus("123"), Ok(123));
    }

    #[test]
    fn cpus_zero_is_refused() {
        assert_eq!(parse_cpus("0"), Err(CliError::CpusZero));
    }

    #[test]
    fn cpus_beyond_the_map_are_refused() {
        assert!(matches!(
            parse_cpus("124"),
            Err(CliError::TooManyCpus {
                requested: 124,
                max: 123,
                ..
            })
        ));
        assert!(matches!(
            parse_cpus("99999999999999999999999"),
            Err(CliError::TooManyCpus { .. })
        ));
    }

    #[test]
    fn cpus_garbage_is_a_format_error() {
        for bad in ["", "two", "-1", "1.5"] {
            assert!(
                matches!(parse_cpus(bad), Err(CliError::CpusFormat(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn validate_cpus_accepts_up_to_the_host_max() {
        assert_eq!(validate_cpus(4, 4), Ok(4));
    }

    #[test]
    fn validate_cpus_refuses_more_than_the_host_max_and_says_so() {
        let err = validate_cpus(8, 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--cpus 8 is more than the 4 vCPUs this host supports: use --cpus 4 or fewer"
        );
    }

    #[test]
    fn validate_cpus_refuses_zero() {
        assert_eq!(validate_cpus(0, 4), Err(CliError::CpusZero));
    }

    #[test]
    fn validate_cpus_refuses_more_than_the_map_even_on_a_big_host() {
        assert!(matches!(
            validate_cpus(200, 512),
            Err(CliError::TooManyCpus { max: 123, .. })
        ));
    }

    #[test]
    fn net_specs_parse() {
        assert_eq!(
            "tap:tap0".parse(),
            Ok(NetSpec::Tap {
                name: "tap0".into()
            })
        );
        assert_eq!("vmnet-shared".parse(), Ok(NetSpec::VmnetShared));
        assert_eq!("vmnet-host".parse(), Ok(NetSpec::VmnetHost));
        assert_eq!(
            "vmnet-bridged:en0".parse(),
            Ok(NetSpec::VmnetBridged {
                interface: "en0".into()
            })
        );
    }

    #[test]
    fn socket_specs_parse_with_their_options() {
        assert_eq!(
            "stream:/run/passt.socket".parse(),
            Ok(NetSpec::Stream {
                path: "/run/passt.socket".into(),
                mtu: None
            })
        );
        assert_eq!(
            "dgram:/tmp/a,b.sock,vfkit,mtu=9000".parse(),
            Ok(NetSpec::Dgram {
                path: "/tmp/a,b.sock".into(),
                vfkit: true,
                mtu: Some(9000)
            })
        );
        assert_eq!(
            "dgram-listen:/tmp/l.sock".parse(),
            Ok(NetSpec::DgramListen {
                path: "/tmp/l.sock".into(),
                mtu: None
            })
        );
        assert_eq!(
            "fd:3,dgram".parse(),
            Ok(NetSpec::Fd {
                fd: 3,
                dgram: true,
                mtu: None
            })
        );
        assert_eq!(
            "fd:7,stream,mtu=65520".parse(),
            Ok(NetSpec::Fd {
                fd: 7,
                dgram: false,
                mtu: Some(65520)
            })
        );
    }

    #[test]
    fn bad_socket_specs_say_what_to_write() {
        for (bad, want) in [
            ("stream:", "needs the path"),
            ("dgram:,vfkit", "needs the path"),
            ("fd:3", "fd:N,stream or fd:N,dgram"),
            ("fd:2,stream", "3 or above"),
            ("fd:x,dgram", "fd:N,stream"),
            ("fd:3,seqpacket", "fd:N,stream"),
            ("fd:3,dgram,bogus", "does not apply"),
            ("stream:/x,vfkit", "does not apply"),
            ("dgram:/x,mtu=67", "68 to 65520"),
            ("dgram:/x,mtu=big", "68 to 65520"),
        ] {
            let e = bad.parse::<NetSpec>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn one_descriptor_cannot_serve_two_devices() {
        let args = parse(&[
            "--kernel",
            "I",
            "--net",
            "fd:5,dgram",
            "--net",
            "fd:5,stream",
        ])
        .unwrap();
        assert_eq!(args.net_devices(), Err(CliError::DuplicateFd(5)));
    }

    #[test]
    fn net_spec_display_round_trips() {
        for s in [
            "tap:vm-tap.1",
            "vmnet-shared",
            "vmnet-host",
            "vmnet-bridged:en0",
            "stream:/run/user/1000/passt.socket,mtu=65520",
            "dgram:/tmp/gvproxy.sock,vfkit",
            "dgram-listen:/tmp/link.sock",
            "fd:3,dgram",
            "fd:4,stream,mtu=9000",
        ] {
            assert_eq!(s.parse::<NetSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn tap_name_of_15_characters_is_accepted() {
        assert!("tap:abcdefghijklmno".parse::<NetSpec>().is_ok());
    }

    #[test]
    fn tap_name_of_16_characters_is_refused() {
        let err = "tap:abcdefghijklmnop".parse::<NetSpec>().unwrap_err();
        assert!(matches!(err, CliError::InterfaceName { .. }));
        assert!(err.to_string().contains("longer than 15"));
    }

    #[test]
    fn empty_tap_name_is_refused() {
        assert!(matches!(
            "tap:".parse::<NetSpec>(),
            Err(CliError::InterfaceName {
                reason: "it is empty",
                ..
            })
        ));
    }

    #[test]
    fn tap_names_with_reserved_characters_are_refused() {
        for bad in [
            "tap:a/b", "tap:a:b", "tap:a b", "tap:.", "tap:..", "tap:a\tb",
        ] {
            assert!(
                matches!(bad.parse::<NetSpec>(), Err(CliError::InterfaceName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bridged_interface_name_is_validated() {
        assert!(matches!(
            "vmnet-bridged:".parse::<NetSpec>(),
            Err(CliError::InterfaceName { .. })
        ));
    }

    #[test]
    fn unknown_net_spec_lists_the_valid_forms() {
        for bad in ["tap", "vmnet", "vmnet-shared:x", "user", "TAP:tap0", ""] {
            let err = bad.parse::<NetSpec>().unwrap_err();
            assert!(matches!(err, CliError::NetFormat(_)), "{bad:?}");
            assert!(err.to_string().contains("vmnet-bridged:IFACE"));
        }
    }

    #[test]
    fn mac_parses_in_either_case_and_displays_lowercase() {
        let m = mac("52:54:00:AB:cd:Ef");
        assert_eq!(m.bytes(), [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
    }

    #[test]
    fn mac_with_wrong_shape_is_a_format_error() {
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "525400123456",
            "52:54:00:12:34:5",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:+5",
            "52:54:00:12:34:56:",
        ] {
            assert!(
                matches!(bad.parse::<MacAddress>(), Err(CliError::MacFormat(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn broadcast_mac_is_refused_as_broadcast() {
        assert!(matches!(
            "ff:ff:ff:ff:ff:ff".parse::<MacAddress>(),
            Err(CliError::MacBroadcast(_))
        ));
    }

    #[test]
    fn multicast_mac_is_refused_with_the_reason() {
        let err = "01:00:5e:00:00:01".parse::<MacAddress>().unwrap_err();
        assert!(matches!(err, CliError::MacMulticast(_)));
        assert!(err.to_string().contains("multicast"));
    }

    #[test]
    fn zero_mac_is_refused() {
        assert_eq!(
            "00:00:00:00:00:00".parse::<MacAddress>(),
            Err(CliError::MacZero)
        );
    }

    #[test]
    fn locally_administered_mac_is_accepted() {
        assert!("02:00:00:00:00:01".parse::<MacAddress>().is_ok());
    }

    #[test]
    fn macs_pair_with_nets_in_order() {
        let args = parse(&[
            "--kernel",
            "K",
            "--net",
            "tap:a",
            "--net",
            "tap:b",
            "--mac",
            "52:54:00:00:00:01",
            "--mac",
            "52:54:00:00:00:02",
        ])
        .unwrap();
        let devices = args.net_devices().unwrap();
        assert_eq!(devices[0].mac, Some(mac("52:54:00:00:00:01")));
        assert_eq!(devices[1].mac, Some(mac("52:54:00:00:00:02")));
        assert_eq!(devices[1].spec, NetSpec::Tap { name: "b".into() });
    }

    #[test]
    fn fewer_macs_than_nets_leave_the_rest_unset() {
        let args = parse(&[
            "--kernel",
            "K",
            "--net",
            "tap:a",
            "--net",
            "tap:b",
            "--mac",
            "52:54:00:00:00:01",
        ])
        .unwrap();
        let devices = args.net_devices().unwrap();
        assert_eq!(devices[0].mac, Some(mac("52:54:00:00:00:01")));
        assert_eq!(devices[1].mac, None);
    }

    #[test]
    fn more_macs_than_nets_are_refused() {
        let args = parse(&["--kernel", "K", "--mac", "52:54:00:00:00:01"]).unwrap();
        assert_eq!(
            args.net_devices(),
            Err(CliError::TooManyMacs { macs: 1, nets: 0 })
        );
    }

    #[test]
    fn the_same_mac_twice_is_refused() {
        let args = parse(&[
            "--kernel",
            "K",
            "--net",
            "tap:a",
            "--net",
            "tap:b",
            "--mac",
            "52:54:00:00:00:01",
            "--mac",
            "52:54:00:00:00:01",
        ])
        .unwrap();
        assert_eq!(
            args.net_devices(),
            Err(CliError::DuplicateMac(mac("52:54:00:00:00:01")))
        );
    }

    #[test]
    fn more_nets_than_device_slots_are_refused() {
        let mut args = parse(&["--kernel", "K"]).unwrap();
        args.net = vec![NetSpec::VmnetShared; layout::VIRTIO_MMIO_MAX_SLOTS + 1];
        assert!(matches!(
            args.net_devices(),
            Err(CliError::TooManyNets { .. })
        ));
    }

    #[test]
    fn default_cmdline_uses_the_layout_uart_address() {
        assert!(DEFAULT_CMDLINE.contains(&format!("{:#x}", layout::UART_BASE)));
    }
}
