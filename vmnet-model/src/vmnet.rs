//! The model of vmnet.framework: the functions and keys of `<vmnet/vmnet.h>` (macOS 11
//! baseline, the keys of 12, 15 and 15.4, and the `vmnet_network_*` functions of 26 with the
//! `CFRelease` that frees their objects), with the C ABI the binding declares.
//!
//! Interfaces of one mode share one Ethernet segment (a learning switch): host-mode interfaces
//! see each other, as on a Mac; shared mode adds the gateway of [`crate::net`]; bridged mode
//! has one segment per bridged interface name. Each rule below cites the Apple document it
//! comes from; where the documentation is silent the model takes one reading and says so, and
//! where releases differ a [`Config`] switch selects the reading.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{CStr, c_char, c_int, c_void};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use block2::{Block, RcBlock};
use libc::{in_addr, iovec};

use crate::net::{GATEWAY_MAC, Gateway};
use crate::{dispatch, xpc};

/// `vmnet_return_t` values (`<vmnet/vmnet.h>`).
pub const VMNET_SUCCESS: u32 = 1000;
/// General failure.
pub const VMNET_FAILURE: u32 = 1001;
/// Memory allocation failure.
pub const VMNET_MEM_FAILURE: u32 = 1002;
/// Invalid argument specified.
pub const VMNET_INVALID_ARGUMENT: u32 = 1003;
/// Permission denied.
pub const VMNET_INVALID_ACCESS: u32 = 1005;
/// Packet size larger than MTU.
pub const VMNET_PACKET_TOO_BIG: u32 = 1006;
/// Buffers exhausted in kernel.
pub const VMNET_BUFFER_EXHAUSTED: u32 = 1007;
/// Packet count exceeds limit.
pub const VMNET_TOO_MANY_PACKETS: u32 = 1008;

const HOST_MODE: u64 = 1000;
const SHARED_MODE: u64 = 1001;
const BRIDGED_MODE: u64 = 1002;
const PACKETS_AVAILABLE: u32 = 1;
const AF_INET: u8 = 2;
/// macOS's `AF_INET6`.
const AF_INET6: u8 = 30;

/// "Each read/write call allows up to 200 packets to be read or written for a maximum of
/// 256KB." (Apple's vmnet documentation, as QEMU's `net/vmnet_int.h` quotes it.)
pub const MAX_PACKETS_PER_CALL: usize = 200;
/// See [`MAX_PACKETS_PER_CALL`] (256 KiB).
pub const MAX_BYTES_PER_CALL: usize = 256 * 1024;
/// The virtio-net header (`virtio_net_hdr_v1`, 12 bytes) that `vmnet_enable_virtio_header_key`
/// puts in front of every packet (Apple's page of the key cites virtio 1.1 section 5.1.6).
pub const VIRTIO_HDR: usize = 12;
/// The largest TSO frame accepted (a 64 KiB IP packet behind an Ethernet header and a VLAN tag).
const MAX_GSO_FRAME: usize = 65535 + 18;

/// A `const char *` key global.
#[repr(transparent)]
#[derive(Debug)]
pub struct Key(*const c_char);
// SAFETY: points to a static, immutable C string literal.
unsafe impl Sync for Key {}

macro_rules! keys {
    ($($name:ident = $value:literal),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "`.")]
        #[unsafe(no_mangle)]
        pub static $name: Key = Key($value.as_ptr());
    )*};
}

keys!(
    vmnet_operation_mode_key = c"vmnet_operation_mode",
    vmnet_shared_interface_name_key = c"vmnet_shared_interface_name",
    vmnet_mac_address_key = c"vmnet_mac_address",
    vmnet_allocate_mac_address_key = c"vmnet_allocate_mac_address",
    vmnet_mtu_key = c"vmnet_mtu",
    vmnet_max_packet_size_key = c"vmnet_max_packet_size",
    vmnet_interface_id_key = c"vmnet_interface_id",
    vmnet_start_address_key = c"vmnet_start_address",
    vmnet_end_address_key = c"vmnet_end_address",
    vmnet_subnet_mask_key = c"vmnet_subnet_mask",
    vmnet_nat66_prefix_key = c"vmnet_nat66_prefix",
    vmnet_nat66_prefix_length_key = c"vmnet_nat66_prefix_length",
    vmnet_estimated_packets_available_key = c"vmnet_estimated_packets_available",
    vmnet_network_identifier_key = c"vmnet_network_identifier",
    vmnet_host_ip_address_key = c"vmnet_host_ip_address",
    vmnet_host_subnet_mask_key = c"vmnet_host_subnet_mask",
    vmnet_host_ipv6_address_key = c"vmnet_host_ipv6_address",
    vmnet_enable_tso_key = c"vmnet_enable_tso",
    vmnet_enable_isolation_key = c"vmnet_enable_isolation",
    vmnet_enable_checksum_offload_key = c"vmnet_enable_checksum_offload",
    vmnet_read_max_packets_key = c"vmnet_read_max_packets",
    vmnet_write_max_packets_key = c"vmnet_write_max_packets",
    vmnet_enable_virtio_header_key = c"vmnet_enable_virtio_header",
);

/// What `dlsym(RTLD_DEFAULT, name)` finds for a key global of the framework, or NULL when the
/// simulated release ([`Config::release`]) predates the key (the `API_AVAILABLE` annotations of
/// `<vmnet/vmnet.h>`). The binding's run-time key lookup asks this instead of `dlsym` under its
/// `model` feature, because a Linux executable exports no dynamic symbols.
pub fn key_symbol(name: &str) -> *const c_void {
    let since: (u32, u32) = match name {
        "vmnet_enable_checksum_offload_key" => (12, 0),
        "vmnet_read_max_packets_key" | "vmnet_write_max_packets_key" => (15, 0),
        "vmnet_enable_virtio_header_key" => (15, 4),
        _ => (11, 0),
    };
    if config().release < since {
        return std::ptr::null();
    }
    let k: &'static Key = match name {
        "vmnet_operation_mode_key" => &vmnet_operation_mode_key,
        "vmnet_shared_interface_name_key" => &vmnet_shared_interface_name_key,
        "vmnet_mac_address_key" => &vmnet_mac_address_key,
        "vmnet_allocate_mac_address_key" => &vmnet_allocate_mac_address_key,
        "vmnet_mtu_key" => &vmnet_mtu_key,
        "vmnet_max_packet_size_key" => &vmnet_max_packet_size_key,
        "vmnet_interface_id_key" => &vmnet_interface_id_key,
        "vmnet_start_address_key" => &vmnet_start_address_key,
        "vmnet_end_address_key" => &vmnet_end_address_key,
        "vmnet_subnet_mask_key" => &vmnet_subnet_mask_key,
        "vmnet_nat66_prefix_key" => &vmnet_nat66_prefix_key,
        "vmnet_nat66_prefix_length_key" => &vmnet_nat66_prefix_length_key,
        "vmnet_estimated_packets_available_key" => &vmnet_estimated_packets_available_key,
        "vmnet_network_identifier_key" => &vmnet_network_identifier_key,
        "vmnet_host_ip_address_key" => &vmnet_host_ip_address_key,
        "vmnet_host_subnet_mask_key" => &vmnet_host_subnet_mask_key,
        "vmnet_host_ipv6_address_key" => &vmnet_host_ipv6_address_key,
        "vmnet_enable_tso_key" => &vmnet_enable_tso_key,
        "vmnet_enable_isolation_key" => &vmnet_enable_isolation_key,
        "vmnet_enable_checksum_offload_key" => &vmnet_enable_checksum_offload_key,
        "vmnet_read_max_packets_key" => &vmnet_read_max_packets_key,
        "vmnet_write_max_packets_key" => &vmnet_write_max_packets_key,
        "vmnet_enable_virtio_header_key" => &vmnet_enable_virtio_header_key,
        _ => return std::ptr::null(),
    };
    (k as *const Key).cast()
}

fn key(k: &Key) -> &'static CStr {
    // SAFETY: every `Key` holds a static C string literal.
    unsafe { CStr::from_ptr(k.0) }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a start without vmnet privileges behaves (a switch: the documentation does not say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Privileges {
    /// The process may start interfaces.
    #[default]
    Granted,
    /// `vmnet_start_interface` returns NULL ("A non-NULL interface handle on success, NULL
    /// otherwise": Apple's page of the function) and the handler is not called.
    DeniedNullHandle,
    /// The handler receives this status (e.g. `VMNET_INVALID_ACCESS`, "Permission denied").
    DeniedStatus(u32),
}

/// The switches of the model; [`reset`] restores the defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Starting without privileges.
    pub privileges: Privileges,
    /// Whether `vmnet_max_packet_size_key` counts the 12-byte virtio-net header in
    /// virtio-header mode (Apple's page of `vmnet_enable_virtio_header_key` does not say).
    pub header_counts_in_max_packet_size: bool,
    /// Refuse packets of several iovecs with `VMNET_INVALID_ARGUMENT` (seen on some releases).
    pub refuse_multi_iovec: bool,
    /// Report `vmnet_read_max_packets_key` / `vmnet_write_max_packets_key` (macOS 15 and
    /// later) in the interface parameters.
    pub report_batch_maxima: bool,
    /// The names `vmnet_copy_shared_interface_list` returns (bridgeable interfaces).
    pub bridgeable: Vec<String>,
    /// Packets an interface holds for its reader before it drops.
    pub rx_capacity: usize,
    /// Deliver one more packets-available event after `vmnet_stop_interface` (fault).
    pub event_after_stop: bool,
    /// The macOS release simulated for keys looked up at run time ([`key_symbol`]): a key newer
    /// than this is absent, as on that release.
    pub release: (u32, u32),
}

impl Default for Config {
    fn default() -> Self {
        Self {
            privileges: Privileges::Granted,
            header_counts_in_max_packet_size: false,
            refuse_multi_iovec: false,
            report_batch_maxima: true,
            bridgeable: vec!["en0".into()],
            rx_capacity: 1024,
            event_after_stop: false,
            release: (26, 0),
        }
    }
}

/// An injected outcome of the next `vmnet_read` or `vmnet_write` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call returns this status and moves nothing.
    Status(u32),
    /// The call moves at most this many packets (fewer than asked).
    Short(usize),
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);
static READ_FAULTS: Mutex<VecDeque<Fault>> = Mutex::new(VecDeque::new());
static WRITE_FAULTS: Mutex<VecDeque<Fault>> = Mutex::new(VecDeque::new());
static CALLS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
static REFUSED: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
static BLOCKS_LIVE: AtomicI64 = AtomicI64::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Changes the switches.
pub fn configure(f: impl FnOnce(&mut Config)) {
    f(lock(&CONFIG).get_or_insert_with(Config::default));
}

fn config() -> Config {
    lock(&CONFIG).get_or_insert_with(Config::default).clone()
}

/// Restores the default switches and drops pending faults.
pub fn reset() {
    *lock(&CONFIG) = None;
    lock(&READ_FAULTS).clear();
    lock(&WRITE_FAULTS).clear();
}

/// Makes a coming `vmnet_read` call fail or come short (faults apply in order, one per call).
pub fn inject_read(f: Fault) {
    lock(&READ_FAULTS).push_back(f);
}

/// As [`inject_read`] for `vmnet_write`.
pub fn inject_write(f: Fault) {
    lock(&WRITE_FAULTS).push_back(f);
}

/// How many times each vmnet function was called in this process.
pub fn calls() -> BTreeMap<&'static str, u64> {
    lock(&CALLS).clone()
}

/// How many times the model refused something, by reason.
pub fn refused() -> BTreeMap<&'static str, u64> {
    lock(&REFUSED).clone()
}

/// Interfaces started and not stopped, and blocks the model holds (both 0 when idle).
pub fn live() -> (usize, i64) {
    (lock(&IFACES).len(), BLOCKS_LIVE.load(Ordering::SeqCst))
}

thread_local! {
    static IN_CALL: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Marks this thread as inside a vmnet function of the model until dropped.
struct InCall;

impl Drop for InCall {
    fn drop(&mut self) {
        IN_CALL.with(|d| d.set(d.get() - 1));
    }
}

/// Whether this thread is inside a vmnet function of the model. A test that counts the
/// binding's allocations leaves out the model's own (the real framework's are not ours to
/// count either).
pub fn in_call() -> bool {
    IN_CALL.try_with(|d| d.get() > 0).unwrap_or(false)
}

#[must_use]
fn called(name: &'static str) -> InCall {
    IN_CALL.with(|d| d.set(d.get() + 1));
    *lock(&CALLS).entry(name).or_default() += 1;
    InCall
}

fn refuse(why: &'static str, status: u32) -> u32 {
    *lock(&REFUSED).entry(why).or_default() += 1;
    status
}

/// A copied block the model holds (`_Block_copy`), released on drop (`_Block_release`).
struct Held<F: ?Sized>(RcBlock<F>);

// SAFETY: vmnet's contract is that its blocks are invoked on the dispatch queue given, i.e. on
// another thread than the caller's: blocks handed to the framework must be callable there. The
// model only copies, invokes (on queue threads) and releases them.
unsafe impl<F: ?Sized> Send for Held<F> {}
// SAFETY: as above; invocation through `&` is what the framework does from its queues.
unsafe impl<F: ?Sized> Sync for Held<F> {}

impl<F: ?Sized> Held<F> {
    /// # Safety
    ///
    /// `p` is NULL or a valid block of type `F`.
    unsafe fn copy(p: *mut Block<F>) -> Option<Self> {
        // SAFETY: the caller's contract.
        let b = unsafe { RcBlock::copy(p) }?;
        BLOCKS_LIVE.fetch_add(1, Ordering::SeqCst);
        Some(Self(b))
    }
}

impl<F: ?Sized> Clone for Held<F> {
    fn clone(&self) -> Self {
        BLOCKS_LIVE.fetch_add(1, Ordering::SeqCst);
        Self(self.0.clone())
    }
}

impl<F: ?Sized> Drop for Held<F> {
    fn drop(&mut self) {
        BLOCKS_LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

type StartFn = dyn Fn(u32, *mut c_void);
type EventFn = dyn Fn(u32, *mut c_void);
type StatusFn = dyn Fn(u32);
type RulesFn = dyn Fn(*mut c_void);

/// A retained queue, released on drop.
struct QueueRef(usize);

impl QueueRef {
    fn retain(q: *mut c_void) -> Option<Self> {
        dispatch::get(q)?;
        // SAFETY: a live queue of the model.
        unsafe { dispatch::dispatch_retain(q) };
        Some(Self(q as usize))
    }
}

impl Drop for QueueRef {
    fn drop(&mut self) {
        // SAFETY: the reference taken in `retain`.
        unsafe { dispatch::dispatch_release(self.0 as *mut c_void) };
    }
}

/// Runs `f` on `queue`, asynchronously.
fn on_queue(queue: &QueueRef, f: impl FnOnce() + Send + 'static) {
    dispatch::submit(queue.0 as *mut c_void, Box::new(f));
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    Host(Option<[u8; 16]>),
    Shared,
    /// A `vmnet_network_ref`'s network (macOS 26), by id.
    Network(u64),
    Bridged(String),
}

struct Events {
    queue: QueueRef,
    block: Held<EventFn>,
    mask: u32,
}

#[derive(Clone, Copy, Debug)]
struct Rule {
    proto: u8,
    ext: u16,
    family: u8,
    addr: [u8; 16],
    int: u16,
}

struct Iface {
    segment: Segment,
    header: bool,
    tso: bool,
    /// The largest packet `vmnet_write` accepts and the smallest buffer `vmnet_read` takes.
    max_packet_size: usize,
    write_limit: usize,
    rx: Mutex<VecDeque<Vec<u8>>>,
    rx_capacity: usize,
    events: Mutex<Option<Events>>,
    event_pending: AtomicBool,
    queue: Mutex<Option<QueueRef>>,
    rules: Mutex<Vec<Rule>>,
}

/// Started interfaces, by handle.
static IFACES: Mutex<BTreeMap<usize, Arc<Iface>>> = Mutex::new(BTreeMap::new());
/// Stopped or failed interfaces: kept so that a stale handle is recognised, never reused.
static DEAD: Mutex<Vec<Arc<Iface>>> = Mutex::new(Vec::new());
/// Where each MAC address was last seen: (segment, MAC) to interface handle.
type Fdb = HashMap<(Segment, [u8; 6]), usize>;
static FDB: Mutex<Option<Fdb>> = Mutex::new(None);
static GATEWAYS: Mutex<Option<HashMap<Segment, Gateway>>> = Mutex::new(None);

fn iface(h: *mut c_void) -> Option<Arc<Iface>> {
    lock(&IFACES).get(&(h as usize)).cloned()
}

fn is_group(mac: &[u8]) -> bool {
    mac[0] & 1 != 0
}

/// Queues `frame` (no header) for `to`'s reader, with the virtio-net header `hdr` in
/// virtio-header mode, and signals it.
fn enqueue(to: &Arc<Iface>, frame: &[u8], hdr: Option<&[u8]>) {
    let gso = hdr.is_some_and(|h| h[1] != 0);
    let bytes = if to.header {
        let mut b = hdr.map_or_else(|| vec![0u8; VIRTIO_HDR], <[u8]>::to_vec);
        b.extend_from_slice(frame);
        b
    } else if gso {
        // A TSO segment to an interface without the header: the real framework segments it;
        // the model does not, and counts the drop.
        refuse("gso frame to an interface without the virtio header", 0);
        return;
    } else {
        frame.to_vec()
    };
    {
        let mut rx = lock(&to.rx);
        if rx.len() >= to.rx_capacity {
            refuse("receive queue full", 0);
            return;
        }
        rx.push_back(bytes);
    }
    signal(to);
}

/// Schedules a packets-available event on the interface's event queue (coalesced: one pending
/// at a time, like a dispatch source).
fn signal(to: &Arc<Iface>) {
    let ev = lock(&to.events);
    let Some(e) = ev.as_ref() else { return };
    if e.mask & PACKETS_AVAILABLE == 0 || to.event_pending.swap(true, Ordering::SeqCst) {
        return;
    }
    let block = e.block.clone();
    let t = Arc::clone(to);
    on_queue(&e.queue, move || {
        t.event_pending.store(false, Ordering::SeqCst);
        let n = lock(&t.rx).len();
        if n > 0 {
            deliver_event(&block, n as u64);
        }
    });
}

/// Calls an event block with `VMNET_INTERFACE_PACKETS_AVAILABLE` and an event dictionary
/// holding `vmnet_estimated_packets_available_key` (Apple's page of
/// `VMNET_INTERFACE_PACKETS_AVAILABLE`: "The event dictionary passed in the callback returns the
/// estimated number of packets available to be read"), borrowed for the call.
fn deliver_event(block: &Held<EventFn>, n: u64) {
    let d = xpc::new(xpc::Value::Dict(BTreeMap::new()));
    // SAFETY: a live dictionary of the model and a static key.
    unsafe {
        xpc::xpc_dictionary_set_uint64(d, vmnet_estimated_packets_available_key.0, n);
    }
    block.0.call((PACKETS_AVAILABLE, d));
    // SAFETY: our reference.
    unsafe { xpc::xpc_release(d) };
}

/// Switches one frame written by `from` (header already split off).
fn switch(from: &Arc<Iface>, frame: &[u8], hdr: Option<&[u8]>) {
    switch_from(
        Arc::as_ptr(from) as usize,
        &from.segment,
        frame,
        hdr,
        Some(from),
    );
}

/// Switches one frame from port `me` of `seg` (an interface, or a TAP when `reply_to` is None)
/// to the segment's other ports: a learning switch, flooding group and unknown destinations.
fn switch_from(
    me: usize,
    seg: &Segment,
    frame: &[u8],
    hdr: Option<&[u8]>,
    reply_to: Option<&Arc<Iface>>,
) {
    let dst: [u8; 6] = frame[0..6].try_into().unwrap_or_default();
    let src: [u8; 6] = frame[6..12].try_into().unwrap_or_default();
    let known = {
        let mut fdb = lock(&FDB);
        let fdb = fdb.get_or_insert_with(HashMap::new);
        fdb.insert((seg.clone(), src), me);
        fdb.get(&(seg.clone(), dst)).copied()
    };
    if let Some(from) = reply_to
        && (dst == GATEWAY_MAC || is_group(&dst))
    {
        let replies = lock(&GATEWAYS)
            .as_mut()
            .and_then(|g| g.get_mut(seg))
            .map(|g| g.handle(frame))
            .unwrap_or_default();
        for r in replies {
            enqueue(from, &r, None);
        }
    }
    if dst == GATEWAY_MAC {
        return;
    }
    let wanted = |h: usize| h != me && (is_group(&dst) || known.is_none_or(|k| k == h));
    let targets: Vec<Arc<Iface>> = lock(&IFACES)
        .iter()
        .filter(|(h, i)| wanted(**h) && i.segment == *seg)
        .map(|(_, i)| Arc::clone(i))
        .collect();
    for t in targets {
        enqueue(&t, frame, hdr);
    }
    let taps: Vec<Arc<TapPort>> = lock(&TAPS)
        .iter()
        .filter(|t| wanted(Arc::as_ptr(t) as usize) && t.segment == *seg)
        .cloned()
        .collect();
    // The TAP takes the virtio-net header too (IFF_VNET_HDR, see `attach_tap`): Linux then
    // completes partial checksums and segments TSO frames, as the Mac's stack does for what a
    // header-mode interface writes. A frame without a header gets an empty one.
    let zero = [0u8; VIRTIO_HDR];
    let h = hdr.unwrap_or(&zero);
    for t in taps {
        let iov = [
            iovec {
                iov_base: h.as_ptr().cast_mut().cast(),
                iov_len: h.len(),
            },
            iovec {
                iov_base: frame.as_ptr().cast_mut().cast(),
                iov_len: frame.len(),
            },
        ];
        // SAFETY: writing two live buffers to our own open TAP descriptor.
        let r = unsafe { libc::writev(t.fd, iov.as_ptr(), 2) };
        if r < 0 {
            refuse("write to the TAP failed", 0);
        }
    }
}

/// Which segment a TAP joins: the host side of host mode or of shared mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapSegment {
    /// The host-mode segment (without a network identifier): the TAP plays the host's side of
    /// vmnet's host network.
    Host,
    /// The shared-mode segment.
    Shared,
}

/// A Linux TAP device joined to a segment of the model, so frames of the model's interfaces
/// reach a real Linux network stack (and back). Detached and closed on drop.
#[derive(Debug)]
pub struct TapPort {
    fd: c_int,
    segment: Segment,
    stop: AtomicBool,
    name: String,
}

impl TapPort {
    /// The TAP's interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The attachment of a TAP; dropping it detaches and closes the TAP.
#[derive(Debug)]
pub struct Tap {
    port: Arc<TapPort>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Tap {
    /// The TAP's interface name.
    pub fn name(&self) -> &str {
        self.port.name()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        lock(&TAPS).retain(|t| !Arc::ptr_eq(t, &self.port));
        self.port.stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        // SAFETY: our descriptor, closed once; the reader thread has ended.
        unsafe { libc::close(self.port.fd) };
    }
}

/// A peer on one of the model's networks, for tests: a TAP joined to `segment` whose Linux end
/// lives, up and with an address, in a network namespace of its own, so the peer's kernel answers
/// ARP and ICMP (and runs whatever the test starts in the namespace). Needs root. On drop the
/// TAP is detached and closed, then the namespace deleted.
#[derive(Debug)]
pub struct Peer {
    tap: Option<Tap>,
    namespace: String,
}

impl Peer {
    /// Creates namespace `namespace` and TAP `tap_name` on `segment`, and gives the TAP address
    /// `cidr` (for example `10.77.0.1/24`) in the namespace.
    pub fn new(
        namespace: &str,
        tap_name: &str,
        segment: TapSegment,
        cidr: &str,
    ) -> std::io::Result<Peer> {
        ip(&["netns", "add", namespace])?;
        // From here on, dropping `peer` deletes the namespace.
        let mut peer = Peer {
            tap: None,
            namespace: namespace.to_owned(),
        };
        let tap = attach_tap(tap_name, segment)?;
        let name = tap.name().to_owned();
        peer.tap = Some(tap);
        ip(&["link", "set", &name, "netns", namespace])?;
        ip(&["-n", namespace, "addr", "add", cidr, "dev", &name])?;
        ip(&["-n", namespace, "link", "set", &name, "up"])?;
        Ok(peer)
    }

    /// The network namespace's name (for `ip netns exec`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The TAP's interface name (inside the namespace).
    pub fn tap_name(&self) -> &str {
        self.tap.as_ref().map_or("", Tap::name)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.tap.take());
        let _ = ip(&["netns", "del", &self.namespace]);
    }
}

/// Runs `ip ARGS`; its standard error becomes the error if it fails.
fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

static TAPS: Mutex<Vec<Arc<TapPort>>> = Mutex::new(Vec::new());

/// Creates the TAP device `name` (needs CAP_NET_ADMIN) and joins it to `segment`. The caller
/// configures the Linux side (moves it to a namespace, gives it an address, sets it up).
pub fn attach_tap(name: &str, segment: TapSegment) -> std::io::Result<Tap> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    const IFF_VNET_HDR: libc::c_short = 0x4000;
    const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
    #[repr(C)]
    struct IfReq {
        name: [c_char; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: a NUL-terminated path literal.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        // Every frame behind a 12-byte virtio-net header both ways (Linux's tun driver,
        // Documentation/networking/tuntap.rst), so that TSO frames of the model's interfaces
        // reach the Linux stack whole.
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    for (o, b) in req.name.iter_mut().zip(name.bytes()) {
        *o = b as c_char;
    }
    // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes, the layout of `IfReq`), live here.
    if unsafe { libc::ioctl(fd, TUNSETIFF, &raw mut req) } < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let hdr_len = VIRTIO_HDR as c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int, live here.
    if unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ, &raw const hdr_len) } < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let port = Arc::new(TapPort {
        fd,
        segment: match segment {
            TapSegment::Host => Segment::Host(None),
            TapSegment::Shared => Segment::Shared,
        },
        stop: AtomicBool::new(false),
        name: name.to_owned(),
    });
    lock(&TAPS).push(Arc::clone(&port));
    let p = Arc::clone(&port);
    let reader = std::thread::Builder::new()
        .name("vmnet-model-tap".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            let me = Arc::as_ptr(&p) as usize;
            while !p.stop.load(Ordering::SeqCst) {
                let mut pfd = libc::pollfd {
                    fd: p.fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one live pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                    continue;
                }
                // SAFETY: reading into our buffer from our descriptor.
                let n = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
                // Linux sends whole frames with checksums done (no TUNSETOFFLOAD): the header
                // says nothing the model's interfaces need.
                if n >= (VIRTIO_HDR + 14) as isize {
                    switch_from(me, &p.segment, &buf[VIRTIO_HDR..n as usize], None, None);
                }
            }
        })?;
    Ok(Tap {
        port,
        reader: Some(reader),
    })
}

fn mac_string(m: [u8; 6]) -> String {
    // vmnet writes the octets without leading zeros ("a6:5:0:1:e:ff").
    m.iter()
        .map(|b| format!("{b:x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_ip(s: Option<String>) -> Option<Ipv4Addr> {
    s?.parse().ok()
}

/// What `vmnet_start_interface` decided: the interface and its `interface_param` entries.
struct Started {
    iface: Iface,
    params: *mut c_void,
}

/// Reads `interface_desc` (Apple's "interface_desc XPC Dictionary Keys") and builds the
/// interface with its parameters (Apple's "interface_param XPC Dictionary Keys").
fn build(desc: *mut c_void, cfg: &Config, net: Option<&NetInfo>) -> Result<Started, u32> {
    let bad = |why| Err(refuse(why, VMNET_INVALID_ARGUMENT));
    if !xpc::is_dict(desc) {
        return bad("interface_desc is not a dictionary");
    }
    // vmnet_operation_mode_key: required, one of the operating_modes_t values (on a network,
    // the network's mode).
    let mode = match net
        .map(|n| n.mode)
        .or_else(|| xpc::read_u64(desc, key(&vmnet_operation_mode_key)))
    {
        Some(m @ (HOST_MODE | SHARED_MODE | BRIDGED_MODE)) => m,
        _ => return bad("missing or unknown vmnet_operation_mode_key"),
    };
    let header = xpc::read_bool(desc, key(&vmnet_enable_virtio_header_key)).unwrap_or(false);
    let csum = xpc::read_bool(desc, key(&vmnet_enable_checksum_offload_key)).unwrap_or(false);
    let tso = xpc::read_bool(desc, key(&vmnet_enable_tso_key)).unwrap_or(false);
    // Apple's page of vmnet_enable_virtio_header_key: not combinable with checksum offload.
    if header && csum {
        return bad("virtio header with checksum offload");
    }
    let segment = match mode {
        _ if net.is_some() => Segment::Network(net.map_or(0, |n| n.id)),
        BRIDGED_MODE => {
            // vmnet_shared_interface_name_key: required in bridged mode, one of
            // vmnet_copy_shared_interface_list's names.
            match xpc::read_string(desc, key(&vmnet_shared_interface_name_key)) {
                Some(n) if cfg.bridgeable.contains(&n) => Segment::Bridged(n),
                _ => {
                    return bad(
                        "bridged mode without a bridgeable vmnet_shared_interface_name_key",
                    );
                }
            }
        }
        SHARED_MODE => Segment::Shared,
        _ => Segment::Host(xpc::read_uuid(desc, key(&vmnet_network_identifier_key))),
    };
    // vmnet_start_address_key / vmnet_end_address_key / vmnet_subnet_mask_key: given together
    // (Apple's pages: the range of the DHCP server; the start address is the gateway's).
    let range = (
        xpc::read_string(desc, key(&vmnet_start_address_key)),
        xpc::read_string(desc, key(&vmnet_end_address_key)),
        xpc::read_string(desc, key(&vmnet_subnet_mask_key)),
    );
    let range = match net {
        Some(n) => {
            let (sub, m) = (u32::from(n.subnet), u32::from(n.mask));
            (
                Some(Ipv4Addr::from(sub + 1).to_string()),
                Some(Ipv4Addr::from((sub | !m) - 1).to_string()),
                Some(n.mask.to_string()),
            )
        }
        None => range,
    };
    let (start, end, mask) = match range {
        (None, None, None) => match mode {
            SHARED_MODE => (
                [192, 168, 64, 1].into(),
                [192, 168, 64, 254].into(),
                [255, 255, 255, 0].into(),
            ),
            _ => (
                [192, 168, 128, 1].into(),
                [192, 168, 128, 254].into(),
                [255, 255, 255, 0].into(),
            ),
        },
        (s, e, m) => match (parse_ip(s), parse_ip(e), parse_ip(m)) {
            (Some(s), Some(e), Some(m)) if mode != BRIDGED_MODE && u32::from(s) < u32::from(e) => {
                (s, e, m)
            }
            _ => return bad("incomplete or invalid DHCP range"),
        },
    };
    let mtu = net
        .map(|n| u64::from(n.mtu))
        .or_else(|| xpc::read_u64(desc, key(&vmnet_mtu_key)))
        .unwrap_or(1500);
    // The model accepts MTUs from the IPv6 minimum to a jumbo frame (a reading: the pages give
    // no bounds).
    if !(1280..=9000).contains(&mtu) {
        return bad("mtu out of range");
    }
    let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
    let mac = [
        0x2e,
        0x6d,
        0x6f,
        (id >> 16) as u8,
        (id >> 8) as u8,
        id as u8,
    ];
    let frame_max = mtu as usize + 14;
    // vmnet_max_packet_size_key: "The maximum size of the packet that an app can write to the
    // interface. This also defines the minimum size of the packet an app needs to pass to the
    // vmnet function for a successful read." Whether it counts the virtio header: a switch.
    let max_packet_size = frame_max
        + if header && cfg.header_counts_in_max_packet_size {
            VIRTIO_HDR
        } else {
            0
        };
    let hdr_len = if header { VIRTIO_HDR } else { 0 };
    let write_limit = if tso {
        MAX_GSO_FRAME + hdr_len
    } else {
        frame_max + hdr_len
    };
    let params = xpc::new(xpc::Value::Dict(BTreeMap::new()));
    let set_u = |k: &Key, v: u64| {
        // SAFETY: a live dictionary and a static key.
        unsafe { xpc::xpc_dictionary_set_uint64(params, k.0, v) }
    };
    let set_s = |k: &Key, v: String| {
        let v = std::ffi::CString::new(v).unwrap_or_default();
        // SAFETY: a live dictionary, a static key, a NUL-terminated value.
        unsafe { xpc::xpc_dictionary_set_string(params, k.0, v.as_ptr()) }
    };
    // vmnet_allocate_mac_address_key: default true; false gives no MAC.
    if xpc::read_bool(desc, key(&vmnet_allocate_mac_address_key)).unwrap_or(true) {
        set_s(&vmnet_mac_address_key, mac_string(mac));
    }
    set_u(&vmnet_mtu_key, mtu);
    set_u(&vmnet_max_packet_size_key, max_packet_size as u64);
    let uuid = xpc::read_uuid(desc, key(&vmnet_interface_id_key)).unwrap_or_else(|| {
        let mut u = [0u8; 16];
        u[8..].copy_from_slice(&id.to_be_bytes());
        u
    });
    // SAFETY: a live dictionary, a static key, 16 bytes.
    unsafe { xpc::xpc_dictionary_set_uuid(params, vmnet_interface_id_key.0, uuid.as_ptr()) };
    if mode != BRIDGED_MODE {
        set_s(&vmnet_start_address_key, start.to_string());
        set_s(&vmnet_end_address_key, end.to_string());
        set_s(&vmnet_subnet_mask_key, mask.to_string());
    }
    if mode == SHARED_MODE {
        set_s(&vmnet_nat66_prefix_key, "fd9b:6d6f:6465:6c00::".into());
        let mut g = lock(&GATEWAYS);
        let gw = g
            .get_or_insert_with(HashMap::new)
            .entry(segment.clone())
            .or_insert_with(|| Gateway::new(start, end, mask));
        gw.dhcp = net.is_none_or(|n| n.dhcp);
    }
    // vmnet_read_max_packets_key / vmnet_write_max_packets_key (macOS 15).
    if cfg.report_batch_maxima {
        set_u(&vmnet_read_max_packets_key, MAX_PACKETS_PER_CALL as u64);
        set_u(&vmnet_write_max_packets_key, MAX_PACKETS_PER_CALL as u64);
    }
    Ok(Started {
        iface: Iface {
            segment,
            header,
            tso,
            max_packet_size,
            write_limit,
            rx: Mutex::new(VecDeque::new()),
            rx_capacity: cfg.rx_capacity,
            events: Mutex::new(None),
            event_pending: AtomicBool::new(false),
            queue: Mutex::new(None),
            rules: Mutex::new(Vec::new()),
        },
        params,
    })
}

/// A pointer crossing to a queue thread.
struct SendPtr(*mut c_void);
// SAFETY: xpc objects of the model are thread-safe (atomic counts, mutex-guarded values).
unsafe impl Send for SendPtr {}

/// `interface_ref vmnet_start_interface(xpc_object_t interface_desc, dispatch_queue_t queue,
/// vmnet_start_interface_completion_handler_t handler);`
///
/// Apple's page: returns "A non-NULL interface handle on success, NULL otherwise"; the handler
/// is scheduled on `queue` with the status and, on success, the `interface_param` dictionary
/// (borrowed for the call: the model releases it after the handler returns).
///
/// # Safety
///
/// `handler` is NULL or a valid block of the handler's type.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_start_interface(
    interface_desc: *mut c_void,
    queue: *mut c_void,
    handler: *mut Block<StartFn>,
) -> *mut c_void {
    let _in_call = called("vmnet_start_interface");
    // SAFETY: forwarded.
    unsafe { start(None, interface_desc, queue, handler) }
}

/// `vmnet_start_interface` and `vmnet_interface_start_with_network` (on network `net`).
///
/// # Safety
///
/// `handler` is NULL or a valid block of the handler's type.
unsafe fn start(
    net: Option<NetInfo>,
    interface_desc: *mut c_void,
    queue: *mut c_void,
    handler: *mut Block<StartFn>,
) -> *mut c_void {
    // SAFETY: the caller's contract.
    let Some(block) = (unsafe { Held::copy(handler) }) else {
        refuse("start without a handler", 0);
        return std::ptr::null_mut();
    };
    let Some(queue) = QueueRef::retain(queue) else {
        refuse("start without a queue", 0);
        return std::ptr::null_mut();
    };
    let cfg = config();
    let outcome = match cfg.privileges {
        Privileges::DeniedNullHandle => {
            refuse("start without privileges", 0);
            return std::ptr::null_mut();
        }
        Privileges::DeniedStatus(s) => Err(refuse("start without privileges", s)),
        Privileges::Granted => build(interface_desc, &cfg, net.as_ref()),
    };
    let (handle, status, params) = match outcome {
        Ok(Started { iface, params }) => {
            let iface = Arc::new(iface);
            *lock(&iface.queue) = QueueRef::retain(queue.0 as *mut c_void);
            let h = Arc::as_ptr(&iface) as usize;
            lock(&IFACES).insert(h, iface);
            (h, VMNET_SUCCESS, params)
        }
        Err(status) => {
            // The handle of a failed start is never usable.
            let dead = Arc::new(Iface {
                segment: Segment::Host(None),
                header: false,
                tso: false,
                max_packet_size: 0,
                write_limit: 0,
                rx: Mutex::new(VecDeque::new()),
                rx_capacity: 0,
                events: Mutex::new(None),
                event_pending: AtomicBool::new(false),
                queue: Mutex::new(None),
                rules: Mutex::new(Vec::new()),
            });
            let h = Arc::as_ptr(&dead) as usize;
            lock(&DEAD).push(dead);
            (h, status, std::ptr::null_mut())
        }
    };
    let params = SendPtr(params);
    on_queue(&queue, move || {
        let params = params;
        block.0.call((status, params.0));
        if !params.0.is_null() {
            // SAFETY: our reference to the parameters.
            unsafe { xpc::xpc_release(params.0) };
        }
    });
    handle as *mut c_void
}

/// `vmnet_return_t vmnet_interface_set_event_callback(interface_ref interface, interface_event_t
/// event_mask, dispatch_queue_t queue, vmnet_interface_event_callback_t callback);`
///
/// Apple's page: the callback is scheduled on `queue` for the events of `event_mask`; "the
/// callback can be unset by calling the function again, specifying a NULL queue and a NULL
/// handler". One NULL without the other is refused (a reading).
///
/// # Safety
///
/// `callback` is NULL or a valid block of the callback's type.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_interface_set_event_callback(
    interface: *mut c_void,
    event_mask: u32,
    queue: *mut c_void,
    callback: *mut Block<EventFn>,
) -> u32 {
    let _in_call = called("vmnet_interface_set_event_callback");
    let Some(i) = iface(interface) else {
        return refuse(
            "set_event_callback on no started interface",
            VMNET_INVALID_ARGUMENT,
        );
    };
    if event_mask & !PACKETS_AVAILABLE != 0 {
        return refuse("unknown event in the mask", VMNET_INVALID_ARGUMENT);
    }
    match (queue.is_null(), callback.is_null()) {
        (true, true) => {
            lock(&i.events).take();
            VMNET_SUCCESS
        }
        (false, false) => {
            let Some(q) = QueueRef::retain(queue) else {
                return refuse("event queue is no queue", VMNET_INVALID_ARGUMENT);
            };
            // SAFETY: non-NULL and valid by the caller's contract.
            let Some(block) = (unsafe { Held::copy(callback) }) else {
                return VMNET_INVALID_ARGUMENT;
            };
            *lock(&i.events) = Some(Events {
                queue: q,
                block,
                mask: event_mask,
            });
            VMNET_SUCCESS
        }
        _ => refuse(
            "event queue and callback not both set or both NULL",
            VMNET_INVALID_ARGUMENT,
        ),
    }
}

/// One checked packet descriptor: its iovecs and declared size.
///
/// # Safety
///
/// `d` points to a readable `vmpktdesc`.
unsafe fn iovs<'a>(d: *const Desc) -> Result<(&'a [iovec], usize), u32> {
    // SAFETY: the caller's contract.
    let d = unsafe { &*d };
    if d.vm_pkt_iov.is_null() || d.vm_pkt_iovcnt == 0 {
        return Err(refuse("packet without iovecs", VMNET_INVALID_ARGUMENT));
    }
    // SAFETY: the caller gives `vm_pkt_iovcnt` iovecs at `vm_pkt_iov`.
    let v = unsafe { std::slice::from_raw_parts(d.vm_pkt_iov, d.vm_pkt_iovcnt as usize) };
    if v.iter().any(|i| i.iov_len == 0 || i.iov_base.is_null()) {
        return Err(refuse("zero-length or NULL iovec", VMNET_INVALID_ARGUMENT));
    }
    Ok((v, v.iter().map(|i| i.iov_len).sum()))
}

/// `struct vmpktdesc`.
#[repr(C)]
#[derive(Debug)]
pub struct Desc {
    /// `size_t vm_pkt_size`.
    pub vm_pkt_size: usize,
    /// `struct iovec *vm_pkt_iov`.
    pub vm_pkt_iov: *mut iovec,
    /// `uint32_t vm_pkt_iovcnt`.
    pub vm_pkt_iovcnt: u32,
    /// `uint32_t vm_flags`.
    pub vm_flags: u32,
}

/// The common checks of `vmnet_read`/`vmnet_write`: the interface, the count.
///
/// # Safety
///
/// `pktcnt` is NULL or readable.
unsafe fn begin(
    interface: *mut c_void,
    packets: *mut Desc,
    pktcnt: *mut c_int,
) -> Result<(Arc<Iface>, usize), u32> {
    let Some(i) = iface(interface) else {
        return Err(refuse(
            "read/write on no started interface",
            VMNET_INVALID_ARGUMENT,
        ));
    };
    if packets.is_null() || pktcnt.is_null() {
        return Err(refuse("NULL packets or pktcnt", VMNET_INVALID_ARGUMENT));
    }
    // SAFETY: non-NULL, the caller's contract.
    let n = unsafe { *pktcnt };
    let Ok(n) = usize::try_from(n) else {
        return Err(refuse("negative pktcnt", VMNET_INVALID_ARGUMENT));
    };
    if n > MAX_PACKETS_PER_CALL {
        return Err(refuse(
            "more than 200 packets in one call",
            VMNET_TOO_MANY_PACKETS,
        ));
    }
    Ok((i, n))
}

fn take_fault(q: &Mutex<VecDeque<Fault>>) -> Option<Fault> {
    lock(q).pop_front()
}

/// `vmnet_return_t vmnet_read(interface_ref interface, struct vmpktdesc *packets, int *pktcnt);`
///
/// Apple's page: "pktcnt: The number of packets to read. On return, this parameter is
/// populated with the number of packets read, or 0 no packets are available to be read";
/// "Each packet buffer passed should be at least as large as the value of
/// vmnet_max_packet_size_key" (a smaller one is refused with `VMNET_INVALID_ARGUMENT`).
/// `vm_pkt_size` comes in as the buffer's size and goes out as the packet's; `vm_flags` is set
/// to 0. At most 200 packets and 256 KiB of buffers per call.
///
/// # Safety
///
/// `packets` holds `*pktcnt` descriptors whose iovecs are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_read(
    interface: *mut c_void,
    packets: *mut Desc,
    pktcnt: *mut c_int,
) -> u32 {
    let _in_call = called("vmnet_read");
    // SAFETY: forwarded.
    let (i, n) = match unsafe { begin(interface, packets, pktcnt) } {
        Ok(v) => v,
        Err(s) => return s,
    };
    let mut room = n;
    match take_fault(&READ_FAULTS) {
        Some(Fault::Status(s)) => return s,
        Some(Fault::Short(k)) => room = room.min(k),
        None => {}
    }
    let mut total = 0usize;
    for k in 0..n {
        // SAFETY: `k < *pktcnt` descriptors, the caller's contract.
        let (v, cap) = match unsafe { iovs(packets.add(k)) } {
            Ok(v) => v,
            Err(s) => return s,
        };
        // SAFETY: as above.
        let size = unsafe { (*packets.add(k)).vm_pkt_size };
        if size > cap {
            return refuse("vm_pkt_size larger than the iovecs", VMNET_INVALID_ARGUMENT);
        }
        if size < i.max_packet_size {
            return refuse(
                "read buffer smaller than vmnet_max_packet_size_key",
                VMNET_INVALID_ARGUMENT,
            );
        }
        let _ = v;
        total += size;
    }
    if total > MAX_BYTES_PER_CALL {
        return refuse(
            "read buffers over 256 KiB in one call",
            VMNET_TOO_MANY_PACKETS,
        );
    }
    let mut got = 0;
    let mut rx = lock(&i.rx);
    while got < room {
        let Some(pkt) = rx.pop_front() else { break };
        // SAFETY: checked above.
        let d = unsafe { &mut *packets.add(got) };
        if pkt.len() > d.vm_pkt_size {
            // Larger than this buffer (a TSO frame into an MTU-size buffer): dropped, counted.
            refuse("packet larger than the read buffer", 0);
            continue;
        }
        // SAFETY: checked above.
        let (v, _) = unsafe { iovs(d) }.unwrap_or((&[], 0));
        let mut off = 0;
        for io in v {
            if off == pkt.len() {
                break;
            }
            let take = io.iov_len.min(pkt.len() - off);
            // SAFETY: the iovec is writable for `iov_len` bytes by the caller's contract.
            unsafe { std::ptr::copy_nonoverlapping(pkt[off..].as_ptr(), io.iov_base.cast(), take) };
            off += take;
        }
        d.vm_pkt_size = pkt.len();
        d.vm_flags = 0;
        got += 1;
    }
    // SAFETY: non-NULL, checked in `begin`.
    unsafe { *pktcnt = got as c_int };
    VMNET_SUCCESS
}

/// `vmnet_return_t vmnet_write(interface_ref interface, struct vmpktdesc *packets, int
/// *pktcnt);`
///
/// Apple's page: "Attempts to write specified packets to an interface"; `*pktcnt` comes back as
/// the number written. Each packet is `vm_pkt_size` bytes over its iovecs (a mismatch or a
/// zero-length iovec is `VMNET_INVALID_ARGUMENT`); larger than the interface's maximum is
/// `VMNET_PACKET_TOO_BIG` ("Packet size larger than MTU", `<vmnet/vmnet.h>`); more than 200
/// packets or 256 KiB in one call is `VMNET_TOO_MANY_PACKETS`. Checks cover the whole call before
/// anything is sent.
///
/// # Safety
///
/// `packets` holds `*pktcnt` descriptors whose iovecs are readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_write(
    interface: *mut c_void,
    packets: *mut Desc,
    pktcnt: *mut c_int,
) -> u32 {
    let _in_call = called("vmnet_write");
    // SAFETY: forwarded.
    let (i, n) = match unsafe { begin(interface, packets, pktcnt) } {
        Ok(v) => v,
        Err(s) => return s,
    };
    let cfg = config();
    let mut frames = Vec::with_capacity(n);
    let mut total = 0usize;
    for k in 0..n {
        // SAFETY: `k < *pktcnt`, the caller's contract.
        let (v, len) = match unsafe { iovs(packets.add(k)) } {
            Ok(v) => v,
            Err(s) => return s,
        };
        // SAFETY: as above.
        let d = unsafe { &*packets.add(k) };
        if d.vm_pkt_size != len {
            return refuse(
                "vm_pkt_size differs from the iovecs' total",
                VMNET_INVALID_ARGUMENT,
            );
        }
        if cfg.refuse_multi_iovec && v.len() > 1 {
            return refuse("multi-iovec packet (switch)", VMNET_INVALID_ARGUMENT);
        }
        if len > i.write_limit {
            return refuse(
                "packet larger than the maximum packet size",
                VMNET_PACKET_TOO_BIG,
            );
        }
        total += len;
        let mut f = Vec::with_capacity(len);
        for io in v {
            // SAFETY: readable for `iov_len` bytes by the caller's contract.
            f.extend_from_slice(unsafe {
                std::slice::from_raw_parts(io.iov_base.cast::<u8>(), io.iov_len)
            });
        }
        frames.push(f);
    }
    if total > MAX_BYTES_PER_CALL {
        return refuse("over 256 KiB in one write", VMNET_TOO_MANY_PACKETS);
    }
    let mut room = n;
    match take_fault(&WRITE_FAULTS) {
        Some(Fault::Status(s)) => return s,
        Some(Fault::Short(k)) => room = room.min(k),
        None => {}
    }
    let hdr = if i.header { VIRTIO_HDR } else { 0 };
    for f in frames.iter().take(room) {
        if f.len() < hdr + 14 {
            refuse("frame shorter than an Ethernet header: dropped", 0);
            continue;
        }
        if !i.tso && f.len() - hdr > i.write_limit - hdr {
            continue;
        }
        let (h, frame) = f.split_at(hdr);
        switch(&i, frame, (hdr > 0).then_some(h));
    }
    // SAFETY: non-NULL, checked in `begin`.
    unsafe { *pktcnt = room as c_int };
    VMNET_SUCCESS
}

/// `vmnet_return_t vmnet_stop_interface(interface_ref interface, dispatch_queue_t queue,
/// vmnet_interface_completion_handler_t handler);`
///
/// The interface stops at once (it leaves its segment, its event callback is dropped) and the
/// handler is scheduled on `queue` with the status. The handle is invalid afterwards.
///
/// # Safety
///
/// `handler` is NULL or a valid block of the handler's type.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_stop_interface(
    interface: *mut c_void,
    queue: *mut c_void,
    handler: *mut Block<StatusFn>,
) -> u32 {
    let _in_call = called("vmnet_stop_interface");
    let Some(q) = QueueRef::retain(queue) else {
        return refuse("stop without a queue", VMNET_INVALID_ARGUMENT);
    };
    // SAFETY: the caller's contract.
    let Some(block) = (unsafe { Held::copy(handler) }) else {
        return refuse("stop without a handler", VMNET_INVALID_ARGUMENT);
    };
    let Some(i) = lock(&IFACES).remove(&(interface as usize)) else {
        return refuse("stop of no started interface", VMNET_INVALID_ARGUMENT);
    };
    let events = lock(&i.events).take();
    lock(&i.rx).clear();
    lock(&i.queue).take();
    lock(&i.rules).clear();
    if lock(&IFACES).values().all(|o| o.segment != i.segment)
        && let Some(g) = lock(&GATEWAYS).as_mut()
    {
        g.remove(&i.segment);
    }
    lock(&DEAD).push(i);
    on_queue(&q, move || block.0.call((VMNET_SUCCESS,)));
    if let Some(e) = events
        && config().event_after_stop
    {
        let Events { queue, block, .. } = e;
        on_queue(&queue, move || deliver_event(&block, 1));
    }
    VMNET_SUCCESS
}

/// `xpc_object_t vmnet_copy_shared_interface_list(void);` — the interfaces bridged mode can use,
/// as an xpc array of strings owned by the caller (Apple's page of the function).
#[unsafe(no_mangle)]
pub extern "C" fn vmnet_copy_shared_interface_list() -> *mut c_void {
    let _in_call = called("vmnet_copy_shared_interface_list");
    let names = config().bridgeable.iter().map(|n| xpc::string(n)).collect();
    xpc::array(names)
}

fn addr_bytes(family: u8, p: *const c_void) -> Option<[u8; 16]> {
    let len = match family {
        AF_INET => 4,
        AF_INET6 => 16,
        _ => return None,
    };
    if p.is_null() {
        return None;
    }
    let mut a = [0u8; 16];
    // SAFETY: `p` points to an `in_addr` or `in6_addr` per `family`, the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), a.as_mut_ptr(), len) };
    Some(a)
}

/// Schedules an optional status handler on the interface's queue.
fn complete(i: &Iface, handler: Option<Held<StatusFn>>, status: u32) {
    if let (Some(b), Some(q)) = (handler, lock(&i.queue).as_ref()) {
        on_queue(q, move || b.0.call((status,)));
    }
}

fn add_rule(interface: *mut c_void, rule: Rule, handler: *mut Block<StatusFn>) -> u32 {
    let Some(i) = iface(interface) else {
        return refuse(
            "port forwarding on no started interface",
            VMNET_INVALID_ARGUMENT,
        );
    };
    // Port forwarding is a feature of the NAT of shared mode (a reading).
    if i.segment != Segment::Shared || !matches!(rule.proto, 6 | 17) {
        return refuse(
            "port forwarding outside shared mode or not TCP/UDP",
            VMNET_INVALID_ARGUMENT,
        );
    }
    // SAFETY: NULL or a valid block, the caller's contract.
    let handler = unsafe { Held::copy(handler) };
    let mut rules = lock(&i.rules);
    let status = if rules
        .iter()
        .any(|r| r.proto == rule.proto && r.ext == rule.ext && r.family == rule.family)
    {
        refuse("port already forwarded", VMNET_INVALID_ARGUMENT)
    } else {
        rules.push(rule);
        VMNET_SUCCESS
    };
    drop(rules);
    complete(&i, handler, status);
    VMNET_SUCCESS
}

fn remove_rule(
    interface: *mut c_void,
    proto: u8,
    ext: u16,
    family: u8,
    handler: *mut Block<StatusFn>,
) -> u32 {
    let Some(i) = iface(interface) else {
        return refuse(
            "port forwarding on no started interface",
            VMNET_INVALID_ARGUMENT,
        );
    };
    // SAFETY: NULL or a valid block, the caller's contract.
    let handler = unsafe { Held::copy(handler) };
    let mut rules = lock(&i.rules);
    let before = rules.len();
    rules.retain(|r| !(r.proto == proto && r.ext == ext && r.family == family));
    let status = if rules.len() < before {
        VMNET_SUCCESS
    } else {
        refuse("no such forwarding rule", VMNET_INVALID_ARGUMENT)
    };
    drop(rules);
    complete(&i, handler, status);
    VMNET_SUCCESS
}

fn rules_array(i: &Iface, family: Option<u8>) -> *mut c_void {
    let items = lock(&i.rules)
        .iter()
        .filter(|r| family.is_none_or(|f| f == r.family))
        .map(|r| {
            let d = xpc::new(xpc::Value::Dict(BTreeMap::new()));
            // SAFETY: a live dictionary of the model and literal keys.
            unsafe {
                xpc::xpc_dictionary_set_uint64(d, c"model_protocol".as_ptr(), r.proto.into());
                xpc::xpc_dictionary_set_uint64(d, c"model_external_port".as_ptr(), r.ext.into());
                xpc::xpc_dictionary_set_uint64(d, c"model_family".as_ptr(), r.family.into());
                xpc::xpc_dictionary_set_uint64(d, c"model_internal_port".as_ptr(), r.int.into());
                xpc::xpc_dictionary_set_uuid(d, c"model_address".as_ptr(), r.addr.as_ptr());
            }
            d
        })
        .collect();
    xpc::array(items)
}

fn get_rules(interface: *mut c_void, family: Option<u8>, handler: *mut Block<RulesFn>) -> u32 {
    let Some(i) = iface(interface) else {
        return refuse(
            "port forwarding on no started interface",
            VMNET_INVALID_ARGUMENT,
        );
    };
    // SAFETY: NULL or a valid block, the caller's contract.
    let Some(handler) = (unsafe { Held::copy(handler) }) else {
        return refuse("rules without a handler", VMNET_INVALID_ARGUMENT);
    };
    let arr = SendPtr(rules_array(&i, family));
    if let Some(q) = lock(&i.queue).as_ref() {
        on_queue(q, move || {
            let arr = arr;
            handler.0.call((arr.0,));
            // SAFETY: our reference.
            unsafe { xpc::xpc_release(arr.0) };
        });
    }
    VMNET_SUCCESS
}

fn rule_of(rule: *mut c_void) -> Option<Rule> {
    let n = |k: &CStr| xpc::read_u64(rule, k);
    Some(Rule {
        proto: n(c"model_protocol")? as u8,
        ext: n(c"model_external_port")? as u16,
        family: n(c"model_family")? as u8,
        int: n(c"model_internal_port")? as u16,
        addr: xpc::read_uuid(rule, c"model_address")?,
    })
}

/// `vmnet_interface_add_ip_port_forwarding_rule` (macOS 11): the handler (nullable) gets the
/// status on the interface's queue.
///
/// # Safety
///
/// `internal_address` points to an address of `address_family`; `handler` is NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_interface_add_ip_port_forwarding_rule(
    interface: *mut c_void,
    protocol: u8,
    external_port: u16,
    address_family: u8,
    internal_address: *const c_void,
    internal_port: u16,
    handler: *mut Block<StatusFn>,
) -> u32 {
    let _in_call = called("vmnet_interface_add_ip_port_forwarding_rule");
    let Some(addr) = addr_bytes(address_family, internal_address) else {
        return refuse("bad family or NULL address", VMNET_INVALID_ARGUMENT);
    };
    let rule = Rule {
        proto: protocol,
        ext: external_port,
        family: address_family,
        addr,
        int: internal_port,
    };
    add_rule(interface, rule, handler)
}

/// `vmnet_interface_remove_ip_port_forwarding_rule` (macOS 11).
///
/// # Safety
///
/// `handler` is NULL or a valid block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_interface_remove_ip_port_forwarding_rule(
    interface: *mut c_void,
    protocol: u8,
    external_port: u16,
    address_family: u8,
    handler: *mut Block<StatusFn>,
) -> u32 {
    let _in_call = called("vmnet_interface_remove_ip_port_forwarding_rule");
    remove_rule(interface, protocol, external_port, address_family, handler)
}

/// `vmnet_interface_get_ip_port_forwarding_rules` (macOS 11): the handler gets an xpc array of
/// rules of `address_family`, borrowed for the call.
///
/// # Safety
///
/// `handler` is a valid block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_interface_get_ip_port_forwarding_rules(
    interface: *mut c_void,
    address_family: u8,
    handler: *mut Block<RulesFn>,
) -> u32 {
    let _in_call = called("vmnet_interface_get_ip_port_forwarding_rules");
    get_rules(interface, Some(address_family), handler)
}

/// `vmnet_ip_port_forwarding_rule_get_details` (macOS 11).
///
/// # Safety
///
/// The out-pointers are writable; `internal_address` holds an address of `address_family`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_ip_port_forwarding_rule_get_details(
    rule: *mut c_void,
    protocol: *mut u8,
    external_port: *mut u16,
    address_family: u8,
    internal_address: *mut c_void,
    internal_port: *mut u16,
) -> u32 {
    let _in_call = called("vmnet_ip_port_forwarding_rule_get_details");
    let Some(r) = rule_of(rule) else {
        return refuse("not a forwarding rule", VMNET_INVALID_ARGUMENT);
    };
    if r.family != address_family
        || protocol.is_null()
        || external_port.is_null()
        || internal_address.is_null()
        || internal_port.is_null()
    {
        return refuse(
            "rule details: family mismatch or NULL out-pointer",
            VMNET_INVALID_ARGUMENT,
        );
    }
    let len = if r.family == AF_INET { 4 } else { 16 };
    // SAFETY: non-NULL out-pointers, writable by the caller's contract.
    unsafe {
        *protocol = r.proto;
        *external_port = r.ext;
        *internal_port = r.int;
        std::ptr::copy_nonoverlapping(r.addr.as_ptr(), internal_address.cast::<u8>(), len);
    }
    VMNET_SUCCESS
}

/// `vmnet_interface_add_port_forwarding_rule` (macOS 10.15, deprecated in 12): IPv4 only.
///
/// # Safety
///
/// `handler` is NULL or a valid block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_interface_add_port_forwarding_rule(
    interface: *mut c_void,
    protocol: u8,
    external_port: u16,
    internal_address: in_addr,
    internal_port: u16,
    handler: *mut Block<StatusFn>,
) -> u32 {
    let _in_call = called("vmnet_interface_add_port_forwarding_rule");
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&internal_address.s_addr.to_ne_bytes());
    let rule = Rule {
        proto: protocol,
        ext: external_port,
        family: AF_INET,
        addr,
        int: internal_port,
    };
    add_rule(interface, rule, handler)
}

/// `vmnet_interface_remove_port_forwarding_rule` (macOS 10.15, deprecated in 12).
///
/// # Safety
///
/// `handler` is NULL or a valid block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_interface_remove_port_forwarding_rule(
    interface: *mut c_void,
    protocol: u8,
    external_port: u16,
    handler: *mut Block<StatusFn>,
) -> u32 {
    let _in_call = called("vmnet_interface_remove_port_forwarding_rule");
    remove_rule(interface, protocol, external_port, AF_INET, handler)
}

/// `vmnet_interface_get_port_forwarding_rules` (macOS 10.15, deprecated in 12): IPv4 rules.
///
/// # Safety
///
/// `handler` is a valid block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_interface_get_port_forwarding_rules(
    interface: *mut c_void,
    handler: *mut Block<RulesFn>,
) -> u32 {
    let _in_call = called("vmnet_interface_get_port_forwarding_rules");
    get_rules(interface, Some(AF_INET), handler)
}

/// `vmnet_port_forwarding_rule_get_details` (macOS 10.15, deprecated in 12).
///
/// # Safety
///
/// The out-pointers are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_port_forwarding_rule_get_details(
    rule: *mut c_void,
    protocol: *mut u8,
    external_port: *mut u16,
    internal_address: *mut in_addr,
    internal_port: *mut u16,
) -> u32 {
    let _in_call = called("vmnet_port_forwarding_rule_get_details");
    // SAFETY: forwarded; an `in_addr` holds the 4 bytes of AF_INET.
    unsafe {
        vmnet_ip_port_forwarding_rule_get_details(
            rule,
            protocol,
            external_port,
            AF_INET,
            internal_address.cast(),
            internal_port,
        )
    }
}

// ---- macOS 26: vmnet_network_configuration_* / vmnet_network_* ----------------------------
//
// Apple's pages of the macOS 26 functions: a configuration (`vmnet_network_configuration_create`
// for shared or host mode, then setters) makes a network (`vmnet_network_create`) on which
// interfaces start (`vmnet_interface_start_with_network`); a network can be serialized to an xpc
// object and recreated from it (in another process), giving the same network. Both objects are
// CoreFoundation objects released with `CFRelease`.

/// What an interface started on a network takes from it.
#[derive(Clone, Debug)]
struct NetInfo {
    id: u64,
    mode: u64,
    subnet: Ipv4Addr,
    mask: Ipv4Addr,
    prefix: [u8; 16],
    prefix_len: u8,
    mtu: u32,
    dhcp: bool,
}

#[derive(Debug)]
enum CfValue {
    Config(Mutex<NetInfo>),
    Network(NetInfo),
}

#[derive(Debug)]
struct CfObj {
    refs: AtomicI64,
    value: CfValue,
}

static CF_LIVE: AtomicI64 = AtomicI64::new(0);
static CF_ALL: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// CoreFoundation objects (network configurations and networks) not yet released.
pub fn cf_live() -> i64 {
    CF_LIVE.load(Ordering::SeqCst)
}

fn cf_new(value: CfValue) -> *mut c_void {
    let p = Box::into_raw(Box::new(CfObj {
        refs: AtomicI64::new(1),
        value,
    }));
    lock(&CF_ALL).push(p as usize);
    CF_LIVE.fetch_add(1, Ordering::SeqCst);
    p.cast()
}

/// The live CF object behind `p` (objects are never freed, so `'static`).
fn cf(p: *const c_void) -> Option<&'static CfObj> {
    if p.is_null() || !lock(&CF_ALL).contains(&(p as usize)) {
        return None;
    }
    // SAFETY: made by `Box::into_raw` in `cf_new`, never freed.
    let o = unsafe { &*p.cast::<CfObj>() };
    (o.refs.load(Ordering::SeqCst) > 0).then_some(o)
}

fn config_of(p: *mut c_void) -> Option<&'static Mutex<NetInfo>> {
    match &cf(p)?.value {
        CfValue::Config(c) => Some(c),
        CfValue::Network(_) => None,
    }
}

fn network_of(p: *mut c_void) -> Option<&'static NetInfo> {
    match &cf(p)?.value {
        CfValue::Network(n) => Some(n),
        CfValue::Config(_) => None,
    }
}

/// `void CFRelease(CFTypeRef cf);` for the model's vmnet network objects.
///
/// # Safety
///
/// None beyond the C contract; unknown pointers are counted, not dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CFRelease(obj: *const c_void) {
    let Some(o) = cf(obj) else {
        refuse("CFRelease of no live network object", 0);
        return;
    };
    if o.refs.fetch_sub(1, Ordering::SeqCst) == 1 {
        CF_LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes `status` through `out` when it is not NULL.
fn put_status(out: *mut u32, status: u32) {
    if !out.is_null() {
        // SAFETY: a non-NULL status out-pointer is writable by the C contract.
        unsafe { *out = status };
    }
}

/// `vmnet_network_configuration_create(vmnet_mode_t mode, vmnet_return_t *status)`: shared or
/// host mode.
///
/// # Safety
///
/// `status` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_network_configuration_create(
    mode: u32,
    status: *mut u32,
) -> *mut c_void {
    let _in_call = called("vmnet_network_configuration_create");
    let mode = u64::from(mode);
    if mode != SHARED_MODE && mode != HOST_MODE {
        put_status(
            status,
            refuse(
                "network configuration of a mode other than shared or host",
                VMNET_INVALID_ARGUMENT,
            ),
        );
        return std::ptr::null_mut();
    }
    let subnet = if mode == SHARED_MODE {
        [192, 168, 65, 0]
    } else {
        [192, 168, 129, 0]
    };
    put_status(status, VMNET_SUCCESS);
    cf_new(CfValue::Config(Mutex::new(NetInfo {
        id: 0,
        mode,
        subnet: subnet.into(),
        mask: [255, 255, 255, 0].into(),
        prefix: [
            0xfd, 0x9b, 0x6d, 0x6f, 0x64, 0x65, 0x6c, 0x01, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        prefix_len: 64,
        mtu: 1500,
        dhcp: true,
    })))
}

macro_rules! config_flag {
    ($($name:ident => $body:expr),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "(vmnet_network_configuration_ref config)`.")]
        ///
        /// # Safety
        ///
        /// None beyond the C contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(config: *mut c_void) {
            let _in_call = called(stringify!($name));
            match config_of(config) {
                #[allow(clippy::redundant_closure_call)]
                Some(c) => ($body)(&mut *lock(c)),
                None => {
                    refuse("not a network configuration", 0);
                }
            }
        }
    )*};
}

config_flag!(
    vmnet_network_configuration_disable_dhcp => |c: &mut NetInfo| c.dhcp = false,
    vmnet_network_configuration_disable_dns_proxy => |_: &mut NetInfo| {},
    vmnet_network_configuration_disable_nat44 => |_: &mut NetInfo| {},
    vmnet_network_configuration_disable_nat66 => |_: &mut NetInfo| {},
    vmnet_network_configuration_disable_router_advertisement => |_: &mut NetInfo| {},
);

/// `vmnet_network_configuration_set_external_interface(config, const char *ifname)`: one of
/// the bridgeable names (a reading).
///
/// # Safety
///
/// `ifname` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_network_configuration_set_external_interface(
    config: *mut c_void,
    ifname: *const c_char,
) -> u32 {
    let _in_call = called("vmnet_network_configuration_set_external_interface");
    if config_of(config).is_none() || ifname.is_null() {
        return refuse(
            "external interface: no configuration or no name",
            VMNET_INVALID_ARGUMENT,
        );
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let name = unsafe { CStr::from_ptr(ifname) }
        .to_string_lossy()
        .into_owned();
    if self::config().bridgeable.contains(&name) {
        VMNET_SUCCESS
    } else {
        refuse(
            "external interface not in the shared interface list",
            VMNET_INVALID_ARGUMENT,
        )
    }
}

/// `vmnet_network_configuration_set_ipv4_subnet(config, const struct in_addr *subnet, const
/// struct in_addr *mask)`: a contiguous mask and a subnet address without host bits (a reading).
///
/// # Safety
///
/// The pointers are NULL or readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_network_configuration_set_ipv4_subnet(
    config: *mut c_void,
    subnet: *const in_addr,
    mask: *const in_addr,
) -> u32 {
    let _in_call = called("vmnet_network_configuration_set_ipv4_subnet");
    let Some(c) = config_of(config) else {
        return refuse("not a network configuration", VMNET_INVALID_ARGUMENT);
    };
    if subnet.is_null() || mask.is_null() {
        return refuse("NULL subnet or mask", VMNET_INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, readable by the caller's contract.
    let (s, m) = unsafe {
        (
            Ipv4Addr::from((*subnet).s_addr.to_ne_bytes()),
            Ipv4Addr::from((*mask).s_addr.to_ne_bytes()),
        )
    };
    let (su, mu) = (u32::from(s), u32::from(m));
    if mu.leading_ones() + mu.trailing_zeros() != 32 || mu.leading_ones() > 30 || su & !mu != 0 {
        return refuse("bad IPv4 subnet or mask", VMNET_INVALID_ARGUMENT);
    }
    let mut c = lock(c);
    c.subnet = s;
    c.mask = m;
    VMNET_SUCCESS
}

/// `vmnet_network_configuration_set_ipv6_prefix(config, const struct in6_addr *prefix, uint8_t
/// len)`.
///
/// # Safety
///
/// `prefix` is NULL or readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_network_configuration_set_ipv6_prefix(
    config: *mut c_void,
    prefix: *const libc::in6_addr,
    len: u8,
) -> u32 {
    let _in_call = called("vmnet_network_configuration_set_ipv6_prefix");
    let Some(c) = config_of(config) else {
        return refuse("not a network configuration", VMNET_INVALID_ARGUMENT);
    };
    if prefix.is_null() || len == 0 || len > 128 {
        return refuse("bad IPv6 prefix", VMNET_INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, readable by the caller's contract.
    let p = unsafe { (*prefix).s6_addr };
    let mut c = lock(c);
    c.prefix = p;
    c.prefix_len = len;
    VMNET_SUCCESS
}

/// `vmnet_network_configuration_set_mtu(config, uint32_t mtu)`: 1280 to 9000 (a reading).
///
/// # Safety
///
/// None beyond the C contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_network_configuration_set_mtu(config: *mut c_void, mtu: u32) -> u32 {
    let _in_call = called("vmnet_network_configuration_set_mtu");
    let Some(c) = config_of(config) else {
        return refuse("not a network configuration", VMNET_INVALID_ARGUMENT);
    };
    if !(1280..=9000).contains(&mtu) {
        return refuse("network mtu out of range", VMNET_INVALID_ARGUMENT);
    }
    lock(c).mtu = mtu;
    VMNET_SUCCESS
}

/// `vmnet_network_configuration_add_dhcp_reservation(config, const ether_addr_t *client, const
/// struct in_addr *reservation)`: accepted and checked, not served (the model's DHCP hands out
/// the range in order).
///
/// # Safety
///
/// The pointers are NULL or readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_network_configuration_add_dhcp_reservation(
    config: *mut c_void,
    client: *const [u8; 6],
    reservation: *const in_addr,
) -> u32 {
    let _in_call = called("vmnet_network_configuration_add_dhcp_reservation");
    if config_of(config).is_none() || client.is_null() || reservation.is_null() {
        return refuse("DHCP reservation: bad arguments", VMNET_INVALID_ARGUMENT);
    }
    VMNET_SUCCESS
}

/// `vmnet_network_configuration_add_port_forwarding_rule(config, uint8_t protocol, sa_family_t
/// address_family, uint16_t internal_port, uint16_t external_port, const void
/// *internal_address)`: TCP or UDP, IPv4 or IPv6 (macOS's `sa_family_t` is one byte).
///
/// # Safety
///
/// `internal_address` is NULL or an address of `address_family`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_network_configuration_add_port_forwarding_rule(
    config: *mut c_void,
    protocol: u8,
    address_family: u8,
    _internal_port: u16,
    _external_port: u16,
    internal_address: *const c_void,
) -> u32 {
    let _in_call = called("vmnet_network_configuration_add_port_forwarding_rule");
    if config_of(config).is_none()
        || !matches!(protocol, 6 | 17)
        || addr_bytes(address_family, internal_address).is_none()
    {
        return refuse(
            "network port forwarding: bad arguments",
            VMNET_INVALID_ARGUMENT,
        );
    }
    VMNET_SUCCESS
}

/// `vmnet_network_create(config, vmnet_return_t *status)`: a new network (a fresh segment).
///
/// # Safety
///
/// `status` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_network_create(
    config: *mut c_void,
    status: *mut u32,
) -> *mut c_void {
    let _in_call = called("vmnet_network_create");
    let Some(c) = config_of(config) else {
        put_status(
            status,
            refuse("not a network configuration", VMNET_INVALID_ARGUMENT),
        );
        return std::ptr::null_mut();
    };
    let mut n = lock(c).clone();
    n.id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
    put_status(status, VMNET_SUCCESS);
    cf_new(CfValue::Network(n))
}

const SER_KEYS: [&CStr; 7] = [
    c"model_network_id",
    c"model_mode",
    c"model_subnet",
    c"model_mask",
    c"model_prefix_len",
    c"model_mtu",
    c"model_dhcp",
];

/// `vmnet_network_copy_serialization(network, vmnet_return_t *status)`: an xpc object owned by
/// the caller.
///
/// # Safety
///
/// `status` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_network_copy_serialization(
    network: *mut c_void,
    status: *mut u32,
) -> *mut c_void {
    let _in_call = called("vmnet_network_copy_serialization");
    let Some(n) = network_of(network) else {
        put_status(status, refuse("not a network", VMNET_INVALID_ARGUMENT));
        return std::ptr::null_mut();
    };
    let d = xpc::new(xpc::Value::Dict(BTreeMap::new()));
    let values = [
        n.id,
        n.mode,
        u32::from(n.subnet).into(),
        u32::from(n.mask).into(),
        n.prefix_len.into(),
        n.mtu.into(),
        n.dhcp.into(),
    ];
    for (k, v) in SER_KEYS.iter().zip(values) {
        // SAFETY: a live dictionary, literal keys.
        unsafe { xpc::xpc_dictionary_set_uint64(d, k.as_ptr(), v) };
    }
    // SAFETY: as above; 16 bytes.
    unsafe { xpc::xpc_dictionary_set_uuid(d, c"model_prefix".as_ptr(), n.prefix.as_ptr()) };
    put_status(status, VMNET_SUCCESS);
    d
}

/// `vmnet_network_create_with_serialization(xpc_object_t network, vmnet_return_t *status)`:
/// the same network again (its interfaces share the segment).
///
/// # Safety
///
/// `status` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_network_create_with_serialization(
    network: *mut c_void,
    status: *mut u32,
) -> *mut c_void {
    let _in_call = called("vmnet_network_create_with_serialization");
    let v: Vec<Option<u64>> = SER_KEYS.iter().map(|k| xpc::read_u64(network, k)).collect();
    let prefix = xpc::read_uuid(network, c"model_prefix");
    let (
        Some(id),
        Some(mode),
        Some(sub),
        Some(mask),
        Some(plen),
        Some(mtu),
        Some(dhcp),
        Some(prefix),
    ) = (v[0], v[1], v[2], v[3], v[4], v[5], v[6], prefix)
    else {
        put_status(
            status,
            refuse("not a network serialization", VMNET_INVALID_ARGUMENT),
        );
        return std::ptr::null_mut();
    };
    put_status(status, VMNET_SUCCESS);
    cf_new(CfValue::Network(NetInfo {
        id,
        mode,
        subnet: Ipv4Addr::from(sub as u32),
        mask: Ipv4Addr::from(mask as u32),
        prefix,
        prefix_len: plen as u8,
        mtu: mtu as u32,
        dhcp: dhcp != 0,
    }))
}

/// `vmnet_network_get_ipv4_subnet(network, struct in_addr *subnet, struct in_addr *mask)`.
///
/// # Safety
///
/// The out-pointers are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_network_get_ipv4_subnet(
    network: *mut c_void,
    subnet: *mut in_addr,
    mask: *mut in_addr,
) {
    let _in_call = called("vmnet_network_get_ipv4_subnet");
    let Some(n) = network_of(network) else {
        refuse("not a network", 0);
        return;
    };
    if !subnet.is_null() && !mask.is_null() {
        // SAFETY: non-NULL, writable by the caller's contract.
        unsafe {
            (*subnet).s_addr = u32::from_ne_bytes(n.subnet.octets());
            (*mask).s_addr = u32::from_ne_bytes(n.mask.octets());
        }
    }
}

/// `vmnet_network_get_ipv6_prefix(network, struct in6_addr *prefix, uint8_t *prefix_len)`.
///
/// # Safety
///
/// The out-pointers are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_network_get_ipv6_prefix(
    network: *mut c_void,
    prefix: *mut libc::in6_addr,
    prefix_len: *mut u8,
) {
    let _in_call = called("vmnet_network_get_ipv6_prefix");
    let Some(n) = network_of(network) else {
        refuse("not a network", 0);
        return;
    };
    if !prefix.is_null() && !prefix_len.is_null() {
        // SAFETY: non-NULL, writable by the caller's contract.
        unsafe {
            (*prefix).s6_addr = n.prefix;
            *prefix_len = n.prefix_len;
        }
    }
}

/// `vmnet_interface_start_with_network(network, interface_desc, queue, handler)`: as
/// `vmnet_start_interface`, on the network's segment, with its mode, subnet and MTU.
///
/// # Safety
///
/// `handler` is NULL or a valid block of the handler's type.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmnet_interface_start_with_network(
    network: *mut c_void,
    interface_desc: *mut c_void,
    queue: *mut c_void,
    handler: *mut Block<StartFn>,
) -> *mut c_void {
    let _in_call = called("vmnet_interface_start_with_network");
    let Some(n) = network_of(network) else {
        refuse("start on no network", 0);
        return std::ptr::null_mut();
    };
    // SAFETY: forwarded.
    unsafe { start(Some(n.clone()), interface_desc, queue, handler) }
}
