//! RocketMQ (`rocketmq`): the drain and e2e modes with RocketMQ as the
//! broker, beside a hand-written rocketmq-client producer with the same
//! queue selection (the hash of the message's key) and as many sends
//! awaiting their `SEND_OK` at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rocketmq_client_rust::{
    ClientConfig, ClientRuntime, ClientRuntimeConfig, DefaultMQProducer, MessageQueueSelector,
    SelectMessageQueueByHash, SendStatus, TelemetryHandle,
};
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};
use serde::Serialize;
use txmsg::RelayConfig;
use txmsg::rocketmq::{RocketBroker, RocketConfig};

use tokio::sync::{Semaphore, mpsc};

use crate::backlog::{DrainResult, insert_backlog, raw_body, relay_drain_rate};
use crate::common::{Env, QueueDrain, Res, Schema, Side, unique};
use crate::producer::{Committed, Confirms, E2eResult, E2eTarget, TOPIC, e2e_on, record_confirm};

/// Queues of the benchmark's topic (the adapter's default).
const QUEUES: i32 = 8;
/// Most sends awaiting `SEND_OK` at once, both sides. With more, the
/// client fails sends now and then under load (`core.operation.timed_out`,
/// or `core.argument.invalid` for a route not yet known); `RocketBroker`
/// lets at most 64 of its sends await an answer at once for that reason.
const MAX_WINDOW: usize = 64;
/// Longest wait for one send's `SEND_OK`, both sides.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The hand-written side: a rocketmq-client producer on a runtime of its
/// own, as an application without txmsg would start it.
struct RawProducer {
    producer: DefaultMQProducer,
    /// Sends that failed and were made again.
    retried: AtomicU64,
    /// Owns the client's runtime; dropped last.
    _owner: RuntimeOwner,
    _client: Arc<ClientRuntime>,
}

impl RawProducer {
    async fn start(name_servers: &str) -> Res<Self> {
        let owner =
            RuntimeOwner::plan(RuntimeConfig::for_parallelism("bench-rocketmq", 2))?.build()?;
        let client = ClientRuntime::try_new(
            owner.root_context().component("bench-rocketmq"),
            ClientRuntimeConfig::default(),
            TelemetryHandle::default(),
        )?;
        let mut producer = DefaultMQProducer::builder(Arc::clone(&client))
            .producer_group(format!("bench_raw_{}", unique()))
            .name_server_addr(name_servers)
            .client_config(ClientConfig {
                instance_name: format!("bench-{}", unique()).into(),
                namesrv_addr: Some(name_servers.into()),
                ..ClientConfig::default()
            })
            .send_msg_timeout(u32::try_from(SEND_TIMEOUT.as_millis())?)
            .retry_times_when_send_failed(0)
            .build();
        producer.start().await?;
        Ok(RawProducer {
            producer,
            retried: AtomicU64::new(0),
            _owner: owner,
            _client: client,
        })
    }

    /// Creates `topic` with [`QUEUES`] queues and waits until it routes.
    async fn create_topic(&self, topic: &str) -> Res<()> {
        let mut producer = self.producer.clone();
        producer
            .create_topic("TBW102", topic, QUEUES, HashMap::new())
            .await?;
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if producer
                .fetch_publish_message_queues(topic)
                .await
                .is_ok_and(|q| !q.is_empty())
            {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("topic {topic} has no queue 20 s after it was created").into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends `body` `n` times to `topic`, each to the queue the hash of
    /// its own key selects, at most `window` awaiting `SEND_OK`, each send
    /// a task of its own (as the relay's are).
    async fn send_all(
        self: &Arc<Self>,
        topic: &str,
        n: usize,
        window: usize,
        body: &[u8],
    ) -> Res<()> {
        let window = Arc::new(Semaphore::new(window));
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..n {
            let permit = Arc::clone(&window).acquire_owned().await?;
            let (raw, topic, body) = (Arc::clone(self), topic.to_owned(), body.to_vec());
            sends.spawn(async move {
                let sent = raw.send(&topic, i.to_string(), body).await;
                drop(permit);
                sent
            });
            while let Some(r) = sends.try_join_next() {
                r??;
            }
        }
        while let Some(r) = sends.join_next().await {
            r??;
        }
        Ok(())
    }
}

impl RawProducer {
    /// Sends `body` to the queue of `topic` that the hash of `key` selects,
    /// and waits for `SEND_OK`.
    async fn send(&self, topic: &str, key: String, body: Vec<u8>) -> Res<()> {
        let mut message = Message::builder().topic(topic).body(body).build()?;
        message.set_keys(key.as_str().into());
        let select = |mqs: &[MessageQueue], msg: &Message, arg: &String| {
            SelectMessageQueueByHash.select(mqs, msg, arg)
        };
        let timeout = u64::try_from(SEND_TIMEOUT.as_millis())?;
        // Failed sends are made again at once, up to twice (the client's
        // own `retryTimesWhenSendFailed` default), as an application would.
        let mut attempt = 0;
        loop {
            let sent = self
                .producer
                .send_with_selector_timeout(message.clone(), select, key.clone(), timeout)
                .await;
            match sent {
                Ok(Some(r)) if r.send_status == SendStatus::SendOk => return Ok(()),
                _ if attempt < 2 => {
                    attempt += 1;
                    self.retried.fetch_add(1, Ordering::Relaxed);
                }
                Ok(other) => return Err(format!("not stored: {other:?}").into()),
                Err(e) => return Err(format!("rocketmq-client send: {e:?}").into()),
            }
        }
    }
}

/// A RocketMQ topic of its own: the framework's broker publishing to it,
/// and the hand-written producer.
struct RocketTarget {
    broker: RocketBroker,
    raw: Arc<RawProducer>,
    /// The RocketMQ topic both sides send to.
    topic: String,
}

impl RocketTarget {
    async fn create(url: &str, name_servers: &str) -> Res<Self> {
        let prefix = format!("bench{}_", &unique()[20..]);
        let broker = RocketBroker::connect(
            url,
            RocketConfig::default()
                .with_topic_prefix(&prefix)?
                .with_send_timeout(SEND_TIMEOUT)?,
        )
        .await
        .map_err(|e| format!("cannot reach RocketMQ at {url}: {e}"))?;
        let topic = broker.rocketmq_topic(TOPIC)?;
        let raw = RawProducer::start(name_servers).await?;
        raw.create_topic(&topic).await?;
        Ok(RocketTarget {
            broker,
            raw: Arc::new(raw),
            topic,
        })
    }
}

impl E2eTarget for RocketTarget {
    type Broker = RocketBroker;

    fn label(&self) -> &'static str {
        "rocketmq e2e"
    }

    fn method(&self) -> &'static str {
        "commit returned to the producer -> SEND_OK received \
         (txmsg: recorded by a Broker wrapper around RocketBroker; \
         baseline: recorded where its send future resolves)"
    }

    fn broker(&self) -> RocketBroker {
        self.broker.clone()
    }

    /// Nothing to prepare: RocketMQ keeps messages on disk whether or not
    /// a consumer reads them, and a queue's length costs its sends nothing.
    async fn start_round(&self, _env: &Env) -> Res<Option<QueueDrain>> {
        Ok(None)
    }

    async fn publisher(
        &self,
        env: &Env,
        mut rx: mpsc::UnboundedReceiver<Committed>,
        confirms: Confirms,
        mark_tx: mpsc::UnboundedSender<uuid::Uuid>,
    ) -> Res<tokio::task::JoinHandle<Res<()>>> {
        let window = Arc::new(Semaphore::new(env.window));
        let (raw, topic) = (Arc::clone(&self.raw), self.topic.clone());
        Ok(tokio::spawn(async move {
            let mut sends = tokio::task::JoinSet::new();
            while let Some(row) = rx.recv().await {
                let permit = Arc::clone(&window).acquire_owned().await?;
                let (raw, topic) = (Arc::clone(&raw), topic.clone());
                let (confirms, mark_tx) = (Arc::clone(&confirms), mark_tx.clone());
                sends.spawn(async move {
                    let sent = raw.send(&topic, row.seq.to_string(), row.payload).await;
                    drop(permit);
                    if sent.is_ok() {
                        record_confirm(&confirms, row.seq);
                        let _ = mark_tx.send(row.id);
                    }
                });
                while sends.try_join_next().is_some() {}
            }
            while sends.join_next().await.is_some() {}
            Res::Ok(())
        }))
    }
}

/// Result of the `rocketmq` mode.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RocketResult {
    /// The name servers measured against.
    pub(crate) name_servers: String,
    /// Relay vs raw client.
    pub(crate) drain: DrainResult,
    /// Commit -> SEND_OK, txmsg vs the hand-written pipeline.
    pub(crate) e2e: E2eResult,
}

/// `rocketmq`: the drain mode, then the e2e mode, on RocketMQ.
pub(crate) async fn run(env: &Env, url: &str) -> Res<RocketResult> {
    let env = &Env {
        window: env.window.min(MAX_WINDOW),
        ..env.clone()
    };
    let name_servers = url
        .strip_prefix("rocketmq://")
        .ok_or("ROCKETMQ_URL must start with rocketmq://")?
        .trim_end_matches('/')
        .to_owned();
    let target = RocketTarget::create(url, &name_servers).await?;
    let drain = drain(env, &target).await?;
    let other = match env.only {
        None => Some(RocketTarget::create(url, &name_servers).await?),
        Some(_) => None,
    };
    let e2e = e2e_on(env, &target, other.as_ref()).await?;
    Ok(RocketResult {
        name_servers,
        drain,
        e2e,
    })
}

/// The drain mode on RocketMQ: the relay started after `rows` pending
/// rows vs raw rocketmq-client sends of as many messages.
async fn drain(env: &Env, target: &RocketTarget) -> Res<DrainResult> {
    let schema = Schema::create(env, "r", 8).await?;
    let body = raw_body()?;
    let config = RelayConfig::default().with_max_in_flight(env.window);
    let mut out = DrainResult::of(env);
    for (round, side) in Side::schedule(env, env.rounds) {
        if side == Side::Framework {
            schema.truncate().await?;
            insert_backlog(&schema, env.drain_rows).await?;
        }
        let rate = match side {
            Side::Framework => {
                relay_drain_rate(&schema, target.broker.clone(), env.drain_rows, &config).await?
            }
            Side::Baseline => {
                let start = Instant::now();
                target
                    .raw
                    .send_all(&target.topic, env.drain_rows, env.window, &body)
                    .await?;
                env.drain_rows as f64 / start.elapsed().as_secs_f64()
            }
        };
        println!(
            "  rocketmq drain round {} {}: {rate:.1} msg/s",
            round + 1,
            side.label()
        );
        match side {
            Side::Framework => out.txmsg_rounds.push(rate),
            Side::Baseline => out.baseline_rounds.push(rate),
        }
    }
    schema.drop().await?;
    println!(
        "  rocketmq drain: the baseline made {} failed sends again",
        target.raw.retried.load(Ordering::Relaxed)
    );
    out.finish(&format!(
        "rocketmq drain of {} rows (txmsg relay) vs {} raw rocketmq-client sends, window {}",
        env.drain_rows, env.drain_rows, env.window
    ));
    Ok(out)
}
