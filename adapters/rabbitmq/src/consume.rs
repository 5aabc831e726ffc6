//! Consumer-group subscriptions: a durable queue per (group, topic), a
//! channel and consumer per subscription, and the ackers of its deliveries.
//!
//! Each subscription has a channel of its own with `basic.qos` set to its
//! prefetch. A task reads the consumer and feeds the subscription's bounded
//! queue; dropping the subscription aborts the task, which cancels the
//! consumer. Every delivery's acker holds a clone of the channel, so the
//! channel stays open (and in-flight deliveries can still be acknowledged)
//! until the task is gone and every delivery is settled or dropped; then
//! lapin closes it and RabbitMQ requeues whatever is still unacknowledged.

use std::fmt;
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Consumer};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, warn};
use txmsg_core::consumer::{Acker, Delivery, SubscribeSpec, Subscription};
use txmsg_core::{BoxFuture, Error, Result};

use crate::link::{Shared, declare_bound_queue, driver_error};
use crate::wire::decode;

/// The name of the durable queue of `group` for `topic` on `exchange`:
/// `<exchange>.<group>.<topic>`.
///
/// # Errors
///
/// [`Error::Config`] for `group` if the name is longer than the 255 bytes
/// AMQP allows.
pub(crate) fn queue_name(exchange: &str, group: &str, topic: &str) -> Result<ShortString> {
    let name = format!("{exchange}.{group}.{topic}");
    let len = name.len();
    ShortString::try_new(name).map_err(|_| {
        Error::config(
            "group",
            format!(
                "with topic `{topic}` and exchange `{exchange}` makes a queue name of {len} bytes, longer than the 255 bytes amqp allows"
            ),
        )
    })
}

/// Declares and binds the group's queue, then starts consuming it.
pub(crate) async fn subscribe(shared: &Arc<Shared>, spec: &SubscribeSpec) -> Result<Subscription> {
    spec.validate()?;
    let queue = queue_name(shared.exchange.as_str(), &spec.group, &spec.topic)?;
    // Validated above: at most 200 bytes.
    let routing_key = ShortString::try_new(spec.topic.as_str())
        .map_err(|_| Error::config("topic", "must be at most 255 bytes"))?;
    let (channel, consumer) = open(shared, queue, routing_key, spec.prefetch).await?;
    let (tx, rx) = mpsc::channel(usize::from(spec.prefetch));
    // The pump stays in the span the subscribe was called in.
    let pump = shared.runtime.spawn(
        pump(consumer, channel, tx, spec.topic.clone()).instrument(tracing::Span::current()),
    );
    Ok(Subscription::new(rx, Some(pump.abort_handle())))
}

/// A channel of its own with the queue declared and bound, the prefetch set
/// and a consumer started. On error the channel is dropped, which closes it.
async fn open(
    shared: &Arc<Shared>,
    queue: ShortString,
    routing_key: ShortString,
    prefetch: u16,
) -> Result<(Channel, Consumer)> {
    let channel = shared.consuming_link()?.open_channel(driver_error).await?;
    declare_bound_queue(
        &channel,
        &queue,
        shared.config.queue_type(),
        &shared.exchange,
        &routing_key,
        driver_error,
    )
    .await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| driver_error("setting the rabbitmq prefetch failed", e))?;
    let consumer = channel
        .basic_consume(
            queue.clone(),
            ShortString::default(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| driver_error(format!("consuming queue `{queue}` failed"), e))?;
    debug!(%queue, consumer_tag = %consumer.tag(), "consuming");
    Ok((channel, consumer))
}

/// Moves deliveries from the consumer into the subscription until the
/// consumer ends (connection or channel lost, queue deleted) or the
/// subscription is gone.
async fn pump(mut consumer: Consumer, channel: Channel, tx: mpsc::Sender<Delivery>, topic: String) {
    while let Some(next) = consumer.next().await {
        let delivery = match next {
            Ok(delivery) => delivery,
            Err(e) => {
                warn!(error = %e, "rabbitmq subscription lost");
                break;
            }
        };
        let routing_key = match delivery.routing_key.as_str() {
            "" => topic.as_str(),
            key => key,
        };
        let message = decode(routing_key, &delivery.properties, delivery.data);
        let acker = RabbitAcker {
            acker: delivery.acker,
            channel: Some(channel.clone()),
            settled: false,
        };
        let delivery = Delivery::new(message, delivery.redelivered, Box::new(acker));
        if tx.send(delivery).await.is_err() {
            break;
        }
    }
    debug!("rabbitmq subscription ended");
}

/// Settles one delivery on the channel it came from. Dropped unsettled, it
/// nacks the delivery (requeue) in the background.
struct RabbitAcker {
    acker: lapin::Acker,
    /// Keeps the channel open while the delivery is unsettled.
    channel: Option<Channel>,
    /// Whether ack or nack was sent.
    settled: bool,
}

impl fmt::Debug for RabbitAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitAcker")
            .field("channel", &self.channel.as_ref().map(Channel::id))
            .field("settled", &self.settled)
            .finish_non_exhaustive()
    }
}

/// The outcome of an ack or nack: the broker is unavailable unless it went
/// out, since a delivery of a closed channel is delivered again anyway.
fn settled(what: &str, outcome: lapin::Result<bool>) -> Result<()> {
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::broker_unavailable(
            format!(
                "could not {what}: the delivery's channel is closed; rabbitmq delivers it again"
            ),
            None,
        )),
        Err(e) => Err(Error::broker_unavailable(
            format!("could not {what}: rabbitmq delivers it again"),
            Some(Box::new(e)),
        )),
    }
}

impl Acker for RabbitAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            // Set at the first poll, which sends the ack: a future dropped
            // before then leaves the delivery to the drop nack.
            self.settled = true;
            let outcome = self.acker.ack(BasicAckOptions::default()).await;
            settled("acknowledge the delivery", outcome)
        })
    }

    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            self.settled = true;
            let outcome = self
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await;
            settled("hand the delivery back", outcome)
        })
    }
}

impl Drop for RabbitAcker {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Without a runtime the delivery is requeued when its channel
        // closes, after the subscription and its other deliveries are gone.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let acker = self.acker.clone();
        let channel = self.channel.take();
        runtime.spawn(async move {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            if let Err(e) = acker.nack(options).await {
                debug!(error = %e, "nack of a dropped delivery failed; its channel requeues it");
            }
            drop(channel);
        });
    }
}
