//! Tests of `SqliteStore` on temporary database files and on `sqlite::memory:`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, Duration, Utc};
use sqlx::Row;
use txmsg_core::{
    ClaimRequest, DeadFilter, Envelope, Error, Failure, Inserted, Lease, Message, Outbox, SqlStore,
    Store, Tables,
};
use txmsg_sqlite::SqliteStore;
use uuid::Uuid;

/// A database file under the temp dir, removed (with its WAL files) on drop.
struct TempDb {
    path: PathBuf,
}

impl TempDb {
    fn new() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "txmsg-sqlite-test-{}-{}-{}.db",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            Uuid::now_v7().simple()
        );
        TempDb {
            path: std::env::temp_dir().join(name),
        }
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn file_store() -> (SqliteStore, TempDb) {
    let db = TempDb::new();
    let store = SqliteStore::connect(&db.url()).await.unwrap();
    store.migrate().await.unwrap();
    (store, db)
}

async fn memory_store() -> SqliteStore {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    store
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

fn secs(s: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(s)
}

/// Ids in a known order (bytewise order is numeric order).
fn id(n: u128) -> Uuid {
    Uuid::from_u128((0x0190_0000_0000_7000_8000_0000_0000_0000u128) + n)
}

fn env(n: u128, topic: &str, key: Option<&str>) -> Envelope {
    let mut e = Envelope::new(
        id(n),
        topic,
        format!("idem-{n}"),
        format!("{n}").into_bytes(),
        t0(),
    );
    e.key = key.map(str::to_owned);
    e
}

/// Writes `envelope` in a transaction of its own.
async fn insert(store: &SqliteStore, envelope: &Envelope, lease: Option<Lease>) -> Inserted {
    let mut tx = store.begin().await.unwrap();
    let done = store
        .writer()
        .insert(&mut tx, envelope, lease)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    done
}

fn req(owner: Uuid, now: DateTime<Utc>) -> ClaimRequest {
    ClaimRequest {
        lease: Lease {
            owner,
            until: now + Duration::seconds(30),
        },
        now,
        limit: 100,
        per_key_limit: 100,
        dead_parks_key: true,
    }
}

fn nums(envs: &[Envelope]) -> Vec<u128> {
    envs.iter()
        .map(|e| e.id.as_u128() - id(0).as_u128())
        .collect()
}

async fn claim_nums(store: &SqliteStore, req: &ClaimRequest) -> Vec<u128> {
    nums(&store.claim(req).await.unwrap())
}

async fn state_of(store: &SqliteStore, n: u128) -> String {
    sqlx::query("SELECT state FROM txmsg_outbox WHERE id = ?1")
        .bind(id(n))
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn round_trip_keeps_every_field() {
    let (store, _db) = file_store().await;
    let created = t0() + Duration::microseconds(123_456);
    let mut e = Envelope::new(
        id(1),
        "orders.placed",
        "order-7 ünïcode",
        vec![0, 159, 146, 150, 255, b'{', 0],
        created,
    );
    e.key = Some("customer/42".into());
    e.headers
        .insert("traceparent".into(), "00-abc-def-01".into());
    e.headers
        .insert("x-ünï".into(), "\"quoted\" \n value".into());
    e.expires_at = Some(created + Duration::minutes(30));
    let owner = Uuid::now_v7();
    let lease = Lease {
        owner,
        until: secs(30),
    };
    assert_eq!(insert(&store, &e, Some(lease)).await, Inserted::Leased);

    // Leased at insert: nobody can claim it before the lease runs out.
    assert!(
        store
            .claim(&req(Uuid::now_v7(), secs(1)))
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store.claim(&req(Uuid::now_v7(), secs(31))).await.unwrap();
    assert_eq!(claimed, vec![e.clone()]);

    let row = sqlx::query(
        "SELECT state, attempts, next_attempt_at, checks, created_at, lease_until FROM txmsg_outbox",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("state"), "pending");
    assert_eq!(row.get::<i64, _>("attempts"), 0);
    assert_eq!(row.get::<i64, _>("checks"), 0);
    assert_eq!(row.get::<i64, _>("created_at"), created.timestamp_micros());
    assert_eq!(
        row.get::<i64, _>("next_attempt_at"),
        created.timestamp_micros()
    );
    assert_eq!(
        row.get::<i64, _>("lease_until"),
        (secs(61)).timestamp_micros()
    );
}

#[tokio::test]
async fn times_are_truncated_to_microseconds() {
    let store = memory_store().await;
    let created = t0() + Duration::nanoseconds(1_234_567);
    let e = Envelope::new(id(1), "t", "k", b"1".to_vec(), created);
    insert(&store, &e, None).await;
    let claimed = store.claim(&req(Uuid::now_v7(), secs(1))).await.unwrap();
    assert_eq!(claimed[0].created_at, t0() + Duration::microseconds(1_234));
}

#[tokio::test]
async fn duplicate_is_reported_and_the_transaction_stays_usable() {
    let (store, _db) = file_store().await;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .execute(store.pool())
        .await
        .unwrap();
    let outbox = Outbox::new(&store);

    let mut tx = outbox.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.enqueue(
        Message::new("orders.placed", &1)
            .unwrap()
            .idempotency_key("order-1"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let mut tx = outbox.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (2)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = tx
        .enqueue(
            Message::new("orders.placed", &2)
                .unwrap()
                .idempotency_key("order-1"),
        )
        .await
        .unwrap_err();
    assert!(err.is_duplicate(), "{err:?}");
    assert!(
        matches!(&err, Error::Duplicate { topic, idempotency_key } if topic == "orders.placed" && idempotency_key == "order-1")
    );
    // Same key on another topic is another message; the transaction still works.
    tx.enqueue(
        Message::new("orders.audited", &2)
            .unwrap()
            .idempotency_key("order-1"),
    )
    .await
    .unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (3)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(orders, 3);
    assert_eq!(store.stats().await.unwrap().pending, 2);

    // The writer itself reports the duplicate without failing.
    let dup = Envelope::new(
        Uuid::now_v7(),
        "orders.placed",
        "order-1",
        b"9".to_vec(),
        t0(),
    );
    assert_eq!(insert(&store, &dup, None).await, Inserted::Duplicate);
}

#[tokio::test]
async fn rollback_leaves_no_row() {
    let (store, _db) = file_store().await;
    let outbox = Outbox::new(&store);
    let mut tx = outbox.begin().await.unwrap();
    tx.enqueue(Message::new("t", &1).unwrap()).await.unwrap();
    tx.rollback().await.unwrap();
    {
        let mut tx = outbox.begin().await.unwrap();
        tx.enqueue(Message::new("t", &2).unwrap()).await.unwrap();
        // Dropped without commit.
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.pending, 0);
    assert!(stats.oldest_pending.is_none());
    assert!(
        store
            .claim(&req(Uuid::now_v7(), Utc::now()))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn claim_leases_until_the_lease_runs_out() {
    let (store, _db) = file_store().await;
    for n in 1..=3 {
        insert(&store, &env(n, "t", None), None).await;
    }
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    // Not due before they were written.
    assert!(claim_nums(&store, &req(a, secs(-1))).await.is_empty());
    let first = req(a, secs(0));
    assert_eq!(claim_nums(&store, &first).await, vec![1, 2, 3]);
    assert!(claim_nums(&store, &req(b, secs(10))).await.is_empty());
    // At exactly `until` the lease still holds; just after, it is gone.
    assert!(
        claim_nums(&store, &req(b, first.lease.until))
            .await
            .is_empty()
    );
    let later = first.lease.until + Duration::microseconds(1);
    assert_eq!(claim_nums(&store, &req(b, later)).await, vec![1, 2, 3]);
    let owners: Vec<Uuid> = sqlx::query_scalar("SELECT lease_owner FROM txmsg_outbox")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert!(owners.iter().all(|o| *o == b));
}

#[tokio::test]
async fn claim_respects_the_limit_and_returns_expired_rows() {
    let store = memory_store().await;
    for n in 1..=5 {
        let mut e = env(n, "t", None);
        e.expires_at = Some(secs(1));
        insert(&store, &e, None).await;
    }
    let mut r = req(Uuid::now_v7(), secs(60));
    r.limit = 2;
    let got = store.claim(&r).await.unwrap();
    assert_eq!(nums(&got), vec![1, 2]);
    assert!(got.iter().all(|e| e.is_expired(secs(60))));
    r.limit = 0;
    assert!(store.claim(&r).await.unwrap().is_empty());
    r.limit = 10;
    assert_eq!(claim_nums(&store, &r).await, vec![3, 4, 5]);
}

#[tokio::test]
async fn mark_failed_hides_the_row_until_its_next_attempt() {
    let (store, _db) = file_store().await;
    insert(&store, &env(1, "t", Some("k")), None).await;
    insert(&store, &env(2, "t", Some("k")), None).await;
    let a = Uuid::now_v7();
    assert_eq!(claim_nums(&store, &req(a, secs(0))).await, vec![1, 2]);

    // Another relay's failure report changes nothing.
    let wrong = Failure {
        id: id(1),
        owner: Uuid::now_v7(),
        next_attempt_at: secs(99),
        error: "x".into(),
    };
    store.mark_failed(&wrong).await.unwrap();
    store.release(&[id(2)], a).await.unwrap();
    store
        .mark_failed(&Failure {
            id: id(1),
            owner: a,
            next_attempt_at: secs(10),
            error: "broker down".into(),
        })
        .await
        .unwrap();
    let b = Uuid::now_v7();
    // The failed row holds back its key, lease or not.
    assert!(claim_nums(&store, &req(b, secs(9))).await.is_empty());
    let got = store.claim(&req(b, secs(10))).await.unwrap();
    assert_eq!(nums(&got), vec![1, 2]);
    assert_eq!(got[0].attempts, 1);
    assert_eq!(got[1].attempts, 0);
    let last_error: String =
        sqlx::query_scalar("SELECT last_error FROM txmsg_outbox WHERE id = ?1")
            .bind(id(1))
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(last_error, "broker down");
}

#[tokio::test]
async fn dead_rows_are_listed_and_replayed() {
    let (store, _db) = file_store().await;
    insert(&store, &env(1, "orders", Some("a")), None).await;
    insert(&store, &env(2, "orders", Some("b")), None).await;
    insert(&store, &env(3, "billing", Some("a")), None).await;
    let a = Uuid::now_v7();
    assert_eq!(claim_nums(&store, &req(a, secs(0))).await, vec![1, 2, 3]);

    // Only the lease holder may bury a row.
    store
        .mark_dead(id(1), Uuid::now_v7(), "nope", secs(1))
        .await
        .unwrap();
    assert_eq!(state_of(&store, 1).await, "pending");
    store
        .mark_dead(id(2), a, "too large", secs(2))
        .await
        .unwrap();
    store.mark_dead(id(1), a, "expired", secs(3)).await.unwrap();
    store.mark_dead(id(3), a, "gave up", secs(1)).await.unwrap();

    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead, stats.sent), (0, 3, 0));
    let all = store.dead_letters(&DeadFilter::default()).await.unwrap();
    // Oldest first.
    assert_eq!(
        nums(&all.iter().map(|d| d.envelope.clone()).collect::<Vec<_>>()),
        vec![3, 2, 1]
    );
    assert_eq!(all[0].reason, "gave up");
    assert_eq!(all[0].dead_at, secs(1));
    // Going dead counts as the row's attempt.
    let mut attempted = env(1, "orders", Some("a"));
    attempted.attempts = 1;
    assert_eq!(all[2].envelope, attempted);
    let orders = store
        .dead_letters(&DeadFilter::default().topic("orders"))
        .await
        .unwrap();
    assert_eq!(orders.len(), 2);
    let orders_a = store
        .dead_letters(&DeadFilter::default().topic("orders").key("a"))
        .await
        .unwrap();
    assert_eq!(orders_a.len(), 1);
    assert_eq!(orders_a[0].reason, "expired");
    assert_eq!(
        store
            .dead_letters(&DeadFilter::default().limit(1))
            .await
            .unwrap()
            .len(),
        1
    );

    // A dead row is not claimed; replayed, it is pending again from `at`.
    assert!(claim_nums(&store, &req(a, secs(100))).await.is_empty());
    assert!(store.replay(id(1), secs(200)).await.unwrap());
    assert!(!store.replay(id(1), secs(200)).await.unwrap());
    assert!(!store.replay(id(99), secs(200)).await.unwrap());
    assert!(claim_nums(&store, &req(a, secs(199))).await.is_empty());
    let got = store.claim(&req(a, secs(200))).await.unwrap();
    assert_eq!(nums(&got), vec![1]);
    assert_eq!(got[0].attempts, 0);
    assert_eq!(store.stats().await.unwrap().dead, 2);
}

#[tokio::test]
async fn dead_letters_default_to_one_hundred() {
    let store = memory_store().await;
    for n in 1..=105 {
        insert(&store, &env(n, "t", None), None).await;
        store
            .mark_dead(id(n), Uuid::now_v7(), "bad", secs(1))
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .dead_letters(&DeadFilter::default())
            .await
            .unwrap()
            .len(),
        100
    );
}

#[tokio::test]
async fn mark_sent_only_touches_pending_rows_and_purge_deletes_old_ones() {
    let (store, _db) = file_store().await;
    for n in 1..=5 {
        insert(&store, &env(n, "t", None), None).await;
    }
    store
        .mark_dead(id(5), Uuid::now_v7(), "bad", secs(1))
        .await
        .unwrap();
    store.mark_sent(&[id(1), id(2)], secs(10)).await.unwrap();
    store.mark_sent(&[id(3), id(5)], secs(20)).await.unwrap();
    store.mark_sent(&[], secs(20)).await.unwrap();
    assert_eq!(state_of(&store, 5).await, "dead");
    // Sent rows are never marked dead, even without a lease.
    store
        .mark_dead(id(1), Uuid::now_v7(), "late", secs(30))
        .await
        .unwrap();
    assert_eq!(state_of(&store, 1).await, "sent");
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.sent, stats.dead), (1, 3, 1));
    assert_eq!(stats.oldest_pending, Some(t0()));

    assert_eq!(store.purge_sent(secs(10), 100).await.unwrap(), 0);
    assert_eq!(store.purge_sent(secs(21), 1).await.unwrap(), 1);
    assert_eq!(store.purge_sent(secs(21), 0).await.unwrap(), 0);
    assert_eq!(store.purge_sent(secs(21), 100).await.unwrap(), 2);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.sent, stats.dead), (1, 0, 1));
}

#[tokio::test]
async fn large_batches_are_chunked() {
    let (store, _db) = file_store().await;
    let mut tx = store.begin().await.unwrap();
    for n in 1..=1300 {
        store
            .writer()
            .insert(&mut tx, &env(n, "t", None), None)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let a = Uuid::now_v7();
    let mut r = req(a, secs(0));
    r.limit = 2000;
    let ids: Vec<Uuid> = store
        .claim(&r)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), 1300);
    store.release(&ids[..700], a).await.unwrap();
    let b = Uuid::now_v7();
    assert_eq!(claim_nums(&store, &req(b, secs(1))).await.len(), 100);
    store.mark_sent(&ids, secs(2)).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.sent), (0, 1300));
}

#[tokio::test]
async fn release_only_gives_up_the_owners_lease() {
    let store = memory_store().await;
    insert(&store, &env(1, "t", None), None).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(claim_nums(&store, &req(a, secs(0))).await, vec![1]);
    store.release(&[id(1)], b).await.unwrap();
    assert!(claim_nums(&store, &req(b, secs(1))).await.is_empty());
    store.release(&[id(1)], a).await.unwrap();
    let got = store.claim(&req(b, secs(1))).await.unwrap();
    assert_eq!(nums(&got), vec![1]);
    // Released without counting an attempt.
    assert_eq!(got[0].attempts, 0);
}

#[tokio::test]
async fn claim_keeps_order_per_key() {
    let (store, _db) = file_store().await;
    // a1 b2 a3 n4 a5 b6, plus the same key on another topic.
    insert(&store, &env(1, "t", Some("a")), None).await;
    insert(&store, &env(2, "t", Some("b")), None).await;
    insert(&store, &env(3, "t", Some("a")), None).await;
    insert(&store, &env(4, "t", None), None).await;
    insert(&store, &env(5, "t", Some("a")), None).await;
    insert(&store, &env(6, "t", Some("b")), None).await;
    insert(&store, &env(7, "u", Some("a")), None).await;

    let now = secs(0);
    // Heads first, then followers per key, within the total limit.
    let mut r = req(Uuid::now_v7(), now);
    r.limit = 4;
    r.per_key_limit = 1;
    assert_eq!(claim_nums(&store, &r).await, vec![1, 2, 4, 7]);

    let mut r = req(Uuid::now_v7(), secs(31));
    r.limit = 6;
    r.per_key_limit = 1;
    // Heads 1 2 4 7, then one follower of a (3) and one of b (6).
    assert_eq!(claim_nums(&store, &r).await, vec![1, 2, 3, 4, 6, 7]);

    let mut r = req(Uuid::now_v7(), secs(62));
    r.limit = 5;
    // Heads 1 2 4 7 and one more: the first head's first follower.
    assert_eq!(claim_nums(&store, &r).await, vec![1, 2, 3, 4, 7]);

    let all = req(Uuid::now_v7(), secs(93));
    assert_eq!(claim_nums(&store, &all).await, vec![1, 2, 3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn a_held_row_holds_back_its_key_only() {
    let (store, _db) = file_store().await;
    let other = Uuid::now_v7();
    // a1 is leased to another relay (its fast path); a2, a3 are not.
    insert(
        &store,
        &env(1, "t", Some("a")),
        Some(Lease {
            owner: other,
            until: secs(30),
        }),
    )
    .await;
    insert(&store, &env(2, "t", Some("a")), None).await;
    insert(&store, &env(3, "t", Some("a")), None).await;
    insert(&store, &env(4, "t", Some("b")), None).await;
    insert(&store, &env(5, "t", None), None).await;
    let me = Uuid::now_v7();
    assert_eq!(claim_nums(&store, &req(me, secs(0))).await, vec![4, 5]);
    store.mark_sent(&[id(1)], secs(1)).await.unwrap();
    assert_eq!(claim_nums(&store, &req(me, secs(1))).await, vec![2, 3]);
}

#[tokio::test]
async fn followers_stop_at_the_first_row_that_cannot_be_claimed() {
    let (store, _db) = file_store().await;
    let other = Uuid::now_v7();
    insert(&store, &env(1, "t", Some("a")), None).await;
    // a2 is still leased to another relay (crafted: its lease outlives a1's).
    insert(&store, &env(2, "t", Some("a")), None).await;
    insert(&store, &env(3, "t", Some("a")), None).await;
    sqlx::query("UPDATE txmsg_outbox SET lease_owner = ?1, lease_until = ?2 WHERE id = ?3")
        .bind(other)
        .bind(secs(30).timestamp_micros())
        .bind(id(2))
        .execute(store.pool())
        .await
        .unwrap();
    let me = Uuid::now_v7();
    assert_eq!(claim_nums(&store, &req(me, secs(0))).await, vec![1]);
    // Not yet due also breaks the run.
    store.mark_sent(&[id(1)], secs(1)).await.unwrap();
    sqlx::query("UPDATE txmsg_outbox SET lease_owner = NULL, lease_until = NULL, next_attempt_at = ?1 WHERE id = ?2")
        .bind(secs(50).timestamp_micros())
        .bind(id(2))
        .execute(store.pool())
        .await
        .unwrap();
    assert!(claim_nums(&store, &req(me, secs(1))).await.is_empty());
    assert_eq!(claim_nums(&store, &req(me, secs(50))).await, vec![2, 3]);
}

#[tokio::test]
async fn a_dead_row_parks_its_key_unless_told_otherwise() {
    let (store, _db) = file_store().await;
    // Rows 1 and 4 are held by `holder`, which gives up on them.
    let holder = Uuid::now_v7();
    let held = Some(Lease {
        owner: holder,
        until: secs(30),
    });
    // Written first, so that their keys are free and they take the lease.
    insert(&store, &env(1, "t", Some("a")), held).await;
    insert(&store, &env(4, "t", Some("b")), held).await;
    insert(&store, &env(2, "t", Some("a")), None).await;
    insert(&store, &env(3, "t", Some("b")), None).await;
    insert(&store, &env(5, "t", Some("b")), None).await;
    // a1 dead: a2 waits. b4 dead (out of order, as after a skip and a replay).
    store
        .mark_dead(id(1), holder, "bad", secs(0))
        .await
        .unwrap();
    store
        .mark_dead(id(4), holder, "bad", secs(0))
        .await
        .unwrap();

    let parks = req(Uuid::now_v7(), secs(0));
    assert_eq!(claim_nums(&store, &parks).await, vec![3]);
    let mut skip = req(Uuid::now_v7(), secs(31));
    skip.dead_parks_key = false;
    assert_eq!(claim_nums(&store, &skip).await, vec![2, 3, 5]);

    // Replaying the dead row unparks the key, in order.
    store
        .release(&[id(2), id(3), id(5)], skip.lease.owner)
        .await
        .unwrap();
    assert!(store.replay(id(1), secs(40)).await.unwrap());
    assert_eq!(
        claim_nums(&store, &req(Uuid::now_v7(), secs(40))).await,
        vec![1, 2, 3]
    );
}

#[tokio::test]
async fn heads_behind_a_long_run_of_one_key_are_found() {
    let (store, _db) = file_store().await;
    // 1500 rows of one key fill the oldest pending rows, more than the first
    // step of a claim reads; other keys and a keyless row come after them.
    let mut tx = store.begin().await.unwrap();
    for n in 1..=1500 {
        store
            .writer()
            .insert(&mut tx, &env(n, "t", Some("hot")), None)
            .await
            .unwrap();
    }
    for (n, key) in [
        (2001, Some("x")),
        (2002, None),
        (2003, Some("y")),
        (2004, Some("x")),
    ] {
        store
            .writer()
            .insert(&mut tx, &env(n, "t", key), None)
            .await
            .unwrap();
    }
    for n in [2005, 2006] {
        store
            .writer()
            .insert(&mut tx, &env(n, "t", Some("z")), None)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    store
        .mark_dead(id(2005), Uuid::now_v7(), "bad", secs(0))
        .await
        .unwrap();

    let mut r = req(Uuid::now_v7(), secs(0));
    r.limit = 10;
    r.per_key_limit = 2;
    assert_eq!(
        claim_nums(&store, &r).await,
        vec![1, 2, 3, 2001, 2002, 2003, 2004]
    );

    // The long key is held by that claim: the next one still finds the rest.
    let mut tx = store.begin().await.unwrap();
    store
        .writer()
        .insert(&mut tx, &env(2007, "t", Some("w")), None)
        .await
        .unwrap();
    store
        .writer()
        .insert(&mut tx, &env(2008, "u", Some("hot")), None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut r = req(Uuid::now_v7(), secs(1));
    r.limit = 10;
    assert_eq!(claim_nums(&store, &r).await, vec![2007, 2008]);
    let mut skip = req(Uuid::now_v7(), secs(1));
    skip.dead_parks_key = false;
    assert_eq!(claim_nums(&store, &skip).await, vec![2006]);
}

#[tokio::test]
async fn keyless_rows_flow_past_a_failing_one() {
    let store = memory_store().await;
    for n in 1..=4 {
        insert(&store, &env(n, "t", None), None).await;
    }
    let a = Uuid::now_v7();
    assert_eq!(claim_nums(&store, &req(a, secs(0))).await, vec![1, 2, 3, 4]);
    store
        .mark_failed(&Failure {
            id: id(1),
            owner: a,
            next_attempt_at: secs(60),
            error: "x".into(),
        })
        .await
        .unwrap();
    store.release(&[id(2), id(3), id(4)], a).await.unwrap();
    assert_eq!(claim_nums(&store, &req(a, secs(1))).await, vec![2, 3, 4]);
}

#[tokio::test]
async fn insert_takes_the_lease_only_when_the_key_is_free() {
    let store = memory_store().await;
    let (me, other) = (Uuid::now_v7(), Uuid::now_v7());
    let mine = Some(Lease {
        owner: me,
        until: secs(30),
    });
    let theirs = Some(Lease {
        owner: other,
        until: secs(30),
    });
    assert_eq!(
        insert(&store, &env(1, "t", Some("a")), mine).await,
        Inserted::Leased
    );
    // My own earlier row: my fast path keeps the order.
    assert_eq!(
        insert(&store, &env(2, "t", Some("a")), mine).await,
        Inserted::Leased
    );
    // Someone else's earlier rows: go to the poller.
    assert_eq!(
        insert(&store, &env(3, "t", Some("a")), theirs).await,
        Inserted::Unleased
    );
    // Now an unleased row of the key precedes mine too.
    assert_eq!(
        insert(&store, &env(4, "t", Some("a")), mine).await,
        Inserted::Unleased
    );
    // Other keys, other topics and keyless rows are free.
    assert_eq!(
        insert(&store, &env(5, "t", Some("b")), theirs).await,
        Inserted::Leased
    );
    assert_eq!(
        insert(&store, &env(6, "u", Some("a")), theirs).await,
        Inserted::Leased
    );
    assert_eq!(
        insert(&store, &env(7, "t", None), theirs).await,
        Inserted::Leased
    );
    assert_eq!(
        insert(&store, &env(8, "t", None), None).await,
        Inserted::Unleased
    );
    // A dead row parks its key; a sent one does not.
    store.mark_dead(id(5), other, "bad", secs(1)).await.unwrap();
    assert_eq!(
        insert(&store, &env(9, "t", Some("b")), theirs).await,
        Inserted::Unleased
    );
    store.mark_sent(&[id(6)], secs(1)).await.unwrap();
    assert_eq!(
        insert(&store, &env(10, "u", Some("a")), mine).await,
        Inserted::Leased
    );

    let leased: Vec<(Vec<u8>, Option<Uuid>)> =
        sqlx::query("SELECT id, lease_owner FROM txmsg_outbox ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<Vec<u8>, _>(0), r.get::<Option<Uuid>, _>(1)))
            .collect();
    assert_eq!(leased[0].1, Some(me));
    assert_eq!(leased[2].1, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_writers_all_succeed() {
    let (store, _db) = file_store().await;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER)")
        .execute(store.pool())
        .await
        .unwrap();
    let outbox = Outbox::new(&store);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8 {
        let outbox = outbox.clone();
        tasks.spawn(async move {
            for i in 0..25 {
                let mut tx = outbox.begin().await?;
                // Read then write: without BEGIN IMMEDIATE this is where a
                // deferred transaction fails with SQLITE_BUSY.
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO orders (n) VALUES (?1)")
                    .bind(n)
                    .execute(&mut *tx)
                    .await?;
                tx.enqueue(Message::new("orders.placed", &(task, i))?.key(task))
                    .await?;
                tx.commit().await?;
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(store.stats().await.unwrap().pending, 200);
    // Every transaction saw every earlier one: the counts are 0..200.
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT n) FROM orders")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(distinct, 200);
}

#[tokio::test]
async fn two_relays_never_claim_the_same_row() {
    let (store, _db) = file_store().await;
    let mut tx = store.begin().await.unwrap();
    for n in 1..=400 {
        let key = format!("k{}", n % 50);
        let e = env(n, "t", if n % 3 == 0 { None } else { Some(&key) });
        store.writer().insert(&mut tx, &e, None).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut r = req(Uuid::now_v7(), secs(0));
            r.limit = 37;
            let mut mine = Vec::new();
            loop {
                let got = store.claim(&r).await.unwrap();
                if got.is_empty() {
                    break mine;
                }
                let ids: Vec<Uuid> = got.iter().map(|e| e.id).collect();
                store.mark_sent(&ids, secs(1)).await.unwrap();
                mine.extend(ids);
            }
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "a row was claimed twice");
    assert_eq!(total, 400);
}

#[tokio::test]
async fn bad_table_names_are_refused_before_any_sql_runs() {
    let db = TempDb::new();
    let with_schema = Tables::default().with_schema("app").unwrap();
    let err = SqliteStore::connect_with(&db.url(), with_schema)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                field: "schema",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!db.path.exists(), "the database was opened");

    let err = Tables::default()
        .with_outbox("orders; drop table x")
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Config {
            field: "outbox_table",
            ..
        }
    ));
    let err = Tables::default().with_inbox("a\"b").unwrap_err();
    assert!(matches!(
        err,
        Error::Config {
            field: "inbox_table",
            ..
        }
    ));

    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    let err = SqliteStore::new(pool, Tables::default().with_schema("main").unwrap()).unwrap_err();
    assert!(matches!(
        err,
        Error::Config {
            field: "schema",
            ..
        }
    ));

    let err = SqliteStore::connect("postgres://localhost/x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config { field: "url", .. }), "{err:?}");

    // The consumer dead-letter table is `<inbox>_dead`: the inbox name must
    // leave room for the suffix (refused where it is set) and must not clash
    // with another table (refused by the store before opening anything).
    assert!(Tables::default().with_inbox(&"i".repeat(59)).is_err());
    let long_inbox = Tables::default()
        .with_inbox("events")
        .unwrap()
        .with_outbox("events_dead")
        .unwrap();
    let err = SqliteStore::connect_with(&db.url(), long_inbox.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                field: "inbox_table",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!db.path.exists(), "the database was opened");
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    let err = SqliteStore::new(pool, long_inbox).unwrap_err();
    assert!(matches!(
        err,
        Error::Config {
            field: "inbox_table",
            ..
        }
    ));
}

#[tokio::test]
async fn custom_table_names_and_idempotent_migrations() {
    let (db, tables) = (
        TempDb::new(),
        Tables::default()
            .with_outbox("app_out")
            .unwrap()
            .with_inbox("app_in")
            .unwrap()
            .with_migrations("app_mig")
            .unwrap(),
    );
    let store = SqliteStore::connect_with(&db.url(), tables.clone())
        .await
        .unwrap();
    assert_eq!(store.tables(), &tables);
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let again = SqliteStore::connect_with(&db.url(), tables).await.unwrap();
    again.migrate().await.unwrap();

    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(names, vec!["app_in", "app_in_dead", "app_mig", "app_out"]);
    let versions: Vec<(i64, String)> =
        sqlx::query("SELECT version, description FROM app_mig ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    assert_eq!(
        versions.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );

    insert(&store, &env(1, "t", Some("k")), None).await;
    assert_eq!(
        claim_nums(&store, &req(Uuid::now_v7(), secs(0))).await,
        vec![1]
    );
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    let inbox_cols: i64 = sqlx::query_scalar("SELECT count(*) FROM pragma_table_info('app_in')")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(inbox_cols, 4, "group, topic, idempotency key, processed at");
}

#[tokio::test]
async fn memory_database_works_end_to_end() {
    let store = memory_store().await;
    let outbox = Outbox::new(&store);
    let mut tx = outbox.begin().await.unwrap();
    let id = tx
        .enqueue(Message::new("t", &"hello").unwrap().key("k"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // The single connection keeps the database alive between uses.
    let now = Utc::now();
    let got = store.claim(&req(Uuid::now_v7(), now)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].decode::<String>().unwrap(), "hello");
    store.mark_sent(&[id], now).await.unwrap();
    assert_eq!(store.stats().await.unwrap().sent, 1);
    // Two stores on `sqlite::memory:` are two databases.
    let other = memory_store().await;
    assert_eq!(other.stats().await.unwrap().sent, 0);
}

#[tokio::test]
async fn store_is_clone_and_debug_without_secrets() {
    let store = memory_store().await;
    let copy = store.clone();
    assert_eq!(copy.stats().await.unwrap(), store.stats().await.unwrap());
    let shown = format!("{store:?}");
    assert!(shown.starts_with("SqliteStore"), "{shown}");
    assert!(format!("{:?}", store.writer()).contains("SqlOutboxWriter"));
}

/// A database file of its own per conformance case.
struct Files(TempDb);

impl txmsg_testkit::StoreFixture for Files {
    type Store = SqliteStore;

    async fn start() -> Self {
        Files(TempDb::new())
    }

    async fn store(&self) -> SqliteStore {
        let store = SqliteStore::connect(&self.0.url()).await.unwrap();
        store.migrate().await.unwrap();
        store
    }

    async fn finish(self) {}
}

/// An in-memory database per conformance case.
struct InMemory;

impl txmsg_testkit::StoreFixture for InMemory {
    type Store = SqliteStore;

    async fn start() -> Self {
        InMemory
    }

    async fn store(&self) -> SqliteStore {
        memory_store().await
    }

    async fn finish(self) {}
}

txmsg_testkit::store_conformance!(Files, store_conformance_on_files);
txmsg_testkit::store_conformance!(InMemory, store_conformance_in_memory);
txmsg_testkit::inbox_conformance!(Files, inbox_conformance_on_files);
txmsg_testkit::inbox_conformance!(InMemory, inbox_conformance_in_memory);
txmsg_testkit::half_conformance!(Files, half_conformance_on_files);
txmsg_testkit::half_conformance!(InMemory, half_conformance_in_memory);

/// Takes `store`'s tables back to version 2: no `half` column and no index
/// of prepared rows, no record of version 3.
async fn to_version_2(store: &SqliteStore, outbox: &str, migrations_table: &str) {
    let mut tx = store.pool().begin().await.unwrap();
    // Names from the test itself: letters and `_` only.
    for statement in [
        format!("DROP INDEX \"{outbox}_prepared\""),
        format!("ALTER TABLE \"{outbox}\" DROP COLUMN half"),
        format!("DELETE FROM \"{migrations_table}\" WHERE version = 3"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn upgrade_from_version_2_keeps_rows() {
    let (store, _db) = file_store().await;
    txmsg_testkit::half::upgrade_keeps_rows(&store, || {
        to_version_2(&store, "txmsg_outbox", "txmsg_migrations")
    })
    .await;

    let tables = Tables::default()
        .with_outbox("app_out")
        .unwrap()
        .with_migrations("app_mig")
        .unwrap();
    let store = SqliteStore::connect_with("sqlite::memory:", tables)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    txmsg_testkit::half::upgrade_keeps_rows(&store, || to_version_2(&store, "app_out", "app_mig"))
        .await;
}

/// Takes `store`'s tables back to version 1: no consumer dead-letter table,
/// no record of version 2.
async fn to_version_1(store: &SqliteStore, dead_table: &str, migrations_table: &str) {
    let mut tx = store.pool().begin().await.unwrap();
    // Names from the test itself: letters and `_` only.
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE \"{dead_table}\"")))
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM \"{migrations_table}\" WHERE version = 2"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn inbox_keys_from_before_topics_are_recognised() {
    let (store, _db) = file_store().await;
    txmsg_testkit::inbox::keys_from_before_topics_are_recognised(&store, |group, key| {
        let pool = store.pool().clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            for stmt in [
                "CREATE TABLE old_inbox (consumer_group TEXT NOT NULL, \
                 idempotency_key TEXT NOT NULL, processed_at INTEGER NOT NULL, \
                 PRIMARY KEY (consumer_group, idempotency_key)) STRICT, WITHOUT ROWID",
                "INSERT INTO old_inbox SELECT consumer_group, idempotency_key, processed_at \
                 FROM txmsg_inbox",
                "DROP TABLE txmsg_inbox",
                "ALTER TABLE old_inbox RENAME TO txmsg_inbox",
                "CREATE INDEX txmsg_inbox_processed ON txmsg_inbox (processed_at)",
                "DELETE FROM txmsg_migrations WHERE version = 4",
            ] {
                sqlx::query(stmt).execute(&mut *tx).await.unwrap();
            }
            sqlx::query(
                "INSERT INTO txmsg_inbox (consumer_group, idempotency_key, processed_at) \
                 VALUES (?1, ?2, 1700000000000000)",
            )
            .bind(group)
            .bind(key)
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn upgrade_from_version_1_keeps_rows() {
    let (store, _db) = file_store().await;
    txmsg_testkit::inbox::upgrade_keeps_rows(&store, || {
        to_version_1(&store, "txmsg_consumer_dead", "txmsg_migrations")
    })
    .await;

    let tables = Tables::default()
        .with_inbox("app_in")
        .unwrap()
        .with_migrations("app_mig")
        .unwrap();
    let store = SqliteStore::connect_with("sqlite::memory:", tables)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    txmsg_testkit::inbox::upgrade_keeps_rows(&store, || {
        to_version_1(&store, "app_in_dead", "app_mig")
    })
    .await;
}

/// A row that cannot be decoded (here: headers that are not JSON, as a row
/// written by another program could hold) is dead-lettered with the reason;
/// the claim still returns the other rows, and the next claim is not stuck.
#[tokio::test]
async fn a_row_that_cannot_be_read_is_dead_lettered_and_the_claim_goes_on() {
    let store = memory_store().await;
    let corrupt = |id: Uuid| {
        let store = store.clone();
        async move {
            sqlx::query("UPDATE txmsg_outbox SET headers = 'not json' WHERE id = ?1")
                .bind(id)
                .execute(store.pool())
                .await
                .unwrap();
        }
    };
    let last_error = |id: Uuid| {
        let store = store.clone();
        async move {
            sqlx::query_scalar("SELECT last_error FROM txmsg_outbox WHERE id = ?1")
                .bind(id)
                .fetch_one(store.pool())
                .await
                .unwrap()
        }
    };
    txmsg_testkit::store::an_unreadable_row_is_dead_lettered(&store, corrupt, last_error).await;
}

/// A database whose tables a newer txmsg migrated is used as it is, with a
/// warning that names the versions (the shared migration runner: one
/// behaviour on every store).
#[tokio::test]
async fn a_database_migrated_by_a_newer_txmsg_is_reported() {
    let logs = txmsg_testkit::logs::capture();
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    sqlx::query(
        "INSERT INTO txmsg_migrations (version, description, applied_at) \
         VALUES (99, 'from a newer txmsg', 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let text = logs.text();
    assert!(
        text.contains("migrated by a newer version") && text.contains("database=99"),
        "{text}"
    );
    assert!(
        text.contains("store=\"txmsg-sqlite\"") || text.contains("store=txmsg-sqlite"),
        "{text}"
    );
}

/// Another database's URL (or a bare path) is refused before anything is
/// opened.
#[tokio::test]
async fn a_url_of_another_database_is_a_config_error() {
    txmsg_testkit::store::other_databases_urls_are_config_errors(
        |url| async move { SqliteStore::connect(&url).await },
        &[
            "postgres://postgres@127.0.0.1/x",
            "orders.db",
            "mysql://root@h/db",
        ],
        "`sqlite:`",
    )
    .await;
}

#[tokio::test]
async fn the_migration_script_does_what_migrate_does() {
    let db = TempDb::new();
    let store = SqliteStore::connect(&db.url()).await.unwrap();
    let script = store.migration_script();
    let pool = txmsg_core::SqlStore::pool(&store).clone();
    txmsg_testkit::store::a_migration_script_does_what_migrate_does(
        store,
        script,
        |script| async {
            sqlx::raw_sql(sqlx::AssertSqlSafe(script))
                .execute(&pool)
                .await
                .expect("the script runs");
        },
        || async {
            sqlx::query_scalar("SELECT count(*) FROM txmsg_migrations")
                .fetch_one(&pool)
                .await
                .unwrap()
        },
    )
    .await;
    // The recorded time is microseconds since the epoch, as `migrate` writes.
    let applied: i64 = sqlx::query_scalar("SELECT min(applied_at) FROM txmsg_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    let now = Utc::now().timestamp_micros();
    assert!((now - applied).abs() < 60_000_000, "{applied} vs {now}");
}
