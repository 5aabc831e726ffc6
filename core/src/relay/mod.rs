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

mod fast;
mod housekeeping;
mod marks;
mod poll;
mod publish;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::OwnedPermit;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::store::Lease;
use crate::task::{Tasks, join_all};
use crate::{Broker, Clock, Envelope, RelayConfig, Result, Store};
use fast::fast_loop;
use housekeeping::{purge_loop, stats_loop};
use marks::mark_loop;
use poll::poll_loop;

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
    pub(super) accepting: Arc<AtomicBool>,
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
    pub(super) store: S,
    pub(super) broker: B,
    pub(super) config: RelayConfig,
}

impl<S: Store, B: Broker> Relay<S, B> {
    /// A relay from `store` to `broker`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) if `config` breaks a rule.
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
            deadline: CancellationToken::new(),
        });
        let span = tracing::info_span!("txmsg.relay", relay = %owner);
        let tasks = Tasks::new();
        let run = run(shared, fast_rx, marks_rx, wake, tasks.stop_signal());
        tasks.spawn("relay", run.instrument(span));
        RelayHandle {
            inner: Arc::new(HandleInner { link, tasks }),
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
    tasks: Tasks,
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

    /// Whether the relay runs, for a readiness or liveness probe: a relay
    /// whose task ended on its own (a panic) says so here, without a call to
    /// [`shutdown`](RelayHandle::shutdown).
    pub fn health(&self) -> crate::Health {
        self.inner.tasks.health()
    }

    /// Stops the relay gracefully and waits for it, publishing what it
    /// holds first.
    ///
    /// 1. New commits stop using the fast path: their rows are left pending
    ///    for the poller of whichever relay runs next. This relay's poller
    ///    claims nothing more.
    /// 2. **Flush.** What the relay already holds is published, in order per
    ///    key: messages handed over by committed transactions (those queued
    ///    behind their key or waiting for a publish slot included) and the
    ///    rows the poller claimed. This goes on until nothing is left or
    ///    `shutdown_timeout` has passed since the call.
    /// 3. Past `shutdown_timeout`, whatever has not reached the broker is
    ///    released at once (pending, with no lease, so the next relay
    ///    publishes it without waiting for a lease to run out); publishes
    ///    already at the broker get up to `publish_timeout` more for their
    ///    confirm. A publish still unconfirmed then is abandoned: its row
    ///    stays leased until its lease runs out.
    ///
    /// Every confirmed publish is marked sent before this returns. Nothing
    /// is lost: a row not marked sent stays pending.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the relay keeps shutting down; calling again waits again.
    pub async fn shutdown(&self) {
        self.inner.tasks.shutdown().await;
    }
}

pub(super) struct Shared<S, B> {
    store: S,
    broker: B,
    config: RelayConfig,
    /// Lease owner of rows this relay's poller claimed (the relay's id).
    /// Fast-path rows are leased to their transaction instead, so a row
    /// claimed by the poller makes later rows of its key skip the fast path
    /// (which would otherwise overtake it).
    pub(super) poll_owner: Uuid,
    /// A sender kept to see whether reserved fast-path slots are still out.
    pub(super) fast_probe: mpsc::Sender<FastMsg>,
    accepting: Arc<AtomicBool>,
    pub(super) inflight: Arc<Semaphore>,
    pub(super) marks: mpsc::UnboundedSender<Uuid>,
    /// Keys whose fast-path message failed: until when later fast-path
    /// messages of the key must go to the poller instead, and the last
    /// transaction whose message of the key went there (the rest of its
    /// messages follow it, whenever they arrive).
    pub(super) held: Mutex<HashMap<KeyId, (DateTime<Utc>, Uuid)>>,
    /// While the broker is unreachable: consecutive failures and when the
    /// poller may try again.
    pub(super) outage: Mutex<(u32, Option<tokio::time::Instant>)>,
    pub(super) seed: u64,
    /// Fired `shutdown_timeout` after shutdown began: the flush is over,
    /// what has not reached the broker yet is released.
    pub(super) deadline: CancellationToken,
}

pub(super) type KeyId = (String, String);

pub(super) fn key_of(e: &Envelope) -> Option<KeyId> {
    e.key.as_ref().map(|k| (e.topic.clone(), k.clone()))
}

/// How one publish attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
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
    stop: CancellationToken,
) {
    let (publishers_done, done) = tokio::sync::oneshot::channel();
    let marker = tokio::spawn(mark_loop(Arc::clone(&shared), marks_rx, done));
    let watcher = shared
        .store
        .watch(crate::store::Waker(Arc::clone(&wake)))
        .map(|watch| tokio::spawn(watch.instrument(tracing::debug_span!("txmsg.relay.watch"))));
    // The flush after a stop lasts `shutdown_timeout` at most.
    let deadline = {
        let (stop, deadline) = (stop.clone(), shared.deadline.clone());
        let flush = shared.config.shutdown_timeout;
        tokio::spawn(async move {
            stop.cancelled().await;
            tokio::time::sleep(flush).await;
            deadline.cancel();
        })
    };
    tokio::join!(
        fast_loop(Arc::clone(&shared), fast_rx, stop.clone()),
        poll_loop(Arc::clone(&shared), wake, stop.clone()),
        purge_loop(Arc::clone(&shared), stop.clone()),
        stats_loop(Arc::clone(&shared), stop.clone()),
    );
    deadline.abort();
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

/// The delay before retry number `attempts` (1-based), with jitter.
pub(crate) fn retry_delay(config: &RelayConfig, attempts: u32, seed: u64) -> Duration {
    crate::backoff::delay(config.backoff_min, config.backoff_max, attempts, seed)
}

/// Waits for the publishes of `running` once the relay stops: they go on
/// until the flush deadline, then release what has not reached the broker;
/// a publish at the broker gets `publish_timeout` more, then is abandoned
/// (its row stays leased until the lease runs out).
pub(super) async fn drain<S, B, T: 'static>(shared: &Shared<S, B>, running: &mut JoinSet<T>) {
    let grace = shared.config.publish_timeout;
    let all = join_all(running);
    let limit = async {
        shared.deadline.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    let abandoned = tokio::select! {
        () = all => false,
        () = limit => true,
    };
    if abandoned {
        tracing::warn!(
            left = running.len(),
            "shutdown: publishes still unconfirmed are abandoned, their rows stay pending"
        );
        running.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let cfg = RelayConfig::default()
            .with_backoff_min(Duration::from_millis(100))
            .with_backoff_max(Duration::from_secs(1));
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
}
