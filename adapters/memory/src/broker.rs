use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use txmsg_core::{Broker, Envelope, Error, Result};

type Predicate = Arc<dyn Fn(&Envelope) -> bool + Send + Sync>;

/// An in-process broker.
///
/// Topics are exact names; a subscriber receives every message published to
/// its topic after it subscribed, in publish order.
///
/// # Examples
///
/// ```
/// use txmsg_memory::MemoryBroker;
///
/// let broker = MemoryBroker::new();
/// let mut sub = broker.subscribe("orders.placed");
/// assert_eq!(broker.published(), 0);
/// # drop(sub.try_recv());
/// ```
#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    subscribers: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Envelope>>>>,
    down: AtomicBool,
    reject: Mutex<Option<Predicate>>,
    published: AtomicU64,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("published", &self.published())
            .field("down", &self.inner.down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Messages of one topic, in publish order.
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

    /// Subscribes to `topic`.
    pub fn subscribe(&self, topic: &str) -> MemorySubscription {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers()
            .entry(topic.to_owned())
            .or_default()
            .push(tx);
        MemorySubscription { rx }
    }

    /// Makes every publish fail with [`Error::BrokerUnavailable`] while `down`
    /// is true, as a broker that cannot be reached.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// Refuses (as a nack, retryable) every message for which `predicate` is
    /// true; `None` accepts all again.
    pub fn reject_if(&self, predicate: Option<Predicate>) {
        *self.inner.reject.lock().unwrap_or_else(|p| p.into_inner()) = predicate;
    }

    /// Messages confirmed so far.
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::SeqCst)
    }

    fn subscribers(&self) -> MutexGuard<'_, HashMap<String, Vec<mpsc::UnboundedSender<Envelope>>>> {
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn try_publish(&self, envelope: &Envelope) -> Result<()> {
        if self.inner.down.load(Ordering::SeqCst) {
            return Err(Error::broker_unavailable("in-process broker is down", None));
        }
        let rejected = self
            .inner
            .reject
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|p| p(envelope));
        if rejected {
            return Err(Error::Broker {
                message: format!("message {} was nacked", envelope.id),
                retryable: true,
                source: None,
            });
        }
        let mut subs = self.subscribers();
        if let Some(list) = subs.get_mut(&envelope.topic) {
            list.retain(|tx| tx.send(envelope.clone()).is_ok());
        }
        self.inner.published.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Broker for MemoryBroker {
    async fn publish(&self, envelope: &Envelope) -> Result<()> {
        self.try_publish(envelope)
    }
}
