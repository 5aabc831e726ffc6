//! The built `txmsg` binary against real databases: PostgreSQL (a fresh
//! schema per test), SQLite (a temporary file per test) and MariaDB (table
//! names of its own per test).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use txmsg::consumer::InboxStore;
use txmsg::memory::MemoryBroker;
use txmsg::mysql::MySqlStore;
use txmsg::postgres::PgStore;
use txmsg::sqlite::SqliteStore;
use txmsg::{Message, Outbox, Relay, RelayConfig, SqlStore, Store, Tables};
use uuid::Uuid;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

fn unique() -> String {
    Uuid::now_v7().simple().to_string()
}

/// Runs `txmsg` with `args`, without any `DATABASE_URL` from the environment.
fn txmsg(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_txmsg"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("TXMSG_SCHEMA")
        .output()
        .expect("run the txmsg binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `txmsg`, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = txmsg(args);
    assert!(
        out.status.success(),
        "txmsg {args:?} failed ({:?}): {}",
        out.status.code(),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs `txmsg --json`, expects success, parses stdout.
fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let text = ok(&all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Runs `txmsg`, expects exit status `code`, returns stderr, which must be
/// one `error:` line without a panic.
fn fails(args: &[&str], code: i32) -> String {
    let out = txmsg(args);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "txmsg {args:?}: stdout {} stderr {err}",
        stdout(&out)
    );
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A database for one test: the CLI's arguments, and a way to open the
/// same tables from the test.
trait Db {
    type Store: InboxStore;

    /// `--database-url ...` and the table options.
    fn args(&self) -> Vec<String>;

    /// The store on the same tables (not migrated by this call).
    async fn store(&self) -> Self::Store;
}

struct Pg {
    url: String,
    schema: String,
}

impl Pg {
    fn new() -> Self {
        Pg {
            url: database_url(),
            schema: format!("txmsg_cli_{}", unique()),
        }
    }

    async fn drop_schema(&self) {
        let pool = sqlx::PgPool::connect(&self.url)
            .await
            .expect("PostgreSQL at DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        )))
        .execute(&pool)
        .await
        .expect("drop schema");
    }
}

impl Db for Pg {
    type Store = PgStore;

    fn args(&self) -> Vec<String> {
        vec![
            "--database-url".into(),
            self.url.clone(),
            "--schema".into(),
            self.schema.clone(),
        ]
    }

    async fn store(&self) -> PgStore {
        let tables = Tables::default().with_schema(&self.schema).expect("schema");
        PgStore::connect_with(
            &self.url,
            txmsg::postgres::StoreConfig::from(tables).with_max_connections(4),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at DATABASE_URL: {e}"))
    }
}

struct Lite {
    path: PathBuf,
}

impl Lite {
    fn new() -> Self {
        Lite {
            path: std::env::temp_dir().join(format!("txmsg-cli-{}.db", unique())),
        }
    }

    fn url(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}

impl Drop for Lite {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Db for Lite {
    type Store = SqliteStore;

    fn args(&self) -> Vec<String> {
        // Custom table names, to check that the options reach the store.
        vec![
            "--database-url".into(),
            self.url(),
            "--outbox-table".into(),
            "ops_outbox".into(),
            "--inbox-table".into(),
            "ops_inbox".into(),
        ]
    }

    async fn store(&self) -> SqliteStore {
        let tables = Tables::default()
            .with_outbox("ops_outbox")
            .expect("outbox")
            .with_inbox("ops_inbox")
            .expect("inbox");
        SqliteStore::connect_with(&self.url(), tables)
            .await
            .expect("open the SQLite file")
    }
}

/// `args` of `db`, then `rest`.
fn with<D: Db>(db: &D, rest: &[&str]) -> Vec<String> {
    let mut all = db.args();
    all.extend(rest.iter().map(|s| (*s).to_owned()));
    all
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

async fn enqueue<S: SqlStore>(store: &S, topic: &str, keys: &[&str]) -> Vec<Uuid> {
    let mut tx = Outbox::new(store).begin().await.expect("begin");
    let mut ids = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let m = Message::new(topic, &serde_json::json!({ "n": n }))
            .expect("message")
            .key(*key);
        ids.push(tx.enqueue(m).await.expect("enqueue"));
    }
    tx.commit().await.expect("commit");
    ids
}

fn topic_entry<'a>(status: &'a Value, topic: &str) -> &'a Value {
    status["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .find(|t| t["topic"] == topic)
        .unwrap_or_else(|| panic!("{topic} missing from {status}"))
}

// ---------------------------------------------------------------------------
// the cases, on any database

/// `migrate` creates the tables (twice is fine), and `status` counts what the
/// store API wrote, per topic.
async fn migrate_and_status<D: Db>(db: &D) {
    let migrated = json(&strs(&with(db, &["migrate"])));
    assert_eq!(migrated["migrated"], true);
    ok(&strs(&with(db, &["migrate"])));

    let empty = json(&strs(&with(db, &["status"])));
    assert_eq!(empty["topics"], serde_json::json!([]));

    let store = db.store().await;
    let a = enqueue(&store, "cli.orders", &["k1", "k2", "k3", "k4"]).await;
    enqueue(&store, "cli.invoices", &["x"]).await;
    let now = Utc::now();
    store
        .mark_dead(a[0], Uuid::now_v7(), "broken", now)
        .await
        .expect("mark_dead");
    store.mark_sent(&a[1..2], now).await.expect("mark_sent");

    let status = json(&strs(&with(db, &["status"])));
    assert_eq!(status["sent_window_seconds"], 60);
    let orders = topic_entry(&status, "cli.orders");
    assert_eq!(orders["pending"], 2, "{orders}");
    assert_eq!(orders["prepared"], 0, "{orders}");
    assert_eq!(orders["dead"], 1, "{orders}");
    assert_eq!(orders["sent_recently"], 1, "{orders}");
    assert!(orders["oldest_pending_age_seconds"].as_i64().is_some());
    let invoices = topic_entry(&status, "cli.invoices");
    assert_eq!(
        (
            &invoices["pending"],
            &invoices["dead"],
            &invoices["sent_recently"]
        ),
        (&Value::from(1), &Value::from(0), &Value::from(0))
    );

    let text = ok(&strs(&with(db, &["status"])));
    let header = text.lines().next().expect("a header line");
    assert!(
        header.starts_with("TOPIC") && header.contains("PENDING"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("cli.orders"))
        .unwrap_or_else(|| panic!("no orders row: {text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "2", "pending in {row}");
}

/// Dead letters are listed and shown, replayed to pending by the tool, and
/// then delivered exactly once each by a real relay.
async fn dead_replay_delivers_once<D: Db>(db: &D) {
    ok(&strs(&with(db, &["migrate"])));
    let store = db.store().await;
    let topic = "cli.dead";
    let ids = enqueue(&store, topic, &["a", "b", "c"]).await;
    let other = enqueue(&store, "cli.other", &["z"]).await;
    let now = Utc::now();
    for id in ids.iter().chain(&other) {
        store
            .mark_dead(*id, Uuid::now_v7(), "handler refused", now)
            .await
            .expect("mark_dead");
    }

    let listed = json(&strs(&with(db, &["dead", "list", "--topic", topic])));
    let listed: Vec<String> = listed["dead_letters"]
        .as_array()
        .expect("dead_letters")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect();
    let expected: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    assert_eq!(listed, expected, "oldest first, only the topic asked for");
    let all = json(&strs(&with(db, &["dead", "list"])));
    assert_eq!(all["dead_letters"].as_array().expect("list").len(), 4);
    let older = json(&strs(&with(db, &["dead", "list", "--older-than", "1h"])));
    assert_eq!(
        older["dead_letters"],
        serde_json::json!([]),
        "none is that old"
    );

    let text = ok(&strs(&with(db, &["dead", "list", "--key", "b"])));
    assert!(text.contains(&ids[1].to_string()), "{text}");
    assert!(text.contains("handler refused"), "{text}");
    assert!(!text.contains(&ids[0].to_string()), "{text}");

    let shown = json(&strs(&with(db, &["dead", "show", &ids[2].to_string()])));
    assert_eq!(shown["payload"], serde_json::json!({ "n": 2 }));
    assert_eq!(shown["reason"], "handler refused");
    assert_eq!(shown["key"], "c");
    let missing = Uuid::now_v7().to_string();
    let err = fails(&strs(&with(db, &["dead", "show", &missing])), 1);
    assert!(err.contains(&missing), "{err}");

    fails(&strs(&with(db, &["dead", "replay"])), 2);
    let replayed = json(&strs(&with(db, &["dead", "replay", "--topic", topic])));
    let mut got: Vec<String> = replayed["replayed"]
        .as_array()
        .expect("replayed")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    got.sort();
    assert_eq!(got, expected);
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.dead), (3, 1));
    let left = json(&strs(&with(db, &["dead", "list"])));
    assert_eq!(left["dead_letters"][0]["id"], other[0].to_string());

    // A replay of a message that is not dead says so and fails.
    let out = txmsg(&strs(&with(
        db,
        &["dead", "replay", &ids[0].to_string(), "--json"],
    )));
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["not_dead"][0], ids[0].to_string());

    // A relay publishes each replayed message exactly once.
    let broker = MemoryBroker::new();
    let mut seen = broker.observe(topic);
    let config = RelayConfig::default().with_poll_interval(Duration::from_millis(50));
    let relay = Relay::new(store.clone(), broker.clone(), config)
        .expect("relay")
        .start();
    let mut counts: HashMap<Uuid, u32> = HashMap::new();
    for _ in 0..ids.len() {
        let env = tokio::time::timeout(Duration::from_secs(20), seen.recv())
            .await
            .expect("the relay publishes the replayed messages")
            .expect("broker alive");
        *counts.entry(env.id).or_default() += 1;
    }
    // Anything published twice would arrive within a few polls.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Some(env) = seen.try_recv() {
        *counts.entry(env.id).or_default() += 1;
    }
    relay.shutdown().await;
    let expected_counts: HashMap<Uuid, u32> = ids.iter().map(|id| (*id, 1)).collect();
    assert_eq!(
        counts, expected_counts,
        "each replayed message exactly once"
    );
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.sent, stats.dead), (0, 3, 1));
}

/// `dead purge` deletes by age and by filter in batches; `inbox purge`
/// deletes a group's old keys only.
async fn purges<D: Db>(db: &D) {
    ok(&strs(&with(db, &["migrate"])));
    let store = db.store().await;
    let ids = enqueue(&store, "cli.purge", &["a", "b", "c", "d"]).await;
    let now = Utc::now();
    let old = now - chrono::Duration::hours(2);
    for (i, id) in ids.iter().enumerate() {
        let at = if i < 3 { old } else { now };
        store
            .mark_dead(*id, Uuid::now_v7(), "gone", at)
            .await
            .expect("mark_dead");
    }

    let err = fails(&strs(&with(db, &["dead", "purge"])), 2);
    assert!(err.contains("--all"), "{err}");
    let would = json(&strs(&with(
        db,
        &["dead", "purge", "--older-than", "1h", "--dry-run"],
    )));
    assert_eq!(
        would["would_purge"].as_array().map(Vec::len),
        Some(3),
        "{would}"
    );
    let would = json(&strs(&with(db, &["dead", "replay", "--all", "--dry-run"])));
    assert_eq!(
        would["would_replay"].as_array().map(Vec::len),
        Some(4),
        "{would}"
    );
    assert_eq!(
        store.stats().await.expect("stats").dead,
        4,
        "dry runs change nothing"
    );
    let purged = json(&strs(&with(
        db,
        &["dead", "purge", "--older-than", "1h", "--batch", "2"],
    )));
    assert_eq!(purged["purged"], 3, "the three old ones, in two batches");
    let left = json(&strs(&with(db, &["dead", "list"])));
    assert_eq!(left["dead_letters"][0]["id"], ids[3].to_string());
    let purged = json(&strs(&with(db, &["dead", "purge", "--all"])));
    assert_eq!(purged["purged"], 1);
    assert_eq!(store.stats().await.expect("stats").dead, 0);

    // Inbox keys: two old ones and a recent one in group g, an old one in h.
    let mut tx = store.begin().await.expect("begin");
    let inbox = store.inbox();
    let eight_days = now - chrono::Duration::days(8);
    for (group, key, at) in [
        ("g", "k1", eight_days),
        ("g", "k2", eight_days),
        ("g", "k3", now),
        ("h", "k1", eight_days),
    ] {
        assert!(
            inbox
                .record(&mut *tx, group, "t.cli", key, at)
                .await
                .expect("record")
        );
    }
    tx.commit().await.expect("commit");
    let would = json(&strs(&with(
        db,
        &[
            "inbox",
            "purge",
            "--group",
            "g",
            "--older-than",
            "7d",
            "--dry-run",
        ],
    )));
    assert_eq!(would["would_purge"], 2, "{would}");
    let purged = json(&strs(&with(
        db,
        &["inbox", "purge", "--group", "g", "--older-than", "7d"],
    )));
    assert_eq!(purged["purged"], 2, "the dry run deleted nothing");
    let purged = json(&strs(&with(
        db,
        &["inbox", "purge", "--group", "g", "--older-than", "7d"],
    )));
    assert_eq!(purged["purged"], 0);
    // Group h's key is still there: recording it again is a duplicate.
    let mut tx = store.begin().await.expect("begin");
    assert!(
        !inbox
            .record(&mut *tx, "h", "t.cli", "k1", now)
            .await
            .expect("record"),
        "another group's keys are not purged"
    );
    assert!(
        inbox
            .record(&mut *tx, "g", "t.cli", "k1", now)
            .await
            .expect("record"),
        "the purged key is gone"
    );
    tx.rollback().await.expect("rollback");
}

/// Before `migrate`, commands say to run it.
async fn unmigrated<D: Db>(db: &D) {
    let err = fails(&strs(&with(db, &["status"])), 1);
    assert!(err.contains("txmsg migrate"), "{err}");
    let err = fails(&strs(&with(db, &["dead", "list"])), 1);
    assert!(err.contains("txmsg migrate"), "{err}");
}

// ---------------------------------------------------------------------------
// PostgreSQL

#[tokio::test(flavor = "multi_thread")]
async fn pg_migrate_and_status() {
    let db = Pg::new();
    migrate_and_status(&db).await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_dead_replay_delivers_once() {
    let db = Pg::new();
    dead_replay_delivers_once(&db).await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_purges() {
    let db = Pg::new();
    purges(&db).await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_unmigrated_schema_says_to_migrate() {
    let db = Pg::new();
    unmigrated(&db).await;
    db.drop_schema().await;
}

/// `status --log-prefix` shows the log capture's slot: what it keeps and its
/// oldest unconfirmed message; a missing slot fails the command.
#[tokio::test(flavor = "multi_thread")]
async fn pg_status_shows_the_log_slot() {
    use txmsg::postgres::{Capture, LogRelay, LogRelayConfig};
    let db = Pg::new();
    ok(&strs(&with(&db, &["migrate"])));
    let slot = format!("p_{}", unique());
    let store = db
        .store()
        .await
        .with_capture(Capture::log("cli_orders").expect("prefix"));
    let config = LogRelayConfig::default()
        .with_slot(&slot)
        .and_then(|c| c.with_publication(&slot))
        .expect("names");
    LogRelay::create_slot(&store, &config).await.expect("slot");
    enqueue(&store, "cli.log", &["a", "b", "c"]).await;

    let args = with(
        &db,
        &[
            "status",
            "--log-prefix",
            "cli_orders",
            "--log-slot",
            &slot,
            "--log-publication",
            &slot,
        ],
    );
    let status = json(&strs(&args));
    let s = &status["log_slot"];
    assert_eq!(s["slot"], slot.as_str(), "{status}");
    assert_eq!(s["exists"], true);
    assert_eq!(s["active"], false, "no relay reads it");
    assert_eq!(s["invalidated"], false);
    assert_eq!(s["wal_status"], "reserved");
    assert!(s["lag_bytes"].as_u64().is_some_and(|b| b > 0), "{s}");
    assert!(s["oldest_unconfirmed"].is_string(), "{s}");
    assert!(
        s["oldest_unconfirmed_age_seconds"]
            .as_i64()
            .is_some_and(|a| a >= 0),
        "{s}"
    );
    let text = ok(&strs(&args));
    assert!(text.contains("LOG SLOT") && text.contains(&slot), "{text}");

    let missing = format!("p_{}", unique());
    let out = txmsg(&strs(&with(
        &db,
        &[
            "status",
            "--log-prefix",
            "cli_orders",
            "--log-slot",
            &missing,
        ],
    )));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("MISSING"), "{}", stdout(&out));

    let pool = sqlx::PgPool::connect(&db.url).await.expect("PostgreSQL");
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&pool)
        .await
        .expect("drop the slot");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP PUBLICATION \"{slot}\"")))
        .execute(&pool)
        .await
        .expect("drop the publication");
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------
// SQLite

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_has_no_log_slot_to_show() {
    let db = Lite::new();
    ok(&strs(&with(&db, &["migrate"])));
    let err = fails(&strs(&with(&db, &["status", "--log-prefix", "orders"])), 2);
    assert!(err.contains("PostgreSQL"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_migrate_and_status() {
    migrate_and_status(&Lite::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_dead_replay_delivers_once() {
    dead_replay_delivers_once(&Lite::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_purges() {
    purges(&Lite::new()).await;
}

/// `inbox purge` refuses an age the library refuses as an inbox retention:
/// a key purged while its message may still be redelivered lets that message
/// be applied twice. `--allow-below-horizon` is the operator's explicit
/// override.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_inbox_purge_below_the_redelivery_horizon_is_refused() {
    let db = Lite::new();
    ok(&strs(&with(&db, &["migrate"])));
    let err = fails(
        &strs(&with(
            &db,
            &["inbox", "purge", "--group", "g", "--older-than", "1m"],
        )),
        2,
    );
    assert!(
        err.contains("redelivery horizon") && err.contains("--allow-below-horizon"),
        "{err}"
    );
    let purged = json(&strs(&with(
        &db,
        &[
            "inbox",
            "purge",
            "--group",
            "g",
            "--older-than",
            "1m",
            "--allow-below-horizon",
        ],
    )));
    assert_eq!(purged["purged"], 0);
    // An unknown group is named in a warning.
    let out = txmsg(&strs(&with(
        &db,
        &[
            "inbox",
            "purge",
            "--group",
            "g",
            "--older-than",
            "1m",
            "--allow-below-horizon",
        ],
    )));
    assert!(
        stderr(&out).contains("group `g` has no inbox keys at all"),
        "{}",
        stderr(&out)
    );
    // Longer than the horizon: no override needed.
    json(&strs(&with(
        &db,
        &["inbox", "purge", "--group", "g", "--older-than", "2d"],
    )));
    // `dead list` names the groups whose dead letters it does not show.
    let store = db.store().await;
    let env = txmsg::Envelope::new(Uuid::now_v7(), "t.cli", "k-1", b"{}".to_vec(), Utc::now());
    let dead = txmsg::consumer::ConsumerDeadLetter::new(
        Uuid::now_v7(),
        "billing",
        env,
        "handler failed",
        5,
        Utc::now(),
    );
    store
        .add_consumer_dead(&dead)
        .await
        .expect("add_consumer_dead");
    let listed = ok(&strs(&with(&db, &["dead", "list"])));
    assert!(
        listed.contains("no dead letters") && listed.contains("billing: 1"),
        "{listed}"
    );
    let listed = json(&strs(&with(&db, &["dead", "list"])));
    assert_eq!(
        listed["consumer_dead_groups"][0]["group"], "billing",
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_unmigrated_file_says_to_migrate() {
    let db = Lite::new();
    // A file that is not there is not created by a read.
    let err = fails(&strs(&with(&db, &["status"])), 1);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!db.path.exists(), "status must not create the database");
    // An SQLite file without the tables.
    std::fs::write(&db.path, b"").expect("create an empty file");
    unmigrated(&db).await;
}

// ---------------------------------------------------------------------------
// MariaDB, through the `mariadb://` scheme, with table names of its own

struct Maria {
    url: String,
    prefix: String,
}

impl Db for Maria {
    type Store = MySqlStore;

    fn args(&self) -> Vec<String> {
        let url = self.url.replacen("mysql://", "mariadb://", 1);
        vec![
            "--database-url".into(),
            url,
            "--outbox-table".into(),
            format!("{}_outbox", self.prefix),
            "--inbox-table".into(),
            format!("{}_inbox", self.prefix),
            "--migrations-table".into(),
            format!("{}_migrations", self.prefix),
        ]
    }

    async fn store(&self) -> MySqlStore {
        let tables = Tables::default()
            .with_outbox(&format!("{}_outbox", self.prefix))
            .and_then(|t| t.with_inbox(&format!("{}_inbox", self.prefix)))
            .and_then(|t| t.with_migrations(&format!("{}_migrations", self.prefix)))
            .expect("table names");
        MySqlStore::connect_with(
            &self.url,
            txmsg::mysql::StoreConfig::from(tables).with_max_connections(4),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot reach MariaDB at MYSQL_URL: {e}"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_migrate_status_and_dead_letters() {
    let db = Maria {
        url: mysql_url(),
        prefix: format!("cli{}", &unique()[20..]),
    };
    unmigrated(&db).await;
    migrate_and_status(&db).await;
    let store = db.store().await;
    let pool = store.pool().clone();
    for table in ["outbox", "inbox", "inbox_dead", "migrations"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS `{}_{table}`",
            db.prefix
        )))
        .execute(&pool)
        .await
        .expect("drop table");
    }
}

// ---------------------------------------------------------------------------
// errors that need no database

#[test]
fn a_bad_url_is_one_clear_line_without_the_password() {
    let err = fails(
        &[
            "status",
            "--database-url",
            "postgres://app:hunter2@127.0.0.1:notaport/db",
        ],
        1,
    );
    assert!(err.contains("invalid database URL"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let err = fails(
        &[
            "status",
            "--database-url",
            "postgres://app:hunter2@127.0.0.1:1/db",
            "--connect-timeout",
            "2s",
        ],
        1,
    );
    assert!(err.contains("could not connect"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let err = fails(
        &["status", "--database-url", "redis://:hunter2@127.0.0.1"],
        2,
    );
    assert!(err.contains("`redis:`"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let err = fails(&["status"], 2);
    assert!(err.contains("DATABASE_URL"), "{err}");
}

#[test]
fn a_bad_table_name_is_refused_before_connecting() {
    let err = fails(
        &[
            "status",
            "--database-url",
            "postgres://127.0.0.1:1/db",
            "--outbox-table",
            "x; drop table y",
        ],
        2,
    );
    assert!(err.contains("outbox_table"), "{err}");
    let err = fails(
        &[
            "status",
            "--database-url",
            "sqlite::memory:",
            "--schema",
            "app",
        ],
        1,
    );
    assert!(err.contains("schema"), "{err}");
}

#[test]
fn help_lists_every_command() {
    let help = ok(&["--help"]);
    for command in ["migrate", "status", "dead", "inbox"] {
        assert!(help.contains(command), "{help}");
    }
    let dead = ok(&["dead", "--help"]);
    for command in ["list", "show", "replay", "purge"] {
        assert!(dead.contains(command), "{dead}");
    }
}

/// `migrate --print-sql` prints the script for the options' tables and
/// connects to nothing: a closed port and a file that does not exist are
/// fine, and the file is not created.
#[test]
fn migrate_print_sql_connects_to_nothing() {
    let pg = ok(&[
        "--database-url",
        "postgres://app@127.0.0.1:1/app",
        "--schema",
        "billing",
        "migrate",
        "--print-sql",
    ]);
    assert!(
        pg.contains("CREATE SCHEMA IF NOT EXISTS \"billing\""),
        "{pg}"
    );
    assert!(
        pg.contains("INSERT INTO \"billing\".\"txmsg_migrations\""),
        "{pg}"
    );
    let mysql = ok(&[
        "--database-url",
        "mariadb://root@127.0.0.1:1/t",
        "migrate",
        "--print-sql",
    ]);
    assert!(mysql.contains("PREPARE txmsg_step"), "{mysql}");
    let path = std::env::temp_dir().join(format!("txmsg-cli-{}.db", unique()));
    let url = format!("sqlite://{}", path.display());
    let sqlite = json(&["--database-url", &url, "migrate", "--print-sql"]);
    let script = sqlite["sql"].as_str().expect("the script under `sql`");
    assert!(
        script.contains("CREATE TABLE IF NOT EXISTS \"txmsg_migrations\""),
        "{script}"
    );
    assert!(!path.exists(), "printing the script created the database");
}
