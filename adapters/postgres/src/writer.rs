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
use sqlx::{AssertSqlSafe, Either, PgConnection, Postgres, Row};
use txmsg_core::{BoxFuture, Envelope, Error, Inserted, Lease, OutboxWriter, Result};
use txmsg_sql::{Arg, SqlOutboxWriter, Statements, outbox_args};

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
    checked: Template,
    unchecked: Template,
    sql: CommitInsert,
}

impl PgOutboxWriter {
    /// The writer of a store with statements `sql`, which wakes the relays
    /// of other processes on `channel` after leaving a row unleased.
    pub(crate) fn new(sql: &Arc<Statements<Own>>, channel: Option<String>) -> Self {
        let commit = &sql.own.commit_insert;
        // The channel is a checked identifier; it is encoded all the same.
        let wake = channel.as_deref().map_or_else(String::new, |channel| {
            let mut wake = String::from(", CASE WHEN leased THEN NULL ELSE pg_notify(");
            push_text(channel, &mut wake);
            wake.push_str(", '')::text END AS woke");
            wake
        });
        PgOutboxWriter {
            each: SqlOutboxWriter::new(sql.insert.clone(), channel),
            checked: Template::new(&commit.checked.replace("{wake}", &wake)),
            unchecked: Template::new(&commit.unchecked.replace("{wake}", &wake)),
            sql: commit.clone(),
        }
    }

    /// The script that inserts `rows` and commits: each insert returns one
    /// row, `leased`.
    fn script(&self, rows: &[(&Envelope, Option<Lease>)]) -> String {
        let mut script = String::with_capacity(
            rows.iter()
                .map(|(e, _)| 2 * e.payload.len() + 1500)
                .sum::<usize>(),
        );
        for (envelope, lease) in rows {
            let args = outbox_args(envelope, *lease);
            let template = if envelope.key.is_none() || lease.is_none() {
                &self.unchecked
            } else {
                &self.checked
            };
            template.fill(&args, &mut script);
            script.push_str(";\n");
        }
        script.push_str("COMMIT;\nBEGIN");
        script
    }

    /// Whether `error` is a unique violation on the outbox table.
    fn is_outbox_unique_violation(&self, error: &Error) -> bool {
        let Error::Database(sqlx::Error::Database(db)) = error else {
            return false;
        };
        let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() else {
            return false;
        };
        pg.code() == UNIQUE_VIOLATION
            && pg.table() == Some(self.sql.outbox.as_str())
            && (self.sql.schema.is_none() || pg.schema() == self.sql.schema.as_deref())
    }

    /// The first of `rows` whose (topic, idempotency key) a committed row
    /// holds, read after the failed transaction was rolled back.
    async fn held_by_another(
        &self,
        conn: &mut PgConnection,
        rows: &[(&Envelope, Option<Lease>)],
    ) -> Result<Option<Error>> {
        for (envelope, _) in rows {
            let held = sqlx::query(self.sql.held.clone())
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
        self.each.insert(conn, envelope, lease)
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
                        leased.push(row.try_get::<i64, _>("leased")? > 0);
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
            if leased.len() != rows.len() {
                return Err(Error::Database(sqlx::Error::Protocol(format!(
                    "the outbox insert of {} messages returned {} rows",
                    rows.len(),
                    leased.len()
                ))));
            }
            Ok(leased
                .into_iter()
                .map(|leased| {
                    if leased {
                        Inserted::Leased
                    } else {
                        Inserted::Unleased
                    }
                })
                .collect())
        })
    }
}
