//! Shared support for the integration tests: an isolated PostgreSQL schema per
//! test, RabbitMQ exchanges and queues with unique names, a counter of what
//! reached a queue, and a TCP proxy that can cut a connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use txmsg::postgres::PgStore;
use txmsg::rabbitmq::{RabbitBroker, RabbitConfig};
use txmsg::rocketmq::{RocketBroker, RocketConfig};
use txmsg::{Store, Tables};

/// The error of the tests' handlers: a message, and any sqlx error as its
/// text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError(e.to_string())
    }
}

/// `DATABASE_URL`, or the machine's PostgreSQL.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `AMQP_URL`, or the machine's RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A broker on the RocketMQ of `ROCKETMQ_URL` (default
/// `rocketmq://127.0.0.1:9876`) whose topics and groups start with `prefix`
/// (a fresh one when `None`), so that tests never see each other's
/// messages.
///
/// # Panics
///
/// If RocketMQ cannot be reached.
pub async fn rocketmq_broker(prefix: Option<&str>) -> RocketBroker {
    let prefix = prefix.map_or_else(|| format!("t{}_", &unique()[16..]), str::to_owned);
    let config = RocketConfig::default()
        .with_topic_prefix(&prefix)
        .expect("a valid topic prefix");
    let url =
        std::env::var("ROCKETMQ_URL").unwrap_or_else(|_| "rocketmq://127.0.0.1:9876".to_owned());
    RocketBroker::connect(&url, config)
        .await
        .unwrap_or_else(|e| panic!("cannot reach RocketMQ at ROCKETMQ_URL={url}: {e:?}"))
}

/// A unique lowercase suffix for names.
pub fn unique() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A PostgreSQL schema of its own: the store's tables and the test's business
/// tables live there (it is first on the pool's search path). Dropped by
/// [`PgSchema::drop_schema`].
#[derive(Debug, Clone)]
pub struct PgSchema {
    /// The schema's name.
    pub name: String,
    /// A pool whose search path starts with the schema.
    pub pool: sqlx::PgPool,
    /// A migrated store in the schema.
    pub store: PgStore,
}

impl PgSchema {
    /// Creates the schema, a pool and a migrated store in it.
    ///
    /// # Panics
    ///
    /// If PostgreSQL cannot be reached: the message names `DATABASE_URL`.
    pub async fn new() -> Self {
        let name = format!("txmsg_t_{}", unique());
        let url = database_url();
        let search_path = format!("SET search_path TO {name}, public");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .after_connect(move |conn, _| {
                let sql = search_path.clone();
                Box::pin(async move {
                    sqlx::Executor::execute(conn, sqlx::AssertSqlSafe(sql)).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at DATABASE_URL={url}: {e}"));
        let store = PgStore::new(
            pool.clone(),
            Tables::default().with_schema(&name).expect("schema name"),
        )
        .expect("store");
        store.migrate().await.expect("migrate");
        PgSchema { name, pool, store }
    }

    /// Runs a statement (test setup only).
    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
            .expect(sql);
    }

    /// Counts rows of a business table.
    pub async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Counts outbox rows in `state`.
    pub async fn outbox_rows(&self, state: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM txmsg_outbox WHERE state = $1")
            .bind(state)
            .fetch_one(&self.pool)
            .await
            .expect("count outbox")
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .expect("drop schema");
        self.pool.close().await;
    }
}

/// A RabbitMQ exchange of its own with one queue bound to every topic.
#[derive(Debug)]
pub struct Rabbit {
    /// The exchange's name.
    pub exchange: String,
    /// The queue bound with `#`.
    pub queue: String,
    /// A broker publishing to the exchange.
    pub broker: RabbitBroker,
    conn: lapin::Connection,
}

impl Rabbit {
    /// Declares the exchange (through the broker) and a queue bound to all of it.
    ///
    /// # Panics
    ///
    /// If RabbitMQ cannot be reached: the message names `AMQP_URL`.
    pub async fn new() -> Self {
        Self::with_config(RabbitConfig::default(), &amqp_url()).await
    }

    /// As [`Rabbit::new`], with a config (its exchange is replaced) and URL.
    pub async fn with_config(config: RabbitConfig, url: &str) -> Self {
        let id = unique();
        let exchange = format!("txmsg.test.{id}");
        let queue = format!("txmsg.test.{id}.all");
        let config = config.with_exchange(&exchange).expect("exchange name");
        let broker = RabbitBroker::connect(url, config)
            .await
            .unwrap_or_else(|e| panic!("cannot reach RabbitMQ at AMQP_URL={url}: {e}"));
        broker.bind_queue(&queue, "#").await.expect("bind queue");
        let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("cannot reach RabbitMQ at AMQP_URL: {e}"));
        Rabbit {
            exchange,
            queue,
            broker,
            conn,
        }
    }

    /// Consumes the queue until `expected` messages arrived and `quiet` more
    /// passed without any (or `timeout` overall), acking each; returns them.
    pub async fn drain(
        &self,
        expected: usize,
        quiet: Duration,
        timeout: Duration,
    ) -> Vec<Received> {
        let channel = self.conn.create_channel().await.expect("channel");
        let mut consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                format!("drain-{}", unique()).as_str().into(),
                BasicConsumeOptions::default(),
                Default::default(),
            )
            .await
            .expect("consume");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let wait = if out.len() >= expected {
                quiet
            } else {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            };
            match tokio::time::timeout(wait, consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    delivery.ack(BasicAckOptions::default()).await.expect("ack");
                    out.push(Received::from_delivery(&delivery));
                }
                Ok(Some(Err(e))) => panic!("consumer failed: {e}"),
                Ok(None) | Err(_) => break,
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        let _ = channel.close(200, "done".into()).await;
        out
    }

    /// Messages ready in `queue` (not counting delivered, unacknowledged
    /// ones), or `None` if it does not exist.
    pub async fn queue_depth(&self, queue: &str) -> Option<u32> {
        let channel = self.conn.create_channel().await.ok()?;
        let q = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .ok()?;
        let _ = channel.close(200, "done".into()).await;
        Some(q.message_count())
    }

    /// Deletes the queues of these (group, topic) pairs.
    pub async fn delete_group_queues(&self, groups: &[(&str, &str)]) {
        for (group, topic) in groups {
            self.broker
                .delete_group_queue(group, topic)
                .await
                .expect("delete group queue");
        }
    }

    /// Deletes the queue and the exchange.
    pub async fn cleanup(self) {
        if let Ok(channel) = self.conn.create_channel().await {
            let _ = channel
                .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel
                .exchange_delete(
                    self.exchange.as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// A message as it reached the queue.
#[derive(Debug, Clone)]
pub struct Received {
    /// The routing key (the topic).
    pub topic: String,
    /// The CloudEvents id (the idempotency key).
    pub idempotency_key: String,
    /// The ordering key, if any.
    pub key: Option<String>,
    /// The body.
    pub payload: serde_json::Value,
}

impl Received {
    fn from_delivery(d: &lapin::message::Delivery) -> Self {
        let headers: HashMap<String, String> = d
            .properties
            .headers()
            .as_ref()
            .map(|t| {
                t.inner()
                    .iter()
                    .filter_map(|(k, v)| match v {
                        lapin::types::AMQPValue::LongString(s) => {
                            Some((k.to_string(), s.to_string()))
                        }
                        lapin::types::AMQPValue::ShortString(s) => {
                            Some((k.to_string(), s.to_string()))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let find = |suffix: &str| {
            headers
                .iter()
                .find(|(k, _)| {
                    k.strip_prefix("cloudEvents")
                        .is_some_and(|r| &r[1..] == suffix)
                })
                .map(|(_, v)| v.clone())
        };
        Received {
            topic: d.routing_key.to_string(),
            idempotency_key: find("id").unwrap_or_default(),
            key: find("partitionkey"),
            payload: serde_json::from_slice(&d.data).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// A TCP proxy on loopback that can be taken down (closing every connection
/// and refusing new ones) and brought back up.
#[derive(Debug, Clone)]
pub struct TcpProxy {
    /// The address to connect to instead of the target.
    pub addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl TcpProxy {
    /// Starts a proxy to `target` (host:port).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let down = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(Notify::new());
        let target = target.to_owned();
        let (d, c) = (Arc::clone(&down), Arc::clone(&cut));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = c.notified() => {}
                    }
                });
            }
        });
        TcpProxy { addr, down, cut }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn set_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Accepts connections again.
    pub fn set_up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// `AMQP_URL` with host and port replaced by the proxy's.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}
