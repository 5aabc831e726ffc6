//! Relay behaviour on the embedded store and the in-process broker: fast
//! path, poller, retries and dead letters, outages, order per key, expiry,
//! shutdown.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use txmsg_core::{DeadFilter, Message, Outbox, Relay, RelayConfig, RelayHandle, Store, Tx};
use txmsg_memory::{MemoryBroker, MemorySubscription};
use txmsg_sqlite::SqliteStore;

mod support;
use support::spans::SpanLog;

async fn store() -> (SqliteStore, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("txmsg-relay-{}.db", uuid::Uuid::now_v7()));
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    (store, path)
}

fn cleanup(path: std::path::PathBuf) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn config() -> RelayConfig {
    RelayConfig::default()
        .with_poll_interval(Duration::from_millis(50))
        .with_backoff_min(Duration::from_millis(20))
        .with_backoff_max(Duration::from_millis(80))
}

/// Receives until `n` messages arrived or 10 s passed, then 200 ms more.
async fn receive(sub: &mut MemorySubscription, n: usize) -> Vec<txmsg_core::Envelope> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let wait = if out.len() >= n {
            Duration::from_millis(200)
        } else {
            deadline - tokio::time::Instant::now()
        };
        match tokio::time::timeout(wait, sub.recv()).await {
            Ok(Some(e)) => out.push(e),
            _ => break,
        }
    }
    out
}

/// Starts a relay over `store` and `broker`, and an outbox whose commits
/// hand their messages to it.
fn start<B: txmsg_core::Broker>(
    store: &SqliteStore,
    broker: B,
    cfg: RelayConfig,
) -> (RelayHandle, Outbox<sqlx::Sqlite>) {
    let relay = Relay::new(store.clone(), broker, cfg).unwrap().start();
    let outbox = Outbox::new(store).with_relay(&relay);
    (relay, outbox)
}

async fn send(outbox: &Outbox<sqlx::Sqlite>, topic: &str, key: Option<&str>, idem: &str) {
    let mut msg = Message::new(topic, &idem).unwrap().idempotency_key(idem);
    if let Some(k) = key {
        msg = msg.key(k);
    }
    let mut tx = outbox.begin().await.unwrap();
    tx.enqueue(msg).await.unwrap();
    tx.commit().await.unwrap();
}

/// Sends messages `0..count` (their idempotency keys), spread over the
/// keys `k0` to `k{keys - 1}`, a transaction each.
async fn send_over_keys(outbox: &Outbox<sqlx::Sqlite>, topic: &str, count: u32, keys: u32) {
    for n in 0..count {
        send(
            outbox,
            topic,
            Some(&format!("k{}", n % keys)),
            &n.to_string(),
        )
        .await;
    }
}

/// Enqueues messages `ns` of `topic` in `tx` (payload `n`, idempotency key
/// `{prefix}{n}`), all of `key` if one is given.
async fn enqueue_numbered(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    topic: &str,
    key: Option<&str>,
    prefix: &str,
    ns: Range<u32>,
) {
    for n in ns {
        let mut msg = Message::new(topic, &n)
            .unwrap()
            .idempotency_key(format!("{prefix}{n}"));
        if let Some(k) = key {
            msg = msg.key(k);
        }
        tx.enqueue(msg).await.unwrap();
    }
}

/// How many times each idempotency key arrived.
fn deliveries(got: &[txmsg_core::Envelope]) -> HashMap<String, u32> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    for e in got {
        *seen.entry(e.idempotency_key.clone()).or_default() += 1;
    }
    seen
}

/// Receives from `sub` as [`receive`] does, and fails unless `n` messages
/// came and every key's messages (idempotency keys `0`, `1`, ...) in
/// increasing order; keyless ones have no order.
async fn receive_all_in_key_order(sub: &mut MemorySubscription, n: usize, when: &str) {
    let got = receive(sub, n).await;
    assert_eq!(got.len(), n, "messages received{when}");
    let mut per_key: HashMap<&str, Vec<u32>> = HashMap::new();
    for e in got.iter().filter(|e| e.key.is_some()) {
        let n = e.idempotency_key.parse().unwrap();
        per_key
            .entry(e.key.as_deref().unwrap())
            .or_default()
            .push(n);
    }
    for (k, ns) in per_key {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "order of {k}{when}: {ns:?}"
        );
    }
}

async fn wait_for<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_publishes_committed_messages_only() {
    let (store, path) = store().await;
    let broker = MemoryBroker::new();
    let mut sub = broker.observe("t.fast");
    let (relay, outbox) = start(&store, broker.clone(), config());
    for n in 0..20 {
        let mut tx = outbox.begin().await.unwrap();
        tx.enqueue(Message::new("t.fast", &n).unwrap().idempotency_key(n))
            .await
            .unwrap();
        assert_eq!(tx.fast_path_len(), 1, "leased to this relay at insert");
        if n % 4 == 0 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
        }
    }
    let got = receive(&mut sub, 15).await;
    assert_eq!(relay.health(), txmsg_core::Health::Running);
    relay.shutdown().await;
    assert_eq!(relay.health(), txmsg_core::Health::Stopped);
    assert_eq!(got.len(), 15);
    assert!(
        got.iter()
            .all(|e| e.idempotency_key.parse::<u32>().unwrap() % 4 != 0)
    );
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.sent, stats.pending), (15, 0));
    cleanup(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_publishes_rows_written_without_a_relay() {
    let (store, path) = store().await;
    let outbox = Outbox::new(&store);
    send_over_keys(&outbox, "t.poll", 120, 7).await;
    let broker = MemoryBroker::new();
    let mut sub = broker.observe("t.poll");
    let relay = Relay::new(store.clone(), broker, config().with_batch_size(50))
        .unwrap()
        .start();
    receive_all_in_key_order(&mut sub, 120, "").await;
    relay.shutdown().await;
    cleanup(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_message_is_retried_then_dead_while_other_keys_flow() {
    let (store, path) = store().await;
    let broker = MemoryBroker::new();
    let mut sub = broker.observe("t.fail");
    broker.reject_if(Some(Arc::new(|e: &txmsg_core::Envelope| {
        e.key.as_deref() == Some("bad")
    })));
    let cfg = config().with_max_attempts(3);
    let (relay, outbox) = start(&store, broker.clone(), cfg);
    send(&outbox, "t.fail", Some("bad"), "bad-0").await;
    send(&outbox, "t.fail", Some("bad"), "bad-1").await;
    for n in 0..10 {
        send(&outbox, "t.fail", Some("good"), &format!("good-{n}")).await;
    }
    let got = receive(&mut sub, 10).await;
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|e| e.key.as_deref() == Some("good")));
    let s = store.clone();
    wait_for(|| {
        let s = s.clone();
        async move { s.stats().await.unwrap().dead == 1 }
    })
    .await;
    relay.shutdown().await;
    let dead = store.dead_letters(&DeadFilter::default()).await.unwrap();
    assert_eq!(
        dead.len(),
        1,
        "only the key's first message went dead; the second is parked"
    );
    assert_eq!(dead[0].envelope.idempotency_key, "bad-0");
    assert_eq!(
        dead[0].envelope.attempts, 3,
        "three attempts, the third went dead: as the reason says"
    );
    assert!(
        dead[0].reason.contains("gave up after 3 attempts"),
        "{}",
        dead[0].reason
    );
    assert_eq!(
        store.stats().await.unwrap().pending,
        1,
        "bad-1 waits behind the dead one"
    );

    // Replay after the broker accepts again: both go out, in order.
    broker.reject_if(None);
    let relay = Relay::new(store.clone(), broker.clone(), config())
        .unwrap()
        .start();
    assert!(
        store
            .replay(dead[0].envelope.id, chrono::Utc::now())
            .await
            .unwrap()
    );
    relay.wake();
    let got = receive(&mut sub, 2).await;
    relay.shutdown().await;
    let keys: Vec<_> = got.iter().map(|e| e.idempotency_key.as_str()).collect();
    assert_eq!(keys, ["bad-0", "bad-1"]);
    cleanup(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_counts_no_attempts_and_recovers() {
    let (store, path) = store().await;
    let broker = MemoryBroker::new();
    let mut sub = broker.observe("t.down");
    let cfg = config().with_max_attempts(2);
    let (relay, outbox) = start(&store, broker.clone(), cfg);
    broker.set_down(true);
    send_over_keys(&outbox, "t.down", 30, 3).await;
    // Longer than max_attempts × backoff: an outage must not kill messages.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead, stats.sent), (30, 0, 0));
    broker.set_down(false);
    receive_all_in_key_order(&mut sub, 30, " after the outage").await;
    relay.shutdown().await;
    cleanup(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_is_dead_never_published() {
    let (store, path) = store().await;
    let outbox = Outbox::new(&store);
    let mut tx = outbox.begin().await.unwrap();
    tx.enqueue(
        Message::new("t.exp", &1)
            .unwrap()
            .ttl(Duration::from_millis(1)),
    )
    .await
    .unwrap();
    tx.enqueue(Message::new("t.exp", &2).unwrap())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let broker = MemoryBroker::new();
    let mut sub = broker.observe("t.exp");
    let relay = Relay::new(store.clone(), broker, config()).unwrap().start();
    let got = receive(&mut sub, 1).await;
    relay.shutdown().await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"2");
    let dead = store.dead_letters(&DeadFilter::default()).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("expired"));
    cleanup(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_across_a_shutdown_under_load() {
    let (store, path) = store().await;
    let broker = MemoryBroker::new();
    let mut sub = broker.observe("t.stop");
    let (relay, outbox) = start(&store, broker.clone(), config());
    let producer = {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            send_over_keys(&outbox, "t.stop", 300, 4).await;
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    relay.shutdown().await;
    producer.await.unwrap();
    // A new relay takes over whatever the first left.
    let relay = Relay::new(store.clone(), broker, config()).unwrap().start();
    let got = receive(&mut sub, 300).await;
    relay.shutdown().await;
    let seen = deliveries(&got);
    assert_eq!(seen.len(), 300, "none lost");
    assert_eq!(store.stats().await.unwrap().pending, 0);
    cleanup(path);
}

#[tokio::test]
async fn sent_rows_are_purged_after_their_retention_in_batches() {
    let (store, path) = store().await;
    let broker = MemoryBroker::new();
    let mut sub = broker.observe("purge.t");
    // Kept for 1 s, purged in batches of 7 (so a purge takes several
    // statements), looked at every 50 ms.
    let cfg = config()
        .with_sent_retention(Some(Duration::from_secs(1)))
        .with_purge_interval(Duration::from_millis(50))
        .with_purge_batch(7);
    let (relay, outbox) = start(&store, broker.clone(), cfg);
    for i in 0..40 {
        send(&outbox, "purge.t", Some("k"), &format!("p-{i}")).await;
    }
    assert_eq!(receive(&mut sub, 40).await.len(), 40);
    // Right after publishing, the rows are still kept ...
    let stats = store.stats().await.unwrap();
    assert!(
        stats.sent > 0,
        "sent rows are kept for their retention: {stats:?}"
    );
    // ... and after the retention they are gone, all of them.
    wait_for(|| async { store.stats().await.unwrap().sent == 0 }).await;
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead, stats.sent), (0, 0, 0));
    relay.shutdown().await;

    // Without a retention nothing is purged.
    let cfg = config()
        .with_sent_retention(None)
        .with_purge_interval(Duration::from_millis(50));
    let (relay, outbox) = start(&store, broker.clone(), cfg);
    for i in 0..5 {
        send(&outbox, "purge.t", Some("k"), &format!("q-{i}")).await;
    }
    assert_eq!(receive(&mut sub, 5).await.len(), 5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.stats().await.unwrap().sent,
        5,
        "kept without a retention"
    );
    relay.shutdown().await;
    cleanup(path);
}

#[test]
fn purge_settings_are_validated() {
    let zero_batch = RelayConfig::default().with_purge_batch(0);
    assert!(
        zero_batch
            .validate()
            .unwrap_err()
            .to_string()
            .contains("purge_batch")
    );
    let zero_interval = RelayConfig::default().with_purge_interval(Duration::ZERO);
    assert!(
        zero_interval
            .validate()
            .unwrap_err()
            .to_string()
            .contains("purge_interval")
    );
}

/// A broker in front of a [`MemoryBroker`] that waits before each publish
/// and panics on the first publish of chosen idempotency keys.
#[derive(Debug, Clone, Default)]
struct Awkward {
    inner: MemoryBroker,
    delay: Duration,
    panic_once: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    started: Arc<std::sync::atomic::AtomicUsize>,
}

impl Awkward {
    /// One that waits `delay` before each publish.
    fn slow(delay: Duration) -> Self {
        Awkward {
            delay,
            ..Awkward::default()
        }
    }
}

impl txmsg_core::Broker for Awkward {
    async fn publish(&self, envelope: &txmsg_core::Envelope) -> txmsg_core::Result<()> {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let panics = self
            .panic_once
            .lock()
            .unwrap()
            .remove(&envelope.idempotency_key);
        assert!(!panics, "broker client bug on {}", envelope.idempotency_key);
        self.inner.publish(envelope).await
    }

    async fn subscribe(
        &self,
        spec: &txmsg_core::consumer::SubscribeSpec,
    ) -> txmsg_core::Result<txmsg_core::consumer::Subscription> {
        self.inner.subscribe(spec).await
    }
}

/// A transaction nested in another (a savepoint) commits into the outer
/// one only: its messages go out once the outer transaction commits, and
/// never if it rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_transaction_publishes_only_after_the_outer_commit() {
    let (store, path) = store().await;
    let broker = MemoryBroker::new();
    let mut sub = broker.observe("t.nested");
    let (relay, outbox) = start(&store, broker.clone(), config());

    for (idem, commit_outer) in [("rolled-back", false), ("committed", true)] {
        let mut outer = outbox.begin().await.unwrap();
        let nested = sqlx::Connection::begin(&mut *outer).await.unwrap();
        let mut tx = outbox.wrap(nested);
        tx.enqueue(
            Message::new("t.nested", &idem)
                .unwrap()
                .key("k")
                .idempotency_key(idem),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        if commit_outer {
            outer.commit().await.unwrap();
        } else {
            outer.rollback().await.unwrap();
        }
    }
    let got = receive(&mut sub, 1).await;
    relay.shutdown().await;
    let keys: Vec<_> = got.iter().map(|e| e.idempotency_key.as_str()).collect();
    assert_eq!(
        keys,
        ["committed"],
        "only the message whose outer transaction committed is published"
    );
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.sent, stats.pending), (1, 0));
    cleanup(path);
}

/// A publish that panics is a failed attempt: the message is retried and
/// the later messages of its key follow it, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_publish_is_a_failed_attempt_and_its_key_flows() {
    let (store, path) = store().await;
    let broker = Awkward::default();
    broker.panic_once.lock().unwrap().insert("p1".into());
    let mut sub = broker.inner.observe("t.panic");
    let (relay, outbox) = start(&store, broker.clone(), config());
    for n in 1..=3 {
        send(&outbox, "t.panic", Some("k"), &format!("p{n}")).await;
    }
    send(&outbox, "t.panic", Some("other"), "o1").await;
    let got = receive(&mut sub, 4).await;
    relay.shutdown().await;
    let keys: Vec<_> = got.iter().map(|e| e.idempotency_key.as_str()).collect();
    let of_k: Vec<_> = keys.iter().filter(|k| k.starts_with('p')).collect();
    assert_eq!(of_k, [&"p1", &"p2", &"p3"], "all published: {keys:?}");
    assert!(keys.contains(&"o1"), "{keys:?}");
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.sent, stats.pending, stats.dead), (4, 0, 0));
    cleanup(path);
}

/// Publishes confirmed while a shutdown drains them are marked sent before
/// the relay stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_marks_what_in_flight_publishes_confirmed() {
    let (store, path) = store().await;
    let broker = Awkward::slow(Duration::from_millis(300));
    let (relay, outbox) = start(&store, broker.clone(), config());
    for n in 0..5 {
        send(&outbox, "t.drain", None, &format!("d{n}")).await;
    }
    let started = Arc::clone(&broker.started);
    wait_for(|| {
        let started = Arc::clone(&started);
        async move { started.load(std::sync::atomic::Ordering::SeqCst) == 5 }
    })
    .await;
    relay.shutdown().await;
    assert_eq!(
        broker.inner.published(),
        5,
        "the in-flight publishes finished"
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.sent, stats.pending),
        (5, 0),
        "every confirmed publish is marked sent"
    );
    cleanup(path);
}

/// A message waiting for a publish slot is not published once its lease
/// is too close to running out: another relay may have taken it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_is_checked_after_waiting_for_a_publish_slot() {
    let (store, path) = store().await;
    let slow = Awkward::slow(Duration::from_millis(250));
    let fast = Awkward {
        inner: slow.inner.clone(),
        ..Awkward::default()
    };
    let mut sub = slow.inner.observe("t.lease");
    let one_at_a_time = config()
        .with_max_in_flight(1)
        .with_lease(Duration::from_secs(1))
        .with_publish_timeout(Duration::from_millis(300));
    let (a, outbox) = start(&store, slow.clone(), one_at_a_time);
    let b = Relay::new(
        store.clone(),
        fast,
        config().with_poll_interval(Duration::from_millis(20)),
    )
    .unwrap()
    .start();
    let mut tx = outbox.begin().await.unwrap();
    enqueue_numbered(&mut tx, "t.lease", None, "l", 0..8).await;
    assert_eq!(tx.fast_path_len(), 8);
    tx.commit().await.unwrap();
    let got = receive(&mut sub, 8).await;
    a.shutdown().await;
    b.shutdown().await;
    let seen = deliveries(&got);
    assert_eq!(seen.len(), 8, "none lost: {seen:?}");
    assert!(
        seen.values().all(|n| *n == 1),
        "none published twice: {seen:?}"
    );
    cleanup(path);
}

/// A publish is a producer span with OpenTelemetry's messaging attributes,
/// named `publish <topic>` once exported; the broker's publish runs below it
/// in `txmsg.broker.publish`.
#[tokio::test]
async fn a_publish_span_carries_the_messaging_attributes() {
    let (spans, _guard) = SpanLog::install();
    let (store, path) = store().await;
    let broker = MemoryBroker::new();
    let mut sub = broker.observe("t.otel");
    let (relay, outbox) = start(&store, broker.clone(), config());
    send(&outbox, "t.otel", Some("k"), "otel-1").await;
    let got = receive(&mut sub, 1).await;
    relay.shutdown().await;
    let publish = spans.first("txmsg.publish").expect("a txmsg.publish span");
    let field = |name: &str| publish.get(name).cloned().unwrap_or_default();
    assert_eq!(field("otel.name"), "publish t.otel", "{publish:?}");
    assert_eq!(field("otel.kind"), "producer");
    assert_eq!(field("messaging.system"), "txmsg_memory");
    assert_eq!(field("messaging.operation.type"), "send");
    assert_eq!(field("messaging.destination.name"), "t.otel");
    assert_eq!(field("messaging.message.id"), got[0].id.to_string());
    // The relay runs the broker's publish in the span every broker shares.
    let broker_publish = spans
        .first("txmsg.broker.publish")
        .expect("a txmsg.broker.publish span");
    let field = |name: &str| broker_publish.get(name).cloned().unwrap_or_default();
    assert_eq!(
        field("messaging.system"),
        "txmsg_memory",
        "{broker_publish:?}"
    );
    assert_eq!(field("topic"), "t.otel");
    assert_eq!(field("key"), "k");
    assert_eq!(field("message_id"), got[0].id.to_string());
    assert_eq!(field("attempt"), "0");
    cleanup(path);
}

/// Starts a relay with one publish slot (`cfg`, then one at a time) over
/// `broker`, hands it 30 messages of `topic` (the first `keyed` of one key,
/// in one transaction, then keyless ones) and at once shuts it down.
async fn shut_down_while_busy(
    store: &SqliteStore,
    broker: &Awkward,
    cfg: RelayConfig,
    topic: &str,
    keyed: u32,
) {
    let (relay, outbox) = start(store, broker.clone(), cfg.with_max_in_flight(1));
    // One transaction's messages of a key all go to the fast path (a later
    // transaction's would go to the poller while the key has one pending).
    let mut tx = outbox.begin().await.unwrap();
    enqueue_numbered(&mut tx, topic, Some("k"), "", 0..keyed).await;
    tx.commit().await.unwrap();
    for n in keyed..30 {
        send(&outbox, topic, None, &n.to_string()).await;
    }
    relay.shutdown().await;
}

/// Shutdown publishes what the relay holds: the messages queued behind
/// their key and those waiting for a publish slot go out, in order, rather
/// than being left pending for another relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_publishes_what_waits_for_a_slot_or_its_key() {
    let (store, path) = store().await;
    let broker = Awkward::slow(Duration::from_millis(10));
    let mut sub = broker.inner.observe("t.flush");
    shut_down_while_busy(&store, &broker, config(), "t.flush", 20).await;
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.sent, stats.pending),
        (30, 0),
        "everything held when shutdown began was published and marked"
    );
    receive_all_in_key_order(&mut sub, 30, " across the shutdown").await;
    cleanup(path);
}

/// Past its deadline, shutdown leaves what it could not publish to the next
/// relay at once: released, not leased until the lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_its_deadline_releases_what_it_could_not_publish() {
    let (store, path) = store().await;
    let slow = Awkward::slow(Duration::from_millis(100));
    let mut sub = slow.inner.observe("t.deadline");
    let short = config().with_shutdown_timeout(Duration::from_millis(300));
    shut_down_while_busy(&store, &slow, short, "t.deadline", 10).await;
    let left = store.stats().await.unwrap().pending;
    assert!(left > 0, "a 300 ms flush cannot publish 3 s of messages");
    // Nothing is leased any more: a claim now (far inside the 30 s lease)
    // gets every pending row of a key's head and every keyless one.
    let owner = uuid::Uuid::now_v7();
    let now = chrono::Utc::now();
    let claimed = store
        .claim(&txmsg_core::ClaimRequest {
            lease: txmsg_core::Lease {
                owner,
                until: now + chrono::Duration::seconds(30),
            },
            now,
            limit: 100,
            per_key_limit: 100,
            dead_parks_key: true,
        })
        .await
        .unwrap();
    assert_eq!(
        claimed.len() as u64,
        left,
        "every row left pending is claimable at once"
    );
    let ids: Vec<_> = claimed.iter().map(|e| e.id).collect();
    store.release(&ids, owner).await.unwrap();
    // And the next relay publishes them, every key in order.
    let relay = Relay::new(store.clone(), slow.inner.clone(), config())
        .unwrap()
        .start();
    receive_all_in_key_order(&mut sub, 30, " across two relays").await;
    relay.shutdown().await;
    cleanup(path);
}
