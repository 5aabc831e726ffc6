//! Picks the store and the broker from the environment.

use txmsg::Tables;
use txmsg::memory::MemoryBroker;
use txmsg::postgres::PgStore;
use txmsg::prelude::*;
use txmsg::rabbitmq::{RabbitBroker, RabbitConfig};
use txmsg::sqlite::SqliteStore;

use crate::service::{on_postgres, on_sqlite};
use crate::{AUDIT_GROUP, BILLING_GROUP, Summary, TOPIC, run_demo};

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
    Rabbit(RabbitBroker),
}

pub(crate) struct Backend {
    store: StoreChoice,
    broker: BrokerChoice,
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
                    "DATABASE_URL must be a postgres:// or sqlite: URL, got scheme {:?}",
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
        let broker = match std::env::var("AMQP_URL") {
            Ok(url) => {
                let broker =
                    RabbitBroker::connect(&url, RabbitConfig::default().exchange("txmsg.demo")?)
                        .await?;
                // The demo owns these queues: start without a previous run's
                // leftovers.
                for group in [AUDIT_GROUP, BILLING_GROUP] {
                    broker.delete_group_queue(group, TOPIC).await?;
                }
                BrokerChoice::Rabbit(broker)
            }
            Err(_) => BrokerChoice::Memory(MemoryBroker::new()),
        };
        Ok(Backend { store, broker })
    }

    pub(crate) fn describe(&self) -> String {
        let store = match &self.store {
            StoreChoice::Sqlite(_, Some(path)) => format!("SQLite (temporary file {path})"),
            StoreChoice::Sqlite(_, None) => "SQLite (DATABASE_URL)".to_owned(),
            StoreChoice::Postgres(_) => "PostgreSQL".to_owned(),
        };
        let broker = match &self.broker {
            BrokerChoice::Memory(_) => "the in-process broker",
            BrokerChoice::Rabbit(_) => "RabbitMQ (exchange txmsg.demo)",
        };
        format!("{store} + {broker}")
    }

    pub(crate) async fn run(self) -> Result<Summary, BoxError> {
        let Backend { store, broker } = self;
        match store {
            StoreChoice::Sqlite(store, temp_file) => {
                store.migrate().await?;
                on_sqlite::create_schema(store.pool()).await?;
                let place = |outbox, order| async move {
                    on_sqlite::place_order_and_commit(&outbox, order).await
                };
                let mut summary = match broker {
                    BrokerChoice::Memory(b) => run_demo(store.clone(), b, place).await,
                    BrokerChoice::Rabbit(b) => run_demo(store.clone(), b, place).await,
                }?;
                summary.rows = on_sqlite::count_orders(store.pool()).await?;
                summary.invoices = on_sqlite::count_invoices(store.pool()).await?;
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
                    BrokerChoice::Memory(b) => run_demo(store.clone(), b, place).await,
                    BrokerChoice::Rabbit(b) => run_demo(store.clone(), b, place).await,
                }?;
                summary.rows = on_postgres::count_orders(store.pool()).await?;
                summary.invoices = on_postgres::count_invoices(store.pool()).await?;
                Ok(summary)
            }
        }
    }
}
