//! Exactly once across stores and brokers: every message published twice is
//! applied once, for PostgreSQL with each broker and for RabbitMQ with each
//! other store.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use txmsg::Broker;
use txmsg::consumer::{Consumer, ConsumerConfig, InboxStore};
use txmsg::memory::MemoryBroker;
use txmsg::mqtt::{MqttBroker, MqttConfig};
use txmsg::mysql::MySqlStore;
use txmsg::nats::{NatsBroker, NatsConfig};
use txmsg::redis::{RedisBroker, RedisConfig};
use txmsg::sqlite::SqliteStore;
use txmsg::{Envelope, SqlStore, Store, Tables, Tx};
use txmsg_tests::{HandlerError, PgSchema, Rabbit, unique};

const TOPIC: &str = "matrix.work";
const GROUP: &str = "matrix";
const N: i64 = 200;

const EFFECTS: &str = "SELECT count(*) FROM matrix_effects";
const DISTINCT: &str = "SELECT count(DISTINCT n) FROM matrix_effects";
const INBOX: &str = "SELECT count(*) FROM txmsg_inbox WHERE consumer_group = 'matrix'";
const CREATE: &str = "CREATE TABLE matrix_effects (n BIGINT NOT NULL)";

#[derive(Debug, Serialize, Deserialize)]
struct Work {
    n: i64,
}

#[txmsg::message_handler(topic = "matrix.work", group = "matrix")]
async fn pg_handler(tx: &mut Tx<'_, sqlx::Postgres>, work: Work) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO matrix_effects (n) VALUES ($1)")
        .bind(work.n)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[txmsg::message_handler(topic = "matrix.work", group = "matrix")]
async fn sqlite_handler(tx: &mut Tx<'_, sqlx::Sqlite>, work: Work) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO matrix_effects (n) VALUES (?)")
        .bind(work.n)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[txmsg::message_handler(topic = "matrix.work", group = "matrix")]
async fn mysql_handler(tx: &mut Tx<'_, sqlx::MySql>, work: Work) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO matrix_effects (n) VALUES (?)")
        .bind(work.n)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn envelope(n: i64) -> Envelope {
    let mut e = Envelope::new(
        uuid::Uuid::now_v7(),
        TOPIC,
        format!("m-{n}"),
        serde_json::to_vec(&Work { n }).unwrap(),
        chrono::Utc::now(),
    );
    e.key = Some(format!("k{}", n % 5));
    e
}

/// Runs a consumer of `store` on `broker`, publishes every message twice and
/// checks, through `count` (which runs a `SELECT count(..)` in the store's
/// database), that each was applied exactly once.
async fn exactly_once<S, B, F, Fut>(store: &S, broker: &B, count: F)
where
    S: InboxStore,
    B: Broker,
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = i64>,
{
    let config = ConsumerConfig::new(GROUP)
        .with_backoff_min(Duration::from_millis(20))
        .with_backoff_max(Duration::from_millis(100));
    let consumer = Consumer::new(store.clone(), broker.clone(), config)
        .unwrap()
        .start()
        .await
        .unwrap();
    for n in 0..N {
        let env = envelope(n);
        // Each message twice, on purpose, as a redelivery would bring it.
        for _ in 0..2 {
            broker.publish(&env).await.unwrap();
        }
    }
    let mut applied = 0;
    for _ in 0..600 {
        applied = count(EFFECTS).await;
        if applied >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied >= N, "{applied} effects after 30 s, expected {N}");
    // Give the second copies time to be seen and skipped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.shutdown().await;
    assert_eq!(count(EFFECTS).await, N, "one effect per message");
    assert_eq!(count(DISTINCT).await, N);
    assert_eq!(count(INBOX).await, N);
}

async fn pg_count(pg: &PgSchema, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&pg.pool).await.unwrap()
}

async fn pg_schema() -> PgSchema {
    let pg = PgSchema::new().await;
    pg.exec(CREATE).await;
    pg
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

// ---- PostgreSQL with each broker ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rabbitmq() {
    let pg = pg_schema().await;
    let rabbit = Rabbit::new().await;
    exactly_once(&pg.store, &rabbit.broker, |sql| pg_count(&pg, sql)).await;
    rabbit.delete_group_queues(&[(GROUP, TOPIC)]).await;
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nats() {
    let pg = pg_schema().await;
    let id = unique();
    let config = NatsConfig::default()
        .with_stream(format!("T{id}"))
        .and_then(|c| c.with_subject_prefix(format!("t{id}")))
        .expect("a valid configuration");
    let url = env_or("NATS_URL", "nats://127.0.0.1:4222");
    let broker = NatsBroker::connect(&url, config)
        .await
        .unwrap_or_else(|e| panic!("cannot reach NATS JetStream at NATS_URL={url}: {e:?}"));
    exactly_once(&pg.store, &broker, |sql| pg_count(&pg, sql)).await;
    broker.delete_group_consumer(GROUP, TOPIC).await.unwrap();
    broker.delete_stream().await.unwrap();
    pg.drop_schema().await;
}

/// Deletes every Redis key that starts with `prefix`.
async fn delete_redis_keys(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
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
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis() {
    let pg = pg_schema().await;
    let prefix = format!("txmsg-test-{}:", unique());
    let config = RedisConfig::default()
        .with_key_prefix(&prefix)
        .and_then(|c| c.with_claim_idle(Duration::from_millis(1000)))
        .and_then(|c| c.with_block(Duration::from_millis(100)))
        .expect("a valid configuration");
    let url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
    let broker = RedisBroker::connect(&url, config)
        .await
        .unwrap_or_else(|e| panic!("cannot reach Redis at REDIS_URL={url}: {e:?}"));
    exactly_once(&pg.store, &broker, |sql| pg_count(&pg, sql)).await;
    delete_redis_keys(&url, &prefix).await;
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_mqtt() {
    let pg = pg_schema().await;
    let config = MqttConfig::default()
        .with_topic_prefix(&format!("txmsg-test/{}/", unique()))
        .expect("a valid configuration");
    let url = env_or("MQTT_URL", "mqtt://127.0.0.1:1884");
    let broker = MqttBroker::connect(&url, config)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the MQTT server at MQTT_URL={url}: {e:?}"));
    exactly_once(&pg.store, &broker, |sql| pg_count(&pg, sql)).await;
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rocketmq() {
    let pg = pg_schema().await;
    let broker = txmsg_tests::rocketmq_broker(None).await;
    exactly_once(&pg.store, &broker, |sql| pg_count(&pg, sql)).await;
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_memory() {
    let pg = pg_schema().await;
    let broker = MemoryBroker::new();
    exactly_once(&pg.store, &broker, |sql| pg_count(&pg, sql)).await;
    pg.drop_schema().await;
}

// ---- RabbitMQ with each other store ----

/// A SQLite database file removed on drop.
struct TempDb(std::path::PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rabbitmq() {
    let db = TempDb(std::env::temp_dir().join(format!("txmsg-matrix-{}.db", unique())));
    let store = SqliteStore::connect(&format!("sqlite:{}", db.0.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    sqlx::raw_sql(CREATE).execute(store.pool()).await.unwrap();
    let rabbit = Rabbit::new().await;
    let pool = store.pool();
    exactly_once(&store, &rabbit.broker, |sql| async move {
        sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
    })
    .await;
    rabbit.delete_group_queues(&[(GROUP, TOPIC)]).await;
    rabbit.cleanup().await;
    store.pool().close().await;
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_rabbitmq() {
    let url = env_or("MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
    let admin = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach MySQL/MariaDB at MYSQL_URL={url}: {e}"));
    let name = format!("txmsg_t_{}", unique());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .execute(&admin)
        .await
        .unwrap();
    let options = sqlx::mysql::MySqlConnectOptions::from_str(&url)
        .unwrap()
        .database(&name);
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(16)
        .connect_with(options)
        .await
        .unwrap();
    let store = MySqlStore::new(pool.clone(), Tables::default()).expect("store");
    store.migrate().await.unwrap();
    sqlx::raw_sql(CREATE).execute(&pool).await.unwrap();
    let rabbit = Rabbit::new().await;
    let counted = &pool;
    exactly_once(&store, &rabbit.broker, |sql| async move {
        sqlx::query_scalar(sql).fetch_one(counted).await.unwrap()
    })
    .await;
    rabbit.delete_group_queues(&[(GROUP, TOPIC)]).await;
    rabbit.cleanup().await;
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{name}`"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
}
