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
//!   `pending`, `sent`, `dead`), attempts, next attempt time, lease, expiry,
//!   last error and timestamps; unique per (topic, idempotency key).
//! - `txmsg_inbox`: processed (consumer group, idempotency key) pairs, with
//!   when they were processed (for retention).
//! - `txmsg_consumer_dead`: messages a consumer group gave up on, as
//!   delivered, with the reason, the attempts and when (named `<inbox>_dead`
//!   beside a renamed inbox table).
//! - `txmsg_migrations`: applied schema versions.

mod migrate;
mod row;
mod sql;
mod store;
mod writer;

pub use store::SqliteStore;
