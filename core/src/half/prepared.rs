//! The producer's side of a half message.

use std::fmt;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::half::HalfOutbox;
use crate::{Envelope, Error, Result};

/// How to settle a prepared message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Make it deliverable (pending).
    Commit,
    /// Delete it: it is never published.
    Rollback,
}

/// What settling a prepared message found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResolveOutcome {
    /// It was prepared and is now settled as asked.
    Done,
    /// It had already been committed (by the producer or a check-back).
    AlreadyCommitted,
    /// It had already been rolled back (the row is gone).
    AlreadyRolledBack,
    /// It is dead (unresolved after its checks, or expired).
    Dead,
}

/// A prepared message as the check-back worker claims it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClaimedHalf {
    /// The message.
    pub envelope: Envelope,
    /// Check-backs that really ran so far.
    pub checks: u32,
}

impl ClaimedHalf {
    /// A claimed prepared message, for stores that read them back.
    pub fn new(envelope: Envelope, checks: u32) -> Self {
        ClaimedHalf { envelope, checks }
    }
}

/// A half message stored prepared, waiting for the local work's outcome.
///
/// [`commit`](Prepared::commit) makes it deliverable (and wakes the relay);
/// [`rollback`](Prepared::rollback) deletes it. Dropped without either (a
/// panic, a crash), it stays prepared and the topic's check-back decides.
#[must_use = "a prepared message is resolved by commit() or rollback(), or later by its check-back"]
pub struct Prepared<DB: sqlx::Database> {
    outbox: HalfOutbox<DB>,
    id: Uuid,
    topic: String,
}

impl<DB: sqlx::Database> fmt::Debug for Prepared<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .finish()
    }
}

impl<DB: sqlx::Database> Prepared<DB> {
    pub(crate) fn new(outbox: HalfOutbox<DB>, id: Uuid, topic: String) -> Self {
        Prepared { outbox, id, topic }
    }

    /// Id of the message.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Topic of the message.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Makes the message deliverable; the relay publishes it.
    ///
    /// # Errors
    ///
    /// [`Error::RolledBack`] if a check-back rolled it back first (the local
    /// work should then be compensated); [`Error::Database`] if the store
    /// failed (the message stays prepared and its check-back decides).
    pub async fn commit(self) -> Result<()> {
        match self.outbox.resolve(self.id, Decision::Commit).await? {
            ResolveOutcome::Done | ResolveOutcome::AlreadyCommitted => {
                self.outbox.wake_relay();
                Ok(())
            }
            ResolveOutcome::AlreadyRolledBack | ResolveOutcome::Dead => {
                Err(Error::RolledBack { id: self.id })
            }
        }
    }

    /// Deletes the message: it is never published.
    ///
    /// Returns [`ResolveOutcome::AlreadyCommitted`] if a check-back committed it
    /// first: the message goes out although the local work failed, and the
    /// caller must compensate.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the store failed: the message stays prepared
    /// and its check-back decides.
    pub async fn rollback(self) -> Result<ResolveOutcome> {
        self.outbox.resolve(self.id, Decision::Rollback).await
    }
}

/// When the first check of a message prepared at `now` is due.
pub(crate) fn first_check_at(now: DateTime<Utc>, after: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(after)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(now)
}
