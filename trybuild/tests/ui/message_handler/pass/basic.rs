use txmsg::{Envelope, Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
    total_cents: i64,
}

#[derive(Debug, thiserror::Error)]
enum BillingError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("order {0} has no total")]
    Empty(i64),
}

// With the envelope.
#[message_handler(topic = "orders.placed", group = "billing", max_attempts = 3)]
async fn bill_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    envelope: &Envelope,
) -> Result<(), BillingError> {
    if order.total_cents == 0 {
        return Err(BillingError::Empty(order.id));
    }
    sqlx::query("INSERT INTO invoices (order_id, cents, message) VALUES (?, ?, ?)")
        .bind(order.id)
        .bind(order.total_cents)
        .bind(&envelope.idempotency_key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// Without it; `max_attempts` defaults to 5.
#[message_handler(topic = "orders.cancelled", group = "billing")]
async fn cancel_invoice(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<(), txmsg::Error> {
    sqlx::query("DELETE FROM invoices WHERE order_id = ?")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

// Patterns, a `mut` transaction and lifetimes on the references.
#[message_handler(topic = "orders.moved", group = "shipping")]
async fn move_order<'a>(
    mut tx: &'a mut Tx<'_, sqlx::Sqlite>,
    (from, to): (i64, i64),
    _: &'a Envelope,
) -> Result<(), String> {
    let conn: &mut Tx<'_, sqlx::Sqlite> = &mut tx;
    let _ = (conn, from, to);
    Ok(())
}

// The function stays callable as written, in the caller's transaction.
async fn run(outbox: &txmsg::Outbox<sqlx::Sqlite>, envelope: &Envelope) -> Result<(), BillingError> {
    let mut tx = outbox.begin().await.map_err(|_| BillingError::Empty(0))?;
    let order = OrderPlaced {
        id: 1,
        total_cents: 4200,
    };
    bill_order(&mut tx, order, envelope).await?;
    cancel_invoice(&mut tx, 1).await.map_err(|_| BillingError::Empty(1))?;
    move_order(&mut tx, (1, 2), envelope).await.map_err(|_| BillingError::Empty(2))?;
    Ok(())
}

fn main() {
    let _ = run;
}
