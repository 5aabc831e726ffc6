//! The saga demo is a test too: it must pass its own consistency check on
//! the embedded default, after a crash of each service, and on PostgreSQL
//! with RabbitMQ and with RocketMQ.
//!
//! Each run works in names of its own on the servers (the demo adds a
//! suffix of its run) and removes them at the end, so these tests run side
//! by side; the server tests check that nothing is left.

use std::collections::BTreeMap;
use std::process::{Command, Output};

/// The variables the demo reads; each test sets only the ones it means.
const DEMO_VARS: &[&str] = &["DATABASE_URL", "AMQP_URL", "SAGA_CRASH", "BROKER_URL"];

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn postgres_url() -> String {
    env_or(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

fn amqp_url() -> String {
    env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// Runs the demo binary with `args` and exactly these demo variables.
fn demo(args: &[&str], envs: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_txmsg-example-saga"));
    for var in DEMO_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("run the demo")
}

/// Runs the demo, which must succeed; returns its standard output.
fn run_demo(args: &[&str], envs: &[(&str, String)]) -> String {
    let out = demo(args, envs);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed with {args:?} {envs:?}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs the demo, which must fail before doing anything; returns its
/// standard error.
fn failing_demo(args: &[&str], envs: &[(&str, String)]) -> String {
    let out = demo(args, envs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stdout.contains("OK:"), "{stdout}");
    assert!(!stdout.contains("placed order"), "{stdout}");
    stderr
}

/// The demo ran on `store` and `broker` (the start of their descriptions).
fn assert_backends(stdout: &str, store: &str, broker: &str) {
    let first = stdout.lines().next().unwrap_or_default();
    let (on_store, on_broker) = first
        .strip_prefix("txmsg saga demo on ")
        .and_then(|backends| backends.split_once(" + "))
        .unwrap_or_else(|| panic!("no backends line: {stdout}"));
    assert!(on_store.starts_with(store), "{first}");
    assert!(on_broker.starts_with(broker), "{first}");
}

/// The numbers of a `label : order N, payment N, shipping N` line.
fn per_service(stdout: &str, label: &str) -> BTreeMap<String, u64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line: {stdout}"));
    let (_, values) = line.split_once(" : ").expect("a summary line");
    values
        .split(", ")
        .map(|pair| {
            let (service, n) = pair.split_once(' ').expect("`service N`");
            (service.to_owned(), n.parse().expect("a count"))
        })
        .collect()
}

/// The saga ended consistent, with the figures of the demo's eight orders.
fn assert_consistent(stdout: &str) {
    assert!(
        stdout.contains(
            "OK: every order is completed, charged once and shipped once, or cancelled, declined once and never shipped; nothing was applied twice"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("INCONSISTENT"), "{stdout}");
    for line in [
        "orders completed        : 5 [1, 2, 5, 7, 8]",
        "orders cancelled        : 3 [3, 4, 6]",
        "payment rows            : 8 (5 charged, 3 declined)",
        "shipment rows           : 5",
        "order history rows      : 8",
        "inbox keys              : order 8, payment 8, shipping 5",
        "outbox messages sent    : order 8, payment 8, shipping 5",
        "outbox pending / dead   : 0 / 0",
        "consumer dead letters   : 0",
    ] {
        assert!(stdout.contains(line), "missing `{line}`:\n{stdout}");
    }
    // Every order in the table: completed ones charged and shipped,
    // cancelled ones declined and not shipped.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" | completed ") || l.contains(" | cancelled "))
        .collect();
    assert_eq!(rows.len(), 8, "{stdout}");
    for row in rows {
        let fields: Vec<&str> = row.split_whitespace().collect();
        let (state, payment, shipment) = (
            fields[4],
            fields[5],
            fields.last().copied().unwrap_or_default(),
        );
        match state {
            "completed" => {
                assert_eq!((payment, shipment), ("charged", "shipped"), "{row}");
            }
            _ => assert_eq!((payment, shipment), ("declined", "none"), "{row}"),
        }
    }
}

/// `service` crashed once, no other did, and the crash healed.
fn assert_crashed(stdout: &str, service: &str) {
    assert!(
        stdout.contains(&format!(
            "crash: the {service} service, in the middle of the flow"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{service} service crashed: ")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{service} service restarted: a new consumer and relay on the same database"
        )),
        "{stdout}"
    );
    let crashes = per_service(stdout, "crashes ");
    for (name, n) in &crashes {
        let expected = u64::from(name == service);
        assert_eq!(*n, expected, "crashes of {name}: {stdout}");
    }
    assert_eq!(crashes.len(), 3, "{stdout}");
}

/// The crashed consumer committed a delivery it never acknowledged: the
/// broker delivered it again and the restarted consumer skipped it.
fn assert_redelivery_skipped(stdout: &str, service: &str) {
    let skipped = per_service(stdout, "redeliveries skipped ");
    assert!(
        skipped.get(service).copied().unwrap_or_default() >= 1,
        "no redelivery skipped by {service}: {stdout}"
    );
}

/// The suffix of the run's names, from the first line.
fn run_id(stdout: &str) -> String {
    let first = stdout.lines().next().unwrap_or_default();
    let start = first.find("txmsg_saga_").expect("schema names") + "txmsg_saga_".len();
    first[start..]
        .split('_')
        .next()
        .expect("a run id")
        .to_owned()
}

/// Schemas of run `run` still in the database.
fn schemas_left(run: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let pool = sqlx::PgPool::connect(&postgres_url())
            .await
            .expect("DATABASE_URL: PostgreSQL must be reachable");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1")
            .bind(format!("txmsg_saga_{run}_%"))
            .fetch_one(&pool)
            .await
            .expect("count schemas");
        pool.close().await;
        n
    })
}

/// Whether the exchange of run `run` still exists.
fn exchange_left(run: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("AMQP_URL: RabbitMQ must be reachable");
        let channel = conn.create_channel().await.expect("a channel");
        let passive = lapin::options::ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let found = channel
            .exchange_declare(
                format!("txmsg.saga.{run}").as_str().into(),
                lapin::ExchangeKind::Topic,
                passive,
                lapin::types::FieldTable::default(),
            )
            .await
            .is_ok();
        let _ = conn.close(200, "done".into()).await;
        found
    })
}

// ---- the default: no services ----

#[test]
fn saga_on_three_sqlite_files_and_in_process_broker_by_default() {
    let stdout = run_demo(&[], &[]);
    assert_backends(&stdout, "SQLite (3 files", "the in-process broker");
    assert!(stdout.contains("crash: none"), "{stdout}");
    assert!(
        stdout.contains("crashes                 : order 0, payment 0, shipping 0"),
        "{stdout}"
    );
    assert_consistent(&stdout);
}

// ---- a crash of each service, embedded ----

#[test]
fn saga_heals_when_the_order_service_relay_dies_before_publishing() {
    let stdout = run_demo(&["--crash", "order"], &[]);
    assert_backends(&stdout, "SQLite (3 files", "the in-process broker");
    assert_crashed(&stdout, "order");
    assert!(
        stdout.contains("order service crashed: its orders are committed, but its relay died before publishing orders.placed"),
        "{stdout}"
    );
    assert_consistent(&stdout);
}

#[test]
fn saga_heals_when_the_payment_service_dies_between_commit_and_ack() {
    let stdout = run_demo(&["--crash=payment"], &[]);
    assert_crashed(&stdout, "payment");
    assert!(
        stdout.contains("then it died before acknowledging orders.placed"),
        "{stdout}"
    );
    assert_redelivery_skipped(&stdout, "payment");
    assert_consistent(&stdout);
}

#[test]
fn saga_heals_when_the_shipping_service_dies_between_commit_and_ack() {
    // Chosen by the variable this time.
    let stdout = run_demo(&[], &[("SAGA_CRASH", "shipping".to_owned())]);
    assert_crashed(&stdout, "shipping");
    assert!(
        stdout.contains("then it died before acknowledging payments.charged"),
        "{stdout}"
    );
    assert_redelivery_skipped(&stdout, "shipping");
    assert_consistent(&stdout);
}

// ---- PostgreSQL and RabbitMQ ----

#[test]
fn saga_on_postgres_schemas_and_rabbitmq() {
    let stdout = run_demo(
        &[],
        &[("DATABASE_URL", postgres_url()), ("AMQP_URL", amqp_url())],
    );
    assert_backends(
        &stdout,
        "PostgreSQL (3 schemas",
        "RabbitMQ (exchange txmsg.saga.",
    );
    assert_consistent(&stdout);
    let run = run_id(&stdout);
    assert_eq!(schemas_left(&run), 0, "the run's schemas were not dropped");
    assert!(!exchange_left(&run), "the run's exchange was not deleted");
}

#[test]
fn saga_on_postgres_and_rabbitmq_heals_a_payment_crash() {
    let stdout = run_demo(
        &["--crash", "payment"],
        &[("DATABASE_URL", postgres_url()), ("AMQP_URL", amqp_url())],
    );
    assert_backends(
        &stdout,
        "PostgreSQL (3 schemas",
        "RabbitMQ (exchange txmsg.saga.",
    );
    assert_crashed(&stdout, "payment");
    // RabbitMQ gave the unacknowledged delivery back when the dead
    // service's connection went away.
    assert_redelivery_skipped(&stdout, "payment");
    assert_consistent(&stdout);
    let run = run_id(&stdout);
    assert_eq!(schemas_left(&run), 0, "the run's schemas were not dropped");
    assert!(!exchange_left(&run), "the run's exchange was not deleted");
}

// ---- PostgreSQL and RocketMQ ----

fn rocketmq_url() -> String {
    env_or("ROCKETMQ_URL", "rocketmq://127.0.0.1:9876")
}

#[test]
fn saga_on_postgres_schemas_and_rocketmq() {
    let stdout = run_demo(
        &[],
        &[
            ("DATABASE_URL", postgres_url()),
            ("BROKER_URL", rocketmq_url()),
        ],
    );
    assert_backends(
        &stdout,
        "PostgreSQL (3 schemas",
        "RocketMQ (topic prefix saga_",
    );
    assert_consistent(&stdout);
    let run = run_id(&stdout);
    assert_eq!(schemas_left(&run), 0, "the run's schemas were not dropped");
}

#[test]
fn saga_on_postgres_and_rocketmq_heals_a_payment_crash() {
    let stdout = run_demo(
        &["--crash", "payment"],
        &[
            ("DATABASE_URL", postgres_url()),
            ("BROKER_URL", rocketmq_url()),
        ],
    );
    assert_backends(
        &stdout,
        "PostgreSQL (3 schemas",
        "RocketMQ (topic prefix saga_",
    );
    assert_crashed(&stdout, "payment");
    // The dead service's consumer never stored the offset of the message
    // it had applied: the group's next consumer got it again, once its
    // queue lock expired, and the inbox skipped it.
    assert_redelivery_skipped(&stdout, "payment");
    assert_consistent(&stdout);
    let run = run_id(&stdout);
    assert_eq!(schemas_left(&run), 0, "the run's schemas were not dropped");
}

// ---- bad input ----

#[test]
fn unknown_crash_target_is_an_error_naming_the_option() {
    let stderr = failing_demo(&["--crash", "billing"], &[]);
    assert!(stderr.contains("--crash"), "{stderr}");
    assert!(stderr.contains("`billing`"), "{stderr}");
    assert!(stderr.contains("order, payment, shipping"), "{stderr}");

    let stderr = failing_demo(&[], &[("SAGA_CRASH", "ledger".to_owned())]);
    assert!(stderr.contains("SAGA_CRASH"), "{stderr}");
    assert!(stderr.contains("`ledger`"), "{stderr}");
}

#[test]
fn unknown_database_scheme_is_an_error_naming_the_variable() {
    let stderr = failing_demo(
        &[],
        &[("DATABASE_URL", "mysql://root:hunter2@db/test".into())],
    );
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(stderr.contains("`mysql`"), "{stderr}");
    assert!(stderr.contains("postgres://"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}
