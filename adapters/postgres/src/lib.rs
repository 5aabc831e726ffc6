//! PostgreSQL store for [txmsg](https://docs.rs/txmsg), on sqlx.
//!
//! [`PgStore`] keeps the outbox, the inbox and the consumers' dead letters in
//! three tables (by default `txmsg_outbox`, `txmsg_inbox` and
//! `txmsg_consumer_dead`, optionally in a schema of their own, see
//! [`Tables`](txmsg_core::Tables)), writes outbox rows in the producer's own
//! transaction and inbox keys in the handler's.
//! [`migrate`](txmsg_core::Store::migrate) creates them; it is versioned, runs
//! in one transaction under an advisory lock, and may be called by every
//! process at start.
//!
//! # Tables
//!
//! The outbox holds one row per message: its id (UUIDv7, so ids sort in write
//! order), topic, ordering key, idempotency key (unique per topic), the exact
//! JSON bytes of the payload (`bytea`), headers (`jsonb`), its state
//! (`pending`, `sent` or `dead`), attempts, the time of its next attempt, the
//! lease of the relay that holds it, its expiry, last error, and when it was
//! written, sent or went dead. Two partial indexes serve the relay: pending
//! rows by id, and pending or dead rows by (topic, key, id) for the order
//! checks. The inbox holds (consumer group, idempotency key, processed at),
//! with an index on the time for retention. The consumer dead-letter table
//! (named `<inbox>_dead` beside a renamed inbox table) holds each message a
//! group gave up on as it was delivered (message id, topic, key, idempotency
//! key, headers, payload, creation time), with the reason, the attempts and
//! when it went dead, indexed by (group, dead at, id).
//!
//! # Ordering and concurrency
//!
//! A claim leases, per (topic, key), the first pending row and the claimable
//! rows right behind it, in id order, and skips rows other relays have locked;
//! see [`Store`](txmsg_core::Store) for the contract. Insert, claim and every
//! mark are each one short transaction.
//!
//! # Features
//!
//! | feature | enables                            | default |
//! |---------|------------------------------------|---------|
//! | `tls`   | TLS to PostgreSQL through rustls   | no      |

mod migrate;
mod row;
mod sql;
mod store;
mod writer;

pub use store::PgStore;
