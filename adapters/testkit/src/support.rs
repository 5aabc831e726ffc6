//! Helpers the store, half-message and inbox suites share.

use std::future::Future;

use chrono::{DateTime, Duration, Utc};
use txmsg_core::{ClaimRequest, Lease, Message, Store};
use uuid::Uuid;

/// How long the suites' claims lease their rows, in seconds.
pub(crate) const LEASE_SECS: i64 = 30;

pub(crate) fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

/// A point safely after every row written so far.
pub(crate) fn after_writes() -> DateTime<Utc> {
    Utc::now() + secs(1)
}

/// Whether two times are within the millisecond a store may round to.
pub(crate) fn close(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).abs() <= Duration::milliseconds(1)
}

/// A claim by `owner` at `now`, leasing for [`LEASE_SECS`], with a dead row
/// parking its key.
pub(crate) fn claim_req(owner: Uuid, now: DateTime<Utc>, limit: u32) -> ClaimRequest {
    ClaimRequest {
        lease: Lease {
            owner,
            until: now + secs(LEASE_SECS),
        },
        now,
        limit,
        per_key_limit: 100,
        dead_parks_key: true,
    }
}

/// A message of `topic` with ordering key `key` and a small JSON payload.
pub(crate) fn msg(topic: &str, key: Option<&str>, n: u32) -> Message {
    let m = Message::new(topic, &n).expect("valid message");
    match key {
        Some(k) => m.key(k),
        None => m,
    }
}

/// Takes the store's tables back to the previous version with
/// `to_previous_version`, then migrates twice: the upgrade, and a second
/// run that must find nothing to do.
pub(crate) async fn upgrade_from_previous<S, F, Fut>(store: &S, to_previous_version: F)
where
    S: Store,
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    to_previous_version().await;
    store
        .migrate()
        .await
        .expect("migrate from the previous version failed");
    store
        .migrate()
        .await
        .expect("migrate after the upgrade failed");
}
