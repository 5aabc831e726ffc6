//! Generated code raises no warning, even with strict lints.
#![deny(
    warnings,
    missing_docs,
    rust_2018_idioms,
    unused_qualifications,
    unused_lifetimes,
    unsafe_code
)]
#![deny(unreachable_pub, unused_results, clippy::all)]

use txmsg::{Envelope, Tx, message_handler};

/// The message.
#[derive(serde::Deserialize)]
pub struct OrderPlaced {
    id: i64,
}

/// Public, documented, never called but by the consumer.
#[message_handler(topic = "orders.placed", group = "billing", max_attempts = 10)]
pub async fn bill(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    envelope: &Envelope,
) -> Result<(), txmsg::Error> {
    let _ = sqlx::query("INSERT INTO invoices (order_id, message) VALUES (?, ?)")
        .bind(order.id)
        .bind(&envelope.idempotency_key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Private, with a body that never returns normally and an unused
/// transaction.
#[message_handler(topic = "orders.cancelled", group = "billing")]
async fn refuse(_tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<(), String> {
    Err(format!("order {id} cannot be cancelled"))
}

/// Deprecated: registering it is not a use of it.
#[deprecated = "use `bill`"]
#[message_handler(topic = "orders.billed", group = "billing")]
async fn bill_legacy(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    (id, _): (i64, String),
) -> Result<(), txmsg::Error> {
    let _ = (tx, id);
    Ok(())
}

/// Compiled out, together with its registration.
#[cfg(any())]
#[message_handler(topic = "orders.gone", group = "billing")]
async fn gone(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<(), txmsg::Error> {
    let _ = (tx, id);
    Ok(())
}

fn main() {}
