//! RocketMQ's own half messages: [`RocketHalfProducer`] sends a half
//! message, the local work runs, then the transaction ends with COMMIT or
//! ROLLBACK; the broker asks the topic's `#[check_back]` about the ones
//! whose outcome it never heard.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, mpsc as std_mpsc};
use std::time::Duration;

use rocketmq_client_rust::{LocalTransactionState, TransactionListener, TransactionMQProducer};
use rocketmq_model::common::message::MessageTrait;
use rocketmq_model::common::message::message_ext::MessageExt;
use tokio::sync::oneshot;
use txmsg_core::half::{CheckBackRecord, CheckStatus, HalfMessage, HalfProducer, ResolveOutcome};
use txmsg_core::{Envelope, Error, Message, Result, States};
use uuid::Uuid;

use crate::RocketBroker;
use crate::broker::{client_config, millis};
use crate::wire;

/// The message property that holds back RocketMQ's first check-back of a
/// half message, in seconds (`CHECK_IMMUNITY_TIME_IN_SECONDS`).
const CHECK_IMMUNITY: &str = "CHECK_IMMUNITY_TIME_IN_SECONDS";

/// Longest a half message's local work may take before its transaction is
/// left to the check-back: the client's thread that waits for it is freed.
const LOCAL_WORK_LIMIT: Duration = Duration::from_secs(3600);

/// A half-message producer on RocketMQ's own transactional messages: the
/// keeper of a `#[transactional_message(half, ...)]` producer's messages
/// when it is given instead of a store's
/// [`HalfOutbox`](txmsg_core::half::HalfOutbox). No outbox row is written:
/// RocketMQ keeps the half message, as in RocketMQ's own design.
///
/// [`prepare`](HalfProducer::prepare) sends the half message (not yet
/// deliverable); the local work runs; [`commit`](HalfMessage::commit) or
/// [`rollback`](HalfMessage::rollback) end the transaction. When the
/// producer never says (it crashed, or the message was dropped), the broker
/// asks a producer of the same producer group: this one answers with the
/// topic's registered `#[check_back]` function (Commit, Rollback, or
/// Unknown to be asked again later).
///
/// What RocketMQ guarantees, and how it differs from a store's half
/// messages:
///
/// - The end of a transaction is a one-way request: a commit after the
///   broker already rolled the message back (or the reverse) is not
///   reported to the producer, so [`Error::RolledBack`] and
///   [`ResolveOutcome::AlreadyCommitted`] never come from here. The broker
///   settles each half message once: whichever of the producer's end and a
///   check-back's answer reaches it first wins.
/// - The broker checks back after its `transactionTimeout` (or the message's
///   `check_after`, whichever is later) and every
///   `transactionCheckInterval`, up to `transactionCheckMax` times, then
///   discards the message: the broker's settings, not txmsg's
///   [`CheckBackConfig`](txmsg_core::half::CheckBackConfig).
/// - A repeated idempotency key is not refused (RocketMQ keeps no key
///   index); the consumers' inbox applies it once.
/// - The local work holds one of the client's blocking threads while it
///   runs (RocketMQ's transaction listener is synchronous), and at most
///   an hour: past it the transaction is left to the check-back.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use txmsg_core::Message;
/// use txmsg_core::half::{HalfMessage, HalfProducer};
/// use txmsg_rocketmq::{RocketBroker, RocketConfig, RocketHalfProducer};
///
/// # async fn demo() -> txmsg_core::Result<()> {
/// let broker = RocketBroker::connect("rocketmq://127.0.0.1:9876", RocketConfig::default()).await?;
/// let producer = RocketHalfProducer::builder(&broker, "payments").start().await?;
/// let half = producer
///     .prepare(Message::new("payments.charged", &7)?, Duration::from_secs(6))
///     .await?;
/// // ... the local work ...
/// half.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RocketHalfProducer {
    inner: Arc<HalfInner>,
}

struct HalfInner {
    broker: RocketBroker,
    group: String,
    /// Taken when the last clone is dropped, to be shut down.
    producer: Option<Arc<TransactionMQProducer>>,
    pending: Pending,
}

impl fmt::Debug for RocketHalfProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocketHalfProducer")
            .field("group", &self.inner.group)
            .field("broker", &self.inner.broker)
            .finish_non_exhaustive()
    }
}

impl Drop for HalfInner {
    fn drop(&mut self) {
        let Some(producer) = self.producer.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // A send still running holds the producer; it shuts down
                // with the broker's client then.
                if let Some(mut producer) = Arc::into_inner(producer) {
                    producer.shutdown().await;
                }
            });
        }
    }
}

/// The half messages sent and waiting for their local work's outcome, by
/// message id: what the transaction listener answers the broker with.
type Pending = Arc<Mutex<HashMap<Uuid, Waiting>>>;

/// One half message whose local work runs.
struct Waiting {
    /// Told once the broker stored the half message.
    stored: oneshot::Sender<()>,
    /// The outcome, when the local work ends.
    outcome: std_mpsc::Receiver<LocalTransactionState>,
}

/// Builds a [`RocketHalfProducer`]: its producer group and the states its
/// check-backs take.
#[derive(Debug)]
#[must_use = "a builder does nothing until started"]
pub struct RocketHalfProducerBuilder {
    broker: RocketBroker,
    group: String,
    states: States,
    check_timeout: Duration,
}

impl RocketHalfProducer {
    /// A builder for a half producer of RocketMQ producer group `group` on
    /// `broker`. The broker sends its check-backs to any producer of the
    /// group: every process that produces these half messages, and any
    /// that only answers check-backs, uses the same group.
    pub fn builder(broker: &RocketBroker, group: &str) -> RocketHalfProducerBuilder {
        RocketHalfProducerBuilder {
            broker: broker.clone(),
            group: group.to_owned(),
            states: States::default(),
            check_timeout: Duration::from_secs(10),
        }
    }
}

impl RocketHalfProducerBuilder {
    /// Gives the check-backs `state`: each parameter `State<T>` gets a clone
    /// of it.
    pub fn with_state<T: Clone + Send + Sync + 'static>(mut self, state: T) -> Self {
        self.states.insert(state);
        self
    }

    /// Sets the longest a check-back may take (default 10 s); past it the
    /// answer is Unknown and the broker asks again later.
    pub fn with_check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Starts the transactional producer: from now on it sends half
    /// messages and answers the broker's check-backs.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a group RocketMQ does not accept, or for a
    /// topic with two `#[check_back]` functions;
    /// [`Error::BrokerUnavailable`] if the producer cannot start.
    pub async fn start(self) -> Result<RocketHalfProducer> {
        crate::config::check_name("group", &self.group, 1)?;
        let check_backs = txmsg_core::half::check_backs_by_topic()?;
        let pending: Pending = Arc::default();
        let listener = HalfListener {
            pending: Arc::clone(&pending),
            check_backs,
            states: self.states,
            check_timeout: self.check_timeout,
            prefix: self.broker.config().topic_prefix().to_owned(),
            runtime: tokio::runtime::Handle::current(),
        };
        // The broker asks only producers whose heartbeat it has, and a
        // producer sends heartbeats to the brokers of the topics it knows:
        // one that only answers check-backs must know their topics.
        let prefix = self.broker.config().topic_prefix();
        let topics: Vec<String> = listener
            .check_backs
            .keys()
            .filter_map(|topic| wire::rocketmq_name(prefix, topic).ok())
            .collect();
        let name_servers = self.broker.name_servers().to_owned();
        let mut producer = TransactionMQProducer::builder(self.broker.client())
            .topics(topics)
            .producer_group(self.group.as_str())
            .name_server_addr(name_servers.as_str())
            .client_config(client_config(&name_servers))
            .send_msg_timeout(millis(self.broker.config().send_timeout()))
            .transaction_listener(listener)
            .build();
        producer.start().await.map_err(|e| {
            Error::broker_unavailable(
                format!(
                    "the rocketmq half producer of group `{}` cannot start",
                    self.group
                ),
                Some(Box::new(e)),
            )
        })?;
        Ok(RocketHalfProducer {
            inner: Arc::new(HalfInner {
                broker: self.broker,
                group: self.group,
                producer: Some(Arc::new(producer)),
                pending,
            }),
        })
    }
}

impl HalfProducer for RocketHalfProducer {
    type Prepared = RocketHalf;

    /// Sends `message` as a RocketMQ half message, first checked back after
    /// `check_after` (rounded up to whole seconds) at the earliest, and
    /// returns once the broker stored it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] for a bad topic; [`Error::Broker`] if the
    /// broker did not store the half message (nothing was sent then).
    async fn prepare(&self, message: Message, check_after: Duration) -> Result<RocketHalf> {
        let envelope = message.into_envelope(chrono::Utc::now());
        let topic = self.inner.broker.rocketmq_topic(&envelope.topic)?;
        let mut msg = wire::encode(&envelope, &topic, self.inner.broker.config().source())?;
        let seconds = check_after.as_secs() + u64::from(check_after.subsec_nanos() > 0);
        msg.put_property(CHECK_IMMUNITY.into(), seconds.max(1).to_string().into());

        let (stored, stored_rx) = oneshot::channel();
        let (outcome, outcome_rx) = std_mpsc::channel();
        self.inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                envelope.id,
                Waiting {
                    stored,
                    outcome: outcome_rx,
                },
            );
        let producer = self
            .inner
            .producer
            .clone()
            .ok_or_else(|| Error::broker_unavailable("the half producer is shut down", None))?;
        let id = envelope.id;
        let mut sent =
            tokio::spawn(async move { producer.send_message_in_transaction(msg, Some(id)).await });
        let forget = |pending: &Pending| {
            pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        };
        tokio::select! {
            biased;
            Ok(()) = stored_rx => Ok(RocketHalf {
                id,
                topic: envelope.topic,
                outcome: Some(outcome),
                sent: Some(sent),
            }),
            result = &mut sent => {
                forget(&self.inner.pending);
                let reason = match result {
                    Ok(Ok(result)) => format!(
                        "rocketmq did not store the half message: {:?}",
                        result.send_result.map(|r| r.send_status)
                    ),
                    Ok(Err(e)) => return Err(Error::Broker {
                        message: "rocketmq did not take the half message".into(),
                        retryable: true,
                        source: Some(Box::new(e)),
                    }),
                    Err(e) => format!("the half message's send failed: {e}"),
                };
                Err(Error::Broker { message: reason, retryable: true, source: None })
            }
        }
    }
}

/// A RocketMQ half message, stored and waiting for the local work's
/// outcome ([`HalfMessage`]). Dropped without an outcome, its transaction
/// ends Unknown and the broker checks back.
pub struct RocketHalf {
    id: Uuid,
    topic: String,
    outcome: Option<std_mpsc::Sender<LocalTransactionState>>,
    sent: Option<
        tokio::task::JoinHandle<
            rocketmq_client_rust::ClientResult<rocketmq_client_rust::TransactionSendResult>,
        >,
    >,
}

impl fmt::Debug for RocketHalf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocketHalf")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Drop for RocketHalf {
    fn drop(&mut self) {
        if let Some(outcome) = self.outcome.take() {
            let _ = outcome.send(LocalTransactionState::Unknown);
        }
    }
}

impl RocketHalf {
    /// Ends the transaction with `state`, once the client sent the end.
    async fn end(mut self, state: LocalTransactionState) -> Result<()> {
        let told = self
            .outcome
            .take()
            .is_some_and(|outcome| outcome.send(state).is_ok());
        let sent = self.sent.take();
        if !told {
            return Err(Error::broker_unavailable(
                "the half message's transaction ended before its outcome was known; \
                 the broker's check-back decides",
                None,
            ));
        }
        match sent {
            Some(sent) => match sent.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(Error::broker_unavailable(
                    "the end of the half message's transaction was not sent; the check-back decides",
                    Some(Box::new(e)),
                )),
                Err(e) => Err(Error::broker_unavailable(
                    "the end of the half message's transaction was not sent; the check-back decides",
                    Some(Box::new(e)),
                )),
            },
            None => Ok(()),
        }
    }
}

impl HalfMessage for RocketHalf {
    fn id(&self) -> Uuid {
        self.id
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    /// Ends the transaction with COMMIT: the broker delivers the message.
    ///
    /// # Errors
    ///
    /// [`Error::BrokerUnavailable`] if the end could not be sent: the
    /// message stays a half message and the check-back decides.
    async fn commit(self) -> Result<()> {
        self.end(LocalTransactionState::CommitMessage).await
    }

    /// Ends the transaction with ROLLBACK: the message is never delivered.
    /// Always [`ResolveOutcome::Done`]: RocketMQ does not say whether a
    /// check-back settled it first.
    ///
    /// # Errors
    ///
    /// As [`commit`](HalfMessage::commit).
    async fn rollback(self) -> Result<ResolveOutcome> {
        self.end(LocalTransactionState::RollbackMessage).await?;
        Ok(ResolveOutcome::Done)
    }
}

/// Answers the client for the half messages of this producer (their local
/// work's outcome) and for the broker's check-backs (the topic's
/// `#[check_back]`). The client calls it on a thread of its blocking pool.
struct HalfListener {
    pending: Pending,
    check_backs: HashMap<&'static str, &'static CheckBackRecord>,
    states: States,
    check_timeout: Duration,
    prefix: String,
    runtime: tokio::runtime::Handle,
}

impl TransactionListener for HalfListener {
    fn execute_local_transaction(
        &self,
        _msg: &dyn MessageTrait,
        arg: Option<&(dyn Any + Send + Sync)>,
    ) -> LocalTransactionState {
        let Some(id) = arg.and_then(|a| a.downcast_ref::<Uuid>()) else {
            return LocalTransactionState::Unknown;
        };
        let Some(waiting) = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
        else {
            return LocalTransactionState::Unknown;
        };
        if waiting.stored.send(()).is_err() {
            // The producer's call was dropped: nobody runs the local work.
            return LocalTransactionState::Unknown;
        }
        waiting
            .outcome
            .recv_timeout(LOCAL_WORK_LIMIT)
            .unwrap_or(LocalTransactionState::Unknown)
    }

    fn check_local_transaction(&self, msg: &MessageExt) -> LocalTransactionState {
        let rocket_topic = msg.topic().as_str();
        let topic = rocket_topic
            .strip_prefix(self.prefix.as_str())
            .unwrap_or(rocket_topic)
            .replace('|', ".");
        let body = msg.body().map(|b| b.to_vec()).unwrap_or_default();
        let envelope: Envelope = match wire::decode(wire::Received {
            topic: &topic,
            properties: msg.properties(),
            message_id: msg.msg_id().as_str(),
            born_ms: msg.born_timestamp(),
            body,
        }) {
            Ok(envelope) => envelope,
            Err(undecodable) => {
                tracing::warn!(topic, reason = %undecodable.reason, "a half message cannot be read; it stays unknown");
                return LocalTransactionState::Unknown;
            }
        };
        let Some(record) = self.check_backs.get(envelope.topic.as_str()) else {
            tracing::warn!(
                topic = envelope.topic,
                "no #[check_back] for the topic of a half message; it stays unknown"
            );
            return LocalTransactionState::Unknown;
        };
        let verdict = self.runtime.block_on(tokio::time::timeout(
            self.check_timeout,
            (record.call)(&envelope, &self.states),
        ));
        match verdict {
            Ok(Ok(CheckStatus::Commit)) => LocalTransactionState::CommitMessage,
            Ok(Ok(CheckStatus::Rollback)) => LocalTransactionState::RollbackMessage,
            Ok(Ok(CheckStatus::Unknown)) => LocalTransactionState::Unknown,
            Ok(Err(reason)) => {
                tracing::warn!(topic = envelope.topic, id = %envelope.id, reason, "a check-back failed; asked again later");
                LocalTransactionState::Unknown
            }
            Err(_) => {
                tracing::warn!(topic = envelope.topic, id = %envelope.id, "a check-back timed out; asked again later");
                LocalTransactionState::Unknown
            }
        }
    }
}
