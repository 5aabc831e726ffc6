//! A consumer that dies after its handler committed and before it
//! acknowledged: the redelivery is recognised in the inbox and not applied
//! again. Its own test binary, since fail points are global to a process.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use txmsg::Tx;
use txmsg::consumer::{Consumer, ConsumerConfig};
use txmsg::prelude::*;
use txmsg_tests::{PgSchema, Rabbit};

#[derive(Debug, Serialize, Deserialize)]
struct Work {
    n: i64,
}

#[txmsg::message_handler(topic = "work.crash", group = "crash")]
async fn crash_handler(tx: &mut Tx<'_, sqlx::Postgres>, work: Work) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO effects (n) VALUES ($1)")
        .bind(work.n)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn effects(pg: &PgSchema) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(&pg.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_commit_and_ack_applies_once() {
    let pg = PgSchema::new().await;
    pg.exec("CREATE TABLE effects (n BIGINT NOT NULL)").await;
    let rabbit = Rabbit::new().await;
    let scenario = fail::FailScenario::setup();
    fail::cfg("txmsg::consumer::after_commit_before_ack", "return").unwrap();

    let consumer = Consumer::new(
        pg.store.clone(),
        rabbit.broker.clone(),
        ConsumerConfig::new("crash"),
    )
    .unwrap()
    .start()
    .await
    .unwrap();
    let mut env = txmsg::Envelope::new(
        uuid::Uuid::now_v7(),
        "work.crash",
        "crash-1",
        br#"{"n": 1}"#.to_vec(),
        chrono::Utc::now(),
    );
    env.key = Some("k".into());
    rabbit.broker.publish(&env).await.unwrap();
    for _ in 0..200 {
        if effects(&pg).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(effects(&pg).await, 1, "the handler committed");
    // The process "dies": the consumer goes away without having acked.
    consumer.shutdown().await;
    fail::remove("txmsg::consumer::after_commit_before_ack");

    // A new consumer gets the redelivery and must skip it.
    let consumer = Consumer::new(
        pg.store.clone(),
        rabbit.broker.clone(),
        ConsumerConfig::new("crash"),
    )
    .unwrap()
    .start()
    .await
    .unwrap();
    // The redelivery leaves the queue (to the new consumer) ...
    let queue = format!("{}.crash.work.crash", rabbit.exchange);
    for _ in 0..200 {
        if rabbit.queue_depth(&queue).await == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... and a graceful stop would hand it back if it were not acknowledged.
    consumer.shutdown().await;
    scenario.teardown();
    assert_eq!(
        rabbit.queue_depth(&queue).await,
        Some(0),
        "the redelivery was acknowledged"
    );
    let keys: i64 =
        sqlx::query_scalar("SELECT count(*) FROM txmsg_inbox WHERE consumer_group = 'crash'")
            .fetch_one(&pg.pool)
            .await
            .unwrap();
    assert_eq!(keys, 1);
    assert_eq!(
        effects(&pg).await,
        1,
        "the redelivery was not applied again"
    );
    rabbit.delete_group_queues(&[("crash", "work.crash")]).await;
    rabbit.cleanup().await;
    pg.drop_schema().await;
}
