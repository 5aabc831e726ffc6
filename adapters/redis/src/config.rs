//! Settings of a [`RedisBroker`](crate::RedisBroker).

use std::time::Duration;

use txmsg_core::{Error, Result};

/// Longest key prefix accepted, in bytes.
const MAX_PREFIX_LEN: usize = 128;

/// Longest CloudEvents `source` accepted, in bytes.
const MAX_SOURCE_LEN: usize = 4096;

/// Settings of a [`RedisBroker`](crate::RedisBroker), checked as they are set.
///
/// | setting | default | meaning |
/// |---------|---------|---------|
/// | [`key_prefix`](Self::key_prefix) | `"txmsg:"` | the stream of topic `t` is at key `<prefix>t` |
/// | [`max_len`](Self::max_len) | none | trim each stream to about this many entries on publish (`MAXLEN ~`) |
/// | [`claim_idle`](Self::claim_idle) | 30 s | how long a delivery may stay unsettled by a vanished consumer before another consumer of its group takes it over |
/// | [`block`](Self::block) | 1 s | longest one `XREADGROUP` waits for new entries |
/// | [`read_count`](Self::read_count) | 100 | most entries one read asks for (never more than the free prefetch) |
/// | [`source`](Self::source) | `"/txmsg"` | the CloudEvents `source` of every message |
/// | [`timeouts`](Self::timeouts) | 5 s, 5 s | connect and response timeouts |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use txmsg_redis::RedisConfig;
///
/// let config = RedisConfig::default()
///     .key_prefix("shop:")?
///     .max_len(Some(100_000))?
///     .claim_idle(Duration::from_secs(10))?;
/// assert_eq!(config.get_key_prefix(), "shop:");
///
/// assert!(RedisConfig::default().key_prefix("no spaces").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    key_prefix: String,
    max_len: Option<u64>,
    claim_idle: Duration,
    block: Duration,
    read_count: usize,
    source: String,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            key_prefix: "txmsg:".to_owned(),
            max_len: None,
            claim_idle: Duration::from_secs(30),
            block: Duration::from_secs(1),
            read_count: 100,
            source: "/txmsg".to_owned(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
        }
    }
}

impl RedisConfig {
    /// Sets the prefix of every stream key: topic `orders` is the stream at
    /// `<prefix>orders`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `key_prefix` if it is longer than 128 bytes or
    /// contains anything but printable ASCII without spaces.
    pub fn key_prefix(mut self, prefix: &str) -> Result<Self> {
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(Error::config("key_prefix", "must be at most 128 bytes"));
        }
        if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::config(
                "key_prefix",
                "may contain only printable ASCII characters without spaces",
            ));
        }
        prefix.clone_into(&mut self.key_prefix);
        Ok(self)
    }

    /// Trims each stream to about `max_len` entries as it is published to
    /// (`XADD ... MAXLEN ~`); `None` (the default) keeps every entry.
    ///
    /// Trimming does not look at consumer groups: entries trimmed before a
    /// group read them are lost to it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `max_len` if it is zero.
    pub fn max_len(mut self, max_len: Option<u64>) -> Result<Self> {
        if max_len == Some(0) {
            return Err(Error::config("max_len", "must be greater than zero"));
        }
        self.max_len = max_len;
        Ok(self)
    }

    /// Sets how long a delivery may stay pending without its consumer
    /// keeping it before any subscription of the group takes it over and
    /// delivers it again: the redelivery delay of a dropped delivery or of
    /// the deliveries of a vanished consumer.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `claim_idle` if it is under 100 ms or over one
    /// day.
    pub fn claim_idle(mut self, idle: Duration) -> Result<Self> {
        if idle < Duration::from_millis(100) || idle > Duration::from_secs(86_400) {
            return Err(Error::config(
                "claim_idle",
                "must be between 100 ms and one day",
            ));
        }
        self.claim_idle = idle;
        Ok(self)
    }

    /// Sets the longest one read waits for new entries (`BLOCK`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `block` if it is under 10 ms or over 60 s.
    pub fn block(mut self, block: Duration) -> Result<Self> {
        if block < Duration::from_millis(10) || block > Duration::from_secs(60) {
            return Err(Error::config("block", "must be between 10 ms and 60 s"));
        }
        self.block = block;
        Ok(self)
    }

    /// Sets the most entries one read asks for (`COUNT`); a read never asks
    /// for more than the subscription's free prefetch.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `read_count` if it is zero or over 10 000.
    pub fn read_count(mut self, count: usize) -> Result<Self> {
        if count == 0 || count > 10_000 {
            return Err(Error::config("read_count", "must be between 1 and 10000"));
        }
        self.read_count = count;
        Ok(self)
    }

    /// Sets the CloudEvents `source` attribute of every message.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `source` if it is empty or longer than 4096
    /// bytes.
    pub fn source(mut self, source: &str) -> Result<Self> {
        if source.is_empty() || source.len() > MAX_SOURCE_LEN {
            return Err(Error::config("source", "must be 1 to 4096 bytes"));
        }
        source.clone_into(&mut self.source);
        Ok(self)
    }

    /// Sets the timeout of one connect attempt and of one command's reply
    /// (a blocking read waits [`block`](Self::block) longer).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `timeouts` if either is zero or over 5 minutes.
    pub fn timeouts(mut self, connect: Duration, response: Duration) -> Result<Self> {
        let ok = |d: Duration| !d.is_zero() && d <= Duration::from_secs(300);
        if !ok(connect) || !ok(response) {
            return Err(Error::config(
                "timeouts",
                "must be greater than zero and at most 5 minutes",
            ));
        }
        self.connect_timeout = connect;
        self.response_timeout = response;
        Ok(self)
    }

    /// The prefix of every stream key.
    pub fn get_key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The approximate length streams are trimmed to, if any.
    pub fn get_max_len(&self) -> Option<u64> {
        self.max_len
    }

    /// How long a delivery stays pending unkept before it is taken over.
    pub fn get_claim_idle(&self) -> Duration {
        self.claim_idle
    }

    /// The longest one read waits for new entries.
    pub fn get_block(&self) -> Duration {
        self.block
    }

    /// The most entries one read asks for.
    pub fn get_read_count(&self) -> usize {
        self.read_count
    }

    /// The CloudEvents `source` of every message.
    pub fn get_source(&self) -> &str {
        &self.source
    }

    /// The connect timeout.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The response timeout.
    pub fn get_response_timeout(&self) -> Duration {
        self.response_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_values() {
        let c = RedisConfig::default();
        assert!(c.clone().key_prefix("a b").is_err());
        assert!(c.clone().max_len(Some(0)).is_err());
        assert!(c.clone().claim_idle(Duration::from_millis(1)).is_err());
        assert!(c.clone().block(Duration::ZERO).is_err());
        assert!(c.clone().read_count(0).is_err());
        assert!(c.clone().source("").is_err());
        assert!(c.timeouts(Duration::ZERO, Duration::from_secs(1)).is_err());
    }
}
