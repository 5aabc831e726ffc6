//! SQL injection against `MySqlStore`: hostile table and database names are
//! refused before any SQL runs; hostile values (topics, keys, idempotency
//! keys, header names and values, payloads, reasons, consumer groups, inbox
//! keys) are bind parameters and come back byte for byte, or, past a
//! column's length, are refused rather than cut; a canary table next to the
//! store's tables keeps its rows throughout.
//!
//! The server is found through `MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`). Each test works in a database of its
//! own, `txmsg_inj_<uuid>`, which is also the connection's default database,
//! so an injected unqualified `DROP TABLE canary` would hit the canary. The
//! database is dropped at the end.

use std::panic::AssertUnwindSafe;
use std::str::FromStr;

use futures_util::FutureExt;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, MySqlPool};
use txmsg_core::{Message, Outbox, Store, Tables};
use txmsg_mysql::MySqlStore;
use txmsg_testkit::injection::{
    Expect, assert_commit_keeps_hostile_values, assert_identifiers_refused,
    assert_inbox_keeps_hostile_values, assert_outbox_keeps_hostile_values,
};
use uuid::Uuid;

const DEFAULT_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// Rows of the canary table.
const CANARY: [&str; 3] = ["one", "two'; --", "three"];

/// A pool on the test server, on `database` when given; fails (never skips)
/// when the server cannot be reached.
async fn pool(database: Option<&str>) -> MySqlPool {
    let url = std::env::var("MYSQL_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let mut options = MySqlConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("MYSQL_URL is not a MySQL URL: {e}"));
    if let Some(database) = database {
        options = options.database(database);
    }
    MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach MySQL/MariaDB: {e}; start it or point MYSQL_URL at a server \
                 (default {DEFAULT_URL})"
            )
        })
}

/// Runs `test` in a fresh database holding the canary table, checks the
/// canary afterwards and drops the database, also when `test` panics.
async fn with_canary<F, Fut>(test: F)
where
    F: FnOnce(MySqlPool, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let schema = format!("txmsg_inj_{}", Uuid::now_v7().simple());
    let admin = pool(None).await;
    // `schema` is letters, digits and `_` only.
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE `{schema}`")))
        .execute(&admin)
        .await
        .expect("create database");
    let pool = pool(Some(&schema)).await;
    sqlx::query("CREATE TABLE canary (id INT PRIMARY KEY, note TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("create canary");
    for (id, note) in (1i32..).zip(CANARY) {
        sqlx::query("INSERT INTO canary (id, note) VALUES (?, ?)")
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
    pool.close().await;
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{schema}`")))
        .execute(&admin)
        .await
        .expect("drop database");
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
async fn tables_in(pool: &MySqlPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
         WHERE table_schema = ? ORDER BY table_name",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .expect("list tables")
}

/// Topics, keys and groups are `VARCHAR(255)`: a longer value is refused
/// (strict mode), never cut; everything else is kept.
fn mysql_expect(s: &str) -> Expect {
    if s.chars().count() > 255 {
        Expect::Refused
    } else {
        Expect::Kept
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_are_refused_before_any_sql() {
    with_canary(|pool, schema| async move {
        assert_identifiers_refused();
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
            .and_then(|t| t.with_migrations("table"))
            .expect("valid identifiers");
        let store = MySqlStore::new(pool.clone(), tables).expect("store");
        store.migrate().await.expect("migrate");
        let mut tx = Outbox::new(&store).begin().await.expect("begin");
        tx.enqueue(Message::new("inj.reserved", &1).expect("valid"))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        assert_eq!(store.stats().await.expect("stats").pending, 1);
        let mut names = tables_in(&pool, &schema).await;
        names.sort();
        assert_eq!(names, ["canary", "order", "order_dead", "select", "table"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_round_trip_through_the_outbox() {
    with_canary(|pool, schema| async move {
        let store = MySqlStore::new(pool, Tables::default().with_schema(&schema).expect("valid"))
            .expect("store");
        store.migrate().await.expect("migrate");
        assert_outbox_keeps_hostile_values(&store, mysql_expect).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_round_trip_through_a_commit() {
    with_canary(|pool, schema| async move {
        let store = MySqlStore::new(pool, Tables::default().with_schema(&schema).expect("valid"))
            .expect("store");
        store.migrate().await.expect("migrate");
        assert_commit_keeps_hostile_values(&store, mysql_expect).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_round_trip_through_the_inbox() {
    with_canary(|pool, schema| async move {
        let store = MySqlStore::new(pool, Tables::default().with_schema(&schema).expect("valid"))
            .expect("store");
        store.migrate().await.expect("migrate");
        assert_inbox_keeps_hostile_values(&store, mysql_expect).await;
    })
    .await;
}
