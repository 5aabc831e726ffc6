use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

#[transactional_message(topic = "orders.placed")]
async fn place_order<DB: sqlx::Database>(
    tx: &mut Tx<'_, DB>,
    id: i64,
) -> Result<OrderPlaced, txmsg::Error> {
    let _ = tx;
    Ok(OrderPlaced { id })
}

fn main() {}
