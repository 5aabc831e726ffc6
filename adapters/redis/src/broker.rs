//! [`RedisBroker`]: the [`Broker`] for Redis Streams.

use std::fmt;
use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Value};
use tracing::{Instrument, debug_span};
use txmsg_core::consumer::{SubscribeSpec, Subscription};
use txmsg_core::{Broker, Envelope, Error, Result};

use crate::config::RedisConfig;
use crate::reply::{Info, array, info, parse_id, text};

/// How often a lost connection is tried again before a command fails.
const RECONNECT_RETRIES: usize = 1;

/// A [`Broker`] on Redis Streams: one stream per topic, one consumer group
/// of the stream per txmsg consumer group.
///
/// [`publish`](Broker::publish) adds the message to the stream at
/// `<prefix><topic>` with `XADD` and resolves `Ok` once Redis replied with
/// the entry id. Publishes are pipelined over one multiplexed connection
/// shared by all clones. When the connection drops it is opened again on the
/// next command; commands during the outage fail with
/// [`Error::BrokerUnavailable`].
///
/// [`subscribe`](Broker::subscribe) joins the stream's consumer group
/// `spec.group` (created by the group's first subscribe, at the end of the
/// stream) as a consumer of its own, on a connection of its own: see the
/// [crate documentation](crate) for how deliveries are acknowledged,
/// nacked and taken over.
///
/// `Debug` shows the URL with its password masked.
///
/// # Examples
///
/// ```no_run
/// use txmsg_redis::{RedisBroker, RedisConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = RedisConfig::default().with_key_prefix("shop:")?;
/// let broker = RedisBroker::connect("redis://127.0.0.1:6379", config).await?;
/// assert_eq!(broker.stream_key("orders.placed"), "shop:orders.placed");
/// // Hand `broker` to a `Relay`; it publishes through `Broker::publish`.
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBroker {
    pub(crate) inner: Arc<Inner>,
}

/// What the clones of one broker share.
pub(crate) struct Inner {
    pub(crate) client: redis::Client,
    pub(crate) conn: ConnectionManager,
    pub(crate) config: RedisConfig,
    pub(crate) url: String,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.inner.url)
            .field("key_prefix", &self.inner.config.key_prefix())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to Redis at `url` (`redis://[user:password@]host:port/db`,
    /// or `unix://` paths) and checks that it answers.
    ///
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] for `url` if it is not a Redis URL.
    /// - [`Error::BrokerUnavailable`] if Redis cannot be reached (retryable).
    /// - [`Error::Broker`] if Redis refused the connection, for instance the
    ///   credentials.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the attempt and closes any connection it
    /// opened.
    pub async fn connect(url: &str, config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let (client, masked) = config.open_client(url)?;
        let span = debug_span!("txmsg.redis.connect", url = %masked);
        let conn = manager(&client, &config, config.response_timeout())
            .instrument(span)
            .await?;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                client,
                conn,
                config,
                url: masked,
            }),
        })
    }

    /// The settings the broker was connected with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The key of the stream of `topic`: `<prefix><topic>`.
    pub fn stream_key(&self, topic: &str) -> String {
        format!("{}{topic}", self.inner.config.key_prefix())
    }
}

impl Broker for RedisBroker {
    fn system(&self) -> &'static str {
        "redis"
    }

    /// Adds `envelope` to its topic's stream with `XADD` (trimming with
    /// `MAXLEN ~` when [`RedisConfig::max_len`] is set); `Ok` once Redis
    /// replied with the entry id.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] for a bad topic name;
    /// [`Error::BrokerUnavailable`] if Redis cannot be reached or did not
    /// answer in time; [`Error::Broker`] if it refused the entry (not
    /// retryable if the key holds something other than a stream).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is safe: the entry may or may not have been
    /// added, and the caller publishes it again (at least once).
    async fn publish(&self, envelope: &Envelope) -> Result<()> {
        txmsg_core::validate_topic(&envelope.topic)?;
        let key = self.stream_key(&envelope.topic);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&key);
        if let Some(max_len) = self.inner.config.max_len() {
            cmd.arg("MAXLEN").arg("~").arg(max_len);
        }
        cmd.arg("*");
        for (name, value) in crate::wire::encode(envelope, self.inner.config.source()) {
            cmd.arg(name).arg(value);
        }
        let mut conn = self.inner.conn.clone();
        let reply: Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(format!("XADD to `{key}` failed"), e))?;
        match reply {
            Value::BulkString(_) | Value::SimpleString(_) | Value::VerbatimString { .. } => {
                tracing::trace!(id = %envelope.id, key, "published");
                Ok(())
            }
            other => Err(Error::broker_permanent(format!(
                "XADD to `{key}` replied {other:?} instead of an entry id"
            ))),
        }
    }

    /// Subscribes consumer group `spec.group` to `spec.topic`.
    ///
    /// Creates the stream's consumer group `spec.group` if it does not exist
    /// (at the end of the stream, creating an empty stream if needed), opens
    /// a connection of its own and starts a task that reads the group as a
    /// new consumer, with at most `spec.prefetch` deliveries unsettled.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] or [`Error::Config`] for a bad topic or group
    /// name or a zero prefetch; [`Error::BrokerUnavailable`] if Redis cannot
    /// be reached; [`Error::Broker`] if it refused to create the group.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the group created; nothing is read
    /// until a subscription is returned.
    async fn subscribe(&self, spec: &SubscribeSpec) -> Result<Subscription> {
        crate::consume::subscribe(self, spec).await
    }
}

impl RedisBroker {
    /// Deletes the entries of `topic`'s stream that every consumer group of
    /// the stream has acknowledged (`XTRIM MINID`), and returns how many
    /// were deleted.
    ///
    /// A stream grows without bound unless it is trimmed: acknowledged
    /// entries stay in it. [`RedisConfig::max_len`] bounds it by count,
    /// whatever was acknowledged (an entry trimmed before its group
    /// acknowledged it is lost, and reaches the group as a dead letter that
    /// says so); this trims only what no group needs, so call it
    /// periodically instead, or as well. A stream without consumer groups
    /// is left as it is.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] for a bad topic name; a broker error if Redis
    /// failed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(broker: txmsg_redis::RedisBroker) -> txmsg_core::Result<()> {
    /// let deleted = broker.trim_acknowledged("orders.placed").await?;
    /// println!("{deleted} acknowledged entries deleted");
    /// # Ok(()) }
    /// ```
    pub async fn trim_acknowledged(&self, topic: &str) -> Result<u64> {
        txmsg_core::validate_topic(topic)?;
        let key = self.stream_key(topic);
        let mut conn = self.inner.conn.clone();
        let failed =
            |what: &str, e: RedisError| redis_error(format!("{what} of `{key}` failed"), e);
        let groups: Value = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(&mut conn)
            .await
        {
            Ok(groups) => groups,
            // No such stream: nothing to trim.
            Err(e) if e.to_string().contains("no such key") => return Ok(0),
            Err(e) => return Err(failed("XINFO GROUPS", e)),
        };
        let mut floor: Option<(u64, u64)> = None;
        for group in array(groups) {
            let Info {
                name,
                pending,
                other: last,
            } = info(group, "last-delivered-id");
            let (Some(name), Some(last)) = (name, last.and_then(text)) else {
                continue;
            };
            let needed = if pending > 0 {
                let summary: Value = redis::cmd("XPENDING")
                    .arg(&key)
                    .arg(&name)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| failed("XPENDING", e))?;
                let oldest = array(summary).into_iter().nth(1).and_then(text);
                match oldest {
                    Some(id) => parse_id(&id),
                    // Settled meanwhile: nothing older than the last read.
                    None => successor(parse_id(&last)),
                }
            } else {
                successor(parse_id(&last))
            };
            floor = Some(floor.map_or(needed, |f| f.min(needed)));
        }
        let Some((ms, seq)) = floor else {
            return Ok(0);
        };
        let deleted: u64 = redis::cmd("XTRIM")
            .arg(&key)
            .arg("MINID")
            .arg(format!("{ms}-{seq}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| failed("XTRIM", e))?;
        Ok(deleted)
    }
}

/// The entry id right after `id`.
fn successor((ms, seq): (u64, u64)) -> (u64, u64) {
    match seq.checked_add(1) {
        Some(seq) => (ms, seq),
        None => (ms.saturating_add(1), 0),
    }
}

/// A connection manager for `client` whose commands time out after
/// `response_timeout`; connects once before returning.
pub(crate) async fn manager(
    client: &redis::Client,
    config: &RedisConfig,
    response_timeout: std::time::Duration,
) -> Result<ConnectionManager> {
    let manager_config = ConnectionManagerConfig::new()
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_min_delay(std::time::Duration::from_millis(50))
        .set_max_delay(std::time::Duration::from_secs(1))
        .set_connection_timeout(Some(config.connect_timeout()))
        .set_response_timeout(Some(response_timeout));
    ConnectionManager::new_with_config(client.clone(), manager_config)
        .await
        .map_err(|e| redis_error("could not connect to redis", e))
}

/// The txmsg error for a failed Redis command.
///
/// Lost or refused connections and timeouts are
/// [`Error::BrokerUnavailable`]; a key of the wrong type is a permanent
/// [`Error::Broker`]; anything else a retryable one.
pub(crate) fn redis_error(what: impl fmt::Display, e: RedisError) -> Error {
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout() {
        Error::broker_unavailable(format!("{what}: {e}"), Some(Box::new(e)))
    } else if e.code() == Some("WRONGTYPE") {
        Error::broker_permanent(format!("{what}: {e}"))
    } else {
        Error::broker(format!("{what}: {e}"), e)
    }
}
