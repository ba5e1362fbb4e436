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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// Serves `responses` (status line and body) in turn on 127.0.0.1, one per connection.
    fn serve(responses: Vec<(&'static str, Vec<u8>)>) -> (String, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = thread::spawn(move || {
            for (status, body) in responses {
                let (mut stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(&body).unwrap();
            }
        });
        (url, server)
    }

    #[test]
    fn ureq_layer_maps_answers_to_fetch_errors() {
        let (url, server) = serve(vec![
            ("200 OK", b"signed bytes".to_vec()),
            ("404 Not Found", Vec::new()),
            ("200 OK", vec![7; 100]),
        ]);
        let http = UreqHttp::new();
        let mut out = Vec::new();
        assert_eq!(http.get(&format!("{url}/a"), 100, &mut out).unwrap(), 12);
        assert_eq!(out, b"signed bytes");
        let err = http
            .get(&format!("{url}/b"), 100, &mut Vec::new())
            .unwrap_err();
        assert!(
            matches!(err, FetchError::Status { status: 404, .. }),
            "{err}"
        );
        // Longer than the signed size: refused, not stored.
        let err = http
            .get(&format!("{url}/c"), 10, &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, FetchError::Malformed { .. }), "{err}");
        server.join().unwrap();

        // Nobody listening: the mirror does not answer.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/d", closed.local_addr().unwrap());
        drop(closed);
        let err = http.get(&url, 10, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");
    }
}
