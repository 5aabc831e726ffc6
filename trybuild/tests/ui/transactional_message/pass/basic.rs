use txmsg::{Outbox, Tx, transactional_message};

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
    total_cents: i64,
}

#[transactional_message(
    topic = "orders.placed",
    key = id,
    idempotency_key = format!("order-{id}"),
    ttl = "30m",
)]
async fn place_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    id: i64,
    total_cents: i64,
) -> Result<OrderPlaced, txmsg::Error> {
    sqlx::query("INSERT INTO orders (id, total_cents) VALUES (?, ?)")
        .bind(id)
        .bind(total_cents)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id, total_cents })
}

// Every argument is optional but the topic.
#[transactional_message(topic = "orders.pinged")]
async fn ping(tx: &mut Tx<'_, sqlx::Sqlite>) -> Result<(), txmsg::Error> {
    let _ = tx;
    Ok(())
}

// The body may move the transaction reference itself.
#[transactional_message(topic = "orders.cancelled")]
async fn cancel_order(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<i64, txmsg::Error> {
    let conn: &mut Tx<'_, sqlx::Sqlite> = tx;
    sqlx::query("DELETE FROM orders WHERE id = ?")
        .bind(id)
        .execute(&mut **conn)
        .await?;
    Ok(id)
}

// A parameter that is `Send` but not `Sync`, used across an `.await`: the
// future is still `Send`, as it would be without the macro.
#[transactional_message(topic = "orders.counted")]
async fn count_orders(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    seen: std::cell::Cell<u32>,
) -> Result<u32, txmsg::Error> {
    sqlx::query("SELECT 1").execute(&mut **tx).await?;
    Ok(seen.get())
}

async fn run(outbox: &Outbox<sqlx::Sqlite>) -> txmsg::Result<()> {
    // One call: begin, run, write the message, commit.
    let placed: OrderPlaced = place_order_and_commit(outbox, 1, 4200).await?;
    assert_eq!(placed.id, 1);
    ping_and_commit(outbox).await?;

    // Or in the caller's transaction.
    let mut tx = outbox.begin().await?;
    place_order(&mut tx, 2, 100).await?;
    ping(&mut tx).await?;
    cancel_order(&mut tx, 2).await?;
    count_orders(&mut tx, std::cell::Cell::new(1)).await?;
    tx.commit().await
}

// Both functions can run on a multi-threaded runtime.
fn assert_send<T: Send>(_: &T) {}

#[allow(dead_code)]
async fn futures_are_send(outbox: &Outbox<sqlx::Sqlite>, tx: &mut Tx<'_, sqlx::Sqlite>) {
    assert_send(&place_order_and_commit(outbox, 1, 4200));
    assert_send(&place_order(tx, 1, 4200));
    assert_send(&count_orders(tx, std::cell::Cell::new(0)));
    assert_send(&count_orders_and_commit(outbox, std::cell::Cell::new(0)));
    assert_send(&run(outbox));
}

fn main() {
    let _ = run;
}
