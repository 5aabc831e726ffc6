//! Subscriptions: one consumer of a stream's consumer group each.
//!
//! A task per subscription reads the group with `XREADGROUP` on a
//! connection of its own and feeds the subscription's bounded channel. A
//! semaphore of `prefetch` permits bounds the unsettled deliveries: each
//! delivery holds a permit until it is settled or dropped, and a read asks
//! for no more entries than there are free permits. The task also
//!
//! - first takes over, in stream order, what the group's consumers that are
//!   gone (a crashed process) still hold, and what was handed back, before
//!   it reads a new entry, so that a restarted consumer keeps each key's
//!   order;
//! - claims handed-back entries back at once (`XCLAIM`) and delivers them
//!   again before anything newer;
//! - takes over entries of its group idle longer than the claim time
//!   (`XAUTOCLAIM`);
//! - keeps the entries it holds from going idle (`XCLAIM ... JUSTID` to
//!   itself, every tick), so that no other consumer takes over a delivery
//!   that is still being handled, and so that other consumers can tell it
//!   is alive;
//! - reports entries trimmed from the stream before they were acknowledged
//!   (`max_len`) as undecodable deliveries, which the consumer keeps as
//!   dead letters with the reason.
//!
//! A hand-back (nack, or a delivery dropped unsettled) moves the entry to
//! the group's [`HANDED_BACK`] consumer, idle: any consumer of the group
//! takes it from there, the subscription that handed it back at once. A
//! subscription that ends removes its consumer from the group (`XGROUP
//! DELCONSUMER`) when it holds nothing; consumers left by crashed processes
//! are removed by the next subscription once it took over their entries.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};
use txmsg_core::consumer::{Acker, Delivery, SubscribeSpec, Subscription, Undecodable};
use txmsg_core::{BoxFuture, Error, Headers, Result};
use uuid::Uuid;

use crate::broker::{RedisBroker, manager, redis_error};
use crate::reply::{Entry, Info, array, entries, info, integer, parse_id, streams, text};

/// Longest pause between two attempts after a failed read.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// First pause after a failed read.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// The consumer of a group that holds handed-back entries until a consumer
/// of the group takes them. It never reads.
pub(crate) const HANDED_BACK: &str = "txmsg-handed-back";

/// The idle time a hand-back gives an entry (one day): longer than any
/// claim time, so that every consumer's `XAUTOCLAIM` takes it at once.
const HANDED_BACK_IDLE_MS: u64 = 24 * 3600 * 1000;

/// Most pending entries of one gone consumer looked up per round.
const TAKEOVER_BATCH: usize = 1000;

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
    spec.validate()?;
    let inner = &broker.inner;
    let key = broker.stream_key(&spec.topic);
    let mut conn = inner.conn.clone();
    create_group(&mut conn, &key, &spec.group).await?;

    let config = &inner.config;
    let reader = manager(
        &inner.client,
        config,
        config.response_timeout() + config.block(),
    )
    .await?;
    let consumer = format!("txmsg-{}", Uuid::now_v7().simple());
    let (tx, rx) = mpsc::channel(usize::from(spec.prefetch));
    let (nack_tx, nack_rx) = mpsc::unbounded_channel();
    let claim_idle = config.claim_idle();
    // Never wait longer than a third of the claim time: the task must
    // keep its held entries fresh.
    let tick = config.block().min(claim_idle / 3);
    let shared = Arc::new(Shared {
        conn,
        key,
        group: spec.group.clone(),
        consumer,
        topic: spec.topic.clone(),
        held: Mutex::new(HashSet::new()),
        nacks: nack_tx,
    });
    debug!(
        key = shared.key,
        group = shared.group,
        consumer = shared.consumer,
        "subscribed"
    );
    let (closing_tx, closing) = oneshot::channel();
    let task = Reader {
        shared,
        reader,
        tx,
        nack_rx,
        permits: Arc::new(Semaphore::new(usize::from(spec.prefetch))),
        claim_idle,
        tick,
        // A live consumer touches the group at least every tick; one that
        // did not for three ticks and a response timeout is gone.
        gone_after: tick * 3 + config.response_timeout(),
        read_count: config.read_count(),
    };
    tokio::spawn(task.run(closing));
    Ok(Subscription::with_close(rx, closing_tx))
}

/// What a subscription's task and its ackers share.
struct Shared {
    conn: ConnectionManager,
    key: String,
    group: String,
    consumer: String,
    topic: String,
    /// Ids of the entries delivered and not yet settled or dropped.
    held: Mutex<HashSet<String>>,
    /// Ids of handed-back entries, for the task to deliver again.
    nacks: mpsc::UnboundedSender<String>,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves entry `id` to the group's [`HANDED_BACK`] consumer, idle, so
    /// that any consumer of the group takes it at once (this
    /// subscription's task first, if it still runs).
    async fn hand_back(&self, id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let moved: redis::RedisResult<Value> = redis::cmd("XCLAIM")
            .arg(&self.key)
            .arg(&self.group)
            .arg(HANDED_BACK)
            .arg(0)
            .arg(id)
            .arg("IDLE")
            .arg(HANDED_BACK_IDLE_MS)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await;
        let moved = moved.map_err(|e| {
            redis_error(
                format!(
                    "handing entry {id} of `{}` back to group `{}` failed; another consumer takes it over after the claim time",
                    self.key, self.group
                ),
                e,
            )
        })?;
        if array(moved).is_empty() {
            // Redis claims only entries still in the stream.
            tracing::error!(
                key = self.key,
                group = self.group,
                id,
                "a handed-back entry was trimmed from the stream (max_len) before it was acknowledged; it is lost"
            );
            return Err(Error::broker_permanent(format!(
                "entry {id} of `{}` was trimmed from the stream (max_len) before group `{}` acknowledged it: it cannot be handed back and is lost",
                self.key, self.group
            )));
        }
        Ok(())
    }
}

impl Drop for Shared {
    /// The subscription and its last delivery are gone: its consumer leaves
    /// the group, if it holds nothing (what a consumer holds is lost with
    /// it, so one that still holds entries stays for another to take them
    /// over).
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut conn = self.conn.clone();
        let key = std::mem::take(&mut self.key);
        let group = std::mem::take(&mut self.group);
        let consumer = std::mem::take(&mut self.consumer);
        runtime.spawn(async move {
            if let Err(e) = remove_if_idle(&mut conn, &key, &group, &consumer).await {
                debug!(key, group, consumer, error = %e, "removing the consumer from its group failed");
            }
        });
    }
}

/// Removes `consumer` from `group` if it holds no entry.
async fn remove_if_idle(
    conn: &mut ConnectionManager,
    key: &str,
    group: &str,
    consumer: &str,
) -> redis::RedisResult<()> {
    let pending: Value = redis::cmd("XPENDING")
        .arg(key)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1)
        .arg(consumer)
        .query_async(conn)
        .await?;
    if array(pending).is_empty() {
        let _: Value = redis::cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(key)
            .arg(group)
            .arg(consumer)
            .query_async(conn)
            .await?;
    }
    Ok(())
}

/// The reading task of one subscription.
struct Reader {
    shared: Arc<Shared>,
    reader: ConnectionManager,
    tx: mpsc::Sender<Delivery>,
    nack_rx: mpsc::UnboundedReceiver<String>,
    permits: Arc<Semaphore>,
    claim_idle: Duration,
    tick: Duration,
    gone_after: Duration,
    read_count: usize,
}

/// Where the task is in its periodic work.
struct State {
    /// Entries to claim and deliver before anything newer: taken over from
    /// gone consumers, handed back.
    nacked: VecDeque<String>,
    cursor: String,
    next_autoclaim: Instant,
    next_refresh: Instant,
    /// Whether the group's gone consumers were taken over.
    taken_over: bool,
}

/// Why a step of the task ended early.
enum Stop {
    /// The subscription was closed or dropped.
    Closed,
    /// A command failed; try again after a pause.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

/// A consumer of the group, as `XINFO CONSUMERS` shows it.
struct ConsumerInfo {
    name: String,
    pending: u64,
    idle: Duration,
}

impl Reader {
    async fn run(mut self, mut closing: oneshot::Receiver<()>) {
        let now = Instant::now();
        let mut state = State {
            nacked: VecDeque::new(),
            cursor: "0-0".to_owned(),
            next_autoclaim: now,
            next_refresh: now + self.tick,
            taken_over: false,
        };
        let mut backoff = MIN_BACKOFF;
        loop {
            while let Ok(id) = self.nack_rx.try_recv() {
                state.nacked.push_back(id);
            }
            // A step is never cancelled (entries read and not delivered
            // would wait for a takeover): closing is seen between steps,
            // which take at most about a tick.
            if !matches!(closing.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                return;
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
                    tokio::select! {
                        _ = &mut closing => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            if self.tx.is_closed() {
                return;
            }
        }
    }

    /// One round: take over what gone consumers left (once), keep held
    /// entries fresh, deliver handed-back ones again, take over idle ones,
    /// then read new ones (or wait for a free permit).
    async fn step(&mut self, state: &mut State) -> std::result::Result<(), Stop> {
        if !state.taken_over {
            self.take_over_gone(state).await?;
            state.taken_over = true;
        }
        if Instant::now() >= state.next_refresh {
            self.refresh().await?;
            state.next_refresh = Instant::now() + self.tick;
        }

        let free = self.permits.available_permits();
        if free > 0 && !state.nacked.is_empty() {
            let n = free.min(state.nacked.len());
            let ids: Vec<String> = state.nacked.drain(..n).collect();
            let mut cmd = self.claim_cmd();
            cmd.arg(0).arg(&ids);
            let reply: Value = self.query(&cmd, "XCLAIM").await?;
            let claimed = entries(reply);
            let trimmed = self.trimmed_among(&ids, &claimed).await?;
            self.deliver(claimed, true).await?;
            self.deliver_trimmed(trimmed).await?;
        }
        if !state.nacked.is_empty() {
            // Older entries wait for permits: nothing newer before them.
            return self.wait_for_permit().await;
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
            // Redis 7 lists the ids of entries it found deleted from the
            // stream (trimmed) and dropped from the pending list.
            let trimmed: Vec<String> = parts
                .next()
                .map(array)
                .unwrap_or_default()
                .into_iter()
                .filter_map(text)
                .collect();
            let scanned = cursor == "0-0";
            if scanned {
                state.next_autoclaim = Instant::now() + self.claim_idle / 2;
            }
            state.cursor = cursor;
            self.taking_over(claimed.len(), "took over idle entries");
            self.deliver(claimed, true).await?;
            self.deliver_trimmed(trimmed).await?;
            if !scanned {
                // Older idle entries may follow: read nothing newer yet.
                return Ok(());
            }
        }

        let free = self.permits.available_permits();
        if free == 0 {
            return self.wait_for_permit().await;
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

    /// Logs that `count` entries of the group are taken over, as `what`
    /// says; nothing when there are none.
    fn taking_over(&self, count: usize, what: &str) {
        if count > 0 {
            debug!(
                key = self.shared.key,
                group = self.shared.group,
                count,
                "{what}"
            );
        }
    }

    /// Waits for a delivery to be settled (which frees a permit), but no
    /// longer than a tick: held entries must be kept fresh.
    async fn wait_for_permit(&mut self) -> std::result::Result<(), Stop> {
        if let Ok(Ok(permit)) =
            tokio::time::timeout(self.tick, self.permits.clone().acquire_owned()).await
        {
            drop(permit);
        }
        Ok(())
    }

    /// Queues, in stream order, the entries of the group's consumers that
    /// are gone and the handed-back ones, to be delivered before anything
    /// newer; removes gone consumers that hold nothing.
    ///
    /// A live subscription refreshes what it holds every tick, which
    /// Redis counts as the consumer touching the group. A consumer holding
    /// entries is gone once it has not touched the group for `gone_after`;
    /// it is alive once it touched it well after this subscription started
    /// (a consumer that crashed touches it at most once more, in the step
    /// it was in). So this waits only while another consumer holds entries:
    /// about three ticks for a live one, at most `gone_after` for one that
    /// crashed.
    async fn take_over_gone(&mut self, state: &mut State) -> std::result::Result<(), Stop> {
        let started = Instant::now();
        // How long after this subscription started a consumer that had
        // crashed may still touch the group (its last step).
        let last_step = self.tick * 2 + Duration::from_millis(200);
        let mut gone: Vec<String> = vec![HANDED_BACK.to_owned()];
        loop {
            let consumers = self.consumers().await?;
            let elapsed = started.elapsed();
            let mut undecided = false;
            for c in consumers {
                if c.name == self.shared.consumer || gone.contains(&c.name) {
                    continue;
                }
                if c.idle >= self.gone_after {
                    gone.push(c.name);
                } else if c.pending > 0 && elapsed.saturating_sub(c.idle) <= last_step {
                    // Last touched before or just after this subscription
                    // started: alive, or just crashed.
                    undecided = true;
                }
            }
            if !undecided || elapsed >= self.gone_after + last_step {
                break;
            }
            tokio::time::sleep(self.tick).await;
        }
        let mut ids = Vec::new();
        for name in &gone {
            ids.extend(self.pending_of(name).await?);
        }
        // Stream order: ids are `<ms>-<seq>`.
        ids.sort_by_key(|id| parse_id(id));
        ids.dedup();
        self.taking_over(
            ids.len(),
            "taking over entries of gone consumers and handed-back ones",
        );
        state.nacked.extend(ids);
        for name in gone.iter().filter(|n| n.as_str() != HANDED_BACK) {
            // Its entries are claimed before they are delivered; removing
            // the consumer now would drop the ones not claimed yet.
            if self.pending_of(name).await?.is_empty() {
                let mut cmd = redis::cmd("XGROUP");
                cmd.arg("DELCONSUMER")
                    .arg(&self.shared.key)
                    .arg(&self.shared.group)
                    .arg(name);
                let _: Value = self.query(&cmd, "XGROUP DELCONSUMER").await?;
            }
        }
        Ok(())
    }

    /// The consumers of the group.
    async fn consumers(&mut self) -> Result<Vec<ConsumerInfo>> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("CONSUMERS")
            .arg(&self.shared.key)
            .arg(&self.shared.group);
        let reply: Value = self.query(&cmd, "XINFO CONSUMERS").await?;
        Ok(array(reply)
            .into_iter()
            .filter_map(|consumer| {
                let Info {
                    name,
                    pending,
                    other: idle,
                } = info(consumer, "idle");
                Some(ConsumerInfo {
                    name: name?,
                    pending,
                    idle: Duration::from_millis(idle.map_or(0, integer)),
                })
            })
            .collect())
    }

    /// Up to [`TAKEOVER_BATCH`] ids pending for consumer `name`, oldest
    /// first.
    async fn pending_of(&mut self, name: &str) -> Result<Vec<String>> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&self.shared.key)
            .arg(&self.shared.group)
            .arg("-")
            .arg("+")
            .arg(TAKEOVER_BATCH)
            .arg(name);
        let reply: Value = self.query(&cmd, "XPENDING").await?;
        Ok(array(reply)
            .into_iter()
            .filter_map(|entry| array(entry).into_iter().next().and_then(text))
            .collect())
    }

    /// Of `asked`, the ids that `XCLAIM` did not return because the entry
    /// is no longer in the stream (trimmed); ids of entries that still
    /// exist were settled by another consumer meanwhile and are left out.
    async fn trimmed_among(
        &mut self,
        asked: &[String],
        claimed: &[Entry],
    ) -> std::result::Result<Vec<String>, Stop> {
        let mut trimmed = Vec::new();
        for id in asked {
            if claimed.iter().any(|(got, _)| got == id) {
                continue;
            }
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(&self.shared.key).arg(id).arg(id);
            let reply: Value = self.query(&cmd, "XRANGE").await?;
            if array(reply).is_empty() {
                trimmed.push(id.clone());
            }
        }
        Ok(trimmed)
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

    /// Resets the idle time of the entries this subscription holds, which
    /// also shows the consumer alive to the group's other consumers (Redis
    /// counts a consumer's idle time from its last read or claim that
    /// found something).
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
            let message = crate::wire::decode(&self.shared.topic, fields);
            self.send(id, message, redelivered).await?;
        }
        Ok(())
    }

    /// Hands the subscription an undecodable delivery for each entry that
    /// was trimmed from the stream before it was acknowledged: its content
    /// is lost, and the consumer keeps it as a dead letter with the reason.
    async fn deliver_trimmed(&mut self, ids: Vec<String>) -> std::result::Result<(), Stop> {
        for id in ids {
            warn!(
                key = self.shared.key,
                group = self.shared.group,
                id,
                "an entry was trimmed from the stream before it was acknowledged; its content is lost"
            );
            let mut headers = Headers::new();
            headers.insert("redis-entry-id".to_owned(), id.clone());
            let message = Err(Undecodable {
                reason: format!(
                    "entry {id} of `{}` was trimmed from the stream (max_len) before group `{}` acknowledged it; its content is lost",
                    self.shared.key, self.shared.group
                ),
                topic: self.shared.topic.clone(),
                headers,
                body: Vec::new(),
            });
            self.send(id, message, true).await?;
        }
        Ok(())
    }

    async fn send(
        &mut self,
        id: String,
        message: std::result::Result<txmsg_core::Envelope, Undecodable>,
        redelivered: bool,
    ) -> std::result::Result<(), Stop> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Stop::Closed)?;
        self.shared.held().insert(id.clone());
        let acker = RedisAcker {
            shared: Arc::clone(&self.shared),
            id,
            permit: Some(permit),
            settled: false,
        };
        let delivery = Delivery::new(message, redelivered, Box::new(acker));
        if self.tx.send(delivery).await.is_err() {
            return Err(Stop::Closed);
        }
        Ok(())
    }
}

/// Settles one entry: `XACK`, or a hand-back on nack and when dropped
/// unsettled.
struct RedisAcker {
    shared: Arc<Shared>,
    id: String,
    permit: Option<OwnedSemaphorePermit>,
    settled: bool,
}

impl RedisAcker {
    /// No longer held by the subscription.
    fn release(&self) {
        self.shared.held().remove(&self.id);
    }
}

impl fmt::Debug for RedisAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAcker")
            .field("key", &self.shared.key)
            .field("group", &self.shared.group)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Hands entry `id` back and tells the subscription's task, if it still
/// runs, to deliver it again before anything newer; only then frees the
/// delivery's permit, so that the task cannot read a newer entry first.
async fn hand_back(
    shared: Arc<Shared>,
    id: String,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<()> {
    let result = shared.hand_back(&id).await;
    // A closed channel means the subscription is gone; the entry waits,
    // idle, for the group's next consumer.
    let _ = shared.nacks.send(id);
    drop(permit);
    result
}

impl Acker for RedisAcker {
    /// `XACK`: the entry leaves the group's pending entries.
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            self.settled = true;
            self.release();
            let shared = Arc::clone(&self.shared);
            let mut conn = shared.conn.clone();
            let acked: redis::RedisResult<Value> = redis::cmd("XACK")
                .arg(&shared.key)
                .arg(&shared.group)
                .arg(&self.id)
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

    /// Hands the entry back: the subscription's task claims it back and
    /// delivers it again before anything newer; if the subscription is
    /// gone, the group's next consumer takes it first.
    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            self.settled = true;
            self.release();
            let shared = Arc::clone(&self.shared);
            let id = std::mem::take(&mut self.id);
            let permit = self.permit.take();
            drop(self);
            hand_back(shared, id, permit).await
        })
    }
}

impl Drop for RedisAcker {
    fn drop(&mut self) {
        self.release();
        if self.settled {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Taken over by another consumer after the claim time.
            return;
        };
        let shared = Arc::clone(&self.shared);
        let id = std::mem::take(&mut self.id);
        let permit = self.permit.take();
        runtime.spawn(async move {
            if let Err(e) = hand_back(shared, id, permit).await {
                debug!(error = %e, "handing back a dropped delivery failed");
            }
        });
    }
}
