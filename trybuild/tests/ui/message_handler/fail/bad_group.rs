use txmsg::{Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[message_handler(topic = "orders.placed", group = "billing service")]
async fn bill(tx: &mut Tx<'_, sqlx::Sqlite>, order: OrderPlaced) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id);
    Ok(())
}

#[message_handler(topic = "orders.cancelled", group = "")]
async fn refund(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<(), txmsg::Error> {
    let _ = (tx, id);
    Ok(())
}

fn main() {}
