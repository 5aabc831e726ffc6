use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

#[derive(Debug, Clone, Copy)]
struct CustomerId(i64);

// Keys are turned into strings with `Display`.
#[transactional_message(topic = "orders.placed", key = customer)]
async fn place_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    id: i64,
    customer: CustomerId,
) -> Result<OrderPlaced, txmsg::Error> {
    sqlx::query("INSERT INTO orders (id, customer) VALUES (?, ?)")
        .bind(id)
        .bind(customer.0)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id })
}

fn main() {}
