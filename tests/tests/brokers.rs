//! The consumer runtime's promises on each real broker, where they depend on
//! how the runtime and the adapter settle deliveries together:
//!
//! - a consumer restarted gracefully (twice, mid-stream) keeps every key's
//!   order, and applies every message once;
//! - a message whose dead letter cannot be stored keeps its key: the next
//!   message of the key waits, and the store is tried again with backoff
//!   rather than the message being handed back to the broker in a loop.
//!
//! Each test runs on PostgreSQL with RabbitMQ, NATS, Redis, MQTT, RocketMQ and the
//! in-process broker.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use txmsg::consumer::{Consumer, ConsumerConfig, ConsumerHandle};
use txmsg::memory::MemoryBroker;
use txmsg::mqtt::{MqttBroker, MqttConfig};
use txmsg::nats::{NatsBroker, NatsConfig};
use txmsg::postgres::PgStore;
use txmsg::redis::{RedisBroker, RedisConfig};
use txmsg::rocketmq::RocketBroker;
use txmsg::{Broker, DeadFilter, Envelope, Tx};
use txmsg_tests::{HandlerError, PgSchema, Rabbit, unique};

const TOPIC: &str = "brokers.work";
const GROUP: &str = "brokers";

#[derive(Debug, Serialize, Deserialize)]
struct Work {
    key: String,
    n: i64,
}

/// How long each handler call takes, in milliseconds (one test per process
/// under nextest, so a global is the test's own).
static HANDLER_MS: AtomicU64 = AtomicU64::new(0);

#[txmsg::message_handler(topic = "brokers.work", group = "brokers")]
async fn record(tx: &mut Tx<'_, sqlx::Postgres>, work: Work) -> Result<(), HandlerError> {
    let ms = HANDLER_MS.load(Ordering::Relaxed);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    sqlx::query("INSERT INTO brokers_effects (key, n) VALUES ($1, $2)")
        .bind(&work.key)
        .bind(work.n)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const CREATE: &str = "CREATE TABLE brokers_effects (seq BIGSERIAL PRIMARY KEY, key TEXT NOT NULL, n BIGINT NOT NULL)";

fn envelope(key: &str, n: i64) -> Envelope {
    let mut e = Envelope::new(
        uuid::Uuid::now_v7(),
        TOPIC,
        format!("{key}-{n}"),
        serde_json::to_vec(&Work {
            key: key.to_owned(),
            n,
        })
        .unwrap(),
        chrono::Utc::now(),
    );
    e.key = Some(key.to_owned());
    e
}

fn config() -> ConsumerConfig {
    ConsumerConfig::new(GROUP)
        .with_prefetch(16)
        .with_concurrency(4)
        .with_backoff_min(Duration::from_millis(50))
        .with_backoff_max(Duration::from_millis(400))
        .with_shutdown_timeout(Duration::from_secs(5))
}

async fn start<B: Broker>(store: &PgStore, broker: &B) -> ConsumerHandle<PgStore> {
    Consumer::new(store.clone(), broker.clone(), config())
        .unwrap()
        .start()
        .await
        .unwrap()
}

async fn effects(pg: &PgSchema) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT key, n FROM brokers_effects ORDER BY seq")
        .fetch_all(&pg.pool)
        .await
        .unwrap()
}

/// Waits until `done` holds for the effects, for at most `within`.
async fn wait_for(pg: &PgSchema, within: Duration, done: impl Fn(&[(String, i64)]) -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = effects(pg).await;
        if done(&now) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not done within {within:?}: {} effects",
            now.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 4 keys × 30 messages; the consumer is shut down and started again twice
/// while it works through them. Every key's effects are in publish order,
/// each message applied once.
async fn order_across_restarts<B: Broker>(pg: &PgSchema, broker: &B) {
    const KEYS: i64 = 4;
    const PER_KEY: i64 = 30;
    const TOTAL: usize = (KEYS * PER_KEY) as usize;
    HANDLER_MS.store(15, Ordering::Relaxed);
    pg.exec(CREATE).await;
    let mut consumer = start(&pg.store, broker).await;
    for n in 0..PER_KEY {
        for k in 0..KEYS {
            broker
                .publish(&envelope(&format!("k{k}"), n))
                .await
                .unwrap();
        }
    }
    for restart_after in [TOTAL / 4, TOTAL / 2] {
        wait_for(pg, Duration::from_secs(60), |e| e.len() >= restart_after).await;
        consumer.shutdown().await;
        consumer = start(&pg.store, broker).await;
    }
    wait_for(pg, Duration::from_secs(90), |e| e.len() >= TOTAL).await;
    // Anything applied twice would show up meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.shutdown().await;

    let all = effects(pg).await;
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (key, n) in &all {
        per_key.entry(key.clone()).or_default().push(*n);
    }
    for (key, order) in &per_key {
        assert_eq!(
            order,
            &(0..PER_KEY).collect::<Vec<_>>(),
            "key {key}: effects out of publish order, missing or doubled across consumer restarts"
        );
    }
    assert_eq!(all.len(), TOTAL, "every message applied once");
}

/// A message of key `k` that is dead (its payload does not deserialize)
/// while the dead-letter table refuses inserts, followed by three good
/// messages of `k`. While the store refuses, nothing of `k` is applied and
/// nothing is handed back; once it takes the dead letter, the three follow
/// in order.
async fn handed_back_message_holds_its_key<B: Broker>(pg: &PgSchema, broker: &B) {
    pg.exec(CREATE).await;
    pg.exec(
        "CREATE TABLE brokers_dead_down (x INT);
         INSERT INTO brokers_dead_down VALUES (1);
         CREATE FUNCTION brokers_refuse() RETURNS trigger AS $$
         BEGIN
           IF EXISTS (SELECT 1 FROM brokers_dead_down) THEN
             RAISE EXCEPTION 'dead letters are down';
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql;
         CREATE TRIGGER brokers_refuse BEFORE INSERT ON txmsg_consumer_dead
           FOR EACH ROW EXECUTE FUNCTION brokers_refuse();",
    )
    .await;
    let consumer = start(&pg.store, broker).await;
    let mut poison = envelope("k", 0);
    poison.payload = br#"{"not":"work"}"#.to_vec();
    broker.publish(&poison).await.unwrap();
    for n in 1..=3 {
        broker.publish(&envelope("k", n)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = consumer.stats();
    let applied = effects(pg).await;
    assert!(
        applied.is_empty() && stats.requeued == 0,
        "while the dead letter of k-0 cannot be stored, k waits and nothing is handed back: applied {applied:?}, handed back {} times",
        stats.requeued
    );
    pg.exec("DELETE FROM brokers_dead_down").await;
    wait_for(pg, Duration::from_secs(30), |e| e.len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dead = consumer.dead_letters(&DeadFilter::default()).await.unwrap();
    consumer.shutdown().await;
    assert_eq!(
        effects(pg).await,
        vec![
            ("k".to_owned(), 1),
            ("k".to_owned(), 2),
            ("k".to_owned(), 3)
        ],
        "k's messages after the dead one, in order, once"
    );
    assert_eq!(dead.len(), 1, "the dead message is kept once: {dead:?}");
    assert_eq!(dead[0].envelope.id, poison.id);
}

// ---- the brokers ----

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

async fn with_rabbit<F, Fut>(test: F)
where
    F: FnOnce(PgSchema, txmsg::rabbitmq::RabbitBroker) -> Fut,
    Fut: Future<Output = ()>,
{
    let pg = PgSchema::new().await;
    let rabbit = Rabbit::new().await;
    test(pg.clone(), rabbit.broker.clone()).await;
    rabbit.delete_group_queues(&[(GROUP, TOPIC)]).await;
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

async fn with_nats<F, Fut>(test: F)
where
    F: FnOnce(PgSchema, NatsBroker) -> Fut,
    Fut: Future<Output = ()>,
{
    let pg = PgSchema::new().await;
    let id = unique();
    let config = NatsConfig::default()
        .with_stream(format!("T{id}"))
        .and_then(|c| c.with_subject_prefix(format!("t{id}")))
        .and_then(|c| c.with_ack_wait(Duration::from_secs(2)))
        .expect("a valid configuration");
    let url = env_or("NATS_URL", "nats://127.0.0.1:4222");
    let broker = NatsBroker::connect(&url, config)
        .await
        .unwrap_or_else(|e| panic!("cannot reach NATS JetStream at NATS_URL={url}: {e:?}"));
    test(pg.clone(), broker.clone()).await;
    broker.delete_stream().await.unwrap();
    pg.drop_schema().await;
}

async fn with_redis<F, Fut>(test: F)
where
    F: FnOnce(PgSchema, RedisBroker) -> Fut,
    Fut: Future<Output = ()>,
{
    let pg = PgSchema::new().await;
    let prefix = format!("txmsg-test-{}:", unique());
    let config = RedisConfig::default()
        .with_key_prefix(&prefix)
        .and_then(|c| c.with_block(Duration::from_millis(100)))
        .expect("a valid configuration");
    let url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
    let broker = RedisBroker::connect(&url, config)
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis at REDIS_URL={url}: {e:?}"));
    let key = broker.stream_key(TOPIC);
    test(pg.clone(), broker).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    pg.drop_schema().await;
}

async fn with_mqtt<F, Fut>(test: F)
where
    F: FnOnce(PgSchema, MqttBroker) -> Fut,
    Fut: Future<Output = ()>,
{
    let pg = PgSchema::new().await;
    let config = MqttConfig::default()
        .with_topic_prefix(&format!("txmsg-test/{}/", unique()))
        .expect("a valid configuration");
    let url = env_or("MQTT_URL", "mqtt://127.0.0.1:1884");
    let broker = MqttBroker::connect(&url, config)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the MQTT server at MQTT_URL={url}: {e:?}"));
    test(pg.clone(), broker).await;
    pg.drop_schema().await;
}

async fn with_rocketmq<F, Fut>(test: F)
where
    F: FnOnce(PgSchema, RocketBroker) -> Fut,
    Fut: Future<Output = ()>,
{
    let pg = PgSchema::new().await;
    let broker = txmsg_tests::rocketmq_broker(None).await;
    test(pg.clone(), broker).await;
    pg.drop_schema().await;
}

async fn with_memory<F, Fut>(test: F)
where
    F: FnOnce(PgSchema, MemoryBroker) -> Fut,
    Fut: Future<Output = ()>,
{
    let pg = PgSchema::new().await;
    test(pg.clone(), MemoryBroker::new()).await;
    pg.drop_schema().await;
}

macro_rules! on_every_broker {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn rabbitmq() {
                    with_rabbit(|pg, b| async move { super::$case(&pg, &b).await }).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn nats() {
                    with_nats(|pg, b| async move { super::$case(&pg, &b).await }).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    with_redis(|pg, b| async move { super::$case(&pg, &b).await }).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mqtt() {
                    with_mqtt(|pg, b| async move { super::$case(&pg, &b).await }).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn rocketmq() {
                    with_rocketmq(|pg, b| async move { super::$case(&pg, &b).await }).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    with_memory(|pg, b| async move { super::$case(&pg, &b).await }).await;
                }
            }
        )*
    };
}

on_every_broker!(order_across_restarts, handed_back_message_holds_its_key);
