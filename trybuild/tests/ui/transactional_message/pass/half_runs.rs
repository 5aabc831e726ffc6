//! Runs half producers' `_and_commit` against the SQLite store: the message
//! is stored prepared before the body runs, committed when it returns `Ok`,
//! rolled back when it returns `Err`, left to the check-back when the call
//! never finishes, and fenced when a check-back settled it first.
use std::sync::Mutex;
use std::time::Duration;

use txmsg::half::CheckStatus;
use txmsg::prelude::*;
use txmsg::sqlite::SqliteStore;
use txmsg::half::HalfOutbox;
use txmsg::{Error, check_back, transactional_message};

#[derive(Debug, thiserror::Error)]
enum PayError {
    #[error(transparent)]
    Txmsg(#[from] Error),
    #[error("card declined")]
    Declined,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PaymentRequested {
    order: i64,
    cents: i64,
}

/// The payment service, outside the store's database.
static CHARGED: Mutex<Vec<i64>> = Mutex::new(Vec::new());

#[check_back(topic = "payments.requested")]
async fn payment_state(payment: &PaymentRequested) -> Result<CheckStatus, PayError> {
    let charged = CHARGED.lock().map_err(|_| PayError::Declined)?;
    Ok(if charged.contains(&payment.order) {
        CheckStatus::Commit
    } else {
        CheckStatus::Unknown
    })
}

#[transactional_message(
    topic = "payments.requested",
    half,
    check_back = payment_state,
    key = payment.order,
    idempotency_key = format!("pay-{}", payment.order),
    check_after = "1m",
)]
async fn charge(payment: &PaymentRequested, card: &str) -> Result<String, PayError> {
    if card.is_empty() {
        return Err(PayError::Declined);
    }
    if card == "slow" {
        std::future::pending::<()>().await;
    }
    if let Ok(mut charged) = CHARGED.lock() {
        charged.push(payment.order);
    }
    Ok(format!("{} cents", payment.cents))
}

// The body settles its own message first, as a check-back could.
#[transactional_message(topic = "payments.requested", half, check_back = payment_state)]
async fn charge_late(payment: &PaymentRequested, store: &SqliteStore) -> Result<(), PayError> {
    let _ = payment.order;
    sqlx::query("DELETE FROM txmsg_outbox WHERE state = 'prepared'")
        .execute(store.pool())
        .await
        .map_err(Error::from)?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let outbox = HalfOutbox::new(&store);
    let payment = |order| PaymentRequested { order, cents: 4200 };

    // `Ok`: the message is committed, deliverable.
    let receipt = charge_and_commit(&outbox, &payment(1), "4242")
        .await
        .unwrap();
    assert_eq!(receipt, "4200 cents");
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.prepared), (1, 0));

    // `Err`: the message is rolled back, and the error returned as is.
    let error = charge_and_commit(&outbox, &payment(2), "")
        .await
        .unwrap_err();
    assert!(matches!(error, PayError::Declined), "{error:?}");
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.prepared), (1, 0));

    // The same idempotency key again: a duplicate, and the body never runs.
    let error = charge_and_commit(&outbox, &payment(1), "4242")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PayError::Txmsg(e) if e.is_duplicate()),
        "{error:?}"
    );
    assert_eq!(CHARGED.lock().unwrap().as_slice(), [1]);

    // A call that never finishes leaves the message prepared, for the
    // check-back to decide.
    let third = payment(3);
    let slow = charge_and_commit(&outbox, &third, "slow");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), slow)
            .await
            .is_err()
    );
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.prepared), (1, 1));

    // Settled by someone else first: the producer is told, not split.
    sqlx::query("DELETE FROM txmsg_outbox WHERE state = 'prepared'")
        .execute(store.pool())
        .await
        .unwrap();
    let error = charge_late_and_commit(&outbox, &payment(4), &store)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PayError::Txmsg(e) if e.is_rolled_back()),
        "{error:?}"
    );
}
