//! Versioned migrations of the outbox and inbox tables.
//!
//! MySQL and MariaDB commit each DDL statement on its own, so a migration
//! cannot be one transaction: instead every step is idempotent (`CREATE TABLE
//! IF NOT EXISTS`, columns and indexes added only when `information_schema`
//! lacks them), and a migration interrupted halfway is completed by the next
//! call. Calls are serialised with `GET_LOCK`. A new version is one more
//! entry at the end of [`MIGRATIONS`]; a shipped entry is never edited.

use sqlx::MySqlPool;
use sqlx::mysql::MySqlConnection;
use txmsg_core::{BoxFuture, Result};

use crate::dialect::MySqlBackend;
use crate::sql::{RenderedStep, Sql};

/// How long `migrate` waits for a concurrent migration, in seconds.
const LOCK_WAIT_SECS: i64 = 120;

/// A table a step adds a column or an index to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Table {
    Outbox,
    Inbox,
}

/// One idempotent step of a migration. Templates hold the placeholders
/// `{outbox}`, `{inbox}` and `{consumer_dead}`.
#[derive(Debug)]
pub(crate) enum Step {
    /// A statement that is idempotent by itself.
    Sql(&'static str),
    /// `alter` adds `column` to `table`; run only when the column is missing.
    AddColumn {
        table: Table,
        column: &'static str,
        alter: &'static str,
    },
    /// `create` adds `index` to `table`; run only when the index is missing.
    AddIndex {
        table: Table,
        index: &'static str,
        create: &'static str,
    },
}

/// One migration.
#[derive(Debug)]
pub(crate) struct Migration {
    /// Version, increasing from 1.
    pub(crate) version: i32,
    /// What it does, recorded in the migrations table.
    pub(crate) description: &'static str,
    /// Its steps, in order.
    pub(crate) steps: &'static [Step],
}

/// Every migration, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "outbox and inbox tables",
        steps: &[Step::Sql(V1_OUTBOX), Step::Sql(V1_INBOX)],
    },
    Migration {
        version: 2,
        description: "consumer dead letters",
        steps: &[
            Step::AddIndex {
                table: Table::Inbox,
                index: "txmsg_processed_idx",
                create: "CREATE INDEX txmsg_processed_idx ON {inbox} (processed_at)",
            },
            Step::Sql(V2_CONSUMER_DEAD),
        ],
    },
    Migration {
        version: 3,
        description: "half messages",
        steps: &[Step::AddColumn {
            table: Table::Outbox,
            column: "half",
            alter: "ALTER TABLE {outbox} ADD COLUMN half BOOLEAN NOT NULL DEFAULT FALSE",
        }],
    },
    Migration {
        version: 4,
        description: "inbox keyed by topic",
        // Idempotency keys are unique per topic, so the inbox key is
        // (group, topic, idempotency key). One ALTER, so the column and the
        // new primary key come together or not at all. Keys recorded before
        // keep an empty topic and count for every topic until purged.
        steps: &[Step::AddColumn {
            table: Table::Inbox,
            column: "topic",
            alter: "ALTER TABLE {inbox} \
                    ADD COLUMN topic VARCHAR(255) NOT NULL DEFAULT '' AFTER consumer_group, \
                    DROP PRIMARY KEY, \
                    ADD PRIMARY KEY (consumer_group, topic, idempotency_key)",
        }],
    },
];

// Without partial indexes, the poller's and the check-back worker's index is
// (state, id): a claim reads the rows of one state in id order and stops at
// its limit. (topic, key, id) serves the order checks. Text is compared
// byte for byte (utf8mb4_bin): idempotency keys and topics are case
// sensitive.
const V1_OUTBOX: &str = "
CREATE TABLE IF NOT EXISTS {outbox} (
    id BINARY(16) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    `key` VARCHAR(255) NULL,
    idempotency_key VARCHAR(255) NOT NULL,
    payload LONGBLOB NOT NULL,
    headers LONGTEXT NOT NULL,
    state VARCHAR(16) NOT NULL CHECK (state IN ('prepared', 'pending', 'sent', 'dead')),
    attempts INT NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6) NOT NULL,
    lease_owner BINARY(16) NULL,
    lease_until DATETIME(6) NULL,
    checks INT NOT NULL DEFAULT 0,
    expires_at DATETIME(6) NULL,
    last_error TEXT NULL,
    created_at DATETIME(6) NOT NULL,
    sent_at DATETIME(6) NULL,
    dead_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY txmsg_idempotency_idx (topic, idempotency_key),
    KEY txmsg_state_idx (state, id),
    KEY txmsg_key_idx (topic, `key`, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

const V1_INBOX: &str = "
CREATE TABLE IF NOT EXISTS {inbox} (
    consumer_group VARCHAR(255) NOT NULL,
    idempotency_key VARCHAR(255) NOT NULL,
    processed_at DATETIME(6) NOT NULL,
    PRIMARY KEY (consumer_group, idempotency_key),
    KEY txmsg_processed_idx (processed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

// Dead letters keep the message as it was delivered: its id (`envelope_id`),
// topic, key, idempotency key (empty for a message that could not be read),
// headers and exact payload bytes.
const V2_CONSUMER_DEAD: &str = "
CREATE TABLE IF NOT EXISTS {consumer_dead} (
    id BINARY(16) NOT NULL,
    consumer_group VARCHAR(255) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    `key` VARCHAR(255) NULL,
    idempotency_key TEXT NOT NULL,
    headers LONGTEXT NOT NULL,
    payload LONGBLOB NOT NULL,
    envelope_id BINARY(16) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    reason TEXT NOT NULL,
    attempts INT NOT NULL DEFAULT 0,
    dead_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY txmsg_group_idx (consumer_group, dead_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// Applies the migrations not yet recorded.
///
/// The connection first takes a `GET_LOCK` lock named after the migrations
/// table, so concurrent calls (several processes starting at once) run one
/// after the other, and the later ones find nothing left to do. The
/// connection is closed afterwards rather than returned to the pool, so a
/// call dropped halfway never leaves the lock held by a pooled connection.
pub(crate) async fn migrate(pool: &MySqlPool, sql: &Sql) -> Result<()> {
    let mut conn = pool.acquire().await?;
    conn.close_on_drop();
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(&sql.own.migrate_lock)
        .bind(LOCK_WAIT_SECS)
        .fetch_one(&mut *conn)
        .await?;
    if got != Some(1) {
        return Err(sqlx::Error::Protocol(format!(
            "timed out waiting for lock `{}` held by a concurrent migration",
            sql.own.migrate_lock
        ))
        .into());
    }
    let outcome = apply(&mut conn, sql).await;
    let released = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(&sql.own.migrate_lock)
        .execute(&mut *conn)
        .await;
    outcome?;
    released?;
    Ok(())
}

async fn apply(conn: &mut MySqlConnection, sql: &Sql) -> Result<()> {
    let migrations = &sql.own.migrations;
    if let Some((schema, create)) = &migrations.create_schema {
        // Checked first: CREATE DATABASE IF NOT EXISTS needs the CREATE right
        // even when the database is already there.
        let exists: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
        )
        .bind(schema)
        .fetch_one(&mut *conn)
        .await?;
        if exists == 0 {
            sqlx::query(create.clone()).execute(&mut *conn).await?;
        }
    }
    migrations.apply::<MySqlBackend>(conn, "txmsg-mysql").await
}

impl txmsg_sql::Step<MySqlBackend> for RenderedStep {
    fn apply<'a>(&'a self, conn: &'a mut MySqlConnection) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let then = match self {
                RenderedStep::Sql(statement) => statement,
                RenderedStep::Unless {
                    exists,
                    schema,
                    table,
                    name,
                    then,
                } => {
                    let found: i64 = sqlx::query_scalar(*exists)
                        .bind(schema.as_deref())
                        .bind(table)
                        .bind(*name)
                        .fetch_one(&mut *conn)
                        .await?;
                    if found > 0 {
                        return Ok(());
                    }
                    then
                }
            };
            sqlx::query(then.clone()).execute(&mut *conn).await?;
            Ok(())
        })
    }

    /// MySQL has no `IF NOT EXISTS` for columns and indexes, and no `IF`
    /// outside stored programs: a conditional step is a prepared statement
    /// that is either the step or `DO 0`, chosen by the same
    /// `information_schema` count `migrate` makes.
    fn script(&self) -> String {
        match self {
            RenderedStep::Sql(statement) => statement.as_str().to_owned(),
            RenderedStep::Unless {
                exists,
                schema,
                table,
                name,
                then,
            } => {
                let schema = schema.as_deref().map_or_else(|| "NULL".to_owned(), literal);
                let mut args = [schema, literal(table), literal(name)].into_iter();
                let mut count = String::new();
                let mut parts = exists.split('?').peekable();
                while let Some(part) = parts.next() {
                    count.push_str(part);
                    if parts.peek().is_some() {
                        count.push_str(&args.next().unwrap_or_default());
                    }
                }
                format!(
                    "-- adds `{name}` to `{table}` unless it is there\n\
                     SET @txmsg_step = IF(({count}) > 0, 'DO 0', {then});\n\
                     PREPARE txmsg_step FROM @txmsg_step;\n\
                     EXECUTE txmsg_step;\n\
                     DEALLOCATE PREPARE txmsg_step",
                    then = literal(then.as_str())
                )
            }
        }
    }
}

/// `text` as a MySQL string literal: quotes doubled, backslashes escaped.
/// Only txmsg's own statements and checked identifiers reach it.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}
