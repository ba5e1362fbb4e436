//! A throw-away LAN on the build machine, for booting the guest directly under qemu: two
//! network namespaces that are removed (with everything in them) when the [`Lan`] is dropped.
//!
//! ```text
//!  namespace fwlan-<pid>                            namespace fwpeer-<pid>
//!  qemu -netdev tap ── tap0 ─┐
//!                            br0 ── veth-br ═══════ veth-peer 10.0.2.1/24
//! ```
//!
//! Nothing is added to the machine's own namespace. Needs root.

use std::ffi::OsString;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::progress;

/// A LAN of a bridge, a tap for the guest and a peer in its own namespace.
#[derive(Debug)]
pub struct Lan {
    /// The namespace holding the bridge and the tap (qemu runs in it).
    pub netns: String,
    /// The namespace of the peer.
    pub peer_netns: String,
    /// The tap the guest's NIC uses.
    pub tap: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (Debian package iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Lan {
    /// The peer's address.
    pub const PEER_ADDR: &str = "10.0.2.1";

    /// Creates the namespaces, bridge, tap and veth pair.
    pub fn create() -> Result<Self> {
        let pid = std::process::id();
        let lan = Self {
            netns: format!("fwlan-{pid}"),
            peer_netns: format!("fwpeer-{pid}"),
            tap: "tap0".to_string(),
        };
        progress(format!(
            "creating the LAN: namespaces {} (br0, {}) and {} ({}/24)",
            lan.netns,
            lan.tap,
            lan.peer_netns,
            Self::PEER_ADDR
        ));
        ip(&["netns", "add", &lan.netns])
            .context("cannot create a network namespace (this needs root)")?;
        // From here on, Drop removes what exists.
        ip(&["netns", "add", &lan.peer_netns])?;
        let (n, p) = (lan.netns.as_str(), lan.peer_netns.as_str());
        for args in [
            vec!["-n", n, "link", "set", "lo", "up"],
            vec!["-n", n, "link", "add", "br0", "type", "bridge"],
            vec!["-n", n, "link", "set", "br0", "up"],
            vec!["-n", n, "tuntap", "add", &lan.tap, "mode", "tap"],
            vec!["-n", n, "link", "set", &lan.tap, "master", "br0", "up"],
            vec![
                "-n",
                n,
                "link",
                "add",
                "veth-br",
                "type",
                "veth",
                "peer",
                "name",
                "veth-peer",
                "netns",
                p,
            ],
            vec!["-n", n, "link", "set", "veth-br", "master", "br0", "up"],
            vec!["-n", p, "link", "set", "lo", "up"],
            vec!["-n", p, "addr", "add", "10.0.2.1/24", "dev", "veth-peer"],
            vec!["-n", p, "link", "set", "veth-peer", "up"],
        ] {
            ip(&args)?;
        }
        Ok(lan)
    }

    /// `ip netns exec <netns>`: the program and arguments that run a command inside the LAN.
    pub fn exec_prefix(&self) -> (String, Vec<OsString>) {
        (
            "ip".to_string(),
            vec!["netns".into(), "exec".into(), self.netns.clone().into()],
        )
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a namespace destroys the interfaces in it (the veth pair with either end).
        for ns in [&self.netns, &self.peer_netns] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                progress(format!("warning: {e:#}"));
            }
        }
        progress(format!(
            "removed namespaces {} and {}",
            self.netns, self.peer_netns
        ));
    }
}
