//! `PgStore` against a real PostgreSQL: the store conformance suite, plus what
//! only PostgreSQL has (schemas, advisory-locked migrations, many claimers).
//!
//! The server is found through `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Each test works in a schema
//! of its own, `txmsg_t_<uuid>`, and drops it at the end.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;

use chrono::{Duration, Utc};
use futures_util::FutureExt;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use txmsg_core::{ClaimRequest, Error, Lease, Message, Outbox, Store, Tables};
use txmsg_postgres::PgStore;
use uuid::Uuid;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A pool on the test server; fails (never skips) when it cannot be reached.
async fn pool() -> PgPool {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL: {e}; start it or point DATABASE_URL at a server \
                 (default {DEFAULT_URL})"
            )
        })
}

fn schema_name() -> String {
    format!("txmsg_t_{}", Uuid::now_v7().simple())
}

async fn drop_schema(pool: &PgPool, schema: &str) {
    // `schema` comes from `schema_name`: letters, digits and `_` only.
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(pool)
    .await
    .expect("drop schema");
}

/// Runs `test` with a fresh schema name and drops the schema afterwards, also
/// when `test` panics.
async fn with_schema<F, Fut>(test: F)
where
    F: FnOnce(PgPool, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let pool = pool().await;
    let schema = schema_name();
    let outcome = AssertUnwindSafe(test(pool.clone(), schema.clone()))
        .catch_unwind()
        .await;
    drop_schema(&pool, &schema).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn tables(schema: &str) -> Tables {
    Tables::default()
        .with_schema(schema)
        .expect("valid schema name")
}

/// A schema of its own per conformance case.
struct Pg {
    pool: PgPool,
    schema: String,
}

impl txmsg_testkit::StoreFixture for Pg {
    type Store = PgStore;

    async fn start() -> Self {
        Pg {
            pool: pool().await,
            schema: schema_name(),
        }
    }

    async fn store(&self) -> PgStore {
        let store = PgStore::new(self.pool.clone(), tables(&self.schema)).expect("store");
        store.migrate().await.expect("migrate");
        store
    }

    async fn finish(self) {
        drop_schema(&self.pool, &self.schema).await;
    }
}

txmsg_testkit::store_conformance!(Pg);
txmsg_testkit::inbox_conformance!(Pg);
txmsg_testkit::half_conformance!(Pg);

/// Takes the tables in `schema` back to version 2: no `half` column and no
/// index of prepared rows, no record of version 3.
async fn to_version_2(pool: &PgPool, schema: &str, outbox: &str, migrations_table: &str) {
    let mut tx = pool.begin().await.expect("begin");
    // Names from the test itself: letters, digits and `_` only.
    for statement in [
        format!("DROP INDEX \"{schema}\".\"{outbox}_prepared_idx\""),
        format!("ALTER TABLE \"{schema}\".\"{outbox}\" DROP COLUMN half"),
        format!("DELETE FROM \"{schema}\".\"{migrations_table}\" WHERE version = 3"),
    ] {
        sqlx::query(AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await
            .expect("downgrade");
    }
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn upgrade_from_version_2_keeps_rows() {
    with_schema(|pool, schema| async move {
        let store = PgStore::new(pool.clone(), tables(&schema)).expect("store");
        store.migrate().await.expect("migrate");
        txmsg_testkit::half::upgrade_keeps_rows(&store, || {
            to_version_2(&pool, &schema, "txmsg_outbox", "txmsg_migrations")
        })
        .await;

        let renamed = tables(&schema)
            .with_outbox("events_out")
            .and_then(|t| t.with_inbox("events_in"))
            .and_then(|t| t.with_migrations("events_versions"))
            .expect("valid names");
        let store = PgStore::new(pool.clone(), renamed).expect("store");
        store.migrate().await.expect("migrate");
        txmsg_testkit::half::upgrade_keeps_rows(&store, || {
            to_version_2(&pool, &schema, "events_out", "events_versions")
        })
        .await;
    })
    .await;
}

/// Takes the tables in `schema` back to version 1: no consumer dead-letter
/// table, no record of version 2.
async fn to_version_1(pool: &PgPool, schema: &str, dead_table: &str, migrations_table: &str) {
    let mut tx = pool.begin().await.expect("begin");
    // Names from the test itself: letters, digits and `_` only.
    sqlx::query(AssertSqlSafe(format!(
        "DROP TABLE \"{schema}\".\"{dead_table}\""
    )))
    .execute(&mut *tx)
    .await
    .expect("drop the dead-letter table");
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM \"{schema}\".\"{migrations_table}\" WHERE version = 2"
    )))
    .execute(&mut *tx)
    .await
    .expect("forget version 2");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn inbox_keys_from_before_topics_are_recognised() {
    with_schema(|pool, schema| async move {
        let store = PgStore::new(pool.clone(), tables(&schema)).expect("store");
        store.migrate().await.expect("migrate");
        txmsg_testkit::inbox::keys_from_before_topics_are_recognised(&store, |group, key| {
            let (pool, schema) = (pool.clone(), schema.clone());
            async move {
                let mut tx = pool.begin().await.expect("begin");
                // Names from the test itself: letters, digits and `_` only.
                let inbox = format!("\"{schema}\".\"txmsg_inbox\"");
                for stmt in [
                    format!("ALTER TABLE {inbox} DROP CONSTRAINT txmsg_inbox_pkey"),
                    format!("ALTER TABLE {inbox} DROP COLUMN topic"),
                    format!(
                        "ALTER TABLE {inbox} ADD PRIMARY KEY (consumer_group, idempotency_key)"
                    ),
                    format!("DELETE FROM \"{schema}\".\"txmsg_migrations\" WHERE version = 5"),
                ] {
                    sqlx::query(AssertSqlSafe(stmt))
                        .execute(&mut *tx)
                        .await
                        .expect("back to the layout without topics");
                }
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {inbox} (consumer_group, idempotency_key, processed_at) \
                     VALUES ($1, $2, '2023-11-14T22:13:20Z')"
                )))
                .bind(group)
                .bind(key)
                .execute(&mut *tx)
                .await
                .expect("record an old key");
                tx.commit().await.expect("commit");
            }
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn upgrade_from_version_1_keeps_rows() {
    with_schema(|pool, schema| async move {
        let store = PgStore::new(pool.clone(), tables(&schema)).expect("store");
        store.migrate().await.expect("migrate");
        txmsg_testkit::inbox::upgrade_keeps_rows(&store, || {
            to_version_1(&pool, &schema, "txmsg_consumer_dead", "txmsg_migrations")
        })
        .await;

        let renamed = tables(&schema)
            .with_outbox("events_out")
            .and_then(|t| t.with_inbox("events_in"))
            .and_then(|t| t.with_migrations("events_versions"))
            .expect("valid names");
        let store = PgStore::new(pool.clone(), renamed).expect("store");
        store.migrate().await.expect("migrate");
        txmsg_testkit::inbox::upgrade_keeps_rows(&store, || {
            to_version_1(&pool, &schema, "events_in_dead", "events_versions")
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn schema_qualified_tables_work() {
    with_schema(|pool, schema| async move {
        let custom = tables(&schema)
            .with_outbox("events_out")
            .and_then(|t| t.with_inbox("events_in"))
            .and_then(|t| t.with_migrations("events_versions"))
            .expect("valid names");
        let store = PgStore::new(pool.clone(), custom).expect("store");
        store.migrate().await.expect("migrate");
        let other = PgStore::new(pool.clone(), tables(&schema)).expect("store");
        other.migrate().await.expect("migrate");

        let mut found: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
        )
        .bind(&schema)
        .fetch_all(&pool)
        .await
        .expect("list tables");
        found.sort();
        assert_eq!(
            found,
            [
                "events_in",
                "events_in_dead",
                "events_out",
                "events_out_keys",
                "events_versions",
                "txmsg_consumer_dead",
                "txmsg_inbox",
                "txmsg_migrations",
                "txmsg_outbox",
                "txmsg_outbox_keys"
            ]
        );

        let mut tx = Outbox::new(&store).begin().await.expect("begin");
        let id = tx
            .enqueue(Message::new("pg.schema", &1).expect("message"))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");

        let now = Utc::now() + Duration::seconds(1);
        let req = |owner| ClaimRequest {
            lease: Lease {
                owner,
                until: now + Duration::seconds(30),
            },
            now,
            limit: 10,
            per_key_limit: 10,
            dead_parks_key: true,
        };
        assert!(
            other
                .claim(&req(Uuid::now_v7()))
                .await
                .expect("claim")
                .is_empty()
        );
        let claimed = store.claim(&req(Uuid::now_v7())).await.expect("claim");
        assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![id]);

        let in_table: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{schema}\".events_out WHERE id = $1"
        )))
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("count");
        assert_eq!(in_table, 1);
    })
    .await;
}

/// The point of migration 4 (fillfactor 50): leasing claimed rows is a HOT
/// update (no new index entries). Counted from PostgreSQL's own statistics,
/// read on the single connection that ran the claim, after forcing it to
/// flush them.
#[tokio::test]
async fn claim_leases_are_hot_updates() {
    with_schema(|_pool, schema| async move {
        let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let one = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("connect");
        let store = PgStore::new(one.clone(), tables(&schema)).expect("store");
        store.migrate().await.expect("migrate");
        let options: Option<Vec<String>> = sqlx::query_scalar(
            "SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = 'txmsg_outbox'",
        )
        .bind(&schema)
        .fetch_one(&one)
        .await
        .expect("reloptions");
        assert_eq!(options, Some(vec!["fillfactor=50".to_owned()]));

        const ROWS: u32 = 1_000;
        let mut tx = Outbox::new(&store).begin().await.expect("begin");
        for n in 0..ROWS {
            tx.enqueue(Message::new("pg.hot", &n).expect("message"))
                .await
                .expect("enqueue");
        }
        tx.commit().await.expect("commit");

        let updates = || async {
            sqlx::query("SELECT pg_stat_force_next_flush()")
                .execute(&one)
                .await
                .expect("flush");
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables \
                 WHERE schemaname = $1 AND relname = 'txmsg_outbox'",
            )
            .bind(&schema)
            .fetch_one(&one)
            .await
            .expect("table statistics")
        };
        let (before, hot_before) = updates().await;
        let now = Utc::now() + Duration::seconds(1);
        let req = ClaimRequest {
            lease: Lease {
                owner: Uuid::now_v7(),
                until: now + Duration::seconds(30),
            },
            now,
            limit: 100,
            per_key_limit: 10,
            dead_parks_key: true,
        };
        let mut claimed = 0;
        loop {
            let batch = store.claim(&req).await.expect("claim");
            if batch.is_empty() {
                break;
            }
            claimed += batch.len();
        }
        assert_eq!(claimed, ROWS as usize);
        let (after, hot_after) = updates().await;
        assert_eq!(after - before, i64::from(ROWS), "one lease update per row");
        let hot = hot_after - hot_before;
        assert!(
            hot * 10 >= i64::from(ROWS) * 8,
            "only {hot} of {ROWS} lease updates were HOT"
        );
        one.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrate_is_safe() {
    with_schema(|pool, schema| async move {
        let store = PgStore::new(pool.clone(), tables(&schema)).expect("store");
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.migrate().await })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("concurrent migrate");
        }

        let versions = || async {
            sqlx::query_as::<_, (i32, String)>(AssertSqlSafe(format!(
                "SELECT version, applied_at::text FROM \"{schema}\".txmsg_migrations ORDER BY version"
            )))
            .fetch_all(&pool)
            .await
            .expect("read migrations")
        };
        let first = versions().await;
        assert_eq!(
            first.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6, 7]
        );
        store.migrate().await.expect("migrate again");
        assert_eq!(versions().await, first, "migrating again changes nothing");
    })
    .await;
}

#[test]
fn bad_identifiers_are_rejected_before_any_sql() {
    let bad = "orders; drop table x";
    let field = |r: Result<Tables, Error>| match r {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(field(Tables::default().with_outbox(bad)), "outbox_table");
    assert_eq!(field(Tables::default().with_inbox(bad)), "inbox_table");
    assert_eq!(
        field(Tables::default().with_migrations(bad)),
        "migrations_table"
    );
    assert_eq!(field(Tables::default().with_schema(bad)), "schema");
    assert_eq!(field(Tables::default().with_schema("a\"b")), "schema");
    assert_eq!(field(Tables::default().with_outbox("")), "outbox_table");
    // A store can only be built from validated `Tables`, so no statement with
    // such a name can exist, let alone run.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_claimers_over_2000_rows_get_each_id_once() {
    with_schema(|pool, schema| async move {
        let store = PgStore::new(pool.clone(), tables(&schema)).expect("store");
        store.migrate().await.expect("migrate");

        let outbox = Outbox::new(&store);
        let mut written = HashSet::new();
        for batch in 0..4 {
            let mut tx = outbox.begin().await.expect("begin");
            for n in 0..500 {
                let i = batch * 500 + n;
                let mut m = Message::new("pg.claimers", &i).expect("message");
                if i % 3 != 0 {
                    m = m.key(i % 40);
                }
                written.insert(tx.enqueue(m).await.expect("enqueue"));
            }
            tx.commit().await.expect("commit");
        }
        assert_eq!(written.len(), 2000);

        let claimer = |store: PgStore| async move {
            let owner = Uuid::now_v7();
            let mut got = Vec::new();
            for _ in 0..10_000 {
                let now = Utc::now() + Duration::seconds(1);
                let req = ClaimRequest {
                    lease: Lease {
                        owner,
                        until: now + Duration::seconds(60),
                    },
                    now,
                    limit: 50,
                    per_key_limit: 10,
                    dead_parks_key: true,
                };
                let claimed = store.claim(&req).await.expect("claim");
                if claimed.is_empty() {
                    if store.stats().await.expect("stats").pending == 0 {
                        break;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                let ids: Vec<Uuid> = claimed.iter().map(|e| e.id).collect();
                store.mark_sent(&ids, now).await.expect("mark_sent");
                got.extend(ids);
            }
            got
        };
        let a = tokio::spawn(claimer(store.clone()));
        let b = tokio::spawn(claimer(store.clone()));
        let (a, b) = (a.await.expect("claimer a"), b.await.expect("claimer b"));

        let mut seen = HashSet::new();
        for id in a.iter().chain(&b) {
            assert!(seen.insert(*id), "row {id} was claimed twice");
        }
        assert_eq!(seen, written, "every row claimed exactly once");
        assert!(!a.is_empty() && !b.is_empty(), "both claimers took part");
        let stats = store.stats().await.expect("stats");
        assert_eq!((stats.pending, stats.sent), (0, 2000));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_a_relay_of_another_process() {
    with_schema(|pool, schema| async move {
        let store = PgStore::new(pool, tables(&schema))
            .expect("store")
            .with_notify("txmsg_wake_test")
            .unwrap();
        store.migrate().await.unwrap();
        let broker = txmsg_memory::MemoryBroker::new();
        let mut sub = broker.observe(&format!("wake.{schema}"));
        // The relay polls only once a minute: only the NOTIFY can wake it.
        let config = txmsg_core::RelayConfig::default()
            .with_poll_interval(std::time::Duration::from_secs(60));
        let relay = txmsg_core::Relay::new(store.clone(), broker, config)
            .unwrap()
            .start();
        // Let the relay's first poll and its LISTEN happen.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        // A producer without a relay in its process, as another service would be.
        let producer = Outbox::new(&store);
        let mut tx = producer.begin().await.unwrap();
        tx.enqueue(Message::new(&format!("wake.{schema}"), &1).unwrap())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), sub.recv()).await;
        relay.shutdown().await;
        assert!(
            matches!(got, Ok(Some(_))),
            "the relay was not woken by NOTIFY"
        );
    })
    .await;
}

#[tokio::test]
async fn notify_channel_is_validated() {
    let pool = PgPoolOptions::new()
        .connect_lazy("postgres://x@127.0.0.1/x")
        .unwrap();
    let err = PgStore::new(pool, Tables::default())
        .expect("store")
        .with_notify("a; drop")
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Config {
            field: "notify_channel",
            ..
        }
    ));
}

/// Headers that are not a JSON object (as a row written by hand can hold)
/// make a row unreadable: the claim dead-letters it and goes on.
#[tokio::test]
async fn an_unreadable_row_is_dead_lettered_and_the_claim_goes_on() {
    with_schema(|pool, schema| async move {
        let store = PgStore::new(pool.clone(), tables(&schema)).expect("store");
        store.migrate().await.expect("migrate");
        // The schema name comes from the test: letters, digits and `_`.
        let outbox = format!("\"{schema}\".txmsg_outbox");
        let corrupt = |id: Uuid| {
            let (pool, outbox) = (pool.clone(), outbox.clone());
            async move {
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE {outbox} SET headers = '[1]'::jsonb WHERE id = $1"
                )))
                .bind(id)
                .execute(&pool)
                .await
                .expect("corrupt");
            }
        };
        let last_error = |id: Uuid| {
            let (pool, outbox) = (pool.clone(), outbox.clone());
            async move {
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT last_error FROM {outbox} WHERE id = $1"
                )))
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("last_error")
            }
        };
        txmsg_testkit::store::an_unreadable_row_is_dead_lettered(&store, corrupt, last_error).await;
    })
    .await;
}

/// A server that refuses the connection is reported at once, as a
/// connection error naming where it was looked for and why, not as a pool
/// timeout half a minute later.
#[tokio::test]
async fn a_refused_connection_names_the_address_and_the_cause() {
    txmsg_testkit::store::a_refused_connection_names_the_address(
        |url| async move { PgStore::connect(&url).await },
        "postgres://app:s3cret-pw@127.0.0.1:1/app",
        "127.0.0.1:1",
    )
    .await;
}

/// Another database's URL is refused before anything is looked up.
#[tokio::test]
async fn a_url_of_another_database_is_a_config_error() {
    txmsg_testkit::store::other_databases_urls_are_config_errors(
        |url| async move { PgStore::connect(&url).await },
        &[
            "mysql://root@127.0.0.1/test",
            "sqlite::memory:",
            "127.0.0.1:5432",
        ],
        "postgres://",
    )
    .await;
}

#[tokio::test]
async fn the_migration_script_does_what_migrate_does() {
    with_schema(|pool, schema| async move {
        let store = PgStore::new(pool.clone(), tables(&schema)).expect("store");
        let script = store.migration_script();
        assert!(script.contains(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")));
        let count = format!("SELECT count(*) FROM \"{schema}\".txmsg_migrations");
        txmsg_testkit::store::a_migration_script_does_what_migrate_does(
            store,
            script,
            |script| async {
                sqlx::raw_sql(AssertSqlSafe(script))
                    .execute(&pool)
                    .await
                    .expect("the script runs");
            },
            || async {
                sqlx::query_scalar(AssertSqlSafe(count.clone()))
                    .fetch_one(&pool)
                    .await
                    .expect("count")
            },
        )
        .await;
    })
    .await;
}

/// `DATABASE_URL`, or the default test server.
fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A migrated store in `schema` on `pool`, with a business table
/// `orders (id int PRIMARY KEY, v int)` beside the outbox.
async fn store_with_orders(pool: &PgPool, schema: &str) -> PgStore {
    let store = PgStore::new(pool.clone(), tables(schema)).expect("store");
    store.migrate().await.expect("migrate");
    // `schema` comes from `schema_name`: letters, digits and `_` only.
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".orders (id int PRIMARY KEY, \
         v int UNIQUE DEFERRABLE INITIALLY DEFERRED)"
    )))
    .execute(pool)
    .await
    .expect("create orders");
    store
}

/// The ids of the committed orders in `schema`.
async fn orders(pool: &PgPool, schema: &str) -> Vec<i32> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT id FROM \"{schema}\".orders ORDER BY id"
    )))
    .fetch_all(pool)
    .await
    .expect("read orders")
}

/// Inserts order `id` with `v` in `tx`, as business code would.
async fn order(tx: &mut txmsg_core::Tx<'_, sqlx::Postgres>, schema: &str, id: i32, v: i32) {
    sqlx::query(insert_order(schema))
        .bind(id)
        .bind(v)
        .execute(&mut **tx)
        .await
        .expect("business insert");
}

/// `INSERT INTO orders` for `schema`, as a business statement.
fn insert_order(schema: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".orders (id, v) VALUES ($1, $2)"
    ))
}

// On one thread, so that nothing else (the pool's handling of a returned
// connection) reaches the proxy between the commit and the count.
#[tokio::test(flavor = "current_thread")]
async fn a_transaction_sends_its_messages_with_commit_in_one_round_trip() {
    with_schema(|pool, schema| async move {
        let (proxy, via) = txmsg_testkit::proxy::TcpProxy::for_url(&database_url(), 5432).await;
        let proxied = PgPoolOptions::new()
            .max_connections(1)
            .connect(&via)
            .await
            .expect("connect through the proxy");
        store_with_orders(&pool, &schema).await;
        let store = PgStore::new(proxied, tables(&schema)).expect("store");
        let outbox = Outbox::new(&store);

        let mut tx = outbox.begin().await.expect("begin");
        order(&mut tx, &schema, 1, 1).await;
        let before = proxy.client_reads();
        for n in 0..3 {
            let message = Message::new("rt.placed", &n)
                .expect("valid")
                .key(if n == 1 { "b" } else { "a" });
            tx.enqueue(message).await.expect("enqueue");
        }
        assert_eq!(proxy.client_reads(), before, "enqueue sends nothing");
        tx.commit().await.expect("commit");
        assert_eq!(
            proxy.client_reads() - before,
            1,
            "the messages go with COMMIT, in its round trip"
        );

        assert_eq!(store.stats().await.expect("stats").pending, 3);
        assert_eq!(orders(&pool, &schema).await, [1]);
    })
    .await;
}

#[tokio::test]
async fn a_duplicate_sent_with_commit_rolls_back_the_business_rows() {
    with_schema(|pool, schema| async move {
        let store = store_with_orders(&pool, &schema).await;
        let outbox = Outbox::new(&store);
        let once = || {
            Message::new("dup.placed", &1)
                .expect("valid")
                .idempotency_key("order-1")
        };

        let mut tx = outbox.begin().await.expect("begin");
        tx.enqueue(once()).await.expect("enqueue");
        tx.commit().await.expect("the first one commits");

        let mut tx = outbox.begin().await.expect("begin");
        order(&mut tx, &schema, 2, 2).await;
        tx.enqueue(once()).await.expect("held for the commit");
        match tx.commit().await {
            Err(Error::Duplicate {
                topic,
                idempotency_key,
            }) => assert_eq!(
                (topic.as_str(), idempotency_key.as_str()),
                ("dup.placed", "order-1")
            ),
            other => panic!("expected the duplicate at commit, got {other:?}"),
        }
        assert!(
            orders(&pool, &schema).await.is_empty(),
            "the business row is rolled back with the message"
        );

        // The pool's connection is fine afterwards.
        let mut tx = outbox.begin().await.expect("begin after a duplicate");
        order(&mut tx, &schema, 3, 3).await;
        tx.enqueue(Message::new("dup.placed", &3).expect("valid"))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit after a duplicate");
        assert_eq!(orders(&pool, &schema).await, [3]);
        assert_eq!(store.stats().await.expect("stats").pending, 2);
    })
    .await;
}

#[tokio::test]
async fn a_failed_commit_is_the_database_error_and_writes_nothing() {
    with_schema(|pool, schema| async move {
        let store = store_with_orders(&pool, &schema).await;
        let mut tx = Outbox::new(&store).begin().await.expect("begin");
        // Two orders with one `v`: the deferred unique check fails at COMMIT.
        for id in [1, 2] {
            order(&mut tx, &schema, id, 7).await;
        }
        tx.enqueue(Message::new("fail.placed", &1).expect("valid"))
            .await
            .expect("enqueue");
        let err = tx.commit().await.expect_err("the deferred check fails");
        assert!(!err.is_duplicate(), "a business table's violation: {err:?}");
        let Error::Database(sqlx::Error::Database(db)) = &err else {
            panic!("expected the database's error, got {err:?}");
        };
        assert_eq!(db.code().as_deref(), Some("23505"), "{db}");
        assert!(orders(&pool, &schema).await.is_empty());
        assert_eq!(store.stats().await.expect("stats").pending, 0);
    })
    .await;
}

#[tokio::test]
async fn a_wrapped_transaction_writes_each_message_at_enqueue() {
    with_schema(|pool, schema| async move {
        let store = store_with_orders(&pool, &schema).await;
        let outbox = Outbox::new(&store);
        let once = || {
            Message::new("wrap.placed", &1)
                .expect("valid")
                .idempotency_key("once")
        };
        let mut tx = outbox.wrap(pool.begin().await.expect("begin"));
        tx.enqueue(once()).await.expect("enqueue");
        assert_eq!(
            store.stats().await.expect("stats").pending,
            0,
            "not committed yet"
        );
        let again = tx.enqueue(once()).await;
        assert!(
            again.is_err_and(|e| e.is_duplicate()),
            "the composed form writes at once and reports the duplicate there"
        );
        tx.commit().await.expect("commit");
        assert_eq!(store.stats().await.expect("stats").pending, 1);
    })
    .await;
}
