//! Raw declarations of `<vmnet/vmnet.h>` (macOS only).
//!
//! Every function, type, constant and key of the macOS 26 SDK's vmnet header, written against
//! the header text (APSL) and Apple's documentation; `docs/macos-checklist.md` lists each
//! declaration with its source. Nothing here is safe to call without reading the header's
//! contract; the safe layer is [`crate::Interface`] and friends.
//!
//! Availability follows the SDK's `API_AVAILABLE` annotations through cargo features: the
//! baseline is macOS 11 (the first release on Apple silicon and the minimum of Rust's
//! `aarch64-apple-darwin`); `macos-12`, `macos-15`, `macos-15-4` and `macos-26` add what those
//! releases added. A feature makes the binary link the symbols it declares, so the binary then
//! needs that release to load. (The safe layer finds the newer *keys* at run time with `dlsym`
//! instead, so it needs no feature for them.)
//!
//! Block parameters are `block2` blocks (`*mut Block<dyn Fn(..)>`, which the framework copies);
//! queue parameters are `dispatch2` queues.
#![allow(non_camel_case_types, non_upper_case_globals)]

use std::ffi::{c_char, c_int, c_void};
use std::marker::{PhantomData, PhantomPinned};

use block2::Block;
use dispatch2::DispatchQueue;

pub use crate::batch::VmPktDesc as vmpktdesc;
#[cfg(target_os = "macos")]
pub use libc::sa_family_t;
pub use libc::{in_addr, in6_addr, iovec};
/// macOS's one-byte `sa_family_t` (for the model feature off macOS, where libc's differs).
#[cfg(not(target_os = "macos"))]
pub type sa_family_t = u8;

/// `xpc_object_t`.
pub type xpc_object_t = *mut c_void;

/// `typedef OBJC_ENUM(uint32_t, vmnet_return_t)`.
pub type vmnet_return_t = u32;
/// Successfully completed.
pub const VMNET_SUCCESS: vmnet_return_t = 1000;
/// General failure.
pub const VMNET_FAILURE: vmnet_return_t = 1001;
/// Memory allocation failure.
pub const VMNET_MEM_FAILURE: vmnet_return_t = 1002;
/// Invalid argument specified.
pub const VMNET_INVALID_ARGUMENT: vmnet_return_t = 1003;
/// Interface setup is not complete.
pub const VMNET_SETUP_INCOMPLETE: vmnet_return_t = 1004;
/// Permission denied.
pub const VMNET_INVALID_ACCESS: vmnet_return_t = 1005;
/// Packet size larger than MTU.
pub const VMNET_PACKET_TOO_BIG: vmnet_return_t = 1006;
/// Buffers exhausted in kernel.
pub const VMNET_BUFFER_EXHAUSTED: vmnet_return_t = 1007;
/// Packet count exceeds limit.
pub const VMNET_TOO_MANY_PACKETS: vmnet_return_t = 1008;
/// Interface cannot be started as a conflicting sharing service is in use.
pub const VMNET_SHARING_SERVICE_BUSY: vmnet_return_t = 1009;
/// The operation could not be completed due to missing authorization.
pub const VMNET_NOT_AUTHORIZED: vmnet_return_t = 1010;

/// `typedef OBJC_ENUM(uint32_t, operating_modes_t)`.
pub type operating_modes_t = u32;
/// Host mode.
pub const VMNET_HOST_MODE: operating_modes_t = 1000;
/// Shared (NAT) mode.
pub const VMNET_SHARED_MODE: operating_modes_t = 1001;
/// Bridged mode (macOS 10.15).
pub const VMNET_BRIDGED_MODE: operating_modes_t = 1002;

/// `typedef OBJC_OPTIONS(uint32_t, interface_event_t)`.
pub type interface_event_t = u32;
/// Packets are available to be read.
pub const VMNET_INTERFACE_PACKETS_AVAILABLE: interface_event_t = 1 << 0;

/// `struct vmnet_interface` (opaque).
#[repr(C)]
#[derive(Debug)]
pub struct vmnet_interface {
    _data: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}
/// `typedef struct vmnet_interface *interface_ref;`
pub type interface_ref = *mut vmnet_interface;

/// `typedef void (^vmnet_start_interface_completion_handler_t)(vmnet_return_t status,
/// xpc_object_t __nullable interface_param);`
pub type vmnet_start_interface_completion_handler_t =
    *mut Block<dyn Fn(vmnet_return_t, xpc_object_t)>;
/// `typedef void (^vmnet_interface_event_callback_t)(interface_event_t event_mask,
/// xpc_object_t event);`
pub type vmnet_interface_event_callback_t = *mut Block<dyn Fn(interface_event_t, xpc_object_t)>;
/// `typedef void (^vmnet_interface_completion_handler_t)(vmnet_return_t status);`
pub type vmnet_interface_completion_handler_t = *mut Block<dyn Fn(vmnet_return_t)>;
/// `typedef void (^vmnet_interface_get_port_forwarding_rules_handler_t)(__nullable xpc_object_t
/// rules);`
pub type vmnet_interface_get_port_forwarding_rules_handler_t = *mut Block<dyn Fn(xpc_object_t)>;
/// `typedef void (^vmnet_interface_get_ip_port_forwarding_rules_handler_t)(__nullable
/// xpc_object_t rules);` (macOS 11)
pub type vmnet_interface_get_ip_port_forwarding_rules_handler_t = *mut Block<dyn Fn(xpc_object_t)>;

#[cfg_attr(target_os = "macos", link(name = "vmnet", kind = "framework"))]
unsafe extern "C" {
    /// The mode (uint64), `interface_desc`.
    pub static vmnet_operation_mode_key: *const c_char;
    /// The bridged interface name (string), `interface_desc` (macOS 10.15).
    pub static vmnet_shared_interface_name_key: *const c_char;
    /// The guest MAC address (string), `interface_param`.
    pub static vmnet_mac_address_key: *const c_char;
    /// Allocate a MAC address (bool, default true) (macOS 10.15).
    pub static vmnet_allocate_mac_address_key: *const c_char;
    /// The MTU (uint64), `interface_param`; `interface_desc` in shared and host modes.
    pub static vmnet_mtu_key: *const c_char;
    /// The maximum packet size (uint64), `interface_param`.
    pub static vmnet_max_packet_size_key: *const c_char;
    /// The interface UUID (uuid), `interface_desc` and `interface_param`.
    pub static vmnet_interface_id_key: *const c_char;
    /// First DHCP/gateway IPv4 address (string) (macOS 10.15).
    pub static vmnet_start_address_key: *const c_char;
    /// Last DHCP IPv4 address (string) (macOS 10.15).
    pub static vmnet_end_address_key: *const c_char;
    /// IPv4 subnet mask (string) (macOS 10.15).
    pub static vmnet_subnet_mask_key: *const c_char;
    /// NAT66 ULA prefix (string), shared mode (macOS 10.15).
    pub static vmnet_nat66_prefix_key: *const c_char;
    /// NAT66 prefix length (uint64): deprecated in macOS 11 ("no longer supported").
    pub static vmnet_nat66_prefix_length_key: *const c_char;
    /// Estimated packets available (uint64), event dictionary.
    pub static vmnet_estimated_packets_available_key: *const c_char;
    /// Isolated host-mode network UUID (uuid) (macOS 11).
    pub static vmnet_network_identifier_key: *const c_char;
    /// Host IPv4 address on an identified network (string) (macOS 11).
    pub static vmnet_host_ip_address_key: *const c_char;
    /// Host IPv4 mask on an identified network (string) (macOS 11).
    pub static vmnet_host_subnet_mask_key: *const c_char;
    /// Host IPv6 address on an identified network (string) (macOS 11).
    pub static vmnet_host_ipv6_address_key: *const c_char;
    /// Enable TCP segmentation offload (bool) (macOS 11).
    pub static vmnet_enable_tso_key: *const c_char;
    /// Enable isolation (bool) (macOS 11).
    pub static vmnet_enable_isolation_key: *const c_char;

    /// `interface_ref __nullable vmnet_start_interface(xpc_object_t interface_desc,
    /// dispatch_queue_t queue, vmnet_start_interface_completion_handler_t handler);`
    pub fn vmnet_start_interface(
        interface_desc: xpc_object_t,
        queue: &DispatchQueue,
        handler: vmnet_start_interface_completion_handler_t,
    ) -> interface_ref;

    /// `vmnet_return_t vmnet_interface_set_event_callback(interface_ref interface,
    /// interface_event_t event_mask, dispatch_queue_t __nullable queue,
    /// __nullable vmnet_interface_event_callback_t callback);`
    pub fn vmnet_interface_set_event_callback(
        interface: interface_ref,
        event_mask: interface_event_t,
        queue: Option<&DispatchQueue>,
        callback: vmnet_interface_event_callback_t,
    ) -> vmnet_return_t;

    /// `vmnet_return_t vmnet_write(interface_ref interface, struct vmpktdesc *packets,
    /// int *pktcnt);`
    pub fn vmnet_write(
        interface: interface_ref,
        packets: *mut vmpktdesc,
        pktcnt: *mut c_int,
    ) -> vmnet_return_t;

    /// `vmnet_return_t vmnet_read(interface_ref interface, struct vmpktdesc *packets,
    /// int *pktcnt);`
    pub fn vmnet_read(
        interface: interface_ref,
        packets: *mut vmpktdesc,
        pktcnt: *mut c_int,
    ) -> vmnet_return_t;

    /// `vmnet_return_t vmnet_stop_interface(interface_ref interface, dispatch_queue_t queue,
    /// vmnet_interface_completion_handler_t handler);`
    pub fn vmnet_stop_interface(
        interface: interface_ref,
        queue: &DispatchQueue,
        handler: vmnet_interface_completion_handler_t,
    ) -> vmnet_return_t;

    /// `vmnet_return_t vmnet_interface_add_port_forwarding_rule(interface_ref interface,
    /// uint8_t protocol, uint16_t external_port, struct in_addr internal_address,
    /// uint16_t internal_port, __nullable vmnet_interface_completion_handler_t handler);`
    /// (macOS 10.15, deprecated in 12: use the `_ip_` variant)
    pub fn vmnet_interface_add_port_forwarding_rule(
        interface: interface_ref,
        protocol: u8,
        external_port: u16,
        internal_address: in_addr,
        internal_port: u16,
        handler: vmnet_interface_completion_handler_t,
    ) -> vmnet_return_t;

    /// `vmnet_return_t vmnet_interface_remove_port_forwarding_rule(interface_ref interface,
    /// uint8_t protocol, uint16_t external_port,
    /// __nullable vmnet_interface_completion_handler_t handler);` (macOS 10.15, deprecated in 12)
    pub fn vmnet_interface_remove_port_forwarding_rule(
        interface: interface_ref,
        protocol: u8,
        external_port: u16,
        handler: vmnet_interface_completion_handler_t,
    ) -> vmnet_return_t;

    /// `vmnet_return_t vmnet_port_forwarding_rule_get_details(xpc_object_t rule,
    /// uint8_t *protocol, uint16_t *external_port, struct in_addr *internal_address,
    /// uint16_t *internal_port);` (macOS 10.15, deprecated in 12)
    pub fn vmnet_port_forwarding_rule_get_details(
        rule: xpc_object_t,
        protocol: *mut u8,
        external_port: *mut u16,
        internal_address: *mut in_addr,
        internal_port: *mut u16,
    ) -> vmnet_return_t;

    /// `vmnet_return_t vmnet_interface_get_port_forwarding_rules(interface_ref interface,
    /// vmnet_interface_get_port_forwarding_rules_handler_t handler);` (macOS 10.15, deprecated
    /// in 12)
    pub fn vmnet_interface_get_port_forwarding_rules(
        interface: interface_ref,
        handler: vmnet_interface_get_port_forwarding_rules_handler_t,
    ) -> vmnet_return_t;

    /// `xpc_object_t __nullable vmnet_copy_shared_interface_list(void);` (macOS 10.15)
    pub fn vmnet_copy_shared_interface_list() -> xpc_object_t;

    /// `vmnet_return_t vmnet_interface_add_ip_port_forwarding_rule(interface_ref interface,
    /// uint8_t protocol, uint16_t external_port, uint8_t address_family,
    /// const void *internal_address, uint16_t internal_port,
    /// __nullable vmnet_interface_completion_handler_t handler);` (macOS 11)
    pub fn vmnet_interface_add_ip_port_forwarding_rule(
        interface: interface_ref,
        protocol: u8,
        external_port: u16,
        address_family: u8,
        internal_address: *const c_void,
        internal_port: u16,
        handler: vmnet_interface_completion_handler_t,
    ) -> vmnet_return_t;

    /// `vmnet_return_t vmnet_interface_remove_ip_port_forwarding_rule(interface_ref interface,
    /// uint8_t protocol, uint16_t external_port, uint8_t address_family,
    /// __nullable vmnet_interface_completion_handler_t handler);` (macOS 11)
    pub fn vmnet_interface_remove_ip_port_forwarding_rule(
        interface: interface_ref,
        protocol: u8,
        external_port: u16,
        address_family: u8,
        handler: vmnet_interface_completion_handler_t,
    ) -> vmnet_return_t;

    /// `vmnet_return_t vmnet_interface_get_ip_port_forwarding_rules(interface_ref interface,
    /// uint8_t address_family, vmnet_interface_get_ip_port_forwarding_rules_handler_t handler);`
    /// (macOS 11)
    pub fn vmnet_interface_get_ip_port_forwarding_rules(
        interface: interface_ref,
        address_family: u8,
        handler: vmnet_interface_get_ip_port_forwarding_rules_handler_t,
    ) -> vmnet_return_t;

    /// `vmnet_return_t vmnet_ip_port_forwarding_rule_get_details(xpc_object_t rule,
    /// uint8_t *protocol, uint16_t *external_port, uint8_t address_family,
    /// void *internal_address, uint16_t *internal_port);` (macOS 11)
    pub fn vmnet_ip_port_forwarding_rule_get_details(
        rule: xpc_object_t,
        protocol: *mut u8,
        external_port: *mut u16,
        address_family: u8,
        internal_address: *mut c_void,
        internal_port: *mut u16,
    ) -> vmnet_return_t;
}

#[cfg(feature = "macos-12")]
#[cfg_attr(target_os = "macos", link(name = "vmnet", kind = "framework"))]
unsafe extern "C" {
    /// Enable checksum offload (bool) (macOS 12).
    pub static vmnet_enable_checksum_offload_key: *const c_char;
}

#[cfg(feature = "macos-15")]
#[cfg_attr(target_os = "macos", link(name = "vmnet", kind = "framework"))]
unsafe extern "C" {
    /// The maximum `*pktcnt` of `vmnet_read` (uint64), `interface_param` (macOS 15).
    pub static vmnet_read_max_packets_key: *const c_char;
    /// The maximum `*pktcnt` of `vmnet_write` (uint64), `interface_param` (macOS 15).
    pub static vmnet_write_max_packets_key: *const c_char;
}

#[cfg(feature = "macos-15-4")]
#[cfg_attr(target_os = "macos", link(name = "vmnet", kind = "framework"))]
unsafe extern "C" {
    /// Prefix every packet with a virtio-net header (bool) (macOS 15.4).
    pub static vmnet_enable_virtio_header_key: *const c_char;
}

/// `typedef operating_modes_t vmnet_mode_t;` (macOS 26)
#[cfg(feature = "macos-26")]
pub type vmnet_mode_t = operating_modes_t;

/// The object behind `vmnet_network_configuration_ref` (opaque; released with `CFRelease`).
#[cfg(feature = "macos-26")]
#[repr(C)]
#[derive(Debug)]
pub struct vmnet_network_configuration {
    _data: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}
/// `vmnet_network_configuration_ref` (macOS 26).
#[cfg(feature = "macos-26")]
pub type vmnet_network_configuration_ref = *mut vmnet_network_configuration;

/// The object behind `vmnet_network_ref` (opaque; released with `CFRelease`).
#[cfg(feature = "macos-26")]
#[repr(C)]
#[derive(Debug)]
pub struct vmnet_network {
    _data: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}
/// `vmnet_network_ref` (macOS 26).
#[cfg(feature = "macos-26")]
pub type vmnet_network_ref = *mut vmnet_network;

/// `ether_addr_t` (`struct ether_addr { u_char octet[6]; }` of `<net/ethernet.h>`).
#[cfg(feature = "macos-26")]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ether_addr_t {
    /// The six bytes.
    pub octet: [u8; 6],
}

#[cfg(feature = "macos-26")]
#[cfg_attr(target_os = "macos", link(name = "vmnet", kind = "framework"))]
unsafe extern "C" {
    /// `vmnet_network_configuration_ref __nullable
    /// vmnet_network_configuration_create(vmnet_mode_t mode, vmnet_return_t *status);`
    pub fn vmnet_network_configuration_create(
        mode: vmnet_mode_t,
        status: *mut vmnet_return_t,
    ) -> vmnet_network_configuration_ref;
    /// `void vmnet_network_configuration_disable_dhcp(vmnet_network_configuration_ref config);`
    pub fn vmnet_network_configuration_disable_dhcp(config: vmnet_network_configuration_ref);
    /// `void vmnet_network_configuration_disable_dns_proxy(vmnet_network_configuration_ref
    /// config);`
    pub fn vmnet_network_configuration_disable_dns_proxy(config: vmnet_network_configuration_ref);
    /// `void vmnet_network_configuration_disable_nat44(vmnet_network_configuration_ref config);`
    pub fn vmnet_network_configuration_disable_nat44(config: vmnet_network_configuration_ref);
    /// `void vmnet_network_configuration_disable_nat66(vmnet_network_configuration_ref config);`
    pub fn vmnet_network_configuration_disable_nat66(config: vmnet_network_configuration_ref);
    /// `void vmnet_network_configuration_disable_router_advertisement(
    /// vmnet_network_configuration_ref config);`
    pub fn vmnet_network_configuration_disable_router_advertisement(
        config: vmnet_network_configuration_ref,
    );
    /// `vmnet_return_t vmnet_network_configuration_set_external_interface(
    /// vmnet_network_configuration_ref config, const char *ifname);`
    pub fn vmnet_network_configuration_set_external_interface(
        config: vmnet_network_configuration_ref,
        ifname: *const c_char,
    ) -> vmnet_return_t;
    /// `vmnet_return_t vmnet_network_configuration_set_ipv4_subnet(
    /// vmnet_network_configuration_ref config, const struct in_addr *subnet_addr,
    /// const struct in_addr *subnet_mask);`
    pub fn vmnet_network_configuration_set_ipv4_subnet(
        config: vmnet_network_configuration_ref,
        subnet_addr: *const in_addr,
        subnet_mask: *const in_addr,
    ) -> vmnet_return_t;
    /// `vmnet_return_t vmnet_network_configuration_set_ipv6_prefix(
    /// vmnet_network_configuration_ref config, const struct in6_addr *prefix, uint8_t len);`
    pub fn vmnet_network_configuration_set_ipv6_prefix(
        config: vmnet_network_configuration_ref,
        prefix: *const in6_addr,
        len: u8,
    ) -> vmnet_return_t;
    /// `vmnet_return_t vmnet_network_configuration_set_mtu(vmnet_network_configuration_ref
    /// config, uint32_t mtu);`
    pub fn vmnet_network_configuration_set_mtu(
        config: vmnet_network_configuration_ref,
        mtu: u32,
    ) -> vmnet_return_t;
    /// `vmnet_return_t vmnet_network_configuration_add_dhcp_reservation(
    /// vmnet_network_configuration_ref config, const ether_addr_t *client,
    /// const struct in_addr *reservation);`
    pub fn vmnet_network_configuration_add_dhcp_reservation(
        config: vmnet_network_configuration_ref,
        client: *const ether_addr_t,
        reservation: *const in_addr,
    ) -> vmnet_return_t;
    /// `vmnet_return_t vmnet_network_configuration_add_port_forwarding_rule(
    /// vmnet_network_configuration_ref config, uint8_t protocol, sa_family_t address_family,
    /// uint16_t internal_port, uint16_t external_port, const void *internal_address);`
    pub fn vmnet_network_configuration_add_port_forwarding_rule(
        config: vmnet_network_configuration_ref,
        protocol: u8,
        address_family: sa_family_t,
        internal_port: u16,
        external_port: u16,
        internal_address: *const c_void,
    ) -> vmnet_return_t;
    /// `vmnet_network_ref __nullable vmnet_network_create(vmnet_network_configuration_ref
    /// config, vmnet_return_t *status);`
    pub fn vmnet_network_create(
        config: vmnet_network_configuration_ref,
        status: *mut vmnet_return_t,
    ) -> vmnet_network_ref;
    /// `vmnet_network_ref __nullable vmnet_network_create_with_serialization(
    /// xpc_object_t network, vmnet_return_t *status);`
    pub fn vmnet_network_create_with_serialization(
        network: xpc_object_t,
        status: *mut vmnet_return_t,
    ) -> vmnet_network_ref;
    /// `xpc_object_t __nullable vmnet_network_copy_serialization(vmnet_network_ref network,
    /// vmnet_return_t *status);`
    pub fn vmnet_network_copy_serialization(
        network: vmnet_network_ref,
        status: *mut vmnet_return_t,
    ) -> xpc_object_t;
    /// `void vmnet_network_get_ipv4_subnet(vmnet_network_ref network, struct in_addr *subnet,
    /// struct in_addr *mask);`
    pub fn vmnet_network_get_ipv4_subnet(
        network: vmnet_network_ref,
        subnet: *mut in_addr,
        mask: *mut in_addr,
    );
    /// `void vmnet_network_get_ipv6_prefix(vmnet_network_ref network, struct in6_addr *prefix,
    /// uint8_t *prefix_len);`
    pub fn vmnet_network_get_ipv6_prefix(
        network: vmnet_network_ref,
        prefix: *mut in6_addr,
        prefix_len: *mut u8,
    );
    /// `interface_ref __nullable vmnet_interface_start_with_network(vmnet_network_ref network,
    /// xpc_object_t interface_desc, dispatch_queue_t queue,
    /// vmnet_start_interface_completion_handler_t handler);`
    pub fn vmnet_interface_start_with_network(
        network: vmnet_network_ref,
        interface_desc: xpc_object_t,
        queue: &DispatchQueue,
        handler: vmnet_start_interface_completion_handler_t,
    ) -> interface_ref;
}

#[cfg(feature = "macos-26")]
#[cfg_attr(target_os = "macos", link(name = "CoreFoundation", kind = "framework"))]
unsafe extern "C" {
    /// `void CFRelease(CFTypeRef cf);` — releases vmnet network and configuration objects.
    pub fn CFRelease(cf: *const c_void);
}
