//! Conformance suites that every txmsg adapter must pass.
//!
//! One suite per core trait, each a set of plain `pub async fn`s that take the
//! adapter under test, plus a macro that makes each case a test of its own
//! over the adapter's fixture ([`store_conformance!`],
//! [`broker_conformance!`], ...). An adapter's
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
//! - [`redaction`]: URLs with a password, and what an error shows, for the
//!   tests that check no password is ever shown.
//! - [`proxy`]: [`TcpProxy`](proxy::TcpProxy), a TCP forwarder that cuts,
//!   refuses, pauses and slows the connections of an adapter under test, for
//!   cases such as
//!   [`broker::reconnects_after_connection_drop`].

use std::future::Future;

pub mod broker;
pub mod config;
pub mod half;
pub mod inbox;
pub mod injection;
pub mod logs;
pub mod proxy;
pub mod redaction;
pub mod store;
mod support;
pub mod wire;

/// What a store adapter's tests supply to run the store, inbox and half
/// suites one case per test ([`store_conformance!`],
/// [`inbox_conformance!`], [`half_conformance!`]): a fresh, isolated
/// database per case (a schema of its own, a file), a migrated store on
/// it, and the cleanup. The adapters' own tests (`adapters/*/tests/*.rs`)
/// show one fixture per store.
pub trait StoreFixture: Sized + Send {
    /// The store under test.
    type Store: Send + Sync;

    /// Sets up what one case needs.
    fn start() -> impl Future<Output = Self> + Send;

    /// A migrated store of this setup.
    fn store(&self) -> impl Future<Output = Self::Store> + Send;

    /// Deletes what the case left (not run when the case failed).
    fn finish(self) -> impl Future<Output = ()> + Send;
}

/// Defines `$name!`, the macro of a store suite (`$suite`, whose cases
/// are `$case`s): `$name!(Fixture)` makes one `#[tokio::test]` per case in
/// a module `$name` (`$name!(Fixture, module)` names the module), each on a
/// fresh [`StoreFixture`], so that one case runs alone and a failure hides
/// no other. `$d` is `$`, for the defined macro's own variables.
macro_rules! suite_macro {
    ($d:tt $name:ident, $suite:ident, [$($case:ident),* $(,)?]) => {
        #[doc = concat!(
            "One `#[tokio::test]` per case of the [`", stringify!($suite), "`](crate::",
            stringify!($suite), ") suite, in a module `", stringify!($name), "` (or the one ",
            "named after the fixture), each on a fresh [`StoreFixture`](crate::StoreFixture), ",
            "so that one case runs alone and a failure hides no other. The adapters' own ",
            "tests (`adapters/*/tests/*.rs`) show one fixture per store."
        )]
        #[macro_export]
        macro_rules! $name {
            ($d fixture:ty) => {
                $crate::__store_fixture_tests!($name, $suite, $d fixture: $($case),*);
            };
            ($d fixture:ty, $d module:ident) => {
                $crate::__store_fixture_tests!($d module, $suite, $d fixture: $($case),*);
            };
        }
    };
}
pub(crate) use suite_macro;

/// The tests of one suite over a [`StoreFixture`]: `[$module, $suite,
/// $fixture: cases...]`.
#[doc(hidden)]
#[macro_export]
macro_rules! __store_fixture_tests {
    ($module:ident, $suite:ident, $fixture:ty : $($case:ident),* $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    use $crate::StoreFixture as _;
                    let fixture = <$fixture>::start().await;
                    let store = fixture.store().await;
                    $crate::$suite::$case(&store).await;
                    drop(store);
                    fixture.finish().await;
                }
            )*
        }
    };
}

/// Writes `contents` to a file of the caller's own under the system's
/// temporary directory (named after `name`, made unique) and returns its
/// path; the caller removes it.
///
/// # Panics
///
/// If the file cannot be written.
pub fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("txmsg-{}-{name}", uuid::Uuid::now_v7().simple()));
    std::fs::write(&path, contents).expect("the temporary file could not be written");
    path
}
