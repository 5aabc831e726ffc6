use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

#[transactional_message(topic = "orders.placed")]
async fn place_order(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> OrderPlaced {
    let _ = tx;
    OrderPlaced { id }
}

// An alias with one argument hides the error type the macro converts into.
#[transactional_message(topic = "orders.placed")]
async fn place_other_order(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> txmsg::Result<OrderPlaced> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id })
}

fn main() {}
