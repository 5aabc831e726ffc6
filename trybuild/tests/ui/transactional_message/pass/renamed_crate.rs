//! `crate = "..."` for a renamed dependency.
extern crate txmsg as messaging;

mod reexports {
    pub use ::txmsg as outbox_lib;
}

#[derive(serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

#[messaging::transactional_message(topic = "orders.placed", key = id, crate = "messaging")]
async fn place_order(
    tx: &mut messaging::Tx<'_, sqlx::Sqlite>,
    id: i64,
) -> Result<OrderPlaced, messaging::Error> {
    let _ = tx;
    Ok(OrderPlaced { id })
}

#[reexports::outbox_lib::transactional_message(
    topic = "orders.placed",
    crate = "crate::reexports::outbox_lib"
)]
async fn place_other_order(
    tx: &mut messaging::Tx<'_, sqlx::Sqlite>,
    id: i64,
) -> Result<OrderPlaced, messaging::Error> {
    let _ = tx;
    Ok(OrderPlaced { id })
}

async fn run(outbox: &messaging::Outbox<sqlx::Sqlite>) -> messaging::Result<()> {
    place_order_and_commit(outbox, 1).await?;
    place_other_order_and_commit(outbox, 2).await?;
    Ok(())
}

fn main() {
    let _ = run;
}
