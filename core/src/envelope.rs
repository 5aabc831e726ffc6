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

/// Header carrying the W3C `tracestate` (vendor trace data) of the span that
/// wrote the message, beside its [`TRACEPARENT`]; absent when empty.
pub const TRACESTATE: &str = "tracestate";

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

    /// Turns the message into an envelope written at `now`, with a new id
    /// and the current span's trace context: what a store writes, and what
    /// a broker that keeps half messages itself sends.
    pub fn into_envelope(mut self, now: DateTime<Utc>) -> Envelope {
        let id = Uuid::now_v7();
        // The trace context of the span that writes the row, not of the
        // relay that will publish it.
        if !self.headers.contains_key(TRACEPARENT)
            && let Some((tp, state)) = crate::trace::current_context()
        {
            self.headers.insert(TRACEPARENT.to_owned(), tp);
            if let Some(state) = state {
                self.headers.insert(TRACESTATE.to_owned(), state);
            }
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

/// Properties over arbitrary payloads and names: decoding never panics and
/// fails with [`Error::Payload`]; a message turns into an envelope that
/// carries every field and decodes back to the value it was built from.
#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: u64,
        customer: String,
        lines: Vec<i32>,
        note: Option<String>,
        paid: bool,
    }

    fn order() -> impl Strategy<Value = Order> {
        (
            any::<u64>(),
            "(?s).{0,40}",
            proptest::collection::vec(any::<i32>(), 0..8),
            proptest::option::of("(?s).{0,40}"),
            any::<bool>(),
        )
            .prop_map(|(id, customer, lines, note, paid)| Order {
                id,
                customer,
                lines,
                note,
                paid,
            })
    }

    /// Payloads a consumer may receive: arbitrary bytes, JSON of the wrong
    /// shape, JSON cut short, nesting past the parser's limit, and far more
    /// bytes than usual.
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..256),
            2 => order().prop_map(|o| serde_json::to_vec(&o).expect("serializable")),
            1 => (order(), any::<prop::sample::Index>()).prop_map(|(o, at)| {
                let json = serde_json::to_vec(&o).expect("serializable");
                json[..at.index(json.len())].to_vec()
            }),
            1 => Just(br#"{"id":"seven","customer":1,"lines":{},"paid":null}"#.to_vec()),
            1 => Just(br#"[1,2,3]"#.to_vec()),
            1 => (1usize..200_000).prop_map(|n| vec![b'['; n]),
            1 => (1usize << 20..(1 << 20) + 8).prop_map(|n| {
                let mut big = br#"{"id":1,"customer":""#.to_vec();
                big.resize(n, b'a');
                big
            }),
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,20}(\\.[A-Za-z0-9_-]{1,20}){0,3}"
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn decode_never_panics_and_names_the_topic(topic in topic(), payload in payload()) {
            let env = Envelope::new(Uuid::now_v7(), topic.clone(), "k", payload.clone(), Utc::now());
            let expected = serde_json::from_slice::<Order>(&payload).ok();
            match env.decode::<Order>() {
                Ok(order) => prop_assert_eq!(Some(order), expected),
                Err(Error::Payload { topic: named, .. }) => {
                    prop_assert!(expected.is_none());
                    prop_assert_eq!(named, topic);
                    let text = env.decode::<Order>().map(drop).map_err(|e| e.to_string());
                    prop_assert!(text.is_err_and(|t| !t.trim().is_empty()));
                }
                Err(other) => prop_assert!(false, "expected Error::Payload, got {:?}", other),
            }
            // Any JSON value at all: still an answer, never a panic.
            let _ = env.decode::<serde_json::Value>();
        }

        #[test]
        fn json_cut_short_is_refused(order in order(), at in any::<prop::sample::Index>()) {
            let json = serde_json::to_vec(&order).expect("serializable");
            let cut = json[..at.index(json.len())].to_vec();
            let env = Envelope::new(Uuid::now_v7(), "orders", "k", cut, Utc::now());
            let refused = matches!(env.decode::<Order>(), Err(Error::Payload { .. }));
            prop_assert!(refused, "JSON cut short must be refused");
        }

        #[test]
        fn message_round_trips_through_an_envelope(
            topic in topic(),
            order in order(),
            key in proptest::option::of("(?s).{0,40}"),
            idempotency_key in proptest::option::of("(?s).{0,40}"),
            headers in proptest::collection::btree_map("(?s).{0,20}", "(?s).{0,40}", 0..6),
            ttl in proptest::option::of(0u64..10_000_000),
        ) {
            let mut message = Message::new(&topic, &order).expect("valid topic and payload");
            if let Some(k) = &key {
                message = message.key(k);
            }
            if let Some(k) = &idempotency_key {
                message = message.idempotency_key(k);
            }
            for (name, value) in &headers {
                message = message.header(name.clone(), value.clone());
            }
            if let Some(secs) = ttl {
                message = message.ttl(Duration::from_secs(secs));
            }
            let now = Utc::now();
            let env = message.into_envelope(now);
            prop_assert_eq!(&env.topic, &topic);
            prop_assert_eq!(&env.key, &key);
            let expected_key = idempotency_key.unwrap_or_else(|| env.id.to_string());
            prop_assert_eq!(&env.idempotency_key, &expected_key);
            prop_assert_eq!(&env.headers, &headers);
            prop_assert_eq!(env.created_at, now);
            prop_assert_eq!(
                env.expires_at,
                ttl.map(|s| now + chrono::Duration::seconds(i64::try_from(s).expect("small")))
            );
            prop_assert_eq!(env.decode::<Order>().expect("decodes"), order);
        }

        #[test]
        fn message_refuses_bad_topics_with_a_reason(
            topic in prop_oneof![topic(), "(?s).{0,210}", "[A-Za-z0-9._-]{0,210}"]
        ) {
            match (Message::new(&topic, &1), validate_topic(&topic)) {
                (Ok(m), Ok(())) => prop_assert_eq!(m.topic(), topic.as_str()),
                (Err(Error::InvalidTopic { topic: named, reason }), Err(_)) => {
                    prop_assert_eq!(named, topic);
                    prop_assert!(!reason.trim().is_empty());
                }
                (got, rule) => prop_assert!(false, "Message::new gave {:?}, the rule {:?}", got, rule),
            }
        }
    }
}
