//! The fault harness of txmsg.
//!
//! `txmsg-faults run <crash|broker|database|relays|log> [options]` runs producers,
//! relays and consumers as separate processes against the real PostgreSQL
//! and RabbitMQ, injects the chosen faults while the producers write, lets
//! everything settle, and counts: every committed order has exactly one
//! effect in every consumer group, no effect lacks a committed order, each
//! key's effects are in order (in the group served by one consumer), and
//! nothing is left pending or dead. It prints the figures and
//! `RESULT PASS` or `RESULT FAIL`, and exits non-zero on a failure.
//!
//! ```text
//! cargo run --release -p txmsg-faults -- crash --messages 5000 --kills 40 --seconds 60
//! ```
//!
//! See RELIABILITY.md for the scenarios and their figures.

mod child;
mod fleet;
mod retention;
mod scenario;
mod workload;

use std::time::Duration;

use clap::{Parser, Subcommand};

/// Fault harness: kill, cut and count.
#[derive(Debug, Parser)]
#[command(name = "txmsg-faults", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a scenario and prints its figures.
    Run(scenario::Options),
    /// Measures producers while old sent rows and inbox keys are purged.
    Retention(retention::Options),
    /// A process of a run (started by the harness itself).
    #[command(subcommand, hide = true)]
    Child(ChildRole),
}

#[derive(Debug, Subcommand)]
enum ChildRole {
    /// Writes orders.
    Producer {
        #[arg(long)]
        index: i64,
        #[arg(long)]
        producers: i64,
        #[arg(long)]
        keys: i64,
        #[arg(long)]
        count: i64,
        #[arg(long)]
        interval_us: u64,
        #[arg(long)]
        no_fast_path: bool,
    },
    /// Relays.
    Relay,
    /// Consumes for a group.
    Consumer {
        #[arg(long)]
        group: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(dispatch(cli.command));
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn dispatch(command: Command) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    match command {
        Command::Run(opts) => {
            let report = scenario::run(opts).await?;
            report.print();
            Ok(report.passed())
        }
        Command::Retention(opts) => Ok(retention::run(opts).await?.print()),
        Command::Child(role) => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "warn".into()),
                )
                .init();
            match role {
                ChildRole::Producer {
                    index,
                    producers,
                    keys,
                    count,
                    interval_us,
                    no_fast_path,
                } => {
                    child::producer(
                        index,
                        producers,
                        keys,
                        count,
                        Duration::from_micros(interval_us.max(1)),
                        !no_fast_path,
                    )
                    .await?;
                }
                ChildRole::Relay => child::relay().await?,
                ChildRole::Consumer { group } => child::consumer(group).await?,
            }
            Ok(true)
        }
    }
}
