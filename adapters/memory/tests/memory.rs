//! `MemoryBroker` against the broker conformance suite, plus what only the
//! in-process broker offers: observers, fault injection and queue counts.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use txmsg_core::consumer::SubscribeSpec;
use txmsg_core::{Broker, Envelope, Error};
use txmsg_memory::MemoryBroker;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(5);

fn envelope(topic: &str, n: u32) -> Envelope {
    Envelope::new(
        Uuid::now_v7(),
        topic,
        format!("k-{n}"),
        format!("{n}").into_bytes(),
        Utc::now(),
    )
}

fn spec(group: &str, topic: &str, prefetch: u16) -> SubscribeSpec {
    SubscribeSpec {
        group: group.to_owned(),
        topic: topic.to_owned(),
        prefetch,
    }
}

/// A broker of its own per conformance case.
struct Memory(MemoryBroker);

impl txmsg_testkit::broker::BrokerFixture for Memory {
    type Broker = MemoryBroker;

    async fn start() -> Self {
        Memory(MemoryBroker::new())
    }

    async fn broker(&self) -> MemoryBroker {
        self.0.clone()
    }

    async fn finish(self) {}
}

txmsg_testkit::broker_conformance!(Memory);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_on_one_shared_broker_in_parallel() {
    // One broker, several suites at once: names keep them apart.
    let broker = MemoryBroker::new();
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let broker = broker.clone();
            tokio::spawn(async move {
                txmsg_testkit::broker::run_all(
                    || std::future::ready(broker.clone()),
                    &format!("run{i}"),
                )
                .await;
            })
        })
        .collect();
    for run in runs {
        run.await.expect("suite run");
    }
}

#[tokio::test]
async fn observers_see_every_message_and_take_none_from_groups() {
    let broker = MemoryBroker::new();
    let mut observer = broker.observe("t.obs");
    let mut sub = broker
        .subscribe(&spec("g", "t.obs", 4))
        .await
        .expect("subscribe");
    let sent = envelope("t.obs", 1);
    broker.publish(&sent).await.expect("publish");

    assert_eq!(observer.recv().await.map(|e| e.id), Some(sent.id));
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("delivered")
        .expect("open");
    assert_eq!(d.message.as_ref().map(|e| e.id).ok(), Some(sent.id));
    d.ack().await.expect("ack");
    assert_eq!(broker.published(), 1);
}

#[tokio::test]
async fn down_broker_refuses_publishes_and_subscribes() {
    let broker = MemoryBroker::new();
    broker.set_down(true);
    let err = broker
        .subscribe(&spec("g", "t.down", 4))
        .await
        .expect_err("down");
    assert!(err.is_broker_unavailable(), "{err:?}");
    let err = broker
        .publish(&envelope("t.down", 1))
        .await
        .expect_err("down");
    assert!(err.is_broker_unavailable(), "{err:?}");

    broker.set_down(false);
    let mut sub = broker
        .subscribe(&spec("g", "t.down", 4))
        .await
        .expect("up again");
    broker
        .publish(&envelope("t.down", 2))
        .await
        .expect("publish");
    assert!(tokio::time::timeout(WAIT, sub.next()).await.is_ok());
}

#[tokio::test]
async fn rejected_messages_are_retryable_nacks() {
    let broker = MemoryBroker::new();
    broker.reject_if(Some(Arc::new(|e: &Envelope| e.payload == b"1")));
    let err = broker
        .publish(&envelope("t.rej", 1))
        .await
        .expect_err("rejected");
    assert!(
        matches!(
            err,
            Error::Broker {
                retryable: true,
                ..
            }
        ),
        "{err:?}"
    );
    broker
        .publish(&envelope("t.rej", 2))
        .await
        .expect("accepted");
    broker.reject_if(None);
    broker
        .publish(&envelope("t.rej", 1))
        .await
        .expect("accepted again");
    assert_eq!(broker.published(), 2);
}

#[tokio::test]
async fn queued_counts_waiting_messages_and_given_back_ones() {
    let broker = MemoryBroker::new();
    assert_eq!(broker.queued("g", "t.count"), 0);
    let sub = broker
        .subscribe(&spec("g", "t.count", 1))
        .await
        .expect("subscribe");
    drop(sub);
    for n in 0..3 {
        broker
            .publish(&envelope("t.count", n))
            .await
            .expect("publish");
    }
    assert_eq!(broker.queued("g", "t.count"), 3);
    assert_eq!(broker.queued("other", "t.count"), 0);

    let mut sub = broker
        .subscribe(&spec("g", "t.count", 1))
        .await
        .expect("subscribe");
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("delivered")
        .expect("open");
    // Prefetch 1: one handed out, two waiting.
    assert_eq!(broker.queued("g", "t.count"), 2);
    d.nack().await.expect("nack");
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("delivered")
        .expect("open");
    assert!(d.redelivered);
    assert_eq!(
        d.message.as_ref().map(|e| e.payload.clone()).ok(),
        Some(b"0".to_vec())
    );
    d.ack().await.expect("ack");
    drop(sub);
    assert_eq!(broker.queued("g", "t.count"), 2);
}

#[tokio::test]
async fn given_back_messages_keep_their_place() {
    let broker = MemoryBroker::new();
    let mut sub = broker
        .subscribe(&spec("g", "t.place", 8))
        .await
        .expect("subscribe");
    for n in 0..4 {
        broker
            .publish(&envelope("t.place", n))
            .await
            .expect("publish");
    }
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tokio::time::timeout(WAIT, sub.next())
                .await
                .expect("delivered")
                .expect("open"),
        );
    }
    // Given back in reverse order (and the fourth, buffered, with the
    // subscription), they come back in publish order.
    while let Some(d) = held.pop() {
        drop(d);
    }
    drop(sub);
    let mut sub = broker
        .subscribe(&spec("g", "t.place", 8))
        .await
        .expect("subscribe");
    let mut order = Vec::new();
    for _ in 0..4 {
        let d = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("delivered")
            .expect("open");
        order.push(
            d.message
                .as_ref()
                .map(|e| e.payload.clone())
                .unwrap_or_default(),
        );
        d.ack().await.expect("ack");
    }
    assert_eq!(
        order,
        vec![b"0".to_vec(), b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]
    );
}

#[tokio::test]
async fn conformance_held_delivery_is_not_redelivered() {
    txmsg_testkit::broker::held_delivery_is_not_redelivered(
        &MemoryBroker::new(),
        "held",
        std::time::Duration::from_secs(1),
    )
    .await;
}
