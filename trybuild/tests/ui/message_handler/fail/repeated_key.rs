use txmsg::{Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[message_handler(topic = "orders.placed", group = "billing", group = "shipping")]
async fn bill(tx: &mut Tx<'_, sqlx::Sqlite>, order: OrderPlaced) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id);
    Ok(())
}

fn main() {}
