//! `MySqlStore`: the outbox in MySQL or MariaDB.

use std::sync::Arc;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPoolOptions, MySqlRow};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, MySql, MySqlPool, Row};
use txmsg_core::half::ClaimedHalf;
use txmsg_core::{ClaimRequest, Envelope, Error, Result, SqlStore};
use uuid::Uuid;

use txmsg_sql::{Arg, Backend, Heads, Purge, SqlQuery, StoreConfig, TableStore};

use crate::dialect::MySqlBackend;
use crate::migrate;
use crate::sql::{self, Sql};
use crate::writer::MySqlInbox;

/// How often a claim is tried when the server ends it to break a deadlock.
const CLAIM_ATTEMPTS: usize = 3;

/// A [`Store`](txmsg_core::Store) whose outbox and inbox are MySQL (8 or later) or MariaDB
/// (10.6 or later) tables.
///
/// It is also an [`InboxStore`](txmsg_core::consumer::InboxStore): consumer groups record processed
/// idempotency keys in the inbox table, in the handler's transaction, and
/// keep the messages they gave up on in a dead-letter table beside it
/// (`txmsg_consumer_dead` beside the default inbox, `<inbox>_dead` beside a
/// renamed one). With [`Tables::schema`](txmsg_core::Tables::schema) set, the tables live in that
/// database.
///
/// Every SQL statement is built once, when the store is made, from the
/// validated names in [`Tables`](txmsg_core::Tables); values are always bind parameters. Every
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
/// use txmsg_core::{Message, Outbox, SqlStore, Store, Tables};
/// use txmsg_mysql::{MySqlStore, StoreConfig};
///
/// # async fn demo() -> txmsg_core::Result<()> {
/// let tables = Tables::default().with_schema("billing")?;
/// let config = StoreConfig::from(tables).with_max_connections(20);
/// // MariaDB: `mariadb://` or `mysql://`.
/// let store = MySqlStore::connect_with("mariadb://app@db/app", config).await?;
/// store.migrate().await?;
///
/// // A transaction begun with sqlx, wrapped to carry messages too.
/// let txn = store.pool().begin().await?;
/// let mut tx = Outbox::new(&store).wrap(txn);
/// sqlx::query("UPDATE invoices SET state = 'issued' WHERE id = ?")
///     .bind(7)
///     .execute(&mut *tx)
///     .await?;
/// tx.enqueue(Message::new("invoices.issued", &7)?.key(7)).await?;
/// tx.commit().await
/// # }
/// ```
pub type MySqlStore = TableStore<MySqlBackend>;

impl Backend for MySqlBackend {
    const STORE: &'static str = "MySqlStore";

    const SCHEMES: &'static [&'static str] = &["mysql", "mariadb"];

    type Own = sql::Own;

    type Capture = ();

    fn outbox_writer(
        sql: &std::sync::Arc<txmsg_sql::Statements<sql::Own>>,
        channel: Option<String>,
        _capture: &(),
    ) -> std::sync::Arc<dyn txmsg_core::OutboxWriter<sqlx::MySql>> {
        std::sync::Arc::new(crate::commit::MySqlOutboxWriter::new(sql, channel))
    }

    /// Every connection runs in strict mode (`STRICT_TRANS_TABLES`), so a
    /// value too long for its column is refused rather than cut. A pool
    /// given to [`TableStore::new`] should do the same.
    async fn connect(url: &str, config: &StoreConfig) -> Result<MySqlPool> {
        // The driver knows MariaDB by the `mysql` scheme.
        let url = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => {
                format!("mysql://{rest}")
            }
            _ => url.to_owned(),
        };
        let options: MySqlConnectOptions = txmsg_sql::connect_options(&url, "a mysql")?;
        txmsg_sql::connect_once::<MySqlConnection>(&options, &url, 3306).await?;
        Ok(MySqlPoolOptions::new()
            .max_connections(config.max_connections())
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
            .connect_with(options)
            .await?)
    }

    fn inbox(sql: &Arc<Sql>) -> Arc<dyn txmsg_core::consumer::InboxWriter<MySql>> {
        Arc::new(MySqlInbox {
            sql: Arc::clone(sql),
            shared: txmsg_sql::SqlInbox::new(
                sql.inbox.record.clone(),
                sql.inbox.remove_dead.clone(),
            ),
        })
    }

    async fn migrate(store: &MySqlStore) -> Result<()> {
        let sql = store.statements();
        migrate::migrate(store.pool(), sql).await?;
        // What the inbox knew of the tables may have changed.
        sql.own
            .inbox
            .without_legacy_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        Ok(())
    }

    fn migration_script(store: &MySqlStore) -> String {
        let sql = &store.statements().own;
        sql.migrations
            .script::<MySqlBackend>("txmsg-mysql", "CURRENT_TIMESTAMP(6)")
    }

    async fn claim(store: &MySqlStore, req: &ClaimRequest) -> Result<Vec<Envelope>> {
        let mut attempt = 1;
        loop {
            match claim_once(store, req).await {
                Err(e) if attempt < CLAIM_ATTEMPTS && is_retryable(&e) => {
                    tracing::debug!(error = %e, attempt, "claim ended by the server; retrying");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// Picks the rows with the shared statement (`FOR UPDATE SKIP LOCKED`),
    /// then leases them by id, in one `READ COMMITTED` transaction.
    async fn claim_prepared(store: &MySqlStore, req: &ClaimRequest) -> Result<Vec<ClaimedHalf>> {
        let sql = store.statements();
        let mut conn = read_committed(store.pool()).await?;
        let mut tx = conn.begin().await?;
        let args = [
            Arg::Id(req.lease.owner),
            Arg::Time(req.lease.until),
            Arg::Time(req.now),
            Arg::Int(i64::from(req.limit)),
        ];
        let rows = sql.claim_prepared.fetch_all::<Self>(&mut tx, &args).await?;
        let claimed = rows
            .iter()
            .map(|r| {
                let checks = u32::try_from(r.try_get::<i32, _>("checks")?).unwrap_or(0);
                Ok(ClaimedHalf::new(
                    txmsg_sql::envelope::<MySqlBackend>(r)?,
                    checks,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        if !claimed.is_empty() {
            let mut lease = sqlx::query(sql.own.claim_lease.with_ids(claimed.len()))
                .bind(req.lease.owner)
                .bind(req.lease.until);
            for p in &claimed {
                lease = lease.bind(p.envelope.id);
            }
            lease.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Picks the rows (or inbox keys) with the shared statement (`SKIP
    /// LOCKED`), then deletes them by id (or key), in one `READ COMMITTED`
    /// transaction.
    async fn purge(store: &MySqlStore, what: Purge<'_>, args: &[Arg<'_>]) -> Result<u64> {
        let sql = store.statements();
        let mut conn = read_committed(store.pool()).await?;
        let mut tx = conn.begin().await?;
        let rows = what.statement(sql).fetch_all::<Self>(&mut tx, args).await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let delete = match what {
            Purge::Sent => by_id(&sql.own.purge_delete, &rows)?,
            Purge::Dead => by_id(&sql.own.purge_dead_delete, &rows)?,
            Purge::Inbox(group) => {
                let mut q =
                    sqlx::query(sql.own.inbox.purge_delete.with_pairs(rows.len())).bind(group);
                for row in &rows {
                    q = q
                        .bind(row.try_get::<String, _>("topic")?)
                        .bind(row.try_get::<String, _>("idempotency_key")?);
                }
                q
            }
        };
        let done = delete.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

/// `delete` with the ids of the rows `rows` picked.
fn by_id<'q>(delete: &sql::Text, rows: &[MySqlRow]) -> Result<SqlQuery<'q, MySqlBackend>> {
    let mut q = sqlx::query(delete.with_ids(rows.len()));
    for row in rows {
        q = q.bind(row.try_get::<Uuid, _>("id")?);
    }
    Ok(q)
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

/// One claim, in one `READ COMMITTED` transaction.
async fn claim_once(store: &MySqlStore, req: &ClaimRequest) -> Result<Vec<Envelope>> {
    let sql = &store.statements().own;
    let mut conn = read_committed(SqlStore::pool(store)).await?;
    let mut tx = conn.begin().await?;
    let candidates: Vec<Uuid> = sqlx::query_scalar(sql.claim_heads.get())
        .bind(req.now)
        .bind(req.now)
        .bind(req.dead_parks_key)
        .bind(i64::from(req.limit))
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
    let Some((Heads { mut ids, keyed }, mut budget)) =
        Heads::read_some::<MySqlBackend>(&heads, req.limit)?
    else {
        tx.commit().await?;
        return Ok(Vec::new());
    };

    // Followers: for each keyed head, the rows after it while they are
    // claimable, up to the per-key limit, within what is left of the limit.
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
                .bind(i64::from(req.per_key_limit))
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
    if !rows.is_empty() {
        // Leased first, so that a row that cannot be read is dead-lettered
        // as this claim's.
        let mut lease = sqlx::query(sql.claim_lease.with_ids(rows.len()))
            .bind(req.lease.owner)
            .bind(req.lease.until);
        for row in &rows {
            lease = lease.bind(row.try_get::<Uuid, _>("id")?);
        }
        lease.execute(&mut *tx).await?;
    }
    let claimed =
        txmsg_sql::read_claimed::<MySqlBackend>(&mut tx, store.statements(), &rows, req).await?;
    tx.commit().await?;
    Ok(claimed)
}
