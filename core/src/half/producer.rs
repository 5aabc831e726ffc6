//! The capability a half-message producer needs, whoever keeps the half
//! message: a store ([`HalfOutbox`](super::HalfOutbox)) or a broker with
//! half messages of its own (RocketMQ's transactional messages).

use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

use super::ResolveOutcome;
use crate::{Message, Result};

/// Keeps half messages: stores one prepared (not deliverable) before the
/// local work, to be committed or rolled back by its outcome. What a
/// `#[transactional_message(half, ...)]` producer's `{name}_and_commit`
/// takes.
///
/// Implemented by [`HalfOutbox`](super::HalfOutbox) (the store keeps the
/// message, the relay publishes it once committed) and by brokers whose
/// own half messages do the same (RocketMQ's).
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not keep half messages",
    note = "a half producer takes a `txmsg::half::HalfOutbox` on a store with half messages, or a broker's half producer such as `txmsg::rocketmq::RocketHalfProducer`"
)]
pub trait HalfProducer: Send + Sync {
    /// A message prepared by [`prepare`](HalfProducer::prepare).
    type Prepared: HalfMessage;

    /// Stores `message` prepared, its first check-back due after
    /// `check_after`.
    ///
    /// # Errors
    ///
    /// [`Error::Duplicate`](crate::Error::Duplicate) where the keeper refuses
    /// a repeated idempotency key; the keeper's error if it failed.
    fn prepare(
        &self,
        message: Message,
        check_after: Duration,
    ) -> impl Future<Output = Result<Self::Prepared>> + Send;
}

/// A half message stored prepared, waiting for the local work's outcome.
/// Dropped without [`commit`](HalfMessage::commit) or
/// [`rollback`](HalfMessage::rollback), it stays prepared and its topic's
/// check-back decides.
pub trait HalfMessage: Send {
    /// Id of the message.
    fn id(&self) -> Uuid;

    /// Topic of the message.
    fn topic(&self) -> &str;

    /// Makes the message deliverable.
    ///
    /// # Errors
    ///
    /// [`Error::RolledBack`](crate::Error::RolledBack) if a check-back
    /// rolled it back first, where the keeper can tell; the keeper's error
    /// if it failed (the check-back then decides).
    fn commit(self) -> impl Future<Output = Result<()>> + Send;

    /// Drops the message: it is never delivered. Returns
    /// [`ResolveOutcome::AlreadyCommitted`] if a check-back committed it
    /// first, where the keeper can tell.
    ///
    /// # Errors
    ///
    /// The keeper's error if it failed (the check-back then decides).
    fn rollback(self) -> impl Future<Output = Result<ResolveOutcome>> + Send;
}

impl<DB: sqlx::Database> HalfProducer for super::HalfOutbox<DB> {
    type Prepared = super::Prepared<DB>;

    fn prepare(
        &self,
        message: Message,
        check_after: Duration,
    ) -> impl Future<Output = Result<Self::Prepared>> + Send {
        super::HalfOutbox::prepare(self, message, check_after)
    }
}

impl<DB: sqlx::Database> HalfMessage for super::Prepared<DB> {
    fn id(&self) -> Uuid {
        super::Prepared::id(self)
    }

    fn topic(&self) -> &str {
        super::Prepared::topic(self)
    }

    fn commit(self) -> impl Future<Output = Result<()>> + Send {
        super::Prepared::commit(self)
    }

    fn rollback(self) -> impl Future<Output = Result<ResolveOutcome>> + Send {
        super::Prepared::rollback(self)
    }
}
