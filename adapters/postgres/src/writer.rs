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

use sqlx::postgres::PgDatabaseError;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, SqlSafeStr, SqlStr};
use txmsg_core::{BoxFuture, Envelope, Error, Inserted, Lease, OutboxWriter, Result};
use txmsg_sql::{
    Arg, SqlOutboxWriter, Statements, Stmt, Template, first_held, inserted_with_commit,
    needs_key_check, outbox_args, repeated_key, run_script,
};

use crate::capture::{self, Capture, has_own_key};
use crate::dialect::PgBackend;
use crate::sql::{CommitInsert, Own};

/// PostgreSQL's SQLSTATE for a unique violation.
const UNIQUE_VIOLATION: &str = "23505";

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
                    checked: Template::numbered(&commit.table.checked.replace("{wake}", &wake)),
                    unchecked: Template::numbered(&commit.table.unchecked),
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
                key_insert: Template::numbered(&commit.log.key_insert),
                emit: Template::numbered(&commit.log.emit),
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
                    if needs_key_check(envelope, *lease) {
                        checked.fill(&args, literal, &mut script);
                    } else {
                        unchecked.fill(&args, literal, &mut script);
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
                        key_insert.fill(&key_args(envelope), literal, &mut script);
                        script.push_str(";\n");
                    }
                    let record = capture::encode(envelope);
                    emit.fill(
                        &[Arg::Text(prefix), Arg::Bytes(&record)],
                        literal,
                        &mut script,
                    );
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
            if let Some(envelope) = repeated_key(rows) {
                // Dropping the transaction rolls it back.
                return Err(Error::duplicate_of(envelope));
            }
            let script = self.script(rows);
            let sent = run_script::<PgBackend>(&mut txn, script).await;
            let leased = match sent {
                Ok(leased) => leased,
                Err(error) => {
                    if self.is_outbox_unique_violation(&error) {
                        // The failed transaction ends; the look-up runs in a new
                        // one (as above, for sqlx), which sees committed rows.
                        sqlx::raw_sql("ROLLBACK; BEGIN").execute(&mut *txn).await?;
                        let held = match self.mode {
                            Mode::Table { .. } => &self.sql.table.held,
                            Mode::Log { .. } => &self.sql.log.key_held,
                        };
                        if let Some(duplicate) =
                            first_held::<PgBackend>(&mut txn, &Stmt::new(held.clone()), rows)
                                .await?
                        {
                            return Err(duplicate);
                        }
                    }
                    return Err(error);
                }
            };
            if matches!(self.mode, Mode::Log { .. }) {
                // No row for a relay's fast path: the log relay reads them.
                return Ok(vec![Inserted::Unleased; rows.len()]);
            }
            inserted_with_commit(rows, leased)
        })
    }
}
