//! Building blocks of test support (feature `testing`): a clock that moves
//! only when told, an awaitable record of events, and a broker wrapper that
//! records what it confirmed and can deliver a message twice.
//!
//! `txmsg::testing` puts them together with the SQLite store and the
//! in-process broker; they work with any store and broker.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::{Notify, mpsc};
use tracing::Instrument;

use crate::consumer::{SubscribeSpec, Subscription};
use crate::{Broker, Clock, Envelope, Result};

/// A [`Clock`] that moves only when told: leases, retry schedules and
/// check-back times run out exactly when a test says so.
///
/// Clones share the time. It starts at the system time of its creation,
/// truncated to whole microseconds (what the stores keep).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use txmsg_core::Clock;
/// use txmsg_core::testing::ManualClock;
///
/// let clock = ManualClock::new();
/// let start = clock.now();
/// clock.advance(Duration::from_secs(30));
/// assert_eq!(clock.now() - start, chrono::Duration::seconds(30));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock standing at the current system time.
    pub fn new() -> Self {
        Self::starting_at(Utc::now())
    }

    /// A clock standing at `start` (truncated to whole microseconds).
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(start.trunc_subsecs(6))),
        }
    }

    /// Moves the clock forward by `by` (saturating at the largest time).
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        *now = now
            .checked_add_signed(by)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
    }

    /// Sets the clock to `to` (truncated to whole microseconds), forward or
    /// back.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.lock() = to.trunc_subsecs(6);
    }

    fn lock(&self) -> MutexGuard<'_, DateTime<Utc>> {
        self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.lock()
    }
}

/// What a wait was for, when it timed out: returned by the waits of
/// [`Recorder`] and of `txmsg::testing`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitTimeout {
    what: String,
    waited: Duration,
    seen: String,
}

impl WaitTimeout {
    /// A timeout of a wait for `what`, after `waited`, having seen `seen`.
    pub fn new(what: impl Into<String>, waited: Duration, seen: impl Into<String>) -> Self {
        WaitTimeout {
            what: what.into(),
            waited,
            seen: seen.into(),
        }
    }

    /// What was waited for.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}; {}",
            self.waited, self.what, self.seen
        )
    }
}

impl std::error::Error for WaitTimeout {}

/// An append-only record of events that can be awaited: every event pushed
/// wakes the waiters, which look at everything recorded so far.
///
/// Clones share the record.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use txmsg_core::testing::Recorder;
///
/// let seen: Recorder<u32> = Recorder::new();
/// let writer = seen.clone();
/// tokio::spawn(async move { writer.push(7) });
/// let n = seen
///     .wait_for("a seven", Duration::from_secs(5), |all| all.iter().find(|n| **n == 7).copied())
///     .await
///     .expect("the spawned task records 7");
/// assert_eq!(n, 7);
/// # }
/// ```
pub struct Recorder<T> {
    inner: Arc<RecorderInner<T>>,
}

struct RecorderInner<T> {
    items: Mutex<Vec<T>>,
    changed: Notify,
}

impl<T> Clone for Recorder<T> {
    fn clone(&self) -> Self {
        Recorder {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> Default for Recorder<T> {
    fn default() -> Self {
        Recorder {
            inner: Arc::new(RecorderInner {
                items: Mutex::new(Vec::new()),
                changed: Notify::new(),
            }),
        }
    }
}

impl<T> fmt::Debug for Recorder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<T> Recorder<T> {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `event` and wakes the waiters.
    pub fn push(&self, event: T) {
        self.lock().push(event);
        self.inner.changed.notify_waiters();
    }

    /// How many events were recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything recorded so far, in order.
    pub fn snapshot(&self) -> Vec<T>
    where
        T: Clone,
    {
        self.lock().clone()
    }

    /// Waits until `check`, called with everything recorded so far each time
    /// something is recorded, returns `Some`, and returns that.
    ///
    /// No polling: the wait sleeps until an event is recorded.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] naming `what` and how many events were seen, if
    /// `timeout` passes first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is consumed.
    pub async fn wait_for<R>(
        &self,
        what: impl fmt::Display,
        timeout: Duration,
        mut check: impl FnMut(&[T]) -> Option<R>,
    ) -> std::result::Result<R, WaitTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut changed = pin!(self.inner.changed.notified());
            // Registered before looking, so no push in between goes unseen.
            changed.as_mut().enable();
            if let Some(found) = check(&self.lock()) {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let last = check(&self.lock());
                return last.ok_or_else(|| {
                    WaitTimeout::new(
                        what.to_string(),
                        timeout,
                        format!("{} recorded", self.len()),
                    )
                });
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.inner
            .items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Send + 'static> Recorder<T> {
    /// A sender whose events are recorded here, for the observers of the
    /// consumer ([`Consumer::with_observer`](crate::consumer::Consumer::with_observer))
    /// and of the check-back worker
    /// ([`CheckBackWorker::with_observer`](crate::half::CheckBackWorker::with_observer)).
    /// A task on the current Tokio runtime moves the events over; it ends
    /// when every sender is dropped.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    pub fn sender(&self) -> mpsc::UnboundedSender<T> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                this.push(event);
            }
        });
        tx
    }
}

/// A publish the broker refused, as [`TestBroker`] records it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Refused {
    /// The message.
    pub envelope: Envelope,
    /// The broker's error, with its causes.
    pub error: String,
    /// Whether the error was "broker unavailable" (down, unreachable).
    pub unavailable: bool,
}

/// A [`Broker`] that wraps another, records every publish it confirmed and
/// every one it refused, and can deliver messages twice.
///
/// Clones share the records and the faults.
#[derive(Debug, Clone)]
pub struct TestBroker<B> {
    inner: B,
    published: Recorder<Envelope>,
    refused: Recorder<Refused>,
    duplicates: Arc<AtomicU32>,
}

impl<B: Broker> TestBroker<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        TestBroker {
            inner,
            published: Recorder::new(),
            refused: Recorder::new(),
            duplicates: Arc::default(),
        }
    }

    /// The wrapped broker.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Every message confirmed so far, once each time the relay published it.
    pub fn published(&self) -> &Recorder<Envelope> {
        &self.published
    }

    /// Every publish refused so far.
    pub fn refused(&self) -> &Recorder<Refused> {
        &self.refused
    }

    /// The next `messages` confirmed publishes are delivered twice to every
    /// subscriber, as an at-least-once broker may do (recorded once in
    /// [`published`](TestBroker::published)). Replaces any count set before.
    pub fn duplicate_next(&self, messages: u32) {
        self.duplicates.store(messages, Ordering::SeqCst);
    }

    /// Delivers `envelope` again, as a redelivery: published to the wrapped
    /// broker without being recorded.
    ///
    /// # Errors
    ///
    /// The wrapped broker's.
    ///
    /// # Cancel safety
    ///
    /// As the wrapped broker's `publish`.
    pub async fn redeliver(&self, envelope: &Envelope) -> Result<()> {
        let span = crate::broker_publish_span(self.inner.system(), envelope);
        self.inner.publish(envelope).instrument(span).await
    }

    fn take_duplicate(&self) -> bool {
        self.duplicates
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl<B: Broker> Broker for TestBroker<B> {
    fn system(&self) -> &'static str {
        self.inner.system()
    }

    /// Publishes through the wrapped broker and records the outcome; a
    /// duplicate asked for with [`duplicate_next`](TestBroker::duplicate_next)
    /// is published right after the first copy is confirmed.
    async fn publish(&self, envelope: &Envelope) -> Result<()> {
        match self.inner.publish(envelope).await {
            Ok(()) => {
                if self.take_duplicate()
                    && let Err(e) = self.inner.publish(envelope).await
                {
                    tracing::warn!(error = %e, "the injected duplicate could not be published");
                }
                self.published.push(envelope.clone());
                Ok(())
            }
            Err(e) => {
                self.refused.push(Refused {
                    envelope: envelope.clone(),
                    error: crate::error::error_chain(&e),
                    unavailable: e.is_broker_unavailable(),
                });
                Err(e)
            }
        }
    }

    fn subscribe(&self, spec: &SubscribeSpec) -> impl Future<Output = Result<Subscription>> + Send {
        self.inner.subscribe(spec)
    }
}
