//! Settings of a [`RocketBroker`](crate::RocketBroker).

use std::time::Duration;

use txmsg_core::{Error, Result, check};

txmsg_core::broker_settings! {
    /// Settings of a [`RocketBroker`](crate::RocketBroker), checked as they are set.
    ///
    /// | setting | default | meaning |
    /// |---------|---------|---------|
    /// | [`topic_prefix`](Self::topic_prefix) | `""` | topic `orders.placed` is the RocketMQ topic `<prefix>orders\|placed`, group `billing` the consumer group `<prefix>billing` |
    /// | [`producer_group`](Self::producer_group) | `"txmsg"` | the RocketMQ producer group of the relay's publishes |
    /// | [`source`](Self::source) | `"/txmsg"` | the CloudEvents `source` of every message |
    /// | [`send_timeout`](Self::send_timeout) | 3 s | longest a publish waits for the broker's answer |
    /// | [`retry_delay`](Self::retry_delay) | 1 s | how long a queue pauses before a nacked delivery comes again |
    /// | [`topic_queues`](Self::topic_queues) | 8 | the message queues of a topic a subscribe creates |
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use txmsg_rocketmq::RocketConfig;
    ///
    /// let config = RocketConfig::default()
    ///     .with_topic_prefix("shop_")?
    ///     .with_send_timeout(Duration::from_secs(5))?;
    /// assert_eq!(config.topic_prefix(), "shop_");
    ///
    /// assert!(RocketConfig::default().with_topic_prefix("no.dots").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub struct RocketConfig {
        topic_prefix: String = String::new();
        producer_group: String = "txmsg".to_owned();
        /// The longest a publish waits for the broker's answer; past it the
        /// publish fails with a retryable error.
        send_timeout / with_send_timeout: Duration = Duration::from_secs(3), unless "it is 100 ms to 5 min" = within(Duration::from_millis(100), Duration::from_secs(300)),
        /// How long a message queue pauses after a nacked delivery before
        /// the delivery comes again (RocketMQ's "suspend current queue a
        /// moment"): the later messages of its queue wait too, which keeps
        /// their order.
        retry_delay / with_retry_delay: Duration = Duration::from_secs(1), unless "it is 10 ms to 60 s" = within(Duration::from_millis(10), Duration::from_secs(60)),
        /// How many message queues a topic gets when a subscribe creates it
        /// (a publish to a missing topic creates it with the broker's
        /// default). The queues bound how many subscriptions of one group
        /// consume at once.
        topic_queues / with_topic_queues: u16 = 8, unless "it is 1 to 1024" = within(1, 1024),
    }
}

/// Longest topic prefix, in bytes (a RocketMQ name holds at most 127).
const MAX_PREFIX_LEN: usize = 64;

impl RocketConfig {
    // For `validate` (see `broker_settings!`).
    fn with_plain_settings_of(self, from: &Self) -> Result<Self> {
        self.with_topic_prefix(&from.topic_prefix)?
            .with_producer_group(&from.producer_group)
    }

    /// Sets what every RocketMQ topic and consumer group name starts with
    /// (default none): topic `orders.placed` is the RocketMQ topic
    /// `<prefix>orders|placed` (RocketMQ names hold no `.`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `topic_prefix` unless it is at most 64 ASCII
    /// letters, digits, `-` and `_`.
    pub fn with_topic_prefix(mut self, prefix: &str) -> Result<Self> {
        self.topic_prefix = check_name("topic_prefix", prefix, 0)?;
        Ok(self)
    }

    /// The prefix of every RocketMQ topic and consumer group name.
    pub fn topic_prefix(&self) -> &str {
        &self.topic_prefix
    }

    /// Sets the RocketMQ producer group of the relay's publishes (default
    /// `txmsg`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `producer_group` unless it is 1 to 64 ASCII
    /// letters, digits, `-` and `_`.
    pub fn with_producer_group(mut self, group: &str) -> Result<Self> {
        self.producer_group = check_name("producer_group", group, 1)?;
        Ok(self)
    }

    /// The RocketMQ producer group of the relay's publishes.
    pub fn producer_group(&self) -> &str {
        &self.producer_group
    }
}

/// `name` if it is `min` to [`MAX_PREFIX_LEN`] bytes of what every RocketMQ
/// name may hold and a txmsg name too (no `|` or `%`, which mean something
/// to RocketMQ).
pub(crate) fn check_name(field: &'static str, name: &str, min: usize) -> Result<String> {
    let name = check::byte_len(field, name, min, MAX_PREFIX_LEN)?;
    Ok(check::word(field, name)?.to_owned())
}

/// The name server addresses of a `rocketmq://host:port[,host:port…]` URL,
/// as the client takes them (`host:port;host:port`).
///
/// # Errors
///
/// [`Error::Config`] for `url` if it is not such a URL (another scheme,
/// credentials, a path or query, a missing host or port). No message quotes
/// the URL.
pub(crate) fn name_servers(url: &str) -> Result<String> {
    let bad = |why: &str| Error::config("url", format!("is not a rocketmq url: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("it has no scheme"))?;
    if !scheme.eq_ignore_ascii_case("rocketmq") {
        return Err(bad("its scheme is not `rocketmq`"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['@', '/', '?', '#']) {
        return Err(bad(
            "only name server addresses are accepted (no credentials, path or query)",
        ));
    }
    let mut servers = Vec::new();
    for server in rest.split(',') {
        let (host, port) = server
            .rsplit_once(':')
            .ok_or_else(|| bad("each name server needs a host and a port"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad("each name server needs a host and a port"));
        }
        servers.push(server);
    }
    Ok(servers.join(";"))
}

#[cfg(test)]
mod tests {
    use txmsg_testkit::config::field_of;

    use super::*;

    txmsg_testkit::deserialized_config_is_checked!(RocketConfig; |c| crate::RocketBroker::connect("rocketmq://127.0.0.1:1", c);
        r#"{ "topic_prefix": "shop_", "producer_group": "billing", "source": "/billing", "send_timeout": "2s", "retry_delay": "500ms", "topic_queues": 4 }"#;
        r#"{ "producer_group": "a.b" }"#; "producer_group");

    #[test]
    fn refuses_bad_values() {
        let c = RocketConfig::default();
        assert_eq!(field_of(c.clone().with_topic_prefix("a|b")), "topic_prefix");
        assert_eq!(
            field_of(c.clone().with_producer_group("")),
            "producer_group"
        );
        assert_eq!(
            field_of(c.clone().with_send_timeout(Duration::ZERO)),
            "send_timeout"
        );
        assert_eq!(
            field_of(c.with_retry_delay(Duration::from_secs(61))),
            "retry_delay"
        );
    }

    #[test]
    fn urls_name_their_name_servers() {
        assert_eq!(
            name_servers("rocketmq://127.0.0.1:9876").unwrap(),
            "127.0.0.1:9876"
        );
        assert_eq!(
            name_servers("rocketmq://a:9876,b:9877/").unwrap(),
            "a:9876;b:9877"
        );
        for bad in [
            "amqp://a:1",
            "rocketmq://a",
            "rocketmq://user:s3cr3t@a:9876",
            "rocketmq://a:9876/x",
            "rocketmq://:9876",
            "rocketmq://a:0",
        ] {
            txmsg_testkit::config::assert_refused_without(name_servers(bad), "url", "s3cr3t");
        }
    }
}
