//! vmnet status codes and the crate's error type (portable: built and tested on every host).
//!
//! Every `vmnet_return_t` value of `<vmnet/vmnet.h>` is a [`Status`], and every failing status
//! becomes an [`Error`] variant whose message carries the advice a user needs. Errors that this
//! crate detects itself (bad options, a buffer that cannot hold a packet, a timeout) have their own
//! variants and are raised before any call into the framework.

use std::time::Duration;

use crate::forward::RuleError;
use crate::options::OptionsError;
use crate::params::ParamsError;

/// The advice for the two privilege errors.
///
/// vmnet refuses to start an interface unless the process is root or carries an entitlement:
/// `com.apple.vm.networking` (restricted, Apple grants it) on every release, or
/// `com.apple.security.virtualization` (ad-hoc signable) from macOS 26 on.
pub const PRIVILEGE_ADVICE: &str = "vmnet needs root, or the com.apple.security.virtualization \
     entitlement on macOS 26 or later: sign with the runner in this repo";

/// A `vmnet_return_t` value, as declared in `<vmnet/vmnet.h>`.
///
/// ```
/// use vmnet::Status;
///
/// assert_eq!(Status::from_raw(1005), Some(Status::InvalidAccess));
/// assert_eq!(Status::InvalidAccess.raw(), 1005);
/// assert_eq!(Status::InvalidAccess.name(), "VMNET_INVALID_ACCESS");
/// assert_eq!(Status::from_raw(7), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[doc(alias = "vmnet_return_t")]
pub enum Status {
    /// `VMNET_SUCCESS` (1000): successfully completed.
    Success = 1000,
    /// `VMNET_FAILURE` (1001): general failure.
    Failure = 1001,
    /// `VMNET_MEM_FAILURE` (1002): memory allocation failure.
    MemFailure = 1002,
    /// `VMNET_INVALID_ARGUMENT` (1003): invalid argument specified.
    InvalidArgument = 1003,
    /// `VMNET_SETUP_INCOMPLETE` (1004): interface setup is not complete.
    SetupIncomplete = 1004,
    /// `VMNET_INVALID_ACCESS` (1005): permission denied.
    InvalidAccess = 1005,
    /// `VMNET_PACKET_TOO_BIG` (1006): packet size larger than MTU.
    PacketTooBig = 1006,
    /// `VMNET_BUFFER_EXHAUSTED` (1007): buffers exhausted in kernel.
    BufferExhausted = 1007,
    /// `VMNET_TOO_MANY_PACKETS` (1008): packet count exceeds limit.
    TooManyPackets = 1008,
    /// `VMNET_SHARING_SERVICE_BUSY` (1009, macOS 11): a conflicting sharing service is in use.
    SharingServiceBusy = 1009,
    /// `VMNET_NOT_AUTHORIZED` (1010): the operation is not authorized (missing entitlement).
    NotAuthorized = 1010,
}

impl Status {
    /// Every status, in numeric order.
    ///
    /// ```
    /// assert_eq!(vmnet::Status::ALL.len(), 11);
    /// ```
    pub const ALL: [Status; 11] = [
        Status::Success,
        Status::Failure,
        Status::MemFailure,
        Status::InvalidArgument,
        Status::SetupIncomplete,
        Status::InvalidAccess,
        Status::PacketTooBig,
        Status::BufferExhausted,
        Status::TooManyPackets,
        Status::SharingServiceBusy,
        Status::NotAuthorized,
    ];

    /// Converts a raw `vmnet_return_t`; `None` for a value this crate does not know.
    ///
    /// ```
    /// assert_eq!(vmnet::Status::from_raw(1000), Some(vmnet::Status::Success));
    /// ```
    pub const fn from_raw(raw: u32) -> Option<Status> {
        Some(match raw {
            1000 => Status::Success,
            1001 => Status::Failure,
            1002 => Status::MemFailure,
            1003 => Status::InvalidArgument,
            1004 => Status::SetupIncomplete,
            1005 => Status::InvalidAccess,
            1006 => Status::PacketTooBig,
            1007 => Status::BufferExhausted,
            1008 => Status::TooManyPackets,
            1009 => Status::SharingServiceBusy,
            1010 => Status::NotAuthorized,
            _ => return None,
        })
    }

    /// The raw `vmnet_return_t` value.
    ///
    /// ```
    /// assert_eq!(vmnet::Status::NotAuthorized.raw(), 1010);
    /// ```
    pub const fn raw(self) -> u32 {
        self as u32
    }

    /// The C name of the constant.
    ///
    /// ```
    /// assert_eq!(vmnet::Status::Success.name(), "VMNET_SUCCESS");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            Status::Success => "VMNET_SUCCESS",
            Status::Failure => "VMNET_FAILURE",
            Status::MemFailure => "VMNET_MEM_FAILURE",
            Status::InvalidArgument => "VMNET_INVALID_ARGUMENT",
            Status::SetupIncomplete => "VMNET_SETUP_INCOMPLETE",
            Status::InvalidAccess => "VMNET_INVALID_ACCESS",
            Status::PacketTooBig => "VMNET_PACKET_TOO_BIG",
            Status::BufferExhausted => "VMNET_BUFFER_EXHAUSTED",
            Status::TooManyPackets => "VMNET_TOO_MANY_PACKETS",
            Status::SharingServiceBusy => "VMNET_SHARING_SERVICE_BUSY",
            Status::NotAuthorized => "VMNET_NOT_AUTHORIZED",
        }
    }

    /// Whether this is `VMNET_SUCCESS`.
    ///
    /// ```
    /// assert!(vmnet::Status::Success.is_success());
    /// ```
    pub const fn is_success(self) -> bool {
        matches!(self, Status::Success)
    }
}

/// A specialized `Result` for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when using vmnet.
///
/// The first group of variants are the framework's failing statuses, each with the name of the
/// call that returned it (`op`) and advice; the rest are found by this crate before it calls the
/// framework.
///
/// ```
/// use vmnet::{Error, Status};
///
/// let err = Error::from_status("vmnet_start_interface", Status::InvalidAccess.raw()).unwrap();
/// assert_eq!(err.status(), Some(Status::InvalidAccess));
/// assert!(err.to_string().contains("com.apple.security.virtualization"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `VMNET_FAILURE`.
    #[error(
        "{op} failed: VMNET_FAILURE (general failure); vmnet gives no detail: \
         look at the system log (`log show --last 5m --predicate 'subsystem == \"com.apple.vmnet\"'`)"
    )]
    Failure {
        /// The framework call.
        op: &'static str,
    },
    /// `VMNET_MEM_FAILURE`.
    #[error("{op} failed: VMNET_MEM_FAILURE (the framework could not allocate memory)")]
    MemFailure {
        /// The framework call.
        op: &'static str,
    },
    /// `VMNET_INVALID_ARGUMENT`.
    #[error(
        "{op} failed: VMNET_INVALID_ARGUMENT: the framework refused an option or packet \
         descriptor; some options need a newer macOS (see the option's documentation)"
    )]
    InvalidArgument {
        /// The framework call.
        op: &'static str,
    },
    /// `VMNET_SETUP_INCOMPLETE`.
    #[error("{op} failed: VMNET_SETUP_INCOMPLETE: the interface has not finished starting")]
    SetupIncomplete {
        /// The framework call.
        op: &'static str,
    },
    /// `VMNET_INVALID_ACCESS`.
    #[error("{op} failed: VMNET_INVALID_ACCESS (permission denied): {advice}", advice = PRIVILEGE_ADVICE)]
    InvalidAccess {
        /// The framework call.
        op: &'static str,
    },
    /// `VMNET_PACKET_TOO_BIG`.
    #[error(
        "{op} failed: VMNET_PACKET_TOO_BIG: a packet is larger than the interface's maximum packet size"
    )]
    PacketTooBig {
        /// The framework call.
        op: &'static str,
    },
    /// `VMNET_BUFFER_EXHAUSTED`.
    #[error("{op} failed: VMNET_BUFFER_EXHAUSTED: the kernel's buffers are full; retry later")]
    BufferExhausted {
        /// The framework call.
        op: &'static str,
    },
    /// `VMNET_TOO_MANY_PACKETS`.
    #[error(
        "{op} failed: VMNET_TOO_MANY_PACKETS: more packets than the interface's read/write \
         maximum in one call"
    )]
    TooManyPackets {
        /// The framework call.
        op: &'static str,
    },
    /// `VMNET_SHARING_SERVICE_BUSY`.
    #[error(
        "{op} failed: VMNET_SHARING_SERVICE_BUSY: another virtualization or Internet Sharing \
         service already uses this subnet; stop it or choose another DHCP range"
    )]
    SharingServiceBusy {
        /// The framework call.
        op: &'static str,
    },
    /// `VMNET_NOT_AUTHORIZED`.
    #[error("{op} failed: VMNET_NOT_AUTHORIZED: {advice}", advice = PRIVILEGE_ADVICE)]
    NotAuthorized {
        /// The framework call.
        op: &'static str,
    },
    /// A status value this crate does not know (a newer SDK's).
    #[error("{op} failed with unknown vmnet status {code}")]
    Unknown {
        /// The framework call.
        op: &'static str,
        /// The raw `vmnet_return_t`.
        code: u32,
    },
    /// A framework call that returns a handle returned NULL without a status.
    #[error("{op} returned no handle; {advice}", advice = PRIVILEGE_ADVICE)]
    NullHandle {
        /// The framework call.
        op: &'static str,
    },
    /// The options were refused before any framework call.
    #[error("invalid vmnet options")]
    InvalidOptions(#[from] OptionsError),
    /// A read buffer is smaller than the interface's maximum packet size.
    #[error(
        "read buffer {index} holds {len} bytes, less than the interface's maximum packet size \
         {required}"
    )]
    BufferTooSmall {
        /// Position of the buffer in the batch.
        index: usize,
        /// Its length.
        len: usize,
        /// The capacity a read buffer needs (the interface's `max_packet_size`, plus the
        /// virtio-net header in virtio-header mode).
        required: usize,
    },
    /// A packet to write is larger than the interface's maximum packet size.
    #[error("packet {index} is {len} bytes, more than the interface's maximum packet size {max}")]
    PacketTooLarge {
        /// Position of the packet in the batch.
        index: usize,
        /// Its length.
        len: usize,
        /// The largest packet the interface takes (its `max_packet_size`, plus the virtio-net
        /// header in virtio-header mode, or a whole GSO frame with TSO).
        max: usize,
    },
    /// A packet to write has no bytes at all.
    #[error("packet {index} is empty")]
    EmptyPacket {
        /// Position of the packet in the batch.
        index: usize,
    },
    /// An asynchronous framework call did not complete in time.
    #[error("{op} did not complete within {after:?}")]
    Timeout {
        /// The framework call.
        op: &'static str,
        /// The time waited.
        after: Duration,
    },
    /// The running macOS lacks something the options ask for.
    #[error("{what} needs macOS {since} or later")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
        /// The first macOS release that has it.
        since: &'static str,
    },
    /// The completion handler was dropped without reporting (the framework released it).
    #[error("{op}: the framework dropped the completion handler without calling it")]
    HandlerDropped {
        /// The framework call.
        op: &'static str,
    },
    /// A completion handler or event callback panicked; the panic was contained.
    #[error("a callback for {op} panicked; the panic was caught before it reached GCD")]
    CallbackPanicked {
        /// The framework call whose callback panicked.
        op: &'static str,
    },
    /// The interface reported parameters this crate cannot use.
    #[error("the interface reported unusable parameters")]
    BadParams(#[from] ParamsError),
    /// A port-forwarding rule was refused before any framework call.
    #[error("invalid port-forwarding rule")]
    InvalidRule(#[from] RuleError),
    /// The interface is stopped (or stopping): no packet will come.
    #[error("the vmnet interface is stopped")]
    Stopped,
    /// The framework answered with data this crate could not parse.
    #[error("{op} returned malformed data: {what}")]
    Malformed {
        /// The framework call.
        op: &'static str,
        /// What was wrong.
        what: &'static str,
    },
}

impl Error {
    /// The error for a raw `vmnet_return_t` returned by `op`; `None` for `VMNET_SUCCESS`.
    ///
    /// ```
    /// use vmnet::Error;
    ///
    /// assert!(Error::from_status("vmnet_read", 1000).is_none());
    /// assert!(matches!(
    ///     Error::from_status("vmnet_read", 1006),
    ///     Some(Error::PacketTooBig { op: "vmnet_read" })
    /// ));
    /// assert!(matches!(Error::from_status("vmnet_read", 4242), Some(Error::Unknown { code: 4242, .. })));
    /// ```
    pub fn from_status(op: &'static str, raw: u32) -> Option<Error> {
        let Some(status) = Status::from_raw(raw) else {
            return Some(Error::Unknown { op, code: raw });
        };
        Some(match status {
            Status::Success => return None,
            Status::Failure => Error::Failure { op },
            Status::MemFailure => Error::MemFailure { op },
            Status::InvalidArgument => Error::InvalidArgument { op },
            Status::SetupIncomplete => Error::SetupIncomplete { op },
            Status::InvalidAccess => Error::InvalidAccess { op },
            Status::PacketTooBig => Error::PacketTooBig { op },
            Status::BufferExhausted => Error::BufferExhausted { op },
            Status::TooManyPackets => Error::TooManyPackets { op },
            Status::SharingServiceBusy => Error::SharingServiceBusy { op },
            Status::NotAuthorized => Error::NotAuthorized { op },
        })
    }

    /// `Ok(())` for `VMNET_SUCCESS`, the matching error otherwise.
    ///
    /// ```
    /// assert!(vmnet::Error::check("vmnet_write", 1000).is_ok());
    /// assert!(vmnet::Error::check("vmnet_write", 1007).is_err());
    /// ```
    pub fn check(op: &'static str, raw: u32) -> Result<()> {
        match Error::from_status(op, raw) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// The framework status behind this error, if it came from the framework.
    ///
    /// ```
    /// use vmnet::{Error, Status};
    ///
    /// let e = Error::TooManyPackets { op: "vmnet_read" };
    /// assert_eq!(e.status(), Some(Status::TooManyPackets));
    /// assert_eq!(Error::EmptyPacket { index: 0 }.status(), None);
    /// ```
    pub fn status(&self) -> Option<Status> {
        Some(match self {
            Error::Failure { .. } => Status::Failure,
            Error::MemFailure { .. } => Status::MemFailure,
            Error::InvalidArgument { .. } => Status::InvalidArgument,
            Error::SetupIncomplete { .. } => Status::SetupIncomplete,
            Error::InvalidAccess { .. } => Status::InvalidAccess,
            Error::PacketTooBig { .. } => Status::PacketTooBig,
            Error::BufferExhausted { .. } => Status::BufferExhausted,
            Error::TooManyPackets { .. } => Status::TooManyPackets,
            Error::SharingServiceBusy { .. } => Status::SharingServiceBusy,
            Error::NotAuthorized { .. } => Status::NotAuthorized,
            _ => return None,
        })
    }

    /// Whether the error means "not privileged": root or an entitlement is missing.
    ///
    /// Tests use it to print `SKIPPED` instead of failing on a machine without the entitlement.
    ///
    /// ```
    /// assert!(vmnet::Error::NotAuthorized { op: "vmnet_start_interface" }.is_permission());
    /// assert!(!vmnet::Error::Failure { op: "vmnet_start_interface" }.is_permission());
    /// ```
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            Error::InvalidAccess { .. } | Error::NotAuthorized { .. } | Error::NullHandle { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn status_values_match_the_header() {
        let expected = [
            (Status::Success, 1000, "VMNET_SUCCESS"),
            (Status::Failure, 1001, "VMNET_FAILURE"),
            (Status::MemFailure, 1002, "VMNET_MEM_FAILURE"),
            (Status::InvalidArgument, 1003, "VMNET_INVALID_ARGUMENT"),
            (Status::SetupIncomplete, 1004, "VMNET_SETUP_INCOMPLETE"),
            (Status::InvalidAccess, 1005, "VMNET_INVALID_ACCESS"),
            (Status::PacketTooBig, 1006, "VMNET_PACKET_TOO_BIG"),
            (Status::BufferExhausted, 1007, "VMNET_BUFFER_EXHAUSTED"),
            (Status::TooManyPackets, 1008, "VMNET_TOO_MANY_PACKETS"),
            (
                Status::SharingServiceBusy,
                1009,
                "VMNET_SHARING_SERVICE_BUSY",
            ),
            (Status::NotAuthorized, 1010, "VMNET_NOT_AUTHORIZED"),
        ];
        for (status, raw, name) in expected {
            assert_eq!(status.raw(), raw);
            assert_eq!(status.name(), name);
            assert_eq!(Status::from_raw(raw), Some(status));
        }
    }

    #[test]
    fn all_lists_every_status_once_in_order() {
        let raws: Vec<u32> = Status::ALL.iter().map(|s| s.raw()).collect();
        assert_eq!(raws, (1000..=1010).collect::<Vec<_>>());
    }

    #[test]
    fn values_outside_the_header_are_unknown() {
        for raw in [0, 1, 999, 1011, u32::MAX] {
            assert_eq!(Status::from_raw(raw), None);
            assert!(matches!(
                Error::from_status("op", raw),
                Some(Error::Unknown { code, .. }) if code == raw
            ));
        }
    }

    #[test]
    fn success_is_not_an_error() {
        assert!(Error::from_status("op", 1000).is_none());
        assert!(Error::check("op", 1000).is_ok());
        assert!(Status::Success.is_success());
        assert!(!Status::Failure.is_success());
    }

    #[test]
    fn every_failing_status_round_trips_through_its_error() {
        for status in Status::ALL.into_iter().filter(|s| !s.is_success()) {
            let err = Error::from_status("vmnet_read", status.raw()).unwrap();
            assert_eq!(err.status(), Some(status), "{status:?}");
            let msg = err.to_string();
            assert!(msg.starts_with("vmnet_read failed"), "{msg}");
            assert!(msg.contains(status.name()), "{msg}");
        }
    }

    #[test]
    fn privilege_errors_carry_the_entitlement_advice() {
        for raw in [1005, 1010] {
            let err = Error::from_status("vmnet_start_interface", raw).unwrap();
            assert!(err.is_permission());
            let msg = err.to_string();
            assert!(msg.contains("root"), "{msg}");
            assert!(msg.contains("com.apple.security.virtualization"), "{msg}");
            assert!(msg.contains("macOS 26"), "{msg}");
            assert!(msg.contains("runner"), "{msg}");
        }
    }

    #[test]
    fn non_privilege_errors_are_not_permission_errors() {
        for raw in [1001, 1002, 1003, 1004, 1006, 1007, 1008, 1009] {
            assert!(!Error::from_status("op", raw).unwrap().is_permission());
        }
    }

    #[test]
    fn sharing_service_busy_suggests_another_range() {
        let msg = Error::from_status("vmnet_start_interface", 1009)
            .unwrap()
            .to_string();
        assert!(msg.contains("DHCP range"), "{msg}");
    }

    #[test]
    fn options_error_is_the_source_not_repeated_in_the_message() {
        let err = Error::from(OptionsError::BridgedWithoutInterface);
        assert_eq!(err.to_string(), "invalid vmnet options");
        let source = err.source().expect("source attached");
        assert!(source.to_string().contains("interface"));
    }

    #[test]
    fn crate_errors_have_no_status() {
        let errs = [
            Error::BufferTooSmall {
                index: 0,
                len: 1,
                required: 2,
            },
            Error::PacketTooLarge {
                index: 0,
                len: 2,
                max: 1,
            },
            Error::Timeout {
                op: "vmnet_stop_interface",
                after: Duration::from_secs(1),
            },
            Error::Unsupported {
                what: "x",
                since: "12.0",
            },
        ];
        for e in errs {
            assert_eq!(e.status(), None);
        }
    }

    #[test]
    fn buffer_too_small_names_the_sizes() {
        let msg = Error::BufferTooSmall {
            index: 3,
            len: 1500,
            required: 1518,
        }
        .to_string();
        assert!(
            msg.contains("3") && msg.contains("1500") && msg.contains("1518"),
            "{msg}"
        );
    }
}
