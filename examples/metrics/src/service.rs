//! The business code: orders placed with their `orders.placed` message, and
//! a billing handler that invoices each order once.

use serde::{Deserialize, Serialize};
use txmsg::Tx;

/// The topic of placed orders.
pub(crate) const TOPIC: &str = "orders.placed";
/// The billing service's consumer group.
pub(crate) const BILLING_GROUP: &str = "billing";

/// An order as the client sends it.
#[derive(Debug, Clone)]
pub(crate) struct NewOrder {
    pub(crate) id: i64,
    pub(crate) customer: String,
    pub(crate) total_cents: i64,
}

/// The event published when an order is placed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OrderPlaced {
    pub(crate) id: i64,
    pub(crate) customer: String,
    pub(crate) total_cents: i64,
}

/// Why placing or billing an order failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OrderError {
    /// The database or txmsg failed.
    #[error(transparent)]
    Txmsg(#[from] txmsg::Error),
}

impl From<sqlx::Error> for OrderError {
    fn from(e: sqlx::Error) -> Self {
        OrderError::Txmsg(e.into())
    }
}

/// Creates the business tables.
pub(crate) async fn create_schema(pool: &sqlx::SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS demo_orders (
             id BIGINT NOT NULL PRIMARY KEY,
             customer TEXT NOT NULL,
             total_cents BIGINT NOT NULL
         )",
    )
    .execute(pool)
    .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS demo_invoices (
             order_id BIGINT NOT NULL,
             amount_cents BIGINT NOT NULL
         )",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Inserts the order and, in the same transaction, its `orders.placed`
/// message, keyed by customer so that one customer's orders stay in order.
#[txmsg::transactional_message(
    topic = "orders.placed",
    key = order.customer,
    idempotency_key = format!("order-{}", order.id),
)]
pub(crate) async fn place_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: NewOrder,
) -> Result<OrderPlaced, OrderError> {
    sqlx::query("INSERT INTO demo_orders (id, customer, total_cents) VALUES (?, ?, ?)")
        .bind(order.id)
        .bind(&order.customer)
        .bind(order.total_cents)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced {
        id: order.id,
        customer: order.customer,
        total_cents: order.total_cents,
    })
}

/// Bills each placed order once: the inbox key is recorded in the same
/// transaction as the invoice.
#[txmsg::message_handler(topic = "orders.placed", group = "billing")]
pub(crate) async fn bill_order(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
) -> Result<(), OrderError> {
    sqlx::query("INSERT INTO demo_invoices (order_id, amount_cents) VALUES (?, ?)")
        .bind(order.id)
        .bind(order.total_cents)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
