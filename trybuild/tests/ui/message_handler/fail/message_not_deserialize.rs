use txmsg::{Envelope, Tx, message_handler};

// Missing `#[derive(serde::Deserialize)]`.
struct OrderPlaced {
    id: i64,
}

#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    envelope: &Envelope,
) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id, envelope);
    Ok(())
}

fn main() {}
