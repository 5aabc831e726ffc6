//! Half messages: stored *prepared* (not deliverable) before local work that
//! is not in the outbox's database, then committed or rolled back by that
//! work's outcome; a [`CheckBackWorker`] resolves the ones whose outcome is
//! unknown by asking the topic's `#[check_back]` function (RocketMQ's
//! `checkLocalTransaction`, DTM's QueryPrepared).
//!
//! Verdicts are fenced: committing and rolling back are conditional updates
//! of the prepared row, so whichever of the producer and the check-back comes
//! second loses and is told ([`Error::RolledBack`](crate::Error::RolledBack)
//! to a producer whose message a check-back already rolled back).

mod outbox;
mod prepared;
mod producer;
mod registry;
mod worker;

pub use outbox::HalfOutbox;
pub(crate) use prepared::first_check_at;
pub use prepared::{ClaimedHalf, Decision, Prepared, ResolveOutcome};
pub use producer::{HalfMessage, HalfProducer};
pub use registry::{
    CheckBackFn, CheckBackRecord, CheckStatus, MISSING_STATE, check_backs_by_topic,
    registered_check_backs, run_check_back,
};
pub use worker::{CheckBackConfig, CheckBackHandle, CheckBackWorker, Checked};
