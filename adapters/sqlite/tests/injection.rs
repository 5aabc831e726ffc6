//! SQL injection against `SqliteStore`: hostile table names are refused
//! before any SQL runs; hostile values (topics, keys, idempotency keys,
//! header names and values, payloads, reasons, consumer groups, inbox keys)
//! are bind parameters and come back byte for byte; a canary table next to
//! the store's tables keeps its rows throughout.
//!
//! Each test works on a database file of its own under the temp dir,
//! removed at the end.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use futures_util::FutureExt;
use txmsg_core::{Error, Message, Outbox, SqlStore, Store, Tables};
use txmsg_sqlite::SqliteStore;
use txmsg_testkit::injection::{
    Expect, assert_identifiers_refused, assert_inbox_keeps_hostile_values,
    assert_outbox_keeps_hostile_values,
};
use uuid::Uuid;

/// Rows of the canary table.
const CANARY: [&str; 3] = ["one", "two'; --", "three"];

/// A database file under the temp dir, removed (with its WAL files) on drop.
struct TempDb {
    path: PathBuf,
}

impl TempDb {
    fn new() -> Self {
        let name = format!("txmsg-sqlite-inj-{}.db", Uuid::now_v7().simple());
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

/// Runs `test` on a store over a fresh database file holding the canary
/// table, with the tables `tables` names, and checks the canary afterwards.
async fn with_canary<F, Fut>(tables: Tables, test: F)
where
    F: FnOnce(SqliteStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = TempDb::new();
    let store = SqliteStore::connect_with(&db.url(), tables)
        .await
        .expect("open the database");
    let pool = store.pool().clone();
    sqlx::query("CREATE TABLE canary (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
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
    let outcome = AssertUnwindSafe(test(store)).catch_unwind().await;
    let notes: Result<Vec<String>, _> = sqlx::query_scalar("SELECT note FROM canary ORDER BY id")
        .fetch_all(&pool)
        .await;
    pool.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert_eq!(
        notes.expect("the canary table still exists"),
        CANARY,
        "the canary keeps its rows"
    );
}

/// The tables in the database.
async fn tables_in(store: &SqliteStore) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )
    .fetch_all(store.pool())
    .await
    .expect("list tables")
}

/// SQLite keeps every text and blob as given.
fn sqlite_expect(_: &str) -> Expect {
    Expect::Kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_are_refused_before_any_sql() {
    with_canary(Tables::default(), |store| async move {
        assert_identifiers_refused();
        // SQLite has no schemas: even a valid one is refused, before the
        // database is touched.
        let with_schema = Tables::default().with_schema("main").expect("a valid name");
        let err = SqliteStore::new(store.pool().clone(), with_schema.clone())
            .expect_err("a schema is refused");
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
        let err = SqliteStore::connect_with("sqlite::memory:", with_schema)
            .await
            .expect_err("a schema is refused");
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
        assert_eq!(
            tables_in(&store).await,
            ["canary"],
            "nothing was created or dropped"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_words_as_table_names_are_quoted() {
    let tables = Tables::default()
        .with_outbox("select")
        .and_then(|t| t.with_inbox("order"))
        .and_then(|t| t.with_migrations("table"))
        .expect("valid identifiers");
    with_canary(tables, |store| async move {
        store.migrate().await.expect("migrate");
        let mut tx = Outbox::new(&store).begin().await.expect("begin");
        tx.enqueue(Message::new("inj.reserved", &1).expect("valid"))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        assert_eq!(store.stats().await.expect("stats").pending, 1);
        assert_eq!(
            tables_in(&store).await,
            ["canary", "order", "order_dead", "select", "table"]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_round_trip_through_the_outbox() {
    with_canary(Tables::default(), |store| async move {
        store.migrate().await.expect("migrate");
        assert_outbox_keeps_hostile_values(&store, sqlite_expect).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_round_trip_through_the_inbox() {
    with_canary(Tables::default(), |store| async move {
        store.migrate().await.expect("migrate");
        assert_inbox_keeps_hostile_values(&store, sqlite_expect).await;
    })
    .await;
}
