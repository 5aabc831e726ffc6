//! The check-back worker on the embedded store: a prepared message whose
//! topic has no check-back is dead with that reason.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use txmsg::half::{CheckBackConfig, CheckBackWorker};
use txmsg_core::{DeadFilter, Message, Outbox, Store};
use txmsg_sqlite::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_message_without_a_check_back_is_dead_with_that_reason() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let outbox = Outbox::new(&store);
    let prepared = outbox
        .prepare(
            Message::new("orphans.x", &1).unwrap(),
            Duration::from_millis(1),
        )
        .await
        .unwrap();
    drop(prepared);
    let config = CheckBackConfig {
        poll_interval: Duration::from_millis(10),
        ..CheckBackConfig::default()
    };
    let worker = CheckBackWorker::new(store.clone(), config)
        .unwrap()
        .start()
        .unwrap();
    let mut dead = Vec::new();
    for _ in 0..300 {
        dead = store.dead_letters(&DeadFilter::default()).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.shutdown().await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .reason
            .contains("no `#[check_back]` is registered for topic `orphans.x`"),
        "{}",
        dead[0].reason
    );
    assert_eq!(store.stats().await.unwrap().prepared, 0);
}
