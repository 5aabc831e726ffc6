//! CPU benchmarks of txmsg, each beside a hand-written baseline doing the
//! same work, with no service running: envelope encode and decode, the
//! RabbitMQ wire format, and the code `#[transactional_message]` and
//! `#[message_handler]` generate, on an in-memory SQLite store and the
//! in-process broker.
//!
//! ```sh
//! cargo bench -p txmsg-bench --bench cpu              # all of them
//! cargo bench -p txmsg-bench --bench cpu -- producer  # those whose path matches
//! ```
//!
//! Every pair is named `<group>::<what>::{txmsg, hand_written}`. Async
//! benchmarks run on a current-thread Tokio runtime built once per
//! benchmark, outside the timed part. The process pins itself to one CPU
//! (see `pin_to_one_cpu`); `TXMSG_BENCH_NO_PIN=1` leaves it unpinned.
//! `cargo test -p txmsg-bench --all-targets` runs each benchmark once, as a
//! test.

use std::cell::Cell;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use txmsg::prelude::*;
use txmsg::sqlite::SqliteStore;
use txmsg::{Envelope, Headers, Message, Outbox, Tx};
use uuid::Uuid;

/// Runs the benchmarks, pinned to one CPU. Each one samples for at least
/// `MIN_TIME` and at most `MAX_TIME`, so that the whole suite takes about
/// 15 s; the command-line options (`--min-time`, `--max-time`,
/// `--sample-count`, ...) override these.
fn main() {
    const MIN_TIME: Duration = Duration::from_secs(1);
    const MAX_TIME: Duration = Duration::from_secs(3);
    pin_to_one_cpu();
    divan::Divan::default()
        .min_time(MIN_TIME)
        .max_time(MAX_TIME)
        .config_with_args()
        .main();
}

/// Variable that, when set, leaves the benchmarks free to run on any CPU.
const NO_PIN_VAR: &str = "TXMSG_BENCH_NO_PIN";

/// Pins the process to the CPU it is running on, unless [`NO_PIN_VAR`] is
/// set. Threads started later inherit the pinning, SQLite's worker threads
/// among them.
///
/// sqlx runs each SQLite connection on a thread of its own, so every
/// statement is two hand-overs between that thread and the runtime's. On
/// one CPU a hand-over is a context switch; across two it is a wake-up of
/// the other CPU, which on a virtual machine takes from a few to hundreds of
/// microseconds depending on whether that CPU was idle, and which would be
/// most of what the database benchmarks measure.
#[cfg(target_os = "linux")]
fn pin_to_one_cpu() {
    use nix::sched::{CpuSet, sched_getcpu, sched_setaffinity};
    use nix::unistd::Pid;

    if std::env::var_os(NO_PIN_VAR).is_some() {
        return;
    }
    let pinned = sched_getcpu().and_then(|cpu| {
        let mut one = CpuSet::new();
        one.set(cpu)?;
        sched_setaffinity(Pid::from_raw(0), &one)
    });
    if let Err(e) = pinned {
        eprintln!("not pinned to one CPU ({e}): the database benchmarks will be noisier");
    }
}

/// Pinning is only done on Linux; elsewhere the benchmarks run unpinned.
#[cfg(not(target_os = "linux"))]
fn pin_to_one_cpu() {
    let _ = NO_PIN_VAR;
}

/// Topic of the producer benchmarks' messages (written out again in
/// `#[transactional_message]`, which takes a literal).
const ORDERS_PLACED: &str = "bench.cpu.orders.placed";

/// Topic the consumer benchmarks handle (written out again in
/// `#[message_handler]`, as is the group).
const ORDERS_BILLED: &str = "bench.cpu.orders.billed";

/// Consumer group of the consumer benchmarks.
const BILLING: &str = "bench-cpu-billing";

/// The event every benchmark carries: about 100 bytes of JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    id: i64,
    customer: String,
    total_cents: i64,
    currency: String,
    lines: Vec<i64>,
}

impl OrderPlaced {
    /// Order `id`, for one of ten customers.
    fn new(id: i64) -> Self {
        OrderPlaced {
            id,
            customer: format!("customer-{}", id % 10),
            total_cents: 4200 + id % 100,
            currency: "EUR".to_owned(),
            lines: vec![1200, 1800, 1200],
        }
    }
}

/// A current-thread runtime, built once per benchmark.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// A migrated in-memory SQLite store with the business tables.
async fn store() -> SqliteStore {
    let store = SqliteStore::connect("sqlite::memory:")
        .await
        .expect("an in-memory sqlite database");
    store.migrate().await.expect("migrations");
    for statement in [
        "CREATE TABLE bench_orders (id INTEGER NOT NULL, customer TEXT NOT NULL, \
         total_cents INTEGER NOT NULL)",
        "CREATE TABLE bench_invoices (order_id INTEGER NOT NULL, customer TEXT NOT NULL, \
         amount_cents INTEGER NOT NULL)",
    ] {
        sqlx::query(statement)
            .execute(store.pool())
            .await
            .expect("business table");
    }
    store
}

/// A counter of the ids each iteration takes, so that idempotency keys
/// never repeat.
#[derive(Debug, Default)]
struct Ids(Cell<i64>);

impl Ids {
    /// The next id.
    fn next(&self) -> i64 {
        let id = self.0.get() + 1;
        self.0.set(id);
        id
    }
}

/// An envelope as the relay publishes it: key, idempotency key, a
/// `traceparent` and one user header.
fn sample_envelope(id: i64, topic: &str) -> Envelope {
    let payload = serde_json::to_vec(&OrderPlaced::new(id)).expect("serializable");
    let mut envelope = Envelope::new(
        Uuid::now_v7(),
        topic,
        format!("order-{id}"),
        payload,
        Utc::now(),
    );
    envelope.key = Some(format!("customer-{}", id % 10));
    envelope.headers.insert(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    );
    envelope
        .headers
        .insert("tenant".to_owned(), "acme".to_owned());
    envelope
}

/// Building the message a producer writes, and decoding a payload.
mod envelope {
    use super::*;

    /// `Message::new` with an ordering key and an idempotency key.
    mod message_new {
        use super::*;

        /// `Message::new(topic, &payload)?.key(..).idempotency_key(..)`: the
        /// topic checked, the payload serialized, both keys made strings.
        #[divan::bench]
        fn txmsg(bencher: divan::Bencher<'_, '_>) {
            let order = OrderPlaced::new(7);
            bencher.bench_local(|| {
                let order = divan::black_box(&order);
                Message::new(ORDERS_PLACED, order)
                    .expect("valid topic and payload")
                    .key(&order.customer)
                    .idempotency_key(format_args!("order-{}", order.id))
            });
        }

        /// The same by hand, without the topic check: `serde_json::to_vec`
        /// and three strings.
        #[divan::bench]
        fn hand_written(bencher: divan::Bencher<'_, '_>) {
            let order = OrderPlaced::new(7);
            bencher.bench_local(|| {
                let order = divan::black_box(&order);
                let payload = serde_json::to_vec(order).expect("serializable");
                (
                    ORDERS_PLACED.to_owned(),
                    payload,
                    order.customer.clone(),
                    format!("order-{}", order.id),
                )
            });
        }
    }

    /// Decoding an envelope's JSON payload into the event type.
    mod decode {
        use super::*;

        /// `Envelope::decode::<OrderPlaced>()`.
        #[divan::bench]
        fn txmsg(bencher: divan::Bencher<'_, '_>) {
            let envelope = sample_envelope(7, ORDERS_PLACED);
            bencher.bench_local(|| {
                divan::black_box(&envelope)
                    .decode::<OrderPlaced>()
                    .expect("decodes")
            });
        }

        /// `serde_json::from_slice::<OrderPlaced>(&envelope.payload)`.
        #[divan::bench]
        fn hand_written(bencher: divan::Bencher<'_, '_>) {
            let envelope = sample_envelope(7, ORDERS_PLACED);
            bencher.bench_local(|| {
                serde_json::from_slice::<OrderPlaced>(&divan::black_box(&envelope).payload)
                    .expect("decodes")
            });
        }
    }
}

/// The RabbitMQ wire format: CloudEvents in binary content mode.
mod rabbitmq {
    use txmsg::rabbitmq::{RabbitCodec, RabbitConfig};

    use super::*;

    /// The CloudEvents `source` of both sides.
    const SOURCE: &str = "/bench";

    /// A string header value.
    fn text(value: &str) -> AMQPValue {
        AMQPValue::LongString(value.into())
    }

    /// The codec of a broker with the CloudEvents source [`SOURCE`].
    fn codec() -> RabbitCodec {
        RabbitCodec::new(
            &RabbitConfig::default()
                .with_source(SOURCE)
                .expect("a valid source"),
        )
    }

    /// Writes `envelope` as `RabbitCodec::encode` does, with the same
    /// headers and properties, skipping its length checks.
    fn encode_by_hand(envelope: &Envelope) -> (ShortString, BasicProperties) {
        let mut headers = FieldTable::default();
        for (name, value) in &envelope.headers {
            if name != "traceparent" {
                headers.insert(name.as_str().into(), text(value));
            }
        }
        headers.insert("cloudEvents_id".into(), text(&envelope.idempotency_key));
        headers.insert("cloudEvents_type".into(), text(&envelope.topic));
        headers.insert("cloudEvents_source".into(), text(SOURCE));
        headers.insert("cloudEvents_specversion".into(), text("1.0"));
        let time = envelope
            .created_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true);
        headers.insert("cloudEvents_time".into(), text(&time));
        if let Some(key) = &envelope.key {
            headers.insert("cloudEvents_partitionkey".into(), text(key));
        }
        if let Some(traceparent) = envelope.headers.get("traceparent") {
            headers.insert("cloudEvents_traceparent".into(), text(traceparent));
        }
        headers.insert("txmsg-id".into(), text(&envelope.id.to_string()));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_timestamp(u64::try_from(envelope.created_at.timestamp()).unwrap_or(0))
            .with_headers(headers)
            .with_message_id(envelope.idempotency_key.as_str().into());
        (envelope.topic.as_str().into(), properties)
    }

    /// A header value as text, for the string values `encode_by_hand` writes.
    fn header_text(value: &AMQPValue) -> Option<&str> {
        match value {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// Reads what `encode_by_hand` wrote back into an envelope with the
    /// same fields as `RabbitCodec::decode` gives, for deliveries from this
    /// one producer only: one header prefix, string values, no fallbacks.
    fn decode_by_hand(
        routing_key: &str,
        properties: &BasicProperties,
        body: Vec<u8>,
    ) -> Option<Envelope> {
        let mut id = None;
        let mut topic = None;
        let mut idempotency_key = None;
        let mut key = None;
        let mut created_at = None;
        let mut headers = Headers::new();
        for (name, value) in properties.headers().as_ref()?.inner() {
            let value = header_text(value)?;
            match name.as_str() {
                "cloudEvents_id" => idempotency_key = Some(value.to_owned()),
                "cloudEvents_type" => topic = Some(value.to_owned()),
                "cloudEvents_partitionkey" => key = Some(value.to_owned()),
                "cloudEvents_time" => {
                    created_at = chrono::DateTime::parse_from_rfc3339(value).ok();
                }
                "cloudEvents_traceparent" => {
                    headers.insert("traceparent".to_owned(), value.to_owned());
                }
                "cloudEvents_specversion" => {}
                "txmsg-id" => id = Uuid::parse_str(value).ok(),
                other => {
                    headers.insert(other.to_owned(), value.to_owned());
                }
            }
        }
        let mut envelope = Envelope::new(
            id?,
            topic.unwrap_or_else(|| routing_key.to_owned()),
            idempotency_key?,
            body,
            created_at?.with_timezone(&Utc),
        );
        envelope.key = key;
        envelope.headers = headers;
        Some(envelope)
    }

    /// An envelope to the routing key and properties it is published with.
    mod encode {
        use super::*;

        /// `RabbitCodec::encode`.
        #[divan::bench]
        fn txmsg(bencher: divan::Bencher<'_, '_>) {
            let codec = codec();
            let envelope = sample_envelope(7, ORDERS_PLACED);
            bencher.bench_local(|| codec.encode(divan::black_box(&envelope)).expect("encodes"));
        }

        /// The same headers and properties built by hand with lapin.
        #[divan::bench]
        fn hand_written(bencher: divan::Bencher<'_, '_>) {
            let envelope = sample_envelope(7, ORDERS_PLACED);
            bencher.bench_local(|| encode_by_hand(divan::black_box(&envelope)));
        }
    }

    /// A delivery (routing key, properties, body) to an envelope.
    mod decode {
        use super::*;

        /// `RabbitCodec::decode`.
        #[divan::bench]
        fn txmsg(bencher: divan::Bencher<'_, '_>) {
            let envelope = sample_envelope(7, ORDERS_PLACED);
            let (routing_key, properties) = codec().encode(&envelope).expect("encodes");
            let expected = {
                let mut expected = envelope.clone();
                expected
                    .headers
                    .insert("cloudEvents_source".to_owned(), SOURCE.to_owned());
                expected
            };
            let decoded =
                RabbitCodec::decode(routing_key.as_str(), &properties, envelope.payload.clone())
                    .expect("decodes");
            assert_eq!(decoded, expected, "both sides decode the same envelope");
            bencher
                .with_inputs(|| envelope.payload.clone())
                .bench_local_values(|body| {
                    RabbitCodec::decode(routing_key.as_str(), &properties, body).expect("decodes")
                });
        }

        /// The same headers read by hand, for this one producer's messages.
        #[divan::bench]
        fn hand_written(bencher: divan::Bencher<'_, '_>) {
            let envelope = sample_envelope(7, ORDERS_PLACED);
            let (routing_key, properties) = codec().encode(&envelope).expect("encodes");
            let expected =
                RabbitCodec::decode(routing_key.as_str(), &properties, envelope.payload.clone())
                    .expect("decodes");
            let decoded =
                decode_by_hand(routing_key.as_str(), &properties, envelope.payload.clone());
            assert_eq!(
                decoded,
                Some(expected),
                "both sides decode the same envelope"
            );
            bencher
                .with_inputs(|| envelope.payload.clone())
                .bench_local_values(|body| {
                    decode_by_hand(routing_key.as_str(), &properties, body).expect("decodes")
                });
        }
    }
}

/// The producer: a business insert and its message in one transaction.
mod producer {
    use super::*;

    /// The order a client sends.
    #[derive(Debug, Clone)]
    struct NewOrder {
        id: i64,
        customer: String,
        total_cents: i64,
    }

    impl NewOrder {
        /// Order `id`, as [`OrderPlaced::new`] describes it.
        fn new(id: i64) -> Self {
            let placed = OrderPlaced::new(id);
            NewOrder {
                id,
                customer: placed.customer,
                total_cents: placed.total_cents,
            }
        }
    }

    /// The business insert both sides run.
    const INSERT_ORDER: &str =
        "INSERT INTO bench_orders (id, customer, total_cents) VALUES (?, ?, ?)";

    /// Inserts the order; the macro writes its message to the outbox in the
    /// same transaction.
    #[txmsg::transactional_message(
        topic = "bench.cpu.orders.placed",
        key = order.customer,
        idempotency_key = format!("order-{}", order.id),
    )]
    async fn place_order(
        tx: &mut Tx<'_, sqlx::Sqlite>,
        order: NewOrder,
    ) -> Result<OrderPlaced, txmsg::Error> {
        sqlx::query(INSERT_ORDER)
            .bind(order.id)
            .bind(&order.customer)
            .bind(order.total_cents)
            .execute(&mut **tx)
            .await?;
        let mut placed = OrderPlaced::new(order.id);
        placed.customer = order.customer;
        placed.total_cents = order.total_cents;
        Ok(placed)
    }

    /// What `place_order_and_commit` does, written by hand with the same
    /// public API: begin, insert, enqueue the message, commit.
    async fn place_order_by_hand(
        outbox: &Outbox<sqlx::Sqlite>,
        order: NewOrder,
    ) -> Result<OrderPlaced, txmsg::Error> {
        let key = order.customer.clone();
        let idempotency_key = format!("order-{}", order.id);
        let mut tx = outbox.begin().await?;
        sqlx::query(INSERT_ORDER)
            .bind(order.id)
            .bind(&order.customer)
            .bind(order.total_cents)
            .execute(&mut *tx)
            .await?;
        let mut placed = OrderPlaced::new(order.id);
        placed.customer = order.customer;
        placed.total_cents = order.total_cents;
        let message = Message::new(ORDERS_PLACED, &placed)?
            .key(key)
            .idempotency_key(idempotency_key);
        tx.enqueue(message).await?;
        tx.commit().await?;
        Ok(placed)
    }

    /// One transaction: business insert, outbox insert, commit, on an
    /// in-memory SQLite store without relay.
    mod and_commit {
        use super::*;

        /// `place_order_and_commit`, generated by `#[transactional_message]`.
        #[divan::bench]
        fn txmsg(bencher: divan::Bencher<'_, '_>) {
            let rt = runtime();
            let store = rt.block_on(store());
            let outbox = Outbox::new(&store);
            let ids = Ids::default();
            bencher.bench_local(|| {
                let order = NewOrder::new(ids.next());
                rt.block_on(place_order_and_commit(&outbox, order))
                    .expect("committed")
            });
        }

        /// The same steps written by hand: `Outbox::begin`, the insert,
        /// `Tx::enqueue(Message::new(..)..)`, `Tx::commit`.
        #[divan::bench]
        fn hand_written(bencher: divan::Bencher<'_, '_>) {
            let rt = runtime();
            let store = rt.block_on(store());
            let outbox = Outbox::new(&store);
            let ids = Ids::default();
            bencher.bench_local(|| {
                let order = NewOrder::new(ids.next());
                rt.block_on(place_order_by_hand(&outbox, order))
                    .expect("committed")
            });
        }
    }
}

/// The consumer: a delivered message applied once, with its inbox key, in
/// one transaction.
mod consumer {
    use txmsg::consumer::{Consumer, ConsumerConfig, Settlement};
    use txmsg::memory::MemoryBroker;

    use super::*;

    /// The effect both sides apply.
    const INSERT_INVOICE: &str =
        "INSERT INTO bench_invoices (order_id, customer, amount_cents) VALUES (?, ?, ?)";

    /// Bills the order: the effect, in the transaction that records the
    /// message in the group's inbox.
    #[txmsg::message_handler(topic = "bench.cpu.orders.billed", group = "bench-cpu-billing")]
    async fn bill_order(
        tx: &mut Tx<'_, sqlx::Sqlite>,
        order: OrderPlaced,
    ) -> Result<(), txmsg::Error> {
        sqlx::query(INSERT_INVOICE)
            .bind(order.id)
            .bind(&order.customer)
            .bind(order.total_cents)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// What the consumer does for one message, written by hand with sqlx:
    /// decode the payload, begin, record the idempotency key in the inbox
    /// (skipping the effect if it was there), the effect, commit.
    async fn bill_order_by_hand(
        pool: &sqlx::SqlitePool,
        envelope: &Envelope,
    ) -> Result<(), txmsg::Error> {
        let order: OrderPlaced = envelope.decode()?;
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let fresh = sqlx::query(
            "INSERT INTO txmsg_inbox (consumer_group, idempotency_key, processed_at) \
             VALUES (?, ?, ?) ON CONFLICT (consumer_group, idempotency_key) DO NOTHING",
        )
        .bind(BILLING)
        .bind(envelope.idempotency_key.as_str())
        .bind(Utc::now().timestamp_micros())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if fresh {
            sqlx::query(INSERT_INVOICE)
                .bind(order.id)
                .bind(&order.customer)
                .bind(order.total_cents)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// One message, from the moment it is handed over to the moment its
    /// transaction committed.
    mod handle {
        use super::*;

        /// A `Consumer` with the `#[message_handler]` above: the message is
        /// published to the in-process broker, and the iteration ends when
        /// the consumer reports it applied (after its commit, before its
        /// acknowledgement). Includes the consumer runtime: the broker's
        /// queue, the hand-overs between its tasks, the dispatch to the
        /// generated code, the acknowledgement.
        #[divan::bench]
        fn txmsg(bencher: divan::Bencher<'_, '_>) {
            let rt = runtime();
            let store = rt.block_on(store());
            let broker = MemoryBroker::new();
            let (observer, mut handled) = tokio::sync::mpsc::unbounded_channel();
            let consumer =
                Consumer::new(store.clone(), broker.clone(), ConsumerConfig::new(BILLING))
                    .expect("a valid config")
                    .with_observer(observer);
            let handlers = consumer.handlers().expect("the group's handlers");
            // A message of a topic nobody handles would be waited for forever.
            assert!(
                handlers.iter().any(|h| h.topic == ORDERS_BILLED),
                "`bill_order` handles {ORDERS_BILLED}"
            );
            let consumer = rt.block_on(consumer.start()).expect("started");
            let ids = Ids::default();
            bencher.bench_local(|| {
                let envelope = sample_envelope(ids.next(), ORDERS_BILLED);
                rt.block_on(async {
                    broker.publish(&envelope).await.expect("queued");
                    let done = handled.recv().await.expect("a running consumer");
                    assert_eq!(done.outcome, Settlement::Applied);
                });
            });
            rt.block_on(consumer.shutdown());
        }

        /// The same work by hand, called directly with the message: decode,
        /// begin, inbox insert, effect, commit.
        #[divan::bench]
        fn hand_written(bencher: divan::Bencher<'_, '_>) {
            let rt = runtime();
            let store = rt.block_on(store());
            let ids = Ids::default();
            bencher.bench_local(|| {
                let envelope = sample_envelope(ids.next(), ORDERS_BILLED);
                rt.block_on(bill_order_by_hand(store.pool(), &envelope))
                    .expect("committed");
            });
        }
    }
}
