//! The vmnet backend's receive against `vmnet-model` (Linux, `cargo test -p devices --features
//! vmnet-model --test vmnet_backend`): what `recv` leaves for the worker when vmnet cuts a read
//! short. vmnet does not repeat a packets-available event for packets already pending, so a
//! backend that stops reading with packets left must wake its worker itself.

#![cfg(target_os = "linux")]

#[cfg(not(feature = "vmnet-model"))]
#[test]
#[ignore = "model-only: runs with cargo test -p devices --features vmnet-model (a step of scripts/test)"]
fn a_read_cut_short_by_an_error_wakes_the_worker_again() {
    panic!("this test runs against the vmnet model only");
}

#[cfg(feature = "vmnet-model")]
#[test]
fn a_read_cut_short_by_an_error_wakes_the_worker_again() {
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::time::Duration;

    use devices::net::vmnet::VmnetBackend;
    use devices::net::{Backend, GuestSlice, RxFrame};
    use devices::virtio::GuestMemory;
    use vm_memory::{GuestAddress, GuestMemoryBackend as _};
    use vmnet::{Interface, Options};
    use vmnet_model::vmnet::{self as model, Fault};

    const T: Duration = Duration::from_secs(5);
    const FRAMES: usize = 8;

    /// Whether `fd` turns readable within `ms` milliseconds.
    fn readable(fd: BorrowedFd<'_>, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    // Virtio-header mode with TSO: every receive buffer needs room for a whole GSO frame, so a
    // call of at most 256 KiB takes 3 packets and 8 packets take three calls.
    let mut backend =
        VmnetBackend::start(&Options::host().virtio_header(true).tso(true), T).unwrap();
    let peer = Interface::start(&Options::host(), T).unwrap();
    let room = backend.interface().limits().read_capacity();
    assert!(
        room > 256 * 1024 / 4,
        "room {room}: 4 would fit in one call"
    );
    let mut frame = vec![0x5a; 60];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&peer.params().mac.unwrap());
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    assert_eq!(peer.write_batch(&vec![frame; FRAMES]).unwrap(), FRAMES);

    // Let the events for those packets come and go: from here on no event will announce them.
    let fd = backend.ready_fd().as_raw_fd();
    // SAFETY: the backend, which owns the descriptor, outlives every use of `ready`.
    let ready = unsafe { BorrowedFd::borrow_raw(fd) };
    assert!(readable(ready, 5_000), "no packets-available event");
    while readable(ready, 200) {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a live u64 (an eventfd).
        unsafe { libc::read(fd, (&raw mut v).cast(), 8) };
    }

    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), FRAMES * room)]).unwrap();
    let slices: Vec<GuestSlice<'_>> = (0..FRAMES)
        .map(|i| {
            mem.get_slice(GuestAddress((i * room) as u64), room)
                .unwrap()
        })
        .collect();
    let mut frames: Vec<RxFrame<'_, '_>> = slices
        .chunks(1)
        .map(|bufs| RxFrame { bufs, len: 0 })
        .collect();
    // The first call moves its 3 packets, the second fails.
    model::inject_read(Fault::Short(3));
    model::inject_read(Fault::Status(vmnet::sys::VMNET_FAILURE));
    assert_eq!(backend.recv(&mut frames).unwrap(), 3);
    assert!(
        readable(ready, 0),
        "5 packets are left and no event will announce them: the worker must be woken"
    );
    // And the worker then finds them.
    assert_eq!(backend.recv(&mut frames).unwrap(), FRAMES - 3);
    drop(backend);
    peer.stop(T).unwrap();
}
