//! Generated code raises no warning, even with strict lints.
#![deny(
    warnings,
    missing_docs,
    rust_2018_idioms,
    unused_qualifications,
    unused_lifetimes
)]
#![deny(unreachable_pub, unused_results, clippy::all)]

use txmsg::{Outbox, Tx, transactional_message};

/// The payload.
#[derive(serde::Serialize)]
pub struct OrderPlaced {
    id: i64,
}

/// Public, documented, and its `_and_commit` is never called.
#[transactional_message(topic = "orders.placed", key = id, idempotency_key = id, ttl = "500ms")]
pub async fn place_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    id: i64,
) -> Result<OrderPlaced, txmsg::Error> {
    if id < 0 {
        return Err(txmsg::Error::Unsupported("negative ids"));
    }
    let _ = sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id })
}

/// Private, with a body that never returns normally.
#[transactional_message(topic = "orders.failed")]
async fn fail_order(tx: &mut Tx<'_, sqlx::Sqlite>, reason: &str) -> Result<(), txmsg::Error> {
    let _ = tx;
    Err(txmsg::Error::Unsupported(if reason.is_empty() {
        "no reason"
    } else {
        "reason"
    }))
}

/// Parameters that are patterns, not names.
#[transactional_message(topic = "orders.moved")]
async fn move_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    (from, to): (i64, i64),
    _: u8,
) -> Result<(i64, i64), txmsg::Error> {
    let _ = tx;
    Ok((from, to))
}

async fn run(outbox: &Outbox<sqlx::Sqlite>) -> txmsg::Result<()> {
    let mut tx = outbox.begin().await?;
    let _ = place_order(&mut tx, 1).await?;
    let _ = move_order(&mut tx, (1, 2), 0).await?;
    tx.commit().await?;
    fail_order_and_commit(outbox, "").await
}

fn main() {
    let _ = run;
}
