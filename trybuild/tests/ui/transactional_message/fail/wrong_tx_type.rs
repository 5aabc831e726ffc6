use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

// sqlx's own transaction cannot carry outbox messages.
#[transactional_message(topic = "orders.placed")]
async fn place_order(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: i64,
) -> Result<OrderPlaced, txmsg::Error> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id })
}

// Writing the message needs a mutable borrow.
#[transactional_message(topic = "orders.placed")]
async fn place_other_order(
    tx: &Tx<'_, sqlx::Sqlite>,
    id: i64,
) -> Result<OrderPlaced, txmsg::Error> {
    let _ = tx;
    Ok(OrderPlaced { id })
}

fn main() {}
