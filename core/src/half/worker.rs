//! The check-back worker: resolves prepared messages whose outcome is unknown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::prepared::{ClaimedHalf, Decision, ResolveOutcome};
use super::registry::{CheckBackRecord, CheckStatus, check_backs_by_topic};
use crate::error::error_chain;
use crate::store::{ClaimRequest, Lease};
use crate::task::{Tasks, join_all};
use crate::{Error, HalfStore, RelayHandle, Result, States};

crate::config::settings! {
    /// Settings of a [`CheckBackWorker`]. Defaults follow RocketMQ 5: first
    /// check 6 s after a message was prepared (set by the producer, see
    /// [`CheckBackConfig::check_after`]), then 30 s apart, 15 checks.
    ///
    /// Start from `Default` and set what you need with the `with_` setters; the
    /// settings but the clock deserialize as [`RelayConfig`](crate::RelayConfig)'s do:
    ///
    /// ```
    /// use std::time::Duration;
    /// use txmsg_core::half::CheckBackConfig;
    ///
    /// let config = CheckBackConfig::default().with_max_checks(5);
    /// let loaded: CheckBackConfig = serde_json::from_str(r#"{ "max_checks": 5, "interval": "10s" }"#)?;
    /// assert_eq!((loaded.max_checks(), loaded.interval()), (config.max_checks(), Duration::from_secs(10)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[derive(Clone, Debug, serde::Deserialize)]
    #[non_exhaustive]
    #[serde(default = "CheckBackConfig::defaults", deny_unknown_fields)]
    pub struct CheckBackConfig {
        /// Time from preparing a message to its first check. Producers use it
        /// (through their attribute or call); here it is only validated. Default 6 s.
        check_after / with_check_after: Duration = Duration::from_secs(6),
        /// Time between checks that answered Unknown (or failed). Default 30 s.
        interval / with_interval: Duration = Duration::from_secs(30),
        /// Checks that really ran before the message is dead. Default 15.
        max_checks / with_max_checks: u32 = 15,
        /// Longest a check-back may take; past it, the check counts as Unknown.
        /// Default 10 s.
        timeout / with_timeout: Duration = Duration::from_secs(10),
        /// Most prepared messages claimed at once. Default 100.
        batch_size / with_batch_size: u32 = 100,
        /// Check-backs running at once. Default 16.
        concurrency / with_concurrency: usize = 16,
        /// How long a claimed message belongs to this worker. Default 60 s.
        lease / with_lease: Duration = Duration::from_secs(60),
        /// How often to look for due messages. Default 1 s.
        poll_interval / with_poll_interval: Duration = Duration::from_secs(1),
    }
}

impl CheckBackConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first field that breaks its rule.
    pub fn validate(&self) -> Result<()> {
        use crate::check::positive;
        positive("max_checks", self.max_checks)?;
        positive("batch_size", self.batch_size)?;
        positive("concurrency", self.concurrency)?;
        positive("interval", self.interval)?;
        positive("poll_interval", self.poll_interval)?;
        if self.timeout >= self.lease {
            return Err(Error::config(
                "timeout",
                "must be shorter than lease, or another worker could check the same message meanwhile",
            ));
        }
        Ok(())
    }
}

/// One check-back that ran, as reported to the observer set with
/// [`CheckBackWorker::with_observer`]: reported once its outcome is applied
/// (the message committed, rolled back, scheduled for another check, or
/// dead).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Checked {
    /// The topic.
    pub topic: String,
    /// The prepared message.
    pub message_id: Uuid,
    /// Which check this was for the message, from 1.
    pub check: u32,
    /// The verdict as counted: a check that failed or timed out counts as
    /// [`CheckStatus::Unknown`].
    pub status: CheckStatus,
    /// Why the check failed or timed out, if it did.
    pub error: Option<String>,
    /// Whether the check-back did not answer within the timeout.
    pub timed_out: bool,
    /// Whether the message is dead after this check (unresolved after
    /// `max_checks`, or expired).
    pub dead: bool,
}

/// Resolves prepared messages whose producer did not (a crash, a panic, a
/// lost connection) by asking the topic's `#[check_back]`.
///
/// Due prepared messages are claimed with a lease, so several workers on one
/// store never check the same message at once. Commit makes the message
/// deliverable, Rollback deletes it, Unknown (or an error, or a timeout)
/// schedules another check; after `max_checks` checks that really ran the
/// message is dead with the reason `unresolved after N checks`. A message
/// whose topic has no check-back is dead with that reason. A prepared
/// message past its expiry is checked one last time: Commit lets the relay
/// dead-letter it as expired, Rollback deletes it, anything else makes it
/// dead as expired.
#[derive(Debug)]
pub struct CheckBackWorker<S> {
    store: S,
    config: CheckBackConfig,
    relay: Option<RelayHandle>,
    observer: Option<mpsc::UnboundedSender<Checked>>,
    states: States,
}

impl<S: HalfStore> CheckBackWorker<S> {
    /// A worker on `store`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `config` breaks a rule.
    pub fn new(store: S, config: CheckBackConfig) -> Result<Self> {
        config.validate()?;
        Ok(CheckBackWorker {
            store,
            config,
            relay: None,
            observer: None,
            states: States::default(),
        })
    }

    crate::state::runner_setters! {
        /// Gives the check-backs `state`: each parameter `State<T>` gets a clone
        /// of it (one value per type; a second value of a type replaces the
        /// first).
        fn with_state;

        /// Gives the check-backs every state of `states`, replacing those given
        /// before.
        fn with_states;

        /// Reports every check that ran to `observer` (see [`Checked`]): what
        /// tests await instead of sleeping. A closed observer is ignored.
        fn with_observer(Checked);
    }

    /// Wakes `relay` when a check commits a message, so it goes out at once.
    pub fn with_relay(mut self, relay: &RelayHandle) -> Self {
        self.relay = Some(relay.clone());
        self
    }

    /// The registered check-backs by topic, checked: one per topic.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming both functions of a topic that has two.
    pub fn check_backs() -> Result<HashMap<&'static str, &'static CheckBackRecord>> {
        check_backs_by_topic()
    }

    /// Starts checking on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if a topic has two check-backs, or a check-back
    /// takes a `State<T>` the worker was not given
    /// ([`with_state`](Self::with_state)).
    pub fn start(self) -> Result<CheckBackHandle> {
        crate::metrics::describe();
        let check_backs = Self::check_backs()?;
        let mut records: Vec<&CheckBackRecord> = check_backs.values().copied().collect();
        records.sort_by_key(|c| (c.topic, c.name));
        for c in records {
            let who = format!("check-back {}", c.location());
            self.states
                .check(c.states, &who, "CheckBackWorker::with_state")?;
        }
        #[cfg(feature = "testing")]
        let timeouts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let shared = Arc::new(Shared {
            store: self.store,
            config: self.config,
            relay: self.relay,
            observer: self.observer,
            states: self.states,
            check_backs,
            owner: Uuid::now_v7(),
            #[cfg(feature = "testing")]
            timeouts: Arc::clone(&timeouts),
        });
        let span = tracing::info_span!("txmsg.check_back.worker", worker = %shared.owner);
        let tasks = Tasks::new();
        tasks.spawn(
            "check-back worker",
            run(shared, tasks.stop_signal()).instrument(span),
        );
        Ok(CheckBackHandle {
            tasks,
            #[cfg(feature = "testing")]
            timeouts,
        })
    }
}

/// A running check-back worker.
#[derive(Debug, Clone)]
pub struct CheckBackHandle {
    tasks: Tasks,
    #[cfg(feature = "testing")]
    timeouts: Arc<std::sync::atomic::AtomicU32>,
}

impl CheckBackHandle {
    /// Fault injection: the next `checks` check-backs this worker runs get
    /// no answer in time, as a check-back slower than `timeout`: the
    /// function is not called and the check counts as Unknown. Replaces any
    /// count set before; `0` turns it off.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn time_out_next_checks(&self, checks: u32) {
        self.timeouts
            .store(checks, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the worker runs, for a readiness or liveness probe: a worker
    /// whose task ended on its own (a panic) says so here, without a call to
    /// [`shutdown`](CheckBackHandle::shutdown).
    pub fn health(&self) -> crate::Health {
        self.tasks.health()
    }

    /// Stops after the checks in progress; what was claimed and not checked
    /// is checked again when its lease runs out.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the worker keeps stopping; calling again waits again.
    pub async fn shutdown(&self) {
        self.tasks.shutdown().await;
    }
}

struct Shared<S> {
    store: S,
    config: CheckBackConfig,
    relay: Option<RelayHandle>,
    observer: Option<mpsc::UnboundedSender<Checked>>,
    states: States,
    check_backs: HashMap<&'static str, &'static CheckBackRecord>,
    owner: Uuid,
    /// Checks still to be timed out (fault injection).
    #[cfg(feature = "testing")]
    timeouts: Arc<std::sync::atomic::AtomicU32>,
}

impl<S> Shared<S> {
    /// Whether this check is to time out, counting it.
    #[cfg(feature = "testing")]
    fn take_timeout(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.timeouts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    #[cfg(not(feature = "testing"))]
    fn take_timeout(&self) -> bool {
        false
    }
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(now)
}

async fn run<S: HalfStore>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(shared.config.concurrency));
    loop {
        let now = shared.config.clock.now();
        let req = ClaimRequest {
            lease: Lease {
                owner: shared.owner,
                until: after(now, shared.config.lease),
            },
            now,
            limit: shared.config.batch_size,
            per_key_limit: 0,
            dead_parks_key: false,
        };
        let claimed = shared.store.claim_prepared(&req).await;
        let batch = match claimed {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "claiming prepared messages failed");
                Vec::new()
            }
        };
        let full = batch.len() >= req.limit as usize;
        let mut running = JoinSet::new();
        let lease_until = req.lease.until;
        for prepared in batch {
            let shared = Arc::clone(&shared);
            let permits = Arc::clone(&permits);
            let stop = stop.clone();
            running.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                // Checked once the slot is ours: waiting for it may take
                // long, and once the lease is too short for a check another
                // worker may already be checking the same message.
                let left = lease_until.signed_duration_since(shared.config.clock.now());
                let needed = chrono::Duration::from_std(shared.config.timeout)
                    .unwrap_or(chrono::Duration::MAX);
                if left <= needed {
                    tracing::debug!(message_id = %prepared.envelope.id, "lease too short after waiting for a slot; checked when it runs out");
                    return;
                }
                check_one(&shared, prepared, stop).await;
            });
        }
        join_all(&mut running).await;
        if full {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(shared.config.poll_interval) => {}
        }
    }
}

/// Checks one prepared message and applies the verdict.
async fn check_one<S: HalfStore>(
    shared: &Shared<S>,
    prepared: ClaimedHalf,
    stop: CancellationToken,
) {
    let env = &prepared.envelope;
    let span = tracing::info_span!(
        "txmsg.check_back",
        topic = %env.topic,
        key = env.key.as_deref(),
        message_id = %env.id,
        check = prepared.checks + 1,
    );
    async {
        let now = shared.config.clock.now();
        let expired = env.is_expired(now);
        let Some(record) = shared.check_backs.get(env.topic.as_str()) else {
            let reason = format!("no `#[check_back]` is registered for topic `{}`", env.topic);
            dead(shared, env, &reason).await;
            return;
        };
        let no_answer = || format!("no answer within {:?}", shared.config.timeout);
        let (verdict, timed_out) = if shared.take_timeout() {
            (Err(no_answer()), true)
        } else {
            tokio::select! {
                r = tokio::time::timeout(shared.config.timeout, (record.call)(env, &shared.states)) => match r {
                    Ok(Ok(status)) => (Ok(status), false),
                    Ok(Err(e)) => (Err(e), false),
                    Err(_) => (Err(no_answer()), true),
                },
                // Stopping: this check did not really run; the lease runs out.
                () = stop.cancelled() => return,
            }
        };
        let outcome = match &verdict {
            Ok(CheckStatus::Commit) => "commit",
            Ok(CheckStatus::Rollback) => "rollback",
            Ok(CheckStatus::Unknown) => "unknown",
            Err(_) => "error",
        };
        metrics::counter!(crate::metrics::CHECK_BACKS_TOTAL, "topic" => env.topic.clone(), "outcome" => outcome).increment(1);
        let checks = prepared.checks.saturating_add(1);
        let (status, error) = match verdict {
            Ok(status) => (status, None),
            Err(e) => (CheckStatus::Unknown, Some(e)),
        };
        let mut is_dead = false;
        match status {
            CheckStatus::Commit => resolve(shared, env.id, Decision::Commit).await,
            CheckStatus::Rollback => resolve(shared, env.id, Decision::Rollback).await,
            CheckStatus::Unknown => {
                if let Some(e) = &error {
                    tracing::warn!(error = %e, "check-back failed; counted as Unknown");
                }
                if expired {
                    let reason = format!("expired while unresolved after {checks} checks");
                    is_dead = dead(shared, env, &reason).await;
                } else if checks >= shared.config.max_checks {
                    let reason = format!("unresolved after {checks} checks");
                    is_dead = dead(shared, env, &reason).await;
                } else {
                    let next = after(now, shared.config.interval);
                    if let Err(e) = shared.store.record_check(env.id, shared.owner, next, true).await {
                        tracing::warn!(error = %error_chain(&e), "could not record the check; it runs again when the lease runs out");
                    }
                }
            }
        }
        if let Some(observer) = &shared.observer {
            let _ = observer.send(Checked {
                topic: env.topic.clone(),
                message_id: env.id,
                check: checks,
                status,
                error,
                timed_out,
                dead: is_dead,
            });
        }
    }
    .instrument(span)
    .await;
}

async fn resolve<S: HalfStore>(shared: &Shared<S>, id: Uuid, resolve: Decision) {
    let now = shared.config.clock.now();
    match shared.store.resolve_prepared(id, resolve, now).await {
        Ok(ResolveOutcome::Done) => {
            tracing::info!(verdict = ?resolve, "prepared message resolved by its check-back");
            if resolve == Decision::Commit
                && let Some(relay) = &shared.relay
            {
                relay.wake();
            }
        }
        Ok(other) => {
            tracing::info!(verdict = ?resolve, found = ?other, "the producer settled the message first; the check-back's verdict is dropped")
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "could not apply the verdict; the message is checked again")
        }
    }
}

/// Marks the prepared message dead; `true` if it was, `false` if its
/// producer settled it first (or the mark failed and it is checked again).
async fn dead<S: HalfStore>(shared: &Shared<S>, env: &crate::Envelope, reason: &str) -> bool {
    let now = shared.config.clock.now();
    match shared
        .store
        .mark_prepared_dead(env.id, shared.owner, reason, now)
        .await
    {
        Ok(true) => {
            tracing::error!(reason, "prepared message is dead");
            metrics::counter!(crate::metrics::DEAD_LETTERS_TOTAL, "topic" => env.topic.clone(), "side" => "outbox")
                .increment(1);
            true
        }
        Ok(false) => {
            tracing::info!(
                reason,
                "the producer settled the message first; it is not made dead"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "could not mark the message dead; it is checked again");
            false
        }
    }
}
