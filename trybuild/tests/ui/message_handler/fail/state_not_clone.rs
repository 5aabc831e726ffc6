use txmsg::{State, Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

// Not `Clone`: each call gets a clone of the consumer's value.
struct Clients {
    pool: sqlx::SqlitePool,
}

#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(
    _tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    clients: State<Clients>,
) -> Result<(), txmsg::Error> {
    let _ = (order.id, &clients.pool);
    Ok(())
}

fn main() {}
