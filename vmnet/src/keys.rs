//! Resolution of vmnet's dictionary keys (macOS only).
//!
//! Keys of the macOS 11 baseline are read from their `extern` globals. Newer keys are declared
//! in [`crate::sys`] only under their cargo feature; without it they are looked up at run time
//! with `dlsym(RTLD_DEFAULT, name)`, which returns the address of the global `const char *`
//! (vmnet.framework is loaded, since this crate links it). A key the running system lacks is
//! `None`, so options that need it fail with [`Error::Unsupported`] before the framework is
//! called, and parameters that need it fall back to a default.

use std::ffi::{CStr, CString, c_char};

use crate::error::{Error, Result};
use crate::options::Key;
use crate::sys;

/// Reads a key global.
///
/// # Safety
///
/// `p` must be the value of one of vmnet's `const char *` key globals: NULL or a static
/// NUL-terminated string.
unsafe fn cstr(p: *const c_char) -> Option<&'static CStr> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees a static NUL-terminated string.
    Some(unsafe { CStr::from_ptr(p) })
}

/// Looks a key global up by its C name.
fn dynamic(name: &str) -> Option<&'static CStr> {
    let name = CString::new(name).ok()?;
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other precondition.
    #[cfg(target_os = "macos")]
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    // The model (test-only `model` feature): a Linux executable exports no dynamic symbols, so
    // the model answers what dlsym would find on the release it simulates.
    #[cfg(not(target_os = "macos"))]
    let sym = vmnet_model::vmnet::key_symbol(name.to_str().unwrap_or_default());
    if sym.is_null() {
        return None;
    }
    // SAFETY: the symbol is one of vmnet's `extern const char *` globals, so its address points
    // to a pointer-sized, initialised, never-written value.
    let value = unsafe { *sym.cast::<*const c_char>() };
    // SAFETY: that value is NULL or a static NUL-terminated string.
    unsafe { cstr(value) }
}

/// The C string of an `interface_desc` key, if the running system has it.
pub(crate) fn desc_key(key: Key) -> Option<&'static CStr> {
    // SAFETY: reading the key globals: they are initialised constants of the framework, never
    // written, holding static NUL-terminated strings.
    let p = unsafe {
        match key {
            Key::OperationMode => sys::vmnet_operation_mode_key,
            Key::SharedInterfaceName => sys::vmnet_shared_interface_name_key,
            Key::InterfaceId => sys::vmnet_interface_id_key,
            Key::AllocateMacAddress => sys::vmnet_allocate_mac_address_key,
            Key::StartAddress => sys::vmnet_start_address_key,
            Key::EndAddress => sys::vmnet_end_address_key,
            Key::SubnetMask => sys::vmnet_subnet_mask_key,
            Key::Mtu => sys::vmnet_mtu_key,
            Key::EnableIsolation => sys::vmnet_enable_isolation_key,
            Key::NetworkIdentifier => sys::vmnet_network_identifier_key,
            Key::HostIpAddress => sys::vmnet_host_ip_address_key,
            Key::HostSubnetMask => sys::vmnet_host_subnet_mask_key,
            Key::HostIpv6Address => sys::vmnet_host_ipv6_address_key,
            Key::Nat66Prefix => sys::vmnet_nat66_prefix_key,
            Key::EnableTso => sys::vmnet_enable_tso_key,
            #[cfg(feature = "macos-12")]
            Key::EnableChecksumOffload => sys::vmnet_enable_checksum_offload_key,
            #[cfg(feature = "macos-15-4")]
            Key::EnableVirtioHeader => sys::vmnet_enable_virtio_header_key,
            #[allow(unreachable_patterns)]
            other => return dynamic(other.c_name()),
        }
    };
    // SAFETY: `p` is the value of a key global.
    unsafe { cstr(p) }
}

/// Like [`desc_key`], with [`Error::Unsupported`] for a key the system lacks.
pub(crate) fn require(key: Key) -> Result<&'static CStr> {
    desc_key(key).ok_or(Error::Unsupported {
        what: key.c_name(),
        since: key.since(),
    })
}

/// `interface_param` keys.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Param {
    MacAddress,
    Mtu,
    MaxPacketSize,
    ReadMaxPackets,
    WriteMaxPackets,
    InterfaceId,
    StartAddress,
    EndAddress,
    SubnetMask,
    Nat66Prefix,
    EstimatedPacketsAvailable,
}

/// The C string of an `interface_param` (or event) key, if the running system has it.
pub(crate) fn param_key(p: Param) -> Option<&'static CStr> {
    // SAFETY: reading the key globals: initialised, never-written framework constants.
    let raw = unsafe {
        match p {
            Param::MacAddress => sys::vmnet_mac_address_key,
            Param::Mtu => sys::vmnet_mtu_key,
            Param::MaxPacketSize => sys::vmnet_max_packet_size_key,
            Param::InterfaceId => sys::vmnet_interface_id_key,
            Param::StartAddress => sys::vmnet_start_address_key,
            Param::EndAddress => sys::vmnet_end_address_key,
            Param::SubnetMask => sys::vmnet_subnet_mask_key,
            Param::Nat66Prefix => sys::vmnet_nat66_prefix_key,
            Param::EstimatedPacketsAvailable => sys::vmnet_estimated_packets_available_key,
            #[cfg(feature = "macos-15")]
            Param::ReadMaxPackets => sys::vmnet_read_max_packets_key,
            #[cfg(feature = "macos-15")]
            Param::WriteMaxPackets => sys::vmnet_write_max_packets_key,
            #[cfg(not(feature = "macos-15"))]
            Param::ReadMaxPackets => return dynamic("vmnet_read_max_packets_key"),
            #[cfg(not(feature = "macos-15"))]
            Param::WriteMaxPackets => return dynamic("vmnet_write_max_packets_key"),
        }
    };
    // SAFETY: `raw` is the value of a key global.
    unsafe { cstr(raw) }
}
