//! An order service whose `place_order` is a `#[transactional_message]`.
//!
//! Run with no services (a temporary SQLite file + the in-process broker):
//!
//! ```text
//! cargo run -p txmsg-example-orders
//! ```
//!
//! or choose the store with `DATABASE_URL` and the broker with `BROKER_URL`,
//! by their scheme:
//!
//! | variable       | scheme                         | backend                    |
//! |----------------|--------------------------------|----------------------------|
//! | `DATABASE_URL` | unset                          | SQLite, a temporary file   |
//! |                | `sqlite:`                      | SQLite, that file          |
//! |                | `postgres://`, `postgresql://` | PostgreSQL                 |
//! |                | `mysql://`, `mariadb://`       | MySQL / MariaDB            |
//! | `BROKER_URL`   | unset                          | in-process (or `AMQP_URL`) |
//! |                | `amqp://`, `amqps://`          | RabbitMQ                   |
//! |                | `nats://`                      | NATS JetStream             |
//! |                | `redis://`                     | Redis Streams              |
//! |                | `mqtt://`                      | MQTT 5                     |
//!
//! `AMQP_URL` (RabbitMQ) is read when `BROKER_URL` is unset. Any other
//! scheme stops the demo with an error naming the variable. For example:
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//! BROKER_URL=nats://127.0.0.1:4222 cargo run -p txmsg-example-orders
//!
//! DATABASE_URL=mysql://root@127.0.0.1:3306/test \
//! BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p txmsg-example-orders
//! ```
//!
//! On a server, each run works in names of its own (a PostgreSQL schema or
//! MySQL database `txmsg_demo_<run>`, a RabbitMQ exchange, NATS stream,
//! Redis key or MQTT topic prefix with the same suffix) and removes them at
//! the end (MQTT sessions expire a minute later), so runs side by side do
//! not disturb each other.
//!
//! It places orders (some fail their business check and roll back, one is
//! retried with the same idempotency key), lets the relay publish, consumes
//! what reached the broker and checks that every committed order was
//! published exactly once and no rolled-back one was.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use txmsg::consumer::{Consumer, ConsumerConfig, InboxStore, SubscribeSpec, Subscription};
use txmsg::prelude::*;
use txmsg::{Envelope, Outbox, Relay, RelayConfig};

mod service;
mod wiring;

use service::{NewOrder, OrderError};

/// Orders the demo places: (id, customer, total in cents). A total of zero
/// fails the business check, so that order rolls back.
const ORDERS: &[(i64, &str, i64)] = &[
    (1, "ada", 4_200),
    (2, "grace", 1_999),
    (3, "edsger", 0),
    (4, "barbara", 12_500),
    (5, "ken", 800),
    (6, "dennis", 0),
    (7, "margaret", 31_415),
    (8, "leslie", 2_718),
];

/// The topic of placed orders.
const TOPIC: &str = "orders.placed";
/// The billing service's consumer group.
const BILLING_GROUP: &str = "billing";
/// The demo's auditor, which only counts what reaches the broker.
const AUDIT_GROUP: &str = "demo-audit";

/// The order placed twice with the same idempotency key, as a client retry would.
const RETRIED: i64 = 5;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    match demo().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Picks the backends, runs the demo and checks what it saw.
async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let backend = wiring::Backend::from_env().await?;
    println!("txmsg order demo on {}", backend.describe());
    let summary = backend.run().await?;
    summary.print();
    if summary.consistent() {
        println!(
            "OK: every committed order was published exactly once and billed once; no rolled-back order was; the redelivery was ignored"
        );
        Ok(())
    } else {
        Err("inconsistent: see the summary above".into())
    }
}

/// What the demo saw.
#[derive(Debug, Default)]
struct Summary {
    committed: Vec<i64>,
    rolled_back: Vec<i64>,
    duplicates_rejected: Vec<i64>,
    /// Order id → times its message reached the consumer.
    received: BTreeMap<i64, u32>,
    /// Rows in the business table at the end.
    rows: i64,
    /// Invoices billing wrote.
    invoices: i64,
    /// Messages billing applied.
    billed: u64,
    /// Redeliveries billing recognised and skipped.
    redeliveries_ignored: u64,
}

impl Summary {
    fn consistent(&self) -> bool {
        self.committed.len() == self.received.len()
            && self
                .committed
                .iter()
                .all(|id| self.received.get(id) == Some(&1))
    }

    fn print(&self) {
        println!();
        println!(
            "orders committed        : {} {:?}",
            self.committed.len(),
            self.committed
        );
        println!("rows in demo_orders     : {}", self.rows);
        println!(
            "orders rolled back      : {} {:?}",
            self.rolled_back.len(),
            self.rolled_back
        );
        println!(
            "retries rejected as dup : {} {:?}",
            self.duplicates_rejected.len(),
            self.duplicates_rejected
        );
        let total: u32 = self.received.values().sum();
        println!(
            "messages on the broker  : {total} for orders {:?}",
            self.received.keys().collect::<Vec<_>>()
        );
        println!(
            "invoices (billing)      : {} ({} applied)",
            self.invoices, self.billed
        );
        println!("redeliveries ignored    : {}", self.redeliveries_ignored);
    }
}

/// Places the demo's orders through `place` and records what happened.
async fn place_all<F, Fut>(summary: &mut Summary, mut place: F) -> Result<(), OrderError>
where
    F: FnMut(NewOrder) -> Fut,
    Fut: std::future::Future<Output = Result<service::OrderPlaced, OrderError>>,
{
    let mut attempts: Vec<NewOrder> = ORDERS
        .iter()
        .map(|&(id, customer, total)| NewOrder::new(id, customer, total))
        .collect();
    // The client retries order 5 (its first try did commit).
    if let Some(retry) = attempts.iter().find(|o| o.id == RETRIED).cloned() {
        attempts.push(retry);
    }
    for order in attempts {
        let id = order.id;
        match place(order).await {
            Ok(placed) => {
                println!(
                    "placed order {:>2} for {:<9} {:>7} cents",
                    placed.id, placed.customer, placed.total_cents
                );
                summary.committed.push(id);
            }
            Err(OrderError::Rejected(why)) => {
                println!("order {id:>2} rolled back: {why}");
                summary.rolled_back.push(id);
            }
            Err(OrderError::Txmsg(e)) if e.is_duplicate() => {
                println!(
                    "order {id:>2} retried with the same idempotency key: rejected as a duplicate, nothing written twice"
                );
                summary.duplicates_rejected.push(id);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until `expected` messages arrived at the audit subscription (and a
/// little longer, to catch any duplicate), or the deadline passes. Returns
/// the envelopes.
async fn collect(
    summary: &mut Summary,
    expected: usize,
    audit: &mut Subscription,
) -> Vec<Envelope> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let wait = if seen.len() >= expected {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(20)
        };
        let until = deadline.min(tokio::time::Instant::now() + wait);
        match tokio::time::timeout_at(until, audit.next()).await {
            Ok(Some(delivery)) => {
                if let Ok(env) = &delivery.message {
                    if let Ok(order) = env.decode::<service::OrderPlaced>() {
                        *summary.received.entry(order.id).or_default() += 1;
                    }
                    seen.push(env.clone());
                }
                let _ = delivery.ack().await;
            }
            Ok(None) | Err(_) => break,
        }
    }
    seen
}

/// Polls `done` every 20 ms for up to 20 s.
async fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..1_000 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Runs the demo on one store and broker: billing consumer and relay
/// started, orders placed, messages counted, one message redelivered
/// (`redeliver_after` the messages arrived: a broker that drops a republish
/// for a while, as NATS JetStream does, would otherwise swallow it).
async fn run_demo<S, B, F, Fut>(
    store: S,
    broker: B,
    mut place: F,
    redeliver_after: Duration,
) -> Result<Summary, Box<dyn std::error::Error>>
where
    S: InboxStore,
    B: Broker,
    F: FnMut(Outbox<S::Database>, NewOrder) -> Fut,
    Fut: std::future::Future<Output = Result<service::OrderPlaced, OrderError>>,
{
    // Both groups subscribe before any order is placed: on Redis Streams
    // and MQTT a group only gets what is published after its first
    // subscribe.
    // An auditor that only looks at what reaches the broker.
    let spec = SubscribeSpec {
        group: AUDIT_GROUP.into(),
        topic: TOPIC.into(),
        prefetch: 64,
    };
    let mut audit = broker.subscribe(&spec).await?;
    let relay = Relay::new(store.clone(), broker.clone(), RelayConfig::default())?.start();
    let outbox = Outbox::new(&store).with_relay(&relay);
    // The billing service: finds its #[message_handler] by itself.
    let billing = Consumer::new(
        store.clone(),
        broker.clone(),
        ConsumerConfig::new(BILLING_GROUP),
    )?
    .with_outbox(outbox.clone())
    .start()
    .await?;

    let mut summary = Summary::default();
    place_all(&mut summary, |order| place(outbox.clone(), order)).await?;
    let expected = summary.committed.len();
    let seen = collect(&mut summary, expected, &mut audit).await;
    wait_until(|| billing.stats().applied >= expected as u64).await;

    // The broker delivers the first order again, as after a lost ack.
    if let Some(first) = seen.first() {
        tokio::time::sleep(redeliver_after).await;
        broker.publish(first).await?;
        let skipped = wait_until(|| billing.stats().duplicates >= 1).await;
        let order = first
            .decode::<service::OrderPlaced>()
            .map(|o| o.id)
            .unwrap_or_default();
        if skipped {
            println!(
                "order {order:>2} delivered to billing again: recognised in the inbox, not billed twice"
            );
        }
        // The auditor sees the redelivery too; take it off its queue.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            if let Some(d) = audit.next().await {
                let _ = d.ack().await;
            }
        })
        .await;
    }
    let stats = billing.stats();
    summary.billed = stats.applied;
    summary.redeliveries_ignored = stats.duplicates;
    billing.shutdown().await;
    relay.shutdown().await;
    let outbox_stats = store.stats().await?;
    println!(
        "outbox                  : {} sent, {} pending, {} dead",
        outbox_stats.sent, outbox_stats.pending, outbox_stats.dead
    );
    Ok(summary)
}
