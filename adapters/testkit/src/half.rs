//! The conformance suite of half messages: the prepared rows a
//! [`SqlStore`] keeps for [`HalfOutbox::prepare`], settled by the producer
//! ([`Prepared::commit`], [`Prepared::rollback`]) or by the check-back worker
//! ([`HalfStore::claim_prepared`], [`HalfStore::record_check`],
//! [`HalfStore::resolve_prepared`], [`Store::mark_dead`](txmsg_core::Store::mark_dead), [`HalfStore::resume`]).
//!
//! Every function takes a store that is freshly migrated, empty and used by
//! nothing else, runs one part of the contract and panics with a description
//! of the first broken rule. Outcomes are observed through the store's own
//! methods (claims, dead letters, stats), never through SQL.
//!
//! The producer side goes through [`HalfOutbox::new`]`(&store)`, whose clock is
//! the system clock; the worker side passes its own `now` to every claim,
//! a second or more after the rows were written, and never sleeps.
//!
//! # Examples
//!
//! ```ignore
//! // In `adapters/<store>/tests/<store>.rs`, with `Fixture` a
//! // [`StoreFixture`](crate::StoreFixture) that gives each case a migrated
//! // store on a schema or database of its own:
//! txmsg_testkit::half_conformance!(Fixture);
//! ```
//!
//! One `#[tokio::test]` per case, so that one case runs alone:
//! `cargo nextest run -p txmsg-postgres -E 'test(half_conformance::<case>)'`.
//!
//! [`upgrade_keeps_rows`] is not one of the cases the macro runs: it needs the adapter to
//! take its tables back to the previous version.
//!
//! # Panics
//!
//! Every function panics when the store breaks the contract or fails.
//!
//! [`Prepared::commit`]: txmsg_core::half::Prepared::commit
//! [`Prepared::rollback`]: txmsg_core::half::Prepared::rollback

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use txmsg_core::half::{ClaimedHalf, Decision, HalfOutbox, Prepared, ResolveOutcome};
use txmsg_core::{DeadFilter, Envelope, Failure, HalfStore, Inserted, Lease, Message, SqlStore};
use uuid::Uuid;

use crate::support::{
    LEASE_SECS, after_writes, claim_req, close, dead_letters_ok, enqueue, mark_dead_ok,
    mark_failed_ok, mark_sent_ok, msg, release_ok, secs, stats_ok,
};
crate::suite_macro! {
    $ half_conformance, half, [
        migrate_is_idempotent,
        prepared_is_stored_but_not_published,
        prepared_round_trips_every_field,
        prepared_row_does_not_hold_back_its_key,
        duplicate_idempotency_key_is_reported,
        commit_makes_it_pending,
        rollback_deletes_it,
        check_back_rollback_fences_a_later_commit,
        producer_commit_fences_a_later_check_back,
        check_back_commit_fences_a_later_rollback,
        claim_prepared_leases_rows,
        concurrent_prepared_claims_are_disjoint,
        record_check_counts_and_reschedules,
        record_check_by_another_owner_changes_nothing,
        mark_dead_takes_prepared_rows,
        mark_prepared_dead_only_takes_a_held_prepared_row,
        resume_puts_a_dead_half_message_back,
        resume_ignores_other_dead_rows,
    ]
}

// ---------------------------------------------------------------------------
// helpers

/// Stores `message` prepared, its first check due after `check_after`.
async fn prepare<S: SqlStore + HalfStore>(
    store: &S,
    message: Message,
    check_after: StdDuration,
) -> Prepared<S::Database> {
    HalfOutbox::new(store)
        .prepare(message, check_after)
        .await
        .expect("prepare failed")
}

/// Stores a prepared message due at once.
async fn prepare_now<S: SqlStore + HalfStore>(
    store: &S,
    message: Message,
) -> Prepared<S::Database> {
    prepare(store, message, StdDuration::ZERO).await
}

/// A message of `topic` stored prepared and claimed at once by a check-back
/// worker, and its id.
async fn prepared_in_check<S: SqlStore + HalfStore>(
    store: &S,
    topic: &str,
) -> (Prepared<S::Database>, Uuid) {
    let p = prepare_now(store, msg(topic, None, 1)).await;
    let id = p.id();
    let claimed = claim_prepared(store, Uuid::now_v7(), after_writes(), 10).await;
    assert_eq!(prepared_ids(&claimed), vec![id]);
    (p, id)
}

/// The relay's claim.
async fn relay_claim<S: HalfStore>(store: &S, now: DateTime<Utc>) -> Vec<Uuid> {
    relay_claim_by(store, Uuid::now_v7(), now).await
}

/// The claim of the relay `owner`.
async fn relay_claim_by<S: HalfStore>(store: &S, owner: Uuid, now: DateTime<Utc>) -> Vec<Uuid> {
    store
        .claim(&claim_req(owner, now, 1000))
        .await
        .expect("claim failed")
        .iter()
        .map(|e| e.id)
        .collect()
}

/// The check-back worker's claim, checked for id order.
async fn claim_prepared<S: HalfStore>(
    store: &S,
    owner: Uuid,
    now: DateTime<Utc>,
    limit: u32,
) -> Vec<ClaimedHalf> {
    let claimed = store
        .claim_prepared(&claim_req(owner, now, limit))
        .await
        .expect("claim_prepared failed");
    let ids = prepared_ids(&claimed);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "claim_prepared must return rows sorted by id");
    claimed
}

fn prepared_ids(claimed: &[ClaimedHalf]) -> Vec<Uuid> {
    claimed.iter().map(|p| p.envelope.id).collect()
}

/// Records a check-back of `id` by `owner` (`ran`: whether it ran), the
/// next one due at `next`.
async fn record_check_ok<S: HalfStore>(
    store: &S,
    id: Uuid,
    owner: Uuid,
    next: DateTime<Utc>,
    ran: bool,
) {
    store
        .record_check(id, owner, next, ran)
        .await
        .expect("record_check failed");
}

async fn resolve<S: HalfStore>(store: &S, id: Uuid, how: Decision) -> ResolveOutcome {
    store
        .resolve_prepared(id, how, Utc::now())
        .await
        .expect("resolve_prepared failed")
}

/// Fails unless the producer's commit failed with `Error::RolledBack`
/// (`why` says why it must).
fn assert_rolled_back(committed: txmsg_core::Result<()>, why: &str) {
    let err = committed.expect_err(why);
    assert!(
        err.is_rolled_back(),
        "expected Error::RolledBack, got {err:?}"
    );
}

async fn counts<S: HalfStore>(store: &S) -> (u64, u64, u64, u64) {
    let s = stats_ok(store).await;
    (s.prepared, s.pending, s.sent, s.dead)
}

// ---------------------------------------------------------------------------
// cases

/// `migrate` may run again on a migrated store and keeps prepared rows.
pub async fn migrate_is_idempotent<S: SqlStore + HalfStore>(store: &S) {
    store.migrate().await.expect("second migrate failed");
    let p = prepare_now(store, msg("conf.half.migrate", None, 1)).await;
    store.migrate().await.expect("third migrate failed");
    assert_eq!(counts(store).await, (1, 0, 0, 0), "migrate must keep rows");
    let claimed = claim_prepared(store, Uuid::now_v7(), after_writes(), 10).await;
    assert_eq!(prepared_ids(&claimed), vec![p.id()]);
}

/// A prepared message is counted in `stats().prepared` and in its topic's
/// `topic_stats`, is never claimed by
/// the relay, is left alone by the relay's marks, and is claimed by
/// `claim_prepared` only once its first check is due.
pub async fn prepared_is_stored_but_not_published<S: SqlStore + HalfStore>(store: &S) {
    let p = prepare(
        store,
        msg("conf.half.hidden", None, 1),
        StdDuration::from_secs(60),
    )
    .await;
    let id = p.id();
    let stats = stats_ok(store).await;
    assert_eq!(stats.prepared, 1, "a prepared row is counted as prepared");
    assert_eq!((stats.pending, stats.sent, stats.dead), (0, 0, 0));
    assert_eq!(stats.oldest_pending, None, "a prepared row is not pending");
    let topics = store
        .topic_stats(Utc::now() - secs(60))
        .await
        .expect("topic_stats failed");
    let counted: Vec<_> = topics
        .iter()
        .map(|t| (t.topic.as_str(), t.prepared, t.pending))
        .collect();
    assert_eq!(
        counted,
        vec![("conf.half.hidden", 1, 0)],
        "topic_stats counts the prepared row under its topic"
    );

    let late = after_writes() + secs(3600);
    assert!(
        relay_claim(store, late).await.is_empty(),
        "the relay must never claim a prepared row"
    );
    // The relay's marks do not apply to prepared rows.
    let owner = Uuid::now_v7();
    mark_sent_ok(store, &[id], late).await;
    let failure = Failure {
        id,
        owner,
        next_attempt_at: late + secs(3600),
        error: "nope".into(),
    };
    mark_failed_ok(store, &failure).await;
    release_ok(store, &[id], owner).await;
    assert_eq!(counts(store).await, (1, 0, 0, 0));

    assert!(
        claim_prepared(store, owner, after_writes(), 10)
            .await
            .is_empty(),
        "a prepared row is not checked before check_after"
    );
    let due = after_writes() + secs(60);
    let claimed = claim_prepared(store, owner, due, 10).await;
    assert_eq!(prepared_ids(&claimed), vec![id], "due: claimable");
    assert_eq!(claimed[0].checks, 0);
}

/// `claim_prepared` returns every field as written: topic, key, idempotency
/// key, headers, exact payload bytes, creation time and expiry; expired
/// prepared rows are returned too.
pub async fn prepared_round_trips_every_field<S: SqlStore + HalfStore>(store: &S) {
    let before = Utc::now();
    let message = Message::new("conf.half.fields", &("order", 7, "žluťoučký kůň"))
        .expect("valid message")
        .key("order-7")
        .idempotency_key("order-7-charged")
        .header("x-tenant", "acme")
        .ttl(StdDuration::from_secs(5));
    let p = prepare_now(store, message).await;
    let after = Utc::now();

    // Past the expiry: still returned, for a last check.
    let claimed = claim_prepared(store, Uuid::now_v7(), after_writes() + secs(60), 10).await;
    assert_eq!(prepared_ids(&claimed), vec![p.id()]);
    let env: &Envelope = &claimed[0].envelope;
    assert_eq!(env.topic, "conf.half.fields");
    assert_eq!(env.key.as_deref(), Some("order-7"));
    assert_eq!(env.idempotency_key, "order-7-charged");
    assert_eq!(env.payload, "[\"order\",7,\"žluťoučký kůň\"]".as_bytes());
    assert_eq!(
        env.headers.get("x-tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(env.attempts, 0);
    assert!(
        env.created_at >= before - Duration::milliseconds(1)
            && env.created_at <= after + Duration::milliseconds(1),
        "created_at must be the producer's clock"
    );
    let expires_at = env.expires_at.expect("a message with a ttl has an expiry");
    assert!(close(expires_at, env.created_at + secs(5)));
    assert_eq!(claimed[0].checks, 0);
}

/// A prepared row is not part of its key's order: later messages of the same
/// key are claimed past it, and the writer leases them at insert.
pub async fn prepared_row_does_not_hold_back_its_key<S: SqlStore + HalfStore>(store: &S) {
    let t = "conf.half.key";
    let _p = prepare_now(store, msg(t, Some("k"), 1)).await;

    let later = enqueue(store, vec![msg(t, Some("k"), 2)]).await[0];
    assert_eq!(
        relay_claim(store, after_writes()).await,
        vec![later],
        "a prepared row must not hold back the later rows of its key"
    );
    mark_sent_ok(store, &[later], after_writes()).await;

    let id = Uuid::now_v7();
    let mut env = Envelope::new(id, t, id.to_string(), b"3".to_vec(), Utc::now());
    env.key = Some("k".into());
    let lease = Lease {
        owner: Uuid::now_v7(),
        until: Utc::now() + secs(LEASE_SECS),
    };
    let mut tx = store.begin().await.expect("begin failed");
    let inserted = store
        .writer()
        .insert(&mut *tx, &env, Some(lease))
        .await
        .expect("insert failed");
    tx.commit().await.expect("commit failed");
    assert_eq!(
        inserted,
        Inserted::Leased,
        "a prepared row of the key must not keep the writer from leasing"
    );
    assert_eq!(counts(store).await, (1, 1, 1, 0));
}

/// Preparing a message whose idempotency key the topic already has is
/// refused with `Error::Duplicate` and stores nothing.
pub async fn duplicate_idempotency_key_is_reported<S: SqlStore + HalfStore>(store: &S) {
    let t = "conf.half.dup";
    let first = prepare_now(store, msg(t, None, 1).idempotency_key("once")).await;
    let again = HalfOutbox::new(store)
        .prepare(msg(t, None, 2).idempotency_key("once"), StdDuration::ZERO)
        .await;
    let err = again.expect_err("a repeated idempotency key must be refused");
    assert!(err.is_duplicate(), "expected Error::Duplicate, got {err:?}");

    // Also against a pending message of the topic.
    enqueue(store, vec![msg(t, None, 3).idempotency_key("pending-one")]).await;
    let err = HalfOutbox::new(store)
        .prepare(
            msg(t, None, 4).idempotency_key("pending-one"),
            StdDuration::ZERO,
        )
        .await
        .expect_err("a key of a pending message must be refused too");
    assert!(err.is_duplicate(), "expected Error::Duplicate, got {err:?}");

    // The same key on another topic is another message.
    let elsewhere = prepare_now(
        store,
        msg("conf.half.dup2", None, 5).idempotency_key("once"),
    )
    .await;
    assert_ne!(elsewhere.id(), first.id());
    assert_eq!(counts(store).await, (2, 1, 0, 0));
}

/// `Prepared::commit` makes the row pending and claimable by the relay; the
/// check-back worker no longer sees it.
pub async fn commit_makes_it_pending<S: SqlStore + HalfStore>(store: &S) {
    let p = prepare(
        store,
        msg("conf.half.commit", Some("k"), 1),
        StdDuration::from_secs(60),
    )
    .await;
    let id = p.id();
    p.commit().await.expect("commit failed");
    let stats = stats_ok(store).await;
    assert_eq!((stats.prepared, stats.pending), (0, 1));
    assert!(stats.oldest_pending.is_some());
    assert!(
        claim_prepared(store, Uuid::now_v7(), after_writes() + secs(120), 10)
            .await
            .is_empty(),
        "a committed message is not checked"
    );
    assert_eq!(
        relay_claim(store, after_writes()).await,
        vec![id],
        "a committed message is due at once"
    );
}

/// `Prepared::rollback` deletes the row: nothing to publish, check or list.
pub async fn rollback_deletes_it<S: SqlStore + HalfStore>(store: &S) {
    let p = prepare_now(store, msg("conf.half.rollback", None, 1)).await;
    let id = p.id();
    assert_eq!(
        p.rollback().await.expect("rollback failed"),
        ResolveOutcome::Done
    );
    assert_eq!(counts(store).await, (0, 0, 0, 0));
    assert!(relay_claim(store, after_writes()).await.is_empty());
    assert!(
        claim_prepared(store, Uuid::now_v7(), after_writes(), 10)
            .await
            .is_empty()
    );
    let dead = dead_letters_ok(store, &DeadFilter::default()).await;
    assert!(
        dead.is_empty(),
        "a rolled-back message is not a dead letter"
    );
    assert_eq!(
        resolve(store, id, Decision::Commit).await,
        ResolveOutcome::AlreadyRolledBack
    );
}

/// The fence: a check-back that rolled the message back first makes the
/// producer's commit fail with `Error::RolledBack`.
pub async fn check_back_rollback_fences_a_later_commit<S: SqlStore + HalfStore>(store: &S) {
    let (p, id) = prepared_in_check(store, "conf.half.fence1").await;
    assert_eq!(
        resolve(store, id, Decision::Rollback).await,
        ResolveOutcome::Done
    );
    assert_rolled_back(
        p.commit().await,
        "committing a rolled-back message must fail",
    );
    assert_eq!(counts(store).await, (0, 0, 0, 0));
    assert!(relay_claim(store, after_writes()).await.is_empty());
}

/// The fence: after the producer committed, the check-back's verdicts find
/// the message committed and change nothing.
pub async fn producer_commit_fences_a_later_check_back<S: SqlStore + HalfStore>(store: &S) {
    let (p, id) = prepared_in_check(store, "conf.half.fence2").await;
    p.commit().await.expect("commit failed");
    assert_eq!(
        resolve(store, id, Decision::Rollback).await,
        ResolveOutcome::AlreadyCommitted
    );
    assert_eq!(
        resolve(store, id, Decision::Commit).await,
        ResolveOutcome::AlreadyCommitted
    );
    assert_eq!(counts(store).await, (0, 1, 0, 0), "the row stays pending");
    let now = after_writes();
    assert_eq!(relay_claim(store, now).await, vec![id]);
    mark_sent_ok(store, &[id], now).await;
    assert_eq!(
        resolve(store, id, Decision::Rollback).await,
        ResolveOutcome::AlreadyCommitted,
        "a sent message was committed"
    );
    assert_eq!(counts(store).await, (0, 0, 1, 0));
}

/// The fence: after a check-back committed the message, the producer's
/// rollback reports `AlreadyCommitted` and the message goes out.
pub async fn check_back_commit_fences_a_later_rollback<S: SqlStore + HalfStore>(store: &S) {
    let p = prepare_now(store, msg("conf.half.fence3", None, 1)).await;
    let id = p.id();
    assert_eq!(
        resolve(store, id, Decision::Commit).await,
        ResolveOutcome::Done
    );
    assert_eq!(
        p.rollback().await.expect("rollback failed"),
        ResolveOutcome::AlreadyCommitted
    );
    assert_eq!(counts(store).await, (0, 1, 0, 0));
    assert_eq!(relay_claim(store, after_writes()).await, vec![id]);
}

/// `claim_prepared` leases what it returns, oldest first and at most
/// `limit`: another worker gets those rows only once the lease ran out.
pub async fn claim_prepared_leases_rows<S: SqlStore + HalfStore>(store: &S) {
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            prepare_now(store, msg("conf.half.lease", Some("k"), n))
                .await
                .id(),
        );
    }
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let now = after_writes();
    let got = claim_prepared(store, a, now, 2).await;
    assert_eq!(prepared_ids(&got), ids[..2], "oldest first, at most limit");
    let got = claim_prepared(store, b, now, 10).await;
    assert_eq!(
        prepared_ids(&got),
        ids[2..],
        "leased rows are not claimed again; keys play no part"
    );
    assert!(
        claim_prepared(store, b, now + secs(LEASE_SECS), 10)
            .await
            .is_empty()
    );
    let expired = now + secs(LEASE_SECS) + Duration::milliseconds(1);
    let got = claim_prepared(store, b, expired, 10).await;
    assert_eq!(prepared_ids(&got), ids, "expired leases are taken over");
    assert!(claim_prepared(store, a, expired, 0).await.is_empty());
}

/// Two workers claiming at once never get the same prepared row.
pub async fn concurrent_prepared_claims_are_disjoint<S: SqlStore + HalfStore>(store: &S) {
    let total = 300u32;
    let mut written = HashSet::new();
    for n in 0..total {
        let key = (n % 2 == 0).then(|| format!("k{}", n % 7));
        let p = prepare_now(store, msg("conf.half.concurrent", key.as_deref(), n)).await;
        written.insert(p.id());
    }
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = after_writes();
    let mut seen = HashSet::new();
    for round in 0..200 {
        let now = t0 + Duration::milliseconds(round);
        let (ra, rb) = (claim_req(a, now, 17), claim_req(b, now, 23));
        let (got_a, got_b) = tokio::join!(store.claim_prepared(&ra), store.claim_prepared(&rb));
        let (got_a, got_b) = (
            got_a.expect("claim_prepared failed"),
            got_b.expect("claim_prepared failed"),
        );
        if got_a.is_empty() && got_b.is_empty() {
            break;
        }
        for p in got_a.iter().chain(&got_b) {
            assert!(
                seen.insert(p.envelope.id),
                "row {} was claimed twice",
                p.envelope.id
            );
        }
        // Half are committed, half wait for a check far in the future.
        for p in &got_a {
            assert_eq!(
                resolve(store, p.envelope.id, Decision::Commit).await,
                ResolveOutcome::Done
            );
        }
        for p in &got_b {
            record_check_ok(store, p.envelope.id, b, t0 + secs(3600), true).await;
        }
    }
    assert_eq!(seen, written, "every row must be claimed exactly once");
    let stats = stats_ok(store).await;
    assert_eq!(stats.prepared + stats.pending, u64::from(total));
}

/// `record_check` releases the row, moves its next check, and counts the
/// check only when it really ran.
pub async fn record_check_counts_and_reschedules<S: SqlStore + HalfStore>(store: &S) {
    let p = prepare_now(store, msg("conf.half.checks", None, 1)).await;
    let id = p.id();
    let owner = Uuid::now_v7();
    let t0 = after_writes();
    assert_eq!(claim_prepared(store, owner, t0, 10).await.len(), 1);

    record_check_ok(store, id, owner, t0 + secs(30), true).await;
    assert!(
        claim_prepared(store, owner, t0 + secs(29), 10)
            .await
            .is_empty(),
        "not due before the next check"
    );
    let got = claim_prepared(store, owner, t0 + secs(30), 10).await;
    assert_eq!(
        prepared_ids(&got),
        vec![id],
        "released and due at the next check"
    );
    assert_eq!(got[0].checks, 1, "a check that ran counts");

    record_check_ok(store, id, owner, t0 + secs(60), false).await;
    assert!(
        claim_prepared(store, owner, t0 + secs(59), 10)
            .await
            .is_empty()
    );
    let got = claim_prepared(store, owner, t0 + secs(60), 10).await;
    assert_eq!(got[0].checks, 1, "a check that did not run does not count");

    record_check_ok(store, id, owner, t0 + secs(90), true).await;
    let got = claim_prepared(store, owner, t0 + secs(90), 10).await;
    assert_eq!(got[0].checks, 2);

    // A committed row is no longer checked; recording a check changes nothing.
    p.commit().await.expect("commit failed");
    record_check_ok(store, id, owner, t0 + secs(120), true).await;
    assert_eq!(counts(store).await, (0, 1, 0, 0));
}

/// `record_check` by a worker that does not hold the row changes nothing:
/// the holder's lease stays and the checks are not counted.
pub async fn record_check_by_another_owner_changes_nothing<S: SqlStore + HalfStore>(store: &S) {
    let id = prepare_now(store, msg("conf.half.owner", None, 1))
        .await
        .id();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = after_writes();
    assert_eq!(claim_prepared(store, a, t0, 10).await.len(), 1);
    record_check_ok(store, id, b, t0 + secs(3600), true).await;
    assert!(
        claim_prepared(store, b, t0 + secs(1), 10).await.is_empty(),
        "the holder's lease must stay"
    );
    let expired = t0 + secs(LEASE_SECS) + Duration::milliseconds(1);
    let got = claim_prepared(store, b, expired, 10).await;
    assert_eq!(
        prepared_ids(&got),
        vec![id],
        "the next check must not have moved"
    );
    assert_eq!(got[0].checks, 0, "the check must not have been counted");
}

/// `mark_dead` takes a prepared row held by the caller or by nobody, and not
/// one held by another worker; the dead half message is listed with its
/// reason, is no longer checked, and settling it reports it dead.
pub async fn mark_dead_takes_prepared_rows<S: SqlStore + HalfStore>(store: &S) {
    let t = "conf.half.dead";
    let held = prepare_now(store, msg(t, Some("k"), 1)).await;
    let free = prepare_now(store, msg(t, None, 2)).await;
    let (held_id, free_id) = (held.id(), free.id());
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = after_writes();
    assert_eq!(claim_prepared(store, a, t0, 1).await.len(), 1);

    mark_dead_ok(store, held_id, b, "not mine", t0).await;
    assert_eq!(
        counts(store).await,
        (2, 0, 0, 0),
        "another worker's row stays"
    );

    mark_dead_ok(
        store,
        held_id,
        a,
        "unresolved after 15 checks",
        t0 + secs(1),
    )
    .await;
    mark_dead_ok(
        store,
        free_id,
        b,
        "no check-back for the topic",
        t0 + secs(2),
    )
    .await;
    assert_eq!(counts(store).await, (0, 0, 0, 2));

    let dead = dead_letters_ok(store, &DeadFilter::default()).await;
    let listed: BTreeMap<Uuid, (String, DateTime<Utc>)> = dead
        .iter()
        .map(|d| (d.envelope.id, (d.reason.clone(), d.dead_at)))
        .collect();
    assert_eq!(listed.len(), 2);
    let (reason, dead_at) = &listed[&held_id];
    assert_eq!(reason, "unresolved after 15 checks");
    assert!(close(*dead_at, t0 + secs(1)));
    assert_eq!(listed[&free_id].0, "no check-back for the topic");

    assert!(
        claim_prepared(store, a, t0 + secs(3600), 10)
            .await
            .is_empty(),
        "a dead message is not checked"
    );
    assert!(relay_claim(store, t0 + secs(3600)).await.is_empty());
    assert_eq!(
        resolve(store, free_id, Decision::Rollback).await,
        ResolveOutcome::Dead
    );
    assert_rolled_back(held.commit().await, "committing a dead message must fail");
    assert_eq!(
        free.rollback().await.expect("rollback failed"),
        ResolveOutcome::Dead
    );
    assert_eq!(counts(store).await, (0, 0, 0, 2));
}

/// `mark_prepared_dead`, the check-back worker's verdict, applies only to a
/// row still prepared and held by the caller: not to a row another worker
/// holds, nobody holds, or its producer committed while the check ran.
pub async fn mark_prepared_dead_only_takes_a_held_prepared_row<S: SqlStore + HalfStore>(store: &S) {
    let t = "conf.half.fence";
    let raced = prepare_now(store, msg(t, Some("k"), 1)).await;
    let held = prepare_now(store, msg(t, Some("k"), 2)).await;
    let free = prepare_now(store, msg(t, None, 3)).await;
    let (raced_id, held_id, free_id) = (raced.id(), held.id(), free.id());
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = after_writes();
    assert_eq!(claim_prepared(store, a, t0, 2).await.len(), 2);

    // The producer commits while a's check runs.
    raced.commit().await.expect("commit failed");
    let mark = |id, owner| async move {
        store
            .mark_prepared_dead(id, owner, "unresolved after 1 checks", t0)
            .await
            .expect("mark_prepared_dead failed")
    };
    assert!(!mark(raced_id, a).await, "a committed row is not prepared");
    assert!(!mark(held_id, b).await, "another worker holds it");
    assert!(!mark(free_id, a).await, "nobody holds it");
    assert_eq!(counts(store).await, (2, 1, 0, 0), "nothing changed");

    assert!(mark(held_id, a).await, "the holder's verdict applies");
    assert_eq!(counts(store).await, (1, 1, 0, 1));
    let dead = dead_letters_ok(store, &DeadFilter::default()).await;
    assert_eq!(
        dead.iter()
            .map(|d| (d.envelope.id, d.reason.as_str()))
            .collect::<Vec<_>>(),
        vec![(held_id, "unresolved after 1 checks")]
    );
    assert_eq!(relay_claim(store, t0 + secs(1)).await, vec![raced_id]);
}

/// `resume` puts a half message that went dead while prepared back to
/// prepared, checks reset, first check at the given time; it is then
/// settled as usual.
pub async fn resume_puts_a_dead_half_message_back<S: SqlStore + HalfStore>(store: &S) {
    let p = prepare_now(store, msg("conf.half.resume", None, 1)).await;
    let id = p.id();
    let owner = Uuid::now_v7();
    let t0 = after_writes();
    for i in 0..2 {
        let now = t0 + secs(i * 10);
        assert_eq!(claim_prepared(store, owner, now, 10).await.len(), 1);
        record_check_ok(store, id, owner, now + secs(10), true).await;
    }
    let now = t0 + secs(20);
    let got = claim_prepared(store, owner, now, 10).await;
    assert_eq!(got[0].checks, 2);
    mark_dead_ok(store, id, owner, "unresolved after 3 checks", now).await;

    let at = now + secs(100);
    assert!(store.resume(id, at).await.expect("resume failed"));
    assert_eq!(counts(store).await, (1, 0, 0, 0));
    assert!(
        dead_letters_ok(store, &DeadFilter::default())
            .await
            .is_empty()
    );
    assert!(
        !store.resume(id, at).await.expect("resume failed"),
        "a prepared message is not dead"
    );
    assert!(
        claim_prepared(store, owner, at - secs(1), 10)
            .await
            .is_empty(),
        "the first check is due at the resume time"
    );
    let got = claim_prepared(store, owner, at, 10).await;
    assert_eq!(prepared_ids(&got), vec![id]);
    assert_eq!(got[0].checks, 0, "resume resets the checks");

    assert_eq!(
        resolve(store, id, Decision::Commit).await,
        ResolveOutcome::Done
    );
    assert_eq!(relay_claim(store, after_writes()).await, vec![id]);
}

/// `resume` is `false` for anything but a half message that went dead while
/// prepared: an unknown id, an ordinary dead message, a committed half
/// message that went dead in the relay, a replayed one.
pub async fn resume_ignores_other_dead_rows<S: SqlStore + HalfStore>(store: &S) {
    let t = "conf.half.not-half";
    let at = after_writes();
    assert!(
        !store
            .resume(Uuid::now_v7(), at)
            .await
            .expect("resume failed")
    );

    let plain = enqueue(store, vec![msg(t, None, 1)]).await[0];
    let committed = prepare_now(store, msg(t, None, 2)).await;
    let committed_id = committed.id();
    committed.commit().await.expect("commit failed");

    let owner = Uuid::now_v7();
    let now = after_writes();
    assert_eq!(relay_claim_by(store, owner, now).await.len(), 2);
    for id in [plain, committed_id] {
        mark_dead_ok(store, id, owner, "too many attempts", now).await;
        assert!(
            !store.resume(id, now).await.expect("resume failed"),
            "only a half message that died prepared can be resumed"
        );
    }
    assert_eq!(counts(store).await, (0, 0, 0, 2));

    // A dead half message that an operator replays is delivered, and is an
    // ordinary message from then on.
    let half = prepare_now(store, msg(t, None, 3)).await.id();
    mark_dead_ok(store, half, owner, "unresolved", now).await;
    assert!(store.replay(half, now).await.expect("replay failed"));
    assert_eq!(counts(store).await, (0, 1, 0, 2));
    mark_dead_ok(store, half, owner, "too many attempts", now).await;
    assert!(!store.resume(half, now).await.expect("resume failed"));
    assert!(store.replay(plain, now).await.expect("replay failed"));
}

/// Tables at the previous version, holding rows, are upgraded by `migrate`
/// without losing them, and half messages work afterwards.
///
/// `store` is migrated and empty; `to_previous_version` takes its tables back
/// to the version before half messages (for example by dropping the `half`
/// column and its index and deleting the version's record), keeping the
/// rows. Not one of the cases the macro runs.
pub async fn upgrade_keeps_rows<S, F, Fut>(store: &S, to_previous_version: F)
where
    S: SqlStore + HalfStore,
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let t = "conf.half.upgrade";
    let pending = enqueue(store, vec![msg(t, Some("k"), 1)]).await[0];
    let owner = Uuid::now_v7();
    let now = after_writes();
    let dead = enqueue(store, vec![msg(t, None, 2)]).await[0];
    mark_dead_ok(store, dead, owner, "too many attempts", now).await;

    crate::support::upgrade_from_previous(store, to_previous_version).await;

    assert_eq!(counts(store).await, (0, 1, 0, 1), "the upgrade keeps rows");
    assert!(
        !store.resume(dead, now).await.expect("resume failed"),
        "rows from before the upgrade are not half messages"
    );
    let p = prepare_now(store, msg(t, Some("k"), 3)).await;
    assert_eq!(relay_claim(store, after_writes()).await, vec![pending]);
    let got = claim_prepared(store, owner, after_writes(), 10).await;
    assert_eq!(prepared_ids(&got), vec![p.id()]);
    p.commit().await.expect("commit failed");
    assert_eq!(counts(store).await, (0, 2, 0, 1));
}
