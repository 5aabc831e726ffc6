//! Integration tests against a real NATS server with JetStream enabled, at
//! `NATS_URL` (default `nats://127.0.0.1:4222`).

use std::time::Duration;

use async_nats::HeaderMap;
use chrono::Utc;
use txmsg_core::consumer::{Delivery, SubscribeSpec, Subscription};
use txmsg_core::{Broker, Envelope};
use txmsg_nats::{NatsBroker, NatsConfig};
use txmsg_testkit::proxy::TcpProxy;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A configuration with a stream and subject prefix of its own.
fn config() -> NatsConfig {
    let id = Uuid::now_v7().simple().to_string();
    NatsConfig::default()
        .with_stream(format!("T{id}"))
        .and_then(|c| c.with_subject_prefix(format!("t{id}")))
        .and_then(|c| c.with_ack_wait(Duration::from_secs(5)))
        .and_then(|c| c.with_publish_timeout(Duration::from_secs(5)))
        .expect("a valid configuration")
}

async fn connect(config: &NatsConfig) -> NatsBroker {
    match NatsBroker::connect(&url(), config.clone()).await {
        Ok(broker) => broker,
        Err(e) => panic!(
            "cannot reach NATS JetStream at {} (set NATS_URL to a server started with -js): {e:?}",
            url()
        ),
    }
}

async fn plain_client() -> async_nats::Client {
    match async_nats::connect(url()).await {
        Ok(c) => c,
        Err(e) => panic!("cannot reach NATS at {} (set NATS_URL): {e}", url()),
    }
}

async fn next(sub: &mut Subscription) -> Delivery {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("the subscription ended"),
        Err(_) => panic!("nothing was delivered within {WAIT:?}"),
    }
}

fn spec(group: &str, topic: &str) -> SubscribeSpec {
    SubscribeSpec {
        group: group.to_owned(),
        topic: topic.to_owned(),
        prefetch: 8,
    }
}

/// A stream and subject prefix of its own per conformance case.
struct Nats {
    config: NatsConfig,
}

impl txmsg_testkit::broker::BrokerFixture for Nats {
    type Broker = NatsBroker;

    async fn start() -> Self {
        Nats { config: config() }
    }

    async fn broker(&self) -> NatsBroker {
        connect(&self.config).await
    }

    async fn finish(self) {
        connect(&self.config)
            .await
            .delete_stream()
            .await
            .expect("delete the stream");
    }
}

txmsg_testkit::broker_conformance!(Nats);

/// A delivery held three times as long as the group's `ack_wait` (1 s) is
/// not delivered again: the adapter tells the server it is still being
/// worked on.
#[tokio::test(flavor = "multi_thread")]
async fn conformance_held_delivery_is_not_redelivered() {
    let config = config()
        .with_ack_wait(Duration::from_secs(1))
        .expect("a valid ack_wait");
    let broker = connect(&config).await;
    let prefix = format!("h{}", &Uuid::now_v7().simple().to_string()[20..]);
    txmsg_testkit::broker::held_delivery_is_not_redelivered(
        &broker,
        &prefix,
        Duration::from_secs(3),
    )
    .await;
    broker.delete_stream().await.expect("delete the stream");
}

/// The stream the broker creates has the configured replicas; on this
/// single server only one, and asking for three is a clear error, not a
/// stream with fewer copies than asked for.
#[tokio::test(flavor = "multi_thread")]
async fn the_stream_gets_the_configured_replicas() {
    let config = config().with_replicas(1).expect("valid");
    let broker = connect(&config).await;
    let js = async_nats::jetstream::new(plain_client().await);
    let mut stream = js.get_stream(config.stream()).await.expect("stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.config.num_replicas, 1);
    drop(broker);
    js.delete_stream(config.stream())
        .await
        .expect("delete stream");

    let three = config_with_replicas(3);
    let err = NatsBroker::connect(&url(), three.clone())
        .await
        .expect_err("a single server keeps one replica only");
    let text = err.to_string();
    eprintln!("three replicas on one server: {text}");
    assert!(
        text.contains(three.stream()) && text.contains("replicas"),
        "the error names the stream and the cause: {text}"
    );
    assert!(
        js.get_stream(three.stream()).await.is_err(),
        "no stream was created with fewer replicas than asked for"
    );
}

fn config_with_replicas(replicas: usize) -> NatsConfig {
    config().with_replicas(replicas).expect("1 to 5 replicas")
}

/// `connect` to a stream an operator created keeps the operator's
/// settings: only what txmsg needs (its subjects, the duplicate window) is
/// changed.
#[tokio::test(flavor = "multi_thread")]
async fn connect_keeps_the_operators_stream_settings() {
    use async_nats::jetstream::stream;
    let config = config();
    let js = async_nats::jetstream::new(plain_client().await);
    let mut created = js
        .create_stream(stream::Config {
            name: config.stream().to_owned(),
            subjects: vec![config.stream_subjects()],
            description: Some("operated by the payments team".to_owned()),
            max_age: Duration::from_secs(3600),
            max_messages: 1_000,
            max_bytes: 10 * 1024 * 1024,
            duplicate_window: config.duplicate_window(),
            ..Default::default()
        })
        .await
        .expect("the operator's stream is created");
    let before = created.info().await.expect("stream info").config.clone();

    let broker = connect(&config).await;
    let after = created.info().await.expect("stream info").config.clone();
    assert_eq!(
        (
            after.description.as_deref(),
            after.max_age,
            after.max_messages,
            after.max_bytes,
            after.num_replicas,
        ),
        (
            before.description.as_deref(),
            before.max_age,
            before.max_messages,
            before.max_bytes,
            before.num_replicas,
        ),
        "connect changed the operator's stream settings"
    );

    // A stream without txmsg's subjects or with another duplicate window
    // gets them, and keeps the rest.
    let mut narrowed = after.clone();
    narrowed.subjects = vec![format!("{}x.other", config.subject_prefix())];
    narrowed.duplicate_window = Duration::from_secs(5);
    js.update_stream(narrowed)
        .await
        .expect("the operator narrows the stream");
    drop(broker);
    let broker = connect(&config).await;
    let again = created.info().await.expect("stream info").config.clone();
    assert!(
        again.subjects.contains(&config.stream_subjects()),
        "txmsg's subjects are added: {:?}",
        again.subjects
    );
    assert!(
        again
            .subjects
            .contains(&format!("{}x.other", config.subject_prefix())),
        "the operator's subjects stay: {:?}",
        again.subjects
    );
    assert_eq!(again.duplicate_window, config.duplicate_window());
    assert_eq!(
        (
            again.description.as_deref(),
            again.max_age,
            again.max_messages,
            again.max_bytes
        ),
        (
            before.description.as_deref(),
            before.max_age,
            before.max_messages,
            before.max_bytes
        ),
        "the rest is kept"
    );
    broker.delete_stream().await.expect("delete the stream");
}

/// The broker, connected through a proxy that cuts its connection, comes
/// back by itself: publishes are confirmed again, the group gets what was
/// published after the outage, and nothing confirmed before is lost.
#[tokio::test(flavor = "multi_thread")]
async fn conformance_reconnects_after_connection_drop() {
    let config = config();
    let (proxy, via_proxy) = TcpProxy::for_url(&url(), 4222).await;
    let prefix = format!("r{}", &Uuid::now_v7().simple().to_string()[20..]);
    let broker_config = config.clone();
    txmsg_testkit::broker::reconnects_after_connection_drop(
        || async move {
            match NatsBroker::connect(&via_proxy, broker_config).await {
                Ok(broker) => broker,
                Err(e) => panic!(
                    "cannot reach NATS JetStream at {} (set NATS_URL to a server started with -js): {e:?}",
                    url()
                ),
            }
        },
        &proxy,
        &prefix,
    )
    .await;
    connect(&config)
        .await
        .delete_stream()
        .await
        .expect("delete the stream");
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_msg_id_within_the_window_is_dropped() {
    let config = config();
    let broker = connect(&config).await;
    let mut sub = broker
        .subscribe(&spec("dedup", "orders.placed"))
        .await
        .expect("subscribe");

    let env = Envelope::new(
        Uuid::now_v7(),
        "orders.placed",
        "order-1",
        b"{}".to_vec(),
        Utc::now(),
    );
    broker.publish(&env).await.expect("first publish is acked");
    broker.publish(&env).await.expect("republish is acked");
    // Another row with the same idempotency key: dropped as well.
    let mut again = env.clone();
    again.id = Uuid::now_v7();
    broker.publish(&again).await.expect("same key is acked");

    let first = next(&mut sub).await;
    assert_eq!(first.message.as_ref().map(|e| e.id).ok(), Some(env.id));
    first.ack().await.expect("ack");
    let mut extra = 0;
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(700), sub.next()).await {
        extra += 1;
        d.ack().await.expect("ack");
    }
    assert_eq!(
        extra, 0,
        "a republish within the duplicate window was delivered"
    );
    drop(sub);
    broker.delete_stream().await.expect("delete the stream");
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_cloudevents_message_is_decoded() {
    let config = config();
    let broker = connect(&config).await;
    let mut sub = broker
        .subscribe(&spec("foreign", "payments.done"))
        .await
        .expect("subscribe");

    let js = async_nats::jetstream::new(plain_client().await);
    let mut headers = HeaderMap::new();
    headers.insert("ce-id", "pay-42");
    headers.insert("ce-type", "payments.done");
    headers.insert("ce-source", "/payments");
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-time", "2024-05-06T07:08:09Z");
    headers.insert("ce-partitionkey", "acct-1");
    headers.insert("Content-Type", "application/json");
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    headers.insert("x-tenant", "acme");
    js.publish_with_headers(
        config.subject("payments.done"),
        headers,
        br#"{"amount":5}"#.to_vec().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("puback");

    let d = next(&mut sub).await;
    let env = d.message.clone().expect("decodable");
    assert_eq!(env.idempotency_key, "pay-42");
    assert_eq!(env.topic, "payments.done");
    assert_eq!(env.key.as_deref(), Some("acct-1"));
    assert_eq!(env.payload, br#"{"amount":5}"#);
    assert_eq!(env.created_at.to_rfc3339(), "2024-05-06T07:08:09+00:00");
    assert_eq!(
        env.headers.get("traceparent").map(String::as_str),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(
        env.headers.get("x-tenant").map(String::as_str),
        Some("acme")
    );
    assert!(!d.redelivered);
    d.ack().await.expect("ack");
    drop(sub);
    broker.delete_stream().await.expect("delete the stream");
}

#[tokio::test(flavor = "multi_thread")]
async fn message_without_ce_id_is_undecodable() {
    let config = config();
    let broker = connect(&config).await;
    let mut sub = broker
        .subscribe(&spec("bad", "raw.events"))
        .await
        .expect("subscribe");

    let js = async_nats::jetstream::new(plain_client().await);
    let mut headers = HeaderMap::new();
    headers.insert("ce-type", "raw.events");
    headers.insert("Content-Type", "application/json");
    js.publish_with_headers(config.subject("raw.events"), headers, b"{}".to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("puback");
    let mut headers = HeaderMap::new();
    headers.insert("ce-id", "x-1");
    headers.insert("Content-Type", "text/plain");
    js.publish_with_headers(config.subject("raw.events"), headers, b"hi".to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("puback");

    let d = next(&mut sub).await;
    let bad = d.message.as_ref().expect_err("no ce-id: undecodable");
    assert!(bad.reason.contains("ce-id"), "reason: {}", bad.reason);
    assert_eq!(bad.topic, "raw.events");
    assert_eq!(bad.body, b"{}");
    d.ack().await.expect("ack");

    let d = next(&mut sub).await;
    let bad = d.message.as_ref().expect_err("text/plain: undecodable");
    assert!(bad.reason.contains("text/plain"), "reason: {}", bad.reason);
    d.ack().await.expect("ack");
    drop(sub);
    broker.delete_stream().await.expect("delete the stream");
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_shows_no_credentials() {
    let config = config();
    let url = url();
    let with_user = url.replacen("nats://", "nats://someone:s3cr3t@", 1);
    let broker = match NatsBroker::connect(&with_user, config.clone()).await {
        Ok(b) => b,
        // A server with authentication refuses made-up credentials.
        Err(_) => connect(&config).await,
    };
    let shown = format!("{broker:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains(config.stream()), "{shown}");
    broker.delete_stream().await.expect("delete the stream");
}
