//! The connection and its publishing channel, and getting them back after a loss.
//!
//! A [`Shared`] holds at most one [`Link`]: a connection with one channel in
//! confirm mode on which the exchange was declared. Publishes clone the
//! channel out of the state lock and never hold the lock across an await.
//! When the link is found dead (by a publish, or by the connection's error
//! events), it is dropped and one background task reconnects with backoff;
//! until it succeeds, publishes fail at once with a retryable error.

use std::error::Error as StdError;
use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use futures_util::future::select;
use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind, Event, ExchangeKind};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::{Instrument, debug, info, info_span, warn};
use txmsg_core::{Error, Result};

use crate::config::{QueueType, RabbitConfig};
use crate::confirm::Confirms;
use crate::url::BrokerUrl;

/// What every clone of one broker shares.
pub(crate) struct Shared {
    pub(crate) url: BrokerUrl,
    pub(crate) config: RabbitConfig,
    pub(crate) exchange: ShortString,
    pub(crate) source: String,
    /// The runtime that runs background tasks: reconnects, subscriptions.
    pub(crate) runtime: Handle,
    generations: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The live link, if any.
    link: Option<Arc<Link>>,
    /// Why there is no live link.
    down: Option<Down>,
    /// Whether a reconnect task is running.
    reconnecting: bool,
    /// Whether [`Shared::close`] was called: no more reconnects.
    closed: bool,
}

/// A connection and its publishing channel.
pub(crate) struct Link {
    pub(crate) connection: Connection,
    pub(crate) channel: Channel,
    /// Settles the channel's publishes, returns told apart by message id.
    pub(crate) confirms: Confirms,
    generation: u64,
    /// Dropping the link stops its event watcher.
    _stop_watcher: oneshot::Sender<()>,
}

impl Link {
    /// Whether the connection and the channel are both open.
    fn healthy(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Opens a channel of its own on the connection, for declaring or
    /// consuming apart from the publishing channel; a failure is reported
    /// by `error`.
    pub(crate) async fn open_channel(&self, error: ErrorOf) -> Result<Channel> {
        self.connection
            .create_channel()
            .await
            .map_err(|e| error("could not open a rabbitmq channel".to_owned(), e))
    }
}

/// How a failed channel operation is reported: [`broker_error`] or
/// [`driver_error`].
pub(crate) type ErrorOf = fn(String, lapin::Error) -> Error;

/// Declares the durable queue `queue` of type `queue_type` on `channel` and
/// binds it to `exchange` with `routing_key` (a topic or a pattern).
/// Declaring an existing queue with the same settings, or binding it again,
/// changes nothing; a failure is reported by `error`.
pub(crate) async fn declare_bound_queue(
    channel: &Channel,
    queue: &ShortString,
    queue_type: QueueType,
    exchange: &ShortString,
    routing_key: &ShortString,
    error: ErrorOf,
) -> Result<()> {
    let mut arguments = FieldTable::default();
    match queue_type {
        // No argument: the queues of earlier versions were declared so, and
        // RabbitMQ refuses a declaration whose arguments differ.
        QueueType::Classic => {}
        QueueType::Quorum => {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
    }
    channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map_err(|e| error(format!("declaring queue `{queue}` failed"), e))?;
    channel
        .queue_bind(
            queue.clone(),
            exchange.clone(),
            routing_key.clone(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            error(
                format!(
                    "binding queue `{queue}` to exchange `{exchange}` with `{routing_key}` failed"
                ),
                e,
            )
        })
}

/// Why the broker has no live link: kept as the source of outage errors.
#[derive(Debug, Clone)]
pub(crate) enum Down {
    /// The driver reported an error.
    Lapin(lapin::Error),
    /// A connect attempt took longer than the connect timeout.
    Timeout(Duration),
    /// The connection or channel was found closed.
    Closed,
    /// The channel was not in confirm mode.
    NoConfirms,
}

impl fmt::Display for Down {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Down::Lapin(e) => write!(f, "{e}"),
            Down::Timeout(t) => write!(f, "connect attempt timed out after {t:?}"),
            Down::Closed => f.write_str("connection or channel closed"),
            Down::NoConfirms => f.write_str("channel was not in publisher-confirm mode"),
        }
    }
}

impl StdError for Down {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        // Transparent over the driver's error: its message is ours already.
        match self {
            Down::Lapin(e) => e.source(),
            _ => None,
        }
    }
}

/// Whether trying the same operation again later may succeed after `e`.
///
/// Refusals that depend on configuration (credentials, permissions, a
/// virtual host, an exchange or queue declared with other settings) are
/// permanent; lost connections, timeouts and everything else are not.
pub(crate) fn is_retryable(e: &lapin::Error) -> bool {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => !matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::PRECONDITIONFAILED)
                | AMQPErrorKind::Hard(
                    AMQPHardError::NOTALLOWED
                        | AMQPHardError::INVALIDPATH
                        | AMQPHardError::NOTIMPLEMENTED
                        | AMQPHardError::SYNTAXERROR
                        | AMQPHardError::COMMANDINVALID
                )
        ),
        ErrorKind::InvalidProtocolVersion(_)
        | ErrorKind::AuthProviderError(_)
        | ErrorKind::NoDefaultRuntime
        | ErrorKind::SerialisationError(_) => false,
        _ => true,
    }
}

/// The error for an operation that failed with `e`: the broker is
/// unavailable when the connection or channel went away, a plain broker
/// error otherwise.
pub(crate) fn driver_error(message: impl fmt::Display, e: lapin::Error) -> Error {
    let connection_gone = matches!(
        e.kind(),
        ErrorKind::IOError(_)
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::InvalidChannelState(..)
    );
    if connection_gone {
        Error::broker_unavailable(message, Some(Box::new(e)))
    } else {
        broker_error(message, e)
    }
}

/// An [`Error::Broker`] for `e`, retryable as [`is_retryable`] says.
pub(crate) fn broker_error(message: impl fmt::Display, e: lapin::Error) -> Error {
    Error::Broker {
        message: message.to_string(),
        retryable: is_retryable(&e),
        source: Some(Box::new(e)),
    }
}

impl Shared {
    /// Connects, then returns the state every clone of the broker shares.
    ///
    /// # Errors
    ///
    /// [`Error::Broker`] if the first connect attempt fails.
    pub(crate) async fn connect(url: BrokerUrl, config: RabbitConfig) -> Result<Arc<Self>> {
        let runtime = Handle::try_current().map_err(|_| {
            Error::broker_permanent("connecting to rabbitmq needs a running tokio runtime")
        })?;
        let exchange = ShortString::try_new(config.exchange())
            .map_err(|_| Error::config("exchange", "must be at most 255 bytes"))?;
        let shared = Arc::new(Shared {
            source: config.source().to_owned(),
            url,
            config,
            exchange,
            runtime,
            generations: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        });
        let link = shared
            .open_link()
            .await
            .map_err(|down| shared.connect_error(down))?;
        shared.lock().link = Some(link);
        Ok(shared)
    }

    /// The error of a failed connect attempt.
    fn connect_error(&self, down: Down) -> Error {
        let message = format!("could not connect to rabbitmq at {}", self.url);
        match down {
            Down::Lapin(e) => broker_error(message, e),
            other => Error::broker(message, other),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live link, or a retryable error at once when there is none (and
    /// a reconnect is then under way).
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] during an outage, while RabbitMQ blocks
    /// the connection, and after [`close`](Self::close).
    pub(crate) fn link(self: &Arc<Self>) -> Result<Arc<Link>> {
        self.live_link(true)
    }

    /// The live link, for declaring and consuming: as [`link`](Self::link),
    /// but usable while RabbitMQ blocks publishing on the connection, since
    /// a blocked connection still delivers (and consuming helps the broker
    /// out of its resource alarm).
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] during an outage and after
    /// [`close`](Self::close).
    pub(crate) fn consuming_link(self: &Arc<Self>) -> Result<Arc<Link>> {
        self.live_link(false)
    }

    fn live_link(self: &Arc<Self>, publishing: bool) -> Result<Arc<Link>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Error::broker_unavailable(
                "the rabbitmq broker was closed",
                None,
            ));
        }
        match state.link.as_ref() {
            Some(link) if link.healthy() => {
                if publishing && link.connection.status().blocked() {
                    return Err(Error::broker_unavailable(
                        format!(
                            "rabbitmq at {} blocks publishing on this connection (resource alarm)",
                            self.url
                        ),
                        None,
                    ));
                }
                return Ok(link.clone());
            }
            Some(_) => {
                info!(url = %self.url, "rabbitmq connection lost, reconnecting");
                state.link = None;
                state.down = Some(Down::Closed);
            }
            None => {}
        }
        self.start_reconnect(&mut state);
        let down = state.down.clone().unwrap_or(Down::Closed);
        Err(Error::broker_unavailable(
            format!("not connected to rabbitmq at {}, reconnecting", self.url),
            Some(Box::new(down)),
        ))
    }

    /// Whether a live link exists.
    pub(crate) fn is_connected(&self) -> bool {
        let state = self.lock();
        !state.closed && state.link.as_ref().is_some_and(|l| l.healthy())
    }

    /// Drops `link` if it is still the current one and no longer healthy
    /// (or `force`), and starts a reconnect.
    pub(crate) fn check(self: &Arc<Self>, link: &Link, cause: Down, force: bool) {
        let mut state = self.lock();
        let current = state
            .link
            .as_ref()
            .is_some_and(|l| l.generation == link.generation);
        if !current || (!force && link.healthy()) {
            return;
        }
        warn!(url = %self.url, error = %cause, "rabbitmq connection lost, reconnecting");
        state.link = None;
        state.down = Some(cause);
        self.start_reconnect(&mut state);
    }

    /// Stops reconnecting and hands back the live link, if any.
    pub(crate) fn close(&self) -> Option<Arc<Link>> {
        let mut state = self.lock();
        state.closed = true;
        state.link.take()
    }

    fn start_reconnect(self: &Arc<Self>, state: &mut State) {
        if state.reconnecting || state.closed {
            return;
        }
        state.reconnecting = true;
        let span = info_span!("txmsg.rabbitmq.reconnect", url = %self.url);
        self.runtime
            .spawn(reconnect(Arc::downgrade(self)).instrument(span));
    }

    /// One connect attempt: connection, channel in confirm mode, exchange,
    /// and a task that watches the connection for errors.
    async fn open_link(self: &Arc<Self>) -> Result<Arc<Link>, Down> {
        let timeout = self.config.connect_timeout();
        let (connection, channel) = tokio::time::timeout(timeout, self.open_channel())
            .await
            .map_err(|_| Down::Timeout(timeout))?
            .map_err(Down::Lapin)?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let (stop, stopped) = oneshot::channel();
        let events = connection.events_listener();
        self.runtime
            .spawn(watch(Arc::downgrade(self), generation, events, stopped));
        debug!(url = %self.url, exchange = %self.exchange, "connected to rabbitmq");
        let confirms = Confirms::start(channel.clone(), &self.runtime);
        Ok(Arc::new(Link {
            connection,
            channel,
            confirms,
            generation,
            _stop_watcher: stop,
        }))
    }

    async fn open_channel(&self) -> lapin::Result<(Connection, Channel)> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.config.connection_name().into());
        let connection = Connection::connect_uri(self.url.uri().clone(), properties).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel
            .exchange_declare(
                self.exchange.clone(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok((connection, channel))
    }
}

/// What ends one reconnect attempt.
enum Attempt {
    /// The attempt failed; try again after a delay.
    Failed(Down),
    /// The broker was dropped or closed: stop.
    Stop,
}

/// Reconnects with exponential backoff (the first attempt after the minimum
/// delay) until it succeeds or the broker is gone; holds the broker only
/// during an attempt, never while sleeping.
async fn reconnect(weak: Weak<Shared>) {
    let Some((min, max)) = weak.upgrade().map(|s| s.config.reconnect_backoff()) else {
        return;
    };
    // Wait before the first attempt too: a connection the server just
    // closed is rarely worth reopening within the same millisecond.
    tokio::time::sleep(min).await;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times();
    let attempt = || async {
        let shared = weak.upgrade().ok_or(Attempt::Stop)?;
        if shared.lock().closed {
            return Err(Attempt::Stop);
        }
        match shared.open_link().await {
            Ok(link) => Ok(link),
            Err(down) => {
                shared.lock().down = Some(down.clone());
                Err(Attempt::Failed(down))
            }
        }
    };
    let result = attempt
        .retry(backoff)
        .when(|e| matches!(e, Attempt::Failed(_)))
        .notify(|e, delay| {
            if let Attempt::Failed(down) = e {
                warn!(error = %down, ?delay, "reconnect to rabbitmq failed, retrying");
            }
        })
        .await;
    let Some(shared) = weak.upgrade() else { return };
    let mut state = shared.lock();
    state.reconnecting = false;
    if let Ok(link) = result {
        if state.closed {
            return;
        }
        info!("reconnected to rabbitmq");
        state.link = Some(link);
        state.down = None;
    }
}

/// Watches a connection's events and reports its loss, until the link is
/// dropped.
async fn watch(
    weak: Weak<Shared>,
    generation: u64,
    events: impl futures_util::Stream<Item = Event> + Send + 'static,
    stopped: oneshot::Receiver<()>,
) {
    let lost = async move {
        let mut events = pin!(events);
        while let Some(event) = events.next().await {
            let Event::Error(error) = event else { continue };
            let Some(shared) = weak.upgrade() else { return };
            let link = shared.lock().link.clone();
            // Errors of other channels (e.g. a refused queue declaration)
            // leave the publishing channel open: keep watching then.
            if let Some(link) = link.filter(|l| l.generation == generation && !l.healthy()) {
                shared.check(&link, Down::Lapin(error), false);
                return;
            }
        }
    };
    // Either way the watcher ends: the link was lost, or dropped.
    let _ = select(pin!(lost), stopped).await;
}
