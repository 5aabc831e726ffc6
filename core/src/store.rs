//! The `Store` trait: the outbox table as the relay sees it, and the writer
//! that producers use inside their own transaction.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Envelope, Result};

/// A boxed future, for the object-safe [`OutboxWriter`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The relay that holds a row, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Id of the relay that holds the row.
    pub owner: Uuid,
    /// When the lease runs out and another relay may take the row.
    pub until: DateTime<Utc>,
}

/// What [`OutboxWriter::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inserted {
    /// Inserted under the requested lease: the writing process publishes it.
    Leased,
    /// Inserted without a lease, because an earlier message of the same key is
    /// still pending elsewhere: the poller publishes it, in key order.
    Unleased,
    /// Not inserted: the (topic, idempotency key) already exists.
    Duplicate,
}

/// Writes outbox rows on a connection the caller's transaction owns.
///
/// Implemented by each SQL store for its database; generated producer code
/// reaches it through [`Tx`](crate::Tx).
pub trait OutboxWriter<DB: sqlx::Database>: Debug + Send + Sync + 'static {
    /// Inserts `envelope` as a pending row.
    ///
    /// With `lease`, the row is inserted leased to that relay unless an
    /// earlier pending (or parked) row of the same (topic, key) belongs to no
    /// one or to another relay; then it is inserted unleased, so order per key
    /// is kept by the poller. A row with the same (topic, idempotency key) is
    /// not overwritten: the result is [`Inserted::Duplicate`] and the
    /// transaction stays usable.
    fn insert<'a>(
        &'a self,
        conn: &'a mut DB::Connection,
        envelope: &'a Envelope,
        lease: Option<Lease>,
    ) -> BoxFuture<'a, Result<Inserted>>;

    /// Whether [`insert_and_commit`](Self::insert_and_commit) sends the
    /// rows in the round trip of `COMMIT`. Then a transaction begun with
    /// [`Outbox::begin`](crate::Outbox::begin) holds its messages until
    /// [`Tx::commit`](crate::Tx::commit) instead of writing each at
    /// [`Tx::enqueue`](crate::Tx::enqueue). `false` by default.
    fn writes_with_commit(&self) -> bool {
        false
    }

    /// Inserts `rows` as [`insert`](Self::insert) does, each with its
    /// lease, and commits `txn`; for each row, whether it went in leased.
    ///
    /// A row whose (topic, idempotency key) is taken is an error here, not
    /// [`Inserted::Duplicate`]: the transaction is rolled back, business
    /// writes included, and the result is [`Error::Duplicate`](crate::Error::Duplicate)
    /// naming it. By default, each row is inserted with `insert` and then
    /// `txn` commits; a store that can sends the rows with `COMMIT`.
    ///
    /// # Errors
    ///
    /// [`Error::Duplicate`](crate::Error::Duplicate) as above (nothing was
    /// committed); [`Error::Database`](crate::Error::Database) if a
    /// statement or the commit failed (nothing was committed, or, if the
    /// connection broke during the commit, the outcome is unknown).
    fn insert_and_commit<'a, 'c: 'a>(
        &'a self,
        mut txn: sqlx::Transaction<'c, DB>,
        rows: &'a [(&'a Envelope, Option<Lease>)],
    ) -> BoxFuture<'a, Result<Vec<Inserted>>> {
        Box::pin(async move {
            let mut inserted = Vec::with_capacity(rows.len());
            for (envelope, lease) in rows {
                match self.insert(&mut txn, envelope, *lease).await? {
                    Inserted::Duplicate => return Err(crate::Error::duplicate_of(envelope)),
                    went_in => inserted.push(went_in),
                }
            }
            txn.commit().await?;
            Ok(inserted)
        })
    }
}

/// Writes and settles half messages on a connection of the producer: what a
/// [`HalfStore`] supplies to [`HalfOutbox`](crate::half::HalfOutbox), as
/// [`OutboxWriter`] is what a [`SqlStore`] supplies to
/// [`Outbox`](crate::Outbox).
pub trait HalfWriter<DB: sqlx::Database>: Debug + Send + Sync + 'static {
    /// Inserts `envelope` as a *prepared* row (not deliverable) whose first
    /// check-back is due at `check_at`. A row with the same (topic,
    /// idempotency key) is not overwritten: [`Inserted::Duplicate`].
    fn prepare<'a>(
        &'a self,
        conn: &'a mut DB::Connection,
        envelope: &'a Envelope,
        check_at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Inserted>>;

    /// Settles prepared row `id`, only if it is still prepared (the fence):
    /// [`Decision::Commit`](crate::half::Decision::Commit) makes it pending and
    /// due at `now`, [`Decision::Rollback`](crate::half::Decision::Rollback)
    /// deletes it. Otherwise reports what it found.
    fn resolve<'a>(
        &'a self,
        conn: &'a mut DB::Connection,
        id: Uuid,
        decision: crate::half::Decision,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<crate::half::ResolveOutcome>>;
}

/// Wakes a relay's poller; handed to [`Store::watch`].
#[derive(Debug, Clone)]
pub struct Waker(pub(crate) Arc<tokio::sync::Notify>);

impl Waker {
    /// Makes the poller look for rows now.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// A store whose outbox lives in an sqlx database, so producers can write to
/// it in their own transaction.
pub trait SqlStore: Store {
    /// The sqlx database.
    type Database: sqlx::Database;

    /// The connection pool.
    fn pool(&self) -> &sqlx::Pool<Self::Database>;

    /// The row writer for producers.
    fn writer(&self) -> Arc<dyn OutboxWriter<Self::Database>>;

    /// The statement that begins a producer's transaction, when the
    /// database's plain `BEGIN` is not the right one (SQLite's
    /// `BEGIN IMMEDIATE` takes the write lock up front, so that concurrent
    /// writers wait instead of failing). `None`, the default: plain `BEGIN`.
    fn begin_statement(&self) -> Option<&'static str> {
        None
    }

    /// Begins a transaction suitable for producers, with
    /// [`begin_statement`](SqlStore::begin_statement).
    ///
    /// [`Outbox`](crate::Outbox) begins its transactions from
    /// `begin_statement` directly, not through this method: a store that
    /// needs another statement overrides `begin_statement`, not `begin`.
    fn begin(&self) -> BoxFuture<'_, Result<sqlx::Transaction<'static, Self::Database>>> {
        let pool = self.pool();
        let statement = self.begin_statement();
        Box::pin(async move { begin_with(pool, statement).await })
    }
}

/// Begins a transaction on `pool` with `statement`, or plain `BEGIN`.
pub(crate) async fn begin_with<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>> {
    Ok(match statement {
        Some(statement) => pool.begin_with(statement).await?,
        None => pool.begin().await?,
    })
}

/// What the relay asks for when it polls.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest {
    /// The claiming relay and the lease it takes.
    pub lease: Lease,
    /// The current time.
    pub now: DateTime<Utc>,
    /// Most rows to claim.
    pub limit: u32,
    /// Most rows of one key to claim after the key's first.
    pub per_key_limit: u32,
    /// Whether a dead row holds back the later rows of its key.
    pub dead_parks_key: bool,
}

/// A failed publish attempt, to be recorded.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The row.
    pub id: Uuid,
    /// The relay that held it; the update only applies while it still does.
    pub owner: Uuid,
    /// When to try again.
    pub next_attempt_at: DateTime<Utc>,
    /// Why it failed.
    pub error: String,
}

/// A message that will not be published again without an operator.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message.
    pub envelope: Envelope,
    /// Why it is dead.
    pub reason: String,
    /// When it went dead.
    pub dead_at: DateTime<Utc>,
}

impl DeadLetter {
    /// A dead letter, for adapters that read them from storage.
    pub fn new(envelope: Envelope, reason: impl Into<String>, dead_at: DateTime<Utc>) -> Self {
        DeadLetter {
            envelope,
            reason: reason.into(),
            dead_at,
        }
    }
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DeadFilter {
    /// Only this topic.
    pub topic: Option<String>,
    /// Only this key.
    pub key: Option<String>,
    /// At most this many, oldest first. `None` means 100.
    pub limit: Option<u32>,
}

impl DeadFilter {
    /// Only dead letters of `topic`.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Only dead letters of `key`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// How many dead letters are listed when [`limit`](DeadFilter::limit)
    /// is not set.
    pub const DEFAULT_LIMIT: u32 = 100;

    /// The limit to apply: the one set, else [`DeadFilter::DEFAULT_LIMIT`].
    pub fn limit_or_default(&self) -> u32 {
        self.limit.unwrap_or(Self::DEFAULT_LIMIT)
    }

    /// At most `limit` dead letters.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// Counts of the outbox (build with `Default` and set the fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Rows waiting to be published.
    pub pending: u64,
    /// Creation time of the oldest pending row.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// Dead rows.
    pub dead: u64,
    /// Half messages stored prepared, not yet committed or rolled back.
    pub prepared: u64,
    /// Sent rows not yet purged.
    pub sent: u64,
}

/// The outbox rows of one topic, as [`Store::topic_stats`] counts them
/// (build with [`TopicStats::new`] and set the fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicStats {
    /// The topic.
    pub topic: String,
    /// Rows waiting to be published.
    pub pending: u64,
    /// Half messages stored prepared, not yet committed or rolled back.
    pub prepared: u64,
    /// Creation time of the oldest pending row.
    pub oldest_pending: Option<DateTime<Utc>>,
    /// Dead rows.
    pub dead: u64,
    /// Rows sent at or after the `since` of the query.
    pub sent_since: u64,
}

impl TopicStats {
    /// Counts of `topic`, all zero.
    pub fn new(topic: impl Into<String>) -> Self {
        TopicStats {
            topic: topic.into(),
            ..TopicStats::default()
        }
    }
}

/// The outbox table, as the relay and operators use it.
///
/// # Contract
///
/// - Row states: `pending` → `sent`, or `pending` → `dead` (→ `pending` again
///   by [`replay`](Store::replay)).
/// - [`claim`](Store::claim) leases rows atomically: two relays calling it at
///   once never get the same row while its lease runs. It returns, per
///   (topic, key), only the oldest pending rows, in id order, and never a row
///   of a key whose earlier row is leased to someone else, waiting for a
///   retry, or (with `dead_parks_key`) dead. Rows without a key have no order.
/// - Each method is one short transaction; errors leave the rows as they were.
///
/// # Cancel safety
///
/// Every method is a single transaction: dropping its future either commits
/// nothing or (if the commit was already sent) everything.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a txmsg store",
    note = "use a store adapter such as `txmsg::postgres::PgStore` or `txmsg::sqlite::SqliteStore`"
)]
pub trait Store: Debug + Clone + Send + Sync + 'static {
    /// Creates or upgrades the tables; applying it twice changes nothing.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;

    /// Leases due pending rows to `req.lease.owner`.
    fn claim(&self, req: &ClaimRequest) -> impl Future<Output = Result<Vec<Envelope>>> + Send;

    /// Marks rows sent at `at`.
    fn mark_sent(&self, ids: &[Uuid], at: DateTime<Utc>)
    -> impl Future<Output = Result<()>> + Send;

    /// Records a failed attempt: attempts + 1, retry at `next_attempt_at`, lease released.
    fn mark_failed(&self, failure: &Failure) -> impl Future<Output = Result<()>> + Send;

    /// Marks a pending or prepared row dead with `reason` (only while
    /// `owner` holds it, or nobody does). A pending row counts this as an
    /// attempt (attempts + 1): its dead letter shows every attempt the relay
    /// made, the last included, as a reason like "gave up after 10
    /// attempts" says. A dead half message remembers that it was prepared,
    /// so that [`resume`](HalfStore::resume) can put it back.
    fn mark_dead(
        &self,
        id: Uuid,
        owner: Uuid,
        reason: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Gives up `owner`'s lease on rows without counting an attempt.
    fn release(&self, ids: &[Uuid], owner: Uuid) -> impl Future<Output = Result<()>> + Send;

    /// Lists dead letters, oldest first.
    fn dead_letters(
        &self,
        filter: &DeadFilter,
    ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;

    /// Puts a dead row back to pending with attempts reset. `false` if it was not dead.
    fn replay(&self, id: Uuid, at: DateTime<Utc>) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes up to `limit` sent rows sent before `before`; returns how many.
    fn purge_sent(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Counts rows by state.
    fn stats(&self) -> impl Future<Output = Result<OutboxStats>> + Send;

    /// Counts the outbox per topic: pending, prepared and dead rows, the
    /// oldest pending row's creation time, and rows sent at or after
    /// `since`. One entry per topic that has any row in the table (sent rows
    /// not yet purged included), sorted by topic.
    ///
    /// Reads the whole table: meant for operators, not for a hot path.
    fn topic_stats(
        &self,
        since: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<TopicStats>>> + Send;

    /// The pending rows per topic: how many, and the oldest one's creation
    /// time (the other counts of [`TopicStats`] are 0). One entry per topic
    /// with a pending row, sorted by topic. Reads only pending rows: what
    /// the relay's per-topic gauges read every
    /// [`stats_interval`](crate::RelayConfig::stats_interval).
    ///
    /// The default counts through [`topic_stats`](Self::topic_stats), which
    /// reads the whole table; a store with an index of pending rows should
    /// answer from it.
    fn pending_by_topic(&self) -> impl Future<Output = Result<Vec<TopicStats>>> + Send {
        async {
            let all = self.topic_stats(DateTime::<Utc>::MAX_UTC).await?;
            Ok(all
                .into_iter()
                .filter(|t| t.pending > 0)
                .map(|t| {
                    let mut pending = TopicStats::new(t.topic);
                    pending.pending = t.pending;
                    pending.oldest_pending = t.oldest_pending;
                    pending
                })
                .collect())
        }
    }

    /// One dead row by its message id; `None` if there is no such row or it
    /// is not dead.
    fn dead_letter(&self, id: Uuid) -> impl Future<Output = Result<Option<DeadLetter>>> + Send;

    /// Deletes dead rows that match `filter` (topic, key) and went dead
    /// before `before`, at most `filter.limit` of them (100 when `None`),
    /// oldest first; returns how many. Call it again until it returns less
    /// than the limit to purge everything that matches. Other rows are never
    /// touched.
    fn purge_dead(
        &self,
        filter: &DeadFilter,
        before: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// A task that wakes the relay when another process committed rows, if
    /// the store has such a signal (PostgreSQL `LISTEN`/`NOTIFY`, when
    /// enabled). It runs until dropped and must not return early on errors
    /// (reconnect and go on). The default is `None`: the relay just polls.
    fn watch(&self, waker: Waker) -> Option<BoxFuture<'static, ()>> {
        let _ = waker;
        None
    }
}

/// A [`Store`] that keeps half messages (prepared rows settled by their
/// producer or by the check-back), as the
/// [`CheckBackWorker`](crate::half::CheckBackWorker) needs. A capability of
/// its own, as [`InboxStore`](crate::consumer::InboxStore) is, so that a
/// store without half messages is found out when the program is compiled.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not keep half messages",
    note = "half messages (the check-back worker, a `HalfOutbox`) need a store that implements `HalfStore`: `PgStore`, `MySqlStore` and `SqliteStore` do"
)]
pub trait HalfStore: SqlStore {
    /// The writer that prepares and settles half messages on a producer's
    /// connection.
    fn half_writer(&self) -> Arc<dyn HalfWriter<Self::Database>>;

    /// Leases prepared rows whose next check is due (`next_attempt_at <=
    /// now`) to `req.lease.owner`, oldest first, at most `req.limit`; two
    /// workers never get the same row while its lease runs. Keys play no
    /// part. Expired prepared rows are returned too.
    fn claim_prepared(
        &self,
        req: &ClaimRequest,
    ) -> impl Future<Output = Result<Vec<crate::half::ClaimedHalf>>> + Send;

    /// Records a check-back of prepared row `id` that answered Unknown (or
    /// failed): the next check is due at `next_check_at`, the lease is
    /// released, and `checks` grows by one if the check really ran
    /// (`counted`). Only while `owner` holds the row and it is prepared.
    fn record_check(
        &self,
        id: Uuid,
        owner: Uuid,
        next_check_at: DateTime<Utc>,
        counted: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Marks prepared row `id` dead with `reason` for the check-back worker:
    /// only while the row is still prepared and `owner` holds its lease, so
    /// a verdict never reaches a row its producer settled meanwhile. Returns
    /// `false` if the row was not changed for that reason.
    fn mark_prepared_dead(
        &self,
        id: Uuid,
        owner: Uuid,
        reason: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Settles prepared row `id` for the check-back worker, with the same
    /// fence as [`HalfWriter::resolve`].
    fn resolve_prepared(
        &self,
        id: Uuid,
        resolve: crate::half::Decision,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<crate::half::ResolveOutcome>> + Send;

    /// Puts a dead half message back to prepared with its checks reset,
    /// first check due at `at` (an operator's resume). `false` if `id` is not
    /// a dead half message.
    fn resume(&self, id: Uuid, at: DateTime<Utc>) -> impl Future<Output = Result<bool>> + Send;
}
