//! `RabbitBroker` against a real RabbitMQ, found through `AMQP_URL`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`). The reconnect test also
//! runs `rabbitmqctl` on this machine to close the broker's connection.
//!
//! Every test uses its own exchange and queues (uuid suffix) and deletes them
//! at the end, so tests run in parallel and leave nothing behind.

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use futures_util::FutureExt;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use txmsg_core::consumer::{Delivery, SubscribeSpec, Subscription};
use txmsg_core::{Broker, Envelope, Error, TRACEPARENT};
use txmsg_rabbitmq::{QueueType, RabbitBroker, RabbitConfig};
use txmsg_testkit::proxy::TcpProxy;
use uuid::Uuid;

const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

/// A unique name for this test run.
fn unique(prefix: &str) -> String {
    format!("txmsg-test-{prefix}-{}", Uuid::now_v7().simple())
}

/// Connects the broker under test, failing with a message naming `AMQP_URL`.
async fn connect(config: RabbitConfig) -> RabbitBroker {
    let url = amqp_url();
    match RabbitBroker::connect(&url, config).await {
        Ok(broker) => broker,
        Err(e) => panic!(
            "cannot reach RabbitMQ through AMQP_URL (set AMQP_URL, default {DEFAULT_AMQP_URL}): {e:?}"
        ),
    }
}

/// A plain lapin channel, to inspect and clean up what the broker did.
async fn raw_channel() -> (Connection, Channel) {
    let url = amqp_url();
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot reach RabbitMQ through AMQP_URL: {e}"));
    let channel = conn.create_channel().await.expect("create channel");
    (conn, channel)
}

/// The exchange and queues of one test, deleted when it ends.
#[derive(Clone)]
struct Names {
    exchange: String,
    queues: Vec<String>,
    /// Group queues declared by subscriptions during the test.
    group_queues: Arc<Mutex<Vec<String>>>,
}

impl Names {
    fn new(queues: usize) -> Self {
        Names {
            exchange: unique("ex"),
            queues: (0..queues).map(|i| unique(&format!("q{i}"))).collect(),
            group_queues: Arc::default(),
        }
    }

    /// Records the queue of `group` for `topic`, to delete it at the end.
    fn group_queue(&self, group: &str, topic: &str) {
        self.group_queues
            .lock()
            .expect("lock")
            .push(format!("{}.{group}.{topic}", self.exchange));
    }

    fn config(&self) -> RabbitConfig {
        RabbitConfig::default()
            .with_exchange(&self.exchange)
            .expect("valid exchange name")
            .with_source("/txmsg-tests")
            .expect("valid source")
    }

    async fn cleanup(&self) {
        let (conn, ch) = raw_channel().await;
        let group_queues = self.group_queues.lock().expect("lock").clone();
        for q in self.queues.iter().chain(&group_queues) {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = ch
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = conn.close(200, "OK".into()).await;
    }
}

/// Runs `test` with fresh names, then deletes them whether it passed or not.
async fn with_names<F, Fut>(queues: usize, test: F)
where
    F: FnOnce(Names) -> Fut,
    Fut: Future<Output = ()>,
{
    let names = Names::new(queues);
    let outcome = AssertUnwindSafe(test(names.clone())).catch_unwind().await;
    names.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn envelope(topic: &str, n: usize) -> Envelope {
    let payload = format!(r#"{{"n":{n},"note":"caf\u00e9 ✓"}}"#).into_bytes();
    Envelope::new(
        Uuid::now_v7(),
        topic,
        format!("idem-{n}-{}", Uuid::now_v7()),
        payload,
        Utc::now(),
    )
}

fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).expect("utf-8"),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        other => panic!("expected a string header, got {other:?}"),
    }
}

fn header(props: &BasicProperties, name: &str) -> Option<String> {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
        .map(text)
}

/// Takes every message waiting in `queue`.
async fn drain(ch: &Channel, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(msg);
    }
    out
}

async fn queue_len(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive queue.declare")
    .message_count()
}

#[tokio::test]
async fn publish_is_confirmed_and_delivered_once_with_cloudevents_headers() {
    with_names(1, |names| async move {
        let broker = connect(names.config()).await;
        assert_eq!(broker.exchange(), names.exchange);
        let queue = &names.queues[0];
        broker
            .bind_queue(queue, "orders.*")
            .await
            .expect("bind queue");

        let mut env = envelope("orders.placed", 42);
        env.key = Some("order-42".into());
        env.headers.insert(
            TRACEPARENT.into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        env.headers.insert("tenant".into(), "acme".into());
        broker.publish(&env).await.expect("publish confirmed");

        let (conn, ch) = raw_channel().await;
        let mut got = drain(&ch, queue).await;
        assert_eq!(got.len(), 1, "the message arrives exactly once");
        let msg = got.remove(0);
        let d = &msg.delivery;
        assert_eq!(d.data, env.payload, "payload bytes are unchanged");
        assert_eq!(d.exchange.as_str(), names.exchange);
        assert_eq!(d.routing_key.as_str(), "orders.placed");
        assert!(!d.redelivered);

        let p = &d.properties;
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(p.delivery_mode(), &Some(2), "persistent");
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some(env.idempotency_key.as_str())
        );
        assert_eq!(p.timestamp(), &Some(env.created_at.timestamp() as u64));

        let time = env.created_at.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let expected = [
            ("cloudEvents_id", env.idempotency_key.as_str()),
            ("cloudEvents_type", "orders.placed"),
            ("cloudEvents_source", "/txmsg-tests"),
            ("cloudEvents_specversion", "1.0"),
            ("cloudEvents_time", time.as_str()),
            ("cloudEvents_partitionkey", "order-42"),
            (
                "cloudEvents_traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tenant", "acme"),
        ];
        for (name, value) in expected {
            assert_eq!(header(p, name).as_deref(), Some(value), "header {name}");
        }
        assert_eq!(header(p, "txmsg-id"), Some(env.id.to_string()));
        assert_eq!(
            header(p, TRACEPARENT),
            None,
            "traceparent travels as the CloudEvents attribute"
        );
        let time_back = chrono::DateTime::parse_from_rfc3339(&time).expect("RFC 3339 time");
        assert_eq!(time_back, env.created_at);

        assert_eq!(queue_len(&ch, queue).await, 0, "nothing else arrived");
        let _ = conn.close(200, "OK".into()).await;
        broker.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_are_all_confirmed_and_delivered() {
    const N: usize = 500;
    with_names(1, |names| async move {
        let broker = connect(names.config()).await;
        let queue = &names.queues[0];
        broker
            .bind_queue(queue, "bulk.#")
            .await
            .expect("bind queue");

        let envelopes: Vec<Envelope> = (0..N).map(|n| envelope("bulk.item", n)).collect();
        let expected: BTreeSet<String> = envelopes.iter().map(|e| e.id.to_string()).collect();
        let tasks: Vec<_> = envelopes
            .into_iter()
            .map(|env| {
                let broker = broker.clone();
                tokio::spawn(async move { broker.publish(&env).await })
            })
            .collect();
        let started = Instant::now();
        for task in tasks {
            task.await.expect("task").expect("publish confirmed");
        }
        eprintln!(
            "{N} concurrent publishes confirmed in {:?}",
            started.elapsed()
        );

        let (conn, ch) = raw_channel().await;
        let got = drain(&ch, queue).await;
        assert_eq!(got.len(), N, "every confirmed message was delivered, once");
        let ids: BTreeSet<String> = got
            .iter()
            .map(|m| header(&m.delivery.properties, "txmsg-id").expect("txmsg-id header"))
            .collect();
        assert_eq!(ids, expected);
        let _ = conn.close(200, "OK".into()).await;
    })
    .await;
}

/// Routed and unroutable messages published at once on one channel: RabbitMQ
/// returns each unroutable one before it confirms it, often in one ack that
/// covers many messages. Each publish must be told its own outcome: a
/// returned message reported as confirmed would be lost, a routed one
/// reported as returned would be sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routed_and_unroutable_publishes_at_once_each_get_their_own_outcome() {
    const N: usize = 1_000;
    with_names(1, |names| async move {
        let broker = connect(names.config().with_mandatory(true)).await;
        let queue = &names.queues[0];
        broker
            .bind_queue(queue, "bound.#")
            .await
            .expect("bind queue");

        let envelopes: Vec<(bool, Envelope)> = (0..N)
            .map(|n| {
                let routed = n % 2 == 0;
                let topic = if routed { "bound.item" } else { "nowhere.item" };
                (routed, envelope(topic, n))
            })
            .collect();
        let expected: BTreeSet<String> = envelopes
            .iter()
            .filter(|(routed, _)| *routed)
            .map(|(_, e)| e.id.to_string())
            .collect();
        let tasks: Vec<_> = envelopes
            .into_iter()
            .map(|(routed, env)| {
                let broker = broker.clone();
                tokio::spawn(async move { (routed, broker.publish(&env).await) })
            })
            .collect();
        let (mut routed_ok, mut routed_err, mut unroutable_ok, mut unroutable_err) = (0, 0, 0, 0);
        for task in tasks {
            match task.await.expect("task") {
                (true, Ok(())) => routed_ok += 1,
                (true, Err(_)) => routed_err += 1,
                (false, Ok(())) => unroutable_ok += 1,
                (false, Err(e)) => {
                    assert!(e.to_string().contains("unroutable"), "{e}");
                    unroutable_err += 1;
                }
            }
        }
        assert_eq!(
            (routed_ok, routed_err, unroutable_ok, unroutable_err),
            (N / 2, 0, 0, N / 2),
            "(routed confirmed, routed reported returned, returned reported confirmed, \
             returned reported returned)"
        );

        let (conn, ch) = raw_channel().await;
        let got = drain(&ch, queue).await;
        let ids: BTreeSet<String> = got
            .iter()
            .map(|m| header(&m.delivery.properties, "txmsg-id").expect("txmsg-id header"))
            .collect();
        assert_eq!(got.len(), N / 2, "every routed message was delivered, once");
        assert_eq!(ids, expected);
        let _ = conn.close(200, "OK".into()).await;
    })
    .await;
}

#[tokio::test]
async fn mandatory_publish_without_a_bound_queue_is_a_retryable_error() {
    with_names(1, |names| async move {
        let broker = connect(names.config().with_mandatory(true)).await;
        let env = envelope("nobody.listens", 1);
        let err = broker
            .publish(&env)
            .await
            .expect_err("unroutable with mandatory");
        assert!(
            matches!(
                err,
                Error::Broker {
                    retryable: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_retryable());

        // Once a queue is bound, the same message goes through.
        broker
            .bind_queue(&names.queues[0], "nobody.#")
            .await
            .expect("bind queue");
        broker.publish(&env).await.expect("routable now");
        let (conn, ch) = raw_channel().await;
        assert_eq!(queue_len(&ch, &names.queues[0]).await, 1);
        let _ = conn.close(200, "OK".into()).await;
    })
    .await;
}

/// A message published before any queue is bound for its topic is not
/// confirmed by default: RabbitMQ would drop it, so the relay keeps it and
/// retries (nothing is lost silently).
#[tokio::test]
async fn by_default_a_message_no_queue_is_bound_for_is_not_confirmed() {
    with_names(0, |names| async move {
        let broker = connect(names.config()).await;
        let err = broker
            .publish(&envelope("nobody.listens", 1))
            .await
            .expect_err("RabbitMQ would drop it: it must not be confirmed");
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            err.to_string().contains("no queue bound"),
            "the reason says why: {err}"
        );
    })
    .await;
}

#[tokio::test]
async fn unroutable_publish_without_mandatory_is_confirmed() {
    with_names(0, |names| async move {
        let broker = connect(names.config().with_mandatory(false)).await;
        broker
            .publish(&envelope("nobody.listens", 1))
            .await
            .expect("dropped by RabbitMQ, confirmed");
    })
    .await;
}

#[tokio::test]
async fn connect_to_a_closed_port_is_a_retryable_broker_error() {
    let url = "amqp://guest:hunter2-secret@127.0.0.1:1/%2f";
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        RabbitBroker::connect(url, RabbitConfig::default()),
    )
    .await
    .expect("connect gives up instead of hanging");
    let err = result.expect_err("nothing listens on port 1");
    match &err {
        Error::Broker {
            retryable: true,
            source: Some(_),
            ..
        } => {}
        other => panic!("expected a retryable broker error with a source, got {other:?}"),
    }
    let mut shown = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        shown.push_str(&s.to_string());
        source = s.source();
    }
    assert!(!shown.contains("hunter2"), "the password leaked: {shown}");
}

#[tokio::test]
async fn bad_url_is_a_config_error() {
    let err = RabbitBroker::connect("http://guest:guest@127.0.0.1/", RabbitConfig::default())
        .await
        .expect_err("not an amqp URL");
    assert!(matches!(err, Error::Config { field: "url", .. }), "{err:?}");
}

/// Closes, from the server side, the connection whose client-provided name is
/// `name`: the same as an operator's `rabbitmqctl close_connection`.
fn close_connection_named(name: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("run rabbitmqctl (installed with rabbitmq-server)");
    assert!(
        out.status.success(),
        "rabbitmqctl list_connections: {out:?}"
    );
    let list = String::from_utf8_lossy(&out.stdout);
    let pid = list
        .lines()
        .find(|line| line.contains(name))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("no connection named {name} in:\n{list}"))
        .to_owned();
    let out = std::process::Command::new("rabbitmqctl")
        .args(["close_connection", &pid, "test"])
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl close_connection {pid}: {out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_closes_the_connection() {
    with_names(1, |names| async move {
        let conn_name = unique("conn");
        let config = names
            .config()
            .with_connection_name(&conn_name)
            .expect("valid name")
            // A visible outage: the first reconnect attempt waits one second.
            .with_reconnect_backoff(Duration::from_secs(1), Duration::from_secs(2))
            .expect("valid backoff");
        let broker = connect(config).await;
        let queue = &names.queues[0];
        broker
            .bind_queue(queue, "reconnect.#")
            .await
            .expect("bind queue");
        broker
            .publish(&envelope("reconnect.before", 0))
            .await
            .expect("publish before");

        let name = conn_name.clone();
        tokio::task::spawn_blocking(move || close_connection_named(&name))
            .await
            .expect("rabbitmqctl");

        // The broker notices the close.
        let deadline = Instant::now() + Duration::from_secs(10);
        while broker.is_connected() {
            assert!(
                Instant::now() < deadline,
                "the broker did not notice the closed connection"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // During the outage publishes fail fast and retryable; then they succeed
        // again, with the same broker object.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut failures = 0;
        let mut delivered = 1;
        loop {
            let started = Instant::now();
            let outcome = tokio::time::timeout(
                Duration::from_secs(5),
                broker.publish(&envelope("reconnect.after", failures)),
            )
            .await
            .expect("a publish during the outage must not hang");
            match outcome {
                Ok(()) => {
                    delivered += 1;
                    break;
                }
                Err(err) => {
                    // An outage is not the message's fault: the relay must
                    // not count it as a failed attempt.
                    assert!(err.is_broker_unavailable(), "{err:?}");
                    assert!(
                        started.elapsed() < Duration::from_secs(2),
                        "a publish during the outage took {:?}",
                        started.elapsed()
                    );
                    failures += 1;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no successful publish within 20 s of the close"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(failures > 0, "the outage was not visible to publishes");
        assert!(broker.is_connected());

        // The new connection works like the first one.
        for n in 0..10 {
            broker
                .publish(&envelope("reconnect.later", n))
                .await
                .expect("publish after reconnect");
            delivered += 1;
        }
        let (conn, ch) = raw_channel().await;
        assert_eq!(queue_len(&ch, queue).await, delivered);
        let _ = conn.close(200, "OK".into()).await;
        broker.close().await.expect("close");
    })
    .await;
}

#[tokio::test]
async fn debug_never_shows_the_password() {
    with_names(0, |names| async move {
        let broker = connect(names.config()).await;
        let uri: lapin::uri::AMQPUri = amqp_url().parse().expect("AMQP_URL parses");
        let password = uri.authority.userinfo.password;
        let shown = format!("{broker:?}");
        assert!(shown.contains(":***@"), "{shown}");
        assert!(!shown.contains(&format!(":{password}@")), "{shown}");
        assert!(shown.contains(&names.exchange), "{shown}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_in_the_background_without_publishes() {
    with_names(0, |names| async move {
        let conn_name = unique("conn");
        let broker = connect(
            names
                .config()
                // Publishes here go to topics nobody listens to, on purpose.
                .with_mandatory(false)
                .with_connection_name(&conn_name)
                .expect("valid name"),
        )
        .await;
        let name = conn_name.clone();
        tokio::task::spawn_blocking(move || close_connection_named(&name))
            .await
            .expect("rabbitmqctl");

        let deadline = Instant::now() + Duration::from_secs(10);
        while broker.is_connected() {
            assert!(
                Instant::now() < deadline,
                "the broker did not notice the closed connection"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !broker.is_connected() {
            assert!(Instant::now() < deadline, "no reconnect within 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        broker
            .publish(&envelope("background.after", 1))
            .await
            .expect("publish after reconnect");
    })
    .await;
}

#[tokio::test]
async fn recovers_when_the_exchange_is_deleted_under_it() {
    with_names(1, |names| async move {
        let broker = connect(
            names
                .config()
                // Publishes here go to topics nobody listens to, on purpose.
                .with_mandatory(false),
        )
        .await;
        let queue = &names.queues[0];
        broker
            .publish(&envelope("gone.before", 0))
            .await
            .expect("publish before");

        let (conn, ch) = raw_channel().await;
        ch.exchange_delete(
            names.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .expect("delete exchange");

        // RabbitMQ closes the publishing channel (404); the broker opens a new
        // one and declares the exchange again.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut failures = 0;
        loop {
            let outcome = tokio::time::timeout(
                Duration::from_secs(5),
                broker.publish(&envelope("gone.after", failures)),
            )
            .await
            .expect("a publish must not hang");
            match outcome {
                Ok(()) => break,
                Err(err) => {
                    assert!(err.is_retryable(), "{err:?}");
                    failures += 1;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no successful publish within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            failures > 0,
            "publishing to the deleted exchange did not fail"
        );

        broker
            .bind_queue(queue, "gone.#")
            .await
            .expect("bind queue");
        broker
            .publish(&envelope("gone.later", 1))
            .await
            .expect("publish");
        assert_eq!(queue_len(&ch, queue).await, 1);
        let _ = conn.close(200, "OK".into()).await;
    })
    .await;
}

#[tokio::test]
async fn refused_credentials_are_a_permanent_broker_error() {
    let mut uri: lapin::uri::AMQPUri = amqp_url().parse().expect("AMQP_URL parses");
    uri.authority.userinfo.password = format!("wrong-{}", Uuid::now_v7().simple());
    let err = RabbitBroker::connect(&uri.to_string(), RabbitConfig::default())
        .await
        .expect_err("RabbitMQ refuses a wrong password");
    assert!(
        matches!(
            err,
            Error::Broker {
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains(&uri.authority.userinfo.password));
}

#[tokio::test]
async fn refused_bind_queue_does_not_disturb_publishing() {
    with_names(1, |names| async move {
        let broker = connect(
            names
                .config()
                // Publishes here go to topics nobody listens to, on purpose.
                .with_mandatory(false),
        )
        .await;
        let queue = &names.queues[0];
        // The queue exists already, but not durable: RabbitMQ refuses the
        // durable declaration.
        let (conn, ch) = raw_channel().await;
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare transient queue");
        let err = broker
            .bind_queue(queue, "t.#")
            .await
            .expect_err("precondition failed");
        assert!(
            matches!(
                err,
                Error::Broker {
                    retryable: false,
                    ..
                }
            ),
            "{err:?}"
        );

        assert!(broker.is_connected());
        broker
            .publish(&envelope("t.after", 1))
            .await
            .expect("publishing is unaffected");
        assert!(matches!(
            broker.bind_queue("", "t.#").await,
            Err(Error::Config { field: "queue", .. })
        ));
        let _ = conn.close(200, "OK".into()).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// subscriptions

/// A `RabbitBroker` that records the group queues its subscriptions declare,
/// so the test can delete them.
#[derive(Debug, Clone)]
struct Recording {
    broker: RabbitBroker,
    names: Arc<Mutex<Vec<String>>>,
}

impl Broker for Recording {
    async fn publish(&self, envelope: &Envelope) -> txmsg_core::Result<()> {
        self.broker.publish(envelope).await
    }

    async fn subscribe(&self, spec: &SubscribeSpec) -> txmsg_core::Result<Subscription> {
        if let Ok(queue) = self.broker.queue_name(&spec.group, &spec.topic) {
            self.names.lock().expect("lock").push(queue);
        }
        self.broker.subscribe(spec).await
    }
}

/// An exchange of its own per conformance case; its group queues are
/// recorded and deleted with it.
struct Rabbit {
    names: Names,
    broker: RabbitBroker,
}

impl txmsg_testkit::broker::BrokerFixture for Rabbit {
    type Broker = Recording;

    async fn start() -> Self {
        let names = Names::new(0);
        let broker = connect(names.config()).await;
        Rabbit { names, broker }
    }

    async fn broker(&self) -> Recording {
        Recording {
            broker: self.broker.clone(),
            names: Arc::clone(&self.names.group_queues),
        }
    }

    async fn finish(self) {
        self.broker.close().await.expect("close");
        self.names.cleanup().await;
    }
}

txmsg_testkit::broker_conformance!(Rabbit);

/// As [`Rabbit`], with quorum queues.
struct RabbitQuorum(Rabbit);

impl txmsg_testkit::broker::BrokerFixture for RabbitQuorum {
    type Broker = Recording;

    async fn start() -> Self {
        let names = Names::new(0);
        let broker = connect(names.config().with_queue_type(QueueType::Quorum)).await;
        RabbitQuorum(Rabbit { names, broker })
    }

    async fn broker(&self) -> Recording {
        self.0.broker().await
    }

    async fn finish(self) {
        self.0.finish().await;
    }
}

// Quorum queues keep every rule but the two on a handed-back delivery
// (`handed_back_message_holds_its_key`,
// `order_across_a_restart_of_the_only_consumer`): RabbitMQ puts a message
// returned to a quorum queue behind the queue's other messages (seen on
// 3.10: after a restart holding 6 of 12, the second consumer got 6..11,
// then 0..5). `QueueType::Quorum`'s docs say so.
txmsg_testkit::broker_conformance!(mod quorum_conformance, RabbitQuorum:
    delivers_every_field,
    one_idempotency_key_on_two_topics_is_two_messages,
    every_group_gets_every_message,
    group_members_share_messages,
    nack_redelivers,
    dropped_delivery_is_redelivered,
    dropped_subscription_redelivers,
    per_key_order_is_kept,
    large_and_empty_payloads,
    queue_outlives_its_subscribers,
    subscribe_refuses_bad_specs,
    slow_consumer_loses_nothing,
);

/// With quorum queues, the queues the broker declares are quorum queues:
/// RabbitMQ refuses to declare one again as a classic queue.
#[tokio::test]
async fn quorum_mode_declares_quorum_queues() {
    with_names(1, |names| async move {
        let broker = connect(names.config().with_queue_type(QueueType::Quorum)).await;
        let queue = &names.queues[0];
        broker
            .bind_queue(queue, "quorum.#")
            .await
            .expect("bind queue");
        let (conn, ch) = raw_channel().await;
        let err = ch
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect_err("a quorum queue is not a classic one");
        assert!(err.to_string().contains("x-queue-type"), "{err}");
        let _ = conn.close(200, "OK".into()).await;

        broker
            .publish(&envelope("quorum.item", 1))
            .await
            .expect("published to the quorum queue");
        let (conn, ch) = raw_channel().await;
        assert_eq!(queue_len(&ch, queue).await, 1);
        let _ = conn.close(200, "OK".into()).await;
        broker.close().await.expect("close");
    })
    .await;
}

/// A queue that exists with the other type is a permanent error that names
/// the queue, not a retry forever.
#[tokio::test]
async fn a_queue_of_the_other_type_is_a_permanent_error() {
    with_names(1, |names| async move {
        let queue = &names.queues[0];
        let classic = connect(names.config()).await;
        classic
            .bind_queue(queue, "kind.#")
            .await
            .expect("classic queue");
        classic.close().await.expect("close");

        let quorum = connect(names.config().with_queue_type(QueueType::Quorum)).await;
        let err = quorum
            .bind_queue(queue, "kind.#")
            .await
            .expect_err("the queue is classic");
        assert!(!err.is_retryable(), "{err:?}");
        assert!(err.to_string().contains(queue.as_str()), "{err}");
        quorum.close().await.expect("close");
    })
    .await;
}

/// A delivery held for 3 s is not delivered again while its channel lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_held_delivery_is_not_redelivered() {
    with_names(0, |names| async move {
        let broker = connect(names.config()).await;
        let recording = Recording {
            broker: broker.clone(),
            names: Arc::clone(&names.group_queues),
        };
        txmsg_testkit::broker::held_delivery_is_not_redelivered(
            &recording,
            "held",
            Duration::from_secs(3),
        )
        .await;
        broker.close().await.expect("close");
    })
    .await;
}

/// Connecting with a password RabbitMQ refuses, and to a closed port, logs
/// nothing that shows the password, at any level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_in_logs() {
    const PASSWORD: &str = "s3cr3t-pw";
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let uri: lapin::uri::AMQPUri = amqp_url().parse().expect("AMQP_URL parses");
    let url = format!(
        "amqp://{}:{PASSWORD}@{}:{}/%2f",
        uri.authority.userinfo.username, uri.authority.host, uri.authority.port
    );
    with_names(0, |names| async move {
        let config = names.config();
        txmsg_testkit::broker::no_password_in_logs(
            move |url: String| {
                let config = config.clone();
                async move { RabbitBroker::connect(&url, config).await }
            },
            &url,
            &format!("amqp://app:{PASSWORD}@127.0.0.1:{closed_port}/%2f"),
            PASSWORD,
            "redact",
        )
        .await;
    })
    .await;
}

/// The broker, connected through a proxy that cuts its connection, comes
/// back by itself: publishes are confirmed again, the group gets what was
/// published after the outage, and nothing confirmed before is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_reconnects_after_connection_drop() {
    with_names(0, |names| async move {
        let (proxy, via_proxy) = TcpProxy::for_url(&amqp_url(), 5672).await;
        let config = names.config();
        let group_queues = Arc::clone(&names.group_queues);
        txmsg_testkit::broker::reconnects_after_connection_drop(
            || async move {
                let broker = match RabbitBroker::connect(&via_proxy, config).await {
                    Ok(broker) => broker,
                    Err(e) => panic!(
                        "cannot reach RabbitMQ through AMQP_URL (set AMQP_URL, default {DEFAULT_AMQP_URL}): {e:?}"
                    ),
                };
                Recording {
                    broker,
                    names: group_queues,
                }
            },
            &proxy,
            "reconn",
        )
        .await;
    })
    .await;
}

fn spec(group: &str, topic: &str, prefetch: u16) -> SubscribeSpec {
    SubscribeSpec {
        group: group.to_owned(),
        topic: topic.to_owned(),
        prefetch,
    }
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the subscription is open")
}

/// Publishes `body` to the exchange the way another CloudEvents producer
/// would, with a plain lapin channel.
async fn publish_raw(exchange: &str, routing_key: &str, properties: BasicProperties, body: &[u8]) {
    let (conn, ch) = raw_channel().await;
    ch.confirm_select(Default::default())
        .await
        .expect("confirm mode");
    ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        body,
        properties,
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let _ = conn.close(200, "OK".into()).await;
}

fn ce_headers(entries: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        table.insert(
            ShortString::try_new(*name).expect("short name"),
            AMQPValue::LongString((*value).into()),
        );
    }
    table
}

#[tokio::test]
async fn reads_cloudevents_from_other_producers() {
    with_names(0, |names| async move {
        let broker = connect(names.config()).await;
        let topic = "foreign.placed";
        names.group_queue("g", topic);
        let mut sub = broker
            .subscribe(&spec("g", topic, 8))
            .await
            .expect("subscribe");

        let headers = ce_headers(&[
            ("cloudEvents_id", "evt-77"),
            ("cloudEvents_type", topic),
            ("cloudEvents_source", "https://example.com/shop"),
            ("cloudEvents_specversion", "1.0"),
            ("cloudEvents_time", "2024-05-06T07:08:09.5Z"),
            ("cloudEvents_partitionkey", "order-77"),
            (
                "cloudEvents_traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-tenant", "acme"),
        ]);
        let body = br#"{"order":77}"#;
        publish_raw(
            &names.exchange,
            topic,
            BasicProperties::default()
                .with_content_type("application/json; charset=utf-8".into())
                .with_headers(headers),
            body,
        )
        .await;

        let d = next(&mut sub).await;
        assert!(!d.redelivered);
        let env = d.message.as_ref().expect("decoded").clone();
        assert_eq!(env.idempotency_key, "evt-77");
        assert_eq!(env.topic, topic);
        assert_eq!(env.key.as_deref(), Some("order-77"));
        assert_eq!(env.payload, body);
        assert_eq!(
            env.created_at,
            chrono::DateTime::parse_from_rfc3339("2024-05-06T07:08:09.5Z").expect("time")
        );
        assert_eq!(
            env.headers.get(TRACEPARENT).map(String::as_str),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(
            env.headers.get("x-tenant").map(String::as_str),
            Some("acme")
        );
        assert_eq!(
            env.headers.get("cloudEvents_source").map(String::as_str),
            Some("https://example.com/shop")
        );
        assert!(!env.headers.contains_key("cloudEvents_id"));
        d.ack().await.expect("ack");

        // No id anywhere: undecodable, with the reason, the topic and the body.
        publish_raw(
            &names.exchange,
            topic,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(ce_headers(&[
                    ("cloudEvents_type", topic),
                    ("x-tenant", "acme"),
                ])),
            b"{}",
        )
        .await;
        let d = next(&mut sub).await;
        let bad = d.message.as_ref().expect_err("no id");
        assert!(
            bad.reason.contains("missing CloudEvents id"),
            "{}",
            bad.reason
        );
        assert_eq!(bad.topic, topic);
        assert_eq!(bad.body, b"{}");
        assert_eq!(
            bad.headers.get("x-tenant").map(String::as_str),
            Some("acme")
        );
        d.ack().await.expect("ack");

        // Not JSON: undecodable, naming the content type.
        publish_raw(
            &names.exchange,
            topic,
            BasicProperties::default()
                .with_content_type("text/plain".into())
                .with_headers(ce_headers(&[("cloudEvents_id", "evt-78")])),
            b"hello",
        )
        .await;
        let d = next(&mut sub).await;
        let bad = d.message.as_ref().expect_err("text/plain");
        assert!(bad.reason.contains("text/plain"), "{}", bad.reason);
        assert_eq!(bad.body, b"hello");
        d.ack().await.expect("ack");

        // Structured content mode (the Dapr default): the event is the body.
        let event = format!(
            r#"{{"specversion":"1.0","id":"evt-79","source":"/dapr","type":"{topic}",
                "partitionkey":"order-79","tracestate":"dapr=1","data":{{"order":79}}}}"#
        );
        publish_raw(
            &names.exchange,
            topic,
            BasicProperties::default().with_content_type("application/cloudevents+json".into()),
            event.as_bytes(),
        )
        .await;
        let d = next(&mut sub).await;
        let env = d
            .message
            .as_ref()
            .expect("a structured event is read")
            .clone();
        assert_eq!(env.idempotency_key, "evt-79");
        assert_eq!(
            (env.topic.as_str(), env.key.as_deref()),
            (topic, Some("order-79"))
        );
        assert_eq!(env.payload, br#"{"order":79}"#);
        assert_eq!(
            env.headers.get("tracestate").map(String::as_str),
            Some("dapr=1")
        );
        assert_eq!(
            env.headers.get("cloudEvents_source").map(String::as_str),
            Some("/dapr")
        );
        d.ack().await.expect("ack");

        broker.close().await.expect("close");
    })
    .await;
}

#[tokio::test]
async fn queue_names_are_checked() {
    with_names(0, |names| async move {
        let broker = connect(names.config()).await;
        assert_eq!(
            broker
                .queue_name("billing", "orders.placed")
                .expect("short"),
            format!("{}.billing.orders.placed", names.exchange)
        );
        let long = "t".repeat(200);
        assert!(matches!(
            broker.queue_name(&long, &long),
            Err(Error::Config { field: "group", .. })
        ));
        let err = broker
            .subscribe(&spec(&long, &long, 4))
            .await
            .expect_err("queue name too long");
        assert!(
            matches!(err, Error::Config { field: "group", .. }),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_ends_with_the_connection_and_unacked_messages_come_back() {
    with_names(0, |names| async move {
        let conn_name = unique("conn");
        let config = names
            .config()
            .with_connection_name(&conn_name)
            .expect("valid name")
            .with_reconnect_backoff(Duration::from_millis(200), Duration::from_secs(1))
            .expect("valid backoff");
        let broker = connect(config).await;
        let topic = "lost.conn";
        names.group_queue("g", topic);
        let group_spec = spec("g", topic, 8);
        let mut sub = broker.subscribe(&group_spec).await.expect("subscribe");
        let sent = envelope(topic, 1);
        broker.publish(&sent).await.expect("publish");
        let held = next(&mut sub).await;
        assert_eq!(held.message.as_ref().expect("decoded").id, sent.id);

        let name = conn_name.clone();
        tokio::task::spawn_blocking(move || close_connection_named(&name))
            .await
            .expect("rabbitmqctl");

        // The subscription ends; settling what it handed out fails as
        // unavailable, since RabbitMQ delivers it again anyway.
        let end = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("the subscription ends within 10 s");
        assert!(end.is_none(), "no delivery after the connection is lost");
        let err = held.ack().await.expect_err("the channel is gone");
        assert!(err.is_broker_unavailable(), "{err:?}");

        // Subscribing again works once the broker has reconnected, and the
        // unacknowledged message is delivered again.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sub = loop {
            match broker.subscribe(&group_spec).await {
                Ok(sub) => break sub,
                Err(err) => {
                    assert!(err.is_broker_unavailable(), "{err:?}");
                    assert!(Instant::now() < deadline, "no resubscribe within 20 s");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let again = next(&mut sub).await;
        assert_eq!(again.message.as_ref().expect("decoded").id, sent.id);
        assert!(again.redelivered);
        again.ack().await.expect("ack");
        broker.close().await.expect("close");
    })
    .await;
}

#[tokio::test]
async fn subscribe_while_closed_is_unavailable() {
    with_names(0, |names| async move {
        let broker = connect(names.config()).await;
        broker.close().await.expect("close");
        let err = broker
            .subscribe(&spec("g", "closed.topic", 4))
            .await
            .expect_err("closed");
        assert!(err.is_broker_unavailable(), "{err:?}");
    })
    .await;
}
