//! The check-back worker on the embedded store: a prepared message whose
//! topic has no check-back is dead with that reason.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use txmsg::half::{CheckBackConfig, CheckBackHandle, CheckBackWorker, CheckStatus, Checked};
use txmsg_core::half::{HalfOutbox, Prepared};
use txmsg_core::{DeadFilter, Message, Store};
use txmsg_sqlite::SqliteStore;

/// A migrated store in memory.
async fn memory_store() -> SqliteStore {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// Prepares a message of `topic` with payload `n`, its first check due
/// after a millisecond.
async fn prepare(outbox: &HalfOutbox<sqlx::Sqlite>, topic: &str, n: u32) -> Prepared<sqlx::Sqlite> {
    outbox
        .prepare(Message::new(topic, &n).unwrap(), Duration::from_millis(1))
        .await
        .unwrap()
}

/// Starts a check-back worker on `store`.
fn start_worker(store: &SqliteStore, config: CheckBackConfig) -> CheckBackHandle {
    CheckBackWorker::new(store.clone(), config)
        .unwrap()
        .start()
        .unwrap()
}

/// Starts a check-back worker on `store` that reports each check it ran.
fn start_observed(
    store: &SqliteStore,
    config: CheckBackConfig,
) -> (CheckBackHandle, UnboundedReceiver<Checked>) {
    let (observer, checked) = unbounded_channel();
    let worker = CheckBackWorker::new(store.clone(), config)
        .unwrap()
        .with_observer(observer)
        .start()
        .unwrap();
    (worker, checked)
}

/// The next check `checked` reports; fails after 10 s.
async fn next_check(checked: &mut UnboundedReceiver<Checked>) -> Checked {
    tokio::time::timeout(Duration::from_secs(10), checked.recv())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_message_without_a_check_back_is_dead_with_that_reason() {
    let store = memory_store().await;
    drop(prepare(&HalfOutbox::new(&store), "orphans.x", 1).await);
    let config = CheckBackConfig::default().with_poll_interval(Duration::from_millis(10));
    let worker = start_worker(&store, config);
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

/// Signals between the tests below and their check-backs.
static RACE_CHECKING: tokio::sync::Notify = tokio::sync::Notify::const_new();
static RACE_PRODUCER_DONE: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[txmsg::check_back(topic = "t.half.race")]
async fn race_check(_n: &u32) -> Result<CheckStatus, std::convert::Infallible> {
    RACE_CHECKING.notify_one();
    RACE_PRODUCER_DONE.notified().await;
    Ok(CheckStatus::Unknown)
}

/// A check-back's last Unknown never makes a message dead that its producer
/// committed meanwhile: a check-back outcome applies only to a row still
/// prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_half_message_is_never_made_dead_by_its_check_back() {
    let store = memory_store().await;
    let prepared = prepare(&HalfOutbox::new(&store), "t.half.race", 1).await;
    let config = CheckBackConfig::default()
        .with_poll_interval(Duration::from_millis(10))
        .with_max_checks(1);
    let (worker, mut checked) = start_observed(&store, config);
    RACE_CHECKING.notified().await;
    // The check is running; the producer commits now.
    prepared.commit().await.unwrap();
    RACE_PRODUCER_DONE.notify_one();
    let outcome = next_check(&mut checked).await;
    worker.shutdown().await;
    assert_eq!(outcome.status, CheckStatus::Unknown);
    let dead = store.dead_letters(&DeadFilter::default()).await.unwrap();
    assert!(
        dead.is_empty(),
        "the committed message must not be dead: {:?}",
        dead.iter().map(|d| &d.reason).collect::<Vec<_>>()
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.dead),
        (1, 0),
        "it waits for the relay"
    );
}

/// Check-backs run per message id, for the test below.
static DUP_CALLS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

#[txmsg::check_back(topic = "t.half.dup")]
async fn slow_check(n: &u32) -> Result<CheckStatus, std::convert::Infallible> {
    DUP_CALLS.lock().unwrap().push(*n);
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(CheckStatus::Commit)
}

/// A claimed message waiting for a check-back slot is not checked once its
/// lease is too close to running out: another worker may have claimed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_back_lease_is_checked_after_waiting_for_a_slot() {
    let store = SqliteStore::connect(&format!(
        "sqlite://{}",
        std::env::temp_dir()
            .join(format!("txmsg-half-{}.db", uuid::Uuid::now_v7()))
            .display()
    ))
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let outbox = HalfOutbox::new(&store);
    for n in 0..8 {
        drop(prepare(&outbox, "t.half.dup", n).await);
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let config = CheckBackConfig::default()
        .with_poll_interval(Duration::from_millis(20))
        .with_concurrency(1)
        .with_lease(Duration::from_secs(1))
        .with_timeout(Duration::from_millis(400));
    let a = start_worker(&store, config.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = start_worker(&store, config);
    for _ in 0..500 {
        if store.stats().await.unwrap().prepared == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
    let mut calls = DUP_CALLS.lock().unwrap().clone();
    calls.sort_unstable();
    assert_eq!(
        calls,
        (0..8).collect::<Vec<_>>(),
        "every message checked exactly once"
    );
}

#[derive(Debug)]
enum SplitError {
    Body,
    Txmsg(txmsg::Error),
}

impl From<txmsg::Error> for SplitError {
    fn from(e: txmsg::Error) -> Self {
        SplitError::Txmsg(e)
    }
}

static SPLIT_COMMITTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[txmsg::check_back(topic = "t.half.split")]
async fn split_check(_n: &u32) -> Result<CheckStatus, std::convert::Infallible> {
    Ok(CheckStatus::Commit)
}

#[txmsg::transactional_message(topic = "t.half.split", half, check_back = split_check, check_after = "1ms")]
async fn fails_late(_n: &u32) -> Result<(), SplitError> {
    // The local work outlives `check_after`; the check-back commits the
    // message meanwhile; then the work fails.
    SPLIT_COMMITTED.notified().await;
    Err(SplitError::Body)
}

/// A half producer whose body failed after its check-back committed the
/// message is told so: the message will be delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_producer_reports_a_commit_by_check_back_after_its_body_failed() {
    let store = memory_store().await;
    let outbox = HalfOutbox::new(&store);
    let config = CheckBackConfig::default().with_poll_interval(Duration::from_millis(10));
    let (worker, mut checked) = start_observed(&store, config);
    let producer = tokio::spawn({
        let outbox = outbox.clone();
        async move { fails_late_and_commit(&outbox, &7).await }
    });
    let check = next_check(&mut checked).await;
    assert_eq!(check.status, CheckStatus::Commit);
    SPLIT_COMMITTED.notify_one();
    let result = producer.await.unwrap();
    worker.shutdown().await;
    assert_eq!(
        store.stats().await.unwrap().pending,
        1,
        "the message goes out"
    );
    assert!(
        matches!(
            result,
            Err(SplitError::Txmsg(txmsg::Error::CommittedByCheckBack { .. }))
        ),
        "the caller learns that the message was committed: {result:?}"
    );
}
