//! `PgStore`: the outbox in PostgreSQL.

use std::future::Future;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Row};
use txmsg_core::{BoxFuture, ClaimRequest, Envelope, Ident, Result, Waker};
use txmsg_sql::{Backend, Heads, Notifying, StoreConfig, TableStore};
use uuid::Uuid;

use crate::dialect::PgBackend;
use crate::migrate;
use crate::sql;

/// A [`Store`](txmsg_core::Store) whose outbox and inbox are PostgreSQL tables.
///
/// It is also an [`InboxStore`](txmsg_core::consumer::InboxStore): consumer groups record processed
/// idempotency keys in the inbox table, in the handler's transaction, and
/// keep the messages they gave up on in a dead-letter table beside it
/// (`txmsg_consumer_dead` beside the default inbox, `<inbox>_dead` beside a
/// renamed one).
///
/// Every SQL statement is built once, when the store is made, from the
/// validated names in [`Tables`](txmsg_core::Tables); values are always bind parameters. Every
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
/// use txmsg::postgres::{PgStore, StoreConfig};
/// use txmsg::{Outbox, Message, Store, Tables};
///
/// # async fn demo() -> txmsg::Result<()> {
/// let tables = Tables::default().with_schema("billing")?;
/// let config = StoreConfig::from(tables).with_max_connections(20);
/// let store = PgStore::connect_with("postgres://app@db/app", config).await?;
/// store.migrate().await?;
///
/// let mut tx = Outbox::new(&store).begin().await?;
/// tx.enqueue(Message::new("invoices.created", &7)?.key(7)).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub type PgStore = TableStore<PgBackend>;

/// Relays of a PostgreSQL store can be woken by `LISTEN`/`NOTIFY`
/// ([`PgStore::with_notify`](TableStore::with_notify)).
impl Notifying for PgBackend {}

impl Backend for PgBackend {
    const STORE: &'static str = "PgStore";

    const SCHEMES: &'static [&'static str] = &["postgres", "postgresql"];

    type Own = sql::Own;

    type Capture = crate::Capture;

    fn outbox_writer(
        sql: &std::sync::Arc<txmsg_sql::Statements<sql::Own>>,
        channel: Option<String>,
        capture: &crate::Capture,
    ) -> std::sync::Arc<dyn txmsg_core::OutboxWriter<sqlx::Postgres>> {
        std::sync::Arc::new(crate::writer::PgOutboxWriter::new(sql, channel, capture))
    }

    async fn connect(url: &str, config: &StoreConfig) -> Result<PgPool> {
        let options: PgConnectOptions = txmsg_sql::connect_options(url, "a postgres")?;
        txmsg_sql::connect_once::<PgConnection>(&options, url, 5432).await?;
        Ok(PgPoolOptions::new()
            .max_connections(config.max_connections())
            .connect_with(options)
            .await?)
    }

    fn migrate(store: &PgStore) -> impl Future<Output = Result<()>> + Send {
        migrate::migrate(txmsg_core::SqlStore::pool(store), store.statements())
    }

    fn migration_script(store: &PgStore) -> String {
        let sql = &store.statements().own;
        sql.migrations
            .script::<PgBackend>("txmsg-postgres", "now()")
    }

    async fn claim(store: &PgStore, req: &ClaimRequest) -> Result<Vec<Envelope>> {
        let sql = &store.statements().own;
        let mut tx = store.begin_store_tx().await?;

        let heads = sqlx::query(sql.claim_heads.clone())
            .bind(req.now)
            .bind(req.dead_parks_key)
            .bind(i64::from(req.limit))
            .fetch_all(&mut *tx)
            .await?;
        let Some((Heads { mut ids, keyed }, mut budget)) =
            Heads::read_some::<PgBackend>(&heads, req.limit)?
        else {
            tx.commit().await?;
            return Ok(Vec::new());
        };

        // Followers: for each keyed head, the rows after it while they are
        // claimable, up to the per-key limit, within what is left of the limit.
        if budget > 0 && req.per_key_limit > 0 && !keyed.is_empty() {
            // One array per column, for `unnest`.
            let head_ids: Vec<Uuid> = keyed.iter().map(|(id, _, _)| *id).collect();
            let head_topics: Vec<&str> = keyed.iter().map(|(_, topic, _)| topic.as_str()).collect();
            let head_keys: Vec<&str> = keyed.iter().map(|(_, _, key)| key.as_str()).collect();
            let rows = sqlx::query(sql.claim_followers.clone())
                .bind(head_ids.as_slice())
                .bind(head_topics.as_slice())
                .bind(head_keys.as_slice())
                .bind(req.now)
                .bind(req.dead_parks_key)
                .bind(i64::from(req.per_key_limit))
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

        let rows = sqlx::query(sql.claim_lease.clone())
            .bind(ids.as_slice())
            .bind(req.lease.owner)
            .bind(req.lease.until)
            .bind(req.now)
            .fetch_all(&mut *tx)
            .await?;
        // Read before committing: a row that cannot be read is dead-lettered
        // in this transaction.
        let claimed =
            txmsg_sql::read_claimed::<Self>(&mut tx, store.statements(), &rows, req).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    fn watch(pool: &PgPool, channel: &Ident, waker: Waker) -> Option<BoxFuture<'static, ()>> {
        Some(Box::pin(listen(pool.clone(), channel.clone(), waker)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use txmsg_core::Tables;
    use txmsg_testkit::config::field_of;

    #[tokio::test]
    async fn an_inbox_name_without_room_for_its_dead_letters_is_a_config_error() {
        // `events` + `_dead` is the outbox's name.
        let tables = Tables::default()
            .with_inbox("events")
            .unwrap()
            .with_outbox("events_dead")
            .unwrap();
        let connected = PgStore::connect_with("postgres://127.0.0.1:1/x", tables.clone()).await;
        assert_eq!(field_of(connected), "inbox_table");
        // Built on a pool, the store reports it at once too.
        let pool = PgPoolOptions::new()
            .connect_lazy("postgres://127.0.0.1:1/x")
            .unwrap();
        assert_eq!(field_of(PgStore::new(pool, tables)), "inbox_table");
    }

    #[tokio::test]
    async fn zero_connections_is_a_config_error() {
        let connected = PgStore::connect_with(
            "postgres://127.0.0.1:1/x",
            StoreConfig::default().with_max_connections(0),
        )
        .await;
        assert_eq!(field_of(connected), "max_connections");
    }
}
