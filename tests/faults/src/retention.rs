//! Retention while producing: are producers slowed down or blocked while
//! the relay purges old sent rows and the consumer purges old inbox keys?
//!
//! The outbox and the inbox are filled with old rows first. Then producers
//! write as fast as they can for a while, with a relay publishing and a
//! consumer applying every order, and nothing old enough to purge (the
//! baseline); then again with the same relay and consumer set to purge the
//! old rows, in batches. The figures are the producers' throughput and commit latencies
//! in both phases, and how fast the purge went.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;
use txmsg::consumer::{Consumer, ConsumerConfig};
use txmsg::postgres::PgStore;
use txmsg::prelude::*;
use txmsg::rabbitmq::{RabbitBroker, RabbitConfig};
use txmsg::{Outbox, Relay, Tables};

use crate::child;
use crate::workload::{self, ORDERED};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a retention run is asked to do.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// Old sent outbox rows and old inbox keys to start with (each).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) rows: i64,
    /// Producer tasks writing concurrently.
    #[arg(long, default_value_t = 4)]
    pub(crate) clients: usize,
    /// Length of each phase, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) seconds: f64,
    /// Rows per purge statement.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) batch: u32,
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub(crate) db: String,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub(crate) amqp: String,
}

/// The producers' figures in one phase.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Phase {
    commits: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// The figures of a retention run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    old_rows: i64,
    baseline: Phase,
    while_purging: Phase,
    throughput_ratio: f64,
    sent_purged: i64,
    inbox_purged: i64,
    purge_seconds: f64,
    purge_done: bool,
}

impl Report {
    /// Prints the figures and the verdict; `true` when the purge finished
    /// and the producers were not blocked.
    pub(crate) fn print(&self) -> bool {
        let line = |name: &str, p: &Phase| {
            println!(
                "{name:<16} {:>7} commits {:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
                p.commits, p.per_second, p.p50_ms, p.p99_ms, p.max_ms
            );
        };
        println!(
            "old rows         {} sent outbox rows + {} inbox keys",
            self.old_rows, self.old_rows
        );
        line("no purge", &self.baseline);
        line("while purging", &self.while_purging);
        println!(
            "throughput ratio {:.3} (while purging / no purge)",
            self.throughput_ratio
        );
        println!(
            "purged           {} sent rows + {} inbox keys in {:.1} s",
            self.sent_purged, self.inbox_purged, self.purge_seconds
        );
        if let Ok(json) = serde_json::to_string(self) {
            println!("json {json}");
        }
        // Not blocked: no commit waited longer than a second while purging.
        let ok = self.purge_done
            && self.while_purging.commits > 0
            && self.while_purging.max_ms < 1_000.0;
        println!("RESULT {}", if ok { "PASS" } else { "FAIL" });
        ok
    }
}

async fn fill(pool: &PgPool, rows: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO txmsg_outbox (id, topic, key, idempotency_key, payload, state,
                                   next_attempt_at, created_at, sent_at)
         SELECT gen_random_uuid(), 'faults.old', 'k' || (g % 16), 'old-' || g, '\\x7b7d'::bytea,
                'sent', now() - interval '30 days', now() - interval '30 days',
                now() - interval '30 days'
           FROM generate_series(1, $1) g",
    )
    .bind(rows)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO txmsg_inbox (consumer_group, topic, idempotency_key, processed_at)
         SELECT $2, 'faults.old', 'old-' || g, now() - interval '30 days'
           FROM generate_series(1, $1) g",
    )
    .bind(rows)
    .bind(ORDERED)
    .execute(pool)
    .await?;
    Ok(())
}

async fn old_rows(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM txmsg_outbox WHERE topic = 'faults.old'),
                (SELECT count(*) FROM txmsg_inbox WHERE idempotency_key LIKE 'old-%')",
    )
    .fetch_one(pool)
    .await
}

/// Writes orders from `clients` tasks for `seconds`, numbering from `from`;
/// returns the commit latencies.
async fn produce(
    outbox: &Outbox<sqlx::Postgres>,
    clients: usize,
    seconds: f64,
    from: i64,
) -> Result<Phase, BoxError> {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let outbox = outbox.clone();
        let clients = i64::try_from(clients).unwrap_or(1);
        let c = i64::try_from(c).unwrap_or(0);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut n = from + c;
            while Instant::now() < until {
                let t = Instant::now();
                workload::place_and_commit(&outbox, n, clients, 16).await?;
                latencies.push(t.elapsed());
                n += clients;
            }
            Ok::<_, txmsg::Error>(latencies)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1_000.0)
    };
    Ok(Phase {
        commits: all.len(),
        per_second: all.len() as f64 / elapsed,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        max_ms: all.last().map_or(0.0, |d| d.as_secs_f64() * 1_000.0),
    })
}

/// Runs the measurement.
pub(crate) async fn run(opts: Options) -> Result<Report, BoxError> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let schema = format!("txmsg_r_{}", &id[id.len() - 12..]);
    let exchange = format!("txmsg.retention.{}", &id[id.len() - 12..]);
    let pool = child::pool(&opts.db, &schema, "txmsg-faults-retention", 16).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&pool)
        .await?;
    let broker = RabbitBroker::connect(
        &opts.amqp,
        RabbitConfig::default().with_exchange(&exchange)?,
    )
    .await?;
    let result = measure(&opts, &pool, &schema, &broker).await;
    crate::scenario::cleanup(&pool, &schema, &broker, &opts.amqp, &exchange).await;
    result
}

async fn measure(
    opts: &Options,
    pool: &PgPool,
    schema: &str,
    broker: &RabbitBroker,
) -> Result<Report, BoxError> {
    let store = PgStore::new(pool.clone(), Tables::default().with_schema(schema)?)?;
    store.migrate().await?;
    workload::create_schema(pool).await?;
    fill(pool, opts.rows).await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    let relay_config = |retention: Option<Duration>| {
        child::relay_config()
            .with_sent_retention(retention)
            .with_purge_interval(Duration::from_millis(100))
            .with_purge_batch(opts.batch)
    };

    // Both phases run the same relay and consumer (which applies every
    // order produced); only their retentions differ. Baseline: nothing old
    // enough to purge (sent rows kept, inbox keys kept a year).
    let consumer_config = |retention: Duration| {
        ConsumerConfig::new(ORDERED)
            .with_inbox_retention(retention)
            .with_purge_interval(Duration::from_millis(100))
            .with_purge_batch(opts.batch)
    };
    let relay = Relay::new(store.clone(), broker.clone(), relay_config(None))?.start();
    let consumer = Consumer::new(
        store.clone(),
        broker.clone(),
        consumer_config(Duration::from_secs(365 * 24 * 3600)),
    )?
    .start()
    .await?;
    let outbox = Outbox::new(&store).with_relay(&relay);
    let baseline = produce(&outbox, opts.clients, opts.seconds, 0).await?;
    consumer.shutdown().await;
    relay.shutdown().await;

    // The same while the relay purges sent rows older than a day and the
    // consumer inbox keys older than 7 days: the old rows.
    let purge_started = Instant::now();
    let relay = Relay::new(
        store.clone(),
        broker.clone(),
        relay_config(Some(Duration::from_secs(24 * 3600))),
    )?
    .start();
    let consumer = Consumer::new(
        store.clone(),
        broker.clone(),
        consumer_config(Duration::from_secs(7 * 24 * 3600)),
    )?
    .start()
    .await?;
    let outbox = Outbox::new(&store).with_relay(&relay);
    let done = Arc::new(tokio::sync::Notify::new());
    let watcher = {
        let pool = pool.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            loop {
                if matches!(old_rows(&pool).await, Ok((0, 0))) {
                    return Some(purge_started.elapsed());
                }
                tokio::select! {
                    () = done.notified() => return None,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
    };
    let while_purging = produce(&outbox, opts.clients, opts.seconds, 10_000_000).await?;
    // Let the purge finish if the phase was shorter than it.
    let purge_took = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if watcher.is_finished() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    done.notify_one();
    let purge_time = watcher.await.ok().flatten();
    consumer.shutdown().await;
    relay.shutdown().await;
    let (sent_left, inbox_left) = old_rows(pool).await?;
    Ok(Report {
        old_rows: opts.rows,
        throughput_ratio: while_purging.per_second / baseline.per_second.max(f64::MIN_POSITIVE),
        baseline,
        while_purging,
        sent_purged: opts.rows - sent_left,
        inbox_purged: opts.rows - inbox_left,
        purge_seconds: purge_time.map_or(f64::NAN, |d| d.as_secs_f64()),
        purge_done: purge_took.is_ok() && purge_time.is_some(),
    })
}
