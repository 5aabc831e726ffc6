//! The receiving side end to end against the real PostgreSQL and RabbitMQ:
//! exactly once under duplicate delivery, retries, dead letters and replay,
//! two groups, poison messages, foreign CloudEvents producers, graceful
//! shutdown.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use txmsg::consumer::{Consumer, ConsumerConfig, ConsumerHandle, HandlerOutcome};
use txmsg::postgres::PgStore;
use txmsg::prelude::*;
use txmsg::{DeadFilter, Envelope, Message, Outbox, Relay, RelayConfig, Tx};
use txmsg_tests::{HandlerError, PgSchema, Rabbit};

#[derive(Debug, Serialize, Deserialize)]
struct Work {
    n: i64,
}

async fn effect(tx: &mut Tx<'_, sqlx::Postgres>, group: &str, n: i64) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO effects (grp, n) VALUES ($1, $2)")
        .bind(group)
        .bind(n)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn setup() -> (PgSchema, Rabbit) {
    let pg = PgSchema::new().await;
    pg.exec("CREATE TABLE effects (grp TEXT NOT NULL, n BIGINT NOT NULL)")
        .await;
    (pg, Rabbit::new().await)
}

fn config(group: &str) -> ConsumerConfig {
    ConsumerConfig::new(group)
        .with_backoff_min(Duration::from_millis(20))
        .with_backoff_max(Duration::from_millis(100))
}

async fn start(pg: &PgSchema, rabbit: &Rabbit, group: &str) -> ConsumerHandle<PgStore> {
    Consumer::new(pg.store.clone(), rabbit.broker.clone(), config(group))
        .unwrap()
        .start()
        .await
        .unwrap()
}

async fn effects(pg: &PgSchema, group: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE grp = $1")
        .bind(group)
        .fetch_one(&pg.pool)
        .await
        .unwrap()
}

async fn distinct_effects(pg: &PgSchema, group: &str) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT n) FROM effects WHERE grp = $1")
        .bind(group)
        .fetch_one(&pg.pool)
        .await
        .unwrap()
}

async fn inbox_keys(pg: &PgSchema, group: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM txmsg_inbox WHERE consumer_group = $1")
        .bind(group)
        .fetch_one(&pg.pool)
        .await
        .unwrap()
}

/// Polls (bounded) until `effects` of `group` reaches `n`.
async fn wait_effects(pg: &PgSchema, group: &str, n: i64) {
    for _ in 0..600 {
        if effects(pg, group).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{group}: {} effects after 30 s, expected {n}",
        effects(pg, group).await
    );
}

fn envelope(topic: &str, n: i64) -> Envelope {
    let mut e = Envelope::new(
        uuid::Uuid::now_v7(),
        topic,
        format!("work-{n}"),
        serde_json::to_vec(&Work { n }).unwrap(),
        chrono::Utc::now(),
    );
    e.key = Some(format!("k{}", n % 10));
    e
}

// ---- exactly once under duplicate delivery ----

#[txmsg::message_handler(topic = "work.dup", group = "dup")]
async fn dup_handler(tx: &mut Tx<'_, sqlx::Postgres>, work: Work) -> Result<(), HandlerError> {
    effect(tx, "dup", work.n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_delivered_twice_is_applied_once() {
    let (pg, rabbit) = setup().await;
    let consumer = start(&pg, &rabbit, "dup").await;
    const N: i64 = 1_000;
    let mut publishes = Vec::new();
    for n in 0..N {
        let env = envelope("work.dup", n);
        // Each message twice, on purpose, as a redelivery would bring it.
        for _ in 0..2 {
            let broker = rabbit.broker.clone();
            let env = env.clone();
            publishes.push(tokio::spawn(async move { broker.publish(&env).await }));
        }
    }
    for p in publishes {
        p.await.unwrap().unwrap();
    }
    wait_effects(&pg, "dup", N).await;
    // Give the second copies time to be seen and skipped.
    tokio::time::sleep(Duration::from_secs(1)).await;
    consumer.shutdown().await;
    assert_eq!(effects(&pg, "dup").await, N, "1 000 effects, none twice");
    assert_eq!(distinct_effects(&pg, "dup").await, N);
    assert_eq!(inbox_keys(&pg, "dup").await, N);
    rabbit.delete_group_queues(&[("dup", "work.dup")]).await;
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

// ---- retries, dead letters and replay ----

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[txmsg::message_handler(topic = "work.flaky", group = "flaky", max_attempts = 5)]
async fn flaky_handler(tx: &mut Tx<'_, sqlx::Postgres>, work: Work) -> Result<(), HandlerError> {
    effect(tx, "flaky", work.n).await?;
    // The effect above is rolled back with the error on the first two calls.
    if FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) < 2 {
        return Err(HandlerError("temporarily unavailable".into()));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_error_then_success_applies_once() {
    let (pg, rabbit) = setup().await;
    let consumer = start(&pg, &rabbit, "flaky").await;
    rabbit
        .broker
        .publish(&envelope("work.flaky", 1))
        .await
        .unwrap();
    wait_effects(&pg, "flaky", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.shutdown().await;
    assert_eq!(
        FLAKY_CALLS.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    assert_eq!(effects(&pg, "flaky").await, 1);
    assert!(
        consumer
            .dead_letters(&DeadFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    rabbit.delete_group_queues(&[("flaky", "work.flaky")]).await;
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

static BROKEN: AtomicBool = AtomicBool::new(true);
static BROKEN_CALLS: AtomicU32 = AtomicU32::new(0);

#[txmsg::message_handler(topic = "work.broken", group = "broken", max_attempts = 3)]
async fn broken_handler(
    tx: &mut Tx<'_, sqlx::Postgres>,
    work: Work,
    env: &Envelope,
) -> Result<(), HandlerError> {
    BROKEN_CALLS.fetch_add(1, Ordering::SeqCst);
    if BROKEN.load(Ordering::SeqCst) {
        return Err(HandlerError(format!(
            "cannot bill {}: card declined",
            env.idempotency_key
        )));
    }
    effect(tx, "broken", work.n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_handler_goes_dead_and_replay_applies_it_once() {
    let (pg, rabbit) = setup().await;
    let consumer = start(&pg, &rabbit, "broken").await;
    rabbit
        .broker
        .publish(&envelope("work.broken", 7))
        .await
        .unwrap();
    let mut dead = Vec::new();
    for _ in 0..200 {
        dead = consumer.dead_letters(&DeadFilter::default()).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(BROKEN_CALLS.load(Ordering::SeqCst), 3, "max_attempts calls");
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0].reason.contains("card declined"),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].envelope.idempotency_key, "work-7");
    assert_eq!(effects(&pg, "broken").await, 0);

    // Still failing: the dead letter stays.
    assert!(matches!(
        consumer.replay(dead[0].id).await.unwrap(),
        HandlerOutcome::Failed(_)
    ));
    assert_eq!(
        consumer
            .dead_letters(&DeadFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
    // Fixed: applied once, dead letter gone; a second replay finds nothing.
    BROKEN.store(false, Ordering::SeqCst);
    assert_eq!(
        consumer.replay(dead[0].id).await.unwrap(),
        HandlerOutcome::Applied
    );
    assert!(
        consumer
            .dead_letters(&DeadFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(consumer.replay(dead[0].id).await.is_err());
    consumer.shutdown().await;
    assert_eq!(effects(&pg, "broken").await, 1);
    rabbit
        .delete_group_queues(&[("broken", "work.broken")])
        .await;
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

// ---- two groups ----

#[txmsg::message_handler(topic = "work.fanout", group = "fan-a")]
async fn fan_a(tx: &mut Tx<'_, sqlx::Postgres>, work: Work) -> Result<(), HandlerError> {
    effect(tx, "fan-a", work.n).await
}

#[txmsg::message_handler(topic = "work.fanout", group = "fan-b")]
async fn fan_b(tx: &mut Tx<'_, sqlx::Postgres>, work: Work) -> Result<(), HandlerError> {
    effect(tx, "fan-b", work.n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_get_every_message_once() {
    let (pg, rabbit) = setup().await;
    let a = start(&pg, &rabbit, "fan-a").await;
    let b = start(&pg, &rabbit, "fan-b").await;
    // Through the outbox and the relay, as in production.
    let relay = Relay::new(
        pg.store.clone(),
        rabbit.broker.clone(),
        RelayConfig::default(),
    )
    .unwrap()
    .start();
    let outbox = Outbox::new(&pg.store).with_relay(&relay);
    for n in 0..200 {
        let mut tx = outbox.begin().await.unwrap();
        tx.enqueue(Message::new("work.fanout", &Work { n }).unwrap().key(n % 7))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    wait_effects(&pg, "fan-a", 200).await;
    wait_effects(&pg, "fan-b", 200).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
    for g in ["fan-a", "fan-b"] {
        assert_eq!(effects(&pg, g).await, 200, "{g}");
        assert_eq!(distinct_effects(&pg, g).await, 200, "{g}");
    }
    rabbit
        .delete_group_queues(&[("fan-a", "work.fanout"), ("fan-b", "work.fanout")])
        .await;
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

// ---- poison messages and foreign producers ----

#[txmsg::message_handler(topic = "work.poison", group = "poison")]
async fn poison_handler(tx: &mut Tx<'_, sqlx::Postgres>, work: Work) -> Result<(), HandlerError> {
    effect(tx, "poison", work.n).await
}

/// Publishes a raw AMQP message as a client in another language would.
async fn publish_raw(
    rabbit: &Rabbit,
    topic: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) {
    let conn = lapin::Connection::connect(
        &txmsg_tests::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    let props = lapin::BasicProperties::default()
        .with_content_type(content_type.into())
        .with_headers(table);
    channel
        .basic_publish(
            rabbit.exchange.as_str().into(),
            topic.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

fn ce(id: &str, topic: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("cloudEvents_specversion", "1.0".into()),
        ("cloudEvents_id", id.into()),
        ("cloudEvents_type", topic.into()),
        ("cloudEvents_source", "/other-service".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_with_a_reason_and_the_rest_flow() {
    let (pg, rabbit) = setup().await;
    let cfg = config("poison").with_max_payload_bytes(10_000);
    let consumer = Consumer::new(pg.store.clone(), rabbit.broker.clone(), cfg)
        .unwrap()
        .start()
        .await
        .unwrap();
    let as_refs = |h: &Vec<(&'static str, String)>| -> Vec<(&'static str, String)> { h.clone() };
    let json = "application/json";
    // 1. bad JSON, 2. wrong schema, 3. no id, 4. oversize, 5. wrong content type
    for (headers, ct, body) in [
        (
            as_refs(&ce("p-bad-json", "work.poison")),
            json,
            b"{not json".to_vec(),
        ),
        (
            as_refs(&ce("p-wrong-schema", "work.poison")),
            json,
            br#"{"m": "x"}"#.to_vec(),
        ),
        (
            vec![("cloudEvents_type", "work.poison".to_owned())],
            json,
            br#"{"n": 1}"#.to_vec(),
        ),
        (
            as_refs(&ce("p-oversize", "work.poison")),
            json,
            serde_json::to_vec(&"x".repeat(20_000)).unwrap(),
        ),
        (
            as_refs(&ce("p-text", "work.poison")),
            "text/plain",
            b"hello".to_vec(),
        ),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        publish_raw(&rabbit, "work.poison", &h, ct, &body).await;
    }
    // Then good messages, one from a foreign CloudEvents producer.
    let h = ce("foreign-1", "work.poison");
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    publish_raw(
        &rabbit,
        "work.poison",
        &h,
        "application/json; charset=utf-8",
        br#"{"n": 100}"#,
    )
    .await;
    for n in 0..10 {
        rabbit
            .broker
            .publish(&envelope("work.poison", n))
            .await
            .unwrap();
    }
    wait_effects(&pg, "poison", 11).await;
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = consumer.dead_letters(&DeadFilter::default()).await.unwrap();
        if dead.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.shutdown().await;
    assert_eq!(
        effects(&pg, "poison").await,
        11,
        "every good message after the poison ones"
    );
    let reasons: Vec<String> = dead.iter().map(|d| d.reason.clone()).collect();
    assert_eq!(dead.len(), 5, "{reasons:#?}");
    let has = |needle: &str| reasons.iter().any(|r| r.contains(needle));
    assert!(
        has("payload does not match"),
        "bad JSON / wrong schema: {reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .filter(|r| r.contains("payload does not match"))
            .count()
            == 2,
        "{reasons:#?}"
    );
    assert!(has("id"), "missing id: {reasons:#?}");
    assert!(has("exceeds"), "oversize: {reasons:#?}");
    assert!(has("text/plain"), "content type: {reasons:#?}");
    let foreign: i64 =
        sqlx::query_scalar("SELECT count(*) FROM effects WHERE grp = 'poison' AND n = 100")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
    assert_eq!(foreign, 1, "the foreign CloudEvents message was applied");
    let keys: HashSet<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM txmsg_inbox WHERE consumer_group = 'poison'",
    )
    .fetch_all(&pg.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert!(
        keys.contains("foreign-1"),
        "the CloudEvents id is the idempotency key"
    );
    rabbit
        .delete_group_queues(&[("poison", "work.poison")])
        .await;
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

// ---- graceful shutdown ----

#[txmsg::message_handler(topic = "work.stop", group = "stop")]
async fn stop_handler(tx: &mut Tx<'_, sqlx::Postgres>, work: Work) -> Result<(), HandlerError> {
    // Slow enough that the stream is still flowing when the test stops it
    // (500 messages at 16 at a time take over 1.5 s).
    tokio::time::sleep(Duration::from_millis(50)).await;
    effect(tx, "stop", work.n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let (pg, rabbit) = setup().await;
    // The group's queue exists from its first subscribe; the messages wait
    // there, so the stream below is as long as the handlers make it,
    // however slowly they were published.
    start(&pg, &rabbit, "stop").await.shutdown().await;
    const N: i64 = 500;
    for n in 0..N {
        rabbit
            .broker
            .publish(&envelope("work.stop", n))
            .await
            .unwrap();
    }
    let consumer = start(&pg, &rabbit, "stop").await;
    // Stop while messages are still flowing.
    for _ in 0..200 {
        if effects(&pg, "stop").await > 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.shutdown().await;
    let at_stop = effects(&pg, "stop").await;
    assert!(at_stop < N, "stopped mid-stream ({at_stop})");
    let consumer = start(&pg, &rabbit, "stop").await;
    wait_effects(&pg, "stop", N).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.shutdown().await;
    assert_eq!(effects(&pg, "stop").await, N);
    assert_eq!(distinct_effects(&pg, "stop").await, N);
    rabbit.delete_group_queues(&[("stop", "work.stop")]).await;
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

#[tokio::test]
async fn a_group_without_handlers_is_refused_at_start() {
    let (pg, rabbit) = setup().await;
    let err = Consumer::new(pg.store.clone(), rabbit.broker.clone(), config("nobody"))
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, txmsg::Error::Config { field: "group", .. }),
        "{err}"
    );
    rabbit.cleanup().await;
    pg.drop_schema().await;
}
