//! Time, injectable so that schedules can be tested.

use std::fmt::Debug;

use chrono::{DateTime, Utc};

/// A source of the current time.
///
/// The relay reads every timestamp it writes (leases, retry schedules, sent
/// times) from its clock, so a test can drive backoff and lease expiry without
/// sleeping.
pub trait Clock: Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}
