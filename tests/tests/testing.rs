//! `txmsg::testing` used as a service's own tests would use it: a producer
//! and a handler written with the macros, on SQLite, driven through the
//! harness's faults and hooks; every wait is on an event, never on a timer.

// Test code: a failed unwrap or assertion is a failed test, also in tests
// that return a `Result` to use `?` as a user's tests would.
#![allow(clippy::unwrap_used, clippy::panic_in_result_fn)]

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use txmsg::consumer::Settlement;
use txmsg::half::CheckStatus;
use txmsg::prelude::*;
use txmsg::testing::TestHarness;
use txmsg::{Envelope, Message, Tx};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    id: i64,
    total_cents: i64,
}

/// The service's producer: the order row and its message, in one transaction.
#[txmsg::transactional_message(topic = "shop.orders.placed", key = id, idempotency_key = format!("order-{id}"))]
async fn place_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    id: i64,
    total_cents: i64,
) -> Result<OrderPlaced, txmsg::Error> {
    sqlx::query("INSERT INTO orders (id, total_cents) VALUES (?, ?)")
        .bind(id)
        .bind(total_cents)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id, total_cents })
}

/// The service's handler: one invoice per order.
#[txmsg::message_handler(topic = "shop.orders.placed", group = "shop-billing")]
async fn bill_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    _envelope: &Envelope,
) -> Result<(), txmsg::Error> {
    sqlx::query("INSERT INTO invoices (order_id, cents) VALUES (?, ?)")
        .bind(order.id)
        .bind(order.total_cents)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A harness with the service's tables and its billing consumer running.
async fn harness() -> TestHarness {
    let harness = TestHarness::new().await.expect("in-memory harness");
    for ddl in [
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL)",
        "CREATE TABLE invoices (order_id INTEGER NOT NULL, cents INTEGER NOT NULL)",
    ] {
        sqlx::query(ddl)
            .execute(harness.store().pool())
            .await
            .unwrap();
    }
    harness
        .consumer("shop-billing")
        .await
        .expect("the billing handler is registered");
    harness
}

async fn invoices(harness: &TestHarness, order_id: i64) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM invoices WHERE order_id = ?")
        .bind(order_id)
        .fetch_one(harness.store().pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn duplicate_delivery_is_applied_once() -> TestResult {
    let harness = harness().await;
    harness.deliver_next_twice(1);

    place_order_and_commit(&harness.outbox(), 1, 4200).await?;

    let handled = harness.wait_handled(2).await?;
    let outcomes: Vec<_> = handled.iter().map(|h| h.outcome.clone()).collect();
    assert_eq!(outcomes, [Settlement::Applied, Settlement::Duplicate]);
    assert_eq!(handled[0].message_id, handled[1].message_id);
    assert_eq!(harness.published("shop.orders.placed").len(), 1);

    // A later redelivery of the same message is recognised too.
    let published = harness.wait_published("shop.orders.placed", 1).await?;
    harness.redeliver(&published[0]).await?;
    let handled = harness.wait_handled(3).await?;
    assert_eq!(handled[2].outcome, Settlement::Duplicate);

    assert_eq!(invoices(&harness, 1).await, 1, "one invoice for one order");
    harness.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn crash_between_commit_and_publish_is_healed() -> TestResult {
    let harness = harness().await;
    harness.crash_after_commit();

    place_order_and_commit(&harness.outbox(), 2, 990).await?;

    // Committed, never handed over: the row is leased to the relay that
    // "died", so nothing can publish it yet.
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(harness.store().pool())
        .await?;
    assert_eq!(orders, 1);
    assert!(harness.published("shop.orders.placed").is_empty());
    harness.restart_relay().await?;
    assert!(harness.published("shop.orders.placed").is_empty());

    // The lease runs out: the new relay's poller publishes the leftover.
    harness.advance_past_lease();
    let published = harness.wait_published("shop.orders.placed", 1).await?;
    assert_eq!(published[0].idempotency_key, "order-2");
    let handled = harness.wait_handled_message(published[0].id).await?;
    assert_eq!(handled.outcome, Settlement::Applied);

    // Commits after the restart take the fast path of the new relay.
    place_order_and_commit(&harness.outbox(), 3, 120).await?;
    harness.wait_published("shop.orders.placed", 2).await?;
    harness.wait_handled(2).await?;

    assert_eq!(
        harness.published("shop.orders.placed").len(),
        2,
        "each once"
    );
    assert_eq!(invoices(&harness, 2).await, 1);
    assert_eq!(invoices(&harness, 3).await, 1);
    harness.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn broker_down_then_up_publishes_once() -> TestResult {
    let harness = harness().await;
    harness.broker_down();

    place_order_and_commit(&harness.outbox(), 4, 500).await?;

    let refused = harness.wait_refused(1).await?;
    assert!(refused[0].unavailable, "{}", refused[0].error);
    assert!(harness.published("shop.orders.placed").is_empty());

    harness.broker_up();
    let published = harness.wait_published("shop.orders.placed", 1).await?;
    assert_eq!(published[0].idempotency_key, "order-4");
    harness.wait_handled(1).await?;
    assert_eq!(harness.published("shop.orders.placed").len(), 1);
    assert_eq!(invoices(&harness, 4).await, 1);
    harness.shutdown().await;
    Ok(())
}

// ---- half messages: a payment outside the store's database ----

#[derive(Debug, Serialize, Deserialize)]
struct Payment {
    id: String,
}

/// Payments the (simulated) payment provider captured.
static CAPTURED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
static CHECK_CALLS: AtomicU32 = AtomicU32::new(0);

/// The service's check-back: asks the payment provider.
#[txmsg::check_back(topic = "shop.payments.captured")]
async fn payment_state(payment: &Payment) -> Result<CheckStatus, String> {
    CHECK_CALLS.fetch_add(1, Ordering::SeqCst);
    let captured = CAPTURED
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|c| c.contains(&payment.id));
    Ok(if captured {
        CheckStatus::Commit
    } else {
        CheckStatus::Unknown
    })
}

#[tokio::test]
async fn check_back_timeout_counts_as_unknown() -> TestResult {
    let harness = harness().await;
    harness.check_backs()?;
    let check_after = Duration::from_secs(6);

    // Prepared, the payment captured, then the process dies before commit.
    let payment = Payment { id: "pay-1".into() };
    let prepared = harness
        .half_outbox()
        .prepare(
            Message::new("shop.payments.captured", &payment)?,
            check_after,
        )
        .await?;
    let id = prepared.id();
    drop(prepared);
    CAPTURED
        .lock()
        .unwrap()
        .get_or_insert_with(HashSet::new)
        .insert(payment.id.clone());

    // The first check gets no answer in time: Unknown, checked again later.
    harness.check_back_timeout();
    harness.advance(check_after);
    let checked = harness.wait_checked(1).await?;
    assert_eq!(checked[0].message_id, id);
    assert!(checked[0].timed_out);
    assert_eq!(checked[0].status, CheckStatus::Unknown);
    assert!(!checked[0].dead);
    assert_eq!(CHECK_CALLS.load(Ordering::SeqCst), 0);
    assert!(harness.published("shop.payments.captured").is_empty());

    // The next check, one interval later, answers: committed and published.
    harness.advance(Duration::from_secs(30));
    let checked = harness.wait_checked(2).await?;
    assert_eq!(checked[1].check, 2);
    assert_eq!(checked[1].status, CheckStatus::Commit);
    assert!(!checked[1].timed_out);
    assert_eq!(CHECK_CALLS.load(Ordering::SeqCst), 1);
    let published = harness.wait_published("shop.payments.captured", 1).await?;
    assert_eq!(published[0].id, id);
    harness.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_wait_that_times_out_says_what_it_waited_for() -> TestResult {
    let harness = harness()
        .await
        .with_wait_timeout(Duration::from_millis(200));
    let err = harness
        .wait_published("shop.orders.placed", 1)
        .await
        .expect_err("nothing was produced");
    let text = err.to_string();
    assert!(
        text.contains("1 messages published to `shop.orders.placed`"),
        "{text}"
    );
    assert!(text.contains("0 recorded"), "{text}");
    harness.shutdown().await;
    Ok(())
}
