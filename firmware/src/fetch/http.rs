//! The fetcher's HTTP layer: a trait (tests count requests with a fake) and its `ureq`
//! implementation (http and https, trusting the system's certificate store, so the machine's
//! own CAs count as they do for curl and apt).

use std::io::Write;
use std::time::Duration;

use super::FetchError;

/// Fetches URLs.
pub trait Http {
    /// Streams the body of `url` (status 200) into `out`, at most `limit` bytes, and returns
    /// the number of bytes written.
    fn get(&self, url: &str, limit: u64, out: &mut dyn Write) -> Result<u64, FetchError>;
}

/// [`Http`] over `ureq`.
#[derive(Debug)]
pub struct UreqHttp {
    agent: ureq::Agent,
}

impl UreqHttp {
    /// An agent with connect and read timeouts, so that a silent mirror is reported instead of
    /// waited for.
    pub fn new() -> Self {
        // The platform's trust: on macOS Security.framework's (native-tls), elsewhere rustls
        // with rustls-platform-verifier (the system's CA store). Neither bundles a root list.
        #[cfg(target_os = "macos")]
        let provider = ureq::tls::TlsProvider::NativeTls;
        #[cfg(not(target_os = "macos"))]
        let provider = ureq::tls::TlsProvider::Rustls;
        let tls = ureq::tls::TlsConfig::builder()
            .provider(provider)
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("vmnet-rs-firmware/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent: config.into(),
        }
    }
}

impl Default for UreqHttp {
    fn default() -> Self {
        Self::new()
    }
}

impl Http for UreqHttp {
    fn get(&self, url: &str, limit: u64, out: &mut dyn Write) -> Result<u64, FetchError> {
        let unreachable = |e: &dyn std::fmt::Display| FetchError::Unreachable {
            url: url.to_string(),
            reason: e.to_string(),
        };
        let mut response = match self.agent.get(url).call() {
            Ok(r) => r,
            Err(ureq::Error::StatusCode(status)) => {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status,
                });
            }
            Err(e) => return Err(unreachable(&e)),
        };
        let mut body = response.body_mut().with_config().limit(limit).reader();
        std::io::copy(&mut body, out).map_err(|e| {
            match e.get_ref().and_then(|r| r.downcast_ref::<ureq::Error>()) {
                Some(ureq::Error::BodyExceedsLimit(_)) => FetchError::Malformed {
                    what: url.to_string(),
                    detail: format!(
                        "longer than the {limit} bytes expected: not the signed file; try again or use another mirror"
                    ),
                },
                _ => unreachable(&e),
            }
        })
    }
}
