//! Picks the store and the broker from the environment.

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use txmsg::Tables;
use txmsg::memory::{MemoryBroker, MemorySubscription};
use txmsg::postgres::PgStore;
use txmsg::prelude::*;
use txmsg::rabbitmq::{RabbitBroker, RabbitConfig};
use txmsg::sqlite::SqliteStore;

use crate::service::{OrderPlaced, on_postgres, on_sqlite};
use crate::{Summary, run_demo};

type BoxError = Box<dyn std::error::Error>;

/// The store chosen by `DATABASE_URL` (PostgreSQL) or its absence (SQLite).
pub(crate) enum StoreChoice {
    /// The store and, for the demo's own temporary file, its path.
    Sqlite(SqliteStore, Option<String>),
    Postgres(PgStore),
}

/// The broker chosen by `AMQP_URL` (RabbitMQ) or its absence (in-process).
pub(crate) enum BrokerChoice {
    Memory(MemoryBroker),
    Rabbit(RabbitBroker, String),
}

/// Where the demo consumes what the relay published.
pub(crate) enum Receiver {
    Memory(MemorySubscription),
    /// The connection is kept so the consumer stays open.
    Rabbit(
        #[allow(dead_code)] Box<lapin::Connection>,
        Box<lapin::Consumer>,
    ),
}

impl Receiver {
    /// The order id of the next message, or `None` when the source closed.
    pub(crate) async fn next(&mut self) -> Option<i64> {
        let body = match self {
            Receiver::Memory(sub) => sub.recv().await?.payload,
            Receiver::Rabbit(_, consumer) => {
                let delivery = consumer.next().await?.ok()?;
                delivery.ack(BasicAckOptions::default()).await.ok()?;
                delivery.data.clone()
            }
        };
        serde_json::from_slice::<OrderPlaced>(&body)
            .ok()
            .map(|o| o.id)
    }
}

pub(crate) struct Backend {
    store: StoreChoice,
    broker: BrokerChoice,
    receiver: Receiver,
}

impl Backend {
    pub(crate) async fn from_env() -> Result<Self, BoxError> {
        let store = match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres") => {
                // The demo owns the `txmsg_demo` schema and starts it afresh,
                // so that its idempotency keys are new on every run.
                let pool = sqlx::PgPool::connect(&url).await?;
                sqlx::query("DROP SCHEMA IF EXISTS txmsg_demo CASCADE")
                    .execute(&pool)
                    .await?;
                StoreChoice::Postgres(PgStore::new(pool, Tables::default().schema("txmsg_demo")?))
            }
            Ok(url) if url.starts_with("sqlite") => {
                StoreChoice::Sqlite(SqliteStore::connect(&url).await?, None)
            }
            Ok(url) => {
                return Err(format!(
                    "DATABASE_URL must be a postgres:// or sqlite: URL, got scheme of {:?}",
                    url.split(':').next()
                )
                .into());
            }
            Err(_) => {
                let path =
                    std::env::temp_dir().join(format!("txmsg-demo-{}.db", uuid::Uuid::now_v7()));
                let url = format!("sqlite://{}", path.display());
                StoreChoice::Sqlite(
                    SqliteStore::connect(&url).await?,
                    Some(path.display().to_string()),
                )
            }
        };
        let (broker, receiver) = match std::env::var("AMQP_URL") {
            Ok(url) => {
                let exchange = "txmsg.demo";
                let broker =
                    RabbitBroker::connect(&url, RabbitConfig::default().exchange(exchange)?)
                        .await?;
                let queue = format!("txmsg.demo.orders.{}", uuid::Uuid::now_v7().simple());
                broker.bind_queue(&queue, "orders.placed").await?;
                let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                    .await?;
                let channel = conn.create_channel().await?;
                let consumer = channel
                    .basic_consume(
                        queue.as_str().into(),
                        "demo".into(),
                        BasicConsumeOptions {
                            exclusive: true,
                            ..Default::default()
                        },
                        Default::default(),
                    )
                    .await?;
                (
                    BrokerChoice::Rabbit(broker, exchange.to_owned()),
                    Receiver::Rabbit(Box::new(conn), Box::new(consumer)),
                )
            }
            Err(_) => {
                let broker = MemoryBroker::new();
                let sub = broker.observe("orders.placed");
                (BrokerChoice::Memory(broker), Receiver::Memory(sub))
            }
        };
        Ok(Backend {
            store,
            broker,
            receiver,
        })
    }

    pub(crate) fn describe(&self) -> String {
        let store = match &self.store {
            StoreChoice::Sqlite(_, Some(path)) => format!("SQLite (temporary file {path})"),
            StoreChoice::Sqlite(_, None) => "SQLite (DATABASE_URL)".to_owned(),
            StoreChoice::Postgres(_) => "PostgreSQL".to_owned(),
        };
        let broker = match &self.broker {
            BrokerChoice::Memory(_) => "the in-process broker".to_owned(),
            BrokerChoice::Rabbit(_, exchange) => format!("RabbitMQ (exchange {exchange})"),
        };
        format!("{store} + {broker}")
    }

    pub(crate) async fn run(self) -> Result<Summary, BoxError> {
        let Backend {
            store,
            broker,
            receiver,
        } = self;
        match store {
            StoreChoice::Sqlite(store, temp_file) => {
                store.migrate().await?;
                on_sqlite::create_schema(store.pool()).await?;
                let place = |outbox, order| async move {
                    on_sqlite::place_order_and_commit(&outbox, order).await
                };
                let mut summary = match broker {
                    BrokerChoice::Memory(b) => run_demo(store.clone(), b, receiver, place).await,
                    BrokerChoice::Rabbit(b, _) => run_demo(store.clone(), b, receiver, place).await,
                }?;
                summary.rows = on_sqlite::count_orders(store.pool()).await?;
                store.pool().close().await;
                if let Some(path) = temp_file {
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{path}{suffix}"));
                    }
                }
                Ok(summary)
            }
            StoreChoice::Postgres(store) => {
                store.migrate().await?;
                on_postgres::create_schema(store.pool()).await?;
                let place = |outbox, order| async move {
                    on_postgres::place_order_and_commit(&outbox, order).await
                };
                let mut summary = match broker {
                    BrokerChoice::Memory(b) => run_demo(store.clone(), b, receiver, place).await,
                    BrokerChoice::Rabbit(b, _) => run_demo(store.clone(), b, receiver, place).await,
                }?;
                summary.rows = on_postgres::count_orders(store.pool()).await?;
                Ok(summary)
            }
        }
    }
}
