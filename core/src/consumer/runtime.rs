//! The consumer runtime: one per consumer group.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use futures_util::FutureExt;
use tracing::Instrument;
use uuid::Uuid;

use super::delivery::{Delivery, SubscribeSpec, Subscription, Undecodable};
use super::inbox::{ConsumerDeadLetter, InboxStore};
use super::observe::{Handled, Settlement};
use super::registry::{AnyCtx, HandlerCtx, HandlerOutcome, HandlerRecord, registered_handlers};
use crate::error::error_chain;
use crate::task::Tasks;
use crate::{Broker, Clock, DeadFilter, Envelope, Error, Outbox, Result, SystemClock};

/// Settings of a [`Consumer`].
///
/// Build with [`ConsumerConfig::new`] and set fields, taking the rest from
/// it:
///
/// ```
/// use txmsg_core::consumer::ConsumerConfig;
///
/// let config = ConsumerConfig { prefetch: 128, ..ConsumerConfig::new("billing") };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
pub struct ConsumerConfig {
    /// The consumer group; same rules as a topic name.
    pub group: String,
    /// Deliveries per topic handed out and not yet acknowledged. Default 64.
    pub prefetch: u16,
    /// Handler calls running at once per topic (one per key at a time).
    /// Default 16.
    pub concurrency: usize,
    /// First delay before a failed handler runs again. Default 100 ms.
    pub backoff_min: Duration,
    /// Longest delay between handler attempts. Default 10 s.
    pub backoff_max: Duration,
    /// Largest payload handled, in bytes; larger ones are dead. Default 1 MiB.
    pub max_payload_bytes: usize,
    /// How long shutdown waits for running handlers. Default 10 s.
    pub shutdown_timeout: Duration,
    /// How long the group's inbox keeps a processed key; older keys are
    /// purged, and a redelivery after that would be applied again. Must
    /// exceed the redelivery horizon (see [`ConsumerConfig::redelivery_window`]).
    /// Default 7 days.
    pub inbox_retention: Duration,
    /// How long a message may stay in the broker before it is delivered
    /// again (consumers down, deliveries handed back at shutdown). With the
    /// handlers' retries it makes the redelivery horizon that
    /// `inbox_retention` must exceed. Default 24 h.
    pub redelivery_window: Duration,
    /// How often old inbox keys are purged. Default 60 s.
    pub purge_interval: Duration,
    /// Most inbox keys deleted by one purge statement. Default 1 000.
    pub purge_batch: u32,
    /// The clock for inbox and dead-letter times. Default the system clock.
    pub clock: Arc<dyn Clock>,
}

impl fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("group", &self.group)
            .field("prefetch", &self.prefetch)
            .field("concurrency", &self.concurrency)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("inbox_retention", &self.inbox_retention)
            .field("redelivery_window", &self.redelivery_window)
            .field("purge_interval", &self.purge_interval)
            .field("purge_batch", &self.purge_batch)
            .finish_non_exhaustive()
    }
}

impl ConsumerConfig {
    /// Defaults for consumer group `group`.
    pub fn new(group: impl Into<String>) -> Self {
        ConsumerConfig {
            group: group.into(),
            prefetch: 64,
            concurrency: 16,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_payload_bytes: 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            redelivery_window: Duration::from_secs(24 * 3600),
            purge_interval: Duration::from_secs(60),
            purge_batch: 1_000,
            clock: Arc::new(SystemClock),
        }
    }

    /// The longest time after its first delivery that a message of a
    /// handler with `max_attempts` may be delivered again:
    /// `redelivery_window + max_attempts × backoff_max`.
    pub fn redelivery_horizon(&self, max_attempts: u32) -> Duration {
        self.redelivery_window
            .saturating_add(self.backoff_max.saturating_mul(max_attempts))
    }

    /// Checks that inbox keys outlive every redelivery of the group's
    /// handlers.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `inbox_retention`, saying why.
    pub fn check_retention(&self, handlers: &[&HandlerRecord]) -> Result<()> {
        let attempts = handlers.iter().map(|h| h.max_attempts).max().unwrap_or(1);
        let horizon = self.redelivery_horizon(attempts);
        if self.inbox_retention <= horizon {
            return Err(Error::config(
                "inbox_retention",
                format!(
                    "is {:?}, not longer than the redelivery horizon of group `{}` ({:?} = redelivery_window {:?} + {attempts} attempts × backoff_max {:?}): a message redelivered after its key was purged would be applied twice",
                    self.inbox_retention,
                    self.group,
                    horizon,
                    self.redelivery_window,
                    self.backoff_max
                ),
            ));
        }
        Ok(())
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first field that breaks its rule.
    pub fn validate(&self) -> Result<()> {
        crate::validate_topic(&self.group).map_err(|e| match e {
            Error::InvalidTopic { reason, .. } => Error::config("group", reason),
            other => other,
        })?;
        if self.prefetch == 0 {
            return Err(Error::config("prefetch", "must be greater than zero"));
        }
        if self.concurrency == 0 {
            return Err(Error::config("concurrency", "must be greater than zero"));
        }
        if self.max_payload_bytes == 0 {
            return Err(Error::config(
                "max_payload_bytes",
                "must be greater than zero",
            ));
        }
        if self.purge_interval.is_zero() {
            return Err(Error::config("purge_interval", "must be greater than zero"));
        }
        if self.purge_batch == 0 {
            return Err(Error::config("purge_batch", "must be greater than zero"));
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return Err(Error::config(
                "backoff_min",
                "must be greater than zero and at most backoff_max",
            ));
        }
        Ok(())
    }
}

/// The runtime of one consumer group: subscribes to the topic of each
/// `#[message_handler]` registered for the group and applies each message
/// once.
///
/// For each delivery: the handler runs in a transaction that also records
/// the message's idempotency key in the group's inbox; after the commit the
/// delivery is acknowledged. A redelivered message whose key is in the inbox
/// is acknowledged without running the handler. A failing handler is tried
/// again with backoff up to its `max_attempts`, then the message is kept as
/// a consumer dead letter with the last error, and acknowledged. A message
/// that cannot be read or deserialized is dead at once, with the reason.
/// Messages of one key are handled one at a time, in delivery order.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> txmsg::Result<()> {
/// use txmsg::consumer::{Consumer, ConsumerConfig};
/// use txmsg::memory::MemoryBroker;
/// use txmsg::prelude::*;
/// use txmsg::sqlite::SqliteStore;
///
/// let store = SqliteStore::connect("sqlite://billing.db").await?;
/// store.migrate().await?;
/// let consumer = Consumer::new(store, MemoryBroker::new(), ConsumerConfig::new("billing"))?
///     .start()
///     .await?;
/// // ... handlers run ...
/// consumer.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Consumer<S: InboxStore, B> {
    store: S,
    broker: B,
    config: ConsumerConfig,
    outbox: Outbox<S::Database>,
    observer: Option<mpsc::UnboundedSender<Handled>>,
}

impl<S: InboxStore, B: Broker> Consumer<S, B> {
    /// A consumer of `config.group` reading from `broker`, with its inbox in
    /// `store`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `config` breaks a rule.
    pub fn new(store: S, broker: B, config: ConsumerConfig) -> Result<Self> {
        config.validate()?;
        let outbox = Outbox::new(&store);
        Ok(Consumer {
            store,
            broker,
            config,
            outbox,
            observer: None,
        })
    }

    /// Reports every delivery the consumer is done with to `observer`: what
    /// tests await instead of sleeping (see [`Handled`]). Without an
    /// observer, nothing is reported and nothing is allocated for it. A
    /// closed observer is ignored.
    pub fn with_observer(mut self, observer: mpsc::UnboundedSender<Handled>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Begins handler transactions from `outbox`, so that messages handlers
    /// write go out through its relay right after commit.
    pub fn with_outbox(mut self, outbox: Outbox<S::Database>) -> Self {
        self.outbox = outbox;
        self
    }

    /// The handlers registered for this consumer's group, checked: at least
    /// one, one per topic, all for this store's database.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the handlers at fault.
    pub fn handlers(&self) -> Result<Vec<&'static HandlerRecord>> {
        handlers_for(&self.config.group, std::any::type_name::<S::Database>())
    }

    /// Subscribes to every topic of the group's handlers and starts handling.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the group has no handler, two handlers for one
    /// topic, or a handler for another database; a broker error if a
    /// subscription failed.
    pub async fn start(self) -> Result<ConsumerHandle<S>> {
        crate::metrics::describe();
        let handlers = self.handlers()?;
        self.config.check_retention(&handlers)?;
        let ctx: Arc<AnyCtx> = Arc::new(HandlerCtx {
            outbox: self.outbox.clone(),
            inbox: self.store.inbox(),
            group: self.config.group.clone(),
            clock: Arc::clone(&self.config.clock),
        });
        let tasks = Tasks::new();
        let counters = Arc::new(Counters::default());
        for record in &handlers {
            let spec = SubscribeSpec {
                group: self.config.group.clone(),
                topic: record.topic.to_owned(),
                prefetch: self.config.prefetch,
            };
            let subscription = self.broker.subscribe(&spec).await?;
            let worker = Worker {
                record,
                ctx: Arc::clone(&ctx),
                store: self.store.clone(),
                broker: self.broker.clone(),
                config: self.config.clone(),
                spec,
                counters: Arc::clone(&counters),
                observer: self.observer.clone(),
            };
            let span = tracing::info_span!("txmsg.consumer", group = %self.config.group, topic = record.topic);
            let run = worker.run(subscription, tasks.stop_signal());
            tasks.spawn("consumer", run.instrument(span));
        }
        let purger = purge_loop(self.store.clone(), self.config.clone(), tasks.stop_signal());
        tasks.spawn(
            "inbox purge",
            purger.instrument(tracing::info_span!("txmsg.inbox.purge", group = %self.config.group)),
        );
        Ok(ConsumerHandle {
            inner: Arc::new(HandleInner {
                store: self.store,
                group: self.config.group,
                ctx,
                handlers,
                counters,
                tasks,
            }),
        })
    }
}

/// The group's handlers, checked: per topic, the one handler whose
/// transaction type is the store's database. A program may register a
/// handler once per database it supports; two for one (topic, group,
/// database), or only handlers of other databases for a topic, are errors.
fn handlers_for(group: &str, database: &str) -> Result<Vec<&'static HandlerRecord>> {
    let all: Vec<&'static HandlerRecord> = registered_handlers()
        .into_iter()
        .filter(|h| h.group == group)
        .collect();
    if all.is_empty() {
        return Err(Error::config(
            "group",
            format!("no `#[message_handler]` is registered for group `{group}`"),
        ));
    }
    let mut chosen: Vec<&'static HandlerRecord> = Vec::new();
    let mut topics: Vec<&'static str> = all.iter().map(|h| h.topic).collect();
    topics.dedup();
    for topic in topics {
        let for_topic = all.iter().filter(|h| h.topic == topic);
        let matching: Vec<&&'static HandlerRecord> = for_topic
            .clone()
            .filter(|h| (h.database)() == database)
            .collect();
        match matching.as_slice() {
            [one] => chosen.push(one),
            [a, b, ..] => {
                return Err(Error::config(
                    "group",
                    format!(
                        "two handlers for topic `{topic}` in group `{group}`: {} and {}",
                        a.location(),
                        b.location()
                    ),
                ));
            }
            [] => {
                let others: Vec<String> = for_topic
                    .map(|h| format!("{} takes a `{}` transaction", h.location(), (h.database)()))
                    .collect();
                return Err(Error::config(
                    "group",
                    format!(
                        "no handler for topic `{topic}` in group `{group}` runs on the consumer's store (`{database}`): {}",
                        others.join("; ")
                    ),
                ));
            }
        }
    }
    Ok(chosen)
}

/// Counts of what a running consumer did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Messages whose handler ran and committed.
    pub applied: u64,
    /// Redeliveries recognised in the inbox and skipped.
    pub duplicates: u64,
    /// Messages kept as dead letters.
    pub dead: u64,
    /// Deliveries handed back to the broker (shutdown, store unavailable).
    pub requeued: u64,
}

#[derive(Debug, Default)]
struct Counters {
    applied: AtomicU64,
    duplicates: AtomicU64,
    dead: AtomicU64,
    requeued: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ConsumerStats {
        ConsumerStats {
            applied: self.applied.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            requeued: self.requeued.load(Ordering::Relaxed),
        }
    }
}

/// A running consumer. Cheap to clone.
#[derive(Debug)]
pub struct ConsumerHandle<S: InboxStore> {
    inner: Arc<HandleInner<S>>,
}

impl<S: InboxStore> Clone for ConsumerHandle<S> {
    fn clone(&self) -> Self {
        ConsumerHandle {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct HandleInner<S> {
    store: S,
    group: String,
    ctx: Arc<AnyCtx>,
    handlers: Vec<&'static HandlerRecord>,
    counters: Arc<Counters>,
    tasks: Tasks,
}

impl<S: fmt::Debug> fmt::Debug for HandleInner<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerHandle")
            .field("store", &self.store)
            .field("group", &self.group)
            .field("handlers", &self.handlers)
            .finish_non_exhaustive()
    }
}

impl<S: InboxStore> ConsumerHandle<S> {
    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.inner.group
    }

    /// What the consumer did since it started.
    pub fn stats(&self) -> ConsumerStats {
        self.inner.counters.snapshot()
    }

    /// The group's dead letters, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the store failed.
    pub async fn dead_letters(&self, filter: &DeadFilter) -> Result<Vec<ConsumerDeadLetter>> {
        self.inner
            .store
            .consumer_dead_letters(&self.inner.group, filter)
            .await
    }

    /// Runs the handler again for dead letter `id`. If it succeeds (or the
    /// message was applied meanwhile), the dead letter is removed in the
    /// same transaction as the effects; if it fails, it stays.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if no dead letter `id` exists for the group or no
    /// handler of the group takes its topic; [`Error::Database`] if the store
    /// failed.
    pub async fn replay(&self, id: Uuid) -> Result<HandlerOutcome> {
        let Some(dead) = self
            .inner
            .store
            .consumer_dead_letter(&self.inner.group, id)
            .await?
        else {
            return Err(Error::config(
                "id",
                format!("no dead letter {id} in group `{}`", self.inner.group),
            ));
        };
        let Some(record) = self
            .inner
            .handlers
            .iter()
            .find(|h| h.topic == dead.envelope.topic)
        else {
            return Err(Error::config(
                "id",
                format!(
                    "no handler of group `{}` takes topic `{}`",
                    self.inner.group, dead.envelope.topic
                ),
            ));
        };
        let span = tracing::info_span!("txmsg.replay", group = %self.inner.group, topic = record.topic, dead_letter = %id);
        Ok((record.call)(&*self.inner.ctx, &dead.envelope, Some(id))
            .instrument(span)
            .await)
    }

    /// Stops gracefully: no new deliveries are taken, running handlers get
    /// up to `shutdown_timeout` to finish (what they commit is acknowledged),
    /// and everything not acknowledged is delivered again later.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the consumer keeps stopping; calling again waits again.
    pub async fn shutdown(&self) {
        self.inner.tasks.shutdown().await;
    }
}

/// Handles the deliveries of one topic.
struct Worker<S, B> {
    record: &'static HandlerRecord,
    ctx: Arc<AnyCtx>,
    store: S,
    broker: B,
    config: ConsumerConfig,
    spec: SubscribeSpec,
    counters: Arc<Counters>,
    observer: Option<mpsc::UnboundedSender<Handled>>,
}

/// What a finished delivery tells the worker loop: nothing; its key is
/// looked up by task id, so that a task that panicked frees it too.
type Done = ();

impl<S: InboxStore, B: Broker> Worker<S, B> {
    async fn run(self, mut subscription: Subscription, stop: CancellationToken) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.config.concurrency));
        // Keys with a delivery being handled, and what waits behind it.
        let mut queues: HashMap<String, VecDeque<Delivery>> = HashMap::new();
        let mut running: JoinSet<Done> = JoinSet::new();
        let mut resubscribes = 0u32;
        let stop_for_tasks = stop.clone();
        let mut keys: HashMap<tokio::task::Id, String> = HashMap::new();
        let spawn = |running: &mut JoinSet<Done>,
                     keys: &mut HashMap<tokio::task::Id, String>,
                     d: Delivery,
                     key: Option<String>| {
            let this = Arc::clone(&this);
            let permits = Arc::clone(&permits);
            let stop = stop_for_tasks.clone();
            let task = running.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                this.process(d, stop).await;
            });
            if let Some(key) = key {
                keys.insert(task.id(), key);
            }
        };
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => {
                            // Its delivery was dropped unsettled: the broker
                            // delivers it again.
                            tracing::error!(error = %e, "a delivery task failed");
                            e.id()
                        }
                    };
                    let Some(key) = keys.remove(&id) else { continue };
                    match queues.get_mut(&key).and_then(VecDeque::pop_front) {
                        Some(next) => spawn(&mut running, &mut keys, next, Some(key)),
                        None => { queues.remove(&key); }
                    }
                }
                d = subscription.next(), if running.len() < this.config.concurrency * 4 => {
                    let Some(d) = d else {
                        // The broker ended the subscription (connection
                        // lost): subscribe again with backoff.
                        resubscribes = resubscribes.saturating_add(1);
                        let delay = crate::backoff::delay_between(this.config.backoff_min, this.config.backoff_max, resubscribes);
                        tracing::warn!(retry_in = ?delay, "subscription ended; subscribing again");
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(delay) => {}
                        }
                        match this.broker.subscribe(&this.spec).await {
                            Ok(s) => { subscription = s; resubscribes = 0; }
                            Err(e) => tracing::warn!(error = %error_chain(&e), "subscribing again failed"),
                        }
                        continue;
                    };
                    let key = d.message.as_ref().ok().and_then(|e| e.key.clone());
                    match key {
                        None => spawn(&mut running, &mut keys, d, None),
                        Some(k) => match queues.get_mut(&k) {
                            Some(q) => q.push_back(d),
                            None => {
                                queues.insert(k.clone(), VecDeque::new());
                                spawn(&mut running, &mut keys, d, Some(k));
                            }
                        },
                    }
                }
            }
        }
        // Stopping: take nothing new, and hand back what is not handled in
        // the order it was delivered, key by key: first what runs (its
        // handler finishes within the shutdown timeout or hands it back),
        // then what waits behind it, then what the adapter had received
        // and not yet handed out. A broker that redelivers in the order of
        // hand-backs (JetStream) then keeps each key's order for the next
        // consumer.
        let late = subscription.close().await;
        let all = async { while running.join_next().await.is_some() {} };
        if tokio::time::timeout(this.config.shutdown_timeout, all)
            .await
            .is_err()
        {
            tracing::warn!(
                left = running.len(),
                "shutdown timeout: running handlers abandoned; their messages are delivered again"
            );
            running.abort_all();
            // Wait until they are gone (their transactions dropped, their
            // deliveries handed back) before `shutdown` returns, so that a
            // consumer started next cannot apply a later message of a key
            // before an abandoned earlier one is back in the queue. An
            // aborted task ends at its next await; one that never yields
            // (blocking code in a handler) is left after a second timeout.
            let gone = async { while running.join_next().await.is_some() {} };
            if tokio::time::timeout(this.config.shutdown_timeout, gone)
                .await
                .is_err()
            {
                tracing::error!(
                    left = running.len(),
                    "aborted handlers did not stop (blocking code in a handler?); \
                     their messages are delivered again once they do"
                );
            }
        }
        let waiting = queues.into_values().flatten().chain(late);
        for d in waiting {
            this.count("requeued");
            if let Err(e) = d.nack().await {
                tracing::debug!(error = %error_chain(&e), "handing back a delivery failed; the broker delivers it again");
            }
        }
        drop(subscription);
    }

    /// Tells the observer, if there is one, that `envelope` is settled.
    fn report(&self, envelope: &Envelope, attempts: u32, outcome: impl FnOnce() -> Settlement) {
        if let Some(observer) = &self.observer {
            let _ = observer.send(Handled {
                group: self.config.group.clone(),
                topic: envelope.topic.clone(),
                message_id: envelope.id,
                idempotency_key: envelope.idempotency_key.clone(),
                key: envelope.key.clone(),
                attempts,
                outcome: outcome(),
            });
        }
    }

    fn count(&self, outcome: &'static str) {
        let counter = match outcome {
            "applied" => &self.counters.applied,
            "duplicate" => &self.counters.duplicates,
            "dead" => &self.counters.dead,
            _ => &self.counters.requeued,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            crate::metrics::CONSUMED_TOTAL,
            "topic" => self.record.topic,
            "group" => self.config.group.clone(),
            "outcome" => outcome
        )
        .increment(1);
    }

    /// Handles one delivery to the end: acknowledged once applied, skipped
    /// or dead; handed back if stopping or if its dead letter could not be
    /// stored.
    async fn process(&self, delivery: Delivery, stop: CancellationToken) {
        let envelope = match &delivery.message {
            Ok(e) => e.clone(),
            Err(bad) => {
                let reason = format!("undecodable message: {}", bad.reason);
                let kept = undecodable_envelope(bad);
                return self.dead(delivery, kept, reason, 0, stop).await;
            }
        };
        let span = tracing::info_span!(
            "txmsg.handle",
            topic = %envelope.topic,
            group = %self.config.group,
            key = envelope.key.as_deref(),
            message_id = %envelope.id,
            attempt = tracing::field::Empty,
            traceparent = envelope.headers.get(crate::TRACEPARENT).map(String::as_str),
        );
        if let Some(tp) = envelope.headers.get(crate::TRACEPARENT) {
            crate::trace::set_parent(&span, tp);
        }
        async {
            if envelope.payload.len() > self.config.max_payload_bytes {
                let reason = Error::PayloadTooLarge {
                    size: envelope.payload.len(),
                    limit: self.config.max_payload_bytes,
                }
                .to_string();
                return self.dead(delivery, envelope, reason, 0, stop).await;
            }
            let max = self.record.max_attempts.max(1);
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                tracing::Span::current().record("attempt", attempt);
                let started = std::time::Instant::now();
                // A panicking handler is a failed attempt: retried, then
                // dead with the panic message, its key freed for the next.
                // Its transaction was dropped while unwinding: rolled back.
                let call = (self.record.call)(&*self.ctx, &envelope, None);
                let outcome = match AssertUnwindSafe(call).catch_unwind().await {
                    Ok(outcome) => outcome,
                    Err(panic) => HandlerOutcome::Failed(format!(
                        "handler panicked: {}",
                        crate::error::panic_message(&*panic)
                    )),
                };
                metrics::histogram!(
                    crate::metrics::HANDLE_DURATION_SECONDS,
                    "topic" => self.record.topic,
                    "group" => self.config.group.clone()
                )
                .record(started.elapsed().as_secs_f64());
                match outcome {
                    HandlerOutcome::Applied => {
                        self.count("applied");
                        self.report(&envelope, attempt, || Settlement::Applied);
                        // A crash here: committed, never acknowledged (the
                        // delivery is dropped unsettled on return).
                        fail::fail_point!("txmsg::consumer::after_commit_before_ack", |_| {});
                        return ack(delivery).await;
                    }
                    HandlerOutcome::Duplicate => {
                        tracing::debug!(
                            "already applied; acknowledged without running the handler"
                        );
                        metrics::counter!(
                            crate::metrics::INBOX_DUPLICATES_TOTAL,
                            "topic" => self.record.topic,
                            "group" => self.config.group.clone()
                        )
                        .increment(1);
                        self.count("duplicate");
                        self.report(&envelope, attempt - 1, || Settlement::Duplicate);
                        return ack(delivery).await;
                    }
                    HandlerOutcome::Poison(reason) => {
                        return self
                            .dead(delivery, envelope, reason, attempt, stop.clone())
                            .await;
                    }
                    HandlerOutcome::WrongDatabase(db) => {
                        let reason = format!("handler {} is for `{db}`", self.record.location());
                        return self
                            .dead(delivery, envelope, reason, attempt, stop.clone())
                            .await;
                    }
                    HandlerOutcome::Failed(error) if attempt >= max => {
                        let reason = format!("gave up after {attempt} attempts: {error}");
                        return self
                            .dead(delivery, envelope, reason, attempt, stop.clone())
                            .await;
                    }
                    HandlerOutcome::Failed(error) => {
                        let delay = crate::backoff::delay_between(
                            self.config.backoff_min,
                            self.config.backoff_max,
                            attempt,
                        );
                        tracing::warn!(%error, retry_in = ?delay, "handler failed");
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = stop.cancelled() => {
                                self.count("requeued");
                                self.report(&envelope, attempt, || Settlement::Requeued);
                                let _ = delivery.nack().await;
                                return;
                            }
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Keeps the message as a dead letter, then acknowledges it. While the
    /// dead letter cannot be stored (the database is down), the delivery is
    /// kept, and with it its key: storing is tried again with backoff, and
    /// the next message of the key waits. Only a stopping consumer hands the
    /// message back, so nothing is lost.
    async fn dead(
        &self,
        delivery: Delivery,
        envelope: Envelope,
        reason: String,
        attempts: u32,
        stop: CancellationToken,
    ) {
        tracing::error!(%reason, "message is dead for this group");
        let dead = ConsumerDeadLetter::new(
            Uuid::now_v7(),
            self.config.group.clone(),
            envelope,
            reason,
            attempts,
            self.config.clock.now(),
        );
        let mut failures = 0u32;
        loop {
            match self.store.add_consumer_dead(&dead).await {
                Ok(()) => {
                    metrics::counter!(crate::metrics::DEAD_LETTERS_TOTAL, "topic" => self.record.topic)
                        .increment(1);
                    self.count("dead");
                    self.report(&dead.envelope, attempts, || {
                        Settlement::Dead(dead.reason.clone())
                    });
                    return ack(delivery).await;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = crate::backoff::delay_between(
                        self.config.backoff_min,
                        self.config.backoff_max,
                        failures,
                    );
                    tracing::warn!(
                        error = %error_chain(&e),
                        retry_in = ?delay,
                        "could not store the dead letter; its key waits"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.cancelled() => {
                            self.count("requeued");
                            self.report(&dead.envelope, attempts, || Settlement::Requeued);
                            let _ = delivery.nack().await;
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Deletes the group's inbox keys older than the retention, in batches,
/// every `purge_interval`, until stopped.
async fn purge_loop<S: InboxStore>(store: S, config: ConsumerConfig, stop: CancellationToken) {
    let retention =
        chrono::Duration::from_std(config.inbox_retention).unwrap_or(chrono::Duration::MAX);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(config.purge_interval) => {}
        }
        let Some(before) = config.clock.now().checked_sub_signed(retention) else {
            continue;
        };
        let mut purged = 0u64;
        loop {
            let started = std::time::Instant::now();
            match store
                .purge_inbox(&config.group, before, config.purge_batch)
                .await
            {
                Ok(n) => {
                    purged += n;
                    if n < u64::from(config.purge_batch) || stop.is_cancelled() {
                        break;
                    }
                    // Between full batches, rest three times as long as
                    // the batch took: the purge keeps at most a quarter of
                    // the database's time.
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(crate::backoff::purge_pause(started.elapsed())) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "inbox purge failed; trying again at the next interval");
                    break;
                }
            }
        }
        if purged > 0 {
            tracing::debug!(purged, "purged old inbox keys");
        }
    }
}

async fn ack(delivery: Delivery) {
    if let Err(e) = delivery.ack().await {
        // The effects are committed with the inbox key: a redelivery is
        // recognised and skipped.
        tracing::warn!(error = %error_chain(&e), "acknowledgement failed; the redelivery will be skipped");
    }
}

/// What can be kept of an undecodable delivery, as an envelope.
fn undecodable_envelope(bad: &Undecodable) -> Envelope {
    let mut e = Envelope::new(
        Uuid::now_v7(),
        bad.topic.clone(),
        String::new(),
        bad.body.clone(),
        chrono::Utc::now(),
    );
    e.headers = bad.headers.clone();
    e
}
