use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

// Has no `From<txmsg::Error>`, so writing the message cannot fail into it.
#[derive(Debug)]
enum OrderError {
    OutOfStock,
}

#[transactional_message(topic = "orders.placed")]
async fn place_order(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<OrderPlaced, OrderError> {
    let _ = tx;
    if id < 0 {
        return Err(OrderError::OutOfStock);
    }
    Ok(OrderPlaced { id })
}

fn main() {}
