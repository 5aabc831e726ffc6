use txmsg::{Envelope, Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(
    order: OrderPlaced,
    tx: &mut Tx<'_, sqlx::Sqlite>,
    envelope: &Envelope,
) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id, envelope);
    Ok(())
}

fn main() {}
