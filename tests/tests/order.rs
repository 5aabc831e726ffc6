//! Per-key commit order on the fast path: when a transaction that writes a
//! key begins after another one that wrote it committed (here: it waited
//! for the same database lock), its message is published second, even when
//! the first one's handoff to the relay is late. Its own test binary, since
//! fail points are global to a process.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use txmsg::memory::MemoryBroker;
use txmsg::prelude::*;
use txmsg::sqlite::SqliteStore;
use txmsg::{Message, Outbox, Relay, RelayConfig};
use txmsg_tests::PgSchema;

fn relay_config() -> RelayConfig {
    RelayConfig::default().with_poll_interval(Duration::from_millis(20))
}

/// A migrated store in a database file of its own, and the file's path.
async fn sqlite_store() -> (SqliteStore, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("txmsg-order-{}.db", uuid::Uuid::now_v7()));
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    (store, path)
}

/// Receives `n` messages of `sub` (10 s at most).
async fn receive(sub: &mut txmsg::memory::MemorySubscription, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, sub.recv()).await {
            Ok(Some(e)) => out.push(e.idempotency_key),
            _ => break,
        }
    }
    out
}

/// T1 writes key `k` and commits, then its handoff to the relay stalls
/// (the fail point sleeps); T2, which waited for T1's lock, writes `k`,
/// commits and hands off at once. `$lock` is the statement both run first.
macro_rules! t1_then_t2 {
    ($outbox:expr, $lock:expr) => {{
        fail::cfg("txmsg::after_commit_before_handoff", "1*sleep(400)").unwrap();
        let (locked, wait_lock) = tokio::sync::oneshot::channel::<()>();
        let t1 = tokio::spawn({
            let outbox = $outbox.clone();
            async move {
                let mut tx = outbox.begin().await.unwrap();
                sqlx::query($lock).execute(&mut *tx).await.unwrap();
                tx.enqueue(
                    Message::new("t.order", &1)
                        .unwrap()
                        .key("k")
                        .idempotency_key("t1"),
                )
                .await
                .unwrap();
                locked.send(()).unwrap();
                tx.commit().await.unwrap();
            }
        });
        wait_lock.await.unwrap();
        let mut tx = $outbox.begin().await.unwrap();
        // Waits for T1's commit.
        sqlx::query($lock).execute(&mut *tx).await.unwrap();
        tx.enqueue(
            Message::new("t.order", &2)
                .unwrap()
                .key("k")
                .idempotency_key("t2"),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        t1.await.unwrap();
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_keeps_commit_order_on_sqlite() {
    let scenario = fail::FailScenario::setup();
    let (store, path) = sqlite_store().await;
    sqlx::query("CREATE TABLE counter (n INTEGER NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    let broker = MemoryBroker::new();
    let mut sub = broker.observe("t.order");
    let relay = Relay::new(store.clone(), broker, relay_config())
        .unwrap()
        .start();
    let outbox = Outbox::new(&store).with_relay(&relay);
    // SQLite producers begin with `BEGIN IMMEDIATE`: T2 waits for T1 there.
    t1_then_t2!(outbox, "INSERT INTO counter (n) VALUES (1)");
    let got = receive(&mut sub, 2).await;
    relay.shutdown().await;
    scenario.teardown();
    assert_eq!(got, ["t1", "t2"], "published in commit order");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_keeps_commit_order_on_postgres() {
    let scenario = fail::FailScenario::setup();
    let pg = PgSchema::new().await;
    pg.exec("CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL)")
        .await;
    pg.exec("INSERT INTO counter VALUES (1, 0)").await;
    let broker = MemoryBroker::new();
    let mut sub = broker.observe("t.order");
    let relay = Relay::new(pg.store.clone(), broker, relay_config())
        .unwrap()
        .start();
    let outbox = Outbox::new(&pg.store).with_relay(&relay);
    // T2's update waits for T1's row lock, that is for T1's commit.
    t1_then_t2!(outbox, "UPDATE counter SET n = n + 1 WHERE id = 1");
    let got = receive(&mut sub, 2).await;
    relay.shutdown().await;
    scenario.teardown();
    pg.drop_schema().await;
    assert_eq!(got, ["t1", "t2"], "published in commit order");
}

/// A key held back on the fast path (its last fast-path message failed)
/// sends a transaction's first message of the key to the poller. Its second
/// message must follow it there even when the hold runs out in between (a
/// slow release, here the fail point's sleep): on the fast path it would be
/// published before the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_sent_to_the_poller_keeps_its_order() {
    let scenario = fail::FailScenario::setup();
    let (store, path) = sqlite_store().await;
    let broker = MemoryBroker::new();
    let mut sub = broker.observe("t.order");
    // The first publish of `t0` fails: the key is held for one lease.
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    broker.reject_if(Some(std::sync::Arc::new({
        let refused = std::sync::Arc::clone(&refused);
        move |e: &txmsg::Envelope| {
            e.idempotency_key == "t0" && !refused.swap(true, std::sync::atomic::Ordering::SeqCst)
        }
    })));
    let config = relay_config()
        .with_lease(Duration::from_secs(2))
        .with_publish_timeout(Duration::from_millis(500))
        .with_backoff_min(Duration::from_millis(10))
        .with_backoff_max(Duration::from_millis(20));
    let relay = Relay::new(store.clone(), broker, config).unwrap().start();
    let outbox = Outbox::new(&store).with_relay(&relay);
    let message = |idem: &str| {
        Message::new("t.order", &idem)
            .unwrap()
            .key("k")
            .idempotency_key(idem)
    };
    let mut tx = outbox.begin().await.unwrap();
    tx.enqueue(message("t0")).await.unwrap();
    tx.commit().await.unwrap();
    let failed_at = tokio::time::Instant::now();
    // Refused on the fast path, then published by the poller.
    assert_eq!(receive(&mut sub, 1).await, ["t0"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while store.stats().await.unwrap().pending > 0 {
        assert!(tokio::time::Instant::now() < deadline, "t0 not marked sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Late in the hold (2 s from the failure): `m0` goes to the poller, and
    // its release takes longer than what is left of the hold, not than
    // `m1`'s lease (2 s from its insert) less the publish timeout.
    tokio::time::sleep_until(failed_at + Duration::from_millis(1200)).await;
    fail::cfg("txmsg::relay::fast_release_held", "1*sleep(1000)").unwrap();
    let mut tx = outbox.begin().await.unwrap();
    tx.enqueue(message("m0")).await.unwrap();
    tx.enqueue(message("m1")).await.unwrap();
    assert_eq!(
        tx.fast_path_len(),
        2,
        "both rows go in leased, for the fast path"
    );
    tx.commit().await.unwrap();
    let got = receive(&mut sub, 2).await;
    relay.shutdown().await;
    scenario.teardown();
    assert_eq!(got, ["m0", "m1"], "published in the transaction's order");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
