use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

// Wildcards mean something to the brokers.
#[transactional_message(topic = "orders.*")]
async fn place_order(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<OrderPlaced, txmsg::Error> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id })
}

// The topic is checked at compile time, so it must be a literal.
const TOPIC: &str = "orders.placed";

#[transactional_message(topic = TOPIC)]
async fn place_other_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    id: i64,
) -> Result<OrderPlaced, txmsg::Error> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id })
}

// An empty topic is refused too.
#[transactional_message(topic = "")]
async fn place_nameless_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    id: i64,
) -> Result<OrderPlaced, txmsg::Error> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id })
}

fn main() {}
