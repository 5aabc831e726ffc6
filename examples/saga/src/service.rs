//! The business code of the three services: their tables, their messages,
//! the annotated producer functions and the `#[message_handler]`s that
//! chain them.

use serde::{Deserialize, Serialize};

/// The three services of the saga, each with a database of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Service {
    /// Takes orders; cancels or completes them as the saga ends.
    Order,
    /// Charges (or declines) each placed order.
    Payment,
    /// Ships each charged order.
    Shipping,
}

impl Service {
    /// Every service, in the order the saga visits them.
    pub(crate) const ALL: [Service; 3] = [Service::Order, Service::Payment, Service::Shipping];

    /// The service's name, as `--crash` takes it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Service::Order => "order",
            Service::Payment => "payment",
            Service::Shipping => "shipping",
        }
    }

    /// The service's consumer group. Each service has its own: handlers are
    /// found by group (and by the store's database), so one group per
    /// service keeps each consumer to its own handlers.
    pub(crate) fn group(self) -> &'static str {
        match self {
            Service::Order => ORDER_GROUP,
            Service::Payment => PAYMENT_GROUP,
            Service::Shipping => SHIPPING_GROUP,
        }
    }

    /// The topics the service consumes.
    pub(crate) fn subscriptions(self) -> &'static [&'static str] {
        match self {
            Service::Order => &[PAYMENTS_DECLINED, SHIPMENTS_CREATED],
            Service::Payment => &[ORDERS_PLACED],
            Service::Shipping => &[PAYMENTS_CHARGED],
        }
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The order service's consumer group.
pub(crate) const ORDER_GROUP: &str = "order";
/// The payment service's consumer group.
pub(crate) const PAYMENT_GROUP: &str = "payment";
/// The shipping service's consumer group.
pub(crate) const SHIPPING_GROUP: &str = "shipping";

/// An order was placed (order service → payment service).
pub(crate) const ORDERS_PLACED: &str = "orders.placed";
/// A payment was taken (payment service → shipping service).
pub(crate) const PAYMENTS_CHARGED: &str = "payments.charged";
/// A payment was refused: the compensating message (payment service →
/// order service).
pub(crate) const PAYMENTS_DECLINED: &str = "payments.declined";
/// An order was shipped (shipping service → order service).
pub(crate) const SHIPMENTS_CREATED: &str = "shipments.created";

/// The largest amount the payment service charges, in cents.
pub(crate) const CHARGE_LIMIT_CENTS: i64 = 10_000;
/// Customers the payment service refuses to charge.
pub(crate) const FLAGGED_CUSTOMERS: &[&str] = &["mallory"];

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

/// `orders.placed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: i64,
    pub(crate) customer: String,
    pub(crate) total_cents: i64,
}

/// `payments.charged`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PaymentCharged {
    pub(crate) order_id: i64,
    pub(crate) customer: String,
    pub(crate) amount_cents: i64,
}

/// `payments.declined`: the compensating message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PaymentDeclined {
    pub(crate) order_id: i64,
    pub(crate) reason: String,
}

/// `shipments.created`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShipmentCreated {
    pub(crate) order_id: i64,
    pub(crate) carrier: String,
}

/// The payment service's rules: `Err(reason)` when the payment is declined.
pub(crate) fn payment_decision(customer: &str, total_cents: i64) -> Result<(), String> {
    if FLAGGED_CUSTOMERS.contains(&customer) {
        return Err("customer flagged for review".to_owned());
    }
    if total_cents > CHARGE_LIMIT_CENTS {
        return Err(format!("over the {CHARGE_LIMIT_CENTS}-cent limit"));
    }
    Ok(())
}

/// The idempotency key of a service's message about order `id`: one
/// message of each kind per order, however often its step runs.
fn idem(kind: &str, id: i64) -> String {
    format!("{kind}-{id}")
}

/// The carrier the shipping service picks for an order.
fn carrier_for(order_id: i64) -> &'static str {
    if order_id % 2 == 0 {
        "parcel-post"
    } else {
        "courier"
    }
}

/// Why a step of the saga failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SagaError {
    /// A message names an order the service does not have.
    #[error("no order {0}")]
    UnknownOrder(i64),
    /// The database or txmsg failed (including a duplicate idempotency key).
    #[error(transparent)]
    Txmsg(#[from] txmsg::Error),
}

impl From<sqlx::Error> for SagaError {
    fn from(e: sqlx::Error) -> Self {
        SagaError::Txmsg(e.into())
    }
}

/// One order's row in the order service.
#[derive(Debug, Clone)]
pub(crate) struct OrderRow {
    pub(crate) id: i64,
    pub(crate) customer: String,
    pub(crate) total_cents: i64,
    pub(crate) state: String,
}

/// One payment row of the payment service.
#[derive(Debug, Clone)]
pub(crate) struct PaymentRow {
    pub(crate) order_id: i64,
    pub(crate) state: String,
    pub(crate) reason: Option<String>,
}

/// The services for each database: only the transaction type and the bind
/// parameters' syntax (`$1` on PostgreSQL, `?` on SQLite) differ.
macro_rules! saga_services {
    ($module:ident, $db:ty, $p1:literal, $p2:literal, $p3:literal) => {
        pub(crate) mod $module {
            use super::{
                NewOrder, OrderPlaced, OrderRow, PaymentCharged, PaymentDeclined, PaymentRow,
                SagaError, Service, ShipmentCreated, carrier_for, idem, payment_decision,
            };
            use txmsg::Tx;

            /// Creates the business tables of `service` in its database.
            ///
            /// No table has a unique key on the order id, on purpose: a
            /// message applied twice would show as a second row.
            pub(crate) async fn create_tables(
                service: Service,
                pool: &sqlx::Pool<$db>,
            ) -> Result<(), sqlx::Error> {
                let statements: &[&str] = match service {
                    Service::Order => &[
                        "CREATE TABLE saga_orders (
                             id BIGINT NOT NULL,
                             customer TEXT NOT NULL,
                             total_cents BIGINT NOT NULL,
                             state TEXT NOT NULL
                         )",
                        "CREATE TABLE saga_order_history (
                             order_id BIGINT NOT NULL,
                             event TEXT NOT NULL
                         )",
                    ],
                    Service::Payment => &["CREATE TABLE saga_payments (
                             order_id BIGINT NOT NULL,
                             amount_cents BIGINT NOT NULL,
                             state TEXT NOT NULL,
                             reason TEXT
                         )"],
                    Service::Shipping => &["CREATE TABLE saga_shipments (
                             order_id BIGINT NOT NULL,
                             customer TEXT NOT NULL,
                             carrier TEXT NOT NULL
                         )"],
                };
                for statement in statements {
                    sqlx::query(*statement).execute(pool).await?;
                }
                Ok(())
            }

            // ---- order service ----

            /// Inserts the order and, in the same transaction, its
            /// `orders.placed` message: the first step of the saga.
            #[txmsg::transactional_message(
                topic = "orders.placed", key = order.id, idempotency_key = idem("order", order.id)
            )]
            pub(crate) async fn place_order(
                tx: &mut Tx<'_, $db>,
                order: NewOrder,
            ) -> Result<OrderPlaced, SagaError> {
                sqlx::query(concat!(
                    "INSERT INTO saga_orders (id, customer, total_cents, state) VALUES (",
                    $p1,
                    ", ",
                    $p2,
                    ", ",
                    $p3,
                    ", 'placed')"
                ))
                .bind(order.id)
                .bind(&order.customer)
                .bind(order.total_cents)
                .execute(&mut **tx)
                .await?;
                Ok(OrderPlaced {
                    order_id: order.id,
                    customer: order.customer,
                    total_cents: order.total_cents,
                })
            }

            /// Sets an order's state and records the event, in `tx`.
            async fn settle_order(
                tx: &mut Tx<'_, $db>,
                order_id: i64,
                state: &str,
                event: String,
            ) -> Result<(), SagaError> {
                let updated = sqlx::query(concat!(
                    "UPDATE saga_orders SET state = ",
                    $p1,
                    " WHERE id = ",
                    $p2
                ))
                .bind(state)
                .bind(order_id)
                .execute(&mut **tx)
                .await?;
                if updated.rows_affected() != 1 {
                    return Err(SagaError::UnknownOrder(order_id));
                }
                sqlx::query(concat!(
                    "INSERT INTO saga_order_history (order_id, event) VALUES (",
                    $p1,
                    ", ",
                    $p2,
                    ")"
                ))
                .bind(order_id)
                .bind(event)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// The compensation: a declined payment cancels the order.
            #[txmsg::message_handler(topic = "payments.declined", group = "order")]
            pub(crate) async fn cancel_order(
                tx: &mut Tx<'_, $db>,
                declined: PaymentDeclined,
            ) -> Result<(), SagaError> {
                let event = format!("cancelled: {}", declined.reason);
                settle_order(tx, declined.order_id, "cancelled", event).await
            }

            /// The end of the saga: a shipped order is completed.
            #[txmsg::message_handler(topic = "shipments.created", group = "order")]
            pub(crate) async fn complete_order(
                tx: &mut Tx<'_, $db>,
                shipment: ShipmentCreated,
            ) -> Result<(), SagaError> {
                let event = format!("completed: shipped by {}", shipment.carrier);
                settle_order(tx, shipment.order_id, "completed", event).await
            }

            /// Every order, by id.
            pub(crate) async fn orders(
                pool: &sqlx::Pool<$db>,
            ) -> Result<Vec<OrderRow>, sqlx::Error> {
                let rows: Vec<(i64, String, i64, String)> = sqlx::query_as(
                    "SELECT id, customer, total_cents, state FROM saga_orders ORDER BY id",
                )
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, customer, total_cents, state)| OrderRow {
                        id,
                        customer,
                        total_cents,
                        state,
                    })
                    .collect())
            }

            /// The order id of every history row.
            pub(crate) async fn history(pool: &sqlx::Pool<$db>) -> Result<Vec<i64>, sqlx::Error> {
                sqlx::query_scalar("SELECT order_id FROM saga_order_history")
                    .fetch_all(pool)
                    .await
            }

            // ---- payment service ----

            /// Takes the payment for a placed order: charges it, or declines
            /// it, and says which with a message written in the handler's
            /// own transaction (with the payment row and the inbox key).
            #[txmsg::message_handler(topic = "orders.placed", group = "payment")]
            pub(crate) async fn take_payment(
                tx: &mut Tx<'_, $db>,
                order: OrderPlaced,
            ) -> Result<(), SagaError> {
                match payment_decision(&order.customer, order.total_cents) {
                    Ok(()) => {
                        charge(tx, order).await?;
                    }
                    Err(reason) => {
                        decline(tx, order, reason).await?;
                    }
                }
                Ok(())
            }

            /// Records a charge and emits `payments.charged`.
            #[txmsg::transactional_message(
                topic = "payments.charged", key = order.order_id, idempotency_key = idem("charge", order.order_id)
            )]
            async fn charge(
                tx: &mut Tx<'_, $db>,
                order: OrderPlaced,
            ) -> Result<PaymentCharged, SagaError> {
                sqlx::query(concat!(
                    "INSERT INTO saga_payments (order_id, amount_cents, state) VALUES (",
                    $p1,
                    ", ",
                    $p2,
                    ", 'charged')"
                ))
                .bind(order.order_id)
                .bind(order.total_cents)
                .execute(&mut **tx)
                .await?;
                Ok(PaymentCharged {
                    order_id: order.order_id,
                    customer: order.customer,
                    amount_cents: order.total_cents,
                })
            }

            /// Records a declined payment and emits the compensating
            /// `payments.declined`.
            #[txmsg::transactional_message(
                topic = "payments.declined", key = order.order_id, idempotency_key = idem("decline", order.order_id)
            )]
            async fn decline(
                tx: &mut Tx<'_, $db>,
                order: OrderPlaced,
                reason: String,
            ) -> Result<PaymentDeclined, SagaError> {
                sqlx::query(concat!(
                    "INSERT INTO saga_payments (order_id, amount_cents, state, reason) VALUES (",
                    $p1,
                    ", ",
                    $p2,
                    ", 'declined', ",
                    $p3,
                    ")"
                ))
                .bind(order.order_id)
                .bind(order.total_cents)
                .bind(&reason)
                .execute(&mut **tx)
                .await?;
                Ok(PaymentDeclined {
                    order_id: order.order_id,
                    reason,
                })
            }

            /// Every payment row.
            pub(crate) async fn payments(
                pool: &sqlx::Pool<$db>,
            ) -> Result<Vec<PaymentRow>, sqlx::Error> {
                let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as(
                    "SELECT order_id, state, reason FROM saga_payments ORDER BY order_id",
                )
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(order_id, state, reason)| PaymentRow {
                        order_id,
                        state,
                        reason,
                    })
                    .collect())
            }

            // ---- shipping service ----

            /// Ships a charged order and emits `shipments.created`, in the
            /// handler's transaction.
            #[txmsg::message_handler(topic = "payments.charged", group = "shipping")]
            pub(crate) async fn ship_order(
                tx: &mut Tx<'_, $db>,
                charged: PaymentCharged,
            ) -> Result<(), SagaError> {
                create_shipment(tx, charged).await?;
                Ok(())
            }

            /// Records the shipment and emits `shipments.created`.
            #[txmsg::transactional_message(
                topic = "shipments.created", key = charged.order_id, idempotency_key = idem("shipment", charged.order_id)
            )]
            async fn create_shipment(
                tx: &mut Tx<'_, $db>,
                charged: PaymentCharged,
            ) -> Result<ShipmentCreated, SagaError> {
                let carrier = carrier_for(charged.order_id);
                sqlx::query(concat!(
                    "INSERT INTO saga_shipments (order_id, customer, carrier) VALUES (",
                    $p1,
                    ", ",
                    $p2,
                    ", ",
                    $p3,
                    ")"
                ))
                .bind(charged.order_id)
                .bind(&charged.customer)
                .bind(carrier)
                .execute(&mut **tx)
                .await?;
                Ok(ShipmentCreated {
                    order_id: charged.order_id,
                    carrier: carrier.to_owned(),
                })
            }

            /// The order id of every shipment row.
            pub(crate) async fn shipments(pool: &sqlx::Pool<$db>) -> Result<Vec<i64>, sqlx::Error> {
                sqlx::query_scalar("SELECT order_id FROM saga_shipments")
                    .fetch_all(pool)
                    .await
            }

            // ---- every service ----

            /// Idempotency keys in the inbox of `group`: messages the group
            /// applied.
            pub(crate) async fn inbox_keys(
                pool: &sqlx::Pool<$db>,
                group: &str,
            ) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar(concat!(
                    "SELECT count(*) FROM txmsg_inbox WHERE consumer_group = ",
                    $p1
                ))
                .bind(group)
                .fetch_one(pool)
                .await
            }
        }
    };
}

saga_services!(on_sqlite, sqlx::Sqlite, "?", "?", "?");
saga_services!(on_postgres, sqlx::Postgres, "$1", "$2", "$3");
