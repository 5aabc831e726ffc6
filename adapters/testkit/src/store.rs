//! The conformance suite of [`Store`] (and [`SqlStore`]) adapters.
//!
//! Every function takes a store that is freshly migrated, empty and used by
//! nothing else (its own database, schema or table names), runs one part of
//! the contract documented on [`Store`] and
//! [`OutboxWriter`](txmsg_core::OutboxWriter), and panics with a description
//! of the first broken rule. Outcomes are observed through the
//! store's own methods (claims, dead letters, stats), never through SQL, so
//! the same functions check every SQL store: PostgreSQL, SQLite, MySQL.
//!
//! Rows are written the way producers write them, through
//! [`Outbox::new`]`(&store).begin()`, [`Tx::enqueue`](txmsg_core::Tx::enqueue)
//! and `commit`, without a relay, so they are inserted unleased. The lease
//! path of the writer is driven directly with [`SqlStore::writer`] on a
//! [`SqlStore::begin`] transaction.
//!
//! Timestamps written by producers come from the system clock; the suite
//! passes its own `now` to claims, always a second or more after the rows were
//! written, so stores that keep time at millisecond precision pass too.
//!
//! # Examples
//!
//! In an adapter's integration tests, with a function that opens a store on a
//! database, schema or table prefix of its own:
//!
//! ```ignore
//! // In `adapters/<store>/tests/<store>.rs`, with `Fixture` a
//! // [`StoreFixture`](crate::StoreFixture) that gives each case a migrated
//! // store on a schema or database of its own:
//! txmsg_testkit::store_conformance!(Fixture);
//! ```
//!
//! One `#[tokio::test]` per case, so that one case runs alone:
//! `cargo nextest run -p txmsg-postgres -E 'test(store_conformance::<case>)'`.
//!
//! # Panics
//!
//! Every function panics when the store breaks the contract or fails.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;

use chrono::{DateTime, Duration, Utc};
use txmsg_core::{
    ClaimRequest, DeadFilter, Envelope, Failure, Inserted, Lease, Message, Outbox, SqlStore, Store,
};
use uuid::Uuid;

use crate::support::{
    LEASE_SECS, after_writes, claim_req, close, dead_ids, dead_letters_ok, enqueue, mark_dead_ok,
    mark_failed_ok, mark_sent_ok, msg, msgs, release_ok, secs, stats_ok,
};
crate::suite_macro! {
    $ store_conformance, store, [
        migrate_is_idempotent,
        commit_round_trips_every_field,
        rollback_writes_nothing,
        duplicate_idempotency_key_is_reported,
        claim_leases_rows,
        mark_sent_finishes_rows,
        mark_failed_schedules_a_retry,
        mark_dead_lists_and_replays,
        release_gives_rows_back,
        purge_sent_deletes_old_sent_rows_in_batches,
        claim_keeps_key_order,
        leased_head_holds_back_its_key,
        retry_holds_back_its_key,
        dead_row_parks_its_key,
        claim_stops_a_key_at_its_first_unclaimable_row,
        claim_respects_limits,
        concurrent_claims_are_disjoint,
        insert_with_lease_yields_to_earlier_rows,
        expired_messages_are_claimed,
        timestamps_come_from_the_caller,
        topic_stats_count_each_topic,
        dead_letter_by_id_and_purge_dead,
    ]
}

// ---------------------------------------------------------------------------
// helpers

async fn claim<S: Store>(store: &S, owner: Uuid, now: DateTime<Utc>) -> Vec<Envelope> {
    claim_with(store, &claim_req(owner, now, 1000)).await
}

async fn claim_with<S: Store>(store: &S, req: &ClaimRequest) -> Vec<Envelope> {
    let claimed = store.claim(req).await.expect("claim failed");
    let ids = ids(&claimed);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "claim must return rows sorted by id");
    claimed
}

/// Fails unless nothing is claimable at `now` and the store counts no
/// pending or dead row and `sent` sent ones.
async fn assert_nothing_pending<S: Store>(store: &S, now: DateTime<Utc>, sent: u64) {
    assert!(claim(store, Uuid::now_v7(), now).await.is_empty());
    let stats = stats_ok(store).await;
    assert_eq!((stats.pending, stats.sent, stats.dead), (0, sent, 0));
    assert_eq!(stats.oldest_pending, None);
}

/// Fails unless a claim by `owner` at `now` gets `id` alone (`why` says
/// why), then gives it back.
async fn claim_only_then_release<S: Store>(
    store: &S,
    owner: Uuid,
    now: DateTime<Utc>,
    id: Uuid,
    why: &str,
) {
    assert_eq!(ids(&claim(store, owner, now).await), vec![id], "{why}");
    release_ok(store, &[id], owner).await;
}

fn ids(envelopes: &[Envelope]) -> Vec<Uuid> {
    envelopes.iter().map(|e| e.id).collect()
}

/// An envelope as the producer side builds it, for driving the writer
/// directly: a fresh UUIDv7 id and idempotency key, written now.
fn envelope(topic: &str, key: Option<&str>) -> Envelope {
    let id = Uuid::now_v7();
    let mut env = Envelope::new(id, topic, id.to_string(), b"{}".to_vec(), Utc::now());
    env.key = key.map(str::to_owned);
    env
}

/// Inserts `env` through the store's writer in its own transaction.
async fn insert<S: SqlStore>(store: &S, env: &Envelope, lease: Option<Lease>) -> Inserted {
    let mut tx = store.begin().await.expect("begin failed");
    let outcome = store
        .writer()
        .insert(&mut *tx, env, lease)
        .await
        .expect("insert failed");
    tx.commit().await.expect("commit failed");
    outcome
}

// ---------------------------------------------------------------------------
// cases

/// `migrate` may run again on a migrated store, and keeps its rows.
pub async fn migrate_is_idempotent<S: SqlStore>(store: &S) {
    store.migrate().await.expect("second migrate failed");
    enqueue(store, vec![msg("conf.migrate", None, 1)]).await;
    store.migrate().await.expect("third migrate failed");
    let stats = stats_ok(store).await;
    assert_eq!(stats.pending, 1, "migrate must keep existing rows");
    assert_eq!((stats.sent, stats.dead), (0, 0));
}

/// A committed message becomes a claimable row that carries every field as
/// written: topic, key, idempotency key, headers, exact payload bytes,
/// creation time and expiry.
pub async fn commit_round_trips_every_field<S: SqlStore>(store: &S) {
    let before = Utc::now();
    let message = Message::new("conf.round-trip", &("order", 7, "žluťoučký kůň", 1.5))
        .expect("valid message")
        .key("order-7")
        .idempotency_key("order-7-placed")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-tenant", "acme")
        .ttl(std::time::Duration::from_secs(3600));
    let id = enqueue(store, vec![message]).await[0];
    let after = Utc::now();

    let stats = stats_ok(store).await;
    assert_eq!(stats.pending, 1);

    let owner = Uuid::now_v7();
    let claimed = claim(store, owner, after_writes()).await;
    assert_eq!(claimed.len(), 1, "a committed row must be claimable");
    let env = &claimed[0];
    assert_eq!(env.id, id);
    assert_eq!(env.topic, "conf.round-trip");
    assert_eq!(env.key.as_deref(), Some("order-7"));
    assert_eq!(env.idempotency_key, "order-7-placed");
    assert_eq!(
        env.payload,
        "[\"order\",7,\"žluťoučký kůň\",1.5]".as_bytes()
    );
    let headers: BTreeMap<String, String> = [
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-tenant", "acme"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(env.headers, headers);
    assert_eq!(env.attempts, 0);
    assert!(
        env.created_at >= before - Duration::milliseconds(1)
            && env.created_at <= after + Duration::milliseconds(1),
        "created_at {} must be the producer's clock at enqueue",
        env.created_at
    );
    let expires_at = env.expires_at.expect("a message with a ttl has an expiry");
    assert!(
        close(expires_at, env.created_at + secs(3600)),
        "expires_at must be created_at + ttl"
    );
    let oldest = stats.oldest_pending.expect("one pending row has an age");
    assert!(close(oldest, env.created_at));

    // A message without key, headers or ttl comes back without them.
    let id = enqueue(store, vec![msg("conf.round-trip", None, 2)]).await[0];
    let claimed = claim(store, owner, after_writes()).await;
    assert_eq!(ids(&claimed), vec![id]);
    assert_eq!(claimed[0].key, None);
    assert!(claimed[0].headers.is_empty());
    assert_eq!(claimed[0].expires_at, None);
    assert_eq!(claimed[0].payload, b"2");
    assert_eq!(
        claimed[0].idempotency_key,
        id.to_string(),
        "default idempotency key is the id"
    );
}

/// A rolled-back (or dropped) transaction leaves no row.
pub async fn rollback_writes_nothing<S: SqlStore>(store: &S) {
    let outbox = Outbox::new(store);
    let mut tx = outbox.begin().await.expect("begin failed");
    tx.enqueue(msg("conf.rollback", Some("k"), 1))
        .await
        .expect("enqueue failed");
    tx.rollback().await.expect("rollback failed");

    let mut tx = outbox.begin().await.expect("begin failed");
    tx.enqueue(msg("conf.rollback", None, 2))
        .await
        .expect("enqueue failed");
    drop(tx);

    assert_nothing_pending(store, after_writes(), 0).await;
}

/// Enqueues `messages` in one transaction and commits it; the first error
/// of `enqueue` (the transaction is then dropped, which rolls it back) or
/// of `commit`.
async fn try_enqueue<S: SqlStore>(store: &S, messages: Vec<Message>) -> txmsg_core::Result<()> {
    let mut tx = Outbox::new(store).begin().await.expect("begin failed");
    for message in messages {
        tx.enqueue(message).await?;
    }
    tx.commit().await
}

/// Asserts that `outcome` is `Error::Duplicate` naming `topic` and `key`.
fn assert_duplicate(outcome: txmsg_core::Result<()>, topic: &str, key: &str) {
    match outcome {
        Err(txmsg_core::Error::Duplicate {
            topic: t,
            idempotency_key: k,
        }) => assert_eq!(
            (t.as_str(), k.as_str()),
            (topic, key),
            "the duplicate named"
        ),
        other => panic!("expected Error::Duplicate for {topic}/{key}, got {other:?}"),
    }
}

/// A second message with a topic's idempotency key is refused with
/// `Error::Duplicate` naming it, by `enqueue` or, where the store writes
/// messages with `COMMIT`, by `commit`; either way its transaction commits
/// nothing, its other messages included. A key repeated within one
/// transaction is refused the same way, and the same key on another topic
/// is a different message.
pub async fn duplicate_idempotency_key_is_reported<S: SqlStore>(store: &S) {
    let first = msg("conf.dup", None, 1).idempotency_key("once");
    let first_id = enqueue(store, vec![first]).await[0];

    let again = try_enqueue(
        store,
        vec![
            msg("conf.dup", None, 2).idempotency_key("before"),
            msg("conf.dup", Some("k"), 3).idempotency_key("once"),
            msg("conf.dup", None, 4).idempotency_key("after"),
        ],
    )
    .await;
    assert_duplicate(again, "conf.dup", "once");

    let twice = try_enqueue(
        store,
        vec![
            msg("conf.dup", None, 5).idempotency_key("twice"),
            msg("conf.dup", None, 6).idempotency_key("twice"),
        ],
    )
    .await;
    assert_duplicate(twice, "conf.dup", "twice");

    let elsewhere = msg("conf.dup-elsewhere", None, 7).idempotency_key("once");
    let elsewhere_id = enqueue(store, vec![elsewhere]).await[0];

    let claimed = claim(store, Uuid::now_v7(), after_writes()).await;
    assert_eq!(
        ids(&claimed),
        vec![first_id, elsewhere_id],
        "nothing of a transaction with a duplicate is committed"
    );
    assert_eq!(
        claimed[0].payload, b"1",
        "the first message must not be overwritten"
    );
}

/// A claim leases rows: no other claim gets them while the lease runs, and
/// anyone gets them once `now` is past its end.
pub async fn claim_leases_rows<S: SqlStore>(store: &S) {
    let written = enqueue(store, msgs("conf.lease", &[None, None, None])).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = after_writes();

    assert_eq!(ids(&claim(store, a, t0).await), written);
    assert!(
        claim(store, b, t0).await.is_empty(),
        "leased rows must not be claimed by another"
    );
    assert!(
        claim(store, a, t0).await.is_empty(),
        "leased rows are not handed out twice"
    );
    let near_end = t0 + secs(LEASE_SECS - 1);
    assert!(
        claim(store, b, near_end).await.is_empty(),
        "the lease runs until its end"
    );

    let after_lease = t0 + secs(LEASE_SECS + 1);
    assert_eq!(
        ids(&claim(store, b, after_lease).await),
        written,
        "expired leases are claimable"
    );
    assert!(
        claim(store, a, after_lease).await.is_empty(),
        "the new lease holds"
    );
}

/// Sent rows are never claimed again, are counted as sent, and marking them
/// again changes nothing.
pub async fn mark_sent_finishes_rows<S: SqlStore>(store: &S) {
    let written = enqueue(store, msgs("conf.sent", &[Some("k"), None])).await;
    let a = Uuid::now_v7();
    let t0 = after_writes();
    assert_eq!(claim(store, a, t0).await.len(), 2);
    mark_sent_ok(store, &written[..1], t0).await;
    store
        .mark_sent(&[], t0)
        .await
        .expect("mark_sent of nothing failed");

    let later = t0 + secs(3600);
    assert_eq!(
        ids(&claim(store, Uuid::now_v7(), later).await),
        vec![written[1]]
    );
    mark_sent_ok(store, &written, later).await;
    store
        .mark_sent(&written, later)
        .await
        .expect("marking sent rows again failed");

    assert_nothing_pending(store, later + secs(3600), 2).await;
}

/// A failed attempt counts, releases the lease, and hides the row until its
/// retry time; only the lease holder can record it.
pub async fn mark_failed_schedules_a_retry<S: SqlStore>(store: &S) {
    let id = enqueue(store, vec![msg("conf.retry", None, 1)]).await[0];
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = after_writes();
    assert_eq!(claim(store, a, t0).await.len(), 1);

    let fail = |owner, retry_at| Failure {
        id,
        owner,
        next_attempt_at: retry_at,
        error: "broker unreachable".to_owned(),
    };
    mark_failed_ok(store, &fail(b, t0)).await;
    assert!(
        claim(store, b, t0).await.is_empty(),
        "only the lease holder may record a failure"
    );

    mark_failed_ok(store, &fail(a, t0 + secs(60))).await;
    assert!(
        claim(store, b, t0 + secs(1)).await.is_empty(),
        "a failed row waits for its retry"
    );
    assert!(
        claim(store, b, t0 + secs(59)).await.is_empty(),
        "a failed row waits for its retry"
    );
    let retried = claim(store, b, t0 + secs(60)).await;
    assert_eq!(
        ids(&retried),
        vec![id],
        "a failed row is due at its retry time"
    );
    assert_eq!(retried[0].attempts, 1);

    mark_failed_ok(store, &fail(b, t0 + secs(120))).await;
    let retried = claim(store, a, t0 + secs(121)).await;
    assert_eq!(retried[0].attempts, 2);
    let stats = stats_ok(store).await;
    assert_eq!(
        (stats.pending, stats.dead),
        (1, 0),
        "a failed row stays pending"
    );
}

/// A dead row is listed with its reason, oldest first and filtered by topic
/// and key, is not claimed, and is replayed as a fresh pending row.
pub async fn mark_dead_lists_and_replays<S: SqlStore>(store: &S) {
    let written = enqueue(
        store,
        vec![
            msg("conf.dead-a", Some("k1"), 1),
            msg("conf.dead-b", None, 2),
            msg("conf.dead-b", None, 3),
        ],
    )
    .await;
    let (x, y, z) = (written[0], written[1], written[2]);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = after_writes();
    assert_eq!(claim(store, a, t0).await.len(), 3);

    // One failure first, so replay has attempts to reset.
    let failure = Failure {
        id: x,
        owner: a,
        next_attempt_at: t0,
        error: "first failure".to_owned(),
    };
    mark_failed_ok(store, &failure).await;
    assert_eq!(ids(&claim(store, a, t0).await), vec![x]);

    mark_dead_ok(store, y, b, "not the owner", t0).await;
    let none = dead_letters_ok(store, &DeadFilter::default()).await;
    assert!(none.is_empty(), "only the lease holder may mark a row dead");

    mark_dead_ok(store, x, a, "payload too large", t0 + secs(1)).await;
    mark_dead_ok(store, y, a, "expired", t0 + secs(2)).await;

    let dead = dead_letters_ok(store, &DeadFilter::default()).await;
    let listed: Vec<(Uuid, &str)> = dead
        .iter()
        .map(|d| (d.envelope.id, d.reason.as_str()))
        .collect();
    assert_eq!(
        listed,
        vec![(x, "payload too large"), (y, "expired")],
        "oldest first, with reasons"
    );
    assert!(
        close(dead[0].dead_at, t0 + secs(1)),
        "dead_at is the caller's time"
    );
    assert_eq!(dead[0].envelope.topic, "conf.dead-a");
    assert_eq!(
        dead[0].envelope.attempts, 2,
        "one failure, then the attempt that went dead"
    );

    let by_topic = dead_letters_ok(store, &DeadFilter::default().topic("conf.dead-b")).await;
    assert_eq!(dead_ids(&by_topic), vec![y]);
    let by_key = dead_letters_ok(store, &DeadFilter::default().key("k1")).await;
    assert_eq!(dead_ids(&by_key), vec![x]);
    let limited = dead_letters_ok(store, &DeadFilter::default().limit(1)).await;
    assert_eq!(limited.len(), 1);

    let stats = stats_ok(store).await;
    assert_eq!((stats.pending, stats.dead), (1, 2));
    let later = t0 + secs(3600);
    assert_eq!(
        ids(&claim(store, b, later).await),
        vec![z],
        "dead rows are never claimed"
    );

    let replay_at = later + secs(10);
    assert!(store.replay(x, replay_at).await.expect("replay failed"));
    assert!(
        !store.replay(x, replay_at).await.expect("replay failed"),
        "x is no longer dead"
    );
    assert!(
        !store.replay(z, replay_at).await.expect("replay failed"),
        "z was never dead"
    );
    assert!(
        !store
            .replay(Uuid::now_v7(), replay_at)
            .await
            .expect("replay failed")
    );

    assert!(
        claim(store, b, replay_at - secs(1)).await.is_empty(),
        "replayed rows are due at `at`"
    );
    let replayed = claim(store, b, replay_at).await;
    assert_eq!(ids(&replayed), vec![x]);
    assert_eq!(replayed[0].attempts, 0, "replay resets attempts");
    let dead = dead_letters_ok(store, &DeadFilter::default()).await;
    assert_eq!(dead_ids(&dead), vec![y]);
}

/// `release` gives the holder's rows back at once, without counting an
/// attempt; another relay's release changes nothing.
pub async fn release_gives_rows_back<S: SqlStore>(store: &S) {
    let written = enqueue(store, msgs("conf.release", &[Some("k"), None])).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = after_writes();
    assert_eq!(claim(store, a, t0).await.len(), 2);

    release_ok(store, &written, b).await;
    assert!(
        claim(store, b, t0).await.is_empty(),
        "only the lease holder may release"
    );

    release_ok(store, &written, a).await;
    store
        .release(&[], a)
        .await
        .expect("release of nothing failed");
    let again = claim(store, b, t0).await;
    assert_eq!(ids(&again), written, "released rows are claimable at once");
    assert!(
        again.iter().all(|e| e.attempts == 0),
        "release counts no attempt"
    );
}

/// `purge_sent` deletes only sent rows older than its cut-off, at most
/// `limit` per call.
pub async fn purge_sent_deletes_old_sent_rows_in_batches<S: SqlStore>(store: &S) {
    let written: Vec<Uuid> =
        enqueue(store, (0..7).map(|n| msg("conf.purge", None, n)).collect()).await;
    let a = Uuid::now_v7();
    let t0 = after_writes();
    assert_eq!(claim(store, a, t0).await.len(), 7);
    mark_sent_ok(store, &written[..3], t0).await;
    mark_sent_ok(store, &written[3..5], t0 + secs(100)).await;
    mark_dead_ok(store, written[5], a, "dead", t0).await;
    // written[6] stays pending.

    let cut = t0 + secs(50);
    assert_eq!(store.purge_sent(cut, 2).await.expect("purge failed"), 2);
    assert_eq!(store.purge_sent(cut, 2).await.expect("purge failed"), 1);
    assert_eq!(store.purge_sent(cut, 2).await.expect("purge failed"), 0);
    assert_eq!(store.purge_sent(cut, 0).await.expect("purge failed"), 0);
    let stats = stats_ok(store).await;
    assert_eq!((stats.pending, stats.sent, stats.dead), (1, 2, 1));

    let far = t0 + secs(3600);
    assert_eq!(store.purge_sent(far, 100).await.expect("purge failed"), 2);
    let stats = stats_ok(store).await;
    assert_eq!(
        (stats.pending, stats.sent, stats.dead),
        (1, 0, 1),
        "only sent rows are purged"
    );
    assert_eq!(ids(&claim(store, a, far).await), vec![written[6]]);
}

/// A claim returns each key's rows in write order, interleaved keys and
/// keyless rows alike.
pub async fn claim_keeps_key_order<S: SqlStore>(store: &S) {
    let t = "conf.order";
    let mut messages = msgs(
        t,
        &[Some("a"), Some("b"), None, Some("a"), Some("b"), Some("a")],
    );
    messages.push(msg("conf.order-other", Some("a"), 7));
    let written = enqueue(store, messages).await;
    let mut sorted = written.clone();
    sorted.sort();
    assert_eq!(written, sorted, "ids must sort in write order");

    let claimed = claim(store, Uuid::now_v7(), after_writes()).await;
    assert_eq!(ids(&claimed), written);
    let payloads: Vec<&[u8]> = claimed.iter().map(|e| e.payload.as_slice()).collect();
    let expected: Vec<&[u8]> = vec![b"1", b"2", b"3", b"4", b"5", b"6", b"7"];
    assert_eq!(payloads, expected);
}

/// While a key's first row is leased to one relay, another relay gets none of
/// that key's rows, but keyless rows and other keys (and the same key on
/// another topic) flow.
pub async fn leased_head_holds_back_its_key<S: SqlStore>(store: &S) {
    let t = "conf.held";
    let mut messages = msgs(t, &[Some("a"), Some("a"), Some("b"), None, Some("a")]);
    messages.push(msg("conf.held-other", Some("a"), 6));
    let w = enqueue(store, messages).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = after_writes();

    assert_eq!(
        ids(&claim_with(store, &claim_req(a, t0, 1)).await),
        vec![w[0]]
    );
    assert_eq!(
        ids(&claim(store, b, t0).await),
        vec![w[2], w[3], w[5]],
        "key `a` must wait for its leased first row"
    );

    // The holder finishes the first row: the rest of the key is next, in order.
    mark_sent_ok(store, &[w[0]], t0).await;
    assert_eq!(ids(&claim(store, a, t0).await), vec![w[1], w[4]]);
}

/// A row waiting for its retry holds back the later rows of its key, and only
/// those.
pub async fn retry_holds_back_its_key<S: SqlStore>(store: &S) {
    let t = "conf.retry-order";
    let w = enqueue(store, msgs(t, &[Some("a"), Some("a"), Some("b")])).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = after_writes();
    assert_eq!(ids(&claim(store, a, t0).await), w);

    let failure = Failure {
        id: w[0],
        owner: a,
        next_attempt_at: t0 + secs(60),
        error: "nack".to_owned(),
    };
    mark_failed_ok(store, &failure).await;
    release_ok(store, &[w[1]], a).await;
    mark_sent_ok(store, &[w[2]], t0).await;
    let later_b = enqueue(store, vec![msg(t, Some("b"), 4)]).await[0];

    let t1 = after_writes().max(t0 + secs(1));
    assert_eq!(
        ids(&claim(store, b, t1).await),
        vec![later_b],
        "key `a` waits for its retry, key `b` flows"
    );
    mark_sent_ok(store, &[later_b], t1).await;

    let retried = claim(store, b, t0 + secs(60)).await;
    assert_eq!(
        ids(&retried),
        vec![w[0], w[1]],
        "the retry comes first, then the rest of its key"
    );
    assert_eq!(retried[0].attempts, 1);
}

/// With `dead_parks_key`, a dead row holds back the later rows of its key
/// until it is replayed; without it they flow.
pub async fn dead_row_parks_its_key<S: SqlStore>(store: &S) {
    let t = "conf.park";
    let w = enqueue(store, msgs(t, &[Some("a"), Some("a"), None])).await;
    let owners: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let t0 = after_writes();
    assert_eq!(ids(&claim(store, owners[0], t0).await), w);
    mark_dead_ok(store, w[0], owners[0], "poison", t0).await;
    release_ok(store, &w[1..], owners[0]).await;

    let parked = claim_req(owners[1], t0, 100);
    assert_eq!(
        ids(&claim_with(store, &parked).await),
        vec![w[2]],
        "key `a` is parked"
    );
    mark_sent_ok(store, &[w[2]], t0).await;
    assert!(
        claim_with(store, &parked).await.is_empty(),
        "key `a` stays parked"
    );

    let skipping = ClaimRequest {
        dead_parks_key: false,
        ..claim_req(owners[2], t0, 100)
    };
    assert_eq!(
        ids(&claim_with(store, &skipping).await),
        vec![w[1]],
        "without parking it flows"
    );
    release_ok(store, &[w[1]], owners[2]).await;

    assert!(store.replay(w[0], t0).await.expect("replay failed"));
    let replayed = claim_with(store, &claim_req(owners[3], t0, 100)).await;
    assert_eq!(
        ids(&replayed),
        vec![w[0], w[1]],
        "after replay the key flows in order"
    );
}

/// The rows claimed of a key are an unbroken run from its first: a row behind
/// one that waits for a retry, is leased elsewhere or (with `dead_parks_key`)
/// is dead is not claimed, even when it is claimable itself.
pub async fn claim_stops_a_key_at_its_first_unclaimable_row<S: SqlStore>(store: &S) {
    let t = "conf.gap";
    let w = enqueue(store, (0..4).map(|n| msg(t, Some("a"), n)).collect()).await;
    let owners: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    let t0 = after_writes();
    assert_eq!(ids(&claim(store, owners[0], t0).await), w);

    // The second row waits for a retry; the others are given back.
    let failure = Failure {
        id: w[1],
        owner: owners[0],
        next_attempt_at: t0 + secs(60),
        error: "nack".into(),
    };
    mark_failed_ok(store, &failure).await;
    release_ok(store, &[w[0], w[2], w[3]], owners[0]).await;
    claim_only_then_release(store, owners[1], t0, w[0], "a retry closes the run").await;

    // The second row is leased elsewhere.
    let t1 = t0 + secs(60);
    assert_eq!(ids(&claim(store, owners[2], t1).await), w);
    release_ok(store, &[w[0], w[2], w[3]], owners[2]).await;
    claim_only_then_release(store, owners[3], t1, w[0], "a lease closes the run").await;

    // The second row is dead.
    mark_dead_ok(store, w[1], owners[2], "poison", t1).await;
    claim_only_then_release(store, owners[4], t1, w[0], "a dead row closes the run").await;
    let skipping = ClaimRequest {
        dead_parks_key: false,
        ..claim_req(owners[5], t1, 100)
    };
    let claimed = ids(&claim_with(store, &skipping).await);
    assert_eq!(
        claimed,
        vec![w[0], w[2], w[3]],
        "without parking a dead row is passed over"
    );
}

/// A claim returns at most `limit` rows and, per key, the first row plus at
/// most `per_key_limit` more, always a prefix of the key's pending rows.
pub async fn claim_respects_limits<S: SqlStore>(store: &S) {
    let t = "conf.limits";
    let mut messages = Vec::new();
    for n in 0..5 {
        messages.push(msg(t, Some("a"), n));
        messages.push(msg(t, Some("b"), 10 + n));
    }
    messages.extend((0..3).map(|n| msg(t, None, 20 + n)));
    let w = enqueue(store, messages).await;
    let of_key =
        |k: &str| -> Vec<Uuid> { (0..5).map(|n| w[2 * n + usize::from(k == "b")]).collect() };
    let keyless: Vec<Uuid> = w[10..].to_vec();
    let t0 = after_writes();

    let req = ClaimRequest {
        per_key_limit: 2,
        ..claim_req(Uuid::now_v7(), t0, 100)
    };
    let claimed = ids(&claim_with(store, &req).await);
    let mut expected: Vec<Uuid> = of_key("a")[..3].to_vec();
    expected.extend_from_slice(&of_key("b")[..3]);
    expected.extend_from_slice(&keyless);
    expected.sort();
    assert_eq!(
        claimed, expected,
        "one head and two more per key, all keyless rows"
    );

    // A claim with a smaller limit, after those leases ran out.
    let t1 = t0 + secs(LEASE_SECS + 1);
    let req = claim_req(Uuid::now_v7(), t1, 4);
    let claimed = ids(&claim_with(store, &req).await);
    assert_eq!(
        claimed.len(),
        4,
        "exactly `limit` rows when more are claimable"
    );
    for key in ["a", "b"] {
        let rows = of_key(key);
        let got: Vec<Uuid> = claimed
            .iter()
            .copied()
            .filter(|id| rows.contains(id))
            .collect();
        assert_eq!(
            got,
            rows[..got.len()].to_vec(),
            "key {key}: a claim takes a prefix"
        );
    }

    // Only the first row of each key with `per_key_limit` 0.
    let t2 = t1 + secs(LEASE_SECS + 1);
    let req = ClaimRequest {
        per_key_limit: 0,
        ..claim_req(Uuid::now_v7(), t2, 100)
    };
    let claimed = ids(&claim_with(store, &req).await);
    let mut expected = vec![of_key("a")[0], of_key("b")[0]];
    expected.extend_from_slice(&keyless);
    expected.sort();
    assert_eq!(claimed, expected);

    let req = claim_req(Uuid::now_v7(), t2, 0);
    assert!(
        claim_with(store, &req).await.is_empty(),
        "limit 0 claims nothing"
    );
}

/// Two relays claiming at the same time never get the same row, and between
/// them every key is published in order.
pub async fn concurrent_claims_are_disjoint<S: SqlStore>(store: &S) {
    let t = "conf.concurrent";
    let mut written = Vec::new();
    for batch in 0..4u32 {
        let messages = (0..50u32)
            .map(|n| {
                let i = batch * 50 + n;
                let key = (i % 2 == 0).then(|| format!("k{}", i % 20));
                msg(t, key.as_deref(), i)
            })
            .collect();
        written.extend(enqueue(store, messages).await);
    }
    let total = written.len();
    let key_of: BTreeMap<Uuid, Option<String>> = written
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, (i % 2 == 0).then(|| format!("k{}", i % 20))))
        .collect();

    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = after_writes();
    let mut seen = HashSet::new();
    let mut published: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for round in 0..200 {
        let now = t0 + Duration::milliseconds(round);
        let (ra, rb) = (
            claim_req(a, now, 17),
            ClaimRequest {
                per_key_limit: 3,
                ..claim_req(b, now, 23)
            },
        );
        let (got_a, got_b) = tokio::join!(store.claim(&ra), store.claim(&rb));
        let (got_a, got_b) = (got_a.expect("claim failed"), got_b.expect("claim failed"));
        if got_a.is_empty() && got_b.is_empty() && seen.len() == total {
            break;
        }
        for env in got_a.iter().chain(&got_b) {
            assert!(seen.insert(env.id), "row {} was claimed twice", env.id);
            if let Some(Some(key)) = key_of.get(&env.id) {
                published.entry(key.clone()).or_default().push(env.id);
            }
        }
        let (ids_a, ids_b) = (ids(&got_a), ids(&got_b));
        let (sent_a, sent_b) =
            tokio::join!(store.mark_sent(&ids_a, now), store.mark_sent(&ids_b, now));
        sent_a.expect("mark_sent failed");
        sent_b.expect("mark_sent failed");
    }
    assert_eq!(seen.len(), total, "every row must be claimed exactly once");
    for (key, order) in &published {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, &sorted, "key {key} was claimed out of order");
    }
    let stats = stats_ok(store).await;
    assert_eq!((stats.pending, stats.sent), (0, total as u64));
}

/// The writer leases a new row to the requested relay unless an earlier row of
/// its key is pending (or dead) and not that relay's; a duplicate leaves the
/// transaction usable.
pub async fn insert_with_lease_yields_to_earlier_rows<S: SqlStore>(store: &S) {
    let t = "conf.insert-lease";
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let until = Utc::now() + secs(3600);
    let lease_a = Some(Lease { owner: a, until });
    let lease_b = Some(Lease { owner: b, until });

    let e1 = envelope(t, Some("k"));
    assert_eq!(
        insert(store, &e1, lease_a).await,
        Inserted::Leased,
        "first row of a key"
    );

    let mut tx = store.begin().await.expect("begin failed");
    let writer = store.writer();
    let e2 = envelope(t, Some("k"));
    let e3 = envelope(t, Some("k"));
    let e4 = envelope(t, Some("k2"));
    let e5 = envelope(t, None);
    let e6 = envelope(t, Some("k"));
    let mut dup = envelope(t, None);
    dup.idempotency_key = e1.idempotency_key.clone();
    let e7 = envelope(t, None);
    let e8 = envelope(t, Some("k3"));
    let e9 = envelope(t, Some("k3"));
    let cases = [
        (
            &e2,
            lease_a,
            Inserted::Leased,
            "earlier rows are the same relay's",
        ),
        (
            &e3,
            lease_b,
            Inserted::Unleased,
            "an earlier row belongs to another relay",
        ),
        (&e4, lease_b, Inserted::Leased, "another key"),
        (&e5, lease_b, Inserted::Leased, "no key"),
        (&e6, None, Inserted::Unleased, "no lease asked for"),
        (
            &dup,
            lease_a,
            Inserted::Duplicate,
            "same topic and idempotency key",
        ),
        (
            &e7,
            lease_a,
            Inserted::Leased,
            "the transaction is usable after a duplicate",
        ),
        (&e8, None, Inserted::Unleased, "no lease asked for"),
        (
            &e9,
            lease_a,
            Inserted::Unleased,
            "an earlier row belongs to no relay",
        ),
    ];
    for (env, lease, expected, why) in cases {
        let got = writer
            .insert(&mut *tx, env, lease)
            .await
            .expect("insert failed");
        assert_eq!(got, expected, "{why}");
    }
    tx.commit().await.expect("commit failed");

    // Rows of a finished key no longer hold it back.
    mark_sent_ok(store, &[e4.id], Utc::now()).await;
    let e10 = envelope(t, Some("k2"));
    assert_eq!(
        insert(store, &e10, lease_a).await,
        Inserted::Leased,
        "earlier rows were sent"
    );

    // A dead row parks its key for inserts too.
    let e11 = envelope(t, Some("k4"));
    assert_eq!(insert(store, &e11, lease_a).await, Inserted::Leased);
    mark_dead_ok(store, e11.id, a, "poison", Utc::now()).await;
    let e12 = envelope(t, Some("k4"));
    assert_eq!(
        insert(store, &e12, lease_a).await,
        Inserted::Unleased,
        "a dead row parks its key"
    );

    // Only the unleased rows of keys not held by a lease are claimable, so
    // key `k` (held by `a`) waits while key `k3` flows.
    let now = after_writes();
    let claimed = claim(store, c, now).await;
    assert_eq!(ids(&claimed), vec![e8.id, e9.id]);
    let stats = stats_ok(store).await;
    assert_eq!(
        stats.pending, 10,
        "every row but the sent, the dead and the duplicate is pending"
    );
}

/// Expired messages are still claimed, so the relay can dead-letter them with
/// that reason.
pub async fn expired_messages_are_claimed<S: SqlStore>(store: &S) {
    let message = msg("conf.expiry", None, 1).ttl(std::time::Duration::from_secs(1));
    let id = enqueue(store, vec![message]).await[0];
    let now = after_writes() + secs(3600);
    let claimed = claim(store, Uuid::now_v7(), now).await;
    assert_eq!(ids(&claimed), vec![id]);
    assert!(claimed[0].is_expired(now));
}

/// A row is due at its creation time as given by the writer's caller, not by
/// the database's clock.
pub async fn timestamps_come_from_the_caller<S: SqlStore>(store: &S) {
    let future = Utc::now() + secs(86_400);
    let id = Uuid::now_v7();
    let mut env = Envelope::new(id, "conf.clock", id.to_string(), b"1".to_vec(), future);
    env.expires_at = Some(future + secs(60));
    assert_eq!(insert(store, &env, None).await, Inserted::Unleased);

    let owner = Uuid::now_v7();
    assert!(
        claim(store, owner, after_writes()).await.is_empty(),
        "not due before created_at"
    );
    let claimed = claim(store, owner, future).await;
    assert_eq!(ids(&claimed), vec![id]);
    assert!(close(claimed[0].created_at, future));
    assert!(!claimed[0].is_expired(future));
    let stats = stats_ok(store).await;
    assert!(stats.oldest_pending.is_some_and(|t| close(t, future)));
}

/// `topic_stats` counts pending and dead rows per topic, the
/// oldest pending row, and only the rows sent at or after `since`; topics
/// come sorted. `pending_by_topic` agrees on the pending rows.
pub async fn topic_stats_count_each_topic<S: SqlStore>(store: &S) {
    let (ta, tb) = ("conf.topics-a", "conf.topics-b");
    let a = enqueue(
        store,
        (0..4).map(|n| msg(ta, Some("k"), n)).collect::<Vec<_>>(),
    )
    .await;
    let b = enqueue(store, msgs(tb, &[None, None])).await;

    let owner = Uuid::now_v7();
    let t0 = after_writes();
    let claimed = claim(store, owner, t0).await;
    assert_eq!(claimed.len(), 6);
    let created = |id: Uuid| {
        claimed
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.created_at)
            .expect("claimed row")
    };

    // a[0] sent long ago, a[1] sent at t0: only a[1] is recent. b[0] dead,
    // b[1] sent at t0. a[2], a[3] stay pending.
    mark_sent_ok(store, &a[..1], t0 - secs(3600)).await;
    mark_sent_ok(store, &[a[1], b[1]], t0).await;
    mark_dead_ok(store, b[0], owner, "broken", t0).await;
    release_ok(store, &a[2..], owner).await;

    let stats = store
        .topic_stats(t0 - secs(60))
        .await
        .expect("topic_stats failed");
    let topics: Vec<&str> = stats.iter().map(|s| s.topic.as_str()).collect();
    assert_eq!(topics, vec![ta, tb], "one entry per topic, sorted");
    let (sa, sb) = (&stats[0], &stats[1]);
    assert_eq!(
        (sa.pending, sa.prepared, sa.dead, sa.sent_since),
        (2, 0, 0, 1),
        "topic a: two pending, one sent since the cut (the other before it)"
    );
    let oldest = sa.oldest_pending.expect("topic a has pending rows");
    assert!(
        close(oldest, created(a[2])),
        "oldest pending is the first pending row's creation time: {oldest} vs {}",
        created(a[2])
    );
    assert_eq!(
        (sb.pending, sb.prepared, sb.dead, sb.sent_since),
        (0, 0, 1, 1),
        "topic b: one dead, one sent (prepared rows: the half suite)"
    );
    assert_eq!(sb.oldest_pending, None, "topic b has no pending row");

    let later = store
        .topic_stats(t0 + secs(1))
        .await
        .expect("topic_stats failed");
    assert!(
        later.iter().all(|s| s.sent_since == 0),
        "nothing was sent after t0 + 1 s"
    );

    // From the pending rows only: topic b has none, so no entry.
    let pending = store
        .pending_by_topic()
        .await
        .expect("pending_by_topic failed");
    assert_eq!(
        pending.len(),
        1,
        "only topic a has pending rows: {pending:?}"
    );
    assert_eq!((pending[0].topic.as_str(), pending[0].pending), (ta, 2));
    assert_eq!(pending[0].oldest_pending, sa.oldest_pending);
    assert_eq!((pending[0].dead, pending[0].sent_since), (0, 0));
}

/// `dead_letter` finds one dead row by id (and nothing for a row that is
/// not dead); `purge_dead` deletes only dead rows matching its topic, key
/// and cut-off, oldest first, at most its limit per call.
pub async fn dead_letter_by_id_and_purge_dead<S: SqlStore>(store: &S) {
    let (ta, tb) = ("conf.purge-dead-a", "conf.purge-dead-b");
    let written = enqueue(
        store,
        vec![
            msg(ta, Some("k1"), 1),
            msg(ta, Some("k2"), 2),
            msg(ta, Some("k3"), 3),
            msg(tb, Some("k1"), 4),
            msg(tb, None, 5),
        ],
    )
    .await;
    let owner = Uuid::now_v7();
    let t0 = after_writes();
    assert_eq!(claim(store, owner, t0).await.len(), 5);
    for (i, id) in written[..4].iter().enumerate() {
        let at = t0 + secs(i64::try_from(i).expect("small") + 1);
        mark_dead_ok(store, *id, owner, "gave up", at).await;
    }
    // written[4] stays pending (leased).

    let one = store
        .dead_letter(written[1])
        .await
        .expect("dead_letter failed")
        .expect("written[1] is dead");
    assert_eq!(one.envelope.id, written[1]);
    assert_eq!(one.envelope.topic, ta);
    assert_eq!(one.envelope.key.as_deref(), Some("k2"));
    assert_eq!(one.reason, "gave up");
    assert!(close(one.dead_at, t0 + secs(2)), "dead_at is the caller's");
    assert!(
        store
            .dead_letter(written[4])
            .await
            .expect("dead_letter failed")
            .is_none(),
        "a pending row is not a dead letter"
    );
    assert!(
        store
            .dead_letter(Uuid::now_v7())
            .await
            .expect("dead_letter failed")
            .is_none()
    );

    let far = t0 + secs(3600);

    // By key: k1 of topic a and of topic b; the cut-off keeps b's (dead at +4 s).
    let purged = store
        .purge_dead(&DeadFilter::default().key("k1"), t0 + secs(3))
        .await
        .expect("purge_dead failed");
    assert_eq!(purged, 1, "only k1's rows dead before the cut-off");
    let left = dead_ids(&dead_letters_ok(store, &DeadFilter::default()).await);
    assert_eq!(left, vec![written[1], written[2], written[3]]);

    // By topic, in batches of one, oldest first.
    let batch = DeadFilter::default().topic(ta).limit(1);
    assert_eq!(store.purge_dead(&batch, far).await.expect("purge"), 1);
    let left = dead_ids(&dead_letters_ok(store, &DeadFilter::default()).await);
    assert_eq!(left, vec![written[2], written[3]], "the oldest goes first");
    assert_eq!(store.purge_dead(&batch, far).await.expect("purge"), 1);
    assert_eq!(store.purge_dead(&batch, far).await.expect("purge"), 0);
    assert_eq!(
        store
            .purge_dead(&DeadFilter::default().limit(0), far)
            .await
            .expect("purge"),
        0
    );

    // Everything dead; the pending row stays.
    assert_eq!(
        store
            .purge_dead(&DeadFilter::default(), far)
            .await
            .expect("purge_dead failed"),
        1
    );
    let stats = stats_ok(store).await;
    assert_eq!(
        (stats.pending, stats.dead),
        (1, 0),
        "only dead rows are purged"
    );
}

/// A row that cannot be read (`corrupt(id)` makes row `id` unreadable, as a
/// row written by hand or by another program can be) is dead-lettered with
/// the reason (`last_error(id)` reads it) by the claim that meets it: the
/// claim returns the other rows, the rows of its key behind it wait (a dead
/// row parks its key), and no claim is stuck on it.
///
/// Not part of [`store_conformance!`]: making a row unreadable takes each
/// database's own SQL, so each store's tests call it with theirs.
pub async fn an_unreadable_row_is_dead_lettered<S, C, CF, R, RF>(
    store: &S,
    corrupt: C,
    last_error: R,
) where
    S: SqlStore,
    C: FnOnce(Uuid) -> CF,
    CF: std::future::Future<Output = ()>,
    R: FnOnce(Uuid) -> RF,
    RF: std::future::Future<Output = Option<String>>,
{
    let t = "conf.unreadable";
    let w = enqueue(
        store,
        msgs(t, &[Some("k"), Some("k"), Some("k"), Some("other")]),
    )
    .await;
    corrupt(w[1]).await;
    let owner = Uuid::now_v7();
    let t0 = after_writes();
    // Row 1 is the key's head; 2 cannot be read; 3 waits behind it.
    let claimed = store
        .claim(&claim_req(owner, t0, 100))
        .await
        .expect("a claim must not fail on a row it cannot read");
    assert_eq!(ids(&claimed), vec![w[0], w[3]]);
    let stats = stats_ok(store).await;
    assert_eq!(stats.dead, 1, "the unreadable row is dead");
    let reason = last_error(w[1]).await.unwrap_or_default();
    assert!(
        reason.starts_with("the row cannot be read:"),
        "reason: {reason:?}"
    );
    mark_sent_ok(store, &[w[0], w[3]], t0).await;
    // The dead row parks its key, and claims keep working.
    assert!(claim(store, Uuid::now_v7(), t0).await.is_empty());
    let skipping = ClaimRequest {
        dead_parks_key: false,
        ..claim_req(Uuid::now_v7(), t0 + secs(2 * LEASE_SECS), 100)
    };
    assert_eq!(ids(&claim_with(store, &skipping).await), vec![w[2]]);
}

/// `connect(url)` on a server that refuses the connection (`url` points at a
/// closed port and holds the password `s3cret-pw`) fails at once with
/// [`Error::Connect`](txmsg_core::Error::Connect) naming `address` and the
/// refusal, never the password.
pub async fn a_refused_connection_names_the_address<S, F, Fut>(connect: F, url: &str, address: &str)
where
    S: std::fmt::Debug,
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = txmsg_core::Result<S>>,
{
    let err = connect(url.to_owned())
        .await
        .expect_err("nothing listens there");
    let shown = txmsg_core::__private::error_chain(&err);
    assert!(
        matches!(&err, txmsg_core::Error::Connect { address: a, .. } if a == address),
        "{shown}"
    );
    assert!(shown.contains("refused"), "{shown}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
}

/// `connect` refuses each of `urls` (other databases' URLs, or none at all)
/// with [`Error::Config`](txmsg_core::Error::Config) for `url`, naming
/// `scheme`, before anything is looked up.
pub async fn other_databases_urls_are_config_errors<S, F, Fut>(
    connect: F,
    urls: &[&str],
    scheme: &str,
) where
    S: std::fmt::Debug,
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = txmsg_core::Result<S>>,
{
    for url in urls {
        let err = connect((*url).to_owned())
            .await
            .expect_err("another database's url");
        assert!(
            matches!(&err, txmsg_core::Error::Config { field: "url", reason } if reason.contains(scheme)),
            "{url}: {err:?}"
        );
    }
}

/// A store's migration script (`TableStore::migration_script`, `txmsg
/// migrate --print-sql`) does what `migrate` does: `apply` runs `script` on
/// the store's fresh database, then `migrate` finds every version recorded
/// (`versions` counts the rows of the migrations table: as many before as
/// after, as many as the script's heading says) and changes nothing, and a
/// message written through the store's tables is pending in it.
///
/// # Panics
///
/// When any of that does not hold.
pub async fn a_migration_script_does_what_migrate_does<S, A, AF, V, VF>(
    store: S,
    script: String,
    apply: A,
    versions: V,
) where
    S: txmsg_core::SqlStore,
    A: FnOnce(String) -> AF,
    AF: Future<Output = ()>,
    V: Fn() -> VF,
    VF: Future<Output = i64>,
{
    let migrations: i64 = script
        .split_once("migrations 1 to ")
        .and_then(|(_, rest)| rest.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a heading with the last version: {script}"));
    assert!(script.contains("INSERT INTO"), "{script}");
    apply(script).await;
    assert_eq!(
        versions().await,
        migrations,
        "the script records each migration"
    );
    store
        .migrate()
        .await
        .expect("migrate after the script finds nothing to do");
    assert_eq!(
        versions().await,
        migrations,
        "migrate applied nothing again"
    );
    let outbox = txmsg_core::Outbox::new(&store);
    let mut tx = outbox.begin().await.expect("begin");
    tx.enqueue(txmsg_core::Message::new("script.check", &1).expect("message"))
        .await
        .expect("enqueue into the scripted tables");
    tx.commit().await.expect("commit");
    assert_eq!(store.stats().await.expect("stats").pending, 1);
}
