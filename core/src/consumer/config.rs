//! The settings of a consumer group's runtime.

use std::sync::Arc;
use std::time::Duration;

use super::registry::HandlerRecord;
use crate::{Clock, Error, Result, SystemClock};

/// Settings of a [`Consumer`](super::Consumer).
///
/// Start from [`ConsumerConfig::new`] and set what you need with the
/// `with_` setters. The settings but the clock deserialize as
/// [`RelayConfig`](crate::RelayConfig)'s do; `group` is required there:
///
/// ```
/// use std::time::Duration;
/// use txmsg_core::consumer::ConsumerConfig;
///
/// let config = ConsumerConfig::new("billing").with_prefetch(128);
/// assert!(config.validate().is_ok());
///
/// let loaded: ConsumerConfig =
///     serde_json::from_str(r#"{ "group": "billing", "prefetch": 128, "inbox_retention": "30d" }"#)?;
/// assert_eq!((loaded.group(), loaded.prefetch()), ("billing", 128));
/// assert_eq!(loaded.inbox_retention(), Duration::from_secs(30 * 24 * 3600));
/// let unnamed: ConsumerConfig = serde_json::from_str("{}")?;
/// assert!(unnamed.validate().is_err(), "a group is required");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, serde::Deserialize)]
#[non_exhaustive]
#[serde(default = "ConsumerConfig::unnamed", deny_unknown_fields)]
pub struct ConsumerConfig {
    pub(crate) group: String,
    pub(crate) prefetch: u16,
    pub(crate) concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub(crate) backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) backoff_max: Duration,
    pub(crate) max_payload_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub(crate) shutdown_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) inbox_retention: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) redelivery_window: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) purge_interval: Duration,
    pub(crate) purge_batch: u32,
    #[serde(skip)]
    pub(crate) clock: Arc<dyn Clock>,
}

crate::config::settings! {
    ConsumerConfig {
        /// Deliveries per topic handed out and not yet acknowledged. Default 64.
        prefetch / with_prefetch: u16,
        /// Handler calls running at once per topic (one per key at a time).
        /// Default 16.
        concurrency / with_concurrency: usize,
        /// First delay before a failed handler runs again. Default 100 ms.
        backoff_min / with_backoff_min: Duration,
        /// Longest delay between handler attempts. Default 10 s.
        backoff_max / with_backoff_max: Duration,
        /// Largest payload handled, in bytes; larger ones are dead. Default 1 MiB.
        max_payload_bytes / with_max_payload_bytes: usize,
        /// How long shutdown waits for running handlers. Default 10 s.
        shutdown_timeout / with_shutdown_timeout: Duration,
        /// How long the group's inbox keeps a processed key; older keys are
        /// purged, and a redelivery after that would be applied again. Must
        /// exceed the redelivery horizon (see [`ConsumerConfig::redelivery_window`]).
        /// Default 7 days.
        inbox_retention / with_inbox_retention: Duration,
        /// How long a message may stay in the broker before it is delivered
        /// again (consumers down, deliveries handed back at shutdown). With the
        /// handlers' retries it makes the redelivery horizon that
        /// `inbox_retention` must exceed. Default 24 h.
        redelivery_window / with_redelivery_window: Duration,
        /// How often old inbox keys are purged. Default 60 s.
        purge_interval / with_purge_interval: Duration,
        /// Most inbox keys deleted by one purge statement. Default 1 000.
        purge_batch / with_purge_batch: u32,
    }
}

impl ConsumerConfig {
    /// Defaults for consumer group `group`.
    pub fn new(group: impl Into<String>) -> Self {
        ConsumerConfig {
            group: group.into(),
            prefetch: 64,
            concurrency: 16,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_payload_bytes: 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            redelivery_window: Duration::from_secs(24 * 3600),
            purge_interval: Duration::from_secs(60),
            purge_batch: 1_000,
            clock: Arc::new(SystemClock),
        }
    }

    /// Defaults without a group, which [`validate`](Self::validate) refuses:
    /// what a deserialized config without `group` starts from.
    fn unnamed() -> Self {
        Self::new("")
    }

    /// The consumer group; same rules as a topic name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The longest time after its first delivery that a message of a
    /// handler with `max_attempts` may be delivered again:
    /// `redelivery_window + max_attempts × backoff_max`.
    pub fn redelivery_horizon(&self, max_attempts: u32) -> Duration {
        self.redelivery_window
            .saturating_add(self.backoff_max.saturating_mul(max_attempts))
    }

    /// Checks that inbox keys outlive every redelivery of the group's
    /// handlers.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `inbox_retention`, saying why.
    pub fn check_retention(&self, handlers: &[&HandlerRecord]) -> Result<()> {
        let attempts = handlers.iter().map(|h| h.max_attempts).max().unwrap_or(1);
        let horizon = self.redelivery_horizon(attempts);
        if self.inbox_retention <= horizon {
            return Err(Error::config(
                "inbox_retention",
                format!(
                    "is {:?}, not longer than the redelivery horizon of group `{}` ({:?} = redelivery_window {:?} + {attempts} attempts × backoff_max {:?}): a message redelivered after its key was purged would be applied twice",
                    self.inbox_retention,
                    self.group,
                    horizon,
                    self.redelivery_window,
                    self.backoff_max
                ),
            ));
        }
        Ok(())
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first field that breaks its rule.
    pub fn validate(&self) -> Result<()> {
        crate::validate_topic(&self.group).map_err(|e| match e {
            Error::InvalidTopic { reason, .. } => Error::config("group", reason),
            other => other,
        })?;
        use crate::check::{backoff, positive};
        positive("prefetch", self.prefetch)?;
        positive("concurrency", self.concurrency)?;
        positive("max_payload_bytes", self.max_payload_bytes)?;
        positive("purge_interval", self.purge_interval)?;
        positive("purge_batch", self.purge_batch)?;
        backoff(
            "backoff_min",
            self.backoff_min,
            "backoff_max",
            self.backoff_max,
        )?;
        Ok(())
    }
}
