use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

// An expression `ttl` must be a `Duration` or an `Option<Duration>`; a
// number has no unit.
#[transactional_message(topic = "orders.placed", ttl = 5)]
async fn place_order(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<OrderPlaced, txmsg::Error> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id })
}

#[derive(serde::Serialize)]
struct PaymentRequested {
    order: i64,
}

#[transactional_message(topic = "payments.requested", half, ttl = ttl_secs)]
async fn charge(payment: &PaymentRequested, ttl_secs: u64) -> Result<(), txmsg::Error> {
    let _ = (payment.order, ttl_secs);
    Ok(())
}

fn main() {}
