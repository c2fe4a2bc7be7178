//! How `ingest` waits before another attempt at a request Elasticsearch refused for now.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Exponential backoff: `initial_delay × 2^(attempt-1)`, capped, with a little jitter so that
/// concurrent batches do not retry in lockstep.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt.
    pub(crate) max_retries: u32,
    pub(crate) initial_delay: Duration,
    pub(crate) max_delay: Duration,
}

impl RetryPolicy {
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let base = self
            .initial_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let jitter_fraction = f64::from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
                % 250,
        ) / 1000.0;
        base.mul_f64(1.0 + jitter_fraction)
            .min(self.max_delay.max(self.initial_delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_retries: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        assert!(
            policy.delay(1) >= Duration::from_millis(100)
                && policy.delay(1) < Duration::from_millis(130)
        );
        assert!(policy.delay(3) >= Duration::from_millis(400));
        assert!(policy.delay(10) <= Duration::from_millis(1000));
    }
}
