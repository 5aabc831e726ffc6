use txmsg::{Envelope, Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    envelope: &Envelope,
    attempt: u32,
    dry_run: bool,
) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id, envelope, attempt, dry_run);
    Ok(())
}

fn main() {}
