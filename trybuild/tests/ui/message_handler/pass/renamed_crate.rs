//! `crate = "..."` for a renamed dependency.
extern crate txmsg as messaging;

mod reexports {
    pub use ::txmsg as messaging_lib;
}

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[messaging::message_handler(topic = "orders.placed", group = "billing", crate = "messaging")]
async fn bill(
    tx: &mut messaging::Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    envelope: &messaging::Envelope,
) -> Result<(), messaging::Error> {
    let _ = (tx, order.id, envelope);
    Ok(())
}

#[reexports::messaging_lib::message_handler(
    topic = "orders.cancelled",
    group = "billing",
    max_attempts = 1,
    crate = "crate::reexports::messaging_lib"
)]
async fn refund(tx: &mut messaging::Tx<'_, sqlx::Sqlite>, id: i64) -> Result<(), messaging::Error> {
    let _ = (tx, id);
    Ok(())
}

fn main() {
    let topics: Vec<_> = messaging::consumer::registered_handlers()
        .iter()
        .map(|h| (h.topic, h.max_attempts))
        .collect();
    assert_eq!(topics, [("orders.cancelled", 1), ("orders.placed", 5)]);
}
