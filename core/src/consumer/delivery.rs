//! What brokers hand to consumers: deliveries and subscriptions.

use std::fmt;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::BoxFuture;
use crate::{Envelope, Headers, Result};

/// What a consumer subscribes to: one topic, for one consumer group.
///
/// Every group gets every message of the topic once; within a group,
/// messages are shared among its consumers (RabbitMQ: a durable queue per
/// (group, topic) bound to the topic's exchange).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeSpec {
    /// The consumer group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// Most deliveries handed out and not yet acknowledged.
    pub prefetch: u16,
}

impl SubscribeSpec {
    /// Checks the spec as every broker does before it subscribes: the topic
    /// and the group are valid topic names, the prefetch is at least one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`](crate::Error::InvalidTopic) for the topic;
    /// [`Error::Config`](crate::Error::Config) naming `group` or
    /// `prefetch`.
    ///
    /// # Examples
    ///
    /// ```
    /// use txmsg_core::consumer::SubscribeSpec;
    ///
    /// let spec = SubscribeSpec { group: "billing".into(), topic: "orders.placed".into(), prefetch: 0 };
    /// assert!(spec.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        crate::validate_topic(&self.topic)?;
        crate::validate_topic(&self.group).map_err(|e| match e {
            crate::Error::InvalidTopic { reason, .. } => crate::Error::config("group", reason),
            other => other,
        })?;
        crate::check::positive("prefetch", self.prefetch)?;
        Ok(())
    }
}

/// A message the broker delivered that could not be read as an envelope
/// (no usable id, wrong content type, ...). The consumer dead-letters it
/// with `reason` and acknowledges it.
#[derive(Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// Why it could not be read.
    pub reason: String,
    /// The topic it arrived on.
    pub topic: String,
    /// Its headers, as far as they could be read.
    pub headers: Headers,
    /// Its body.
    pub body: Vec<u8>,
}

impl fmt::Debug for Undecodable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Undecodable")
            .field("reason", &self.reason)
            .field("topic", &self.topic)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Settles one delivery with the broker.
///
/// Each method consumes the acker: a delivery is settled once.
pub trait Acker: fmt::Debug + Send + Sync + 'static {
    /// Acknowledges: the broker forgets the message.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>>;

    /// Gives the message back: the broker delivers it again (to this or
    /// another consumer of the group).
    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}

/// One message delivered to a consumer group, not yet acknowledged.
#[derive(Debug)]
pub struct Delivery {
    /// The message, or why it could not be read.
    pub message: std::result::Result<Envelope, Undecodable>,
    /// Whether the broker says it delivered this message before.
    pub redelivered: bool,
    acker: Box<dyn Acker>,
}

impl Delivery {
    /// A delivery settled through `acker`.
    pub fn new(
        message: std::result::Result<Envelope, Undecodable>,
        redelivered: bool,
        acker: Box<dyn Acker>,
    ) -> Self {
        Delivery {
            message,
            redelivered,
            acker,
        }
    }

    /// Acknowledges the delivery.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`](crate::Error::BrokerUnavailable) if the
    /// connection is gone: the broker will deliver the message again.
    pub async fn ack(self) -> Result<()> {
        self.acker.ack().await
    }

    /// Hands the delivery back for redelivery.
    ///
    /// # Errors
    ///
    /// As [`ack`](Delivery::ack); a lost connection gives it back anyway.
    pub async fn nack(self) -> Result<()> {
        self.acker.nack().await
    }
}

/// The deliveries of one [`SubscribeSpec`], as a stream of [`Delivery`].
///
/// Dropping it stops the subscription; deliveries not acknowledged by then
/// are delivered again. A consumer that stops gracefully calls
/// [`close`](Subscription::close) first, so that it can hand back what the
/// adapter had already received in the order it was delivered.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Delivery>,
    stop: Option<tokio::task::AbortHandle>,
    closing: Option<oneshot::Sender<()>>,
}

/// Longest [`Subscription::close`] waits for its adapter to stop.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

impl Subscription {
    /// A subscription fed by an adapter's task through `rx`; `stop` ends that
    /// task when the subscription is dropped or closed.
    pub fn new(rx: mpsc::Receiver<Delivery>, stop: Option<tokio::task::AbortHandle>) -> Self {
        Subscription {
            rx,
            stop,
            closing: None,
        }
    }

    /// A subscription fed through `rx` by an adapter's task that stops
    /// taking new messages from the broker once the receiver of `closing`
    /// resolves (on [`close`](Subscription::close) or when the subscription
    /// is dropped), still passes on what it had already asked for, and then
    /// drops its sender.
    ///
    /// Use it where the broker may still send messages after the adapter
    /// stopped asking (a pull request that cannot be withdrawn): the
    /// consumer then hands them back after the ones it holds, in delivery
    /// order.
    pub fn with_close(rx: mpsc::Receiver<Delivery>, closing: oneshot::Sender<()>) -> Self {
        Subscription {
            rx,
            stop: None,
            closing: Some(closing),
        }
    }

    /// The next delivery; `None` once the subscription ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: no delivery is lost by dropping the call.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// Stops taking new deliveries and returns, in delivery order, the ones
    /// the adapter had already received and not yet handed out; afterwards
    /// [`next`](Subscription::next) returns `None`.
    ///
    /// The caller settles what it gets (a consumer that stops hands it back
    /// after the deliveries it holds). Waits at most [`CLOSE_TIMEOUT`] for
    /// the adapter; deliveries arriving later are dropped unsettled, which
    /// hands them back.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: deliveries taken before the future is dropped are
    /// dropped with it (unsettled, so they are delivered again).
    pub async fn close(&mut self) -> Vec<Delivery> {
        let mut left = Vec::new();
        match self.closing.take() {
            Some(closing) => {
                let _ = closing.send(());
                let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
                while let Ok(Some(d)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    left.push(d);
                }
                self.rx.close();
            }
            None => {
                self.rx.close();
                while let Ok(d) = self.rx.try_recv() {
                    left.push(d);
                }
            }
        }
        if let Some(stop) = self.stop.take() {
            stop.abort();
        }
        left
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.abort();
        }
    }
}
