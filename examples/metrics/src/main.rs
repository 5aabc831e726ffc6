//! An order flow whose txmsg metrics are served to Prometheus.
//!
//! Places a few orders a second through a `#[transactional_message]`, lets
//! the relay publish them to the in-process broker and a
//! `#[message_handler]` bill them, on a temporary SQLite file; every tenth
//! message is delivered to billing a second time, as after a lost ack, so
//! that the inbox's duplicate counter moves too. Meanwhile a Prometheus
//! exporter serves every txmsg metric (see `txmsg::metrics` for the names,
//! types and labels) over HTTP:
//!
//! ```text
//! cargo run -p txmsg-example-metrics -- --listen 127.0.0.1:9464 --for 60
//! curl -s http://127.0.0.1:9464/metrics | grep '^txmsg_'
//! ```
//!
//! | option               | default          | meaning                                  |
//! |----------------------|------------------|------------------------------------------|
//! | `--listen ADDR`      | `127.0.0.1:9464` | scrape address, also read from `METRICS_ADDR` |
//! | `--for SECONDS`      | until Ctrl-C     | stop after that long                     |
//! | `--rate PER_SECOND`  | 5                | orders placed per second                 |
//!
//! # Installing an exporter
//!
//! The library records through the `metrics` facade and never installs a
//! recorder; the application does, once, before it starts any relay,
//! consumer or check-back worker (they describe their metrics when the first
//! of them starts, and a recorder installed later misses the help text):
//!
//! ```toml
//! [dependencies]
//! metrics-exporter-prometheus = { version = "0.18", default-features = false, features = ["http-listener"] }
//! ```
//!
//! ```ignore
//! use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
//!
//! PrometheusBuilder::new()
//!     .with_http_listener(([127, 0, 0, 1], 9464))
//!     .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &[0.001, 0.01, 0.1, 1.0])?
//!     .install()?; // binds the port and serves on the current Tokio runtime
//! ```
//!
//! Without buckets the exporter renders histograms as summaries
//! (quantiles); with them, as Prometheus histograms
//! (`txmsg_publish_duration_seconds_bucket{le=..}`, `_sum`, `_count`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use txmsg::consumer::{Consumer, ConsumerConfig};
use txmsg::memory::{MemoryBroker, MemorySubscription};
use txmsg::prelude::*;
use txmsg::sqlite::SqliteStore;
use txmsg::{Outbox, Relay, RelayConfig};

mod service;

use service::{BILLING_GROUP, NewOrder, TOPIC};

/// Upper bounds of the duration histograms' buckets, in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Customers the orders are spread over (the messages' keys).
const CUSTOMERS: &[&str] = &["ada", "grace", "edsger", "barbara", "ken"];

/// Every this many messages, one is delivered to billing again.
const REDELIVER_EVERY: u64 = 10;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "txmsg-example-metrics",
    about = "An order flow with its txmsg metrics served to Prometheus"
)]
struct Args {
    /// Address of the scrape endpoint.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long = "for", value_name = "SECONDS")]
    run_for: Option<u64>,
    /// Orders placed per second.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rate: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the exporter, runs the flow until asked to stop, and cleans up.
async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // The recorder first, so that txmsg's descriptions reach it.
    PrometheusBuilder::new()
        .with_http_listener(args.listen)
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), DURATION_BUCKETS)?
        .install()
        .map_err(|e| format!("cannot serve metrics on {}: {e}", args.listen))?;
    println!("metrics: http://{}/metrics", args.listen);

    let path = std::env::temp_dir().join(format!("txmsg-metrics-{}.db", uuid::Uuid::now_v7()));
    let result = flow(&path, &args).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    result
}

/// The order flow on a SQLite file at `path`, until Ctrl-C or `--for`.
async fn flow(path: &std::path::Path, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display())).await?;
    store.migrate().await?;
    service::create_schema(store.pool()).await?;
    let broker = MemoryBroker::new();

    // Often enough to watch the outbox gauges move in a short run.
    let config = RelayConfig::default().with_stats_interval(Some(Duration::from_secs(1)));
    let relay = Relay::new(store.clone(), broker.clone(), config)?.start();
    let outbox = Outbox::new(&store).with_relay(&relay);
    let billing = Consumer::new(
        store.clone(),
        broker.clone(),
        ConsumerConfig::new(BILLING_GROUP),
    )?
    .with_outbox(outbox.clone())
    .start()
    .await?;
    let redeliveries = tokio::spawn(redeliver(broker.clone(), broker.observe(TOPIC)));

    let deadline = async {
        match args.run_for {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    // Polled by the loop's first `select!`, before the first order: from
    // then on, Ctrl-C ends the run cleanly.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c, deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate);
    let mut placed = 0usize;
    let why = loop {
        tokio::select! {
            _ = &mut ctrl_c => break "interrupted",
            () = &mut deadline => break "time is up",
            _ = tick.tick() => {}
        }
        let id = i64::try_from(placed + 1)?;
        let order = NewOrder {
            id,
            customer: CUSTOMERS[placed % CUSTOMERS.len()].to_owned(),
            total_cents: 1_000 + (id % 7) * 250,
        };
        service::place_order_and_commit(&outbox, order).await?;
        placed += 1;
    };

    billing.shutdown().await;
    relay.shutdown().await;
    redeliveries.abort();
    let stats = billing.stats();
    let outbox_stats = store.stats().await?;
    println!(
        "stopped ({why}): {placed} orders placed, {} sent, {} pending; billing applied {}, skipped {} redeliveries",
        outbox_stats.sent, outbox_stats.pending, stats.applied, stats.duplicates
    );
    Ok(())
}

/// Delivers every [`REDELIVER_EVERY`]th message of the topic once more, as
/// a broker does after a lost ack; billing's inbox recognises it.
async fn redeliver(broker: MemoryBroker, mut seen: MemorySubscription) {
    let mut redelivered = HashSet::new();
    let mut count = 0u64;
    while let Some(envelope) = seen.recv().await {
        count += 1;
        if count.is_multiple_of(REDELIVER_EVERY)
            && redelivered.insert(envelope.id)
            && let Err(e) = broker.publish(&envelope).await
        {
            eprintln!("redelivery failed: {e}");
        }
    }
}
