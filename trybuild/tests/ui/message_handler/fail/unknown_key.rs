use txmsg::{Envelope, Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[message_handler(topic = "orders.placed", grup = "billing")]
async fn bill(tx: &mut Tx<'_, sqlx::Sqlite>, order: OrderPlaced) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id);
    Ok(())
}

// As other libraries call it.
#[message_handler(topic = "orders.cancelled", group = "billing", max_retries = 3)]
async fn refund(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64, envelope: &Envelope) -> Result<(), txmsg::Error> {
    let _ = (tx, id, envelope);
    Ok(())
}

// A producer's argument.
#[message_handler(topic = "orders.shipped", group = "billing", ttl = "30m")]
async fn close(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<(), txmsg::Error> {
    let _ = (tx, id);
    Ok(())
}

fn main() {}
