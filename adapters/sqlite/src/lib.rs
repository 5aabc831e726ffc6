//! SQLite store for [txmsg](https://docs.rs/txmsg): the embedded default.
//!
//! [`SqliteStore`] keeps the outbox and the inbox in an SQLite database file
//! (or in memory, for tests and demos). Producers write outbox rows in their
//! own transactions; the relay claims rows with `BEGIN IMMEDIATE`, SQLite's
//! equivalent of `FOR UPDATE SKIP LOCKED` since it has one writer at a time.
//!
//! Tables (names configurable through [`Tables`](txmsg_core::Tables); SQLite
//! has no schemas, so a schema is refused):
//!
//! - `txmsg_outbox`: one row per message, with its state (`prepared`,
//!   `pending`, `sent`, `dead`), attempts, next attempt (or check-back)
//!   time, lease, check-backs so far, whether it is a half message, expiry,
//!   last error and timestamps; unique per (topic, idempotency key).
//! - `txmsg_inbox`: processed (consumer group, idempotency key) pairs, with
//!   when they were processed (for retention).
//! - `txmsg_consumer_dead`: messages a consumer group gave up on, as
//!   delivered, with the reason, the attempts and when (named `<inbox>_dead`
//!   beside a renamed inbox table).
//! - `txmsg_migrations`: applied schema versions.
//!
//! Half messages are stored `prepared` (invisible to relays and to the order
//! of their key) and marked as half messages. Committing one is a
//! conditional update to `pending`, rolling it back a conditional delete,
//! both only while it is still prepared, so whichever of the producer and the
//! check-back worker comes second finds the other's outcome. A half message
//! that goes dead while prepared keeps its mark, so
//! [`resume`](txmsg_core::HalfStore::resume) can put it back.

mod dialect;
mod migrate;
mod sql;
mod store;

pub use dialect::SqliteBackend;
pub use store::SqliteStore;
pub use txmsg_sql::StoreConfig;
