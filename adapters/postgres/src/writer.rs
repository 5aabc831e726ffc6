//! The producers' outbox writer: statements per message where a
//! transaction needs them, and otherwise the messages sent with `COMMIT`,
//! in its round trip.
//!
//! A transaction the outbox began holds its messages until it commits; then
//! one simple-query message carries every insert, `COMMIT` and a `BEGIN`.
//! The values go into the text as literals, each one encoded so that no
//! input can change the statement: text, bytes and JSON as hexadecimal
//! digits decoded by the server, ids and times in their own fixed formats.
//!
//! The trailing `BEGIN` is there for sqlx: its transaction still counts
//! itself open after the script committed, and rolls back when dropped. The
//! rollback (queued, sent when the connection goes back to the pool) then
//! ends an empty transaction; ending none would be logged by the server as
//! a warning on every commit.

use std::fmt::Write as _;
use std::sync::Arc;

use futures_util::TryStreamExt;
use sqlx::postgres::PgDatabaseError;
use sqlx::{AssertSqlSafe, Either, PgConnection, Postgres, Row, SqlSafeStr, SqlStr};
use txmsg_core::{BoxFuture, Envelope, Error, Inserted, Lease, OutboxWriter, Result};
use txmsg_sql::{Arg, SqlOutboxWriter, Statements, outbox_args};

use crate::capture::{self, Capture, has_own_key};
use crate::dialect::PgBackend;
use crate::sql::{CommitInsert, Own};

/// PostgreSQL's SQLSTATE for a unique violation.
const UNIQUE_VIOLATION: &str = "23505";

/// One part of a statement template: text as it is, or parameter `$n`.
#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Param(usize),
}

/// A statement template with `$1`, `$2`, ... where literals go.
#[derive(Debug, Clone)]
struct Template(Vec<Part>);

impl Template {
    /// `text` split at its parameters. Only the store's own statement text
    /// comes here, which has no `$` but in its parameters.
    fn new(text: &str) -> Self {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len() - at - 1, |n| n);
            match rest[at + 1..at + 1 + digits].parse::<usize>() {
                Ok(n) if n > 0 => {
                    parts.push(Part::Text(rest[..at].to_owned()));
                    parts.push(Part::Param(n - 1));
                }
                _ => parts.push(Part::Text(rest[..at + 1 + digits].to_owned())),
            }
            rest = &rest[at + 1 + digits..];
        }
        parts.push(Part::Text(rest.to_owned()));
        Template(parts)
    }

    /// Appends the statement with `args` in place of its parameters.
    fn fill(&self, args: &[Arg<'_>], out: &mut String) {
        for part in &self.0 {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Param(n) => match args.get(*n) {
                    Some(arg) => literal(arg, out),
                    None => out.push_str("NULL"),
                },
            }
        }
    }
}

/// Appends `bytes` as lowercase hexadecimal digits.
fn push_hex(bytes: &[u8], out: &mut String) {
    out.push_str(&hex::encode(bytes));
}

/// Appends `text` as an expression of type `text` made of hexadecimal
/// digits only, so that nothing in it can end the literal.
fn push_text(text: &str, out: &mut String) {
    out.push_str("convert_from(decode('");
    push_hex(text.as_bytes(), out);
    out.push_str("', 'hex'), 'UTF8')");
}

/// Appends `arg` as a typed SQL literal. Text, bytes and JSON are written
/// as hexadecimal digits; ids and times are written by their own types in
/// formats of digits, letters `a`-`f`/`T`/`Z` and punctuation, never quotes.
fn literal(arg: &Arg<'_>, out: &mut String) {
    match *arg {
        Arg::Id(id) => {
            let _ = write!(out, "'{}'::uuid", id.hyphenated());
        }
        Arg::OptId(id) => match id {
            Some(id) => literal(&Arg::Id(id), out),
            None => out.push_str("NULL::uuid"),
        },
        Arg::Time(t) => {
            let _ = write!(
                out,
                "'{}'::timestamptz",
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
        }
        Arg::OptTime(t) => match t {
            Some(t) => literal(&Arg::Time(t), out),
            None => out.push_str("NULL::timestamptz"),
        },
        Arg::Text(text) => push_text(text, out),
        Arg::OptText(text) => match text {
            Some(text) => push_text(text, out),
            None => out.push_str("NULL::text"),
        },
        Arg::Int(n) => {
            let _ = write!(out, "{n}::int8");
        }
        Arg::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Arg::Bytes(bytes) => {
            out.push_str("decode('");
            push_hex(bytes, out);
            out.push_str("', 'hex')");
        }
        Arg::Headers(headers) => {
            let json = txmsg_sql::headers_to_json(headers).to_string();
            push_text(&json, out);
            out.push_str("::jsonb");
        }
        Arg::Ids(ids) => {
            out.push_str("ARRAY[");
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                literal(&Arg::Id(*id), out);
            }
            out.push_str("]::uuid[]");
        }
    }
}

/// The outbox writer of [`PgStore`](crate::PgStore).
///
/// [`insert`](OutboxWriter::insert) runs the shared store's statements (a
/// transaction made with [`Outbox::wrap`](txmsg_core::Outbox::wrap) writes
/// each message at once). [`insert_and_commit`](OutboxWriter::insert_and_commit)
/// sends every message of the transaction with its `COMMIT`, in one round
/// trip.
#[derive(Debug)]
pub(crate) struct PgOutboxWriter {
    each: SqlOutboxWriter<PgBackend>,
    mode: Mode,
    sql: CommitInsert,
}

/// What a message is written as.
#[derive(Debug)]
enum Mode {
    /// An outbox row.
    Table {
        checked: Template,
        unchecked: Template,
        /// Wakes other processes' relays, with the store's channel.
        wake: Option<String>,
    },
    /// A record in the log under `prefix`, and the key in the keys table
    /// when the message has one of its own.
    Log {
        prefix: String,
        key_insert: Template,
        emit: Template,
        key_insert_bound: SqlStr,
        emit_bound: SqlStr,
    },
}

impl PgOutboxWriter {
    /// The writer of a store with statements `sql` capturing messages as
    /// `capture` says, which wakes the relays of other processes on
    /// `channel` after leaving an outbox row unleased.
    pub(crate) fn new(
        sql: &Arc<Statements<Own>>,
        channel: Option<String>,
        capture: &Capture,
    ) -> Self {
        let commit = &sql.own.commit_insert;
        let mode = match capture {
            Capture::Table => {
                // The channel is a checked identifier; it is encoded all the
                // same.
                let wake = channel.as_deref().map_or_else(String::new, |channel| {
                    let mut wake = String::from(", CASE WHEN leased THEN NULL ELSE pg_notify(");
                    push_text(channel, &mut wake);
                    wake.push_str(", '')::text END AS woke");
                    wake
                });
                Mode::Table {
                    checked: Template::new(&commit.table.checked.replace("{wake}", &wake)),
                    unchecked: Template::new(&commit.table.unchecked),
                    wake: channel.as_deref().map(|channel| {
                        let mut wake = String::from("SELECT pg_notify(");
                        push_text(channel, &mut wake);
                        wake.push_str(", '')");
                        wake
                    }),
                }
            }
            Capture::Log { prefix } => Mode::Log {
                prefix: prefix.as_str().to_owned(),
                key_insert: Template::new(&commit.log.key_insert),
                emit: Template::new(&commit.log.emit),
                key_insert_bound: AssertSqlSafe(format!(
                    "{} ON CONFLICT DO NOTHING",
                    commit.log.key_insert
                ))
                .into_sql_str(),
                emit_bound: AssertSqlSafe(commit.log.emit.clone()).into_sql_str(),
            },
        };
        PgOutboxWriter {
            each: SqlOutboxWriter::new(sql.insert.clone(), channel),
            mode,
            sql: commit.clone(),
        }
    }

    /// The script that writes `rows` and commits: one row, `leased`, for
    /// each row that needs the per-key check ([`needs_check`]), nothing
    /// else with that column.
    fn script(&self, rows: &[(&Envelope, Option<Lease>)]) -> String {
        let mut script = String::with_capacity(
            rows.iter()
                .map(|(e, _)| 2 * e.payload.len() + 1500)
                .sum::<usize>(),
        );
        let mut wakes = false;
        for (envelope, lease) in rows {
            match &self.mode {
                Mode::Table {
                    checked, unchecked, ..
                } => {
                    let args = outbox_args(envelope, *lease);
                    if needs_check(envelope, *lease) {
                        checked.fill(&args, &mut script);
                    } else {
                        unchecked.fill(&args, &mut script);
                        wakes |= lease.is_none();
                    }
                }
                Mode::Log {
                    prefix,
                    key_insert,
                    emit,
                    ..
                } => {
                    if has_own_key(envelope) {
                        key_insert.fill(&key_args(envelope), &mut script);
                        script.push_str(";\n");
                    }
                    let record = capture::encode(envelope);
                    emit.fill(&[Arg::Text(prefix), Arg::Bytes(&record)], &mut script);
                }
            }
            script.push_str(";\n");
        }
        if let Mode::Table {
            wake: Some(wake), ..
        } = &self.mode
            && wakes
        {
            // Delivered at commit; repeats in one transaction fold into one.
            script.push_str(wake);
            script.push_str(";\n");
        }
        script.push_str("COMMIT;\nBEGIN");
        script
    }

    /// Writes `envelope` to the log on `conn` (and its key, if it has one
    /// of its own), with bound statements.
    async fn log_one(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        prefix: &str,
        key_insert: &SqlStr,
        emit: &SqlStr,
    ) -> Result<Inserted> {
        if has_own_key(envelope) {
            let done = sqlx::query(key_insert.clone())
                .bind(&envelope.topic)
                .bind(&envelope.idempotency_key)
                .bind(envelope.created_at)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Ok(Inserted::Duplicate);
            }
        }
        sqlx::query(emit.clone())
            .bind(prefix)
            .bind(capture::encode(envelope))
            .execute(&mut *conn)
            .await?;
        Ok(Inserted::Unleased)
    }

    /// Whether `error` is a unique violation on the outbox table (the keys
    /// table, in log capture).
    fn is_outbox_unique_violation(&self, error: &Error) -> bool {
        let Error::Database(sqlx::Error::Database(db)) = error else {
            return false;
        };
        let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() else {
            return false;
        };
        let table = match self.mode {
            Mode::Table { .. } => &self.sql.table.name,
            Mode::Log { .. } => &self.sql.log.keys,
        };
        pg.code() == UNIQUE_VIOLATION
            && pg.table() == Some(table.as_str())
            && (self.sql.schema.is_none() || pg.schema() == self.sql.schema.as_deref())
    }

    /// The first of `rows` whose (topic, idempotency key) a committed row
    /// holds, read after the failed transaction was rolled back.
    async fn held_by_another(
        &self,
        conn: &mut PgConnection,
        rows: &[(&Envelope, Option<Lease>)],
    ) -> Result<Option<Error>> {
        let held = match self.mode {
            Mode::Table { .. } => &self.sql.table.held,
            Mode::Log { .. } => &self.sql.log.key_held,
        };
        for (envelope, _) in rows {
            let held = sqlx::query(held.clone())
                .bind(&envelope.topic)
                .bind(&envelope.idempotency_key)
                .fetch_optional(&mut *conn)
                .await?;
            if held.is_some() {
                return Ok(Some(Error::duplicate_of(envelope)));
            }
        }
        Ok(None)
    }
}

/// Whether `envelope`, written with `lease`, goes through the per-key
/// check: it has an ordering key and a lease (otherwise it goes in leased
/// exactly when it has a lease).
fn needs_check(envelope: &Envelope, lease: Option<Lease>) -> bool {
    envelope.key.is_some() && lease.is_some()
}

/// The arguments of the keys table's insert: topic, idempotency key,
/// created at.
fn key_args(envelope: &Envelope) -> [Arg<'_>; 3] {
    [
        Arg::Text(&envelope.topic),
        Arg::Text(&envelope.idempotency_key),
        Arg::Time(envelope.created_at),
    ]
}

/// The second of two `rows` with the same (topic, idempotency key), if any:
/// it could never go in.
fn repeated<'a>(rows: &[(&'a Envelope, Option<Lease>)]) -> Option<&'a Envelope> {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    rows.iter()
        .map(|(e, _)| *e)
        .find(|e| !seen.insert((e.topic.as_str(), e.idempotency_key.as_str())))
}

impl OutboxWriter<Postgres> for PgOutboxWriter {
    fn insert<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        envelope: &'a Envelope,
        lease: Option<Lease>,
    ) -> BoxFuture<'a, Result<Inserted>> {
        match &self.mode {
            Mode::Table { .. } => self.each.insert(conn, envelope, lease),
            Mode::Log {
                prefix,
                key_insert_bound,
                emit_bound,
                ..
            } => Box::pin(self.log_one(conn, envelope, prefix, key_insert_bound, emit_bound)),
        }
    }

    fn writes_with_commit(&self) -> bool {
        true
    }

    fn insert_and_commit<'a, 'c: 'a>(
        &'a self,
        mut txn: sqlx::Transaction<'c, Postgres>,
        rows: &'a [(&'a Envelope, Option<Lease>)],
    ) -> BoxFuture<'a, Result<Vec<Inserted>>> {
        Box::pin(async move {
            if let Some(envelope) = repeated(rows) {
                // Dropping the transaction rolls it back.
                return Err(Error::duplicate_of(envelope));
            }
            let script = self.script(rows);
            let mut leased = Vec::with_capacity(rows.len());
            let sent: Result<()> = async {
                let mut results = sqlx::raw_sql(AssertSqlSafe(script)).fetch_many(&mut *txn);
                while let Some(result) = results.try_next().await? {
                    if let Either::Right(row) = result {
                        match row.try_get::<i64, _>("leased") {
                            Ok(n) => leased.push(n > 0),
                            // A wake-up's or a log record's row.
                            Err(sqlx::Error::ColumnNotFound(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Ok(())
            }
            .await;
            if let Err(error) = sent {
                if self.is_outbox_unique_violation(&error) {
                    // The failed transaction ends; the look-up runs in a new
                    // one (as above, for sqlx), which sees committed rows.
                    sqlx::raw_sql("ROLLBACK; BEGIN").execute(&mut *txn).await?;
                    if let Some(duplicate) = self.held_by_another(&mut txn, rows).await? {
                        return Err(duplicate);
                    }
                }
                return Err(error);
            }
            if matches!(self.mode, Mode::Log { .. }) {
                // No row for a relay's fast path: the log relay reads them.
                return Ok(vec![Inserted::Unleased; rows.len()]);
            }
            let checked = rows.iter().filter(|(e, l)| needs_check(e, *l)).count();
            if leased.len() != checked {
                return Err(Error::Database(sqlx::Error::Protocol(format!(
                    "the outbox inserts of {checked} messages with an ordering key returned {} rows",
                    leased.len()
                ))));
            }
            let mut leased = leased.into_iter();
            Ok(rows
                .iter()
                .map(|(e, lease)| {
                    let went_in_leased = if needs_check(e, *lease) {
                        leased.next().unwrap_or(false)
                    } else {
                        lease.is_some()
                    };
                    if went_in_leased {
                        Inserted::Leased
                    } else {
                        Inserted::Unleased
                    }
                })
                .collect())
        })
    }
}
