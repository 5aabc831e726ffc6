//! The wire format: CloudEvents in binary content mode over NATS headers.

use std::str::FromStr;
use txmsg_core::cloudevents::{CONTENT_TYPE, SPEC_VERSION, is_json};

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, SecondsFormat, Utc};
use txmsg_core::consumer::Undecodable;
use txmsg_core::{Envelope, Error, Headers, Result, TRACEPARENT};
use uuid::Uuid;

/// Prefix of the headers that carry the CloudEvents attributes: `ce-id`,
/// `ce-type`, ... (as in the CloudEvents HTTP binding; the NATS binding
/// names no header prefix of its own).
pub const CLOUDEVENTS_PREFIX: &str = "ce-";

/// Header carrying the txmsg message id (the outbox row's UUIDv7), next to
/// the CloudEvents `id`, which is the idempotency key.
pub const TXMSG_ID_HEADER: &str = txmsg_core::cloudevents::TXMSG_ID;

/// The JetStream header that the stream deduplicates on; it carries the
/// idempotency key.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The header carrying the payload's media type.
const CONTENT_TYPE_HEADER: &str = "content-type";

/// Headers the envelope takes its fields from; they do not appear among its
/// headers after decoding.
const MAPPED_HEADERS: [&str; 9] = [
    "ce-id",
    "ce-type",
    "ce-time",
    "ce-partitionkey",
    "ce-specversion",
    "ce-datacontenttype",
    CONTENT_TYPE_HEADER,
    TXMSG_ID_HEADER,
    MSG_ID_HEADER,
];

/// Header values shared by every message of one broker.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    source: String,
}

impl Wire {
    /// The shared values for a broker whose CloudEvents `source` is `source`.
    pub(crate) fn new(source: &str) -> Self {
        Wire {
            source: source.to_owned(),
        }
    }

    /// The headers `envelope` is published with: every envelope header as
    /// is (`traceparent` included), then `Nats-Msg-Id` = [`msg_id`],
    /// `ce-id` = the idempotency key, `ce-type` = the topic, `ce-source`,
    /// `ce-specversion`, `ce-time`, `ce-partitionkey` (when there is an
    /// ordering key), `content-type: application/json` and `txmsg-id`. The
    /// attributes win over an envelope header of the same name.
    ///
    /// # Errors
    ///
    /// A permanent [`Error::Broker`] if a header name or value cannot travel
    /// in a NATS header (non-ASCII or `:` in a name, a line break in a value).
    pub(crate) fn encode(&self, envelope: &Envelope) -> Result<HeaderMap> {
        let mut headers = HeaderMap::new();
        for (name, value) in &envelope.headers {
            let Ok(name) = HeaderName::from_str(name) else {
                return Err(Error::broker_permanent(format!(
                    "header name `{}` cannot travel in a nats header",
                    name.escape_debug()
                )));
            };
            headers.insert(name, value_of(value)?);
        }
        let time = envelope
            .created_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let mut put = |name: &'static str, value: &str| -> Result<()> {
            headers.insert(name, value_of(value)?);
            Ok(())
        };
        put(MSG_ID_HEADER, &msg_id(envelope))?;
        put("ce-id", &envelope.idempotency_key)?;
        put("ce-type", &envelope.topic)?;
        put("ce-source", &self.source)?;
        put("ce-specversion", SPEC_VERSION)?;
        put("ce-time", &time)?;
        if let Some(key) = &envelope.key {
            put("ce-partitionkey", key)?;
        }
        put(CONTENT_TYPE_HEADER, CONTENT_TYPE)?;
        put(TXMSG_ID_HEADER, &envelope.id.to_string())?;
        Ok(headers)
    }
}

/// The JetStream deduplication id of `envelope`: `<topic>/<idempotency
/// key>`. Idempotency keys are unique per topic and one stream holds every
/// topic, so the key alone would drop one topic's message as a copy of
/// another's. Topics never contain `/`, so the id is unambiguous.
pub(crate) fn msg_id(envelope: &Envelope) -> String {
    format!("{}/{}", envelope.topic, envelope.idempotency_key)
}

/// `value` as a header value, or a permanent error.
fn value_of(value: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value).map_err(|_| {
        Error::broker_permanent(format!(
            "header value `{}` cannot travel in a nats header",
            value.escape_debug()
        ))
    })
}

/// Reads a message as an envelope: the inverse of [`Wire::encode`], and
/// what any producer writing CloudEvents in binary content mode over NATS
/// headers sends. Header names are matched without regard to case.
///
/// - The content type must be absent or `application/json` (parameters such
///   as `charset` allowed); anything else is undecodable.
/// - `ce-id` is the idempotency key; without one (or with an empty one) the
///   message is undecodable.
/// - `ce-type` is the topic, else `topic` (the subject without the prefix);
///   `ce-partitionkey` the ordering key; `ce-time` (RFC 3339) the creation
///   time, else now.
/// - [`TXMSG_ID_HEADER`] is the message id when it is a UUID; otherwise the
///   envelope gets a fresh UUIDv7.
/// - Every other header is kept under the name it arrived with (its first
///   value), `traceparent` and `ce-source` among them.
/// - The body is the payload, byte for byte.
pub(crate) fn decode(
    topic: &str,
    nats_headers: Option<&HeaderMap>,
    body: Vec<u8>,
) -> std::result::Result<Envelope, Undecodable> {
    let mut headers = Headers::new();
    if let Some(map) = nats_headers {
        for (name, values) in map.iter() {
            if let Some(value) = values.first() {
                headers.insert(
                    AsRef::<str>::as_ref(name).to_owned(),
                    value.as_str().to_owned(),
                );
            }
        }
    }
    if let Some(content_type) = find(&headers, CONTENT_TYPE_HEADER).filter(|c| !is_json(c)) {
        return Err(Undecodable {
            reason: format!(
                "unsupported content type `{}`: expected `{CONTENT_TYPE}` in cloudevents binary content mode",
                content_type.escape_debug()
            ),
            topic: topic.to_owned(),
            headers,
            body,
        });
    }
    let Some(idempotency_key) = find(&headers, "ce-id")
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
    else {
        return Err(Undecodable {
            reason: "missing CloudEvents id (header `ce-id`)".to_owned(),
            topic: topic.to_owned(),
            headers,
            body,
        });
    };
    let event_topic = find(&headers, "ce-type")
        .filter(|t| !t.is_empty())
        .unwrap_or(topic)
        .to_owned();
    let key = find(&headers, "ce-partitionkey").map(str::to_owned);
    let created_at = find(&headers, "ce-time")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    let id = find(&headers, TXMSG_ID_HEADER)
        .and_then(|id| Uuid::parse_str(id).ok())
        .unwrap_or_else(Uuid::now_v7);

    headers.retain(|name, _| {
        !MAPPED_HEADERS
            .iter()
            .any(|mapped| mapped.eq_ignore_ascii_case(name))
    });
    if let Some(name) = headers
        .keys()
        .find(|n| n.eq_ignore_ascii_case(TRACEPARENT) && n.as_str() != TRACEPARENT)
        .cloned()
        && let Some(value) = headers.remove(&name)
    {
        headers.insert(TRACEPARENT.to_owned(), value);
    }
    let mut envelope = Envelope::new(id, event_topic, idempotency_key, body, created_at);
    envelope.key = key;
    envelope.headers = headers;
    Ok(envelope)
}

/// The value of header `name` among `headers`, matched without regard to
/// case.
fn find<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .or_else(|| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn envelope() -> Envelope {
        let at = Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap();
        let mut env = Envelope::new(
            Uuid::now_v7(),
            "orders.placed",
            "order-7",
            b"{}".to_vec(),
            at,
        );
        env.key = Some("7".into());
        env.headers
            .insert(TRACEPARENT.into(), "00-abc-def-01".into());
        env.headers.insert("tenant".into(), "acme".into());
        env
    }

    #[test]
    fn round_trip() {
        let env = envelope();
        let headers = Wire::new("/shop").encode(&env).unwrap();
        assert_eq!(
            headers.get(MSG_ID_HEADER).unwrap().as_str(),
            "orders.placed/order-7"
        );
        assert_eq!(headers.get("ce-id").unwrap().as_str(), "order-7");
        assert_eq!(headers.get("ce-source").unwrap().as_str(), "/shop");
        assert_eq!(
            headers.get("traceparent").unwrap().as_str(),
            "00-abc-def-01"
        );
        let got = decode("orders.placed", Some(&headers), env.payload.clone()).unwrap();
        assert_eq!(got.id, env.id);
        assert_eq!(got.topic, env.topic);
        assert_eq!(got.key, env.key);
        assert_eq!(got.idempotency_key, env.idempotency_key);
        assert_eq!(got.created_at, env.created_at);
        assert_eq!(got.headers.get(TRACEPARENT).unwrap(), "00-abc-def-01");
        assert_eq!(got.headers.get("tenant").unwrap(), "acme");
        assert_eq!(got.headers.get("ce-source").unwrap(), "/shop");
        assert!(!got.headers.contains_key("ce-id"));
        assert!(!got.headers.contains_key(TXMSG_ID_HEADER));
    }

    #[test]
    fn refuses_bad_headers() {
        let mut env = envelope();
        env.headers.insert("bad:name".into(), "x".into());
        assert!(!Wire::new("/s").encode(&env).unwrap_err().is_retryable());
        let mut env = envelope();
        env.headers.insert("x".into(), "a\r\nb".into());
        assert!(!Wire::new("/s").encode(&env).unwrap_err().is_retryable());
    }

    #[test]
    fn undecodable() {
        let bad = decode("t", None, b"{}".to_vec()).unwrap_err();
        assert!(bad.reason.contains("ce-id"), "{}", bad.reason);
        let mut h = HeaderMap::new();
        h.insert("ce-id", "1");
        h.insert("Content-Type", "text/plain");
        let bad = decode("t", Some(&h), b"x".to_vec()).unwrap_err();
        assert!(bad.reason.contains("text/plain"), "{}", bad.reason);
        let mut h = HeaderMap::new();
        h.insert("CE-ID", "1");
        h.insert("Content-Type", "application/json; charset=utf-8");
        let got = decode("t", Some(&h), Vec::new()).unwrap();
        assert_eq!(got.idempotency_key, "1");
        assert_eq!(got.topic, "t");
    }
}

/// Properties over arbitrary messages: decoding never panics, and answers
/// with an envelope or a reason; what [`Wire::encode`] writes decodes back to
/// the same envelope.
#[cfg(test)]
mod props {
    use chrono::{DateTime, TimeZone, Utc};
    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Text that a NATS header value can hold (no line breaks).
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[^\r\n]{0,40}",
            1 => Just(String::new()),
            1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
            1 => time().prop_map(|t| t.to_rfc3339()),
            1 => Just("application/json".to_owned()),
            1 => Just("text/plain; charset=utf-8".to_owned()),
            1 => Just("v".repeat(70_000)),
        ]
    }

    /// A header name: one the decoder maps, in any case, or any other.
    fn header_name() -> impl Strategy<Value = HeaderName> {
        let known = proptest::sample::select(
            MAPPED_HEADERS
                .iter()
                .chain(["ce-source", TRACEPARENT].iter())
                .copied()
                .collect::<Vec<_>>(),
        );
        let cased = (known, any::<u64>()).prop_map(|(name, bits)| {
            name.chars()
                .enumerate()
                .map(|(i, c)| {
                    if bits >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect::<String>()
        });
        prop_oneof![1 => cased, 1 => "[!-9;-~]{0,30}"]
            .prop_map(|n| HeaderName::from_str(&n).expect("a valid header name"))
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..256),
            1 => (0usize..15).prop_map(|n| br#"{"order":7,"x":"y"}"#[..n].to_vec()),
            1 => (1usize << 20..(1 << 20) + 8).prop_map(|n| vec![b'{'; n]),
        ]
    }

    fn time() -> impl Strategy<Value = DateTime<Utc>> {
        (0i64..253_402_300_799, 0u32..1_000_000_000)
            .prop_map(|(s, n)| Utc.timestamp_opt(s, n).single().expect("in chrono's range"))
    }

    prop_compose! {
        /// An envelope every field of which can travel in NATS headers, with
        /// header names that none of the mapped ones matches in any case.
        fn envelope()(
            id in any::<u128>(),
            topic in "[^\r\n]{0,40}",
            idempotency_key in "[^\r\n]{1,300}",
            key in proptest::option::of("[^\r\n]{0,40}"),
            headers in proptest::collection::btree_map(
                "[!-9;-~]{0,30}".prop_filter("not a mapped header", |n| {
                    let lower = n.to_ascii_lowercase();
                    !lower.starts_with("ce-")
                        && !MAPPED_HEADERS.iter().any(|m| m.eq_ignore_ascii_case(n))
                        && (lower != TRACEPARENT || n == TRACEPARENT)
                }),
                "[^\r\n]{0,40}",
                0..8,
            ),
            payload in body(),
            created_at in time(),
        ) -> Envelope {
            let mut env =
                Envelope::new(Uuid::from_u128(id), topic, idempotency_key, payload, created_at);
            env.key = key;
            env.headers = headers;
            env
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn decode_never_panics_and_explains_refusals(
            topic in "(?s).{0,40}",
            headers in proptest::option::of(
                proptest::collection::vec((header_name(), value()), 0..12)
            ),
            body in body(),
        ) {
            let map = headers.map(|entries| {
                let mut map = HeaderMap::new();
                for (name, value) in entries {
                    map.append(name, value.as_str());
                }
                map
            });
            match decode(&topic, map.as_ref(), body.clone()) {
                Ok(env) => {
                    prop_assert!(!env.idempotency_key.is_empty());
                    prop_assert_eq!(&env.payload, &body, "the body is the payload, byte for byte");
                    for mapped in MAPPED_HEADERS {
                        prop_assert!(
                            !env.headers.keys().any(|n| n.eq_ignore_ascii_case(mapped)),
                            "{} must not stay among the headers", mapped
                        );
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
                    prop_assert_eq!(&bad.topic, &topic);
                }
            }
        }

        #[test]
        fn encode_never_panics_and_refuses_only_what_headers_cannot_hold(
            topic in "(?s).{0,20}",
            idempotency_key in "(?s).{1,20}",
            key in proptest::option::of("(?s).{0,20}"),
            headers in proptest::collection::btree_map("(?s).{0,12}", "(?s).{0,12}", 0..4),
            source in "(?s).{0,12}",
        ) {
            let mut env = Envelope::new(Uuid::now_v7(), topic, idempotency_key, Vec::new(), Utc::now());
            env.key = key;
            env.headers = headers;
            let bad_value = |v: &str| v.contains(['\r', '\n']);
            let unfit = env.headers.keys().any(|n| HeaderName::from_str(n).is_err())
                || env.headers.values().any(|v| bad_value(v))
                || [&env.topic, &env.idempotency_key, &source]
                    .into_iter()
                    .any(|v| bad_value(v))
                || env.key.as_deref().is_some_and(bad_value);
            match Wire::new(&source).encode(&env) {
                Ok(_) => prop_assert!(!unfit, "a field that cannot travel was accepted"),
                Err(e) => {
                    prop_assert!(unfit, "refused a message that fits: {}", e);
                    prop_assert!(!e.is_retryable());
                    prop_assert!(!e.to_string().trim().is_empty());
                }
            }
        }

        #[test]
        fn decode_inverts_encode(env in envelope(), source in "[^\r\n]{0,40}") {
            let headers = Wire::new(&source)
                .encode(&env)
                .expect("every field fits");
            let got = decode(&env.topic, Some(&headers), env.payload.clone())
                .expect("what encode writes decodes");
            let mut expected = env.clone();
            expected.headers.insert("ce-source".to_owned(), source);
            prop_assert_eq!(got, expected);
        }
    }
}
