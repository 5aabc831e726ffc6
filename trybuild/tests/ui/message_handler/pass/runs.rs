//! Registers handlers, finds their records in the registry, calls a
//! generated entry point through its record, and runs the handlers through
//! a consumer on in-memory SQLite and the in-process broker: applied once
//! per group, retried, dead-lettered with the handler's error, replayed.
use std::any::type_name;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::types::Uuid;
use sqlx::types::chrono::Utc;
use txmsg::consumer::{Consumer, ConsumerConfig, HandlerOutcome, registered_handlers};
use txmsg::memory::MemoryBroker;
use txmsg::prelude::*;
use txmsg::sqlite::SqliteStore;
use txmsg::{DeadFilter, Envelope, Tx, message_handler};

#[derive(Debug, serde::Deserialize)]
struct OrderPlaced {
    id: i64,
    total_cents: i64,
}

#[derive(Debug, thiserror::Error)]
enum BillingError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("order {0} has no total")]
    Empty(i64),
}

/// Until set, `bill` refuses orders without a total.
static BILL_EMPTY_ORDERS: AtomicBool = AtomicBool::new(false);

const BILL_LINE: u32 = line!() + 2;
#[message_handler(topic = "orders.placed", group = "billing", max_attempts = 2)]
async fn bill(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    envelope: &Envelope,
) -> Result<(), BillingError> {
    if order.total_cents == 0 && !BILL_EMPTY_ORDERS.load(Ordering::SeqCst) {
        return Err(BillingError::Empty(order.id));
    }
    sqlx::query("INSERT INTO invoices (order_id, cents, message) VALUES (?, ?, ?)")
        .bind(order.id)
        .bind(order.total_cents)
        .bind(&envelope.idempotency_key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[message_handler(topic = "orders.cancelled", group = "billing")]
async fn cancel_invoice(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<(), BillingError> {
    sqlx::query("DELETE FROM invoices WHERE order_id = ?")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// Another group, same topic.
#[message_handler(topic = "orders.placed", group = "shipping", max_attempts = 1)]
async fn ship(tx: &mut Tx<'_, sqlx::Sqlite>, order: OrderPlaced) -> Result<(), String> {
    let _ = (tx, order.id);
    Ok(())
}

fn envelope(topic: &str, idempotency_key: &str, payload: &str) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        topic,
        idempotency_key,
        payload.as_bytes().to_vec(),
        Utc::now(),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // The registry has every handler, sorted by group, topic and name.
    let all = registered_handlers();
    let summary: Vec<_> = all
        .iter()
        .map(|h| (h.group, h.topic, h.max_attempts, (h.database)()))
        .collect();
    let sqlite = type_name::<sqlx::Sqlite>();
    assert_eq!(
        summary,
        [
            ("billing", "orders.cancelled", 5, sqlite),
            ("billing", "orders.placed", 2, sqlite),
            ("shipping", "orders.placed", 1, sqlite),
        ]
    );
    let record = all[1];
    assert!(record.name.ends_with("::bill"), "{}", record.name);
    assert!(record.file.ends_with("runs.rs"), "{}", record.file);
    assert_eq!(record.line, BILL_LINE);

    // The generated entry point checks the database of what it runs with.
    let placed = r#"{"id": 1, "total_cents": 4200}"#;
    let outcome = (record.call)(&(), &envelope("orders.placed", "m-1", placed), None).await;
    assert_eq!(outcome, HandlerOutcome::WrongDatabase(sqlite));

    // A consumer of each group on one database and one broker.
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    sqlx::query("CREATE TABLE invoices (order_id INTEGER NOT NULL, cents INTEGER NOT NULL, message TEXT NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    let broker = MemoryBroker::new();
    let config = |group: &str| ConsumerConfig::new(group).with_backoff_min(Duration::from_millis(5)).with_backoff_max(Duration::from_millis(20));
    let billing = Consumer::new(store.clone(), broker.clone(), config("billing")).unwrap();
    let topics: Vec<_> = billing.handlers().unwrap().iter().map(|h| h.topic).collect();
    assert_eq!(topics, ["orders.cancelled", "orders.placed"]);
    let billing = billing.start().await.unwrap();
    let shipping = Consumer::new(store.clone(), broker.clone(), config("shipping"))
        .unwrap()
        .start()
        .await
        .unwrap();

    // Delivered twice, applied once per group.
    let first = envelope("orders.placed", "m-1", placed);
    broker.publish(&first).await.unwrap();
    broker.publish(&first).await.unwrap();
    wait_until(|| {
        let (b, s) = (billing.stats(), shipping.stats());
        b.applied + b.duplicates == 2 && s.applied + s.duplicates == 2
    })
    .await;
    assert_eq!((billing.stats().applied, billing.stats().duplicates), (1, 1));
    assert_eq!((shipping.stats().applied, shipping.stats().duplicates), (1, 1));
    assert_eq!(invoices(&store).await, [(1, 4200, "m-1".to_owned())]);

    // A failing handler is tried `max_attempts` times, then the message is
    // dead with the handler's error; shipping applies it.
    broker
        .publish(&envelope("orders.placed", "m-2", r#"{"id": 2, "total_cents": 0}"#))
        .await
        .unwrap();
    wait_until(|| billing.stats().dead == 1 && shipping.stats().applied == 2).await;
    let dead = billing.dead_letters(&DeadFilter::default()).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert!(dead[0].reason.ends_with("order 2 has no total"), "{}", dead[0].reason);

    // Replayed once the handler accepts it, through the same entry point.
    BILL_EMPTY_ORDERS.store(true, Ordering::SeqCst);
    assert_eq!(billing.replay(dead[0].id).await.unwrap(), HandlerOutcome::Applied);
    assert!(billing.dead_letters(&DeadFilter::default()).await.unwrap().is_empty());

    // A handler without the envelope (a replay is not counted as applied).
    broker
        .publish(&envelope("orders.cancelled", "m-3", "1"))
        .await
        .unwrap();
    wait_until(|| billing.stats().applied == 2).await;
    assert_eq!(invoices(&store).await, [(2, 0, "m-2".to_owned())]);

    billing.shutdown().await;
    shipping.shutdown().await;

    // The handler is still a plain function.
    let mut tx = txmsg::Outbox::new(&store).begin().await.unwrap();
    let order = OrderPlaced {
        id: 3,
        total_cents: 1,
    };
    bill(&mut tx, order, &first).await.unwrap();
    tx.rollback().await.unwrap();
}

async fn invoices(store: &SqliteStore) -> Vec<(i64, i64, String)> {
    sqlx::query_as("SELECT order_id, cents, message FROM invoices ORDER BY order_id")
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// Waits (at most 10 s) for `done`.
async fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out");
}
