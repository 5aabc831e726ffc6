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

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sqlx::{AssertSqlSafe, PgPool};
use tokio_util::sync::CancellationToken;
use txmsg_core::{Broker, DeadKeyPolicy, Envelope, Error, Ident, Result, SqlStore};
use uuid::Uuid;

use crate::PgStore;
use crate::capture;

/// How often the relay tells the server the position it confirmed.
const STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// How often the relay updates its lag (handle and gauges).
const LAG_INTERVAL: Duration = Duration::from_secs(1);

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
    application_name: String,
    dead_key_policy: DeadKeyPolicy,
    key_retention: Option<Duration>,
    purge_interval: Duration,
    purge_batch: u32,
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
            application_name: "txmsg-log-relay".to_owned(),
            dead_key_policy: DeadKeyPolicy::Park,
            key_retention: Some(Duration::from_secs(7 * 24 * 3600)),
            purge_interval: Duration::from_secs(60),
            purge_batch: 1_000,
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

    /// The name the relay's replication connection gives itself
    /// (`application_name`, shown by `pg_stat_replication` and
    /// `pg_stat_activity`): naming each relay process tells which one holds
    /// the slot. Default `txmsg-log-relay`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `application_name` if `name` is empty, longer
    /// than 63 bytes (PostgreSQL would cut it) or holds anything but
    /// printable ASCII.
    pub fn with_application_name(mut self, name: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Config {
            field: "application_name",
            reason: format!("{name:?}: {reason}"),
        };
        if name.is_empty() {
            return Err(bad("empty"));
        }
        if name.len() > 63 {
            return Err(bad("longer than 63 bytes"));
        }
        if !name.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(bad("only printable ASCII is allowed"));
        }
        name.clone_into(&mut self.application_name);
        Ok(self)
    }

    /// What a dead message does to the later messages of its key, as the
    /// table relay's setting of the same name. Default
    /// [`DeadKeyPolicy::Park`]: the key's later messages are written to the
    /// outbox table as pending rows behind the dead one, where a
    /// [`Relay`](txmsg_core::Relay) on the store publishes them, in order,
    /// once an operator replays (or purges) the dead letter; the key's
    /// messages go through the slot again once the table holds none of
    /// them. [`DeadKeyPolicy::Skip`]: they are published as they come.
    #[must_use]
    pub fn with_dead_key_policy(mut self, policy: DeadKeyPolicy) -> Self {
        self.dead_key_policy = policy;
        self
    }

    /// What a dead message does to the later messages of its key.
    pub fn dead_key_policy(&self) -> DeadKeyPolicy {
        self.dead_key_policy
    }

    /// How long an idempotency key of log capture (`<outbox>_keys`) is
    /// kept: a key repeated after that is no longer refused, as a table
    /// store's key is not once its sent row is purged (`sent_retention`).
    /// Every relay purges older keys every
    /// [`purge_interval`](Self::with_purge_interval); `None` keeps them all.
    /// Default 7 days.
    #[must_use]
    pub fn with_key_retention(mut self, retention: Option<Duration>) -> Self {
        self.key_retention = retention;
        self
    }

    /// How often the relay purges keys past their retention (at least
    /// 10 ms). Default 60 s.
    #[must_use]
    pub fn with_purge_interval(mut self, interval: Duration) -> Self {
        self.purge_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// Most keys one purge statement deletes (at least 1); a purge deletes
    /// batch after batch until none is left. Default 1 000.
    #[must_use]
    pub fn with_purge_batch(mut self, batch: u32) -> Self {
        self.purge_batch = batch.max(1);
        self
    }

    /// How long an idempotency key of log capture is kept.
    pub fn key_retention(&self) -> Option<Duration> {
        self.key_retention
    }

    /// How often the relay purges keys.
    pub fn purge_interval(&self) -> Duration {
        self.purge_interval
    }

    /// Most keys one purge statement deletes.
    pub fn purge_batch(&self) -> u32 {
        self.purge_batch
    }

    /// The replication connection's `application_name`.
    pub fn application_name(&self) -> &str {
        &self.application_name
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
    shared: Arc<Shared>,
}

/// What a relay's task shares with its handle.
#[derive(Debug, Default)]
struct Shared {
    confirmed: AtomicU64,
    reading: std::sync::atomic::AtomicBool,
    lag: std::sync::Mutex<LogLag>,
    failure: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn lag(&self) -> std::sync::MutexGuard<'_, LogLag> {
        self.lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failure(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How far a running [`LogRelay`] is behind, as it last saw it (updated
/// every second while it reads the slot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogLag {
    /// WAL bytes between the end of the server's WAL (as last heard) and
    /// the position confirmed to the slot: what PostgreSQL keeps for the
    /// slot, at least.
    pub bytes: u64,
    /// When the oldest message read and not yet confirmed was written
    /// (`None`: none waits).
    pub oldest_unconfirmed: Option<DateTime<Utc>>,
}

impl LogRelayHandle {
    /// The slot position last confirmed: every record before it was
    /// published and confirmed (or dead-lettered). 0 before the first.
    pub fn confirmed_lsn(&self) -> u64 {
        self.shared.confirmed.load(Ordering::SeqCst)
    }

    /// Whether the relay reads its slot now (connected and streaming);
    /// `false` while it connects, waits for another relay to let go of
    /// the slot, or after it stopped.
    pub fn is_reading(&self) -> bool {
        self.shared.reading.load(Ordering::SeqCst)
    }

    /// How far behind the relay is (zero while it waits for the slot).
    pub fn lag(&self) -> LogLag {
        *self.shared.lag()
    }

    /// Why the relay stopped by itself, if it did: its slot is gone or
    /// PostgreSQL invalidated it. Nothing is read after that (the relay
    /// never creates a slot again on its own, which would skip what the
    /// lost one held); see the guide on recovering.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure().clone()
    }

    /// Whether the relay's task ended: after [`failure`](Self::failure),
    /// or a panic.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
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
        // The key purge stops too.
        self.cancel.cancel();
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
    park_insert: String,
    parked_keys: String,
    shared: Arc<Shared>,
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
            park_insert: store.statements().own.commit_insert.log.park_insert.clone(),
            parked_keys: store.statements().own.commit_insert.log.parked_keys.clone(),
            config,
            shared: Arc::default(),
        };
        txmsg_core::metrics::describe();
        let cancel = CancellationToken::new();
        if let Some(retention) = ctx.config.key_retention {
            tokio::spawn(purge_keys_every(
                store.clone(),
                retention,
                ctx.config.purge_interval,
                ctx.config.purge_batch,
                cancel.clone(),
            ));
        }
        let shared = Arc::clone(&ctx.shared);
        let task = tokio::spawn(run(ctx, cancel.clone()));
        Ok(LogRelayHandle {
            cancel,
            task,
            shared,
        })
    }

    /// Deletes the log capture's idempotency keys written before `before`,
    /// at most `batch` per statement, until none is left; returns how
    /// many. A key deleted is no longer refused when repeated. Relays do
    /// this on their own ([`LogRelayConfig::with_key_retention`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the store is not in log capture;
    /// [`Error::Database`] if a delete fails (what was deleted before
    /// stays deleted).
    pub async fn purge_keys(store: &PgStore, before: DateTime<Utc>, batch: u32) -> Result<u64> {
        if store.capture().prefix().is_none() {
            return Err(Error::Config {
                field: "capture",
                reason: "the store writes messages to the outbox table, not to the log: it \
                         has no log capture keys"
                    .into(),
            });
        }
        let statement = &store.statements().own.commit_insert.log.keys_purge;
        let batch = i64::from(batch.max(1));
        let mut total = 0;
        loop {
            let n = sqlx::query(AssertSqlSafe(statement.clone()))
                .bind(before)
                .bind(batch)
                .execute(store.pool())
                .await?
                .rows_affected();
            total += n;
            if n < u64::try_from(batch).unwrap_or(u64::MAX) {
                return Ok(total);
            }
        }
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

/// A log relay's replication slot, as PostgreSQL reports it
/// ([`LogRelay::status`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SlotStatus {
    /// The slot's name.
    pub slot: String,
    /// Whether a relay reads it now.
    pub active: bool,
    /// WAL bytes between the server's current position and the position
    /// the slot confirmed (`None` once invalidated): what the server keeps
    /// for the slot, at least.
    pub lag_bytes: Option<u64>,
    /// PostgreSQL's `wal_status` of the slot: `reserved`, `extended`,
    /// `unreserved` (past `max_slot_wal_keep_size`, about to be lost) or
    /// `lost` (invalidated: the WAL it needs is gone).
    pub wal_status: Option<String>,
    /// Bytes of WAL that can still be written before the slot is past
    /// `max_slot_wal_keep_size` (`None` when that is unlimited).
    pub safe_wal_bytes: Option<i64>,
    /// When the oldest message not yet confirmed was written: read from
    /// the slot itself when no relay reads it, `None` when none waits or
    /// a relay reads it (then see [`reader_lag`](Self::reader_lag)).
    pub oldest_unconfirmed: Option<DateTime<Utc>>,
    /// How far behind its reader is in time, as PostgreSQL measures it
    /// (`replay_lag` of `pg_stat_replication`; `None` when caught up or
    /// not read).
    pub reader_lag: Option<Duration>,
}

impl SlotStatus {
    /// Whether PostgreSQL invalidated the slot (`wal_status` `lost`): its
    /// relay cannot read it again, and messages it held past the last
    /// confirmed position may never be published.
    pub fn invalidated(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// A row of `pg_replication_slots` as [`LogRelay::status`] reads it:
/// active, lag in bytes, `wal_status`, `safe_wal_size`, reader lag in
/// seconds.
type SlotRow = (bool, Option<i64>, Option<String>, Option<i64>, Option<f64>);

/// Changes a status read decodes at most to find the oldest unconfirmed
/// message (it stops at the end of the transaction it is in).
const PEEK_CHANGES: i32 = 64;

impl LogRelay {
    /// The state of `config`'s slot on `store`'s database: lag in bytes
    /// and in time, `wal_status`, whether a relay reads it; `None` if there
    /// is no such slot. When no relay reads it, the oldest unconfirmed
    /// message is read from the slot without consuming it
    /// (`pg_logical_slot_peek_binary_changes`, decoding from the slot's
    /// position until the first of the store's records).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the store is not in log capture;
    /// [`Error::Database`] if the queries fail.
    pub async fn status(store: &PgStore, config: &LogRelayConfig) -> Result<Option<SlotStatus>> {
        let Some(prefix) = store.capture().prefix() else {
            return Err(Error::Config {
                field: "capture",
                reason: "the store writes messages to the outbox table: its relay has no slot"
                    .into(),
            });
        };
        let pool = store.pool();
        let row: Option<SlotRow> = sqlx::query_as(
            "SELECT s.active, \
                        pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::int8, \
                        s.wal_status, s.safe_wal_size, \
                        extract(epoch FROM r.replay_lag)::float8 \
                   FROM pg_replication_slots s \
                   LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
                  WHERE s.slot_name = $1",
        )
        .bind(config.slot())
        .fetch_optional(pool)
        .await?;
        let Some((active, lag, wal_status, safe, reader_lag)) = row else {
            return Ok(None);
        };
        let lost = wal_status.as_deref() == Some("lost");
        let mut status = SlotStatus {
            slot: config.slot().to_owned(),
            active,
            // An invalidated slot keeps no WAL; its old position means nothing.
            lag_bytes: lag.filter(|_| !lost).map(|b| u64::try_from(b).unwrap_or(0)),
            wal_status,
            safe_wal_bytes: safe,
            oldest_unconfirmed: None,
            reader_lag: reader_lag
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64),
        };
        if !status.active && !status.invalidated() {
            let peeked: std::result::Result<Vec<Vec<u8>>, sqlx::Error> = sqlx::query_scalar(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, \
                 'proto_version', '1', 'publication_names', $3, 'messages', 'true')",
            )
            .bind(config.slot())
            .bind(PEEK_CHANGES)
            .bind(config.publication())
            .fetch_all(pool)
            .await;
            match peeked {
                Ok(rows) => {
                    status.oldest_unconfirmed = rows
                        .iter()
                        .filter_map(|data| logical_message(data))
                        .filter(|(p, _)| *p == prefix.as_bytes())
                        .find_map(|(_, content)| capture::decode(content).ok())
                        .map(|envelope| envelope.created_at);
                }
                // A relay took the slot in between: it knows the rest.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") => {
                    status.active = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(status))
    }
}

/// The prefix and content of a pgoutput logical decoding message (`M`),
/// `None` for any other message or a malformed one.
fn logical_message(data: &[u8]) -> Option<(&[u8], &[u8])> {
    // 'M', flags (1), LSN (8), prefix (NUL-terminated), length (4), content.
    let rest = data.strip_prefix(b"M")?.get(9..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let (prefix, rest) = (&rest[..nul], &rest[nul + 1..]);
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let content = rest.get(4..4 + usize::try_from(len).ok()?)?;
    Some((prefix, content))
}

/// Purges keys older than `retention` every `interval` until cancelled.
async fn purge_keys_every(
    store: PgStore,
    retention: Duration,
    interval: Duration,
    batch: u32,
    cancel: CancellationToken,
) {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let before = Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        match LogRelay::purge_keys(&store, before, batch).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(keys = n, "log relay: idempotency keys purged"),
            Err(e) => tracing::warn!(error = %e, "log relay: purging idempotency keys failed"),
        }
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
    .with_application_name(config.application_name()))
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
    let slot = ctx.config.slot().to_owned();
    metrics::gauge!(txmsg_core::metrics::LOG_SLOT_INVALIDATED, "slot" => slot.clone()).set(0.0);
    loop {
        match stream(&ctx, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                let text = e.to_string();
                if let Some(why) = slot_lost(&ctx, &text).await {
                    tracing::error!(
                        slot = %slot,
                        reason = %why,
                        "log relay: STOPPED, the replication slot is lost; messages it \
                         held may not be published: recover them before creating a new slot"
                    );
                    metrics::gauge!(txmsg_core::metrics::LOG_SLOT_INVALIDATED, "slot" => slot)
                        .set(1.0);
                    *ctx.shared.failure() = Some(why);
                    return;
                }
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

/// Why the slot can no longer be read, if that is what the stream error
/// `text` means: the slot is gone, or PostgreSQL invalidated it (its WAL
/// was removed past `max_slot_wal_keep_size`). Asks the server when the
/// error alone does not tell.
async fn slot_lost<B>(ctx: &Ctx<B>, text: &str) -> Option<String> {
    if let Some(why) = lost_by_error(ctx.config.slot(), text) {
        return Some(why);
    }
    let row: std::result::Result<Option<(Option<String>,)>, _> =
        sqlx::query_as("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1")
            .bind(ctx.config.slot())
            .fetch_optional(&ctx.pool)
            .await;
    match row {
        Ok(None) => Some(format!(
            "replication slot \"{}\" does not exist",
            ctx.config.slot()
        )),
        Ok(Some((Some(status),))) if status == "lost" => Some(format!(
            "replication slot \"{}\" was invalidated (wal_status lost): its WAL was removed",
            ctx.config.slot()
        )),
        _ => None,
    }
}

/// The stream errors that mean the slot is lost: PostgreSQL's messages for
/// a dropped slot and for an invalidated one.
fn lost_by_error(slot: &str, text: &str) -> Option<String> {
    let lost = text.contains("does not exist") && text.contains("replication slot")
        || text.contains("can no longer get changes from replication slot")
        || text.contains("has been invalidated");
    lost.then(|| format!("replication slot \"{slot}\": {text}"))
}

/// One entry of the stream, in order: a record, or the end of a
/// transaction (its position, confirmed once every record before it is).
#[derive(Debug)]
enum Entry {
    Record {
        done: bool,
        created_at: DateTime<Utc>,
    },
    Commit(Lsn),
}

/// How one record ended.
#[derive(Debug)]
enum Outcome {
    Sent(String),
    Parked,
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
    /// The furthest server position heard of.
    wal_end: u64,
    /// The last position queued to be confirmed.
    last_position: u64,
    /// Parked keys (their messages go to the outbox table), each with the
    /// number of the last park decision about it.
    parked: std::collections::HashMap<(String, String), u64>,
    /// Park decisions so far.
    parks: u64,
}

impl Queue {
    /// Queues `lsn` to be confirmed once every entry before it is, unless
    /// a later one is already queued.
    fn position(&mut self, lsn: Lsn) {
        if lsn.as_u64() > self.last_position {
            self.last_position = lsn.as_u64();
            self.push(Entry::Commit(lsn));
        }
    }

    /// Notes that the server's WAL reaches at least `lsn`.
    fn seen(&mut self, lsn: Lsn) {
        self.wal_end = self.wal_end.max(lsn.as_u64());
    }

    fn push(&mut self, entry: Entry) -> u64 {
        self.entries.push_back(entry);
        self.base + self.entries.len() as u64 - 1
    }

    /// Marks record `seq` done.
    fn done(&mut self, seq: u64) {
        if let Some(Entry::Record { done, .. }) = seq
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
                Some(Entry::Record { done: true, .. }) => {}
                Some(Entry::Commit(lsn)) => last = Some(*lsn),
                _ => return last,
            }
            self.entries.pop_front();
            self.base += 1;
        }
    }

    /// Parks `key`: its later messages go to the outbox table.
    fn park(&mut self, key: (String, String)) {
        self.parks += 1;
        self.parked.insert(key, self.parks);
    }

    /// Sets the parked keys from the outbox table's `in_table` (keys with a
    /// pending or dead row), read when `parks` park decisions had been
    /// made: keys parked since stay parked, and so do busy ones.
    fn refresh_parked(&mut self, in_table: Vec<(String, String)>, parks: u64) {
        let in_table: HashSet<(String, String)> = in_table.into_iter().collect();
        let busy = &self.busy;
        self.parked
            .retain(|k, made| *made > parks || busy.contains(k) || in_table.contains(k));
        for k in in_table {
            self.parked.entry(k).or_insert(parks);
        }
    }

    /// When the oldest record not yet confirmed was written.
    fn oldest_unconfirmed(&self) -> Option<DateTime<Utc>> {
        self.entries.iter().find_map(|e| match e {
            Entry::Record {
                done: false,
                created_at,
            } => Some(*created_at),
            _ => None,
        })
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
            Ok(()) => return Outcome::Sent(envelope.topic),
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
    ctx.shared.reading.store(true, Ordering::SeqCst);
    let outcome = read_stream(ctx, cancel, &mut client).await;
    ctx.shared.reading.store(false, Ordering::SeqCst);
    outcome
}

/// [`stream`]'s loop over a connected `client`.
async fn read_stream<B: Broker>(
    ctx: &Ctx<B>,
    cancel: &CancellationToken,
    client: &mut ReplicationClient,
) -> Result<()> {
    let mut queue = Queue::default();
    let mut in_flight = FuturesUnordered::new();
    let limit = ctx.config.max_in_flight.saturating_mul(4);
    let mut ended: Option<Error> = None;
    let mut tick = tokio::time::interval(LAG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let parking = ctx.config.dead_key_policy == DeadKeyPolicy::Park;
    if parking {
        // Keys left parked by an earlier run, or with rows in the table.
        let in_table = parked_keys(ctx).await?;
        queue.refresh_parked(in_table, 0);
    }
    loop {
        // Launch what waits, in order, past the keys that are busy, until
        // as many are in flight as allowed (the rest keeps its order).
        let mut blocked: HashSet<(String, String)> = HashSet::new();
        let mut kept = VecDeque::new();
        while in_flight.len() < ctx.config.max_in_flight
            && let Some((seq, envelope)) = queue.waiting.pop_front()
        {
            let key = order_key(&envelope);
            let free = key
                .as_ref()
                .is_none_or(|k| !queue.busy.contains(k) && !blocked.contains(k));
            if free && in_flight.len() < ctx.config.max_in_flight {
                let parked = key.as_ref().is_some_and(|k| queue.parked.contains_key(k));
                if let Some(k) = &key {
                    queue.busy.insert(k.clone());
                    if parked {
                        queue.park(k.clone());
                    }
                }
                let work = if parked {
                    futures_util::future::Either::Left(park(
                        ctx.pool.clone(),
                        ctx.park_insert.clone(),
                        envelope,
                        ctx.config.clone(),
                    ))
                } else {
                    futures_util::future::Either::Right(deliver(
                        ctx.broker.clone(),
                        envelope,
                        ctx.config.clone(),
                    ))
                };
                in_flight.push(async move { (seq, key, work.await) });
            } else {
                if let Some(k) = key {
                    blocked.insert(k);
                }
                kept.push_back((seq, envelope));
            }
        }
        if !kept.is_empty() {
            kept.append(&mut queue.waiting);
            queue.waiting = kept;
        }
        if let Some(lsn) = queue.settle() {
            client.update_applied_lsn(lsn);
            ctx.shared.confirmed.store(lsn.as_u64(), Ordering::SeqCst);
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
            _ = tick.tick() => {
                report_lag(ctx, &queue);
                if parking && !queue.parked.is_empty() {
                    let parks = queue.parks;
                    match parked_keys(ctx).await {
                        Ok(in_table) => queue.refresh_parked(in_table, parks),
                        Err(e) => tracing::warn!(error = %e, "log relay: cannot read the parked keys; they stay parked"),
                    }
                }
            }
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

/// Records how far behind the relay is, in its handle and its gauges.
fn report_lag<B>(ctx: &Ctx<B>, queue: &Queue) {
    let confirmed = ctx.shared.confirmed.load(Ordering::SeqCst);
    let lag = LogLag {
        bytes: queue.wal_end.saturating_sub(confirmed),
        oldest_unconfirmed: queue.oldest_unconfirmed(),
    };
    *ctx.shared.lag() = lag;
    let slot = ctx.config.slot().to_owned();
    // A gauge is an f64: exact up to 2^53 bytes.
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(txmsg_core::metrics::LOG_SLOT_LAG_BYTES, "slot" => slot.clone())
        .set(lag.bytes as f64);
    let age = lag.oldest_unconfirmed.map_or(0.0, |t| {
        (Utc::now() - t).to_std().unwrap_or_default().as_secs_f64()
    });
    metrics::gauge!(txmsg_core::metrics::LOG_OLDEST_UNCONFIRMED_AGE_SECONDS, "slot" => slot)
        .set(age);
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
                queue.seen(lsn);
                let seq = queue.push(Entry::Record {
                    done: false,
                    created_at: envelope.created_at,
                });
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
            queue.seen(end_lsn);
            queue.position(end_lsn);
        }
        // The server sent everything up to here: once what came before is
        // confirmed, so is this position. Without it a slot whose records
        // are rare would keep the WAL of every other transaction (the
        // server sends nothing for those).
        ReplicationEvent::KeepAlive { wal_end, .. } => {
            queue.seen(wal_end);
            queue.position(wal_end);
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
    match outcome {
        Outcome::Dead(envelope, reason) => {
            tracing::warn!(message_id = %envelope.id, %reason, "log relay: message dead-lettered");
            if ctx.config.dead_key_policy == DeadKeyPolicy::Park
                && let Some(k) = &key
            {
                queue.park(k.clone());
            }
            metrics::counter!(txmsg_core::metrics::DEAD_LETTERS_TOTAL, "topic" => envelope.topic.clone(), "side" => "outbox")
                .increment(1);
            dead_letter(ctx, &envelope, &reason).await;
        }
        Outcome::Sent(topic) => {
            metrics::counter!(txmsg_core::metrics::PUBLISHED_TOTAL, "topic" => topic).increment(1);
        }
        Outcome::Parked => {}
    }
    if let Some(k) = key {
        queue.busy.remove(&k);
    }
    queue.done(seq);
}

/// The keys with a pending or dead row in the outbox table.
async fn parked_keys<B>(ctx: &Ctx<B>) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(AssertSqlSafe(ctx.parked_keys.clone()))
        .fetch_all(&ctx.pool)
        .await?)
}

/// Writes `envelope` to the outbox table as a pending row (its key is
/// parked behind a dead message), trying until it is written.
async fn park(
    pool: PgPool,
    statement: String,
    envelope: Envelope,
    config: LogRelayConfig,
) -> Outcome {
    let mut tries = 0u32;
    loop {
        let written = sqlx::query(AssertSqlSafe(statement.clone()))
            .bind(envelope.id)
            .bind(&envelope.topic)
            .bind(envelope.key.as_deref())
            .bind(&envelope.idempotency_key)
            .bind(&envelope.payload)
            .bind(txmsg_sql::headers_to_json(&envelope.headers))
            .bind(envelope.created_at)
            .bind(envelope.expires_at)
            .execute(&pool)
            .await;
        match written {
            Ok(_) => {
                tracing::debug!(message_id = %envelope.id, "log relay: key parked; message written to the outbox table");
                return Outcome::Parked;
            }
            Err(e) => {
                tries = tries.saturating_add(1);
                tracing::error!(message_id = %envelope.id, error = %e, "log relay: a parked message cannot be written; trying again");
                tokio::time::sleep(config.retry_after(tries)).await;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(prefix: &[u8], content: &[u8]) -> Vec<u8> {
        let mut data = vec![b'M', 1];
        data.extend_from_slice(&42u64.to_be_bytes());
        data.extend_from_slice(prefix);
        data.push(0);
        data.extend_from_slice(&u32::try_from(content.len()).unwrap_or(0).to_be_bytes());
        data.extend_from_slice(content);
        data
    }

    #[test]
    fn a_logical_message_gives_its_prefix_and_content() {
        let data = message(b"p_orders", b"{\"v\":1}\nbody");
        assert_eq!(
            logical_message(&data),
            Some((&b"p_orders"[..], &b"{\"v\":1}\nbody"[..]))
        );
    }

    #[test]
    fn other_or_cut_messages_give_nothing() {
        assert_eq!(logical_message(b"B\0\0\0"), None);
        assert_eq!(logical_message(b""), None);
        let data = message(b"p", b"content");
        for cut in 0..data.len() {
            assert_eq!(logical_message(&data[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn a_dropped_or_invalidated_slot_is_lost_and_a_busy_one_is_not() {
        let dropped = "db error: ERROR: replication slot \"s\" does not exist";
        let invalidated = "ERROR: can no longer get changes from replication slot \"s\"";
        let busy = "ERROR: replication slot \"s\" is active for PID 42";
        assert!(lost_by_error("s", dropped).is_some_and(|w| w.contains("does not exist")));
        assert!(lost_by_error("s", invalidated).is_some());
        assert_eq!(lost_by_error("s", busy), None);
        assert_eq!(lost_by_error("s", "connection reset by peer"), None);
    }

    #[test]
    fn a_position_is_confirmed_only_past_every_record_before_it() {
        let mut queue = Queue::default();
        let t = Utc::now();
        let first = queue.push(Entry::Record {
            done: false,
            created_at: t,
        });
        queue.position(Lsn::from(100));
        queue.position(Lsn::from(90)); // behind: ignored
        let second = queue.push(Entry::Record {
            done: false,
            created_at: t + chrono::Duration::seconds(1),
        });
        queue.position(Lsn::from(200));
        assert_eq!(queue.oldest_unconfirmed(), Some(t));
        queue.done(second);
        assert_eq!(queue.settle(), None, "the first record is not confirmed");
        assert_eq!(queue.oldest_unconfirmed(), Some(t));
        queue.done(first);
        assert_eq!(queue.settle(), Some(Lsn::from(200)));
        assert_eq!(queue.oldest_unconfirmed(), None);
        assert!(queue.entries.is_empty());
    }
}
