//! Retry policy: exponential backoff with full jitter, as AWS's architecture blog recommends
//! for contended retries. The jitter is an input, so this stays pure and testable.

use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// Delay before retry number `retry` (1 for the first retry), scaled by `jitter` in
    /// `[0, 1]`: `jitter × min(max, base × 2^(retry-1))`, never below a tenth of `base`.
    pub fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let exponent = retry.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1_u32 << exponent).min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        ceiling.mul_f64(jitter).max(self.base / 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        assert_eq!(backoff.delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff.delay(3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff.delay(10, 1.0), Duration::from_secs(10));
        assert_eq!(backoff.delay(3, 0.5), Duration::from_secs(2));
        assert_eq!(backoff.delay(3, 0.0), Duration::from_millis(100));
    }
}
