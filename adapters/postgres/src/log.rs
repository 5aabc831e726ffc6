//! The relay of log capture: reads the records producers wrote with
//! `pg_logical_emit_message` from a logical replication slot (pgoutput,
//! `messages 'true'`), publishes them in commit order, and moves the slot
//! only past what the broker confirmed.
//!
//! The replication client is `pgwire-replication`: it speaks the
//! replication protocol itself (no libpq), hands logical decoding messages
//! over as events, and lets the caller say which position is applied, which
//! is what confirming only after the broker needs. It depends on little
//! beyond tokio.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sqlx::{AssertSqlSafe, PgPool};
use tokio_util::sync::CancellationToken;
use txmsg_core::{Broker, Envelope, Error, Ident, Result, SqlStore};
use uuid::Uuid;

use crate::PgStore;
use crate::capture;

/// How often the relay tells the server the position it confirmed.
const STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// Settings of a [`LogRelay`].
///
/// # Examples
///
/// ```
/// use txmsg_postgres::LogRelayConfig;
///
/// # fn demo() -> txmsg_core::Result<()> {
/// let config = LogRelayConfig::default()
///     .with_slot("orders_relay")?
///     .with_max_in_flight(256);
/// assert_eq!(config.slot(), "orders_relay");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LogRelayConfig {
    slot: Ident,
    publication: Ident,
    max_in_flight: usize,
    max_attempts: u32,
    retry_min: Duration,
    retry_max: Duration,
    retry_stream: Duration,
}

impl Default for LogRelayConfig {
    fn default() -> Self {
        LogRelayConfig {
            slot: Ident::new("txmsg_log").unwrap_or_else(|_| unreachable!("a valid name")),
            publication: Ident::new("txmsg_log").unwrap_or_else(|_| unreachable!("a valid name")),
            max_in_flight: 512,
            max_attempts: 10,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            retry_stream: Duration::from_millis(500),
        }
    }
}

impl LogRelayConfig {
    /// The replication slot the relay reads (created if missing); one
    /// relay reads it at a time, the others wait for it. Default
    /// `txmsg_log`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `slot` if `name` is not an identifier.
    pub fn with_slot(mut self, name: &str) -> Result<Self> {
        self.slot = Ident::for_field("slot", name)?;
        Ok(self)
    }

    /// The publication the slot is read with (created, empty, if missing:
    /// the relay reads logical decoding messages, no table). Default
    /// `txmsg_log`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `publication` if `name` is not an identifier.
    pub fn with_publication(mut self, name: &str) -> Result<Self> {
        self.publication = Ident::for_field("publication", name)?;
        Ok(self)
    }

    /// Messages awaiting the broker's confirm at once (at least 1).
    /// Default 512.
    #[must_use]
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Publishes of one message before it is dead-lettered (at least 1).
    /// Default 10.
    #[must_use]
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The replication slot.
    pub fn slot(&self) -> &str {
        self.slot.as_str()
    }

    /// The publication.
    pub fn publication(&self) -> &str {
        self.publication.as_str()
    }

    /// Messages awaiting a confirm at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Publishes of one message before it is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The pause before a failed publish is tried again, doubling from
    /// 100 ms up to 10 s.
    fn retry_after(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
        self.retry_min.saturating_mul(factor).min(self.retry_max)
    }
}

/// Publishes the messages of a store in log capture
/// ([`Capture::Log`](crate::Capture::Log)), in commit order.
///
/// It reads the replication slot, publishes each record of the store's
/// prefix (at most [`max_in_flight`](LogRelayConfig::max_in_flight) awaiting
/// a confirm, one at a time per (topic, key), so that a retried message is
/// never overtaken by a later one of its key), and confirms a transaction's
/// position to the slot only once every record up to it is confirmed by the
/// broker. After a crash the slot gives back what was not confirmed: a
/// message is published again only if it was in flight. A message the
/// broker refuses for good, or after `max_attempts` publishes, is written to
/// the outbox table as a dead letter with the reason, and the stream goes on.
///
/// PostgreSQL lets one reader use a slot at a time: a second relay on the
/// same slot waits, trying every half second, and takes over when the first
/// one's connection ends.
#[derive(Debug)]
pub struct LogRelay;

/// A running [`LogRelay`].
#[derive(Debug)]
pub struct LogRelayHandle {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    confirmed: Arc<AtomicU64>,
}

impl LogRelayHandle {
    /// The slot position last confirmed: every record before it was
    /// published and confirmed (or dead-lettered). 0 before the first.
    pub fn confirmed_lsn(&self) -> u64 {
        self.confirmed.load(Ordering::SeqCst)
    }

    /// Stops reading, waits for what is in flight (the slot is confirmed up
    /// to it), and closes the replication connection.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }

    /// Stops the relay at once, as a crash would: nothing more is
    /// confirmed, and the slot gives back everything after the last
    /// confirmed position to the next reader.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// What a relay needs at run time.
#[derive(Debug)]
struct Ctx<B> {
    broker: B,
    pool: PgPool,
    prefix: String,
    replication: ReplicationConfig,
    config: LogRelayConfig,
    dead_insert: String,
    confirmed: Arc<AtomicU64>,
}

impl LogRelay {
    /// Starts a relay of `store`'s log records to `broker`, reading the
    /// slot over a replication connection to `url` (the store's database),
    /// after creating the publication and the slot if they are missing.
    ///
    /// Create the slot before producers write (start the relay, or call
    /// [`create_slot`](LogRelay::create_slot) at deployment): records
    /// written before the slot exists are not in it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the store is not in log capture or `url` is not
    /// a PostgreSQL URL; [`Error::Database`] if the slot cannot be created
    /// (PostgreSQL needs `wal_level = logical`, and a role with the
    /// `REPLICATION` attribute).
    pub async fn start<B: Broker>(
        store: &PgStore,
        url: &str,
        broker: B,
        config: LogRelayConfig,
    ) -> Result<LogRelayHandle> {
        let Some(prefix) = store.capture().prefix() else {
            return Err(Error::Config {
                field: "capture",
                reason: "the store writes messages to the outbox table: a LogRelay reads \
                         the log capture (`Capture::log`); use a Relay"
                    .into(),
            });
        };
        let replication = replication_config(url, &config)?;
        Self::create_slot(store, &config).await?;
        let ctx = Ctx {
            broker,
            pool: store.pool().clone(),
            prefix: prefix.to_owned(),
            replication,
            dead_insert: store.statements().own.commit_insert.log.dead_insert.clone(),
            config,
            confirmed: Arc::new(AtomicU64::new(0)),
        };
        let cancel = CancellationToken::new();
        let confirmed = Arc::clone(&ctx.confirmed);
        let task = tokio::spawn(run(ctx, cancel.clone()));
        Ok(LogRelayHandle {
            cancel,
            task,
            confirmed,
        })
    }

    /// Creates `config`'s publication (empty) and replication slot
    /// (pgoutput) on `store`'s database unless they exist.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if PostgreSQL refuses: logical decoding needs
    /// `wal_level = logical`, a slot needs a free `max_replication_slots`.
    pub async fn create_slot(store: &PgStore, config: &LogRelayConfig) -> Result<()> {
        let pool = store.pool();
        let has_publication: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
                .bind(config.publication())
                .fetch_one(pool)
                .await?;
        if !has_publication {
            // A checked identifier, quoted.
            let create = format!("CREATE PUBLICATION \"{}\"", config.publication());
            ignore_existing(sqlx::query(AssertSqlSafe(create)).execute(pool).await)?;
        }
        let has_slot: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        )
        .bind(config.slot())
        .fetch_one(pool)
        .await?;
        if !has_slot {
            ignore_existing(
                sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
                    .bind(config.slot())
                    .execute(pool)
                    .await,
            )?;
        }
        Ok(())
    }
}

/// `outcome`, with "already exists" (a concurrent creator) as success.
fn ignore_existing<T>(outcome: std::result::Result<T, sqlx::Error>) -> Result<()> {
    match outcome {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The replication connection's settings from the store's `url`.
fn replication_config(url: &str, config: &LogRelayConfig) -> Result<ReplicationConfig> {
    let bad = |reason: String| Error::Config {
        field: "url",
        reason,
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(bad(format!(
            "scheme `{}` is not postgres or postgresql",
            parsed.scheme()
        )));
    }
    let host = parsed.host_str().unwrap_or("localhost").to_owned();
    let user = match parsed.username() {
        "" => "postgres".to_owned(),
        user => decode(user),
    };
    let password = parsed.password().map(decode).unwrap_or_default();
    let database = match parsed.path().trim_start_matches('/') {
        "" => user.clone(),
        db => decode(db),
    };
    Ok(ReplicationConfig::new(
        host,
        user,
        password,
        database,
        config.slot(),
        config.publication(),
    )
    .with_port(parsed.port().unwrap_or(5432))
    // The confirmed position reaches the server within this: after a crash,
    // what was confirmed longer ago than that is not published again.
    .with_status_interval(STATUS_INTERVAL)
    .with_application_name("txmsg-log-relay"))
}

/// `text` with its percent escapes decoded.
fn decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map_or_else(|| text.to_owned(), |(_, v)| v.into_owned())
}

/// Reads the slot until cancelled, starting the stream again after an
/// error (a lost connection, the slot held by another relay).
async fn run<B: Broker>(ctx: Ctx<B>, cancel: CancellationToken) {
    loop {
        match stream(&ctx, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                let text = e.to_string();
                if text.contains("is active for PID") {
                    tracing::debug!(
                        slot = ctx.config.slot(),
                        "log relay: the slot is in use; waiting"
                    );
                } else {
                    tracing::warn!(
                        slot = ctx.config.slot(),
                        error = %text,
                        "log relay: the replication stream ended; starting it again"
                    );
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(ctx.config.retry_stream) => {}
        }
    }
}

/// One entry of the stream, in order: a record, or the end of a
/// transaction (its position, confirmed once every record before it is).
#[derive(Debug)]
enum Entry {
    Record { done: bool },
    Commit(Lsn),
}

/// How one record ended.
#[derive(Debug)]
enum Outcome {
    Sent,
    Dead(Envelope, String),
}

/// The stream's state: entries in order from `base`, records not yet
/// launched, and the keys with a record in flight.
#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<Entry>,
    base: u64,
    waiting: VecDeque<(u64, Envelope)>,
    busy: HashSet<(String, String)>,
}

impl Queue {
    fn push(&mut self, entry: Entry) -> u64 {
        self.entries.push_back(entry);
        self.base + self.entries.len() as u64 - 1
    }

    /// Marks record `seq` done.
    fn done(&mut self, seq: u64) {
        if let Some(Entry::Record { done }) = seq
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.entries.get_mut(i))
        {
            *done = true;
        }
    }

    /// Drops the finished entries at the front; the last commit position
    /// among them.
    fn settle(&mut self) -> Option<Lsn> {
        let mut last = None;
        loop {
            match self.entries.front() {
                Some(Entry::Record { done: true }) => {}
                Some(Entry::Commit(lsn)) => last = Some(*lsn),
                _ => return last,
            }
            self.entries.pop_front();
            self.base += 1;
        }
    }
}

/// The key that orders `envelope` against others, if any.
fn order_key(envelope: &Envelope) -> Option<(String, String)> {
    envelope
        .key
        .as_ref()
        .map(|k| (envelope.topic.clone(), k.clone()))
}

/// Publishes `envelope` until the broker confirms it, it is refused for
/// good, or it was tried `max_attempts` times.
async fn deliver<B: Broker>(broker: B, mut envelope: Envelope, config: LogRelayConfig) -> Outcome {
    loop {
        match broker.publish(&envelope).await {
            Ok(()) => return Outcome::Sent,
            Err(e) => {
                envelope.attempts = envelope.attempts.saturating_add(1);
                if !e.is_retryable() || envelope.attempts >= config.max_attempts {
                    return Outcome::Dead(envelope, e.to_string());
                }
                tracing::debug!(message_id = %envelope.id, error = %e, "log relay: publish failed; retrying");
                tokio::time::sleep(config.retry_after(envelope.attempts)).await;
            }
        }
    }
}

/// A connection error of the replication client, as a database error.
fn replication_error(e: impl std::fmt::Display) -> Error {
    Error::Database(sqlx::Error::Protocol(format!("replication: {e}")))
}

/// Reads, publishes and confirms until cancelled (`Ok`) or the stream
/// fails (`Err`, after what was in flight settled).
async fn stream<B: Broker>(ctx: &Ctx<B>, cancel: &CancellationToken) -> Result<()> {
    let mut client = ReplicationClient::connect(ctx.replication.clone())
        .await
        .map_err(replication_error)?;
    tracing::info!(slot = ctx.config.slot(), "log relay: reading the slot");
    let mut queue = Queue::default();
    let mut in_flight = FuturesUnordered::new();
    let limit = ctx.config.max_in_flight.saturating_mul(4);
    let mut ended: Option<Error> = None;
    loop {
        // Launch what waits, in order, past the keys that are busy.
        let mut blocked: HashSet<(String, String)> = HashSet::new();
        let mut kept = VecDeque::with_capacity(queue.waiting.len());
        while let Some((seq, envelope)) = queue.waiting.pop_front() {
            let key = order_key(&envelope);
            let free = key
                .as_ref()
                .is_none_or(|k| !queue.busy.contains(k) && !blocked.contains(k));
            if free && in_flight.len() < ctx.config.max_in_flight {
                if let Some(k) = &key {
                    queue.busy.insert(k.clone());
                }
                let work = deliver(ctx.broker.clone(), envelope, ctx.config.clone());
                in_flight.push(async move { (seq, key, work.await) });
            } else {
                if let Some(k) = key {
                    blocked.insert(k);
                }
                kept.push_back((seq, envelope));
            }
        }
        queue.waiting = kept;
        if let Some(lsn) = queue.settle() {
            client.update_applied_lsn(lsn);
            ctx.confirmed.store(lsn.as_u64(), Ordering::SeqCst);
        }
        if ended.is_some() || cancel.is_cancelled() {
            if in_flight.is_empty() {
                // The last confirmed position goes out with the next status.
                tokio::time::sleep(STATUS_INTERVAL * 3).await;
                client.stop();
                let _ = client.shutdown().await;
                return ended.map_or(Ok(()), Err);
            }
            let Some((seq, key, outcome)) = in_flight.next().await else {
                continue;
            };
            finish(ctx, &mut queue, seq, key, outcome).await;
            continue;
        }
        let room = queue.entries.len() < limit;
        tokio::select! {
            () = cancel.cancelled() => {}
            Some((seq, key, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                finish(ctx, &mut queue, seq, key, outcome).await;
            }
            event = client.recv(), if room => match event {
                Ok(Some(event)) => read(ctx, &mut queue, event).await,
                Ok(None) => ended = Some(replication_error("the server ended the stream")),
                Err(e) => ended = Some(replication_error(e)),
            },
        }
    }
}

/// Takes in one replication event.
async fn read<B: Broker>(ctx: &Ctx<B>, queue: &mut Queue, event: ReplicationEvent) {
    match event {
        ReplicationEvent::Message {
            prefix,
            content,
            lsn,
            ..
        } if prefix == ctx.prefix => match capture::decode(&content) {
            Ok(envelope) => {
                let seq = queue.push(Entry::Record { done: false });
                queue.waiting.push_back((seq, envelope));
            }
            Err(reason) => {
                tracing::error!(%lsn, %reason, "log relay: a record cannot be read; dead-lettered");
                let envelope = Envelope::new(
                    Uuid::now_v7(),
                    prefix,
                    format!("log record at {lsn}"),
                    content.to_vec(),
                    chrono::Utc::now(),
                );
                dead_letter(ctx, &envelope, &reason).await;
            }
        },
        ReplicationEvent::Commit { end_lsn, .. } => {
            queue.push(Entry::Commit(end_lsn));
        }
        _ => {}
    }
}

/// Settles record `seq` of `key` as `outcome` says.
async fn finish<B: Broker>(
    ctx: &Ctx<B>,
    queue: &mut Queue,
    seq: u64,
    key: Option<(String, String)>,
    outcome: Outcome,
) {
    if let Outcome::Dead(envelope, reason) = outcome {
        tracing::warn!(message_id = %envelope.id, %reason, "log relay: message dead-lettered");
        dead_letter(ctx, &envelope, &reason).await;
    }
    if let Some(k) = key {
        queue.busy.remove(&k);
    }
    queue.done(seq);
}

/// Writes `envelope` to the outbox table as a dead letter with `reason`,
/// trying until it is written: the slot moves past it only then.
async fn dead_letter<B: Broker>(ctx: &Ctx<B>, envelope: &Envelope, reason: &str) {
    let mut tries = 0u32;
    loop {
        let written = sqlx::query(AssertSqlSafe(ctx.dead_insert.clone()))
            .bind(envelope.id)
            .bind(&envelope.topic)
            .bind(envelope.key.as_deref())
            .bind(&envelope.idempotency_key)
            .bind(&envelope.payload)
            .bind(txmsg_sql::headers_to_json(&envelope.headers))
            .bind(i32::try_from(envelope.attempts).unwrap_or(i32::MAX))
            .bind(envelope.created_at)
            .bind(envelope.expires_at)
            .bind(reason)
            .bind(chrono::Utc::now())
            .execute(&ctx.pool)
            .await;
        match written {
            Ok(_) => return,
            Err(e) => {
                tries = tries.saturating_add(1);
                tracing::error!(message_id = %envelope.id, error = %e, "log relay: the dead letter cannot be written; trying again");
                tokio::time::sleep(ctx.config.retry_after(tries)).await;
            }
        }
    }
}
