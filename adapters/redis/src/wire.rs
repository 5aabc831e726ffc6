//! The wire format: CloudEvents attributes as stream entry fields.

use chrono::{DateTime, SecondsFormat, Utc};
use txmsg_core::cloudevents::{CONTENT_TYPE, SPEC_VERSION, is_json};
use txmsg_core::consumer::Undecodable;
use txmsg_core::{Envelope, Headers, TRACEPARENT};
use uuid::Uuid;

/// Field of the CloudEvents `id`: the idempotency key.
pub const FIELD_ID: &str = "ce-id";
/// Field of the CloudEvents `type`: the topic.
pub const FIELD_TYPE: &str = "ce-type";
/// Field of the CloudEvents `source`.
pub const FIELD_SOURCE: &str = "ce-source";
/// Field of the CloudEvents `specversion` (`1.0`).
pub const FIELD_SPECVERSION: &str = "ce-specversion";
/// Field of the CloudEvents `time`: the creation time, RFC 3339.
pub const FIELD_TIME: &str = "ce-time";
/// Field of the CloudEvents `partitionkey` (partitioning extension): the
/// ordering key.
pub const FIELD_PARTITIONKEY: &str = "ce-partitionkey";
/// Field of the `traceparent` (distributed tracing extension).
pub const FIELD_TRACEPARENT: &str = "traceparent";
/// Field of the content type of the payload (`application/json`).
pub const FIELD_CONTENT_TYPE: &str = "content-type";
/// Field of the txmsg message id (the outbox row's UUIDv7).
pub const FIELD_TXMSG_ID: &str = txmsg_core::cloudevents::TXMSG_ID;
/// Field of the payload bytes.
pub const FIELD_DATA: &str = "data";
/// Prefix of the fields that carry the other envelope headers:
/// header `x-tenant` travels as field `h-x-tenant`.
pub const HEADER_PREFIX: &str = "h-";

/// The fields and values of the entry `envelope` is published as, in order.
pub(crate) fn encode(envelope: &Envelope, source: &str) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = Vec::with_capacity(10 + envelope.headers.len());
    let mut put = |name: &str, value: &[u8]| fields.push((name.to_owned(), value.to_vec()));
    put(FIELD_ID, envelope.idempotency_key.as_bytes());
    put(FIELD_TYPE, envelope.topic.as_bytes());
    put(FIELD_SOURCE, source.as_bytes());
    put(FIELD_SPECVERSION, SPEC_VERSION.as_bytes());
    let time = envelope
        .created_at
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    put(FIELD_TIME, time.as_bytes());
    if let Some(key) = &envelope.key {
        put(FIELD_PARTITIONKEY, key.as_bytes());
    }
    if let Some(traceparent) = envelope.headers.get(TRACEPARENT) {
        put(FIELD_TRACEPARENT, traceparent.as_bytes());
    }
    put(FIELD_CONTENT_TYPE, CONTENT_TYPE.as_bytes());
    put(FIELD_TXMSG_ID, envelope.id.to_string().as_bytes());
    for (name, value) in &envelope.headers {
        if name == TRACEPARENT {
            continue;
        }
        put(&format!("{HEADER_PREFIX}{name}"), value.as_bytes());
    }
    put(FIELD_DATA, &envelope.payload);
    fields
}

/// Reads the fields of a stream entry as an envelope: the inverse of
/// [`encode`], and what any producer writing these fields sends.
///
/// - The content type must be absent or `application/json` (parameters
///   allowed); anything else is undecodable.
/// - `ce-id` is the idempotency key; without one (or empty) the entry is
///   undecodable.
/// - `ce-type` is the topic (`topic` when absent), `ce-partitionkey` the
///   ordering key, `traceparent` the `traceparent` header, `ce-time`
///   (RFC 3339) the creation time, else now.
/// - `txmsg-id` is the message id when it is a UUID, else a fresh UUIDv7.
/// - `h-<name>` fields are the headers `<name>`; every other field (the
///   `ce-source`, for one) is kept as a header under its own name. Values
///   that are not UTF-8 are left out, except an ordering key: an entry whose
///   `ce-partitionkey` is not UTF-8 is undecodable (taken as keyless, it
///   would be handled out of its key's order).
/// - `data` is the payload, byte for byte (empty when absent).
pub(crate) fn decode(
    topic: &str,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
) -> std::result::Result<Envelope, Undecodable> {
    let mut raw = Headers::new();
    let mut body = Vec::new();
    let mut key_is_binary = false;
    for (name, value) in fields {
        let Ok(name) = String::from_utf8(name) else {
            continue;
        };
        if name == FIELD_DATA {
            body = value;
            continue;
        }
        match String::from_utf8(value) {
            Ok(value) => {
                raw.insert(name, value);
            }
            Err(_) if name == FIELD_PARTITIONKEY => key_is_binary = true,
            Err(_) => {}
        }
    }
    let undecodable = |reason: String, headers: Headers, body: Vec<u8>| Undecodable {
        reason,
        topic: topic.to_owned(),
        headers,
        body,
    };
    if key_is_binary {
        // Taken as keyless, it would be handled out of its key's order.
        return Err(undecodable(
            format!("the ordering key (field `{FIELD_PARTITIONKEY}`) is not UTF-8"),
            raw,
            body,
        ));
    }
    if let Some(content_type) = raw.get(FIELD_CONTENT_TYPE).filter(|c| !is_json(c)) {
        let reason = format!(
            "unsupported content type `{}`: expected `{CONTENT_TYPE}`",
            content_type.escape_debug()
        );
        return Err(undecodable(reason, raw, body));
    }
    let Some(idempotency_key) = raw.get(FIELD_ID).filter(|id| !id.is_empty()).cloned() else {
        return Err(undecodable(
            format!("missing CloudEvents id (field `{FIELD_ID}`)"),
            raw,
            body,
        ));
    };
    let message_topic = raw
        .get(FIELD_TYPE)
        .filter(|t| !t.is_empty())
        .cloned()
        .unwrap_or_else(|| topic.to_owned());
    let key = raw.get(FIELD_PARTITIONKEY).cloned();
    let created_at = raw
        .get(FIELD_TIME)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    let id = raw
        .get(FIELD_TXMSG_ID)
        .and_then(|id| Uuid::parse_str(id).ok())
        .unwrap_or_else(Uuid::now_v7);

    let mut headers = Headers::new();
    for (name, value) in raw {
        match name.as_str() {
            FIELD_ID | FIELD_TYPE | FIELD_SPECVERSION | FIELD_TIME | FIELD_PARTITIONKEY
            | FIELD_CONTENT_TYPE | FIELD_TXMSG_ID => {}
            FIELD_TRACEPARENT => {
                headers.insert(TRACEPARENT.to_owned(), value);
            }
            other => match other.strip_prefix(HEADER_PREFIX) {
                Some(header) => {
                    headers.insert(header.to_owned(), value);
                }
                None => {
                    headers.insert(name, value);
                }
            },
        }
    }
    let mut envelope = Envelope::new(id, message_topic, idempotency_key, body, created_at);
    envelope.key = key;
    envelope.headers = headers;
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn bytes(fields: Vec<(String, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .into_iter()
            .map(|(n, v)| (n.into_bytes(), v))
            .collect()
    }

    #[test]
    fn round_trips_every_field() {
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
        let fields = encode(&env, "/shop");
        assert!(fields.iter().any(|(n, v)| n == "h-tenant" && v == b"acme"));
        assert!(
            fields
                .iter()
                .any(|(n, v)| n == "ce-source" && v == b"/shop")
        );
        let got = decode("orders.placed", bytes(fields)).unwrap();
        assert_eq!(got.id, env.id);
        assert_eq!(got.idempotency_key, "order-7");
        assert_eq!(got.key, env.key);
        assert_eq!(got.created_at, at);
        assert_eq!(got.payload, b"{}");
        assert_eq!(got.headers.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(
            got.headers.get(TRACEPARENT).map(String::as_str),
            Some("00-abc-def-01")
        );
    }

    #[test]
    fn an_ordering_key_that_is_not_utf8_is_undecodable() {
        let bad = decode(
            "t",
            vec![
                (b"ce-id".to_vec(), b"1".to_vec()),
                (b"ce-partitionkey".to_vec(), vec![0xff, 0xfe]),
                (b"data".to_vec(), b"{}".to_vec()),
            ],
        )
        .unwrap_err();
        assert!(bad.reason.contains("ordering key"), "{}", bad.reason);
        assert_eq!(bad.body, b"{}");
    }

    #[test]
    fn missing_id_and_foreign_content_type_are_undecodable() {
        let bad = decode("t", vec![(b"data".to_vec(), b"{}".to_vec())]).unwrap_err();
        assert!(bad.reason.contains("ce-id"), "{}", bad.reason);
        assert_eq!(bad.body, b"{}");
        let bad = decode(
            "t",
            vec![
                (b"ce-id".to_vec(), b"1".to_vec()),
                (b"content-type".to_vec(), b"text/plain".to_vec()),
            ],
        )
        .unwrap_err();
        assert!(bad.reason.contains("content type"), "{}", bad.reason);
    }
}

/// Properties over arbitrary stream entries: decoding never panics, and
/// answers with an envelope or a reason; what [`encode`] writes decodes back
/// to the same envelope.
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

    /// Bytes that are not UTF-8 more often than chance would make them.
    fn raw_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..32),
            proptest::collection::vec(any::<u8>(), 0..32).prop_map(|mut b| {
                b.push(0xff);
                b
            }),
        ]
    }

    /// A field name: one the decoder reads, a header field, or any bytes.
    fn field_name() -> impl Strategy<Value = Vec<u8>> {
        let known = proptest::sample::select(vec![
            FIELD_ID,
            FIELD_TYPE,
            FIELD_SOURCE,
            FIELD_SPECVERSION,
            FIELD_TIME,
            FIELD_PARTITIONKEY,
            FIELD_TRACEPARENT,
            FIELD_CONTENT_TYPE,
            FIELD_TXMSG_ID,
            FIELD_DATA,
        ]);
        prop_oneof![
            3 => known.prop_map(|n| n.as_bytes().to_vec()),
            1 => "(?s).{0,20}".prop_map(|n| format!("{HEADER_PREFIX}{n}").into_bytes()),
            2 => raw_bytes(),
        ]
    }

    /// A field value: text the decoder looks for, any text or any bytes.
    fn field_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            2 => "(?s).{0,40}".prop_map(String::into_bytes),
            1 => Just(Vec::new()),
            1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string().into_bytes()),
            1 => time().prop_map(|t| t.to_rfc3339().into_bytes()),
            1 => Just(b"application/json; charset=utf-8".to_vec()),
            1 => Just(b"application/xml".to_vec()),
            2 => raw_bytes(),
            1 => body(),
        ]
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
        /// An envelope with any text in every field: stream entries carry
        /// bytes, so nothing needs to be left out.
        fn envelope()(
            id in any::<u128>(),
            topic in "(?s).{0,40}",
            idempotency_key in "(?s).{1,300}",
            key in proptest::option::of("(?s).{0,40}"),
            headers in proptest::collection::btree_map("(?s).{0,30}", "(?s).{0,40}", 0..8),
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
            fields in proptest::collection::vec((field_name(), field_value()), 0..16),
        ) {
            let body = fields
                .iter()
                .rev()
                .find(|(n, _)| n.as_slice() == FIELD_DATA.as_bytes())
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            // The last content type that is text is the one that counts.
            let refused_type = fields
                .iter()
                .rev()
                .filter(|(n, _)| n.as_slice() == FIELD_CONTENT_TYPE.as_bytes())
                .find_map(|(_, v)| std::str::from_utf8(v).ok())
                .is_some_and(|c| !is_json(c));
            match decode(&topic, fields) {
                Ok(env) => {
                    prop_assert!(!refused_type, "a foreign content type must be refused");
                    prop_assert!(!env.idempotency_key.is_empty());
                    prop_assert_eq!(&env.payload, &body, "the data field is the payload");
                    for mapped in [FIELD_ID, FIELD_TYPE, FIELD_TIME, FIELD_CONTENT_TYPE, FIELD_TXMSG_ID] {
                        prop_assert!(!env.headers.contains_key(mapped));
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
        fn decode_inverts_encode(env in envelope(), source in "(?s).{0,40}") {
            let fields = encode(&env, &source)
                .into_iter()
                .map(|(n, v)| (n.into_bytes(), v))
                .collect();
            let got = decode(&env.topic, fields).expect("what encode writes decodes");
            let mut expected = env.clone();
            expected.headers.insert(FIELD_SOURCE.to_owned(), source);
            prop_assert_eq!(got, expected);
        }
    }
}
