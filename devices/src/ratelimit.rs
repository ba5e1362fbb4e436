//! Rate limiting for logs a guest can trigger.
//!
//! A guest that sends a malformed descriptor chain every microsecond must not turn the VMM's log
//! into a denial of service; every such event is still counted in the device's metrics.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows at most `burst` log lines per `period`; reports how many were suppressed in between.
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    burst: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Option<Instant>,
    emitted: u32,
    suppressed: u64,
}

impl RateLimit {
    /// A limiter of `burst` lines per `period`.
    pub const fn new(period: Duration, burst: u32) -> Self {
        Self {
            period,
            burst,
            state: Mutex::new(State {
                window_start: None,
                emitted: 0,
                suppressed: 0,
            }),
        }
    }

    /// The default for guest-triggered warnings: 10 lines per 5 seconds.
    pub const fn guest_errors() -> Self {
        Self::new(Duration::from_secs(5), 10)
    }

    /// Returns `Some(suppressed_since_last_line)` if a line may be logged now, `None` otherwise.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = s
            .window_start
            .is_none_or(|start| now.duration_since(start) >= self.period);
        if expired {
            s.window_start = Some(now);
            s.emitted = 0;
        }
        if s.emitted < self.burst {
            s.emitted += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

/// Logs a warning through a [`RateLimit`], noting how many were suppressed before it.
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limit.check() {
            if suppressed > 0 {
                tracing::warn!(suppressed, $($arg)+);
            } else {
                tracing::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_suppresses_until_the_period_ends() {
        let rl = RateLimit::new(Duration::from_secs(1), 2);
        let t0 = Instant::now();
        assert_eq!(rl.check_at(t0), Some(0));
        assert_eq!(rl.check_at(t0), Some(0));
        assert_eq!(rl.check_at(t0), None);
        assert_eq!(rl.check_at(t0), None);
        assert_eq!(rl.check_at(t0 + Duration::from_secs(1)), Some(2));
    }
}
