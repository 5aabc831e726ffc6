//! [`RocketBroker`]: publishes with SEND_OK confirms to the queue of each
//! message's key, and consumes each group's queues in order.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rocketmq_client_rust::{
    ClientConfig, ClientRuntime, ClientRuntimeConfig, ConsumeOrderlyContext, ConsumeOrderlyStatus,
    DefaultMQProducer, DefaultMQPushConsumer, MQPushConsumer, MessageListenerOrderly,
    MessageQueueSelector, SelectMessageQueueByHash, SendStatus, TelemetryHandle,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_protocol::protocol::heartbeat::message_model::MessageModel;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};
use tokio::sync::{Semaphore, mpsc, oneshot};
use txmsg_core::consumer::{Acker, Delivery, SubscribeSpec, Subscription};
use txmsg_core::{BoxFuture, Broker, Envelope, Error, Result};

use crate::config::{RocketConfig, name_servers};
use crate::wire;

/// A RocketMQ broker: the relay publishes to it, consumer groups subscribe
/// to it. Cheap to clone; clones share one client. See the
/// [crate docs](crate) for the mapping of topics, keys and groups.
///
/// # Examples
///
/// ```no_run
/// use txmsg_rocketmq::{RocketBroker, RocketConfig};
///
/// # async fn demo() -> txmsg_core::Result<()> {
/// let broker = RocketBroker::connect("rocketmq://127.0.0.1:9876", RocketConfig::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RocketBroker {
    inner: Arc<Inner>,
}

struct Inner {
    config: RocketConfig,
    name_servers: String,
    client: Arc<ClientRuntime>,
    producer: DefaultMQProducer,
    /// One permit per send that may await the broker's answer at once:
    /// the client queues sends past a few dozen internally, where they run
    /// out of their timeout under load instead of waiting here.
    sends: Semaphore,
    /// The runtime the client runs on (the client never uses the caller's);
    /// taken when the last clone is dropped.
    owner: Mutex<Option<RuntimeOwner>>,
}

impl fmt::Debug for RocketBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocketBroker")
            .field("name_servers", &self.inner.name_servers)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Some(owner) = self
            .owner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let mut producer = self.producer.clone();
        let client = Arc::clone(&self.client);
        // A runtime cannot be shut down from within another runtime's task,
        // which is where the last clone is usually dropped.
        let stop = move || {
            owner.block_on(async {
                producer.shutdown().await;
                client.shutdown().await;
            });
            if let Err(e) = owner.shutdown_runtime_blocking() {
                tracing::warn!(error = %e, "the rocketmq client runtime did not stop cleanly");
            }
        };
        if std::thread::Builder::new()
            .name("txmsg-rocketmq-stop".into())
            .spawn(stop)
            .is_err()
        {
            tracing::warn!("the rocketmq client runtime was left running: no thread to stop it");
        }
    }
}

/// A retryable broker error with its cause.
fn retryable(
    message: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Broker {
        message: message.into(),
        retryable: true,
        source: Some(Box::new(source)),
    }
}

impl RocketBroker {
    /// Starts a RocketMQ client for the name servers of `url`
    /// (`rocketmq://host:port`, several as `rocketmq://a:9876,b:9876`) and
    /// its producer.
    ///
    /// The client runs on a small runtime of its own (two worker threads),
    /// stopped when the last clone of the broker is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a setting of `config` or for `url`;
    /// [`Error::BrokerUnavailable`] if the client or its producer cannot
    /// start.
    pub async fn connect(url: &str, config: RocketConfig) -> Result<Self> {
        config.validate()?;
        let name_servers = name_servers(url)?;
        let unavailable = |what: &str, e: Box<dyn std::error::Error + Send + Sync>| {
            Error::broker_unavailable(format!("the rocketmq client {what}"), Some(e))
        };
        let plan = RuntimeOwner::plan(RuntimeConfig::for_parallelism("txmsg-rocketmq", 2))
            .map_err(|e| unavailable("runtime is refused", Box::new(e)))?;
        let owner = plan
            .build()
            .map_err(|e| unavailable("runtime cannot start", Box::new(e)))?;
        let client = ClientRuntime::try_new(
            owner.root_context().component("txmsg-rocketmq"),
            ClientRuntimeConfig::default(),
            TelemetryHandle::default(),
        )
        .map_err(|e| unavailable("cannot start", Box::new(e)))?;
        let mut producer = DefaultMQProducer::builder(Arc::clone(&client))
            .producer_group(config.producer_group())
            .name_server_addr(name_servers.as_str())
            .client_config(client_config(&name_servers))
            .send_msg_timeout(millis(config.send_timeout()))
            // The relay retries with its own backoff; a second send here
            // would only hide the first failure.
            .retry_times_when_send_failed(0)
            .build();
        producer
            .start()
            .await
            .map_err(|e| unavailable("producer cannot start", Box::new(e)))?;
        Ok(RocketBroker {
            inner: Arc::new(Inner {
                sends: Semaphore::new(MAX_SENDS_IN_FLIGHT),
                config,
                name_servers,
                client,
                producer,
                owner: Mutex::new(Some(owner)),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &RocketConfig {
        &self.inner.config
    }

    /// The client runtime every client of this broker runs on.
    pub(crate) fn client(&self) -> Arc<ClientRuntime> {
        Arc::clone(&self.inner.client)
    }

    /// The name server addresses, as the client takes them.
    pub(crate) fn name_servers(&self) -> &str {
        &self.inner.name_servers
    }

    /// The RocketMQ topic a txmsg topic is published to.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] for a bad topic, or one too long for
    /// RocketMQ with the prefix.
    pub fn rocketmq_topic(&self, topic: &str) -> Result<String> {
        txmsg_core::validate_topic(topic)?;
        wire::rocketmq_name(self.inner.config.topic_prefix(), topic)
    }

    /// Makes sure RocketMQ has topic `topic` (its queues are what a new
    /// consumer is given), creating it with
    /// [`RocketConfig::topic_queues`] queues if it does not exist.
    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        let mut producer = self.inner.producer.clone();
        if producer
            .fetch_publish_message_queues(topic)
            .await
            .is_ok_and(|queues| !queues.is_empty())
        {
            return Ok(());
        }
        producer
            .create_topic(
                AUTO_CREATE_TOPIC_KEY,
                topic,
                i32::from(self.inner.config.topic_queues()),
                HashMap::new(),
            )
            .await
            .map_err(|e| {
                Error::broker_unavailable(
                    format!("rocketmq did not create topic `{topic}`"),
                    Some(Box::new(e)),
                )
            })?;
        let deadline = tokio::time::Instant::now() + TOPIC_WAIT;
        loop {
            match producer.fetch_publish_message_queues(topic).await {
                Ok(queues) if !queues.is_empty() => return Ok(()),
                result => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::broker_unavailable(
                            format!("topic `{topic}` has no queue after it was created"),
                            result.err().map(|e| Box::new(e) as txmsg_core::BoxError),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Most sends of one broker awaiting the broker's answer at once; the
/// others wait for a turn before their send timeout starts.
const MAX_SENDS_IN_FLIGHT: usize = 64;

/// The topic whose route new topics are created from (RocketMQ's
/// `TBW102`).
const AUTO_CREATE_TOPIC_KEY: &str = "TBW102";

/// Longest wait for a topic just created to be routable.
const TOPIC_WAIT: Duration = Duration::from_secs(10);

/// A client config of its own for each client: the client keeps one
/// instance per instance name, and a group can have only one consumer in an
/// instance.
pub(crate) fn client_config(name_servers: &str) -> ClientConfig {
    ClientConfig {
        instance_name: format!("txmsg-{}", uuid::Uuid::now_v7().simple()).into(),
        namesrv_addr: Some(name_servers.into()),
        ..ClientConfig::default()
    }
}

/// `duration` in whole milliseconds, as the client takes its timeouts.
pub(crate) fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

impl Broker for RocketBroker {
    fn system(&self) -> &'static str {
        "rocketmq"
    }

    /// Sends `envelope` to the message queue of its ordering key and waits
    /// for the broker's answer; `Ok` only for `SEND_OK`. At most 64 sends
    /// of one broker (and its clones) await an answer at once; the others
    /// wait for a turn before their send timeout starts (the client fails
    /// sends under load when more wait inside it).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] for a bad topic; [`Error::Broker`], not
    /// retryable, for a header RocketMQ cannot carry (see the
    /// [crate docs](crate)); retryable for every other failure, a
    /// `SEND_OK` not received within the send timeout among them.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future is safe: the message may or may not have been
    /// stored, and the caller publishes it again (at least once).
    async fn publish(&self, envelope: &Envelope) -> Result<()> {
        let topic = self.rocketmq_topic(&envelope.topic)?;
        let message = wire::encode(envelope, &topic, self.inner.config.source())?;
        // One key, one queue (Java's `SelectMessageQueueByHash` picks the
        // same one for the same key); a message without a key goes to any.
        let arg = envelope
            .key
            .clone()
            .unwrap_or_else(|| envelope.id.to_string());
        let select = |mqs: &[MessageQueue], msg: &Message, arg: &String| {
            SelectMessageQueueByHash.select(mqs, msg, arg)
        };
        // Fails only once the semaphore is closed, which it never is.
        let _permit = self.inner.sends.acquire().await.map_err(|e| {
            Error::broker_unavailable("the rocketmq broker is shut down", Some(Box::new(e)))
        })?;
        let timeout = self.inner.config.send_timeout();
        let sent = tokio::time::timeout(
            timeout + Duration::from_millis(500),
            self.inner.producer.send_with_selector_timeout(
                message,
                select,
                arg,
                millis(timeout).into(),
            ),
        )
        .await
        .map_err(|_| Error::Broker {
            message: format!("rocketmq did not answer the publish within {timeout:?}"),
            retryable: true,
            source: None,
        })?
        .map_err(|e| retryable("rocketmq did not take the message", e))?;
        match sent {
            Some(result) if result.send_status == SendStatus::SendOk => Ok(()),
            Some(result) => Err(Error::Broker {
                message: format!(
                    "rocketmq stored the message without its guarantee: {:?}",
                    result.send_status
                ),
                retryable: true,
                source: None,
            }),
            None => Err(Error::Broker {
                message: "rocketmq gave no result for the publish".into(),
                retryable: true,
                source: None,
            }),
        }
    }

    /// Subscribes consumer group `spec.group` to `spec.topic`: a RocketMQ
    /// push consumer in clustering mode, consuming each message queue in
    /// order, one delivery of a queue at a time.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] or [`Error::Config`] for a bad topic or group
    /// or a zero prefetch; [`Error::BrokerUnavailable`] if the consumer
    /// cannot start.
    async fn subscribe(&self, spec: &SubscribeSpec) -> Result<Subscription> {
        spec.validate()?;
        let topic = self.rocketmq_topic(&spec.topic)?;
        let group =
            wire::consumer_group(self.inner.config.topic_prefix(), &spec.group, &spec.topic)?;
        self.ensure_topic(&topic).await?;
        let (tx, rx) = mpsc::channel(usize::from(spec.prefetch));
        let listener = Listener {
            topic: spec.topic.clone(),
            tx,
            permits: Arc::new(Semaphore::new(usize::from(spec.prefetch))),
            retry_delay: self.inner.config.retry_delay(),
            runtime: tokio::runtime::Handle::current(),
        };
        let mut consumer = DefaultMQPushConsumer::builder(Arc::clone(&self.inner.client))
            .consumer_group(group.as_str())
            .name_server_addr(self.inner.name_servers.as_str())
            .client_config(client_config(&self.inner.name_servers))
            .message_model(MessageModel::Clustering)
            // A group without a consumed offset reads what the topic still
            // holds. Starting at its first subscribe instead (by time, or at
            // the end) would lose messages if the consumer died before its
            // first offset was stored: the restart would start later again.
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            .consume_message_batch_max_size(1)
            .suspend_current_queue_time_millis(millis(self.inner.config.retry_delay()).into())
            // txmsg counts attempts and dead-letters itself.
            .max_reconsume_times(i32::MAX)
            .build();
        let unavailable = |e: rocketmq_client_rust::ClientError| {
            Error::broker_unavailable(
                format!(
                    "the rocketmq consumer of group `{}` cannot start",
                    spec.group
                ),
                Some(Box::new(e)),
            )
        };
        consumer
            .subscribe(topic.as_str(), "*")
            .await
            .map_err(unavailable)?;
        consumer.register_message_listener_orderly(listener);
        consumer.start().await.map_err(unavailable)?;
        let (closing, closed) = oneshot::channel::<()>();
        tokio::spawn(async move {
            // Stops the consumer when the subscription closes or is dropped.
            let _ = closed.await;
            consumer.shutdown().await;
        });
        Ok(Subscription::with_close(rx, closing))
    }
}

/// Hands each message of a queue to the subscription and waits for its
/// settlement: the client calls it on a thread of its blocking pool, one
/// call per queue at a time, so waiting there keeps each queue in order.
struct Listener {
    topic: String,
    tx: mpsc::Sender<Delivery>,
    /// Deliveries unsettled at most: the subscription's prefetch.
    permits: Arc<Semaphore>,
    retry_delay: Duration,
    runtime: tokio::runtime::Handle,
}

impl MessageListenerOrderly for Listener {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        context: &mut ConsumeOrderlyContext,
    ) -> rocketmq_client_rust::ClientResult<ConsumeOrderlyStatus> {
        context.set_auto_commit(true);
        for msg in msgs {
            if !self.deliver(msg) {
                context.set_suspend_current_queue_time_millis(
                    i64::try_from(self.retry_delay.as_millis()).unwrap_or(i64::MAX),
                );
                return Ok(ConsumeOrderlyStatus::SuspendCurrentQueueAMoment);
            }
        }
        Ok(ConsumeOrderlyStatus::Success)
    }
}

impl Listener {
    /// Delivers `msg` and waits until it is settled: true once acked.
    fn deliver(&self, msg: &MessageExt) -> bool {
        let Ok(permit) = self
            .runtime
            .block_on(Arc::clone(&self.permits).acquire_owned())
        else {
            return false;
        };
        let body = msg.body().map(|b| b.to_vec()).unwrap_or_default();
        let message = wire::decode(wire::Received {
            topic: &self.topic,
            properties: msg.properties(),
            message_id: msg.msg_id().as_str(),
            born_ms: msg.born_timestamp(),
            body,
        });
        let (settle, settled) = oneshot::channel();
        let acker = RocketAcker {
            settle: Some(settle),
            _permit: permit,
        };
        let delivery = Delivery::new(message, msg.reconsume_times() > 0, Box::new(acker));
        if self.tx.blocking_send(delivery).is_err() {
            return false;
        }
        // A delivery dropped unsettled drops its sender: handed back.
        settled.blocking_recv().unwrap_or(false)
    }
}

/// Settles one delivery by answering the listener that waits for it.
struct RocketAcker {
    settle: Option<oneshot::Sender<bool>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl fmt::Debug for RocketAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocketAcker").finish_non_exhaustive()
    }
}

impl RocketAcker {
    fn settle(mut self, acked: bool) -> BoxFuture<'static, Result<()>> {
        let settled = self
            .settle
            .take()
            .is_some_and(|settle| settle.send(acked).is_ok());
        Box::pin(async move {
            if settled {
                Ok(())
            } else {
                Err(Error::broker_unavailable(
                    "the rocketmq subscription is gone; the message comes again",
                    None,
                ))
            }
        })
    }
}

impl Acker for RocketAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        (*self).settle(true)
    }

    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        (*self).settle(false)
    }
}
