//! Writes the seed corpora: `cargo run --release --bin gen_seeds` from `fuzz/` (the committed
//! files under `corpus/` came from it). Each seed is a meaningful input built with the same
//! field encoding the targets read ([`vmm_fuzz::input::Enc`]).

use std::fs;
use std::path::Path;

use vmm_fuzz::datapath::{Addr, Config, F_INDIRECT, F_NEXT, F_WRITE, InDesc, op};
use vmm_fuzz::input::Enc;

fn save(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn desc(addr: Addr, len: u16, flags: u16, next: u8) -> InDesc {
    InDesc {
        addr,
        len: u32::from(len),
        len_raw: false,
        flags: flags as u8,
        next: u16::from(next),
        next_raw: false,
    }
}

fn datapath_seeds() {
    let base = Config {
        rx_size_log: 3,
        tx_size_log: 3,
        flags: 8,
        rx_room: 0,
        tx_max: 0,
        batches: 0x3f,
        fill: 1,
    };
    let rx_bufs = |e: &mut Enc, n: u8, size: u16| {
        e.u8(n);
        for i in 0..n {
            desc(Addr::Buf(u16::from(i) * size), size, F_WRITE, 0).write(e);
        }
    };

    // A TX chain as Linux builds it (header, payload), then an RX buffer and a frame.
    let mut e = Enc::new();
    base.write(&mut e);
    rx_bufs(&mut e, 4, 2048);
    e.u8(2);
    desc(Addr::Buf(0x2000), 12, F_NEXT, 1).write(&mut e);
    desc(Addr::Buf(0x2100), 60, 0, 0).write(&mut e);
    e.u8(0);
    e.u8(op::PUBLISH_TX).u8(0).u8(op::PROCESS_TX);
    e.u8(op::PUBLISH_RX).u8(0).u8(op::PUBLISH_RX).u8(1);
    e.u8(op::INJECT).u16(60).u8(3).u8(op::PROCESS_RX);
    save("net_datapath", "tx_chain_and_rx_frame", &e.0);

    // TX coalescing: two chains make the pass hold kicks off, one more keeps holding, an empty
    // pass turns kicks back on.
    let mut e = Enc::new();
    base.write(&mut e);
    rx_bufs(&mut e, 1, 2048);
    e.u8(3);
    desc(Addr::Buf(0x2000), 72, 0, 0).write(&mut e);
    desc(Addr::Buf(0x2100), 72, 0, 0).write(&mut e);
    desc(Addr::Buf(0x2200), 72, 0, 0).write(&mut e);
    e.u8(0);
    e.u8(op::PUBLISH_TX).u8(0).u8(op::PUBLISH_TX).u8(1);
    e.u8(op::PROCESS_TX_HOLD).u8(2);
    e.u8(op::PUBLISH_TX).u8(2).u8(op::PROCESS_TX_HOLD).u8(1);
    e.u8(op::PROCESS_TX_HOLD).u8(1);
    save("net_datapath", "tx_hold_then_idle", &e.0);

    // Mergeable buffers, EVENT_IDX and a backend that carries the virtio-net header.
    let mut e = Enc::new();
    Config {
        flags: 1 | 2 | 4 | 8,
        ..base
    }
    .write(&mut e);
    rx_bufs(&mut e, 8, 256);
    e.u8(0).u8(0);
    for h in 0..6 {
        e.u8(op::PUBLISH_RX).u8(h);
    }
    e.u8(op::INJECT).u16(1000).u8(7).u8(op::PROCESS_RX);
    e.u8(op::INJECT).u16(300).u8(8).u8(op::PROCESS_RX);
    save("net_datapath", "mergeable_rx_vnet_hdr", &e.0);

    // An indirect TX table, and an indirect RX table.
    let mut e = Enc::new();
    base.write(&mut e);
    e.u8(1);
    desc(Addr::Buf(0x3400), 16, F_INDIRECT, 0).write(&mut e);
    e.u8(1);
    desc(Addr::Buf(0x3000), 32, F_INDIRECT, 0).write(&mut e);
    e.u8(2);
    e.u16(0x3000).u8(2);
    desc(Addr::Buf(0x2000), 12, F_NEXT, 1).write(&mut e);
    desc(Addr::Buf(0x2100), 100, 0, 0).write(&mut e);
    e.u16(0x3400).u8(1);
    desc(Addr::Buf(0x0000), 2048, F_WRITE, 0).write(&mut e);
    e.u8(op::PUBLISH_TX).u8(0).u8(op::PROCESS_TX);
    e.u8(op::PUBLISH_RX)
        .u8(0)
        .u8(op::INJECT)
        .u16(80)
        .u8(9)
        .u8(op::PROCESS_RX);
    save("net_datapath", "indirect_tables", &e.0);

    // Malformed chains: a loop, a writable TX buffer, a buffer into the hole, zero length.
    let mut e = Enc::new();
    base.write(&mut e);
    e.u8(3);
    desc(Addr::Buf(0), 100, F_WRITE | F_NEXT, 0).write(&mut e);
    desc(Addr::Edge(1, -8), 64, F_WRITE, 0).write(&mut e);
    desc(Addr::Buf(0x1000), 0, F_WRITE, 0).write(&mut e);
    e.u8(3);
    desc(Addr::Buf(0x2000), 12, F_NEXT, 1).write(&mut e);
    desc(Addr::Buf(0x2100), 60, F_WRITE, 0).write(&mut e);
    desc(Addr::Raw(u64::MAX - 4), 60, 0, 0).write(&mut e);
    e.u8(0);
    for h in 0..3 {
        e.u8(op::PUBLISH_RX).u8(h).u8(op::PUBLISH_TX).u8(h);
    }
    e.u8(op::PROCESS_TX)
        .u8(op::INJECT)
        .u16(60)
        .u8(1)
        .u8(op::PROCESS_RX);
    save("net_datapath", "malformed_chains", &e.0);
}

fn transport_seeds() {
    use vmm_fuzz::transport::op as t;
    // Indices into vmm_fuzz::transport::REGS.
    const DRIVER_FEATURES: u8 = 1;
    const DRIVER_FEATURES_SEL: u8 = 2;
    const QUEUE_SEL: u8 = 3;
    const QUEUE_NUM: u8 = 4;
    const QUEUE_READY: u8 = 5;
    const QUEUE_NOTIFY: u8 = 6;
    const INTERRUPT_ACK: u8 = 7;
    const STATUS: u8 = 8;
    const DESC_LOW: u8 = 9;
    const DRIVER_LOW: u8 = 11;
    const DEVICE_LOW: u8 = 13;
    let w32 = |e: &mut Enc, r: u8, v: u32| {
        e.u8(t::WRITE32).u8(r).u32(v);
    };
    let handshake = |e: &mut Enc| {
        for v in [0, 1, 3] {
            w32(e, STATUS, v);
        }
        w32(e, DRIVER_FEATURES_SEL, 1);
        w32(e, DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
        w32(e, STATUS, 0xb);
        for (q, base) in [(0u32, 0x1000u32), (1, 0x2000)] {
            w32(e, QUEUE_SEL, q);
            w32(e, QUEUE_NUM, 16);
            w32(e, DESC_LOW, base);
            w32(e, DRIVER_LOW, base + 0x200);
            w32(e, DEVICE_LOW, base + 0x300);
            w32(e, QUEUE_READY, 1);
        }
        w32(e, STATUS, 0xf);
    };

    // The Linux driver's handshake, one TX frame, one RX buffer and a frame for it.
    let mut e = Enc::new();
    e.bool(false);
    handshake(&mut e);
    e.u8(t::DESC).u16(0x2000).u32(0x4000).u16(72).u8(0).u8(0);
    e.u8(t::WORD)
        .u16(0x2204)
        .u16(0)
        .u8(t::WORD)
        .u16(0x2202)
        .u16(1);
    w32(&mut e, QUEUE_NOTIFY, 1);
    e.u8(t::DESC).u16(0x1000).u32(0x5000).u16(2048).u8(2).u8(0);
    e.u8(t::WORD)
        .u16(0x1204)
        .u16(0)
        .u8(t::WORD)
        .u16(0x1202)
        .u16(1);
    w32(&mut e, QUEUE_NOTIFY, 0);
    e.u8(t::INJECT).u16(100).u8(5).u8(t::YIELD);
    e.u8(t::READ).u16(0x60).u8(2);
    w32(&mut e, INTERRUPT_ACK, 1);
    save("mmio_transport", "handshake_tx_rx", &e.0);

    // Every register read at every width.
    let mut e = Enc::new();
    e.bool(true);
    for off in (0..0x110u16).step_by(4) {
        e.u8(t::READ).u16(off).u8(2);
    }
    for (off, w) in [(0u16, 0u8), (2, 1), (0x70, 3), (0x101, 0), (0x1ff, 3)] {
        e.u8(t::READ).u16(off).u8(w);
    }
    save("mmio_transport", "register_reads", &e.0);

    // Out-of-order status writes, features outside negotiation, queue writes after DRIVER_OK,
    // a reset while running, odd widths.
    let mut e = Enc::new();
    e.bool(false);
    for v in [4, 1, 0xf, 3, 0x40] {
        w32(&mut e, STATUS, v);
    }
    w32(&mut e, DRIVER_FEATURES, u32::MAX);
    handshake(&mut e);
    w32(&mut e, QUEUE_NUM, 8);
    w32(&mut e, DESC_LOW, 0xffff_fff0);
    e.u8(t::WRITE).u16(0x70).u8(3).u64(0);
    e.u8(t::WRITE).u16(0x50).u8(1).u64(1);
    w32(&mut e, QUEUE_NOTIFY, 7);
    w32(&mut e, STATUS, 0);
    handshake(&mut e);
    w32(&mut e, STATUS, 0x8f);
    save("mmio_transport", "bad_driver", &e.0);
}

fn boot_seeds() {
    use vmm_fuzz::boot::mode;
    // The first 64 bytes of Debian's 6.1 arm64 Image (EFI stub, text_offset 0,
    // image_size 0x2010000, flags 0xa: little-endian, 4K pages, anywhere).
    let mut real = vec![0u8; 64];
    real[..8].copy_from_slice(&[0x4d, 0x5a, 0x40, 0xfa, 0x56, 0xa3, 0x59, 0x14]);
    real[16..24].copy_from_slice(&0x0201_0000u64.to_le_bytes());
    real[24] = 0x0a;
    real[56..64].copy_from_slice(b"ARMd\x40\0\0\0");
    let seed = |file_len: u64, ram: u64, initrd: u64, dtb: u64, m: u8, head: &[u8]| {
        let mut e = Enc::new();
        e.u64(file_len).u64(0).u64(ram).u64(initrd).u64(dtb);
        e.u64(0).u64(0).u64(0).u8(m).bytes(head);
        e.0
    };
    let mib = 1u64 << 20;
    save(
        "boot_image",
        "debian_6_1_image",
        &seed(
            32_956_352,
            512 * mib,
            10 * mib,
            2 * mib,
            mode::VMM_BASE,
            &real,
        ),
    );
    save(
        "boot_image",
        "too_small_ram",
        &seed(
            32_956_352,
            32 * mib,
            10 * mib,
            2 * mib,
            mode::VMM_BASE,
            &real,
        ),
    );
    let mut legacy = real.clone();
    legacy[16..32].fill(0);
    save(
        "boot_image",
        "legacy_header",
        &seed(
            8 * mib,
            128 * mib,
            0,
            4096,
            mode::VMM_BASE | mode::NO_INITRD,
            &legacy,
        ),
    );
    let mut gz = vec![0x1f, 0x8b, 8, 0];
    gz.resize(64, 0);
    save(
        "boot_image",
        "gzip",
        &seed(5 * mib, 512 * mib, 0, 2 * mib, mode::VMM_BASE, &gz),
    );
    let mut zboot = vec![0u8; 64];
    zboot[..2].copy_from_slice(b"MZ");
    zboot[4..8].copy_from_slice(b"zimg");
    zboot[24..28].copy_from_slice(b"zstd");
    save(
        "boot_image",
        "efi_zboot",
        &seed(5 * mib, 512 * mib, 0, 2 * mib, mode::VMM_BASE, &zboot),
    );
}

fn esr_psci_seeds() {
    let header = |e: &mut Enc, cpus: u8| {
        e.u8(cpus - 1).bool(false).u64(0x8000_00ff);
        for c in 0..cpus {
            for i in 0..31u64 {
                e.u64(0x1111_1111_1111_1111u64.wrapping_mul(i + 1) ^ u64::from(c));
            }
            e.u64(0x4020_0000);
        }
    };
    // Secondary CPUs brought up as Linux does, queried, one turned off and on again.
    let mut e = Enc::new();
    header(&mut e, 4);
    let call = |e: &mut Enc, caller: u8, f: u8, args: [u8; 3], start: Option<u8>| {
        e.u8(2).u8(caller).u8(f);
        for a in args {
            e.u8(a);
        }
        if let Some(s) = start {
            e.u8(s);
        }
    };
    call(&mut e, 0, 2, [1, 1, 1], None); // PSCI_VERSION
    call(&mut e, 0, 13, [1, 1, 1], None); // PSCI_FEATURES
    for cpu in 1..4u8 {
        call(&mut e, 0, 7, [cpu << 2, 1 | (0x20 << 2), 1], Some(1)); // CPU_ON_64
        call(&mut e, 0, 9, [cpu << 2, 1, 1], None); // AFFINITY_INFO_64
    }
    call(&mut e, 2, 5, [1, 1, 1], None); // CPU_OFF from CPU 2
    call(&mut e, 0, 9, [2 << 2, 1, 1], None);
    call(&mut e, 0, 6, [2 << 2, 1, 1], Some(0)); // CPU_ON_32, start fails
    call(&mut e, 0, 6, [2 << 2, 1, 1], Some(1));
    call(&mut e, 1, 12, [1, 1, 1], None); // SYSTEM_RESET
    e.u8(5);
    save("esr_psci", "secondary_bringup", &e.0);

    // MMIO through data aborts: str w1, ldr x2, a sign-extending byte load, XZR, ISV clear.
    let mut e = Enc::new();
    header(&mut e, 2);
    for (cpu, iss, off) in [
        (0u8, 0x0081_0046u32, 0x70u16),
        (0, 0x00c2_8006, 0x00),
        (1, 0x0025_8006, 0x100),
        (1, 0x009f_0046, 0x50),
        (0, 0x0001_0046, 0x70),
    ] {
        e.u8(0).u8(cpu).u8(0).u32(iss).u16(off);
    }
    // HVC, SMC, WFI, a system register read, an instruction abort (any syndrome, address).
    for raw in [
        0x5a00_0000u32,
        0x5e00_0000,
        0x0600_0000,
        0x6230_0c21,
        0x8200_0000,
    ] {
        e.u8(0).u8(0).u8(0x82).u32(raw).u64(0x4000_0000);
    }
    save("esr_psci", "mmio_and_exceptions", &e.0);
}

fn main() {
    datapath_seeds();
    transport_seeds();
    boot_seeds();
    esr_psci_seeds();
}
