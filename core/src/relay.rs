//! The relay: publishes committed outbox rows and marks them sent once the
//! broker confirms.
//!
//! Two ways in, one way out:
//! - **Fast path**: rows written by this process through an
//!   [`Outbox`](crate::Outbox) that has this relay are leased to it at insert
//!   and handed over from memory right after commit; no re-read.
//! - **Poller**: rows whose lease ran out (a crash's leftovers), rows written
//!   without a lease (other processes, a full fast path) and rows due for a
//!   retry are claimed in batches with a lease.
//!
//! Both publish through the same step, which keeps order per (topic, key):
//! one message of a key is in flight at a time, and a failure holds back the
//! rest of its key. Sent marks are batched.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use tokio::sync::mpsc::OwnedPermit;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::{error_chain, panic_message};
use crate::store::{ClaimRequest, Failure, Lease};
use crate::{Broker, Clock, DeadKeyPolicy, Envelope, Error, RelayConfig, Result, Store};

/// A message handed from a committed [`Tx`](crate::Tx) to the fast path.
#[derive(Debug)]
pub(crate) struct FastMsg {
    pub(crate) envelope: Envelope,
    /// The lease the row was written with (its transaction's owner).
    pub(crate) lease: Lease,
}

/// What an [`Outbox`](crate::Outbox) needs from its relay.
#[derive(Debug, Clone)]
pub(crate) struct RelayLink {
    pub(crate) owner: Uuid,
    lease: Duration,
    fast: mpsc::Sender<FastMsg>,
    /// False once shutdown began: new rows go to the poller.
    accepting: Arc<AtomicBool>,
    wake: Arc<Notify>,
    pub(crate) clock: Arc<dyn Clock>,
}

impl RelayLink {
    /// Room on the fast path and the lease to write the row with, or `None`
    /// when the fast path is full or closed (the row then goes to the poller).
    pub(crate) fn reserve(
        &self,
        owner: Uuid,
        now: DateTime<Utc>,
    ) -> Option<(Lease, OwnedPermit<FastMsg>)> {
        if !self.accepting.load(Ordering::Acquire) {
            return None;
        }
        let permit = self.fast.clone().try_reserve_owned().ok()?;
        Some((crate::tx::fast_lease(owner, now, self.lease), permit))
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

/// A relay between a [`Store`] and a [`Broker`], not yet started.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> txmsg::Result<()> {
/// use txmsg::prelude::*;
/// use txmsg::{Outbox, Relay, RelayConfig};
/// use txmsg::memory::MemoryBroker;
/// use txmsg::sqlite::SqliteStore;
///
/// let store = SqliteStore::connect("sqlite::memory:").await?;
/// store.migrate().await?;
/// let relay = Relay::new(store.clone(), MemoryBroker::new(), RelayConfig::default())?.start();
/// let outbox = Outbox::new(&store).with_relay(&relay);
/// // ... produce with `outbox` ...
/// relay.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Relay<S, B> {
    store: S,
    broker: B,
    config: RelayConfig,
}

impl<S: Store, B: Broker> Relay<S, B> {
    /// A relay from `store` to `broker`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `config` breaks a rule.
    pub fn new(store: S, broker: B, config: RelayConfig) -> Result<Self> {
        config.validate()?;
        Ok(Relay {
            store,
            broker,
            config,
        })
    }

    /// Starts the fast path, the poller and the mark writer on the current
    /// Tokio runtime.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    pub fn start(self) -> RelayHandle {
        crate::metrics::describe();
        let owner = Uuid::now_v7();
        let (fast_tx, fast_rx) = mpsc::channel(self.config.fast_path_capacity);
        let (marks_tx, marks_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let accepting = Arc::new(AtomicBool::new(true));
        let link = RelayLink {
            owner,
            lease: self.config.lease,
            fast: fast_tx.clone(),
            accepting: Arc::clone(&accepting),
            wake: Arc::clone(&wake),
            clock: Arc::clone(&self.config.clock),
        };
        let shared = Arc::new(Shared {
            inflight: Arc::new(Semaphore::new(self.config.max_in_flight)),
            store: self.store,
            broker: self.broker,
            config: self.config,
            fast_probe: fast_tx,
            accepting,
            poll_owner: owner,
            marks: marks_tx,
            held: Mutex::new(HashMap::new()),
            outage: Mutex::new((0, None)),
            seed: fastrand::u64(..),
        });
        let span = tracing::info_span!("txmsg.relay", relay = %owner);
        let task = tokio::spawn(run(shared, fast_rx, marks_rx, wake, stop_rx).instrument(span));
        RelayHandle {
            inner: Arc::new(HandleInner {
                link,
                stop: stop_tx,
                task: tokio::sync::Mutex::new(Some(task)),
            }),
        }
    }
}

/// A running relay. Cheap to clone; dropping every handle does not stop it,
/// [`shutdown`](RelayHandle::shutdown) does.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    link: RelayLink,
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl RelayHandle {
    /// The relay's id, written as the lease owner of the rows its poller
    /// claims. (Rows written for the fast path are leased to their
    /// transaction.)
    pub fn id(&self) -> Uuid {
        self.inner.link.owner
    }

    /// Makes the poller look for rows now instead of at its next tick.
    pub fn wake(&self) {
        self.inner.link.wake();
    }

    pub(crate) fn link(&self) -> RelayLink {
        self.inner.link.clone()
    }

    /// Stops the relay gracefully and waits for it.
    ///
    /// New commits go to the poller of whichever relay runs next; messages
    /// waiting on the fast path are released at once for other relays;
    /// in-flight publishes get up to `shutdown_timeout` to be confirmed and
    /// marked. Nothing is lost: a row not marked sent stays pending.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the relay keeps shutting down; calling again waits again.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let mut task = self.inner.task.lock().await;
        if let Some(handle) = task.as_mut() {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "txmsg relay task failed");
            }
            *task = None;
        }
    }
}

struct Shared<S, B> {
    store: S,
    broker: B,
    config: RelayConfig,
    /// Lease owner of rows this relay's poller claimed (the relay's id).
    /// Fast-path rows are leased to their transaction instead, so a row
    /// claimed by the poller makes later rows of its key skip the fast path
    /// (which would otherwise overtake it).
    poll_owner: Uuid,
    /// A sender kept to see whether reserved fast-path slots are still out.
    fast_probe: mpsc::Sender<FastMsg>,
    accepting: Arc<AtomicBool>,
    inflight: Arc<Semaphore>,
    marks: mpsc::UnboundedSender<Uuid>,
    /// Keys whose fast-path message failed, until when later fast-path
    /// messages of the key must go to the poller instead.
    held: Mutex<HashMap<KeyId, DateTime<Utc>>>,
    /// While the broker is unreachable: consecutive failures and when the
    /// poller may try again.
    outage: Mutex<(u32, Option<tokio::time::Instant>)>,
    seed: u64,
}

type KeyId = (String, String);

fn key_of(e: &Envelope) -> Option<KeyId> {
    e.key.as_ref().map(|k| (e.topic.clone(), k.clone()))
}

/// How one publish attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent,
    /// Failed, will be retried: the key is held back.
    Failed,
    /// Dead: with the park policy the key is held back.
    Dead,
    /// Not attempted (lease about to run out, or shutting down).
    Skipped,
    /// The broker could not be reached: released without counting an attempt.
    Unavailable,
}

async fn run<S: Store, B: Broker>(
    shared: Arc<Shared<S, B>>,
    fast_rx: mpsc::Receiver<FastMsg>,
    marks_rx: mpsc::UnboundedReceiver<Uuid>,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
) {
    let (publishers_done, done) = tokio::sync::oneshot::channel();
    let marker = tokio::spawn(mark_loop(Arc::clone(&shared), marks_rx, done));
    let watcher = shared
        .store
        .watch(crate::store::Waker(Arc::clone(&wake)))
        .map(|watch| tokio::spawn(watch.instrument(tracing::debug_span!("txmsg.relay.watch"))));
    tokio::join!(
        fast_loop(Arc::clone(&shared), fast_rx, stop.clone()),
        poll_loop(Arc::clone(&shared), wake, stop.clone()),
        purge_loop(Arc::clone(&shared), stop.clone()),
        stats_loop(Arc::clone(&shared), stop.clone()),
    );
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    // Both loops have drained their in-flight publishes; the marker flushes
    // what they confirmed and stops.
    drop(shared);
    let _ = publishers_done.send(());
    if let Err(e) = marker.await {
        tracing::error!(error = %e, "txmsg mark writer failed");
    }
}

impl<S: Store, B: Broker> Shared<S, B> {
    fn now(&self) -> DateTime<Utc> {
        self.config.clock.now()
    }

    fn retry_at(&self, env: &Envelope, attempts: u32) -> DateTime<Utc> {
        let delay = retry_delay(&self.config, attempts, self.seed ^ env.id.as_u64_pair().1);
        let now = self.now();
        chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(now)
    }

    /// Publishes one message held under `lease_until`, and records the outcome.
    async fn publish_one(&self, env: &Envelope, lease: Lease) -> Outcome {
        let (owner, lease_until) = (lease.owner, lease.until);
        let now = self.now();
        let topic = env.topic.clone();
        if env.is_expired(now) {
            return self
                .dead(env, owner, "expired before it could be delivered")
                .await;
        }
        if env.payload.len() > self.config.max_payload_bytes {
            let reason = Error::PayloadTooLarge {
                size: env.payload.len(),
                limit: self.config.max_payload_bytes,
            }
            .to_string();
            return self.dead(env, owner, &reason).await;
        }
        let Ok(_permit) = Arc::clone(&self.inflight).acquire_owned().await else {
            return Outcome::Skipped;
        };
        // Checked once the slot is ours: waiting for it may take long. A
        // confirm must be able to arrive before the lease runs out, or
        // another relay may have taken the row and publish it again.
        let margin = chrono::Duration::from_std(self.config.publish_timeout)
            .unwrap_or(chrono::Duration::MAX);
        if lease_until.signed_duration_since(self.now()) <= margin {
            self.release(&[env.id], owner).await;
            return Outcome::Skipped;
        }
        let started = std::time::Instant::now();
        fail::fail_point!("txmsg::relay::before_publish", |_| Outcome::Skipped);
        // A panicking broker client is a failed attempt, not a lost task
        // that would leave its key held forever.
        let publish = AssertUnwindSafe(self.broker.publish(env)).catch_unwind();
        let result = match tokio::time::timeout(self.config.publish_timeout, publish).await {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => Err(Error::Broker {
                message: format!("the broker client panicked: {}", panic_message(&*panic)),
                retryable: true,
                source: None,
            }),
            Err(_) => Err(Error::Broker {
                message: format!("no confirm within {:?}", self.config.publish_timeout),
                retryable: true,
                source: None,
            }),
        };
        match result {
            Ok(()) => {
                self.broker_reachable();
                metrics::histogram!(crate::metrics::PUBLISH_DURATION_SECONDS, "topic" => topic.clone())
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(crate::metrics::PUBLISHED_TOTAL, "topic" => topic).increment(1);
                fail::fail_point!("txmsg::relay::after_publish_before_mark", |_| Outcome::Sent);
                // The receiver lives until every publisher has finished.
                let _ = self.marks.send(env.id);
                Outcome::Sent
            }
            Err(e) if e.is_broker_unavailable() => {
                let pause = self.broker_unreachable();
                tracing::warn!(error = %error_chain(&e), pause = ?pause, "broker unavailable; message released, publishing paused");
                self.release(&[env.id], owner).await;
                Outcome::Unavailable
            }
            Err(e) => {
                let attempts = env.attempts.saturating_add(1);
                if !e.is_retryable() || attempts >= self.config.max_attempts {
                    let reason = if e.is_retryable() {
                        format!("gave up after {attempts} attempts: {}", error_chain(&e))
                    } else {
                        error_chain(&e)
                    };
                    return self.dead(env, owner, &reason).await;
                }
                metrics::counter!(crate::metrics::PUBLISH_RETRIES_TOTAL, "topic" => topic)
                    .increment(1);
                let failure = Failure {
                    id: env.id,
                    owner,
                    next_attempt_at: self.retry_at(env, attempts),
                    error: error_chain(&e),
                };
                tracing::warn!(attempt = attempts, error = %failure.error, retry_at = %failure.next_attempt_at, "publish failed");
                if let Err(e) = self.store.mark_failed(&failure).await {
                    tracing::error!(error = %error_chain(&e), "could not record a failed publish; the row is retried when its lease runs out");
                }
                Outcome::Failed
            }
        }
    }

    async fn dead(&self, env: &Envelope, owner: Uuid, reason: &str) -> Outcome {
        tracing::error!(reason, "message is dead");
        metrics::counter!(crate::metrics::DEAD_LETTERS_TOTAL, "topic" => env.topic.clone())
            .increment(1);
        if let Err(e) = self
            .store
            .mark_dead(env.id, owner, reason, self.now())
            .await
        {
            tracing::error!(error = %error_chain(&e), "could not mark a message dead; it is retried when its lease runs out");
        }
        Outcome::Dead
    }

    /// Whether a failure holds back the later messages of its key.
    fn holds_key(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Sent => false,
            Outcome::Dead => self.config.dead_key_policy == DeadKeyPolicy::Park,
            Outcome::Failed | Outcome::Skipped | Outcome::Unavailable => true,
        }
    }

    /// Publishes the messages of one key (or one keyless message) in order,
    /// stopping at the first that is not sent; the rest are released.
    async fn publish_group(&self, group: Vec<Envelope>, lease: Lease) {
        let mut rest = group.into_iter();
        while let Some(env) = rest.next() {
            let span = tracing::info_span!(
                "txmsg.publish",
                topic = %env.topic,
                key = env.key.as_deref(),
                message_id = %env.id,
                attempt = env.attempts + 1,
            );
            let outcome = self.publish_one(&env, lease).instrument(span).await;
            if self.holds_key(outcome) {
                let ids: Vec<Uuid> = rest.map(|e| e.id).collect();
                self.release(&ids, lease.owner).await;
                return;
            }
        }
    }

    /// Releases fast-path rows, each under its own transaction's lease.
    async fn release_fast(&self, msgs: &[FastMsg]) {
        let mut by_owner: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for m in msgs {
            by_owner
                .entry(m.lease.owner)
                .or_default()
                .push(m.envelope.id);
        }
        for (owner, ids) in by_owner {
            self.release(&ids, owner).await;
        }
    }

    async fn release(&self, ids: &[Uuid], owner: Uuid) {
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.store.release(ids, owner).await {
            tracing::warn!(error = %error_chain(&e), count = ids.len(), "could not release leases; they run out on their own");
        }
    }

    /// Records one more failure to reach the broker; returns the pause.
    fn broker_unreachable(&self) -> Duration {
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        outage.0 = outage.0.saturating_add(1);
        let pause = retry_delay(&self.config, outage.0, self.seed).min(Duration::from_secs(5));
        outage.1 = Some(tokio::time::Instant::now() + pause);
        pause
    }

    fn broker_reachable(&self) {
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if outage.0 != 0 {
            tracing::info!(failures = outage.0, "broker reachable again");
        }
        *outage = (0, None);
    }

    /// When the poller may publish again, if the broker was unreachable.
    fn paused_until(&self) -> Option<tokio::time::Instant> {
        let outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        outage.1.filter(|t| *t > tokio::time::Instant::now())
    }

    fn is_held(&self, key: &KeyId, now: DateTime<Utc>) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.get(key) {
            Some(until) if *until > now => true,
            Some(_) => {
                held.remove(key);
                false
            }
            None => false,
        }
    }

    fn hold(&self, key: KeyId) {
        // Any fast-path message of this key was leased before now + lease.
        let until = crate::tx::lease_until(self.now(), self.config.lease);
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, until);
    }
}

/// The delay before retry number `attempts` (1-based), with jitter.
pub(crate) fn retry_delay(config: &RelayConfig, attempts: u32, seed: u64) -> Duration {
    crate::backoff::delay(config.backoff_min, config.backoff_max, attempts, seed)
}

/// Deletes sent rows older than `sent_retention`, one batch at a time with a
/// pause between batches, so that a large backlog never holds locks for long
/// and producers keep committing meanwhile.
async fn purge_loop<S: Store, B: Broker>(
    shared: Arc<Shared<S, B>>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(retention) = shared
        .config
        .sent_retention
        .and_then(|r| chrono::Duration::from_std(r).ok())
    else {
        return;
    };
    let mut tick = tokio::time::interval(shared.config.purge_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        loop {
            let before = shared.now() - retention;
            let started = std::time::Instant::now();
            match shared
                .store
                .purge_sent(before, shared.config.purge_batch)
                .await
            {
                Ok(n) => {
                    if n > 0 {
                        metrics::counter!(crate::metrics::SENT_PURGED_TOTAL).increment(n);
                        tracing::debug!(rows = n, "purged sent rows");
                    }
                    if n < u64::from(shared.config.purge_batch) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging sent rows failed; trying at the next interval");
                    break;
                }
            }
            // Let producers and the other loops at the table between
            // batches: rest at least as long as the batch took.
            tokio::select! {
                () = stopped(&mut stop) => return,
                () = tokio::time::sleep(crate::backoff::purge_pause(started.elapsed())) => {}
            }
        }
    }
}

/// Sets the outbox gauges from [`Store::stats`] every `stats_interval`
/// (the first time at start). Off the publish path: a slow or failing count
/// delays only the next reading.
async fn stats_loop<S: Store, B: Broker>(
    shared: Arc<Shared<S, B>>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(every) = shared.config.stats_interval else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        // Cancel safe: `stats` is one read-only transaction.
        let stats = tokio::select! {
            () = stopped(&mut stop) => return,
            stats = shared.store.stats() => stats,
        };
        match stats {
            Ok(stats) => crate::metrics::record_outbox(&stats, shared.now()),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "counting the outbox failed; trying at the next interval");
            }
        }
    }
}

/// Resolves once shutdown was asked for (or the handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Messages from committed transactions of this process.
async fn fast_loop<S: Store, B: Broker>(
    shared: Arc<Shared<S, B>>,
    mut rx: mpsc::Receiver<FastMsg>,
    mut stop: watch::Receiver<bool>,
) {
    // Keys with a message in flight, and what waits behind it.
    let mut queues: HashMap<KeyId, VecDeque<FastMsg>> = HashMap::new();
    let mut running: JoinSet<bool> = JoinSet::new();
    // The key of each running task, so that a task that ends in a panic
    // still frees its key (held back, its row retried after its lease).
    let mut keys: HashMap<tokio::task::Id, KeyId> = HashMap::new();
    let spawn =
        |running: &mut JoinSet<bool>, keys: &mut HashMap<tokio::task::Id, KeyId>, msg: FastMsg| {
            let shared = Arc::clone(&shared);
            let key = key_of(&msg.envelope);
            let task = running.spawn(async move {
                let span = tracing::info_span!(
                    "txmsg.publish",
                    topic = %msg.envelope.topic,
                    key = msg.envelope.key.as_deref(),
                    message_id = %msg.envelope.id,
                    attempt = 1,
                    path = "fast",
                );
                let lease = msg.lease;
                let outcome = shared
                    .publish_one(&msg.envelope, lease)
                    .instrument(span)
                    .await;
                shared.holds_key(outcome)
            });
            if let Some(key) = key {
                keys.insert(task.id(), key);
            }
        };
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, failed) = match done {
                    Ok((id, failed)) => (id, failed),
                    Err(e) => {
                        tracing::error!(error = %e, "a fast-path publish task failed; its key is held back");
                        (e.id(), true)
                    }
                };
                let Some(key) = keys.remove(&id) else { continue };
                if failed {
                    shared.hold(key.clone());
                    let waiting: Vec<FastMsg> = queues.remove(&key).into_iter().flatten().collect();
                    shared.release_fast(&waiting).await;
                } else if let Some(next) = queues.get_mut(&key).and_then(VecDeque::pop_front) {
                    spawn(&mut running, &mut keys, next);
                } else {
                    queues.remove(&key);
                }
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                match key_of(&msg.envelope) {
                    None => spawn(&mut running, &mut keys, msg),
                    Some(key) => {
                        if shared.is_held(&key, shared.now()) {
                            shared.release(&[msg.envelope.id], msg.lease.owner).await;
                        } else if let Some(q) = queues.get_mut(&key) {
                            q.push_back(msg);
                        } else {
                            queues.insert(key, VecDeque::new());
                            spawn(&mut running, &mut keys, msg);
                        }
                    }
                }
            }
        }
    }
    // Shutting down: no new fast-path work; what waits is released for the
    // next relay, what is in flight gets the shutdown timeout. A transaction
    // may have reserved a slot before shutdown and commit after it: wait
    // (bounded) until every slot is used or given back, so that its row is
    // released too rather than left leased until the lease runs out.
    shared.accepting.store(false, Ordering::Release);
    let mut waiting: Vec<FastMsg> = queues.into_values().flatten().collect();
    let deadline = tokio::time::Instant::now() + shared.config.shutdown_timeout;
    loop {
        while let Ok(msg) = rx.try_recv() {
            waiting.push(msg);
        }
        let all_back = shared.fast_probe.capacity() == shared.fast_probe.max_capacity();
        if all_back || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            msg = rx.recv() => waiting.extend(msg),
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    rx.close();
    shared.release_fast(&waiting).await;
    drain(&mut running, shared.config.shutdown_timeout).await;
}

async fn drain<T: 'static>(running: &mut JoinSet<T>, timeout: Duration) {
    let all = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(timeout, all).await.is_err() {
        tracing::warn!(
            left = running.len(),
            "shutdown timeout: in-flight publishes abandoned, their rows stay pending"
        );
        running.abort_all();
    }
}

/// Rows of other processes, crash leftovers and retries.
async fn poll_loop<S: Store, B: Broker>(
    shared: Arc<Shared<S, B>>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut errors = 0u32;
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(shared.config.poll_interval) => {}
        }
        // Drain: claim again at once while batches come back full. The next
        // claim runs while the previous batch is still being published (at
        // most two batches at once), so the database round trips of a claim
        // overlap the broker's confirms instead of adding to them. This is
        // as safe as two relays claiming side by side: rows being published
        // are leased, so no claim takes them, and a leased pending row
        // blocks the later rows of its key.
        let mut previous: Option<JoinSet<()>> = None;
        loop {
            if *stop.borrow() {
                if let Some(mut running) = previous.take() {
                    drain(&mut running, shared.config.shutdown_timeout).await;
                }
                return;
            }
            if let Some(until) = shared.paused_until() {
                tokio::select! {
                    () = stopped(&mut stop) => {
                        if let Some(mut running) = previous.take() {
                            drain(&mut running, shared.config.shutdown_timeout).await;
                        }
                        return;
                    }
                    () = tokio::time::sleep_until(until) => {}
                }
            }
            let now = shared.now();
            let lease = crate::tx::fast_lease(shared.poll_owner, now, shared.config.lease);
            let req = ClaimRequest {
                lease,
                now,
                limit: shared.config.batch_size,
                per_key_limit: shared.config.per_key_batch,
                dead_parks_key: shared.config.dead_key_policy == DeadKeyPolicy::Park,
            };
            let claimed = shared
                .store
                .claim(&req)
                .instrument(tracing::debug_span!("txmsg.relay.claim", limit = req.limit))
                .await;
            let batch = match claimed {
                Ok(batch) => {
                    errors = 0;
                    batch
                }
                Err(e) => {
                    errors = errors.saturating_add(1);
                    let delay = retry_delay(&shared.config, errors, shared.seed);
                    tracing::warn!(error = %error_chain(&e), retry_in = ?delay, "claim failed");
                    tokio::select! {
                        () = stopped(&mut stop) => {
                            if let Some(mut running) = previous.take() {
                                drain(&mut running, shared.config.shutdown_timeout).await;
                            }
                            return;
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            let full = batch.len() >= req.limit as usize;
            if batch.is_empty() {
                // The rows left may be behind the keys still in flight:
                // claim again once the previous batch is done.
                match previous.take() {
                    Some(mut running) => {
                        if !settle(&shared, &mut running, &mut stop).await {
                            return;
                        }
                        continue;
                    }
                    None => break,
                }
            }
            tracing::debug!(count = batch.len(), "claimed");
            let mut running = JoinSet::new();
            for group in group_by_key(batch) {
                let shared = Arc::clone(&shared);
                running.spawn(async move { shared.publish_group(group, lease).await });
            }
            if let Some(mut earlier) = previous.take()
                && !settle(&shared, &mut earlier, &mut stop).await
            {
                drain(&mut running, shared.config.shutdown_timeout).await;
                return;
            }
            if full {
                previous = Some(running);
            } else {
                if !settle(&shared, &mut running, &mut stop).await {
                    return;
                }
                break;
            }
        }
    }
}

/// Waits for every publish of a batch; on shutdown drains them (within
/// `shutdown_timeout`) and returns `false`.
async fn settle<S: Store, B: Broker>(
    shared: &Shared<S, B>,
    running: &mut JoinSet<()>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        () = async { while running.join_next().await.is_some() {} } => true,
        () = stopped(stop) => {
            drain(running, shared.config.shutdown_timeout).await;
            false
        }
    }
}

/// Splits a claimed batch (in id order) into per-key groups, keeping order;
/// every keyless message is a group of its own.
fn group_by_key(batch: Vec<Envelope>) -> Vec<Vec<Envelope>> {
    let mut groups: Vec<Vec<Envelope>> = Vec::new();
    let mut index: HashMap<KeyId, usize> = HashMap::new();
    for env in batch {
        match key_of(&env) {
            None => groups.push(vec![env]),
            Some(k) => match index.get(&k) {
                Some(&i) => groups[i].push(env),
                None => {
                    index.insert(k, groups.len());
                    groups.push(vec![env]);
                }
            },
        }
    }
    groups
}

/// Writes sent marks in batches.
///
/// Runs until `done` fires, which [`run`] does once every publisher has
/// finished (including the shutdown drain), then flushes what is left: a
/// confirm that arrives during shutdown is still marked.
async fn mark_loop<S: Store, B: Broker>(
    shared: Arc<Shared<S, B>>,
    mut rx: mpsc::UnboundedReceiver<Uuid>,
    mut done: tokio::sync::oneshot::Receiver<()>,
) {
    let max = shared.config.mark_batch;
    let mut batch = Vec::with_capacity(max);
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = &mut done => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::sleep(shared.config.mark_interval);
        tokio::pin!(deadline);
        while batch.len() < max {
            tokio::select! {
                m = rx.recv() => match m { Some(id) => batch.push(id), None => break },
                () = &mut deadline => break,
            }
        }
        write_marks(&shared, &mut batch).await;
    }
    // The publishers are done; flush what they confirmed.
    while let Ok(id) = rx.try_recv() {
        batch.push(id);
        if batch.len() >= max {
            write_marks(&shared, &mut batch).await;
        }
    }
    write_marks(&shared, &mut batch).await;
}

async fn write_marks<S: Store, B: Broker>(shared: &Shared<S, B>, batch: &mut Vec<Uuid>) {
    if batch.is_empty() {
        return;
    }
    let mut tries = 0u32;
    loop {
        match shared.store.mark_sent(batch, shared.now()).await {
            Ok(()) => break,
            Err(e) if tries < 5 => {
                tries += 1;
                let delay = retry_delay(&shared.config, tries, shared.seed);
                tracing::warn!(error = %error_chain(&e), retry_in = ?delay, "could not mark messages sent");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::error!(error = %error_chain(&e), count = batch.len(), "could not mark messages sent; they will be published again");
                break;
            }
        }
    }
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let cfg = RelayConfig {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..RelayConfig::default()
        };
        let d1 = retry_delay(&cfg, 1, 7);
        let d4 = retry_delay(&cfg, 4, 7);
        assert!(
            d1 >= Duration::from_millis(100) && d1 < Duration::from_millis(200),
            "{d1:?}"
        );
        assert!(d4 >= Duration::from_millis(800), "{d4:?}");
        // Jitter adds at most the delay itself.
        assert!(retry_delay(&cfg, 30, 7) <= Duration::from_secs(2));
        // Same seed, same schedule.
        assert_eq!(retry_delay(&cfg, 3, 42), retry_delay(&cfg, 3, 42));
    }

    #[test]
    fn groups_keep_order_per_key() {
        let mk = |key: Option<&str>, n: u8| Envelope {
            id: Uuid::from_u128(u128::from(n)),
            topic: "t".into(),
            key: key.map(Into::into),
            idempotency_key: n.to_string(),
            headers: Default::default(),
            payload: vec![n],
            created_at: Utc::now(),
            expires_at: None,
            attempts: 0,
        };
        let groups = group_by_key(vec![
            mk(Some("a"), 1),
            mk(None, 2),
            mk(Some("b"), 3),
            mk(Some("a"), 4),
            mk(None, 5),
        ]);
        let ids: Vec<Vec<u8>> = groups
            .iter()
            .map(|g| g.iter().map(|e| e.payload[0]).collect())
            .collect();
        assert_eq!(ids, vec![vec![1, 4], vec![2], vec![3], vec![5]]);
    }
}
