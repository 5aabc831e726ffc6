//! In-process broker for txmsg: demos, examples and tests without external
//! services.
//!
//! [`MemoryBroker`] confirms a publish once every current subscriber of the
//! topic has the message in its queue. It keeps nothing across restarts, so it
//! is no replacement for a real broker in production, but it behaves like one
//! where the relay can tell: confirms, refusals ([`MemoryBroker::set_down`],
//! [`MemoryBroker::reject_if`]) and per-subscriber queues.

mod broker;

pub use broker::{MemoryBroker, MemorySubscription};
