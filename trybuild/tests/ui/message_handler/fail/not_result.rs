use txmsg::{Envelope, Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(tx: &mut Tx<'_, sqlx::Sqlite>, order: OrderPlaced) {
    let _ = (tx, order.id);
}

// A handler's success carries nothing.
#[message_handler(topic = "orders.cancelled", group = "billing")]
async fn refund(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<i64, txmsg::Error> {
    let _ = tx;
    Ok(id)
}

// An alias that hides the error type.
#[message_handler(topic = "orders.shipped", group = "billing")]
async fn close(tx: &mut Tx<'_, sqlx::Sqlite>, order: OrderPlaced, envelope: &Envelope) -> txmsg::Result<()> {
    let _ = (tx, order.id, envelope);
    Ok(())
}

fn main() {}
