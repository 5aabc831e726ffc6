//! Picks the store and the broker from the environment.
//!
//! Every name the demo owns on a shared server (PostgreSQL schema, MySQL
//! database, RabbitMQ exchange and queues, NATS stream, Redis stream, MQTT
//! topics) carries a suffix of its own run, so that runs side by side do
//! not see each other's rows or messages, and is removed when the run ends.

use std::str::FromStr;
use std::time::Duration;

use txmsg::Tables;
use txmsg::memory::MemoryBroker;
use txmsg::mqtt::{MqttBroker, MqttConfig};
use txmsg::mysql::MySqlStore;
use txmsg::nats::{NatsBroker, NatsConfig};
use txmsg::postgres::PgStore;
use txmsg::prelude::*;
use txmsg::rabbitmq::{RabbitBroker, RabbitConfig};
use txmsg::redis::{RedisBroker, RedisConfig};
use txmsg::sqlite::SqliteStore;

use crate::service::{NewOrder, OrderError, OrderPlaced, on_mysql, on_postgres, on_sqlite};
use crate::{AUDIT_GROUP, BILLING_GROUP, Summary, TOPIC, run_demo};

type BoxError = Box<dyn std::error::Error>;

/// The variable that chooses the store.
const STORE_VAR: &str = "DATABASE_URL";
/// The variable that chooses the broker.
const BROKER_VAR: &str = "BROKER_URL";
/// The broker variable of earlier versions, read when `BROKER_URL` is unset.
const LEGACY_AMQP_VAR: &str = "AMQP_URL";

/// The schemes `DATABASE_URL` may have.
const STORE_SCHEMES: &str = "sqlite:, postgres://, postgresql://, mysql:// or mariadb://";
/// The schemes `BROKER_URL` may have.
const BROKER_SCHEMES: &str = "amqp://, amqps://, nats://, redis:// or mqtt://";

/// How long the demo waits for a database connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the NATS stream drops a republish of a message it already
/// holds. The demo redelivers a message on purpose, so it keeps the window
/// short (1 s, the least NATS takes) and waits it out before redelivering.
const NATS_DUPLICATE_WINDOW: Duration = Duration::from_secs(1);

/// How long the MQTT server keeps a subscription's session once it is
/// gone: long enough for the demo, short enough not to linger after it.
const MQTT_SESSION_EXPIRY: Duration = Duration::from_secs(60);

/// The store chosen by `DATABASE_URL`.
pub(crate) enum StoreChoice {
    /// A SQLite file: the demo's own temporary one (removed at the end), or
    /// the one `DATABASE_URL` names.
    Sqlite {
        store: SqliteStore,
        temp_file: Option<String>,
    },
    /// PostgreSQL, in a schema of this run (first on the pool's search
    /// path, so the business tables live there too).
    Postgres { store: PgStore, schema: String },
    /// MySQL or MariaDB, in a database of this run.
    MySql { store: MySqlStore, database: String },
}

/// The broker chosen by `BROKER_URL` (or `AMQP_URL`).
pub(crate) enum BrokerChoice {
    Memory(MemoryBroker),
    /// RabbitMQ, with an exchange of this run (the group queues are named
    /// after it). The URL is kept to delete the exchange at the end.
    Rabbit {
        broker: RabbitBroker,
        url: String,
    },
    /// NATS JetStream, with a stream and subject prefix of this run (boxed:
    /// its handle is large).
    Nats(Box<NatsBroker>),
    /// Redis Streams, with a key prefix of this run. The URL is kept to
    /// delete the stream at the end.
    Redis {
        broker: RedisBroker,
        url: String,
    },
    /// MQTT, with a topic prefix of this run.
    Mqtt(MqttBroker),
}

pub(crate) struct Backend {
    store: StoreChoice,
    broker: BrokerChoice,
}

/// A variable's value; `None` if it is unset or empty.
fn var(name: &str) -> Result<Option<String>, BoxError> {
    match std::env::var(name) {
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8").into()),
    }
}

/// The scheme of `url`: what comes before its first `:` (empty if there is
/// none).
fn scheme(url: &str) -> &str {
    url.split_once(':').map_or("", |(scheme, _)| scheme)
}

/// The error for a URL whose scheme is not one of `expected`. It shows the
/// scheme only, never the URL, which may hold a password.
fn unknown_scheme(var: &str, scheme: &str, expected: &str) -> BoxError {
    if scheme.is_empty() {
        format!("{var} has no scheme; expected {expected}").into()
    } else {
        format!("{var} has the scheme `{scheme}`; expected {expected}").into()
    }
}

/// Adds which variable and which server an error is about.
fn reaching<E: std::fmt::Display>(
    var: &'static str,
    server: &'static str,
) -> impl FnOnce(E) -> BoxError {
    move |e| format!("cannot use {server} at {var}: {e}").into()
}

impl Backend {
    pub(crate) async fn from_env() -> Result<Self, BoxError> {
        // One suffix for every name of this run.
        let run = uuid::Uuid::now_v7().simple().to_string();
        let store = StoreChoice::from_env(&run).await?;
        let broker = match BrokerChoice::from_env(&run).await {
            Ok(broker) => broker,
            Err(e) => {
                store.teardown().await;
                return Err(e);
            }
        };
        Ok(Backend { store, broker })
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} + {}", self.store.describe(), self.broker.describe())
    }

    /// Runs the demo, then removes what the run created, whether the demo
    /// succeeded or not.
    pub(crate) async fn run(self) -> Result<Summary, BoxError> {
        let Backend { store, broker } = self;
        let summary = store.run(&broker).await;
        broker.teardown().await;
        store.teardown().await;
        summary
    }
}

impl StoreChoice {
    async fn from_env(run: &str) -> Result<Self, BoxError> {
        let Some(url) = var(STORE_VAR)? else {
            let path = std::env::temp_dir().join(format!("txmsg-demo-{run}.db"));
            let url = format!("sqlite://{}", path.display());
            return Ok(StoreChoice::Sqlite {
                store: SqliteStore::connect(&url)
                    .await
                    .map_err(reaching("a temporary file", "SQLite"))?,
                temp_file: Some(path.display().to_string()),
            });
        };
        match scheme(&url) {
            "sqlite" => Ok(StoreChoice::Sqlite {
                store: SqliteStore::connect(&url)
                    .await
                    .map_err(reaching(STORE_VAR, "SQLite"))?,
                temp_file: None,
            }),
            "postgres" | "postgresql" => {
                let schema = format!("txmsg_demo_{run}");
                let options = sqlx::postgres::PgConnectOptions::from_str(&url)
                    .map_err(reaching(STORE_VAR, "PostgreSQL"))?
                    .options([("search_path", schema.as_str())]);
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(10)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(reaching(STORE_VAR, "PostgreSQL"))?;
                // The name is `txmsg_demo_` and hex digits: safe to splice.
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&pool)
                    .await?;
                let tables = Tables::default().with_schema(&schema)?;
                Ok(StoreChoice::Postgres {
                    store: PgStore::new(pool, tables)?,
                    schema,
                })
            }
            "mysql" | "mariadb" => {
                let database = format!("txmsg_demo_{run}");
                let options = sqlx::mysql::MySqlConnectOptions::from_str(&url)
                    .map_err(reaching(STORE_VAR, "MySQL/MariaDB"))?;
                let admin = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(options.clone())
                    .await
                    .map_err(reaching(STORE_VAR, "MySQL/MariaDB"))?;
                // The name is `txmsg_demo_` and hex digits: safe to splice.
                let created =
                    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{database}`")))
                        .execute(&admin)
                        .await;
                admin.close().await;
                created?;
                let pool = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(10)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(options.database(&database))
                    .await
                    .map_err(reaching(STORE_VAR, "MySQL/MariaDB"))?;
                Ok(StoreChoice::MySql {
                    store: MySqlStore::new(pool, Tables::default())?,
                    database,
                })
            }
            other => Err(unknown_scheme(
                STORE_VAR,
                other,
                &format!("{STORE_SCHEMES} (or leave it unset for a temporary SQLite file)"),
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            StoreChoice::Sqlite {
                temp_file: Some(path),
                ..
            } => format!("SQLite (temporary file {path})"),
            StoreChoice::Sqlite {
                temp_file: None, ..
            } => format!("SQLite ({STORE_VAR})"),
            StoreChoice::Postgres { schema, .. } => format!("PostgreSQL (schema {schema})"),
            StoreChoice::MySql { database, .. } => format!("MySQL/MariaDB (database {database})"),
        }
    }

    /// Creates the tables, runs the demo on `broker` and counts the rows.
    async fn run(&self, broker: &BrokerChoice) -> Result<Summary, BoxError> {
        match self {
            StoreChoice::Sqlite { store, .. } => {
                store.migrate().await?;
                on_sqlite::create_schema(store.pool()).await?;
                let place = |outbox, order| async move {
                    on_sqlite::place_order_and_commit(&outbox, order).await
                };
                let mut summary = broker.run(store.clone(), place).await?;
                summary.rows = on_sqlite::count_orders(store.pool()).await?;
                summary.invoices = on_sqlite::count_invoices(store.pool()).await?;
                Ok(summary)
            }
            StoreChoice::Postgres { store, .. } => {
                store.migrate().await?;
                on_postgres::create_schema(store.pool()).await?;
                let place = |outbox, order| async move {
                    on_postgres::place_order_and_commit(&outbox, order).await
                };
                let mut summary = broker.run(store.clone(), place).await?;
                summary.rows = on_postgres::count_orders(store.pool()).await?;
                summary.invoices = on_postgres::count_invoices(store.pool()).await?;
                Ok(summary)
            }
            StoreChoice::MySql { store, .. } => {
                store.migrate().await?;
                on_mysql::create_schema(store.pool()).await?;
                let place = |outbox, order| async move {
                    on_mysql::place_order_and_commit(&outbox, order).await
                };
                let mut summary = broker.run(store.clone(), place).await?;
                summary.rows = on_mysql::count_orders(store.pool()).await?;
                summary.invoices = on_mysql::count_invoices(store.pool()).await?;
                Ok(summary)
            }
        }
    }

    /// Removes the temporary file, schema or database of this run. A
    /// failure is reported, not returned: the demo's outcome stands.
    async fn teardown(&self) {
        match self {
            StoreChoice::Sqlite { store, temp_file } => {
                store.pool().close().await;
                if let Some(path) = temp_file {
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{path}{suffix}"));
                    }
                }
            }
            StoreChoice::Postgres { store, schema } => {
                let dropped =
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                        .execute(store.pool())
                        .await;
                if let Err(e) = dropped {
                    eprintln!("could not drop schema {schema}: {e}");
                }
                store.pool().close().await;
            }
            StoreChoice::MySql { store, database } => {
                let dropped =
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{database}`")))
                        .execute(store.pool())
                        .await;
                if let Err(e) = dropped {
                    eprintln!("could not drop database {database}: {e}");
                }
                store.pool().close().await;
            }
        }
    }
}

impl BrokerChoice {
    async fn from_env(run: &str) -> Result<Self, BoxError> {
        let (var_name, url) = match var(BROKER_VAR)? {
            Some(url) => (BROKER_VAR, url),
            None => match var(LEGACY_AMQP_VAR)? {
                Some(url) => (LEGACY_AMQP_VAR, url),
                None => return Ok(BrokerChoice::Memory(MemoryBroker::new())),
            },
        };
        match scheme(&url) {
            "amqp" | "amqps" => {
                let config = RabbitConfig::default().with_exchange(&format!("txmsg.demo.{run}"))?;
                let broker = RabbitBroker::connect(&url, config)
                    .await
                    .map_err(reaching(var_name, "RabbitMQ"))?;
                Ok(BrokerChoice::Rabbit { broker, url })
            }
            "nats" if var_name == BROKER_VAR => {
                let config = NatsConfig::default()
                    .with_stream(format!("txmsg_demo_{run}"))?
                    .with_subject_prefix(format!("txmsg_demo.{run}"))?
                    .with_duplicate_window(NATS_DUPLICATE_WINDOW)?;
                let broker = NatsBroker::connect(&url, config)
                    .await
                    .map_err(reaching(var_name, "NATS JetStream"))?;
                Ok(BrokerChoice::Nats(Box::new(broker)))
            }
            "redis" if var_name == BROKER_VAR => {
                let config =
                    RedisConfig::default().with_key_prefix(&format!("txmsg-demo:{run}:"))?;
                let broker = RedisBroker::connect(&url, config)
                    .await
                    .map_err(reaching(var_name, "Redis"))?;
                Ok(BrokerChoice::Redis { broker, url })
            }
            "mqtt" if var_name == BROKER_VAR => {
                let config = MqttConfig::default()
                    .with_topic_prefix(&format!("txmsg-demo/{run}/"))?
                    .with_session_expiry(MQTT_SESSION_EXPIRY)?;
                let broker = MqttBroker::connect(&url, config)
                    .await
                    .map_err(reaching(var_name, "MQTT"))?;
                Ok(BrokerChoice::Mqtt(broker))
            }
            other if var_name == BROKER_VAR => Err(unknown_scheme(
                BROKER_VAR,
                other,
                &format!("{BROKER_SCHEMES} (or leave it unset for the in-process broker)"),
            )),
            other => Err(unknown_scheme(
                LEGACY_AMQP_VAR,
                other,
                &format!("amqp:// or amqps:// (other brokers are chosen with {BROKER_VAR})"),
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            BrokerChoice::Memory(_) => "the in-process broker".to_owned(),
            BrokerChoice::Rabbit { broker, .. } => {
                format!("RabbitMQ (exchange {})", broker.exchange())
            }
            BrokerChoice::Nats(broker) => {
                format!("NATS JetStream (stream {})", broker.config().stream())
            }
            BrokerChoice::Redis { broker, .. } => {
                format!("Redis Streams (stream {})", broker.stream_key(TOPIC))
            }
            BrokerChoice::Mqtt(broker) => format!("MQTT (topic {})", broker.mqtt_topic(TOPIC)),
        }
    }

    /// Runs the demo on `store` and this broker.
    async fn run<S, F, Fut>(&self, store: S, place: F) -> Result<Summary, BoxError>
    where
        S: txmsg::consumer::InboxStore,
        F: FnMut(txmsg::Outbox<S::Database>, NewOrder) -> Fut,
        Fut: std::future::Future<Output = Result<OrderPlaced, OrderError>>,
    {
        match self {
            BrokerChoice::Memory(b) => run_demo(store, b.clone(), place, Duration::ZERO).await,
            BrokerChoice::Rabbit { broker, .. } => {
                run_demo(store, broker.clone(), place, Duration::ZERO).await
            }
            // Within the duplicate window the stream would drop the
            // redelivered copy (its `Nats-Msg-Id` is the idempotency key).
            BrokerChoice::Nats(b) => {
                let wait = NATS_DUPLICATE_WINDOW + Duration::from_millis(500);
                run_demo(store, NatsBroker::clone(b), place, wait).await
            }
            BrokerChoice::Redis { broker, .. } => {
                run_demo(store, broker.clone(), place, Duration::ZERO).await
            }
            BrokerChoice::Mqtt(b) => run_demo(store, b.clone(), place, Duration::ZERO).await,
        }
    }

    /// Removes the queues, exchange, stream or keys of this run. A failure
    /// is reported, not returned: the demo's outcome stands.
    async fn teardown(&self) {
        let removed: Result<(), BoxError> = match self {
            BrokerChoice::Memory(_) => Ok(()),
            BrokerChoice::Rabbit { broker, url } => remove_rabbit(broker, url).await,
            BrokerChoice::Nats(broker) => broker.delete_stream().await.map_err(Into::into),
            BrokerChoice::Redis { broker, url } => remove_redis(broker, url).await,
            // MQTT keeps nothing but the sessions, which expire by themselves
            // (MQTT_SESSION_EXPIRY); nothing is published under the run's
            // topic prefix again.
            BrokerChoice::Mqtt(_) => Ok(()),
        };
        if let Err(e) = removed {
            eprintln!("could not remove the broker's names of this run: {e}");
        }
    }
}

/// Deletes the run's group queues, then its exchange.
async fn remove_rabbit(broker: &RabbitBroker, url: &str) -> Result<(), BoxError> {
    for group in [AUDIT_GROUP, BILLING_GROUP] {
        broker.delete_group_queue(group, TOPIC).await?;
    }
    let exchange = broker.exchange().to_owned();
    broker.close().await?;
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .exchange_delete(
            exchange.as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// Deletes the run's stream (its consumer groups go with it).
async fn remove_redis(broker: &RedisBroker, url: &str) -> Result<(), BoxError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: i64 = redis::cmd("DEL")
        .arg(broker.stream_key(TOPIC))
        .query_async(&mut conn)
        .await?;
    Ok(())
}
