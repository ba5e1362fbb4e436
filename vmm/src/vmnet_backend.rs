//! `--net vmnet-*`: a vmnet.framework interface behind the virtio-net device, on macOS; on
//! Linux with the test-only `vmnet-model` feature, the same code over `vmnet-model`, the model
//! of the framework that CI runs (it stands in for the framework, it is not a run on a Mac).

use std::time::Duration;

use devices::net::Backend;
use devices::net::vmnet::VmnetBackend;

use crate::cli::{NetSpec, VmnetOffloads};

/// How long to wait for vmnet's start completion handler.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The vmnet options for a `--net` value; `None` for non-vmnet specs.
pub fn options(spec: &NetSpec) -> Option<vmnet::Options> {
    match spec {
        NetSpec::VmnetShared => Some(vmnet::Options::shared()),
        NetSpec::VmnetHost => Some(vmnet::Options::host()),
        NetSpec::VmnetBridged { interface } => Some(vmnet::Options::bridged(interface.clone())),
        _ => None,
    }
}

/// Starts the vmnet interface for `spec`: with the virtio-net header and TSO (macOS 15.4 and
/// later: checksum and segmentation offload end to end) unless `offloads` is
/// [`VmnetOffloads::Off`]; [`VmnetOffloads::Auto`] starts without them where the system does
/// not know the header, [`VmnetOffloads::On`] fails there.
pub fn open(
    spec: &NetSpec,
    offloads: VmnetOffloads,
) -> Result<Box<dyn Backend>, Box<dyn std::error::Error + Send + Sync>> {
    let opts = options(spec).ok_or("not a vmnet network")?;
    #[cfg(not(target_os = "macos"))]
    model::join_tap(spec)?;
    if offloads != VmnetOffloads::Off {
        match VmnetBackend::start(&opts.clone().virtio_header(true).tso(true), START_TIMEOUT) {
            Ok(b) => {
                tracing::info!("vmnet interface started with the virtio-net header and TSO");
                return Ok(Box::new(b));
            }
            Err(e) if offloads == VmnetOffloads::On => {
                return Err(format!("vmnet with the virtio-net header and TSO: {e}").into());
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(e.into()),
            Err(e) => tracing::info!(error = %e, "vmnet offloads unavailable; starting without"),
        }
    }
    let b = VmnetBackend::start(&opts, START_TIMEOUT)?;
    tracing::info!("vmnet interface started without offloads");
    Ok(Box::new(b))
}

/// The model's side of the host (Linux, `vmnet-model` feature only).
#[cfg(not(target_os = "macos"))]
mod model {
    use std::sync::Mutex;

    use vmnet_model::vmnet::{Tap, TapSegment, attach_tap};

    use crate::cli::NetSpec;

    /// The environment variable naming a TAP device that plays the host's side of the model's
    /// shared or host network (as the host's bridge interface does on a Mac), so that a Linux
    /// network stack (a LAN peer) is reachable from the guest. Unset: the model's segment has
    /// only its gateway (shared mode) and other interfaces.
    pub const TAP_ENV: &str = "VMNET_MODEL_TAP";

    /// The joined TAPs, kept for the life of the process.
    static TAPS: Mutex<Vec<Tap>> = Mutex::new(Vec::new());

    /// Joins the TAP of [`TAP_ENV`] (an existing TAP, e.g. made persistent by `ip tuntap add`,
    /// or a new one) to the segment of `spec`, once per segment.
    pub fn join_tap(spec: &NetSpec) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let Some(name) = std::env::var_os(TAP_ENV) else {
            return Ok(());
        };
        let name = name.to_str().ok_or("VMNET_MODEL_TAP is not UTF-8")?;
        let segment = match spec {
            NetSpec::VmnetShared => TapSegment::Shared,
            NetSpec::VmnetHost => TapSegment::Host,
            _ => return Err("VMNET_MODEL_TAP joins shared or host mode only".into()),
        };
        let mut taps = TAPS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !taps.is_empty() {
            return Ok(());
        }
        let tap = attach_tap(name, segment)
            .map_err(|e| format!("{TAP_ENV}={name}: cannot attach the TAP to the model: {e}"))?;
        tracing::info!(
            tap = name,
            ?segment,
            "vmnet-model: TAP joined to the model's network"
        );
        taps.push(tap);
        Ok(())
    }
}
