//! The consumer runtime: one per consumer group.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use tracing::Instrument;
use uuid::Uuid;

use super::delivery::SubscribeSpec;
use super::inbox::{ConsumerDeadLetter, InboxStore};
use super::observe::Handled;
use super::registry::{AnyCtx, HandlerCtx, HandlerOutcome, HandlerRecord, registered_handlers};
use crate::task::Tasks;
use crate::{Broker, DeadFilter, Error, Outbox, Result, States, broker_subscribe_span};

use super::config::ConsumerConfig;
use super::worker::{Worker, purge_loop};

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
    states: States,
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
            states: States::default(),
        })
    }

    crate::state::runner_setters! {
        /// Gives the group's handlers `state`: each handler parameter
        /// `State<T>` gets a clone of it (one value per type; a second value
        /// of a type replaces the first).
        ///
        /// # Examples
        ///
        /// ```no_run
        /// # async fn demo() -> txmsg::Result<()> {
        /// use txmsg::consumer::{Consumer, ConsumerConfig};
        /// use txmsg::memory::MemoryBroker;
        /// use txmsg::sqlite::SqliteStore;
        ///
        /// #[derive(Clone)]
        /// struct AppState {
        ///     fx_rates_url: String,
        /// }
        ///
        /// let store = SqliteStore::connect("sqlite://billing.db").await?;
        /// let app = AppState { fx_rates_url: "https://fx.example".into() };
        /// let consumer = Consumer::new(store, MemoryBroker::new(), ConsumerConfig::new("billing"))?
        ///     .with_state(app)
        ///     .start()
        ///     .await?;
        /// # Ok(()) }
        /// ```
        fn with_state;

        /// Gives the group's handlers every state of `states`, replacing those
        /// given before: one set shared by several consumers.
        fn with_states;

        /// Reports every delivery the consumer is done with to `observer`: what
        /// tests await instead of sleeping (see [`Handled`]). Without an
        /// observer, nothing is reported and nothing is allocated for it. A
        /// closed observer is ignored.
        fn with_observer(Handled);
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
    /// topic, a handler for another database, or a handler taking a
    /// `State<T>` the consumer was not given ([`with_state`](Self::with_state));
    /// a broker error if a subscription failed.
    pub async fn start(self) -> Result<ConsumerHandle<S>> {
        crate::metrics::describe();
        let handlers = self.handlers()?;
        self.config.check_retention(&handlers)?;
        for handler in &handlers {
            let who = format!("handler {}", handler.location());
            self.states
                .check(handler.states, &who, "Consumer::with_state")?;
        }
        let ctx: Arc<AnyCtx> = Arc::new(HandlerCtx {
            outbox: self.outbox.clone(),
            inbox: self.store.inbox(),
            group: self.config.group.clone(),
            clock: Arc::clone(&self.config.clock),
            states: self.states.clone(),
        });
        let tasks = Tasks::new();
        let counters = Arc::new(Counters::default());
        for record in &handlers {
            let spec = SubscribeSpec {
                group: self.config.group.clone(),
                topic: record.topic.to_owned(),
                prefetch: self.config.prefetch,
            };
            let subscription = self
                .broker
                .subscribe(&spec)
                .instrument(broker_subscribe_span(self.broker.system(), &spec))
                .await?;
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
pub(super) struct Counters {
    pub(super) applied: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) dead: AtomicU64,
    pub(super) requeued: AtomicU64,
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

    /// Whether every topic's worker and the inbox purge run, for a readiness
    /// or liveness probe: a task that ended on its own (a panic) says so
    /// here, without a call to [`shutdown`](ConsumerHandle::shutdown).
    pub fn health(&self) -> crate::Health {
        self.inner.tasks.health()
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
