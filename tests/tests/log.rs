//! Log capture end to end against the real PostgreSQL and RabbitMQ: the
//! same `#[transactional_message]` code as in table mode, the store in log
//! capture, a `LogRelay` publishing from its replication slot; counted at
//! the queue.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use txmsg::postgres::{Capture, LogRelay, LogRelayConfig};
use txmsg::{Error, Message, Outbox, Store, Tx};
use txmsg_tests::{PgSchema, Rabbit, database_url, unique};

#[derive(Debug, Serialize)]
struct ItemAdded {
    id: i64,
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("refused by business rule")]
    Refused,
    #[error(transparent)]
    Txmsg(#[from] Error),
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Txmsg(e.into())
    }
}

/// Inserts an item; a negative id is refused after the insert.
#[txmsg::transactional_message(topic = "items.logged", key = format!("k{}", id.abs() % 5), idempotency_key = format!("item-{id}"))]
async fn add_item(tx: &mut Tx<'_, sqlx::Postgres>, id: i64) -> Result<ItemAdded, AppError> {
    sqlx::query("INSERT INTO items (id) VALUES ($1)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    if id < 0 {
        return Err(AppError::Refused);
    }
    Ok(ItemAdded { id })
}

/// Drops the slot and publication named `name`.
async fn drop_slot(pg: &PgSchema, name: &str) {
    for _ in 0..50 {
        let dropped = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
        )
        .bind(name)
        .execute(&pg.pool)
        .await;
        if dropped.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `name` is letters, digits and `_`.
    let sql = format!("DROP PUBLICATION IF EXISTS \"{name}\"");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&pg.pool)
        .await
        .expect("drop publication");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_capture_publishes_each_committed_message_once_in_commit_order() {
    let pg = PgSchema::new().await;
    pg.exec("CREATE TABLE items (id BIGINT PRIMARY KEY)").await;
    let rabbit = Rabbit::new().await;
    let name = format!("p_{}", unique());
    let store = pg.store.clone().with_capture(Capture::log(&name).unwrap());
    let config = LogRelayConfig::default()
        .with_slot(&name)
        .and_then(|c| c.with_publication(&name))
        .unwrap();
    let relay = LogRelay::start(&store, &database_url(), rabbit.broker.clone(), config)
        .await
        .unwrap();
    let outbox = Outbox::new(&store);

    let mut committed = Vec::new();
    for id in 1..=200i64 {
        // Every tenth refused by the business rule: nothing written.
        let id = if id % 10 == 0 { -id } else { id };
        match add_item_and_commit(&outbox, id).await {
            Ok(_) => committed.push(id),
            Err(AppError::Refused) => assert!(id < 0),
            Err(e) => panic!("item {id}: {e}"),
        }
    }
    // A repeated idempotency key: refused at commit, its insert undone.
    let mut tx = outbox.begin().await.unwrap();
    sqlx::query("INSERT INTO items (id) VALUES (1001)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let again = Message::new("items.logged", &ItemAdded { id: 1001 })
        .unwrap()
        .key("k1")
        .idempotency_key("item-1");
    tx.enqueue(again).await.unwrap();
    let refused = tx.commit().await;
    assert!(
        matches!(&refused, Err(e) if e.is_duplicate()),
        "{refused:?}"
    );

    let got = rabbit
        .drain(
            committed.len(),
            Duration::from_millis(700),
            Duration::from_secs(30),
        )
        .await;
    relay.shutdown().await;
    drop_slot(&pg, &name).await;

    let keys: Vec<&str> = got.iter().map(|r| r.idempotency_key.as_str()).collect();
    let unique_keys: HashSet<&str> = keys.iter().copied().collect();
    assert_eq!(unique_keys.len(), keys.len(), "nothing published twice");
    let want: HashSet<String> = committed.iter().map(|id| format!("item-{id}")).collect();
    assert_eq!(
        unique_keys,
        want.iter().map(String::as_str).collect::<HashSet<_>>(),
        "every committed message, nothing else"
    );
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &got {
        per_key
            .entry(r.key.clone().unwrap())
            .or_default()
            .push(r.payload["id"].as_i64().unwrap());
    }
    for (key, ids) in per_key {
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted, "key {key} in commit order");
    }
    assert_eq!(pg.count("items").await, 180, "refused items rolled back");
    assert_eq!(store.stats().await.unwrap().pending, 0, "no outbox row");
    rabbit.cleanup().await;
    pg.drop_schema().await;
}
