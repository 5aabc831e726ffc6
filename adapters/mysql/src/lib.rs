//! MySQL and MariaDB store for [txmsg](https://docs.rs/txmsg), on sqlx.
//!
//! [`MySqlStore`] keeps the outbox, the inbox and the consumers' dead letters
//! in three InnoDB tables (by default `txmsg_outbox`, `txmsg_inbox` and
//! `txmsg_consumer_dead`, optionally in a database of their own, see
//! [`Tables`](txmsg_core::Tables)), writes outbox rows in the producer's own
//! transaction and inbox keys in the handler's. It needs `FOR UPDATE SKIP
//! LOCKED`: MySQL 8 or MariaDB 10.6 and later.
//!
//! [`migrate`](txmsg_core::Store::migrate) creates the tables. It is
//! versioned and may be called by every process at start: calls are
//! serialised with `GET_LOCK`, and since DDL is not transactional here every
//! step is idempotent, so an interrupted migration is completed by the next
//! call.
//!
//! # Tables
//!
//! Ids are `BINARY(16)` (UUIDv7, so ids sort in write order), timestamps
//! `DATETIME(6)` in UTC written from the caller's clock, payloads `LONGBLOB`
//! (the exact JSON bytes), headers a JSON object in `LONGTEXT`. Text columns
//! use the `utf8mb4_bin` collation, so topics, keys and idempotency keys
//! compare byte for byte. The outbox is indexed by (state, id) for the relay
//! and the check-back worker, and by (topic, key, id) for the order checks;
//! (topic, idempotency key) is unique.
//!
//! # Written with `COMMIT`
//!
//! A transaction begun with [`Outbox::begin`](txmsg_core::Outbox::begin)
//! holds its messages until [`Tx::commit`](txmsg_core::Tx::commit), which
//! sends them with `COMMIT` in one query of several statements: no round
//! trip per message. Values are literals no input can change (text, bytes
//! and ids as hexadecimal digits, times as digits). A repeated idempotency
//! key is then a duplicate-key error of its insert: the server runs nothing
//! after it, and `commit` rolls the transaction back and returns
//! [`Error::Duplicate`](txmsg_core::Error::Duplicate). A pool given to
//! [`TableStore::new`](txmsg_sql::TableStore::new) must allow
//! multi-statements, as sqlx's connections do.
//!
//! # Features
//!
//! | feature | enables                              | default |
//! |---------|--------------------------------------|---------|
//! | `tls`   | TLS to MySQL or MariaDB via rustls   | no      |
//!
//! # TLS
//!
//! With `tls`, the URL's `ssl-mode` decides: `PREFERRED` (the default) uses
//! TLS when the server offers it, `REQUIRED` insists on it, `VERIFY_CA` and
//! `VERIFY_IDENTITY` also check the server's certificate, against the CA
//! file of `ssl-ca` when given; `ssl-cert` and `ssl-key` name a client
//! certificate and key. For example
//! `mysql://app@db.example.com/app?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ssl/db-ca.pem`.
//! Without `tls`, `PREFERRED` connects in plain text, and `REQUIRED` or
//! stricter fails to connect rather than do so.
//!
//! The password of the URL is never shown: `Debug` of [`MySqlStore`] shows
//! the tables and the pool size only, and connection errors do not quote the
//! URL.

mod commit;
mod dialect;
mod migrate;
mod sql;
mod store;
mod writer;

pub use dialect::MySqlBackend;
pub use store::MySqlStore;
pub use txmsg_sql::StoreConfig;
