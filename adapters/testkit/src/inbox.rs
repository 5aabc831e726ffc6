//! The conformance suite of [`InboxStore`] adapters: the inbox that makes
//! consumers idempotent, and the consumers' dead letters.
//!
//! Every function takes a store that is freshly migrated, empty and used by
//! nothing else (its own database, schema or table names), checks one part of
//! the contract documented on [`InboxStore`] and
//! [`InboxWriter`](txmsg_core::consumer::InboxWriter), and panics with a
//! description of the first broken rule. Outcomes are observed through the
//! store's own methods, never through SQL: whether a key is recorded is asked
//! by recording it again in a transaction that is then rolled back, and the
//! business write that must commit or roll back with a key is an outbox row
//! written with [`SqlStore::writer`](txmsg_core::SqlStore::writer), counted
//! by [`stats`](txmsg_core::Store::stats).
//!
//! Times passed to the store are whole seconds, so stores that keep time at
//! millisecond precision pass too.
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
//! txmsg_testkit::inbox_conformance!(Fixture);
//! ```
//!
//! One `#[tokio::test]` per case, so that one case runs alone:
//! `cargo nextest run -p txmsg-postgres -E 'test(inbox_conformance::<case>)'`.
//!
//! [`upgrade_keeps_rows`] is not one of the cases the macro runs: it needs the adapter to
//! take its tables back to the previous version.
//!
//! # Panics
//!
//! Every function panics when the store breaks the contract or fails.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use txmsg_core::consumer::{ConsumerDeadLetter, InboxStore};
use txmsg_core::{DeadFilter, Envelope, Store};
use uuid::Uuid;

use crate::support::{after_writes, assert_same_fields, claim_req, enqueue, msg, stats_ok};
crate::suite_macro! {
    $ inbox_conformance, inbox, [
        migrate_is_idempotent,
        record_is_once_per_group_and_key,
        record_is_once_per_topic_and_key,
        rollback_leaves_no_key,
        duplicate_keeps_the_transaction_usable,
        key_commits_with_business_writes,
        concurrent_records_of_one_key_wait,
        dead_letter_round_trips_every_field,
        dead_letters_are_listed_oldest_first_with_filters,
        dead_letters_are_listed_100_at_most_by_default,
        remove_dead_follows_the_transaction,
        purge_inbox_deletes_old_keys_in_batches,
    ]
}

// ---------------------------------------------------------------------------
// helpers

const GROUP: &str = "conf-group";

/// How long the suite lets a transaction that must wait stay blocked before
/// it ends the one it waits for. Shorter than SQLite's busy timeout (5 s).
const BLOCKED_FOR: Duration = Duration::from_millis(300);

/// How long a transaction that was waiting may take to finish once the one it
/// waited for ended.
const FINISH_WITHIN: Duration = Duration::from_secs(10);

/// A whole-second time, `n` seconds after a fixed point.
fn at(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + n, 0).expect("a valid time")
}

/// The topic of the keys the cases record when the topic does not matter.
const TOPIC: &str = "conf.inbox";

/// Records `(group, key)` of [`TOPIC`] (or of `topic`) at `at` on the
/// transaction `tx`, panicking on error.
macro_rules! record {
    ($store:expr, $tx:expr, $group:expr, $key:expr, $at:expr) => {
        record!($store, $tx, $group, TOPIC, $key, $at)
    };
    ($store:expr, $tx:expr, $group:expr, $topic:expr, $key:expr, $at:expr) => {
        $store
            .inbox()
            .record(&mut *$tx, $group, $topic, $key, $at)
            .await
            .expect("record failed")
    };
}

/// Removes dead letter `id` on the transaction `tx`, panicking on error.
macro_rules! remove_dead {
    ($store:expr, $tx:expr, $id:expr) => {
        $store
            .inbox()
            .remove_dead(&mut *$tx, $id)
            .await
            .expect("remove_dead failed")
    };
}

/// Records `(group, key)` in its own committed transaction; returns whether it
/// was new.
async fn record_committed<S: InboxStore>(
    store: &S,
    group: &str,
    key: &str,
    at: DateTime<Utc>,
) -> bool {
    record_committed_in(store, group, TOPIC, key, at).await
}

/// Records `(group, topic, key)` in its own committed transaction; returns
/// whether it was new.
async fn record_committed_in<S: InboxStore>(
    store: &S,
    group: &str,
    topic: &str,
    key: &str,
    at: DateTime<Utc>,
) -> bool {
    let mut tx = store.begin().await.expect("begin failed");
    let fresh = record!(store, tx, group, topic, key, at);
    tx.commit().await.expect("commit failed");
    fresh
}

/// Whether `(group, key)` is recorded, asked without changing anything: the
/// key is recorded again in a transaction that is rolled back.
async fn is_recorded<S: InboxStore>(store: &S, group: &str, key: &str) -> bool {
    is_recorded_in(store, group, TOPIC, key).await
}

/// Whether `(group, topic, key)` is recorded, asked as [`is_recorded`].
async fn is_recorded_in<S: InboxStore>(store: &S, group: &str, topic: &str, key: &str) -> bool {
    let mut tx = store.begin().await.expect("begin failed");
    let fresh = record!(store, tx, group, topic, key, at(0));
    tx.rollback().await.expect("rollback failed");
    !fresh
}

/// A business write for the inbox tests: an outbox row on the same
/// transaction (the one write every SQL store can do and count).
fn business_row(n: u32) -> Envelope {
    let id = Uuid::now_v7();
    Envelope::new(
        id,
        "conf.inbox.effect",
        id.to_string(),
        n.to_string().into_bytes(),
        Utc::now(),
    )
}

async fn pending<S: Store>(store: &S) -> u64 {
    store.stats().await.expect("stats failed").pending
}

/// A dead letter of `group` with every field set.
fn dead_letter(
    group: &str,
    topic: &str,
    key: Option<&str>,
    dead_at: DateTime<Utc>,
) -> ConsumerDeadLetter {
    let message_id = Uuid::now_v7();
    let mut envelope = Envelope::new(
        message_id,
        topic,
        format!("idem-{message_id}"),
        br#"{"order":7,"note":"\u017elu\u0165ou\u010dk\u00fd"}"#.to_vec(),
        at(-3600),
    );
    envelope.key = key.map(str::to_owned);
    envelope.headers.insert(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    );
    envelope
        .headers
        .insert("x-tenant".to_owned(), "acme".to_owned());
    ConsumerDeadLetter::new(
        Uuid::now_v7(),
        group,
        envelope,
        "handler failed: boom",
        5,
        dead_at,
    )
}

async fn add_dead<S: InboxStore>(store: &S, dead: &ConsumerDeadLetter) {
    store
        .add_consumer_dead(dead)
        .await
        .expect("add_consumer_dead failed");
}

async fn list<S: InboxStore>(store: &S, group: &str, filter: &DeadFilter) -> Vec<Uuid> {
    store
        .consumer_dead_letters(group, filter)
        .await
        .expect("consumer_dead_letters failed")
        .iter()
        .map(|d| d.id)
        .collect()
}

async fn get<S: InboxStore>(store: &S, group: &str, id: Uuid) -> Option<ConsumerDeadLetter> {
    store
        .consumer_dead_letter(group, id)
        .await
        .expect("consumer_dead_letter failed")
}

/// The ids of `letters` in the order a list must return them: by dead time,
/// then id.
fn oldest_first(letters: &[&ConsumerDeadLetter]) -> Vec<Uuid> {
    let mut sorted: Vec<(DateTime<Utc>, Uuid)> =
        letters.iter().map(|d| (d.dead_at, d.id)).collect();
    sorted.sort();
    sorted.into_iter().map(|(_, id)| id).collect()
}

// ---------------------------------------------------------------------------
// cases

/// `migrate` may run again on a migrated store, and keeps outbox rows, inbox
/// keys and dead letters.
pub async fn migrate_is_idempotent<S: InboxStore>(store: &S) {
    store.migrate().await.expect("second migrate failed");
    store.migrate().await.expect("third migrate failed");
    enqueue(store, vec![msg("conf.inbox.migrate", None, 1)]).await;
    assert!(record_committed(store, GROUP, "kept", at(0)).await);
    let dead = dead_letter(GROUP, "conf.inbox.migrate", None, at(1));
    add_dead(store, &dead).await;

    store.migrate().await.expect("migrate with rows failed");
    assert_eq!(pending(store).await, 1, "migrate must keep outbox rows");
    assert!(
        is_recorded(store, GROUP, "kept").await,
        "migrate must keep inbox keys"
    );
    assert!(
        get(store, GROUP, dead.id).await.is_some(),
        "migrate must keep dead letters"
    );
}

/// Tables at the previous version, holding rows, are upgraded by `migrate`
/// without losing them, and the inbox works afterwards.
///
/// `store` is migrated and empty; `to_previous_version` takes its tables back
/// to the version before the consumer dead letters (for example by dropping
/// the dead-letter table and deleting the version's record), keeping the
/// outbox and inbox rows. Not one of the cases the macro runs.
pub async fn upgrade_keeps_rows<S, F, Fut>(store: &S, to_previous_version: F)
where
    S: InboxStore,
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let id = enqueue(store, vec![msg("conf.inbox.upgrade", Some("k"), 1)]).await[0];
    assert!(record_committed(store, GROUP, "before-upgrade", at(0)).await);

    crate::support::upgrade_from_previous(store, to_previous_version).await;

    let stats = stats_ok(store).await;
    assert_eq!(stats.pending, 1, "the upgrade must keep outbox rows");
    let claimed = store
        .claim(&claim_req(Uuid::now_v7(), after_writes(), 10))
        .await
        .expect("claim failed");
    assert_eq!(
        claimed.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![id],
        "the outbox row must be intact after the upgrade"
    );
    assert!(
        is_recorded(store, GROUP, "before-upgrade").await,
        "the upgrade must keep inbox keys"
    );
    let dead = dead_letter(GROUP, "conf.inbox.upgrade", Some("k"), at(1));
    add_dead(store, &dead).await;
    assert_eq!(
        list(store, GROUP, &DeadFilter::default()).await,
        vec![dead.id]
    );
}

/// Idempotency keys are unique per topic: the same key on two topics is two
/// messages, each recorded once.
pub async fn record_is_once_per_topic_and_key<S: InboxStore>(store: &S) {
    assert!(
        record_committed_in(store, GROUP, "conf.placed", "order-42", at(0)).await,
        "a new (topic, key) is recorded"
    );
    assert!(
        record_committed_in(store, GROUP, "conf.shipped", "order-42", at(1)).await,
        "the same key on another topic is another message"
    );
    for topic in ["conf.placed", "conf.shipped"] {
        assert!(
            !record_committed_in(store, GROUP, topic, "order-42", at(2)).await,
            "({topic}, order-42) recorded before is a duplicate"
        );
    }
    assert!(
        !is_recorded_in(store, GROUP, "conf.cancelled", "order-42").await,
        "a third topic's key is not recorded"
    );
}

/// Keys recorded before the inbox kept topics are still recognised after
/// the upgrade: they count for every topic, and new keys are per topic.
///
/// `store` is migrated and empty; `to_layout_without_topics` takes its inbox
/// back to the layout before the topic was part of the key (the table keyed
/// by (group, idempotency key) only, and the version's record deleted) and
/// records the key it is given for the group it is given, as that version
/// did. Not one of the cases the macro runs.
pub async fn keys_from_before_topics_are_recognised<S, F, Fut>(
    store: &S,
    to_layout_without_topics: F,
) where
    S: InboxStore,
    F: FnOnce(&'static str, &'static str) -> Fut,
    Fut: Future<Output = ()>,
{
    assert!(record_committed(store, GROUP, "kept-across", at(0)).await);
    to_layout_without_topics(GROUP, "recorded-before").await;
    store
        .migrate()
        .await
        .expect("migrate from the layout without topics failed");
    store
        .migrate()
        .await
        .expect("migrate after the upgrade failed");
    for topic in [TOPIC, "conf.other"] {
        assert!(
            is_recorded_in(store, GROUP, topic, "recorded-before").await,
            "a key recorded before the upgrade is a duplicate on {topic}"
        );
    }
    assert!(
        is_recorded_in(store, GROUP, TOPIC, "kept-across").await,
        "keys recorded by this version survive being taken back and upgraded"
    );
    assert!(
        !is_recorded_in(store, "conf-other-group", TOPIC, "recorded-before").await,
        "an old key belongs to its group only"
    );
    assert!(record_committed_in(store, GROUP, "conf.a", "fresh", at(1)).await);
    assert!(record_committed_in(store, GROUP, "conf.b", "fresh", at(1)).await);
    assert!(!record_committed_in(store, GROUP, "conf.a", "fresh", at(2)).await);
    let purged = store
        .purge_inbox(GROUP, at(100), 100)
        .await
        .expect("purge failed");
    assert_eq!(purged, 4, "old and new keys are purged alike");
    assert!(
        !is_recorded_in(store, GROUP, TOPIC, "recorded-before").await,
        "a purged old key is gone"
    );
}

/// `record` is true for a new (group, key) and false for one recorded
/// before; keys are per group.
pub async fn record_is_once_per_group_and_key<S: InboxStore>(store: &S) {
    assert!(
        record_committed(store, GROUP, "k1", at(0)).await,
        "a new key is recorded"
    );
    assert!(
        !record_committed(store, GROUP, "k1", at(1)).await,
        "a key recorded before is a duplicate"
    );
    assert!(
        record_committed(store, "conf-other-group", "k1", at(2)).await,
        "keys are per consumer group"
    );
    assert!(record_committed(store, GROUP, "k2", at(3)).await);
    assert!(
        !record_committed(store, "conf-other-group", "k1", at(4)).await,
        "the other group's key is recorded too"
    );

    // Twice in one transaction: the second sees the first.
    let mut tx = store.begin().await.expect("begin failed");
    assert!(record!(store, tx, GROUP, "k3", at(5)));
    assert!(
        !record!(store, tx, GROUP, "k3", at(5)),
        "a key recorded earlier in the transaction is a duplicate"
    );
    tx.commit().await.expect("commit failed");
    assert!(is_recorded(store, GROUP, "k3").await);
    assert!(!is_recorded(store, GROUP, "k4").await);
}

/// A rolled-back (or dropped) transaction leaves no key behind: the message
/// is handled again on redelivery.
pub async fn rollback_leaves_no_key<S: InboxStore>(store: &S) {
    let mut tx = store.begin().await.expect("begin failed");
    assert!(record!(store, tx, GROUP, "rolled-back", at(0)));
    tx.rollback().await.expect("rollback failed");
    assert!(
        !is_recorded(store, GROUP, "rolled-back").await,
        "a rolled-back transaction must leave no key"
    );

    let mut tx = store.begin().await.expect("begin failed");
    assert!(record!(store, tx, GROUP, "dropped", at(0)));
    drop(tx);
    assert!(
        record_committed(store, GROUP, "dropped", at(1)).await,
        "a dropped transaction must leave no key"
    );
}

/// A duplicate does not spoil the transaction: it goes on, writes and
/// commits.
pub async fn duplicate_keeps_the_transaction_usable<S: InboxStore>(store: &S) {
    assert!(record_committed(store, GROUP, "seen", at(0)).await);

    let mut tx = store.begin().await.expect("begin failed");
    assert!(!record!(store, tx, GROUP, "seen", at(1)));
    assert!(
        record!(store, tx, GROUP, "after-duplicate", at(1)),
        "the transaction must stay usable after a duplicate"
    );
    store
        .writer()
        .insert(&mut *tx, &business_row(1), None)
        .await
        .expect("a write after a duplicate failed");
    tx.commit().await.expect("commit after a duplicate failed");
    assert!(is_recorded(store, GROUP, "after-duplicate").await);
    assert_eq!(pending(store).await, 1);
}

/// The key and the handler's writes commit together or not at all.
pub async fn key_commits_with_business_writes<S: InboxStore>(store: &S) {
    let writer = store.writer();
    for (key, row, commits, how) in [
        ("both", 1, true, "commit"),
        ("neither", 2, false, "roll back"),
    ] {
        let mut tx = store.begin().await.expect("begin failed");
        assert!(record!(store, tx, GROUP, key, at(0)));
        writer
            .insert(&mut *tx, &business_row(row), None)
            .await
            .expect("business write failed");
        if commits {
            tx.commit().await.expect("commit failed");
        } else {
            tx.rollback().await.expect("rollback failed");
        }
        assert_eq!(
            is_recorded(store, GROUP, key).await,
            commits,
            "the key must {how} with the writes"
        );
        assert_eq!(
            pending(store).await,
            1,
            "the writes must {how} with the key"
        );
    }
}

/// Two transactions recording one key at once: the second waits for the
/// first to end, then gets `false` if it committed, `true` if it rolled
/// back. Either way exactly one handler applies the message.
pub async fn concurrent_records_of_one_key_wait<S: InboxStore>(store: &S) {
    for (key, first_commits) in [("raced-commit", true), ("raced-rollback", false)] {
        let mut first = store.begin().await.expect("begin failed");
        assert!(record!(store, first, GROUP, key, at(0)));

        let second = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await.expect("second begin failed");
                let fresh = record!(store, tx, GROUP, key, at(1));
                tx.commit().await.expect("second commit failed");
                fresh
            })
        };
        tokio::time::sleep(BLOCKED_FOR).await;
        assert!(
            !second.is_finished(),
            "a transaction recording a key another open transaction recorded must wait for it"
        );
        if first_commits {
            first.commit().await.expect("commit failed");
        } else {
            first.rollback().await.expect("rollback failed");
        }
        let fresh = tokio::time::timeout(FINISH_WITHIN, second)
            .await
            .expect("the waiting transaction did not finish after the first ended")
            .expect("the waiting transaction panicked");
        if first_commits {
            assert!(
                !fresh,
                "after the first committed, the second must see a duplicate"
            );
        } else {
            assert!(
                fresh,
                "after the first rolled back, the second must record the key"
            );
        }
        assert!(is_recorded(store, GROUP, key).await);
    }
}

/// A dead letter comes back by id with every field as written, for its own
/// group only.
pub async fn dead_letter_round_trips_every_field<S: InboxStore>(store: &S) {
    let dead = dead_letter(GROUP, "conf.inbox.dead", Some("order-7"), at(10));
    add_dead(store, &dead).await;

    let got = get(store, GROUP, dead.id)
        .await
        .expect("an added dead letter must be found by id");
    assert_eq!(got.id, dead.id);
    assert_eq!(got.group, GROUP);
    assert_eq!(got.reason, dead.reason);
    assert_eq!(got.attempts, dead.attempts);
    assert_eq!(got.dead_at, dead.dead_at);
    let (e, w) = (&got.envelope, &dead.envelope);
    assert_eq!(e.id, w.id, "the message id must be kept");
    assert_same_fields(e, w, "the dead letter's message");
    assert_eq!(e.created_at, w.created_at);

    assert!(
        get(store, "conf-other-group", dead.id).await.is_none(),
        "dead letters are per group"
    );
    assert!(get(store, GROUP, Uuid::now_v7()).await.is_none());

    // An unreadable message: no key, no headers, an empty idempotency key,
    // a body that is not JSON.
    let mut unreadable = dead_letter(GROUP, "conf.inbox.dead", None, at(11));
    unreadable.envelope.headers.clear();
    unreadable.envelope.idempotency_key = String::new();
    unreadable.envelope.payload = vec![0xff, 0x00, 0xfe];
    unreadable.attempts = 0;
    add_dead(store, &unreadable).await;
    let got = get(store, GROUP, unreadable.id)
        .await
        .expect("the unreadable dead letter must be kept");
    assert_eq!(got.envelope.key, None);
    assert!(got.envelope.headers.is_empty());
    assert_eq!(got.envelope.idempotency_key, "");
    assert_eq!(got.envelope.payload, vec![0xff, 0x00, 0xfe]);
    assert_eq!(got.attempts, 0);
}

/// A group's dead letters are listed oldest first (by dead time, then id),
/// filtered by topic and key, cut at the limit; other groups' are not.
pub async fn dead_letters_are_listed_oldest_first_with_filters<S: InboxStore>(store: &S) {
    let a = dead_letter(GROUP, "conf.t1", Some("k1"), at(30));
    let b = dead_letter(GROUP, "conf.t1", Some("k2"), at(10));
    let c = dead_letter(GROUP, "conf.t2", Some("k1"), at(20));
    let d = dead_letter(GROUP, "conf.t2", None, at(20));
    let other = dead_letter("conf-other-group", "conf.t1", Some("k1"), at(5));
    for dead in [&a, &b, &c, &d, &other] {
        add_dead(store, dead).await;
    }
    assert_eq!(
        store
            .consumer_dead_groups()
            .await
            .expect("consumer_dead_groups failed"),
        vec![
            ("conf-group".to_owned(), 4),
            ("conf-other-group".to_owned(), 1)
        ],
        "each group with its count, by name"
    );

    let all = oldest_first(&[&a, &b, &c, &d]);
    assert_eq!(
        list(store, GROUP, &DeadFilter::default()).await,
        all,
        "oldest first, by dead time then id"
    );
    assert_eq!(
        list(store, GROUP, &DeadFilter::default().topic("conf.t1")).await,
        vec![b.id, a.id]
    );
    assert_eq!(
        list(store, GROUP, &DeadFilter::default().key("k1")).await,
        vec![c.id, a.id]
    );
    assert_eq!(
        list(
            store,
            GROUP,
            &DeadFilter::default().topic("conf.t2").key("k1")
        )
        .await,
        vec![c.id]
    );
    assert!(
        list(store, GROUP, &DeadFilter::default().topic("conf.none"))
            .await
            .is_empty()
    );
    assert_eq!(
        list(store, GROUP, &DeadFilter::default().limit(2)).await,
        all[..2].to_vec()
    );
    assert!(
        list(store, GROUP, &DeadFilter::default().limit(0))
            .await
            .is_empty()
    );
    assert_eq!(
        list(store, "conf-other-group", &DeadFilter::default()).await,
        vec![other.id],
        "dead letters are per group"
    );
    assert!(
        list(store, "conf-no-group", &DeadFilter::default())
            .await
            .is_empty()
    );
}

/// Without a limit, a list holds the 100 oldest dead letters.
pub async fn dead_letters_are_listed_100_at_most_by_default<S: InboxStore>(store: &S) {
    let mut letters = Vec::new();
    // Written newest first, so the order must come from the store.
    for n in (0..101).rev() {
        let dead = dead_letter(GROUP, "conf.many", None, at(n));
        add_dead(store, &dead).await;
        letters.push(dead);
    }
    let refs: Vec<&ConsumerDeadLetter> = letters.iter().collect();
    let expected = oldest_first(&refs);
    assert_eq!(
        list(store, GROUP, &DeadFilter::default()).await,
        expected[..100].to_vec()
    );
    assert_eq!(
        list(store, GROUP, &DeadFilter::default().limit(200)).await,
        expected
    );
}

/// `remove_dead` deletes in the caller's transaction: a rollback keeps the
/// dead letter, a commit removes it; it says whether it existed.
pub async fn remove_dead_follows_the_transaction<S: InboxStore>(store: &S) {
    let dead = dead_letter(GROUP, "conf.inbox.remove", None, at(0));
    let kept = dead_letter(GROUP, "conf.inbox.remove", None, at(1));
    add_dead(store, &dead).await;
    add_dead(store, &kept).await;

    let mut tx = store.begin().await.expect("begin failed");
    assert!(
        remove_dead!(store, tx, dead.id),
        "an existing dead letter is removed"
    );
    tx.rollback().await.expect("rollback failed");
    assert!(
        get(store, GROUP, dead.id).await.is_some(),
        "a rolled-back removal must keep the dead letter"
    );

    let mut tx = store.begin().await.expect("begin failed");
    assert!(remove_dead!(store, tx, dead.id));
    // Together with the replay's inbox key, as a handler's replay does.
    assert!(record!(
        store,
        tx,
        GROUP,
        &dead.envelope.idempotency_key,
        at(2)
    ));
    tx.commit().await.expect("commit failed");
    assert!(
        get(store, GROUP, dead.id).await.is_none(),
        "a committed removal must delete the dead letter"
    );
    assert_eq!(
        list(store, GROUP, &DeadFilter::default()).await,
        vec![kept.id]
    );

    let mut tx = store.begin().await.expect("begin failed");
    assert!(
        !remove_dead!(store, tx, dead.id),
        "a removed dead letter no longer exists"
    );
    assert!(
        !remove_dead!(store, tx, Uuid::now_v7()),
        "an unknown dead letter does not exist"
    );
    tx.commit().await.expect("commit failed");
    assert!(get(store, GROUP, kept.id).await.is_some());
}

/// `purge_inbox` deletes at most `limit` of the group's keys processed
/// before `before`, never a later one nor another group's, and says how many;
/// `count_inbox` counts what it would delete.
pub async fn purge_inbox_deletes_old_keys_in_batches<S: InboxStore>(store: &S) {
    let old: Vec<String> = (0..5).map(|n| format!("old-{n}")).collect();
    let new: Vec<String> = (0..3).map(|n| format!("new-{n}")).collect();
    let mut tx = store.begin().await.expect("begin failed");
    for (n, key) in (0..).zip(&old) {
        assert!(record!(store, tx, GROUP, key, at(n)));
    }
    assert!(record!(store, tx, "conf-other-group", "old-other", at(0)));
    for (n, key) in (0..).zip(&new) {
        assert!(record!(store, tx, GROUP, key, at(100 + n)));
    }
    tx.commit().await.expect("commit failed");

    let count = |group, before| store.count_inbox(group, before);
    assert_eq!(count(GROUP, at(100)).await.expect("count_inbox failed"), 5);
    assert_eq!(
        count(GROUP, at(1_000)).await.expect("count_inbox failed"),
        8
    );
    assert_eq!(
        count("conf-no-such-group", at(1_000))
            .await
            .expect("count_inbox failed"),
        0
    );

    let purge = |limit| store.purge_inbox(GROUP, at(100), limit);
    assert_eq!(
        purge(0).await.expect("purge_inbox failed"),
        0,
        "a limit of 0 purges nothing"
    );
    assert_eq!(
        purge(2).await.expect("purge_inbox failed"),
        2,
        "at most `limit` keys per call"
    );
    assert_eq!(purge(2).await.expect("purge_inbox failed"), 2);
    assert_eq!(purge(2).await.expect("purge_inbox failed"), 1);
    assert_eq!(
        purge(2).await.expect("purge_inbox failed"),
        0,
        "only keys processed before `before`"
    );
    assert_eq!(count(GROUP, at(100)).await.expect("count_inbox failed"), 0);
    assert_eq!(
        count(GROUP, at(1_000)).await.expect("count_inbox failed"),
        3
    );

    for key in &old {
        assert!(
            !is_recorded(store, GROUP, key).await,
            "{key} must be purged"
        );
    }
    assert!(
        is_recorded(store, "conf-other-group", "old-other").await,
        "another group's keys stay: each group has its own retention"
    );
    for key in &new {
        assert!(
            is_recorded(store, GROUP, key).await,
            "{key} (processed at `before` or later) must stay"
        );
    }
}
