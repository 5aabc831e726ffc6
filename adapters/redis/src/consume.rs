//! Subscriptions: one consumer of a stream's consumer group each.
//!
//! A task per subscription reads the group with `XREADGROUP` on a
//! connection of its own and feeds the subscription's bounded channel. A
//! semaphore of `prefetch` permits bounds the unsettled deliveries: each
//! delivery holds a permit until it is settled or dropped, and a read asks
//! for no more entries than there are free permits. The task also
//!
//! - claims nacked entries back at once (`XCLAIM`) and delivers them again;
//! - takes over entries of its group idle longer than the claim time
//!   (`XAUTOCLAIM`): deliveries dropped unsettled and those of vanished
//!   consumers;
//! - keeps the entries it holds from going idle (`XCLAIM ... JUSTID`
//!   to itself), so that no other consumer takes over a delivery that is
//!   still being handled.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tracing::{debug, warn};
use txmsg_core::consumer::{Acker, Delivery, SubscribeSpec, Subscription};
use txmsg_core::{BoxFuture, Error, Result};
use uuid::Uuid;

use crate::broker::{RedisBroker, manager, redis_error};

/// Longest pause between two attempts after a failed read.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// First pause after a failed read.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// Checks the names and the prefetch of `spec`.
fn validate(spec: &SubscribeSpec) -> Result<()> {
    txmsg_core::validate_topic(&spec.topic)?;
    txmsg_core::validate_topic(&spec.group).map_err(|e| match e {
        Error::InvalidTopic { reason, .. } => Error::config("group", reason),
        other => other,
    })?;
    if spec.prefetch == 0 {
        return Err(Error::config("prefetch", "must be greater than zero"));
    }
    Ok(())
}

/// Creates consumer group `group` of the stream at `key` at the stream's
/// end, creating the stream if needed; an existing group is left as it is.
async fn create_group(conn: &mut ConnectionManager, key: &str, group: &str) -> Result<()> {
    let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(group)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(redis_error(
            format!("creating consumer group `{group}` of `{key}` failed"),
            e,
        )),
    }
}

/// Subscribes as described on [`RedisBroker`]'s `subscribe`.
pub(crate) async fn subscribe(broker: &RedisBroker, spec: &SubscribeSpec) -> Result<Subscription> {
    validate(spec)?;
    let inner = &broker.inner;
    let key = broker.stream_key(&spec.topic);
    let mut conn = inner.conn.clone();
    create_group(&mut conn, &key, &spec.group).await?;

    let config = &inner.config;
    let reader = manager(
        &inner.client,
        config,
        config.get_response_timeout() + config.get_block(),
    )
    .await?;
    let consumer = format!("txmsg-{}", Uuid::now_v7().simple());
    let (tx, rx) = mpsc::channel(usize::from(spec.prefetch));
    let (nack_tx, nack_rx) = mpsc::unbounded_channel();
    let claim_idle = config.get_claim_idle();
    let shared = Arc::new(Shared {
        conn,
        key,
        group: spec.group.clone(),
        consumer,
        held: Mutex::new(HashSet::new()),
        nacks: nack_tx,
    });
    debug!(
        key = shared.key,
        group = shared.group,
        consumer = shared.consumer,
        "subscribed"
    );
    let task = Reader {
        shared,
        reader,
        topic: spec.topic.clone(),
        tx,
        nack_rx,
        permits: Arc::new(Semaphore::new(usize::from(spec.prefetch))),
        claim_idle,
        // Never wait longer than a third of the claim time: the task must
        // keep its held entries fresh.
        tick: config.get_block().min(claim_idle / 3),
        read_count: config.get_read_count(),
    };
    let handle = tokio::spawn(task.run());
    Ok(Subscription::new(rx, Some(handle.abort_handle())))
}

/// What a subscription's task and its ackers share.
struct Shared {
    conn: ConnectionManager,
    key: String,
    group: String,
    consumer: String,
    /// Ids of the entries delivered and not yet settled or dropped.
    held: Mutex<HashSet<String>>,
    /// Ids of nacked entries, for the task to deliver again.
    nacks: mpsc::UnboundedSender<String>,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The reading task of one subscription.
struct Reader {
    shared: Arc<Shared>,
    reader: ConnectionManager,
    topic: String,
    tx: mpsc::Sender<Delivery>,
    nack_rx: mpsc::UnboundedReceiver<String>,
    permits: Arc<Semaphore>,
    claim_idle: Duration,
    tick: Duration,
    read_count: usize,
}

/// Where the task is in its periodic work.
struct State {
    nacked: VecDeque<String>,
    cursor: String,
    next_autoclaim: Instant,
    next_refresh: Instant,
}

/// Why a step of the task ended early.
enum Stop {
    /// The subscription was dropped.
    Closed,
    /// A command failed; try again after a pause.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

impl Reader {
    async fn run(mut self) {
        let now = Instant::now();
        let mut state = State {
            nacked: VecDeque::new(),
            cursor: "0-0".to_owned(),
            next_autoclaim: now,
            next_refresh: now + self.claim_idle / 3,
        };
        let mut backoff = MIN_BACKOFF;
        loop {
            while let Ok(id) = self.nack_rx.try_recv() {
                state.nacked.push_back(id);
            }
            match self.step(&mut state).await {
                Ok(()) => backoff = MIN_BACKOFF,
                Err(Stop::Closed) => return,
                Err(Stop::Failed(e)) => {
                    warn!(
                        key = self.shared.key,
                        group = self.shared.group,
                        error = %e,
                        "reading the redis stream failed; trying again"
                    );
                    if let Error::Broker { message, .. } = &e
                        && message.contains("NOGROUP")
                    {
                        let mut conn = self.shared.conn.clone();
                        let _ = create_group(&mut conn, &self.shared.key, &self.shared.group).await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            if self.tx.is_closed() {
                return;
            }
        }
    }

    /// One round: keep held entries fresh, deliver nacked ones again, take
    /// over idle ones, then read new ones (or wait for a free permit).
    async fn step(&mut self, state: &mut State) -> std::result::Result<(), Stop> {
        if Instant::now() >= state.next_refresh {
            self.refresh().await?;
            state.next_refresh = Instant::now() + self.claim_idle / 3;
        }

        let free = self.permits.available_permits();
        if free > 0 && !state.nacked.is_empty() {
            let n = free.min(state.nacked.len());
            let ids: Vec<String> = state.nacked.drain(..n).collect();
            let mut cmd = self.claim_cmd();
            cmd.arg(0).arg(&ids);
            let reply: Value = self.query(&cmd, "XCLAIM").await?;
            self.deliver(entries(reply), true).await?;
        }

        let free = self.permits.available_permits();
        if free > 0 && Instant::now() >= state.next_autoclaim {
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.shared.key)
                .arg(&self.shared.group)
                .arg(&self.shared.consumer)
                .arg(u64::try_from(self.claim_idle.as_millis()).unwrap_or(u64::MAX))
                .arg(&state.cursor)
                .arg("COUNT")
                .arg(free);
            let reply: Value = self.query(&cmd, "XAUTOCLAIM").await?;
            let mut parts = array(reply).into_iter();
            let cursor = parts.next().and_then(text).unwrap_or_else(|| "0-0".into());
            let claimed = parts.next().map(entries).unwrap_or_default();
            if cursor == "0-0" {
                state.next_autoclaim = Instant::now() + self.claim_idle / 2;
            }
            state.cursor = cursor;
            if !claimed.is_empty() {
                debug!(
                    key = self.shared.key,
                    group = self.shared.group,
                    count = claimed.len(),
                    "took over idle entries"
                );
            }
            self.deliver(claimed, true).await?;
        }

        let free = self.permits.available_permits();
        if free == 0 {
            // Wait for a delivery to be settled (which frees a permit), but
            // no longer than a tick: held entries must be kept fresh.
            if let Ok(Ok(permit)) =
                tokio::time::timeout(self.tick, self.permits.clone().acquire_owned()).await
            {
                drop(permit);
            }
            return Ok(());
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.shared.group)
            .arg(&self.shared.consumer)
            .arg("COUNT")
            .arg(free.min(self.read_count))
            .arg("BLOCK")
            .arg(
                u64::try_from(self.tick.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .arg("STREAMS")
            .arg(&self.shared.key)
            .arg(">");
        let reply: Value = self.query(&cmd, "XREADGROUP").await?;
        let mut new = Vec::new();
        for (_stream, stream_entries) in streams(reply) {
            new.extend(entries(stream_entries));
        }
        self.deliver(new, false).await
    }

    /// `XCLAIM <key> <group> <consumer>`, to be completed with the idle time
    /// and ids.
    fn claim_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.shared.key)
            .arg(&self.shared.group)
            .arg(&self.shared.consumer);
        cmd
    }

    /// Resets the idle time of the entries this subscription holds.
    async fn refresh(&mut self) -> std::result::Result<(), Stop> {
        let ids: Vec<String> = self.shared.held().iter().cloned().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = self.claim_cmd();
        cmd.arg(0).arg(&ids).arg("JUSTID");
        let _: Value = self.query(&cmd, "XCLAIM JUSTID").await?;
        Ok(())
    }

    async fn query(&mut self, cmd: &redis::Cmd, name: &str) -> Result<Value> {
        cmd.query_async(&mut self.reader).await.map_err(|e| {
            redis_error(
                format!(
                    "{name} of group `{}` on `{}` failed",
                    self.shared.group, self.shared.key
                ),
                e,
            )
        })
    }

    /// Hands `entries` to the subscription, each with a permit.
    async fn deliver(
        &mut self,
        entries: Vec<Entry>,
        redelivered: bool,
    ) -> std::result::Result<(), Stop> {
        for (id, fields) in entries {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Stop::Closed)?;
            self.shared.held().insert(id.clone());
            let message = crate::wire::decode(&self.topic, fields);
            let acker = RedisAcker {
                held: Held {
                    shared: self.shared.clone(),
                    id,
                },
                _permit: permit,
            };
            let delivery = Delivery::new(message, redelivered, Box::new(acker));
            if self.tx.send(delivery).await.is_err() {
                return Err(Stop::Closed);
            }
        }
        Ok(())
    }
}

/// One entry: its id and its fields.
type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// The elements of an array reply (none for anything else).
fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        Value::Attribute { data, .. } => array(*data),
        _ => Vec::new(),
    }
}

/// A reply as text, for ids and names.
fn text(value: Value) -> Option<String> {
    bytes(value).and_then(|b| String::from_utf8(b).ok())
}

/// A reply as bytes, for field names and values.
fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// The (stream, entries) pairs of an `XREADGROUP` reply.
fn streams(value: Value) -> Vec<(Value, Value)> {
    match value {
        Value::Map(pairs) => pairs,
        other => array(other)
            .into_iter()
            .filter_map(|pair| {
                let mut parts = array(pair).into_iter();
                Some((parts.next()?, parts.next()?))
            })
            .collect(),
    }
}

/// The entries of an array of `[id, [field, value, ...]]`; entries that
/// are gone (nil) are left out.
fn entries(value: Value) -> Vec<Entry> {
    array(value)
        .into_iter()
        .filter_map(|entry| {
            let mut parts = array(entry).into_iter();
            let id = parts.next().and_then(text)?;
            let fields = match parts.next()? {
                Value::Map(pairs) => pairs
                    .into_iter()
                    .filter_map(|(n, v)| Some((bytes(n)?, bytes(v)?)))
                    .collect(),
                other => {
                    let mut flat = array(other).into_iter();
                    let mut fields = Vec::new();
                    while let (Some(n), Some(v)) = (flat.next(), flat.next()) {
                        if let (Some(n), Some(v)) = (bytes(n), bytes(v)) {
                            fields.push((n, v));
                        }
                    }
                    fields
                }
            };
            Some((id, fields))
        })
        .collect()
}

/// Marks an entry as held by its subscription until dropped.
struct Held {
    shared: Arc<Shared>,
    id: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shared.held().remove(&self.id);
    }
}

/// Settles one entry: `XACK`, or back to the subscription's task on nack.
struct RedisAcker {
    held: Held,
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for RedisAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAcker")
            .field("key", &self.held.shared.key)
            .field("group", &self.held.shared.group)
            .field("id", &self.held.id)
            .finish_non_exhaustive()
    }
}

impl Acker for RedisAcker {
    /// `XACK`: the entry leaves the group's pending entries.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let shared = self.held.shared.clone();
            let mut conn = shared.conn.clone();
            let acked: redis::RedisResult<Value> = redis::cmd("XACK")
                .arg(&shared.key)
                .arg(&shared.group)
                .arg(&self.held.id)
                .query_async(&mut conn)
                .await;
            drop(self);
            acked.map(drop).map_err(|e| {
                redis_error(
                    format!(
                        "XACK of group `{}` on `{}` failed",
                        shared.group, shared.key
                    ),
                    e,
                )
            })
        })
    }

    /// Hands the entry back to the subscription's task, which claims it
    /// back and delivers it again at once. If the subscription is gone, the
    /// entry stays pending and is taken over once idle.
    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let shared = self.held.shared.clone();
            let id = self.held.id.clone();
            // Settle first: the permit must be free for the redelivery.
            drop(self);
            // A closed channel means the subscription is gone; the entry
            // stays pending and is taken over once idle.
            let _ = shared.nacks.send(id);
            Ok(())
        })
    }
}
