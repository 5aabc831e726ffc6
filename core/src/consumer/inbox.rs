//! The inbox: processed idempotency keys per consumer group, and the
//! consumer's dead letters.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::BoxFuture;
use crate::{DeadFilter, Envelope, Result, SqlStore};

/// Records processed keys on a connection the handler's transaction owns.
pub trait InboxWriter<DB: sqlx::Database>: Debug + Send + Sync + 'static {
    /// Records that `group` processed the message of `topic` with
    /// `idempotency_key` at `at`.
    ///
    /// Idempotency keys are unique per topic (as in the outbox), so the same
    /// key on two topics is two messages. Returns `false` (and changes
    /// nothing) if the (topic, key) was recorded before: the message is a
    /// duplicate and its handler must not run. A key recorded by a version
    /// that kept no topic counts for every topic until it is purged. The
    /// transaction stays usable either way. A concurrent transaction
    /// recording the same key makes this call wait until it ends.
    fn record<'a>(
        &'a self,
        conn: &'a mut DB::Connection,
        group: &'a str,
        topic: &'a str,
        idempotency_key: &'a str,
        at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Removes a consumer dead letter in the caller's transaction (a replay
    /// that succeeds removes it together with its effects). Returns whether
    /// it existed.
    fn remove_dead<'a>(
        &'a self,
        conn: &'a mut DB::Connection,
        id: Uuid,
    ) -> BoxFuture<'a, Result<bool>>;
}

/// A message a consumer group gave up on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerDeadLetter {
    /// Id of the dead letter (not of the message).
    pub id: Uuid,
    /// The consumer group.
    pub group: String,
    /// The message as delivered; for an undecodable one, what could be read
    /// (topic, headers, body) with an empty idempotency key.
    pub envelope: Envelope,
    /// Why the group gave up: the handler's last error, or why the message
    /// could not be read.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it went dead.
    pub dead_at: DateTime<Utc>,
}

impl ConsumerDeadLetter {
    /// A dead letter, for stores that read them back.
    pub fn new(
        id: Uuid,
        group: impl Into<String>,
        envelope: Envelope,
        reason: impl Into<String>,
        attempts: u32,
        dead_at: DateTime<Utc>,
    ) -> Self {
        ConsumerDeadLetter {
            id,
            group: group.into(),
            envelope,
            reason: reason.into(),
            attempts,
            dead_at,
        }
    }
}

/// A store that also keeps consumer groups' inboxes and dead letters.
///
/// # Contract
///
/// - The inbox table has one row per (group, topic, idempotency key); the
///   [`InboxWriter`] inserts it in the handler's transaction. Rows recorded
///   before the topic was part of the key have an empty topic and count for
///   every topic.
/// - Consumer dead letters are kept per group until replayed or purged.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot keep an inbox",
    note = "use a SQL store adapter such as `txmsg::postgres::PgStore` or `txmsg::sqlite::SqliteStore`"
)]
pub trait InboxStore: SqlStore {
    /// The inbox writer for handlers.
    fn inbox(&self) -> Arc<dyn InboxWriter<Self::Database>>;

    /// Keeps a message `group` gave up on.
    fn add_consumer_dead(
        &self,
        dead: &ConsumerDeadLetter,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Lists `group`'s dead letters, oldest first (filter by topic and key).
    fn consumer_dead_letters(
        &self,
        group: &str,
        filter: &DeadFilter,
    ) -> impl Future<Output = Result<Vec<ConsumerDeadLetter>>> + Send;

    /// One of `group`'s dead letters by its id.
    fn consumer_dead_letter(
        &self,
        group: &str,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<ConsumerDeadLetter>>> + Send;

    /// Every consumer group that has dead letters, with how many, by group
    /// name: where to look with
    /// [`consumer_dead_letters`](Self::consumer_dead_letters).
    fn consumer_dead_groups(&self) -> impl Future<Output = Result<Vec<(String, u64)>>> + Send;

    /// How many inbox keys `group` recorded before `before`: what
    /// [`purge_inbox`](Self::purge_inbox) with that time would delete, all
    /// batches together. With a `before` in the future, whether the group
    /// has recorded anything at all.
    fn count_inbox(
        &self,
        group: &str,
        before: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Deletes up to `limit` of `group`'s inbox keys processed before
    /// `before`; returns how many. Runs in its own short transaction, never
    /// blocking producers or handlers.
    fn purge_inbox(
        &self,
        group: &str,
        before: DateTime<Utc>,
        limit: u32,
    ) -> impl Future<Output = Result<u64>> + Send;
}
