use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

#[transactional_message(topic = "orders.placed")]
async fn place_order(id: i64, tx: &mut Tx<'_, sqlx::Sqlite>) -> Result<OrderPlaced, txmsg::Error> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id })
}

fn main() {}
