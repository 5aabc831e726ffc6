//! The write path (`producer`) and commit → broker-confirmed (`e2e`).
//!
//! Both sides insert one business row and one outbox row (no ordering key,
//! no expiry) in one transaction and commit. txmsg does it through a
//! `#[transactional_message]` function's `_and_commit` form; the baseline
//! with two prepared sqlx statements into an identically migrated schema.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use txmsg::postgres::Capture;
use txmsg::rabbitmq::RabbitBroker;
use txmsg::{Broker, Outbox, Relay, RelayConfig, Tx};

use crate::common::{
    Env, Lat, Paired, QueueDrain, Rabbit, Res, Schema, Side, TimedBroker, confirm_channel, lat,
    median, print_pair, print_together,
};

/// The event both sides write.
#[derive(Debug, Serialize)]
pub(crate) struct OrderPlaced {
    /// Order id.
    pub(crate) id: i64,
    /// Client that placed it.
    pub(crate) client: i32,
    /// Amount in cents.
    pub(crate) amount: i64,
}

/// Topic of the producer benchmarks.
pub(crate) const TOPIC: &str = "bench.orders";

/// The framework's producer: the business insert, and the message.
#[txmsg::transactional_message(topic = "bench.orders", idempotency_key = id)]
async fn place_order(
    tx: &mut Tx<'_, sqlx::Postgres>,
    id: i64,
    client: i32,
    amount: i64,
) -> Result<OrderPlaced, txmsg::Error> {
    sqlx::query(BUSINESS_INSERT)
        .bind(id)
        .bind(client)
        .bind(amount)
        .execute(&mut **tx)
        .await?;
    Ok(OrderPlaced { id, client, amount })
}

const BUSINESS_INSERT: &str =
    "INSERT INTO bench_orders (id, client, amount, created_at) VALUES ($1, $2, $3, now())";

/// The baseline's outbox insert: the same row txmsg writes, without lease.
pub(crate) const OUTBOX_INSERT: &str = "INSERT INTO txmsg_outbox \
    (id, topic, idempotency_key, payload, headers, state, attempts, next_attempt_at, created_at) \
    VALUES ($1, $2, $3, $4, '{}', 'pending', 0, $5, $5)";

/// The baseline's batched mark.
pub(crate) const MARK_SENT: &str = "UPDATE txmsg_outbox SET state = 'sent', sent_at = now() \
    WHERE id = ANY($1) AND state = 'pending'";

/// A row the baseline hands from the producer to its publisher.
#[derive(Debug)]
pub(crate) struct Committed {
    /// The outbox row's id, marked sent once confirmed.
    pub(crate) id: uuid::Uuid,
    /// The order id, also the message's idempotency key.
    pub(crate) seq: i64,
    /// The message body.
    pub(crate) payload: Vec<u8>,
}

/// Where the baseline's publisher records `(order id, instant of the
/// confirm)` of each message the broker confirmed.
pub(crate) type Confirms = Arc<Mutex<Vec<(u64, Instant)>>>;

/// Records that the broker confirmed `seq` now.
pub(crate) fn record_confirm(confirms: &Confirms, seq: i64) {
    let now = Instant::now();
    if let Ok(mut v) = confirms.lock() {
        v.push((u64::try_from(seq).unwrap_or(u64::MAX), now));
    }
}

/// The broker an e2e run publishes to: the framework's broker for txmsg,
/// a hand-written publisher on the broker's own client for the baseline.
pub(crate) trait E2eTarget {
    /// The framework's broker.
    type Broker: Broker + Clone + 'static;
    /// What the printed figures are called (`e2e`, `rocketmq e2e`).
    fn label(&self) -> &'static str;
    /// How its confirm is taken, for the printed method.
    fn method(&self) -> &'static str;
    /// The framework's broker.
    fn broker(&self) -> Self::Broker;
    /// Prepares a round; what it returns is stopped after the round.
    async fn start_round(&self, env: &Env) -> Res<Option<QueueDrain>>;
    /// The baseline's publisher: publishes each row `rx` yields with at most
    /// `env.window` awaiting a confirm, records each confirm in `confirms`
    /// and sends the confirmed row's id to `mark`; ends when `rx` ends and
    /// every confirm is in.
    async fn publisher(
        &self,
        env: &Env,
        rx: mpsc::UnboundedReceiver<Committed>,
        confirms: Confirms,
        mark: mpsc::UnboundedSender<uuid::Uuid>,
    ) -> Res<tokio::task::JoinHandle<Res<()>>>;
}

impl E2eTarget for Rabbit {
    type Broker = RabbitBroker;

    fn label(&self) -> &'static str {
        "e2e"
    }

    fn method(&self) -> &'static str {
        "commit returned to the producer -> publisher confirm received \
         (txmsg: recorded by a Broker wrapper around RabbitBroker; \
         baseline: recorded where its confirm future resolves)"
    }

    fn broker(&self) -> RabbitBroker {
        self.broker.clone()
    }

    async fn start_round(&self, env: &Env) -> Res<Option<QueueDrain>> {
        self.purge().await?;
        Ok(Some(QueueDrain::start(env, &self.queue).await?))
    }

    async fn publisher(
        &self,
        env: &Env,
        mut rx: mpsc::UnboundedReceiver<Committed>,
        confirms: Confirms,
        mark_tx: mpsc::UnboundedSender<uuid::Uuid>,
    ) -> Res<tokio::task::JoinHandle<Res<()>>> {
        let ch = confirm_channel(&self.conn, &self.exchange).await?;
        let window = Arc::new(Semaphore::new(env.window));
        let exchange = self.exchange.clone();
        Ok(tokio::spawn(async move {
            let mut waits = Vec::new();
            while let Some(row) = rx.recv().await {
                let permit = Arc::clone(&window).acquire_owned().await?;
                let confirm = ch
                    .basic_publish(
                        exchange.as_str().into(),
                        TOPIC.into(),
                        lapin::options::BasicPublishOptions::default(),
                        &row.payload,
                        crate::common::baseline_properties(&row.seq.to_string(), TOPIC),
                    )
                    .await?;
                let (confirms, mark_tx) = (Arc::clone(&confirms), mark_tx.clone());
                waits.push(tokio::spawn(async move {
                    let ok = matches!(confirm.await, Ok(lapin::Confirmation::Ack(_)));
                    drop(permit);
                    if ok {
                        record_confirm(&confirms, row.seq);
                        let _ = mark_tx.send(row.id);
                    }
                }));
                if waits.len() > 4096 {
                    waits.retain(|w: &tokio::task::JoinHandle<()>| !w.is_finished());
                }
            }
            for w in waits {
                w.await?;
            }
            let _ = ch.close(200, "done".into()).await;
            Res::Ok(())
        }))
    }
}

/// Hand-written insert + insert + commit; returns the outbox row.
async fn baseline_write(pool: &sqlx::PgPool, id: i64, client: i32, amount: i64) -> Res<Committed> {
    let payload = serde_json::to_vec(&OrderPlaced { id, client, amount })?;
    let row_id = uuid::Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query(BUSINESS_INSERT)
        .bind(id)
        .bind(client)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    sqlx::query(OUTBOX_INSERT)
        .bind(row_id)
        .bind(TOPIC)
        .bind(id.to_string())
        .bind(payload.as_slice())
        .bind(chrono::Utc::now())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Committed {
        id: row_id,
        seq: id,
        payload,
    })
}

/// The bare business transaction, no message: `BEGIN`, the business
/// insert, `COMMIT`. What a producer costs at the very least.
async fn bare_write(pool: &sqlx::PgPool, id: i64, client: i32, amount: i64) -> Res<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(BUSINESS_INSERT)
        .bind(id)
        .bind(client)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// `clients` closed-loop clients of the bare transaction until `deadline`;
/// how many transactions they committed.
async fn bare_round(
    clients: usize,
    pool: &sqlx::PgPool,
    next: &Arc<AtomicI64>,
    deadline: Instant,
) -> Res<usize> {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (pool, next) = (pool.clone(), Arc::clone(next));
        let client = i32::try_from(client)?;
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < deadline {
                let id = next.fetch_add(1, Ordering::Relaxed);
                bare_write(&pool, id, client, id % 10_000).await?;
                n += 1;
            }
            Res::Ok(n)
        }));
    }
    let mut all = 0;
    for t in tasks {
        all += t.await??;
    }
    Ok(all)
}

/// One round of `side`: `clients` closed-loop clients until `deadline`;
/// the latency of every transaction.
async fn producer_round(
    side: Side,
    clients: usize,
    outbox: &Outbox<sqlx::Postgres>,
    pool: &sqlx::PgPool,
    next: &Arc<AtomicI64>,
    deadline: Instant,
) -> Res<Vec<Duration>> {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (outbox, pool, next) = (outbox.clone(), pool.clone(), Arc::clone(next));
        let client = i32::try_from(client)?;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < deadline {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                match side {
                    Side::Framework => {
                        place_order_and_commit(&outbox, id, client, id % 10_000).await?;
                    }
                    Side::Baseline => {
                        baseline_write(&pool, id, client, id % 10_000).await?;
                    }
                }
                samples.push(t.elapsed());
            }
            Res::Ok(samples)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// Figures of one side of the producer mode.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ProducerSide {
    /// Transactions per second, per round.
    pub(crate) tps_rounds: Vec<f64>,
    /// Median of the rounds.
    pub(crate) tps: f64,
    /// Latency of one transaction over all rounds.
    pub(crate) latency: Lat,
    /// CPU time of the benchmark process (clients, pool, driver) per
    /// transaction, microseconds, over all rounds.
    pub(crate) client_cpu_us_per_tx: f64,
}

/// Result of the producer mode.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ProducerResult {
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// txmsg, alternating rounds.
    pub(crate) txmsg: ProducerSide,
    /// Hand-written, alternating rounds.
    pub(crate) baseline: ProducerSide,
    /// txmsg / baseline throughput over the alternating rounds, paired by
    /// round.
    pub(crate) alternating: Paired,
    /// txmsg / baseline transactions in rounds that run both sides at once
    /// (half of the clients each), paired by round.
    pub(crate) together: Paired,
    /// The ratio reported: the alternating one.
    pub(crate) ratio: f64,
    /// txmsg / the bare business transaction (no message), both at once
    /// (half of the clients each), paired by round: how close the producer
    /// comes to the physical limit.
    pub(crate) txmsg_vs_bare: Paired,
    /// The hand-written outbox / the bare business transaction, the same
    /// way, in rounds of their own.
    pub(crate) baseline_vs_bare: Paired,
    /// txmsg with the store in log capture / the bare business
    /// transaction, the same way.
    pub(crate) log_vs_bare: Paired,
}

/// `producer`: the write path only (no relay).
///
/// Two measurements. Alternating rounds (ABBA pairs) run one side at a time
/// with every client, as the target is stated. Rounds of both sides at
/// once, half of the clients each, compare them under the very same
/// conditions: a side whose transaction costs more (client or database)
/// gets fewer of them done, whatever the machine's speed at that moment.
pub(crate) async fn producer(env: &Env) -> Res<ProducerResult> {
    let conns = u32::try_from(env.clients)?;
    let fw = Schema::create(env, "pf", conns).await?;
    let bl = Schema::create(env, "pb", conns).await?;
    let bare = Schema::create(env, "pz", conns).await?;
    let outbox = Outbox::new(&fw.store);
    let next = Arc::new(AtomicI64::new(1));
    let run = |side: Side, clients: usize, deadline: Instant| {
        producer_round(side, clients, &outbox, &bl.pool, &next, deadline)
    };
    // The tables are emptied once, not between rounds: a `TRUNCATE` and the
    // `VACUUM` after it leave I/O that spills into the next round. Both
    // sides' tables grow alike, round after round.
    fw.truncate().await?;
    bl.truncate().await?;
    bare.truncate().await?;
    // One unrecorded second per side first, so that no side's first round
    // pays for cold caches.
    for side in [Side::Framework, Side::Baseline] {
        if env.only.is_none_or(|only| only == side) {
            run(side, env.clients, Instant::now() + Duration::from_secs(1)).await?;
        }
    }
    let mut lats: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut tps: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut cpu = [Duration::ZERO; 2];
    for (round, side) in Side::schedule(env, env.producer_rounds) {
        let cpu_before = crate::common::process_cpu();
        let start = Instant::now();
        let samples = run(side, env.clients, start + env.producer_round).await?;
        let rate = samples.len() as f64 / start.elapsed().as_secs_f64();
        let i = usize::from(side == Side::Baseline);
        cpu[i] += crate::common::process_cpu().saturating_sub(cpu_before);
        lats[i].extend(samples);
        println!(
            "  producer round {} {}: {rate:.1} tx/s",
            round + 1,
            side.label()
        );
        tps[i].push(rate);
    }
    let mut together: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    if env.only.is_none() {
        let half = (env.clients / 2).max(1);
        for round in 0..env.producer_rounds {
            let start = Instant::now();
            let deadline = start + env.producer_round;
            let (f, b) = tokio::join!(
                run(Side::Framework, half, deadline),
                run(Side::Baseline, half, deadline)
            );
            let secs = start.elapsed().as_secs_f64();
            let (f, b) = (f?.len() as f64 / secs, b?.len() as f64 / secs);
            println!(
                "  producer round {} at once ({half} clients each): txmsg {f:.1} tx/s, \
                 baseline {b:.1} tx/s",
                round + 1
            );
            together[0].push(f);
            together[1].push(b);
        }
    }
    // Each side beside the bare transaction, at once: [txmsg, bare,
    // baseline, bare, txmsg in log capture, bare].
    let log = Schema::create(env, "pl", conns).await?;
    log.truncate().await?;
    let log_outbox = Outbox::new(&log.store.clone().with_capture(Capture::log("bench")?));
    let mut beside: [Vec<f64>; 6] = Default::default();
    if env.only.is_none() {
        let half = (env.clients / 2).max(1);
        for round in 0..env.producer_rounds {
            for (i, side, label) in [
                (0, Side::Framework, "txmsg"),
                (2, Side::Baseline, "baseline"),
                (4, Side::Framework, "txmsg log"),
            ] {
                let start = Instant::now();
                let deadline = start + env.producer_round;
                let outbox = if i == 4 { &log_outbox } else { &outbox };
                let (s, z) = tokio::join!(
                    producer_round(side, half, outbox, &bl.pool, &next, deadline),
                    bare_round(half, &bare.pool, &next, deadline)
                );
                let secs = start.elapsed().as_secs_f64();
                let (s, z) = (s?.len() as f64 / secs, z? as f64 / secs);
                println!(
                    "  producer round {} beside bare ({half} clients each): {label} {s:.1} tx/s, \
                     bare {z:.1} tx/s",
                    round + 1,
                );
                beside[i].push(s);
                beside[i + 1].push(z);
            }
        }
    }
    fw.drop().await?;
    bl.drop().await?;
    bare.drop().await?;
    log.drop().await?;
    let txmsg_vs_bare = Paired::of(&beside[0], &beside[1]);
    let baseline_vs_bare = Paired::of(&beside[2], &beside[3]);
    let log_vs_bare = Paired::of(&beside[4], &beside[5]);
    let [mut lf, mut lb] = lats;
    let [tf, tb] = tps;
    let alternating = Paired::of(&tf, &tb);
    let together = Paired::of(&together[0], &together[1]);
    let per_tx = |cpu: Duration, n: usize| cpu.as_secs_f64() * 1e6 / n.max(1) as f64;
    let txmsg = ProducerSide {
        tps: median(&tf),
        tps_rounds: tf,
        client_cpu_us_per_tx: per_tx(cpu[0], lf.len()),
        latency: lat(&mut lf),
    };
    let baseline = ProducerSide {
        tps: median(&tb),
        tps_rounds: tb,
        client_cpu_us_per_tx: per_tx(cpu[1], lb.len()),
        latency: lat(&mut lb),
    };
    print_pair(
        &format!("producer ({} clients) throughput", env.clients),
        "tx/s",
        txmsg.tps,
        baseline.tps,
        &alternating,
    );
    print_together(
        &format!(
            "producer, both sides at once ({} clients each)",
            (env.clients / 2).max(1)
        ),
        &together,
    );
    for (side, paired) in [
        ("txmsg", &txmsg_vs_bare),
        ("baseline", &baseline_vs_bare),
        ("txmsg in log capture", &log_vs_bare),
    ] {
        print_together(
            &format!(
                "producer {side} / bare transaction, at once ({} clients each)",
                (env.clients / 2).max(1)
            ),
            paired,
        );
    }
    println!(
        "producer latency: txmsg p50 {:.3} ms p99 {:.3} ms | baseline p50 {:.3} ms p99 {:.3} ms",
        txmsg.latency.p50_ms,
        txmsg.latency.p99_ms,
        baseline.latency.p50_ms,
        baseline.latency.p99_ms
    );
    println!(
        "producer benchmark-process CPU per transaction: txmsg {:.1} us | baseline {:.1} us",
        txmsg.client_cpu_us_per_tx, baseline.client_cpu_us_per_tx
    );
    Ok(ProducerResult {
        clients: env.clients,
        txmsg,
        baseline,
        ratio: alternating.ratio,
        alternating,
        together,
        txmsg_vs_bare,
        baseline_vs_bare,
        log_vs_bare,
    })
}

/// Figures of one side of the e2e mode.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct E2eSide {
    /// Peak confirmed messages per second, per round.
    pub(crate) peak_rounds: Vec<f64>,
    /// Median peak.
    pub(crate) peak: f64,
    /// Latency at peak.
    pub(crate) peak_latency: Lat,
    /// Confirmed messages per second at the offered half-peak load, per round.
    pub(crate) half_rounds: Vec<f64>,
    /// Median of those.
    pub(crate) half: f64,
    /// Commit → confirm latency at half of peak.
    pub(crate) half_latency: Lat,
    /// Every commit → confirm latency at half of peak, in ms (for the plot).
    #[serde(skip)]
    pub(crate) half_samples_ms: Vec<f64>,
}

/// Result of the e2e mode.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct E2eResult {
    /// How latency is measured.
    pub(crate) method: String,
    /// Offered load of the half-peak rounds, msgs/s.
    pub(crate) offered: f64,
    /// txmsg.
    pub(crate) txmsg: E2eSide,
    /// Hand-written.
    pub(crate) baseline: E2eSide,
    /// txmsg / baseline peak throughput over the alternating rounds, paired
    /// by round.
    pub(crate) peak: Paired,
    /// txmsg / baseline peak throughput in rounds that run both pipelines at
    /// once (half of the clients each, an exchange and queue each).
    pub(crate) peak_together: Paired,
    /// The ratio reported: the paired peak ratio.
    pub(crate) ratio: f64,
}

/// One timed e2e round: returns (confirmed msgs/s, commit → confirm samples).
async fn e2e_round<T: E2eTarget>(
    env: &Env,
    side: Side,
    clients: usize,
    schema: &Schema,
    target: &T,
    rate: Option<f64>,
    next: &Arc<AtomicI64>,
) -> Res<(f64, Vec<Duration>)> {
    schema.truncate().await?;
    let drain = target.start_round(env).await?;
    let timed = TimedBroker::new(target.broker());
    let baseline_confirms: Confirms = Arc::default();
    let mut relay = None;
    let mut log_relay = None;
    let mut pipeline = None;
    let outbox = match side {
        Side::Framework if env.log_capture => {
            let store = schema.log_store()?;
            let config = schema.log_config(env.window)?;
            let handle =
                txmsg::postgres::LogRelay::start(&store, &env.db_url, timed.clone(), config)
                    .await?;
            // The round starts once the relay streams, as an in-process
            // relay does at once.
            // A slot read again starts from where its restart position
            // is, and the server decodes the WAL written since (the other
            // side's rounds included) before it sends anything new: the
            // round starts once the relay has caught up with the WAL as
            // it is now, as a relay that runs all along would be.
            let now: i64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0')::int8")
                .fetch_one(&schema.pool)
                .await?;
            let now = u64::try_from(now)?;
            let ready = Instant::now() + Duration::from_secs(60);
            while !(handle.is_reading() && handle.confirmed_lsn() >= now) && Instant::now() < ready
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if !handle.is_reading() || handle.confirmed_lsn() < now {
                return Err("the log relay did not catch up with its slot within 60 s".into());
            }
            log_relay = Some(handle);
            Outbox::new(&store)
        }
        Side::Framework => {
            let handle =
                Relay::new(schema.store.clone(), timed.clone(), RelayConfig::default())?.start();
            let o = Outbox::new(&schema.store).with_relay(&handle);
            relay = Some(handle);
            o
        }
        Side::Baseline => {
            pipeline =
                Some(baseline_pipeline(env, schema, target, Arc::clone(&baseline_confirms)).await?);
            Outbox::new(&schema.store)
        }
    };
    let start = Instant::now();
    let deadline = start + env.round;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (outbox, pool, next) = (outbox.clone(), schema.pool.clone(), Arc::clone(next));
        let to_publisher = pipeline.as_ref().map(|p: &Pipeline| p.tx.clone());
        let client = i32::try_from(client)?;
        let per_client = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
        tasks.push(tokio::spawn(async move {
            let mut commits = Vec::new();
            let mut tick = per_client.map(tokio::time::interval);
            loop {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                if Instant::now() >= deadline {
                    break;
                }
                let id = next.fetch_add(1, Ordering::Relaxed);
                match &to_publisher {
                    None => {
                        place_order_and_commit(&outbox, id, client, id % 10_000).await?;
                        commits.push((id, Instant::now()));
                    }
                    Some(p) => {
                        let row = baseline_write(&pool, id, client, id % 10_000).await?;
                        let now = Instant::now();
                        commits.push((id, now));
                        p.send(row).map_err(|_| "publisher stopped")?;
                    }
                }
            }
            Res::Ok(commits)
        }));
    }
    let mut commits: HashMap<u64, Instant> = HashMap::new();
    for t in tasks {
        for (id, at) in t.await?? {
            commits.insert(u64::try_from(id)?, at);
        }
    }
    let count = || match side {
        Side::Framework => timed.count(),
        Side::Baseline => baseline_confirms
            .lock()
            .map(|v| v.len())
            .unwrap_or_default(),
    };
    let wait_until = Instant::now() + Duration::from_secs(60);
    while count() < commits.len() && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let confirms = match side {
        Side::Framework => timed.take(),
        Side::Baseline => baseline_confirms
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default(),
    };
    if let Some(r) = relay {
        r.shutdown().await;
    }
    if let Some(r) = log_relay {
        r.shutdown().await;
    }
    if let Some(p) = pipeline {
        p.finish().await?;
    }
    if let Some(drain) = drain {
        drain.stop().await?;
    }
    if confirms.len() < commits.len() {
        return Err(format!(
            "{}: only {} of {} messages confirmed within 60 s",
            side.label(),
            confirms.len(),
            commits.len()
        )
        .into());
    }
    let last = confirms.iter().map(|c| c.1).max().unwrap_or(start);
    let span = match rate {
        // Offered load: what was confirmed over the round.
        Some(_) => env.round.max(last - start),
        None => last - start,
    };
    let samples: Vec<Duration> = confirms
        .iter()
        .filter_map(|(seq, at)| commits.get(seq).map(|c| at.saturating_duration_since(*c)))
        .collect();
    Ok((confirms.len() as f64 / span.as_secs_f64(), samples))
}

/// The hand-written relay: producers send committed rows over a channel; one
/// task ([`E2eTarget::publisher`]) publishes them with at most `window`
/// awaiting a confirm; confirmed ids are marked sent in batches (up to 512 ids or
/// 5 ms), as txmsg's default marks are.
#[derive(Debug)]
struct Pipeline {
    tx: mpsc::UnboundedSender<Committed>,
    publisher: tokio::task::JoinHandle<Res<()>>,
    marker: tokio::task::JoinHandle<Res<()>>,
}

impl Pipeline {
    async fn finish(self) -> Res<()> {
        drop(self.tx);
        self.publisher.await??;
        self.marker.await??;
        Ok(())
    }
}

async fn baseline_pipeline<T: E2eTarget>(
    env: &Env,
    schema: &Schema,
    target: &T,
    confirms: Confirms,
) -> Res<Pipeline> {
    let (tx, rx) = mpsc::unbounded_channel::<Committed>();
    let (mark_tx, mark_rx) = mpsc::unbounded_channel::<uuid::Uuid>();
    let publisher = target.publisher(env, rx, confirms, mark_tx).await?;
    let marker = tokio::spawn(mark_loop(schema.pool.clone(), mark_rx));
    Ok(Pipeline {
        tx,
        publisher,
        marker,
    })
}

/// Marks confirmed ids sent, up to 512 per statement, waiting at most 5 ms
/// to fill a batch.
pub(crate) async fn mark_loop(
    pool: sqlx::PgPool,
    mut rx: mpsc::UnboundedReceiver<uuid::Uuid>,
) -> Res<()> {
    let mut batch = Vec::with_capacity(512);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let until = tokio::time::Instant::now() + Duration::from_millis(5);
        while batch.len() < 512 {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(id)) => batch.push(id),
                Ok(None) | Err(_) => break,
            }
        }
        sqlx::query(MARK_SENT).bind(&batch).execute(&pool).await?;
        batch.clear();
    }
    Ok(())
}

/// `e2e` on RabbitMQ: peak first, then half of the lower peak.
pub(crate) async fn e2e(env: &Env) -> Res<E2eResult> {
    let rabbit = Rabbit::create(env, "e2e").await?;
    let other = match env.only {
        None => Some(Rabbit::create(env, "e2e-b").await?),
        Some(_) => None,
    };
    let out = e2e_on(env, &rabbit, other.as_ref()).await?;
    if let Some(other) = other {
        other.cleanup(&[]).await?;
    }
    rabbit.cleanup(&[]).await?;
    Ok(out)
}

/// `e2e` on `target`: peak first (alternating, then at once with `other`
/// taking the baseline's messages), then half of the lower peak.
pub(crate) async fn e2e_on<T: E2eTarget>(
    env: &Env,
    target: &T,
    other: Option<&T>,
) -> Res<E2eResult> {
    // Producers plus the relay's and the marker's connections.
    let conns = u32::try_from(env.clients + 4)?;
    let fw = Schema::create(env, "ef", conns).await?;
    let bl = Schema::create(env, "eb", conns).await?;
    let next = Arc::new(AtomicI64::new(1));
    let mut out = E2eResult {
        method: target.method().into(),
        ..E2eResult::default()
    };
    let mut peak_lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for (round, side) in Side::schedule(env, env.rounds) {
        let schema = if side == Side::Framework { &fw } else { &bl };
        let (rate, mut s) = e2e_round(env, side, env.clients, schema, target, None, &next).await?;
        let l = lat(&mut s);
        println!(
            "  {} peak round {} {}: {rate:.1} msg/s, p50 {:.3} ms p99 {:.3} ms",
            target.label(),
            round + 1,
            side.label(),
            l.p50_ms,
            l.p99_ms
        );
        let (target, i) = match side {
            Side::Framework => (&mut out.txmsg, 0),
            Side::Baseline => (&mut out.baseline, 1),
        };
        target.peak_rounds.push(rate);
        peak_lat[i].extend(s);
    }
    if let Some(other) = other {
        let half = (env.clients / 2).max(1);
        let (mut f, mut b) = (Vec::new(), Vec::new());
        for round in 0..env.rounds {
            let (fr, br) = tokio::join!(
                e2e_round(env, Side::Framework, half, &fw, target, None, &next),
                e2e_round(env, Side::Baseline, half, &bl, other, None, &next)
            );
            let (fr, br) = (fr?.0, br?.0);
            println!(
                "  {} peak round {} at once ({half} clients each): txmsg {fr:.1} msg/s, \
                 baseline {br:.1} msg/s",
                target.label(),
                round + 1
            );
            f.push(fr);
            b.push(br);
        }
        out.peak_together = Paired::of(&f, &b);
    }
    out.txmsg.peak = median(&out.txmsg.peak_rounds);
    out.baseline.peak = median(&out.baseline.peak_rounds);
    let [mut a, mut b] = peak_lat;
    out.txmsg.peak_latency = lat(&mut a);
    out.baseline.peak_latency = lat(&mut b);
    out.offered = out.txmsg.peak.min(out.baseline.peak) / 2.0;
    let mut half_lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for (round, side) in Side::schedule(env, env.rounds) {
        let schema = if side == Side::Framework { &fw } else { &bl };
        let (rate, mut s) = e2e_round(
            env,
            side,
            env.clients,
            schema,
            target,
            Some(out.offered),
            &next,
        )
        .await?;
        let l = lat(&mut s);
        println!(
            "  {} half-peak round {} {}: {rate:.1} msg/s, p50 {:.3} ms p99 {:.3} ms",
            target.label(),
            round + 1,
            side.label(),
            l.p50_ms,
            l.p99_ms
        );
        let (target, i) = match side {
            Side::Framework => (&mut out.txmsg, 0),
            Side::Baseline => (&mut out.baseline, 1),
        };
        target.half_rounds.push(rate);
        half_lat[i].extend(s);
    }
    if env.log_capture {
        fw.drop_log_slot().await?;
    }
    fw.drop().await?;
    bl.drop().await?;
    out.txmsg.half = median(&out.txmsg.half_rounds);
    out.baseline.half = median(&out.baseline.half_rounds);
    let [mut a, mut b] = half_lat;
    out.txmsg.half_latency = lat(&mut a);
    out.baseline.half_latency = lat(&mut b);
    out.txmsg.half_samples_ms = a.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    out.baseline.half_samples_ms = b.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    println!("{} latency: {}", target.label(), out.method);
    out.peak = Paired::of(&out.txmsg.peak_rounds, &out.baseline.peak_rounds);
    out.ratio = out.peak.ratio;
    print_pair(
        &format!("{} peak throughput", target.label()),
        "msg/s",
        out.txmsg.peak,
        out.baseline.peak,
        &out.peak,
    );
    print_together(
        &format!(
            "{} peak, both pipelines at once ({} clients each)",
            target.label(),
            (env.clients / 2).max(1)
        ),
        &out.peak_together,
    );
    println!(
        "{} at half of peak ({:.1} msg/s offered): txmsg {:.1} msg/s p50 {:.3} ms p99 {:.3} ms | \
         baseline {:.1} msg/s p50 {:.3} ms p99 {:.3} ms",
        target.label(),
        out.offered,
        out.txmsg.half,
        out.txmsg.half_latency.p50_ms,
        out.txmsg.half_latency.p99_ms,
        out.baseline.half,
        out.baseline.half_latency.p50_ms,
        out.baseline.half_latency.p99_ms,
    );
    Ok(out)
}

/// Publishes `body` `n` times with confirms, at most `window` unconfirmed:
/// the raw lapin rate the drain mode compares against.
pub(crate) async fn raw_publish(
    ch: &lapin::Channel,
    exchange: &str,
    n: usize,
    window: usize,
    body: &[u8],
) -> Res<()> {
    use futures_util::StreamExt;
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for i in 0..n {
        if pending.len() >= window
            && let Some(r) = pending.next().await
        {
            r?;
        }
        let confirm = ch
            .basic_publish(
                exchange.into(),
                TOPIC.into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                crate::common::baseline_properties(&i.to_string(), TOPIC),
            )
            .await?;
        pending.push(async move {
            match confirm.await? {
                lapin::Confirmation::Ack(_) => Res::Ok(()),
                other => Err(format!("not acknowledged: {other:?}").into()),
            }
        });
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}
