//! Picks the databases and the broker from the environment.
//!
//! Every name the demo owns on a shared server (PostgreSQL schemas,
//! RabbitMQ exchange and queues) carries a suffix of its own run, so that
//! runs side by side do not see each other's rows or messages, and is
//! removed when the run ends.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use txmsg::consumer::InboxStore;
use txmsg::memory::MemoryBroker;
use txmsg::postgres::PgStore;
use txmsg::prelude::*;
use txmsg::rabbitmq::{RabbitBroker, RabbitConfig};
use txmsg::rocketmq::{RocketBroker, RocketConfig};
use txmsg::sqlite::SqliteStore;
use txmsg::{Outbox, Tables};

use crate::Ledger;
use crate::service::{NewOrder, OrderPlaced, SagaError, Service, on_postgres, on_sqlite};

/// Errors that cross from a service's runtime to the demo's.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The variable that chooses the databases.
pub(crate) const STORE_VAR: &str = "DATABASE_URL";
/// The variable that chooses the broker.
pub(crate) const BROKER_VAR: &str = "BROKER_URL";
/// The broker variable of earlier versions, read when `BROKER_URL` is unset
/// (RabbitMQ only).
pub(crate) const LEGACY_AMQP_VAR: &str = "AMQP_URL";

/// How long the demo waits for a database connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The three databases of the saga, one per service.
pub(crate) trait Databases: Clone + Send + Sync + 'static {
    /// The store each service runs on.
    type Store: InboxStore;

    /// What the databases are, for the first line of the output.
    fn describe(&self) -> String;

    /// Creates what the run needs on the server before any service
    /// connects (PostgreSQL: the schemas).
    fn prepare(&self) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Opens `service`'s database, on the current runtime.
    fn connect(
        &self,
        service: Service,
    ) -> impl Future<Output = Result<Self::Store, BoxError>> + Send;

    /// Creates `service`'s business tables.
    fn create_tables(
        service: Service,
        store: &Self::Store,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// The order service's `place_order`, in a transaction of its own.
    fn place(
        outbox: Outbox<<Self::Store as SqlStore>::Database>,
        order: NewOrder,
    ) -> impl Future<Output = Result<OrderPlaced, SagaError>> + Send;

    /// Reads what the three services hold: `stores` in [`Service::ALL`]
    /// order.
    fn ledger(stores: &[Self::Store; 3]) -> impl Future<Output = Result<Ledger, BoxError>> + Send;

    /// Removes what the run created. A failure is reported, not returned.
    fn teardown(&self) -> impl Future<Output = ()> + Send;
}

/// The broker the services share.
pub(crate) trait Brokers: Clone + Send + Sync + 'static {
    /// The broker each service runs on.
    type Broker: Broker;

    /// What the broker is, for the first line of the output.
    fn describe(&self) -> String;

    /// Connects `service` to the broker, on the current runtime.
    fn connect(
        &self,
        service: Service,
    ) -> impl Future<Output = Result<Self::Broker, BoxError>> + Send;

    /// Removes what the run created. A failure is reported, not returned.
    fn teardown(&self) -> impl Future<Output = ()> + Send;
}

/// A variable's value; `None` if it is unset or empty.
pub(crate) fn var(name: &str) -> Result<Option<String>, BoxError> {
    match std::env::var(name) {
        Ok(value) if value.is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8").into()),
    }
}

/// The scheme of `url`: what comes before its first `:` (empty if none).
pub(crate) fn scheme(url: &str) -> &str {
    url.split_once(':').map_or("", |(scheme, _)| scheme)
}

/// The error for a URL whose scheme is not one of `expected`. It shows the
/// scheme only, never the URL, which may hold a password.
pub(crate) fn unknown_scheme(var: &str, scheme: &str, expected: &str) -> BoxError {
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

// ---- SQLite: three files ----

/// Three SQLite files in the temporary directory, removed at the end.
#[derive(Debug, Clone)]
pub(crate) struct SqliteFiles {
    run: String,
}

impl SqliteFiles {
    pub(crate) fn new(run: &str) -> Self {
        SqliteFiles {
            run: run.to_owned(),
        }
    }

    fn path(&self, service: Service) -> PathBuf {
        std::env::temp_dir().join(format!("txmsg-saga-{}-{service}.db", self.run))
    }
}

impl Databases for SqliteFiles {
    type Store = SqliteStore;

    fn describe(&self) -> String {
        let dir = std::env::temp_dir();
        format!(
            "SQLite (3 files: {}/txmsg-saga-{}-{{order,payment,shipping}}.db)",
            dir.display(),
            self.run
        )
    }

    async fn prepare(&self) -> Result<(), BoxError> {
        Ok(())
    }

    async fn connect(&self, service: Service) -> Result<SqliteStore, BoxError> {
        let url = format!("sqlite://{}", self.path(service).display());
        SqliteStore::connect(&url)
            .await
            .map_err(|e| format!("cannot open the {service} service's SQLite file: {e}").into())
    }

    async fn create_tables(service: Service, store: &SqliteStore) -> Result<(), BoxError> {
        Ok(on_sqlite::create_tables(service, store.pool()).await?)
    }

    async fn place(
        outbox: Outbox<sqlx::Sqlite>,
        order: NewOrder,
    ) -> Result<OrderPlaced, SagaError> {
        on_sqlite::place_order_and_commit(&outbox, order).await
    }

    async fn ledger(stores: &[SqliteStore; 3]) -> Result<Ledger, BoxError> {
        let [order, payment, shipping] = stores;
        Ok(Ledger {
            orders: on_sqlite::orders(order.pool()).await?,
            history: on_sqlite::history(order.pool()).await?,
            payments: on_sqlite::payments(payment.pool()).await?,
            shipments: on_sqlite::shipments(shipping.pool()).await?,
            inbox: [
                on_sqlite::inbox_keys(order.pool(), Service::Order.group()).await?,
                on_sqlite::inbox_keys(payment.pool(), Service::Payment.group()).await?,
                on_sqlite::inbox_keys(shipping.pool(), Service::Shipping.group()).await?,
            ],
        })
    }

    async fn teardown(&self) {
        for service in Service::ALL {
            let path = self.path(service).into_os_string();
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.clone();
                file.push(suffix);
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

// ---- PostgreSQL: three schemas ----

/// Three schemas of one PostgreSQL database, dropped at the end.
#[derive(Clone)]
pub(crate) struct PgSchemas {
    url: String,
    run: String,
}

impl std::fmt::Debug for PgSchemas {
    // The URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSchemas")
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl PgSchemas {
    pub(crate) fn new(url: String, run: &str) -> Result<Self, BoxError> {
        // Checked here, so that a bad URL stops the demo before anything.
        sqlx::postgres::PgConnectOptions::from_str(&url)
            .map_err(reaching(STORE_VAR, "PostgreSQL"))?;
        Ok(PgSchemas {
            url,
            run: run.to_owned(),
        })
    }

    /// `txmsg_saga_<run>_<service>`: letters, digits and `_` only, so it
    /// is safe to splice into SQL.
    fn schema(&self, service: Service) -> String {
        format!("txmsg_saga_{}_{service}", self.run)
    }

    async fn pool(&self, schema: Option<&str>) -> Result<sqlx::PgPool, BoxError> {
        let mut options = sqlx::postgres::PgConnectOptions::from_str(&self.url)
            .map_err(reaching(STORE_VAR, "PostgreSQL"))?;
        if let Some(schema) = schema {
            options = options.options([("search_path", schema)]);
        }
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(reaching(STORE_VAR, "PostgreSQL"))
    }
}

impl Databases for PgSchemas {
    type Store = PgStore;

    fn describe(&self) -> String {
        format!(
            "PostgreSQL (3 schemas: txmsg_saga_{}_{{order,payment,shipping}})",
            self.run
        )
    }

    async fn prepare(&self) -> Result<(), BoxError> {
        let admin = self.pool(None).await?;
        let mut created = Ok(());
        for service in Service::ALL {
            let sql = format!("CREATE SCHEMA {}", self.schema(service));
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await {
                created = Err(e.into());
                break;
            }
        }
        admin.close().await;
        created
    }

    async fn connect(&self, service: Service) -> Result<PgStore, BoxError> {
        let schema = self.schema(service);
        let pool = self.pool(Some(&schema)).await?;
        let tables = Tables::default().with_schema(&schema)?;
        Ok(PgStore::new(pool, tables)?)
    }

    async fn create_tables(service: Service, store: &PgStore) -> Result<(), BoxError> {
        Ok(on_postgres::create_tables(service, store.pool()).await?)
    }

    async fn place(
        outbox: Outbox<sqlx::Postgres>,
        order: NewOrder,
    ) -> Result<OrderPlaced, SagaError> {
        on_postgres::place_order_and_commit(&outbox, order).await
    }

    async fn ledger(stores: &[PgStore; 3]) -> Result<Ledger, BoxError> {
        let [order, payment, shipping] = stores;
        Ok(Ledger {
            orders: on_postgres::orders(order.pool()).await?,
            history: on_postgres::history(order.pool()).await?,
            payments: on_postgres::payments(payment.pool()).await?,
            shipments: on_postgres::shipments(shipping.pool()).await?,
            inbox: [
                on_postgres::inbox_keys(order.pool(), Service::Order.group()).await?,
                on_postgres::inbox_keys(payment.pool(), Service::Payment.group()).await?,
                on_postgres::inbox_keys(shipping.pool(), Service::Shipping.group()).await?,
            ],
        })
    }

    async fn teardown(&self) {
        let admin = match self.pool(None).await {
            Ok(pool) => pool,
            Err(e) => {
                eprintln!("could not drop the schemas of this run: {e}");
                return;
            }
        };
        for service in Service::ALL {
            let schema = self.schema(service);
            let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await {
                eprintln!("could not drop schema {schema}: {e}");
            }
        }
        admin.close().await;
    }
}

// ---- brokers ----

/// The in-process broker, shared by the three services (as they share one
/// process here).
#[derive(Debug, Clone, Default)]
pub(crate) struct InProcess(MemoryBroker);

impl Brokers for InProcess {
    type Broker = MemoryBroker;

    fn describe(&self) -> String {
        "the in-process broker".to_owned()
    }

    async fn connect(&self, _service: Service) -> Result<MemoryBroker, BoxError> {
        Ok(self.0.clone())
    }

    async fn teardown(&self) {}
}

/// RabbitMQ, with an exchange of this run. Each service (and each restart
/// of it) has a connection of its own.
#[derive(Clone)]
pub(crate) struct Rabbit {
    url: String,
    exchange: String,
}

impl std::fmt::Debug for Rabbit {
    // The URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rabbit")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl Rabbit {
    /// RabbitMQ at `url` (from variable `var`).
    pub(crate) fn new(url: String, run: &str, var: &str) -> Result<Self, BoxError> {
        match scheme(&url) {
            "amqp" | "amqps" => Ok(Rabbit {
                url,
                exchange: format!("txmsg.saga.{run}"),
            }),
            other => Err(unknown_scheme(
                var,
                other,
                "amqp://, amqps:// or rocketmq:// (or leave it unset for the in-process broker)",
            )),
        }
    }

    fn config(&self, name: &str) -> Result<RabbitConfig, BoxError> {
        Ok(RabbitConfig::default()
            .with_exchange(&self.exchange)?
            .with_connection_name(name)?)
    }

    async fn remove(&self) -> Result<(), BoxError> {
        let broker = RabbitBroker::connect(&self.url, self.config("txmsg-saga-teardown")?)
            .await
            .map_err(reaching(BROKER_VAR, "RabbitMQ"))?;
        for service in Service::ALL {
            for topic in service.subscriptions() {
                broker.delete_group_queue(service.group(), topic).await?;
            }
        }
        broker.close().await?;
        let conn =
            lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel
            .exchange_delete(
                self.exchange.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await?;
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    }
}

impl Brokers for Rabbit {
    type Broker = RabbitBroker;

    fn describe(&self) -> String {
        format!("RabbitMQ (exchange {})", self.exchange)
    }

    async fn connect(&self, service: Service) -> Result<RabbitBroker, BoxError> {
        let config = self.config(&format!("txmsg-saga-{service}"))?;
        RabbitBroker::connect(&self.url, config)
            .await
            .map_err(reaching(BROKER_VAR, "RabbitMQ"))
    }

    async fn teardown(&self) {
        if let Err(e) = self.remove().await {
            eprintln!("could not remove the exchange and queues of this run: {e}");
        }
    }
}

/// RocketMQ, with a topic prefix of this run (its topics and consumer
/// groups carry it). Each service (and each restart of it) has a client of
/// its own.
#[derive(Debug, Clone)]
pub(crate) struct Rocket {
    url: String,
    prefix: String,
}

impl Rocket {
    pub(crate) fn new(url: String, run: &str) -> Self {
        Rocket {
            url,
            prefix: format!("saga_{}_", &run[run.len().saturating_sub(16)..]),
        }
    }
}

impl Brokers for Rocket {
    type Broker = RocketBroker;

    fn describe(&self) -> String {
        format!("RocketMQ (topic prefix {})", self.prefix)
    }

    async fn connect(&self, _service: Service) -> Result<RocketBroker, BoxError> {
        let config = RocketConfig::default().with_topic_prefix(&self.prefix)?;
        RocketBroker::connect(&self.url, config)
            .await
            .map_err(reaching(BROKER_VAR, "RocketMQ"))
    }

    // RocketMQ's topics and groups are deleted with its admin tools only;
    // the run's prefix keeps them apart from every other run's.
    async fn teardown(&self) {}
}
