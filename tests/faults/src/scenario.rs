//! A run: set up, start the processes, inject the scenario's faults while
//! the producers write, let everything settle, count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;
use txmsg::Tables;
use txmsg::consumer::SubscribeSpec;
use txmsg::postgres::{LogRelay, PgStore};
use txmsg::prelude::*;
use txmsg::rabbitmq::{RabbitBroker, RabbitConfig};
use txmsg_testkit::proxy::{TcpProxy, url_target, url_via};

use crate::child::{self, Env};
use crate::fleet::{Fleet, Role};
use crate::workload::{self, GroupCount, ORDERED, SHARED, TOPIC};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The faults of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Kind {
    /// SIGKILL and SIGTERM of random processes at random moments, and
    /// crashes at fail points (after insert before commit, after commit
    /// before publish, before publish, after publish before mark, after
    /// handler commit before ack).
    Crash,
    /// RabbitMQ connections cut, paused and slowed by a TCP proxy, and
    /// RabbitMQ itself stopped and started (`rabbitmqctl stop_app` /
    /// `start_app`).
    Broker,
    /// The processes' PostgreSQL connections terminated
    /// (`pg_terminate_backend`), and PostgreSQL unreachable for a while.
    Database,
    /// Many relay processes on one store and no fast path: every message
    /// goes through the relays' claims; with `--kills`, relays are killed.
    Relays,
    /// Log capture: producers write each message to the WAL
    /// (`Capture::log`), relay processes read one replication slot (one
    /// reads, the others wait). The relay reading the slot is SIGKILLed
    /// `--kills` times (the time until another one publishes is the
    /// takeover), then PostgreSQL itself is restarted (unless
    /// `--no-restart`).
    Log,
}

/// What a run is asked to do.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// Which faults.
    #[arg(value_enum)]
    pub(crate) kind: Kind,
    /// Orders to write.
    #[arg(long, default_value_t = 300)]
    pub(crate) messages: i64,
    /// Producer processes.
    #[arg(long, default_value_t = 2)]
    pub(crate) producers: i64,
    /// Ordering keys per producer.
    #[arg(long, default_value_t = 8)]
    pub(crate) keys: i64,
    /// Relay processes (besides the producers' own fast path).
    #[arg(long, default_value_t = 2)]
    pub(crate) relays: usize,
    /// How long the producers take to write everything, in seconds (0: as
    /// fast as they can).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// Processes killed by the harness (crash and relays runs).
    #[arg(long, default_value_t = 6)]
    pub(crate) kills: u32,
    /// Crash probability, in percent, at each fail point passed (crash runs).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) crash_percent: f64,
    /// Longest wait for everything to settle after the faults, in seconds.
    #[arg(long, default_value_t = 120)]
    pub(crate) settle_seconds: u64,
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub(crate) db: String,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub(crate) amqp: String,
    /// Broker runs: skip stopping RabbitMQ itself; log runs: skip
    /// restarting PostgreSQL (for runs beside other users of the same
    /// server).
    #[arg(long)]
    pub(crate) no_restart: bool,
    /// The command that restarts PostgreSQL (log runs); by default
    /// `pg_ctlcluster` on the machine's cluster, as root.
    #[arg(
        long,
        env = "FAULTS_PG_RESTART",
        default_value = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main restart"
    )]
    pub(crate) pg_restart: String,
    /// Print the children's stderr.
    #[arg(long)]
    pub(crate) verbose: bool,
    /// Keep the schema and the RabbitMQ objects afterwards.
    #[arg(long)]
    pub(crate) keep: bool,
}

/// How long a SIGTERM may take before it counts as a failed drain.
const DRAIN_DEADLINE: Duration = Duration::from_secs(8);

/// The figures of a run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    scenario: String,
    messages: i64,
    committed: i64,
    seconds: f64,
    harness_sigkills: u32,
    harness_sigterms: u32,
    exits: std::collections::BTreeMap<String, u32>,
    fail_point_crashes: std::collections::BTreeMap<String, u32>,
    process_lives: u32,
    published_at_least_once: i64,
    published_twice: i64,
    not_published: i64,
    duplicates_delivered_to_consumers: u64,
    groups: Vec<(String, GroupCount)>,
    outbox_pending: i64,
    outbox_dead: i64,
    consumer_dead: i64,
    longest_drain_ms: Option<u128>,
    drains_over_deadline: u32,
    faults: Vec<String>,
    resume_ms: Vec<(String, u128)>,
    failures: Vec<String>,
}

impl Report {
    /// Whether every count holds.
    pub(crate) fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn judge(&mut self, expect_no_publish_duplicates: bool) {
        let mut f = Vec::new();
        if self.committed != self.messages {
            f.push(format!(
                "{} orders committed, {} expected",
                self.committed, self.messages
            ));
        }
        if self.not_published != 0 {
            f.push(format!(
                "{} committed orders never reached the broker",
                self.not_published
            ));
        }
        if expect_no_publish_duplicates && self.published_twice != 0 {
            f.push(format!("{} messages published twice", self.published_twice));
        }
        for (group, c) in &self.groups {
            if c.lost != 0 {
                f.push(format!("{group}: {} lost", c.lost));
            }
            if c.applied_twice != 0 {
                f.push(format!("{group}: {} applied twice", c.applied_twice));
            }
            if c.phantom != 0 {
                f.push(format!(
                    "{group}: {} effects without a committed order",
                    c.phantom
                ));
            }
            if group == ORDERED && c.keys_out_of_order != 0 {
                f.push(format!(
                    "{group}: {} keys out of order",
                    c.keys_out_of_order
                ));
            }
        }
        if self.outbox_pending != 0 || self.outbox_dead != 0 {
            f.push(format!(
                "outbox: {} pending, {} dead after settling",
                self.outbox_pending, self.outbox_dead
            ));
        }
        if self.consumer_dead != 0 {
            f.push(format!("{} consumer dead letters", self.consumer_dead));
        }
        if self.drains_over_deadline != 0 {
            f.push(format!(
                "{} SIGTERM drains took longer than {DRAIN_DEADLINE:?}",
                self.drains_over_deadline
            ));
        }
        self.failures.extend(f);
    }

    /// Prints the figures, one per line, then the verdict.
    pub(crate) fn print(&self) {
        println!("scenario                 {}", self.scenario);
        println!(
            "orders committed         {} of {}",
            self.committed, self.messages
        );
        println!("run time                 {:.1} s", self.seconds);
        println!("harness SIGKILLs         {}", self.harness_sigkills);
        println!("harness SIGTERMs         {}", self.harness_sigterms);
        for (kind, n) in &self.exits {
            println!("process exits: {kind:<10} {n}");
        }
        for (point, n) in &self.fail_point_crashes {
            println!("crash at fail point      {point}: {n}");
        }
        println!("process lives            {}", self.process_lives);
        println!("published (distinct)     {}", self.published_at_least_once);
        println!("published twice          {}", self.published_twice);
        println!("never published          {}", self.not_published);
        println!(
            "redeliveries recognised  {} (inbox duplicates reported by consumers; lower bound)",
            self.duplicates_delivered_to_consumers
        );
        for (group, c) in &self.groups {
            let order_note = if group == SHARED {
                " (two competing consumers: order not promised)"
            } else {
                ""
            };
            println!(
                "group {group:<8}           effects {} distinct {} applied twice {} lost {} phantom {} keys out of order {}{order_note}",
                c.effects, c.distinct, c.applied_twice, c.lost, c.phantom, c.keys_out_of_order
            );
        }
        println!(
            "outbox after settling    pending {} dead {}",
            self.outbox_pending, self.outbox_dead
        );
        println!("consumer dead letters    {}", self.consumer_dead);
        if let Some(ms) = self.longest_drain_ms {
            println!("longest SIGTERM drain    {ms} ms (deadline {DRAIN_DEADLINE:?})");
        }
        for fault in &self.faults {
            println!("fault                    {fault}");
        }
        for (what, ms) in &self.resume_ms {
            println!("resumed after {what:<20} {ms} ms");
        }
        if let Ok(json) = serde_json::to_string(self) {
            println!("json {json}");
        }
        if self.passed() {
            println!("RESULT PASS");
        } else {
            for f in &self.failures {
                println!("FAIL: {f}");
            }
            println!("RESULT FAIL");
        }
    }
}

/// Every message the broker delivered to the harness's own group, by
/// idempotency key: (first deliveries, any deliveries).
#[derive(Default)]
struct Tally {
    seen: HashMap<String, (u32, u32)>,
    subscribed: bool,
}

/// Reads the harness's own group for the whole run, subscribing again when
/// the broker drops the subscription, and counts what arrives.
fn spawn_tally(broker: RabbitBroker, tally: Arc<Mutex<Tally>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let spec = SubscribeSpec {
            group: "tally".to_owned(),
            topic: TOPIC.to_owned(),
            prefetch: 1_000,
        };
        loop {
            let Ok(mut sub) = broker.subscribe(&spec).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            tally
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .subscribed = true;
            while let Some(delivery) = sub.next().await {
                if let Ok(envelope) = &delivery.message {
                    let mut t = tally
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let entry = t.seen.entry(envelope.idempotency_key.clone()).or_default();
                    if !delivery.redelivered {
                        entry.0 += 1;
                    }
                    entry.1 += 1;
                }
                let _ = delivery.ack().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn tally_distinct(tally: &Mutex<Tally>) -> i64 {
    let t = tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    i64::try_from(t.seen.len()).unwrap_or(i64::MAX)
}

/// The host:port `url` points at (its scheme's default port if it names none).
fn host_port(url: &str, default_port: u16) -> Result<String, BoxError> {
    url_target(url, default_port).ok_or_else(|| "a URL without scheme or host".into())
}

/// `url` with its host:port replaced by `addr`.
fn via(url: &str, addr: std::net::SocketAddr) -> Result<String, BoxError> {
    url_via(url, addr).ok_or_else(|| "a URL without scheme or host".into())
}

/// Runs one scenario and returns its figures.
pub(crate) async fn run(opts: Options) -> Result<Report, BoxError> {
    let started = Instant::now();
    let id = uuid::Uuid::now_v7().simple().to_string();
    let schema = format!("txmsg_f_{}", &id[id.len() - 12..]);
    let exchange = format!("txmsg.faults.{}", &id[id.len() - 12..]);

    // The harness's own connections go straight to the services.
    let admin = child::pool(&opts.db, &schema, "txmsg-faults-harness", 4).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await?;
    let store = PgStore::new(admin.clone(), Tables::default().with_schema(&schema)?)?;
    store.migrate().await?;
    workload::create_schema(&admin).await?;
    let rabbit = RabbitBroker::connect(
        &opts.amqp,
        RabbitConfig::default().with_exchange(&exchange)?,
    )
    .await?;

    let pg_proxy = if opts.kind == Kind::Database {
        Some(TcpProxy::start(host_port(&opts.db, 5432)?).await)
    } else {
        None
    };
    let amqp_proxy = if opts.kind == Kind::Broker {
        Some(TcpProxy::start(host_port(&opts.amqp, 5672)?).await)
    } else {
        None
    };
    let env = Env {
        db: match &pg_proxy {
            Some(p) => via(&opts.db, p.addr())?,
            None => opts.db.clone(),
        },
        schema: schema.clone(),
        amqp: match &amqp_proxy {
            Some(p) => via(&opts.amqp, p.addr())?,
            None => opts.amqp.clone(),
        },
        exchange: exchange.clone(),
        app: String::new(),
        log: opts.kind == Kind::Log,
    };
    // The slot must exist before the producers write: records written
    // before it are not in it.
    if env.log {
        let config = env.log_relay_config()?;
        LogRelay::create_slot(&store, &config).await?;
    }

    let tally = Arc::new(Mutex::new(Tally::default()));
    let tally_task = spawn_tally(rabbit.clone(), Arc::clone(&tally));

    let mut report = Report {
        scenario: format!("{:?}", opts.kind).to_lowercase(),
        messages: opts.messages,
        ..Report::default()
    };
    let crash = opts.kind == Kind::Crash;
    let pct = opts.crash_percent;
    let fp = |points: &[&str]| -> Option<String> {
        crash.then(|| {
            points
                .iter()
                .map(|p| format!("{p}={pct}%panic"))
                .collect::<Vec<_>>()
                .join(";")
        })
    };
    let producer_fp = fp(&[
        "txmsg::before_commit",
        "txmsg::after_commit_before_handoff",
        "txmsg::relay::before_publish",
        "txmsg::relay::after_publish_before_mark",
    ]);
    let relay_fp = fp(&[
        "txmsg::relay::before_publish",
        "txmsg::relay::after_publish_before_mark",
    ]);
    let consumer_fp = fp(&["txmsg::consumer::after_commit_before_ack"]);

    let mut fleet = Fleet::new(&env, opts.verbose)?;
    let with_consumers = opts.kind != Kind::Relays;
    if with_consumers {
        fleet.add(Role::Consumer(ORDERED, 0), consumer_fp.clone())?;
        fleet.add(Role::Consumer(SHARED, 0), consumer_fp.clone())?;
        fleet.add(Role::Consumer(SHARED, 1), consumer_fp.clone())?;
    }
    // The groups' queues exist once their consumers run; the tally's once
    // its subscription does.
    if !fleet.wait_ready(Duration::from_secs(30)).await {
        return Err("the consumers did not start within 30 s".into());
    }
    let subscribed = || {
        tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .subscribed
    };
    if !wait_until(Duration::from_secs(10), || std::future::ready(subscribed())).await {
        return Err("the harness could not subscribe its tally group within 10 s".into());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..opts.relays {
        fleet.add(Role::Relay(i), relay_fp.clone())?;
    }
    let per_producer = (opts.messages as f64 / opts.producers as f64).max(1.0);
    // Resumption is seen as new messages flowing: the producers must still
    // write after the last broker or database fault (about 25 s in).
    let seconds = match opts.kind {
        Kind::Broker => opts.seconds.max(30.0),
        Kind::Database => opts.seconds.max(20.0),
        Kind::Crash | Kind::Relays => opts.seconds,
        // Kills, then the restart, each followed by new messages.
        Kind::Log => opts.seconds.max(5.0 * f64::from(opts.kills) + 15.0),
    };
    let interval = if seconds > 0.0 {
        Duration::from_secs_f64(seconds / per_producer)
    } else {
        Duration::from_micros(1)
    };
    for index in 0..opts.producers {
        fleet.add(
            Role::Producer {
                index,
                producers: opts.producers,
                keys: opts.keys,
                count: opts.messages,
                interval,
                fast_path: opts.kind != Kind::Relays,
            },
            producer_fp.clone(),
        )?;
    }

    // The faults, while the producers write.
    let faults = Faults {
        opts: &opts,
        schema: &schema,
        admin: &admin,
        pg_proxy: pg_proxy.as_ref(),
        amqp_proxy: amqp_proxy.as_ref(),
        tally: &tally,
    };
    faults.inject(&mut fleet, &mut report).await?;

    // Settle: stop everything (each SIGTERM timed), then a clean relay and
    // clean consumers finish what is left.
    let limit = Duration::from_secs(opts.settle_seconds);
    let deadline = Instant::now() + limit;
    while !fleet.producers_done() && Instant::now() < deadline {
        fleet.reap()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain = fleet.stop_all(DRAIN_DEADLINE).await;
    report.longest_drain_ms = drain.map(|d| d.as_millis());
    let (_, dups) = fleet.consumer_totals();
    report.duplicates_delivered_to_consumers += dups;
    report.exits = fleet.exits.clone();
    report.fail_point_crashes = fleet
        .crashes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    report.process_lives = fleet.lives();
    if let Some(p) = &pg_proxy {
        p.set_up();
    }
    if let Some(p) = &amqp_proxy {
        p.set_up();
        p.resume();
        p.set_delay(Duration::ZERO);
    }
    let mut calm = Fleet::new(&env, opts.verbose)?;
    calm.add(Role::Relay(99), None)?;
    if with_consumers {
        calm.add(Role::Consumer(ORDERED, 99), None)?;
        calm.add(Role::Consumer(SHARED, 99), None)?;
    }
    let committed = workload::committed(&admin).await?;
    let groups: &[&str] = if with_consumers {
        &[ORDERED, SHARED]
    } else {
        &[]
    };
    loop {
        calm.reap()?;
        let (pending, _, _) = workload::outbox_states(&admin).await?;
        let mut settled = pending == 0 && tally_distinct(&tally) >= committed;
        for group in groups {
            settled &= workload::effects(&admin, group).await? >= committed;
        }
        if settled || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Redeliveries still on their way would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if calm.stop_all(DRAIN_DEADLINE).await.is_none() {
        report.drains_over_deadline += 1;
    }
    let (_, dups) = calm.consumer_totals();
    report.duplicates_delivered_to_consumers += dups;
    tally_task.abort();

    // Count.
    report.committed = workload::committed(&admin).await?;
    let committed_keys: Vec<i64> = sqlx::query_scalar("SELECT n FROM fault_orders")
        .fetch_all(&admin)
        .await?;
    {
        let t = tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        report.published_at_least_once = i64::try_from(t.seen.len()).unwrap_or(i64::MAX);
        report.not_published = committed_keys
            .iter()
            .filter(|n| !t.seen.contains_key(&format!("order-{n}")))
            .count() as i64;
        report.published_twice = t
            .seen
            .values()
            .map(|(first, _)| i64::from(first.saturating_sub(1)))
            .sum();
    }
    for group in groups {
        report.groups.push((
            (*group).to_owned(),
            workload::count_group(&admin, group).await?,
        ));
    }
    let (pending, _, dead) = workload::outbox_states(&admin).await?;
    report.outbox_pending = pending;
    report.outbox_dead = dead;
    report.consumer_dead = workload::consumer_dead(&admin).await?;
    report.seconds = started.elapsed().as_secs_f64();
    // Duplicates at the broker are allowed (at least once) except where
    // nothing fails: relays sharing a store must not publish a row twice.
    report.judge(opts.kind == Kind::Relays && opts.kills == 0);

    if !opts.keep {
        if env.log {
            drop_slot(&admin, &schema).await;
        }
        cleanup(&admin, &schema, &rabbit, &opts.amqp, &exchange).await;
    }
    Ok(report)
}

async fn wait_until<F, Fut>(limit: Duration, mut ok: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Drops the run's schema, queues and exchange.
pub(crate) async fn cleanup(
    admin: &PgPool,
    schema: &str,
    rabbit: &RabbitBroker,
    amqp: &str,
    exchange: &str,
) {
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(admin)
    .await;
    for group in [ORDERED, SHARED, "tally"] {
        let _ = rabbit.delete_group_queue(group, TOPIC).await;
    }
    if let Ok(conn) = lapin::Connection::connect(amqp, lapin::ConnectionProperties::default()).await
        && let Ok(channel) = conn.create_channel().await
    {
        let _ = channel
            .exchange_delete(
                exchange.into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = conn.close(200, "done".into()).await;
    }
}

/// The faults of a scenario.
struct Faults<'a> {
    opts: &'a Options,
    schema: &'a str,
    admin: &'a PgPool,
    pg_proxy: Option<&'a TcpProxy>,
    amqp_proxy: Option<&'a TcpProxy>,
    tally: &'a Mutex<Tally>,
}

impl Faults<'_> {
    async fn inject(&self, fleet: &mut Fleet, report: &mut Report) -> Result<(), BoxError> {
        match self.opts.kind {
            Kind::Crash | Kind::Relays => self.kills(fleet, report).await,
            Kind::Broker => self.broker(fleet, report).await,
            Kind::Database => self.database(fleet, report).await,
            Kind::Log => self.log(fleet, report).await,
        }
    }

    /// Log capture: the relay reading the slot SIGKILLed, `kills` times,
    /// each time timed until another relay publishes (the takeover); then
    /// PostgreSQL restarted.
    async fn log(&self, fleet: &mut Fleet, report: &mut Report) -> Result<(), BoxError> {
        let step = Duration::from_secs(2);
        for _ in 0..self.opts.kills {
            self.pass(fleet, step).await?;
            let Some((pid, name)) = slot_reader(self.admin, self.schema).await? else {
                report
                    .failures
                    .push("no relay was reading the slot when one was to be killed".into());
                continue;
            };
            let victim = fleet
                .running(|r| matches!(r, Role::Relay(_)))
                .into_iter()
                .find(|&i| format!("txmsg-faults-{}", fleet.role(i).name()) == name);
            let Some(victim) = victim else {
                report.failures.push(format!(
                    "the slot's reader {name} is not a relay of the run"
                ));
                continue;
            };
            report.harness_sigkills += 1;
            let killed = Instant::now();
            fleet.sigkill(victim);
            report
                .faults
                .push(format!("SIGKILL {name} (reading the slot)"));
            // The takeover: until another session reads the slot.
            loop {
                if let Some((now, _)) = slot_reader(self.admin, self.schema).await?
                    && now != pid
                {
                    report.resume_ms.push((
                        "slot reader SIGKILL (slot taken over)".into(),
                        killed.elapsed().as_millis(),
                    ));
                    break;
                }
                if killed.elapsed() > Duration::from_secs(60) {
                    report
                        .failures
                        .push("no relay read the slot within 60 s of a kill".into());
                    break;
                }
                fleet.reap()?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.resumed(fleet, "slot reader SIGKILL", report).await?;
        }
        if self.opts.no_restart {
            return Ok(());
        }
        self.pass(fleet, step).await?;
        report.faults.push("PostgreSQL restarted".into());
        let out = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&self.opts.pg_restart)
            .output()
            .await
            .map_err(|e| format!("{}: {e}", self.opts.pg_restart))?;
        if !out.status.success() {
            return Err(format!(
                "restarting PostgreSQL failed ({}): {}",
                self.opts.pg_restart,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        self.resumed(fleet, "PostgreSQL restart", report).await?;
        Ok(())
    }

    /// Sleeps `d` while restarting children that died.
    async fn pass(&self, fleet: &mut Fleet, d: Duration) -> Result<(), BoxError> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            fleet.reap()?;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    /// Kills random processes at random moments, spread over the writing.
    async fn kills(&self, fleet: &mut Fleet, report: &mut Report) -> Result<(), BoxError> {
        let seconds = if self.opts.seconds > 0.0 {
            self.opts.seconds
        } else {
            // Unpaced: spread the kills over a few seconds.
            5.0
        };
        let gap = seconds / f64::from(self.opts.kills + 1);
        let relays_only = self.opts.kind == Kind::Relays;
        for k in 0..self.opts.kills {
            if relays_only {
                // Relays are killed at points of progress, so that each kill
                // lands while they are busy: after 1/(kills+1), 2/(kills+1),
                // ... of the messages reached the broker.
                let due = self.opts.messages * i64::from(k + 1) / i64::from(self.opts.kills + 1);
                let limit = Instant::now() + Duration::from_secs(60);
                while tally_distinct(self.tally) < due && Instant::now() < limit {
                    self.pass(fleet, Duration::from_millis(5)).await?;
                }
            } else {
                let jitter = gap * (0.5 + fastrand::f64());
                self.pass(fleet, Duration::from_secs_f64(jitter)).await?;
            }
            let candidates = fleet.running(|r| !relays_only || matches!(r, Role::Relay(_)));
            let Some(&victim) = candidates.get(fastrand::usize(..candidates.len().max(1))) else {
                continue;
            };
            let name = fleet.role(victim).name();
            // One in four is a graceful stop, timed.
            if !relays_only && fastrand::u8(..4) == 0 {
                report.harness_sigterms += 1;
                match fleet.sigterm(victim, DRAIN_DEADLINE).await {
                    Some(took) => {
                        let ms = took.as_millis();
                        report.longest_drain_ms =
                            Some(report.longest_drain_ms.unwrap_or(0).max(ms));
                        report
                            .faults
                            .push(format!("SIGTERM {name}: exited in {ms} ms"));
                    }
                    None => {
                        report.drains_over_deadline += 1;
                        report.faults.push(format!(
                            "SIGTERM {name}: still running after {DRAIN_DEADLINE:?}, killed"
                        ));
                    }
                }
            } else {
                report.harness_sigkills += 1;
                fleet.sigkill(victim);
                report.faults.push(format!("SIGKILL {name}"));
            }
        }
        Ok(())
    }

    /// How long until publishing and consuming move again after a fault
    /// ended: the tally (what reached the broker) and the ordered group's
    /// effects grow.
    async fn resumed(
        &self,
        fleet: &mut Fleet,
        what: &str,
        report: &mut Report,
    ) -> Result<(), BoxError> {
        let start = Instant::now();
        let published = tally_distinct(self.tally);
        let applied = workload::effects(self.admin, ORDERED).await?;
        let (mut publish_ms, mut consume_ms) = (None, None);
        while publish_ms.is_none() || consume_ms.is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                report.failures.push(format!(
                    "after {what}: publishing {} and consuming {} within 60 s",
                    if publish_ms.is_some() {
                        "resumed"
                    } else {
                        "did not resume"
                    },
                    if consume_ms.is_some() {
                        "resumed"
                    } else {
                        "did not resume"
                    },
                ));
                return Ok(());
            }
            if publish_ms.is_none() && tally_distinct(self.tally) > published {
                publish_ms = Some(start.elapsed().as_millis());
            }
            if consume_ms.is_none() && workload::effects(self.admin, ORDERED).await? > applied {
                consume_ms = Some(start.elapsed().as_millis());
            }
            fleet.reap()?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (p, c) = (publish_ms.unwrap_or(0), consume_ms.unwrap_or(0));
        report.resume_ms.push((format!("{what} (publish)"), p));
        report.resume_ms.push((format!("{what} (consume)"), c));
        Ok(())
    }

    async fn broker(&self, fleet: &mut Fleet, report: &mut Report) -> Result<(), BoxError> {
        let Some(proxy) = self.amqp_proxy else {
            return Err("broker faults need the AMQP proxy".into());
        };
        let step = Duration::from_secs(2);
        self.pass(fleet, step).await?;
        report
            .faults
            .push("AMQP connections dropped, refused for 2 s".into());
        proxy.set_down();
        self.pass(fleet, Duration::from_secs(2)).await?;
        proxy.set_up();
        self.resumed(fleet, "drop", report).await?;

        self.pass(fleet, step).await?;
        report.faults.push("AMQP traffic paused for 3 s".into());
        proxy.pause();
        self.pass(fleet, Duration::from_secs(3)).await?;
        proxy.resume();
        self.resumed(fleet, "pause", report).await?;

        self.pass(fleet, step).await?;
        report
            .faults
            .push("AMQP traffic slowed by 100 ms per chunk for 3 s".into());
        proxy.set_delay(Duration::from_millis(100));
        self.pass(fleet, Duration::from_secs(3)).await?;
        proxy.set_delay(Duration::ZERO);
        self.resumed(fleet, "slowdown", report).await?;

        if self.opts.no_restart {
            return Ok(());
        }
        self.pass(fleet, step).await?;
        report
            .faults
            .push("RabbitMQ stopped (rabbitmqctl stop_app) for 3 s".into());
        rabbitmqctl("stop_app").await?;
        self.pass(fleet, Duration::from_secs(3)).await?;
        rabbitmqctl("start_app").await?;
        self.resumed(fleet, "restart", report).await?;
        Ok(())
    }

    async fn database(&self, fleet: &mut Fleet, report: &mut Report) -> Result<(), BoxError> {
        let Some(proxy) = self.pg_proxy else {
            return Err("database faults need the PostgreSQL proxy".into());
        };
        let step = Duration::from_secs(2);
        for (what, label, pattern) in [
            (
                "relays and consumers",
                "terminate relays",
                "txmsg-faults-relay%|txmsg-faults-consumer%",
            ),
            ("producers", "terminate producers", "txmsg-faults-producer%"),
        ] {
            self.pass(fleet, step).await?;
            let killed = terminate(self.admin, pattern).await?;
            report.faults.push(format!(
                "pg_terminate_backend on {killed} connections of the {what}"
            ));
            self.resumed(fleet, label, report).await?;
        }
        self.pass(fleet, step).await?;
        report.faults.push("PostgreSQL unreachable for 5 s".into());
        proxy.set_down();
        self.pass(fleet, Duration::from_secs(5)).await?;
        proxy.set_up();
        self.resumed(fleet, "outage", report).await?;
        Ok(())
    }
}

/// The server process and application name of the session reading the
/// run's slot, if any.
async fn slot_reader(admin: &PgPool, slot: &str) -> Result<Option<(i32, String)>, BoxError> {
    let name = sqlx::query_as(
        "SELECT s.active_pid, a.application_name FROM pg_replication_slots s
           JOIN pg_stat_activity a ON a.pid = s.active_pid
          WHERE s.slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(admin)
    .await?;
    Ok(name)
}

/// Drops the run's slot and publication (named after its schema), waiting
/// for the last reader to let go of the slot.
async fn drop_slot(admin: &PgPool, schema: &str) {
    for _ in 0..50 {
        let dropped = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE slot_name = $1 AND NOT active",
        )
        .bind(schema)
        .execute(admin)
        .await;
        let left: Result<bool, _> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        )
        .bind(schema)
        .fetch_one(admin)
        .await;
        if dropped.is_ok() && matches!(left, Ok(false)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP PUBLICATION IF EXISTS \"{schema}\""
    )))
    .execute(admin)
    .await;
}

/// Terminates the backends whose application name matches one of the
/// `|`-separated LIKE patterns; returns how many.
async fn terminate(admin: &PgPool, patterns: &str) -> Result<i64, BoxError> {
    let mut total = 0;
    for pattern in patterns.split('|') {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name LIKE $1 AND pid <> pg_backend_pid()) t",
        )
        .bind(pattern)
        .fetch_one(admin)
        .await?;
        total += n;
    }
    Ok(total)
}

async fn rabbitmqctl(action: &str) -> Result<(), BoxError> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .arg(action)
        .output()
        .await
        .map_err(|e| format!("rabbitmqctl {action}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rabbitmqctl {action} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}
