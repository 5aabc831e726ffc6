//! `ttl = <expr>`: a time to live chosen per call, a `Duration` or an
//! `Option<Duration>` (`None` for no expiry), for both kinds of producer.
use std::time::Duration;

use txmsg::half::CheckStatus;
use txmsg::prelude::*;
use txmsg::sqlite::SqliteStore;
use txmsg::half::HalfOutbox;
use txmsg::{Outbox, Tx, check_back, transactional_message};

#[derive(serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

// The caller decides, or leaves the message without expiry.
#[transactional_message(topic = "orders.placed", key = id, ttl = ttl)]
async fn place_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    id: i64,
    ttl: Option<Duration>,
) -> Result<OrderPlaced, txmsg::Error> {
    let _ = &mut **tx;
    Ok(OrderPlaced { id })
}

// Any expression of the parameters, evaluated before the body runs.
#[transactional_message(topic = "orders.placed", ttl = Duration::from_secs(minutes * 60))]
async fn place_rush_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    id: i64,
    minutes: u64,
) -> Result<OrderPlaced, txmsg::Error> {
    let _ = (&mut **tx, minutes);
    Ok(OrderPlaced { id })
}

#[check_back(topic = "payments.requested")]
async fn payment_state(payment: &OrderPlaced) -> Result<CheckStatus, txmsg::Error> {
    let _ = payment.id;
    Ok(CheckStatus::Commit)
}

#[transactional_message(
    topic = "payments.requested",
    half,
    check_back = payment_state,
    idempotency_key = format!("pay-{}", order.id),
    ttl = _ttl,
)]
// The function itself is emitted unchanged: a parameter only the
// attribute reads is unused there.
async fn charge(order: &OrderPlaced, _ttl: Duration) -> Result<i64, txmsg::Error> {
    Ok(order.id)
}

#[transactional_message(
    topic = "payments.requested",
    half,
    idempotency_key = format!("pay-maybe-{}", order.id),
    ttl = ttl,
)]
async fn charge_maybe(order: &OrderPlaced, ttl: Option<Duration>) -> Result<bool, txmsg::Error> {
    let _ = order.id;
    Ok(ttl.is_some())
}

/// The time to live of each stored message, in microseconds, in order.
async fn ttls(store: &SqliteStore) -> Vec<Option<i64>> {
    sqlx::query_scalar("SELECT expires_at - created_at FROM txmsg_outbox ORDER BY rowid")
        .fetch_all(store.pool())
        .await
        .unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let outbox = Outbox::new(&store);
    let half = HalfOutbox::new(&store);
    let minute = Duration::from_secs(60);

    place_order_and_commit(&outbox, 1, Some(minute))
        .await
        .unwrap();
    place_order_and_commit(&outbox, 2, None).await.unwrap();
    place_rush_order_and_commit(&outbox, 3, 2).await.unwrap();
    let mut tx = outbox.begin().await.unwrap();
    place_order(&mut tx, 4, Some(Duration::from_millis(500)))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    charge_and_commit(&half, &OrderPlaced { id: 5 }, minute)
        .await
        .unwrap();
    let expires = charge_maybe_and_commit(&half, &OrderPlaced { id: 6 }, Some(minute))
        .await
        .unwrap();
    assert!(expires);
    let expires = charge_maybe_and_commit(&half, &OrderPlaced { id: 7 }, None)
        .await
        .unwrap();
    assert!(!expires);

    let minute_micros = Some(60_000_000);
    assert_eq!(
        ttls(&store).await,
        [
            minute_micros,
            None,
            Some(120_000_000),
            Some(500_000),
            minute_micros,
            minute_micros,
            None,
        ]
    );
}
