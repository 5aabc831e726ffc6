//! Names in the user's scope that the generated code must not pick up.
#![allow(dead_code)]

use txmsg::{Tx, transactional_message};

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Txmsg(#[from] txmsg::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("out of stock")]
    OutOfStock,
}

// A crate-wide alias, as many applications have.
type Result<T, E = AppError> = std::result::Result<T, E>;

// Look-alikes of what the expansion uses.
struct Error;
struct Message;
struct Outbox;
struct Duration;
struct String;
struct Future;
trait From {}
mod serde {}
mod core {}

#[derive(::serde::Serialize)]
struct OrderPlaced {
    id: i64,
}

#[transactional_message(topic = "orders.placed", key = id, ttl = "1d")]
async fn place_order(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<OrderPlaced, AppError> {
    if id < 0 {
        return Err(AppError::OutOfStock);
    }
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id })
}

#[transactional_message(topic = "orders.placed")]
async fn place_order_again(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    id: i64,
) -> std::result::Result<OrderPlaced, txmsg::Error> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id })
}

fn main() {}
