//! Settings of a [`NatsBroker`](crate::NatsBroker).

use std::time::Duration;

use txmsg_core::{Error, Result};

/// Longest stream name accepted, in bytes.
const MAX_STREAM_LEN: usize = 64;

/// Longest subject prefix accepted, in bytes.
const MAX_PREFIX_LEN: usize = 128;

/// Longest CloudEvents `source` accepted, in bytes.
const MAX_SOURCE_LEN: usize = 4096;

/// Settings of a [`NatsBroker`](crate::NatsBroker), checked as they are set.
///
/// | setting | default | meaning |
/// |---------|---------|---------|
/// | [`stream`](Self::stream) | `"TXMSG"` | JetStream stream holding every message |
/// | [`subject_prefix`](Self::subject_prefix) | `"txmsg"` | topic `orders.placed` is published on `txmsg.orders.placed`; the stream takes `txmsg.>` |
/// | [`duplicate_window`](Self::duplicate_window) | 2 min | how long the stream remembers a `Nats-Msg-Id` to drop a republish |
/// | [`ack_wait`](Self::ack_wait) | 30 s | how long a delivery may stay unsettled before the server delivers it again |
/// | [`max_ack_pending`](Self::max_ack_pending) | 1000 | most unsettled deliveries of one group, over all its subscriptions |
/// | [`connect_timeout`](Self::connect_timeout) | 10 s | longest the first connect may take |
/// | [`publish_timeout`](Self::publish_timeout) | 10 s | longest a publish waits for its PubAck |
/// | [`source`](Self::source) | `"/txmsg"` | the CloudEvents `source` attribute of every message |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use txmsg_nats::NatsConfig;
///
/// let config = NatsConfig::default()
///     .stream("BILLING")?
///     .subject_prefix("billing")?
///     .duplicate_window(Duration::from_secs(600))?;
/// assert_eq!(config.get_stream(), "BILLING");
/// assert_eq!(config.subject("orders.placed"), "billing.orders.placed");
///
/// assert!(NatsConfig::default().stream("no.dots").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsConfig {
    stream: String,
    subject_prefix: String,
    duplicate_window: Duration,
    ack_wait: Duration,
    max_ack_pending: u32,
    connect_timeout: Duration,
    publish_timeout: Duration,
    source: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            stream: "TXMSG".to_owned(),
            subject_prefix: "txmsg".to_owned(),
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(10),
            source: "/txmsg".to_owned(),
        }
    }
}

impl NatsConfig {
    /// Names the JetStream stream, created (or updated) when the broker
    /// connects, that stores every message published under the subject
    /// prefix.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `stream` if the name is empty, longer than 64
    /// bytes, or contains anything but ASCII letters, digits, `-` and `_`.
    pub fn stream(mut self, stream: impl Into<String>) -> Result<Self> {
        let stream = stream.into();
        if stream.is_empty() || stream.len() > MAX_STREAM_LEN {
            return Err(Error::config(
                "stream",
                format!("must be 1 to {MAX_STREAM_LEN} bytes long"),
            ));
        }
        if !stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::config(
                "stream",
                "may only contain ASCII letters, digits, `-` and `_`",
            ));
        }
        self.stream = stream;
        Ok(self)
    }

    /// Sets the subject prefix: topic `t` is published on subject
    /// `<prefix>.t`, and the stream takes the subjects `<prefix>.>`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `subject_prefix` if it is empty, longer than
    /// 128 bytes, has an empty token (`a..b`, a leading or trailing `.`) or
    /// contains anything but ASCII letters, digits, `-`, `_` and `.`.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
            return Err(Error::config(
                "subject_prefix",
                format!("must be 1 to {MAX_PREFIX_LEN} bytes long"),
            ));
        }
        if prefix.split('.').any(str::is_empty) {
            return Err(Error::config(
                "subject_prefix",
                "may not have empty tokens (`..`, or a leading or trailing `.`)",
            ));
        }
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(Error::config(
                "subject_prefix",
                "may only contain ASCII letters, digits, `-`, `_` and `.`",
            ));
        }
        self.subject_prefix = prefix;
        Ok(self)
    }

    /// Sets how long the stream remembers a message's `Nats-Msg-Id` (its
    /// idempotency key): a message published again within the window is
    /// acknowledged and dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `duplicate_window` if it is under 1 s.
    pub fn duplicate_window(mut self, window: Duration) -> Result<Self> {
        if window < Duration::from_secs(1) {
            return Err(Error::config("duplicate_window", "must be at least 1 s"));
        }
        self.duplicate_window = window;
        Ok(self)
    }

    /// Sets how long a delivery may stay unsettled before the server
    /// delivers it again (the consumers' `ack_wait`). Deliveries that are
    /// nacked or dropped come back at once; this bounds the wait for those
    /// of a consumer that vanished without a word.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `ack_wait` if it is under 1 s.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Result<Self> {
        if ack_wait < Duration::from_secs(1) {
            return Err(Error::config("ack_wait", "must be at least 1 s"));
        }
        self.ack_wait = ack_wait;
        Ok(self)
    }

    /// Sets the most deliveries one group may have unsettled over all its
    /// subscriptions (the consumers' `max_ack_pending`). Each subscription
    /// is further held to its own `prefetch`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `max_ack_pending` if it is 0.
    pub fn max_ack_pending(mut self, max: u32) -> Result<Self> {
        if max == 0 {
            return Err(Error::config("max_ack_pending", "must be at least 1"));
        }
        self.max_ack_pending = max;
        Ok(self)
    }

    /// Sets the longest the first connect may take.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `connect_timeout` if it is zero.
    pub fn connect_timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(Error::config("connect_timeout", "must be more than zero"));
        }
        self.connect_timeout = timeout;
        Ok(self)
    }

    /// Sets the longest a publish waits for its PubAck; after that it fails
    /// with a retryable error.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `publish_timeout` if it is zero.
    pub fn publish_timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(Error::config("publish_timeout", "must be more than zero"));
        }
        self.publish_timeout = timeout;
        Ok(self)
    }

    /// Sets the CloudEvents `source` attribute of every message.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `source` if it is empty, longer than 4096 bytes
    /// or contains control characters.
    pub fn source(mut self, source: impl Into<String>) -> Result<Self> {
        let source = source.into();
        if source.is_empty() || source.len() > MAX_SOURCE_LEN {
            return Err(Error::config(
                "source",
                format!("must be 1 to {MAX_SOURCE_LEN} bytes long"),
            ));
        }
        if source.chars().any(char::is_control) {
            return Err(Error::config(
                "source",
                "may not contain control characters",
            ));
        }
        self.source = source;
        Ok(self)
    }

    /// The stream name.
    pub fn get_stream(&self) -> &str {
        &self.stream
    }

    /// The subject prefix.
    pub fn get_subject_prefix(&self) -> &str {
        &self.subject_prefix
    }

    /// The duplicate window.
    pub fn get_duplicate_window(&self) -> Duration {
        self.duplicate_window
    }

    /// The consumers' ack wait.
    pub fn get_ack_wait(&self) -> Duration {
        self.ack_wait
    }

    /// The consumers' `max_ack_pending`.
    pub fn get_max_ack_pending(&self) -> u32 {
        self.max_ack_pending
    }

    /// The connect timeout.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The publish timeout.
    pub fn get_publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    /// The CloudEvents `source`.
    pub fn get_source(&self) -> &str {
        &self.source
    }

    /// The subject `topic` is published on: `<prefix>.<topic>`.
    pub fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.subject_prefix)
    }

    /// The subjects the stream takes: `<prefix>.>`.
    pub fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }

    /// The topic of `subject`, if it is under the prefix.
    pub(crate) fn topic_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.subject_prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        let c = NatsConfig::default();
        assert!(c.clone().stream("").is_err());
        assert!(c.clone().stream("a.b").is_err());
        assert!(c.clone().stream("a b").is_err());
        assert!(c.clone().stream("A_b-1").is_ok());
        assert!(c.clone().subject_prefix("a..b").is_err());
        assert!(c.clone().subject_prefix("a.*").is_err());
        assert!(c.clone().subject_prefix(".a").is_err());
        assert!(c.clone().subject_prefix("a.b").is_ok());
        assert!(c.clone().duplicate_window(Duration::ZERO).is_err());
        assert!(c.clone().ack_wait(Duration::from_millis(10)).is_err());
        assert!(c.clone().max_ack_pending(0).is_err());
        assert!(c.clone().connect_timeout(Duration::ZERO).is_err());
        assert!(c.clone().publish_timeout(Duration::ZERO).is_err());
        assert!(c.clone().source("a\nb").is_err());
    }

    #[test]
    fn subjects() {
        let c = NatsConfig::default();
        assert_eq!(c.subject("orders.placed"), "txmsg.orders.placed");
        assert_eq!(c.stream_subjects(), "txmsg.>");
        assert_eq!(c.topic_of("txmsg.orders.placed"), Some("orders.placed"));
        assert_eq!(c.topic_of("txmsgx.orders"), None);
        assert_eq!(c.topic_of("other.orders"), None);
    }
}
