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

/// Waits up to 20 s for `ok`, checking every 100 ms.
async fn eventually(mut ok: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_what_the_slot_keeps_and_its_oldest_message() {
    with_log_store(|_pool, store, names| async move {
        let config = names.relay_config();
        assert_eq!(
            LogRelay::status(&store, &config).await.expect("status"),
            None,
            "no slot yet"
        );
        LogRelay::create_slot(&store, &config).await.expect("slot");
        let before = chrono::Utc::now();
        produce(&store, &names.topic, &["k"; 10], 1, 0).await;
        let after = chrono::Utc::now();

        let waiting = LogRelay::status(&store, &config)
            .await
            .expect("status")
            .expect("the slot");
        assert!(!waiting.active, "no relay reads it");
        assert!(!waiting.invalidated());
        assert_eq!(waiting.wal_status.as_deref(), Some("reserved"));
        assert!(
            waiting.lag_bytes.is_some_and(|b| b > 0),
            "ten unread messages keep WAL: {waiting:?}"
        );
        let oldest = waiting.oldest_unconfirmed.expect("the first message");
        assert!(
            before <= oldest && oldest <= after,
            "the first message's time: {oldest} not within {before}..{after}"
        );

        let broker = MemoryBroker::new();
        let mut sub = broker.observe(&names.topic);
        let relay = relay(&store, &names, &broker).await;
        assert_eq!(receive(&mut sub, 10).await.len(), 10);
        relay.shutdown().await;
        let read = LogRelay::status(&store, &config)
            .await
            .expect("status")
            .expect("the slot");
        assert_eq!(read.oldest_unconfirmed, None, "everything was confirmed");
        assert!(read.lag_bytes.is_some(), "{read:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_table_store_is_a_config_error() {
    let store = PgStore::new(pool().await, Tables::default()).expect("store");
    let err = LogRelay::status(&store, &LogRelayConfig::default())
        .await
        .expect_err("no slot in table capture");
    assert!(
        matches!(
            err,
            Error::Config {
                field: "capture",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_relay_reports_what_it_has_not_confirmed() {
    with_log_store(|_pool, store, names| async move {
        let broker = MemoryBroker::new();
        let mut sub = broker.observe(&names.topic);
        let relay = relay(&store, &names, &broker).await;
        broker.set_down(true);
        let before = chrono::Utc::now();
        produce(&store, &names.topic, &["k"; 5], 1, 0).await;
        assert!(
            eventually(|| relay.lag().oldest_unconfirmed.is_some()).await,
            "the unpublished messages show: {:?}",
            relay.lag()
        );
        let lag = relay.lag();
        assert!(lag.bytes > 0, "{lag:?}");
        let oldest = lag.oldest_unconfirmed.expect("checked");
        assert!(
            oldest >= before,
            "the first message's time: {oldest} < {before}"
        );

        broker.set_down(false);
        assert_eq!(receive(&mut sub, 5).await.len(), 5);
        assert!(
            eventually(|| relay.lag().oldest_unconfirmed.is_none()).await,
            "nothing waits once published: {:?}",
            relay.lag()
        );
        relay.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_slot_is_gone_stops_and_says_why() {
    with_log_store(|pool, store, names| async move {
        let broker = MemoryBroker::new();
        let relay = relay(&store, &names, &broker).await;
        // Drop the slot under the relay: end its session, then drop it
        // while it is free (the relay tries again every half second).
        let mut dropped = false;
        for _ in 0..100 {
            sqlx::query(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND active_pid IS NOT NULL",
            )
            .bind(&names.prefix)
            .execute(&pool)
            .await
            .expect("terminate");
            if sqlx::query("SELECT pg_drop_replication_slot($1)")
                .bind(&names.prefix)
                .execute(&pool)
                .await
                .is_ok()
            {
                dropped = true;
                break;
            }
        }
        assert!(dropped, "the slot could be dropped");
        assert!(
            eventually(|| relay.is_finished()).await,
            "the relay stops instead of reading on"
        );
        let why = relay.failure().expect("a reason");
        assert!(why.contains("does not exist"), "{why}");
        assert!(why.contains(&names.prefix), "names the slot: {why}");
        let slots: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1")
                .bind(&names.prefix)
                .fetch_one(&pool)
                .await
                .expect("count");
        assert_eq!(slots, 0, "the relay does not create the slot again");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_message_parks_its_key_until_replayed_and_order_holds() {
    with_log_store(|_pool, store, names| async move {
        let broker = MemoryBroker::new();
        let mut sub = broker.observe(&names.topic);
        // Message 3 is refused until it is replayed.
        let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let refusing = std::sync::Arc::clone(&refuse);
        broker.reject_if(Some(std::sync::Arc::new(move |e: &Envelope| {
            refusing.load(std::sync::atomic::Ordering::SeqCst) && number(e) == 3
        })));
        let relay = LogRelay::start(
            &store,
            &url(),
            broker.clone(),
            names.relay_config().with_max_attempts(2),
        )
        .await
        .expect("start the relay");
        produce(&store, &names.topic, &["k"; 6], 1, 0).await;
        produce(&store, &names.topic, &["j"; 3], 7, 0).await;
        let mut got: Vec<Envelope> = receive(&mut sub, 5).await;
        assert_eq!(
            got.iter().map(number).collect::<Vec<_>>(),
            [1, 2, 7, 8, 9],
            "k stops at its dead message, j goes on"
        );
        let dead = store
            .dead_letters(&txmsg_core::DeadFilter::default())
            .await
            .expect("dead letters");
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(number(&dead[0].envelope), 3);
        assert!(!dead[0].reason.is_empty(), "a dead letter says why");
        let stats = store.stats().await.expect("stats");
        assert_eq!(stats.pending, 3, "4, 5 and 6 wait in the table behind 3");

        // The operator replays 3; a table relay publishes the key's rows.
        refuse.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(
            store
                .replay(dead[0].envelope.id, chrono::Utc::now())
                .await
                .expect("replay")
        );
        let table = txmsg_core::Relay::new(
            store.clone(),
            broker.clone(),
            txmsg_core::RelayConfig::default(),
        )
        .expect("relay")
        .start();
        got.extend(receive(&mut sub, 4).await);
        // Once the table holds none of k (its rows are marked sent, and the
        // relay reads the parked keys every second), k goes through the
        // slot again.
        let mut pending = u64::MAX;
        for _ in 0..100 {
            pending = store.stats().await.expect("stats").pending;
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(pending, 0, "the table relay published the parked rows");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        produce(&store, &names.topic, &["k"; 1], 10, 0).await;
        got.extend(receive(&mut sub, 1).await);
        table.shutdown().await;
        relay.shutdown().await;

        let k: Vec<u64> = got
            .iter()
            .filter(|e| e.key.as_deref() == Some("k"))
            .map(number)
            .collect();
        assert_eq!(k, [1, 2, 3, 4, 5, 6, 10], "k in commit order, each once");
        let stats = store.stats().await.expect("stats");
        assert_eq!(stats.pending, 0);
        assert_eq!(
            stats.sent, 4,
            "the replayed message and the three parked ones"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_skip_policy_a_dead_message_does_not_hold_its_key() {
    with_log_store(|_pool, store, names| async move {
        let broker = MemoryBroker::new();
        let mut sub = broker.observe(&names.topic);
        broker.reject_if(Some(std::sync::Arc::new(|e: &Envelope| number(e) == 2)));
        let relay = LogRelay::start(
            &store,
            &url(),
            broker.clone(),
            names
                .relay_config()
                .with_max_attempts(1)
                .with_dead_key_policy(txmsg_core::DeadKeyPolicy::Skip),
        )
        .await
        .expect("start the relay");
        produce(&store, &names.topic, &["k"; 4], 1, 0).await;
        let got = receive(&mut sub, 3).await;
        relay.shutdown().await;
        assert_eq!(got.iter().map(number).collect::<Vec<_>>(), [1, 3, 4]);
        let stats = store.stats().await.expect("stats");
        assert_eq!((stats.pending, stats.dead), (0, 1));
    })
    .await;
}

/// An envelope of key `key` as a producer whose clock is `skew` off would
/// write it: its id (UUIDv7) and creation time from that clock.
fn skewed_envelope(topic: &str, key: &str, n: u64, skew: chrono::Duration) -> Envelope {
    let at = chrono::Utc::now() + skew;
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(at.timestamp()).expect("after 1970"),
        at.timestamp_subsec_nanos(),
    );
    let id = Uuid::new_v7(ts);
    let mut envelope = Envelope::new(
        id,
        topic,
        id.to_string(),
        serde_json::to_vec(&n).expect("json"),
        at,
    );
    envelope.key = Some(key.to_owned());
    envelope
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_with_skewed_clocks_are_published_in_commit_order() {
    with_log_store(|pool, store, names| async move {
        let broker = MemoryBroker::new();
        let mut sub = broker.observe(&names.topic);
        let relay = relay(&store, &names, &broker).await;
        let writer = txmsg_core::SqlStore::writer(&store);
        // Two producers on the same keys, one clock an hour ahead, the
        // other an hour behind, taking turns: commit order is 1, 2, 3, ...
        // while ids and times jump back and forth.
        let (ahead, behind) = (chrono::Duration::hours(1), chrono::Duration::hours(-1));
        let mut written = Vec::new();
        for n in 1..=60u64 {
            let key = ["k1", "k2", "k3"][usize::try_from(n % 3).unwrap_or(0)];
            let skew = if n % 2 == 0 { ahead } else { behind };
            let envelope = skewed_envelope(&names.topic, key, n, skew);
            let txn = pool.begin().await.expect("begin");
            writer
                .insert_and_commit(txn, &[(&envelope, None)])
                .await
                .expect("commit");
            written.push(envelope);
        }
        let mut by_id = written.clone();
        by_id.sort_by_key(|e| e.id);
        assert_ne!(
            by_id.iter().map(number).collect::<Vec<_>>(),
            (1..=60).collect::<Vec<_>>(),
            "the clocks disagree with commit order"
        );

        let got = receive(&mut sub, written.len()).await;
        relay.shutdown().await;
        assert_eq!(
            got.iter().map(number).collect::<Vec<_>>(),
            (1..=60).collect::<Vec<_>>(),
            "published in commit order, each once"
        );
    })
    .await;
}

/// Commits one message with idempotency key `key`: `Ok` or the duplicate.
async fn commit_keyed(store: &PgStore, topic: &str, key: &str) -> Result<(), Error> {
    let outbox = Outbox::new(store);
    let mut tx = outbox.begin().await?;
    tx.enqueue(Message::new(topic, &1)?.idempotency_key(key))
        .await?;
    tx.commit().await
}

async fn keys_held(pool: &PgPool, names: &Names) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".txmsg_outbox_keys",
        names.schema
    )))
    .fetch_one(pool)
    .await
    .expect("count keys")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_past_their_retention_are_purged_and_can_be_used_again() {
    with_log_store(|pool, store, names| async move {
        for key in ["order-1", "order-2", "order-3"] {
            commit_keyed(&store, &names.topic, key)
                .await
                .expect("first");
        }
        assert!(matches!(
            commit_keyed(&store, &names.topic, "order-1").await,
            Err(Error::Duplicate { .. })
        ));
        let before_any = chrono::Utc::now() - chrono::Duration::hours(1);
        assert_eq!(
            LogRelay::purge_keys(&store, before_any, 2)
                .await
                .expect("purge"),
            0,
            "no key is that old"
        );
        let purged =
            LogRelay::purge_keys(&store, chrono::Utc::now() + chrono::Duration::seconds(1), 2)
                .await
                .expect("purge");
        assert_eq!(purged, 3, "in batches of two, until none is left");
        assert_eq!(keys_held(&pool, &names).await, 0);
        commit_keyed(&store, &names.topic, "order-1")
            .await
            .expect("a purged key is accepted again");

        // A relay purges on its own.
        let broker = MemoryBroker::new();
        let relay = LogRelay::start(
            &store,
            &url(),
            broker,
            names
                .relay_config()
                .with_key_retention(Some(Duration::ZERO))
                .with_purge_interval(Duration::from_millis(50)),
        )
        .await
        .expect("relay");
        let mut held = i64::MAX;
        for _ in 0..100 {
            held = keys_held(&pool, &names).await;
            if held == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        relay.shutdown().await;
        assert_eq!(held, 0, "the relay purged the key past its retention");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_keys_of_a_table_store_is_a_config_error() {
    let store = PgStore::new(pool().await, Tables::default()).expect("store");
    let err = LogRelay::purge_keys(&store, chrono::Utc::now(), 10)
        .await
        .expect_err("no keys table in table capture");
    assert!(
        matches!(
            err,
            Error::Config {
                field: "capture",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_says_whether_it_reads_the_slot() {
    with_log_store(|_pool, store, names| async move {
        let broker = MemoryBroker::new();
        let first = relay(&store, &names, &broker).await;
        assert!(
            eventually(|| first.is_reading()).await,
            "the first relay reads"
        );
        let second = relay(&store, &names, &broker).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!second.is_reading(), "the second waits for the slot");
        first.abort();
        assert!(
            eventually(|| second.is_reading()).await,
            "the second reads once the first is gone"
        );
        second.shutdown().await;
    })
    .await;
}
