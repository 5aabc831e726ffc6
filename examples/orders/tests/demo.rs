//! The demo is a test too: it must pass its own consistency check on the
//! embedded default, on every store with the in-process broker, on
//! PostgreSQL with every broker and on MariaDB with RabbitMQ.
//!
//! Each run works in names of its own on the servers (the demo adds a
//! suffix of its run), so these tests run side by side.

use std::process::{Command, Output};

/// The variables the demo reads; each test sets only the ones it means.
const DEMO_VARS: &[&str] = &["DATABASE_URL", "BROKER_URL", "AMQP_URL"];

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn postgres_url() -> String {
    env_or(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

fn mariadb_url() -> String {
    env_or("MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
}

fn amqp_url() -> String {
    env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// Runs the demo binary with exactly these demo variables.
fn demo(envs: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_txmsg-example-orders"));
    for var in DEMO_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run the demo")
}

/// Runs the demo, which must succeed; returns its standard output.
fn run_demo(envs: &[(&str, String)]) -> String {
    let out = demo(envs);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed with {envs:?}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs the demo, which must fail before doing anything; returns its
/// standard error.
fn failing_demo(envs: &[(&str, String)]) -> String {
    let out = demo(envs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stdout.contains("OK:"), "{stdout}");
    stderr
}

/// The demo ran on `store` and `broker` (the start of their descriptions).
fn assert_backends(stdout: &str, store: &str, broker: &str) {
    let first = stdout.lines().next().unwrap_or_default();
    let (on_store, on_broker) = first
        .strip_prefix("txmsg order demo on ")
        .and_then(|backends| backends.split_once(" + "))
        .unwrap_or_else(|| panic!("no backends line: {stdout}"));
    assert!(on_store.starts_with(store), "{first}");
    assert!(on_broker.starts_with(broker), "{first}");
}

fn assert_consistent(stdout: &str) {
    assert!(
        stdout.contains("OK: every committed order was published exactly once"),
        "{stdout}"
    );
    assert!(stdout.contains("orders committed        : 6"), "{stdout}");
    assert!(stdout.contains("rows in demo_orders     : 6"), "{stdout}");
    assert!(stdout.contains("retries rejected as dup : 1"), "{stdout}");
    assert!(stdout.contains("messages on the broker  : 6"), "{stdout}");
    assert!(stdout.contains("invoices (billing)      : 6"), "{stdout}");
    assert!(stdout.contains("redeliveries ignored    : 1"), "{stdout}");
}

// ---- the default: no services ----

#[test]
fn demo_on_sqlite_and_in_process_broker_by_default() {
    let stdout = run_demo(&[]);
    assert_backends(&stdout, "SQLite (temporary file", "the in-process broker");
    assert_consistent(&stdout);
}

// ---- every store with the in-process broker ----

/// A SQLite database file removed on drop.
struct TempDb(std::path::PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

#[test]
fn demo_on_sqlite_url_and_in_process_broker() {
    let db = TempDb(std::env::temp_dir().join(format!(
        "txmsg-demo-test-{}.db",
        uuid::Uuid::now_v7().simple()
    )));
    let stdout = run_demo(&[("DATABASE_URL", format!("sqlite:{}", db.0.display()))]);
    assert_backends(&stdout, "SQLite (DATABASE_URL)", "the in-process broker");
    assert_consistent(&stdout);
    assert!(db.0.exists(), "the demo keeps a database it was given");
}

#[test]
fn demo_on_postgres_and_in_process_broker() {
    let stdout = run_demo(&[("DATABASE_URL", postgres_url())]);
    assert_backends(&stdout, "PostgreSQL", "the in-process broker");
    assert_consistent(&stdout);
}

#[test]
fn demo_on_mariadb_and_in_process_broker() {
    // The `mariadb://` spelling of the URL.
    let url = mariadb_url().replacen("mysql://", "mariadb://", 1);
    let stdout = run_demo(&[("DATABASE_URL", url)]);
    assert_backends(&stdout, "MySQL/MariaDB", "the in-process broker");
    assert_consistent(&stdout);
}

// ---- PostgreSQL with every broker ----

#[test]
fn demo_on_postgres_and_rabbitmq_from_amqp_url() {
    let stdout = run_demo(&[("DATABASE_URL", postgres_url()), ("AMQP_URL", amqp_url())]);
    assert_backends(&stdout, "PostgreSQL", "RabbitMQ");
    assert_consistent(&stdout);
}

#[test]
fn demo_on_postgres_and_nats() {
    let nats = env_or("NATS_URL", "nats://127.0.0.1:4222");
    let stdout = run_demo(&[("DATABASE_URL", postgres_url()), ("BROKER_URL", nats)]);
    assert_backends(&stdout, "PostgreSQL", "NATS JetStream");
    assert_consistent(&stdout);
}

#[test]
fn demo_on_postgres_and_redis() {
    let redis = env_or("REDIS_URL", "redis://127.0.0.1:6379");
    let stdout = run_demo(&[("DATABASE_URL", postgres_url()), ("BROKER_URL", redis)]);
    assert_backends(&stdout, "PostgreSQL", "Redis Streams");
    assert_consistent(&stdout);
}

#[test]
fn demo_on_postgres_and_mqtt() {
    let mqtt = env_or("MQTT_URL", "mqtt://127.0.0.1:1884");
    let stdout = run_demo(&[("DATABASE_URL", postgres_url()), ("BROKER_URL", mqtt)]);
    assert_backends(&stdout, "PostgreSQL", "MQTT");
    assert_consistent(&stdout);
}

// ---- MariaDB with RabbitMQ ----

#[test]
fn demo_on_mariadb_and_rabbitmq() {
    let stdout = run_demo(&[("DATABASE_URL", mariadb_url()), ("BROKER_URL", amqp_url())]);
    assert_backends(&stdout, "MySQL/MariaDB", "RabbitMQ");
    assert_consistent(&stdout);
}

// ---- bad variables ----

#[test]
fn unknown_database_scheme_is_an_error_naming_the_variable() {
    let stderr = failing_demo(&[("DATABASE_URL", "oracle://scott:tiger@db/orcl".into())]);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(stderr.contains("`oracle`"), "{stderr}");
    for scheme in [
        "sqlite:",
        "postgres://",
        "postgresql://",
        "mysql://",
        "mariadb://",
    ] {
        assert!(stderr.contains(scheme), "{scheme} missing: {stderr}");
    }
    assert!(!stderr.contains("tiger"), "the password leaked: {stderr}");
}

#[test]
fn unknown_broker_scheme_is_an_error_naming_the_variable() {
    let stderr = failing_demo(&[("BROKER_URL", "kafka://127.0.0.1:9092".into())]);
    assert!(stderr.contains("BROKER_URL"), "{stderr}");
    assert!(stderr.contains("`kafka`"), "{stderr}");
    for scheme in ["amqp://", "amqps://", "nats://", "redis://", "mqtt://"] {
        assert!(stderr.contains(scheme), "{scheme} missing: {stderr}");
    }
}
