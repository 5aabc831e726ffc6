//! Log capture against a real PostgreSQL: producers write records to the
//! write-ahead log (no outbox row), a `LogRelay` reads them from a
//! replication slot and publishes them, counted at the broker.
//!
//! The server needs `wal_level = logical` (`scripts/services.sh` sets it).
//! Each test has a schema, a record prefix, a publication and a slot of its
//! own, and drops them at the end.

use std::collections::{BTreeMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use txmsg_core::{Envelope, Error, Message, Outbox, Store, Tables};
use txmsg_memory::MemoryBroker;
use txmsg_postgres::{Capture, LogRelay, LogRelayConfig, PgStore};
use uuid::Uuid;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url())
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {}: {e}", url()))
}

/// One test's names: schema, record prefix, publication and slot.
#[derive(Debug, Clone)]
struct Names {
    schema: String,
    prefix: String,
    topic: String,
}

impl Names {
    fn new() -> Self {
        let tag = Uuid::now_v7().simple().to_string();
        Names {
            schema: format!("txmsg_log_{tag}"),
            prefix: format!("p_{tag}"),
            topic: format!("log.t{tag}"),
        }
    }

    fn relay_config(&self) -> LogRelayConfig {
        LogRelayConfig::default()
            .with_slot(&self.prefix)
            .and_then(|c| c.with_publication(&self.prefix))
            .expect("valid names")
    }
}

/// Drops `names`' slot (ending whatever session still holds it),
/// publication and schema.
async fn clean_up(pool: &PgPool, names: &Names) {
    for _ in 0..50 {
        sqlx::query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
        )
        .bind(&names.prefix)
        .execute(pool)
        .await
        .expect("end the slot's session");
        let dropped = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
        )
        .bind(&names.prefix)
        .execute(pool)
        .await;
        if dropped.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The names are letters, digits and `_` only.
    for statement in [
        format!("DROP PUBLICATION IF EXISTS \"{}\"", names.prefix),
        format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", names.schema),
    ] {
        sqlx::query(AssertSqlSafe(statement))
            .execute(pool)
            .await
            .expect("clean up");
    }
}

/// Runs `test` with a migrated store in log capture and cleans up after it,
/// also when it panics.
async fn with_log_store<F, Fut>(test: F)
where
    F: FnOnce(PgPool, PgStore, Names) -> Fut,
    Fut: Future<Output = ()>,
{
    let pool = pool().await;
    let names = Names::new();
    let store = PgStore::new(
        pool.clone(),
        Tables::default()
            .with_schema(&names.schema)
            .expect("valid schema"),
    )
    .expect("store")
    .with_capture(Capture::log(&names.prefix).expect("valid prefix"));
    store.migrate().await.expect("migrate");
    let outcome = AssertUnwindSafe(test(pool.clone(), store, names.clone()))
        .catch_unwind()
        .await;
    clean_up(&pool, &names).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Commits one transaction per entry of `keys`: a message of that key whose
/// payload is its number; rolls back every `rollback_every`-th instead.
/// The numbers committed, in commit order.
async fn produce(
    store: &PgStore,
    topic: &str,
    keys: &[&str],
    from: u64,
    rollback_every: u64,
) -> Vec<u64> {
    let outbox = Outbox::new(store);
    let mut committed = Vec::new();
    for (n, key) in (from..).zip(keys) {
        let mut tx = outbox.begin().await.expect("begin");
        tx.enqueue(Message::new(topic, &n).expect("valid").key(*key))
            .await
            .expect("enqueue");
        if rollback_every > 0 && n % rollback_every == 0 {
            tx.rollback().await.expect("rollback");
        } else {
            tx.commit().await.expect("commit");
            committed.push(n);
        }
    }
    committed
}

/// Takes what `sub` receives until `want` messages came or 20 s passed,
/// then whatever else arrives within half a second.
async fn receive(sub: &mut txmsg_memory::MemorySubscription, want: usize) -> Vec<Envelope> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < want {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(e)) => got.push(e),
            _ => break,
        }
    }
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await {
        got.push(e);
    }
    got
}

/// A relay of `store` on the test's slot to `broker`.
async fn relay(
    store: &PgStore,
    names: &Names,
    broker: &MemoryBroker,
) -> txmsg_postgres::LogRelayHandle {
    LogRelay::start(store, &url(), broker.clone(), names.relay_config())
        .await
        .expect("start the relay")
}

fn number(e: &Envelope) -> u64 {
    serde_json::from_slice(&e.payload).expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_messages_are_published_once_in_commit_order_and_rolled_back_ones_never() {
    with_log_store(|_pool, store, names| async move {
        let broker = MemoryBroker::new();
        let mut sub = broker.observe(&names.topic);
        let relay = relay(&store, &names, &broker).await;
        let keys: Vec<&str> = (0..300).map(|i| ["a", "b", "c", "d", "e"][i % 5]).collect();
        let committed = produce(&store, &names.topic, &keys, 1, 7).await;
        let got = receive(&mut sub, committed.len()).await;
        relay.shutdown().await;

        let numbers: Vec<u64> = got.iter().map(number).collect();
        let unique: HashSet<u64> = numbers.iter().copied().collect();
        assert_eq!(unique.len(), numbers.len(), "nothing published twice");
        assert_eq!(
            unique,
            committed.iter().copied().collect::<HashSet<_>>(),
            "every committed message, no rolled-back one"
        );
        let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in &got {
            per_key
                .entry(e.key.clone().expect("a key"))
                .or_default()
                .push(number(e));
        }
        for (key, seen) in per_key {
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            assert_eq!(seen, sorted, "key {key} in commit order");
        }
        let stats = store.stats().await.expect("stats");
        assert_eq!(stats.pending + stats.sent, 0, "no outbox row is written");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_started_again_goes_on_after_what_it_confirmed() {
    with_log_store(|_pool, store, names| async move {
        let broker = MemoryBroker::new();
        let mut sub = broker.observe(&names.topic);
        let first = relay(&store, &names, &broker).await;
        let before = produce(&store, &names.topic, &["k"; 40], 1, 0).await;
        let got = receive(&mut sub, before.len()).await;
        assert_eq!(got.len(), before.len());
        first.shutdown().await;

        // Written while no relay runs: kept in the slot.
        let while_down = produce(&store, &names.topic, &["k"; 40], 41, 0).await;
        let second = relay(&store, &names, &broker).await;
        let got = receive(&mut sub, while_down.len()).await;
        second.shutdown().await;
        assert_eq!(
            got.iter().map(number).collect::<Vec<_>>(),
            while_down,
            "exactly the messages after the confirmed position, in order"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_on_the_slot_takes_over_when_the_first_is_gone() {
    with_log_store(|_pool, store, names| async move {
        let broker = MemoryBroker::new();
        let mut sub = broker.observe(&names.topic);
        let first = relay(&store, &names, &broker).await;
        let sent = produce(&store, &names.topic, &["k"; 20], 1, 0).await;
        assert_eq!(receive(&mut sub, sent.len()).await.len(), sent.len());
        // The second waits while the first holds the slot.
        let second = relay(&store, &names, &broker).await;
        first.abort();
        let after = produce(&store, &names.topic, &["k"; 20], 21, 0).await;
        let got = receive(&mut sub, after.len()).await;
        second.shutdown().await;
        let numbers: Vec<u64> = got.iter().map(number).collect();
        // The first may have died before telling the server its last
        // confirmed position: those messages come again, before the rest.
        let again: Vec<u64> = numbers.iter().copied().filter(|n| *n <= 20).collect();
        let new: Vec<u64> = numbers.iter().copied().filter(|n| *n > 20).collect();
        assert_eq!(new, after, "every message after the takeover, in order");
        let mut sorted = again.clone();
        sorted.sort_unstable();
        assert_eq!(again, sorted, "what comes again comes in order");
    })
    .await;
}

#[tokio::test]
async fn a_repeated_idempotency_key_is_refused_in_log_capture() {
    with_log_store(|pool, store, names| async move {
        let orders = format!("\"{}\".orders", names.schema);
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {orders} (id int PRIMARY KEY)"
        )))
        .execute(&pool)
        .await
        .expect("orders");
        let outbox = Outbox::new(&store);
        let once = || {
            Message::new(&names.topic, &1)
                .expect("valid")
                .idempotency_key("order-1")
        };
        let mut tx = outbox.begin().await.expect("begin");
        tx.enqueue(once()).await.expect("enqueue");
        tx.commit().await.expect("the first commits");

        let mut tx = outbox.begin().await.expect("begin");
        sqlx::query(AssertSqlSafe(format!("INSERT INTO {orders} VALUES (2)")))
            .execute(&mut *tx)
            .await
            .expect("business insert");
        tx.enqueue(once()).await.expect("held for the commit");
        match tx.commit().await {
            Err(Error::Duplicate {
                idempotency_key, ..
            }) => assert_eq!(idempotency_key, "order-1"),
            other => panic!("expected the duplicate at commit, got {other:?}"),
        }
        let count: i64 =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {orders}")))
                .fetch_one(&pool)
                .await
                .expect("count");
        assert_eq!(count, 0, "the business row is rolled back");

        // The composed form: the duplicate at `enqueue`.
        let mut tx = outbox.wrap(pool.begin().await.expect("begin"));
        let again = tx.enqueue(once()).await;
        assert!(again.is_err_and(|e| e.is_duplicate()));
        // Messages without a key of their own write no key.
        let keys: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{}\".txmsg_outbox_keys",
            names.schema
        )))
        .fetch_one(&pool)
        .await
        .expect("keys");
        assert_eq!(keys, 1);
    })
    .await;
}

#[tokio::test]
async fn a_store_in_table_capture_has_no_log_relay() {
    let pool = pool().await;
    let store = PgStore::new(pool, Tables::default()).expect("store");
    match LogRelay::start(
        &store,
        &url(),
        MemoryBroker::new(),
        LogRelayConfig::default(),
    )
    .await
    {
        Err(Error::Config { field, reason }) => {
            assert_eq!(field, "capture");
            assert!(reason.contains("Capture::log"), "{reason}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_come_back_unchanged_through_the_log() {
    with_log_store(|pool, store, names| async move {
        let broker = MemoryBroker::new();
        let mut sub = broker.observe(&names.topic);
        let relay = relay(&store, &names, &broker).await;
        let outbox = Outbox::new(&store);
        let mut sent = Vec::new();
        for value in txmsg_testkit::injection::hostile_values() {
            if value.contains('\0') {
                // PostgreSQL text cannot hold NUL: refused, nothing written.
                let mut tx = outbox.begin().await.expect("begin");
                tx.enqueue(
                    Message::new(&names.topic, &1)
                        .expect("valid")
                        .idempotency_key(&value),
                )
                .await
                .expect("held for the commit");
                assert!(tx.commit().await.is_err(), "{value:?} is refused");
                continue;
            }
            let message = Message::new(&names.topic, &value)
                .expect("valid")
                .key(&value)
                .idempotency_key(&value)
                .header(value.clone(), value.clone());
            let mut tx = outbox.begin().await.expect("begin");
            tx.enqueue(message).await.expect("enqueue");
            tx.commit().await.expect("a hostile value is only data");
            sent.push(value);
        }
        let got = receive(&mut sub, sent.len()).await;
        relay.shutdown().await;
        assert_eq!(got.len(), sent.len(), "each once");
        for value in &sent {
            let e = got
                .iter()
                .find(|e| &e.idempotency_key == value)
                .unwrap_or_else(|| panic!("{value:?} is published"));
            assert_eq!(e.key.as_deref(), Some(value.as_str()));
            assert_eq!(&e.idempotency_key, value);
            assert_eq!(e.headers.get(value), Some(value));
            let body: String = serde_json::from_slice(&e.payload).expect("a string");
            assert_eq!(&body, value);
        }
        let keys: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{}\".txmsg_outbox_keys",
            names.schema
        )))
        .fetch_one(&pool)
        .await
        .expect("keys");
        assert_eq!(
            keys,
            i64::try_from(sent.len()).expect("small"),
            "each key once"
        );
    })
    .await;
}
