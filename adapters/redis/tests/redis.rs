//! Integration tests against the Redis at `REDIS_URL`
//! (default `redis://127.0.0.1:6379`).

use std::time::Duration;

use chrono::Utc;
use txmsg_core::consumer::SubscribeSpec;
use txmsg_core::{Broker, Envelope, Error};
use txmsg_redis::{RedisBroker, RedisConfig};
use txmsg_testkit::proxy::TcpProxy;
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix of its own for one test.
fn key_prefix() -> String {
    format!("txmsg-test-{}:", Uuid::now_v7().simple())
}

fn config(prefix: &str) -> RedisConfig {
    RedisConfig::default()
        .with_key_prefix(prefix)
        .and_then(|c| c.with_claim_idle(Duration::from_millis(1000)))
        .and_then(|c| c.with_block(Duration::from_millis(100)))
        .expect("valid test settings")
}

async fn connect(prefix: &str) -> RedisBroker {
    let url = redis_url();
    match RedisBroker::connect(&url, config(prefix)).await {
        Ok(broker) => broker,
        Err(e) => panic!("the Redis at REDIS_URL={url} is unreachable: {e:?}"),
    }
}

async fn plain_client() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).expect("REDIS_URL is a redis url");
    match client.get_multiplexed_async_connection().await {
        Ok(conn) => conn,
        Err(e) => panic!("the Redis at REDIS_URL={url} is unreachable: {e}"),
    }
}

/// Deletes every key that starts with `prefix`.
async fn delete_keys(prefix: &str) {
    let mut conn = plain_client().await;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .expect("DEL");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// A key prefix of its own per conformance case.
struct Redis {
    prefix: String,
}

impl txmsg_testkit::broker::BrokerFixture for Redis {
    type Broker = RedisBroker;

    async fn start() -> Self {
        Redis {
            prefix: key_prefix(),
        }
    }

    async fn broker(&self) -> RedisBroker {
        connect(&self.prefix).await
    }

    async fn finish(self) {
        delete_keys(&self.prefix).await;
    }
}

txmsg_testkit::broker_conformance!(Redis);

/// The broker, connected through a proxy that cuts its connection, comes
/// back by itself: publishes are confirmed again, the group gets what was
/// published after the outage, and nothing confirmed before is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_reconnects_after_connection_drop() {
    let prefix = key_prefix();
    let topics = format!("r{}", &Uuid::now_v7().simple().to_string()[20..]);
    let (proxy, via_proxy) = TcpProxy::for_url(&redis_url(), 6379).await;
    let broker_config = config(&prefix);
    txmsg_testkit::broker::reconnects_after_connection_drop(
        || async move {
            match RedisBroker::connect(&via_proxy, broker_config).await {
                Ok(broker) => broker,
                Err(e) => panic!(
                    "the Redis at REDIS_URL={} is unreachable: {e:?}",
                    redis_url()
                ),
            }
        },
        &proxy,
        &topics,
    )
    .await;
    delete_keys(&prefix).await;
}

async fn next_delivery(
    sub: &mut txmsg_core::consumer::Subscription,
) -> txmsg_core::consumer::Delivery {
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("the subscription ended"),
        Err(_) => panic!("nothing was delivered"),
    }
}

fn spec(topic: &str) -> SubscribeSpec {
    SubscribeSpec {
        group: "g".to_owned(),
        topic: topic.to_owned(),
        prefetch: 4,
    }
}

#[tokio::test]
async fn entry_of_a_plain_client_is_decoded() {
    let prefix = key_prefix();
    let broker = connect(&prefix).await;
    let mut sub = broker.subscribe(&spec("plain")).await.expect("subscribe");

    let id = Uuid::now_v7();
    let mut conn = plain_client().await;
    let _: String = redis::cmd("XADD")
        .arg(broker.stream_key("plain"))
        .arg("*")
        .arg("ce-id")
        .arg("order-42")
        .arg("ce-type")
        .arg("orders.placed")
        .arg("ce-source")
        .arg("/elsewhere")
        .arg("ce-specversion")
        .arg("1.0")
        .arg("ce-time")
        .arg("2024-05-06T07:08:09.123Z")
        .arg("ce-partitionkey")
        .arg("order-42")
        .arg("content-type")
        .arg("application/json; charset=utf-8")
        .arg("txmsg-id")
        .arg(id.to_string())
        .arg("h-x-tenant")
        .arg("acme")
        .arg("data")
        .arg(br#"{"order":42}"#.as_slice())
        .query_async(&mut conn)
        .await
        .expect("XADD");

    let d = next_delivery(&mut sub).await;
    assert!(!d.redelivered);
    let env = d.message.as_ref().expect("decoded").clone();
    d.ack().await.expect("ack");
    assert_eq!(env.id, id);
    assert_eq!(env.idempotency_key, "order-42");
    assert_eq!(env.topic, "orders.placed");
    assert_eq!(env.key.as_deref(), Some("order-42"));
    assert_eq!(env.payload, br#"{"order":42}"#);
    assert_eq!(env.created_at.timestamp_millis(), 1_714_979_289_123);
    assert_eq!(
        env.headers.get("x-tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(
        env.headers.get("ce-source").map(String::as_str),
        Some("/elsewhere")
    );
    drop(sub);
    delete_keys(&prefix).await;
}

#[tokio::test]
async fn entry_without_id_is_undecodable() {
    let prefix = key_prefix();
    let broker = connect(&prefix).await;
    let mut sub = broker.subscribe(&spec("bad")).await.expect("subscribe");

    let mut conn = plain_client().await;
    let _: String = redis::cmd("XADD")
        .arg(broker.stream_key("bad"))
        .arg("*")
        .arg("ce-type")
        .arg("bad")
        .arg("data")
        .arg("{}")
        .query_async(&mut conn)
        .await
        .expect("XADD");
    let _: String = redis::cmd("XADD")
        .arg(broker.stream_key("bad"))
        .arg("*")
        .arg("ce-id")
        .arg("x-1")
        .arg("content-type")
        .arg("text/plain")
        .arg("data")
        .arg("hello")
        .query_async(&mut conn)
        .await
        .expect("XADD");

    let d = next_delivery(&mut sub).await;
    let bad = d.message.as_ref().expect_err("no ce-id").clone();
    d.ack().await.expect("ack");
    assert!(bad.reason.contains("ce-id"), "{}", bad.reason);
    assert_eq!(bad.topic, "bad");
    assert_eq!(bad.body, b"{}");
    assert_eq!(bad.headers.get("ce-type").map(String::as_str), Some("bad"));

    let d = next_delivery(&mut sub).await;
    let bad = d.message.as_ref().expect_err("not json").clone();
    d.ack().await.expect("ack");
    assert!(bad.reason.contains("text/plain"), "{}", bad.reason);
    assert_eq!(bad.body, b"hello");
    drop(sub);
    delete_keys(&prefix).await;
}

#[tokio::test]
async fn publish_writes_cloudevents_fields() {
    let prefix = key_prefix();
    let broker = connect(&prefix).await;
    let env = Envelope::new(Uuid::now_v7(), "fields", "k-1", b"{}".to_vec(), Utc::now());
    broker.publish(&env).await.expect("publish");

    let mut conn = plain_client().await;
    let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(broker.stream_key("fields"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    assert_eq!(reply.len(), 1);
    let fields = &reply[0].1;
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("ce-id"), Some("k-1"));
    assert_eq!(get("ce-type"), Some("fields"));
    assert_eq!(get("ce-source"), Some("/txmsg"));
    assert_eq!(get("ce-specversion"), Some("1.0"));
    assert_eq!(get("content-type"), Some("application/json"));
    assert_eq!(get("txmsg-id"), Some(env.id.to_string().as_str()));
    assert_eq!(get("data"), Some("{}"));
    delete_keys(&prefix).await;
}

#[tokio::test]
async fn bad_url_is_a_config_error() {
    let err = RedisBroker::connect("http://nope", RedisConfig::default())
        .await
        .expect_err("not a redis url");
    assert!(matches!(err, Error::Config { field: "url", .. }), "{err:?}");
}

#[tokio::test]
async fn debug_hides_the_password() {
    let prefix = key_prefix();
    // A password Redis does not check when no ACL is set still connects;
    // if it refuses, the error must not show it either.
    let url = redis_url().replacen("redis://", "redis://:hunter2secret@", 1);
    match RedisBroker::connect(&url, config(&prefix)).await {
        Ok(broker) => {
            let shown = format!("{broker:?}");
            assert!(!shown.contains("hunter2secret"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        Err(e) => assert!(!format!("{e:?}").contains("hunter2secret"), "{e:?}"),
    }
}

/// A delivery held for three times the claim time (1 s) is neither taken
/// over by another consumer of the group nor delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_held_delivery_is_not_redelivered() {
    let prefix = key_prefix();
    let broker = connect(&prefix).await;
    txmsg_testkit::broker::held_delivery_is_not_redelivered(
        &broker,
        "held",
        Duration::from_secs(3),
    )
    .await;
    delete_keys(&prefix).await;
}

fn keyed(topic: &str, n: usize) -> Envelope {
    let mut e = Envelope::new(
        Uuid::now_v7(),
        topic,
        format!("k-{n}"),
        format!(r#"{{"n":{n}}}"#).into_bytes(),
        Utc::now(),
    );
    e.key = Some("k".to_owned());
    e
}

fn number(d: &txmsg_core::consumer::Delivery) -> String {
    match &d.message {
        Ok(e) => e.idempotency_key.clone(),
        Err(bad) => panic!("undecodable: {}", bad.reason),
    }
}

/// The only consumer of a group crashes holding the first three messages
/// of a key (its process is gone: nothing is handed back). The group's
/// next consumer gets them first, then the rest, in publish order, without
/// waiting for the claim time (30 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_after_a_crash_of_the_only_consumer() {
    let prefix = key_prefix();
    let config = config(&prefix)
        .with_claim_idle(Duration::from_secs(30))
        .expect("valid claim_idle");
    let broker = RedisBroker::connect(&redis_url(), config)
        .await
        .expect("redis");
    let mut first = broker.subscribe(&spec("crash")).await.expect("subscribe");
    for n in 0..8 {
        broker.publish(&keyed("crash", n)).await.expect("publish");
    }
    let mut held = Vec::new();
    for n in 0..3 {
        let d = next_delivery(&mut first).await;
        assert_eq!(number(&d), format!("k-{n}"));
        held.push(d);
    }
    // A crash: the subscription's task ends and what it held is neither
    // acknowledged nor handed back.
    std::mem::forget(held);
    drop(first);
    // The process is gone: its reader's last step is over.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = std::time::Instant::now();
    let mut second = broker.subscribe(&spec("crash")).await.expect("subscribe");
    let mut order = Vec::new();
    for _ in 0..8 {
        let d = next_delivery(&mut second).await;
        order.push(number(&d));
        d.ack().await.expect("ack");
    }
    assert_eq!(
        order,
        (0..8).map(|n| format!("k-{n}")).collect::<Vec<_>>(),
        "after a crash of the only consumer, the key's messages arrive in publish order"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the crashed consumer's messages came back only after {:?}",
        started.elapsed()
    );
    delete_keys(&prefix).await;
}

/// Subscriptions that end leave no consumer behind in their group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_subscriptions_leave_the_group() {
    let prefix = key_prefix();
    let broker = connect(&prefix).await;
    for n in 0..3 {
        let mut sub = broker.subscribe(&spec("leave")).await.expect("subscribe");
        broker.publish(&keyed("leave", n)).await.expect("publish");
        let d = next_delivery(&mut sub).await;
        if n == 1 {
            // One hands back what it held before it ends.
            let _ = sub.close().await;
            d.nack().await.expect("nack");
        } else {
            d.ack().await.expect("ack");
        }
        drop(sub);
    }
    let mut conn = plain_client().await;
    let mut names = Vec::new();
    for _ in 0..50 {
        let consumers: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(broker.stream_key("leave"))
            .arg("g")
            .query_async(&mut conn)
            .await
            .expect("XINFO CONSUMERS");
        names = consumers
            .into_iter()
            .filter_map(|c| match c {
                redis::Value::Map(pairs) => pairs.into_iter().find_map(|(k, v)| {
                    (k == redis::Value::BulkString(b"name".to_vec())).then_some(v)
                }),
                redis::Value::Array(flat) => flat.get(1).cloned(),
                _ => None,
            })
            .filter_map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8(b).ok(),
                _ => None,
            })
            .filter(|n| n != "txmsg-handed-back")
            .collect();
        if names.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(names.is_empty(), "consumers left in the group: {names:?}");
    delete_keys(&prefix).await;
}

/// An entry trimmed from the stream (`max_len`) after it was delivered and
/// before it was acknowledged is not silently gone: taken over after a
/// crash, it reaches the group as an undecodable delivery that says why,
/// which the consumer keeps as a dead letter; handed back by a live
/// consumer, the hand-back fails with an error that says it is lost, and
/// the subscription reports it the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_trimmed_before_its_ack_is_reported() {
    let prefix = key_prefix();
    let broker = RedisBroker::connect(
        &redis_url(),
        config(&prefix)
            .with_max_len(Some(10))
            .expect("valid max_len"),
    )
    .await
    .expect("redis");
    let single = SubscribeSpec {
        prefetch: 1,
        ..spec("trim")
    };
    for crash in [false, true] {
        let mut sub = broker.subscribe(&single).await.expect("subscribe");
        broker.publish(&keyed("trim", 0)).await.expect("publish");
        let held = next_delivery(&mut sub).await;
        if crash {
            // The consumer's process is gone: what it held is neither
            // acknowledged nor handed back.
            std::mem::forget(held);
            drop(sub);
            tokio::time::sleep(Duration::from_millis(200)).await;
            trim_away(&broker).await;
            sub = broker.subscribe(&single).await.expect("subscribe");
        } else {
            trim_away(&broker).await;
            // The consumer lets go of it after a refresh found it trimmed.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let err = held
                .nack()
                .await
                .expect_err("a trimmed entry cannot be handed back");
            assert!(err.to_string().contains("trimmed"), "{err}");
        }
        let d = next_delivery(&mut sub).await;
        match &d.message {
            Err(bad) => assert!(
                bad.reason.contains("trimmed"),
                "crash {crash}: {}",
                bad.reason
            ),
            Ok(e) => panic!(
                "crash {crash}: the trimmed entry vanished; the next delivery was {}",
                e.idempotency_key
            ),
        }
        d.ack().await.expect("ack");
        drop(sub);
        delete_keys(&prefix).await;
    }
}

/// Publishes enough entries of topic `trim` to trim its first ones away
/// (`max_len` 10, trimmed by whole nodes of 100 entries).
async fn trim_away(broker: &RedisBroker) {
    for n in 1..400 {
        broker.publish(&keyed("trim", n)).await.expect("publish");
    }
}

/// `trim_acknowledged` deletes what every group acknowledged and keeps
/// what a group still holds or has not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_acknowledged_keeps_what_a_group_needs() {
    let prefix = key_prefix();
    let broker = connect(&prefix).await;
    let mut fast = broker.subscribe(&spec("grow")).await.expect("subscribe");
    let slow_spec = SubscribeSpec {
        group: "slow".to_owned(),
        prefetch: 1,
        ..spec("grow")
    };
    let mut slow = broker.subscribe(&slow_spec).await.expect("subscribe");
    for n in 0..10 {
        broker.publish(&keyed("grow", n)).await.expect("publish");
    }
    for _ in 0..10 {
        next_delivery(&mut fast).await.ack().await.expect("ack");
    }
    // The slow group acknowledges 4 and holds the fifth.
    for _ in 0..4 {
        next_delivery(&mut slow).await.ack().await.expect("ack");
    }
    let held = next_delivery(&mut slow).await;
    assert_eq!(number(&held), "k-4");
    let deleted = broker.trim_acknowledged("grow").await.expect("trim");
    assert_eq!(deleted, 4, "the four entries both groups acknowledged");
    held.ack().await.expect("ack");
    for n in 5..10 {
        let d = next_delivery(&mut slow).await;
        assert_eq!(number(&d), format!("k-{n}"), "nothing needed was trimmed");
        d.ack().await.expect("ack");
    }
    assert_eq!(broker.trim_acknowledged("grow").await.expect("trim"), 6);
    assert_eq!(
        broker
            .trim_acknowledged("no-such-topic")
            .await
            .expect("trim"),
        0
    );
    drop((fast, slow));
    delete_keys(&prefix).await;
}

#[tokio::test]
async fn max_len_trims_the_stream() {
    let prefix = key_prefix();
    let url = redis_url();
    let broker = RedisBroker::connect(
        &url,
        config(&prefix)
            .with_max_len(Some(10))
            .expect("valid max_len"),
    )
    .await
    .unwrap_or_else(|e| panic!("the Redis at REDIS_URL={url} is unreachable: {e:?}"));
    for n in 0..500 {
        let env = Envelope::new(
            Uuid::now_v7(),
            "trimmed",
            format!("k-{n}"),
            b"{}".to_vec(),
            Utc::now(),
        );
        broker.publish(&env).await.expect("publish");
    }
    let mut conn = plain_client().await;
    let len: u64 = redis::cmd("XLEN")
        .arg(broker.stream_key("trimmed"))
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert!(len < 500, "the stream kept all {len} entries");
    delete_keys(&prefix).await;
}
