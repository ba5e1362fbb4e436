//! How another VMM embeds the virtio-net device of the `devices` crate.
//!
//! ```text
//! cargo run -p examples --example embed_net_device
//! ```
//!
//! The device needs no hypervisor: it is a virtio-mmio register window, a worker thread that
//! moves frames between guest memory and a network backend, and three kinds of notifier. A VMM
//! wires three things:
//!
//! 1. **MMIO routing.** The device's register window goes on an [`MmioBus`] at the address the
//!    device tree gives it; the vCPU loop hands each MMIO exit to the bus.
//! 2. **The interrupt notifier.** The device raises it when the guest should look at a used
//!    ring; the VMM turns it into the guest interrupt (the SPI of the device tree node). On KVM
//!    the notifier is an eventfd registered with `KVM_IRQFD`, and the kernel injects the
//!    interrupt itself; on Hypervisor.framework a VMM thread waits on it and calls
//!    `hv_gic_set_spi`.
//! 3. **The queue notifiers.** The device's worker waits on one notifier per queue. The guest's
//!    `QueueNotify` writes reach them through the bus; a VMM on KVM registers them as
//!    ioeventfds on the `QueueNotify` register (one per queue index), so those writes never
//!    leave the kernel.
//!
//! Here the guest is `devices::testing::DriverSim`, a register-level virtio driver (feature
//! `test-utils`) whose loads and stores go through the routing below as a vCPU's would, and the
//! network is the in-memory backend with the `examples::echo` responder behind it. The guest
//! resolves the network's address with ARP and pings it; the program prints what went through
//! each of the three paths and fails if a reply is missing.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use devices::bus::{MmioBus, MmioDevice};
use devices::event::Notifier;
use devices::net::mem::{MemBackend, MemBackendConfig, MemBackendHandle};
use devices::testing::DriverSim;
use devices::virtio::GuestMemory;
use devices::virtio::mmio::{MMIO_WINDOW_SIZE, MmioTransport, regs};
use devices::virtio::net::{Net, NetConfig, format_mac};
use examples::echo::{Responder, arp_request, echo_request};
use vm_memory::GuestAddress;

/// Guest RAM, where the arm64 `virt` layout puts it.
const RAM_BASE: u64 = 0x4000_0000;
const RAM_SIZE: u64 = 64 << 20;
/// The device's register window: the first virtio-mmio slot of the `virt` layout. The device
/// tree node `virtio_mmio@a000000` (compatible `virtio,mmio`, `reg = <0xa000000 0x200>`, an
/// edge-rising SPI) tells the guest where it is.
const NET_BASE: u64 = 0x0a00_0000;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const NET_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
const NET_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const WAIT: Duration = Duration::from_secs(5);

/// The VMM's side of MMIO exits (wiring 1 and 3).
struct Exits {
    bus: MmioBus,
    /// (address, queue index, notifier): what a KVM VMM registers with `KVM_IOEVENTFD` (with
    /// `datamatch` on the queue index). A matching store fires the notifier directly.
    ioeventfds: Vec<(u64, u32, Arc<Notifier>)>,
    through_bus: AtomicU64,
    through_ioeventfd: AtomicU64,
}

impl Exits {
    /// A guest load at `addr` that exited to the VMM.
    fn load(&self, addr: u64, data: &mut [u8]) {
        self.through_bus.fetch_add(1, Ordering::Relaxed);
        if !self.bus.read(addr, data) {
            // Nothing there: a real VMM reads zero (or injects an abort) and logs it.
            data.fill(0);
        }
    }

    /// A guest store at `addr`.
    fn store(&self, addr: u64, data: &[u8]) {
        if let [a, b, c, d] = *data {
            let value = u32::from_le_bytes([a, b, c, d]);
            if let Some((_, _, n)) = self
                .ioeventfds
                .iter()
                .find(|(at, q, _)| *at == addr && *q == value)
            {
                // On KVM this happens in the kernel: no exit, no bus.
                self.through_ioeventfd.fetch_add(1, Ordering::Relaxed);
                n.notify().expect("queue notifier");
                return;
            }
        }
        self.through_bus.fetch_add(1, Ordering::Relaxed);
        self.bus.write(addr, data);
    }
}

/// The guest's view of the device: its loads and stores at `NET_BASE + offset` go through the
/// VMM's exit handling, as a vCPU's would.
struct GuestWindow(Arc<Exits>);

impl MmioDevice for GuestWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.load(NET_BASE + offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.store(NET_BASE + offset, data);
    }
}

/// The network behind the backend: answers ARP and ping for `NET_IP`.
fn network(backend: MemBackendHandle, stop: Arc<AtomicBool>) {
    let responder = Responder::new(NET_MAC, NET_IP);
    let mut out = [0u8; 1514];
    while !stop.load(Ordering::Relaxed) {
        // The in-memory backend has no "frames sent" event: look every millisecond.
        for frame in backend.take_sent() {
            if let Some(n) = responder.reply(&frame, &mut out) {
                backend.inject(&out[..n]);
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(RAM_BASE), RAM_SIZE as usize)])?;

    // The device on a backend. A VMM picks the backend from its command line: on Linux
    // `devices::net::tap::Tap::open("tap0")`, on macOS `devices::net::vmnet` (feature `vmnet`).
    let backend = MemBackend::new(MemBackendConfig::default())?;
    let wire = backend.handle();
    let net = Net::new(
        Box::new(backend),
        NetConfig {
            mac: Some(GUEST_MAC),
            name: "eth0".into(),
            ..Default::default()
        },
    );
    let metrics = Arc::clone(net.metrics());

    // Wiring 2: the interrupt notifier. The transport raises it; the VMM owns the other end.
    let device_irq = Notifier::new()?;
    let transport = MmioTransport::new(Box::new(net), mem.clone(), device_irq.try_clone()?)?;

    // Wiring 3: the queue notifiers, one per queue (0 receive, 1 transmit).
    let queue_notify_at = NET_BASE + regs::QUEUE_NOTIFY;
    let ioeventfds = transport
        .queue_notifiers()
        .iter()
        .enumerate()
        .map(|(q, n)| (queue_notify_at, q as u32, Arc::clone(n)))
        .collect();

    // Wiring 1: MMIO routing.
    let mut bus = MmioBus::new();
    bus.insert(NET_BASE, MMIO_WINDOW_SIZE, Arc::new(Mutex::new(transport)))?;
    let exits = Arc::new(Exits {
        bus,
        ioeventfds,
        through_bus: AtomicU64::new(0),
        through_ioeventfd: AtomicU64::new(0),
    });

    // The interrupt thread of a Hypervisor.framework VMM: wait for the device's notifier, raise
    // the guest's interrupt. `guest_irq` stands for the GIC line the guest's driver sees.
    let guest_irq = Notifier::new()?;
    let stop = Arc::new(AtomicBool::new(false));
    let injected = Arc::new(AtomicU64::new(0));
    let irq_thread = {
        let (line, stop, injected) = (guest_irq.try_clone()?, stop.clone(), injected.clone());
        thread::spawn(move || -> std::io::Result<()> {
            while !stop.load(Ordering::Relaxed) {
                if device_irq.wait_timeout(Duration::from_millis(50))? {
                    // HVF: hv_gic_set_spi(spi, true) then (spi, false) for an edge interrupt.
                    injected.fetch_add(1, Ordering::Relaxed);
                    line.notify()?;
                }
            }
            Ok(())
        })
    };
    let net_thread = {
        let (wire, stop) = (wire.clone(), stop.clone());
        thread::spawn(move || network(wire, stop))
    };

    // The guest: a virtio driver whose register accesses go through the exits above, with its
    // rings and buffers in the upper half of RAM.
    let window = Arc::new(Mutex::new(GuestWindow(Arc::clone(&exits))));
    let mut guest = DriverSim::new(
        mem,
        window,
        guest_irq,
        GuestAddress(RAM_BASE + RAM_SIZE / 2),
        RAM_SIZE / 2,
    );
    let result = talk(&mut guest);

    stop.store(true, Ordering::Relaxed);
    net_thread.join().expect("network thread");
    irq_thread.join().expect("interrupt thread")?;

    println!(
        "MMIO accesses through the bus: {}; queue notifications through the ioeventfd path: {}; \
         interrupts injected: {}",
        exits.through_bus.load(Ordering::Relaxed),
        exits.through_ioeventfd.load(Ordering::Relaxed),
        injected.load(Ordering::Relaxed),
    );
    println!(
        "device counters: {} frames sent by the guest, {} received, {} bad chains",
        metrics.tx_frames.load(Ordering::Relaxed),
        metrics.rx_frames.load(Ordering::Relaxed),
        metrics.bad_chains.load(Ordering::Relaxed),
    );
    result?;
    if exits.through_ioeventfd.load(Ordering::Relaxed) == 0 || injected.load(Ordering::Relaxed) == 0
    {
        return Err("a notification path carried nothing".into());
    }
    println!("embed_net_device: ok");
    Ok(())
}

/// What the guest does once the device is found: the virtio handshake, then ARP and one ping.
fn talk(guest: &mut DriverSim) -> Result<(), Box<dyn std::error::Error>> {
    let features = guest.init(0, 256)?;
    println!("virtio handshake done: features {features:#x}");
    guest.post_rx_buffers(16, 2048)?;

    guest.send_frame(&arp_request(GUEST_MAC, GUEST_IP, NET_IP))?;
    let reply = guest.recv_frames(1, WAIT)?.remove(0);
    if reply.len() < 42 || reply[12..14] != [0x08, 0x06] || reply[20..22] != [0, 2] {
        return Err(format!("expected an ARP reply, got {reply:02x?}").into());
    }
    let mut peer_mac = [0u8; 6];
    peer_mac.copy_from_slice(&reply[22..28]);
    println!("ARP: {NET_IP} is at {}", format_mac(&peer_mac));

    guest.post_rx_buffers(1, 2048)?;
    let ping = echo_request(
        GUEST_MAC,
        peer_mac,
        GUEST_IP,
        NET_IP,
        0x4242,
        1,
        b"embedded",
    );
    guest.send_frame(&ping)?;
    let pong = guest.recv_frames(1, WAIT)?.remove(0);
    if pong.len() < 42 || pong[23] != 1 || pong[34] != 0 || !pong.ends_with(b"embedded") {
        return Err(format!("expected an echo reply, got {pong:02x?}").into());
    }
    println!("ping: {} bytes back from {NET_IP}", pong.len());
    Ok(())
}
