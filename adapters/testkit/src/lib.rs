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

pub mod store;
