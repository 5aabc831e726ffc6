//! The RocketMQ broker killed and started again in the middle of a flow:
//! PostgreSQL outbox → relay → RocketMQ → consumer with its inbox. Nothing
//! confirmed is lost and nothing is applied twice, counted in the
//! consumer's table.
//!
//! It kills the machine's RocketMQ broker (`pkill -9 -f '^rocketmq-broker-rust'`)
//! and starts it again with `scripts/rocketmq.sh`,
//! which would break every other RocketMQ test running at the time: it is
//! ignored in the workspace run, and `scripts/test.sh` runs it alone
//! afterwards (`--run-ignored only`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use txmsg::consumer::{Consumer, ConsumerConfig};
use txmsg::{Message, Outbox, Relay, RelayConfig, Tx};
use txmsg_tests::{HandlerError, PgSchema};

const N: i64 = 300;

#[derive(Debug, Serialize, Deserialize)]
struct Work {
    n: i64,
}

#[txmsg::message_handler(topic = "restart.work", group = "restart")]
async fn apply(tx: &mut Tx<'_, sqlx::Postgres>, work: Work) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO restart_effects (n) VALUES ($1)")
        .bind(work.n)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn count(pg: &PgSchema, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&pg.pool)
        .await
        .unwrap()
}

/// Runs `command` through bash from the workspace root.
async fn shell(command: &str) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let status = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(command)
        .current_dir(root)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "`{command}` failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the shared RocketMQ broker: scripts/test.sh runs it alone"]
async fn rocketmq_restart_loses_nothing_and_applies_nothing_twice() {
    let pg = PgSchema::new().await;
    pg.exec("CREATE TABLE restart_effects (n BIGINT NOT NULL)")
        .await;
    let broker = txmsg_tests::rocketmq_broker(None).await;
    let consumer = Consumer::new(
        pg.store.clone(),
        broker.clone(),
        ConsumerConfig::new("restart")
            .with_backoff_min(Duration::from_millis(50))
            .with_backoff_max(Duration::from_millis(500)),
    )
    .unwrap()
    .start()
    .await
    .unwrap();
    let relay = Relay::new(
        pg.store.clone(),
        broker.clone(),
        // Retries far apart enough to outlast the restart: no message may
        // run out of attempts while the broker is away.
        RelayConfig::default()
            .with_backoff_min(Duration::from_millis(500))
            .with_backoff_max(Duration::from_secs(5))
            .with_max_attempts(30)
            .with_publish_timeout(Duration::from_secs(5)),
    )
    .unwrap()
    .start();
    let outbox = Outbox::new(&pg.store).with_relay(&relay);

    let producer = tokio::spawn(async move {
        for n in 0..N {
            let mut tx = outbox.begin().await.unwrap();
            tx.enqueue(
                Message::new("restart.work", &Work { n })
                    .unwrap()
                    .key(n % 7),
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // A third of the way through, the broker dies and comes back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    shell("pkill -9 -f '^rocketmq-broker-rust'; sleep 3; bash scripts/rocketmq.sh").await;
    producer.await.unwrap();

    let mut applied = 0;
    for _ in 0..1200 {
        applied = count(&pg, "SELECT count(*) FROM restart_effects").await;
        if applied >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a late redelivery to show up, were there one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = txmsg::Store::stats(&pg.store).await.unwrap();
    eprintln!(
        "applied {applied}; outbox pending {}, sent {}, dead {}",
        stats.pending, stats.sent, stats.dead
    );
    relay.shutdown().await;
    consumer.shutdown().await;
    assert_eq!(
        count(&pg, "SELECT count(*) FROM restart_effects").await,
        N,
        "every message applied once ({applied} when the wait ended)"
    );
    assert_eq!(
        count(&pg, "SELECT count(DISTINCT n) FROM restart_effects").await,
        N
    );
    assert_eq!((stats.pending, stats.dead), (0, 0), "nothing left behind");
    pg.drop_schema().await;
}
