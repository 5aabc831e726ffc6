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

use futures_util::FutureExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use txmsg_core::{Error, Message, Outbox, Store, Tables};
use txmsg_postgres::PgStore;
use txmsg_testkit::injection::{
    BAD_IDENTIFIERS, Expect, assert_commit_keeps_hostile_values, assert_identifiers_refused,
    assert_inbox_keeps_hostile_values, assert_outbox_keeps_hostile_values,
};
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
                Tables::default().with_schema(&schema).expect("valid"),
            )
            .expect("store");
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
            .with_schema(&schema)
            .and_then(|t| t.with_outbox("select"))
            .and_then(|t| t.with_inbox("order"))
            .and_then(|t| t.with_migrations("Table"))
            .expect("valid identifiers");
        let store = PgStore::new(pool.clone(), tables)
            .expect("store")
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
        assert_eq!(
            names,
            [
                "Table",
                "canary",
                "order",
                "order_dead",
                "select",
                "select_keys"
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_round_trip_through_the_outbox() {
    with_canary(|pool, schema| async move {
        let store = PgStore::new(pool, Tables::default().with_schema(&schema).expect("valid"))
            .expect("store");
        store.migrate().await.expect("migrate");
        assert_outbox_keeps_hostile_values(&store, pg_expect).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_round_trip_through_a_commit() {
    with_canary(|pool, schema| async move {
        let store = PgStore::new(pool, Tables::default().with_schema(&schema).expect("valid"))
            .expect("store")
            .with_notify("txmsg_inj_wake")
            .expect("valid channel");
        store.migrate().await.expect("migrate");
        assert_commit_keeps_hostile_values(&store, pg_expect).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_round_trip_through_the_inbox() {
    with_canary(|pool, schema| async move {
        let store = PgStore::new(pool, Tables::default().with_schema(&schema).expect("valid"))
            .expect("store");
        store.migrate().await.expect("migrate");
        assert_inbox_keeps_hostile_values(&store, pg_expect).await;
    })
    .await;
}
