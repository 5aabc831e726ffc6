//! The `txmsg` command-line tool: operate a txmsg store.
//!
//! It works on every store txmsg has; the database is chosen by the scheme of
//! `--database-url` (or the `DATABASE_URL` environment variable):
//! `postgres://` (or `postgresql://`), `mysql://` or `mariadb://`, and
//! `sqlite:PATH`. The tables default to `txmsg_outbox`, `txmsg_inbox` and
//! `txmsg_migrations`; `--schema` (or `TXMSG_SCHEMA`), `--outbox-table`,
//! `--inbox-table` and `--migrations-table` must match the service's
//! `txmsg::Tables`, and are validated the same way (a bad identifier is a
//! usage error, never pasted into SQL).
//!
//! # Commands
//!
//! | command | what it does |
//! |---------|--------------|
//! | `txmsg migrate` | creates or upgrades the tables; running it again changes nothing |
//! | `txmsg migrate --print-sql` | prints the migrations as one SQL script for a migration tool of your own; connects to nothing |
//! | `txmsg status [--sent-window 1m]` | per topic: pending, prepared, age of the oldest pending message, dead, and sent within the window |
//! | `txmsg status --log-prefix P [--log-slot S] [--log-publication N]` | also PostgreSQL's log capture slot: WAL bytes it keeps, `wal_status`, reader, age of the oldest unconfirmed message; exit 1 if the slot is missing or invalidated |
//! | `txmsg dead list [--topic T] [--key K] [--older-than AGE] [--limit N] [--group G]` | dead letters, oldest first; with `--group`, a consumer group's |
//! | `txmsg dead show ID [--group G]` | one dead letter in full: headers, payload, reason |
//! | `txmsg dead replay ID...` or `txmsg dead replay [--topic T] [--key K] [--older-than AGE] [--all]` | puts dead outbox messages back to pending with attempts reset; the relay publishes them |
//! | `txmsg dead purge [--topic T] [--key K] [--older-than AGE] [--all]` | deletes dead outbox messages for good |
//! | `txmsg inbox purge --group G --older-than 7d` | deletes a group's processed idempotency keys older than the age |
//!
//! Ages are a number and a unit: `500ms`, `90s`, `30m`, `12h`, `7d`, `2w`.
//! `--older-than` counts from when the message went dead (for dead letters)
//! or was processed (for inbox keys). `replay` and `purge` without ids need a
//! filter or `--all`, so that a bare command never touches every row. They
//! work in batches (`--batch`) and print a counter per batch on stderr.
//! A consumer group's dead letters are listed and shown here, but replayed
//! by the service that runs the handler (`ConsumerHandle::replay`).
//!
//! # Output and exit status
//!
//! Tables for people by default; `--json` prints one JSON document on stdout
//! instead (`status`: `{"sent_window_seconds", "topics": [{"topic",
//! "pending", "prepared", "oldest_pending", "oldest_pending_age_seconds",
//! "dead", "sent_recently"}]}`, with `--log-prefix` also `"log_slot": {"slot",
//! "exists", "active", "lag_bytes", "wal_status", "safe_wal_bytes",
//! "invalidated", "oldest_unconfirmed", "oldest_unconfirmed_age_seconds",
//! "reader_lag_seconds"}`; `dead list`: `{"dead_letters": [...]}`;
//! `dead show`: the dead letter with `headers` and `payload`; `dead replay`:
//! `{"replayed": [ids], "not_dead": [ids]}`; `dead purge` and `inbox purge`:
//! `{"purged": n}`; `migrate`: `{"migrated": true}`).
//!
//! An error is one line on stderr, starting with `error:`, and exit status 1
//! (2 for a usage error). A URL that cannot be used, a database that cannot
//! be reached (`--connect-timeout`, 10 s by default) and tables that are not
//! there (run `txmsg migrate`) each say so; the URL's password is never
//! printed. `dead replay` with ids that are not dead letters replays the
//! others and exits with 1; `status --log-prefix` prints what it found and
//! exits with 1 when the slot is missing or invalidated.
//!
//! # Examples
//!
//! ```text
//! $ export DATABASE_URL=postgres://app@db/app
//! $ txmsg migrate
//! $ txmsg status
//! TOPIC           PENDING  PREPARED  OLDEST PENDING  DEAD  SENT LAST 1m
//! orders.created  3        0         2s              1     120
//! $ txmsg dead list --topic orders.created
//! $ txmsg dead replay --topic orders.created --older-than 1h
//! $ txmsg dead purge --older-than 30d
//! $ txmsg inbox purge --group billing --older-than 7d
//! ```

mod args;
mod cmd;
mod connect;
mod fmt;

use std::process::ExitCode;

use clap::Parser;
use txmsg::Tables;

use crate::args::{Cli, Command};
use crate::connect::{AnyStore, Context, Failure};

/// Exit status of a usage error, as clap's own.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let url = cli.db.database_url.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(out) => {
            if cli.json {
                println!("{}", out.json);
            } else {
                print!("{}", out.text);
            }
            if out.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(failure) => {
            let (message, code) = match failure {
                Failure::Usage(m) => (m, ExitCode::from(USAGE)),
                Failure::Failed(m) => (m, ExitCode::FAILURE),
            };
            eprintln!("error: {}", fmt::redact(&message, url.as_deref()));
            code
        }
    }
}

async fn run(cli: &Cli) -> Result<cmd::Output, Failure> {
    let tables = connect::tables(&cli.db)?;
    let url = cli.db.database_url.as_deref().ok_or_else(|| {
        Failure::Usage("no database: pass --database-url or set DATABASE_URL".to_owned())
    })?;
    let ctx = Context {
        outbox: outbox_name(&tables),
        connect_timeout: cli.db.connect_timeout,
    };
    if let Command::Migrate(args::MigrateArgs { print_sql: true }) = &cli.command {
        let script = connect::migration_script(url, tables)?;
        return Ok(cmd::Output::ok(
            serde_json::json!({ "sql": script }),
            script,
        ));
    }
    let create = matches!(cli.command, Command::Migrate(_));
    let store = connect::connect(url, tables, create, &ctx).await?;
    let log_status = match &cli.command {
        Command::Status(args) if args.log_prefix.is_some() => Some(args),
        _ => None,
    };
    match &store {
        AnyStore::Postgres(s) => {
            let mut out = cmd::run(s, &cli.command, &ctx).await?;
            if let Some(args) = log_status {
                cmd::log_slot(s, args, &mut out, &ctx).await?;
            }
            Ok(out)
        }
        _ if log_status.is_some() => Err(Failure::Usage(
            "--log-prefix: log capture is PostgreSQL's; this database keeps messages in the outbox table"
                .to_owned(),
        )),
        AnyStore::MySql(s) => cmd::run(s, &cli.command, &ctx).await,
        AnyStore::Sqlite(s) => cmd::run(s, &cli.command, &ctx).await,
    }
}

/// The outbox table as people write it: `schema.table`.
fn outbox_name(tables: &Tables) -> String {
    match tables.schema() {
        Some(schema) => format!("{schema}.{}", tables.outbox()),
        None => tables.outbox().to_string(),
    }
}
