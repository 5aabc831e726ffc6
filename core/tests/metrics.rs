//! The relay's outbox gauges, read through a recorder installed for this
//! test binary: pending rows and the oldest one's age, in all and by topic,
//! are set from the store's counts, and fall to zero once the rows are
//! published.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use txmsg_core::metrics::{
    INBOX_KEYS, OUTBOX_OLDEST_PENDING_AGE_SECONDS, OUTBOX_PENDING, OUTBOX_PREPARED,
    OUTBOX_TOPIC_OLDEST_PENDING_AGE_SECONDS, OUTBOX_TOPIC_PENDING,
};
use txmsg_core::{Message, Outbox, Relay, RelayConfig, Store};
use txmsg_memory::MemoryBroker;
use txmsg_sqlite::SqliteStore;

/// The last value of each gauge, by name.
#[derive(Debug, Default)]
struct Gauges(Mutex<HashMap<String, f64>>);

impl Gauges {
    fn get(&self, name: &str) -> Option<f64> {
        self.0.lock().unwrap().get(name).copied()
    }
}

#[derive(Debug)]
struct GaugeCell {
    name: String,
    gauges: Arc<Gauges>,
}

impl GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        *self
            .gauges
            .0
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default() += value;
    }

    fn decrement(&self, value: f64) {
        *self
            .gauges
            .0
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default() -= value;
    }

    fn set(&self, value: f64) {
        self.gauges
            .0
            .lock()
            .unwrap()
            .insert(self.name.clone(), value);
    }
}

/// Keeps gauges only; counters and histograms are dropped.
#[derive(Debug)]
struct GaugeRecorder(Arc<Gauges>);

impl Recorder for GaugeRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    /// Keyed `name` alone, or `name{label=value,...}` with labels.
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        Gauge::from_arc(Arc::new(GaugeCell {
            name,
            gauges: Arc::clone(&self.0),
        }))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// The gauges of this test binary's recorder, installed by the first caller.
fn gauges() -> Arc<Gauges> {
    static GAUGES: std::sync::OnceLock<Arc<Gauges>> = std::sync::OnceLock::new();
    Arc::clone(GAUGES.get_or_init(|| {
        let gauges = Arc::new(Gauges::default());
        metrics::set_global_recorder(GaugeRecorder(Arc::clone(&gauges))).unwrap();
        gauges
    }))
}

/// Polls `cond` every 20 ms for up to 10 s.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sets_pending_and_oldest_age_gauges_from_the_store() {
    let gauges = gauges();

    let path = std::env::temp_dir().join(format!("txmsg-metrics-{}.db", uuid::Uuid::now_v7()));
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let broker = MemoryBroker::new();
    let _sub = broker.observe("m.gauges");

    // Three rows written without a relay: only the poller can take them,
    // and it does not look before `poll_interval` unless woken.
    let outbox = Outbox::new(&store);
    for n in 0..3 {
        let mut tx = outbox.begin().await.unwrap();
        tx.enqueue(
            Message::new("m.gauges", &n)
                .unwrap()
                .idempotency_key(format!("gauge-{n}")),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(store.stats().await.unwrap().pending, 3);
    assert_eq!(gauges.get(OUTBOX_PENDING), None);

    let config = RelayConfig::default()
        .with_poll_interval(Duration::from_secs(3600))
        .with_stats_interval(Some(Duration::from_millis(50)));
    let relay = Relay::new(store.clone(), broker.clone(), config)
        .unwrap()
        .start();
    let topic_pending = format!("{OUTBOX_TOPIC_PENDING}{{topic=m.gauges}}");
    let topic_age = format!("{OUTBOX_TOPIC_OLDEST_PENDING_AGE_SECONDS}{{topic=m.gauges}}");
    wait_for(
        "pending gauges at 3 with a positive age, by topic too",
        || {
            gauges.get(OUTBOX_PENDING) == Some(3.0)
                && gauges
                    .get(OUTBOX_OLDEST_PENDING_AGE_SECONDS)
                    .is_some_and(|age| age > 0.0 && age < 60.0)
                && gauges.get(&topic_pending) == Some(3.0)
                && gauges
                    .get(&topic_age)
                    .is_some_and(|age| age > 0.0 && age < 60.0)
        },
    )
    .await;
    assert_eq!(gauges.get(OUTBOX_PREPARED), Some(0.0));

    // Once published and marked sent, both gauges fall to zero.
    relay.wake();
    wait_for("pending gauges back to 0 with age 0, by topic too", || {
        gauges.get(OUTBOX_PENDING) == Some(0.0)
            && gauges.get(OUTBOX_OLDEST_PENDING_AGE_SECONDS) == Some(0.0)
            && gauges.get(&topic_pending) == Some(0.0)
            && gauges.get(&topic_age) == Some(0.0)
    })
    .await;
    assert_eq!(store.stats().await.unwrap().sent, 3);

    relay.shutdown().await;
    assert_eq!(broker.published(), 3);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[derive(Debug, serde::Deserialize)]
struct Counted {
    n: u32,
}

#[txmsg::message_handler(topic = "m.inbox", group = "gauged")]
async fn count_it(_tx: &mut txmsg_core::Tx<'_, sqlx::Sqlite>, c: Counted) -> Result<(), String> {
    let _ = c.n;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_sets_its_inbox_gauge_after_each_purge() {
    use txmsg_core::Broker as _;
    use txmsg_core::consumer::{Consumer, ConsumerConfig};

    let gauges = gauges();
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let broker = MemoryBroker::new();
    let config = ConsumerConfig::new("gauged").with_purge_interval(Duration::from_millis(20));
    let consumer = Consumer::new(store.clone(), broker.clone(), config)
        .unwrap()
        .start()
        .await
        .unwrap();
    for n in 0..5 {
        let env = txmsg_core::Envelope::new(
            uuid::Uuid::now_v7(),
            "m.inbox",
            format!("k{n}"),
            format!(r#"{{"n":{n}}}"#).into_bytes(),
            chrono::Utc::now(),
        );
        broker.publish(&env).await.unwrap();
    }
    let name = format!("{INBOX_KEYS}{{group=gauged}}");
    wait_for("the inbox gauge counts the 5 keys", || {
        gauges.get(&name) == Some(5.0)
    })
    .await;
    consumer.shutdown().await;
}
