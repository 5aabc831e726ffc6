//! The consumer runtime on the embedded store and the in-process broker:
//! inbox retention (refused when too short, purged in batches).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use txmsg::Tx;
use txmsg::consumer::{Consumer, ConsumerConfig};
use txmsg_core::{Broker, Clock, Envelope, Error, SqlStore, Store};
use txmsg_memory::MemoryBroker;
use txmsg_sqlite::SqliteStore;

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

async fn count(store: &SqliteStore, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn retention_shorter_than_the_redelivery_horizon_is_refused_at_start() {
    let store = store().await;
    let config = ConsumerConfig {
        inbox_retention: Duration::from_secs(3600),
        redelivery_window: Duration::from_secs(3600),
        ..ConsumerConfig::new("purger")
    };
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
    let config = ConsumerConfig {
        purge_interval: Duration::from_millis(20),
        purge_batch: 7,
        clock: clock.clone(),
        ..ConsumerConfig::new("purger")
    };
    let retention = config.inbox_retention;
    let consumer = Consumer::new(store.clone(), broker.clone(), config)
        .unwrap()
        .start()
        .await
        .unwrap();
    for n in 0..30 {
        let env = Envelope::new(
            uuid::Uuid::now_v7(),
            "t.purge",
            format!("p{n}"),
            format!(r#"{{"n":{n}}}"#).into_bytes(),
            Utc::now(),
        );
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
