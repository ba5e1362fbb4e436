//! Platform implementations of [`super::Notifier`] and [`super::Poller`].

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(super) use linux::{Notifier, Poller};

#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
pub(super) use macos::{Notifier, Poller};
