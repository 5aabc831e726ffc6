//! Runs the three services, each as if it were a process of its own: a
//! Tokio runtime of its own, with its own connections, relay and consumer.
//! A crash drops that runtime on the spot; a restart builds a new one on the
//! same database.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use txmsg::consumer::{Consumer, ConsumerConfig, ConsumerStats, InboxStore};
use txmsg::prelude::*;
use txmsg::{DeadFilter, Outbox, Relay, RelayConfig};

use crate::Summary;
use crate::fault::{CrashPoint, Fault, FaultyBroker};
use crate::service::{NewOrder, Service};
use crate::wiring::{BoxError, Brokers, Databases};

/// How long the saga may take to settle before the demo gives up.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// How long everything must stay settled before the demo ends, so that a
/// late redelivery would still be seen.
const QUIET_PERIOD: Duration = Duration::from_secs(1);
/// How often the supervisor looks at the services.
const TICK: Duration = Duration::from_millis(50);

/// The relay settings of every service. A short lease, so that what a
/// crashed relay held is taken over by its successor within seconds.
fn relay_config() -> RelayConfig {
    RelayConfig::default()
        .with_lease(Duration::from_secs(2))
        .with_publish_timeout(Duration::from_secs(1))
        .with_poll_interval(Duration::from_millis(200))
        .with_shutdown_timeout(Duration::from_secs(2))
}

/// The consumer settings of `service`.
fn consumer_config(service: Service) -> ConsumerConfig {
    ConsumerConfig::new(service.group()).with_shutdown_timeout(Duration::from_secs(2))
}

/// How placing one order ended, as the client saw it.
pub(crate) type Placement = (NewOrder, Result<(), String>);

/// One run of one service, from start to crash or to shutdown.
struct Life {
    service: Service,
    runtime: Option<tokio::runtime::Runtime>,
    fault: Arc<Fault>,
    stop: Option<oneshot::Sender<()>>,
    finished: Option<tokio::task::JoinHandle<Result<ConsumerStats, BoxError>>>,
}

impl Life {
    /// Starts `service` on a runtime of its own; the order service also
    /// places `orders`. Returns once the consumer is subscribed and the
    /// orders are placed.
    async fn start<D: Databases, K: Brokers>(
        service: Service,
        databases: &D,
        brokers: &K,
        fault: Arc<Fault>,
        orders: Vec<NewOrder>,
    ) -> Result<(Life, Vec<Placement>), BoxError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("saga-{service}"))
            .enable_all()
            .build()?;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let finished = runtime.spawn(serve(
            service,
            databases.clone(),
            brokers.clone(),
            Arc::clone(&fault),
            orders,
            ready_tx,
            stop_rx,
        ));
        let life = Life {
            service,
            runtime: Some(runtime),
            fault,
            stop: Some(stop_tx),
            finished: Some(finished),
        };
        match ready_rx.await {
            Ok(Ok(placed)) => Ok((life, placed)),
            Ok(Err(e)) => Err(format!("the {service} service did not start: {e}").into()),
            Err(_) => Err(format!("the {service} service stopped while starting").into()),
        }
    }

    /// Stops gracefully and returns what the consumer counted.
    async fn stop(mut self) -> Result<ConsumerStats, BoxError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let stats = match self.finished.take() {
            Some(task) => task.await.map_err(|e| format!("{}: {e}", self.service))?,
            None => Err(format!("the {} service was not running", self.service).into()),
        };
        self.kill();
        stats
    }

    /// Drops the runtime on the spot: its tasks, connections and
    /// unsettled deliveries are gone, as with a killed process.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Life {
    fn drop(&mut self) {
        // A runtime may not be dropped the ordinary way inside another one.
        self.kill();
    }
}

/// The body of one run of a service: connect, start the relay and the
/// consumer, place the orders (order service, first run), then serve until
/// asked to stop.
async fn serve<D: Databases, K: Brokers>(
    service: Service,
    databases: D,
    brokers: K,
    fault: Arc<Fault>,
    orders: Vec<NewOrder>,
    ready: oneshot::Sender<Result<Vec<Placement>, String>>,
    stop: oneshot::Receiver<()>,
) -> Result<ConsumerStats, BoxError> {
    let started = async {
        let store = databases.connect(service).await?;
        let broker = FaultyBroker::new(brokers.connect(service).await?, fault);
        let relay = Relay::new(store.clone(), broker.clone(), relay_config())?.start();
        let outbox = Outbox::new(&store).with_relay(&relay);
        // Handler transactions begin from the relay's outbox, so that the
        // messages handlers write go out right after their commit.
        let consumer = Consumer::new(store.clone(), broker, consumer_config(service))?
            .with_outbox(outbox.clone())
            .start()
            .await?;
        Ok::<_, BoxError>((store, relay, outbox, consumer))
    }
    .await;
    let (store, relay, outbox, consumer) = match started {
        Ok(running) => running,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return Err(e);
        }
    };
    let mut placed = Vec::with_capacity(orders.len());
    for order in orders {
        let outcome = D::place(outbox.clone(), order.clone()).await;
        placed.push((order, outcome.map(drop).map_err(|e| e.to_string())));
    }
    let _ = ready.send(Ok(placed));
    // Serves until told to stop (or until the demo is gone).
    let _ = stop.await;
    consumer.shutdown().await;
    relay.shutdown().await;
    let stats = consumer.stats();
    store.pool().close().await;
    Ok(stats)
}

/// Runs the saga: the three services, the orders, the crash and restart
/// of `crash` (if any), until every order settled; then reads the three
/// databases.
pub(crate) async fn run<D: Databases, K: Brokers>(
    databases: &D,
    brokers: &K,
    orders: Vec<NewOrder>,
    crash: Option<Service>,
) -> Result<Summary, BoxError> {
    // The demo's own view of the three databases: created, migrated, and
    // read at the end.
    databases.prepare().await?;
    let mut stores = Vec::with_capacity(3);
    for service in Service::ALL {
        let store = databases.connect(service).await?;
        store.migrate().await?;
        D::create_tables(service, &store).await?;
        stores.push(store);
    }
    let stores: [D::Store; 3] = stores
        .try_into()
        .map_err(|_| "three stores expected".to_owned())?;
    let outcome = supervise(databases, brokers, &stores, orders, crash).await;
    for store in &stores {
        store.pool().close().await;
    }
    outcome
}

async fn supervise<D: Databases, K: Brokers>(
    databases: &D,
    brokers: &K,
    stores: &[D::Store; 3],
    orders: Vec<NewOrder>,
    crash: Option<Service>,
) -> Result<Summary, BoxError> {
    let mut summary = Summary::default();
    let mut lives: BTreeMap<Service, Life> = BTreeMap::new();
    // Consumers first, so that every group's queue exists before the first
    // message; the order service last, as it places the orders.
    for service in [Service::Payment, Service::Shipping, Service::Order] {
        let fault = match crash {
            Some(c) if c == service => Fault::at(service, CrashPoint::of(service)),
            _ => Fault::none(service),
        };
        let to_place = if service == Service::Order {
            orders.clone()
        } else {
            Vec::new()
        };
        let (life, placed) = Life::start(service, databases, brokers, fault, to_place).await?;
        lives.insert(service, life);
        for (order, outcome) in placed {
            match outcome {
                Ok(()) => println!(
                    "placed order {:>2} for {:<9} {:>6} cents",
                    order.id, order.customer, order.total_cents
                ),
                Err(e) => println!("order {:>2} was not placed: {e}", order.id),
            }
        }
    }

    let deadline = Instant::now() + SETTLE_DEADLINE;
    let mut quiet_since: Option<Instant> = None;
    loop {
        let died: Vec<Service> = lives
            .iter()
            .filter(|(_, life)| life.fault.has_died())
            .map(|(service, _)| *service)
            .collect();
        for service in died {
            if let Some(mut life) = lives.remove(&service) {
                println!("{}", life.fault.what().unwrap_or("a service crashed"));
                life.kill();
                *summary.crashes.entry(service).or_default() += 1;
            }
            let (life, _) = Life::start(
                service,
                databases,
                brokers,
                Fault::none(service),
                Vec::new(),
            )
            .await?;
            println!("{service} service restarted: a new consumer and relay on the same database");
            lives.insert(service, life);
            quiet_since = None;
        }
        let armed = crash.is_some_and(|c| !summary.crashes.contains_key(&c));
        if !armed && settled::<D>(stores).await? {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= QUIET_PERIOD {
                break;
            }
        } else {
            quiet_since = None;
        }
        if Instant::now() >= deadline {
            summary.timed_out = true;
            break;
        }
        tokio::time::sleep(TICK).await;
    }

    for (service, life) in std::mem::take(&mut lives) {
        let stats = life.stop().await?;
        summary
            .redeliveries_skipped
            .insert(service, stats.duplicates);
    }
    for (service, store) in Service::ALL.into_iter().zip(stores) {
        summary.outboxes.insert(service, store.stats().await?);
        let dead = store
            .consumer_dead_letters(service.group(), &DeadFilter::default())
            .await?;
        summary.consumer_dead.insert(service, dead.len());
    }
    summary.ledger = D::ledger(stores).await?;
    Ok(summary)
}

/// Whether the saga is at rest: every order completed or cancelled and no
/// outbox holds a message not yet published.
async fn settled<D: Databases>(stores: &[D::Store; 3]) -> Result<bool, BoxError> {
    for store in stores {
        let stats = store.stats().await?;
        if stats.pending > 0 || stats.prepared > 0 {
            return Ok(false);
        }
    }
    let ledger = D::ledger(stores).await?;
    Ok(ledger
        .orders
        .iter()
        .all(|o| o.state == "completed" || o.state == "cancelled"))
}
