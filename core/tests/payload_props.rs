//! The consumer's payload decoding under arbitrary input, on the embedded
//! store and the in-process broker: whatever bytes a message carries, the
//! consumer keeps running and either applies it (the payload deserializes
//! into the handler's type and fits the size limit) or keeps it as a dead
//! letter with a reason and the exact bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use txmsg::Tx;
use txmsg::consumer::{Consumer, ConsumerConfig};
use txmsg_core::{Broker, DeadFilter, Envelope, SqlStore, Store};
use txmsg_memory::MemoryBroker;
use txmsg_sqlite::SqliteStore;

const TOPIC: &str = "props.orders";
const GROUP: &str = "props";
/// The consumer's payload limit in this test: small, so oversize payloads
/// are cheap to make.
const MAX_PAYLOAD: usize = 4096;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<i32>,
}

#[txmsg::message_handler(topic = "props.orders", group = "props")]
async fn take(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: Order,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO taken (idempotency_key, customer) VALUES (?, ?)")
        .bind(&envelope.idempotency_key)
        .bind(&order.customer)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn order() -> impl Strategy<Value = Order> {
    (
        any::<u64>(),
        "(?s).{0,40}",
        proptest::collection::vec(any::<i32>(), 0..8),
    )
        .prop_map(|(id, customer, lines)| Order {
            id,
            customer,
            lines,
        })
}

/// Arbitrary bytes, orders (some past the size limit), JSON cut short, JSON
/// of the wrong shape, nesting past the parser's limit.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..256),
        3 => order().prop_map(|o| serde_json::to_vec(&o).expect("serializable")),
        1 => (order(), 0usize..MAX_PAYLOAD).prop_map(|(mut o, pad)| {
            // Around the limit: some fit, some are a few bytes too many.
            o.customer = "c".repeat(MAX_PAYLOAD - 60 + pad % 120);
            serde_json::to_vec(&o).expect("serializable")
        }),
        1 => (order(), any::<prop::sample::Index>()).prop_map(|(o, at)| {
            let json = serde_json::to_vec(&o).expect("serializable");
            json[..at.index(json.len())].to_vec()
        }),
        1 => Just(br#"{"id":-1,"customer":null,"lines":"x"}"#.to_vec()),
        1 => (1usize..4000).prop_map(|n| vec![b'['; n]),
    ]
}

#[test]
fn every_payload_is_applied_or_dead_with_a_reason() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let broker = MemoryBroker::new();
    let (store, consumer) = rt.block_on(async {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        store.migrate().await.expect("migrate");
        sqlx::query("CREATE TABLE taken (idempotency_key TEXT NOT NULL, customer TEXT NOT NULL)")
            .execute(store.pool())
            .await
            .expect("create table");
        let config = ConsumerConfig::new(GROUP)
            .with_max_payload_bytes(MAX_PAYLOAD)
            .with_backoff_min(Duration::from_millis(1))
            .with_backoff_max(Duration::from_millis(5));
        let consumer = Consumer::new(store.clone(), broker.clone(), config)
            .expect("valid config")
            .start()
            .await
            .expect("start");
        (store, consumer)
    });

    let sent = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&payload(), |payload| {
        rt.block_on(async {
            let n = sent.fetch_add(1, Ordering::SeqCst) + 1;
            let case = format!("case-{n}");
            let mut env = Envelope::new(
                uuid::Uuid::now_v7(),
                TOPIC,
                case.clone(),
                payload.clone(),
                Utc::now(),
            );
            env.key = Some(case.clone());
            broker.publish(&env).await.expect("publish");

            let mut stats = consumer.stats();
            for _ in 0..5000 {
                if stats.applied + stats.dead >= n {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                stats = consumer.stats();
            }
            prop_assert_eq!(
                stats.applied + stats.dead,
                n,
                "every message is handled, and only once"
            );
            prop_assert_eq!((stats.duplicates, stats.requeued), (0, 0));

            let expected = serde_json::from_slice::<Order>(&payload)
                .ok()
                .filter(|_| payload.len() <= MAX_PAYLOAD);
            let dead = consumer
                .dead_letters(&DeadFilter::default().key(case.clone()))
                .await
                .expect("dead letters");
            let taken: Option<String> =
                sqlx::query_scalar("SELECT customer FROM taken WHERE idempotency_key = ?")
                    .bind(&case)
                    .fetch_optional(store.pool())
                    .await
                    .expect("select");
            match expected {
                Some(order) => {
                    prop_assert!(dead.is_empty(), "a valid order is not dead: {:?}", dead);
                    prop_assert_eq!(taken, Some(order.customer), "the handler got the order");
                }
                None => {
                    prop_assert!(taken.is_none(), "the handler must not run");
                    prop_assert_eq!(dead.len(), 1, "an unreadable payload is dead at once");
                    let letter = &dead[0];
                    prop_assert!(!letter.reason.trim().is_empty(), "a dead letter says why");
                    prop_assert_eq!(&letter.group, GROUP);
                    prop_assert_eq!(&letter.envelope.payload, &payload, "the bytes are kept");
                    prop_assert_eq!(&letter.envelope.idempotency_key, &case);
                }
            }
            Ok::<(), TestCaseError>(())
        })
    });
    let stats = consumer.stats();
    rt.block_on(consumer.shutdown());
    if let Err(e) = outcome {
        panic!("{e}");
    }
    assert!(
        stats.applied > 0 && stats.dead > 0,
        "the cases reach both outcomes: {stats:?}"
    );
}
