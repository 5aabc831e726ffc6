//! An order service on axum, PostgreSQL and RabbitMQ, wired as a service
//! runs txmsg in production:
//!
//! - one pool, shared by the request handlers, the store and the consumer;
//! - `POST /orders` calls a `#[transactional_message]` producer's
//!   `_and_commit` inside the request handler;
//! - `POST /orders/{id}/cancel` runs its own SQL in a transaction it began,
//!   and adds the message to it with [`Outbox::wrap`];
//! - a `#[message_handler]` in the same service bills placed orders, with
//!   the service's settings as `State<Billing>`;
//! - `GET /ready` answers from the relay's and the consumer's health, so a
//!   panicked task makes the instance unready without any call to stop it;
//! - on SIGTERM (or Ctrl-C) the server stops taking requests, finishes
//!   those in flight, then stops the consumer and the relay, which publishes
//!   what it holds before it returns.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//! cargo run -p txmsg-example-axum
//! ```
//!
//! `LISTEN` sets the address (default `127.0.0.1:3000`), `APP_SCHEMA` a
//! PostgreSQL schema for the service's tables and txmsg's (default: the
//! search path's), `TXMSG_EXCHANGE` the RabbitMQ exchange (default `txmsg`).

use std::io::Write as _;
use std::net::SocketAddr;

use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};
use txmsg::consumer::{Consumer, ConsumerConfig, ConsumerHandle};
use txmsg::postgres::PgStore;
use txmsg::prelude::*;
use txmsg::rabbitmq::{RabbitBroker, RabbitConfig};
use txmsg::{Health, Message, Outbox, Relay, RelayConfig, RelayHandle, State, Tables, Tx};

/// The event of a placed order.
#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    id: i64,
    total_cents: i64,
}

/// The event of a cancelled order.
#[derive(Debug, Serialize, Deserialize)]
struct OrderCancelled {
    id: i64,
}

/// What goes wrong in a request, with the status it answers.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("order {0} exists already")]
    Exists(i64),
    #[error("order {0} does not exist")]
    Missing(i64),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Txmsg(#[from] txmsg::Error),
}

impl axum::response::IntoResponse for AppError {
    fn into_response(self) -> axum::response::Response {
        let status = match &self {
            AppError::Exists(_) => StatusCode::CONFLICT,
            // The idempotency key was used before (here: an order id placed
            // earlier, even if cancelled since).
            AppError::Txmsg(e) if e.is_duplicate() => StatusCode::CONFLICT,
            AppError::Missing(_) => StatusCode::NOT_FOUND,
            AppError::Database(_) | AppError::Txmsg(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, self.to_string()).into_response()
    }
}

/// The order row and its message, in one transaction.
#[txmsg::transactional_message(topic = "shop.orders.placed", key = id, idempotency_key = format!("order-{id}"))]
async fn place_order(
    tx: &mut Tx<'_, sqlx::Postgres>,
    id: i64,
    total_cents: i64,
) -> Result<OrderPlaced, AppError> {
    let inserted = sqlx::query(
        "INSERT INTO orders (id, total_cents) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(total_cents)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(AppError::Exists(id));
    }
    Ok(OrderPlaced { id, total_cents })
}

/// The service's settings its handler needs.
#[derive(Debug, Clone)]
struct Billing {
    currency: String,
}

/// Bills a placed order, once per order.
#[txmsg::message_handler(topic = "shop.orders.placed", group = "billing")]
async fn bill(
    tx: &mut Tx<'_, sqlx::Postgres>,
    order: OrderPlaced,
    billing: State<Billing>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO invoices (order_id, cents, currency) VALUES ($1, $2, $3)")
        .bind(order.id)
        .bind(order.total_cents)
        .bind(&billing.currency)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What the request handlers share.
#[derive(Debug, Clone)]
struct App {
    pool: PgPool,
    outbox: Outbox<sqlx::Postgres>,
    relay: RelayHandle,
    consumer: ConsumerHandle<PgStore>,
}

#[derive(Debug, Deserialize)]
struct NewOrder {
    id: i64,
    total_cents: i64,
}

async fn create_order(
    AxumState(app): AxumState<App>,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, Json<OrderPlaced>), AppError> {
    let placed = place_order_and_commit(&app.outbox, order.id, order.total_cents).await?;
    Ok((StatusCode::CREATED, Json(placed)))
}

/// The request's own transaction, begun on the shared pool, with the
/// message added to it.
async fn cancel_order(
    AxumState(app): AxumState<App>,
    Path(id): Path<i64>,
) -> Result<StatusCode, AppError> {
    let mut txn = app.pool.begin().await?;
    let deleted = sqlx::query("DELETE FROM orders WHERE id = $1")
        .bind(id)
        .execute(&mut *txn)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(AppError::Missing(id));
    }
    let mut tx = app.outbox.wrap(txn);
    let message = Message::new("shop.orders.cancelled", &OrderCancelled { id })?
        .key(id.to_string())
        .idempotency_key(format!("cancel-{id}"));
    tx.enqueue(message).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ready while the relay and the consumer run.
async fn ready(AxumState(app): AxumState<App>) -> (StatusCode, String) {
    match (app.relay.health(), app.consumer.health()) {
        (Health::Running, Health::Running) => (StatusCode::OK, "ready".into()),
        (relay, consumer) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("relay: {relay:?}, consumer: {consumer:?}"),
        ),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    eprintln!("cannot listen for SIGTERM ({e}); Ctrl-C only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let database_url = env_or(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let amqp_url = env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let listen: SocketAddr = env_or("LISTEN", "127.0.0.1:3000").parse()?;
    let schema = std::env::var("APP_SCHEMA").ok();

    // One pool for everything; with a schema, every connection searches it.
    let mut tables = Tables::default();
    let mut options = PgPoolOptions::new().max_connections(16);
    if let Some(schema) = &schema {
        tables = tables.with_schema(schema)?;
        let set = format!("SET search_path TO \"{schema}\"");
        options = options.after_connect(move |conn, _| {
            let set = set.clone();
            Box::pin(async move {
                sqlx::Executor::execute(conn, sqlx::AssertSqlSafe(set)).await?;
                Ok(())
            })
        });
    }
    let pool = options.connect(&database_url).await?;
    if let Some(schema) = &schema {
        // `tables.schema` has checked the name: it is a plain identifier.
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&pool)
            .await?;
    }
    // The service's own tables (a real service runs its migrations here).
    for ddl in [
        "CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY, total_cents BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS invoices (order_id BIGINT PRIMARY KEY, cents BIGINT NOT NULL, currency TEXT NOT NULL)",
    ] {
        sqlx::query(ddl).execute(&pool).await?;
    }
    let store = PgStore::new(pool.clone(), tables)?;
    store.migrate().await?;

    let exchange = env_or("TXMSG_EXCHANGE", "txmsg");
    let broker =
        RabbitBroker::connect(&amqp_url, RabbitConfig::default().with_exchange(&exchange)?).await?;
    let relay = Relay::new(store.clone(), broker.clone(), RelayConfig::default())?.start();
    let outbox = Outbox::new(&store).with_relay(&relay);
    let billing = Billing {
        currency: env_or("CURRENCY", "EUR"),
    };
    let consumer = Consumer::new(store.clone(), broker, ConsumerConfig::new("billing"))?
        .with_outbox(outbox.clone())
        .with_state(billing)
        .start()
        .await?;

    let app = App {
        pool,
        outbox,
        relay: relay.clone(),
        consumer: consumer.clone(),
    };
    let router = Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .route("/ready", get(ready))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;

    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Requests are done: nothing more is written. Stop consuming, then let
    // the relay publish what it holds.
    consumer.shutdown().await;
    relay.shutdown().await;
    let left = store.stats().await?.pending;
    println!("stopped; {left} messages pending");
    Ok(())
}
