//! The processes the harness starts: a producer, a relay, a consumer.
//!
//! Each reads where to connect from the environment the harness gives it
//! ([`Env`]), prints `ready` once it runs, and stops gracefully on SIGTERM.
//! With `FAILPOINTS` set, a panic aborts the process, so a fail point
//! configured to panic is a crash at that point.

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::signal::unix::{SignalKind, signal};
use txmsg::consumer::{Consumer, ConsumerConfig};
use txmsg::postgres::{Capture, LogRelay, LogRelayConfig, PgStore};
use txmsg::prelude::*;
use txmsg::rabbitmq::{RabbitBroker, RabbitConfig};
use txmsg::{Outbox, Relay, RelayConfig, Tables};

use crate::workload;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a child connects, from its environment.
pub(crate) struct Env {
    pub(crate) db: String,
    pub(crate) schema: String,
    pub(crate) amqp: String,
    pub(crate) exchange: String,
    pub(crate) app: String,
    /// Log capture: producers write the WAL, relays read the slot.
    pub(crate) log: bool,
}

impl Env {
    pub(crate) const DB: &'static str = "FAULTS_DB";
    pub(crate) const SCHEMA: &'static str = "FAULTS_SCHEMA";
    pub(crate) const AMQP: &'static str = "FAULTS_AMQP";
    pub(crate) const EXCHANGE: &'static str = "FAULTS_EXCHANGE";
    pub(crate) const APP: &'static str = "FAULTS_APP";
    pub(crate) const CAPTURE: &'static str = "FAULTS_CAPTURE";

    fn from_env() -> Result<Self, BoxError> {
        let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
        Ok(Env {
            db: var(Self::DB)?,
            schema: var(Self::SCHEMA)?,
            amqp: var(Self::AMQP)?,
            exchange: var(Self::EXCHANGE)?,
            app: var(Self::APP)?,
            log: std::env::var(Self::CAPTURE).is_ok_and(|c| c == "log"),
        })
    }

    /// The log capture's slot and publication of this run, named after its
    /// schema, and the relay's name on its replication connection.
    pub(crate) fn log_relay_config(&self) -> Result<LogRelayConfig, BoxError> {
        let config = LogRelayConfig::default()
            .with_slot(&self.schema)?
            .with_publication(&self.schema)?;
        if self.app.is_empty() {
            return Ok(config);
        }
        Ok(config.with_application_name(&self.app)?)
    }
}

/// The prefix of the log capture's records.
pub(crate) const LOG_PREFIX: &str = "txmsg_faults";

/// A pool whose connections use `schema` first and name themselves `app`
/// (so the harness can find and terminate them).
pub(crate) async fn pool(
    url: &str,
    schema: &str,
    app: &str,
    max: u32,
) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?
        .application_name(app)
        .options([("search_path", format!("{schema},public"))]);
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
}

/// The relay settings of every process: short leases and quick retries,
/// so that a killed relay's rows come back within seconds.
pub(crate) fn relay_config() -> RelayConfig {
    RelayConfig::default()
        .with_lease(Duration::from_secs(3))
        .with_poll_interval(Duration::from_millis(100))
        .with_backoff_min(Duration::from_millis(50))
        .with_backoff_max(Duration::from_secs(1))
        .with_publish_timeout(Duration::from_secs(2))
        .with_shutdown_timeout(Duration::from_secs(3))
        .with_max_attempts(1_000)
}

async fn connect(env: &Env, max: u32) -> Result<(PgStore, RabbitBroker), BoxError> {
    let pool = loop {
        // The database may be down (a fault under test): keep trying.
        match pool(&env.db, &env.schema, &env.app, max).await {
            Ok(pool) => break pool,
            Err(e) => {
                eprintln!("{}: database not reachable yet: {e}", env.app);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let mut store = PgStore::new(pool, Tables::default().with_schema(&env.schema)?)?;
    if env.log {
        store = store.with_capture(Capture::log(LOG_PREFIX)?);
    }
    let config = RabbitConfig::default()
        .with_exchange(&env.exchange)?
        .with_connection_name(&env.app)?
        .with_reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))?
        .with_connect_timeout(Duration::from_secs(2))?;
    let broker = loop {
        match RabbitBroker::connect(&env.amqp, config.clone()).await {
            Ok(broker) => break broker,
            Err(e) => {
                eprintln!("{}: broker not reachable yet: {e}", env.app);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    Ok((store, broker))
}

/// Installs the crash-at-fail-point behaviour and the fail points of
/// `FAILPOINTS`.
fn crash_on_panic() -> Option<fail::FailScenario<'static>> {
    std::env::var_os("FAILPOINTS")?;
    std::panic::set_hook(Box::new(|info| {
        // The harness counts crashes by fail point from this line.
        let what = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("panic");
        let point = what
            .split_whitespace()
            .find(|w| w.starts_with("txmsg::"))
            .unwrap_or(what);
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "crash {point}");
            let _ = out.flush();
        }
        eprintln!("crash: {info}");
        std::process::abort();
    }));
    Some(fail::FailScenario::setup())
}

async fn terminated() -> Result<(), BoxError> {
    signal(SignalKind::terminate())?.recv().await;
    Ok(())
}

/// Writes orders `index`, `index + producers`, ... below `count`, one every
/// `interval`, resuming after the highest one already committed. With
/// `relay`, publishes them at once through an in-process relay (the fast
/// path); without, leaves them to the relay processes.
pub(crate) async fn producer(
    index: i64,
    producers: i64,
    keys: i64,
    count: i64,
    interval: Duration,
    relay: bool,
) -> Result<(), BoxError> {
    let _fail = crash_on_panic();
    let env = Env::from_env()?;
    let (store, broker) = connect(&env, 4).await?;
    // In log capture the relay processes publish everything.
    let relay = (relay && !env.log)
        .then(|| Relay::new(store.clone(), broker, relay_config()).map(txmsg::Relay::start));
    let relay = relay.transpose()?;
    let mut outbox = Outbox::new(&store);
    if let Some(relay) = &relay {
        outbox = outbox.with_relay(relay);
    }
    let mut n = loop {
        match workload::resume_point(store.pool(), index, producers).await {
            Ok(n) => break n,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    println!("ready");
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while n < count {
        tokio::select! {
            _ = term.recv() => break,
            _ = tick.tick() => {}
        }
        match workload::place_and_commit(&outbox, n, producers, keys).await {
            Ok(_) | Err(txmsg::Error::Duplicate { .. }) => n += producers,
            Err(e) => {
                // Ambiguous (the commit may have happened): move on only if
                // the order is there.
                eprintln!("{}: order {n}: {e}", env.app);
                tokio::time::sleep(Duration::from_millis(100)).await;
                let there: Result<bool, _> =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM fault_orders WHERE n = $1)")
                        .bind(n)
                        .fetch_one(store.pool())
                        .await;
                if matches!(there, Ok(true)) {
                    n += producers;
                }
            }
        }
    }
    if let Some(relay) = relay {
        relay.shutdown().await;
    }
    // Only a producer that wrote everything is done; one stopped by SIGTERM
    // is started again.
    if n >= count {
        println!("done");
    }
    Ok(())
}

/// Relays until SIGTERM, then shuts down gracefully. In log capture,
/// reads the run's slot (or waits for it while another relay does).
pub(crate) async fn relay() -> Result<(), BoxError> {
    let _fail = crash_on_panic();
    let env = Env::from_env()?;
    let (store, broker) = connect(&env, 4).await?;
    if env.log {
        let config = env.log_relay_config()?;
        let relay = loop {
            match LogRelay::start(&store, &env.db, broker.clone(), config.clone()).await {
                Ok(relay) => break relay,
                Err(e) => {
                    eprintln!("{}: log relay not started yet: {e}", env.app);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        println!("ready");
        terminated().await?;
        relay.shutdown().await;
        return Ok(());
    }
    let relay = Relay::new(store, broker, relay_config())?.start();
    println!("ready");
    terminated().await?;
    relay.shutdown().await;
    Ok(())
}

/// Consumes for `group` until SIGTERM, printing its counts every 100 ms.
pub(crate) async fn consumer(group: String) -> Result<(), BoxError> {
    let _fail = crash_on_panic();
    let env = Env::from_env()?;
    let (store, broker) = connect(&env, 8).await?;
    let config = ConsumerConfig::new(group)
        .with_backoff_min(Duration::from_millis(50))
        .with_backoff_max(Duration::from_secs(1))
        .with_shutdown_timeout(Duration::from_secs(3));
    let consumer = loop {
        match Consumer::new(store.clone(), broker.clone(), config.clone())?
            .start()
            .await
        {
            Ok(consumer) => break consumer,
            Err(e) => {
                eprintln!("{}: consumer not started yet: {e}", env.app);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    println!("ready");
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tick.tick() => {
                let s = consumer.stats();
                println!("stats applied={} duplicates={} dead={} requeued={}",
                    s.applied, s.duplicates, s.dead, s.requeued);
            }
        }
    }
    consumer.shutdown().await;
    let s = consumer.stats();
    println!(
        "stats applied={} duplicates={} dead={} requeued={}",
        s.applied, s.duplicates, s.dead, s.requeued
    );
    Ok(())
}
