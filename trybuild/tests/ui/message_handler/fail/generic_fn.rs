use txmsg::{Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill<DB: sqlx::Database>(tx: &mut Tx<'_, DB>, order: OrderPlaced) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id);
    Ok(())
}

fn main() {}
