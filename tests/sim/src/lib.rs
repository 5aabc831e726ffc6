//! A seeded concurrency simulation of txmsg, checked by counting.
//!
//! One [`run`] is one schedule: from its seed it draws how many producers,
//! relays and consumers run, what each transaction writes (one or two
//! messages, ordering keys from a small set, one idempotency key on two
//! topics, rollbacks, savepoints that commit or roll back, half messages
//! resolved by their producer or left to the check-back), and which faults
//! hit: publish panics, refused publishes, lost and slow confirms, handler
//! panics and failures, a relay and a consumer shut down and replaced at a
//! random point, leases that run out under slow confirms, and the faults of
//! a broker's consuming side: acknowledgements lost (the applied message is
//! delivered again), duplicate deliveries (a copy while the first is still
//! held, as after an ack timeout), and a subscription's connection lost
//! mid-stream (it ends, the consumer subscribes again, and what it had not
//! settled is delivered again). Everything runs
//! in one process on the in-process broker and a [`Backend`]: SQLite (a
//! file, so that connections really interleave) or PostgreSQL (a schema of
//! its own at `DATABASE_URL`).
//!
//! When the producers are done and everything has settled (or a bound has
//! passed), [`run`] counts:
//!
//! - **nothing lost**: every committed message is applied by every group
//!   subscribed to its topic;
//! - **no phantom**: nothing of a rolled-back transaction, a rolled-back
//!   savepoint or a rolled-back half message is applied;
//! - **nothing applied twice** per group (effects are counted, not the
//!   inbox);
//! - **per-key commit order**: one producer's transactions are serialised,
//!   and so are all producers' transactions of the keys they share (a lock
//!   row per key, taken before the messages are written, counts their
//!   commits), so at every group the messages of one (topic, key) are
//!   applied in commit order;
//! - **nothing stuck**: no row is left pending, prepared or dead, and no
//!   delivery is dead-lettered by a consumer;
//! - **no committed half message dead**.
//!
//! # Why not a deterministic executor
//!
//! FoundationDB-style simulation (and shuttle, turmoil, madsim) owns every
//! source of nondeterminism: the scheduler, time and I/O. txmsg runs on
//! Tokio and sqlx, whose SQLite driver does its work on its own threads;
//! madsim and shuttle would need both replaced, and turmoil simulates the
//! network, which this process does not use; a proptest state machine
//! would shrink a failing schedule, but shrinking needs a run that fails
//! the same way each time, which real threads do not give. So the seed
//! fixes the *schedule*, that is every decision and every fault, but not
//! the thread interleaving, which the real runtime varies from run to run
//! (as it does in production). A failing seed replays the same schedule; run it a few
//! times if the interleaving that broke it is rare. Faults inside the
//! broker and the handlers are drawn per message and attempt from the seed
//! (not from a shared stream), so they do not depend on timing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use txmsg::consumer::{Acker, Consumer, ConsumerConfig, ConsumerHandle, Delivery, InboxStore};
use txmsg::half::HalfOutbox;
use txmsg::half::{CheckBackConfig, CheckBackHandle, CheckBackWorker, CheckStatus};
use txmsg::memory::MemoryBroker;
use txmsg::prelude::*;
use txmsg::{DeadFilter, Envelope, Error, Message, Relay, RelayConfig, RelayHandle};

mod backend;

pub use backend::{Backend, Postgres, Sqlite};

/// The topics and groups of one backend: groups do not cross backends, so
/// both backends' handlers can live in one process.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    /// Topic consumed by both groups.
    pub a: &'static str,
    /// Topic consumed by the first group only.
    pub b: &'static str,
    /// Topic of half messages, consumed by the first group.
    pub h: &'static str,
    /// The first group (topics a, b and h).
    pub group1: &'static str,
    /// The second group (topic a).
    pub group2: &'static str,
}

impl Names {
    /// Each group with the topics it consumes.
    fn groups(&self) -> [(&'static str, Vec<&'static str>); 2] {
        [
            (self.group1, vec![self.a, self.b, self.h]),
            (self.group2, vec![self.a]),
        ]
    }
}

/// What a message carries: who wrote it, where, and the faults its handlers
/// meet (drawn from the seed when it was written).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rec {
    /// The simulation run (its state in `RUNS`).
    pub run: u64,
    /// Producer number.
    pub producer: u32,
    /// The producer's transaction number.
    pub n: u32,
    /// Its commit order among the transactions of its key: `n` for a
    /// producer's own keys; for a key all producers share, the count its
    /// transaction took under the key's lock row.
    pub order: i64,
    /// Message number within the transaction.
    pub i: u32,
    /// Handler attempts that panic before one succeeds.
    pub panics: u8,
    /// Handler attempts that return an error after the panics.
    pub failures: u8,
}

/// Per-run state the handlers and check-backs reach through [`Rec::run`].
#[derive(Default)]
struct RunState {
    /// Handler attempts per (group, topic, idempotency key).
    attempts: HashMap<(String, String, String), u32>,
    /// Half messages' business decisions, recorded by the producer once
    /// they are committed: (producer, n) -> commit.
    decisions: HashMap<(u32, u32), bool>,
}

static RUNS: Mutex<BTreeMap<u64, RunState>> = Mutex::new(BTreeMap::new());

fn runs() -> std::sync::MutexGuard<'static, BTreeMap<u64, RunState>> {
    RUNS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The injected faults of a handler attempt: panics first, then failures,
/// as `rec` says; `Ok` when this attempt may apply its effect.
// The panic is the fault being injected.
#[allow(clippy::panic_in_result_fn)]
fn handler_faults(group: &str, rec: &Rec, env: &Envelope) -> Result<(), Error> {
    let attempt = {
        let mut runs = runs();
        let state = runs.get_mut(&rec.run).ok_or(Error::Shutdown)?;
        let n = state
            .attempts
            .entry((
                group.to_owned(),
                env.topic.clone(),
                env.idempotency_key.clone(),
            ))
            .or_insert(0);
        *n += 1;
        *n
    };
    if attempt <= u32::from(rec.panics) {
        panic!("injected handler panic (attempt {attempt})");
    }
    if attempt <= u32::from(rec.panics) + u32::from(rec.failures) {
        return Err(Error::Broker {
            message: format!("injected handler failure (attempt {attempt})"),
            retryable: true,
            source: None,
        });
    }
    Ok(())
}

/// The half messages' check-back: Commit if the producer recorded its
/// decision to commit, Rollback if it recorded a rollback, Unknown while it
/// has recorded neither (its business transaction may still be running).
fn check_back_answer(rec: &Rec) -> Result<CheckStatus, Error> {
    let runs = runs();
    let state = runs.get(&rec.run).ok_or(Error::Shutdown)?;
    Ok(match state.decisions.get(&(rec.producer, rec.n)) {
        Some(true) => CheckStatus::Commit,
        Some(false) => CheckStatus::Rollback,
        None => CheckStatus::Unknown,
    })
}

/// One applied effect, as the handlers record it: group, topic,
/// idempotency key, ordering key, producer, transaction, message, and its
/// place among the committed effects of its (group, topic, key).
pub type Effect = (
    String,
    String,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    Option<i64>,
);

/// The schedule drawn from a seed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// Producer tasks.
    pub producers: u32,
    /// Transactions per producer.
    pub transactions: u32,
    /// Relays over the store (as if in several processes).
    pub relays: u32,
    /// Ordering keys in use (each producer has its own).
    pub keys: u32,
    /// Percent chances, per transaction: rolled back, a savepoint, a half
    /// message, one idempotency key on two topics.
    pub rollback_pct: u32,
    /// See `rollback_pct`.
    pub savepoint_pct: u32,
    /// See `rollback_pct`.
    pub half_pct: u32,
    /// See `rollback_pct`.
    pub shared_key_pct: u32,
    /// Percent chances, per publish attempt: panic, refused, confirm lost
    /// (published, reported failed), slow confirm.
    pub publish_panic_pct: u32,
    /// See `publish_panic_pct`.
    pub publish_fail_pct: u32,
    /// See `publish_panic_pct`.
    pub lost_confirm_pct: u32,
    /// See `publish_panic_pct`.
    pub slow_pct: u32,
    /// Percent chance that a message's handler panics / fails first.
    pub handler_fault_pct: u32,
    /// Percent chance, per transaction, that its keyed messages use a key
    /// shared by all producers.
    pub common_key_pct: u32,
    /// After how many committed transactions (all producers) relay 0 is
    /// shut down and replaced; `None`: never.
    pub relay_restart_after: Option<u32>,
    /// After how many committed transactions group one's consumer is shut
    /// down and replaced; `None`: never.
    pub consumer_restart_after: Option<u32>,
    /// The relays' lease (short: some slow confirms outlive it).
    pub lease: Duration,
    /// Percent chance, per delivery, that its acknowledgement is lost (the
    /// broker delivers the applied message again, as after a connection
    /// drop between the commit and the ack).
    pub lost_ack_pct: u32,
    /// Percent chance, per delivery, that the broker delivers a copy of it
    /// as well (at least once: a redelivery after a timeout while it is
    /// still being handled).
    pub duplicate_pct: u32,
    /// After how many deliveries to a group its subscription's connection
    /// is lost (once per group): it ends, the consumer subscribes again,
    /// and what it had not settled is delivered again; `None`: never.
    pub subscription_lost_after: Option<u32>,
}

impl Plan {
    /// Draws the schedule of `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let producers = rng.u32(1..=4);
        let transactions = rng.u32(4..=14);
        let total = producers * transactions;
        Plan {
            seed,
            producers,
            transactions,
            relays: rng.u32(1..=2),
            keys: rng.u32(1..=3),
            rollback_pct: rng.u32(0..=20),
            savepoint_pct: rng.u32(0..=20),
            half_pct: rng.u32(0..=25),
            shared_key_pct: rng.u32(0..=20),
            publish_panic_pct: rng.u32(0..=5),
            publish_fail_pct: rng.u32(0..=15),
            lost_confirm_pct: rng.u32(0..=10),
            slow_pct: rng.u32(0..=10),
            handler_fault_pct: rng.u32(0..=25),
            relay_restart_after: rng.bool().then(|| rng.u32(0..total)),
            consumer_restart_after: rng.bool().then(|| rng.u32(0..total)),
            lease: Duration::from_millis(rng.u64(1000..=2000)),
            // Drawn last, so the draws above are those of earlier versions.
            common_key_pct: rng.u32(0..=40),
            lost_ack_pct: rng.u32(0..=10),
            duplicate_pct: rng.u32(0..=10),
            subscription_lost_after: rng.bool().then(|| rng.u32(1..=total.max(1) * 2)),
        }
    }
}

/// A broken promise found by the checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which promise.
    pub invariant: &'static str,
    /// What was counted.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// What one run did and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Messages of committed transactions, per group that consumes them.
    pub expected_applications: usize,
    /// Messages written by transactions (or savepoints, or half messages)
    /// that rolled back.
    pub rolled_back: usize,
    /// Publishes the broker wrapper reported failed (panic, refusal, lost
    /// confirm), and those it slowed down.
    pub publish_faults: usize,
    /// Invariant checks made (one per counted item).
    pub checks: usize,
    /// What broke.
    pub violations: Vec<Violation>,
}

/// The in-process broker behind faults drawn per message and attempt.
#[derive(Debug, Clone)]
struct FaultyBroker {
    inner: MemoryBroker,
    plan: Arc<Plan>,
    attempts: Arc<Mutex<HashMap<(String, String), u32>>>,
    /// Deliveries per (group, topic, idempotency key), for consume faults.
    deliveries: Arc<Mutex<HashMap<DeliveryName, u32>>>,
    faults: Arc<Mutex<usize>>,
}

/// A message as one group receives it: (group, topic, idempotency key).
type DeliveryName = (String, String, String);

enum Fault {
    Panic,
    Refuse,
    LoseConfirm,
    Slow(Duration),
}

impl FaultyBroker {
    fn fault(&self, env: &Envelope) -> Option<Fault> {
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
            let n = attempts
                .entry((env.topic.clone(), env.idempotency_key.clone()))
                .or_insert(0);
            *n += 1;
            *n
        };
        // From the message's name, not its id (a time-based UUID differs
        // on every run), so that a seed replays the same faults.
        let mut rng = fastrand::Rng::with_seed(fnv(&[
            &self.plan.seed.to_le_bytes(),
            env.topic.as_bytes(),
            env.idempotency_key.as_bytes(),
            &attempt.to_le_bytes(),
        ]));
        let p = &self.plan;
        let roll = rng.u32(0..100);
        let mut edge = p.publish_panic_pct;
        if roll < edge {
            return Some(Fault::Panic);
        }
        edge += p.publish_fail_pct;
        if roll < edge {
            return Some(Fault::Refuse);
        }
        edge += p.lost_confirm_pct;
        if roll < edge {
            return Some(Fault::LoseConfirm);
        }
        edge += p.slow_pct;
        if roll < edge {
            // Mostly short; one in four up to longer than the lease, so
            // that the publish times out and another relay may take the row.
            let most = if rng.u32(0..4) == 0 {
                u64::try_from(p.lease.as_millis()).unwrap_or(u64::MAX) * 3 / 2
            } else {
                50
            };
            return Some(Fault::Slow(Duration::from_millis(rng.u64(1..=most))));
        }
        None
    }

    fn count(&self) {
        *self.faults.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    }
}

impl Broker for FaultyBroker {
    async fn publish(&self, envelope: &Envelope) -> txmsg::Result<()> {
        let refused = || Error::Broker {
            message: "injected: refused".to_owned(),
            retryable: true,
            source: None,
        };
        match self.fault(envelope) {
            None => self.inner.publish(envelope).await,
            Some(Fault::Panic) => {
                self.count();
                panic!("injected publish panic")
            }
            Some(Fault::Refuse) => {
                self.count();
                Err(refused())
            }
            Some(Fault::LoseConfirm) => {
                self.count();
                self.inner.publish(envelope).await?;
                Err(Error::Broker {
                    message: "injected: confirm lost".to_owned(),
                    retryable: true,
                    source: None,
                })
            }
            Some(Fault::Slow(d)) => {
                self.count();
                tokio::time::sleep(d).await;
                self.inner.publish(envelope).await
            }
        }
    }

    async fn subscribe(
        &self,
        spec: &txmsg::consumer::SubscribeSpec,
    ) -> txmsg::Result<txmsg::consumer::Subscription> {
        let inner = self.inner.subscribe(spec).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(usize::from(spec.prefetch));
        let (closing_tx, closing) = tokio::sync::oneshot::channel();
        tokio::spawn(faulty_deliveries(
            self.clone(),
            spec.group.clone(),
            inner,
            tx,
            closing,
        ));
        Ok(txmsg::consumer::Subscription::with_close(rx, closing_tx))
    }
}

/// Passes the deliveries of `inner` on with the consume-side faults of the
/// plan: lost acknowledgements, duplicate deliveries, and the connection
/// lost after a number of deliveries (the subscription ends; what it had
/// not settled is delivered again).
async fn faulty_deliveries(
    broker: FaultyBroker,
    group: String,
    mut inner: txmsg::consumer::Subscription,
    tx: tokio::sync::mpsc::Sender<Delivery>,
    mut closing: tokio::sync::oneshot::Receiver<()>,
) {
    let plan = Arc::clone(&broker.plan);
    let stream = (group.clone(), String::new(), String::new());
    loop {
        let d = tokio::select! {
            _ = &mut closing => {
                for d in inner.close().await {
                    if tx.send(d).await.is_err() {
                        return;
                    }
                }
                return;
            }
            d = inner.next() => d,
        };
        let Some(d) = d else { return };
        let delivered = {
            // Counted per group over its subscriptions (under a name no
            // message has), so the connection is lost once per group.
            let mut counts = lock(&broker.deliveries);
            let n = counts.entry(stream.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if plan.subscription_lost_after == Some(delivered) {
            // The connection is lost: this delivery and every unsettled
            // one come back to the group's next subscription.
            return;
        }
        let Ok(envelope) = &d.message else {
            if tx.send(d).await.is_err() {
                return;
            }
            continue;
        };
        let count = {
            let mut counts = lock(&broker.deliveries);
            let n = counts
                .entry((
                    group.clone(),
                    envelope.topic.clone(),
                    envelope.idempotency_key.clone(),
                ))
                .or_insert(0);
            *n += 1;
            *n
        };
        let mut rng = fastrand::Rng::with_seed(fnv(&[
            &plan.seed.to_le_bytes(),
            b"consume",
            group.as_bytes(),
            envelope.topic.as_bytes(),
            envelope.idempotency_key.as_bytes(),
            &count.to_le_bytes(),
        ]));
        let lose_ack = rng.u32(0..100) < plan.lost_ack_pct;
        if rng.u32(0..100) < plan.duplicate_pct {
            // A copy reaches the group too (at the end of its queue).
            let copy = envelope.clone();
            let _ = broker.inner.publish(&copy).await;
        }
        let message = d.message.clone();
        let redelivered = d.redelivered;
        let acker = FaultyAcker { inner: d, lose_ack };
        if tx
            .send(Delivery::new(message, redelivered, Box::new(acker)))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Settles a delivery of the in-process broker, or loses its ack: the
/// broker then delivers it again.
#[derive(Debug)]
struct FaultyAcker {
    inner: Delivery,
    lose_ack: bool,
}

impl Acker for FaultyAcker {
    fn ack(self: Box<Self>) -> txmsg::adapter::BoxFuture<'static, txmsg::Result<()>> {
        Box::pin(async move {
            if self.lose_ack {
                // The consumer thinks it acknowledged; the broker never
                // heard of it.
                let _ = self.inner.nack().await;
                Ok(())
            } else {
                self.inner.ack().await
            }
        })
    }

    fn nack(self: Box<Self>) -> txmsg::adapter::BoxFuture<'static, txmsg::Result<()>> {
        Box::pin(self.inner.nack())
    }
}

/// FNV-1a over `parts`: a stable hash (std's is randomly keyed per process).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What producers wrote, for the checker.
#[derive(Debug, Default)]
struct Ledger {
    /// (topic, idempotency key, ordering key, producer, n, i) of messages
    /// that must be applied.
    committed: Vec<(String, String, Option<String>, u32, u32, u32)>,
    /// (topic, idempotency key) of messages that must never be applied.
    rolled_back: Vec<(String, String)>,
    /// Committed transactions so far (drives the restarts).
    commits: u32,
}

struct World<B: Backend> {
    plan: Arc<Plan>,
    /// This run's key in `RUNS`.
    run: u64,
    store: B::Store,
    broker: FaultyBroker,
    relays: Mutex<Vec<RelayHandle>>,
    consumers: Mutex<Vec<ConsumerHandle<B::Store>>>,
    checks: CheckBackHandle,
    ledger: Mutex<Ledger>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn relay_config(plan: &Plan) -> RelayConfig {
    RelayConfig::default()
        .with_poll_interval(Duration::from_millis(10))
        .with_lease(plan.lease)
        .with_publish_timeout(plan.lease / 3)
        .with_backoff_min(Duration::from_millis(5))
        .with_backoff_max(Duration::from_millis(50))
        .with_max_attempts(1000)
        .with_shutdown_timeout(Duration::from_millis(200))
        .with_mark_interval(Duration::from_millis(5))
}

async fn start_consumer<S: InboxStore>(
    world_store: &S,
    broker: &FaultyBroker,
    group: &str,
) -> txmsg::Result<ConsumerHandle<S>> {
    let config = ConsumerConfig::new(group)
        .with_backoff_min(Duration::from_millis(2))
        .with_backoff_max(Duration::from_millis(20))
        .with_shutdown_timeout(Duration::from_millis(200));
    Consumer::new(world_store.clone(), broker.clone(), config)?
        .start()
        .await
}

impl<B: Backend> World<B> {
    /// Called after each committed transaction: the scheduled restarts.
    async fn committed(&self) -> txmsg::Result<()> {
        let commits = {
            let mut ledger = lock(&self.ledger);
            ledger.commits += 1;
            ledger.commits
        };
        if self.plan.relay_restart_after == Some(commits) {
            let old = lock(&self.relays)[0].clone();
            old.shutdown().await;
            let fresh = Relay::new(
                self.store.clone(),
                self.broker.clone(),
                relay_config(&self.plan),
            )?
            .start();
            lock(&self.relays)[0] = fresh;
        }
        if self.plan.consumer_restart_after == Some(commits) {
            let old = lock(&self.consumers)[0].clone();
            old.shutdown().await;
            let fresh = start_consumer(&self.store, &self.broker, B::NAMES.group1).await?;
            lock(&self.consumers)[0] = fresh;
        }
        Ok(())
    }

    fn outbox(&self, producer: u32) -> HalfOutbox<B::Db> {
        let relays = lock(&self.relays);
        let relay = &relays[producer as usize % relays.len()];
        HalfOutbox::new(&self.store).with_relay(relay)
    }
}

/// One producer's transactions, in order (each begins after the last one
/// committed or rolled back).
async fn produce<B: Backend>(world: Arc<World<B>>, producer: u32) -> txmsg::Result<()> {
    let plan = Arc::clone(&world.plan);
    let mut rng =
        fastrand::Rng::with_seed(plan.seed.wrapping_mul(31).wrapping_add(u64::from(producer)));
    for n in 0..plan.transactions {
        let outbox = world.outbox(producer);
        let roll = rng.u32(0..100);
        let rec = |i: u32, rng: &mut fastrand::Rng| {
            let faulty = rng.u32(0..100) < plan.handler_fault_pct;
            Rec {
                run: world.run,
                producer,
                n,
                order: i64::from(n),
                i,
                panics: if faulty { rng.u8(0..=1) } else { 0 },
                failures: if faulty { rng.u8(0..=2) } else { 0 },
            }
        };
        if roll < plan.half_pct {
            half(&world, &outbox, producer, n, rec(0, &mut rng), &mut rng).await?;
            continue;
        }
        let rollback = rng.u32(0..100) < plan.rollback_pct;
        let savepoint = rng.u32(0..100) < plan.savepoint_pct;
        let savepoint_rollback = savepoint && rng.bool();
        let shared = rng.u32(0..100) < plan.shared_key_pct;
        let count = rng.u32(1..=2);
        // Keys every producer writes (through its own relay): serialised by
        // a lock row taken before the messages are written.
        let common = (rng.u32(0..100) < plan.common_key_pct).then(|| rng.u32(0..plan.keys));
        let mut messages = Vec::new();
        for i in 0..count {
            let topic = if shared || rng.bool() {
                B::NAMES.a
            } else {
                B::NAMES.b
            };
            let key = (rng.u32(0..4) > 0).then(|| match common {
                Some(k) => format!("common-k{k}"),
                None => format!("p{producer}-k{}", rng.u32(0..plan.keys)),
            });
            messages.push((topic, format!("p{producer}-{n}-{i}"), key, rec(i, &mut rng)));
        }
        if shared {
            // The first message's idempotency key again, on the other topic.
            let (_, idem, key, first) = messages[0].clone();
            messages.push((B::NAMES.b, idem, key, Rec { i: count, ..first }));
        }
        let mut tx = outbox.begin().await?;
        B::business(&mut tx, producer, n).await?;
        if let Some(k) = common {
            let order = B::next_order(&mut tx, k).await?;
            for (.., rec) in &mut messages {
                rec.order = order;
            }
        }
        let mut in_savepoint = Vec::new();
        for (topic, idem, key, rec) in &messages {
            let mut m = Message::new(topic, rec)?.idempotency_key(idem.clone());
            if let Some(k) = key {
                m = m.key(k.clone());
            }
            if savepoint && rec.i + 1 == count {
                in_savepoint.push(m);
            } else {
                tx.enqueue(m).await?;
            }
        }
        if !in_savepoint.is_empty() {
            let inner = sqlx::Connection::begin(&mut *tx).await?;
            let mut inner = outbox.wrap(inner);
            for m in in_savepoint {
                inner.enqueue(m).await?;
            }
            if savepoint_rollback {
                inner.rollback().await?;
            } else {
                inner.commit().await?;
            }
        }
        let committed = if rollback {
            tx.rollback().await?;
            false
        } else {
            tx.commit().await?;
            true
        };
        {
            let mut ledger = lock(&world.ledger);
            for (topic, idem, key, rec) in messages {
                let lost_with_savepoint = savepoint_rollback && rec.i + 1 == count;
                if committed && !lost_with_savepoint {
                    ledger
                        .committed
                        .push((topic.to_owned(), idem, key, producer, n, rec.i));
                } else {
                    ledger.rolled_back.push((topic.to_owned(), idem));
                }
            }
        }
        if committed {
            world.committed().await?;
        }
    }
    Ok(())
}

/// A half message: prepared, then the business decision recorded, then
/// the producer settles it itself, or leaves it to the check-back (which
/// may also run before the decision and answer Unknown).
async fn half<B: Backend>(
    world: &World<B>,
    outbox: &HalfOutbox<B::Db>,
    producer: u32,
    n: u32,
    rec: Rec,
    rng: &mut fastrand::Rng,
) -> txmsg::Result<()> {
    let idem = format!("p{producer}-{n}-h");
    let check_after = Duration::from_millis(rng.u64(1..=40));
    let settle = rng.u32(0..3);
    // A half message commits when it is resolved. One the producer settles
    // itself commits in the producer's order and shares its key with the
    // producer's other half messages; one left to the check-back commits
    // whenever the check-back resolves it, an order the checker cannot
    // know, so it gets a key of its own.
    let key = if settle == 0 {
        format!("p{producer}-half-{n}")
    } else {
        format!("p{producer}-half")
    };
    let prepared = outbox
        .prepare(
            Message::new(B::NAMES.h, &rec)?
                .idempotency_key(idem.clone())
                .key(key.clone()),
            check_after,
        )
        .await?;
    let commit = rng.u32(0..100) >= 25;
    tokio::time::sleep(Duration::from_millis(rng.u64(0..=30))).await;
    // The business transaction, then its outcome for the check-back.
    let mut tx = outbox.begin().await?;
    B::business(&mut tx, producer, n).await?;
    if commit {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    if let Some(state) = runs().get_mut(&rec.run) {
        state.decisions.insert((producer, n), commit);
    }
    match settle {
        0 => {} // left to the check-back
        _ if commit => prepared.commit().await?,
        _ => {
            prepared.rollback().await?;
        }
    }
    let mut ledger = lock(&world.ledger);
    if commit {
        ledger
            .committed
            .push((B::NAMES.h.to_owned(), idem, Some(key), producer, n, 0));
    } else {
        ledger.rolled_back.push((B::NAMES.h.to_owned(), idem));
    }
    Ok(())
}

/// Runs the schedule of `seed` and counts. `bound` is how long everything
/// may take to settle after the producers finished.
///
/// # Errors
///
/// When the simulation itself could not run (the store could not be made,
/// a producer's statement failed for a reason that is not a fault).
pub async fn run<B: Backend>(seed: u64, bound: Duration) -> txmsg::Result<Report> {
    let plan = Arc::new(Plan::new(seed));
    let place = B::open(seed).await?;
    // Runs of one seed may go at once (one per backend): state is kept per
    // run, not per seed.
    static NEXT_RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = NEXT_RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    runs().insert(run, RunState::default());
    let outcome = simulate::<B>(Arc::clone(&plan), B::store(&place).clone(), run, bound).await;
    runs().remove(&run);
    B::close(place).await;
    outcome
}

async fn simulate<B: Backend>(
    plan: Arc<Plan>,
    store: B::Store,
    run: u64,
    bound: Duration,
) -> txmsg::Result<Report> {
    let broker = FaultyBroker {
        inner: MemoryBroker::new(),
        plan: Arc::clone(&plan),
        attempts: Arc::default(),
        deliveries: Arc::default(),
        faults: Arc::default(),
    };
    // Consumers first: a group receives what is published after it subscribed.
    let mut consumers = Vec::new();
    for (group, _) in B::NAMES.groups() {
        consumers.push(start_consumer(&store, &broker, group).await?);
    }
    let mut relays = Vec::new();
    for _ in 0..plan.relays {
        relays.push(Relay::new(store.clone(), broker.clone(), relay_config(&plan))?.start());
    }
    let checks = CheckBackWorker::new(
        store.clone(),
        CheckBackConfig::default()
            .with_interval(Duration::from_millis(10))
            .with_poll_interval(Duration::from_millis(5))
            .with_max_checks(10_000)
            .with_lease(plan.lease)
            .with_timeout(Duration::from_millis(100)),
    )?
    .with_relay(&relays[0])
    .start()?;
    let world = Arc::new(World {
        plan: Arc::clone(&plan),
        run,
        store: store.clone(),
        broker: broker.clone(),
        relays: Mutex::new(relays),
        consumers: Mutex::new(consumers),
        checks,
        ledger: Mutex::new(Ledger::default()),
    });
    let mut producers = tokio::task::JoinSet::new();
    for p in 0..plan.producers {
        producers.spawn(produce::<B>(Arc::clone(&world), p));
    }
    while let Some(done) = producers.join_next().await {
        done.map_err(|e| Error::Config {
            field: "producer",
            reason: format!("a producer task failed: {e}"),
        })??;
    }

    let mut report = Report::default();
    let expected: HashMap<(String, String, String), usize> = {
        let ledger = lock(&world.ledger);
        report.rolled_back = ledger.rolled_back.len();
        let mut expected = HashMap::new();
        for (topic, idem, ..) in &ledger.committed {
            for (group, topics) in B::NAMES.groups() {
                if topics.contains(&topic.as_str()) {
                    expected.insert((group.to_owned(), topic.clone(), idem.clone()), 1);
                }
            }
        }
        expected
    };
    report.expected_applications = expected.len();

    // Settle: every expected application made and the outbox empty, or the
    // bound passed.
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let applied: HashSet<(String, String, String)> = B::effects(&store)
            .await?
            .into_iter()
            .map(|(group, topic, idem, ..)| (group, topic, idem))
            .filter(|k| expected.contains_key(k))
            .collect();
        let stats = store.stats().await?;
        if applied.len() == expected.len() && stats.pending == 0 && stats.prepared == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A little longer, so that a duplicate on its way is counted too.
    tokio::time::sleep(Duration::from_millis(30)).await;
    world.checks.shutdown().await;
    let relays = lock(&world.relays).clone();
    for relay in relays {
        relay.shutdown().await;
    }
    let consumers = lock(&world.consumers).clone();
    for consumer in consumers {
        consumer.shutdown().await;
    }
    report.publish_faults = *lock(&broker.faults);
    check(&world, &expected, &mut report).await?;
    Ok(report)
}

async fn check<B: Backend>(
    world: &World<B>,
    expected: &HashMap<(String, String, String), usize>,
    report: &mut Report,
) -> txmsg::Result<()> {
    let store = &world.store;
    let applied = B::effects(store).await?;
    let mut counts: HashMap<(String, String, String), usize> = HashMap::new();
    for (group, topic, idem, ..) in &applied {
        *counts
            .entry((group.clone(), topic.clone(), idem.clone()))
            .or_default() += 1;
    }
    let mut violate = |invariant: &'static str, detail: String| {
        report.violations.push(Violation { invariant, detail });
    };
    // Nothing lost, nothing applied twice.
    for (k, want) in expected {
        let got = counts.get(k).copied().unwrap_or(0);
        if got == 0 {
            violate("nothing lost", format!("{k:?} committed, never applied"));
        } else if got > *want {
            violate("applied once", format!("{k:?} applied {got} times"));
        }
    }
    // No phantom.
    let (rolled_back, committed): (HashSet<(String, String)>, usize) = {
        let ledger = lock(&world.ledger);
        (
            ledger.rolled_back.iter().cloned().collect(),
            ledger.committed.len(),
        )
    };
    for (k, got) in &counts {
        if !expected.contains_key(k) {
            let why = if rolled_back.contains(&(k.1.clone(), k.2.clone())) {
                "rolled back"
            } else {
                "never written"
            };
            violate("no phantom", format!("{k:?} applied {got} times, {why}"));
        }
    }
    // Per-key commit order at every group: one producer's messages of one
    // (topic, key) in (n, i) order, taken in the order the handlers'
    // transactions committed (`pos`, counted under a row lock per key in
    // the handler's transaction, so overlapping handlers are seen too).
    let mut by_pos: Vec<&Effect> = applied.iter().filter(|e| e.3.is_some()).collect();
    by_pos.sort_by_key(|e| e.7);
    let mut last: HashMap<(String, String, String), (i64, i64)> = HashMap::new();
    for (group, topic, idem, key, _producer, n, i, _pos) in by_pos {
        let Some(key) = key else { continue };
        let slot = (group.clone(), topic.clone(), key.clone());
        if let Some(prev) = last.get(&slot)
            && *prev > (*n, *i)
        {
            violate(
                "per-key commit order",
                format!(
                    "{slot:?}: {idem} (commit {n}, message {i}) applied after commit {}, message {}",
                    prev.0, prev.1
                ),
            );
        }
        last.insert(slot, (*n, *i));
    }
    // Nothing stuck, nothing dead.
    let stats = store.stats().await?;
    if stats.pending > 0 || stats.prepared > 0 {
        violate(
            "nothing stuck",
            format!(
                "{} pending and {} prepared rows left",
                stats.pending, stats.prepared
            ),
        );
    }
    for dead in store.dead_letters(&DeadFilter::default()).await? {
        let half = dead.envelope.topic == B::NAMES.h;
        violate(
            if half {
                "no committed half message dead"
            } else {
                "nothing stuck"
            },
            format!(
                "{} {} dead: {}",
                dead.envelope.topic, dead.envelope.idempotency_key, dead.reason
            ),
        );
    }
    for (group, _) in B::NAMES.groups() {
        for dead in store
            .consumer_dead_letters(group, &DeadFilter::default())
            .await?
        {
            violate(
                "nothing stuck",
                format!(
                    "{group} dead-lettered {}: {}",
                    dead.envelope.idempotency_key, dead.reason
                ),
            );
        }
    }
    report.checks = expected.len() + counts.len() + applied.len() + committed + 2;
    Ok(())
}

/// `e` and its causes, `: `-separated.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
