//! SQL injection against `PgStore`: hostile table, schema and channel names
//! are refused before any SQL runs; hostile values (topics, keys, idempotency
//! keys, header names and values, payloads, reasons, consumer groups, inbox
//! keys) are bind parameters and come back byte for byte; a canary table
//! next to the store's tables keeps its rows throughout.
//!
//! The server is found through `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Each test works in a
//! schema of its own, `txmsg_inj_<uuid>`, which is also the search path, so
//! an injected unqualified `DROP TABLE canary` would hit the canary. The
//! schema is dropped at the end.

use std::panic::AssertUnwindSafe;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use txmsg_core::consumer::{ConsumerDeadLetter, InboxStore};
use txmsg_core::{
    ClaimRequest, DeadFilter, Envelope, Error, Failure, Inserted, Lease, MAX_IDENT_LEN, Message,
    Outbox, SqlStore, Store, Tables, validate_topic,
};
use txmsg_postgres::PgStore;
use uuid::Uuid;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Rows of the canary table.
const CANARY: [&str; 3] = ["one", "two'; --", "three"];

/// A pool on the test server whose search path is `schema`; fails (never
/// skips) when the server cannot be reached.
async fn pool(schema: &str) -> PgPool {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let options = PgConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("DATABASE_URL is not a PostgreSQL URL: {e}"))
        .options([("search_path", schema)]);
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL: {e}; start it or point DATABASE_URL at a server \
                 (default {DEFAULT_URL})"
            )
        })
}

/// Runs `test` in a fresh schema holding the canary table, checks the canary
/// afterwards and drops the schema, also when `test` panics.
async fn with_canary<F, Fut>(test: F)
where
    F: FnOnce(PgPool, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let schema = format!("txmsg_inj_{}", Uuid::now_v7().simple());
    let pool = pool(&schema).await;
    // `schema` is letters, digits and `_` only.
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&pool)
        .await
        .expect("create schema");
    sqlx::query("CREATE TABLE canary (id int PRIMARY KEY, note text NOT NULL)")
        .execute(&pool)
        .await
        .expect("create canary");
    for (id, note) in (1i32..).zip(CANARY) {
        sqlx::query("INSERT INTO canary (id, note) VALUES ($1, $2)")
            .bind(id)
            .bind(note)
            .execute(&pool)
            .await
            .expect("fill canary");
    }
    let outcome = AssertUnwindSafe(test(pool.clone(), schema.clone()))
        .catch_unwind()
        .await;
    let notes: Result<Vec<String>, _> = sqlx::query_scalar("SELECT note FROM canary ORDER BY id")
        .fetch_all(&pool)
        .await;
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop schema");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(
        notes.expect("the canary table still exists"),
        CANARY,
        "the canary keeps its rows"
    );
}

/// The tables in `schema`.
async fn tables_in(pool: &PgPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = $1 ORDER BY table_name",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .expect("list tables")
}

/// PostgreSQL text and jsonb cannot hold NUL; everything else is kept.
fn pg_expect(s: &str) -> Expect {
    if s.contains('\0') {
        Expect::Refused
    } else {
        Expect::Kept
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_are_refused_before_any_sql() {
    with_canary(|pool, schema| async move {
        assert_identifiers_refused();
        for bad in BAD_IDENTIFIERS {
            let store = PgStore::new(
                pool.clone(),
                Tables::default().schema(&schema).expect("valid"),
            );
            match store.with_notify(bad) {
                Err(Error::Config { field, .. }) => assert_eq!(field, "notify_channel"),
                other => panic!("notify channel {bad:?} must be refused, got {other:?}"),
            }
        }
        assert_eq!(
            tables_in(&pool, &schema).await,
            ["canary"],
            "nothing was created or dropped"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_words_as_table_names_are_quoted() {
    with_canary(|pool, schema| async move {
        let tables = Tables::default()
            .schema(&schema)
            .and_then(|t| t.outbox("select"))
            .and_then(|t| t.inbox("order"))
            .and_then(|t| t.migrations("Table"))
            .expect("valid identifiers");
        let store = PgStore::new(pool.clone(), tables)
            .with_notify("listen")
            .expect("valid channel");
        store.migrate().await.expect("migrate");
        let mut tx = Outbox::new(&store).begin().await.expect("begin");
        tx.enqueue(Message::new("inj.reserved", &1).expect("valid"))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        assert_eq!(store.stats().await.expect("stats").pending, 1);
        let mut names = tables_in(&pool, &schema).await;
        names.sort();
        assert_eq!(names, ["Table", "canary", "order", "order_dead", "select"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_round_trip_through_the_outbox() {
    with_canary(|pool, schema| async move {
        let store = PgStore::new(pool, Tables::default().schema(&schema).expect("valid"));
        store.migrate().await.expect("migrate");
        assert_outbox_keeps_hostile_values(&store, pg_expect).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_round_trip_through_the_inbox() {
    with_canary(|pool, schema| async move {
        let store = PgStore::new(pool, Tables::default().schema(&schema).expect("valid"));
        store.migrate().await.expect("migrate");
        assert_inbox_keeps_hostile_values(&store, pg_expect).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// The cases every store runs: hostile identifiers refused, hostile values
// kept byte for byte.

/// Config identifiers that must be refused, each with why.
const BAD_IDENTIFIERS: &[&str] = &[
    "x; DROP TABLE canary",
    "x\"; DROP TABLE canary; --",
    "a\"b",
    "a`b",
    "a'b",
    "a]b",
    "",
    " ",
    "a b",
    "a-b",
    "a.b",
    "1abc",
    "a\0b",
    "a\nb",
    "$1",
    "--",
    "/*",
    "é",
    "tábla",
    "🚀",
    "ｘ",
    "x\u{200b}",
];

/// Values that reach SQL as bind parameters and must come back unchanged.
fn hostile_values() -> Vec<String> {
    let mut values: Vec<String> = [
        "x'; DROP TABLE canary; --",
        "x\"; DROP TABLE canary; --",
        "x`; DROP TABLE canary; --",
        "'); DELETE FROM canary; --",
        "' OR '1'='1",
        "\" OR \"\"=\"",
        "\\'; DROP TABLE canary; --",
        "\\",
        "\\\\'",
        "%",
        "_",
        "%' OR 'x' LIKE '%",
        "$1",
        "?",
        ":name",
        "@var",
        "/* comment */ SELECT 1",
        "-- comment",
        "'||(SELECT 1)||'",
        "a\nb\r\nc\td",
        "a\0b",
        "",
        " trailing space ",
        "žluťoučký kůň 🚀",
        "\u{202e}evil\u{202c}",
        "ʼ OR 1=1 --",
        "＇; DROP TABLE canary; --",
        "{\"a\":1}",
        "\"}, \"x\": \"",
        "\\u0000",
        "\u{ffff}\u{fffd}",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    values.push("'".repeat(300));
    values
}

/// Payload bytes that are not text, next to `s`.
fn payload_of(s: &str) -> Vec<u8> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.extend_from_slice(&[0x00, 0xff, 0xfe, b'\'', b'"', b'\\', b';']);
    bytes
}

fn at(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + n, 0).expect("a valid time")
}

/// Every bad name is refused for every identifier of `Tables`, naming the
/// field, before a store (and so any SQL) exists.
fn assert_identifiers_refused() {
    type Setter = fn(Tables, &str) -> txmsg_core::Result<Tables>;
    let setters: [(&str, Setter); 4] = [
        ("schema", Tables::schema),
        ("outbox_table", Tables::outbox),
        ("inbox_table", Tables::inbox),
        ("migrations_table", Tables::migrations),
    ];
    let too_long = "t".repeat(MAX_IDENT_LEN + 1);
    let names = BAD_IDENTIFIERS.iter().copied().chain([too_long.as_str()]);
    for bad in names {
        for (field, set) in setters {
            match set(Tables::default(), bad) {
                Err(Error::Config {
                    field: named,
                    ref reason,
                }) => {
                    assert_eq!(named, field, "{bad:?}");
                    assert!(!reason.trim().is_empty(), "the error says why for {bad:?}");
                }
                other => panic!("{field} = {bad:?} must be refused, got {other:?}"),
            }
        }
    }
    // The inbox name leaves room for `<inbox>_dead`.
    let err = Tables::default()
        .inbox(&"i".repeat(MAX_IDENT_LEN - 4))
        .expect_err("no room for the dead-letter table");
    assert!(matches!(
        err,
        Error::Config {
            field: "inbox_table",
            ..
        }
    ));
}

/// What `store` must do with `value`: keep it, or refuse it with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Kept,
    Refused,
}

/// Writes one outbox row per hostile value (as topic, key, idempotency key,
/// header name and value, inside the payload), through the writer and
/// through `Tx::enqueue`; reads them back by claiming; then marks them dead
/// with the value as reason and finds each by topic and by key.
async fn assert_outbox_keeps_hostile_values<S: SqlStore>(store: &S, expect: fn(&str) -> Expect) {
    let values = hostile_values();
    let mut written: Vec<Envelope> = Vec::new();
    for (i, s) in values.iter().enumerate() {
        let mut env = Envelope::new(Uuid::now_v7(), s.clone(), s.clone(), payload_of(s), at(0));
        env.key = Some(s.clone());
        env.headers.insert(s.clone(), s.clone());
        env.headers.insert(format!("x-h{i}"), s.clone());
        let mut tx = store.begin().await.expect("begin");
        let outcome = store.writer().insert(&mut *tx, &env, None).await;
        match expect(s) {
            Expect::Kept => {
                assert_eq!(
                    outcome.expect("a hostile value is only data"),
                    Inserted::Unleased,
                    "{s:?}"
                );
                tx.commit().await.expect("commit");
                // The same idempotency key on the same topic is a duplicate:
                // matched exactly, never as a pattern.
                let mut again = env.clone();
                again.id = Uuid::now_v7();
                let mut tx = store.begin().await.expect("begin");
                let dup = store.writer().insert(&mut *tx, &again, None).await;
                assert_eq!(dup.expect("insert"), Inserted::Duplicate, "{s:?}");
                drop(tx);
                written.push(env);
            }
            Expect::Refused => {
                let err = outcome.expect_err("a value the database cannot hold is refused");
                assert!(!err.to_string().trim().is_empty());
            }
        }
    }
    // The same values through the producer's API, under a valid topic: the
    // topic check refuses them as topics first.
    let mut tx = Outbox::new(store).begin().await.expect("begin");
    let mut enqueued = Vec::new();
    for s in &values {
        if validate_topic(s).is_err() {
            let err = Message::new(s, &1).expect_err("a hostile topic is refused");
            assert!(matches!(err, Error::InvalidTopic { .. }), "{err:?}");
        }
        if expect(s) == Expect::Refused {
            continue;
        }
        let message = Message::new("inj.enqueued", &serde_json::json!({ "v": s }))
            .expect("valid message")
            .key(s)
            .idempotency_key(s)
            .header(s.clone(), s.clone());
        enqueued.push((tx.enqueue(message).await.expect("enqueue"), s.clone()));
    }
    tx.commit().await.expect("commit");

    let owner = Uuid::now_v7();
    let now = Utc::now() + chrono::Duration::seconds(2);
    let claimed = store
        .claim(&ClaimRequest {
            lease: Lease {
                owner,
                until: now + chrono::Duration::seconds(60),
            },
            now,
            limit: 10_000,
            per_key_limit: 10_000,
            dead_parks_key: true,
        })
        .await
        .expect("claim");
    assert_eq!(
        claimed.len(),
        written.len() + enqueued.len(),
        "every row, no more"
    );
    for want in &written {
        let got = claimed
            .iter()
            .find(|e| e.id == want.id)
            .unwrap_or_else(|| panic!("row for {:?} is claimed", want.topic));
        assert_eq!(got.topic, want.topic);
        assert_eq!(got.key, want.key);
        assert_eq!(got.idempotency_key, want.idempotency_key);
        assert_eq!(got.headers, want.headers);
        assert_eq!(
            got.payload, want.payload,
            "payload bytes for {:?}",
            want.topic
        );
    }
    for (id, s) in &enqueued {
        let got = claimed.iter().find(|e| e.id == *id).expect("enqueued row");
        assert_eq!(got.key.as_deref(), Some(s.as_str()));
        assert_eq!(&got.idempotency_key, s);
        assert_eq!(got.headers.get(s), Some(s));
        let v: serde_json::Value = serde_json::from_slice(&got.payload).expect("json");
        assert_eq!(v["v"].as_str(), Some(s.as_str()));
    }

    // Failure texts and dead-letter reasons are hostile too.
    for want in &written {
        store
            .mark_failed(&Failure {
                id: want.id,
                owner,
                next_attempt_at: now,
                error: want.topic.clone(),
            })
            .await
            .expect("mark_failed");
    }
    let reclaimed = store
        .claim(&ClaimRequest {
            lease: Lease {
                owner,
                until: now + chrono::Duration::seconds(60),
            },
            now: now + chrono::Duration::seconds(1),
            limit: 10_000,
            per_key_limit: 10_000,
            dead_parks_key: true,
        })
        .await
        .expect("claim after failures");
    for want in &written {
        assert!(reclaimed.iter().any(|e| e.id == want.id));
        store
            .mark_dead(want.id, owner, &want.topic, now)
            .await
            .expect("mark_dead");
    }
    let dead = store
        .dead_letters(&DeadFilter::default().limit(10_000))
        .await
        .expect("dead_letters");
    assert_eq!(dead.len(), written.len());
    for want in &written {
        let letter = dead
            .iter()
            .find(|d| d.envelope.id == want.id)
            .expect("dead letter");
        assert_eq!(letter.reason, want.topic, "the reason comes back unchanged");
        assert_eq!(letter.envelope.payload, want.payload);
        let by_topic = store
            .dead_letters(&DeadFilter::default().topic(want.topic.clone()))
            .await
            .expect("dead_letters by topic");
        assert_eq!(
            ids(&by_topic),
            vec![want.id],
            "topic {:?} matches itself only",
            want.topic
        );
        let key = want.key.clone().expect("a key");
        let by_key = store
            .dead_letters(&DeadFilter::default().key(key.clone()))
            .await
            .expect("dead_letters by key");
        assert_eq!(
            ids(&by_key),
            vec![want.id],
            "key {key:?} matches itself only"
        );
    }
}

fn ids(dead: &[txmsg_core::DeadLetter]) -> Vec<Uuid> {
    dead.iter().map(|d| d.envelope.id).collect()
}

/// Records inbox keys and keeps consumer dead letters with hostile groups,
/// keys, topics, headers, reasons and payloads; reads each back exactly and
/// purges one group's keys only.
async fn assert_inbox_keeps_hostile_values<S: InboxStore>(store: &S, expect: fn(&str) -> Expect) {
    let values: Vec<String> = hostile_values()
        .into_iter()
        .filter(|s| expect(s) == Expect::Kept)
        .collect();
    for s in &values {
        let mut tx = store.begin().await.expect("begin");
        let fresh = store.inbox().record(&mut *tx, s, s, at(0)).await;
        assert!(fresh.expect("record"), "first record of {s:?}");
        assert!(
            store
                .inbox()
                .record(&mut *tx, "inj-plain", s, at(0))
                .await
                .expect("record"),
            "another group's key is another key"
        );
        tx.commit().await.expect("commit");
        let mut tx = store.begin().await.expect("begin");
        let again = store.inbox().record(&mut *tx, s, s, at(1)).await;
        assert!(
            !again.expect("record"),
            "{s:?} is a duplicate, matched exactly"
        );
        drop(tx);
    }
    for s in hostile_values()
        .iter()
        .filter(|s| expect(s) == Expect::Refused)
    {
        let mut tx = store.begin().await.expect("begin");
        let err = store
            .inbox()
            .record(&mut *tx, "inj-plain", s, at(0))
            .await
            .expect_err("a key the database cannot hold is refused");
        assert!(!err.to_string().trim().is_empty());
    }

    let mut kept = Vec::new();
    for (i, s) in values.iter().enumerate() {
        let mut env = Envelope::new(Uuid::now_v7(), s.clone(), s.clone(), payload_of(s), at(2));
        env.key = Some(s.clone());
        env.headers.insert(s.clone(), s.clone());
        let dead =
            ConsumerDeadLetter::new(Uuid::now_v7(), s.clone(), env, s.clone(), 3, at(i as i64));
        store
            .add_consumer_dead(&dead)
            .await
            .expect("add_consumer_dead");
        kept.push(dead);
    }
    for want in &kept {
        let got = store
            .consumer_dead_letter(&want.group, want.id)
            .await
            .expect("consumer_dead_letter")
            .unwrap_or_else(|| panic!("dead letter of group {:?}", want.group));
        assert_eq!(got.group, want.group);
        assert_eq!(got.reason, want.reason);
        assert_eq!(got.attempts, want.attempts);
        assert_eq!(got.dead_at, want.dead_at);
        let (e, w) = (&got.envelope, &want.envelope);
        assert_eq!((e.id, &e.topic, &e.key), (w.id, &w.topic, &w.key));
        assert_eq!(e.idempotency_key, w.idempotency_key);
        assert_eq!(e.headers, w.headers);
        assert_eq!(e.payload, w.payload, "payload bytes of {:?}", want.group);
        let listed = store
            .consumer_dead_letters(
                &want.group,
                &DeadFilter::default()
                    .topic(w.topic.clone())
                    .key(want.group.clone()),
            )
            .await
            .expect("consumer_dead_letters");
        let listed: Vec<Uuid> = listed.iter().map(|d| d.id).collect();
        assert_eq!(
            listed,
            vec![want.id],
            "group {:?} matches itself only",
            want.group
        );
    }

    for s in &values {
        let purged = store
            .purge_inbox(s, at(100), 10_000)
            .await
            .expect("purge_inbox");
        assert_eq!(purged, 1, "group {s:?} had one key");
    }
    let purged = store
        .purge_inbox("inj-plain", at(100), 10_000)
        .await
        .expect("purge_inbox");
    assert_eq!(
        purged,
        values.len() as u64,
        "the plain group's keys were untouched"
    );
}
