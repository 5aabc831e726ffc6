//! The producer's side of half messages: an [`Outbox`] on a store that keeps
//! them.

use std::ops::Deref;
use std::sync::Arc;

use crate::half::{Decision, Prepared, ResolveOutcome};
use crate::store::{HalfStore, HalfWriter, Inserted};
use crate::{Error, Message, Outbox, RelayHandle, Result};

/// An [`Outbox`] whose store keeps half messages: what a
/// `#[transactional_message(half, ...)]` producer takes.
///
/// Built only from a [`HalfStore`], so a half-message producer on a store
/// without half messages does not compile. Everything an [`Outbox`] does, it
/// does too (it dereferences to one).
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> txmsg::Result<()> {
/// use std::time::Duration;
/// use txmsg::prelude::*;
/// use txmsg::half::HalfOutbox;
/// use txmsg::sqlite::SqliteStore;
/// use txmsg::Message;
///
/// let store = SqliteStore::connect("sqlite::memory:").await?;
/// store.migrate().await?;
/// let outbox = HalfOutbox::new(&store);
/// let prepared = outbox
///     .prepare(Message::new("payments.charged", &7)?, Duration::from_secs(30))
///     .await?;
/// // ... the local work outside the store's database ...
/// prepared.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct HalfOutbox<DB: sqlx::Database> {
    outbox: Outbox<DB>,
    writer: Arc<dyn HalfWriter<DB>>,
}

impl<DB: sqlx::Database> Clone for HalfOutbox<DB> {
    fn clone(&self) -> Self {
        HalfOutbox {
            outbox: self.outbox.clone(),
            writer: Arc::clone(&self.writer),
        }
    }
}

impl<DB: sqlx::Database> Deref for HalfOutbox<DB> {
    type Target = Outbox<DB>;

    fn deref(&self) -> &Outbox<DB> {
        &self.outbox
    }
}

impl<DB: sqlx::Database> HalfOutbox<DB> {
    /// A half-message outbox on `store`, without a relay in this process.
    pub fn new<S: HalfStore<Database = DB>>(store: &S) -> Self {
        HalfOutbox {
            outbox: Outbox::new(store),
            writer: store.half_writer(),
        }
    }

    /// Hands committed messages to `relay` right after commit, as
    /// [`Outbox::with_relay`] does.
    #[must_use]
    pub fn with_relay(self, relay: &RelayHandle) -> Self {
        HalfOutbox {
            outbox: self.outbox.with_relay(relay),
            writer: self.writer,
        }
    }

    /// The plain outbox, for producers of ordinary messages.
    pub fn outbox(&self) -> &Outbox<DB> {
        &self.outbox
    }

    /// Stores `message` prepared, in a short transaction of its own, with its
    /// first check-back due after `check_after`: the half-message producer's
    /// first step, before local work outside the store's database.
    ///
    /// # Errors
    ///
    /// [`Error::Duplicate`] if the topic already has a message with this
    /// idempotency key; [`Error::Database`] if the store failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call either stored nothing or a prepared row
    /// its check-back resolves.
    pub async fn prepare(
        &self,
        message: Message,
        check_after: std::time::Duration,
    ) -> Result<Prepared<DB>> {
        let now = self.outbox.now();
        let envelope = message.into_envelope(now);
        let mut conn = self.outbox.acquire().await?;
        let check_at = crate::half::first_check_at(now, check_after);
        let inserted = self.writer.prepare(&mut conn, &envelope, check_at).await?;
        if inserted == Inserted::Duplicate {
            return Err(Error::Duplicate {
                topic: envelope.topic,
                idempotency_key: envelope.idempotency_key,
            });
        }
        Ok(Prepared::new(self.clone(), envelope.id, envelope.topic))
    }

    /// Settles prepared message `id` (fenced: only if still prepared).
    pub(crate) async fn resolve(
        &self,
        id: uuid::Uuid,
        decision: Decision,
    ) -> Result<ResolveOutcome> {
        let now = self.outbox.now();
        let mut conn = self.outbox.acquire().await?;
        self.writer.resolve(&mut conn, id, decision, now).await
    }
}
