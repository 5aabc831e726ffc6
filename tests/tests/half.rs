//! Half messages end to end against the real PostgreSQL and RabbitMQ: the
//! local work is a (simulated) external payment API, outside the outbox's
//! database; crashes between prepare and commit are resolved by the
//! check-back; verdicts are fenced.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use txmsg::half::HalfOutbox;
use txmsg::half::{CheckBackConfig, CheckBackHandle, CheckBackWorker, CheckStatus};
use txmsg::prelude::*;
use txmsg::{DeadFilter, Error, Message, Relay, RelayConfig, RelayHandle};
use txmsg_tests::{PgSchema, Rabbit, Received};

const TOPIC: &str = "payments.charged";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Charge {
    payment_id: String,
    amount_cents: i64,
}

/// What the simulated payment API answers about a payment, per id.
#[derive(Debug, Clone)]
enum Api {
    Captured,
    Declined,
    /// Unknown this many more times, then Captured.
    PendingThenCaptured(u32),
    /// Always unknown.
    Pending,
    /// The API call fails.
    Broken,
    /// The API does not answer in time.
    Slow,
}

static API: Mutex<Option<HashMap<String, Api>>> = Mutex::new(None);
static CALLS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn api_set(id: &str, state: Api) {
    API.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(id.to_owned(), state);
}

fn calls(id: &str) -> u32 {
    CALLS
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|c| c.get(id).copied())
        .unwrap_or(0)
}

#[txmsg::check_back(topic = "payments.charged")]
async fn payment_state(charge: &Charge) -> Result<CheckStatus, String> {
    *CALLS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(charge.payment_id.clone())
        .or_default() += 1;
    let state = API
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|a| a.get(&charge.payment_id).cloned());
    match state {
        Some(Api::Captured) => Ok(CheckStatus::Commit),
        Some(Api::Declined) | None => Ok(CheckStatus::Rollback),
        Some(Api::PendingThenCaptured(0)) => Ok(CheckStatus::Commit),
        Some(Api::PendingThenCaptured(n)) => {
            api_set(&charge.payment_id, Api::PendingThenCaptured(n - 1));
            Ok(CheckStatus::Unknown)
        }
        Some(Api::Pending) => Ok(CheckStatus::Unknown),
        Some(Api::Broken) => Err("payment api: 503 service unavailable".into()),
        Some(Api::Slow) => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(CheckStatus::Commit)
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PayError {
    #[error("card declined")]
    Declined,
    #[error(transparent)]
    Txmsg(#[from] Error),
}

/// How the test wants the local work (the API call) to go.
#[derive(Debug, Clone)]
enum Local {
    Succeed,
    Fail,
    /// Never finishes (the test drops the call: a crash after prepare).
    Hang,
    /// Waits until notified, then succeeds.
    WaitFor(Arc<Notify>),
}

#[txmsg::transactional_message(
    topic = "payments.charged",
    half,
    check_back = payment_state,
    check_after = "50ms",
    key = charge.payment_id,
    idempotency_key = charge.payment_id,
)]
async fn charge_card(charge: &Charge, local: Local) -> Result<(), PayError> {
    match local {
        Local::Succeed => {
            api_set(&charge.payment_id, Api::Captured);
            Ok(())
        }
        Local::Fail => {
            api_set(&charge.payment_id, Api::Declined);
            Err(PayError::Declined)
        }
        Local::Hang => std::future::pending().await,
        Local::WaitFor(n) => {
            n.notified().await;
            api_set(&charge.payment_id, Api::Captured);
            Ok(())
        }
    }
}

fn charge(id: &str) -> Charge {
    Charge {
        payment_id: format!("{id}-{}", txmsg_tests::unique()),
        amount_cents: 1_000,
    }
}

fn worker_config() -> CheckBackConfig {
    CheckBackConfig::default()
        .with_interval(Duration::from_millis(50))
        .with_max_checks(3)
        .with_timeout(Duration::from_millis(300))
        .with_lease(Duration::from_secs(5))
        .with_poll_interval(Duration::from_millis(20))
}

struct Env {
    pg: PgSchema,
    rabbit: Rabbit,
    relay: RelayHandle,
    outbox: HalfOutbox<sqlx::Postgres>,
}

async fn setup() -> Env {
    let pg = PgSchema::new().await;
    let rabbit = Rabbit::new().await;
    let config = RelayConfig::default().with_poll_interval(Duration::from_millis(50));
    let relay = Relay::new(pg.store.clone(), rabbit.broker.clone(), config)
        .unwrap()
        .start();
    let outbox = HalfOutbox::new(&pg.store).with_relay(&relay);
    Env {
        pg,
        rabbit,
        relay,
        outbox,
    }
}

impl Env {
    fn worker(&self, config: CheckBackConfig) -> CheckBackHandle {
        CheckBackWorker::new(self.pg.store.clone(), config)
            .unwrap()
            .with_relay(&self.relay)
            .start()
            .unwrap()
    }

    async fn published(&self, expected: usize) -> Vec<Received> {
        self.rabbit
            .drain(
                expected,
                Duration::from_millis(700),
                Duration::from_secs(20),
            )
            .await
    }

    async fn wait_prepared(&self, n: u64) {
        for _ in 0..400 {
            if self.pg.store.stats().await.unwrap().prepared == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("prepared count never reached {n}");
    }

    async fn done(self) {
        self.relay.shutdown().await;
        self.rabbit.cleanup().await;
        self.pg.drop_schema().await;
    }
}

fn keys(got: &[Received]) -> Vec<String> {
    got.iter().map(|r| r.idempotency_key.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_ok_publishes_once_and_body_err_never() {
    let env = setup().await;
    let ok = charge("ok");
    let bad = charge("bad");
    charge_card_and_commit(&env.outbox, &ok, Local::Succeed)
        .await
        .unwrap();
    let err = charge_card_and_commit(&env.outbox, &bad, Local::Fail).await;
    assert!(matches!(err, Err(PayError::Declined)));
    let got = env.published(1).await;
    assert_eq!(keys(&got), std::slice::from_ref(&ok.payment_id));
    let stats = env.pg.store.stats().await.unwrap();
    assert_eq!(
        (stats.prepared, stats.pending, stats.dead),
        (0, 0, 0),
        "the declined one's row is gone"
    );
    assert_eq!(stats.sent, 1);
    env.done().await;
}

/// Prepares a charge whose local work never finishes, then drops the call:
/// the process "crashed" between prepare and commit.
async fn crash_after_prepare(env: &Env, c: &Charge) {
    let outbox = env.outbox.clone();
    let c2 = c.clone();
    let task = tokio::spawn(async move { charge_card_and_commit(&outbox, &c2, Local::Hang).await });
    env.wait_prepared(1).await;
    task.abort();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_prepare_is_resolved_by_the_check_back() {
    // Commit, Rollback, Unknown twice then Commit, always Unknown.
    let env = setup().await;
    let committed = charge("commit");
    let rolled_back = charge("rollback");
    let late = charge("late");
    let never = charge("never");
    for (c, state) in [
        (&committed, Api::Captured),
        (&rolled_back, Api::Declined),
        (&late, Api::PendingThenCaptured(2)),
        (&never, Api::Pending),
    ] {
        crash_after_prepare(&env, c).await;
        // The API's answer about this payment, as the check-back will see it.
        api_set(&c.payment_id, state);
        // One at a time, so that wait_prepared counts this one.
        let worker = env.worker(worker_config());
        for _ in 0..400 {
            if env.pg.store.stats().await.unwrap().prepared == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        worker.shutdown().await;
    }
    let got = env.published(2).await;
    let published: HashSet<String> = keys(&got).into_iter().collect();
    assert_eq!(got.len(), 2, "{published:?}");
    assert_eq!(
        published,
        HashSet::from([committed.payment_id.clone(), late.payment_id.clone()])
    );
    assert_eq!(calls(&committed.payment_id), 1);
    assert_eq!(calls(&rolled_back.payment_id), 1);
    assert_eq!(calls(&late.payment_id), 3, "unknown twice, then commit");
    assert_eq!(calls(&never.payment_id), 3, "max_checks checks");
    let dead = env
        .pg
        .store
        .dead_letters(&DeadFilter::default())
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope.idempotency_key, never.payment_id);
    assert!(
        dead[0].reason.contains("unresolved after 3 checks"),
        "{}",
        dead[0].reason
    );
    // An operator resumes it; the API has the answer now.
    api_set(&never.payment_id, Api::Captured);
    assert!(
        env.pg
            .store
            .resume(dead[0].envelope.id, chrono::Utc::now())
            .await
            .unwrap()
    );
    let worker = env.worker(worker_config());
    let got = env.published(1).await;
    worker.shutdown().await;
    assert_eq!(keys(&got), std::slice::from_ref(&never.payment_id));
    env.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_or_slow_check_backs_count_as_unknown() {
    let env = setup().await;
    let broken = charge("broken");
    let slow = charge("slow");
    for (c, state) in [(&broken, Api::Broken), (&slow, Api::Slow)] {
        crash_after_prepare(&env, c).await;
        api_set(&c.payment_id, state);
        let worker = env.worker(worker_config());
        for _ in 0..400 {
            if env.pg.store.stats().await.unwrap().prepared == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        worker.shutdown().await;
    }
    let dead = env
        .pg
        .store
        .dead_letters(&DeadFilter::default())
        .await
        .unwrap();
    let dead_keys: HashSet<String> = dead
        .iter()
        .map(|d| d.envelope.idempotency_key.clone())
        .collect();
    assert_eq!(
        dead_keys,
        HashSet::from([broken.payment_id.clone(), slow.payment_id.clone()])
    );
    assert!(
        dead.iter()
            .all(|d| d.reason.contains("unresolved after 3 checks")),
        "{dead:?}"
    );
    assert_eq!(calls(&broken.payment_id), 3);
    assert!(env.published(0).await.is_empty(), "nothing published");
    env.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_check_each_message_once_per_round() {
    let env = setup().await;
    const N: usize = 500;
    let mut ids = Vec::with_capacity(N);
    for _ in 0..N {
        let c = charge("many");
        api_set(&c.payment_id, Api::Captured);
        // Prepared and left, as after a crash.
        let msg = Message::new(TOPIC, &c)
            .unwrap()
            .key(&c.payment_id)
            .idempotency_key(&c.payment_id);
        drop(
            env.outbox
                .prepare(msg, Duration::from_millis(10))
                .await
                .unwrap(),
        );
        ids.push(c.payment_id);
    }
    let w1 = env.worker(worker_config());
    let w2 = env.worker(worker_config());
    let got = env.published(N).await;
    w1.shutdown().await;
    w2.shutdown().await;
    assert_eq!(got.len(), N);
    let twice: Vec<&String> = ids.iter().filter(|id| calls(id) != 1).collect();
    assert!(
        twice.is_empty(),
        "checked more or less than once: {}",
        twice.len()
    );
    env.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_verdict_during_the_body_fences_out_the_late_commit() {
    let env = setup().await;
    let c = charge("race");
    let release = Arc::new(Notify::new());
    let producer = {
        let outbox = env.outbox.clone();
        let (c, release) = (c.clone(), Arc::clone(&release));
        tokio::spawn(
            async move { charge_card_and_commit(&outbox, &c, Local::WaitFor(release)).await },
        )
    };
    env.wait_prepared(1).await;
    // The API has not seen the payment yet: the check-back says Rollback.
    let worker = env.worker(worker_config());
    env.wait_prepared(0).await;
    worker.shutdown().await;
    release.notify_one();
    let result = producer.await.unwrap();
    assert!(
        matches!(result, Err(PayError::Txmsg(Error::RolledBack { .. }))),
        "{result:?}"
    );
    assert!(env.published(0).await.is_empty(), "never published");
    env.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_dead_with_expired_never_published() {
    let env = setup().await;
    // A pending message past its expiry: the relay dead-letters it.
    let mut tx = env.outbox.begin().await.unwrap();
    tx.enqueue(
        Message::new("orders.old", &1)
            .unwrap()
            .idempotency_key("old-1")
            .ttl(Duration::from_millis(1)),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // A prepared one past its expiry whose check-back cannot tell: dead too.
    let c = charge("expired");
    api_set(&c.payment_id, Api::Pending);
    let msg = Message::new(TOPIC, &c)
        .unwrap()
        .idempotency_key(&c.payment_id)
        .ttl(Duration::from_millis(1));
    drop(
        env.outbox
            .prepare(msg, Duration::from_millis(10))
            .await
            .unwrap(),
    );
    let worker = env.worker(worker_config());
    let mut dead = Vec::new();
    for _ in 0..400 {
        dead = env
            .pg
            .store
            .dead_letters(&DeadFilter::default())
            .await
            .unwrap();
        if dead.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    worker.shutdown().await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter().all(|d| d.reason.contains("expired")),
        "{dead:?}"
    );
    assert_eq!(calls(&c.payment_id), 1, "checked one last time first");
    assert!(env.published(0).await.is_empty());
    env.done().await;
}
