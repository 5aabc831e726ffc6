//! The business code: an order table and the annotated `place_order`.

use serde::{Deserialize, Serialize};

/// An order as the client sends it.
#[derive(Debug, Clone)]
pub(crate) struct NewOrder {
    pub(crate) id: i64,
    pub(crate) customer: String,
    pub(crate) total_cents: i64,
}

impl NewOrder {
    pub(crate) fn new(id: i64, customer: &str, total_cents: i64) -> Self {
        NewOrder {
            id,
            customer: customer.to_owned(),
            total_cents,
        }
    }
}

/// The event published when an order is placed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OrderPlaced {
    pub(crate) id: i64,
    pub(crate) customer: String,
    pub(crate) total_cents: i64,
}

/// Why placing an order failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OrderError {
    /// The business check refused the order.
    #[error("order rejected: {0}")]
    Rejected(&'static str),
    /// The database or txmsg failed (including a duplicate idempotency key).
    #[error(transparent)]
    Txmsg(#[from] txmsg::Error),
}

impl From<sqlx::Error> for OrderError {
    fn from(e: sqlx::Error) -> Self {
        OrderError::Txmsg(e.into())
    }
}

/// The same service for each database: only the transaction type and the
/// bind parameters' syntax (`$1` on PostgreSQL, `?` on MySQL) differ.
macro_rules! order_service {
    ($module:ident, $db:ty, values = $values:literal) => {
        pub(crate) mod $module {
            use super::{NewOrder, OrderError, OrderPlaced};
            use txmsg::Tx;

            /// Creates the business table.
            pub(crate) async fn create_schema(pool: &sqlx::Pool<$db>) -> Result<(), sqlx::Error> {
                sqlx::query(
                    // No unique key on `id` on purpose: the outbox's
                    // idempotency key is what stops a retried order.
                    "CREATE TABLE IF NOT EXISTS demo_orders (
                         id BIGINT NOT NULL,
                         customer TEXT NOT NULL,
                         total_cents BIGINT NOT NULL
                     )",
                )
                .execute(pool)
                .await?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS demo_invoices (
                         order_id BIGINT NOT NULL,
                         customer TEXT NOT NULL,
                         amount_cents BIGINT NOT NULL
                     )",
                )
                .execute(pool)
                .await?;
                sqlx::query("DELETE FROM demo_orders").execute(pool).await?;
                sqlx::query("DELETE FROM demo_invoices").execute(pool).await?;
                Ok(())
            }

            /// Counts the invoices billing wrote.
            pub(crate) async fn count_invoices(pool: &sqlx::Pool<$db>) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar("SELECT count(*) FROM demo_invoices").fetch_one(pool).await
            }

            /// The billing service: bills each placed order exactly once.
            /// The inbox key is recorded in the same transaction as the
            /// invoice, so a redelivered `orders.placed` is skipped.
            #[txmsg::message_handler(topic = "orders.placed", group = "billing", max_attempts = 5)]
            pub(crate) async fn bill_order(
                tx: &mut Tx<'_, $db>,
                order: OrderPlaced,
            ) -> Result<(), OrderError> {
                sqlx::query(concat!(
                    "INSERT INTO demo_invoices (order_id, customer, amount_cents) VALUES ",
                    $values
                ))
                .bind(order.id)
                .bind(&order.customer)
                .bind(order.total_cents)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Counts the rows of the business table.
            pub(crate) async fn count_orders(pool: &sqlx::Pool<$db>) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar("SELECT count(*) FROM demo_orders").fetch_one(pool).await
            }

            /// Inserts the order and, in the same transaction, its
            /// `orders.placed` message. The idempotency key is the order id,
            /// so a client retry cannot place it twice.
            #[txmsg::transactional_message(
                                                topic = "orders.placed",
                                                key = order.customer,
                                                idempotency_key = format!("order-{}", order.id),
                                            )]
            pub(crate) async fn place_order(
                tx: &mut Tx<'_, $db>,
                order: NewOrder,
            ) -> Result<OrderPlaced, OrderError> {
                sqlx::query(concat!(
                    "INSERT INTO demo_orders (id, customer, total_cents) VALUES ",
                    $values
                ))
                .bind(order.id)
                .bind(&order.customer)
                .bind(order.total_cents)
                .execute(&mut **tx)
                .await?;
                // The check runs after the insert: a rejection must roll it back.
                if order.total_cents <= 0 {
                    return Err(OrderError::Rejected("total must be positive"));
                }
                Ok(OrderPlaced {
                    id: order.id,
                    customer: order.customer,
                    total_cents: order.total_cents,
                })
            }
        }
    };
}

order_service!(on_sqlite, sqlx::Sqlite, values = "(?, ?, ?)");
order_service!(on_postgres, sqlx::Postgres, values = "($1, $2, $3)");
order_service!(on_mysql, sqlx::MySql, values = "(?, ?, ?)");
