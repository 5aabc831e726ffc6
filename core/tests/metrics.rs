//! The relay's outbox gauges, read through a recorder installed for this
//! test binary: pending rows and the oldest one's age are set from the
//! store's counts, and fall to zero once the rows are published.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use txmsg_core::metrics::{OUTBOX_OLDEST_PENDING_AGE_SECONDS, OUTBOX_PENDING};
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

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(GaugeCell {
            name: key.name().to_owned(),
            gauges: Arc::clone(&self.0),
        }))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
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
    let gauges = Arc::new(Gauges::default());
    metrics::set_global_recorder(GaugeRecorder(Arc::clone(&gauges))).unwrap();

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

    let config = RelayConfig {
        poll_interval: Duration::from_secs(3600),
        stats_interval: Some(Duration::from_millis(50)),
        ..RelayConfig::default()
    };
    let relay = Relay::new(store.clone(), broker.clone(), config)
        .unwrap()
        .start();
    wait_for("pending gauge at 3 with a positive age", || {
        gauges.get(OUTBOX_PENDING) == Some(3.0)
            && gauges
                .get(OUTBOX_OLDEST_PENDING_AGE_SECONDS)
                .is_some_and(|age| age > 0.0 && age < 60.0)
    })
    .await;

    // Once published and marked sent, both gauges fall to zero.
    relay.wake();
    wait_for("pending gauge back to 0 with age 0", || {
        gauges.get(OUTBOX_PENDING) == Some(0.0)
            && gauges.get(OUTBOX_OLDEST_PENDING_AGE_SECONDS) == Some(0.0)
    })
    .await;
    assert_eq!(store.stats().await.unwrap().sent, 3);

    relay.shutdown().await;
    assert_eq!(broker.published(), 3);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
