//! `MySqlStore`: the outbox in MySQL or MariaDB.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, MySql, MySqlPool, Row};
use txmsg_core::consumer::{ConsumerDeadLetter, InboxStore, InboxWriter};
use txmsg_core::half::{ClaimedHalf, Decision, ResolveOutcome};
use txmsg_core::{
    ClaimRequest, DeadFilter, DeadLetter, Envelope, Error, Failure, HalfStore, HalfWriter,
    OutboxStats, OutboxWriter, Result, SqlStore, Store, Tables, TopicStats,
};
use uuid::Uuid;

use txmsg_sql::SqlHalfWriter;

use crate::dialect::MySqlDialect;
use crate::migrate;
use crate::sql::Sql;
use crate::writer::{MySqlInbox, MySqlWriter};

/// Pool size of [`MySqlStore::connect`].
const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// How often a claim is tried when the server ends it to break a deadlock.
const CLAIM_ATTEMPTS: usize = 3;

/// Ids bound in one statement at most.
const IDS_PER_STATEMENT: usize = 1000;

/// A [`Store`] whose outbox and inbox are MySQL (8 or later) or MariaDB
/// (10.6 or later) tables.
///
/// It is also an [`InboxStore`]: consumer groups record processed
/// idempotency keys in the inbox table, in the handler's transaction, and
/// keep the messages they gave up on in a dead-letter table beside it
/// (`txmsg_consumer_dead` beside the default inbox, `<inbox>_dead` beside a
/// renamed one). With [`Tables::schema`] set, the tables live in that
/// database.
///
/// Every SQL statement is built once, when the store is made, from the
/// validated names in [`Tables`]; values are always bind parameters. Every
/// timestamp written comes from the caller, never from the database's
/// `NOW()`, so tests can drive time.
///
/// Rows are claimed with `FOR UPDATE SKIP LOCKED` and a lease, so several
/// relays can share a store. Cheap to clone: clones share the pool. Its
/// `Debug` output shows the tables and the pool size, never the connection
/// string.
///
/// # Examples
///
/// ```no_run
/// use txmsg_core::{Message, Outbox, Store, Tables};
/// use txmsg_mysql::MySqlStore;
///
/// # async fn demo() -> txmsg_core::Result<()> {
/// let tables = Tables::default().schema("billing")?;
/// let store = MySqlStore::connect_with("mysql://app@db/app", tables, 20).await?;
/// store.migrate().await?;
///
/// let mut tx = Outbox::new(&store).begin().await?;
/// tx.enqueue(Message::new("invoices.created", &7)?.key(7)).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
    tables: Tables,
    sql: Arc<Sql>,
    writer: Arc<MySqlWriter>,
    half: Arc<SqlHalfWriter<MySqlDialect>>,
    inbox: Arc<MySqlInbox>,
}

impl fmt::Debug for MySqlStore {
    // The pool's options hold the password: show only what is safe.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlStore")
            .field("tables", &self.tables)
            .field(
                "max_connections",
                &self.pool.options().get_max_connections(),
            )
            .finish_non_exhaustive()
    }
}

impl MySqlStore {
    /// A store on `pool`, with its tables where `tables` says.
    ///
    /// Nothing is executed; call [`migrate`](Store::migrate) to create the
    /// tables.
    ///
    /// The consumer dead-letter table beside a renamed inbox table is named
    /// `<inbox>_dead`; if that name is too long or is the outbox's or the
    /// migrations table's, [`migrate`](Store::migrate) and every inbox
    /// method return [`Error::Config`] for `inbox_table` before running
    /// anything ([`connect_with`](MySqlStore::connect_with) returns it at
    /// once). Outbox methods are not affected.
    ///
    /// Run the pool's sessions in strict mode (`STRICT_TRANS_TABLES`, the
    /// server default since MySQL 5.7 and MariaDB 10.2.4), so that a value
    /// too long for its column is refused rather than cut;
    /// [`connect_with`](MySqlStore::connect_with) sets it on every
    /// connection.
    pub fn new(pool: MySqlPool, tables: Tables) -> Self {
        let sql = Sql::new(&tables);
        Self::build(pool, tables, sql)
    }

    fn build(pool: MySqlPool, tables: Tables, sql: Sql) -> Self {
        let sql = Arc::new(sql);
        let writer = Arc::new(MySqlWriter {
            sql: Arc::clone(&sql),
        });
        let inbox = Arc::new(MySqlInbox {
            sql: Arc::clone(&sql),
            without_legacy_keys: std::sync::Mutex::default(),
        });
        let half = Arc::new(
            SqlHalfWriter::new(sql.prepare.clone(), sql.settle.clone(), None)
                .with_holder(sql.inserted.clone()),
        );
        MySqlStore {
            pool,
            tables,
            sql,
            writer,
            half,
            inbox,
        }
    }

    /// Connects to `url` with the default [`Tables`] and a pool of 10
    /// connections.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the URL is malformed or no connection could be
    /// opened.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves no pool behind.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, Tables::default(), DEFAULT_MAX_CONNECTIONS).await
    }

    /// Connects to `url` with a pool of at most `max_connections`, tables
    /// where `tables` says.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `max_connections` is zero or the inbox table's
    /// name leaves no name for its dead-letter table (see
    /// [`new`](MySqlStore::new)), checked before connecting;
    /// [`Error::Database`] if the URL is malformed or no connection could be
    /// opened.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves no pool behind.
    pub async fn connect_with(url: &str, tables: Tables, max_connections: u32) -> Result<Self> {
        if max_connections == 0 {
            return Err(Error::config(
                "max_connections",
                "must be greater than zero",
            ));
        }
        let sql = Sql::new(&tables);
        sql.inbox()?;
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Strict mode: a value too long for its column is an
                    // error, never silently cut (a cut idempotency key could
                    // collide with another).
                    sqlx::Executor::execute(
                        conn,
                        "SET SESSION sql_mode = CONCAT_WS(',', @@SESSION.sql_mode, 'STRICT_TRANS_TABLES')",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(Self::build(pool, tables, sql))
    }

    /// Where the tables are.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }
}

/// A pooled connection whose next transaction runs at `READ COMMITTED`.
///
/// Claims and purges lock the rows they take: at this level InnoDB locks
/// only the rows that match, and no gaps, so they neither block producers'
/// inserts nor deadlock with each other over rows they do not take.
async fn read_committed(pool: &MySqlPool) -> Result<PoolConnection<MySql>> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(&mut *conn)
        .await?;
    Ok(conn)
}

/// Whether `err` is the server ending a transaction to break a deadlock or
/// a lock wait timeout (SQLSTATE 40001, or error 1205): the transaction was
/// rolled back, and may be tried again.
fn is_retryable(err: &Error) -> bool {
    match err {
        Error::Database(sqlx::Error::Database(d)) => {
            d.code().as_deref() == Some("40001")
                || (d.code().as_deref() == Some("HY000")
                    && d.message().contains("Lock wait timeout"))
        }
        _ => false,
    }
}

impl MySqlStore {
    /// One claim, in one `READ COMMITTED` transaction.
    async fn claim_once(&self, req: &ClaimRequest) -> Result<Vec<Envelope>> {
        let sql = &self.sql;
        let mut conn = read_committed(&self.pool).await?;
        let mut tx = conn.begin().await?;
        let candidates: Vec<Uuid> = sqlx::query_scalar(sql.claim_heads.get())
            .bind(req.now)
            .bind(req.now)
            .bind(req.dead_parks_key)
            .bind(limit(req.limit))
            .fetch_all(&mut *tx)
            .await?;
        if candidates.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut lock_heads = sqlx::query(sql.claim_heads_lock.with_ids(candidates.len()))
            .bind(req.now)
            .bind(req.now);
        for id in &candidates {
            lock_heads = lock_heads.bind(*id);
        }
        let heads = lock_heads.fetch_all(&mut *tx).await?;
        if heads.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut ids: Vec<Uuid> = Vec::with_capacity(heads.len());
        let mut keyed = Vec::new();
        for head in &heads {
            let id: Uuid = head.try_get(0)?;
            ids.push(id);
            if let Some(key) = head.try_get::<Option<String>, _>(2)? {
                keyed.push((id, head.try_get::<String, _>(1)?, key));
            }
        }

        // Followers: for each keyed head, the rows after it while they are
        // claimable, up to the per-key limit, within what is left of the limit.
        let mut budget = usize::try_from(req.limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(ids.len());
        if req.per_key_limit > 0 {
            for (head, topic, key) in &keyed {
                if budget == 0 {
                    break;
                }
                let rows = sqlx::query(sql.claim_followers.get())
                    .bind(req.now)
                    .bind(req.now)
                    .bind(topic)
                    .bind(key)
                    .bind(*head)
                    .bind(req.dead_parks_key)
                    .bind(limit(req.per_key_limit))
                    .fetch_all(&mut *tx)
                    .await?;
                for row in &rows {
                    // The first row that is leased elsewhere, waiting for a
                    // retry or dead closes its key for this claim.
                    let claimable = row.try_get::<Option<i64>, _>("claimable")?.unwrap_or(0) != 0;
                    if !claimable || budget == 0 {
                        break;
                    }
                    ids.push(row.try_get("id")?);
                    budget -= 1;
                }
            }
        }

        let mut lock = sqlx::query(sql.claim_lock.with_ids(ids.len())).bind(req.now);
        for id in &ids {
            lock = lock.bind(*id);
        }
        let rows = lock.fetch_all(&mut *tx).await?;
        let mut claimed = rows
            .iter()
            .map(txmsg_sql::envelope::<MySqlDialect>)
            .collect::<Result<Vec<_>>>()?;
        if !claimed.is_empty() {
            let mut lease = sqlx::query(sql.claim_lease.with_ids(claimed.len()))
                .bind(req.lease.owner)
                .bind(req.lease.until);
            for env in &claimed {
                lease = lease.bind(env.id);
            }
            lease.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        claimed.sort_by_key(|e| e.id);
        Ok(claimed)
    }
}

fn limit(n: u32) -> i64 {
    i64::from(n)
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store for MySqlStore {
    async fn migrate(&self) -> Result<()> {
        migrate::migrate(&self.pool, &self.sql).await?;
        // What the inbox knew of the tables may have changed.
        self.inbox
            .without_legacy_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        Ok(())
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Envelope>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let mut attempt = 1;
        loop {
            match self.claim_once(req).await {
                Err(e) if attempt < CLAIM_ATTEMPTS && is_retryable(&e) => {
                    tracing::debug!(error = %e, attempt, "claim ended by the server; retrying");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn mark_sent(&self, ids: &[Uuid], at: DateTime<Utc>) -> Result<()> {
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let mut q = sqlx::query(self.sql.mark_sent.with_ids(chunk.len())).bind(at);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn mark_failed(&self, failure: &Failure) -> Result<()> {
        sqlx::query(self.sql.mark_failed.get())
            .bind(failure.next_attempt_at)
            .bind(&failure.error)
            .bind(failure.id)
            .bind(failure.owner)
            .execute(&self.pool)
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
        sqlx::query(self.sql.mark_dead.get())
            .bind(reason)
            .bind(at)
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn release(&self, ids: &[Uuid], owner: Uuid) -> Result<()> {
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let mut q = sqlx::query(self.sql.release.with_ids(chunk.len())).bind(owner);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn dead_letters(&self, filter: &DeadFilter) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(self.sql.dead_letters.get())
            .bind(filter.topic.as_deref())
            .bind(filter.topic.as_deref())
            .bind(filter.key.as_deref())
            .bind(filter.key.as_deref())
            .bind(limit(filter.limit_or_default()))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(txmsg_sql::dead_letter::<MySqlDialect>)
            .collect()
    }

    async fn replay(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(self.sql.replay.get())
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn purge_sent(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let mut conn = read_committed(&self.pool).await?;
        let mut tx = conn.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(self.sql.purge_pick.get())
            .bind(before)
            .bind(self::limit(limit))
            .fetch_all(&mut *tx)
            .await?;
        if ids.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let mut q = sqlx::query(self.sql.purge_delete.with_ids(ids.len()));
        for id in &ids {
            q = q.bind(*id);
        }
        let done = q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let row = sqlx::query(self.sql.stats.get())
            .fetch_one(&self.pool)
            .await?;
        let mut stats = OutboxStats::default();
        stats.pending = count(row.try_get("pending")?);
        stats.oldest_pending = row.try_get("oldest")?;
        stats.dead = count(row.try_get("dead")?);
        stats.sent = count(row.try_get("sent")?);
        stats.prepared = count(row.try_get("prepared")?);
        Ok(stats)
    }

    async fn topic_stats(&self, since: DateTime<Utc>) -> Result<Vec<TopicStats>> {
        let rows = sqlx::query(self.sql.topic_stats.get())
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let mut stats = TopicStats::new(r.try_get::<String, _>("topic")?);
                stats.pending = count(r.try_get("pending")?);
                stats.prepared = count(r.try_get("prepared")?);
                stats.oldest_pending = r.try_get("oldest")?;
                stats.dead = count(r.try_get("dead")?);
                stats.sent_since = count(r.try_get("sent_since")?);
                Ok(stats)
            })
            .collect()
    }

    async fn dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>> {
        let row = sqlx::query(self.sql.dead_letter.get())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(txmsg_sql::dead_letter::<MySqlDialect>)
            .transpose()
    }

    async fn purge_dead(&self, filter: &DeadFilter, before: DateTime<Utc>) -> Result<u64> {
        let limit = filter.limit_or_default();
        if limit == 0 {
            return Ok(0);
        }
        let mut conn = read_committed(&self.pool).await?;
        let mut tx = conn.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(self.sql.purge_dead_pick.get())
            .bind(filter.topic.as_deref())
            .bind(filter.topic.as_deref())
            .bind(filter.key.as_deref())
            .bind(filter.key.as_deref())
            .bind(before)
            .bind(self::limit(limit))
            .fetch_all(&mut *tx)
            .await?;
        if ids.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let mut q = sqlx::query(self.sql.purge_dead_delete.with_ids(ids.len()));
        for id in &ids {
            q = q.bind(*id);
        }
        let done = q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

impl HalfStore for MySqlStore {
    fn half_writer(&self) -> Arc<dyn HalfWriter<MySql>> {
        Arc::clone(&self.half) as Arc<dyn HalfWriter<MySql>>
    }

    async fn claim_prepared(&self, req: &ClaimRequest) -> Result<Vec<ClaimedHalf>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = read_committed(&self.pool).await?;
        let mut tx = conn.begin().await?;
        let rows = sqlx::query(self.sql.claim_prepared.get())
            .bind(req.now)
            .bind(req.now)
            .bind(limit(req.limit))
            .fetch_all(&mut *tx)
            .await?;
        let mut claimed = rows
            .iter()
            .map(|r| {
                let checks = u32::try_from(r.try_get::<i32, _>("checks")?).unwrap_or(0);
                Ok(ClaimedHalf::new(
                    txmsg_sql::envelope::<MySqlDialect>(r)?,
                    checks,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        if !claimed.is_empty() {
            let mut lease = sqlx::query(self.sql.claim_lease.with_ids(claimed.len()))
                .bind(req.lease.owner)
                .bind(req.lease.until);
            for p in &claimed {
                lease = lease.bind(p.envelope.id);
            }
            lease.execute(&mut *tx).await?;
        }
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
        sqlx::query(self.sql.record_check.get())
            .bind(i32::from(counted))
            .bind(next_check_at)
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
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
        let done = sqlx::query(self.sql.mark_prepared_dead.get())
            .bind(reason)
            .bind(at)
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn resolve_prepared(
        &self,
        id: Uuid,
        resolve: Decision,
        now: DateTime<Utc>,
    ) -> Result<ResolveOutcome> {
        let mut conn = self.pool.acquire().await?;
        txmsg_sql::settle::<MySqlDialect>(&mut conn, &self.sql.settle, id, resolve, now, None).await
    }

    async fn resume(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(self.sql.resume.get())
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

impl SqlStore for MySqlStore {
    type Database = MySql;

    fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    fn writer(&self) -> Arc<dyn OutboxWriter<MySql>> {
        Arc::clone(&self.writer) as Arc<dyn OutboxWriter<MySql>>
    }
}

impl InboxStore for MySqlStore {
    fn inbox(&self) -> Arc<dyn InboxWriter<MySql>> {
        Arc::clone(&self.inbox) as Arc<dyn InboxWriter<MySql>>
    }

    async fn add_consumer_dead(&self, dead: &ConsumerDeadLetter) -> Result<()> {
        let env = &dead.envelope;
        sqlx::query(self.sql.inbox()?.add_dead.get())
            .bind(dead.id)
            .bind(&dead.group)
            .bind(&env.topic)
            .bind(env.key.as_deref())
            .bind(&env.idempotency_key)
            .bind(txmsg_sql::headers_to_text(&env.headers))
            .bind(env.payload.as_slice())
            .bind(env.id)
            .bind(env.created_at)
            .bind(&dead.reason)
            .bind(txmsg_sql::attempts_to_int(dead.attempts))
            .bind(dead.dead_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn consumer_dead_letters(
        &self,
        group: &str,
        filter: &DeadFilter,
    ) -> Result<Vec<ConsumerDeadLetter>> {
        let rows = sqlx::query(self.sql.inbox()?.dead_letters.get())
            .bind(group)
            .bind(filter.topic.as_deref())
            .bind(filter.topic.as_deref())
            .bind(filter.key.as_deref())
            .bind(filter.key.as_deref())
            .bind(limit(filter.limit_or_default()))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(txmsg_sql::consumer_dead_letter::<MySqlDialect>)
            .collect()
    }

    async fn consumer_dead_letter(
        &self,
        group: &str,
        id: Uuid,
    ) -> Result<Option<ConsumerDeadLetter>> {
        let row = sqlx::query(self.sql.inbox()?.dead_letter.get())
            .bind(group)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(txmsg_sql::consumer_dead_letter::<MySqlDialect>)
            .transpose()
    }

    async fn purge_inbox(&self, group: &str, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let sql = self.sql.inbox()?;
        if limit == 0 {
            return Ok(0);
        }
        let mut conn = read_committed(&self.pool).await?;
        let mut tx = conn.begin().await?;
        let keys: Vec<(String, String)> = sqlx::query_as(sql.purge_pick.get())
            .bind(group)
            .bind(before)
            .bind(self::limit(limit))
            .fetch_all(&mut *tx)
            .await?;
        if keys.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let mut q = sqlx::query(sql.purge_delete.with_pairs(keys.len())).bind(group);
        for (topic, key) in &keys {
            q = q.bind(topic).bind(key);
        }
        let done = q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_never_shows_the_password() {
        let pool = MySqlPoolOptions::new()
            .connect_lazy("mysql://app:s3cret-pw@127.0.0.1:1/app")
            .unwrap();
        let store = MySqlStore::new(pool, Tables::default());
        let shown = format!("{store:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("txmsg_outbox"), "{shown}");
    }

    #[tokio::test]
    async fn zero_connections_is_a_config_error() {
        let err = MySqlStore::connect_with("mysql://127.0.0.1:1/x", Tables::default(), 0)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            Error::Config {
                field: "max_connections",
                ..
            }
        ));
    }
}
