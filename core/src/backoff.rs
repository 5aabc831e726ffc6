//! How long to wait: between attempts after failures, and between batches
//! of background work. Shared by the relay, the consumer and the
//! check-back worker.

use std::time::Duration;

use backon::BackoffBuilder;

/// The delay before attempt number `attempts` (1-based) after failures:
/// exponential from `min` to `max`, with jitter drawn from a random seed.
pub(crate) fn delay_between(min: Duration, max: Duration, attempts: u32) -> Duration {
    delay(min, max, attempts, fastrand::u64(..))
}

/// As [`delay_between`], with the jitter drawn from `seed`.
pub(crate) fn delay(min: Duration, max: Duration, attempts: u32, seed: u64) -> Duration {
    backon::ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .with_jitter_seed(seed)
        .without_max_times()
        .build()
        .nth(attempts.saturating_sub(1) as usize)
        .unwrap_or(max)
}

/// The rest between two full purge batches: three times as long as the last
/// one took, at least 10 ms, so a purge keeps at most a quarter of the
/// database's time for itself and producers barely notice a large backlog.
pub(crate) fn purge_pause(batch_took: Duration) -> Duration {
    (batch_took * 3).max(Duration::from_millis(10))
}
