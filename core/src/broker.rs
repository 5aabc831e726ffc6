//! The `Broker` trait: where messages are published.

use std::fmt::Debug;
use std::future::Future;

use crate::consumer::{SubscribeSpec, Subscription};
use crate::{Envelope, Result};

/// A message broker that the relay publishes to.
///
/// # Contract
///
/// - [`publish`](Broker::publish) resolves `Ok` only once the broker has
///   confirmed the message (a publisher-confirm ack on RabbitMQ, a PubAck on
///   JetStream, an entry id from Redis, a PUBACK at QoS 1 on MQTT). Only then
///   does the relay mark the row sent.
/// - A nack, a returned (unroutable) message, a lost connection or a timeout is
///   an `Err`; the row stays pending and is retried. Errors that will not go
///   away by retrying (a message the broker can never take) have
///   [`Error::is_retryable`](crate::Error::is_retryable) `false`.
/// - Calls may run concurrently; an adapter pipelines them (it does not wait
///   for one confirm before sending the next). Two calls for messages of the
///   same key are never made at once by the relay, so per-key order is the
///   order of calls.
/// - A broker reconnects by itself after its connection drops; a publish
///   during the outage fails (retryable) rather than waiting forever.
///
/// # Tracing
///
/// The callers in txmsg run each call in a span of their own: the relay runs
/// `publish` in [`broker_publish_span`], the consumer runs `subscribe` in
/// [`broker_subscribe_span`], with [`system`](Broker::system) naming the
/// broker. Implementations need not create these spans; a task a
/// subscription spawns may run in [`Span::current`](tracing::Span::current)
/// to stay under the caller's.
///
/// # Cancel safety
///
/// Dropping a `publish` future is safe: the message may or may not have
/// reached the broker, and the row stays pending, so it will be published
/// again (at least once).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a txmsg broker",
    note = "use a broker adapter such as `txmsg::rabbitmq::RabbitBroker` or `txmsg::memory::MemoryBroker`"
)]
pub trait Broker: Debug + Clone + Send + Sync + 'static {
    /// Publishes one message and waits for the broker's confirm.
    ///
    /// # Errors
    ///
    /// [`Error::Broker`](crate::Error::Broker) when the broker refused, did not
    /// confirm, or could not be reached.
    fn publish(&self, envelope: &Envelope) -> impl Future<Output = Result<()>> + Send;

    /// Subscribes `spec.group` to `spec.topic`.
    ///
    /// Every group receives every message published to the topic after the
    /// group first subscribed (the group's queue outlives its consumers);
    /// consumers of one group share its messages. A delivery not
    /// acknowledged (nacked, dropped, or its consumer gone) is delivered
    /// again. The adapter decodes the wire format into an [`Envelope`], or an
    /// [`Undecodable`](crate::consumer::Undecodable) with the reason.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`](crate::Error::BrokerUnavailable) if the
    /// broker cannot be reached; [`Error::Broker`](crate::Error::Broker) if
    /// it refused the subscription.
    fn subscribe(&self, spec: &SubscribeSpec) -> impl Future<Output = Result<Subscription>> + Send;

    /// The messaging system, as OpenTelemetry's `messaging.system` names it
    /// on the relay's and the consumer's spans (`rabbitmq`, `nats`, ...). A
    /// wrapper around another broker returns the inner broker's.
    fn system(&self) -> &'static str {
        "unknown"
    }
}

/// The span the relay runs each [`Broker::publish`] in: one name,
/// `txmsg.broker.publish`, and one set of fields for every broker
/// (`messaging.system`, `topic`, `key`, `message_id`, `attempt`), below the
/// relay's `publish <topic>` span.
///
/// Code that calls [`Broker::publish`] outside the relay can run the call in
/// it too.
///
/// # Examples
///
/// ```
/// use tracing::Instrument;
/// use txmsg_core::{Broker, Envelope, Result, broker_publish_span};
///
/// async fn send(broker: &impl Broker, envelope: &Envelope) -> Result<()> {
///     let span = broker_publish_span(broker.system(), envelope);
///     broker.publish(envelope).instrument(span).await
/// }
/// ```
pub fn broker_publish_span(system: &'static str, envelope: &Envelope) -> tracing::Span {
    tracing::debug_span!(
        "txmsg.broker.publish",
        messaging.system = system,
        topic = %envelope.topic,
        key = envelope.key.as_deref(),
        message_id = %envelope.id,
        attempt = envelope.attempts,
    )
}

/// The span the consumer runs each [`Broker::subscribe`] in (when it starts,
/// and again when a subscription ended): one name, `txmsg.broker.subscribe`,
/// and one set of fields for every broker (`messaging.system`, `topic`,
/// `group`).
///
/// Code that calls [`Broker::subscribe`] outside the consumer can run the
/// call in it too.
///
/// # Examples
///
/// ```
/// use tracing::Instrument;
/// use txmsg_core::consumer::{SubscribeSpec, Subscription};
/// use txmsg_core::{Broker, Result, broker_subscribe_span};
///
/// async fn join(broker: &impl Broker, spec: &SubscribeSpec) -> Result<Subscription> {
///     let span = broker_subscribe_span(broker.system(), spec);
///     broker.subscribe(spec).instrument(span).await
/// }
/// ```
pub fn broker_subscribe_span(system: &'static str, spec: &SubscribeSpec) -> tracing::Span {
    tracing::debug_span!(
        "txmsg.broker.subscribe",
        messaging.system = system,
        topic = %spec.topic,
        group = %spec.group,
    )
}
