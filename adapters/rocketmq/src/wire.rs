//! The wire format: the CloudEvents RocketMQ binding in binary content mode
//! (attributes as user properties prefixed `CE_`), and the mapping of
//! txmsg topics and groups to RocketMQ names.

use std::collections::HashMap;

use rocketmq_model::common::message::STRING_HASH_SET;
use rocketmq_model::common::message::message_single::Message;
use txmsg_core::cloudevents::{Binding, Incoming};
use txmsg_core::consumer::Undecodable;
use txmsg_core::{Envelope, Error, Result};

/// The user property of the CloudEvents `id`: the idempotency key.
pub const PROPERTY_ID: &str = "CE_id";
/// The user property of the CloudEvents `type`: the txmsg topic.
pub const PROPERTY_TYPE: &str = "CE_type";
/// The user property of the payload's content type (`application/json`), as
/// the binding names it.
pub const PROPERTY_CONTENT_TYPE: &str = "CE_contenttype";
/// The user property of the txmsg message id (the outbox row's UUIDv7).
pub const PROPERTY_TXMSG_ID: &str = txmsg_core::cloudevents::TXMSG_ID;

/// Longest RocketMQ topic or consumer group name, in bytes.
const MAX_NAME_LEN: usize = 127;

/// How CloudEvents travel in RocketMQ user properties: `CE_` attributes,
/// names compared exactly, the content type as `CE_contenttype`.
const BINDING: Binding =
    Binding::new("user property", &["CE_"]).content_type_header(PROPERTY_CONTENT_TYPE);

/// The RocketMQ name of txmsg topic or group `name` under `prefix`: `.`
/// becomes `|` (RocketMQ names hold `[%|a-zA-Z0-9_-]`; txmsg names never
/// hold `|`, so two txmsg names never meet in one RocketMQ name).
///
/// # Errors
///
/// [`Error::InvalidTopic`] for `name` if the RocketMQ name would be longer
/// than 127 bytes.
pub(crate) fn rocketmq_name(prefix: &str, name: &str) -> Result<String> {
    let mapped = format!("{prefix}{}", name.replace('.', "|"));
    if mapped.len() > MAX_NAME_LEN {
        return Err(Error::InvalidTopic {
            topic: name.to_owned(),
            reason: "with the topic prefix, must be at most 127 bytes on RocketMQ",
        });
    }
    Ok(mapped)
}

/// The RocketMQ consumer group of txmsg group `group` on txmsg topic
/// `topic`: `<prefix><group>||<topic>`, with `.` as `|`. RocketMQ wants
/// every consumer of a group to subscribe to the same topics, while a txmsg
/// group subscribes to each topic on its own: one RocketMQ group per topic
/// keeps them apart. `||` never stands in a mapped txmsg name (no empty
/// segments), so two pairs never share a group.
///
/// # Errors
///
/// [`Error::Config`] for `group` if the name would be longer than 127
/// bytes.
pub(crate) fn consumer_group(prefix: &str, group: &str, topic: &str) -> Result<String> {
    let name = format!(
        "{prefix}{}||{}",
        group.replace('.', "|"),
        topic.replace('.', "|")
    );
    if name.len() > MAX_NAME_LEN {
        return Err(Error::config(
            "group",
            "with the topic prefix and the topic, must be at most 127 bytes on RocketMQ",
        ));
    }
    Ok(name)
}

/// The user property that marks an empty payload: RocketMQ refuses a
/// message without a body, so an empty payload travels as one zero byte
/// with this property set.
pub const PROPERTY_EMPTY_BODY: &str = "txmsg-empty-body";

/// Whether `name` may stand in a RocketMQ property (key or value): the
/// properties are sent as one text with `\u{1}` and `\u{2}` as separators.
fn property_text_ok(text: &str) -> bool {
    !text.contains(['\u{1}', '\u{2}'])
}

/// The message `envelope` is published as to RocketMQ topic `topic`: the
/// pairs of [`Binding::encode`] as user properties, the ordering key as the
/// message's `KEYS` (so that RocketMQ's tools find it), the payload as the
/// body.
///
/// # Errors
///
/// [`Error::Broker`], not retryable, for a header whose name RocketMQ
/// reserves for itself (`KEYS`, `TAGS`, ...) or whose name or value holds
/// the property separators `\u{1}` or `\u{2}`: such a message can never be
/// published as it is.
pub(crate) fn encode(envelope: &Envelope, topic: &str, source: &str) -> Result<Message> {
    let empty = envelope.payload.is_empty();
    let body = if empty {
        vec![0]
    } else {
        envelope.payload.clone()
    };
    let mut message = Message::builder()
        .topic(topic)
        .body(body)
        .build()
        .map_err(|e| Error::broker_permanent(format!("not a rocketmq message: {e}")))?;
    let mut properties = HashMap::new();
    for (name, value) in BINDING.encode(envelope, source) {
        if STRING_HASH_SET.contains(name.as_str()) {
            return Err(Error::broker_permanent(format!(
                "header `{name}` is a property RocketMQ reserves for itself"
            )));
        }
        if name.is_empty() || !property_text_ok(&name) || !property_text_ok(&value) {
            return Err(Error::broker_permanent(format!(
                "header {name:?} (or its value) is empty or holds \\u{{1}} or \\u{{2}}, \
                 which RocketMQ properties cannot carry"
            )));
        }
        properties.insert(name.into(), value.into());
    }
    if empty {
        properties.insert(PROPERTY_EMPTY_BODY.into(), "1".into());
    }
    message.set_properties(properties);
    if let Some(key) = &envelope.key
        && property_text_ok(key)
        && !key.is_empty()
    {
        message.set_keys(key.as_str().into());
    }
    Ok(message)
}

/// A received message, as [`decode`] reads it.
#[derive(Debug)]
pub(crate) struct Received<'a> {
    /// The txmsg topic it was subscribed as.
    pub topic: &'a str,
    /// Its properties, RocketMQ's own among them.
    pub properties: &'a HashMap<cheetah_string::CheetahString, cheetah_string::CheetahString>,
    /// RocketMQ's message id (`UNIQ_KEY`).
    pub message_id: &'a str,
    /// When the producer made it, in milliseconds since the epoch.
    pub born_ms: i64,
    /// The body.
    pub body: Vec<u8>,
}

/// Reads a received message back into an envelope, by the rules of
/// [`Binding::decode`]: what [`encode`] wrote, and what any producer
/// following the binding sends. RocketMQ's own properties (`KEYS`,
/// `UNIQ_KEY`, `MIN_OFFSET`, ...) are not envelope headers and are left
/// out; a message without `CE_id` is known by RocketMQ's message id.
pub(crate) fn decode(received: Received<'_>) -> std::result::Result<Envelope, Undecodable> {
    let empty = received.properties.contains_key(PROPERTY_EMPTY_BODY);
    let body = if empty { Vec::new() } else { received.body };
    let mut incoming = Incoming::new(received.topic, body);
    let mut headers: Vec<(String, String)> = received
        .properties
        .iter()
        .filter(|(name, _)| {
            !STRING_HASH_SET.contains(name.as_str()) && name.as_str() != PROPERTY_EMPTY_BODY
        })
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    // A map has no order; decoding must not depend on its iteration order.
    headers.sort();
    incoming.headers = headers;
    incoming.message_id = Some(received.message_id.to_owned());
    incoming.timestamp = chrono::DateTime::from_timestamp_millis(received.born_ms);
    BINDING.decode(incoming)
}

#[cfg(test)]
mod tests {
    use txmsg_testkit::wire::sample_envelope as envelope;

    use super::*;

    fn received<'a>(
        message: &'a Message,
        properties: &'a HashMap<cheetah_string::CheetahString, cheetah_string::CheetahString>,
    ) -> Received<'a> {
        Received {
            topic: "orders.placed",
            properties,
            message_id: "AC1100",
            born_ms: 1_700_000_000_000,
            body: message.body().map(|b| b.to_vec()).unwrap_or_default(),
        }
    }

    #[test]
    fn names_map_dots_and_stay_distinct() {
        assert_eq!(rocketmq_name("", "orders.placed").unwrap(), "orders|placed");
        assert_eq!(rocketmq_name("app_", "a-b_c").unwrap(), "app_a-b_c");
        assert_ne!(
            rocketmq_name("", "a.b_c").unwrap(),
            rocketmq_name("", "a_b.c").unwrap()
        );
        assert!(rocketmq_name("", &"a".repeat(128)).is_err());
    }

    #[test]
    fn decode_inverts_encode() {
        let e = envelope();
        let message = encode(&e, "orders|placed", "/src").unwrap();
        assert_eq!(message.topic().as_str(), "orders|placed");
        let mut properties: HashMap<_, _> = message
            .properties()
            .as_map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // What the broker adds is not an envelope header.
        properties.insert("UNIQ_KEY".into(), "AC1100".into());
        properties.insert("MIN_OFFSET".into(), "0".into());
        let got = decode(received(&message, &properties)).expect("decodes");
        assert_eq!(
            got.created_at.timestamp_millis(),
            e.created_at.timestamp_millis()
        );
        let mut expected = e.clone();
        expected.created_at = got.created_at;
        expected.headers.insert("CE_source".into(), "/src".into());
        assert_eq!(got, expected, "nothing of RocketMQ's own is kept");
    }

    #[test]
    fn an_empty_payload_comes_back_empty() {
        let mut e = envelope();
        e.payload.clear();
        let message = encode(&e, "t", "/src").unwrap();
        assert_eq!(message.body().unwrap().len(), 1, "rocketmq needs a body");
        let properties = message.properties().as_map().clone();
        let got = decode(received(&message, &properties)).expect("decodes");
        assert!(got.payload.is_empty());
        assert!(!got.headers.contains_key(PROPERTY_EMPTY_BODY));
    }

    #[test]
    fn groups_are_per_topic_and_distinct() {
        assert_eq!(
            consumer_group("p_", "billing.eu", "orders.placed").unwrap(),
            "p_billing|eu||orders|placed"
        );
        assert_ne!(
            consumer_group("", "a.b", "c").unwrap(),
            consumer_group("", "a", "b.c").unwrap()
        );
        assert!(consumer_group("", &"g".repeat(100), &"t".repeat(30)).is_err());
    }

    #[test]
    fn reserved_or_unsendable_headers_are_refused_for_good() {
        for (name, value) in [("KEYS", "x"), ("x\u{1}y", "v"), ("x-a", "v\u{2}")] {
            let mut e = envelope();
            e.headers.insert(name.into(), value.into());
            let err = encode(&e, "t", "/src").unwrap_err();
            assert!(!err.is_retryable(), "{err}");
        }
    }

    #[test]
    fn a_plain_message_is_known_by_its_rocketmq_id() {
        let message = Message::builder()
            .topic("orders|placed")
            .body(br#"{"a":1}"#.to_vec())
            .build()
            .unwrap();
        let properties = HashMap::new();
        let got = decode(received(&message, &properties)).expect("decodes");
        assert_eq!(got.idempotency_key, "AC1100");
        assert_eq!(got.topic, "orders.placed");
    }
}
