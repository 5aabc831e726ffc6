//! What every mode shares: connections, an isolated PostgreSQL schema per
//! variant, an isolated RabbitMQ exchange and queue, latency statistics, and
//! a broker wrapper that records when each publish was confirmed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, ExchangeKind};
use serde::Serialize;
use txmsg::consumer::{SubscribeSpec, Subscription};
use txmsg::postgres::PgStore;
use txmsg::rabbitmq::{RabbitBroker, RabbitConfig};
use txmsg::{Broker, Envelope, Store, Tables};

/// Errors of the benchmark: anything printable.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The benchmark's result type.
pub(crate) type Res<T> = Result<T, BoxError>;

/// Where the services are and how big a run is.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    /// PostgreSQL URL.
    pub(crate) db_url: String,
    /// RabbitMQ URL.
    pub(crate) amqp_url: String,
    /// Rounds per side of the e2e, drain and consumer modes.
    pub(crate) rounds: usize,
    /// Length of a timed e2e round.
    pub(crate) round: Duration,
    /// Rounds per side of the producer mode.
    pub(crate) producer_rounds: usize,
    /// Length of a producer round.
    pub(crate) producer_round: Duration,
    /// Concurrent producer clients.
    pub(crate) clients: usize,
    /// Rows of the drain mode.
    pub(crate) drain_rows: usize,
    /// Messages of the consumer mode.
    pub(crate) consume_msgs: usize,
    /// Rows of the memory mode: (small, large).
    pub(crate) memory_rows: (usize, usize),
    /// Publishes awaiting a confirm at once, framework and baseline alike.
    pub(crate) window: usize,
    /// Whether each ABBA pair of rounds starts with the baseline.
    pub(crate) baseline_first: bool,
    /// Run this side alone (for a profiler); `None`: both.
    pub(crate) only: Option<Side>,
    /// e2e and drain: txmsg in PostgreSQL log capture (a `LogRelay`
    /// reading a slot) instead of the outbox table.
    pub(crate) log_capture: bool,
}

/// The records' prefix of log capture.
pub(crate) const LOG_PREFIX: &str = "bench";

impl Schema {
    /// The schema's store in log capture.
    pub(crate) fn log_store(&self) -> Res<PgStore> {
        Ok(self
            .store
            .clone()
            .with_capture(txmsg::postgres::Capture::log(LOG_PREFIX)?))
    }

    /// The schema's log relay settings: a slot and publication named after
    /// it, `window` publishes awaiting a confirm.
    pub(crate) fn log_config(&self, window: usize) -> Res<txmsg::postgres::LogRelayConfig> {
        Ok(txmsg::postgres::LogRelayConfig::default()
            .with_slot(&self.name)?
            .with_publication(&self.name)?
            .with_max_in_flight(window))
    }

    /// Drops the schema's slot and publication, if any.
    pub(crate) async fn drop_log_slot(&self) -> Res<()> {
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
        )
        .bind(&self.name)
        .execute(&self.pool)
        .await?;
        let sql = format!("DROP PUBLICATION IF EXISTS {}", self.name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// A unique lowercase suffix for names.
pub(crate) fn unique() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Business table created in every schema: same for both variants.
pub(crate) const BUSINESS_DDL: &str = "CREATE TABLE bench_orders (\
    id bigint PRIMARY KEY, client int NOT NULL, amount bigint NOT NULL, created_at timestamptz NOT NULL);\
    CREATE TABLE bench_effects (n bigint NOT NULL, grp text NOT NULL)";

/// A PostgreSQL schema of its own, migrated by `PgStore::migrate()`, with
/// the business tables beside the store's.
#[derive(Debug, Clone)]
pub(crate) struct Schema {
    /// Schema name.
    pub(crate) name: String,
    /// Pool whose search path starts with the schema.
    pub(crate) pool: sqlx::PgPool,
    /// Migrated store in the schema.
    pub(crate) store: PgStore,
}

impl Schema {
    /// Creates the schema, a pool of `conns` connections and the tables.
    pub(crate) async fn create(env: &Env, tag: &str, conns: u32) -> Res<Self> {
        let name = format!("txmsg_bench_{tag}_{}", unique());
        let pool = pool_in(&env.db_url, &name, conns).await?;
        let store = PgStore::new(pool.clone(), Tables::default().with_schema(&name)?)?;
        store.migrate().await?;
        sqlx::raw_sql(BUSINESS_DDL).execute(&pool).await?;
        Ok(Schema { name, pool, store })
    }

    /// Opens another pool on the same schema.
    pub(crate) async fn attach(env: &Env, name: &str, conns: u32) -> Res<Self> {
        let pool = pool_in(&env.db_url, name, conns).await?;
        let store = PgStore::new(pool.clone(), Tables::default().with_schema(name)?)?;
        Ok(Schema {
            name: name.to_owned(),
            pool,
            store,
        })
    }

    /// Empties the outbox, inbox and business tables between rounds.
    pub(crate) async fn truncate(&self) -> Res<()> {
        sqlx::raw_sql("TRUNCATE txmsg_outbox, txmsg_inbox, bench_orders, bench_effects")
            .execute(&self.pool)
            .await?;
        sqlx::raw_sql("VACUUM ANALYZE txmsg_outbox")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Outbox rows still pending.
    pub(crate) async fn pending(&self) -> Res<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM txmsg_outbox WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Drops the schema and closes the pool.
    pub(crate) async fn drop(self) -> Res<()> {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&self.pool)
            .await?;
        self.pool.close().await;
        Ok(())
    }
}

async fn pool_in(url: &str, schema: &str, conns: u32) -> Res<sqlx::PgPool> {
    let search_path = format!("SET search_path TO {schema}, public");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(conns)
        .min_connections(conns)
        .after_connect(move |conn, _| {
            let sql = search_path.clone();
            Box::pin(async move {
                sqlx::Executor::execute(conn, sqlx::AssertSqlSafe(sql)).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| format!("cannot reach PostgreSQL at DATABASE_URL: {e}"))?;
    if schema_missing(&pool, schema).await? {
        let sql = format!("CREATE SCHEMA {schema}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await?;
    }
    Ok(pool)
}

async fn schema_missing(pool: &sqlx::PgPool, schema: &str) -> Res<bool> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(pool)
            .await?;
    Ok(!exists)
}

/// A RabbitMQ exchange of its own with a durable queue bound to all of it,
/// the framework's broker on it, and a raw lapin connection for baselines.
#[derive(Debug)]
pub(crate) struct Rabbit {
    /// Exchange name.
    pub(crate) exchange: String,
    /// Queue bound with `#`.
    pub(crate) queue: String,
    /// The framework's broker, publishing to `exchange`.
    pub(crate) broker: RabbitBroker,
    /// Raw connection for the baselines.
    pub(crate) conn: lapin::Connection,
}

impl Rabbit {
    /// Declares the exchange and the queue.
    pub(crate) async fn create(env: &Env, tag: &str) -> Res<Self> {
        let id = unique();
        let exchange = format!("txmsg.bench.{tag}.{id}");
        let queue = format!("{exchange}.all");
        let broker = RabbitBroker::connect(
            &env.amqp_url,
            RabbitConfig::default().with_exchange(&exchange)?,
        )
        .await
        .map_err(|e| format!("cannot reach RabbitMQ at AMQP_URL: {e}"))?;
        broker.bind_queue(&queue, "#").await?;
        let conn = connect_raw(env).await?;
        Ok(Rabbit {
            exchange,
            queue,
            broker,
            conn,
        })
    }

    /// Removes every message from the queue.
    pub(crate) async fn purge(&self) -> Res<()> {
        let ch = self.conn.create_channel().await?;
        ch.queue_purge(self.queue.as_str().into(), QueuePurgeOptions::default())
            .await?;
        let _ = ch.close(200, "done".into()).await;
        Ok(())
    }

    /// Deletes the queue, the given extra queues and the exchange.
    pub(crate) async fn cleanup(self, extra_queues: &[String]) -> Res<()> {
        let ch = self.conn.create_channel().await?;
        for q in std::iter::once(&self.queue).chain(extra_queues) {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        ch.exchange_delete(
            self.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await?;
        let _ = ch.close(200, "done".into()).await;
        let _ = self.broker.close().await;
        let _ = self.conn.close(200, "done".into()).await;
        Ok(())
    }
}

/// A plain lapin connection.
pub(crate) async fn connect_raw(env: &Env) -> Res<lapin::Connection> {
    Ok(
        lapin::Connection::connect(&env.amqp_url, lapin::ConnectionProperties::default())
            .await
            .map_err(|e| format!("cannot reach RabbitMQ at AMQP_URL: {e}"))?,
    )
}

/// A consumer that takes every message off a queue as it arrives
/// (automatic acknowledgement, on a connection of its own), as the consumers
/// of a running system do: without it the queue of the `e2e` mode would grow
/// through the round, and RabbitMQ's own work on a long queue would show in
/// both sides' latencies.
#[derive(Debug)]
pub(crate) struct QueueDrain {
    conn: lapin::Connection,
    task: tokio::task::JoinHandle<u64>,
}

impl QueueDrain {
    /// Starts consuming `queue`.
    pub(crate) async fn start(env: &Env, queue: &str) -> Res<Self> {
        use futures_util::StreamExt;
        let conn = connect_raw(env).await?;
        let ch = conn.create_channel().await?;
        let mut deliveries = ch
            .basic_consume(
                queue.into(),
                format!("drain-{}", unique()).as_str().into(),
                lapin::options::BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(Ok(_)) = deliveries.next().await {
                n += 1;
            }
            n
        });
        Ok(QueueDrain { conn, task })
    }

    /// Stops consuming; returns how many messages were taken.
    pub(crate) async fn stop(self) -> Res<u64> {
        let _ = self.conn.close(200, "done".into()).await;
        Ok(self.task.await?)
    }
}

/// A channel in confirm mode on which the exchange exists (declared as the
/// framework's broker declares it).
pub(crate) async fn confirm_channel(
    conn: &lapin::Connection,
    exchange: &str,
) -> Res<lapin::Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    Ok(ch)
}

/// Declares a durable queue bound to `exchange` with `pattern`.
pub(crate) async fn declare_queue(
    conn: &lapin::Connection,
    exchange: &str,
    queue: &str,
    pattern: &str,
) -> Res<()> {
    let ch = conn.create_channel().await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        pattern.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = ch.close(200, "done".into()).await;
    Ok(())
}

/// The properties a careful hand-written publisher sets: persistent JSON
/// with the message id, the creation time and the CloudEvents attributes a
/// consumer needs (id, type, source, specversion).
pub(crate) fn baseline_properties(id: &str, topic: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("cloudEvents_id", id),
        ("cloudEvents_type", topic),
        ("cloudEvents_source", "/bench"),
        ("cloudEvents_specversion", "1.0"),
    ] {
        headers.insert(ShortString::from(k), AMQPValue::LongString(v.into()));
    }
    let ts = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default();
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(id.into())
        .with_timestamp(ts)
        .with_headers(headers)
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Lat {
    /// Median.
    pub(crate) p50_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
}

/// Percentiles of `samples` (any order).
pub(crate) fn lat(samples: &mut [Duration]) -> Lat {
    if samples.is_empty() {
        return Lat::default();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples
            .get(i.min(samples.len() - 1))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Lat {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

/// CPU time (user + system) this process used so far, from
/// `/proc/self/stat` (clock ticks of 10 ms); zero where it cannot be read.
pub(crate) fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after `)`.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Median of a list of figures.
pub(crate) fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A broker that forwards to one of the framework's brokers (RabbitMQ
/// unless said otherwise) and records,
/// for each publish the broker confirmed, the message's idempotency key
/// and the instant of the confirm. The relay knows nothing about it; it is
/// how the benchmark sees "commit → confirmed" without a relay hook.
#[derive(Debug, Clone)]
pub(crate) struct TimedBroker<B = RabbitBroker> {
    inner: B,
    confirms: Arc<Mutex<Vec<(u64, Instant)>>>,
    /// Confirms so far, recorded or not.
    confirmed: Arc<AtomicUsize>,
    /// Whether each confirm's instant is kept (not in the memory mode).
    record: bool,
}

impl<B> TimedBroker<B> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: B) -> Self {
        TimedBroker {
            inner,
            confirms: Arc::new(Mutex::new(Vec::new())),
            confirmed: Arc::new(AtomicUsize::new(0)),
            record: true,
        }
    }

    /// Wraps `inner`, counting confirms without keeping their instants.
    pub(crate) fn counting(inner: B) -> Self {
        TimedBroker {
            record: false,
            ..TimedBroker::new(inner)
        }
    }

    /// Takes the confirms recorded so far.
    pub(crate) fn take(&self) -> Vec<(u64, Instant)> {
        self.confirms
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Confirms since the broker was wrapped.
    pub(crate) fn count(&self) -> usize {
        self.confirmed.load(Ordering::SeqCst)
    }
}

impl<B: Broker> Broker for TimedBroker<B> {
    fn system(&self) -> &'static str {
        self.inner.system()
    }

    async fn publish(&self, envelope: &Envelope) -> txmsg::Result<()> {
        self.inner.publish(envelope).await?;
        if self.record {
            let now = Instant::now();
            let seq = envelope.idempotency_key.parse::<u64>().unwrap_or(u64::MAX);
            if let Ok(mut v) = self.confirms.lock() {
                v.push((seq, now));
            }
        }
        self.confirmed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn subscribe(&self, spec: &SubscribeSpec) -> txmsg::Result<Subscription> {
        self.inner.subscribe(spec).await
    }
}

/// Which side of the comparison a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Side {
    /// txmsg.
    #[value(name = "txmsg")]
    Framework,
    /// Hand-written sqlx + lapin.
    Baseline,
}

impl Side {
    /// The order of `rounds` rounds per side, alternating in ABBA
    /// pairs (F, B, B, F, F, B, ...), so that a drift of the machine's
    /// speed during the run (a cache warming up, a neighbour's load
    /// fading) favours neither side; [`Env::baseline_first`] starts with
    /// the baseline instead, [`Env::only`] runs one side alone (for a
    /// profiler).
    pub(crate) fn schedule(env: &Env, rounds: usize) -> Vec<(usize, Side)> {
        let (first, second) = if env.baseline_first {
            (Side::Baseline, Side::Framework)
        } else {
            (Side::Framework, Side::Baseline)
        };
        (0..rounds)
            .flat_map(|r| {
                if r % 2 == 0 {
                    [(r, first), (r, second)]
                } else {
                    [(r, second), (r, first)]
                }
            })
            .filter(|&(_, side)| env.only.is_none_or(|only| only == side))
            .collect()
    }

    /// Short label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Side::Framework => "txmsg",
            Side::Baseline => "baseline",
        }
    }
}

/// txmsg against the baseline over paired rounds: each round runs both
/// sides back to back (or at once), so each round's ratio compares them
/// under the same conditions, and drifts of the machine's speed that span
/// several rounds cancel out.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Paired {
    /// txmsg / baseline of each round.
    pub(crate) round_ratios: Vec<f64>,
    /// Geometric mean of the round ratios: the ratio reported.
    pub(crate) ratio: f64,
    /// Lower end of its 95 % confidence interval.
    pub(crate) ci95_low: f64,
    /// Upper end of its 95 % confidence interval.
    pub(crate) ci95_high: f64,
}

impl Paired {
    /// Pairs `txmsg[i]` with `baseline[i]`, both higher-is-better figures.
    ///
    /// The interval is Student's t on the logarithms of the round ratios
    /// (their spread is roughly symmetric in log space: one side 10 % ahead
    /// in one round and 10 % behind in the next average to 1). With one
    /// round the interval is that round's ratio alone.
    pub(crate) fn of(txmsg: &[f64], baseline: &[f64]) -> Self {
        let round_ratios: Vec<f64> = txmsg
            .iter()
            .zip(baseline)
            .filter(|&(&f, &b)| f > 0.0 && b > 0.0)
            .map(|(f, b)| f / b)
            .collect();
        let n = round_ratios.len();
        if n == 0 {
            return Paired::default();
        }
        let logs: Vec<f64> = round_ratios.iter().map(|r| r.ln()).collect();
        let mean = logs.iter().sum::<f64>() / n as f64;
        let half_width = if n > 1 {
            let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t975(n - 1) * (var / n as f64).sqrt()
        } else {
            0.0
        };
        Paired {
            round_ratios,
            ratio: mean.exp(),
            ci95_low: (mean - half_width).exp(),
            ci95_high: (mean + half_width).exp(),
        }
    }
}

/// The 97.5th percentile of Student's t with `df` degrees of freedom (the
/// two-sided 95 % factor); 1.96 from 31 on, where the table stops.
fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    df.checked_sub(1)
        .and_then(|i| TABLE.get(i))
        .copied()
        .unwrap_or(1.96)
}

/// Prints a mode's two figures (medians of the rounds) and the paired ratio.
pub(crate) fn print_pair(what: &str, unit: &str, fw: f64, bl: f64, paired: &Paired) {
    println!(
        "{what}: txmsg {fw:.1} {unit} | baseline {bl:.1} {unit} (medians) | \
         ratio {:.3} (95 % CI {:.3} to {:.3}, {} rounds)",
        paired.ratio,
        paired.ci95_low,
        paired.ci95_high,
        paired.round_ratios.len()
    );
}

/// Prints the ratio of a mode's rounds that ran both sides at once.
pub(crate) fn print_together(what: &str, paired: &Paired) {
    println!(
        "{what}: ratio {:.3} (95 % CI {:.3} to {:.3}, {} rounds)",
        paired.ratio,
        paired.ci95_low,
        paired.ci95_high,
        paired.round_ratios.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(baseline_first: bool, only: Option<Side>) -> Env {
        Env {
            db_url: String::new(),
            amqp_url: String::new(),
            rounds: 4,
            round: Duration::from_secs(1),
            producer_rounds: 4,
            producer_round: Duration::from_secs(1),
            clients: 8,
            drain_rows: 1,
            consume_msgs: 1,
            memory_rows: (1, 10),
            window: 1,
            baseline_first,
            only,
            log_capture: false,
        }
    }

    #[test]
    fn schedule_alternates_in_abba_pairs() {
        use Side::{Baseline as B, Framework as F};
        let order =
            |e: &Env| -> Vec<Side> { Side::schedule(e, 4).into_iter().map(|(_, s)| s).collect() };
        assert_eq!(order(&env(false, None)), [F, B, B, F, F, B, B, F]);
        assert_eq!(order(&env(true, None)), [B, F, F, B, B, F, F, B]);
        assert_eq!(order(&env(false, Some(B))), [B, B, B, B]);
        let rounds: Vec<usize> = Side::schedule(&env(false, None), 2)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(rounds, [0, 0, 1, 1]);
    }

    #[test]
    fn paired_ratio_is_the_geometric_mean_of_round_ratios() {
        // 10 % ahead in one round and 10 % behind in the other: even.
        let p = Paired::of(&[110.0, 100.0], &[100.0, 110.0]);
        assert!((p.ratio - 1.0).abs() < 1e-12, "{p:?}");
        assert_eq!(p.round_ratios.len(), 2);
        assert!(p.ci95_low < 1.0 && p.ci95_high > 1.0, "{p:?}");

        // The same ratio in every round, at any speed: no spread at all.
        let p = Paired::of(&[90.0, 45.0, 180.0], &[100.0, 50.0, 200.0]);
        assert!((p.ratio - 0.9).abs() < 1e-12, "{p:?}");
        assert!((p.ci95_high - p.ci95_low).abs() < 1e-12, "{p:?}");
    }

    #[test]
    fn paired_interval_uses_students_t() {
        // ln ratios -0.1 and +0.1: mean 0, standard error 0.1, t(1) = 12.706.
        let (a, b) = ((-0.1f64).exp(), 0.1f64.exp());
        let p = Paired::of(&[a, b], &[1.0, 1.0]);
        assert!((p.ci95_high.ln() - 12.706 * 0.1).abs() < 1e-9, "{p:?}");
        assert!((p.ci95_low.ln() + 12.706 * 0.1).abs() < 1e-9, "{p:?}");
        assert_eq!(t975(100), 1.96);
    }

    #[test]
    fn paired_skips_missing_and_empty_rounds() {
        assert_eq!(Paired::of(&[], &[]).round_ratios.len(), 0);
        assert_eq!(Paired::of(&[], &[]).ratio, 0.0);
        let p = Paired::of(&[1.0, 0.0, 3.0], &[2.0, 2.0]);
        assert_eq!(p.round_ratios, [0.5]);
        assert_eq!((p.ci95_low, p.ci95_high), (0.5, 0.5));
    }
}
