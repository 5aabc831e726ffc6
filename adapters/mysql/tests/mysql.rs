//! `MySqlStore` against a real MySQL or MariaDB: the conformance suites, plus
//! what only a server shows (lock-serialised migrations, many claimers).
//!
//! The server is found through `MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`). Each store works in a database of its
//! own, `txmsg_t_<uuid>`, dropped at the end.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use chrono::{Duration, Utc};
use futures_util::FutureExt;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{AssertSqlSafe, MySqlPool};
use txmsg_core::{ClaimRequest, Error, Lease, Message, Outbox, Store, Tables};
use txmsg_mysql::MySqlStore;
use uuid::Uuid;

const DEFAULT_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// A pool on the test server; fails (never skips) when it cannot be reached.
async fn pool() -> MySqlPool {
    let url = std::env::var("MYSQL_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    MySqlPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach MySQL/MariaDB: {e}; start it or point MYSQL_URL at a server \
                 (default {DEFAULT_URL})"
            )
        })
}

fn schema_name() -> String {
    format!("txmsg_t_{}", Uuid::now_v7().simple())
}

async fn drop_schema(pool: &MySqlPool, schema: &str) {
    // `schema` comes from `schema_name`: letters, digits and `_` only.
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{schema}`")))
        .execute(pool)
        .await
        .expect("drop database");
}

/// Runs `test` with a fresh database name and drops the database
/// afterwards, also when `test` panics.
async fn with_schema<F, Fut>(test: F)
where
    F: FnOnce(MySqlPool, String) -> Fut,
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

/// A database of its own per conformance case.
struct MySql {
    pool: MySqlPool,
    schema: String,
}

impl txmsg_testkit::StoreFixture for MySql {
    type Store = MySqlStore;

    async fn start() -> Self {
        MySql {
            pool: pool().await,
            schema: schema_name(),
        }
    }

    async fn store(&self) -> MySqlStore {
        let store = MySqlStore::new(self.pool.clone(), tables(&self.schema)).expect("store");
        store.migrate().await.expect("migrate");
        store
    }

    async fn finish(self) {
        drop_schema(&self.pool, &self.schema).await;
    }
}

txmsg_testkit::store_conformance!(MySql);
txmsg_testkit::inbox_conformance!(MySql);
txmsg_testkit::half_conformance!(MySql);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inbox_keys_from_before_topics_are_recognised() {
    with_schema(|pool, schema| async move {
        let store = MySqlStore::new(pool.clone(), tables(&schema)).expect("store");
        store.migrate().await.expect("migrate");
        txmsg_testkit::inbox::keys_from_before_topics_are_recognised(&store, |group, key| {
            let (pool, schema) = (pool.clone(), schema.clone());
            async move {
                // Names from the test itself: letters, digits and `_` only.
                for stmt in [
                    format!(
                        "ALTER TABLE `{schema}`.`txmsg_inbox` DROP PRIMARY KEY, DROP COLUMN topic, \
                         ADD PRIMARY KEY (consumer_group, idempotency_key)"
                    ),
                    format!("DELETE FROM `{schema}`.`txmsg_migrations` WHERE version = 4"),
                ] {
                    sqlx::query(AssertSqlSafe(stmt))
                        .execute(&pool)
                        .await
                        .expect("back to the layout without topics");
                }
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO `{schema}`.`txmsg_inbox` (consumer_group, idempotency_key, processed_at) \
                     VALUES (?, ?, '2023-11-14 22:13:20')"
                )))
                .bind(group)
                .bind(key)
                .execute(&pool)
                .await
                .expect("record an old key");
            }
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_from_version_1_keeps_rows() {
    with_schema(|pool, schema| async move {
        let store = MySqlStore::new(pool.clone(), tables(&schema)).expect("store");
        store.migrate().await.expect("migrate");
        let to_previous = || async {
            for stmt in [
                format!("DROP TABLE `{schema}`.`txmsg_consumer_dead`"),
                format!("DELETE FROM `{schema}`.`txmsg_migrations` WHERE version >= 2"),
            ] {
                sqlx::query(AssertSqlSafe(stmt))
                    .execute(&pool)
                    .await
                    .expect("back to version 1");
            }
        };
        txmsg_testkit::inbox::upgrade_keeps_rows(&store, to_previous).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrate_is_safe() {
    with_schema(|pool, schema| async move {
        let store = MySqlStore::new(pool.clone(), tables(&schema)).expect("store");
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
                "SELECT version, CAST(applied_at AS CHAR) FROM `{schema}`.txmsg_migrations \
                 ORDER BY version"
            )))
            .fetch_all(&pool)
            .await
            .expect("read migrations")
        };
        let first = versions().await;
        assert_eq!(
            first.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
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
    assert_eq!(field(Tables::default().with_schema("a`b")), "schema");
    assert_eq!(field(Tables::default().with_outbox("x`y")), "outbox_table");
    assert_eq!(field(Tables::default().with_outbox("")), "outbox_table");
    // A store can only be built from validated `Tables`, so no statement with
    // such a name can exist, let alone run.
}

#[tokio::test]
async fn an_inbox_name_without_room_for_its_dead_letters_is_refused_before_any_sql() {
    let tables = Tables::default()
        .with_inbox("events")
        .unwrap()
        .with_outbox("events_dead")
        .unwrap();
    let err = MySqlStore::connect_with("mysql://127.0.0.1:1/x", tables.clone())
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
    // The pool points at a closed port: any SQL would fail differently.
    let pool = MySqlPoolOptions::new()
        .connect_lazy("mysql://127.0.0.1:1/x")
        .unwrap();
    let err = MySqlStore::new(pool, tables).unwrap_err();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_claimers_over_1000_rows_get_each_id_once() {
    with_schema(|pool, schema| async move {
        let store = MySqlStore::new(pool.clone(), tables(&schema)).expect("store");
        store.migrate().await.expect("migrate");

        let outbox = Outbox::new(&store);
        let mut written = HashSet::new();
        for batch in 0..2 {
            let mut tx = outbox.begin().await.expect("begin");
            for n in 0..500 {
                let i = batch * 500 + n;
                let mut m = Message::new("my.claimers", &i).expect("message");
                if i % 3 != 0 {
                    m = m.key(i % 40);
                }
                written.insert(tx.enqueue(m).await.expect("enqueue"));
            }
            tx.commit().await.expect("commit");
        }
        assert_eq!(written.len(), 1000);

        let claimer = |store: MySqlStore| async move {
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
        let stats = store.stats().await.expect("stats");
        assert_eq!((stats.pending, stats.sent), (0, 1000));
    })
    .await;
}

#[tokio::test]
async fn case_differing_idempotency_keys_are_distinct() {
    with_schema(|pool, schema| async move {
        let store = MySqlStore::new(pool, tables(&schema)).expect("store");
        store.migrate().await.expect("migrate");
        let mut tx = Outbox::new(&store).begin().await.expect("begin");
        let a = tx
            .enqueue(
                Message::new("t", &1)
                    .expect("message")
                    .idempotency_key("Once"),
            )
            .await
            .expect("enqueue");
        let b = tx
            .enqueue(
                Message::new("t", &2)
                    .expect("message")
                    .idempotency_key("once"),
            )
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        assert_ne!(a, b);
        assert_eq!(store.stats().await.expect("stats").pending, 2);
    })
    .await;
}

/// Concurrent producers of one key with a relay attached, at the default
/// REPEATABLE READ: none of them is rolled back by a deadlock (error 1213),
/// and every message is published once, in the order of its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_of_one_key_never_deadlock() {
    const TASKS: usize = 12;
    const PER_TASK: usize = 60;
    with_schema(|pool, schema| async move {
        let store = MySqlStore::new(pool.clone(), tables(&schema)).expect("store");
        store.migrate().await.expect("migrate");
        let broker = txmsg_memory::MemoryBroker::new();
        let mut sub = broker.observe("my.one-key");
        let relay = txmsg_core::Relay::new(
            store.clone(),
            broker,
            txmsg_core::RelayConfig::default()
                .with_poll_interval(std::time::Duration::from_millis(1)),
        )
        .expect("relay")
        .start();
        let outbox = Outbox::new(&store).with_relay(&relay);
        // Whenever every earlier row of the key is sent, a check of the key
        // reads up to the end of its rows.
        let mut tx = outbox.begin().await.expect("begin");
        tx.enqueue(Message::new("my.one-key", &0).expect("message").key("k"))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        sub.recv().await.expect("the first message");
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..TASKS {
            let outbox = outbox.clone();
            tasks.spawn(async move {
                let mut deadlocks = Vec::new();
                for n in 0..PER_TASK {
                    let attempt = async {
                        let mut tx = outbox.begin().await?;
                        tx.enqueue(
                            Message::new("my.one-key", &(task, n))?
                                .key("k")
                                .idempotency_key(format!("{task}-{n}")),
                        )
                        .await?;
                        tx.commit().await
                    };
                    if let Err(e) = attempt.await {
                        deadlocks.push(txmsg_core::__private::error_chain(&e));
                    }
                }
                deadlocks
            });
        }
        let mut failed = Vec::new();
        while let Some(done) = tasks.join_next().await {
            failed.extend(done.expect("producer task"));
        }
        let total = TASKS * PER_TASK;
        let mut published = HashSet::new();
        // Each task's transactions are serialised (one begins after the
        // last committed), so its messages must come out in its order.
        let mut last_of_task = [None::<usize>; TASKS];
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while published.len() < total - failed.len() {
            match tokio::time::timeout_at(deadline, sub.recv()).await {
                Ok(Some(e)) => {
                    let (task, n) = e.idempotency_key.split_once('-').expect("task-n");
                    let (task, n): (usize, usize) =
                        (task.parse().expect("task"), n.parse().expect("n"));
                    assert!(
                        last_of_task[task].is_none_or(|last| last < n),
                        "{task}-{n} published after {task}-{:?}",
                        last_of_task[task]
                    );
                    last_of_task[task] = Some(n);
                    assert!(
                        published.insert(e.idempotency_key.clone()),
                        "{} published twice",
                        e.idempotency_key
                    );
                }
                _ => break,
            }
        }
        relay.shutdown().await;
        assert!(
            failed.is_empty(),
            "{} of {total} transactions failed, first: {:?}",
            failed.len(),
            failed.first()
        );
        assert_eq!(published.len(), total, "every message published");
    })
    .await;
}

/// Headers that are not a JSON object (as a row written by hand can hold)
/// make a row unreadable: the claim dead-letters it and goes on.
#[tokio::test]
async fn an_unreadable_row_is_dead_lettered_and_the_claim_goes_on() {
    with_schema(|pool, schema| async move {
        let store = MySqlStore::new(pool.clone(), tables(&schema)).expect("store");
        store.migrate().await.expect("migrate");
        // The database name comes from the test: letters, digits and `_`.
        let outbox = format!("`{schema}`.txmsg_outbox");
        let corrupt = |id: Uuid| {
            let (pool, outbox) = (pool.clone(), outbox.clone());
            async move {
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE {outbox} SET headers = '[1]' WHERE id = ?"
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
                    "SELECT last_error FROM {outbox} WHERE id = ?"
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
        |url| async move { MySqlStore::connect(&url).await },
        "mysql://app:s3cret-pw@127.0.0.1:1/app",
        "127.0.0.1:1",
    )
    .await;
}

/// Another database's URL is refused before anything is looked up.
#[tokio::test]
async fn a_url_of_another_database_is_a_config_error() {
    txmsg_testkit::store::other_databases_urls_are_config_errors(
        |url| async move { MySqlStore::connect(&url).await },
        &[
            "postgres://postgres@127.0.0.1/x",
            "sqlite::memory:",
            "127.0.0.1:3306",
        ],
        "mysql://",
    )
    .await;
}

#[tokio::test]
async fn the_migration_script_does_what_migrate_does() {
    with_schema(|pool, schema| async move {
        let store = MySqlStore::new(pool.clone(), tables(&schema)).expect("store");
        let script = store.migration_script();
        assert!(script.contains(&format!("CREATE DATABASE IF NOT EXISTS `{schema}`")));
        let count = format!("SELECT count(*) FROM `{schema}`.txmsg_migrations");
        txmsg_testkit::store::a_migration_script_does_what_migrate_does(
            store,
            script,
            |script| async {
                // The script as a migration tool runs it: statement after
                // statement, on one connection.
                let mut conn = pool.acquire().await.expect("connection");
                sqlx::raw_sql(AssertSqlSafe(script))
                    .execute(&mut *conn)
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

/// A migrated store on `schema` over `pool`, with a business table
/// `orders (id INT PRIMARY KEY)` beside its tables.
async fn store_with_orders(pool: &MySqlPool, schema: &str) -> MySqlStore {
    let store = MySqlStore::new(pool.clone(), tables(schema)).expect("store");
    store.migrate().await.expect("migrate");
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE `{schema}`.orders (id INT PRIMARY KEY) ENGINE=InnoDB"
    )))
    .execute(pool)
    .await
    .expect("orders");
    store
}

/// The order ids committed.
async fn orders(pool: &MySqlPool, schema: &str) -> Vec<i32> {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT id FROM `{schema}`.orders ORDER BY id"
    )))
    .fetch_all(pool)
    .await
    .expect("orders")
}

/// Inserts order `id` in `tx`, as business code would.
async fn order(tx: &mut txmsg_core::Tx<'_, sqlx::MySql>, schema: &str, id: i32) {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO `{schema}`.orders (id) VALUES (?)"
    )))
    .bind(id)
    .execute(&mut **tx)
    .await
    .expect("business insert");
}

// On one thread, so that nothing else (the pool's handling of a returned
// connection) reaches the proxy between the commit and the count.
#[tokio::test(flavor = "current_thread")]
async fn a_transaction_sends_its_messages_with_commit_in_one_round_trip() {
    with_schema(|pool, schema| async move {
        let url = std::env::var("MYSQL_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let (proxy, via) = txmsg_testkit::proxy::TcpProxy::for_url(&url, 3306).await;
        let proxied = MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&via)
            .await
            .expect("connect through the proxy");
        store_with_orders(&pool, &schema).await;
        let store = MySqlStore::new(proxied, tables(&schema)).expect("store");
        let outbox = Outbox::new(&store);

        let mut tx = outbox.begin().await.expect("begin");
        order(&mut tx, &schema, 1).await;
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
                .key("k")
                .idempotency_key("order-1")
        };

        let mut tx = outbox.begin().await.expect("begin");
        tx.enqueue(once()).await.expect("enqueue");
        tx.commit().await.expect("the first one commits");

        let mut tx = outbox.begin().await.expect("begin");
        order(&mut tx, &schema, 2).await;
        tx.enqueue(Message::new("dup.placed", &2).expect("valid"))
            .await
            .expect("held for the commit");
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
            "the business row is rolled back with the messages"
        );
        assert_eq!(
            store.stats().await.expect("stats").pending,
            1,
            "the message before the duplicate is rolled back too"
        );

        // The pool's connections are fine afterwards.
        let mut tx = outbox.begin().await.expect("begin after a duplicate");
        order(&mut tx, &schema, 3).await;
        tx.enqueue(Message::new("dup.placed", &3).expect("valid"))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit after a duplicate");
        assert_eq!(orders(&pool, &schema).await, [3]);
        assert_eq!(store.stats().await.expect("stats").pending, 2);
    })
    .await;
}
