//! Handlers and check-backs with application state: `State<T>` parameters
//! receive what their consumer or worker was given, and a runner that lacks
//! a handler's state refuses to start, naming both.

// Test code: a failed unwrap or assertion is a failed test, also in tests
// that return a `Result` to use `?` as a user's tests would.
#![allow(clippy::unwrap_used, clippy::panic_in_result_fn)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use txmsg::consumer::Settlement;
use txmsg::half::CheckStatus;
use txmsg::prelude::*;
use txmsg::testing::TestHarness;
use txmsg::{Envelope, Message, State, Tx};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What a service shares with its handlers: settings and a client.
#[derive(Clone)]
struct Billing {
    currency: &'static str,
    /// Stands for a client of another service: who was notified.
    notified: Arc<Mutex<Vec<i64>>>,
}

/// A second state type, to show that a handler takes several.
#[derive(Clone)]
struct TaxRate(i64);

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    id: i64,
    cents: i64,
}

/// States come after the message, around the envelope in any order.
#[txmsg::message_handler(topic = "state.orders.placed", group = "state-billing")]
async fn bill(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    billing: State<Billing>,
    envelope: &Envelope,
    State(TaxRate(rate)): State<TaxRate>,
) -> Result<(), txmsg::Error> {
    let cents = order.cents + order.cents * rate / 100;
    sqlx::query(
        "INSERT INTO invoices (order_id, cents, currency, message_key) VALUES (?, ?, ?, ?)",
    )
    .bind(order.id)
    .bind(cents)
    .bind(billing.currency)
    .bind(&envelope.idempotency_key)
    .execute(&mut **tx)
    .await?;
    billing.notified.lock().unwrap().push(order.id);
    Ok(())
}

/// A state type no runner is given.
#[derive(Clone)]
struct Unconfigured;

#[txmsg::message_handler(topic = "state.orders.placed", group = "state-unconfigured")]
async fn needs_unconfigured(
    _tx: &mut Tx<'_, sqlx::Sqlite>,
    _order: OrderPlaced,
    _state: State<Unconfigured>,
) -> Result<(), txmsg::Error> {
    Ok(())
}

/// The payment provider a check-back asks, given as state.
#[derive(Clone, Default)]
struct Provider {
    captured: Arc<Mutex<HashSet<String>>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Payment {
    id: String,
}

#[txmsg::check_back(topic = "state.payments.captured")]
async fn payment_state(
    payment: &Payment,
    provider: State<Provider>,
) -> Result<CheckStatus, String> {
    let captured = provider.captured.lock().unwrap().contains(&payment.id);
    Ok(if captured {
        CheckStatus::Commit
    } else {
        CheckStatus::Unknown
    })
}

async fn with_invoices(harness: &TestHarness) {
    sqlx::query(
        "CREATE TABLE invoices (order_id INTEGER NOT NULL, cents INTEGER NOT NULL, \
         currency TEXT NOT NULL, message_key TEXT NOT NULL)",
    )
    .execute(harness.store().pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn a_handler_receives_the_states_its_consumer_was_given() -> TestResult {
    let notified = Arc::new(Mutex::new(Vec::new()));
    let billing = Billing {
        currency: "EUR",
        notified: Arc::clone(&notified),
    };
    let harness = TestHarness::new()
        .await?
        .with_state(billing)
        .with_state(TaxRate(20));
    with_invoices(&harness).await;
    harness.consumer("state-billing").await?;

    let mut tx = harness.outbox().begin().await?;
    tx.enqueue(
        Message::new("state.orders.placed", &OrderPlaced { id: 7, cents: 1000 })?
            .idempotency_key("order-7"),
    )
    .await?;
    tx.commit().await?;

    let handled = harness.wait_handled(1).await?;
    assert_eq!(handled[0].outcome, Settlement::Applied);
    let row: (i64, String, String) =
        sqlx::query_as("SELECT cents, currency, message_key FROM invoices WHERE order_id = 7")
            .fetch_one(harness.store().pool())
            .await?;
    assert_eq!(row, (1200, "EUR".to_owned(), "order-7".to_owned()));
    assert_eq!(*notified.lock().unwrap(), [7]);
    harness.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_consumer_without_a_handlers_state_refuses_to_start() -> TestResult {
    let harness = TestHarness::new().await?.with_state(TaxRate(0));
    let err = harness
        .consumer("state-unconfigured")
        .await
        .expect_err("the handler's state is missing");
    let text = err.to_string();
    assert!(
        matches!(&err, txmsg::Error::Config { field: "state", .. }),
        "{err:?}"
    );
    assert!(
        text.contains("needs_unconfigured"),
        "names the handler: {text}"
    );
    assert!(
        text.contains("State<") && text.contains("Unconfigured>"),
        "{text}"
    );
    assert!(
        text.contains("Consumer::with_state"),
        "says how to fix it: {text}"
    );
    harness.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_check_back_receives_its_state_and_a_worker_without_it_refuses_to_start() -> TestResult {
    // Without the provider: the worker does not start.
    let bare = TestHarness::new().await?;
    let err = bare.check_backs().expect_err("the provider is missing");
    let text = err.to_string();
    assert!(text.contains("payment_state"), "{text}");
    assert!(text.contains("Provider>"), "{text}");
    assert!(text.contains("CheckBackWorker::with_state"), "{text}");
    bare.shutdown().await;

    // With it: the check-back asks the provider it was given.
    let provider = Provider::default();
    let harness = TestHarness::new().await?.with_state(provider.clone());
    harness.check_backs()?;
    let check_after = Duration::from_secs(6);
    let payment = Payment { id: "pay-9".into() };
    let prepared = harness
        .half_outbox()
        .prepare(
            Message::new("state.payments.captured", &payment)?,
            check_after,
        )
        .await?;
    let id = prepared.id();
    drop(prepared);
    provider.captured.lock().unwrap().insert(payment.id.clone());
    harness.advance(check_after);
    let checked = harness.wait_checked(1).await?;
    assert_eq!(checked[0].status, CheckStatus::Commit);
    let published = harness.wait_published("state.payments.captured", 1).await?;
    assert_eq!(published[0].id, id);
    harness.shutdown().await;
    Ok(())
}

// ---- a PostgreSQL service's own handler, in the harness ----

#[derive(Debug, Serialize, Deserialize)]
struct ShipmentRequested {
    order_id: i64,
}

/// A PostgreSQL-typed handler with state, as a PostgreSQL service writes it.
#[txmsg::message_handler(topic = "state.shipments.requested", group = "state-shipping")]
async fn ship(
    tx: &mut Tx<'_, sqlx::Postgres>,
    request: ShipmentRequested,
    billing: State<Billing>,
) -> Result<(), txmsg::Error> {
    sqlx::query("INSERT INTO shipments (order_id, currency) VALUES ($1, $2)")
        .bind(request.order_id)
        .bind(billing.currency)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_postgres_handler_with_state_runs_in_the_harness_once_per_message() -> TestResult {
    let schema = txmsg_tests::PgSchema::new().await;
    schema
        .exec("CREATE TABLE shipments (order_id BIGINT NOT NULL, currency TEXT NOT NULL)")
        .await;
    let billing = Billing {
        currency: "CHF",
        notified: Arc::default(),
    };
    let harness = TestHarness::on(schema.store.clone())
        .await?
        .with_state(billing);
    harness.consumer("state-shipping").await?;

    // Delivered twice: applied once, the second recognised by the inbox.
    harness.deliver_next_twice(1);
    let mut tx = harness.outbox().begin().await?;
    tx.enqueue(Message::new(
        "state.shipments.requested",
        &ShipmentRequested { order_id: 3 },
    )?)
    .await?;
    tx.commit().await?;
    let handled = harness.wait_handled(2).await?;
    // The two deliveries run concurrently on PostgreSQL: the second waits
    // on the first's inbox key and either may be recorded first, so the
    // outcomes are counted, not ordered.
    let count = |outcome: Settlement| handled.iter().filter(|h| h.outcome == outcome).count();
    assert_eq!(
        (count(Settlement::Applied), count(Settlement::Duplicate)),
        (1, 1),
        "{handled:?}"
    );
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT order_id, currency FROM shipments")
        .fetch_all(&schema.pool)
        .await?;
    assert_eq!(rows, [(3, "CHF".to_owned())]);

    // The manual clock drives the PostgreSQL store's leases too: a crash
    // after commit is published once the lease has run out.
    harness.crash_after_commit();
    let mut tx = harness.outbox().begin().await?;
    tx.enqueue(Message::new(
        "state.shipments.requested",
        &ShipmentRequested { order_id: 4 },
    )?)
    .await?;
    tx.commit().await?;
    assert_eq!(harness.published("state.shipments.requested").len(), 1);
    harness.restart_relay().await?;
    harness.advance_past_lease();
    harness
        .wait_published("state.shipments.requested", 2)
        .await?;
    harness.wait_handled(3).await?;
    assert_eq!(schema.count("shipments").await, 2);
    harness.shutdown().await;
    schema.drop_schema().await;
    Ok(())
}
