//! The consumer runtime on the embedded store and the in-process broker:
//! inbox retention (refused when too short, purged in batches), handlers,
//! and the span each subscribe runs in.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::UnboundedReceiver;
use txmsg::Tx;
use txmsg::consumer::{Consumer, ConsumerConfig, ConsumerHandle, Handled};
use txmsg_core::consumer::{SubscribeSpec, Subscription};
use txmsg_core::{Broker, Clock, Envelope, Error, SqlStore, Store};
use txmsg_memory::MemoryBroker;
use txmsg_sqlite::SqliteStore;

mod support;
use support::spans::SpanLog;

#[derive(Debug)]
struct TestClock(Mutex<DateTime<Utc>>);

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

#[derive(Debug, serde::Deserialize)]
struct Ping {
    n: u32,
}

#[txmsg::message_handler(topic = "t.purge", group = "purger")]
async fn ping(tx: &mut Tx<'_, sqlx::Sqlite>, ping: Ping) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO pings (n) VALUES (?)")
        .bind(ping.n)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn store() -> SqliteStore {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    sqlx::query("CREATE TABLE pings (n INTEGER NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    store
}

/// Starts a consumer of `config` on `store` and `broker`.
async fn start(
    store: &SqliteStore,
    broker: &MemoryBroker,
    config: ConsumerConfig,
) -> ConsumerHandle<SqliteStore> {
    Consumer::new(store.clone(), broker.clone(), config)
        .unwrap()
        .start()
        .await
        .unwrap()
}

/// A message of `topic` whose payload is `{"n": n}`.
fn numbered(topic: &str, idempotency_key: &str, n: u32) -> Envelope {
    Envelope::new(
        uuid::Uuid::now_v7(),
        topic,
        idempotency_key,
        format!(r#"{{"n":{n}}}"#).into_bytes(),
        Utc::now(),
    )
}

async fn count(store: &SqliteStore, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn retention_shorter_than_the_redelivery_horizon_is_refused_at_start() {
    let store = store().await;
    let config = ConsumerConfig::new("purger")
        .with_inbox_retention(Duration::from_secs(3600))
        .with_redelivery_window(Duration::from_secs(3600));
    let err = Consumer::new(store, MemoryBroker::new(), config)
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                field: "inbox_retention",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("applied twice"),
        "the error says why: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_inbox_keys_are_purged_in_batches() {
    let store = store().await;
    let broker = MemoryBroker::new();
    let clock = Arc::new(TestClock(Mutex::new(Utc::now())));
    let config = ConsumerConfig::new("purger")
        .with_purge_interval(Duration::from_millis(20))
        .with_purge_batch(7)
        .with_clock(clock.clone());
    let retention = config.inbox_retention();
    let consumer = start(&store, &broker, config).await;
    for n in 0..30 {
        let env = numbered("t.purge", &format!("p{n}"), n);
        broker.publish(&env).await.unwrap();
    }
    for _ in 0..500 {
        if consumer.stats().applied == 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count(&store, "SELECT count(*) FROM pings").await, 30);
    // Within the retention the keys stay, whatever the purger does.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM txmsg_inbox WHERE consumer_group = 'purger'"
        )
        .await,
        30
    );
    // A day past the retention they go, in batches of 7.
    *clock.0.lock().unwrap() +=
        chrono::Duration::from_std(retention).unwrap() + chrono::Duration::days(1);
    let mut left = -1;
    for _ in 0..500 {
        left = count(
            &store,
            "SELECT count(*) FROM txmsg_inbox WHERE consumer_group = 'purger'",
        )
        .await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.shutdown().await;
    assert_eq!(left, 0, "every key past the retention was purged");
    assert_eq!(
        count(&store, "SELECT count(*) FROM pings").await,
        30,
        "effects stay"
    );
}

#[derive(Debug, serde::Deserialize)]
struct Order {
    n: u32,
}

async fn applied(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    topic: &str,
    order: &Order,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO applied (topic, n) VALUES (?, ?)")
        .bind(topic)
        .bind(order.n)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[txmsg::message_handler(topic = "t.multi.placed", group = "multi")]
async fn on_placed(tx: &mut Tx<'_, sqlx::Sqlite>, order: Order) -> Result<(), sqlx::Error> {
    applied(tx, "t.multi.placed", &order).await
}

#[txmsg::message_handler(topic = "t.multi.shipped", group = "multi")]
async fn on_shipped(tx: &mut Tx<'_, sqlx::Sqlite>, order: Order) -> Result<(), sqlx::Error> {
    applied(tx, "t.multi.shipped", &order).await
}

#[txmsg::message_handler(topic = "t.panicky", group = "panicky", max_attempts = 2)]
async fn sometimes_panics(tx: &mut Tx<'_, sqlx::Sqlite>, order: Order) -> Result<(), sqlx::Error> {
    assert!(order.n != 1, "handler bug on order {}", order.n);
    applied(tx, "t.panicky", &order).await
}

async fn store_with_applied() -> SqliteStore {
    let store = store().await;
    sqlx::query("CREATE TABLE applied (topic TEXT NOT NULL, n INTEGER NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    store
}

fn order(topic: &str, key: &str, idempotency_key: &str, n: u32) -> Envelope {
    let mut env = numbered(topic, idempotency_key, n);
    env.key = Some(key.to_owned());
    env
}

/// Waits for `n` settled deliveries (10 s at most) and returns them.
async fn settled(rx: &mut UnboundedReceiver<Handled>, n: usize) -> Vec<Handled> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(h)) => out.push(h),
            _ => break,
        }
    }
    out
}

/// Runs a consumer of `config` on `store` and `broker` while `messages` are
/// published, until as many deliveries are settled (10 s at most); returns
/// them.
async fn run_until_settled(
    store: &SqliteStore,
    broker: &MemoryBroker,
    config: ConsumerConfig,
    messages: &[Envelope],
) -> Vec<Handled> {
    let (observer, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = Consumer::new(store.clone(), broker.clone(), config)
        .unwrap()
        .with_observer(observer)
        .start()
        .await
        .unwrap();
    for env in messages {
        broker.publish(env).await.unwrap();
    }
    let done = settled(&mut rx, messages.len()).await;
    consumer.shutdown().await;
    done
}

/// An idempotency key is unique per topic, so one key on two topics is two
/// messages: a group handling both applies each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_on_two_topics_is_applied_on_each() {
    let store = store_with_applied().await;
    let broker = MemoryBroker::new();
    let messages = ["t.multi.placed", "t.multi.shipped"].map(|t| order(t, "42", "order-42", 42));
    let done = run_until_settled(&store, &broker, ConsumerConfig::new("multi"), &messages).await;
    let outcomes: Vec<_> = done
        .iter()
        .map(|h| (h.topic.clone(), h.outcome.clone()))
        .collect();
    assert_eq!(done.len(), 2, "{outcomes:?}");
    assert!(
        done.iter()
            .all(|h| h.outcome == txmsg::consumer::Settlement::Applied),
        "both messages are applied, neither is a duplicate of the other: {outcomes:?}"
    );
    assert_eq!(count(&store, "SELECT count(*) FROM applied").await, 2);
}

/// A panicking handler is a failed attempt: retried, then dead with the
/// panic's message; the later messages of its key and other keys go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_is_retried_then_dead_and_its_key_flows() {
    let store = store_with_applied().await;
    let broker = MemoryBroker::new();
    let config = ConsumerConfig::new("panicky")
        .with_backoff_min(Duration::from_millis(10))
        .with_backoff_max(Duration::from_millis(20));
    let messages = [("k", 1), ("k", 2), ("other", 3)]
        .map(|(key, n)| order("t.panicky", key, &format!("p{n}"), n));
    let done = run_until_settled(&store, &broker, config, &messages).await;
    let by_key: Vec<_> = done
        .iter()
        .map(|h| (h.idempotency_key.clone(), h.outcome.clone(), h.attempts))
        .collect();
    assert_eq!(done.len(), 3, "every message is settled: {by_key:?}");
    let dead = done.iter().find(|h| h.idempotency_key == "p1").unwrap();
    match &dead.outcome {
        txmsg::consumer::Settlement::Dead(reason) => {
            assert!(
                reason.contains("panicked") && reason.contains("handler bug on order 1"),
                "{reason}"
            );
        }
        other => panic!("p1 must be dead, got {other:?}"),
    }
    assert_eq!(
        dead.attempts, 2,
        "a panic is an attempt, retried up to max_attempts"
    );
    assert_eq!(count(&store, "SELECT count(*) FROM applied").await, 2);
}

#[txmsg::message_handler(topic = "t.traced", group = "traced")]
async fn traced(_tx: &mut Tx<'_, sqlx::Sqlite>, _ping: Ping) -> Result<(), sqlx::Error> {
    Ok(())
}

/// The in-process broker, noting the span each subscribe is called in.
#[derive(Debug, Clone, Default)]
struct SpanProbe {
    inner: MemoryBroker,
    subscribed_in: Arc<Mutex<Vec<Option<tracing::span::Id>>>>,
}

impl Broker for SpanProbe {
    fn system(&self) -> &'static str {
        self.inner.system()
    }

    async fn publish(&self, envelope: &Envelope) -> txmsg_core::Result<()> {
        self.inner.publish(envelope).await
    }

    async fn subscribe(&self, spec: &SubscribeSpec) -> txmsg_core::Result<Subscription> {
        let current = tracing::Span::current().id();
        self.subscribed_in.lock().unwrap().push(current);
        self.inner.subscribe(spec).await
    }
}

/// The consumer subscribes in the one span every broker shares, with the
/// messaging system, the topic and the group.
#[tokio::test]
async fn a_subscribe_runs_in_the_broker_subscribe_span() {
    let (spans, _guard) = SpanLog::install();
    let store = store().await;
    let broker = SpanProbe::default();
    let consumer = Consumer::new(store, broker.clone(), ConsumerConfig::new("traced"))
        .unwrap()
        .start()
        .await
        .unwrap();
    consumer.shutdown().await;
    let ids = broker.subscribed_in.lock().unwrap().clone();
    assert_eq!(ids.len(), 1, "one handler, one subscribe: {ids:?}");
    let id = ids[0].clone().expect("subscribe runs in a span");
    let (name, fields) = spans.by_id(&id).expect("the span was noted");
    assert_eq!(name, "txmsg.broker.subscribe", "{fields:?}");
    let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
    assert_eq!(field("messaging.system"), "txmsg_memory");
    assert_eq!(field("topic"), "t.traced");
    assert_eq!(field("group"), "traced");
}
