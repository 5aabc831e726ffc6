//! [`MqttBroker`]: publishing with PUBACK confirms, subscribing per group.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use txmsg_core::consumer::{Acker, Delivery, SubscribeSpec, Subscription};
use txmsg_core::{BoxFuture, Broker, Envelope, Error, Result};

use crate::config::MqttConfig;
use crate::url::Endpoint;
use crate::wire;

/// Requests queued between the broker handle and its event loop.
const REQUEST_CAPACITY: usize = 1024;
/// Reconnect attempts in a row after which a subscription ends.
const MAX_RECONNECTS: u32 = 5;

/// A txmsg [`Broker`] on an MQTT 5 server (e.g. Mosquitto 2).
///
/// Publishes at QoS 1 and resolves once the PUBACK arrives; subscribes each
/// group through a shared subscription `$share/<group>/<prefix><topic>`,
/// one MQTT session per [`Subscription`]. See the [crate docs](crate) for
/// the wire format and for what MQTT cannot promise.
///
/// Cloning is cheap: clones share one publishing connection. `Debug` shows
/// the server and user, never the password.
///
/// # Examples
///
/// ```no_run
/// use txmsg_mqtt::{MqttBroker, MqttConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = MqttBroker::connect("mqtt://127.0.0.1:1883", MqttConfig::default()).await?;
/// # drop(broker);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MqttBroker {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    config: MqttConfig,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
    /// The persistent sessions of subscriptions, by (group, topic): client
    /// id and a weak handle on the sender of its subscription. A session
    /// whose subscription was dropped (its sender closed) or ended (its
    /// reader gone) is resumed by the group's next subscription.
    sessions: Mutex<HashMap<(String, String), Vec<Session>>>,
}

impl fmt::Debug for MqttBroker {
    // The endpoint shows no password; the connection and sessions are left
    // out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Inner {
            endpoint, config, ..
        } = &*self.inner;
        f.debug_struct("MqttBroker")
            .field("endpoint", endpoint)
            .field("config", config)
            .finish_non_exhaustive()
    }
}

/// The publishing connection: its client, and the publishes awaiting a
/// PUBACK.
struct Link {
    client: AsyncClient,
    waiters: Arc<Mutex<Waiters>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Confirm = oneshot::Sender<Result<()>>;

/// A subscription's persistent session: its client id, and a weak handle
/// on the sender that feeds its subscription. Only the subscription's
/// reader holds the sender itself, so that the subscription ends (its
/// `next` returns `None`) once the reader gives up on a lost connection.
type Session = (String, mpsc::WeakSender<Delivery>);

/// Whether the subscription fed through `sender` is over: dropped by its
/// consumer, or ended by its reader.
fn session_is_free(sender: &mpsc::WeakSender<Delivery>) -> bool {
    sender.upgrade().is_none_or(|tx| tx.is_closed())
}

/// Publishes handed to the event loop (in request order) and those sent
/// (by packet id), awaiting their PUBACK.
#[derive(Default)]
struct Waiters {
    queued: VecDeque<Confirm>,
    sent: HashMap<u16, Confirm>,
    dead: bool,
}

impl Waiters {
    fn fail_all(&mut self, why: &str) {
        self.dead = true;
        for tx in self
            .queued
            .drain(..)
            .chain(self.sent.drain().map(|(_, tx)| tx))
        {
            let _ = tx.send(Err(Error::broker_unavailable(why, None)));
        }
    }
}

fn lock(waiters: &Mutex<Waiters>) -> std::sync::MutexGuard<'_, Waiters> {
    waiters.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MqttBroker {
    /// Connects to the MQTT server at `url` (`mqtt://[user[:password]@]host[:port]`,
    /// port 1883 by default; `tcp://` is accepted as well; `mqtts://` or
    /// `ssl://`, port 8883 by default, for TLS with the `tls` feature, see
    /// [`MqttConfig`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed URL, a TLS URL without the `tls`
    /// feature, or TLS settings that cannot be used;
    /// [`Error::BrokerUnavailable`] if the server cannot be reached or
    /// refused the connection.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves nothing behind.
    pub async fn connect(url: &str, config: MqttConfig) -> Result<Self> {
        config.validate()?;
        let endpoint = config.endpoint(url)?;
        let inner = Inner {
            endpoint,
            config,
            link: tokio::sync::Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
        };
        let link = Arc::new(inner.open_link().await?);
        *inner.link.lock().await = Some(link);
        Ok(MqttBroker {
            inner: Arc::new(inner),
        })
    }

    /// The settings this broker was built with.
    pub fn config(&self) -> &MqttConfig {
        &self.inner.config
    }

    /// The MQTT topic that `topic` is published to: the topic prefix
    /// followed by the topic.
    pub fn mqtt_topic(&self, topic: &str) -> String {
        wire::mqtt_topic(self.inner.config.topic_prefix(), topic)
    }

    /// The shared-subscription filter a group subscribes with:
    /// `$share/<group>/<prefix><topic>`.
    pub fn share_filter(&self, group: &str, topic: &str) -> String {
        format!("$share/{group}/{}", self.mqtt_topic(topic))
    }
}

impl Inner {
    fn new_client_id(&self) -> String {
        format!(
            "{}{}",
            self.config.client_id_prefix(),
            uuid::Uuid::now_v7().simple()
        )
    }

    fn options(&self, id: String, clean: bool) -> MqttOptions {
        let c = &self.config;
        let mut o = MqttOptions::new(id, self.endpoint.host.clone(), self.endpoint.port);
        o.set_keep_alive(c.keep_alive());
        o.set_clean_start(clean);
        o.set_connection_timeout(c.connect_timeout().as_secs());
        o.set_max_packet_size(Some(c.max_packet_size()));
        if !clean {
            let secs = u32::try_from(c.session_expiry().as_secs()).unwrap_or(u32::MAX);
            o.set_session_expiry_interval(Some(secs));
        }
        if let Some((user, password)) = &self.endpoint.credentials {
            o.set_credentials(user.clone(), password.clone());
        }
        o.set_transport(self.endpoint.transport.clone());
        o
    }

    /// Opens the publishing connection and starts its event loop.
    async fn open_link(&self) -> Result<Link> {
        let (client, mut events) =
            AsyncClient::new(self.options(self.new_client_id(), true), REQUEST_CAPACITY);
        await_connack(&mut events, self.config.connect_timeout(), &self.endpoint).await?;
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let task = tokio::spawn(
            drive_publisher(events, waiters.clone())
                .instrument(tracing::debug_span!("txmsg.mqtt.publisher")),
        );
        Ok(Link {
            client,
            waiters,
            task: task.abort_handle(),
        })
    }

    /// The live publishing connection, opened again if it was lost.
    async fn link(&self) -> Result<Arc<Link>> {
        let mut guard = self.link.lock().await;
        if let Some(link) = guard.as_ref()
            && !lock(&link.waiters).dead
        {
            return Ok(link.clone());
        }
        *guard = None;
        let link = Arc::new(self.open_link().await?);
        *guard = Some(link.clone());
        Ok(link)
    }
}

/// Polls a fresh event loop until the server's CONNACK.
async fn await_connack(
    events: &mut EventLoop,
    timeout: Duration,
    endpoint: &Endpoint,
) -> Result<()> {
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(unavailable(endpoint, e)),
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => Err(Error::broker_unavailable(
            format!("no CONNACK from {endpoint} within {timeout:?}"),
            None,
        )),
    }
}

fn unavailable(endpoint: &Endpoint, e: ConnectionError) -> Error {
    Error::broker_unavailable(
        format!("mqtt server {endpoint} unreachable: {e}"),
        Some(Box::new(e)),
    )
}

/// Runs the publishing event loop: matches each PUBACK to its publish.
///
/// Publishes reach the event loop in the order they were queued, so each
/// `Outgoing::Publish(pkid)` belongs to the oldest queued publish. Any
/// connection error fails every waiting publish and ends the loop; the next
/// publish connects again.
async fn drive_publisher(mut events: EventLoop, waiters: Arc<Mutex<Waiters>>) {
    loop {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut w = lock(&waiters);
                if let Some(tx) = w.queued.pop_front() {
                    w.sent.insert(pkid, tx);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let tx = lock(&waiters).sent.remove(&ack.pkid);
                if let Some(tx) = tx {
                    let _ = tx.send(puback_result(&ack.reason));
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                tracing::warn!(reason = ?d.reason_code, "mqtt server disconnected the publisher");
                lock(&waiters).fail_all("the mqtt server closed the connection");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "mqtt publisher connection lost");
                lock(&waiters).fail_all(&format!("mqtt connection lost: {e}"));
                return;
            }
        }
    }
}

fn puback_result(reason: &PubAckReason) -> Result<()> {
    match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
        PubAckReason::NotAuthorized
        | PubAckReason::TopicNameInvalid
        | PubAckReason::PayloadFormatInvalid => Err(Error::broker_permanent(format!(
            "the mqtt server refused the message: {reason:?}"
        ))),
        other => Err(Error::Broker {
            message: format!("the mqtt server did not take the message: {other:?}"),
            retryable: true,
            source: None,
        }),
    }
}

impl Broker for MqttBroker {
    fn system(&self) -> &'static str {
        "mqtt"
    }

    async fn publish(&self, envelope: &Envelope) -> Result<()> {
        let inner = &self.inner;
        txmsg_core::validate_topic(&envelope.topic)?;
        let topic = wire::mqtt_topic(inner.config.topic_prefix(), &envelope.topic);
        let props = wire::encode(envelope, inner.config.source());
        let size = wire::packet_size(&topic, &props, envelope.payload.len());
        let limit = inner.config.max_packet_size() as usize;
        if size > limit {
            return Err(Error::PayloadTooLarge { size, limit });
        }
        let link = inner.link().await?;
        let (tx, rx) = oneshot::channel();
        {
            // Queue the waiter and the request under one lock, with no
            // await in between, so that waiters stay in request order.
            let mut w = lock(&link.waiters);
            if w.dead {
                return Err(Error::broker_unavailable("mqtt connection lost", None));
            }
            w.queued.push_back(tx);
            let sent = link.client.try_publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                envelope.payload.clone(),
                props,
            );
            if let Err(e) = sent {
                w.queued.pop_back();
                return Err(Error::broker(
                    "the mqtt publish queue did not take the message",
                    e,
                ));
            }
        }
        let timeout = inner.config.publish_timeout();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::broker_unavailable(
                "mqtt connection closed before the PUBACK",
                None,
            )),
            Err(_) => Err(Error::Broker {
                message: format!("no PUBACK within {timeout:?}"),
                retryable: true,
                source: None,
            }),
        }
    }

    async fn subscribe(&self, spec: &SubscribeSpec) -> Result<Subscription> {
        spec.validate()?;
        let inner = &self.inner;
        let (tx, rx) = mpsc::channel(usize::from(spec.prefetch));
        let id = {
            let mut sessions = inner
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let entries = sessions
                .entry((spec.group.clone(), spec.topic.clone()))
                .or_default();
            match entries.iter_mut().find(|(_, old)| session_is_free(old)) {
                Some(entry) => {
                    entry.1 = tx.downgrade();
                    entry.0.clone()
                }
                None => {
                    let id = inner.new_client_id();
                    entries.push((id.clone(), tx.downgrade()));
                    id
                }
            }
        };
        let mut options = inner.options(id, false);
        options.set_manual_acks(true);
        options.set_receive_maximum(Some(spec.prefetch));
        let (client, mut events) = AsyncClient::new(options, REQUEST_CAPACITY);
        let timeout = inner.config.connect_timeout();
        await_connack(&mut events, timeout, &inner.endpoint).await?;
        let filter = self.share_filter(&spec.group, &spec.topic);
        client
            .subscribe(filter.clone(), QoS::AtLeastOnce)
            .await
            .map_err(|e| Error::broker("the mqtt subscribe request was not taken", e))?;
        let mut early = Vec::new();
        let wait = async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => return Ok(ack),
                    Ok(Event::Incoming(Packet::Publish(p))) => early.push(p),
                    Ok(_) => {}
                    Err(e) => return Err(unavailable(&inner.endpoint, e)),
                }
            }
        };
        let ack = match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Broker {
                    message: format!("no SUBACK for `{filter}` within {timeout:?}"),
                    retryable: true,
                    source: None,
                });
            }
        };
        if let Some(code) = ack
            .return_codes
            .iter()
            .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
        {
            return Err(Error::broker_permanent(format!(
                "the mqtt server refused subscription `{filter}`: {code:?}"
            )));
        }
        let reader = Reader {
            client,
            prefix: inner.config.topic_prefix().to_owned(),
            tx,
        };
        let task = tokio::spawn(
            reader
                .run(events, early)
                .instrument(tracing::Span::current()),
        );
        Ok(Subscription::new(rx, Some(task.abort_handle())))
    }
}

/// Hands a subscription's publishes to its consumer.
struct Reader {
    client: AsyncClient,
    prefix: String,
    tx: mpsc::Sender<Delivery>,
}

impl Reader {
    async fn run(self, mut events: EventLoop, early: Vec<Publish>) {
        for p in early {
            if !self.deliver(p).await {
                return;
            }
        }
        let mut failures = 0u32;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    failures = 0;
                    if !self.deliver(p).await {
                        return;
                    }
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    // A nack disconnects on purpose: the session resumes
                    // and the server sends unacknowledged messages again.
                    failures += 1;
                    if failures > MAX_RECONNECTS {
                        tracing::warn!(error = %e, "mqtt subscription connection lost; ending it");
                        return;
                    }
                    tracing::debug!(error = %e, "mqtt subscription reconnecting");
                    if failures > 1 {
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                    }
                }
            }
        }
    }

    /// Passes one publish on; false once the consumer is gone.
    async fn deliver(&self, p: Publish) -> bool {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let message = wire::decode(&self.prefix, &topic, p.properties.as_ref(), &p.payload);
        let redelivered = p.dup;
        let ack_handle = Publish {
            payload: Default::default(),
            properties: None,
            ..p
        };
        let acker = MqttAcker {
            client: self.client.clone(),
            publish: Some(ack_handle),
        };
        let delivery = Delivery::new(message, redelivered, Box::new(acker));
        self.tx.send(delivery).await.is_ok()
    }
}

/// Settles one delivery: PUBACK to ack; a reconnect of the session to nack.
struct MqttAcker {
    client: AsyncClient,
    publish: Option<Publish>,
}

impl fmt::Debug for MqttAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttAcker")
            .field("pkid", &self.publish.as_ref().map(|p| p.pkid))
            .finish_non_exhaustive()
    }
}

impl Drop for MqttAcker {
    fn drop(&mut self) {
        if self.publish.is_some() {
            // Settled neither way: give it back as a nack does.
            let _ = self.client.try_disconnect();
        }
    }
}

impl Acker for MqttAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        let publish = self.publish.take();
        let client = self.client.clone();
        Box::pin(async move {
            let Some(publish) = publish else {
                return Ok(());
            };
            client.ack(&publish).await.map_err(|e| {
                Error::broker_unavailable("the mqtt subscription is gone", Some(Box::new(e)))
            })
        })
    }

    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.publish = None;
        let client = self.client.clone();
        Box::pin(async move {
            // MQTT has no negative ack: end the connection (the session
            // stays) so the server sends unacknowledged messages again. A
            // connection already gone (its subscription closed, or lost)
            // has done that: the request finds no event loop to take it.
            match client.disconnect().await {
                Ok(()) | Err(rumqttc::v5::ClientError::Request(_)) => Ok(()),
                Err(e) => Err(Error::broker_unavailable(
                    "the mqtt subscription is gone",
                    Some(Box::new(e)),
                )),
            }
        })
    }
}
