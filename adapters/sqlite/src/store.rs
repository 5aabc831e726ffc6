//! `SqliteStore`: the outbox in an SQLite database.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Encode, Row, SqlStr, Sqlite, SqliteConnection, SqlitePool, Type};
use txmsg_core::consumer::{ConsumerDeadLetter, InboxStore, InboxWriter};
use txmsg_core::half::{ClaimedHalf, Decision, ResolveOutcome};
use txmsg_core::{
    ClaimRequest, DeadFilter, DeadLetter, Envelope, Error, Failure, HalfStore, HalfWriter,
    OutboxStats, OutboxWriter, Result, SqlStore, Store, Tables, TopicStats,
};
use uuid::Uuid;

use txmsg_sql::{SqlHalfWriter, SqlInbox};

use crate::dialect::SqliteDialect;
use crate::dialect::micros;
use crate::migrate::{self, Rendered};
use crate::sql::{IdList, Names, Statements};
use crate::writer::SqliteWriter;

/// How long a statement waits for another connection's write lock before it
/// fails with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The first step of a claim looks for heads among this many times `limit`
/// of the oldest pending rows (and at least [`MIN_SCAN`]).
const SCAN_FACTOR: i64 = 4;
const MIN_SCAN: i64 = 1024;

/// The statement that begins every write transaction: it takes SQLite's write
/// lock at once, so a second writer waits on the busy timeout instead of
/// failing when it would upgrade a read lock later.
const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";

/// The txmsg outbox (and inbox) in an SQLite database: the embedded default
/// store.
///
/// Producers write outbox rows in their own transactions on
/// [`pool`](SqlStore::pool); the relay claims, marks and retries rows through
/// [`Store`]. Cheap to clone: clones share the pool.
///
/// It is also an [`InboxStore`]: consumer groups record processed
/// idempotency keys in the inbox table, in the handler's transaction, and
/// keep the messages they gave up on in a dead-letter table beside it
/// (`txmsg_consumer_dead` beside the default inbox, `<inbox>_dead` beside a
/// renamed one). Handlers' transactions begin with `BEGIN IMMEDIATE` too, so
/// two deliveries of one message are handled one after the other: the second
/// finds the first's key and does not run its handler.
///
/// # Storage
///
/// - Ids are UUIDv7 stored as 16-byte blobs. SQLite compares blobs
///   bytewise, which is the order of UUIDv7 (write order), and the blob is
///   under half the size of the text form in the table and in every index.
/// - Times are `INTEGER` unix microseconds, always written by the caller
///   (never SQLite's own clock), so comparisons are exact and a test clock
///   drives leases and retries. Times are truncated to whole microseconds,
///   as PostgreSQL does.
/// - Payloads are blobs (the exact bytes); headers are a JSON object in a
///   `TEXT` column.
///
/// # Concurrency
///
/// SQLite allows one writer at a time. Every write transaction (producers'
/// through [`SqlStore::begin`], the relay's claims, migrations) starts with
/// `BEGIN IMMEDIATE`, so concurrent writers queue on the busy timeout (5 s)
/// instead of failing with `SQLITE_BUSY`. File databases use WAL, so readers
/// never wait for the writer.
///
/// # Claims
///
/// A claim is one `BEGIN IMMEDIATE` transaction. It first looks for each
/// key's first row among the oldest pending rows, which is cheap when keys
/// are many; when that finds too few, it visits each key with pending rows
/// once through an index, so a long backlog of one key does not slow down
/// the others. A key's later rows follow its first, in order, up to
/// `per_key_limit`, stopping at a row that is leased, waiting for a retry, or
/// (when dead rows park their key) dead.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> txmsg_core::Result<()> {
/// use txmsg_core::Store;
/// use txmsg_sqlite::SqliteStore;
///
/// let store = SqliteStore::connect("sqlite://orders.db").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    tables: Tables,
    sql: Statements,
    migrations: Vec<Rendered>,
    writer: Arc<SqliteWriter>,
    half: Arc<SqlHalfWriter<SqliteDialect>>,
    inbox: Arc<SqlInbox<SqliteDialect>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("tables", &self.inner.tables)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (and creates if missing) the database at `url`, with the default
    /// table names.
    ///
    /// `url` is an sqlx SQLite URL: `sqlite://path/to/file.db`,
    /// `sqlite:file.db`, or `sqlite::memory:`. File databases are opened in
    /// WAL mode with `synchronous = NORMAL`, a 5 s busy timeout and foreign
    /// keys on.
    ///
    /// An in-memory database lives in one connection and is gone when that
    /// connection closes, so for one the pool holds exactly one connection,
    /// never closed for idleness or age. Transactions then take turns, which
    /// is what SQLite's single writer does anyway; but a task holding a
    /// transaction open must not wait on another use of the store, or it
    /// waits for itself (until the pool's acquire timeout).
    ///
    /// Run [`Store::migrate`] before first use.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a URL that is not an SQLite URL;
    /// [`Error::Database`] if the database cannot be opened.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves no connection open.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, Tables::default()).await
    }

    /// Like [`connect`](SqliteStore::connect), with the tables named by
    /// `tables`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a URL that is not an SQLite URL, for `tables`
    /// with a schema (SQLite has no schemas), or for an inbox table whose name
    /// leaves no name for its dead-letter table (see
    /// [`new`](SqliteStore::new)), checked before the database is opened;
    /// [`Error::Database`] if the database cannot be opened.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves no connection open.
    pub async fn connect_with(url: &str, tables: Tables) -> Result<Self> {
        let names = Names::new(&tables)?;
        if !url.starts_with("sqlite:") {
            // The URL itself is not shown: another database's could hold a password.
            return Err(Error::config(
                "url",
                "must be an sqlite url (`sqlite:` followed by a path)",
            ));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::config("url", format!("is not an sqlite url: {e}")))?
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true);
        let pool = if is_in_memory(url) {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?
        } else {
            SqlitePoolOptions::new()
                .connect_with(options.journal_mode(SqliteJournalMode::Wal))
                .await?
        };
        Ok(Self::build(pool, tables, &names))
    }

    /// A store on an existing pool, with the tables named by `tables`.
    ///
    /// The pool's connections should have a busy timeout; see
    /// [`connect`](SqliteStore::connect) for the settings it uses.
    ///
    /// The consumer dead-letter table beside a renamed inbox table is named
    /// `<inbox>_dead`, so the inbox table's name may be at most 58 bytes
    /// (the 63-byte limit of identifiers, which every store applies, less the
    /// suffix), and the result must not be the name of the outbox or
    /// migrations table or of the outbox's dead-row index (`<outbox>_dead`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `tables` has a schema (SQLite has none), or for
    /// `inbox_table` if its name leaves no name for the dead-letter table.
    pub fn new(pool: SqlitePool, tables: Tables) -> Result<Self> {
        let names = Names::new(&tables)?;
        Ok(Self::build(pool, tables, &names))
    }

    fn build(pool: SqlitePool, tables: Tables, names: &Names) -> Self {
        let sql = Statements::new(names);
        let writer = Arc::new(SqliteWriter::new(sql.insert.clone()));
        let inbox = Arc::new(SqlInbox::new(
            sql.inbox_record.clone(),
            sql.consumer_dead_remove.clone(),
        ));
        let half = Arc::new(SqlHalfWriter::new(
            sql.prepare.clone(),
            sql.settle.clone(),
            None,
        ));
        let migrations = migrate::render(names);
        SqliteStore {
            inner: Arc::new(Inner {
                pool,
                tables,
                sql,
                migrations,
                writer,
                half,
                inbox,
            }),
        }
    }

    /// The table names.
    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    async fn begin_immediate(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        Ok(self.inner.pool.begin_with(BEGIN_IMMEDIATE).await?)
    }

    /// Runs an id-list statement over `ids` (`first` binds `?1`), in chunks,
    /// all in one transaction.
    async fn update_ids<T>(&self, list: &IdList, first: T, ids: &[Uuid]) -> Result<()>
    where
        T: for<'t> Encode<'t, Sqlite> + Type<Sqlite> + Copy + Send + Sync,
    {
        let largest = list.largest();
        if ids.len() <= largest {
            let mut conn = self.inner.pool.acquire().await?;
            return update_chunk(&mut conn, list, first, ids).await;
        }
        let mut tx = self.begin_immediate().await?;
        for chunk in ids.chunks(largest) {
            update_chunk(&mut tx, list, first, chunk).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Runs an id-list statement for `chunk`, padded to a prepared size with its
/// last id.
async fn update_chunk<T>(
    conn: &mut SqliteConnection,
    list: &IdList,
    first: T,
    chunk: &[Uuid],
) -> Result<()>
where
    T: for<'t> Encode<'t, Sqlite> + Type<Sqlite> + Copy + Send + Sync,
{
    let Some(last) = chunk.last() else {
        return Ok(());
    };
    let (sql, size) = list.for_len(chunk.len());
    let mut query = sqlx::query(sql.clone()).bind(first);
    for i in 0..size {
        query = query.bind(*chunk.get(i).unwrap_or(last));
    }
    query.execute(conn).await?;
    Ok(())
}

/// Whether `url` opens an in-memory database (`sqlite::memory:`,
/// `sqlite://:memory:`, `mode=memory`), read the way sqlx reads it.
fn is_in_memory(url: &str) -> bool {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    database == ":memory:" || params.split('&').any(|p| p == "mode=memory")
}

/// A claim statement with its parameters bound but the last: `?1` now,
/// `?2` dead parks key, `?3` limit, `?4` per-key limit, `?5` owner,
/// `?6` lease until.
fn claim_query(
    sql: &SqlStr,
    req: &ClaimRequest,
    limit: i64,
) -> Query<'static, Sqlite, SqliteArguments> {
    sqlx::query(sql.clone())
        .bind(micros(req.now))
        .bind(req.dead_parks_key)
        .bind(limit)
        .bind(i64::from(req.per_key_limit))
        .bind(req.lease.owner)
        .bind(micros(req.lease.until))
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        migrate::run(&self.inner.pool, &self.inner.sql, &self.inner.migrations).await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Envelope>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        // SQLite has one writer, so `BEGIN IMMEDIATE` is its equivalent of
        // `FOR UPDATE SKIP LOCKED`: the write lock is held from the first read
        // of the claim to its commit, so no other relay can lease the same
        // rows in between; a second relay waits (busy timeout) and then sees
        // them leased.
        let mut tx = self.begin_immediate().await?;
        let limit = i64::from(req.limit);
        // Heads in id order among the oldest pending rows first: cheap, and
        // enough unless a long run of one key's rows hides the other keys.
        let scan = limit.saturating_mul(SCAN_FACTOR).max(MIN_SCAN);
        let mut rows = claim_query(&self.inner.sql.claim_in_id_order, req, limit)
            .bind(scan)
            .fetch_all(&mut *tx)
            .await?;
        let found = i64::try_from(rows.len()).unwrap_or(limit);
        if found < limit {
            // Then per key, one index seek each, for what is left.
            let more = claim_query(&self.inner.sql.claim_by_key, req, limit - found)
                .fetch_all(&mut *tx)
                .await?;
            rows.extend(more);
        }
        // Decode before committing. SQLite keeps what it is given (a row
        // written by hand or another program may hold headers that are not
        // JSON, or an id of the wrong length): such a row is dead-lettered
        // with the reason in this transaction, so it neither fails every
        // claim nor comes back when its lease runs out. Rows of its key
        // claimed after it are given back, as they would be behind any dead
        // row.
        let mut claimed = Vec::with_capacity(rows.len());
        // (topic and key if they can be read, id) of each row dead-lettered.
        type TopicKey = Option<(String, Option<String>)>;
        let mut broken: Vec<(TopicKey, Vec<u8>)> = Vec::new();
        for r in &rows {
            match txmsg_sql::envelope::<SqliteDialect>(r) {
                Ok(env) => claimed.push(env),
                Err(e) => {
                    let id: Vec<u8> = r.try_get("id")?;
                    let reason = format!(
                        "the row cannot be read: {}",
                        txmsg_core::__private::error_chain(&e)
                    );
                    tracing::error!(reason, "outbox row dead-lettered");
                    sqlx::query(self.inner.sql.mark_dead.clone())
                        .bind(id.as_slice())
                        .bind(req.lease.owner)
                        .bind(reason)
                        .bind(micros(req.now))
                        .execute(&mut *tx)
                        .await?;
                    let topic_key = r
                        .try_get("topic")
                        .and_then(|topic| Ok((topic, r.try_get("key")?)))
                        .ok();
                    broken.push((topic_key, id));
                }
            }
        }
        if !broken.is_empty() {
            // A keyed row after a dead one of its key, or after one whose
            // key cannot be read (it may be this row's).
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
            for chunk in back.chunks(self.inner.sql.release.largest()) {
                update_chunk(&mut tx, &self.inner.sql.release, req.lease.owner, chunk).await?;
            }
            claimed = keep;
        }
        tx.commit().await?;
        claimed.sort_by_key(|e| e.id);
        // A lease that ends before `now` leaves the rows of the first step
        // claimable by the second.
        claimed.dedup_by_key(|e| e.id);
        Ok(claimed)
    }

    async fn mark_sent(&self, ids: &[Uuid], at: DateTime<Utc>) -> Result<()> {
        self.update_ids(&self.inner.sql.mark_sent, micros(at), ids)
            .await
    }

    async fn mark_failed(&self, failure: &Failure) -> Result<()> {
        sqlx::query(self.inner.sql.mark_failed.clone())
            .bind(failure.id)
            .bind(failure.owner)
            .bind(micros(failure.next_attempt_at))
            .bind(failure.error.as_str())
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    async fn mark_dead(
        &self,
        id: Uuid,
        owner: Uuid,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(self.inner.sql.mark_dead.clone())
            .bind(id)
            .bind(owner)
            .bind(reason)
            .bind(micros(at))
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    async fn release(&self, ids: &[Uuid], owner: Uuid) -> Result<()> {
        self.update_ids(&self.inner.sql.release, owner, ids).await
    }

    async fn dead_letters(&self, filter: &DeadFilter) -> Result<Vec<DeadLetter>> {
        let limit = filter.limit_or_default();
        let rows = sqlx::query(self.inner.sql.dead_letters.clone())
            .bind(filter.topic.as_deref())
            .bind(filter.key.as_deref())
            .bind(i64::from(limit))
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(txmsg_sql::dead_letter::<SqliteDialect>)
            .collect()
    }

    async fn replay(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(self.inner.sql.replay.clone())
            .bind(id)
            .bind(micros(at))
            .execute(&self.inner.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn purge_sent(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let done = sqlx::query(self.inner.sql.purge_sent.clone())
            .bind(micros(before))
            .bind(i64::from(limit))
            .execute(&self.inner.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let row = sqlx::query(self.inner.sql.stats.clone())
            .fetch_one(&self.inner.pool)
            .await?;
        let mut stats = OutboxStats::default();
        stats.pending = count(row.try_get("pending")?);
        stats.oldest_pending = row
            .try_get::<Option<i64>, _>("oldest_pending")?
            .and_then(DateTime::from_timestamp_micros);
        stats.dead = count(row.try_get("dead")?);
        stats.sent = count(row.try_get("sent")?);
        stats.prepared = count(row.try_get("prepared")?);
        Ok(stats)
    }

    async fn topic_stats(&self, since: DateTime<Utc>) -> Result<Vec<TopicStats>> {
        let rows = sqlx::query(self.inner.sql.topic_stats.clone())
            .bind(micros(since))
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let mut stats = TopicStats::new(r.try_get::<String, _>("topic")?);
                stats.pending = count(r.try_get("pending")?);
                stats.prepared = count(r.try_get("prepared")?);
                stats.oldest_pending = r
                    .try_get::<Option<i64>, _>("oldest_pending")?
                    .and_then(DateTime::from_timestamp_micros);
                stats.dead = count(r.try_get("dead")?);
                stats.sent_since = count(r.try_get("sent_since")?);
                Ok(stats)
            })
            .collect()
    }

    async fn dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>> {
        let row = sqlx::query(self.inner.sql.dead_letter.clone())
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.as_ref()
            .map(txmsg_sql::dead_letter::<SqliteDialect>)
            .transpose()
    }

    async fn purge_dead(&self, filter: &DeadFilter, before: DateTime<Utc>) -> Result<u64> {
        let limit = filter.limit_or_default();
        if limit == 0 {
            return Ok(0);
        }
        let done = sqlx::query(self.inner.sql.purge_dead.clone())
            .bind(filter.topic.as_deref())
            .bind(filter.key.as_deref())
            .bind(micros(before))
            .bind(i64::from(limit))
            .execute(&self.inner.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

impl HalfStore for SqliteStore {
    fn half_writer(&self) -> Arc<dyn HalfWriter<Sqlite>> {
        Arc::clone(&self.inner.half) as Arc<dyn HalfWriter<Sqlite>>
    }

    async fn claim_prepared(&self, req: &ClaimRequest) -> Result<Vec<ClaimedHalf>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        // As `claim`: the write lock is held from the first read to the
        // commit, so two workers never lease the same row.
        let mut tx = self.begin_immediate().await?;
        let rows = sqlx::query(self.inner.sql.claim_prepared.clone())
            .bind(req.lease.owner)
            .bind(micros(req.lease.until))
            .bind(micros(req.now))
            .bind(i64::from(req.limit))
            .fetch_all(&mut *tx)
            .await?;
        // Decode before committing: a row that cannot be read is not leased.
        let mut claimed = rows
            .iter()
            .map(|r| {
                let checks: i64 = r.try_get("checks")?;
                let checks = u32::try_from(checks).unwrap_or(u32::MAX);
                Ok(ClaimedHalf::new(
                    txmsg_sql::envelope::<SqliteDialect>(r)?,
                    checks,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
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
        sqlx::query(self.inner.sql.record_check.clone())
            .bind(id)
            .bind(owner)
            .bind(micros(next_check_at))
            .bind(i64::from(counted))
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    async fn mark_prepared_dead(
        &self,
        id: Uuid,
        owner: Uuid,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(self.inner.sql.mark_prepared_dead.clone())
            .bind(id)
            .bind(owner)
            .bind(reason)
            .bind(micros(at))
            .execute(&self.inner.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn resolve_prepared(
        &self,
        id: Uuid,
        resolve: Decision,
        now: DateTime<Utc>,
    ) -> Result<ResolveOutcome> {
        let mut conn = self.inner.pool.acquire().await?;
        txmsg_sql::settle::<SqliteDialect>(
            &mut conn,
            &self.inner.sql.settle,
            id,
            resolve,
            now,
            None,
        )
        .await
    }

    async fn resume(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(self.inner.sql.resume.clone())
            .bind(id)
            .bind(micros(at))
            .execute(&self.inner.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

impl SqlStore for SqliteStore {
    type Database = Sqlite;

    fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    fn writer(&self) -> Arc<dyn OutboxWriter<Sqlite>> {
        Arc::clone(&self.inner.writer) as Arc<dyn OutboxWriter<Sqlite>>
    }

    fn begin_statement(&self) -> Option<&'static str> {
        Some(BEGIN_IMMEDIATE)
    }
}

impl InboxStore for SqliteStore {
    fn inbox(&self) -> Arc<dyn InboxWriter<Sqlite>> {
        Arc::clone(&self.inner.inbox) as Arc<dyn InboxWriter<Sqlite>>
    }

    async fn add_consumer_dead(&self, dead: &ConsumerDeadLetter) -> Result<()> {
        let env = &dead.envelope;
        sqlx::query(self.inner.sql.consumer_dead_add.clone())
            .bind(dead.id)
            .bind(dead.group.as_str())
            .bind(env.topic.as_str())
            .bind(env.key.as_deref())
            .bind(env.idempotency_key.as_str())
            .bind(txmsg_sql::headers_to_text(&env.headers))
            .bind(env.payload.as_slice())
            .bind(env.id)
            .bind(micros(env.created_at))
            .bind(dead.reason.as_str())
            .bind(i64::from(dead.attempts))
            .bind(micros(dead.dead_at))
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    async fn consumer_dead_letters(
        &self,
        group: &str,
        filter: &DeadFilter,
    ) -> Result<Vec<ConsumerDeadLetter>> {
        let limit = filter.limit_or_default();
        let rows = sqlx::query(self.inner.sql.consumer_dead_list.clone())
            .bind(group)
            .bind(filter.topic.as_deref())
            .bind(filter.key.as_deref())
            .bind(i64::from(limit))
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(txmsg_sql::consumer_dead_letter::<SqliteDialect>)
            .collect()
    }

    async fn consumer_dead_letter(
        &self,
        group: &str,
        id: Uuid,
    ) -> Result<Option<ConsumerDeadLetter>> {
        let row = sqlx::query(self.inner.sql.consumer_dead_get.clone())
            .bind(group)
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.as_ref()
            .map(txmsg_sql::consumer_dead_letter::<SqliteDialect>)
            .transpose()
    }

    async fn purge_inbox(&self, group: &str, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let done = sqlx::query(self.inner.sql.inbox_purge.clone())
            .bind(micros(before))
            .bind(i64::from(limit))
            .bind(group)
            .execute(&self.inner.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
