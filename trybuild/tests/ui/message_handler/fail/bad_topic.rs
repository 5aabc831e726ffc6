use txmsg::{Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

// Wildcards mean something to the brokers.
#[message_handler(topic = "orders.*", group = "billing")]
async fn bill(tx: &mut Tx<'_, sqlx::Sqlite>, order: OrderPlaced) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id);
    Ok(())
}

// The topic is checked at compile time, so it must be a literal.
const TOPIC: &str = "orders.cancelled";

#[message_handler(topic = TOPIC, group = "billing")]
async fn refund(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<(), txmsg::Error> {
    let _ = (tx, id);
    Ok(())
}

fn main() {}
