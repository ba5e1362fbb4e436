//! Platform implementations of [`super::Notifier`] and [`super::Poller`].

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(super) use linux::{Notifier, Poller};

#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
pub(super) use macos::{Notifier, Poller};

/// A libc return value as a result: negative means failure, described by `errno`.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn cvt(ret: libc::c_int) -> std::io::Result<libc::c_int> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
