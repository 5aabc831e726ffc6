use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
    customer: i64,
}

#[transactional_message(topic = "orders.placed", key = customer, key = id)]
async fn place_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    id: i64,
    customer: i64,
) -> Result<OrderPlaced, txmsg::Error> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id, customer })
}

fn main() {}
