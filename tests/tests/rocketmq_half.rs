//! RocketMQ's own half messages behind `#[transactional_message(half)]`,
//! against the running RocketMQ broker (`ROCKETMQ_URL`, default
//! `rocketmq://127.0.0.1:9876`; its `transactionTimeout` of 3 s and
//! `transactionCheckInterval` of 2 s, from `scripts/rocketmq-broker.toml`,
//! keep the check-backs seconds apart). Counted at a consumer subscribed to
//! the topic.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use txmsg::consumer::{SubscribeSpec, Subscription};
use txmsg::half::{CheckStatus, HalfProducer};
use txmsg::rocketmq::{RocketBroker, RocketHalfProducer};
use txmsg::{Broker, Error, Message, check_back, transactional_message};
use txmsg_tests::unique;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Charge {
    order: i64,
}

#[derive(Debug, thiserror::Error)]
enum PayError {
    #[error(transparent)]
    Txmsg(#[from] Error),
    #[error("card declined")]
    Declined,
}

/// The local work: declined for odd orders.
#[transactional_message(topic = "rmq.charged", half, check_back = charge_state, key = c.order)]
async fn pay(c: &Charge) -> Result<i64, PayError> {
    if c.order % 2 == 1 {
        return Err(PayError::Declined);
    }
    Ok(c.order)
}

/// How often the check-back was asked about each order.
static ASKED: Mutex<BTreeMap<i64, u32>> = Mutex::new(BTreeMap::new());

/// Orders ending in 0 committed, in 1 rolled back, the rest unknown.
#[check_back(topic = "rmq.charged")]
async fn charge_state(charge: &Charge) -> Result<CheckStatus, String> {
    *ASKED.lock().unwrap().entry(charge.order).or_default() += 1;
    Ok(match charge.order % 10 {
        0 => CheckStatus::Commit,
        1 => CheckStatus::Rollback,
        _ => CheckStatus::Unknown,
    })
}

/// A broker of this test's own topics.
async fn broker(prefix: &str) -> RocketBroker {
    txmsg_tests::rocketmq_broker(Some(prefix)).await
}

async fn subscribe(broker: &RocketBroker) -> Subscription {
    broker
        .subscribe(&SubscribeSpec {
            group: "count".into(),
            topic: "rmq.charged".into(),
            prefetch: 16,
        })
        .await
        .unwrap()
}

/// The orders delivered within `wait`, acknowledged.
///
/// Counted as a consumer's inbox counts them: by message (its idempotency
/// key). RocketMQ may deliver a committed half message twice, when its
/// check-back was asked twice and both answers arrived (the broker keeps
/// no state between checks); the inbox applies such a copy once.
async fn delivered(sub: &mut Subscription, wait: Duration) -> BTreeMap<i64, u32> {
    let mut keys: BTreeMap<i64, std::collections::BTreeSet<String>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(d)) = tokio::time::timeout_at(deadline, sub.next()).await {
        let envelope = d.message.as_ref().unwrap();
        let charge: Charge = serde_json::from_slice(&envelope.payload).unwrap();
        keys.entry(charge.order)
            .or_default()
            .insert(envelope.idempotency_key.clone());
        d.ack().await.unwrap();
    }
    keys.into_iter()
        .map(|(order, keys)| (order, u32::try_from(keys.len()).unwrap()))
        .collect()
}

/// A body that returns `Ok` delivers its message once; one that returns
/// `Err` never: the producer ends each transaction itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_decides_commit_or_rollback() {
    let prefix = format!("h{}_", &unique()[16..]);
    let broker = broker(&prefix).await;
    let mut sub = subscribe(&broker).await;
    let producer = RocketHalfProducer::builder(&broker, &format!("{prefix}p"))
        .start()
        .await
        .unwrap();
    for order in [2, 4, 3, 5] {
        let result = pay_and_commit(&producer, &Charge { order }).await;
        match order % 2 {
            0 => assert_eq!(result.unwrap(), order),
            _ => assert!(matches!(result, Err(PayError::Declined)), "{result:?}"),
        }
    }
    // Long enough for a check-back (3 s + 2 s) to have come, had one been due.
    let got = delivered(&mut sub, Duration::from_secs(8)).await;
    assert_eq!(got, BTreeMap::from([(2, 1), (4, 1)]), "Ok once, Err never");
    // RocketMQ may still ask about a settled message (its check service
    // reads the ends asynchronously); the answer does not change the
    // outcome, which the deliveries above show.
}

/// Half messages whose producer vanished before their outcome: the broker
/// asks a producer of the same group, which answers with the topic's
/// `#[check_back]`: Commit delivers once, Rollback never, Unknown is asked
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_producers_messages_are_checked_back() {
    let prefix = format!("k{}_", &unique()[16..]);
    let group = format!("{prefix}p");
    let broker = broker(&prefix).await;
    let mut sub = subscribe(&broker).await;
    {
        let first = RocketHalfProducer::builder(&broker, &group)
            .start()
            .await
            .unwrap();
        for order in [10, 20, 11, 21, 12] {
            let message = Message::new("rmq.charged", &Charge { order })
                .unwrap()
                .key(order.to_string());
            let half = first
                .prepare(message, Duration::from_secs(1))
                .await
                .unwrap();
            // The producer dies before the local work's outcome.
            drop(half);
        }
    }
    // Another process of the group answers the broker's check-backs.
    let _second = RocketHalfProducer::builder(&broker, &group)
        .start()
        .await
        .unwrap();
    let got = delivered(&mut sub, Duration::from_secs(20)).await;
    let asked = ASKED.lock().unwrap().clone();
    assert_eq!(
        got,
        BTreeMap::from([(10, 1), (20, 1)]),
        "Commit once, Rollback and Unknown never (check-backs asked: {asked:?})"
    );
    // The broker asks on its own schedule (every 2 s here, a check that
    // reached no producer session is tried again later): wait for the
    // questions before counting them. Broker 1.0.0 sometimes never asks
    // about one of the half messages (seen once in eight runs, for a
    // Rollback one, which was not delivered either): a Rollback answer is
    // required for one of the two.
    let asked_all = |asked: &BTreeMap<i64, u32>| {
        [10, 20].iter().all(|o| asked.contains_key(o))
            && [11, 21].iter().any(|o| asked.contains_key(o))
            && asked.get(&12).copied().unwrap_or(0) >= 2
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !asked_all(&ASKED.lock().unwrap()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let asked = ASKED.lock().unwrap().clone();
    assert!(
        asked_all(&asked),
        "Commit, Rollback and Unknown were asked, Unknown again: {asked:?}"
    );
    let late = delivered(&mut sub, suite_quiet()).await;
    assert!(late.is_empty(), "nothing more was delivered: {late:?}");
}

/// How long to wait to see that nothing more arrives.
fn suite_quiet() -> Duration {
    Duration::from_millis(500)
}
