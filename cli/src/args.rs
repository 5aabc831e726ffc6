//! The command line, as clap parses it.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

use crate::fmt::parse_age;

/// Operate a txmsg store: migrate it, see what waits in it, and deal with
/// dead letters.
#[derive(Parser)]
#[command(
    name = "txmsg",
    version,
    about = "Operate a txmsg outbox/inbox store: migrate, status, dead letters, inbox purge",
    long_about = "Operate a txmsg outbox/inbox store: migrate, status, dead letters, inbox purge.\n\n\
        The database is chosen by the scheme of --database-url (or DATABASE_URL): \
        postgres://, mysql:// or mariadb://, sqlite:. Table names default to \
        txmsg_outbox, txmsg_inbox and txmsg_migrations; --schema and the table options \
        must match the service's `txmsg::Tables`. Passwords in the URL are never printed.\n\n\
        Output is a table for people; --json prints one JSON document on stdout instead. \
        Errors are one line on stderr and a non-zero exit status (1 for a failure, \
        2 for a usage error).",
    after_help = "Examples:\n  \
        txmsg --database-url postgres://app@db/app migrate\n  \
        DATABASE_URL=sqlite:app.db txmsg status --json\n  \
        txmsg dead list --topic orders.created --older-than 1h\n  \
        txmsg dead replay 0190f3c2-7a61-7cc3-a1d4-5b0c2f8e9a10\n  \
        txmsg dead purge --older-than 30d\n  \
        txmsg inbox purge --group billing --older-than 7d"
)]
pub(crate) struct Cli {
    /// The database and the tables.
    #[command(flatten)]
    pub(crate) db: DbArgs,

    /// Print one JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the store is. Deliberately not `Debug`: it holds the URL.
#[derive(Args)]
pub(crate) struct DbArgs {
    /// Database URL: postgres://..., mysql://... (or mariadb://...), sqlite:PATH.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub(crate) database_url: Option<String>,

    /// Schema (PostgreSQL) or database (MySQL) of the tables; SQLite has none.
    #[arg(long, env = "TXMSG_SCHEMA", global = true, value_name = "NAME")]
    pub(crate) schema: Option<String>,

    /// Name of the outbox table [default: txmsg_outbox].
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) outbox_table: Option<String>,

    /// Name of the inbox table [default: txmsg_inbox].
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) inbox_table: Option<String>,

    /// Name of the migrations table [default: txmsg_migrations].
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) migrations_table: Option<String>,

    /// How long to try to connect before giving up (e.g. 10s, 1m).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_age, value_name = "AGE")]
    pub(crate) connect_timeout: Duration,
}

/// Options of `migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// Print the migrations as one SQL script (for sqlx migrate, refinery,
    /// Flyway, ...) instead of applying them; connects to nothing. Applied
    /// once, the script records each version, so `txmsg migrate` afterwards
    /// changes nothing.
    #[arg(long)]
    pub(crate) print_sql: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create or upgrade the txmsg tables; running it again changes nothing.
    Migrate(MigrateArgs),
    /// Per topic: pending, prepared, oldest pending age, dead, and sent in the last minute.
    Status(StatusArgs),
    /// Dead letters: messages that will not be published again without an operator.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Consumer groups' inboxes (processed idempotency keys).
    #[command(subcommand)]
    Inbox(InboxCommand),
}

/// `txmsg status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Count rows sent within this window (e.g. 1m, 15m, 1h).
    #[arg(long, default_value = "1m", value_parser = parse_age, value_name = "AGE")]
    pub(crate) sent_window: Duration,
    /// PostgreSQL log capture: the records' prefix (as in `Capture::log`);
    /// shows the log relay's slot: its lag, `wal_status`, reader and oldest
    /// unconfirmed message. Exits 1 if the slot is invalidated or missing.
    #[arg(long, value_name = "PREFIX")]
    pub(crate) log_prefix: Option<String>,
    /// The log relay's replication slot (with --log-prefix).
    #[arg(
        long,
        default_value = "txmsg_log",
        value_name = "SLOT",
        requires = "log_prefix"
    )]
    pub(crate) log_slot: String,
    /// The log relay's publication (with --log-prefix).
    #[arg(
        long,
        default_value = "txmsg_log",
        value_name = "NAME",
        requires = "log_prefix"
    )]
    pub(crate) log_publication: String,
}

/// `txmsg dead ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeadCommand {
    /// List dead letters, oldest first (the outbox's, or a consumer group's with --group).
    List(ListArgs),
    /// Show one dead letter in full: headers, payload, reason.
    Show(ShowArgs),
    /// Put dead outbox messages back to pending, attempts reset, for the relay to publish.
    ///
    /// Give message ids, or select by --topic, --key and --older-than; --all
    /// replays every dead letter. Works in batches and prints progress on stderr.
    Replay(ReplayArgs),
    /// Delete dead outbox messages for good.
    ///
    /// Select by --topic, --key and --older-than; --all deletes every dead
    /// letter. Works in batches and prints progress on stderr.
    Purge(PurgeArgs),
}

/// Which dead letters.
#[derive(Debug, Args)]
pub(crate) struct FilterArgs {
    /// Only this topic.
    #[arg(long)]
    pub(crate) topic: Option<String>,

    /// Only this ordering key.
    #[arg(long)]
    pub(crate) key: Option<String>,

    /// Only dead letters that went dead at least this long ago (e.g. 30m, 12h, 7d, 2w).
    #[arg(long, value_parser = parse_age, value_name = "AGE")]
    pub(crate) older_than: Option<Duration>,
}

impl FilterArgs {
    /// Whether any filter is set.
    pub(crate) fn any(&self) -> bool {
        self.topic.is_some() || self.key.is_some() || self.older_than.is_some()
    }
}

/// `txmsg dead list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub(crate) filter: FilterArgs,

    /// List a consumer group's dead letters instead of the outbox's.
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: Option<String>,

    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: u32,
}

/// `txmsg dead show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The message id (with --group: the dead letter's id).
    pub(crate) id: Uuid,

    /// A consumer group's dead letter instead of the outbox's.
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: Option<String>,
}

/// `txmsg dead replay`.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// Message ids to replay; without any, the filters choose.
    #[arg(conflicts_with_all = ["topic", "key", "older_than", "all"])]
    pub(crate) ids: Vec<Uuid>,

    /// Which dead letters.
    #[command(flatten)]
    pub(crate) filter: FilterArgs,

    /// Replay every dead letter (required when no id and no filter is given).
    #[arg(long)]
    pub(crate) all: bool,

    /// Say which dead letters would be replayed, and replay nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Rows per batch.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) batch: u32,
}

/// `txmsg dead purge`.
#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub(crate) filter: FilterArgs,

    /// Delete every dead letter (required when no filter is given).
    #[arg(long)]
    pub(crate) all: bool,

    /// Say how many dead letters would be deleted, and delete nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Rows per batch.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) batch: u32,
}

/// `txmsg inbox ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum InboxCommand {
    /// Delete a group's processed idempotency keys older than --older-than.
    ///
    /// A key deleted too early lets a redelivered message run its handler
    /// again: keep keys longer than the broker may redeliver.
    Purge(InboxPurgeArgs),
}

/// `txmsg inbox purge`.
#[derive(Debug, Args)]
pub(crate) struct InboxPurgeArgs {
    /// The consumer group.
    #[arg(long, value_name = "GROUP")]
    pub(crate) group: String,

    /// Delete keys processed at least this long ago (e.g. 7d). Must be
    /// longer than the group's redelivery horizon (see
    /// --allow-below-horizon).
    #[arg(long, value_parser = parse_age, value_name = "AGE")]
    pub(crate) older_than: Duration,

    /// Allow --older-than at or below the default redelivery horizon
    /// (redelivery_window 24h + 5 attempts x backoff_max 10s), for a group
    /// whose consumers are configured to stop redelivering sooner. A key
    /// purged while its message may still be redelivered lets that message
    /// be applied twice.
    #[arg(long)]
    pub(crate) allow_below_horizon: bool,

    /// Say how many keys would be deleted, and delete nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Rows per batch.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) batch: u32,
}
