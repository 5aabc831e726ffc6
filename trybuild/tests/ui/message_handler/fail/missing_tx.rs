use txmsg::{Envelope, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(order: OrderPlaced, envelope: &Envelope) -> Result<(), txmsg::Error> {
    let _ = (order.id, envelope);
    Ok(())
}

// No parameters at all.
#[message_handler(topic = "orders.cancelled", group = "billing")]
async fn refund() -> Result<(), txmsg::Error> {
    Ok(())
}

fn main() {}
