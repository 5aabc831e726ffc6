//! `SqliteStore`: the outbox in an SQLite database.

use std::time::Duration;

use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqlStr, Sqlite, SqlitePool};
use txmsg_core::{ClaimRequest, Envelope, Result};

use txmsg_sql::{Backend, StoreConfig, TableStore};

use crate::dialect::{SqliteBackend, micros};
use crate::migrate;
use crate::sql;

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
/// [`pool`](txmsg_core::SqlStore::pool); the relay claims, marks and retries rows through
/// [`Store`](txmsg_core::Store). Cheap to clone: clones share the pool.
///
/// It is also an [`InboxStore`](txmsg_core::consumer::InboxStore): consumer groups record processed
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
/// through [`SqlStore::begin`](txmsg_core::SqlStore::begin), the relay's claims, migrations) starts with
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
pub type SqliteStore = TableStore<SqliteBackend>;

impl Backend for SqliteBackend {
    const STORE: &'static str = "SqliteStore";

    const SCHEMES: &'static [&'static str] = &["sqlite"];

    const BEGIN: Option<&'static str> = Some(BEGIN_IMMEDIATE);

    type Own = sql::Own;

    type Capture = ();

    /// Opens (and creates if missing) the database at `url`: an sqlx SQLite
    /// URL (`sqlite://path/to/file.db`, `sqlite:file.db`, or
    /// `sqlite::memory:`).
    async fn connect(url: &str, config: &StoreConfig) -> Result<SqlitePool> {
        let options = txmsg_sql::connect_options::<SqliteConnectOptions>(url, "an sqlite")?
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true);
        Ok(if is_in_memory(url) {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?
        } else {
            SqlitePoolOptions::new()
                .max_connections(config.max_connections())
                .connect_with(options.journal_mode(SqliteJournalMode::Wal))
                .await?
        })
    }

    async fn migrate(store: &SqliteStore) -> Result<()> {
        let sql = store.statements();
        migrate::run(txmsg_core::SqlStore::pool(store), sql, &sql.own.rendered).await
    }

    fn migration_script(store: &SqliteStore) -> String {
        let sql = &store.statements().own;
        // `applied_at` holds microseconds since the Unix epoch.
        let now = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)";
        let target = txmsg_sql::ScriptTarget::new("txmsg-sqlite", store.tables(), '"', now);
        txmsg_sql::migration_script::<SqliteBackend, _>(target, &sql.migrations, &sql.rendered)
    }

    async fn claim(store: &SqliteStore, req: &ClaimRequest) -> Result<Vec<Envelope>> {
        // SQLite has one writer, so `BEGIN IMMEDIATE` is its equivalent of
        // `FOR UPDATE SKIP LOCKED`: the write lock is held from the first read
        // of the claim to its commit, so no other relay can lease the same
        // rows in between; a second relay waits (busy timeout) and then sees
        // them leased.
        let sql = store.statements();
        let mut tx = store.begin_store_tx().await?;
        let limit = i64::from(req.limit);
        // Heads in id order among the oldest pending rows first: cheap, and
        // enough unless a long run of one key's rows hides the other keys.
        let scan = limit.saturating_mul(SCAN_FACTOR).max(MIN_SCAN);
        let mut rows = claim_query(&sql.own.claim_in_id_order, req, limit)
            .bind(scan)
            .fetch_all(&mut *tx)
            .await?;
        let found = i64::try_from(rows.len()).unwrap_or(limit);
        if found < limit {
            // Then per key, one index seek each, for what is left.
            let more = claim_query(&sql.own.claim_by_key, req, limit - found)
                .fetch_all(&mut *tx)
                .await?;
            rows.extend(more);
        }
        // Read before committing: a row that cannot be read is dead-lettered
        // in this transaction.
        let claimed = txmsg_sql::read_claimed::<Self>(&mut tx, sql, &rows, req).await?;
        tx.commit().await?;
        // A lease that ends before `now` leaves the rows of the first step
        // claimable by the second: the store sorts and removes repeats.
        Ok(claimed)
    }
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
