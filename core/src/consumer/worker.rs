//! One topic's deliveries in a consumer group: per-key order, the
//! handler's transaction with its inbox key, retries, dead letters and
//! hand-backs; and the inbox purge.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use futures_util::FutureExt;
use tracing::Instrument;
use uuid::Uuid;

use super::delivery::{Delivery, SubscribeSpec, Subscription, Undecodable};
use super::inbox::{ConsumerDeadLetter, InboxStore};
use super::observe::{Handled, Settlement};
use super::registry::{AnyCtx, HandlerOutcome, HandlerRecord};
use crate::error::error_chain;
use crate::task::join_all_within;
use crate::{Broker, Envelope, Error, broker_subscribe_span};

use super::config::ConsumerConfig;
use super::runtime::Counters;

/// Handles the deliveries of one topic.
pub(super) struct Worker<S, B> {
    pub(super) record: &'static HandlerRecord,
    pub(super) ctx: Arc<AnyCtx>,
    pub(super) store: S,
    pub(super) broker: B,
    pub(super) config: ConsumerConfig,
    pub(super) spec: SubscribeSpec,
    pub(super) counters: Arc<Counters>,
    pub(super) observer: Option<mpsc::UnboundedSender<Handled>>,
}

/// What a finished delivery tells the worker loop: nothing; its key is
/// looked up by task id, so that a task that panicked frees it too.
type Done = ();

impl<S: InboxStore, B: Broker> Worker<S, B> {
    pub(super) async fn run(self, mut subscription: Subscription, stop: CancellationToken) {
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
                        let span = broker_subscribe_span(this.broker.system(), &this.spec);
                        match this.broker.subscribe(&this.spec).instrument(span).await {
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
        if !join_all_within(&mut running, this.config.shutdown_timeout).await {
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
            if !join_all_within(&mut running, this.config.shutdown_timeout).await {
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
            otel.name = %format_args!("process {}", envelope.topic),
            otel.kind = "consumer",
            messaging.system = self.broker.system(),
            messaging.operation.type = "process",
            messaging.destination.name = %envelope.topic,
            messaging.consumer.group.name = %self.config.group,
            messaging.message.id = %envelope.id,
            topic = %envelope.topic,
            group = %self.config.group,
            key = envelope.key.as_deref(),
            message_id = %envelope.id,
            attempt = tracing::field::Empty,
            traceparent = envelope.headers.get(crate::TRACEPARENT).map(String::as_str),
        );
        if let Some(tp) = envelope.headers.get(crate::TRACEPARENT) {
            let state = envelope.headers.get(crate::TRACESTATE).map(String::as_str);
            crate::trace::set_parent(&span, tp, state);
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
                        fail_point!("txmsg::consumer::after_commit_before_ack", |_| {});
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
                    metrics::counter!(crate::metrics::DEAD_LETTERS_TOTAL, "topic" => self.record.topic, "side" => "consumer", "group" => self.config.group.clone())
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
pub(super) async fn purge_loop<S: InboxStore>(
    store: S,
    config: ConsumerConfig,
    stop: CancellationToken,
) {
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
        // The inbox's size after the purge: every key the group recorded.
        let everything = config.clock.now() + chrono::Duration::days(1);
        match store.count_inbox(&config.group, everything).await {
            Ok(keys) => {
                // A gauge is an f64: exact up to 2^53 keys.
                metrics::gauge!(crate::metrics::INBOX_KEYS, "group" => config.group.clone())
                    .set(keys as f64);
            }
            Err(e) => tracing::warn!(error = %error_chain(&e), "counting the inbox failed"),
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
