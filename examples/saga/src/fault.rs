//! Simulated crashes: a [`Broker`] wrapper that makes one service die at a
//! chosen point of the flow.
//!
//! A service "dies" the way a killed process does: at the crash point its
//! publish or acknowledgement never completes, nothing it does afterwards
//! reaches the broker, and the supervisor then drops its whole Tokio
//! runtime (its tasks, its connections) without a graceful shutdown. What it
//! committed stays committed; what it had not acknowledged goes back to the
//! broker; what its relay had not published stays in its outbox.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use txmsg::adapter::BoxFuture;
use txmsg::consumer::{Acker, Delivery, SubscribeSpec, Subscription};
use txmsg::{Broker, Envelope, Result};

use crate::service::{ORDERS_PLACED, PAYMENTS_CHARGED, Service};

/// Where a service dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    /// The relay dies as it is about to publish its `nth` message of
    /// `topic` (counting from 1): the business rows and the outbox rows are
    /// committed, the message is not out.
    BeforePublish { topic: &'static str, nth: u32 },
    /// The consumer dies as it is about to acknowledge its `nth` delivery
    /// of `topic`: the handler's transaction (effects, inbox key, outgoing
    /// message) is committed, the broker does not know it.
    BeforeAck { topic: &'static str, nth: u32 },
}

impl CrashPoint {
    /// Where `service` dies when the demo is asked to crash it.
    pub(crate) fn of(service: Service) -> Self {
        match service {
            Service::Order => CrashPoint::BeforePublish {
                topic: ORDERS_PLACED,
                nth: 4,
            },
            Service::Payment => CrashPoint::BeforeAck {
                topic: ORDERS_PLACED,
                nth: 3,
            },
            Service::Shipping => CrashPoint::BeforeAck {
                topic: PAYMENTS_CHARGED,
                nth: 2,
            },
        }
    }
}

/// The crash plan of one run of a service, and whether it happened.
#[derive(Debug)]
pub(crate) struct Fault {
    service: Service,
    point: Option<CrashPoint>,
    /// Publishes or acknowledgements of the crash point's topic so far.
    seen: AtomicU32,
    /// Set at the crash point: from then on nothing reaches the broker.
    dead: AtomicBool,
    /// What happened at the crash point.
    what: OnceLock<String>,
}

impl Fault {
    /// A run of `service` that does not crash.
    pub(crate) fn none(service: Service) -> Arc<Self> {
        Self::new(service, None)
    }

    /// A run of `service` that dies at `point`.
    pub(crate) fn at(service: Service, point: CrashPoint) -> Arc<Self> {
        Self::new(service, Some(point))
    }

    fn new(service: Service, point: Option<CrashPoint>) -> Arc<Self> {
        Arc::new(Fault {
            service,
            point,
            seen: AtomicU32::new(0),
            dead: AtomicBool::new(false),
            what: OnceLock::new(),
        })
    }

    /// Whether the service reached its crash point.
    pub(crate) fn has_died(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// What happened at the crash point, once it was reached.
    pub(crate) fn what(&self) -> Option<&str> {
        self.what.get().map(String::as_str)
    }

    /// Whether acknowledgements of `topic` are watched.
    fn watches_acks_of(&self, topic: &str) -> bool {
        matches!(self.point, Some(CrashPoint::BeforeAck { topic: t, .. }) if t == topic)
    }

    /// Counts a publish; true if the service is dead or dies now.
    fn strikes_publish(&self, envelope: &Envelope) -> bool {
        if self.has_died() {
            return true;
        }
        let Some(CrashPoint::BeforePublish { topic, nth }) = self.point else {
            return false;
        };
        if envelope.topic != topic {
            return false;
        }
        self.count_towards(nth, || {
            format!(
                "{} service crashed: its orders are committed, but its relay died before publishing {topic} for order {}",
                self.service,
                envelope.key.as_deref().unwrap_or("?")
            )
        })
    }

    /// Counts an acknowledgement; true if the service is dead or dies now.
    fn strikes_ack(&self, delivered_topic: &str, key: Option<&str>) -> bool {
        if self.has_died() {
            return true;
        }
        let Some(CrashPoint::BeforeAck { topic, nth }) = self.point else {
            return false;
        };
        if delivered_topic != topic {
            return false;
        }
        self.count_towards(nth, || {
            format!(
                "{} service crashed: its transaction for order {} committed, then it died before acknowledging {topic}",
                self.service,
                key.unwrap_or("?")
            )
        })
    }

    fn count_towards(&self, nth: u32, what: impl FnOnce() -> String) -> bool {
        let seen = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if seen < nth {
            return false;
        }
        if seen == nth {
            let _ = self.what.set(what());
            self.dead.store(true, Ordering::SeqCst);
        }
        true
    }
}

/// Never completes: a dead process does not answer. Whatever the caller
/// holds (an unsettled delivery, an unconfirmed message) is released only
/// when its runtime is dropped.
async fn hang() -> Result<()> {
    std::future::pending::<Result<()>>().await
}

/// A broker whose publishes and acknowledgements go through a [`Fault`].
#[derive(Debug, Clone)]
pub(crate) struct FaultyBroker<B> {
    inner: B,
    fault: Arc<Fault>,
}

impl<B: Broker> FaultyBroker<B> {
    pub(crate) fn new(inner: B, fault: Arc<Fault>) -> Self {
        FaultyBroker { inner, fault }
    }
}

impl<B: Broker> Broker for FaultyBroker<B> {
    fn system(&self) -> &'static str {
        self.inner.system()
    }

    async fn publish(&self, envelope: &Envelope) -> Result<()> {
        if self.fault.strikes_publish(envelope) {
            return hang().await;
        }
        self.inner.publish(envelope).await
    }

    async fn subscribe(&self, spec: &SubscribeSpec) -> Result<Subscription> {
        let mut inner = self.inner.subscribe(spec).await?;
        if !self.fault.watches_acks_of(&spec.topic) {
            return Ok(inner);
        }
        let (tx, rx) = mpsc::channel(usize::from(spec.prefetch.max(1)));
        let fault = Arc::clone(&self.fault);
        let topic = spec.topic.clone();
        let pump = tokio::spawn(async move {
            while let Some(delivery) = inner.next().await {
                let message = delivery.message.clone();
                let key = message.as_ref().ok().and_then(|e| e.key.clone());
                let redelivered = delivery.redelivered;
                let acker = FaultyAcker {
                    inner: delivery,
                    topic: topic.clone(),
                    key,
                    fault: Arc::clone(&fault),
                };
                // A closed channel drops the delivery unsettled: the broker
                // delivers it again.
                if tx
                    .send(Delivery::new(message, redelivered, Box::new(acker)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Subscription::new(rx, Some(pump.abort_handle())))
    }
}

/// Settles a delivery through the broker's own acker unless the service
/// dies first.
#[derive(Debug)]
struct FaultyAcker {
    inner: Delivery,
    topic: String,
    key: Option<String>,
    fault: Arc<Fault>,
}

impl Acker for FaultyAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if self.fault.strikes_ack(&self.topic, self.key.as_deref()) {
                // Holds the delivery, unsettled, until the runtime is dropped.
                let _held = self;
                return hang().await;
            }
            self.inner.ack().await
        })
    }

    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if self.fault.has_died() {
                let _held = self;
                return hang().await;
            }
            self.inner.nack().await
        })
    }
}
