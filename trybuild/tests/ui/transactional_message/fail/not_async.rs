use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

#[transactional_message(topic = "orders.placed")]
fn place_order(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<OrderPlaced, txmsg::Error> {
    let _ = tx;
    Ok(OrderPlaced { id })
}

fn main() {}
