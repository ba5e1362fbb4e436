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
        NetSpec::Tap { .. } => None,
    }
}

/// Starts the vmnet interface for `spec`.
pub fn open(spec: &NetSpec) -> Result<Box<dyn Backend>, Box<dyn std::error::Error + Send + Sync>> {
    let opts = options(spec).ok_or("not a vmnet network")?;
    let backend = VmnetBackend::start(&opts, START_TIMEOUT)?;
    Ok(Box::new(backend))
}
