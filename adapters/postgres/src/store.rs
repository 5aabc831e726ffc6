//! `PgStore`: the outbox in PostgreSQL.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Row};
use txmsg_core::consumer::{ConsumerDeadLetter, InboxStore, InboxWriter};
use txmsg_core::half::{ClaimedHalf, Decision, ResolveOutcome};
use txmsg_core::{
    BoxFuture, ClaimRequest, DeadFilter, DeadLetter, Envelope, Error, Failure, HalfStore,
    HalfWriter, OutboxStats, OutboxWriter, Result, SqlStore, Store, Tables, TopicStats, Waker,
};
use uuid::Uuid;

use txmsg_sql::{SqlHalfWriter, SqlInbox};

use crate::dialect::PgDialect;
use crate::migrate;
use crate::sql::Sql;
use crate::writer::PgWriter;

/// Pool size of [`PgStore::connect`].
const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// A [`Store`] whose outbox and inbox are PostgreSQL tables.
///
/// It is also an [`InboxStore`]: consumer groups record processed
/// idempotency keys in the inbox table, in the handler's transaction, and
/// keep the messages they gave up on in a dead-letter table beside it
/// (`txmsg_consumer_dead` beside the default inbox, `<inbox>_dead` beside a
/// renamed one).
///
/// Every SQL statement is built once, when the store is made, from the
/// validated names in [`Tables`]; values are always bind parameters. Every
/// timestamp written comes from the caller (the relay's clock, the producer's
/// clock), never from the database's `now()`, so tests can drive time.
///
/// Rows are claimed with `FOR UPDATE SKIP LOCKED` and a lease, so several
/// relays, in one process or many, can share a store. Cheap to clone: clones
/// share the pool. Its `Debug` output shows the tables and the pool size,
/// never the connection string.
///
/// # Examples
///
/// ```no_run
/// # mod txmsg { pub use txmsg_core::*; pub mod postgres { pub use txmsg_postgres::*; } }
/// use txmsg::postgres::PgStore;
/// use txmsg::{Outbox, Message, Store, Tables};
///
/// # async fn demo() -> txmsg::Result<()> {
/// let tables = Tables::default().schema("billing")?;
/// let store = PgStore::connect_with("postgres://app@db/app", tables, 20).await?;
/// store.migrate().await?;
///
/// let mut tx = Outbox::new(&store).begin().await?;
/// tx.enqueue(Message::new("invoices.created", &7)?.key(7)).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    tables: Tables,
    sql: Arc<Sql>,
    writer: Arc<PgWriter>,
    half: Arc<SqlHalfWriter<PgDialect>>,
    inbox: Arc<SqlInbox<PgDialect>>,
    notify: Option<txmsg_core::Ident>,
}

impl fmt::Debug for PgStore {
    // The pool's options hold the password: show only what is safe.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("tables", &self.tables)
            .field("notify", &self.notify)
            .field(
                "max_connections",
                &self.pool.options().get_max_connections(),
            )
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// A store on `pool`, with its tables where `tables` says.
    ///
    /// Nothing is executed; call [`migrate`](Store::migrate) to create the
    /// tables.
    ///
    /// The consumer dead-letter table beside a renamed inbox table is named
    /// `<inbox>_dead`, so the inbox table's name must leave room for the
    /// suffix within PostgreSQL's 63 bytes, and the result must not be the
    /// name of the outbox or migrations table. This constructor cannot fail:
    /// with such a name, [`migrate`](Store::migrate) and every inbox method
    /// return [`Error::Config`] for `inbox_table` before running anything
    /// ([`connect_with`](PgStore::connect_with) returns it at once). Outbox
    /// methods are not affected.
    pub fn new(pool: PgPool, tables: Tables) -> Self {
        let sql = Sql::new(&tables);
        Self::build(pool, tables, sql)
    }

    fn build(pool: PgPool, tables: Tables, sql: Sql) -> Self {
        let sql = Arc::new(sql);
        let writer = Arc::new(PgWriter {
            sql: Arc::clone(&sql),
            notify: None,
        });
        let inbox = Arc::new(match sql.inbox() {
            Ok(inbox) => SqlInbox::new(inbox.record.clone(), inbox.remove_dead.clone()),
            Err(Error::Config { reason, .. }) => SqlInbox::refusing(reason),
            Err(other) => SqlInbox::refusing(other.to_string()),
        });
        let half = Arc::new(SqlHalfWriter::new(
            sql.prepare.clone(),
            sql.settle.clone(),
            None,
        ));
        PgStore {
            pool,
            tables,
            sql,
            writer,
            half,
            inbox,
            notify: None,
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
    /// [`new`](PgStore::new)), checked before connecting;
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
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(url)
            .await?;
        Ok(Self::build(pool, tables, sql))
    }

    /// Where the tables are.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Wakes relays in other processes through PostgreSQL `LISTEN`/`NOTIFY`
    /// on `channel`.
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
        let channel = txmsg_core::Ident::for_field("notify_channel", channel)?;
        self.writer = Arc::new(PgWriter {
            sql: Arc::clone(&self.sql),
            notify: Some(channel.clone()),
        });
        self.half = Arc::new(SqlHalfWriter::new(
            self.sql.prepare.clone(),
            self.sql.settle.clone(),
            Some(channel.as_str().to_owned()),
        ));
        self.notify = Some(channel);
        Ok(self)
    }
}

/// Listens on `channel` and wakes the relay on each notification, for as
/// long as it runs; reconnects after errors.
async fn listen(pool: PgPool, channel: txmsg_core::Ident, waker: Waker) {
    let mut failures = 0u32;
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "could not open a LISTEN connection; retrying");
                tokio::time::sleep(listen_backoff(failures)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(channel.as_str()).await {
            failures = failures.saturating_add(1);
            tracing::warn!(error = %e, channel = %channel, "LISTEN failed; retrying");
            tokio::time::sleep(listen_backoff(failures)).await;
            continue;
        }
        // Rows committed while not listening are found by the next poll.
        waker.wake();
        loop {
            match listener.recv().await {
                Ok(_) => {
                    failures = 0;
                    waker.wake();
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                    tokio::time::sleep(listen_backoff(failures)).await;
                    break;
                }
            }
        }
    }
}

fn listen_backoff(failures: u32) -> std::time::Duration {
    std::time::Duration::from_millis(100u64.saturating_mul(1u64 << failures.min(6)))
}

fn limit(n: u32) -> i64 {
    i64::from(n)
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        migrate::migrate(&self.pool, &self.sql).await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Envelope>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let sql = &self.sql;
        let mut tx = self.pool.begin().await?;

        let heads = sqlx::query(sql.claim_heads.get())
            .bind(req.now)
            .bind(req.dead_parks_key)
            .bind(limit(req.limit))
            .fetch_all(&mut *tx)
            .await?;
        if heads.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut ids: Vec<Uuid> = Vec::with_capacity(heads.len());
        let (mut head_ids, mut head_topics, mut head_keys) = (Vec::new(), Vec::new(), Vec::new());
        for head in &heads {
            let id: Uuid = head.try_get(0)?;
            ids.push(id);
            if let Some(key) = head.try_get::<Option<String>, _>(2)? {
                head_ids.push(id);
                head_topics.push(head.try_get::<String, _>(1)?);
                head_keys.push(key);
            }
        }

        // Followers: for each keyed head, the rows after it while they are
        // claimable, up to the per-key limit, within what is left of the limit.
        let mut budget = usize::try_from(req.limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(ids.len());
        if budget > 0 && req.per_key_limit > 0 && !head_ids.is_empty() {
            let rows = sqlx::query(sql.claim_followers.get())
                .bind(head_ids.as_slice())
                .bind(head_topics.as_slice())
                .bind(head_keys.as_slice())
                .bind(req.now)
                .bind(req.dead_parks_key)
                .bind(limit(req.per_key_limit))
                .fetch_all(&mut *tx)
                .await?;
            let mut current = None;
            let mut open = false;
            for row in &rows {
                let head: Uuid = row.try_get("head")?;
                if current != Some(head) {
                    current = Some(head);
                    open = true;
                }
                // The first row that is leased elsewhere, waiting for a retry
                // or dead closes its key for this claim.
                let claimable = row
                    .try_get::<Option<bool>, _>("claimable")?
                    .unwrap_or(false);
                if !open || !claimable {
                    open = false;
                    continue;
                }
                if budget == 0 {
                    break;
                }
                ids.push(row.try_get("id")?);
                budget -= 1;
            }
        }

        let rows = sqlx::query(sql.claim_lease.get())
            .bind(ids.as_slice())
            .bind(req.lease.owner)
            .bind(req.lease.until)
            .bind(req.now)
            .fetch_all(&mut *tx)
            .await?;
        let mut claimed = rows
            .iter()
            .map(txmsg_sql::envelope::<PgDialect>)
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        claimed.sort_by_key(|e| e.id);
        Ok(claimed)
    }

    async fn mark_sent(&self, ids: &[Uuid], at: DateTime<Utc>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(self.sql.mark_sent.get())
            .bind(ids)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_failed(&self, failure: &Failure) -> Result<()> {
        sqlx::query(self.sql.mark_failed.get())
            .bind(failure.id)
            .bind(failure.owner)
            .bind(failure.next_attempt_at)
            .bind(&failure.error)
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
            .bind(id)
            .bind(owner)
            .bind(reason)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn release(&self, ids: &[Uuid], owner: Uuid) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(self.sql.release.get())
            .bind(ids)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn dead_letters(&self, filter: &DeadFilter) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(self.sql.dead_letters.get())
            .bind(filter.topic.as_deref())
            .bind(filter.key.as_deref())
            .bind(limit(filter.limit_or_default()))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(txmsg_sql::dead_letter::<PgDialect>)
            .collect()
    }

    async fn replay(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(self.sql.replay.get())
            .bind(id)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn purge_sent(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let done = sqlx::query(self.sql.purge_sent.get())
            .bind(before)
            .bind(self::limit(limit))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let row = sqlx::query(self.sql.stats.get())
            .fetch_one(&self.pool)
            .await?;
        let mut stats = OutboxStats::default();
        stats.pending = count(row.try_get(0)?);
        stats.oldest_pending = row.try_get(1)?;
        stats.dead = count(row.try_get(2)?);
        stats.sent = count(row.try_get(3)?);
        stats.prepared = count(row.try_get(4)?);
        Ok(stats)
    }

    async fn topic_stats(&self, since: DateTime<Utc>) -> Result<Vec<TopicStats>> {
        let rows = sqlx::query(self.sql.topic_stats.get())
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let mut stats = TopicStats::new(r.try_get::<String, _>(0)?);
                stats.pending = count(r.try_get(1)?);
                stats.prepared = count(r.try_get(2)?);
                stats.oldest_pending = r.try_get(3)?;
                stats.dead = count(r.try_get(4)?);
                stats.sent_since = count(r.try_get(5)?);
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
            .map(txmsg_sql::dead_letter::<PgDialect>)
            .transpose()
    }

    async fn purge_dead(&self, filter: &DeadFilter, before: DateTime<Utc>) -> Result<u64> {
        let limit = filter.limit_or_default();
        if limit == 0 {
            return Ok(0);
        }
        let done = sqlx::query(self.sql.purge_dead.get())
            .bind(filter.topic.as_deref())
            .bind(filter.key.as_deref())
            .bind(before)
            .bind(self::limit(limit))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    fn watch(&self, waker: Waker) -> Option<BoxFuture<'static, ()>> {
        let channel = self.notify.clone()?;
        let pool = self.pool.clone();
        Some(Box::pin(listen(pool, channel, waker)))
    }
}

impl HalfStore for PgStore {
    fn half_writer(&self) -> Arc<dyn HalfWriter<Postgres>> {
        Arc::clone(&self.half) as Arc<dyn HalfWriter<Postgres>>
    }

    async fn claim_prepared(&self, req: &ClaimRequest) -> Result<Vec<ClaimedHalf>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(self.sql.claim_prepared.get())
            .bind(req.lease.owner)
            .bind(req.lease.until)
            .bind(req.now)
            .bind(limit(req.limit))
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = rows
            .iter()
            .map(|r| {
                let checks = u32::try_from(r.try_get::<i32, _>("checks")?).unwrap_or(0);
                Ok(ClaimedHalf::new(
                    txmsg_sql::envelope::<PgDialect>(r)?,
                    checks,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
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
            .bind(id)
            .bind(owner)
            .bind(next_check_at)
            .bind(i32::from(counted))
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
            .bind(id)
            .bind(owner)
            .bind(reason)
            .bind(at)
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
        let notify = self.notify.as_ref().map(txmsg_core::Ident::as_str);
        txmsg_sql::settle::<PgDialect>(&mut conn, &self.sql.settle, id, resolve, now, notify).await
    }

    async fn resume(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool> {
        let done = sqlx::query(self.sql.resume.get())
            .bind(id)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

impl SqlStore for PgStore {
    type Database = Postgres;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> Arc<dyn OutboxWriter<Postgres>> {
        Arc::clone(&self.writer) as Arc<dyn OutboxWriter<Postgres>>
    }
}

impl InboxStore for PgStore {
    fn inbox(&self) -> Arc<dyn InboxWriter<Postgres>> {
        Arc::clone(&self.inbox) as Arc<dyn InboxWriter<Postgres>>
    }

    async fn add_consumer_dead(&self, dead: &ConsumerDeadLetter) -> Result<()> {
        let env = &dead.envelope;
        sqlx::query(self.sql.inbox()?.add_dead.get())
            .bind(dead.id)
            .bind(&dead.group)
            .bind(&env.topic)
            .bind(env.key.as_deref())
            .bind(&env.idempotency_key)
            .bind(txmsg_sql::headers_to_json(&env.headers))
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
            .bind(filter.key.as_deref())
            .bind(limit(filter.limit_or_default()))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(txmsg_sql::consumer_dead_letter::<PgDialect>)
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
            .map(txmsg_sql::consumer_dead_letter::<PgDialect>)
            .transpose()
    }

    async fn purge_inbox(&self, group: &str, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let sql = self.sql.inbox()?;
        if limit == 0 {
            return Ok(0);
        }
        let done = sqlx::query(sql.purge.get())
            .bind(before)
            .bind(self::limit(limit))
            .bind(group)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_never_shows_the_password() {
        let pool = PgPoolOptions::new()
            .connect_lazy("postgres://app:s3cret-pw@127.0.0.1:1/app")
            .unwrap();
        let store = PgStore::new(pool, Tables::default());
        let shown = format!("{store:?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("txmsg_outbox"), "{shown}");
    }

    #[tokio::test]
    async fn an_inbox_name_without_room_for_its_dead_letters_is_a_config_error() {
        // `events` + `_dead` is the outbox's name.
        let tables = Tables::default()
            .inbox("events")
            .unwrap()
            .outbox("events_dead")
            .unwrap();
        let err = PgStore::connect_with("postgres://127.0.0.1:1/x", tables.clone(), 1)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Config {
                    field: "inbox_table",
                    ..
                }
            ),
            "{err:?}"
        );
        // Built on a pool, the store reports it before running anything: the
        // pool points at a closed port.
        let pool = PgPoolOptions::new()
            .connect_lazy("postgres://127.0.0.1:1/x")
            .unwrap();
        let store = PgStore::new(pool, tables);
        for err in [
            store.migrate().await.unwrap_err(),
            store.purge_inbox("g", Utc::now(), 10).await.unwrap_err(),
            store
                .consumer_dead_letters("g", &DeadFilter::default())
                .await
                .unwrap_err(),
        ] {
            assert!(
                matches!(
                    err,
                    Error::Config {
                        field: "inbox_table",
                        ..
                    }
                ),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn zero_connections_is_a_config_error() {
        let err = PgStore::connect_with("postgres://127.0.0.1:1/x", Tables::default(), 0)
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
