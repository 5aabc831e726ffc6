//! The outbox, half-message and inbox writers every SQL store hands
//! producers and handlers.

use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use sqlx::SqlStr;
use txmsg_core::half::{Decision, ResolveOutcome};
use txmsg_core::{BoxFuture, Envelope, HalfWriter, Inserted, Lease, OutboxWriter, Result};
use uuid::Uuid;

use crate::dialect::{Arg, Conn, Dialect, SqlRow, execute};
use crate::half::{SettleSql, settle};
use crate::stmt::Stmt;

/// The statements of a store's outbox insert. `insert` and `unchecked` take
/// (id, topic, key, idempotency key, payload, headers, created at, expires
/// at, lease owner, lease until).
#[derive(Debug, Clone)]
pub struct OutboxInsert {
    /// Inserts the row unless its (topic, idempotency key) is taken, leased
    /// to the owner unless an earlier row of its key is pending or dead and
    /// not the owner's (then the poller must publish it after that one).
    /// Without a [`holder`](Self::holder), it returns one row for an
    /// inserted message, with an integer column `leased` (not 0: leased),
    /// and none for a duplicate.
    pub insert: Stmt,
    /// A cheaper statement for the rows that need no per-key check (no key,
    /// or no lease), whose changed rows tell an insert from a duplicate;
    /// such a row is leased whenever a lease is given. `None`: `insert`
    /// writes every row.
    pub unchecked: Option<Stmt>,
    /// For a database that counts a duplicate as a changed row and cannot
    /// return the row (MySQL's `ON DUPLICATE KEY UPDATE` with found rows):
    /// reads the row holding (topic, idempotency key), with columns `id`
    /// and `leased` (as above).
    pub holder: Option<Stmt>,
    /// Wakes the relays of other processes after an insert left a row
    /// unleased, with the channel as its one parameter (PostgreSQL's
    /// `pg_notify`); run only when the store has a channel.
    pub notify: Option<SqlStr>,
}

/// Inserts outbox rows on the producer's connection, inside its
/// transaction, for a store of dialect `D`: the statements of an
/// [`OutboxInsert`], bound from the envelope in one way for every store.
#[derive(Debug)]
pub struct SqlOutboxWriter<D> {
    sql: OutboxInsert,
    channel: Option<String>,
    dialect: PhantomData<fn() -> D>,
}

impl<D> SqlOutboxWriter<D> {
    /// A writer running `sql`, which notifies `channel` (when set and the
    /// store has a notify statement) after an insert left a row unleased.
    pub fn new(sql: OutboxInsert, channel: Option<String>) -> Self {
        SqlOutboxWriter {
            sql,
            channel,
            dialect: PhantomData,
        }
    }
}

/// The row holding `envelope`'s (topic, idempotency key), read with
/// `holder`, if it is `envelope`'s own: `None` for a duplicate, and for a
/// row of another key that took its id (not inserted either).
async fn own_row<D: Dialect>(
    conn: &mut Conn<D>,
    holder: &Stmt,
    envelope: &Envelope,
) -> Result<Option<SqlRow<D>>> {
    let key = [
        Arg::Text(&envelope.topic),
        Arg::Text(&envelope.idempotency_key),
    ];
    match holder.fetch_optional::<D>(conn, &key).await? {
        Some(row) if D::id(&row, "id")? == envelope.id => Ok(Some(row)),
        _ => Ok(None),
    }
}

/// Whether `envelope`, written with `lease`, goes through the per-key
/// check of [`OutboxInsert::insert`]: it has an ordering key and a lease
/// (otherwise it goes in leased exactly when it has a lease).
pub fn needs_key_check(envelope: &Envelope, lease: Option<Lease>) -> bool {
    envelope.key.is_some() && lease.is_some()
}

/// The second of two `rows` with the same (topic, idempotency key), if any:
/// it could never go in, and a script that writes the rows of a
/// transaction with its `COMMIT` refuses it before sending.
pub fn repeated_key<'a>(rows: &[(&'a Envelope, Option<Lease>)]) -> Option<&'a Envelope> {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    rows.iter()
        .map(|(e, _)| *e)
        .find(|e| !seen.insert((e.topic.as_str(), e.idempotency_key.as_str())))
}

/// What each of `rows`, written with `COMMIT`, went in as: `leased` holds,
/// in order, whether each row that needed the per-key check
/// ([`needs_key_check`]) went in leased; the others went in leased exactly
/// when they had a lease.
///
/// # Errors
///
/// [`Error::Database`](txmsg_core::Error::Database) if `leased` does not
/// hold one flag per checked row.
pub fn inserted_with_commit(
    rows: &[(&Envelope, Option<Lease>)],
    leased: Vec<bool>,
) -> Result<Vec<Inserted>> {
    let checked = rows.iter().filter(|(e, l)| needs_key_check(e, *l)).count();
    if leased.len() != checked {
        return Err(txmsg_core::Error::Database(sqlx::Error::Protocol(format!(
            "the outbox inserts of {checked} messages with an ordering key returned {} rows",
            leased.len()
        ))));
    }
    let mut leased = leased.into_iter();
    Ok(rows
        .iter()
        .map(|(e, lease)| {
            let went_in_leased = if needs_key_check(e, *lease) {
                leased.next().unwrap_or(false)
            } else {
                lease.is_some()
            };
            went_in(went_in_leased)
        })
        .collect())
}

/// Runs `script` (several statements, values written in) on `conn` and
/// returns, in order, the integer column `leased` of each row it returned
/// that has one (not 0: leased); rows without the column are passed over.
///
/// # Errors
///
/// [`Error::Database`](txmsg_core::Error::Database) with the first
/// statement's error that failed; the statements after it did not run.
pub async fn run_script<D: Dialect>(conn: &mut Conn<D>, script: String) -> Result<Vec<bool>> {
    use futures_util::TryStreamExt;
    let mut leased = Vec::new();
    let mut results = sqlx::raw_sql(sqlx::AssertSqlSafe(script)).fetch_many(D::executor(conn));
    while let Some(result) = results.try_next().await? {
        if let sqlx::Either::Right(row) = result {
            match D::count(&row, "leased") {
                Ok(n) => leased.push(n > 0),
                // A row of another statement (a wake-up, a log record).
                Err(txmsg_core::Error::Database(sqlx::Error::ColumnNotFound(_))) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(leased)
}

/// The first of `rows` whose (topic, idempotency key) a committed row
/// holds, as [`Error::Duplicate`](txmsg_core::Error::Duplicate); `held`
/// reads a row by topic and idempotency key. For a commit that failed on a
/// unique key: run it after rolling back, so that it sees committed rows.
///
/// # Errors
///
/// [`Error::Database`](txmsg_core::Error::Database) if a read fails.
pub async fn first_held<D: Dialect>(
    conn: &mut Conn<D>,
    held: &Stmt,
    rows: &[(&Envelope, Option<Lease>)],
) -> Result<Option<txmsg_core::Error>> {
    for (envelope, _) in rows {
        let key = [
            Arg::Text(&envelope.topic),
            Arg::Text(&envelope.idempotency_key),
        ];
        if held.fetch_optional::<D>(conn, &key).await?.is_some() {
            return Ok(Some(txmsg_core::Error::duplicate_of(envelope)));
        }
    }
    Ok(None)
}

/// The arguments of an outbox insert ([`OutboxInsert::insert`]) writing
/// `envelope` with `lease`: id, topic, key, idempotency key, payload,
/// headers, created at, expires at, lease owner, lease until.
pub fn outbox_args(envelope: &Envelope, lease: Option<Lease>) -> Vec<Arg<'_>> {
    with_message(
        envelope,
        &[
            Arg::Time(envelope.created_at),
            Arg::OptTime(envelope.expires_at),
            Arg::OptId(lease.map(|l| l.owner)),
            Arg::OptTime(lease.map(|l| l.until)),
        ],
    )
}

/// The arguments of a statement that writes `envelope` as an outbox row:
/// its id, topic, key, idempotency key, payload and headers, then `rest`.
fn with_message<'a>(envelope: &'a Envelope, rest: &[Arg<'a>]) -> Vec<Arg<'a>> {
    let message = [
        Arg::Id(envelope.id),
        Arg::Text(&envelope.topic),
        Arg::OptText(envelope.key.as_deref()),
        Arg::Text(&envelope.idempotency_key),
        Arg::Bytes(&envelope.payload),
        Arg::Headers(&envelope.headers),
    ];
    [message.as_slice(), rest].concat()
}

/// What an insert that went in did, by whether its row is leased.
fn went_in(leased: bool) -> Inserted {
    if leased {
        Inserted::Leased
    } else {
        Inserted::Unleased
    }
}

impl<D: Dialect> SqlOutboxWriter<D> {
    async fn write(
        &self,
        conn: &mut Conn<D>,
        envelope: &Envelope,
        lease: Option<Lease>,
    ) -> Result<Inserted> {
        let args = outbox_args(envelope, lease);
        let needs_no_check = envelope.key.is_none() || lease.is_none();
        if let Some(unchecked) = self.sql.unchecked.as_ref().filter(|_| needs_no_check) {
            return Ok(match unchecked.execute::<D>(conn, &args).await? {
                0 => Inserted::Duplicate,
                _ => went_in(lease.is_some()),
            });
        }
        let Some(holder) = &self.sql.holder else {
            return Ok(
                match self.sql.insert.fetch_optional::<D>(conn, &args).await? {
                    Some(row) => went_in(D::count(&row, "leased")? > 0),
                    None => Inserted::Duplicate,
                },
            );
        };
        self.sql.insert.execute::<D>(conn, &args).await?;
        Ok(match own_row::<D>(conn, holder, envelope).await? {
            Some(row) => went_in(D::count(&row, "leased")? > 0),
            None => Inserted::Duplicate,
        })
    }
}

impl<D: Dialect> OutboxWriter<D::Db> for SqlOutboxWriter<D> {
    fn insert<'a>(
        &'a self,
        conn: &'a mut Conn<D>,
        envelope: &'a Envelope,
        lease: Option<Lease>,
    ) -> BoxFuture<'a, Result<Inserted>> {
        Box::pin(async move {
            let inserted = self.write(&mut *conn, envelope, lease).await?;
            if let (Inserted::Unleased, Some(notify), Some(channel)) =
                (inserted, &self.sql.notify, &self.channel)
            {
                // Delivered at commit, and only then; the database may fold
                // repeats within one transaction into one.
                execute::<D>(conn, notify, &[Arg::Text(channel)]).await?;
            }
            Ok(inserted)
        })
    }
}

/// Prepares and settles half messages on a producer's connection, for a
/// store of dialect `D`.
#[derive(Debug)]
pub struct SqlHalfWriter<D> {
    prepare: SqlStr,
    holder: Option<Stmt>,
    settle: SettleSql,
    after_commit_arg: Option<String>,
    dialect: PhantomData<fn() -> D>,
}

impl<D> SqlHalfWriter<D> {
    /// A writer with `prepare`, which inserts a prepared row unless its
    /// (topic, idempotency key) exists, with the parameters id, topic, key,
    /// idempotency key, payload, headers, first check at, created at,
    /// expires at (the order the text of a statement with positional `?`
    /// parameters has); and with `settle`, run with `after_commit_arg` (see
    /// [`settle`]).
    pub fn new(prepare: SqlStr, settle: SettleSql, after_commit_arg: Option<String>) -> Self {
        SqlHalfWriter {
            prepare,
            holder: None,
            settle,
            after_commit_arg,
            dialect: PhantomData,
        }
    }
}

impl<D> SqlHalfWriter<D> {
    /// Tells an insert from a duplicate by reading which row holds the
    /// (topic, idempotency key) with `holder` (parameters topic and
    /// idempotency key, column `id`), for a database that counts a
    /// duplicate as a changed row (MySQL's `ON DUPLICATE KEY UPDATE` with
    /// found rows).
    #[must_use]
    pub fn with_holder(mut self, holder: SqlStr) -> Self {
        self.holder = Some(Stmt::new(holder));
        self
    }
}

impl<D: Dialect> HalfWriter<D::Db> for SqlHalfWriter<D> {
    fn prepare<'a>(
        &'a self,
        conn: &'a mut Conn<D>,
        envelope: &'a Envelope,
        check_at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Inserted>> {
        Box::pin(async move {
            let args = with_message(
                envelope,
                &[
                    Arg::Time(check_at),
                    Arg::Time(envelope.created_at),
                    Arg::OptTime(envelope.expires_at),
                ],
            );
            let changed = execute::<D>(conn, &self.prepare, &args).await?;
            let inserted = match &self.holder {
                None => changed > 0,
                Some(holder) => own_row::<D>(conn, holder, envelope).await?.is_some(),
            };
            Ok(if inserted {
                Inserted::Unleased
            } else {
                Inserted::Duplicate
            })
        })
    }

    fn resolve<'a>(
        &'a self,
        conn: &'a mut Conn<D>,
        id: Uuid,
        decision: Decision,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<ResolveOutcome>> {
        Box::pin(settle::<D>(
            conn,
            &self.settle,
            id,
            decision,
            now,
            self.after_commit_arg.as_deref(),
        ))
    }
}

/// Records inbox keys and removes replayed dead letters on a handler's
/// connection, in one statement each, for a store of dialect `D`.
#[derive(Debug)]
pub struct SqlInbox<D> {
    record: SqlStr,
    remove_dead: SqlStr,
    dialect: PhantomData<fn() -> D>,
}

impl<D> SqlInbox<D> {
    /// A writer with `record`, which inserts a key unless the group has it
    /// (parameters group, topic, idempotency key, processed at; one row
    /// changed when it is new), and `remove_dead`, which deletes a consumer
    /// dead letter by id.
    pub fn new(record: SqlStr, remove_dead: SqlStr) -> Self {
        SqlInbox {
            record,
            remove_dead,
            dialect: PhantomData,
        }
    }
}

impl<D: Dialect> txmsg_core::consumer::InboxWriter<D::Db> for SqlInbox<D> {
    fn record<'a>(
        &'a self,
        conn: &'a mut Conn<D>,
        group: &'a str,
        topic: &'a str,
        idempotency_key: &'a str,
        at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let args = [
                Arg::Text(group),
                Arg::Text(topic),
                Arg::Text(idempotency_key),
                Arg::Time(at),
            ];
            Ok(execute::<D>(conn, &self.record, &args).await? == 1)
        })
    }

    fn remove_dead<'a>(&'a self, conn: &'a mut Conn<D>, id: Uuid) -> BoxFuture<'a, Result<bool>> {
        Box::pin(
            async move { Ok(execute::<D>(conn, &self.remove_dead, &[Arg::Id(id)]).await? > 0) },
        )
    }
}
