//! The producer path end to end against the real PostgreSQL and RabbitMQ:
//! atomicity, duplicates, composition, crash leftovers, several relays, order
//! per key, failing messages, bad config, broker outages.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use txmsg::adapter::Lease;
use txmsg::{
    DeadFilter, Envelope, Error, Message, Outbox, Relay, RelayConfig, SqlStore, Store, Tables, Tx,
};
use txmsg_tests::{PgSchema, Rabbit, TcpProxy, unique};

#[derive(Debug, Serialize)]
struct ItemAdded {
    id: i64,
    seq: i64,
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("refused by business rule")]
    Refused,
    #[error(transparent)]
    Txmsg(#[from] Error),
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Txmsg(e.into())
    }
}

/// Inserts an item; an id below zero is refused after the insert, id 13 panics.
#[txmsg::transactional_message(topic = "items.added", key = format!("k{}", id % 5), idempotency_key = format!("item-{id}"))]
async fn add_item(
    tx: &mut Tx<'_, sqlx::Postgres>,
    id: i64,
    seq: i64,
) -> Result<ItemAdded, AppError> {
    sqlx::query("INSERT INTO items (id) VALUES ($1)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    if id < 0 {
        return Err(AppError::Refused);
    }
    if id == 13 {
        panic!("business code panicked");
    }
    Ok(ItemAdded { id, seq })
}

async fn setup() -> (PgSchema, Rabbit) {
    let pg = PgSchema::new().await;
    pg.exec("CREATE TABLE items (id BIGINT PRIMARY KEY)").await;
    (pg, Rabbit::new().await)
}

fn fast_config() -> RelayConfig {
    RelayConfig::default()
        .with_poll_interval(Duration::from_millis(100))
        .with_backoff_min(Duration::from_millis(50))
        .with_backoff_max(Duration::from_millis(200))
}

const QUIET: Duration = Duration::from_millis(700);
const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_error_or_panic_writes_nothing_and_commit_publishes_once() {
    let (pg, rabbit) = setup().await;
    let relay = Relay::new(pg.store.clone(), rabbit.broker.clone(), fast_config())
        .unwrap()
        .start();
    let outbox = Outbox::new(&pg.store).with_relay(&relay);

    let refused = add_item_and_commit(&outbox, -1, 0).await;
    assert!(matches!(refused, Err(AppError::Refused)));
    let o = outbox.clone();
    let panicked = tokio::spawn(async move { add_item_and_commit(&o, 13, 0).await }).await;
    assert!(panicked.is_err_and(|e| e.is_panic()));
    add_item_and_commit(&outbox, 1, 0).await.unwrap();

    let got = rabbit.drain(1, QUIET, TIMEOUT).await;
    relay.shutdown().await;
    assert_eq!(got.len(), 1, "exactly one message: {got:?}");
    assert_eq!(got[0].idempotency_key, "item-1");
    assert_eq!(got[0].payload["id"], 1);
    assert_eq!(
        pg.count("items").await,
        1,
        "refused and panicked inserts rolled back"
    );
    assert_eq!(pg.outbox_rows("sent").await, 1);
    assert_eq!(pg.outbox_rows("pending").await, 0);
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_idempotency_key_is_refused_and_rolls_back() {
    let (pg, rabbit) = setup().await;
    pg.exec("CREATE TABLE audit (note TEXT)").await;
    let relay = Relay::new(pg.store.clone(), rabbit.broker.clone(), fast_config())
        .unwrap()
        .start();
    let outbox = Outbox::new(&pg.store).with_relay(&relay);

    add_item_and_commit(&outbox, 7, 0).await.unwrap();
    // A retry that writes another business row first: the duplicate must
    // undo it.
    let mut tx = outbox.begin().await.unwrap();
    sqlx::query("INSERT INTO audit (note) VALUES ('retry')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let msg = Message::new("items.added", &ItemAdded { id: 7, seq: 1 })
        .unwrap()
        .idempotency_key("item-7");
    // On PostgreSQL the message is held for the commit, which refuses the
    // duplicate and rolls everything back.
    tx.enqueue(msg).await.expect("held for the commit");
    let dup = tx.commit().await;
    assert!(matches!(&dup, Err(e) if e.is_duplicate()), "{dup:?}");

    let got = rabbit.drain(1, QUIET, TIMEOUT).await;
    relay.shutdown().await;
    assert_eq!(got.len(), 1, "one message in total");
    assert_eq!(
        pg.count("audit").await,
        0,
        "business writes of the duplicates rolled back"
    );
    assert_eq!(pg.count("items").await, 1);
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_through_the_macro_returns_duplicate() {
    let (pg, rabbit) = setup().await;
    let relay = Relay::new(pg.store.clone(), rabbit.broker.clone(), fast_config())
        .unwrap()
        .start();
    let outbox = Outbox::new(&pg.store).with_relay(&relay);
    add_item_and_commit(&outbox, 21, 0).await.unwrap();
    // Same idempotency key ("item-21"), business row deleted meanwhile so the
    // body succeeds: only the outbox can tell it is a retry.
    pg.exec("DELETE FROM items").await;
    let dup = add_item_and_commit(&outbox, 21, 1).await;
    assert!(
        matches!(dup, Err(AppError::Txmsg(Error::Duplicate { .. }))),
        "{dup:?}"
    );
    assert_eq!(
        pg.count("items").await,
        0,
        "the retry's business insert rolled back"
    );
    let got = rabbit.drain(1, QUIET, TIMEOUT).await;
    relay.shutdown().await;
    assert_eq!(got.len(), 1);
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_composed_in_one_transaction_commit_or_roll_back_together() {
    let (pg, rabbit) = setup().await;
    let relay = Relay::new(pg.store.clone(), rabbit.broker.clone(), fast_config())
        .unwrap()
        .start();
    let outbox = Outbox::new(&pg.store).with_relay(&relay);

    let mut tx = outbox.begin().await.unwrap();
    add_item(&mut tx, 100, 0).await.unwrap();
    add_item(&mut tx, 101, 0).await.unwrap();
    add_item(&mut tx, 102, 0).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = outbox.begin().await.unwrap();
    add_item(&mut tx, 200, 0).await.unwrap();
    add_item(&mut tx, 201, 0).await.unwrap();
    assert!(matches!(
        add_item(&mut tx, -202, 0).await,
        Err(AppError::Refused)
    ));
    tx.rollback().await.unwrap();

    let got = rabbit.drain(3, QUIET, TIMEOUT).await;
    relay.shutdown().await;
    let keys: HashSet<_> = got.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(
        keys,
        HashSet::from(["item-100".into(), "item-101".into(), "item-102".into()])
    );
    assert_eq!(got.len(), 3);
    assert_eq!(pg.count("items").await, 3);
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_crash_are_published_by_a_later_relay() {
    let (pg, rabbit) = setup().await;
    // No relay in this process: rows are committed and left, as after a crash
    // between commit and publish.
    let outbox = Outbox::new(&pg.store);
    for id in 1_000..1_300 {
        add_item_and_commit(&outbox, id, 0).await.unwrap();
    }
    // And rows leased to a relay that died: their lease runs out in 2 s.
    let dead_relay = Lease {
        owner: uuid::Uuid::now_v7(),
        until: chrono::Utc::now() + chrono::Duration::seconds(2),
    };
    let mut tx = pg.store.begin().await.unwrap();
    for n in 0..50 {
        let env = envelope("items.added", None, &format!("leased-{n}"));
        pg.store
            .writer()
            .insert(&mut tx, &env, Some(dead_relay))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(pg.outbox_rows("pending").await, 350);

    let relay = Relay::new(pg.store.clone(), rabbit.broker.clone(), fast_config())
        .unwrap()
        .start();
    let got = rabbit.drain(350, QUIET, TIMEOUT).await;
    relay.shutdown().await;
    let distinct: HashSet<_> = got.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(got.len(), 350, "none lost, none twice");
    assert_eq!(distinct.len(), 350);
    assert_eq!(pg.outbox_rows("sent").await, 350);
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

fn envelope(topic: &str, key: Option<&str>, idem: &str) -> Envelope {
    let mut env = Envelope::new(
        uuid::Uuid::now_v7(),
        topic,
        idem,
        b"{}".to_vec(),
        chrono::Utc::now(),
    );
    env.key = key.map(Into::into);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_every_message_once() {
    let (pg, rabbit) = setup().await;
    let outbox = Outbox::new(&pg.store);
    const N: usize = 2_000;
    for chunk in 0..(N / 100) {
        let mut tx = outbox.begin().await.unwrap();
        for i in 0..100 {
            let n = chunk * 100 + i;
            let key = if n % 3 == 0 {
                None
            } else {
                Some(format!("k{}", n % 40))
            };
            let mut msg = Message::new("load.item", &n)
                .unwrap()
                .idempotency_key(format!("m{n}"));
            if let Some(k) = key {
                msg = msg.key(k);
            }
            tx.enqueue(msg).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let cfg = || fast_config().with_batch_size(100);
    let r1 = Relay::new(pg.store.clone(), rabbit.broker.clone(), cfg())
        .unwrap()
        .start();
    let r2 = Relay::new(pg.store.clone(), rabbit.broker.clone(), cfg())
        .unwrap()
        .start();
    let got = rabbit
        .drain(N, Duration::from_secs(1), Duration::from_secs(60))
        .await;
    r1.shutdown().await;
    r2.shutdown().await;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for r in &got {
        *counts.entry(r.idempotency_key.clone()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "published twice: {twice:?}");
    assert_eq!(counts.len(), N, "every message published");
    assert_eq!(pg.outbox_rows("sent").await, N as i64);
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_key_holds_with_concurrent_producers() {
    let (pg, rabbit) = setup().await;
    let relay = Relay::new(pg.store.clone(), rabbit.broker.clone(), fast_config())
        .unwrap()
        .start();
    let outbox = Outbox::new(&pg.store).with_relay(&relay);
    // A second producer process without a relay writes some of the rows, so
    // the fast path and the poller both publish into the same keys.
    let other_process = Outbox::new(&pg.store);
    const KEYS: i64 = 5;
    const PER_KEY: i64 = 200;
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        let (fast, slow) = (outbox.clone(), other_process.clone());
        tasks.push(tokio::spawn(async move {
            for seq in 0..PER_KEY {
                let which = if seq % 4 == 3 { &slow } else { &fast };
                let mut tx = which.begin().await.unwrap();
                let msg = Message::new("orders.step", &ItemAdded { id: k, seq })
                    .unwrap()
                    .key(format!("key-{k}"))
                    .idempotency_key(format!("{k}-{seq}"));
                tx.enqueue(msg).await.unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = rabbit
        .drain((KEYS * PER_KEY) as usize, QUIET, Duration::from_secs(60))
        .await;
    relay.shutdown().await;
    assert_eq!(got.len(), (KEYS * PER_KEY) as usize);
    let mut per_key: HashMap<String, Vec<i64>> = HashMap::new();
    for r in &got {
        per_key
            .entry(r.key.clone().expect("ordering key on the wire"))
            .or_default()
            .push(r.payload["seq"].as_i64().unwrap());
    }
    assert_eq!(per_key.len(), KEYS as usize);
    for (key, seqs) in per_key {
        let expected: Vec<i64> = (0..PER_KEY).collect();
        assert_eq!(seqs, expected, "order of {key}");
    }
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_goes_dead_and_parks_only_its_key() {
    let (pg, rabbit) = setup().await;
    let cfg = fast_config().with_max_payload_bytes(1_000);
    let relay = Relay::new(pg.store.clone(), rabbit.broker.clone(), cfg)
        .unwrap()
        .start();
    let outbox = Outbox::new(&pg.store).with_relay(&relay);
    let big = "x".repeat(5_000);
    let mut tx = outbox.begin().await.unwrap();
    tx.enqueue(
        Message::new("t.data", &big)
            .unwrap()
            .key("bad")
            .idempotency_key("bad-0"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    for n in 1..5 {
        for key in ["bad", "good"] {
            let mut tx = outbox.begin().await.unwrap();
            tx.enqueue(
                Message::new("t.data", &n)
                    .unwrap()
                    .key(key)
                    .idempotency_key(format!("{key}-{n}")),
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
    }
    let got = rabbit.drain(4, Duration::from_secs(2), TIMEOUT).await;
    relay.shutdown().await;
    let keys: Vec<_> = got.iter().map(|r| r.idempotency_key.as_str()).collect();
    assert_eq!(
        keys,
        ["good-1", "good-2", "good-3", "good-4"],
        "the good key flows, the bad key is parked"
    );
    let dead = pg.store.dead_letters(&DeadFilter::default()).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope.idempotency_key, "bad-0");
    assert!(
        dead[0].reason.contains("exceeds"),
        "reason: {}",
        dead[0].reason
    );
    assert_eq!(
        pg.outbox_rows("pending").await,
        4,
        "the parked key's later messages wait"
    );
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_message_is_retried_with_backoff_then_dead_and_other_keys_flow() {
    let pg = PgSchema::new().await;
    // mandatory: a message no queue is bound for comes back, so it fails.
    let rabbit = Rabbit::with_config(
        txmsg::rabbitmq::RabbitConfig::default().with_mandatory(true),
        &txmsg_tests::amqp_url(),
    )
    .await;
    // Only `good.*` topics are routed: unbind `#`, bind `good.#`.
    rabbit
        .broker
        .unbind_queue(&rabbit.queue, "#")
        .await
        .unwrap();
    rabbit
        .broker
        .bind_queue(&rabbit.queue, "good.#")
        .await
        .unwrap();
    let cfg = fast_config().with_max_attempts(4);
    let relay = Relay::new(pg.store.clone(), rabbit.broker.clone(), cfg)
        .unwrap()
        .start();
    let outbox = Outbox::new(&pg.store).with_relay(&relay);
    let mut tx = outbox.begin().await.unwrap();
    tx.enqueue(
        Message::new("nowhere.x", &0)
            .unwrap()
            .key("a")
            .idempotency_key("lost-0"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    for n in 0..20 {
        let mut tx = outbox.begin().await.unwrap();
        tx.enqueue(
            Message::new("good.x", &n)
                .unwrap()
                .key("a")
                .idempotency_key(format!("good-{n}")),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let got = rabbit.drain(20, QUIET, TIMEOUT).await;
    assert_eq!(
        got.len(),
        20,
        "the other topic's key flows while one message fails"
    );
    // Wait (bounded) for the failing message to exhaust its attempts.
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = pg.store.dead_letters(&DeadFilter::default()).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.shutdown().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope.idempotency_key, "lost-0");
    // The dead letter counts every attempt, the last included, as its
    // reason does.
    assert_eq!(dead[0].envelope.attempts, 4, "reason: {}", dead[0].reason);
    assert!(
        dead[0].reason.contains("unroutable") && dead[0].reason.contains("after 4 attempts"),
        "reason: {}",
        dead[0].reason
    );
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

#[tokio::test]
async fn bad_table_name_is_refused_before_any_sql() {
    let err = Tables::default()
        .with_outbox("orders; drop table x")
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Config {
            field: "outbox_table",
            ..
        }
    ));
    let err = Tables::default()
        .with_schema("public\"; drop schema x")
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Config {
            field: "schema",
            ..
        }
    ));
    let err = txmsg::rabbitmq::RabbitConfig::default()
        .with_exchange("bad exchange\n")
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }));
    let (pg, rabbit) = setup().await;
    let bad = RelayConfig::default().with_batch_size(0);
    let err = Relay::new(pg.store.clone(), rabbit.broker.clone(), bad).unwrap_err();
    assert!(matches!(
        err,
        Error::Config {
            field: "batch_size",
            ..
        }
    ));
    rabbit.cleanup().await;
    pg.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_keeps_rows_pending_until_it_is_back() {
    let pg = PgSchema::new().await;
    let target = txmsg_tests::amqp_url()
        .split('@')
        .nth(1)
        .and_then(|h| h.split('/').next())
        .unwrap()
        .to_owned();
    let proxy = TcpProxy::start(&target).await;
    let rabbit =
        Rabbit::with_config(txmsg::rabbitmq::RabbitConfig::default(), &proxy.amqp_url()).await;
    let relay = Relay::new(pg.store.clone(), rabbit.broker.clone(), fast_config())
        .unwrap()
        .start();
    let outbox = Outbox::new(&pg.store).with_relay(&relay);

    proxy.set_down();
    for n in 0..50 {
        let mut tx = outbox.begin().await.unwrap();
        let key = format!("k{}", n % 5);
        tx.enqueue(
            Message::new("outage.x", &n)
                .unwrap()
                .key(key)
                .idempotency_key(format!("o-{n}")),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pg.outbox_rows("sent").await,
        0,
        "nothing is sent while the broker is unreachable"
    );
    assert_eq!(pg.outbox_rows("pending").await, 50);
    proxy.set_up();
    let got = rabbit.drain(50, QUIET, Duration::from_secs(60)).await;
    relay.shutdown().await;
    let distinct: HashSet<_> = got.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(
        distinct.len(),
        50,
        "every row went out once the broker was back"
    );
    assert_eq!(pg.outbox_rows("sent").await, 50);
    let _ = unique();
    rabbit.cleanup().await;
    pg.drop_schema().await;
}
