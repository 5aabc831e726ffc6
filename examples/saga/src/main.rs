//! A saga across three services, order → payment → shipping, each with a
//! database of its own, chained by txmsg messages, with a compensating
//! message when a step fails.
//!
//! ```text
//!  order service              payment service              shipping service
//!  ─────────────              ───────────────              ────────────────
//!  place_order ──orders.placed──▶ take_payment
//!  (#[transactional_message])    (#[message_handler])
//!                                 ├─ charge ──payments.charged──▶ ship_order
//!                                 │                               (#[message_handler])
//!  complete_order ◀──────────────────────────shipments.created───┘
//!  (#[message_handler])           │
//!  cancel_order ◀──payments.declined (the compensation)
//!  (#[message_handler])
//! ```
//!
//! Each arrow is one local transaction on one side and one idempotent
//! handler on the other:
//!
//! - the order service inserts the order and, in the same transaction, its
//!   `orders.placed` message (`#[transactional_message]`);
//! - the payment service's `#[message_handler]` charges the order, or
//!   declines it (an amount over 10 000 cents, or a flagged customer), and
//!   in the same transaction, the handler's own, writes `payments.charged`
//!   or `payments.declined` through a `#[transactional_message]` function
//!   that takes the handler's `Tx`. The payment row, the inbox key and the
//!   outgoing message commit together; the consumer begins its transactions
//!   from an outbox linked to the service's relay
//!   (`Consumer::with_outbox`), so the message is published right after the
//!   commit;
//! - the shipping service ships each charged order (a `saga_shipments` row)
//!   and emits `shipments.created` the same way;
//! - the order service completes the order on `shipments.created`, and
//!   cancels it on `payments.declined`, the compensating message.
//!
//! So every order ends completed, charged and shipped, or cancelled,
//! declined and never shipped. Each service has its own consumer group
//! (`order`, `payment`, `shipping`): the consumer runtime finds a group's
//! handlers by the group and the store's database type.
//!
//! # Running it
//!
//! With no services, three SQLite files and the in-process broker:
//!
//! ```text
//! cargo run -p txmsg-example-saga
//! ```
//!
//! On PostgreSQL (three schemas of one database, one per service) and
//! RabbitMQ:
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p txmsg-example-saga
//! ```
//!
//! | variable       | value                          | backend                                  |
//! |----------------|--------------------------------|------------------------------------------|
//! | `DATABASE_URL` | unset                          | SQLite, three temporary files            |
//! |                | `postgres://`, `postgresql://` | PostgreSQL, three schemas                |
//! | `BROKER_URL`   | unset                          | the in-process broker (or `AMQP_URL`)    |
//! |                | `amqp://`, `amqps://`          | RabbitMQ                                 |
//! |                | `rocketmq://`                  | RocketMQ (its name server)               |
//! | `AMQP_URL`     | `amqp://`, `amqps://`          | RabbitMQ, when `BROKER_URL` is unset      |
//! | `SAGA_CRASH`   | `order`, `payment`, `shipping` | that service crashes (as `--crash`)      |
//!
//! On a server, each run works in names of its own
//! (`txmsg_saga_<run>_<service>` schemas, a `txmsg.saga.<run>` exchange and
//! its queues) and removes them at the end, so runs side by side do not
//! disturb each other.
//!
//! # Crashes
//!
//! Each service runs as if it were a process of its own: a Tokio runtime
//! with its own connections, relay and consumer. `--crash <service>` (or
//! `SAGA_CRASH=<service>`) kills one of them in the middle of the flow:
//!
//! - `order`: the orders and their outbox rows are committed, but the relay
//!   dies as it is about to publish the 4th `orders.placed`;
//! - `payment`: the consumer's transaction for its 3rd `orders.placed` (the
//!   payment row, the inbox key, the outgoing message) commits, then the
//!   service dies before acknowledging the delivery;
//! - `shipping`: the same, at its 2nd `payments.charged`.
//!
//! The dead service's runtime is dropped on the spot; then it is
//! restarted: a new consumer and a new relay on the same database. The
//! broker delivers again what was not acknowledged, and the inbox skips it;
//! the new relay takes over the outbox rows the dead one held once their
//! lease runs out, and publishes them. The flow heals.
//!
//! # What it checks
//!
//! At the end the demo prints every order's state in the three databases
//! and checks that they agree: each order is either completed, charged once
//! and shipped once, or cancelled, declined once and not shipped, as the
//! payment rules say; no business row is there twice (no table has a unique
//! key that would hide it); no outbox holds an unpublished or dead message.
//! It exits with status 1 if anything disagrees.

use std::collections::BTreeMap;
use std::process::ExitCode;

use txmsg::OutboxStats;

mod fault;
mod runner;
mod service;
mod wiring;

use service::{NewOrder, OrderRow, PaymentRow, Service, payment_decision};
use wiring::{BROKER_VAR, BoxError, Brokers, Databases, LEGACY_AMQP_VAR, STORE_VAR};

/// Orders the demo places: (id, customer, total in cents). Orders 3
/// (a flagged customer), 4 and 6 (over the limit) are declined.
const ORDERS: &[(i64, &str, i64)] = &[
    (1, "ada", 4_200),
    (2, "grace", 1_999),
    (3, "mallory", 2_500),
    (4, "barbara", 12_500),
    (5, "ken", 800),
    (6, "dennis", 25_000),
    (7, "margaret", 3_141),
    (8, "leslie", 2_718),
];

/// The variable that names the service to crash, as `--crash` does.
const CRASH_VAR: &str = "SAGA_CRASH";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    match demo().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The service `--crash` (or `SAGA_CRASH`) names, if any.
fn crash_from(args: &[String]) -> Result<Option<Service>, BoxError> {
    let mut named: Option<(&str, String)> = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--crash" {
            let Some(value) = rest.next() else {
                return Err(format!("--crash needs a service: {}", service_names()).into());
            };
            named = Some(("--crash", value.clone()));
        } else if let Some(value) = arg.strip_prefix("--crash=") {
            named = Some(("--crash", value.to_owned()));
        } else {
            return Err(format!("unknown argument `{arg}`; usage: [--crash <service>]").into());
        }
    }
    if named.is_none() {
        named = wiring::var(CRASH_VAR)?.map(|value| (CRASH_VAR, value));
    }
    let Some((source, value)) = named else {
        return Ok(None);
    };
    match Service::ALL.into_iter().find(|s| s.name() == value) {
        Some(service) => Ok(Some(service)),
        None => Err(format!(
            "{source} names `{value}`, which is no service; expected {}",
            service_names()
        )
        .into()),
    }
}

fn service_names() -> String {
    let names: Vec<&str> = Service::ALL.iter().map(|s| s.name()).collect();
    names.join(", ")
}

/// Picks the backends, runs the saga, checks and prints what it left.
async fn demo() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let crash = crash_from(&args)?;
    // One suffix for every name of this run.
    let run = uuid::Uuid::now_v7().simple().to_string();
    let broker_url = match wiring::var(BROKER_VAR)? {
        Some(url) => Some((BROKER_VAR, url)),
        None => wiring::var(LEGACY_AMQP_VAR)?.map(|url| (LEGACY_AMQP_VAR, url)),
    };
    let summary = match wiring::var(STORE_VAR)? {
        None => on_broker(wiring::SqliteFiles::new(&run), broker_url, &run, crash).await?,
        Some(url) => match wiring::scheme(&url) {
            "postgres" | "postgresql" => {
                let databases = wiring::PgSchemas::new(url, &run)?;
                on_broker(databases, broker_url, &run, crash).await?
            }
            other => {
                return Err(wiring::unknown_scheme(
                    STORE_VAR,
                    other,
                    "postgres:// or postgresql:// (or leave it unset for three SQLite files)",
                ));
            }
        },
    };
    summary.print();
    if summary.timed_out {
        return Err("the saga did not settle in time: see the summary above".into());
    }
    let problems = summary.problems();
    if problems.is_empty() {
        println!(
            "OK: every order is completed, charged once and shipped once, or cancelled, declined once and never shipped; nothing was applied twice"
        );
        Ok(())
    } else {
        for problem in &problems {
            println!("INCONSISTENT: {problem}");
        }
        Err(format!("inconsistent: {} problem(s), see above", problems.len()).into())
    }
}

/// Runs the saga on these backends, then removes what the run created,
/// whether it succeeded or not.
/// Runs the saga on `databases` and the broker of `broker_url` (the
/// variable it came from, and its value): the in-process broker when there
/// is none, RocketMQ for `rocketmq://`, RabbitMQ otherwise.
async fn on_broker<D: Databases>(
    databases: D,
    broker_url: Option<(&'static str, String)>,
    run: &str,
    crash: Option<Service>,
) -> Result<Summary, BoxError> {
    match broker_url {
        None => run_on(databases, wiring::InProcess::default(), crash).await,
        Some((BROKER_VAR, url)) if wiring::scheme(&url) == "rocketmq" => {
            run_on(databases, wiring::Rocket::new(url, run), crash).await
        }
        Some((var, url)) => run_on(databases, wiring::Rabbit::new(url, run, var)?, crash).await,
    }
}

async fn run_on<D: Databases, K: Brokers>(
    databases: D,
    brokers: K,
    crash: Option<Service>,
) -> Result<Summary, BoxError> {
    println!(
        "txmsg saga demo on {} + {}",
        databases.describe(),
        brokers.describe()
    );
    match crash {
        Some(service) => println!("crash: the {service} service, in the middle of the flow"),
        None => println!("crash: none"),
    }
    let orders = ORDERS
        .iter()
        .map(|&(id, customer, total)| NewOrder::new(id, customer, total))
        .collect();
    let summary = runner::run(&databases, &brokers, orders, crash).await;
    brokers.teardown().await;
    databases.teardown().await;
    summary
}

/// What the three databases hold at the end.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// The order service's orders.
    orders: Vec<OrderRow>,
    /// The order id of each of the order service's history rows.
    history: Vec<i64>,
    /// The payment service's payments.
    payments: Vec<PaymentRow>,
    /// The order id of each of the shipping service's shipments.
    shipments: Vec<i64>,
    /// Inbox keys of each service's group, in [`Service::ALL`] order.
    inbox: [i64; 3],
}

/// What the run did and left.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    ledger: Ledger,
    /// Crashes per service.
    crashes: BTreeMap<Service, u32>,
    /// Redeliveries each service's last consumer recognised in its inbox.
    redeliveries_skipped: BTreeMap<Service, u64>,
    /// Consumer dead letters per service.
    consumer_dead: BTreeMap<Service, usize>,
    /// Each service's outbox at the end.
    outboxes: BTreeMap<Service, OutboxStats>,
    /// Whether the saga failed to settle before the deadline.
    timed_out: bool,
}

/// How many times `id` occurs in `ids`.
fn count(ids: &[i64], id: i64) -> usize {
    ids.iter().filter(|&&i| i == id).count()
}

impl Summary {
    fn payments_of(&self, id: i64) -> Vec<&PaymentRow> {
        self.ledger
            .payments
            .iter()
            .filter(|p| p.order_id == id)
            .collect()
    }

    /// Every way the three services disagree; empty if they agree.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let ledger = &self.ledger;
        let placed: Vec<i64> = ledger.orders.iter().map(|o| o.id).collect();
        let expected: Vec<i64> = ORDERS.iter().map(|&(id, _, _)| id).collect();
        if placed != expected {
            problems.push(format!(
                "orders {placed:?} in the order service, expected {expected:?}"
            ));
        }
        for order in &ledger.orders {
            let id = order.id;
            let payments = self.payments_of(id);
            let states: Vec<&str> = payments.iter().map(|p| p.state.as_str()).collect();
            let shipments = count(&ledger.shipments, id);
            let history = count(&ledger.history, id);
            let rules = payment_decision(&order.customer, order.total_cents);
            let agrees = match order.state.as_str() {
                "completed" => rules.is_ok() && states == ["charged"] && shipments == 1,
                "cancelled" => rules.is_err() && states == ["declined"] && shipments == 0,
                _ => false,
            };
            if !agrees || history != 1 {
                problems.push(format!(
                    "order {id}: {} in the order service ({history} history rows), payments {states:?}, {shipments} shipments; the rules say {}",
                    order.state,
                    if rules.is_ok() { "charge" } else { "decline" }
                ));
            }
        }
        let strays = ledger
            .payments
            .iter()
            .map(|p| p.order_id)
            .chain(ledger.shipments.iter().copied())
            .chain(ledger.history.iter().copied())
            .filter(|id| !placed.contains(id))
            .count();
        if strays > 0 {
            problems.push(format!(
                "{strays} rows for orders the order service does not have"
            ));
        }
        let charged = ledger
            .payments
            .iter()
            .filter(|p| p.state == "charged")
            .count();
        let expected_keys = [ledger.orders.len(), ledger.orders.len(), charged];
        for ((service, keys), expected) in Service::ALL.iter().zip(ledger.inbox).zip(expected_keys)
        {
            if usize::try_from(keys).ok() != Some(expected) {
                problems.push(format!(
                    "the {service} service's inbox has {keys} keys, expected {expected}"
                ));
            }
        }
        for (service, stats) in &self.outboxes {
            if stats.pending > 0 || stats.prepared > 0 || stats.dead > 0 {
                problems.push(format!(
                    "the {service} service's outbox has {} pending, {} prepared, {} dead",
                    stats.pending, stats.prepared, stats.dead
                ));
            }
        }
        for (service, dead) in &self.consumer_dead {
            if *dead > 0 {
                problems.push(format!("the {service} service has {dead} dead letters"));
            }
        }
        problems
    }

    fn print(&self) {
        let ledger = &self.ledger;
        println!();
        println!(
            "{:>5}  {:<9} {:>6}  | {:<10} {:<42} shipment",
            "order", "customer", "total", "state", "payment"
        );
        for order in &ledger.orders {
            let payments: Vec<String> = self
                .payments_of(order.id)
                .iter()
                .map(|p| match &p.reason {
                    Some(reason) => format!("{} ({reason})", p.state),
                    None => p.state.clone(),
                })
                .collect();
            let payment = if payments.is_empty() {
                "none".to_owned()
            } else {
                payments.join(" + ")
            };
            let shipment = match count(&ledger.shipments, order.id) {
                0 => "none".to_owned(),
                1 => "shipped".to_owned(),
                n => format!("shipped {n} times"),
            };
            println!(
                "{:>5}  {:<9} {:>6}  | {:<10} {:<42} {shipment}",
                order.id, order.customer, order.total_cents, order.state, payment
            );
        }
        println!();
        let with_state = |state: &str| -> Vec<i64> {
            ledger
                .orders
                .iter()
                .filter(|o| o.state == state)
                .map(|o| o.id)
                .collect()
        };
        let completed = with_state("completed");
        let cancelled = with_state("cancelled");
        println!(
            "orders completed        : {} {completed:?}",
            completed.len()
        );
        println!(
            "orders cancelled        : {} {cancelled:?}",
            cancelled.len()
        );
        let charged = ledger
            .payments
            .iter()
            .filter(|p| p.state == "charged")
            .count();
        println!(
            "payment rows            : {} ({charged} charged, {} declined)",
            ledger.payments.len(),
            ledger.payments.len() - charged
        );
        println!("shipment rows           : {}", ledger.shipments.len());
        println!("order history rows      : {}", ledger.history.len());
        let per_service = |value: &dyn Fn(Service) -> String| -> String {
            Service::ALL
                .iter()
                .map(|s| format!("{s} {}", value(*s)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "inbox keys              : {}",
            per_service(&|s| ledger.inbox[s as usize].to_string())
        );
        println!(
            "redeliveries skipped    : {}",
            per_service(&|s| self
                .redeliveries_skipped
                .get(&s)
                .copied()
                .unwrap_or_default()
                .to_string())
        );
        println!(
            "crashes                 : {}",
            per_service(&|s| self
                .crashes
                .get(&s)
                .copied()
                .unwrap_or_default()
                .to_string())
        );
        let outbox = |s: Service| self.outboxes.get(&s).cloned().unwrap_or_default();
        println!(
            "outbox messages sent    : {}",
            per_service(&|s| outbox(s).sent.to_string())
        );
        let (pending, dead) = Service::ALL.iter().fold((0, 0), |(p, d), s| {
            let stats = outbox(*s);
            (p + stats.pending + stats.prepared, d + stats.dead)
        });
        println!("outbox pending / dead   : {pending} / {dead}");
        println!(
            "consumer dead letters   : {}",
            self.consumer_dead.values().sum::<usize>()
        );
    }
}
