use txmsg::{Envelope, Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

// A plain sqlx transaction: the inbox key would not be in it.
#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    order: OrderPlaced,
) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id);
    Ok(())
}

// A shared reference cannot write.
#[message_handler(topic = "orders.cancelled", group = "billing")]
async fn refund(tx: &Tx<'_, sqlx::Sqlite>, id: i64, envelope: &Envelope) -> Result<(), txmsg::Error> {
    let _ = (tx, id, envelope);
    Ok(())
}

fn main() {}
