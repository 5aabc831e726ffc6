//! [`RabbitBroker`]: the [`Broker`] for RabbitMQ.

use std::fmt;
use std::sync::Arc;

use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, message::BasicReturnMessage};
use tracing::{Instrument, debug, debug_span};
use txmsg_core::consumer::{SubscribeSpec, Subscription};
use txmsg_core::{Broker, Envelope, Error, Result};

use crate::config::RabbitConfig;
use crate::confirm::Outcome;
use crate::link::{Down, Shared, broker_error, declare_bound_queue, driver_error};
use crate::url::BrokerUrl;

/// Reply code of a normal close.
const REPLY_SUCCESS: u16 = 200;

/// A [`Broker`] that publishes to a RabbitMQ topic exchange with publisher
/// confirms.
///
/// Each message goes to the exchange named in [`RabbitConfig`] with its topic
/// as the routing key, persistent, as JSON, in CloudEvents binary content mode
/// (see [`CLOUDEVENTS_PREFIX`](crate::CLOUDEVENTS_PREFIX) for the headers).
/// [`publish`](Broker::publish) resolves `Ok` only once RabbitMQ has confirmed
/// the message. Publishes are pipelined: concurrent calls share one channel
/// and each waits for its own confirm.
///
/// When the connection or channel is lost, the broker reconnects by itself
/// in the background, with exponential backoff
/// ([`RabbitConfig::reconnect_backoff`]), and declares the exchange again.
/// Until it is back, publishes fail at once with
/// [`Error::BrokerUnavailable`]; they never wait for the connection.
///
/// Consumer groups read through [`subscribe`](Broker::subscribe): a durable
/// queue per (group, topic), named by [`queue_name`](Self::queue_name),
/// consumed on a channel of its own per subscription.
///
/// Clones share the connection. Dropping the last clone closes it.
///
/// # Examples
///
/// ```no_run
/// use txmsg_rabbitmq::{RabbitBroker, RabbitConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = RabbitConfig::default().with_exchange("shop")?.with_source("/orders")?;
/// let broker = RabbitBroker::connect("amqp://guest:guest@127.0.0.1:5672/%2f", config).await?;
/// // A durable queue that receives every `orders.*` message.
/// broker.bind_queue("billing.orders", "orders.*").await?;
/// // Hand `broker` to a `Relay`; it publishes through `Broker::publish`.
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RabbitBroker {
    shared: Arc<Shared>,
}

impl fmt::Debug for RabbitBroker {
    // The URL is shown with its password masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("url", &self.shared.url)
            .field("exchange", &self.exchange())
            .field("mandatory", &self.shared.config.mandatory())
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl RabbitBroker {
    /// Connects to RabbitMQ at `url`, opens a channel in publisher-confirm
    /// mode and declares the exchange (topic, durable).
    ///
    /// `url` is an `amqp://user:password@host:port/vhost` URL (`amqps://`
    /// with the `tls` feature); the default virtual host `/` is written
    /// `%2f`. The password is never logged nor shown by `Debug`.
    ///
    /// Must be called inside a Tokio runtime, which then also runs the
    /// reconnect task.
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] for `url` if it is not an AMQP URL.
    /// - [`Error::Broker`] if RabbitMQ cannot be reached (retryable, with the
    ///   driver's error as its source), refuses the credentials or virtual
    ///   host, or refuses the exchange declaration because an exchange of
    ///   that name exists with other settings (both not retryable).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the attempt and closes any connection it
    /// opened.
    pub async fn connect(url: &str, config: RabbitConfig) -> Result<Self> {
        config.validate()?;
        let url = BrokerUrl::parse(url)?;
        let span = debug_span!("txmsg.rabbitmq.connect", url = %url, exchange = config.exchange());
        let shared = Shared::connect(url, config).instrument(span).await?;
        Ok(RabbitBroker { shared })
    }

    /// The exchange messages are published to.
    pub fn exchange(&self) -> &str {
        self.shared.exchange.as_str()
    }

    /// The settings the broker was connected with.
    pub fn config(&self) -> &RabbitConfig {
        &self.shared.config
    }

    /// Whether the broker has an open connection and channel right now.
    ///
    /// `false` during an outage, while the broker reconnects, and after
    /// [`close`](Self::close).
    pub fn is_connected(&self) -> bool {
        self.shared.is_connected()
    }

    /// Declares the durable queue `queue` (of the configured
    /// [`queue_type`](RabbitConfig::queue_type)) and binds it to the exchange with
    /// `topic_pattern`, so that it receives every message whose topic
    /// matches: `orders.placed` exactly, `orders.*` one more segment,
    /// `orders.#` any number of them. Declaring an existing queue with the
    /// same settings, or binding it again, changes nothing.
    ///
    /// Runs on a channel of its own, so a refusal does not disturb
    /// publishes in flight.
    ///
    /// # Errors
    ///
    /// - [`Error::Config`] for `queue` or `topic_pattern` if it is empty or
    ///   longer than 255 bytes.
    /// - [`Error::BrokerUnavailable`] if the broker is not connected.
    /// - [`Error::Broker`] if RabbitMQ refuses the declaration, for instance
    ///   because the queue exists with other settings (not retryable).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the queue declared but not yet bound;
    /// calling again completes it.
    pub async fn bind_queue(&self, queue: &str, topic_pattern: &str) -> Result<()> {
        let queue = short("queue", queue)?;
        let pattern = short("topic_pattern", topic_pattern)?;
        let channel = self.declaring_channel().await?;
        declare_bound_queue(
            &channel,
            &queue,
            self.shared.config.queue_type(),
            &self.shared.exchange,
            &pattern,
            broker_error,
        )
        .await?;
        // The declaration and binding are done; a failed close changes nothing.
        close_declaring(channel).await;
        Ok(())
    }

    /// Removes the binding of `queue` to the exchange for `topic_pattern`;
    /// the queue and its messages stay.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] if the broker is not connected;
    /// [`Error::Broker`] if RabbitMQ refused the unbind.
    pub async fn unbind_queue(&self, queue: &str, topic_pattern: &str) -> Result<()> {
        let queue_name = short("queue", queue)?;
        let pattern = short("topic_pattern", topic_pattern)?;
        let channel = self.declaring_channel().await?;
        channel
            .queue_unbind(
                queue_name,
                self.shared.exchange.clone(),
                pattern,
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                broker_error(
                    format!("unbinding queue `{queue}` from `{topic_pattern}` failed"),
                    e,
                )
            })?;
        close_declaring(channel).await;
        Ok(())
    }

    /// The name of the durable queue that consumer group `group` reads
    /// `topic` from: `<exchange>.<group>.<topic>`, declared by the group's
    /// first [`subscribe`](Broker::subscribe) and kept after its consumers
    /// are gone. Delete it to remove the group from the topic.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `group` if the name would be longer than the
    /// 255 bytes AMQP allows.
    pub fn queue_name(&self, group: &str, topic: &str) -> Result<String> {
        crate::consume::queue_name(self.exchange(), group, topic).map(String::from)
    }

    /// Deletes the queue of consumer group `group` for `topic`, with the
    /// messages in it: for decommissioning a group. Deleting a queue that
    /// does not exist succeeds.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] if the broker is not connected;
    /// [`Error::Broker`] if RabbitMQ refused.
    pub async fn delete_group_queue(&self, group: &str, topic: &str) -> Result<()> {
        let name = self.queue_name(group, topic)?;
        let queue = short("queue", &name)?;
        let channel = self.declaring_channel().await?;
        channel
            .queue_delete(queue, lapin::options::QueueDeleteOptions::default())
            .await
            .map_err(|e| broker_error(format!("deleting queue `{name}` failed"), e))?;
        close_declaring(channel).await;
        Ok(())
    }

    /// A channel of its own for one declaration, so that a refusal does not
    /// disturb publishes in flight.
    async fn declaring_channel(&self) -> Result<Channel> {
        self.shared.link()?.open_channel(broker_error).await
    }

    /// Closes the connection after the confirms of publishes in flight have
    /// arrived, and stops reconnecting. Later publishes and subscribes fail
    /// with [`Error::BrokerUnavailable`] (messages stay pending for another
    /// relay). Closing again does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Broker`] if the connection could not be closed cleanly; it is
    /// dropped all the same.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the broker closed; its connection closes
    /// when the last clone is dropped.
    pub async fn close(&self) -> Result<()> {
        let Some(link) = self.shared.close() else {
            return Ok(());
        };
        // Publishes in flight get their confirms (or the channel's error).
        link.confirms.settled().await;
        if !link.connection.status().connected() {
            return Ok(());
        }
        match link.connection.close(REPLY_SUCCESS, "OK".into()).await {
            Ok(()) => Ok(()),
            // A channel (a dropped subscription's) or the connection was
            // already closing: closed all the same.
            Err(e)
                if matches!(
                    e.kind(),
                    lapin::ErrorKind::InvalidChannelState(..)
                        | lapin::ErrorKind::InvalidConnectionState(_)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(broker_error("closing the rabbitmq connection failed", e)),
        }
    }

    fn unroutable(&self, envelope: &Envelope, returned: Option<&BasicReturnMessage>) -> Error {
        Error::Broker {
            message: format!(
                "unroutable: no queue bound for routing key `{}` on exchange `{}`",
                envelope.topic,
                self.exchange()
            ),
            retryable: true,
            source: returned
                .and_then(BasicReturnMessage::error)
                .map(|e| Box::new(e) as txmsg_core::BoxError),
        }
    }
}

impl Broker for RabbitBroker {
    fn system(&self) -> &'static str {
        "rabbitmq"
    }

    /// Publishes `envelope` and waits for RabbitMQ's publisher confirm.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] if the broker is not connected (it is
    /// reconnecting) or the connection was lost before the confirm;
    /// [`Error::Broker`], retryable, if RabbitMQ nacked the message or
    /// returned it as unroutable (with [`RabbitConfig::mandatory`]); not
    /// retryable if the topic or a header name is longer than AMQP allows
    /// (255 bytes).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is safe: the message may or may not have reached
    /// RabbitMQ, and the caller publishes it again (at least once).
    async fn publish(&self, envelope: &Envelope) -> Result<()> {
        let (routing_key, properties) = crate::wire::encode(envelope, &self.shared.source)?;
        let link = self.shared.link()?;
        let options = BasicPublishOptions {
            mandatory: self.shared.config.mandatory(),
            ..BasicPublishOptions::default()
        };
        let outcome = link.confirms.publish(
            self.shared.exchange.clone(),
            routing_key,
            options,
            envelope.payload.clone(),
            properties,
            envelope.id.to_string(),
        );
        match outcome.await {
            Ok(Outcome::Routed) => Ok(()),
            Ok(Outcome::Returned(returned)) => {
                debug!(
                    reply_code = returned.as_ref().map(|r| r.reply_code),
                    "rabbitmq returned the message"
                );
                Err(self.unroutable(envelope, returned.as_deref()))
            }
            Ok(Outcome::Nacked) => {
                debug!("rabbitmq nacked the message");
                Err(Error::Broker {
                    message: format!("rabbitmq nacked message {}", envelope.id),
                    retryable: true,
                    source: None,
                })
            }
            Ok(Outcome::NotConfirmed) => {
                self.shared.check(&link, Down::NoConfirms, true);
                Err(Error::broker(
                    format!("rabbitmq did not confirm message {}", envelope.id),
                    Down::NoConfirms,
                ))
            }
            Ok(Outcome::SendFailed(e)) => {
                self.shared.check(&link, Down::Lapin(e.clone()), false);
                Err(driver_error(
                    format!("publishing to exchange `{}` failed", self.exchange()),
                    e,
                ))
            }
            Ok(Outcome::ConfirmFailed(e)) => {
                self.shared.check(&link, Down::Lapin(e.clone()), false);
                Err(driver_error(
                    format!("no publisher confirm for message {}", envelope.id),
                    e,
                ))
            }
            // The runtime that settles publishes is shutting down.
            Err(_) => Err(Error::broker_unavailable(
                format!("no publisher confirm for message {}", envelope.id),
                None,
            )),
        }
    }

    /// Subscribes consumer group `spec.group` to `spec.topic`.
    ///
    /// Declares the group's durable queue ([`queue_name`](Self::queue_name))
    /// and binds it to the exchange with the topic as routing key, then
    /// consumes it on a channel of its own, with `basic.qos` set to
    /// `spec.prefetch` (per consumer). Subscriptions of one group share the
    /// queue, so RabbitMQ spreads its messages over them; each group has a
    /// queue of its own, so every group gets every message. The queue
    /// receives what is published after its first declaration; messages
    /// published before it are not kept for the group.
    ///
    /// Deliveries are decoded from CloudEvents in binary content mode (the
    /// format [`publish`](Broker::publish) writes, whoever the producer);
    /// one without an id or with a content type other than
    /// `application/json` arrives as an
    /// [`Undecodable`](txmsg_core::consumer::Undecodable) with the reason.
    /// An ack is `basic.ack`, a nack `basic.nack` with requeue, and a
    /// delivery dropped unsettled is nacked in the background. Dropping the
    /// subscription cancels the consumer; its channel closes once its
    /// deliveries are settled or dropped, and RabbitMQ delivers whatever is
    /// still unacknowledged again. When the connection is lost the
    /// subscription ends (its `next` returns `None`) and the caller
    /// subscribes again once the broker has reconnected.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidTopic`] for the topic; [`Error::Config`] for a bad
    ///   group, a zero prefetch, or a queue name longer than 255 bytes.
    /// - [`Error::BrokerUnavailable`] while the broker is not connected.
    /// - [`Error::Broker`] if RabbitMQ refused the queue, the binding or the
    ///   consumer, for instance because a queue of that name exists with
    ///   other settings (not retryable) or the exchange is gone.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the queue declared and bound, which a
    /// later call finds as it is; no consumer is left behind.
    async fn subscribe(&self, spec: &SubscribeSpec) -> Result<Subscription> {
        crate::consume::subscribe(&self.shared, spec).await
    }
}

/// Closes a channel of [`RabbitBroker::declaring_channel`] once its work is
/// done: a failed close changes nothing.
async fn close_declaring(channel: Channel) {
    let _ = channel.close(REPLY_SUCCESS, "OK".into()).await;
}

/// `value` as an AMQP short string, or a config error for `field`.
fn short(field: &'static str, value: &str) -> Result<ShortString> {
    if value.is_empty() {
        return Err(Error::config(field, "must not be empty"));
    }
    ShortString::try_new(value).map_err(|_| Error::config(field, "must be at most 255 bytes"))
}
