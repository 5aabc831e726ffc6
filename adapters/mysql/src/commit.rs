//! The producers' outbox writer: statements per message where a
//! transaction needs them, and otherwise the messages sent with `COMMIT`,
//! in its round trip.
//!
//! A transaction the outbox began holds its messages until it commits; then
//! one query of several statements (the driver asks for multi-statements)
//! carries every insert, the look-ups of whether each checked row went in
//! leased, `COMMIT` and a `BEGIN`. The values go into the text as literals,
//! each encoded so that no input can change the statement: text as
//! hexadecimal digits converted to `utf8mb4`, bytes and ids as hexadecimal
//! literals, times in their fixed format of digits.
//!
//! A repeated idempotency key is a duplicate-key error on its insert (the
//! script's insert has no `ON DUPLICATE KEY UPDATE`): the server runs
//! nothing after it, `COMMIT` included, and the writer rolls the
//! transaction back, business rows and all. The trailing `BEGIN` is there
//! for sqlx, as on PostgreSQL: its transaction still counts itself open and
//! rolls back when dropped.

use std::fmt::Write as _;
use std::sync::Arc;

use sqlx::MySql;
use sqlx::mysql::{MySqlConnection, MySqlDatabaseError};
use txmsg_core::{BoxFuture, Envelope, Error, Inserted, Lease, OutboxWriter, Result};
use txmsg_sql::{
    Arg, SqlOutboxWriter, Statements, Stmt, Template, first_held, inserted_with_commit,
    needs_key_check, outbox_args, repeated_key, run_script,
};

use crate::MySqlBackend;
use crate::sql::Own;

/// MySQL's error number of a duplicate key.
const DUPLICATE_KEY: u16 = 1062;

/// Appends `bytes` as a hexadecimal literal, `X'…'`.
fn push_hex(bytes: &[u8], out: &mut String) {
    out.push_str("X'");
    out.push_str(&hex::encode(bytes));
    out.push('\'');
}

/// Appends `text` as a `utf8mb4` string (binary collation, as the tables)
/// made of hexadecimal digits only, so that nothing in it can end the
/// literal.
fn push_text(text: &str, out: &mut String) {
    out.push_str("CONVERT(");
    push_hex(text.as_bytes(), out);
    out.push_str(" USING utf8mb4) COLLATE utf8mb4_bin");
}

/// Appends `arg` as a SQL literal: text, bytes, ids and headers as
/// hexadecimal digits; times in a format of digits, `-`, `:` and `.`.
fn literal(arg: &Arg<'_>, out: &mut String) {
    match *arg {
        Arg::Id(id) => push_hex(id.as_bytes(), out),
        Arg::Time(t) => {
            let _ = write!(
                out,
                "CAST('{}' AS DATETIME(6))",
                t.format("%Y-%m-%d %H:%M:%S%.6f")
            );
        }
        Arg::Text(text) => push_text(text, out),
        Arg::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Arg::Bool(b) => out.push_str(if b { "TRUE" } else { "FALSE" }),
        Arg::Bytes(bytes) => push_hex(bytes, out),
        Arg::Headers(headers) => push_text(&txmsg_sql::headers_to_text(headers), out),
        Arg::OptId(Some(id)) => literal(&Arg::Id(id), out),
        Arg::OptTime(Some(t)) => literal(&Arg::Time(t), out),
        Arg::OptText(Some(text)) => push_text(text, out),
        Arg::OptId(None) | Arg::OptTime(None) | Arg::OptText(None) => out.push_str("NULL"),
        Arg::Ids(ids) => {
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                push_hex(id.as_bytes(), out);
            }
        }
    }
}

/// The outbox writer of [`MySqlStore`](crate::MySqlStore).
///
/// [`insert`](OutboxWriter::insert) runs the shared store's statements (a
/// transaction made with [`Outbox::wrap`](txmsg_core::Outbox::wrap) writes
/// each message at once). [`insert_and_commit`](OutboxWriter::insert_and_commit)
/// sends every message of the transaction with its `COMMIT`, in one round
/// trip.
#[derive(Debug)]
pub(crate) struct MySqlOutboxWriter {
    each: SqlOutboxWriter<MySqlBackend>,
    insert: Template,
    leased_of: Template,
    held: Stmt,
}

impl MySqlOutboxWriter {
    /// The writer of a store with statements `sql`.
    pub(crate) fn new(sql: &Arc<Statements<Own>>, channel: Option<String>) -> Self {
        let commit = &sql.own.commit;
        MySqlOutboxWriter {
            each: SqlOutboxWriter::new(sql.insert.clone(), channel),
            insert: Template::positional(&commit.insert, Some(commit.insert_order)),
            leased_of: Template::positional(&commit.leased_of, None),
            held: Stmt::new(commit.held.clone()),
        }
    }

    /// The script that writes `rows` and commits: one row, `leased`, for
    /// each row that needs the per-key check ([`needs_check`]), nothing
    /// else with that column.
    fn script(&self, rows: &[(&Envelope, Option<Lease>)]) -> String {
        let mut script = String::with_capacity(
            rows.iter()
                .map(|(e, _)| 2 * e.payload.len() + 2000)
                .sum::<usize>(),
        );
        for (envelope, lease) in rows {
            let args = outbox_args(envelope, *lease);
            self.insert.fill(&args, literal, &mut script);
            script.push_str(";\n");
            if needs_key_check(envelope, *lease) {
                self.leased_of
                    .fill(&[Arg::Id(envelope.id)], literal, &mut script);
                script.push_str(";\n");
            }
        }
        script.push_str("COMMIT;\nBEGIN");
        script
    }
}

/// Whether `error` is a duplicate key (on the outbox table, or a business
/// table: the look-up after it tells).
fn is_duplicate_key(error: &Error) -> bool {
    let Error::Database(sqlx::Error::Database(db)) = error else {
        return false;
    };
    db.try_downcast_ref::<MySqlDatabaseError>()
        .is_some_and(|e| e.number() == DUPLICATE_KEY)
}

impl OutboxWriter<MySql> for MySqlOutboxWriter {
    fn insert<'a>(
        &'a self,
        conn: &'a mut MySqlConnection,
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
        mut txn: sqlx::Transaction<'c, MySql>,
        rows: &'a [(&'a Envelope, Option<Lease>)],
    ) -> BoxFuture<'a, Result<Vec<Inserted>>> {
        Box::pin(async move {
            if let Some(envelope) = repeated_key(rows) {
                // Dropping the transaction rolls it back.
                return Err(Error::duplicate_of(envelope));
            }
            let script = self.script(rows);
            let sent = run_script::<MySqlBackend>(&mut txn, script).await;
            let leased = match sent {
                Ok(leased) => leased,
                Err(error) => {
                    // Nothing after the failed statement ran: the transaction is
                    // open with the business rows in it. End it; the look-up
                    // runs in a new one (as above, for sqlx), which sees
                    // committed rows.
                    sqlx::raw_sql("ROLLBACK; BEGIN").execute(&mut *txn).await?;
                    if is_duplicate_key(&error)
                        && let Some(duplicate) =
                            first_held::<MySqlBackend>(&mut txn, &self.held, rows).await?
                    {
                        return Err(duplicate);
                    }
                    return Err(error);
                }
            };
            inserted_with_commit(rows, leased)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_take_their_arguments_in_the_given_order() {
        let t = Template::positional("SELECT ?, ?, ? FROM t", Some(&[2, 0, 2]));
        let mut out = String::new();
        t.fill(
            &[Arg::Int(1), Arg::Int(2), Arg::Text("x'y")],
            literal,
            &mut out,
        );
        assert_eq!(
            out,
            "SELECT CONVERT(X'782779' USING utf8mb4) COLLATE utf8mb4_bin, 1, \
             CONVERT(X'782779' USING utf8mb4) COLLATE utf8mb4_bin FROM t"
        );
    }

    #[test]
    fn literals_hold_no_quote_of_the_input() {
        let mut out = String::new();
        for arg in [
            Arg::Text("'; DROP TABLE t; --"),
            Arg::Bytes(b"\\'\0"),
            Arg::OptText(None),
            Arg::Id(uuid::Uuid::nil()),
        ] {
            literal(&arg, &mut out);
            out.push(' ');
        }
        assert_eq!(
            out,
            "CONVERT(X'273b2044524f50205441424c4520743b202d2d' USING utf8mb4) COLLATE utf8mb4_bin \
             X'5c2700' NULL X'00000000000000000000000000000000' "
        );
    }

    #[test]
    fn times_are_utc_with_microseconds() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-08T04:20:01.123456789Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        let mut out = String::new();
        literal(&Arg::Time(t), &mut out);
        assert_eq!(out, "CAST('2026-12-08 04:20:01.123456' AS DATETIME(6))");
    }
}
