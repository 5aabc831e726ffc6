//! The settings of a consumer group's runtime.

use std::time::Duration;

use super::registry::HandlerRecord;
use crate::{Error, Result};

crate::config::settings! {
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
    #[serde(default = "ConsumerConfig::defaults", deny_unknown_fields)]
    pub struct ConsumerConfig {
        group: String = String::new();
        /// Deliveries per topic handed out and not yet acknowledged. Default 64.
        prefetch / with_prefetch: u16 = 64,
        /// Handler calls running at once per topic (one per key at a time).
        /// Default 16.
        concurrency / with_concurrency: usize = 16,
        /// First delay before a failed handler runs again. Default 100 ms.
        backoff_min / with_backoff_min: Duration = Duration::from_millis(100),
        /// Longest delay between handler attempts. Default 10 s.
        backoff_max / with_backoff_max: Duration = Duration::from_secs(10),
        /// Largest payload handled, in bytes; larger ones are dead. Default 1 MiB.
        max_payload_bytes / with_max_payload_bytes: usize = 1024 * 1024,
        /// How long shutdown waits for running handlers. Default 10 s.
        shutdown_timeout / with_shutdown_timeout: Duration = Duration::from_secs(10),
        /// How long the group's inbox keeps a processed key; older keys are
        /// purged, and a redelivery after that would be applied again. Must
        /// exceed the redelivery horizon (see [`ConsumerConfig::redelivery_window`]).
        /// Default 7 days.
        inbox_retention / with_inbox_retention: Duration = Duration::from_secs(7 * 24 * 3600),
        /// How long a message may stay in the broker before it is delivered
        /// again (consumers down, deliveries handed back at shutdown). With the
        /// handlers' retries it makes the redelivery horizon that
        /// `inbox_retention` must exceed. Default 24 h.
        redelivery_window / with_redelivery_window: Duration = Duration::from_secs(24 * 3600),
        /// How often old inbox keys are purged. Default 60 s.
        purge_interval / with_purge_interval: Duration = Duration::from_secs(60),
        /// Most inbox keys deleted by one purge statement. Default 1 000.
        purge_batch / with_purge_batch: u32 = 1_000,
    }
}

impl ConsumerConfig {
    /// Defaults for consumer group `group`.
    pub fn new(group: impl Into<String>) -> Self {
        ConsumerConfig {
            group: group.into(),
            ..Self::defaults()
        }
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
        use crate::check::positive;
        positive("prefetch", self.prefetch)?;
        positive("concurrency", self.concurrency)?;
        positive("max_payload_bytes", self.max_payload_bytes)?;
        positive("purge_interval", self.purge_interval)?;
        positive("purge_batch", self.purge_batch)?;
        crate::config::check_backoff(self.backoff_min, self.backoff_max)?;
        Ok(())
    }
}
