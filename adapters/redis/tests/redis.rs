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
        .key_prefix(prefix)
        .and_then(|c| c.claim_idle(Duration::from_millis(1000)))
        .and_then(|c| c.block(Duration::from_millis(100)))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_conformance() {
    let prefix = key_prefix();
    let topics = format!("conf-{}", &Uuid::now_v7().simple().to_string()[20..]);
    let broker = connect(&prefix).await;
    txmsg_testkit::broker::run_all(|| std::future::ready(broker.clone()), &topics).await;
    delete_keys(&prefix).await;
}

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

#[tokio::test]
async fn held_delivery_is_not_taken_over() {
    let prefix = key_prefix();
    let broker = connect(&prefix).await;
    let mut holder = broker.subscribe(&spec("slow")).await.expect("subscribe");
    let env = Envelope::new(Uuid::now_v7(), "slow", "k-1", b"{}".to_vec(), Utc::now());
    broker.publish(&env).await.expect("publish");
    let held = next_delivery(&mut holder).await;

    // Another consumer of the group, while the first one handles its
    // delivery for several times the claim time (1 s).
    let mut other = broker.subscribe(&spec("slow")).await.expect("subscribe");
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(3500), other.next()).await {
        panic!("a delivery still being handled was taken over: {d:?}");
    }
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), holder.next()).await {
        panic!("a delivery still being handled was delivered again: {d:?}");
    }
    held.ack().await.expect("ack");
    drop((holder, other));
    delete_keys(&prefix).await;
}

#[tokio::test]
async fn max_len_trims_the_stream() {
    let prefix = key_prefix();
    let url = redis_url();
    let broker = RedisBroker::connect(
        &url,
        config(&prefix).max_len(Some(10)).expect("valid max_len"),
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
