//! The async API without any runtime: a hand-written `block_on` (`examples::exec`) drives an
//! ARP/ICMP responder over `AsyncInterface::recv_batch`/`send_batch`. tokio or smol would drive
//! it the same way.
//!
//! ```text
//! sudo cargo run -p examples --example vmnet_async -- [IP] [SECONDS]
//! ```
//!
//! On systems other than macOS it only says that vmnet is macOS-only.

#[cfg(target_os = "macos")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use examples::echo::Responder;
    use examples::exec;
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};
    use vmnet::{AsyncInterface, Options};

    let args: Vec<String> = std::env::args().skip(1).collect();
    let iface = AsyncInterface::start(&Options::shared(), Duration::from_secs(10))?;
    let p = iface.get_ref().params().clone();
    let ip: Ipv4Addr = match args.first() {
        Some(s) => s.parse()?,
        None => p.end_address.ok_or("no DHCP range reported: give an IP")?,
    };
    let seconds: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(60);
    let responder = Responder::new(p.mac.unwrap_or([0x02, 0, 0, 0, 0, 0x42]), ip);
    println!("async responder for {ip} during {seconds} s");

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let answered = exec::block_on(async {
        let mut bufs = vec![vec![0u8; p.max_packet_size]; p.read_batch()];
        let mut lens = vec![0usize; bufs.len()];
        let mut answered = 0usize;
        // recv_batch waits for the next event; frames keep coming on a live network, so the
        // deadline is checked between batches.
        while Instant::now() < deadline {
            let n = iface.recv_batch(&mut bufs, &mut lens).await?;
            let mut replies = Vec::new();
            for i in 0..n {
                let mut out = vec![0u8; p.max_packet_size];
                if let Some(len) = responder.reply(&bufs[i][..lens[i]], &mut out) {
                    out.truncate(len);
                    replies.push(out);
                }
            }
            if !replies.is_empty() {
                answered += iface.send_batch(&replies).await?;
            }
        }
        Ok::<_, vmnet::Error>(answered)
    })?;
    println!("{answered} replies sent");
    iface.into_inner().stop(Duration::from_secs(5))?;
    Ok(())
}

#[cfg(not(target_os = "macos"))]
fn main() {
    println!("vmnet is macOS-only: this example does nothing here");
}
