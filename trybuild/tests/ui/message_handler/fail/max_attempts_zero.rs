use txmsg::{Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[message_handler(topic = "orders.placed", group = "billing", max_attempts = 0)]
async fn bill(tx: &mut Tx<'_, sqlx::Sqlite>, order: OrderPlaced) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id);
    Ok(())
}

// Not a literal.
const ATTEMPTS: u32 = 3;

#[message_handler(topic = "orders.cancelled", group = "billing", max_attempts = ATTEMPTS)]
async fn refund(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<(), txmsg::Error> {
    let _ = (tx, id);
    Ok(())
}

fn main() {}
