//! One publish step, shared by the fast path and the poller: publish with a
//! timeout, record the outcome, hold back the rest of a key that failed.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use tracing::Instrument;
use uuid::Uuid;

use super::{FastMsg, KeyId, Outcome, Shared, retry_delay};
use crate::error::{error_chain, panic_message};
use crate::store::{Failure, Lease};
use crate::{Broker, DeadKeyPolicy, Envelope, Error, Store};

impl<S: Store, B: Broker> Shared<S, B> {
    pub(super) fn now(&self) -> DateTime<Utc> {
        self.config.clock.now()
    }

    pub(super) fn retry_at(&self, env: &Envelope, attempts: u32) -> DateTime<Utc> {
        let delay = retry_delay(&self.config, attempts, self.seed ^ env.id.as_u64_pair().1);
        let now = self.now();
        chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(now)
    }

    /// Publishes one message held under `lease_until`, and records the outcome.
    pub(super) async fn publish_one(&self, env: &Envelope, lease: Lease) -> Outcome {
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
        // Past the shutdown deadline nothing starts: the row is released
        // for the next relay rather than left leased.
        let permit = tokio::select! {
            biased;
            () = self.deadline.cancelled() => None,
            permit = Arc::clone(&self.inflight).acquire_owned() => permit.ok(),
        };
        let Some(_permit) = permit else {
            self.release(&[env.id], owner).await;
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
        fail_point!("txmsg::relay::before_publish", |_| Outcome::Skipped);
        // A panicking broker client is a failed attempt, not a lost task
        // that would leave its key held forever.
        let span = crate::broker_publish_span(self.broker.system(), env);
        let publish = AssertUnwindSafe(self.broker.publish(env).instrument(span)).catch_unwind();
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
                fail_point!("txmsg::relay::after_publish_before_mark", |_| Outcome::Sent);
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

    pub(super) async fn dead(&self, env: &Envelope, owner: Uuid, reason: &str) -> Outcome {
        tracing::error!(reason, "message is dead");
        metrics::counter!(crate::metrics::DEAD_LETTERS_TOTAL, "topic" => env.topic.clone(), "side" => "outbox")
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
    pub(super) fn holds_key(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Sent => false,
            Outcome::Dead => self.config.dead_key_policy == DeadKeyPolicy::Park,
            Outcome::Failed | Outcome::Skipped | Outcome::Unavailable => true,
        }
    }

    /// The span of one publish attempt, with OpenTelemetry's messaging
    /// attributes (a `publish <topic>` producer span when exported through
    /// tracing-opentelemetry). `path` is `fast` or `poll`.
    pub(super) fn publish_span(
        &self,
        env: &Envelope,
        attempt: u32,
        path: &'static str,
    ) -> tracing::Span {
        tracing::info_span!(
            "txmsg.publish",
            otel.name = %format_args!("publish {}", env.topic),
            otel.kind = "producer",
            messaging.system = self.broker.system(),
            messaging.operation.type = "send",
            messaging.destination.name = %env.topic,
            messaging.message.id = %env.id,
            topic = %env.topic,
            key = env.key.as_deref(),
            message_id = %env.id,
            attempt,
            path,
        )
    }

    /// Publishes the messages of one key (or one keyless message) in order,
    /// stopping at the first that is not sent; the rest are released.
    pub(super) async fn publish_group(&self, group: Vec<Envelope>, lease: Lease) {
        let mut rest = group.into_iter();
        while let Some(env) = rest.next() {
            let span = self.publish_span(&env, env.attempts + 1, "poll");
            let outcome = self.publish_one(&env, lease).instrument(span).await;
            if self.holds_key(outcome) {
                let ids: Vec<Uuid> = rest.map(|e| e.id).collect();
                self.release(&ids, lease.owner).await;
                return;
            }
        }
    }

    /// Releases fast-path rows, each under its own transaction's lease.
    pub(super) async fn release_fast(&self, msgs: &[FastMsg]) {
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

    pub(super) async fn release(&self, ids: &[Uuid], owner: Uuid) {
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.store.release(ids, owner).await {
            tracing::warn!(error = %error_chain(&e), count = ids.len(), "could not release leases; they run out on their own");
        }
    }

    /// Records one more failure to reach the broker; returns the pause.
    pub(super) fn broker_unreachable(&self) -> Duration {
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        outage.0 = outage.0.saturating_add(1);
        let pause = retry_delay(&self.config, outage.0, self.seed).min(Duration::from_secs(5));
        outage.1 = Some(tokio::time::Instant::now() + pause);
        pause
    }

    pub(super) fn broker_reachable(&self) {
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        if outage.0 != 0 {
            tracing::info!(failures = outage.0, "broker reachable again");
        }
        *outage = (0, None);
    }

    /// When the poller may publish again, if the broker was unreachable.
    pub(super) fn paused_until(&self) -> Option<tokio::time::Instant> {
        let outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        outage.1.filter(|t| *t > tokio::time::Instant::now())
    }

    /// Whether the fast-path message of `key` written by transaction `owner`
    /// must go to the poller: while the key is held back after a failure,
    /// and for every later message of a transaction one of whose messages of
    /// the key went there (on the fast path it would overtake that one, even
    /// once the hold has run out). Records `owner` as the key's last
    /// transaction sent to the poller.
    pub(super) fn divert(&self, key: &KeyId, owner: Uuid, now: DateTime<Utc>) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.get_mut(key) {
            Some((until, diverted)) if *until > now || *diverted == owner => {
                *diverted = owner;
                true
            }
            Some(_) => {
                held.remove(key);
                false
            }
            None => false,
        }
    }

    /// Holds `key` back after the failure of a fast-path message of
    /// transaction `owner`.
    pub(super) fn hold(&self, key: KeyId, owner: Uuid) {
        // Any fast-path message of this key was leased before now + lease.
        let until = crate::tx::lease_until(self.now(), self.config.lease);
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (until, owner));
    }
}
