//! Settings of a [`RabbitBroker`](crate::RabbitBroker).

use std::time::Duration;

use txmsg_core::{Error, Result, check};

txmsg_core::broker_settings! {
    /// Settings of a [`RabbitBroker`](crate::RabbitBroker), checked as they are set.
    ///
    /// | setting | default | meaning |
    /// |---------|---------|---------|
    /// | [`exchange`](Self::exchange) | `"txmsg"` | durable topic exchange messages are published to; the routing key is the topic |
    /// | [`mandatory`](Self::mandatory) | `true` | whether a message no queue is bound for is an error (kept and retried) rather than dropped |
    /// | [`queue_type`](Self::queue_type) | classic | the type of the queues the broker declares: [`QueueType::Quorum`] for replicated queues on a cluster |
    /// | [`source`](Self::source) | `"/txmsg"` | the CloudEvents `source` attribute of every message |
    /// | [`connection_name`](Self::connection_name) | `"txmsg"` | the name RabbitMQ shows for the connection |
    /// | [`reconnect_backoff`](Self::reconnect_backoff) | 100 ms to 10 s | delays between reconnect attempts (exponential, with jitter) |
    /// | [`connect_timeout`](Self::connect_timeout) | 10 s | longest one connect attempt may take |
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use txmsg_rabbitmq::RabbitConfig;
    ///
    /// let config = RabbitConfig::default()
    ///     .with_exchange("billing.events")?
    ///     .with_mandatory(true)
    ///     .with_source("/billing")?
    ///     .with_reconnect_backoff(Duration::from_millis(50), Duration::from_secs(5))?;
    /// assert_eq!(config.exchange(), "billing.events");
    ///
    /// assert!(RabbitConfig::default().with_exchange("no spaces").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub struct RabbitConfig {
        exchange: String = "txmsg".to_owned();
        mandatory: bool = true;
        queue_type: QueueType = QueueType::Classic;
        connection_name: String = "txmsg".to_owned();
        reconnect_min: Duration = Duration::from_millis(100);
        reconnect_max: Duration = Duration::from_secs(10);
        /// The longest one connect attempt (TCP, handshake, channel setup,
        /// exchange declaration) may take before it counts as failed.
        connect_timeout / with_connect_timeout: Duration = Duration::from_secs(10), unless "it is greater than zero" = positive(),
    }
}

/// The type of a RabbitMQ queue (its `x-queue-type` argument): see
/// [`RabbitConfig::with_queue_type`].
///
/// In a config file: `"classic"` or `"quorum"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum QueueType {
    /// A classic queue, on one node: declared without `x-queue-type`, as
    /// queues declared by earlier versions were.
    #[default]
    Classic,
    /// A quorum queue, replicated over the cluster's nodes.
    Quorum,
}

impl check::Setting for QueueType {
    fn read<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        serde::Deserialize::deserialize(d)
    }
}

/// Longest exchange name RabbitMQ accepts, in bytes (an AMQP short string).
const MAX_EXCHANGE_LEN: usize = 255;

/// Longest connection name accepted, in bytes.
const MAX_CONNECTION_NAME_LEN: usize = 255;

impl RabbitConfig {
    // For `validate` (see `broker_settings!`).
    fn with_plain_settings_of(self, from: &Self) -> Result<Self> {
        self.with_exchange(&from.exchange)?
            .with_mandatory(from.mandatory)
            .with_queue_type(from.queue_type)
            .with_connection_name(&from.connection_name)?
            .with_reconnect_backoff(from.reconnect_min, from.reconnect_max)
    }

    /// Names the exchange messages are published to.
    ///
    /// The broker declares it as a durable topic exchange when it connects
    /// and publishes each message with its topic as the routing key, so a
    /// queue bound with `orders.*` receives `orders.placed`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `exchange` if the name is empty, longer than
    /// 255 bytes, contains anything but ASCII letters, digits, `-`, `_`, `.`
    /// and `:`, or starts with `amq.` (reserved by RabbitMQ).
    pub fn with_exchange(mut self, name: &str) -> Result<Self> {
        let name = check::not_empty("exchange", name)?;
        check::at_most_bytes("exchange", name, MAX_EXCHANGE_LEN)?;
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return Err(Error::config(
                "exchange",
                format!(
                    "may contain only ASCII letters, digits, `-`, `_`, `.` and `:`, got {name:?}"
                ),
            ));
        }
        if name.starts_with("amq.") {
            return Err(Error::config(
                "exchange",
                format!("must not start with `amq.`, which RabbitMQ reserves, got {name:?}"),
            ));
        }
        self.exchange = name.to_owned();
        Ok(self)
    }

    /// Sets whether a message that no queue is bound for is an error.
    ///
    /// On (the default), RabbitMQ returns such a message and
    /// [`publish`](txmsg_core::Broker::publish) fails with a retryable
    /// [`Error::Broker`] ("unroutable: no queue bound for routing key ..."),
    /// so the relay keeps the message and retries it with backoff until a
    /// consumer group's queue is bound, or until it is dead after
    /// `max_attempts` with that reason: a message published before its
    /// consumers first started is not lost. Off, RabbitMQ drops such a
    /// message and confirms it, as any topic exchange does; turn it off only
    /// for topics that may have no listener on purpose.
    pub fn with_mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Sets the type of the queues the broker declares: the group queues of
    /// subscriptions and those of [`bind_queue`](crate::RabbitBroker::bind_queue).
    ///
    /// [`QueueType::Classic`] (the default) suits one RabbitMQ node.
    /// [`QueueType::Quorum`] is the durable, replicated queue type RabbitMQ
    /// recommends for clusters: a quorum queue keeps its messages while a
    /// majority of its nodes is up. The type is fixed when a queue is first
    /// declared; a queue that exists with the other type is refused (a
    /// permanent [`Error::Broker`] naming the queue), so moving a group to
    /// quorum queues means a new group, or moving the queue by RabbitMQ's
    /// own means.
    ///
    /// Per-key order holds on quorum queues until a delivery is handed back
    /// (a nack, or a consumer that went away holding it): RabbitMQ puts a
    /// message returned to a quorum queue behind the queue's other messages
    /// (seen on 3.10), where a classic queue puts it back in its place. So
    /// on quorum queues a message whose handler failed, or that was in
    /// flight when its consumer restarted, may be applied after later
    /// messages of its key; the inbox still applies each exactly once.
    ///
    /// RabbitMQ 4.0 and later drop a message of a quorum queue once it was
    /// delivered more than the queue's delivery limit (20 by default) times.
    /// txmsg settles a delivery its handler failed on by `basic.nack` with
    /// requeue until the handler's `max_attempts` (5 unless the
    /// `#[message_handler]` says otherwise), and a delivery whose consumer
    /// went away comes again too: keep `max_attempts` well below that limit,
    /// or raise the limit with a RabbitMQ policy.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// The type of the queues the broker declares.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// Sets the connection name RabbitMQ shows for the connection (the
    /// `connection_name` client property), to tell services apart in the
    /// management UI and in `rabbitmqctl list_connections`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `connection_name` if it is empty, longer than
    /// 255 bytes, or contains control characters.
    pub fn with_connection_name(mut self, name: &str) -> Result<Self> {
        if name.chars().any(char::is_control) {
            return Err(Error::config(
                "connection_name",
                "must not contain control characters",
            ));
        }
        let name = check::not_empty("connection_name", name)?;
        check::at_most_bytes("connection_name", name, MAX_CONNECTION_NAME_LEN)?;
        self.connection_name = name.to_owned();
        Ok(self)
    }

    /// Sets the delays between reconnect attempts after the connection was
    /// lost: the first waits `min`, each next one twice as long (with jitter),
    /// up to `max`. Attempts go on until one succeeds or the broker is closed.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `reconnect_backoff` if `min` is zero or greater
    /// than `max`.
    pub fn with_reconnect_backoff(mut self, min: Duration, max: Duration) -> Result<Self> {
        if min.is_zero() || min > max {
            return Err(Error::config(
                "reconnect_backoff",
                format!("min must be greater than zero and at most max, got {min:?} and {max:?}"),
            ));
        }
        self.reconnect_min = min;
        self.reconnect_max = max;
        Ok(self)
    }

    /// The exchange messages are published to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Whether a message that no queue is bound for is an error.
    pub fn mandatory(&self) -> bool {
        self.mandatory
    }

    /// The connection name shown by RabbitMQ.
    pub fn connection_name(&self) -> &str {
        &self.connection_name
    }

    /// The shortest and longest delay between reconnect attempts.
    pub fn reconnect_backoff(&self) -> (Duration, Duration) {
        (self.reconnect_min, self.reconnect_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use txmsg_testkit::config::field_of;

    txmsg_testkit::deserialized_config_is_checked!(RabbitConfig; |c| crate::RabbitBroker::connect("amqp://127.0.0.1:1/%2f", c);
        r#"{ "exchange": "billing", "mandatory": false, "queue_type": "quorum", "source": "/billing", "connection_name": "billing-1", "reconnect_min": "100ms", "reconnect_max": "1m", "connect_timeout": "3s" }"#;
        r#"{ "exchange": "no spaces" }"#; "exchange");

    #[test]
    fn queue_type_reads_from_a_config_file() {
        let c: RabbitConfig = serde_json::from_str(r#"{ "queue_type": "quorum" }"#).unwrap();
        assert_eq!(c.queue_type(), QueueType::Quorum);
        let err = serde_json::from_str::<RabbitConfig>(r#"{ "queue_type": "stream" }"#)
            .expect_err("not a queue type txmsg declares");
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    #[test]
    fn defaults() {
        let c = RabbitConfig::default();
        assert_eq!(c.exchange(), "txmsg");
        assert!(c.mandatory());
        assert_eq!(c.queue_type(), QueueType::Classic);
        assert_eq!(c.source(), "/txmsg");
        assert_eq!(c.connection_name(), "txmsg");
        let (min, max) = c.reconnect_backoff();
        assert!(!min.is_zero() && min <= max);
    }

    #[test]
    fn exchange_rules() {
        for good in ["txmsg", "billing.events", "a-b_c:d.e", &"x".repeat(255)] {
            assert_eq!(
                RabbitConfig::default()
                    .with_exchange(good)
                    .unwrap()
                    .exchange(),
                good
            );
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "é",
            "a#",
            "a*",
            "amq.topic",
            &"x".repeat(256),
        ] {
            let err = RabbitConfig::default().with_exchange(bad);
            assert_eq!(field_of(err), "exchange", "{bad:?}");
        }
    }

    #[test]
    fn source_and_name_rules() {
        assert!(
            RabbitConfig::default()
                .with_source("https://example.com/orders")
                .is_ok()
        );
        for bad in ["", "a b", "a\nb"] {
            assert_eq!(field_of(RabbitConfig::default().with_source(bad)), "source");
        }
        assert!(
            RabbitConfig::default()
                .with_connection_name("orders service")
                .is_ok()
        );
        for bad in ["", "a\u{7}b", &"n".repeat(256)] {
            let err = RabbitConfig::default().with_connection_name(bad);
            assert_eq!(field_of(err), "connection_name");
        }
    }

    #[test]
    fn backoff_and_timeout_rules() {
        let ms = Duration::from_millis;
        assert!(
            RabbitConfig::default()
                .with_reconnect_backoff(ms(1), ms(1))
                .is_ok()
        );
        for (min, max) in [(ms(0), ms(10)), (ms(20), ms(10))] {
            let err = RabbitConfig::default().with_reconnect_backoff(min, max);
            assert_eq!(field_of(err), "reconnect_backoff");
        }
        let err = RabbitConfig::default().with_connect_timeout(Duration::ZERO);
        assert_eq!(field_of(err), "connect_timeout");
    }
}
