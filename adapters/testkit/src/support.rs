//! Helpers the store, half-message and inbox suites share.

use std::future::Future;

use chrono::{DateTime, Duration, Utc};
use txmsg_core::{
    ClaimRequest, DeadFilter, DeadLetter, Envelope, Failure, Lease, Message, Outbox, OutboxStats,
    SqlStore, Store,
};
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

/// One message of `topic` per entry of `keys`, with the payloads 1, 2, ...
pub(crate) fn msgs(topic: &str, keys: &[Option<&str>]) -> Vec<Message> {
    keys.iter()
        .zip(1..)
        .map(|(k, n)| msg(topic, *k, n))
        .collect()
}

/// Writes `messages` in one committed transaction; returns their ids.
pub(crate) async fn enqueue<S: SqlStore>(store: &S, messages: Vec<Message>) -> Vec<Uuid> {
    let mut tx = Outbox::new(store).begin().await.expect("begin failed");
    let mut ids = Vec::with_capacity(messages.len());
    for m in messages {
        ids.push(tx.enqueue(m).await.expect("enqueue failed"));
    }
    tx.commit().await.expect("commit failed");
    ids
}

// The store's own methods, failing the case when they fail.

pub(crate) async fn stats_ok<S: Store>(store: &S) -> OutboxStats {
    store.stats().await.expect("stats failed")
}

pub(crate) async fn release_ok<S: Store>(store: &S, ids: &[Uuid], owner: Uuid) {
    store.release(ids, owner).await.expect("release failed");
}

pub(crate) async fn mark_sent_ok<S: Store>(store: &S, ids: &[Uuid], at: DateTime<Utc>) {
    store.mark_sent(ids, at).await.expect("mark_sent failed");
}

pub(crate) async fn mark_dead_ok<S: Store>(
    store: &S,
    id: Uuid,
    owner: Uuid,
    reason: &str,
    at: DateTime<Utc>,
) {
    store
        .mark_dead(id, owner, reason, at)
        .await
        .expect("mark_dead failed");
}

pub(crate) async fn mark_failed_ok<S: Store>(store: &S, failure: &Failure) {
    store
        .mark_failed(failure)
        .await
        .expect("mark_failed failed");
}

pub(crate) async fn dead_letters_ok<S: Store>(store: &S, filter: &DeadFilter) -> Vec<DeadLetter> {
    store
        .dead_letters(filter)
        .await
        .expect("dead_letters failed")
}

/// The ids of `dead`, in their order.
pub(crate) fn dead_ids(dead: &[DeadLetter]) -> Vec<Uuid> {
    dead.iter().map(|d| d.envelope.id).collect()
}

/// Fails unless `got` carries `want`'s topic, key, idempotency key,
/// headers and exact payload bytes (`what` names the row in a failure).
pub(crate) fn assert_same_fields(got: &Envelope, want: &Envelope, what: &str) {
    assert_eq!(got.topic, want.topic, "{what}: topic");
    assert_eq!(got.key, want.key, "{what}: key");
    assert_eq!(
        got.idempotency_key, want.idempotency_key,
        "{what}: idempotency key"
    );
    assert_eq!(got.headers, want.headers, "{what}: headers");
    assert_eq!(
        got.payload, want.payload,
        "{what}: the payload bytes must be kept exactly"
    );
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
