//! Validated settings of an [`MqttBroker`](crate::MqttBroker).

use std::time::Duration;

use txmsg_core::{Error, Result};

/// Longest topic prefix, in bytes.
const MAX_PREFIX_LEN: usize = 128;
/// Longest client id prefix, in bytes (a UUID is appended to it).
const MAX_CLIENT_ID_PREFIX_LEN: usize = 64;
/// Longest CloudEvents `source`, in bytes.
const MAX_SOURCE_LEN: usize = 255;

/// Settings of an [`MqttBroker`](crate::MqttBroker), validated as they are set.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use txmsg_mqtt::MqttConfig;
///
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = MqttConfig::default()
///     .topic_prefix("shop/")?
///     .source("/orders")?
///     .keep_alive(Duration::from_secs(30))?;
/// assert_eq!(config.get_topic_prefix(), "shop/");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    topic_prefix: String,
    client_id_prefix: String,
    source: String,
    keep_alive: Duration,
    session_expiry: Duration,
    connect_timeout: Duration,
    publish_timeout: Duration,
    max_packet_size: u32,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            topic_prefix: "txmsg/".to_owned(),
            client_id_prefix: "txmsg-".to_owned(),
            source: "/txmsg".to_owned(),
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(30),
            max_packet_size: 16 * 1024 * 1024,
        }
    }
}

impl MqttConfig {
    /// Sets what every MQTT topic starts with (default `txmsg/`): topic
    /// `orders.placed` is published to `<prefix>orders.placed`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the prefix holds a wildcard (`+`, `#`), a NUL or
    /// control character, starts with `$`, or is longer than 128 bytes.
    pub fn topic_prefix(mut self, prefix: &str) -> Result<Self> {
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(Error::config("topic_prefix", "must be at most 128 bytes"));
        }
        if prefix.starts_with('$') {
            return Err(Error::config("topic_prefix", "must not start with `$`"));
        }
        if prefix
            .chars()
            .any(|c| c == '+' || c == '#' || c.is_control())
        {
            return Err(Error::config(
                "topic_prefix",
                "must not hold `+`, `#` or control characters",
            ));
        }
        self.topic_prefix = prefix.to_owned();
        Ok(self)
    }

    /// Sets what every MQTT client id starts with (default `txmsg-`); a
    /// UUID is appended, one per connection.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless it is 1 to 64 ASCII letters, digits, `-`
    /// or `_`.
    pub fn client_id_prefix(mut self, prefix: &str) -> Result<Self> {
        if prefix.is_empty() || prefix.len() > MAX_CLIENT_ID_PREFIX_LEN {
            return Err(Error::config(
                "client_id_prefix",
                "must be 1 to 64 bytes long",
            ));
        }
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::config(
                "client_id_prefix",
                "may hold only ASCII letters, digits, `-` and `_`",
            ));
        }
        self.client_id_prefix = prefix.to_owned();
        Ok(self)
    }

    /// Sets the CloudEvents `source` of published messages (default `/txmsg`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if empty, longer than 255 bytes, or holding control
    /// characters.
    pub fn source(mut self, source: &str) -> Result<Self> {
        if source.is_empty()
            || source.len() > MAX_SOURCE_LEN
            || source.chars().any(char::is_control)
        {
            return Err(Error::config(
                "source",
                "must be 1 to 255 bytes without control characters",
            ));
        }
        self.source = source.to_owned();
        Ok(self)
    }

    /// Sets the MQTT keep-alive interval (default 30 s).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless it is 5 s to 65535 s, in whole seconds.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Result<Self> {
        if keep_alive < Duration::from_secs(5)
            || keep_alive > Duration::from_secs(u64::from(u16::MAX))
            || keep_alive.subsec_nanos() != 0
        {
            return Err(Error::config(
                "keep_alive",
                "must be whole seconds from 5 s to 65535 s",
            ));
        }
        self.keep_alive = keep_alive;
        Ok(self)
    }

    /// Sets how long the broker keeps a subscription's session (its
    /// unacknowledged and queued messages) after the connection drops
    /// (default 1 h). Subscriptions connect with `clean_start = false`, so
    /// a reconnect resumes the session and gets its unacknowledged
    /// messages again. Zero makes every session end with its connection.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless it is whole seconds below `u32::MAX` s.
    pub fn session_expiry(mut self, expiry: Duration) -> Result<Self> {
        if expiry >= Duration::from_secs(u64::from(u32::MAX)) || expiry.subsec_nanos() != 0 {
            return Err(Error::config(
                "session_expiry",
                "must be whole seconds below 4294967295 s",
            ));
        }
        self.session_expiry = expiry;
        Ok(self)
    }

    /// Sets how long a connection attempt may take (default 5 s).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless it is 1 s or more, in whole seconds.
    pub fn connect_timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout < Duration::from_secs(1) || timeout.subsec_nanos() != 0 {
            return Err(Error::config(
                "connect_timeout",
                "must be whole seconds, at least 1 s",
            ));
        }
        self.connect_timeout = timeout;
        Ok(self)
    }

    /// Sets how long a publish waits for its PUBACK (default 30 s); past
    /// it the publish fails with a retryable error.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if zero.
    pub fn publish_timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(Error::config("publish_timeout", "must not be zero"));
        }
        self.publish_timeout = timeout;
        Ok(self)
    }

    /// Sets the largest MQTT packet this client sends or accepts (default
    /// 16 MiB; the broker's own limit applies as well).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if below 1024 bytes or above 256 MiB.
    pub fn max_packet_size(mut self, size: u32) -> Result<Self> {
        if !(1024..=256 * 1024 * 1024).contains(&size) {
            return Err(Error::config(
                "max_packet_size",
                "must be from 1024 bytes to 256 MiB",
            ));
        }
        self.max_packet_size = size;
        Ok(self)
    }

    /// The topic prefix.
    pub fn get_topic_prefix(&self) -> &str {
        &self.topic_prefix
    }

    /// The client id prefix.
    pub fn get_client_id_prefix(&self) -> &str {
        &self.client_id_prefix
    }

    /// The CloudEvents `source`.
    pub fn get_source(&self) -> &str {
        &self.source
    }

    /// The keep-alive interval.
    pub fn get_keep_alive(&self) -> Duration {
        self.keep_alive
    }

    /// How long a subscription's session outlives its connection.
    pub fn get_session_expiry(&self) -> Duration {
        self.session_expiry
    }

    /// The connect timeout.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The publish (PUBACK) timeout.
    pub fn get_publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    /// The largest packet size.
    pub fn get_max_packet_size(&self) -> u32 {
        self.max_packet_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = MqttConfig::default();
        assert_eq!(c.get_topic_prefix(), "txmsg/");
        assert_eq!(c.get_keep_alive(), Duration::from_secs(30));
    }

    #[test]
    fn refuses_bad_values() {
        for bad in ["a/+/", "#", "$SYS/", "a\u{0}b"] {
            assert!(matches!(
                MqttConfig::default().topic_prefix(bad),
                Err(Error::Config {
                    field: "topic_prefix",
                    ..
                })
            ));
        }
        assert!(MqttConfig::default().topic_prefix("").is_ok());
        assert!(MqttConfig::default().client_id_prefix("a b").is_err());
        assert!(MqttConfig::default().client_id_prefix("").is_err());
        assert!(
            MqttConfig::default()
                .keep_alive(Duration::from_secs(1))
                .is_err()
        );
        assert!(
            MqttConfig::default()
                .keep_alive(Duration::from_millis(5500))
                .is_err()
        );
        assert!(
            MqttConfig::default()
                .publish_timeout(Duration::ZERO)
                .is_err()
        );
        assert!(MqttConfig::default().max_packet_size(10).is_err());
        assert!(MqttConfig::default().source("").is_err());
    }
}
