//! The message as stored, published and delivered.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{Error, Result, validate_topic};

/// Message headers: W3C `traceparent`, user headers. Never holds the payload.
pub type Headers = BTreeMap<String, String>;

/// Header carrying the W3C trace context of the span that wrote the message.
pub const TRACEPARENT: &str = "traceparent";

/// A message with everything the relay and the consumers need.
///
/// The payload is JSON. `id` is a UUIDv7 assigned when the message is
/// written, so ids sort in write order; `idempotency_key` is what consumers
/// deduplicate on and what the wire format carries as the CloudEvents `id`.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// Unique id of the outbox row (UUIDv7).
    pub id: Uuid,
    /// Topic the message is published to.
    pub topic: String,
    /// Ordering key: messages with the same (topic, key) are published in order.
    pub key: Option<String>,
    /// Key consumers deduplicate on; unique per topic.
    pub idempotency_key: String,
    /// Headers, including trace context.
    pub headers: Headers,
    /// The JSON-encoded payload.
    pub payload: Vec<u8>,
    /// When the message was written.
    pub created_at: DateTime<Utc>,
    /// When the message expires if not delivered by then.
    pub expires_at: Option<DateTime<Utc>>,
    /// Publish attempts that failed so far.
    pub attempts: u32,
}

impl fmt::Debug for Envelope {
    // The payload may hold personal data: show its size, never its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("idempotency_key", &self.idempotency_key)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl Envelope {
    /// An envelope with no key, headers or expiry and no attempts, for
    /// adapters that rebuild envelopes from stored rows or received messages;
    /// set the other (public) fields afterwards.
    pub fn new(
        id: Uuid,
        topic: impl Into<String>,
        idempotency_key: impl Into<String>,
        payload: Vec<u8>,
        created_at: DateTime<Utc>,
    ) -> Self {
        Envelope {
            id,
            topic: topic.into(),
            key: None,
            idempotency_key: idempotency_key.into(),
            headers: Headers::new(),
            payload,
            created_at,
            expires_at: None,
            attempts: 0,
        }
    }

    /// Decodes the payload as `M`.
    ///
    /// # Errors
    ///
    /// [`Error::Payload`] if the JSON does not match `M`.
    pub fn decode<M: serde::de::DeserializeOwned>(&self) -> Result<M> {
        serde_json::from_slice(&self.payload).map_err(|source| Error::Payload {
            topic: self.topic.clone(),
            source,
        })
    }

    /// Whether the message has expired at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }
}

/// A message about to be written to the outbox: topic, payload and options.
///
/// Built by the generated code of `#[transactional_message]`, or by hand for
/// [`Tx::enqueue`](crate::Tx::enqueue).
///
/// # Examples
///
/// ```
/// use txmsg_core::Message;
///
/// #[derive(serde::Serialize)]
/// struct OrderPlaced { id: u64 }
///
/// let msg = Message::new("orders.placed", &OrderPlaced { id: 7 })?
///     .key(7)
///     .idempotency_key("order-7");
/// # Ok::<(), txmsg_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) key: Option<String>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) headers: Headers,
}

impl Message {
    /// A message for `topic` carrying `payload` as JSON.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopic`] for a topic brokers would reject;
    /// [`Error::Payload`] if `payload` cannot be serialized.
    pub fn new<M: Serialize + ?Sized>(topic: &str, payload: &M) -> Result<Self> {
        validate_topic(topic)?;
        let payload = serde_json::to_vec(payload).map_err(|source| Error::Payload {
            topic: topic.to_owned(),
            source,
        })?;
        Ok(Message {
            topic: topic.to_owned(),
            payload,
            key: None,
            idempotency_key: None,
            ttl: None,
            headers: Headers::new(),
        })
    }

    /// Sets the ordering key.
    pub fn key(mut self, key: impl fmt::Display) -> Self {
        self.key = Some(key.to_string());
        self
    }

    /// Sets the idempotency key; without one a fresh UUIDv7 is used.
    pub fn idempotency_key(mut self, key: impl fmt::Display) -> Self {
        self.idempotency_key = Some(key.to_string());
        self
    }

    /// Sets how long the message may wait for delivery before it expires.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Turns the message into an envelope written at `now`.
    pub(crate) fn into_envelope(mut self, now: DateTime<Utc>) -> Envelope {
        let id = Uuid::now_v7();
        // The trace context of the span that writes the row, not of the
        // relay that will publish it.
        if !self.headers.contains_key(TRACEPARENT)
            && let Some(tp) = crate::trace::current_traceparent()
        {
            self.headers.insert(TRACEPARENT.to_owned(), tp);
        }
        let expires_at = self
            .ttl
            .and_then(|ttl| chrono::Duration::from_std(ttl).ok())
            .and_then(|ttl| now.checked_add_signed(ttl));
        Envelope {
            id,
            idempotency_key: self.idempotency_key.unwrap_or_else(|| id.to_string()),
            topic: self.topic,
            key: self.key,
            headers: self.headers,
            payload: self.payload,
            created_at: now,
            expires_at,
            attempts: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_defaults_idempotency_key_to_id() {
        let now = Utc::now();
        let env = Message::new("t", &1).unwrap().into_envelope(now);
        assert_eq!(env.idempotency_key, env.id.to_string());
        assert_eq!(env.payload, b"1");
        assert!(env.expires_at.is_none());
    }

    #[test]
    fn ttl_sets_expiry() {
        let now = Utc::now();
        let env = Message::new("t", &1)
            .unwrap()
            .ttl(Duration::from_secs(60))
            .into_envelope(now);
        assert_eq!(env.expires_at, Some(now + chrono::Duration::seconds(60)));
        assert!(!env.is_expired(now));
        assert!(env.is_expired(now + chrono::Duration::seconds(61)));
    }

    #[test]
    fn debug_hides_payload() {
        let env = Message::new("t", &"secret")
            .unwrap()
            .into_envelope(Utc::now());
        assert!(!format!("{env:?}").contains("secret"));
    }

    #[test]
    fn bad_topic_is_refused() {
        assert!(matches!(
            Message::new("a b", &1),
            Err(Error::InvalidTopic { .. })
        ));
    }
}
