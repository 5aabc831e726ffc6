//! The wire format: CloudEvents in binary content mode over AMQP 0-9-1.

use std::borrow::Cow;
use txmsg_core::cloudevents::{Binding, CONTENT_TYPE, Incoming};

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use txmsg_core::consumer::Undecodable;
use txmsg_core::{Envelope, Error, Result};

use crate::RabbitConfig;

/// The header name of a CloudEvents attribute.
macro_rules! ce {
    ($attribute:literal) => {
        concat!("cloudEvents_", $attribute)
    };
}

/// Prefix of the application-properties (AMQP headers) that carry the
/// CloudEvents attributes: `cloudEvents_id`, `cloudEvents_type`, ...
///
/// The [CloudEvents AMQP protocol binding] allows `cloudEvents_` and
/// `cloudEvents:` and says the `_` separator SHOULD be preferred, since JMS 2.0
/// clients and JMS message selectors cannot use `:` in property names. Every
/// message uses this one prefix for all of its attributes; consumers of the
/// binding are expected to understand both.
///
/// [CloudEvents AMQP protocol binding]: https://github.com/cloudevents/spec/blob/main/cloudevents/bindings/amqp-protocol-binding.md
pub const CLOUDEVENTS_PREFIX: &str = ce!("");

/// Header carrying the txmsg message id (the outbox row's UUIDv7), next to the
/// CloudEvents `id`, which is the idempotency key.
pub const TXMSG_ID_HEADER: &str = txmsg_core::cloudevents::TXMSG_ID;

/// AMQP 0-9-1 delivery mode of a message stored on disk.
const PERSISTENT: u8 = 2;

/// The routing key and properties `envelope` is published with, its
/// CloudEvents `source` being `source`.
///
/// Persistent, `application/json`, `message_id` = idempotency key (when
/// it fits an AMQP short string; the `cloudEvents_id` header always
/// carries it), `timestamp` = creation time in seconds, and as headers:
/// the CloudEvents attributes `id`, `type`, `source`, `specversion`,
/// `time`, `partitionkey` (the ordering key, from the partitioning
/// extension) and `traceparent` (from the distributed tracing extension),
/// [`TXMSG_ID_HEADER`], and every other envelope header as is. The
/// attributes win over an envelope header of the same name.
///
/// # Errors
///
/// A permanent [`Error::Broker`] if the topic or a header name is longer
/// than the 255 bytes AMQP allows: such a message can never be published.
pub(crate) fn encode(envelope: &Envelope, source: &str) -> Result<(ShortString, BasicProperties)> {
    let routing_key = ShortString::try_new(envelope.topic.as_str()).map_err(|_| {
        Error::broker_permanent(format!(
            "topic of {} bytes is longer than the 255 bytes an amqp routing key allows",
            envelope.topic.len()
        ))
    })?;
    let mut headers = FieldTable::default();
    for (name, value) in BINDING.encode(envelope, source) {
        let len = name.len();
        let key = ShortString::try_new(name).map_err(|_| {
            Error::broker_permanent(format!(
                "header name of {len} bytes is longer than the 255 bytes amqp allows"
            ))
        })?;
        headers.insert(key, text(&value));
    }

    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(CONTENT_TYPE.into())
        .with_timestamp(u64::try_from(envelope.created_at.timestamp()).unwrap_or(0))
        .with_headers(headers);
    if let Ok(message_id) = ShortString::try_new(envelope.idempotency_key.as_str()) {
        properties = properties.with_message_id(message_id);
    }
    Ok((routing_key, properties))
}

/// The AMQP form of txmsg messages, CloudEvents in binary content mode, for
/// programs that publish or consume with [lapin] directly beside txmsg.
///
/// [`encode`](Self::encode) gives the routing key and properties that a
/// [`RabbitBroker`](crate::RabbitBroker) with the same [`RabbitConfig`]
/// publishes an envelope with (the body is the envelope's payload, as is),
/// so a message published with them reaches txmsg consumers as if the relay
/// had sent it. [`decode`](Self::decode) reads a delivery as txmsg consumers
/// do: txmsg's messages, and those of any producer writing CloudEvents in
/// binary content mode over AMQP. The mapping is the table in the
/// [crate docs](crate).
///
/// The lapin types are those of the lapin version this crate depends on.
///
/// # Examples
///
/// ```
/// use chrono::Utc;
/// use txmsg_core::Envelope;
/// use txmsg_rabbitmq::{RabbitCodec, RabbitConfig};
/// use uuid::Uuid;
///
/// let codec = RabbitCodec::new(&RabbitConfig::default().with_source("/billing")?);
/// let mut envelope = Envelope::new(
///     Uuid::now_v7(),
///     "orders.placed",
///     "order-7",
///     br#"{"id":7}"#.to_vec(),
///     Utc::now(),
/// );
/// envelope.key = Some("customer-3".to_owned());
///
/// // What a relay would publish, to publish with lapin's `basic_publish`
/// // (body: `envelope.payload`).
/// let (routing_key, properties) = codec.encode(&envelope)?;
/// assert_eq!(routing_key.as_str(), "orders.placed");
///
/// // What a consumer reads from a lapin delivery.
/// let read = RabbitCodec::decode(routing_key.as_str(), &properties, envelope.payload.clone())
///     .map_err(|undecodable| undecodable.reason)?;
/// assert_eq!(read.id, envelope.id);
/// assert_eq!(read.idempotency_key, "order-7");
/// assert_eq!(read.key.as_deref(), Some("customer-3"));
/// assert_eq!(read.headers["cloudEvents_source"], "/billing");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct RabbitCodec {
    source: String,
}

impl RabbitCodec {
    /// The codec of a broker configured with `config`: its CloudEvents
    /// [`source`](RabbitConfig::source) goes into every message encoded.
    pub fn new(config: &RabbitConfig) -> Self {
        RabbitCodec {
            source: config.source().to_owned(),
        }
    }

    /// The routing key and properties `envelope` is published with.
    ///
    /// The routing key is the topic. The properties are persistent,
    /// `application/json`, with the idempotency key as `message_id` (when
    /// it fits an AMQP short string; the `cloudEvents_id` header always
    /// carries it), the creation time in seconds as `timestamp`, and as
    /// headers the CloudEvents attributes, [`TXMSG_ID_HEADER`] and every
    /// other envelope header as is; the attributes win over an envelope
    /// header of the same name.
    ///
    /// # Errors
    ///
    /// A permanent [`Error::Broker`] if the topic or a header name is longer
    /// than the 255 bytes AMQP allows: such a message can never be published.
    pub fn encode(&self, envelope: &Envelope) -> Result<(ShortString, BasicProperties)> {
        encode(envelope, &self.source)
    }

    /// Reads a delivery (its routing key, properties and body) as an
    /// envelope: the inverse of [`encode`](Self::encode).
    ///
    /// The idempotency key is the CloudEvents `id` (header `cloudEvents_id`
    /// or `cloudEvents:id`, else the `message_id` property); the topic is
    /// `type`, else the routing key; the ordering key is `partitionkey`; the
    /// `traceparent` header is the `traceparent` attribute; the creation
    /// time is `time`, else the `timestamp` property, else now; the message
    /// id is [`TXMSG_ID_HEADER`] when it is a UUID, else a fresh UUIDv7.
    /// Other headers are kept under the names they arrived with (strings,
    /// booleans, integers and timestamps, as text), and the body is the
    /// payload, byte for byte.
    ///
    /// # Errors
    ///
    /// [`Undecodable`], with the reason, the topic, the headers that could be
    /// read and the body, if the content type is neither absent nor
    /// `application/json` (structured content mode included) or the delivery
    /// has no CloudEvents `id` and no `message_id`.
    pub fn decode(
        routing_key: &str,
        properties: &BasicProperties,
        body: Vec<u8>,
    ) -> std::result::Result<Envelope, Undecodable> {
        decode(routing_key, properties, body)
    }
}

/// A string header value.
fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// The CloudEvents attributes a delivery's envelope takes its fields from;
/// they do not appear among its headers.
#[cfg(test)]
const MAPPED_ATTRIBUTES: [&str; 8] = [
    "id",
    "type",
    "time",
    "partitionkey",
    "traceparent",
    "tracestate",
    "specversion",
    "datacontenttype",
];

/// The other spelling of the CloudEvents prefix that the AMQP binding allows.
const CLOUDEVENTS_PREFIX_COLON: &str = "cloudEvents:";

/// How CloudEvents travel in AMQP 0-9-1 headers: the binding's two
/// prefixes (`cloudEvents_` written and preferred, `cloudEvents:` read),
/// names compared exactly, `traceparent` as an attribute, the content type,
/// message id and timestamp as properties.
const BINDING: Binding =
    Binding::new("header", &[CLOUDEVENTS_PREFIX, CLOUDEVENTS_PREFIX_COLON]).traceparent_attribute();

/// Reads a delivery as an envelope: the inverse of [`encode`], and
/// what any producer writing CloudEvents in binary content mode over AMQP
/// sends.
///
/// - The content type must be absent or `application/json` (parameters such
///   as `charset` allowed), or `application/cloudevents+json`: the
///   structured content mode, whose JSON body holds the attributes and the
///   data; anything else is undecodable.
/// - `id` (header `cloudEvents_id` or `cloudEvents:id`, else the
///   `message_id` property) is the idempotency key; without one the
///   delivery is undecodable.
/// - `type` is the topic, the routing key when absent; `partitionkey` the
///   ordering key; `traceparent` the `traceparent` header; `time` (RFC 3339
///   text or an AMQP timestamp) the creation time, else the `timestamp`
///   property, else now.
/// - [`TXMSG_ID_HEADER`] is the message id when it is a UUID; otherwise the
///   envelope gets a fresh UUIDv7.
/// - Every other header is kept under the name it arrived with (the
///   CloudEvents `source`, for one, as `cloudEvents_source`): strings as
///   they are, booleans and integers as their decimal text, AMQP timestamps
///   as RFC 3339. Values of other types and strings that are not UTF-8 are
///   left out.
/// - The body is the payload, byte for byte; whether it is JSON is for the
///   handler to find out.
///
/// A header whose value cannot be read as text counts as absent: an
/// attribute under one prefix then falls back to the other. The ordering
/// key is the exception: a `partitionkey` that is not text, with no
/// readable one under the other prefix, makes the delivery undecodable
/// (taken as keyless, it would be handled out of its key's order). An undecodable delivery keeps every header, the mapped
/// ones included.
pub(crate) fn decode(
    routing_key: &str,
    properties: &BasicProperties,
    body: Vec<u8>,
) -> std::result::Result<Envelope, Undecodable> {
    let mut incoming = Incoming::new(routing_key, body);
    incoming.content_type = properties
        .content_type()
        .as_ref()
        .map(|c| c.as_str().to_owned());
    incoming.message_id = properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned());
    incoming.timestamp = properties.timestamp().and_then(seconds);
    for (name, value) in properties.headers().iter().flat_map(FieldTable::inner) {
        match header_text(value) {
            Some(value) => incoming
                .headers
                .push((name.as_str().to_owned(), value.into_owned())),
            None => incoming.unreadable.push(name.as_str().to_owned()),
        }
    }
    BINDING.decode(incoming)
}

/// A header value as text: strings that are UTF-8 (borrowed), booleans,
/// integers and timestamps; `None` for anything else.
fn header_text(value: &AMQPValue) -> Option<Cow<'_, str>> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(Cow::Borrowed),
        AMQPValue::ShortString(s) => Some(Cow::Borrowed(s.as_str())),
        AMQPValue::Boolean(b) => Some(b.to_string().into()),
        AMQPValue::ShortShortInt(n) => Some(n.to_string().into()),
        AMQPValue::ShortShortUInt(n) => Some(n.to_string().into()),
        AMQPValue::ShortInt(n) => Some(n.to_string().into()),
        AMQPValue::ShortUInt(n) => Some(n.to_string().into()),
        AMQPValue::LongInt(n) => Some(n.to_string().into()),
        AMQPValue::LongUInt(n) => Some(n.to_string().into()),
        AMQPValue::LongLongInt(n) => Some(n.to_string().into()),
        AMQPValue::Timestamp(t) => {
            seconds(*t).map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true).into())
        }
        AMQPValue::Float(_)
        | AMQPValue::Double(_)
        | AMQPValue::DecimalValue(_)
        | AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::ByteArray(_)
        | AMQPValue::Void => None,
    }
}

/// An AMQP timestamp (seconds since the epoch) as a time, if representable.
fn seconds(t: u64) -> Option<DateTime<Utc>> {
    let t = i64::try_from(t).ok()?;
    Utc.timestamp_opt(t, 0).single()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use txmsg_core::{Headers, TRACEPARENT};
    use txmsg_testkit::wire::sample_envelope;
    use uuid::Uuid;

    use super::*;

    fn envelope() -> Envelope {
        sample_envelope()
    }

    fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
        props.headers().as_ref().and_then(|h| h.inner().get(name))
    }

    #[test]
    fn maps_cloudevents_attributes() {
        let env = envelope();
        let (rk, props) = encode(&env, "/shop").unwrap();
        assert_eq!(rk.as_str(), "orders.placed");
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(
            props.content_type().as_ref().map(ShortString::as_str),
            Some(CONTENT_TYPE)
        );
        assert_eq!(
            props.message_id().as_ref().map(ShortString::as_str),
            Some("order-7")
        );
        assert_eq!(props.timestamp(), &Some(env.created_at.timestamp() as u64));
        for (name, value) in [
            ("cloudEvents_id", "order-7"),
            ("cloudEvents_type", "orders.placed"),
            ("cloudEvents_source", "/shop"),
            ("cloudEvents_specversion", "1.0"),
            ("cloudEvents_time", "2024-05-06T07:08:09Z"),
            ("cloudEvents_partitionkey", "7"),
            ("cloudEvents_traceparent", "00-abc-def-01"),
            ("tenant", "acme"),
        ] {
            assert_eq!(header(&props, name), Some(&text(value)), "{name}");
        }
        assert_eq!(
            header(&props, TXMSG_ID_HEADER),
            Some(&text(&env.id.to_string()))
        );
        assert_eq!(header(&props, TRACEPARENT), None);
    }

    #[test]
    fn optional_attributes_are_left_out() {
        let mut env = envelope();
        env.key = None;
        env.headers.clear();
        let (_, props) = encode(&env, "/shop").unwrap();
        assert_eq!(header(&props, "cloudEvents_partitionkey"), None);
        assert_eq!(header(&props, "cloudEvents_traceparent"), None);
    }

    #[test]
    fn attributes_win_over_envelope_headers() {
        let mut env = envelope();
        env.headers.insert("cloudEvents_id".into(), "forged".into());
        let (_, props) = encode(&env, "/shop").unwrap();
        assert_eq!(header(&props, "cloudEvents_id"), Some(&text("order-7")));
    }

    #[test]
    fn long_idempotency_key_still_travels_as_the_id() {
        let mut env = envelope();
        env.idempotency_key = "k".repeat(300);
        let (_, props) = encode(&env, "/shop").unwrap();
        assert_eq!(props.message_id(), &None);
        assert_eq!(
            header(&props, "cloudEvents_id"),
            Some(&text(&"k".repeat(300)))
        );
    }

    #[test]
    fn oversize_names_are_permanent_errors() {
        let mut env = envelope();
        env.headers.insert("h".repeat(256), "v".into());
        let err = encode(&env, "/shop").unwrap_err();
        assert!(
            matches!(
                err,
                Error::Broker {
                    retryable: false,
                    ..
                }
            ),
            "{err:?}"
        );

        let mut env = envelope();
        env.topic = "t".repeat(256);
        let err = encode(&env, "/shop").unwrap_err();
        assert!(!err.is_retryable());
    }
    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (name, value) in entries {
            t.insert(ShortString::try_new(*name).unwrap(), value.clone());
        }
        t
    }

    fn props(entries: &[(&str, AMQPValue)]) -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(table(entries))
    }

    fn bytes(value: &[u8]) -> AMQPValue {
        AMQPValue::LongString(value.to_vec().into())
    }

    #[test]
    fn decode_inverts_encode() {
        let env = envelope();
        let (rk, props) = encode(&env, "/shop").unwrap();
        let got = decode(rk.as_str(), &props, env.payload.clone()).unwrap();
        let mut expected = env.clone();
        expected
            .headers
            .insert("cloudEvents_source".into(), "/shop".into());
        assert_eq!(got, expected);
    }

    #[test]
    fn decode_keeps_sub_second_times() {
        let mut env = envelope();
        env.created_at = Utc::now();
        let (rk, props) = encode(&env, "/shop").unwrap();
        let got = decode(rk.as_str(), &props, Vec::new()).unwrap();
        assert_eq!(got.created_at, env.created_at);
    }

    #[test]
    fn decode_reads_a_foreign_binary_mode_event() {
        let props = props(&[
            ("cloudEvents:id", text("evt-1")),
            ("cloudEvents:type", text("com.example.order.placed")),
            ("cloudEvents:source", text("/shop")),
            ("cloudEvents:specversion", text("1.0")),
            ("cloudEvents:time", text("2024-05-06T07:08:09.123+02:00")),
            ("cloudEvents:partitionkey", text("order-9")),
            ("cloudEvents:traceparent", text("00-abc-def-01")),
            ("cloudEvents:sequence", AMQPValue::LongInt(42)),
            ("cloudEvents:urgent", AMQPValue::Boolean(true)),
            ("x-tenant", AMQPValue::ShortString("acme".into())),
        ]);
        let got = decode("orders.placed", &props, b"{}".to_vec()).unwrap();
        assert_eq!(got.idempotency_key, "evt-1");
        assert_eq!(got.topic, "com.example.order.placed");
        assert_eq!(got.key.as_deref(), Some("order-9"));
        assert_eq!(
            got.created_at,
            DateTime::parse_from_rfc3339("2024-05-06T05:08:09.123Z").unwrap()
        );
        assert_eq!(
            got.id.get_version_num(),
            7,
            "a fresh UUIDv7 without txmsg-id"
        );
        let expected: Headers = [
            ("traceparent", "00-abc-def-01"),
            ("cloudEvents:source", "/shop"),
            ("cloudEvents:sequence", "42"),
            ("cloudEvents:urgent", "true"),
            ("x-tenant", "acme"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(got.headers, expected);
    }

    #[test]
    fn decode_falls_back_to_properties_and_routing_key() {
        let props = BasicProperties::default()
            .with_message_id("mid-1".into())
            .with_timestamp(1_700_000_000);
        let got = decode("orders.placed", &props, Vec::new()).unwrap();
        assert_eq!(got.idempotency_key, "mid-1");
        assert_eq!(got.topic, "orders.placed");
        assert_eq!(got.key, None);
        assert_eq!(got.created_at.timestamp(), 1_700_000_000);
        assert!(got.headers.is_empty());
        assert!(got.payload.is_empty());
    }

    #[test]
    fn decode_reads_an_amqp_timestamp_time() {
        let props = props(&[
            ("cloudEvents_id", text("e")),
            ("cloudEvents_time", AMQPValue::Timestamp(1_700_000_000)),
        ]);
        let got = decode("t", &props, Vec::new()).unwrap();
        assert_eq!(got.created_at.timestamp(), 1_700_000_000);
    }

    #[test]
    fn unparsable_time_is_now() {
        let before = Utc::now();
        for time in [
            text("yesterday"),
            AMQPValue::Timestamp(u64::MAX),
            bytes(b"\xff"),
        ] {
            let props = props(&[("cloudEvents_id", text("e")), ("cloudEvents_time", time)]);
            let got = decode("t", &props, Vec::new()).unwrap();
            assert!(got.created_at >= before && got.created_at <= Utc::now());
        }
    }

    #[test]
    fn txmsg_id_must_be_a_uuid() {
        let id = Uuid::now_v7();
        let props_ok = props(&[
            ("cloudEvents_id", text("e")),
            (TXMSG_ID_HEADER, text(&id.to_string())),
        ]);
        assert_eq!(decode("t", &props_ok, Vec::new()).unwrap().id, id);
        let props_bad = props(&[
            ("cloudEvents_id", text("e")),
            (TXMSG_ID_HEADER, text("nope")),
        ]);
        let got = decode("t", &props_bad, Vec::new()).unwrap();
        assert_ne!(got.id.to_string(), "nope");
        assert!(!got.headers.contains_key(TXMSG_ID_HEADER));
    }

    #[test]
    fn missing_or_empty_id_is_undecodable() {
        for props in [
            props(&[("cloudEvents_type", text("t")), ("x-tenant", text("acme"))]),
            props(&[("cloudEvents_id", text(""))]),
            props(&[("cloudEvents_id", bytes(b"\xff\xfe"))]),
            props(&[("cloudEvents_id", AMQPValue::FieldArray(Default::default()))]),
            BasicProperties::default().with_message_id("".into()),
            BasicProperties::default(),
        ] {
            let bad = decode("orders.placed", &props, b"{}".to_vec()).unwrap_err();
            assert_eq!(
                bad.reason,
                "missing CloudEvents id (header `cloudEvents_id`)"
            );
            assert_eq!(bad.topic, "orders.placed");
            assert_eq!(bad.body, b"{}");
        }
        let bad = decode("t", &props(&[("x-tenant", text("acme"))]), Vec::new()).unwrap_err();
        assert_eq!(
            bad.headers.get("x-tenant").map(String::as_str),
            Some("acme")
        );
    }

    #[test]
    fn content_type_must_be_json() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
        ] {
            let props = props(&[("cloudEvents_id", text("e"))]).with_content_type(ok.into());
            assert!(decode("t", &props, Vec::new()).is_ok(), "{ok}");
        }
        let bare = BasicProperties::default().with_message_id("e".into());
        assert!(decode("t", &bare, Vec::new()).is_ok(), "no content type");
        let structured = br#"{"specversion":"1.0","id":"e","type":"t.s","data":{"a":1}}"#;
        let structured_props =
            BasicProperties::default().with_content_type("application/cloudevents+json".into());
        let env = decode("t", &structured_props, structured.to_vec()).unwrap();
        assert_eq!(
            (env.idempotency_key.as_str(), env.topic.as_str()),
            ("e", "t.s")
        );
        assert_eq!(env.payload, br#"{"a":1}"#);
        for bad in ["text/plain", "application/jsonx", "", "\u{1b}[31m"] {
            let props = props(&[("cloudEvents_id", text("e"))]).with_content_type(bad.into());
            let err = decode("t", &props, b"x".to_vec()).unwrap_err();
            assert!(err.reason.contains("content type"), "{}", err.reason);
            assert!(
                err.reason.contains(&bad.escape_debug().to_string()),
                "{}",
                err.reason
            );
            assert!(!err.reason.contains('\u{1b}'));
            assert_eq!(err.body, b"x");
            assert_eq!(
                err.headers.get("cloudEvents_id").map(String::as_str),
                Some("e")
            );
        }
    }

    #[test]
    fn an_ordering_key_that_is_not_text_is_undecodable() {
        for name in ["cloudEvents_partitionkey", "cloudEvents:partitionkey"] {
            let props = props(&[("cloudEvents_id", text("e")), (name, bytes(&[0xff, 0xfe]))]);
            let bad = decode("t", &props, b"{}".to_vec()).unwrap_err();
            assert!(
                bad.reason.contains("ordering key") && bad.reason.contains(name),
                "{}",
                bad.reason
            );
            assert_eq!(bad.body, b"{}");
        }
    }

    #[test]
    fn unreadable_header_values_are_left_out() {
        let mut nested = FieldTable::default();
        nested.insert("a".into(), AMQPValue::LongInt(1));
        let mut long_invalid = vec![b'a'; 70_000];
        long_invalid[65_000] = 0xff;
        let props = props(&[
            ("cloudEvents_id", text("e")),
            ("bad-utf8", bytes(&long_invalid)),
            ("table", AMQPValue::FieldTable(nested)),
            (
                "array",
                AMQPValue::FieldArray(vec![AMQPValue::Boolean(true)].into()),
            ),
            ("bytes", AMQPValue::ByteArray(vec![1, 2, 3].into())),
            ("float", AMQPValue::Float(1.5)),
            ("double", AMQPValue::Double(2.5)),
            ("void", AMQPValue::Void),
            ("int", AMQPValue::LongLongInt(-7)),
            ("ok", text("yes")),
        ]);
        let got = decode("t", &props, Vec::new()).unwrap();
        let names: Vec<&str> = got.headers.keys().map(String::as_str).collect();
        assert_eq!(names, ["int", "ok"]);
        assert_eq!(got.headers["int"], "-7");
    }

    #[test]
    fn huge_headers_decode() {
        let huge = "v".repeat(4 * 1024 * 1024);
        let mut entries = vec![("cloudEvents_id", text(&huge))];
        let names: Vec<String> = (0..1000).map(|i| format!("h{i}")).collect();
        for name in &names {
            entries.push((name.as_str(), text("x")));
        }
        let long_name = "n".repeat(255);
        entries.push((long_name.as_str(), text(&huge)));
        let got = decode("t", &props(&entries), Vec::new()).unwrap();
        assert_eq!(got.idempotency_key.len(), huge.len());
        assert_eq!(got.headers.len(), 1001);
        assert_eq!(got.headers[&long_name].len(), huge.len());
    }

    #[test]
    fn attribute_with_underscore_wins_over_colon() {
        let props = props(&[
            ("cloudEvents_id", text("underscore")),
            ("cloudEvents:id", text("colon")),
        ]);
        let got = decode("t", &props, Vec::new()).unwrap();
        assert_eq!(got.idempotency_key, "underscore");
        assert!(got.headers.is_empty());
    }

    #[test]
    fn every_attribute_prefers_underscore_and_drops_both() {
        // The colon spellings come first in the table, which is sorted.
        let props = props(&[
            ("cloudEvents:id", text("colon")),
            ("cloudEvents:type", text("colon.type")),
            ("cloudEvents:time", text("2020-01-01T00:00:00Z")),
            ("cloudEvents:partitionkey", text("colon-key")),
            ("cloudEvents:traceparent", text("00-colon-01")),
            ("cloudEvents:specversion", text("1.0")),
            ("cloudEvents:datacontenttype", text("application/json")),
            ("cloudEvents_id", text("underscore")),
            ("cloudEvents_type", text("underscore.type")),
            ("cloudEvents_time", text("2024-05-06T07:08:09Z")),
            ("cloudEvents_partitionkey", text("underscore-key")),
            ("cloudEvents_traceparent", text("00-underscore-01")),
            ("cloudEvents_specversion", text("1.0")),
            ("cloudEvents_datacontenttype", text("application/json")),
        ]);
        let got = decode("t", &props, Vec::new()).unwrap();
        assert_eq!(got.idempotency_key, "underscore");
        assert_eq!(got.topic, "underscore.type");
        assert_eq!(got.created_at.to_rfc3339(), "2024-05-06T07:08:09+00:00");
        assert_eq!(got.key.as_deref(), Some("underscore-key"));
        let names: Vec<&str> = got.headers.keys().map(String::as_str).collect();
        assert_eq!(names, [TRACEPARENT]);
        assert_eq!(got.headers[TRACEPARENT], "00-underscore-01");
    }

    #[test]
    fn empty_underscore_attribute_does_not_fall_back_to_colon() {
        let props = props(&[
            ("cloudEvents_id", text("e")),
            ("cloudEvents_type", text("")),
            ("cloudEvents:type", text("colon.type")),
        ]);
        assert_eq!(decode("rk", &props, Vec::new()).unwrap().topic, "rk");

        let empty_id = self::props(&[
            ("cloudEvents_id", text("")),
            ("cloudEvents:id", text("colon")),
        ])
        .with_message_id("mid".into());
        let bad = decode("rk", &empty_id, Vec::new()).unwrap_err();
        assert_eq!(
            bad.reason,
            "missing CloudEvents id (header `cloudEvents_id`)"
        );
    }

    #[test]
    fn unreadable_underscore_attribute_falls_back_to_colon() {
        let props = props(&[
            ("cloudEvents_id", AMQPValue::FieldArray(Default::default())),
            ("cloudEvents:id", text("colon")),
            ("cloudEvents_time", AMQPValue::Timestamp(u64::MAX)),
            ("cloudEvents:time", text("2024-05-06T07:08:09Z")),
            ("cloudEvents_partitionkey", bytes(b"\xff")),
            ("cloudEvents:partitionkey", text("colon-key")),
        ]);
        let got = decode("t", &props, Vec::new()).unwrap();
        assert_eq!(got.idempotency_key, "colon");
        assert_eq!(got.created_at.timestamp(), 1_714_979_289);
        assert_eq!(got.key.as_deref(), Some("colon-key"));
        assert!(got.headers.is_empty());
    }

    #[test]
    fn non_string_values_are_read_as_text() {
        let id = Uuid::now_v7();
        let props = props(&[
            ("cloudEvents_id", AMQPValue::LongLongInt(-42)),
            ("cloudEvents_type", AMQPValue::ShortString("orders".into())),
            ("cloudEvents_partitionkey", AMQPValue::LongUInt(7)),
            ("cloudEvents_traceparent", AMQPValue::Boolean(false)),
            (
                TXMSG_ID_HEADER,
                AMQPValue::ShortString(id.to_string().into()),
            ),
            ("cloudEvents_source", AMQPValue::ShortShortUInt(3)),
            ("at", AMQPValue::Timestamp(1_700_000_000)),
        ]);
        let got = decode("t", &props, Vec::new()).unwrap();
        assert_eq!(got.idempotency_key, "-42");
        assert_eq!(got.topic, "orders");
        assert_eq!(got.key.as_deref(), Some("7"));
        assert_eq!(got.id, id);
        let expected: Headers = [
            ("at", "2023-11-14T22:13:20Z"),
            ("cloudEvents_source", "3"),
            (TRACEPARENT, "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(got.headers, expected);
    }

    #[test]
    fn traceparent_attribute_replaces_a_plain_traceparent_header() {
        let plain = props(&[
            ("cloudEvents_id", text("e")),
            (TRACEPARENT, text("00-plain-01")),
        ]);
        let got = decode("t", &plain, Vec::new()).unwrap();
        assert_eq!(got.headers[TRACEPARENT], "00-plain-01");

        let both = props(&[
            ("cloudEvents_id", text("e")),
            ("cloudEvents:traceparent", text("00-attribute-01")),
            (TRACEPARENT, text("00-plain-01")),
        ]);
        let got = decode("t", &both, Vec::new()).unwrap();
        assert_eq!(got.headers.len(), 1);
        assert_eq!(got.headers[TRACEPARENT], "00-attribute-01");
    }

    #[test]
    fn undecodable_keeps_every_readable_header() {
        let entries = [
            ("cloudEvents_type", text("t")),
            ("cloudEvents:specversion", text("1.0")),
            ("cloudEvents_time", AMQPValue::LongInt(5)),
            (TXMSG_ID_HEADER, text("nope")),
            ("x-tenant", text("acme")),
            ("table", AMQPValue::FieldTable(FieldTable::default())),
        ];
        let expected: Headers = [
            ("cloudEvents_type", "t"),
            ("cloudEvents:specversion", "1.0"),
            ("cloudEvents_time", "5"),
            (TXMSG_ID_HEADER, "nope"),
            ("x-tenant", "acme"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let missing_id = decode("t", &props(&entries), Vec::new()).unwrap_err();
        assert_eq!(missing_id.headers, expected);
        let with_id = [&entries[..], &[("cloudEvents_id", text("e"))]].concat();
        let foreign = props(&with_id).with_content_type("text/plain".into());
        let bad_type = decode("t", &foreign, Vec::new()).unwrap_err();
        let mut expected = expected;
        expected.insert("cloudEvents_id".into(), "e".into());
        assert_eq!(bad_type.headers, expected);
    }

    #[test]
    fn mapped_attributes_are_the_ones_taken() {
        for prefix in [CLOUDEVENTS_PREFIX, CLOUDEVENTS_PREFIX_COLON] {
            for attribute in MAPPED_ATTRIBUTES.iter().chain(&["source", "sequence", ""]) {
                let name = format!("{prefix}{attribute}");
                let props = props(&[("cloudEvents_id", text("e")), (&name, text("v"))]);
                let got = decode("t", &props, Vec::new()).unwrap();
                let kept = got.headers.contains_key(&name);
                assert_eq!(kept, !MAPPED_ATTRIBUTES.contains(attribute), "{name}");
            }
        }
    }
}

/// Properties over arbitrary deliveries: decoding never panics, and answers
/// with an envelope or a reason; what [`encode`] writes decodes back to
/// the same envelope.
#[cfg(test)]
mod props {
    use chrono::Utc;
    use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
    use proptest::prelude::*;
    use txmsg_core::TRACEPARENT;
    use txmsg_testkit::wire::{bodies, proptest_config, times};
    use uuid::Uuid;

    use super::*;

    /// Any text that fits an AMQP short string (255 bytes).
    fn short() -> impl Strategy<Value = String> {
        "(?s).{0,60}".prop_filter("fits a short string", |s| s.len() <= 255)
    }

    /// Text a producer could put in a CloudEvents attribute: anything, plus
    /// the values the decoder looks for.
    fn text_value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "(?s).{0,40}",
            1 => Just(String::new()),
            1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
            1 => times().prop_map(|t| t.to_rfc3339()),
            1 => Just("2024-13-45T99:99:99Z".to_owned()),
            1 => Just("x".repeat(70_000)),
        ]
    }

    /// An AMQP header value of any type, strings that are not UTF-8 included.
    fn amqp_value() -> impl Strategy<Value = AMQPValue> {
        prop_oneof![
            4 => text_value().prop_map(|s| AMQPValue::LongString(s.into())),
            2 => proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
            1 => short().prop_map(|s| AMQPValue::ShortString(ShortString::from(s))),
            1 => any::<bool>().prop_map(AMQPValue::Boolean),
            1 => any::<i8>().prop_map(AMQPValue::ShortShortInt),
            1 => any::<u8>().prop_map(AMQPValue::ShortShortUInt),
            1 => any::<i16>().prop_map(AMQPValue::ShortInt),
            1 => any::<u16>().prop_map(AMQPValue::ShortUInt),
            1 => any::<i32>().prop_map(AMQPValue::LongInt),
            1 => any::<u32>().prop_map(AMQPValue::LongUInt),
            1 => any::<i64>().prop_map(AMQPValue::LongLongInt),
            2 => any::<u64>().prop_map(AMQPValue::Timestamp),
            1 => any::<f32>().prop_map(AMQPValue::Float),
            1 => any::<f64>().prop_map(AMQPValue::Double),
            1 => Just(AMQPValue::Void),
            1 => proptest::collection::vec(any::<u8>(), 0..16)
                .prop_map(|b| AMQPValue::ByteArray(b.into())),
            1 => Just(AMQPValue::FieldArray(FieldArray::default())),
            1 => Just(AMQPValue::FieldTable(FieldTable::default())),
        ]
    }

    /// A header name: one the decoder maps, under either prefix, or any other.
    fn header_name() -> impl Strategy<Value = String> {
        let mapped = proptest::sample::select(
            MAPPED_ATTRIBUTES
                .iter()
                .chain(["source", "sequence"].iter())
                .flat_map(|a| {
                    [
                        format!("{CLOUDEVENTS_PREFIX}{a}"),
                        format!("{CLOUDEVENTS_PREFIX_COLON}{a}"),
                    ]
                })
                .chain([TXMSG_ID_HEADER.to_owned(), TRACEPARENT.to_owned()])
                .collect::<Vec<_>>(),
        );
        prop_oneof![1 => mapped, 1 => short()]
    }

    fn content_type() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            Just("application/json".to_owned()),
            Just("application/json; charset=utf-8".to_owned()),
            Just("APPLICATION/JSON".to_owned()),
            Just("application/cloudevents+json".to_owned()),
            Just("text/plain".to_owned()),
            Just(String::new()),
            short(),
        ])
    }

    prop_compose! {
        fn delivery()(
            routing_key in "(?s).{0,40}",
            content_type in content_type(),
            message_id in proptest::option::of(short()),
            timestamp in proptest::option::of(any::<u64>()),
            headers in proptest::option::of(
                proptest::collection::vec((header_name(), amqp_value()), 0..12)
            ),
            body in bodies(),
        ) -> (String, BasicProperties, Vec<u8>) {
            let mut props = BasicProperties::default();
            if let Some(c) = content_type {
                props = props.with_content_type(ShortString::from(c));
            }
            if let Some(m) = message_id {
                props = props.with_message_id(ShortString::from(m));
            }
            if let Some(t) = timestamp {
                props = props.with_timestamp(t);
            }
            if let Some(entries) = headers {
                let mut table = FieldTable::default();
                for (name, value) in entries {
                    table.insert(ShortString::from(name), value);
                }
                props = props.with_headers(table);
            }
            (routing_key, props, body)
        }
    }

    prop_compose! {
        /// An envelope every field of which can travel over AMQP: names of
        /// at most 255 bytes, none in the CloudEvents namespace.
        fn envelope()(
            id in any::<u128>(),
            topic in short(),
            idempotency_key in "(?s).{1,300}",
            key in proptest::option::of("(?s).{0,40}"),
            traceparent in proptest::option::of("(?s).{0,60}"),
            headers in proptest::collection::btree_map(
                short().prop_filter("not an attribute", |n| {
                    !n.starts_with("cloudEvents") && n != TXMSG_ID_HEADER && n != TRACEPARENT
                }),
                "(?s).{0,40}",
                0..8,
            ),
            payload in bodies(),
            created_at in times(),
        ) -> Envelope {
            let mut env =
                Envelope::new(Uuid::from_u128(id), topic, idempotency_key, payload, created_at);
            env.key = key;
            env.headers = headers;
            if let Some(tp) = traceparent {
                env.headers.insert(TRACEPARENT.to_owned(), tp);
            }
            env
        }
    }

    proptest! {
        #![proptest_config(proptest_config())]

        #[test]
        fn decode_never_panics_and_explains_refusals(
            (routing_key, props, body) in delivery()
        ) {
            let structured = props.content_type().as_ref().is_some_and(|c| {
                c.as_str().split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(
                    txmsg_core::cloudevents::STRUCTURED_CONTENT_TYPE,
                )
            });
            let refused_type = !structured && props
                .content_type()
                .as_ref()
                .is_some_and(|c| !txmsg_core::cloudevents::is_json(c.as_str()));
            match decode(&routing_key, &props, body.clone()) {
                Ok(env) => {
                    prop_assert!(!refused_type, "a foreign content type must be refused");
                    prop_assert!(!env.idempotency_key.is_empty());
                    if !structured {
                        prop_assert_eq!(&env.payload, &body, "the body is the payload, byte for byte");
                    }
                    prop_assert!(!env.headers.contains_key(TXMSG_ID_HEADER));
                    for name in MAPPED_ATTRIBUTES {
                        let underscore = format!("{CLOUDEVENTS_PREFIX}{name}");
                        let colon = format!("{CLOUDEVENTS_PREFIX_COLON}{name}");
                        prop_assert!(!env.headers.contains_key(&underscore));
                        prop_assert!(!env.headers.contains_key(&colon));
                    }
                }
                Err(bad) => {
                    prop_assert!(!bad.reason.trim().is_empty(), "a refusal says why");
                    prop_assert!(
                        !bad.reason.chars().any(char::is_control),
                        "a reason that reaches logs holds no control characters: {:?}",
                        bad.reason
                    );
                    prop_assert_eq!(&bad.body, &body, "the body is kept for the dead letter");
                    prop_assert_eq!(&bad.topic, &routing_key);
                    if refused_type {
                        prop_assert!(bad.reason.contains("content type"), "{}", bad.reason);
                    }
                }
            }
        }

        #[test]
        fn encode_never_panics_and_refuses_only_oversize_names(
            topic in "(?s).{0,100}",
            names in proptest::collection::vec("(?s).{0,100}", 0..4),
            key in proptest::option::of("(?s).{0,40}"),
        ) {
            let mut env = Envelope::new(Uuid::now_v7(), topic, "k", Vec::new(), Utc::now());
            env.key = key;
            for name in names {
                env.headers.insert(name, "v".to_owned());
            }
            let too_long = env.topic.len() > 255
                || env.headers.keys().any(|n| n != TRACEPARENT && n.len() > 255);
            match encode(&env, "/src") {
                Ok((routing_key, _)) => {
                    prop_assert!(!too_long);
                    prop_assert_eq!(routing_key.as_str(), env.topic.as_str());
                }
                Err(e) => {
                    prop_assert!(too_long, "refused a message that fits: {}", e);
                    prop_assert!(!e.is_retryable());
                    prop_assert!(!e.to_string().trim().is_empty());
                }
            }
        }

        #[test]
        fn decode_inverts_encode(env in envelope(), source in "(?s).{0,40}") {
            let (routing_key, props) = encode(&env, &source)
                .expect("every field fits");
            let got = decode(routing_key.as_str(), &props, env.payload.clone())
                .expect("what encode writes decodes");
            let mut expected = env.clone();
            expected
                .headers
                .insert(format!("{CLOUDEVENTS_PREFIX}source"), source);
            prop_assert_eq!(got, expected);
        }
    }
}
