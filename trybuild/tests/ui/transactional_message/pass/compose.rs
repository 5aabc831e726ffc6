//! Several annotated calls share the caller's transaction, and annotated
//! functions may call each other.
use txmsg::{Outbox, Tx, transactional_message};

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

#[derive(serde::Serialize)]
struct PaymentCharged {
    order: i64,
    cents: i64,
}

#[transactional_message(topic = "orders.placed", key = id)]
async fn place_order(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<OrderPlaced, txmsg::Error> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id })
}

#[transactional_message(topic = "billing.charged", key = order)]
async fn charge(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: i64,
    cents: i64,
) -> Result<PaymentCharged, txmsg::Error> {
    sqlx::query("INSERT INTO payments (order_id, cents) VALUES (?, ?)")
        .bind(order)
        .bind(cents)
        .execute(&mut **tx)
        .await?;
    Ok(PaymentCharged { order, cents })
}

// Two calls, one transaction, by hand.
async fn checkout(outbox: &Outbox<sqlx::Sqlite>, id: i64) -> txmsg::Result<()> {
    let mut tx = outbox.begin().await?;
    place_order(&mut tx, id).await?;
    charge(&mut tx, id, 4200).await?;
    tx.commit().await
}

// An annotated function that calls others: three messages, one transaction.
#[transactional_message(topic = "orders.checked-out", key = id)]
async fn checkout_in_one(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<i64, txmsg::Error> {
    place_order(tx, id).await?;
    charge(&mut *tx, id, 4200).await?;
    Ok(id)
}

async fn run(outbox: &Outbox<sqlx::Sqlite>) -> txmsg::Result<()> {
    checkout(outbox, 1).await?;
    checkout_in_one_and_commit(outbox, 2).await?;
    Ok(())
}

fn main() {
    let _ = run;
}
