//! Names in the user's scope that the generated code must not pick up.
#![allow(dead_code, unused_macros)]

use txmsg::{Tx, message_handler};

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Txmsg(#[from] txmsg::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

// A crate-wide alias, as many applications have.
type Result<T, E = AppError> = ::std::result::Result<T, E>;

// Look-alikes of what the expansion uses.
struct Envelope;
struct Box;
struct Option;
struct Uuid;
struct HandlerRecord;
struct HandlerOutcome;
struct AnyCtx;
struct BoxFuture;
fn run_handler() {}
fn type_name() {}
mod inventory {}
mod serde {}
mod core {}
mod std {}
macro_rules! concat {
    ($($t:tt)*) => {
        0
    };
}
macro_rules! line {
    () => {
        "line"
    };
}
macro_rules! file {
    () => {
        0
    };
}
macro_rules! module_path {
    () => {
        0
    };
}

#[derive(::serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    envelope: &txmsg::Envelope,
) -> Result<(), AppError> {
    sqlx::query("INSERT INTO invoices (order_id, message) VALUES (?, ?)")
        .bind(order.id)
        .bind(&envelope.idempotency_key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[message_handler(topic = "orders.cancelled", group = "billing")]
async fn refund(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> ::std::result::Result<(), AppError> {
    let _ = (tx, id);
    Ok(())
}

fn main() {}
