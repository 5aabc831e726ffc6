//! The demo is a test too: it must pass its own consistency check on the
//! embedded default and on PostgreSQL + RabbitMQ.

use std::process::Command;

fn run_demo(envs: &[(&str, String)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_txmsg-example-orders"));
    cmd.env_remove("DATABASE_URL").env_remove("AMQP_URL");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
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

#[test]
fn demo_on_sqlite_and_in_process_broker() {
    let stdout = run_demo(&[]);
    assert!(stdout.contains("SQLite"), "{stdout}");
    assert_consistent(&stdout);
}

#[test]
fn demo_on_postgres_and_rabbitmq() {
    let db = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let amqp = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let stdout = run_demo(&[("DATABASE_URL", db), ("AMQP_URL", amqp)]);
    assert!(stdout.contains("PostgreSQL + RabbitMQ"), "{stdout}");
    assert_consistent(&stdout);
}
