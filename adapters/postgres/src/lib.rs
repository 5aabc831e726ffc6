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
//! (`prepared`, `pending`, `sent` or `dead`), attempts, check-backs so far
//! and whether it is a half message, the time of its next attempt, the
//! lease of the relay that holds it, its expiry, last error, and when it was
//! written, sent or went dead. Two partial indexes serve the relay: pending
//! rows by id, and pending or dead rows by (topic, key, id) for the order
//! checks; a third, prepared rows by id, serves the check-back worker. The inbox holds (consumer group, idempotency key, processed at),
//! with an index on the time for retention. The consumer dead-letter table
//! (named `<inbox>_dead` beside a renamed inbox table) holds each message a
//! group gave up on as it was delivered (message id, topic, key, idempotency
//! key, headers, payload, creation time), with the reason, the attempts and
//! when it went dead, indexed by (group, dead at, id).
//!
//! # Half messages
//!
//! A half message is stored `prepared` (not deliverable, invisible to relays
//! and to the order of its key) with its first check-back due, and marked as
//! a half message. Committing it is a conditional update to `pending`,
//! rolling it back a conditional delete, both only while it is still
//! prepared: whichever of the producer and the check-back worker comes second
//! finds the other's outcome. A half message that goes dead while prepared
//! keeps its mark, so [`resume`](txmsg_core::HalfStore::resume) can put it back.
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
//!
//! # TLS
//!
//! With `tls`, the URL's `sslmode` decides: `prefer` (the default) uses TLS
//! when the server offers it, `require` insists on it, `verify-ca` and
//! `verify-full` also check the server's certificate, against the CA file
//! of `sslrootcert` when given; `sslcert` and `sslkey` name a client
//! certificate and key. For example
//! `postgres://app@db.example.com/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem`.
//! Without `tls`, `sslmode=prefer` connects in plain text, and `require` or
//! stricter fails to connect rather than do so.
//!
//! The password of the URL is never shown: `Debug` of [`PgStore`] shows the
//! tables and the pool size only, and connection errors do not quote the
//! URL.

mod capture;
mod dialect;
mod log;
mod migrate;
mod sql;
mod store;
mod writer;

pub use capture::Capture;
pub use dialect::PgBackend;
pub use log::{LogLag, LogRelay, LogRelayConfig, LogRelayHandle, SlotStatus};
pub use store::PgStore;
pub use txmsg_sql::StoreConfig;
