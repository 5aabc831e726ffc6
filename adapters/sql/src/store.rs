//! The store every SQL database shares: [`TableStore`] over a [`Backend`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{Pool, SqlStr, Transaction};
use txmsg_core::consumer::{ConsumerDeadLetter, InboxStore, InboxWriter};
use txmsg_core::half::{ClaimedHalf, Decision, ResolveOutcome};
use txmsg_core::{
    BoxFuture, ClaimRequest, DeadFilter, DeadLetter, Envelope, Error, Failure, HalfStore,
    HalfWriter, Ident, OutboxStats, OutboxWriter, Result, SqlStore, Store, Tables, TopicStats,
    Waker,
};
use uuid::Uuid;

use crate::dialect::{Arg, Conn, Dialect, SqlRow};
use crate::half::{SettleSql, settle};
use crate::row::{attempts_to_int, consumer_dead_letter, dead_letter, envelope};
use crate::stmt::Stmt;
use crate::writer::{OutboxInsert, SqlHalfWriter, SqlInbox, SqlOutboxWriter};

/// Pool size when [`StoreConfig::max_connections`] is not set.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// How a SQL store connects: where its tables are and how many connections
/// its pool may open. The same for every SQL store.
///
/// # Examples
///
/// ```
/// use txmsg_core::Tables;
/// use txmsg_sql::StoreConfig;
///
/// # fn demo() -> txmsg_core::Result<()> {
/// let config = StoreConfig::default()
///     .with_tables(Tables::default().with_outbox("billing_outbox")?)
///     .with_max_connections(20);
/// assert_eq!(config.max_connections(), 20);
/// # Ok(()) }
/// ```
///
/// Deserialized, e.g. from a service's config file, as
/// `{ "tables": { … }, "max_connections": 20 }` (each may be left out; the
/// tables as [`Tables`] deserializes them, checked):
///
/// ```
/// use txmsg_sql::StoreConfig;
///
/// let config: StoreConfig = serde_json::from_str(r#"{ "tables": { "schema": "billing" }, "max_connections": 20 }"#)?;
/// assert_eq!(config.max_connections(), 20);
/// assert_eq!(config.tables().schema().map(|s| s.as_str()), Some("billing"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StoreConfig {
    tables: Tables,
    max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            tables: Tables::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl From<Tables> for StoreConfig {
    fn from(tables: Tables) -> Self {
        StoreConfig::default().with_tables(tables)
    }
}

impl StoreConfig {
    /// Where the tables are (default: [`Tables::default`]).
    #[must_use]
    pub fn with_tables(mut self, tables: Tables) -> Self {
        self.tables = tables;
        self
    }

    /// The most connections the pool opens (default 10; an in-memory SQLite
    /// database always has exactly one).
    #[must_use]
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Where the tables are.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The most connections the pool opens.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }
}

/// The statements a [`TableStore`] runs, rendered once for its tables.
///
/// Each is documented with the order of its arguments (its logical order,
/// see [`Stmt`]); `Ids` is an [`Arg::Ids`] list.
#[derive(Debug)]
pub struct Statements<O> {
    /// Marks pending rows sent: (Ids, sent at).
    pub mark_sent: Stmt,
    /// Puts a leased row back for a retry: (id, owner, next attempt at,
    /// error).
    pub mark_failed: Stmt,
    /// Marks a leased row dead: (id, owner, reason, at).
    pub mark_dead: Stmt,
    /// Gives leased rows back: (Ids, owner).
    pub release: Stmt,
    /// Dead rows, oldest first: (topic or `NULL`, key or `NULL`, limit);
    /// envelope columns, `last_error`, `dead_at`.
    pub dead_letters: Stmt,
    /// Makes a dead row pending again: (id, at).
    pub replay: Stmt,
    /// Deletes sent rows: (sent before, limit); see [`Backend::purge`].
    pub purge_sent: Stmt,
    /// Counts by state: (); columns `pending`, `oldest`, `dead`, `sent`,
    /// `prepared`.
    pub stats: Stmt,
    /// Counts by topic: (sent since); columns `topic`, `pending`,
    /// `prepared`, `oldest`, `dead`, `sent_since`.
    pub topic_stats: Stmt,
    /// Pending rows by topic, from the pending rows only: (); columns
    /// `topic`, `pending`, `oldest`.
    pub pending_by_topic: Stmt,
    /// One dead row: (id); columns as `dead_letters`.
    pub dead_letter: Stmt,
    /// Deletes dead rows: (topic or `NULL`, key or `NULL`, dead before,
    /// limit); see [`Backend::purge`].
    pub purge_dead: Stmt,
    /// Inserts outbox rows; see [`OutboxInsert`].
    pub insert: OutboxInsert,
    /// Inserts a prepared row; see [`SqlHalfWriter::new`].
    pub prepare: SqlStr,
    /// See [`SqlHalfWriter::with_holder`].
    pub prepare_holder: Option<SqlStr>,
    /// Settles a prepared row.
    pub settle: SettleSql,
    /// Leases prepared rows due for a check: (owner, lease until, now,
    /// limit); envelope columns and `checks`. See
    /// [`Backend::claim_prepared`].
    pub claim_prepared: Stmt,
    /// Records a check-back: (id, owner, next check at, 1 if it counts).
    pub record_check: Stmt,
    /// Marks a leased prepared row dead, keeping it a half message: (id,
    /// owner, reason, at).
    pub mark_prepared_dead: Stmt,
    /// Makes a dead half message prepared again: (id, at).
    pub resume: Stmt,
    /// The inbox's statements.
    pub inbox: InboxStatements,
    /// What only this database runs.
    pub own: O,
}

/// The statements of the inbox and the consumer dead letters.
#[derive(Debug)]
pub struct InboxStatements {
    /// See [`SqlInbox::new`].
    pub record: SqlStr,
    /// See [`SqlInbox::new`].
    pub remove_dead: SqlStr,
    /// Inserts a consumer dead letter: (id, group, topic, key, idempotency
    /// key, headers, payload, envelope id, created at, reason, attempts,
    /// dead at).
    pub add_dead: Stmt,
    /// A group's dead letters, oldest first: (group, topic or `NULL`, key
    /// or `NULL`, limit); the columns [`consumer_dead_letter`] reads.
    pub dead_letters: Stmt,
    /// One dead letter of a group: (group, id).
    pub dead_letter: Stmt,
    /// Deletes a group's keys: (processed before, limit, group); see
    /// [`Backend::purge`].
    pub purge: Stmt,
    /// Counts a group's keys: (group, processed before); column `n`.
    pub count: Stmt,
    /// The groups with dead letters and how many, by name: (); columns
    /// `consumer_group`, `n`.
    pub dead_groups: Stmt,
}

/// The statements only one database needs, which render all of a store's
/// statements for its tables.
pub trait OwnStatements: fmt::Debug + Send + Sync + Sized + 'static {
    /// The statements for `tables`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the database cannot keep tables so named (a
    /// schema where there are none, no name left for the consumer
    /// dead-letter table).
    fn statements(tables: &Tables) -> Result<Statements<Self>>;
}

/// A database a [`TableStore`] runs on: its [`Dialect`] plus what truly
/// differs between databases (statement text, connect options, migrations,
/// the claim strategy).
///
/// Methods taking the store have a default where one statement does the
/// work, run in a transaction begun with [`BEGIN`](Backend::BEGIN).
pub trait Backend: Dialect + Sized {
    /// The store's name in `Debug` output and errors.
    const STORE: &'static str;

    /// The URL schemes the store connects to (`postgres`, `sqlite`, ...).
    const SCHEMES: &'static [&'static str];

    /// The statement that begins a store transaction, when not the
    /// database's default (SQLite: `BEGIN IMMEDIATE`).
    const BEGIN: Option<&'static str> = None;

    /// Statements and state only this database needs; they render the
    /// whole set of statements.
    type Own: OwnStatements;

    /// How producers' messages are captured, where a database offers more
    /// than the outbox table (PostgreSQL's log capture); `()` elsewhere.
    /// Set with [`TableStore::with_capture`].
    type Capture: Clone + std::fmt::Debug + Default + Send + Sync + 'static;

    /// A pool for `url` (its scheme already checked), with `config`'s
    /// connection limit (already checked to be above zero). A backend over
    /// the network opens a first connection on its own
    /// ([`connect_once`](crate::connect_once)), so that a refused or
    /// unreachable server is reported at once with its address.
    fn connect(
        url: &str,
        config: &StoreConfig,
    ) -> impl Future<Output = Result<Pool<Self::Db>>> + Send;

    /// The producers' outbox writer for `capture`, which wakes the relays
    /// of other processes on `channel` (when set) after leaving a row
    /// unleased. By
    /// default the shared [`SqlOutboxWriter`] over [`Statements::insert`].
    fn outbox_writer(
        sql: &Arc<Statements<Self::Own>>,
        channel: Option<String>,
        capture: &Self::Capture,
    ) -> Arc<dyn OutboxWriter<Self::Db>> {
        let _ = capture;
        Arc::new(SqlOutboxWriter::<Self>::new(sql.insert.clone(), channel))
    }

    /// The handlers' inbox writer.
    fn inbox(sql: &Arc<Statements<Self::Own>>) -> Arc<dyn InboxWriter<Self::Db>> {
        Arc::new(SqlInbox::<Self>::new(
            sql.inbox.record.clone(),
            sql.inbox.remove_dead.clone(),
        ))
    }

    /// Creates or upgrades the tables; see [`Store::migrate`].
    fn migrate(store: &TableStore<Self>) -> impl Future<Output = Result<()>> + Send;

    /// Every migration as one SQL script; see
    /// [`TableStore::migration_script`] and [`crate::migration_script`].
    fn migration_script(store: &TableStore<Self>) -> String;

    /// Leases deliverable rows; see [`Store::claim`]. Called with a limit
    /// above zero.
    fn claim(
        store: &TableStore<Self>,
        req: &ClaimRequest,
    ) -> impl Future<Output = Result<Vec<Envelope>>> + Send;

    /// Leases prepared rows due for a check; see [`HalfStore::claim_prepared`].
    /// Called with a limit above zero. By default,
    /// [`Statements::claim_prepared`] leases and returns them in one
    /// statement.
    fn claim_prepared(
        store: &TableStore<Self>,
        req: &ClaimRequest,
    ) -> impl Future<Output = Result<Vec<ClaimedHalf>>> + Send {
        async move {
            let sql = store.statements();
            let mut tx = store.begin_store_tx().await?;
            let rows = sql
                .claim_prepared
                .fetch_all::<Self>(
                    &mut tx,
                    &[
                        Arg::Id(req.lease.owner),
                        Arg::Time(req.lease.until),
                        Arg::Time(req.now),
                        Arg::Int(i64::from(req.limit)),
                    ],
                )
                .await?;
            // Decoded before committing: a row that cannot be read is not
            // leased.
            let claimed = rows
                .iter()
                .map(claimed_half::<Self>)
                .collect::<Result<Vec<_>>>()?;
            tx.commit().await?;
            Ok(claimed)
        }
    }

    /// Deletes what `what` names, with `args` the arguments of its
    /// statement ([`Purge::statement`]), whose limit is above zero; see
    /// [`Store::purge_sent`], [`Store::purge_dead`] and
    /// [`InboxStore::purge_inbox`]. By default, the statement does it.
    fn purge(
        store: &TableStore<Self>,
        what: Purge<'_>,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64>> + Send {
        async move { store.run(what.statement(store.statements()), args).await }
    }

    /// Wakes `waker` whenever another process writes a row, for as long as
    /// it runs; see [`Store::watch`]. `None` (the default): relays poll.
    fn watch(
        pool: &Pool<Self::Db>,
        channel: &Ident,
        waker: Waker,
    ) -> Option<BoxFuture<'static, ()>> {
        let _ = (pool, channel, waker);
        None
    }
}

/// What a purge deletes; see [`Backend::purge`].
///
/// Every backend handles every kind (no wildcard): a kind added here is a
/// compile error in each backend that purges its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purge<'a> {
    /// Sent rows, with [`Statements::purge_sent`].
    Sent,
    /// Dead rows, with [`Statements::purge_dead`].
    Dead,
    /// The inbox keys of this consumer group, with [`InboxStatements::purge`].
    Inbox(&'a str),
}

impl Purge<'_> {
    /// The statement among `sql` that purges it (or, for a backend that
    /// deletes in two steps, picks what to delete).
    pub fn statement<O>(self, sql: &Statements<O>) -> &Stmt {
        match self {
            Purge::Sent => &sql.purge_sent,
            Purge::Dead => &sql.purge_dead,
            Purge::Inbox(_) => &sql.inbox.purge,
        }
    }
}

/// A [`Backend`] that can wake relays in other processes (PostgreSQL's
/// `LISTEN`/`NOTIFY`); see [`TableStore::with_notify`].
pub trait Notifying: Backend {}

fn claimed_half<B: Backend>(row: &SqlRow<B>) -> Result<ClaimedHalf> {
    let checks = B::int(row, "checks")?.unwrap_or(0);
    Ok(ClaimedHalf::new(
        envelope::<B>(row)?,
        u32::try_from(checks).unwrap_or(u32::MAX),
    ))
}

/// A store whose outbox, inbox and dead letters are tables of the database
/// of backend `B`: the one implementation of [`Store`], [`HalfStore`],
/// [`InboxStore`] and [`SqlStore`] every SQL store shares.
///
/// Every statement is rendered once, when the store is made, from the
/// validated names in [`Tables`]; values are always bound. Every timestamp
/// written comes from the caller (the relay's clock, the producer's clock),
/// never from the database's own, so tests can drive time. Cheap to clone:
/// clones share the pool. Its `Debug` output shows the tables and the pool
/// size, never the connection string.
pub struct TableStore<B: Backend> {
    pool: Pool<B::Db>,
    tables: Tables,
    sql: Arc<Statements<B::Own>>,
    writer: Arc<dyn OutboxWriter<B::Db>>,
    half: Arc<SqlHalfWriter<B>>,
    inbox: Arc<dyn InboxWriter<B::Db>>,
    notify: Option<Ident>,
    capture: B::Capture,
}

impl<B: Backend> Clone for TableStore<B> {
    fn clone(&self) -> Self {
        TableStore {
            pool: self.pool.clone(),
            tables: self.tables.clone(),
            sql: Arc::clone(&self.sql),
            writer: Arc::clone(&self.writer),
            half: Arc::clone(&self.half),
            inbox: Arc::clone(&self.inbox),
            notify: self.notify.clone(),
            capture: self.capture.clone(),
        }
    }
}

impl<B: Backend> fmt::Debug for TableStore<B> {
    // The pool's options hold the password: show only what is safe.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(B::STORE)
            .field("tables", &self.tables)
            .field("notify", &self.notify)
            .field(
                "max_connections",
                &self.pool.options().get_max_connections(),
            )
            .finish_non_exhaustive()
    }
}

impl<B: Backend> TableStore<B> {
    /// A store on `pool`, with its tables where `tables` says.
    ///
    /// Nothing is executed; call [`migrate`](Store::migrate) to create the
    /// tables.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the database cannot keep tables so named: the
    /// consumer dead-letter table beside a renamed inbox table is named
    /// `<inbox>_dead`, so the inbox table's name must leave room for the
    /// suffix within 63 bytes, and the result must not name another table
    /// or index of the store; SQLite has no schemas.
    pub fn new(pool: Pool<B::Db>, tables: Tables) -> Result<Self> {
        let sql = Arc::new(B::Own::statements(&tables)?);
        let writer = Self::writer(&sql, None, &B::Capture::default());
        let inbox = B::inbox(&sql);
        let half = Arc::new(Self::half(&sql, None));
        Ok(TableStore {
            pool,
            tables,
            sql,
            writer,
            half,
            inbox,
            notify: None,
            capture: B::Capture::default(),
        })
    }

    fn writer(
        sql: &Arc<Statements<B::Own>>,
        notify: Option<&Ident>,
        capture: &B::Capture,
    ) -> Arc<dyn OutboxWriter<B::Db>> {
        B::outbox_writer(sql, notify.map(|c| c.as_str().to_owned()), capture)
    }

    fn half(sql: &Statements<B::Own>, notify: Option<&Ident>) -> SqlHalfWriter<B> {
        let half = SqlHalfWriter::new(
            sql.prepare.clone(),
            sql.settle.clone(),
            notify.map(|c| c.as_str().to_owned()),
        );
        match &sql.prepare_holder {
            Some(holder) => half.with_holder(holder.clone()),
            None => half,
        }
    }

    /// Connects to `url` with the default [`StoreConfig`].
    ///
    /// # Errors
    ///
    /// As [`connect_with`](TableStore::connect_with).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves no pool behind.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, StoreConfig::default()).await
    }

    /// Connects to `url` as `config` says (a [`Tables`] converts into one).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `max_connections` is zero, the URL is not one of
    /// this database, or the tables cannot be so named (see
    /// [`new`](TableStore::new)), checked before connecting;
    /// [`Error::Connect`] if the server refused the connection, could not be
    /// reached or turned the login down (with the address and the driver's
    /// error); [`Error::Database`] if the pool could not be set up.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves no pool behind.
    pub async fn connect_with(url: &str, config: impl Into<StoreConfig>) -> Result<Self> {
        let config = config.into();
        if config.max_connections == 0 {
            return Err(Error::config(
                "max_connections",
                "must be greater than zero",
            ));
        }
        // The URL and the names first: they are found wrong without a
        // database.
        crate::connect::check_scheme(url, B::SCHEMES, B::STORE)?;
        B::Own::statements(&config.tables)?;
        let pool = B::connect(url, &config).await?;
        Self::new(pool, config.tables)
    }

    /// Where the tables are.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Every migration as one SQL script, for a migration tool of the
    /// team's own (sqlx migrate, refinery, Flyway) instead of
    /// [`Store::migrate`]: the DDL for this store's tables, each migration
    /// followed by the row that records it, so that `migrate` afterwards
    /// finds every version applied and changes nothing. Needs no
    /// connection. The `txmsg migrate --print-sql` command prints it.
    ///
    pub fn migration_script(&self) -> String {
        B::migration_script(self)
    }

    /// The statements, for the backend's own methods.
    pub fn statements(&self) -> &Statements<B::Own> {
        &self.sql
    }

    /// A transaction begun with [`Backend::BEGIN`].
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if no connection could be had or the transaction
    /// not begun.
    pub async fn begin_store_tx(&self) -> Result<Transaction<'static, B::Db>> {
        Ok(match B::BEGIN {
            Some(begin) => self.pool.begin_with(begin).await?,
            None => self.pool.begin().await?,
        })
    }

    async fn run(&self, stmt: &Stmt, args: &[Arg<'_>]) -> Result<u64> {
        let mut conn = self.pool.acquire().await?;
        stmt.execute::<B>(&mut conn, args).await
    }

    async fn fetch_all(&self, stmt: &Stmt, args: &[Arg<'_>]) -> Result<Vec<SqlRow<B>>> {
        let mut conn = self.pool.acquire().await?;
        stmt.fetch_all::<B>(&mut conn, args).await
    }

    async fn fetch_optional(&self, stmt: &Stmt, args: &[Arg<'_>]) -> Result<Option<SqlRow<B>>> {
        let mut conn = self.pool.acquire().await?;
        stmt.fetch_optional::<B>(&mut conn, args).await
    }

    /// Runs `stmt` with the list `ids` as argument `Arg::Ids` and `rest`
    /// after it, in chunks the statement takes, all in one transaction when
    /// there is more than one.
    async fn run_ids(&self, stmt: &Stmt, ids: &[Uuid], then: Arg<'_>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let per = stmt.ids_per_statement();
        if ids.len() <= per {
            self.run(stmt, &[Arg::Ids(ids), then]).await?;
            return Ok(());
        }
        let mut tx = self.begin_store_tx().await?;
        for chunk in ids.chunks(per) {
            stmt.execute::<B>(&mut tx, &[Arg::Ids(chunk), then]).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl<B: Notifying> TableStore<B> {
    /// Wakes relays in other processes through `LISTEN`/`NOTIFY` on
    /// `channel`.
    ///
    /// A producer transaction that writes a row no relay of its own process
    /// will publish (no relay attached, or the key is held elsewhere) sends a
    /// `NOTIFY` with it; relays on this store listen and claim at once instead
    /// of at their next poll. Rows taken by the producer's own fast path send
    /// nothing. Off by default: a `NOTIFY` takes a database-wide lock at
    /// commit, which serialises committing transactions; measure before
    /// turning it on for a busy store.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `channel` is not a valid identifier.
    pub fn with_notify(mut self, channel: &str) -> Result<Self> {
        let channel = Ident::for_field("notify_channel", channel)?;
        self.writer = Self::writer(&self.sql, Some(&channel), &self.capture);
        self.half = Arc::new(Self::half(&self.sql, Some(&channel)));
        self.notify = Some(channel);
        Ok(self)
    }

    /// Captures producers' messages as `capture` says (see the backend's
    /// [`Backend::Capture`]); the outbox table by default.
    #[must_use]
    pub fn with_capture(mut self, capture: B::Capture) -> Self {
        self.writer = Self::writer(&self.sql, self.notify.as_ref(), &capture);
        self.capture = capture;
        self
    }

    /// How producers' messages are captured.
    pub fn capture(&self) -> &B::Capture {
        &self.capture
    }
}

fn stats_of<B: Backend>(row: &SqlRow<B>) -> Result<OutboxStats> {
    let mut stats = OutboxStats::default();
    stats.pending = B::count(row, "pending")?;
    stats.oldest_pending = B::time(row, "oldest")?;
    stats.dead = B::count(row, "dead")?;
    stats.sent = B::count(row, "sent")?;
    stats.prepared = B::count(row, "prepared")?;
    Ok(stats)
}

/// A topic's pending rows, from the columns `topic`, `pending` and `oldest`
/// (all that [`Statements::pending_by_topic`] reads).
fn topic_pending_of<B: Backend>(row: &SqlRow<B>) -> Result<TopicStats> {
    let mut stats = TopicStats::new(B::text(row, "topic")?.unwrap_or_default());
    stats.pending = B::count(row, "pending")?;
    stats.oldest_pending = B::time(row, "oldest")?;
    Ok(stats)
}

/// A topic's counts, from the columns [`Statements::topic_stats`] reads.
fn topic_stats_of<B: Backend>(row: &SqlRow<B>) -> Result<TopicStats> {
    let mut stats = topic_pending_of::<B>(row)?;
    stats.prepared = B::count(row, "prepared")?;
    stats.dead = B::count(row, "dead")?;
    stats.sent_since = B::count(row, "sent_since")?;
    Ok(stats)
}

impl<B: Backend> Store for TableStore<B> {
    async fn migrate(&self) -> Result<()> {
        B::migrate(self).await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Envelope>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let mut claimed = B::claim(self, req).await?;
        claimed.sort_by_key(|e| e.id);
        // A lease that ends before `now` can leave a row claimable by two
        // steps of one claim.
        claimed.dedup_by_key(|e| e.id);
        Ok(claimed)
    }

    async fn mark_sent(&self, ids: &[Uuid], at: DateTime<Utc>) -> Result<()> {
        self.run_ids(&self.sql.mark_sent, ids, Arg::Time(at)).await
    }

    async fn mark_failed(&self, failure: &Failure) -> Result<()> {
        let args = [
            Arg::Id(failure.id),
            Arg::Id(failure.owner),
            Arg::Time(failure.next_attempt_at),
            Arg::Text(&failure.error),
        ];
        self.run(&self.sql.mark_failed, &args).await?;
        Ok(())
    }

    async fn mark_dead(
        &self,
        id: Uuid,
        owner: Uuid,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let args = [
            Arg::Id(id),
            Arg::Id(owner),
            Arg::Text(reason),
            Arg::Time(at),
        ];
        self.run(&self.sql.mark_dead, &args).await?;
        Ok(())
    }

    async fn release(&self, ids: &[Uuid], owner: Uuid) -> Result<()> {
        self.run_ids(&self.sql.release, ids, Arg::Id(owner)).await
    }

    async fn dead_letters(&self, filter: &DeadFilter) -> Result<Vec<DeadLetter>> {
        let args = [
            Arg::OptText(filter.topic.as_deref()),
            Arg::OptText(filter.key.as_deref()),
            Arg::Int(i64::from(filter.limit_or_default())),
        ];
        let rows = self.fetch_all(&self.sql.dead_letters, &args).await?;
        rows.iter().map(dead_letter::<B>).collect()
    }

    async fn replay(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool> {
        let args = [Arg::Id(id), Arg::Time(at)];
        Ok(self.run(&self.sql.replay, &args).await? > 0)
    }

    async fn purge_sent(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let args = [Arg::Time(before), Arg::Int(i64::from(limit))];
        B::purge(self, Purge::Sent, &args).await
    }

    async fn stats(&self) -> Result<OutboxStats> {
        match self.fetch_optional(&self.sql.stats, &[]).await? {
            Some(row) => stats_of::<B>(&row),
            None => Ok(OutboxStats::default()),
        }
    }

    async fn topic_stats(&self, since: DateTime<Utc>) -> Result<Vec<TopicStats>> {
        let rows = self
            .fetch_all(&self.sql.topic_stats, &[Arg::Time(since)])
            .await?;
        rows.iter().map(topic_stats_of::<B>).collect()
    }

    async fn pending_by_topic(&self) -> Result<Vec<TopicStats>> {
        let rows = self.fetch_all(&self.sql.pending_by_topic, &[]).await?;
        rows.iter().map(topic_pending_of::<B>).collect()
    }

    async fn dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>> {
        let row = self
            .fetch_optional(&self.sql.dead_letter, &[Arg::Id(id)])
            .await?;
        row.as_ref().map(dead_letter::<B>).transpose()
    }

    async fn purge_dead(&self, filter: &DeadFilter, before: DateTime<Utc>) -> Result<u64> {
        let limit = filter.limit_or_default();
        if limit == 0 {
            return Ok(0);
        }
        let args = [
            Arg::OptText(filter.topic.as_deref()),
            Arg::OptText(filter.key.as_deref()),
            Arg::Time(before),
            Arg::Int(i64::from(limit)),
        ];
        B::purge(self, Purge::Dead, &args).await
    }

    fn watch(&self, waker: Waker) -> Option<BoxFuture<'static, ()>> {
        let channel = self.notify.as_ref()?;
        B::watch(&self.pool, channel, waker)
    }
}

impl<B: Backend> HalfStore for TableStore<B> {
    fn half_writer(&self) -> Arc<dyn HalfWriter<B::Db>> {
        Arc::clone(&self.half) as Arc<dyn HalfWriter<B::Db>>
    }

    async fn claim_prepared(&self, req: &ClaimRequest) -> Result<Vec<ClaimedHalf>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let mut claimed = B::claim_prepared(self, req).await?;
        claimed.sort_by_key(|p| p.envelope.id);
        Ok(claimed)
    }

    async fn record_check(
        &self,
        id: Uuid,
        owner: Uuid,
        next_check_at: DateTime<Utc>,
        counted: bool,
    ) -> Result<()> {
        let args = [
            Arg::Id(id),
            Arg::Id(owner),
            Arg::Time(next_check_at),
            Arg::Int(i64::from(counted)),
        ];
        self.run(&self.sql.record_check, &args).await?;
        Ok(())
    }

    async fn mark_prepared_dead(
        &self,
        id: Uuid,
        owner: Uuid,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let args = [
            Arg::Id(id),
            Arg::Id(owner),
            Arg::Text(reason),
            Arg::Time(at),
        ];
        Ok(self.run(&self.sql.mark_prepared_dead, &args).await? > 0)
    }

    async fn resolve_prepared(
        &self,
        id: Uuid,
        resolve: Decision,
        now: DateTime<Utc>,
    ) -> Result<ResolveOutcome> {
        let mut conn = self.pool.acquire().await?;
        let notify = self.notify.as_ref().map(Ident::as_str);
        settle::<B>(&mut conn, &self.sql.settle, id, resolve, now, notify).await
    }

    async fn resume(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool> {
        let args = [Arg::Id(id), Arg::Time(at)];
        Ok(self.run(&self.sql.resume, &args).await? > 0)
    }
}

impl<B: Backend> SqlStore for TableStore<B> {
    type Database = B::Db;

    fn pool(&self) -> &Pool<B::Db> {
        &self.pool
    }

    fn writer(&self) -> Arc<dyn OutboxWriter<B::Db>> {
        Arc::clone(&self.writer)
    }

    fn begin_statement(&self) -> Option<&'static str> {
        B::BEGIN
    }
}

impl<B: Backend> InboxStore for TableStore<B> {
    fn inbox(&self) -> Arc<dyn InboxWriter<B::Db>> {
        Arc::clone(&self.inbox)
    }

    async fn add_consumer_dead(&self, dead: &ConsumerDeadLetter) -> Result<()> {
        let env = &dead.envelope;
        let args = [
            Arg::Id(dead.id),
            Arg::Text(&dead.group),
            Arg::Text(&env.topic),
            Arg::OptText(env.key.as_deref()),
            Arg::Text(&env.idempotency_key),
            Arg::Headers(&env.headers),
            Arg::Bytes(&env.payload),
            Arg::Id(env.id),
            Arg::Time(env.created_at),
            Arg::Text(&dead.reason),
            Arg::Int(i64::from(attempts_to_int(dead.attempts))),
            Arg::Time(dead.dead_at),
        ];
        self.run(&self.sql.inbox.add_dead, &args).await?;
        Ok(())
    }

    async fn consumer_dead_letters(
        &self,
        group: &str,
        filter: &DeadFilter,
    ) -> Result<Vec<ConsumerDeadLetter>> {
        let args = [
            Arg::Text(group),
            Arg::OptText(filter.topic.as_deref()),
            Arg::OptText(filter.key.as_deref()),
            Arg::Int(i64::from(filter.limit_or_default())),
        ];
        let rows = self.fetch_all(&self.sql.inbox.dead_letters, &args).await?;
        rows.iter().map(consumer_dead_letter::<B>).collect()
    }

    async fn consumer_dead_letter(
        &self,
        group: &str,
        id: Uuid,
    ) -> Result<Option<ConsumerDeadLetter>> {
        let args = [Arg::Text(group), Arg::Id(id)];
        let row = self
            .fetch_optional(&self.sql.inbox.dead_letter, &args)
            .await?;
        row.as_ref().map(consumer_dead_letter::<B>).transpose()
    }

    async fn purge_inbox(&self, group: &str, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let args = [
            Arg::Time(before),
            Arg::Int(i64::from(limit)),
            Arg::Text(group),
        ];
        B::purge(self, Purge::Inbox(group), &args).await
    }

    async fn consumer_dead_groups(&self) -> Result<Vec<(String, u64)>> {
        let rows = self.fetch_all(&self.sql.inbox.dead_groups, &[]).await?;
        rows.iter()
            .map(|row| {
                Ok((
                    B::text(row, "consumer_group")?.unwrap_or_default(),
                    B::count(row, "n")?,
                ))
            })
            .collect()
    }

    async fn count_inbox(&self, group: &str, before: DateTime<Utc>) -> Result<u64> {
        let args = [Arg::Text(group), Arg::Time(before)];
        match self.fetch_optional(&self.sql.inbox.count, &args).await? {
            Some(row) => B::count(&row, "n"),
            None => Ok(0),
        }
    }
}

/// Reads the rows a claim leased, in the claim's transaction `conn`.
///
/// A database keeps what it is given: a row written by hand or by another
/// program may hold headers that are not a JSON object, or an id of the
/// wrong length. Such a row is dead-lettered with the reason in this
/// transaction ([`Statements::mark_dead`], as the claim's owner), so it
/// neither fails every claim nor comes back when its lease runs out. The
/// rows of its key claimed after it are given back
/// ([`Statements::release`]), as they would be behind any dead row.
///
/// # Errors
///
/// [`Error::Database`] if a statement failed or a row's id cannot be read
/// even as bytes.
pub async fn read_claimed<B: Backend>(
    conn: &mut Conn<B>,
    sql: &Statements<B::Own>,
    rows: &[SqlRow<B>],
    req: &ClaimRequest,
) -> Result<Vec<Envelope>> {
    let mut claimed = Vec::with_capacity(rows.len());
    // (topic and key where they can be read, id bytes) of each row
    // dead-lettered.
    type TopicKey = Option<(String, Option<String>)>;
    let mut broken: Vec<(TopicKey, Vec<u8>)> = Vec::new();
    for row in rows {
        let e = match envelope::<B>(row) {
            Ok(env) => {
                claimed.push(env);
                continue;
            }
            Err(e) => e,
        };
        let reason = format!(
            "the row cannot be read: {}",
            txmsg_core::__private::error_chain(&e)
        );
        tracing::error!(reason, "outbox row dead-lettered");
        let id = match B::id(row, "id") {
            Ok(id) => id.as_bytes().to_vec(),
            Err(_) => B::bytes(row, "id")?,
        };
        let id_arg = match Uuid::from_slice(&id) {
            Ok(uuid) => Arg::Id(uuid),
            Err(_) => Arg::Bytes(&id),
        };
        let args = [
            id_arg,
            Arg::Id(req.lease.owner),
            Arg::Text(&reason),
            Arg::Time(req.now),
        ];
        sql.mark_dead.execute::<B>(conn, &args).await?;
        let topic_key = match (B::text(row, "topic"), B::text(row, "key")) {
            (Ok(Some(topic)), Ok(key)) => Some((topic, key)),
            _ => None,
        };
        broken.push((topic_key, id));
    }
    if broken.is_empty() {
        return Ok(claimed);
    }
    // A keyed row after a dead one of its key, or after one whose key cannot
    // be read (it may be this row's). Ids compare as their bytes.
    let behind_broken = |env: &Envelope| {
        env.key.is_some()
            && broken.iter().any(|(topic_key, id)| {
                env.id.as_bytes().as_slice() > id.as_slice()
                    && topic_key
                        .as_ref()
                        .is_none_or(|(topic, key)| *topic == env.topic && *key == env.key)
            })
    };
    let (back, keep): (Vec<Envelope>, Vec<Envelope>) =
        claimed.into_iter().partition(|env| behind_broken(env));
    let back: Vec<Uuid> = back.iter().map(|env| env.id).collect();
    for chunk in back.chunks(sql.release.ids_per_statement()) {
        let args = [Arg::Ids(chunk), Arg::Id(req.lease.owner)];
        sql.release.execute::<B>(conn, &args).await?;
    }
    Ok(keep)
}
