//! Answers ARP and ICMP echo on a vmnet interface, the way a MirageOS-style application uses the
//! binding: raw frames in, raw frames out, in batches.
//!
//! ```text
//! sudo cargo run -p examples --example vmnet_echo -- [shared|host] [IP] [SECONDS]
//! ping <IP>        # from the host, in another terminal
//! ```
//!
//! Without an IP it answers for the last address of the interface's DHCP range. On systems other
//! than macOS it only says that vmnet is macOS-only.

#[cfg(target_os = "macos")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use devices::virtio::net::format_mac;
    use examples::echo::Responder;
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};
    use vmnet::{Interface, Options};

    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match args.first().map(String::as_str) {
        None | Some("shared") => Options::shared(),
        Some("host") => Options::host(),
        Some(other) => return Err(format!("unknown mode {other:?}: shared or host").into()),
    };
    let iface = match Interface::start(&options, Duration::from_secs(10)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("cannot start the interface: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            std::process::exit(1);
        }
    };
    let p = iface.params().clone();
    let ip: Ipv4Addr = match args.get(1) {
        Some(s) => s.parse()?,
        None => p
            .end_address
            .ok_or("the interface reported no DHCP range: give an IP")?,
    };
    let mac = p.mac.unwrap_or([0x02, 0x76, 0x6d, 0x6e, 0x65, 0x74]);
    let seconds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(60);
    let responder = Responder::new(mac, ip);
    println!(
        "answering ARP and ping for {ip} ({}) for {seconds} s; host side {:?}, MTU {}",
        format_mac(&mac),
        p.start_address,
        p.mtu
    );

    let batch = p.read_batch();
    let mut bufs = vec![vec![0u8; p.max_packet_size]; batch];
    let mut lens = vec![0usize; batch];
    let mut replies: Vec<Vec<u8>> = Vec::with_capacity(batch);
    let (mut seen, mut answered) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if !iface.wait_readable(Some(Duration::from_millis(500))) {
            continue;
        }
        loop {
            let n = iface.read_batch(&mut bufs, &mut lens)?;
            replies.clear();
            for i in 0..n {
                let mut out = vec![0u8; p.max_packet_size];
                if let Some(len) = responder.reply(&bufs[i][..lens[i]], &mut out) {
                    out.truncate(len);
                    replies.push(out);
                }
            }
            seen += n as u64;
            if !replies.is_empty() {
                answered += iface.write_batch(&replies)? as u64;
            }
            if n < batch {
                break;
            }
        }
    }
    println!("{seen} frames seen, {answered} answered");
    iface.stop(Duration::from_secs(5))?;
    Ok(())
}

#[cfg(not(target_os = "macos"))]
fn main() {
    println!("vmnet is macOS-only: this example does nothing here");
}
