use txmsg::{Envelope, Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

// Debug only: the dead letter's reason needs `Display`.
#[derive(Debug)]
enum BillingError {
    Database(sqlx::Error),
}

impl From<sqlx::Error> for BillingError {
    fn from(error: sqlx::Error) -> Self {
        BillingError::Database(error)
    }
}

#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    envelope: &Envelope,
) -> Result<(), BillingError> {
    sqlx::query("INSERT INTO invoices (order_id, message) VALUES (?, ?)")
        .bind(order.id)
        .bind(&envelope.idempotency_key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn main() {}
