//! Runs the generated code against a store that writes outbox rows to a plain
//! table: what is written, when, and what rolls back.
use std::sync::Arc;

use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use sqlx::types::Uuid;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{Row, Sqlite, SqliteConnection};
use txmsg::adapter::{BoxFuture, ClaimRequest, Failure, Inserted, Lease, OutboxWriter};
use txmsg::{
    DeadFilter, DeadLetter, Envelope, Error, Outbox, OutboxStats, SqlStore, Store, Tx,
    transactional_message,
};

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Txmsg(#[from] Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("invalid order")]
    Invalid,
}

#[derive(Debug, serde::Serialize)]
struct OrderPlaced {
    id: i64,
    customer: String,
}

#[transactional_message(
    topic = "orders.placed",
    key = customer,
    idempotency_key = format!("request-{request}"),
    ttl = "30m",
)]
async fn place_order(
    tx: &mut Tx<'_, Sqlite>,
    request: u32,
    id: i64,
    customer: String,
) -> Result<OrderPlaced, AppError> {
    if id < 0 {
        return Err(AppError::Invalid);
    }
    sqlx::query("INSERT INTO orders (id, customer) VALUES (?, ?)")
        .bind(id)
        .bind(&customer)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id, customer })
}

#[transactional_message(topic = "orders.shipped")]
async fn ship(tx: &mut Tx<'_, Sqlite>, id: i64) -> Result<i64, AppError> {
    sqlx::query("UPDATE orders SET shipped = 1 WHERE id = ?")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

#[transactional_message(topic = "orders.fast-tracked", ttl = "500ms")]
async fn fast_track(
    tx: &mut Tx<'_, Sqlite>,
    request: u32,
    id: i64,
    customer: String,
) -> Result<i64, AppError> {
    place_order(tx, request, id, customer).await?;
    ship(tx, id).await
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // One connection: an in-memory database is per connection.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    for ddl in [
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, \
         shipped INTEGER NOT NULL DEFAULT 0)",
        "CREATE TABLE outbox (n INTEGER PRIMARY KEY, topic TEXT NOT NULL, key TEXT, \
         idempotency_key TEXT NOT NULL, ttl_ms INTEGER, payload BLOB NOT NULL, \
         UNIQUE (topic, idempotency_key))",
    ] {
        sqlx::query(ddl).execute(&pool).await.unwrap();
    }
    let outbox = Outbox::new(&TableStore { pool: pool.clone() });

    // The one-call form commits the order and its message.
    let placed = place_order_and_commit(&outbox, 1, 10, "ada".into())
        .await
        .unwrap();
    assert_eq!((placed.id, placed.customer.as_str()), (10, "ada"));
    assert_eq!(count(&pool, "orders").await, 1);
    let rows = outbox_rows(&pool).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].topic, "orders.placed");
    assert_eq!(rows[0].key.as_deref(), Some("ada"));
    assert_eq!(rows[0].idempotency_key, "request-1");
    assert_eq!(rows[0].ttl_ms, Some(30 * 60 * 1000));
    assert_eq!(rows[0].payload, br#"{"id":10,"customer":"ada"}"#);

    // An error from the body is returned as is, and nothing is written.
    let error = place_order_and_commit(&outbox, 2, -1, "bob".into())
        .await
        .unwrap_err();
    assert!(matches!(error, AppError::Invalid), "{error:?}");
    assert_eq!(count(&pool, "orders").await, 1);
    assert_eq!(count(&pool, "outbox").await, 1);

    // A retried request is a duplicate, and its business rows roll back.
    let error = place_order_and_commit(&outbox, 1, 11, "cy".into())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, AppError::Txmsg(e) if e.is_duplicate()),
        "{error:?}"
    );
    assert_eq!(count(&pool, "orders").await, 1);
    assert_eq!(count(&pool, "outbox").await, 1);

    // Calls in the caller's transaction commit or roll back together.
    let mut tx = outbox.begin().await.unwrap();
    place_order(&mut tx, 3, 12, "dee".into()).await.unwrap();
    ship(&mut tx, 12).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count(&pool, "orders").await, 1);
    assert_eq!(count(&pool, "outbox").await, 1);

    let mut tx = outbox.begin().await.unwrap();
    place_order(&mut tx, 3, 12, "dee".into()).await.unwrap();
    ship(&mut tx, 12).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&pool, "orders").await, 2);
    let rows = outbox_rows(&pool).await;
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2].topic, "orders.shipped");
    assert_eq!(rows[2].key, None);
    assert_eq!(rows[2].ttl_ms, None);
    assert!(
        Uuid::parse_str(&rows[2].idempotency_key).is_ok(),
        "default key is a UUID"
    );
    assert_eq!(rows[2].payload, b"12");

    // Annotated functions calling each other: three messages, inner ones first.
    let id = fast_track_and_commit(&outbox, 4, 13, "eve".into())
        .await
        .unwrap();
    assert_eq!(id, 13);
    let topics: Vec<_> = outbox_rows(&pool)
        .await
        .into_iter()
        .map(|row| row.topic)
        .collect();
    assert_eq!(
        topics[3..],
        ["orders.placed", "orders.shipped", "orders.fast-tracked"].map(String::from)
    );
    assert_eq!(outbox_rows(&pool).await[5].ttl_ms, Some(500));
}

async fn count(pool: &SqlitePool, table: &str) -> i64 {
    let sql = match table {
        "orders" => "SELECT COUNT(*) FROM orders",
        _ => "SELECT COUNT(*) FROM outbox",
    };
    sqlx::query(sql).fetch_one(pool).await.unwrap().get(0)
}

struct Row_ {
    topic: String,
    key: Option<String>,
    idempotency_key: String,
    ttl_ms: Option<i64>,
    payload: Vec<u8>,
}

async fn outbox_rows(pool: &SqlitePool) -> Vec<Row_> {
    sqlx::query("SELECT topic, key, idempotency_key, ttl_ms, payload FROM outbox ORDER BY n")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|row| Row_ {
            topic: row.get(0),
            key: row.get(1),
            idempotency_key: row.get(2),
            ttl_ms: row.get(3),
            payload: row.get(4),
        })
        .collect()
}

/// A store that only knows how to write: enough for producers.
#[derive(Debug, Clone)]
struct TableStore {
    pool: SqlitePool,
}

#[derive(Debug)]
struct TableWriter;

impl OutboxWriter<Sqlite> for TableWriter {
    fn insert<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        envelope: &'a Envelope,
        _lease: Option<Lease>,
    ) -> BoxFuture<'a, txmsg::Result<Inserted>> {
        Box::pin(async move {
            let ttl_ms = envelope
                .expires_at
                .map(|at| (at - envelope.created_at).num_milliseconds());
            let done = sqlx::query(
                "INSERT INTO outbox (topic, key, idempotency_key, ttl_ms, payload) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(&envelope.topic)
            .bind(&envelope.key)
            .bind(&envelope.idempotency_key)
            .bind(ttl_ms)
            .bind(&envelope.payload)
            .execute(conn)
            .await?;
            Ok(if done.rows_affected() == 1 {
                Inserted::Unleased
            } else {
                Inserted::Duplicate
            })
        })
    }
}

impl SqlStore for TableStore {
    type Database = Sqlite;

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn writer(&self) -> Arc<dyn OutboxWriter<Sqlite>> {
        Arc::new(TableWriter)
    }
}

const NO: Error = Error::Unsupported("not needed by producers");

impl Store for TableStore {
    async fn migrate(&self) -> txmsg::Result<()> {
        Err(NO)
    }
    async fn claim(&self, _: &ClaimRequest) -> txmsg::Result<Vec<Envelope>> {
        Err(NO)
    }
    async fn mark_sent(&self, _: &[Uuid], _: DateTime<Utc>) -> txmsg::Result<()> {
        Err(NO)
    }
    async fn mark_failed(&self, _: &Failure) -> txmsg::Result<()> {
        Err(NO)
    }
    async fn mark_dead(&self, _: Uuid, _: Uuid, _: &str, _: DateTime<Utc>) -> txmsg::Result<()> {
        Err(NO)
    }
    async fn release(&self, _: &[Uuid], _: Uuid) -> txmsg::Result<()> {
        Err(NO)
    }
    async fn dead_letters(&self, _: &DeadFilter) -> txmsg::Result<Vec<DeadLetter>> {
        Err(NO)
    }
    async fn replay(&self, _: Uuid, _: DateTime<Utc>) -> txmsg::Result<bool> {
        Err(NO)
    }
    async fn purge_sent(&self, _: DateTime<Utc>, _: u32) -> txmsg::Result<u64> {
        Err(NO)
    }
    async fn stats(&self) -> txmsg::Result<OutboxStats> {
        Err(NO)
    }
    async fn topic_stats(&self, _: DateTime<Utc>) -> txmsg::Result<Vec<txmsg::TopicStats>> {
        Err(NO)
    }
    async fn dead_letter(&self, _: Uuid) -> txmsg::Result<Option<DeadLetter>> {
        Err(NO)
    }
    async fn purge_dead(&self, _: &DeadFilter, _: DateTime<Utc>) -> txmsg::Result<u64> {
        Err(NO)
    }
}
