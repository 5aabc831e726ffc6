//! [`MemoryBroker`]: the [`Broker`] that lives in the process.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use txmsg_core::consumer::{Acker, Delivery, SubscribeSpec, Subscription};
use txmsg_core::{BoxFuture, Broker, Envelope, Error, Result};

type Predicate = Arc<dyn Fn(&Envelope) -> bool + Send + Sync>;

/// An in-process broker.
///
/// Topics are exact names (no wildcards). Two ways to receive messages:
///
/// - **Consumer groups**, through [`Broker::subscribe`], as the
///   [`Consumer`](txmsg_core::consumer::Consumer) runtime does. Each
///   (group, topic) has one queue, created by the group's first subscribe and
///   kept afterwards, so messages published while the group has no live
///   subscriber wait for it. Subscribers of one group compete for its queue.
///   A delivery that is nacked, or dropped without being settled (its
///   subscription or consumer gone), goes back into the queue at its
///   original place, ahead of everything published after it, marked
///   redelivered. Messages published before a group's first subscribe are
///   not kept for it.
/// - **Observers**, through [`observe`](MemoryBroker::observe): every
///   observer of a topic gets every message published to it afterwards, in
///   publish order, with nothing to acknowledge.
///
/// A publish is confirmed once the message is in every group queue and
/// observer queue of its topic. Nothing is kept across restarts, so this is
/// no replacement for a real broker in production, but it behaves like one
/// where the relay and the consumers can tell: confirms, refusals
/// ([`set_down`](MemoryBroker::set_down),
/// [`reject_if`](MemoryBroker::reject_if)), competing consumers, prefetch
/// and redelivery.
///
/// Clones share the queues.
///
/// # Examples
///
/// ```
/// use txmsg_memory::MemoryBroker;
///
/// let broker = MemoryBroker::new();
/// let mut observer = broker.observe("orders.placed");
/// assert_eq!(broker.published(), 0);
/// assert!(observer.try_recv().is_none());
/// ```
#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    topics: Mutex<Topics>,
    down: AtomicBool,
    reject: Mutex<Option<Predicate>>,
    published: AtomicU64,
}

/// Who receives the messages of each topic.
#[derive(Default)]
struct Topics {
    /// Observers per topic.
    observers: HashMap<String, Vec<mpsc::UnboundedSender<Envelope>>>,
    /// Group queues per topic, then per group.
    groups: HashMap<String, HashMap<String, Arc<GroupQueue>>>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("published", &self.published())
            .field("down", &self.inner.down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The messages of one topic, in publish order, as an observer of
/// [`MemoryBroker::observe`] receives them.
#[derive(Debug)]
pub struct MemorySubscription {
    rx: mpsc::UnboundedReceiver<Envelope>,
}

impl MemorySubscription {
    /// The next message; `None` once the broker is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is never lost by dropping the call.
    pub async fn recv(&mut self) -> Option<Envelope> {
        self.rx.recv().await
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Envelope> {
        self.rx.try_recv().ok()
    }
}

impl MemoryBroker {
    /// A broker with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Observes `topic`: the returned receiver gets every message published
    /// to it from now on, in publish order. Observers are no consumer group:
    /// they acknowledge nothing and take nothing away from the groups.
    pub fn observe(&self, topic: &str) -> MemorySubscription {
        let (tx, rx) = mpsc::unbounded_channel();
        self.topics()
            .observers
            .entry(topic.to_owned())
            .or_default()
            .push(tx);
        MemorySubscription { rx }
    }

    /// Makes every publish and every [`subscribe`](Broker::subscribe) fail
    /// with [`Error::BrokerUnavailable`] while `down` is true, as a broker
    /// that cannot be reached. Live subscriptions are not affected.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// Refuses (as a nack, retryable) every message for which `predicate` is
    /// true; `None` accepts all again.
    pub fn reject_if(&self, predicate: Option<Predicate>) {
        *self
            .inner
            .reject
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = predicate;
    }

    /// Messages confirmed so far.
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::SeqCst)
    }

    /// Messages waiting in the queue of `group` for `topic`, not counting
    /// those handed out and not yet settled; `0` if the group never
    /// subscribed to the topic.
    pub fn queued(&self, group: &str, topic: &str) -> usize {
        self.topics()
            .groups
            .get(topic)
            .and_then(|groups| groups.get(group))
            .map_or(0, |queue| queue.lock().len())
    }

    fn topics(&self) -> MutexGuard<'_, Topics> {
        self.inner
            .topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn check_up(&self) -> Result<()> {
        if self.inner.down.load(Ordering::SeqCst) {
            return Err(Error::broker_unavailable("in-process broker is down", None));
        }
        Ok(())
    }

    fn group_queue(&self, spec: &SubscribeSpec) -> Arc<GroupQueue> {
        Arc::clone(
            self.topics()
                .groups
                .entry(spec.topic.clone())
                .or_default()
                .entry(spec.group.clone())
                .or_default(),
        )
    }
}

impl Broker for MemoryBroker {
    fn system(&self) -> &'static str {
        "txmsg_memory"
    }

    /// Puts `envelope` into the queue of every group subscribed to its topic
    /// and hands it to every observer, then confirms.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] while [`set_down`](MemoryBroker::set_down)
    /// is on; a retryable [`Error::Broker`] for a message refused through
    /// [`reject_if`](MemoryBroker::reject_if).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the publish happens at the first poll, entirely or not
    /// at all.
    async fn publish(&self, envelope: &Envelope) -> Result<()> {
        self.check_up()?;
        let rejected = self
            .inner
            .reject
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|p| p(envelope));
        if rejected {
            return Err(Error::Broker {
                message: format!("message {} was nacked", envelope.id),
                retryable: true,
                source: None,
            });
        }
        let mut topics = self.topics();
        if let Some(list) = topics.observers.get_mut(&envelope.topic) {
            list.retain(|tx| tx.send(envelope.clone()).is_ok());
        }
        if let Some(groups) = topics.groups.get(&envelope.topic) {
            for queue in groups.values() {
                queue.push(envelope.clone());
            }
        }
        self.inner.published.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Subscribes `spec.group` to `spec.topic`, creating the group's queue on
    /// the first call. At most `spec.prefetch` deliveries of the
    /// subscription are unsettled at a time.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] while [`set_down`](MemoryBroker::set_down)
    /// is on; [`Error::InvalidTopic`] for a topic no broker accepts;
    /// [`Error::Config`] for a bad group name or a zero prefetch; a
    /// permanent [`Error::Broker`] outside a Tokio runtime, which must run
    /// the task that feeds the subscription.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the group's queue may be created, but nothing is taken
    /// from it.
    async fn subscribe(&self, spec: &SubscribeSpec) -> Result<Subscription> {
        spec.validate()?;
        self.check_up()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::broker_permanent("subscribing to the in-process broker needs a tokio runtime")
        })?;
        let queue = self.group_queue(spec);
        let capacity = usize::from(spec.prefetch);
        let (tx, rx) = mpsc::channel(capacity);
        let unsettled = Arc::new(Semaphore::new(capacity));
        let (closing, closed) = oneshot::channel();
        runtime.spawn(feed(queue, unsettled, tx, closed));
        Ok(Subscription::with_close(rx, closing))
    }
}

/// Moves messages from `queue` into one subscription, keeping at most as
/// many unsettled as `unsettled` has permits. Ends when the subscription is
/// closed or dropped (`closed` resolves), after passing on the message it
/// had taken, so that [`Subscription::close`] hands back every delivery in
/// order; stopping it from outside instead could leave a message taken
/// from the queue and sent after the close had looked, coming back only
/// once the task is gone, behind later messages of its key.
async fn feed(
    queue: Arc<GroupQueue>,
    unsettled: Arc<Semaphore>,
    tx: mpsc::Sender<Delivery>,
    mut closed: oneshot::Receiver<()>,
) {
    loop {
        // Every step is cancel safe: a message leaves the queue only when
        // `pop` completes, and then it is sent before `closed` is looked at
        // again.
        let next = async {
            let permit = Arc::clone(&unsettled).acquire_owned().await.ok()?;
            let slot = tx.reserve().await.ok()?;
            Some((permit, slot, queue.pop().await))
        };
        let (permit, slot, item) = tokio::select! {
            biased;
            _ = &mut closed => return,
            next = next => match next {
                Some(next) => next,
                None => return,
            },
        };
        let redelivered = item.redelivered;
        let message = item.envelope.clone();
        let acker = MemoryAcker {
            queue: Arc::clone(&queue),
            item: Some(item),
            _permit: permit,
        };
        slot.send(Delivery::new(Ok(message), redelivered, Box::new(acker)));
    }
}

/// A message in a group queue.
#[derive(Debug)]
struct Queued {
    /// Position in publish order: a message given back returns here.
    seq: u64,
    envelope: Envelope,
    redelivered: bool,
}

/// The queue of one (group, topic), shared by the group's subscribers.
#[derive(Default)]
struct GroupQueue {
    messages: Mutex<VecDeque<Queued>>,
    next_seq: AtomicU64,
    arrived: Notify,
}

impl GroupQueue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        self.messages.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a newly published message.
    fn push(&self, envelope: Envelope) {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        self.lock().push_back(Queued {
            seq,
            envelope,
            redelivered: false,
        });
        self.arrived.notify_waiters();
    }

    /// Puts a message handed out before back at its place, marked
    /// redelivered.
    fn give_back(&self, mut item: Queued) {
        item.redelivered = true;
        {
            let mut messages = self.lock();
            let at = messages.partition_point(|m| m.seq < item.seq);
            messages.insert(at, item);
        }
        self.arrived.notify_waiters();
    }

    /// Takes the first message, waiting for one.
    ///
    /// Cancel safe: a message is taken only when the future completes.
    async fn pop(&self) -> Queued {
        loop {
            let mut arrived = pin!(self.arrived.notified());
            // Registered before looking, so no push between the look and the
            // wait goes unnoticed.
            arrived.as_mut().enable();
            if let Some(item) = self.lock().pop_front() {
                return item;
            }
            arrived.await;
        }
    }
}

/// Settles one delivery of a group queue. Dropped unsettled, it gives the
/// message back as a nack does.
struct MemoryAcker {
    queue: Arc<GroupQueue>,
    item: Option<Queued>,
    /// Frees the subscription's prefetch slot once settled.
    _permit: OwnedSemaphorePermit,
}

impl fmt::Debug for MemoryAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAcker")
            .field("message_id", &self.item.as_ref().map(|i| i.envelope.id))
            .finish_non_exhaustive()
    }
}

impl Acker for MemoryAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.item = None;
        Box::pin(std::future::ready(Ok(())))
    }

    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        if let Some(item) = self.item.take() {
            self.queue.give_back(item);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.queue.give_back(item);
        }
    }
}
