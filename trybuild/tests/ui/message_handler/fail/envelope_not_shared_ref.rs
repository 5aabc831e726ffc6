use txmsg::{Envelope, Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    envelope: &mut Envelope,
) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id, envelope);
    Ok(())
}

#[message_handler(topic = "orders.cancelled", group = "billing")]
async fn refund(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    id: i64,
    idempotency_key: &str,
) -> Result<(), txmsg::Error> {
    let _ = (tx, id, idempotency_key);
    Ok(())
}

// The envelope before the message.
#[message_handler(topic = "orders.shipped", group = "billing")]
async fn close(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    envelope: &Envelope,
    order: OrderPlaced,
) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id, envelope);
    Ok(())
}

fn main() {}
