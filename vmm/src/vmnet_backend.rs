//! `--net vmnet-*` on macOS: a vmnet.framework interface behind the virtio-net device.

use std::time::Duration;

use devices::net::Backend;
use devices::net::vmnet::VmnetBackend;

use crate::cli::NetSpec;

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
/// later: checksum and segmentation offload end to end), or without offloads where the system
/// does not know the header.
pub fn open(spec: &NetSpec) -> Result<Box<dyn Backend>, Box<dyn std::error::Error + Send + Sync>> {
    let opts = options(spec).ok_or("not a vmnet network")?;
    match VmnetBackend::start(&opts.clone().virtio_header(true).tso(true), START_TIMEOUT) {
        Ok(b) => return Ok(Box::new(b)),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(e.into()),
        Err(e) => tracing::info!(error = %e, "vmnet offloads unavailable; starting without"),
    }
    Ok(Box::new(VmnetBackend::start(&opts, START_TIMEOUT)?))
}
