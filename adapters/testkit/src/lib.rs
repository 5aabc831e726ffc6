//! Conformance suites that every txmsg adapter must pass.
//!
//! One suite per core trait, each a set of plain `pub async fn`s that take the
//! adapter under test, plus a `run_all` that runs every case. An adapter's
//! integration tests call the suite of the trait it implements, against the
//! real service, so all adapters are held to the same contract.
//!
//! - [`store`]: the [`Store`](txmsg_core::Store) and
//!   [`SqlStore`](txmsg_core::SqlStore) contract (outbox writes, claims,
//!   leases, order per key, retries, dead letters, retention).
//! - [`broker`]: the [`Broker`](txmsg_core::Broker) contract (confirmed
//!   publishes, consumer groups, redelivery, order per key, payload sizes).
//! - [`inbox`]: the [`InboxStore`](txmsg_core::consumer::InboxStore) and
//!   [`InboxWriter`](txmsg_core::consumer::InboxWriter) contract (inbox keys
//!   once per group, in the handler's transaction; consumer dead letters;
//!   inbox retention; migrations).
//! - [`half`]: half messages on a [`SqlStore`](txmsg_core::SqlStore)
//!   (prepared rows, commit and rollback fenced against the check-back
//!   worker, check-back claims, dead and resumed half messages).
//! - [`injection`]: hostile config identifiers refused before any SQL, and
//!   hostile values through every user string that reaches SQL, byte for
//!   byte (each store's injection tests wrap them around a canary table).
//! - [`logs`]: everything a test process logs, at every level, captured
//!   so that a case can check what the logs show (no password).
//! - [`proxy`]: [`TcpProxy`](proxy::TcpProxy), a TCP forwarder that cuts,
//!   refuses, pauses and slows the connections of an adapter under test, for
//!   cases such as
//!   [`broker::reconnects_after_connection_drop`].

pub mod broker;
pub mod half;
pub mod inbox;
pub mod injection;
pub mod logs;
pub mod proxy;
pub mod store;
