//! The command line of `vmnet-dgram` (portable: parsed and tested on every host).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use vmnet::{Mode, Options};

pub const USAGE: &str = "\
vmnet-dgram: serves one vmnet interface to one datagram-socket client (vfkit, krunkit, QEMU's
-netdev dgram, or the vmm's --net dgram:PATH): one Ethernet frame per datagram, both ways.

Usage: vmnet-dgram (--socket PATH | --fd N) [OPTIONS]

The socket:
  --socket PATH          bind a Unix datagram socket at PATH (which must not exist); removed at exit;
                         under sudo it belongs to the user who ran sudo
  --fd N                 serve the inherited Unix datagram socket N (connected, e.g. one end of a
                         socketpair, or bound)
  --peer PATH            send to the client bound at PATH (default: link with the first sender,
                         and with a new one once that one has closed its socket; a 4-byte
                         \"VFKT\" hello, as vfkit sends, links without being a frame)

The interface (vmnet's interface_desc keys):
  --mode MODE            shared (default), host or bridged
  --interface NAME       the physical interface of bridged mode (e.g. en0)
  --interface-id UUID    a fixed interface UUID: the same UUID gives the same MAC address
  --mtu N                the MTU (shared and host modes)
  --start-address A      the DHCP range: first address, also the gateway (with the two below)
  --end-address A        the DHCP range: last address
  --subnet-mask M        the DHCP range: subnet mask
  --nat66-prefix P       the IPv6 ULA prefix of shared mode (fd00::/8)
  --isolate              isolate the interface from the others of its network
  --network-id UUID      host mode: a network of its own, shared with interfaces of the same UUID
  --checksum-offload     checksum offload (frames may carry partial checksums)
  --virtio-header        every frame on the socket starts with a 12-byte virtio-net header
  --tso                  TCP segmentation offload (needs --checksum-offload or --virtio-header)

Running:
  --stats-interval SECS  print the counters every SECS seconds (always printed at exit)
  --start-timeout SECS   how long to wait for vmnet to start the interface (default 10)
  -h, --help             this text

On start one JSON line on standard output gives the interface's parameters (MAC, MTU, maximum
packet size, DHCP range); the counters go to standard error as JSON lines. SIGINT or SIGTERM
stops the interface and exits. vmnet needs root (sudo), or on macOS 26 a binary signed with the
com.apple.security.virtualization entitlement.
";

/// Where the frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Bind this path.
    Path(PathBuf),
    /// An inherited descriptor.
    Fd(i32),
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Args {
    pub endpoint: Endpoint,
    pub peer: Option<PathBuf>,
    pub options: Options,
    pub stats_interval: Option<Duration>,
    pub start_timeout: Duration,
    /// Test-only (the `model` feature): a TAP joined to the model's segment of the interface.
    pub model_tap: Option<String>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Run(Box<Args>),
    Help,
}

fn value<'a>(flag: &str, it: &mut impl Iterator<Item = &'a str>) -> Result<&'a str, String> {
    it.next()
        .ok_or_else(|| format!("{flag} needs a value (see --help)"))
}

fn ipv4(flag: &str, s: &str) -> Result<Ipv4Addr, String> {
    s.parse()
        .map_err(|_| format!("{flag} {s:?}: not an IPv4 address"))
}

fn secs(flag: &str, s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{flag} {s:?}: give a number of seconds above 0 (at most a day)"
        )),
    }
}

/// A UUID in its usual text form (32 hex digits, dashes anywhere between pairs ignored).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 || s.starts_with('-') || s.ends_with('-') {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let digits = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

/// Parses the arguments after the program name.
pub fn parse<'a>(argv: impl IntoIterator<Item = &'a str>) -> Result<Parsed, String> {
    let mut it = argv.into_iter();
    let mut endpoint = None;
    let mut peer = None;
    let mut mode = Mode::Shared;
    let mut interface = None;
    let mut interface_id = None;
    let mut mtu = None;
    let (mut start, mut end, mut mask) = (None, None, None);
    let mut nat66 = None;
    let mut isolate = false;
    let mut network_id = None;
    let (mut csum, mut header, mut tso) = (false, false, false);
    let mut stats_interval = None;
    let mut start_timeout = Duration::from_secs(10);
    let mut model_tap = None;
    let set_endpoint = |slot: &mut Option<Endpoint>, e: Endpoint| {
        if slot.replace(e).is_some() {
            Err("give one of --socket PATH and --fd N, once".to_string())
        } else {
            Ok(())
        }
    };
    while let Some(flag) = it.next() {
        match flag {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--socket" => {
                let p = value(flag, &mut it)?;
                set_endpoint(&mut endpoint, Endpoint::Path(p.into()))?;
            }
            "--fd" => {
                let v = value(flag, &mut it)?;
                let n = v
                    .parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("--fd {v:?}: not a descriptor number"))?;
                set_endpoint(&mut endpoint, Endpoint::Fd(n))?;
            }
            "--peer" => peer = Some(PathBuf::from(value(flag, &mut it)?)),
            "--mode" => {
                mode = match value(flag, &mut it)? {
                    "shared" => Mode::Shared,
                    "host" => Mode::Host,
                    "bridged" => Mode::Bridged,
                    other => {
                        return Err(format!("--mode {other:?}: give shared, host or bridged"));
                    }
                }
            }
            "--interface" => interface = Some(value(flag, &mut it)?.to_owned()),
            "--interface-id" | "--network-id" => {
                let v = value(flag, &mut it)?;
                let id = parse_uuid(v).ok_or_else(|| {
                    format!("{flag} {v:?}: not a UUID (like 4c8a1e2d-0b6f-4f57-9a3e-1d2c3b4a5f60)")
                })?;
                if flag == "--interface-id" {
                    interface_id = Some(id);
                } else {
                    network_id = Some(id);
                }
            }
            "--mtu" => {
                let v = value(flag, &mut it)?;
                mtu = Some(
                    v.parse::<u32>()
                        .map_err(|_| format!("--mtu {v:?}: not a number"))?,
                );
            }
            "--start-address" => start = Some(ipv4(flag, value(flag, &mut it)?)?),
            "--end-address" => end = Some(ipv4(flag, value(flag, &mut it)?)?),
            "--subnet-mask" => mask = Some(ipv4(flag, value(flag, &mut it)?)?),
            "--nat66-prefix" => {
                let v = value(flag, &mut it)?;
                nat66 = Some(
                    v.parse::<Ipv6Addr>()
                        .map_err(|_| format!("--nat66-prefix {v:?}: not an IPv6 address"))?,
                );
            }
            "--isolate" => isolate = true,
            "--checksum-offload" => csum = true,
            "--virtio-header" => header = true,
            "--tso" => tso = true,
            "--stats-interval" => stats_interval = Some(secs(flag, value(flag, &mut it)?)?),
            "--start-timeout" => start_timeout = secs(flag, value(flag, &mut it)?)?,
            "--model-tap" if cfg!(feature = "model") => {
                model_tap = Some(value(flag, &mut it)?.to_owned());
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    let Some(endpoint) = endpoint else {
        return Err("give the socket: --socket PATH or --fd N (see --help)".into());
    };
    let mut options = Options::new(mode);
    if let Some(name) = interface {
        options = options.interface(name);
    }
    if let Some(id) = interface_id {
        options = options.interface_id(id);
    }
    if let Some(mtu) = mtu {
        options = options.mtu(mtu);
    }
    match (start, end, mask) {
        (Some(s), Some(e), Some(m)) => options = options.dhcp_range(s, e, m),
        (None, None, None) => {}
        _ => {
            return Err(
                "--start-address, --end-address and --subnet-mask go together: give all three"
                    .into(),
            );
        }
    }
    if let Some(p) = nat66 {
        options = options.nat66_prefix(p);
    }
    if isolate {
        options = options.isolation(true);
    }
    if let Some(id) = network_id {
        options = options.network_identifier(id);
    }
    if csum {
        options = options.checksum_offload(true);
    }
    if header {
        options = options.virtio_header(true);
    }
    if tso {
        options = options.tso(true);
    }
    options
        .validate()
        .map_err(|e| format!("the interface options: {e}"))?;
    Ok(Parsed::Run(Box::new(Args {
        endpoint,
        peer,
        options,
        stats_interval,
        start_timeout,
        model_tap,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> Result<Args, String> {
        match parse(line.split_whitespace())? {
            Parsed::Run(a) => Ok(*a),
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn a_socket_path_alone_serves_shared_mode() {
        let a = run("--socket /tmp/v.sock").unwrap();
        assert_eq!(a.endpoint, Endpoint::Path("/tmp/v.sock".into()));
        assert_eq!(a.options, Options::shared());
        assert_eq!((a.peer, a.stats_interval), (None, None));
        assert_eq!(a.start_timeout, Duration::from_secs(10));
    }

    #[test]
    fn every_interface_flag_reaches_the_options() {
        let a = run(
            "--fd 3 --mode shared --mtu 4000 --start-address 10.77.0.100 \
             --end-address 10.77.0.200 --subnet-mask 255.255.255.0 --nat66-prefix fd00:1::0 \
             --isolate --interface-id 4c8a1e2d-0b6f-4f57-9a3e-1d2c3b4a5f60 --virtio-header --tso \
             --stats-interval 0.5 --peer /tmp/c.sock",
        )
        .unwrap();
        let want = Options::shared()
            .mtu(4000)
            .dhcp_range(
                [10, 77, 0, 100].into(),
                [10, 77, 0, 200].into(),
                [255, 255, 255, 0].into(),
            )
            .nat66_prefix("fd00:1::".parse().unwrap())
            .isolation(true)
            .interface_id(parse_uuid("4c8a1e2d0b6f4f579a3e1d2c3b4a5f60").unwrap())
            .virtio_header(true)
            .tso(true);
        assert_eq!(a.options, want);
        assert_eq!(a.endpoint, Endpoint::Fd(3));
        assert_eq!(a.peer, Some("/tmp/c.sock".into()));
        assert_eq!(a.stats_interval, Some(Duration::from_millis(500)));
    }

    #[test]
    fn bridged_needs_its_interface_and_host_takes_a_network_id() {
        assert!(
            run("--socket s --mode bridged")
                .unwrap_err()
                .contains("en0")
        );
        let a = run("--socket s --mode bridged --interface en0").unwrap();
        assert_eq!(a.options, Options::bridged("en0"));
        let a = run("--socket s --mode host --network-id 00112233-4455-6677-8899-aabbccddeeff")
            .unwrap();
        assert_eq!(
            a.options,
            Options::host().network_identifier([
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ])
        );
    }

    #[test]
    fn bad_input_gets_a_one_line_error_that_names_the_fix() {
        for (line, says) in [
            ("", "--socket PATH or --fd N"),
            ("--socket a --fd 3", "once"),
            ("--socket", "needs a value"),
            ("--fd x", "not a descriptor"),
            ("--socket a --mode nat", "shared, host or bridged"),
            ("--socket a --start-address 10.0.0.1", "give all three"),
            ("--socket a --start-address 10.0.0", "not an IPv4"),
            ("--socket a --interface-id 1234", "not a UUID"),
            ("--socket a --mtu 100", "MTU 100"),
            ("--socket a --tso", "checksum"),
            ("--socket a --stats-interval 0", "above 0"),
            ("--socket a --frobnicate", "unknown argument"),
        ] {
            let e = run(line).unwrap_err();
            assert!(e.contains(says), "{line:?}: {e}");
            assert!(!e.contains('\n'), "{line:?}: {e}");
        }
    }

    #[test]
    fn help_is_asked_for() {
        assert_eq!(parse(["--socket", "a", "-h"]), Ok(Parsed::Help));
        assert!(USAGE.contains("--stats-interval"));
    }

    #[test]
    fn uuids_parse_with_and_without_dashes_only() {
        assert_eq!(
            parse_uuid("00112233445566778899aabbccddeeff"),
            parse_uuid("00112233-4455-6677-8899-aabbccddeeff")
        );
        assert_eq!(parse_uuid("0011223344556677889900aabbccddeeff"), None);
        assert_eq!(parse_uuid("zz112233445566778899aabbccddeeff"), None);
        assert_eq!(parse_uuid("-00112233445566778899aabbccddeeff"), None);
    }
}
