//! Benchmarks of txmsg, each beside a hand-written sqlx + lapin baseline
//! doing the same work, in the same process run, in alternating rounds,
//! against the real PostgreSQL (`DATABASE_URL`) and RabbitMQ (`AMQP_URL`).
//!
//! ```text
//! cargo run --release -p txmsg-bench -- producer|e2e|drain|consumer|memory|all
//! ```
//!
//! Every run works in PostgreSQL schemas and a RabbitMQ exchange and queues
//! of its own, with the store's real tables (`PgStore::migrate()`), and
//! removes them at the end. See `BENCHMARKS.md` at the workspace root.

mod backlog;
mod common;
mod producer;
mod report;
mod rocket;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::common::{Env, Res, Side};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "txmsg-bench",
    about = "txmsg beside hand-written sqlx + lapin code"
)]
struct Cli {
    /// What to measure.
    #[command(subcommand)]
    mode: Mode,
    /// Tiny sizes and one short round per side (a smoke run, not a measurement).
    #[arg(long, global = true)]
    quick: bool,
    /// Rounds per side of e2e, drain and consumer, in ABBA pairs (txmsg,
    /// baseline, baseline, txmsg, ...).
    #[arg(long, global = true, default_value_t = 6)]
    rounds: usize,
    /// Seconds per timed e2e round.
    #[arg(long, global = true, default_value_t = 8.0)]
    secs: f64,
    /// Rounds per side of the producer mode, in ABBA pairs; as many again
    /// run both sides at once.
    #[arg(long, global = true, default_value_t = 12)]
    producer_rounds: usize,
    /// Seconds per producer round.
    #[arg(long, global = true, default_value_t = 2.5)]
    producer_secs: f64,
    /// Concurrent producer clients.
    #[arg(long, global = true, default_value_t = 8)]
    clients: usize,
    /// Publishes awaiting a confirm at once (txmsg's `max_in_flight`, and the
    /// baseline's window).
    #[arg(long, global = true, default_value_t = 512)]
    window: usize,
    /// Rows of the drain mode.
    #[arg(long, global = true, default_value_t = 100_000)]
    drain_rows: usize,
    /// Messages of the consumer mode.
    #[arg(long, global = true, default_value_t = 20_000)]
    consume_msgs: usize,
    /// Start each ABBA pair of rounds with the baseline (default: txmsg).
    #[arg(long, global = true)]
    baseline_first: bool,
    /// e2e and drain: txmsg in PostgreSQL log capture (producers write the
    /// WAL, a `LogRelay` reads a slot) instead of the outbox table.
    #[arg(long, global = true)]
    log_capture: bool,
    /// Run one side alone, e.g. under a profiler (the ratios then show 0 rounds).
    #[arg(long, global = true, value_name = "SIDE")]
    only: Option<Side>,
    /// Where `all` writes its JSON and SVG.
    #[arg(long, global = true, default_value = "bench/out")]
    out: PathBuf,
    /// PostgreSQL URL (default `DATABASE_URL`, else the local server).
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// RabbitMQ URL (default `AMQP_URL`, else the local server).
    #[arg(long, global = true)]
    amqp_url: Option<String>,
    /// RocketMQ name servers, `rocketmq://host:port` (default
    /// `ROCKETMQ_URL`, else the local name server).
    #[arg(long, global = true)]
    rocketmq_url: Option<String>,
}

/// The modes.
#[derive(Debug, Subcommand)]
enum Mode {
    /// Business insert + outbox insert + commit, no relay: tx/s and latency.
    Producer,
    /// Commit -> broker confirm: peak, then half of peak with latency.
    E2e,
    /// Relay started after a backlog vs raw lapin publishes with confirms.
    Drain,
    /// Dedup insert + effect + commit + ack: msgs/s.
    Consumer,
    /// Peak RSS of a relay draining a small and a large backlog.
    Memory,
    /// Every mode, then the JSON results and the SVG plot.
    All,
    /// The drain and e2e modes on RocketMQ, beside a hand-written
    /// rocketmq-client baseline (not part of `all`); writes
    /// `rocketmq-results.json`.
    Rocketmq,
    /// Internal: the relay process of the memory mode.
    #[command(hide = true)]
    RelayChild {
        /// Schema holding the backlog.
        #[arg(long)]
        schema: String,
        /// Exchange to publish to.
        #[arg(long)]
        exchange: String,
        /// Rows to wait for.
        #[arg(long)]
        rows: usize,
    },
}

fn env_of(cli: &Cli) -> Env {
    let db_url = cli.database_url.clone().unwrap_or_else(|| {
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    });
    let amqp_url = cli.amqp_url.clone().unwrap_or_else(|| {
        std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
    });
    if cli.quick {
        Env {
            db_url,
            amqp_url,
            rounds: 1,
            round: Duration::from_millis(700),
            producer_rounds: 1,
            producer_round: Duration::from_millis(700),
            clients: cli.clients,
            drain_rows: 2_000,
            consume_msgs: 500,
            memory_rows: (200, 2_000),
            window: cli.window,
            baseline_first: cli.baseline_first,
            only: cli.only,
            log_capture: cli.log_capture,
        }
    } else {
        Env {
            db_url,
            amqp_url,
            rounds: cli.rounds.max(1),
            round: Duration::from_secs_f64(cli.secs.max(0.1)),
            producer_rounds: cli.producer_rounds.max(1),
            producer_round: Duration::from_secs_f64(cli.producer_secs.max(0.1)),
            clients: cli.clients.max(1),
            drain_rows: cli.drain_rows.max(1),
            consume_msgs: cli.consume_msgs.max(1),
            memory_rows: (cli.drain_rows.max(10) / 10, cli.drain_rows.max(10)),
            window: cli.window.max(1),
            baseline_first: cli.baseline_first,
            only: cli.only,
            log_capture: cli.log_capture,
        }
    }
}

async fn run(cli: Cli) -> Res<()> {
    let env = env_of(&cli);
    if !matches!(cli.mode, Mode::RelayChild { .. }) {
        println!(
            "txmsg-bench: producer {} round(s) per side of {:.1} s; e2e, drain, consumer {} round(s) \
             per side ({:.1} s per e2e round); {} clients, window {}{}",
            env.producer_rounds,
            env.producer_round.as_secs_f64(),
            env.rounds,
            env.round.as_secs_f64(),
            env.clients,
            env.window,
            if env.log_capture {
                "; txmsg in log capture"
            } else {
                ""
            }
        );
    }
    match &cli.mode {
        Mode::Producer => {
            producer::producer(&env).await?;
        }
        Mode::E2e => {
            producer::e2e(&env).await?;
        }
        Mode::Drain => {
            backlog::drain(&env).await?;
        }
        Mode::Consumer => {
            backlog::consumer(&env).await?;
        }
        Mode::Memory => {
            backlog::memory(&env).await?;
        }
        Mode::All => {
            let producer = producer::producer(&env).await?;
            let e2e = producer::e2e(&env).await?;
            let drain = backlog::drain(&env).await?;
            let consumer = backlog::consumer(&env).await?;
            let memory = backlog::memory(&env).await?;
            let report = report::Report {
                finished_at: chrono::Utc::now().to_rfc3339(),
                cpus: std::thread::available_parallelism().map_or(0, usize::from),
                rounds: env.rounds,
                round_secs: env.round.as_secs_f64(),
                producer_rounds: env.producer_rounds,
                producer_round_secs: env.producer_round.as_secs_f64(),
                producer,
                e2e,
                drain,
                consumer,
                memory,
            };
            report::write(&cli.out, &report)?;
        }
        Mode::Rocketmq => {
            let url = cli.rocketmq_url.clone().unwrap_or_else(|| {
                std::env::var("ROCKETMQ_URL").unwrap_or_else(|_| "rocketmq://127.0.0.1:9876".into())
            });
            let result = rocket::run(&env, &url).await?;
            std::fs::create_dir_all(&cli.out)?;
            let path = cli.out.join("rocketmq-results.json");
            std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
            println!("wrote {}", path.display());
        }
        Mode::RelayChild {
            schema,
            exchange,
            rows,
        } => backlog::relay_child(&env, schema, exchange, *rows).await?,
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("txmsg-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("txmsg-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
