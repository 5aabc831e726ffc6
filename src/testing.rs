//! Test support: run producers, handlers and check-backs in process, drive
//! time by hand, inject faults, and await what happened instead of
//! sleeping.
//!
//! A [`TestHarness`] wires together what a service runs, in process: a
//! store (by default SQLite, `sqlite::memory:`, migrated), the in-process broker
//! (wrapped in a [`TestBroker`] that records every publish), a
//! [`ManualClock`] that every component reads, a relay, and an [`Outbox`]
//! that hands commits to it. Consumer groups and the check-back worker are
//! started on demand and report to the harness.
//!
//! - **Hooks**, all awaitable with a timeout that fails with a
//!   [`WaitTimeout`] saying what was awaited and what was seen:
//!   [`wait_published`](TestHarness::wait_published) (the broker confirmed
//!   messages of a topic), [`wait_handled`](TestHarness::wait_handled) (a
//!   consumer settled deliveries), [`wait_checked`](TestHarness::wait_checked)
//!   (check-backs ran), [`wait_refused`](TestHarness::wait_refused) (the broker
//!   refused publishes). None of them polls or sleeps: each wakes when the
//!   event is recorded.
//! - **Time**: [`advance`](TestHarness::advance) moves the clock (and wakes
//!   the relay), so leases, retries and check-backs fall due at once.
//! - **Faults**: [`crash_after_commit`](TestHarness::crash_after_commit)
//!   (committed, never handed to the relay, as if the process died),
//!   [`restart_relay`](TestHarness::restart_relay),
//!   [`deliver_next_twice`](TestHarness::deliver_next_twice) and
//!   [`redeliver`](TestHarness::redeliver) (duplicate delivery),
//!   [`broker_down`](TestHarness::broker_down) /
//!   [`broker_up`](TestHarness::broker_up), and
//!   [`check_back_timeout`](TestHarness::check_back_timeout).
//!
//! Handlers and check-backs are the program's own `#[message_handler]` and
//! `#[check_back]` functions, found as in production, given the states of
//! [`with_state`](TestHarness::with_state). [`TestHarness::new`] runs on
//! an in-memory SQLite store, for handlers of `&mut Tx<'_, sqlx::Sqlite>`;
//! [`TestHarness::on`] runs on any store, so a PostgreSQL or MySQL service
//! tests its own handlers on its own database.
//!
//! # Examples
//!
//! A billing handler is applied once although its message is delivered
//! twice, and an order whose process "died" between commit and publish is
//! still billed once the restarted relay finds it:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use txmsg::prelude::*;
//! use txmsg::testing::TestHarness;
//! use txmsg::{Envelope, Tx};
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { id: i64, total_cents: i64 }
//!
//! #[txmsg::transactional_message(topic = "doc.orders.placed", key = id)]
//! async fn place_order(
//!     tx: &mut Tx<'_, sqlx::Sqlite>,
//!     id: i64,
//!     total_cents: i64,
//! ) -> Result<OrderPlaced, txmsg::Error> {
//!     sqlx::query("INSERT INTO orders (id, total_cents) VALUES (?, ?)")
//!         .bind(id)
//!         .bind(total_cents)
//!         .execute(&mut **tx)
//!         .await?;
//!     Ok(OrderPlaced { id, total_cents })
//! }
//!
//! #[txmsg::message_handler(topic = "doc.orders.placed", group = "doc-billing")]
//! async fn bill(
//!     tx: &mut Tx<'_, sqlx::Sqlite>,
//!     order: OrderPlaced,
//!     _envelope: &Envelope,
//! ) -> Result<(), txmsg::Error> {
//!     sqlx::query("INSERT INTO invoices (order_id, cents) VALUES (?, ?)")
//!         .bind(order.id)
//!         .bind(order.total_cents)
//!         .execute(&mut **tx)
//!         .await?;
//!     Ok(())
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let harness = TestHarness::new().await?;
//! sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, total_cents INTEGER)")
//!     .execute(harness.store().pool())
//!     .await?;
//! sqlx::query("CREATE TABLE invoices (order_id INTEGER, cents INTEGER)")
//!     .execute(harness.store().pool())
//!     .await?;
//! harness.consumer("doc-billing").await?;
//!
//! // Duplicate delivery: applied once, recognised once.
//! harness.deliver_next_twice(1);
//! place_order_and_commit(&harness.outbox(), 1, 4200).await?;
//! let handled = harness.wait_handled(2).await?;
//! assert!(handled[0].outcome == txmsg::consumer::Settlement::Applied);
//! assert!(handled[1].outcome == txmsg::consumer::Settlement::Duplicate);
//!
//! // Crash between commit and publish: nothing goes out...
//! harness.crash_after_commit();
//! place_order_and_commit(&harness.outbox(), 2, 990).await?;
//! assert_eq!(harness.published("doc.orders.placed").len(), 1);
//! // ...until a relay runs again and the dead one's lease has run out.
//! harness.restart_relay().await?;
//! harness.advance_past_lease();
//! harness.wait_published("doc.orders.placed", 2).await?;
//! harness.wait_handled(3).await?;
//!
//! let invoices: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM invoices")
//!     .fetch_one(harness.store().pool())
//!     .await?;
//! assert_eq!(invoices, 2);
//! harness.shutdown().await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use txmsg_core::consumer::{Consumer, ConsumerConfig, ConsumerHandle, Handled, InboxStore};
use txmsg_core::half::{CheckBackConfig, CheckBackHandle, CheckBackWorker, Checked, HalfOutbox};
use txmsg_core::{HalfStore, States};
use txmsg_memory::MemoryBroker;
use txmsg_sqlite::SqliteStore;
use uuid::Uuid;

use crate::{Envelope, Outbox, Relay, RelayConfig, RelayHandle, Result};

pub use txmsg_core::testing::{ManualClock, Recorder, Refused, TestBroker, WaitTimeout};

/// How long a wait lasts by default before it fails.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// A store, a broker, a clock and the runtime between them, in memory, with
/// hooks to await and faults to inject. See the [module docs](self).
///
/// Settings differ from the defaults where a test gains by it: the relay
/// polls every 50 ms and backs off from 10 ms, the check-back worker polls
/// every 10 ms, consumers retry handlers from 10 ms. Leases and check-back
/// schedules follow the [`ManualClock`], so they run out only when the test
/// [advances](TestHarness::advance) it.
///
/// Consumer groups receive only what is published after they start (as on a
/// broker where the group's queue is created by its first subscription):
/// start them with [`consumer`](TestHarness::consumer) before producing.
pub struct TestHarness<S: HalfStore + InboxStore = SqliteStore> {
    store: S,
    broker: TestBroker<MemoryBroker>,
    clock: ManualClock,
    relay_config: RelayConfig,
    running: Mutex<Running<S::Database>>,
    consumers: Mutex<Vec<ConsumerHandle<S>>>,
    check_backs: Mutex<Option<CheckBackHandle>>,
    /// Check-back timeouts asked for before the worker started.
    pending_timeouts: AtomicU32,
    handled: Recorder<Handled>,
    checked: Recorder<Checked>,
    wait: Duration,
    states: States,
}

/// The relay of the moment and the outbox that hands commits to it.
struct Running<DB: sqlx::Database> {
    relay: RelayHandle,
    outbox: HalfOutbox<DB>,
}

impl<S: HalfStore + InboxStore> fmt::Debug for TestHarness<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHarness")
            .field("store", &self.store)
            .field("broker", &self.broker)
            .field("clock", &self.clock)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl TestHarness<SqliteStore> {
    /// A migrated in-memory SQLite store, an in-process broker, a manual
    /// clock and a running relay.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) if the store could not be
    /// opened or migrated.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    pub async fn new() -> Result<Self> {
        let store = SqliteStore::connect("sqlite::memory:").await?;
        Self::on(store).await
    }
}

impl<S: HalfStore + InboxStore> TestHarness<S> {
    /// The harness on `store`, any store with an inbox and half messages
    /// (PostgreSQL, MySQL, SQLite), migrated here; an in-process broker, a
    /// manual clock and a running relay. The service's handlers of `store`'s
    /// database run in it as they run in production.
    ///
    /// The harness uses the store's tables as they are: give it a store of
    /// its own (e.g. on a schema or with table names of the test), so that
    /// other tests' rows are not published or claimed.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) if the store could not be
    /// migrated.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    pub async fn on(store: S) -> Result<Self> {
        store.migrate().await?;
        let clock = ManualClock::new();
        let relay_config = RelayConfig::default()
            .with_poll_interval(Duration::from_millis(50))
            .with_backoff_min(Duration::from_millis(10))
            .with_backoff_max(Duration::from_secs(1))
            .with_clock(std::sync::Arc::new(clock.clone()));
        let broker = TestBroker::new(MemoryBroker::new());
        let relay = Relay::new(store.clone(), broker.clone(), relay_config.clone())?.start();
        let outbox = HalfOutbox::new(&store).with_relay(&relay);
        Ok(TestHarness {
            store,
            broker,
            clock,
            relay_config,
            running: Mutex::new(Running { relay, outbox }),
            consumers: Mutex::new(Vec::new()),
            check_backs: Mutex::new(None),
            pending_timeouts: AtomicU32::new(0),
            handled: Recorder::new(),
            checked: Recorder::new(),
            wait: DEFAULT_WAIT,
            states: States::default(),
        })
    }

    /// Gives `state` to the consumers and the check-back worker the harness
    /// starts from now on: what their `State<T>` parameters receive, as
    /// [`Consumer::with_state`] does.
    pub fn with_state<T: Clone + Send + Sync + 'static>(mut self, state: T) -> Self {
        self.states.insert(state);
        self
    }

    /// Waits at most `wait` in each `wait_*` call (default 10 s).
    pub fn with_wait_timeout(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The store: its [`pool`](crate::SqlStore::pool) is where the test creates its
    /// business tables and checks their rows.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The broker; [`TestBroker::inner`] is the in-process broker itself.
    pub fn broker(&self) -> &TestBroker<MemoryBroker> {
        &self.broker
    }

    /// The clock every component reads.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// The relay's settings (the lease, ...).
    pub fn relay_config(&self) -> &RelayConfig {
        &self.relay_config
    }

    /// The outbox to produce with: commits are handed to the running relay.
    /// After [`restart_relay`](TestHarness::restart_relay), take it again.
    pub fn outbox(&self) -> Outbox<S::Database> {
        self.running().outbox.outbox().clone()
    }

    /// The outbox to produce half messages with (what
    /// `#[transactional_message(half, ...)]` producers take): commits are
    /// handed to the running relay.
    pub fn half_outbox(&self) -> HalfOutbox<S::Database> {
        self.running().outbox.clone()
    }

    /// The running relay.
    pub fn relay(&self) -> RelayHandle {
        self.running().relay.clone()
    }

    /// Starts a consumer of `group` on the harness's store and broker: it
    /// runs the group's `#[message_handler]`s and reports every delivery it
    /// settles to [`wait_handled`](TestHarness::wait_handled). Messages its
    /// handlers write go out through the harness's relay.
    ///
    /// # Errors
    ///
    /// As [`Consumer::start`]: no handler for the group, two for one topic, a
    /// handler for another database, a `State<T>` not given with
    /// [`with_state`](TestHarness::with_state).
    pub async fn consumer(&self, group: &str) -> Result<ConsumerHandle<S>> {
        let config = ConsumerConfig::new(group)
            .with_backoff_min(Duration::from_millis(10))
            .with_backoff_max(Duration::from_millis(200))
            .with_clock(std::sync::Arc::new(self.clock.clone()));
        let handle = Consumer::new(self.store.clone(), self.broker.clone(), config)?
            .with_outbox(self.outbox())
            .with_observer(self.handled.sender())
            .with_states(self.states.clone())
            .start()
            .await?;
        lock(&self.consumers).push(handle.clone());
        Ok(handle)
    }

    /// Starts the check-back worker (once; later calls return the running
    /// one): it runs the `#[check_back]`s of prepared messages that fall due
    /// and reports every check to [`wait_checked`](TestHarness::wait_checked).
    /// Checks fall due on the [`ManualClock`]: prepare, then
    /// [`advance`](TestHarness::advance) past `check_after`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) if a topic has two check-backs,
    /// or a check-back takes a `State<T>` not given with
    /// [`with_state`](TestHarness::with_state).
    pub fn check_backs(&self) -> Result<CheckBackHandle> {
        let mut slot = lock(&self.check_backs);
        if let Some(handle) = slot.as_ref() {
            return Ok(handle.clone());
        }
        let config = CheckBackConfig::default()
            .with_poll_interval(Duration::from_millis(10))
            .with_clock(std::sync::Arc::new(self.clock.clone()));
        let handle = CheckBackWorker::new(self.store.clone(), config)?
            .with_relay(&self.relay())
            .with_observer(self.checked.sender())
            .with_states(self.states.clone())
            .start()?;
        handle.time_out_next_checks(self.pending_timeouts.swap(0, Ordering::SeqCst));
        *slot = Some(handle.clone());
        Ok(handle)
    }

    // ---- time ----

    /// Moves the clock forward by `by` and wakes the relay, so that what
    /// fell due (leases run out, retries, check-backs) is taken up at once.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.relay().wake();
    }

    /// Moves the clock just past the relay's lease: rows a crashed relay
    /// held become free for the running one.
    pub fn advance_past_lease(&self) {
        self.advance(self.relay_config.lease() + Duration::from_secs(1));
    }

    // ---- faults ----

    /// The next commit that carries messages commits them but never hands
    /// them to the relay, as if the process died right after `COMMIT`. They
    /// stay leased to the relay; after [`restart_relay`](TestHarness::restart_relay)
    /// (or not) and [`advance_past_lease`](TestHarness::advance_past_lease),
    /// the poller publishes them.
    pub fn crash_after_commit(&self) {
        self.outbox().lose_next_handoffs(1);
    }

    /// Stops the relay and starts another on the same store, broker and
    /// clock, as a restarted process would; [`outbox`](TestHarness::outbox)
    /// then hands commits to the new one. Rows the old relay held stay
    /// leased to it until the lease runs out.
    ///
    /// Consumers started before keep their outbox: messages their handlers
    /// write reach the new relay through its poller.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) only if the relay settings
    /// were changed to invalid ones, which the harness does not do.
    pub async fn restart_relay(&self) -> Result<()> {
        let old = self.relay();
        old.shutdown().await;
        let relay = Relay::new(
            self.store.clone(),
            self.broker.clone(),
            self.relay_config.clone(),
        )?
        .start();
        let outbox = HalfOutbox::new(&self.store).with_relay(&relay);
        *self.running() = Running { relay, outbox };
        Ok(())
    }

    /// The next `messages` messages the broker confirms are delivered twice
    /// to every consumer group, as an at-least-once broker may do.
    pub fn deliver_next_twice(&self, messages: u32) {
        self.broker.duplicate_next(messages);
    }

    /// Delivers `envelope` again to every consumer group of its topic, as a
    /// redelivery would (it is not counted as published).
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`](crate::Error::BrokerUnavailable) while
    /// the broker is down.
    pub async fn redeliver(&self, envelope: &Envelope) -> Result<()> {
        self.broker.redeliver(envelope).await
    }

    /// Takes the broker down: publishes fail as unreachable (the relay keeps
    /// the messages and pauses), new subscriptions fail.
    pub fn broker_down(&self) {
        self.broker.inner().set_down(true);
    }

    /// Brings the broker back and wakes the relay, which publishes what
    /// waited once its pause (a few tens of milliseconds) is over.
    pub fn broker_up(&self) {
        self.broker.inner().set_down(false);
        self.relay().wake();
    }

    /// The next check-back gets no answer in time: the function is not
    /// called and the check counts as Unknown (checked again after the
    /// worker's interval). Applies once the worker runs if it does not yet.
    pub fn check_back_timeout(&self) {
        match lock(&self.check_backs).as_ref() {
            Some(handle) => handle.time_out_next_checks(1),
            None => {
                self.pending_timeouts.store(1, Ordering::SeqCst);
            }
        }
    }

    // ---- hooks ----

    /// The messages of `topic` the broker confirmed so far, in order, once
    /// per publish.
    pub fn published(&self, topic: &str) -> Vec<Envelope> {
        of_topic(&self.broker.published().snapshot(), topic)
    }

    /// Waits until the broker confirmed `n` messages of `topic` in all, and
    /// returns them (at least `n`).
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] if fewer were confirmed within the wait timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_published(
        &self,
        topic: &str,
        n: usize,
    ) -> std::result::Result<Vec<Envelope>, WaitTimeout> {
        let what = format!("{n} messages published to `{topic}`");
        self.broker
            .published()
            .wait_for(what, self.wait, |all| {
                let found = of_topic(all, topic);
                (found.len() >= n).then_some(found)
            })
            .await
    }

    /// Deliveries the consumers settled so far, in order.
    pub fn handled(&self) -> Vec<Handled> {
        self.handled.snapshot()
    }

    /// Waits until the consumers settled `n` deliveries in all (applied,
    /// recognised as duplicates, dead or handed back), and returns them in
    /// order.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] if fewer were settled within the wait timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_handled(&self, n: usize) -> std::result::Result<Vec<Handled>, WaitTimeout> {
        let what = format!("{n} deliveries handled");
        self.handled
            .wait_for(what, self.wait, |all| {
                (all.len() >= n).then(|| all.to_vec())
            })
            .await
    }

    /// Waits until a consumer settled a delivery of message `id`, and
    /// returns the first such event.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] if none was settled within the wait timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_handled_message(
        &self,
        id: Uuid,
    ) -> std::result::Result<Handled, WaitTimeout> {
        let what = format!("message {id} handled");
        self.handled
            .wait_for(what, self.wait, |all| {
                all.iter().find(|h| h.message_id == id).cloned()
            })
            .await
    }

    /// Check-backs run so far, in order.
    pub fn checked(&self) -> Vec<Checked> {
        self.checked.snapshot()
    }

    /// Waits until `n` check-backs ran in all, and returns them in order.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] if fewer ran within the wait timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_checked(&self, n: usize) -> std::result::Result<Vec<Checked>, WaitTimeout> {
        let what = format!("{n} check-backs run");
        self.checked
            .wait_for(what, self.wait, |all| {
                (all.len() >= n).then(|| all.to_vec())
            })
            .await
    }

    /// Waits until the broker refused `n` publishes in all (down, or a
    /// message refused through [`MemoryBroker::reject_if`]), and returns
    /// them in order.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] if fewer were refused within the wait timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_refused(&self, n: usize) -> std::result::Result<Vec<Refused>, WaitTimeout> {
        let what = format!("{n} publishes refused");
        self.broker
            .refused()
            .wait_for(what, self.wait, |all| {
                (all.len() >= n).then(|| all.to_vec())
            })
            .await
    }

    /// Stops the consumers, the check-back worker and the relay, each
    /// gracefully.
    pub async fn shutdown(&self) {
        let consumers = std::mem::take(&mut *lock(&self.consumers));
        for consumer in consumers {
            consumer.shutdown().await;
        }
        let check_backs = lock(&self.check_backs).take();
        if let Some(worker) = check_backs {
            worker.shutdown().await;
        }
        self.relay().shutdown().await;
    }

    fn running(&self) -> MutexGuard<'_, Running<S::Database>> {
        lock(&self.running)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn of_topic(all: &[Envelope], topic: &str) -> Vec<Envelope> {
    all.iter().filter(|e| e.topic == topic).cloned().collect()
}
