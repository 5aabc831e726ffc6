//! Events a running consumer reports to an observer.

use uuid::Uuid;

/// How the consumer settled one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// The handler ran and its transaction committed with the inbox key.
    Applied,
    /// The idempotency key was already in the group's inbox: acknowledged
    /// without running the handler.
    Duplicate,
    /// Kept as a consumer dead letter, with this reason, and acknowledged.
    Dead(String),
    /// Handed back to the broker (shutdown, or its dead letter could not be
    /// stored): it is delivered again.
    Requeued,
}

/// One delivery the consumer is done with, as reported to the observer set
/// with [`Consumer::with_observer`](super::Consumer::with_observer).
///
/// Reported after the outcome is final in the store (the handler's
/// transaction committed, the dead letter stored), just before the delivery
/// is acknowledged or handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Handled {
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The message id (a fresh id for an undecodable delivery).
    pub message_id: Uuid,
    /// The idempotency key.
    pub idempotency_key: String,
    /// The ordering key, if any.
    pub key: Option<String>,
    /// Handler attempts made for this delivery (0 if the handler never ran).
    pub attempts: u32,
    /// How the delivery was settled.
    pub outcome: Settlement,
}
