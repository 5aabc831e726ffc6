//! [`NatsBroker`]: publishing with PubAcks, pull consumers per group.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, consumer, context, stream};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use txmsg_core::consumer::{Acker, Delivery, SubscribeSpec, Subscription};
use txmsg_core::{BoxFuture, Broker, Envelope, Error, Result, validate_topic};

use crate::config::NatsConfig;
use crate::wire;

/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// Pause after a failed pull request before the next one.
const PULL_RETRY: Duration = Duration::from_millis(500);

/// Longest durable consumer name built, in bytes; longer names are cut and
/// suffixed with a hash of the whole.
const MAX_DURABLE_LEN: usize = 200;

/// A [`Broker`] on NATS JetStream.
///
/// Cloning is cheap: clones share the connection. `Debug` shows the stream,
/// the subject prefix and the connection state, never the URL or
/// credentials.
///
/// See the [crate docs](crate) for the wire format, the consumer model and
/// the limits of what JetStream promises.
#[derive(Clone)]
pub struct NatsBroker {
    client: async_nats::Client,
    js: jetstream::Context,
    config: Arc<NatsConfig>,
    source: String,
}

impl fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBroker")
            .field("stream", &self.config.stream())
            .field("subject_prefix", &self.config.subject_prefix())
            .field("connection", &self.client.connection_state())
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// Connects to the NATS server at `url` (`nats://host:4222`, or a
    /// comma-separated list), then creates the configured stream or updates
    /// it to the configured subjects and duplicate window.
    ///
    /// After this first connect, the client reconnects by itself whenever
    /// the connection drops.
    ///
    /// # Errors
    ///
    /// - [`Error::BrokerUnavailable`] if the server cannot be reached within
    ///   the connect timeout (refused, unknown host, timed out).
    /// - [`Error::Config`] for `url` if it cannot be parsed, or names a
    ///   `tls://` server without the `tls` feature; for a TLS file of
    ///   [`NatsConfig`] that cannot be read.
    /// - A permanent [`Error::Broker`] if the server refuses the credentials,
    ///   or the stream cannot be created or updated (for instance because
    ///   another stream already takes its subjects); a retryable one if the
    ///   JetStream API did not answer.
    pub async fn connect(url: &str, config: NatsConfig) -> Result<Self> {
        config.validate()?;
        let (options, servers) = config.connect_options(url)?;
        let connecting = async_nats::connect_with_options(servers, options);
        let client = match tokio::time::timeout(config.connect_timeout(), connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(connect_error(e)),
            Err(_) => {
                return Err(Error::broker_unavailable(
                    format!(
                        "connecting to nats timed out after {:?}",
                        config.connect_timeout()
                    ),
                    None,
                ));
            }
        };
        Self::with_client(client, config).await
    }

    /// A broker on an already connected client (with options of your own:
    /// credentials, TLS, ...); creates or updates the stream as
    /// [`connect`](Self::connect) does.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), for the stream.
    pub async fn with_client(client: async_nats::Client, config: NatsConfig) -> Result<Self> {
        let js = context::ContextBuilder::new()
            .timeout(config.publish_timeout())
            .build(client.clone());
        let broker = NatsBroker {
            source: config.source().to_owned(),
            client,
            js,
            config: Arc::new(config),
        };
        broker.ensure_stream().await?;
        Ok(broker)
    }

    /// Creates the stream with the configured settings (file storage, the
    /// configured replicas); an existing stream
    /// keeps every setting of its operator (limits, replicas, storage,
    /// description, ...) and gets only what txmsg needs: its subjects added
    /// and the configured duplicate window. A stream that already has both
    /// is not touched.
    async fn ensure_stream(&self) -> Result<()> {
        let name = self.config.stream();
        let subjects = self.config.stream_subjects();
        let window = self.config.duplicate_window();
        let existing = match self.js.get_stream(name).await {
            Ok(mut stream) => Some(
                stream
                    .info()
                    .await
                    .map_err(|e| self.failure(format!("reading stream `{name}`"), e))?
                    .config
                    .clone(),
            ),
            Err(e)
                if matches!(e.kind(), context::GetStreamErrorKind::JetStream(ref js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                None
            }
            Err(e) => return Err(self.failure(format!("looking up stream `{name}`"), e)),
        };
        match existing {
            None => {
                let wanted = stream::Config {
                    name: name.to_owned(),
                    subjects: vec![subjects],
                    duplicate_window: window,
                    storage: stream::StorageType::File,
                    num_replicas: self.config.replicas(),
                    ..Default::default()
                };
                match self.js.create_stream(wanted).await {
                    Ok(_) => Ok(()),
                    // Created meanwhile by another process: check it as an
                    // existing one.
                    Err(e)
                        if matches!(e.kind(), context::CreateStreamErrorKind::JetStream(ref js)
                            if js.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST) =>
                    {
                        Box::pin(self.ensure_stream()).await
                    }
                    Err(e) => Err(self.failure(format!("creating stream `{name}`"), e)),
                }
            }
            Some(mut config) => {
                if config.num_replicas != self.config.replicas() {
                    tracing::warn!(
                        stream = name,
                        replicas = config.num_replicas,
                        configured = self.config.replicas(),
                        "the stream exists with another replica count: txmsg leaves it as its operator set it"
                    );
                }
                let mut changed = Vec::new();
                if !config.subjects.contains(&subjects) {
                    config.subjects.push(subjects);
                    changed.push("subjects");
                }
                if config.duplicate_window != window {
                    config.duplicate_window = window;
                    changed.push("duplicate_window");
                }
                if changed.is_empty() {
                    return Ok(());
                }
                tracing::info!(stream = name, ?changed, "updating the stream for txmsg");
                self.js
                    .update_stream(config)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.failure(format!("updating stream `{name}`"), e))
            }
        }
    }

    /// The broker's settings.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// The durable consumer name of `group` on `topic`: both names with
    /// `_` written `_u` and `.` written `_d`, joined by `_s` (so different
    /// pairs never share a name), cut to 200 bytes plus a hash if longer.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] if `group` or `topic` is not a valid topic
    /// name.
    pub fn durable_name(&self, group: &str, topic: &str) -> Result<String> {
        durable_name(group, topic)
    }

    /// Deletes the durable consumer of `group` on `topic`: its position and
    /// unsettled deliveries are gone, and its next subscribe starts from the
    /// oldest message the stream still holds.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] for bad names; [`Error::Broker`] or
    /// [`Error::BrokerUnavailable`] if the server refused or cannot be
    /// reached (deleting a consumer that does not exist is refused).
    pub async fn delete_group_consumer(&self, group: &str, topic: &str) -> Result<()> {
        let name = durable_name(group, topic)?;
        self.js
            .delete_consumer_from_stream(&name, self.config.stream())
            .await
            .map(|_| ())
            .map_err(|e| self.failure(format!("deleting consumer `{name}`"), e))
    }

    /// Deletes the stream with every message and consumer in it (for tests
    /// and teardown).
    ///
    /// # Errors
    ///
    /// [`Error::Broker`] or [`Error::BrokerUnavailable`] if the server
    /// refused or cannot be reached.
    pub async fn delete_stream(&self) -> Result<()> {
        self.js
            .delete_stream(self.config.stream())
            .await
            .map(|_| ())
            .map_err(|e| self.failure(format!("deleting stream `{}`", self.config.stream()), e))
    }

    /// Flushes what the client buffered and waits for the server.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] if the connection is down.
    pub async fn flush(&self) -> Result<()> {
        self.client.flush().await.map_err(|e| {
            Error::broker_unavailable("flushing the nats connection failed", Some(e.into()))
        })
    }

    /// An error of the server or the connection: unavailable while the
    /// connection is down, else retryable.
    fn failure(
        &self,
        what: impl fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        failure(&self.client, what, source)
    }
}

impl Broker for NatsBroker {
    fn system(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, envelope: &Envelope) -> Result<()> {
        validate_topic(&envelope.topic)?;
        if !self.is_connected() {
            return Err(Error::broker_unavailable(
                "the nats connection is down",
                None,
            ));
        }
        let headers = wire::encode(envelope, &self.source)?;
        let subject = self.config.subject(&envelope.topic);
        let payload = envelope.payload.clone().into();
        let timeout = self.config.publish_timeout();
        let publishing = async {
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload)
                .await?;
            ack.await
        };
        match tokio::time::timeout(timeout, publishing).await {
            Ok(Ok(ack)) => {
                if ack.duplicate {
                    tracing::debug!(
                        id = %envelope.id,
                        idempotency_key = %envelope.idempotency_key,
                        "nats dropped a duplicate within the stream's duplicate window"
                    );
                }
                Ok(())
            }
            Ok(Err(e)) => {
                use context::PublishErrorKind as K;
                match e.kind() {
                    K::MaxPayloadExceeded => Err(Error::Broker {
                        message: format!(
                            "message {} is larger than the server's max_payload",
                            envelope.id
                        ),
                        retryable: false,
                        source: Some(e.into()),
                    }),
                    _ => Err(self.failure(format!("publishing {}", envelope.id), e)),
                }
            }
            Err(_) if !self.is_connected() => Err(Error::broker_unavailable(
                format!("publishing {}: the nats connection is down", envelope.id),
                None,
            )),
            Err(_) => Err(Error::Broker {
                message: format!("publishing {}: no PubAck within {timeout:?}", envelope.id),
                retryable: true,
                source: None,
            }),
        }
    }

    async fn subscribe(&self, spec: &SubscribeSpec) -> Result<Subscription> {
        spec.validate()?;
        if !self.is_connected() {
            return Err(Error::broker_unavailable(
                "the nats connection is down",
                None,
            ));
        }
        let name = durable_name(&spec.group, &spec.topic)?;
        let stream = self
            .js
            .get_stream(self.config.stream())
            .await
            .map_err(|e| {
                self.failure(format!("looking up stream `{}`", self.config.stream()), e)
            })?;
        let wanted = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.config.subject(&spec.topic),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.config.ack_wait(),
            max_ack_pending: i64::from(self.config.max_ack_pending()),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        };
        let pull: consumer::PullConsumer = stream
            .get_or_create_consumer(&name, wanted)
            .await
            .map_err(|e| self.failure(format!("creating consumer `{name}`"), e))?;

        let prefetch = usize::from(spec.prefetch);
        let (tx, rx) = mpsc::channel(prefetch);
        let (closing_tx, closing) = oneshot::channel();
        let held = Arc::new(HeldReplies::default());
        tokio::spawn(keep_in_progress(
            Arc::downgrade(&held),
            self.client.clone(),
            self.config.ack_wait() / 3,
        ));
        tokio::spawn(pull_loop(
            PullLoop {
                pull,
                tx,
                prefetch,
                client: self.client.clone(),
                config: Arc::clone(&self.config),
                held,
            },
            closing,
        ));
        Ok(Subscription::with_close(rx, closing_tx))
    }
}

/// The reply subjects of a subscription's unsettled deliveries, each under
/// a number of its own.
#[derive(Default)]
struct HeldReplies {
    next: std::sync::atomic::AtomicU64,
    replies: Mutex<HashMap<u64, async_nats::Subject>>,
}

impl HeldReplies {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, async_nats::Subject>> {
        self.replies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `reply`; returns its number.
    fn insert(&self, reply: async_nats::Subject) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id, reply);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// Tells the server, every `every`, that each delivery still held by the
/// subscription is being worked on (`+WPI`), so that it is not delivered
/// again after `ack_wait` while the consumer holds it (handler retries,
/// messages waiting behind another of their key). Ends with the
/// subscription and its last delivery.
async fn keep_in_progress(held: Weak<HeldReplies>, client: async_nats::Client, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(held) = held.upgrade() else { return };
        let replies: Vec<async_nats::Subject> = held.lock().values().cloned().collect();
        drop(held);
        for reply in replies {
            if let Err(e) = client.publish(reply, "+WPI".into()).await {
                tracing::debug!(error = %e, "telling nats a delivery is in progress failed");
            }
        }
    }
}

/// What a subscription's pull loop works with.
struct PullLoop {
    pull: consumer::PullConsumer,
    tx: mpsc::Sender<Delivery>,
    prefetch: usize,
    client: async_nats::Client,
    config: Arc<NatsConfig>,
    held: Arc<HeldReplies>,
}

/// Pulls messages into the subscription, never holding more than
/// `prefetch` unsettled: each delivery carries a permit, given back when it
/// is settled or dropped.
///
/// When `closing` resolves (the subscription is closed or dropped) it asks
/// for nothing more; a pull request cannot be withdrawn, so it still passes
/// on what the open request brings until that request ends, then ends,
/// which ends the subscription. A consumer that closes its subscription
/// thus gets those messages too and hands them back after the ones it
/// holds, in delivery order; the server redelivers in the order of
/// hand-backs, and no request of this subscription is open by then to take
/// them.
async fn pull_loop(this: PullLoop, mut closing: oneshot::Receiver<()>) {
    let permits = Arc::new(Semaphore::new(this.prefetch));
    loop {
        let first = tokio::select! {
            _ = &mut closing => return,
            () = this.tx.closed() => return,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let mut held = vec![first];
        while held.len() < this.prefetch {
            match Arc::clone(&permits).try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        let batch = this
            .pull
            .batch()
            .max_messages(held.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::debug!(error = %e, "nats pull request failed; trying again");
                drop(held);
                tokio::select! {
                    _ = &mut closing => return,
                    () = tokio::time::sleep(PULL_RETRY) => continue,
                }
            }
        };
        let mut closed = false;
        loop {
            // The server ends a pull request after PULL_EXPIRES; the extra
            // time covers a connection that went away meanwhile.
            let next = tokio::select! {
                _ = &mut closing, if !closed => {
                    closed = true;
                    continue;
                }
                next = tokio::time::timeout(PULL_EXPIRES * 2, batch.next()) => next,
            };
            let message = match next {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, "nats pull request ended with an error");
                    if !closed {
                        tokio::time::sleep(PULL_RETRY).await;
                    }
                    break;
                }
                Ok(None) | Err(_) => break,
            };
            let redelivered = message.info().map(|i| i.delivered > 1).unwrap_or(false);
            let reply = message.message.reply.clone();
            let (message, acker) = message.split();
            let held_id = reply.map(|r| this.held.insert(r));
            let acker = NatsAcker {
                acker: Some(acker),
                permit: held.pop(),
                client: this.client.clone(),
                timeout: this.config.publish_timeout(),
                held: held_id.map(|id| (Arc::clone(&this.held), id)),
            };
            let topic = this
                .config
                .topic_of(message.subject.as_str())
                .unwrap_or(message.subject.as_str())
                .to_owned();
            let decoded = wire::decode(&topic, message.headers.as_ref(), message.payload.to_vec());
            let delivery = Delivery::new(decoded, redelivered, Box::new(acker));
            // Dropped if the subscription is gone: handed back.
            let _ = this.tx.send(delivery).await;
        }
        drop(held);
        if closed || this.tx.is_closed() {
            return;
        }
    }
}

/// Settles one JetStream delivery; hands it back (Nak) when dropped
/// unsettled.
struct NatsAcker {
    acker: Option<jetstream::message::Acker>,
    permit: Option<OwnedSemaphorePermit>,
    client: async_nats::Client,
    timeout: Duration,
    /// Its entry among the subscription's held deliveries.
    held: Option<(Arc<HeldReplies>, u64)>,
}

impl NatsAcker {
    /// No longer held: no more progress for it.
    fn release(&mut self) {
        if let Some((held, id)) = self.held.take() {
            held.remove(id);
        }
    }

    /// Waits, at most the ack timeout, for the server's answer to the ack
    /// or nak `answer` (`what` it does, for the error), then frees the
    /// delivery's permit.
    async fn settle<E: fmt::Display>(
        &mut self,
        what: &str,
        answer: impl Future<Output = std::result::Result<(), E>>,
    ) -> Result<()> {
        self.release();
        let result = match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failure(&self.client, what, ErrorText(e.to_string()))),
            Err(_) => Err(failure(
                &self.client,
                what,
                ErrorText(format!("no answer within {:?}", self.timeout)),
            )),
        };
        drop(self.permit.take());
        result
    }
}

impl fmt::Debug for NatsAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsAcker")
            .field("settled", &self.acker.is_none())
            .finish_non_exhaustive()
    }
}

impl Acker for NatsAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let Some(acker) = self.acker.take() else {
                return Ok(());
            };
            self.settle("acknowledging a delivery", acker.double_ack())
                .await
        })
    }

    /// Hands the delivery back and waits for the server to confirm it
    /// before its permit is freed, so that the subscription's next pull
    /// request cannot overtake it: the server redelivers it before later
    /// messages of its key.
    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let Some(acker) = self.acker.take() else {
                return Ok(());
            };
            let nak = acker.double_ack_with(jetstream::AckKind::Nak(None));
            self.settle("handing a delivery back", nak).await
        })
    }
}

impl Drop for NatsAcker {
    fn drop(&mut self) {
        self.release();
        let Some(acker) = self.acker.take() else {
            return;
        };
        let permit = self.permit.take();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = acker.ack_with(jetstream::AckKind::Nak(None)).await {
                        tracing::debug!(error = %e, "handing a dropped delivery back failed; it comes back after ack_wait");
                    }
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::debug!(
                    "a delivery was dropped outside a runtime; it comes back after ack_wait"
                );
            }
        }
    }
}

/// An error message from the driver, kept as a source.
#[derive(Debug)]
struct ErrorText(String);

impl fmt::Display for ErrorText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ErrorText {}

/// An error of the server or the connection: unavailable while `client`'s
/// connection is down, else retryable.
fn failure(
    client: &async_nats::Client,
    what: impl fmt::Display,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    if client.connection_state() == State::Connected {
        Error::broker(format!("{what} failed: {source}"), source)
    } else {
        Error::broker_unavailable(
            format!("{what} failed: the nats connection is down"),
            Some(Box::new(source)),
        )
    }
}

/// The error of a failed first connect.
fn connect_error(e: async_nats::ConnectError) -> Error {
    use async_nats::ConnectErrorKind as K;
    match e.kind() {
        K::ServerParse => Error::config("url", format!("not a nats server address: {e}")),
        K::Authentication | K::AuthorizationViolation | K::Tls => Error::Broker {
            message: format!("nats refused the connection: {e}"),
            retryable: false,
            source: Some(e.into()),
        },
        K::Dns | K::TimedOut | K::Io | K::MaxReconnects => {
            Error::broker_unavailable(format!("nats cannot be reached: {e}"), Some(e.into()))
        }
    }
}

/// See [`NatsBroker::durable_name`].
pub(crate) fn durable_name(group: &str, topic: &str) -> Result<String> {
    validate_topic(group)?;
    validate_topic(topic)?;
    let mut name = String::with_capacity(group.len() + topic.len() + 8);
    escape(group, &mut name);
    name.push_str("_s");
    escape(topic, &mut name);
    if name.len() > MAX_DURABLE_LEN {
        let hash = fnv1a(name.as_bytes());
        // Only ASCII was written, so any byte offset is a char boundary.
        name.truncate(MAX_DURABLE_LEN - 17);
        name.push('_');
        name.push_str(&format!("{hash:016x}"));
    }
    Ok(name)
}

/// Appends `text` with `_` written `_u` and `.` written `_d`.
fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '_' => out.push_str("_u"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
}

/// The 64-bit FNV-1a hash of `bytes` (stable across releases, unlike the
/// standard library's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_names_are_distinct_and_legal() {
        let a = durable_name("a.b", "c").unwrap();
        let b = durable_name("a_b", "c").unwrap();
        let c = durable_name("a", "b.c").unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        for n in [&a, &b, &c] {
            assert!(!n.contains(['.', '*', '>', ' ']), "{n}");
        }
        let long = durable_name(&"g".repeat(200), &"t".repeat(200)).unwrap();
        assert_eq!(long.len(), MAX_DURABLE_LEN);
        assert!(durable_name("bad group", "t").is_err());
        assert!(durable_name("g", "t.*").is_err());
    }
}
