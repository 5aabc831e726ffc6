//! The axum service against the real PostgreSQL and RabbitMQ: HTTP
//! requests in, messages counted on a queue out, and SIGTERM leaves nothing
//! pending.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Sends one HTTP/1.1 request and returns the status code and body.
async fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_messages_out_and_sigterm_leaves_nothing_pending() {
    let database_url = env_or(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let amqp_url = env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let run = uuid::Uuid::now_v7().simple().to_string();
    let schema = format!("txmsg_axum_{}", &run[20..]);
    let exchange = format!("txmsg-axum-{run}");

    // A queue of the test's own, bound to the service's exchange, counts
    // what the service publishes.
    let amqp = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot reach RabbitMQ at AMQP_URL={amqp_url}: {e}"));
    let channel = amqp.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let counted = format!("{exchange}.counted");
    channel
        .queue_declare(
            counted.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            counted.as_str().into(),
            exchange.as_str().into(),
            "shop.orders.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let mut service = tokio::process::Command::new(env!("CARGO_BIN_EXE_txmsg-example-axum"))
        .env("DATABASE_URL", &database_url)
        .env("AMQP_URL", &amqp_url)
        .env("LISTEN", "127.0.0.1:0")
        .env("APP_SCHEMA", &schema)
        .env("TXMSG_EXCHANGE", &exchange)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(service.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the service starts within 30 s")
        .unwrap()
        .expect("the service prints its address");
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_owned();

    assert_eq!(
        http(&addr, "GET", "/ready", "").await,
        (200, "ready".to_owned())
    );

    // 40 orders placed, 10 of them cancelled, then two refused.
    for id in 0..40 {
        let body = format!(r#"{{"id":{id},"total_cents":{}}}"#, 100 + id);
        assert_eq!(
            http(&addr, "POST", "/orders", &body).await.0,
            201,
            "order {id}"
        );
    }
    for id in 0..10 {
        let path = format!("/orders/{id}/cancel");
        assert_eq!(http(&addr, "POST", &path, "").await.0, 204, "cancel {id}");
    }
    let (status, body) = http(&addr, "POST", "/orders", r#"{"id":20,"total_cents":5}"#).await;
    assert_eq!((status, body.as_str()), (409, "order 20 exists already"));
    // A cancelled order's id cannot be placed again: its message's
    // idempotency key was used.
    let (status, body) = http(&addr, "POST", "/orders", r#"{"id":1,"total_cents":5}"#).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("order-1"), "{body}");

    // SIGTERM right after the last request: the service stops gracefully.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(service.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), service.wait())
        .await
        .expect("the service stops within 60 s")
        .unwrap();
    assert!(status.success(), "{status}");
    let last = lines.next_line().await.unwrap().unwrap_or_default();
    assert_eq!(last, "stopped; 0 messages pending");

    // Nothing pending in the outbox, and every message on the queue once.
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let pending: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".txmsg_outbox WHERE state = 'pending'"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(pending, 0, "SIGTERM left messages pending");
    let mut keys = Vec::new();
    while let Some(message) = channel
        .basic_get(counted.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        // Each body is distinct: the order's id (and total, when placed).
        keys.push(String::from_utf8_lossy(&message.delivery.data).into_owned());
    }
    assert_eq!(
        keys.len(),
        50,
        "40 placed and 10 cancelled, each published once"
    );
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 50, "no message published twice");

    let group_queue = format!("{exchange}.billing.shop.orders.placed");
    for queue in [&counted, &group_queue] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .unwrap();
}
