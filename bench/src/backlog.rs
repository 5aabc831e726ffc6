//! Backlogs: the relay draining pending rows (`drain`), its peak memory
//! (`memory`), and the consumer side (`consumer`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use txmsg::consumer::{Consumer, ConsumerConfig, ConsumerHandle};
use txmsg::postgres::PgStore;
use txmsg::rabbitmq::{RabbitBroker, RabbitConfig};
use txmsg::{Broker, Envelope, Relay, RelayConfig, Tx};

use crate::common::{
    Env, Paired, QueueDrain, Rabbit, Res, Schema, Side, TimedBroker, confirm_channel,
    declare_queue, median, print_pair, print_together,
};
use crate::producer::{OrderPlaced, TOPIC, raw_publish};

/// Inserts `n` pending, unleased outbox rows (ids in write order), as
/// producers whose process died would have left them.
pub(crate) async fn insert_backlog(schema: &Schema, n: usize) -> Res<()> {
    const BATCH: usize = 10_000;
    let mut done = 0usize;
    while done < n {
        let take = BATCH.min(n - done);
        let ids: Vec<uuid::Uuid> = (0..take).map(|_| uuid::Uuid::now_v7()).collect();
        sqlx::query(
            "INSERT INTO txmsg_outbox (id, topic, idempotency_key, payload, headers, state, \
             attempts, next_attempt_at, created_at) \
             SELECT u.id, $1, ($2 + u.n)::text, \
             convert_to(format('{\"id\":%s,\"client\":0,\"amount\":%s}', $2 + u.n, ($2 + u.n) % 10000), 'UTF8'), \
             '{}', 'pending', 0, now(), now() \
             FROM UNNEST($3::uuid[]) WITH ORDINALITY AS u(id, n)",
        )
        .bind(TOPIC)
        .bind(i64::try_from(done)?)
        .bind(&ids)
        .execute(&schema.pool)
        .await?;
        done += take;
    }
    sqlx::raw_sql("VACUUM ANALYZE txmsg_outbox")
        .execute(&schema.pool)
        .await?;
    Ok(())
}

/// Waits until `broker` confirmed `n` publishes and no row is pending;
/// returns false on timeout.
async fn wait_drained<B>(
    schema: &Schema,
    broker: &TimedBroker<B>,
    n: usize,
    limit: Duration,
) -> Res<bool> {
    let until = Instant::now() + limit;
    while broker.count() < n {
        if Instant::now() > until {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    while schema.pending().await? > 0 {
        if Instant::now() > until {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(true)
}

/// Starts a relay over `broker` on the backlog of `rows` rows in `schema`;
/// rows sent per second until every one is confirmed and marked sent.
pub(crate) async fn relay_drain_rate<B: Broker + Clone + 'static>(
    schema: &Schema,
    broker: B,
    rows: usize,
    config: &RelayConfig,
) -> Res<f64> {
    let timed = TimedBroker::counting(broker);
    let start = Instant::now();
    let relay = Relay::new(schema.store.clone(), timed.clone(), config.clone())?.start();
    let ok = wait_drained(schema, &timed, rows, Duration::from_secs(900)).await?;
    let elapsed = start.elapsed();
    relay.shutdown().await;
    if !ok {
        return Err("the relay did not drain the backlog within 900 s".into());
    }
    Ok(rows as f64 / elapsed.as_secs_f64())
}

/// Log capture: writes `env.drain_rows` messages to the WAL (1 000 per
/// transaction) with a fresh slot and no relay, then times a `LogRelay`
/// from its start until the broker confirmed them all.
async fn log_drain_rate(env: &Env, schema: &Schema, broker: RabbitBroker) -> Res<f64> {
    use txmsg::postgres::LogRelay;
    let store = schema.log_store()?;
    let config = schema.log_config(env.window)?;
    schema.drop_log_slot().await?;
    LogRelay::create_slot(&store, &config).await?;
    let outbox = txmsg::Outbox::new(&store);
    let mut written = 0usize;
    while written < env.drain_rows {
        let take = 1_000.min(env.drain_rows - written);
        let mut tx = outbox.begin().await?;
        for i in written..written + take {
            let id = i64::try_from(i)?;
            let order = OrderPlaced {
                id,
                client: 0,
                amount: id % 10_000,
            };
            tx.enqueue(txmsg::Message::new(TOPIC, &order)?).await?;
        }
        tx.commit().await?;
        written += take;
    }
    let timed = TimedBroker::counting(broker);
    let start = Instant::now();
    let relay = LogRelay::start(&store, &env.db_url, timed.clone(), config).await?;
    let limit = start + Duration::from_secs(900);
    while timed.count() < env.drain_rows && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    relay.shutdown().await;
    schema.drop_log_slot().await?;
    if timed.count() < env.drain_rows {
        return Err("the log relay did not drain the backlog within 900 s".into());
    }
    Ok(env.drain_rows as f64 / elapsed.as_secs_f64())
}

/// Result of the drain mode.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct DrainResult {
    /// Rows (and raw messages) per round.
    pub(crate) rows: usize,
    /// Publishes awaiting a confirm at once, both sides.
    pub(crate) window: usize,
    /// txmsg relay, rows sent per second (confirmed and marked), per round.
    pub(crate) txmsg_rounds: Vec<f64>,
    /// Raw lapin publishes confirmed per second, per round.
    pub(crate) baseline_rounds: Vec<f64>,
    /// Median txmsg rate.
    pub(crate) txmsg: f64,
    /// Median raw rate.
    pub(crate) baseline: f64,
    /// txmsg / raw, paired by round.
    pub(crate) paired: Paired,
    /// The ratio reported: the paired one.
    pub(crate) ratio: f64,
    /// Diagnostic, not a baseline: raw lapin publishing in stop-and-wait
    /// batches of the relay's claim size (publish a batch, wait for every
    /// confirm, then the next), msgs/s.
    pub(crate) raw_batched_stop_and_wait: f64,
}

impl DrainResult {
    /// No rounds yet, of `env`'s rows and window.
    pub(crate) fn of(env: &Env) -> Self {
        DrainResult {
            rows: env.drain_rows,
            window: env.window,
            ..DrainResult::default()
        }
    }

    /// Computes the medians and the paired ratio of the rounds, and prints
    /// them as `what`.
    pub(crate) fn finish(&mut self, what: &str) {
        self.txmsg = median(&self.txmsg_rounds);
        self.baseline = median(&self.baseline_rounds);
        self.paired = Paired::of(&self.txmsg_rounds, &self.baseline_rounds);
        self.ratio = self.paired.ratio;
        print_pair(what, "msg/s", self.txmsg, self.baseline, &self.paired);
    }
}

/// The body of every raw publish of the drain modes: the JSON of one order,
/// of the same shape as the backlog's rows.
pub(crate) fn raw_body() -> Res<Vec<u8>> {
    Ok(serde_json::to_vec(&OrderPlaced {
        id: 123_456,
        client: 0,
        amount: 3456,
    })?)
}

/// `drain`: the relay started after `rows` pending rows vs raw publishes.
pub(crate) async fn drain(env: &Env) -> Res<DrainResult> {
    let schema = Schema::create(env, "d", 8).await?;
    let rabbit = Rabbit::create(env, "drain").await?;
    let body = raw_body()?;
    let config = RelayConfig::default().with_max_in_flight(env.window);
    let mut out = DrainResult::of(env);
    for (round, side) in Side::schedule(env, env.rounds) {
        rabbit.purge().await?;
        if side == Side::Framework && !env.log_capture {
            schema.truncate().await?;
            insert_backlog(&schema, env.drain_rows).await?;
        }
        let consumer = QueueDrain::start(env, &rabbit.queue).await?;
        let rate = match side {
            Side::Framework if env.log_capture => {
                log_drain_rate(env, &schema, rabbit.broker.clone()).await?
            }
            Side::Framework => {
                relay_drain_rate(&schema, rabbit.broker.clone(), env.drain_rows, &config).await?
            }
            Side::Baseline => {
                let ch = confirm_channel(&rabbit.conn, &rabbit.exchange).await?;
                let start = Instant::now();
                raw_publish(&ch, &rabbit.exchange, env.drain_rows, env.window, &body).await?;
                let elapsed = start.elapsed();
                let _ = ch.close(200, "done".into()).await;
                env.drain_rows as f64 / elapsed.as_secs_f64()
            }
        };
        consumer.stop().await?;
        println!(
            "  drain round {} {}: {rate:.1} msg/s",
            round + 1,
            side.label()
        );
        match side {
            Side::Framework => out.txmsg_rounds.push(rate),
            Side::Baseline => out.baseline_rounds.push(rate),
        }
    }
    let batch = usize::try_from(config.batch_size())?;
    let ch = confirm_channel(&rabbit.conn, &rabbit.exchange).await?;
    rabbit.purge().await?;
    let start = Instant::now();
    let mut left = env.drain_rows;
    while left > 0 {
        let n = left.min(batch);
        raw_publish(&ch, &rabbit.exchange, n, env.window, &body).await?;
        left -= n;
    }
    out.raw_batched_stop_and_wait = env.drain_rows as f64 / start.elapsed().as_secs_f64();
    let _ = ch.close(200, "done".into()).await;
    println!(
        "  drain diagnostic: raw lapin in stop-and-wait batches of {batch}: {:.1} msg/s",
        out.raw_batched_stop_and_wait
    );
    schema.drop().await?;
    rabbit.cleanup(&[]).await?;
    let what = if env.log_capture {
        "messages in the WAL (txmsg log relay)"
    } else {
        "rows (txmsg relay)"
    };
    out.finish(&format!(
        "drain of {} {what} vs {} raw lapin publishes, window {}",
        env.drain_rows, env.drain_rows, env.window
    ));
    Ok(out)
}

/// What the consumer benchmarks handle.
#[derive(Debug, Serialize, Deserialize)]
struct Work {
    id: i64,
    client: i32,
    amount: i64,
}

/// Topic the framework's handler reads.
const CONSUME_TOPIC: &str = "bench.consume";
/// Topic the baseline's queue reads.
const CONSUME_BL_TOPIC: &str = "bench.consume-baseline";
/// Handler calls at once, both sides (txmsg's default).
const CONSUME_CONCURRENCY: usize = 16;
/// Unacknowledged deliveries, both sides (txmsg's default).
const PREFETCH: u16 = 64;

const EFFECT_INSERT: &str = "INSERT INTO bench_effects (n, grp) VALUES ($1, 'bench')";

/// The framework's idempotent consumer: one effect row per message.
#[txmsg::message_handler(topic = "bench.consume", group = "bench")]
async fn consume_order(tx: &mut Tx<'_, sqlx::Postgres>, work: Work) -> Result<(), txmsg::Error> {
    sqlx::query(EFFECT_INSERT)
        .bind(work.id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Result of the consumer mode.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ConsumerResult {
    /// Messages per round.
    pub(crate) messages: usize,
    /// txmsg, msgs/s per round.
    pub(crate) txmsg_rounds: Vec<f64>,
    /// Hand-written, msgs/s per round.
    pub(crate) baseline_rounds: Vec<f64>,
    /// Median txmsg rate.
    pub(crate) txmsg: f64,
    /// Median hand-written rate.
    pub(crate) baseline: f64,
    /// txmsg / baseline, paired by round.
    pub(crate) paired: Paired,
    /// txmsg / baseline in rounds that run both consumers at once.
    pub(crate) together: Paired,
    /// The ratio reported: the paired one.
    pub(crate) ratio: f64,
}

/// Publishes `n` messages to `topic` in the framework's wire format.
async fn fill(broker: &RabbitBroker, topic: &str, n: usize, window: usize) -> Res<()> {
    let topic = topic.to_owned();
    let mut results = futures_util::stream::iter(0..n)
        .map(|i| {
            let broker = broker.clone();
            let topic = topic.clone();
            async move {
                let id = i64::try_from(i)?;
                let payload = serde_json::to_vec(&Work {
                    id,
                    client: 0,
                    amount: id % 10_000,
                })?;
                let env = Envelope::new(
                    uuid::Uuid::now_v7(),
                    topic,
                    format!("c-{}", uuid::Uuid::now_v7()),
                    payload,
                    chrono::Utc::now(),
                );
                broker.publish(&env).await?;
                Res::Ok(())
            }
        })
        .buffer_unordered(window);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

/// `consumer`: a backlog of messages in the group's queue, consumed by
/// txmsg's runtime or by a hand-written lapin + sqlx loop.
pub(crate) async fn consumer(env: &Env) -> Res<ConsumerResult> {
    let conns = u32::try_from(CONSUME_CONCURRENCY + 2)?;
    let fw = Schema::create(env, "cf", conns).await?;
    let bl = Schema::create(env, "cb", conns).await?;
    let rabbit = Rabbit::create(env, "consume").await?;
    let fw_queue = rabbit.broker.queue_name("bench", CONSUME_TOPIC)?;
    rabbit.broker.bind_queue(&fw_queue, CONSUME_TOPIC).await?;
    let bl_queue = format!("{}.baseline", rabbit.exchange);
    declare_queue(&rabbit.conn, &rabbit.exchange, &bl_queue, CONSUME_BL_TOPIC).await?;
    let n = env.consume_msgs;
    let mut out = ConsumerResult {
        messages: n,
        ..ConsumerResult::default()
    };
    for (round, side) in Side::schedule(env, env.rounds) {
        let schema = if side == Side::Framework { &fw } else { &bl };
        schema.truncate().await?;
        let topic = match side {
            Side::Framework => CONSUME_TOPIC,
            Side::Baseline => CONSUME_BL_TOPIC,
        };
        fill(&rabbit.broker, topic, n, env.window).await?;
        rabbit.purge().await?;
        let start = Instant::now();
        let elapsed = match side {
            Side::Framework => {
                let handle = start_consumer(&fw, rabbit.broker.clone()).await?;
                finish_consumer(handle, n).await?;
                start.elapsed()
            }
            Side::Baseline => {
                baseline_consume(&rabbit, &bl.pool, &bl_queue, n, Arc::default()).await?
            }
        };
        let rate = n as f64 / elapsed.as_secs_f64();
        println!(
            "  consumer round {} {}: {rate:.1} msg/s",
            round + 1,
            side.label()
        );
        match side {
            Side::Framework => out.txmsg_rounds.push(rate),
            Side::Baseline => out.baseline_rounds.push(rate),
        }
    }
    if env.only.is_none() {
        let (mut f, mut b) = (Vec::new(), Vec::new());
        for round in 0..env.rounds {
            let (fr, br) = consume_together(env, &rabbit, &fw, &bl, &bl_queue, n).await?;
            println!(
                "  consumer round {} at once: txmsg {fr:.1} msg/s, baseline {br:.1} msg/s",
                round + 1
            );
            f.push(fr);
            b.push(br);
        }
        out.together = Paired::of(&f, &b);
    }
    fw.drop().await?;
    bl.drop().await?;
    rabbit.cleanup(&[fw_queue, bl_queue]).await?;
    out.txmsg = median(&out.txmsg_rounds);
    out.baseline = median(&out.baseline_rounds);
    out.paired = Paired::of(&out.txmsg_rounds, &out.baseline_rounds);
    out.ratio = out.paired.ratio;
    print_pair(
        &format!("consumer ({n} messages)"),
        "msg/s",
        out.txmsg,
        out.baseline,
        &out.paired,
    );
    print_together("consumer, both sides at once", &out.together);
    Ok(out)
}

/// One round of both consumers at once, each on a queue of `n` messages of
/// its own: their rates while both are running.
async fn consume_together(
    env: &Env,
    rabbit: &Rabbit,
    fw: &Schema,
    bl: &Schema,
    bl_queue: &str,
    n: usize,
) -> Res<(f64, f64)> {
    fw.truncate().await?;
    bl.truncate().await?;
    fill(&rabbit.broker, CONSUME_TOPIC, n, env.window).await?;
    fill(&rabbit.broker, CONSUME_BL_TOPIC, n, env.window).await?;
    rabbit.purge().await?;
    let handle = start_consumer(fw, rabbit.broker.clone()).await?;
    let bl_applied = Arc::new(AtomicU64::new(0));
    let baseline = baseline_consume(rabbit, &bl.pool, bl_queue, n, Arc::clone(&bl_applied));
    let counts = || (handle.stats().applied, bl_applied.load(Ordering::SeqCst));
    let sample = async {
        // From when both have applied a tenth of their messages (both are
        // up and running) until either has applied nine tenths.
        let (low, high) = ((n as u64) / 10, (n as u64) * 9 / 10);
        let mut from = (Instant::now(), 0, 0);
        let mut started = false;
        let until = Instant::now() + Duration::from_secs(600);
        loop {
            let (f, b) = counts();
            if !started && f >= low && b >= low {
                from = (Instant::now(), f, b);
                started = true;
            }
            if f >= high || b >= high || Instant::now() > until {
                let secs = from.0.elapsed().as_secs_f64().max(1e-6);
                return (
                    f.saturating_sub(from.1) as f64 / secs,
                    b.saturating_sub(from.2) as f64 / secs,
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let (baseline, rates) = tokio::join!(baseline, sample);
    baseline?;
    finish_consumer(handle, n).await?;
    Ok(rates)
}

/// Starts txmsg's consumer runtime for the benchmark's group on `fw`.
async fn start_consumer(fw: &Schema, broker: RabbitBroker) -> Res<ConsumerHandle<PgStore>> {
    let config = ConsumerConfig::new("bench")
        .with_prefetch(PREFETCH)
        .with_concurrency(CONSUME_CONCURRENCY);
    Ok(Consumer::new(fw.store.clone(), broker, config)?
        .start()
        .await?)
}

/// Waits until `handle` applied `n` messages (at most 600 s), then stops it.
async fn finish_consumer(handle: ConsumerHandle<PgStore>, n: usize) -> Res<()> {
    let until = Instant::now() + Duration::from_secs(600);
    while handle.stats().applied < n as u64 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let applied = handle.stats().applied;
    handle.shutdown().await;
    if applied < n as u64 {
        return Err(format!("txmsg consumer applied {applied} of {n}").into());
    }
    Ok(())
}

/// The hand-written idempotent consumer: per delivery, in a task (at most
/// 16 at once): inbox insert `ON CONFLICT DO NOTHING`, the effect when the
/// key was new, commit, ack. Returns the time until `n` were applied.
async fn baseline_consume(
    rabbit: &Rabbit,
    pool: &sqlx::PgPool,
    queue: &str,
    n: usize,
    applied: Arc<AtomicU64>,
) -> Res<Duration> {
    let start = Instant::now();
    let ch = rabbit.conn.create_channel().await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let mut deliveries = ch
        .basic_consume(
            queue.into(),
            format!("baseline-{}", crate::common::unique())
                .as_str()
                .into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await?;
    let limit = Arc::new(Semaphore::new(CONSUME_CONCURRENCY));
    let target = n as u64;
    let mut tasks = tokio::task::JoinSet::new();
    while applied.load(Ordering::SeqCst) < target {
        // A failed delivery ends the run at once with its error, rather than
        // leaving the loop waiting for deliveries that will never be acked.
        let next = tokio::select! {
            d = deliveries.next() => d,
            Some(joined) = tasks.join_next() => {
                joined??;
                continue;
            }
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        let permit = Arc::clone(&limit).acquire_owned().await?;
        let (pool, counter) = (pool.clone(), Arc::clone(&applied));
        tasks.spawn(async move {
            let key = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .ok_or("no message id")?;
            let topic = delivery.routing_key.to_string();
            let work: Work = serde_json::from_slice(&delivery.data)?;
            let mut tx = pool.begin().await?;
            let fresh = sqlx::query(
                "INSERT INTO txmsg_inbox (consumer_group, topic, idempotency_key, processed_at) \
                 VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (consumer_group, topic, idempotency_key) DO NOTHING",
            )
            .bind("bench")
            .bind(&topic)
            .bind(&key)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if fresh {
                sqlx::query(EFFECT_INSERT)
                    .bind(work.id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            delivery.ack(BasicAckOptions::default()).await?;
            drop(permit);
            counter.fetch_add(1, Ordering::SeqCst);
            Res::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let elapsed = start.elapsed();
    let _ = ch.close(200, "done".into()).await;
    if applied.load(Ordering::SeqCst) < target {
        return Err("baseline consumer stopped early".into());
    }
    Ok(elapsed)
}

/// Result of the memory mode.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct MemoryResult {
    /// Small backlog, rows.
    pub(crate) small_rows: usize,
    /// Large backlog, rows.
    pub(crate) large_rows: usize,
    /// Peak RSS (VmHWM) of the relay process draining the small backlog, KiB.
    pub(crate) small_kib: u64,
    /// Same for the large backlog, KiB.
    pub(crate) large_kib: u64,
    /// large / small.
    pub(crate) ratio: f64,
}

/// `memory`: runs a relay in a child process per backlog size and reads
/// its VmHWM.
pub(crate) async fn memory(env: &Env) -> Res<MemoryResult> {
    let (small, large) = env.memory_rows;
    let mut kib = Vec::new();
    for rows in [small, large] {
        let schema = Schema::create(env, "m", 2).await?;
        let rabbit = Rabbit::create(env, "mem").await?;
        insert_backlog(&schema, rows).await?;
        let exe = std::env::current_exe()?;
        let output = tokio::process::Command::new(exe)
            .arg("--database-url")
            .arg(&env.db_url)
            .arg("--amqp-url")
            .arg(&env.amqp_url)
            .arg("--window")
            .arg(env.window.to_string())
            .arg("relay-child")
            .arg("--schema")
            .arg(&schema.name)
            .arg("--exchange")
            .arg(&rabbit.exchange)
            .arg("--rows")
            .arg(rows.to_string())
            .output()
            .await?;
        schema.drop().await?;
        rabbit.cleanup(&[]).await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "relay child failed: {}\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        let hwm = stdout
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM_kB "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or("relay child printed no VmHWM")?;
        println!("  memory: relay draining {rows} rows: peak RSS {hwm} KiB");
        kib.push(hwm);
    }
    let (small_kib, large_kib) = (kib[0], kib[1]);
    let ratio = large_kib as f64 / small_kib as f64;
    println!(
        "memory: relay peak RSS (VmHWM): {small} rows {:.1} MiB | {large} rows {:.1} MiB | ratio {ratio:.3}",
        small_kib as f64 / 1024.0,
        large_kib as f64 / 1024.0
    );
    Ok(MemoryResult {
        small_rows: small,
        large_rows: large,
        small_kib,
        large_kib,
        ratio,
    })
}

/// The child of the memory mode: relays the schema's backlog to the
/// exchange, then prints its own VmHWM.
pub(crate) async fn relay_child(env: &Env, schema: &str, exchange: &str, rows: usize) -> Res<()> {
    let schema = Schema::attach(env, schema, 2).await?;
    let broker = RabbitBroker::connect(
        &env.amqp_url,
        RabbitConfig::default().with_exchange(exchange)?,
    )
    .await?;
    let timed = TimedBroker::counting(broker.clone());
    let config = RelayConfig::default().with_max_in_flight(env.window);
    let relay = Relay::new(schema.store.clone(), timed.clone(), config)?.start();
    let ok = wait_drained(&schema, &timed, rows, Duration::from_secs(900)).await?;
    relay.shutdown().await;
    let _ = broker.close().await;
    schema.pool.close().await;
    if !ok {
        return Err("the relay did not drain the backlog within 900 s".into());
    }
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no VmHWM in /proc/self/status")?;
    println!("VmHWM_kB {hwm}");
    Ok(())
}
