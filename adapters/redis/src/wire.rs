//! The wire format: CloudEvents attributes as stream entry fields.

use txmsg_core::Envelope;
use txmsg_core::cloudevents::{Binding, Incoming};
use txmsg_core::consumer::Undecodable;

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

/// How CloudEvents travel as stream entry fields: `ce-` attributes, names
/// compared exactly, the content type as a field, and the other envelope
/// headers under [`HEADER_PREFIX`] (the payload is a field too).
const BINDING: Binding = Binding::new("field", &["ce-"])
    .content_type_header(FIELD_CONTENT_TYPE)
    .header_prefix(HEADER_PREFIX);

/// The fields and values of the entry `envelope` is published as, in order:
/// the pairs of [`Binding::encode`], then [`FIELD_DATA`].
pub(crate) fn encode(envelope: &Envelope, source: &str) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = BINDING
        .encode(envelope, source)
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect();
    fields.push((FIELD_DATA.to_owned(), envelope.payload.clone()));
    fields
}

/// Reads the fields of a stream entry as an envelope, by the rules of
/// [`Binding::decode`]: the inverse of [`encode`], and what any producer
/// writing these fields sends. [`FIELD_DATA`] is the payload, byte for byte
/// (empty when absent); fields whose names are not UTF-8 are left out, and
/// values that are not UTF-8 count as unreadable (an ordering key among them
/// makes the entry undecodable).
pub(crate) fn decode(
    topic: &str,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
) -> std::result::Result<Envelope, Undecodable> {
    let mut incoming = Incoming::new(topic, Vec::new());
    for (name, value) in fields {
        let Ok(name) = String::from_utf8(name) else {
            continue;
        };
        if name == FIELD_DATA {
            incoming.body = value;
            continue;
        }
        match String::from_utf8(value) {
            Ok(value) => incoming.headers.push((name, value)),
            Err(_) => incoming.unreadable.push(name),
        }
    }
    BINDING.decode(incoming)
}

#[cfg(test)]
mod tests {
    use txmsg_core::TRACEPARENT;
    use txmsg_testkit::wire::sample_envelope;

    use super::*;

    fn bytes(fields: Vec<(String, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .into_iter()
            .map(|(n, v)| (n.into_bytes(), v))
            .collect()
    }

    #[test]
    fn round_trips_every_field() {
        let env = sample_envelope();
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
        assert_eq!(got.created_at, env.created_at);
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

/// Properties over arbitrary envelopes: what [`encode`] writes decodes back
/// to the same envelope (the decoding rules are tested in
/// `txmsg_core::cloudevents`).
#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use txmsg_testkit::wire::{envelopes, proptest_config};

    use super::*;

    /// An envelope with any text in every field: stream entries carry
    /// bytes, so nothing needs to be left out.
    fn envelope() -> impl Strategy<Value = Envelope> {
        envelopes("(?s).", "(?s).{0,30}")
    }

    proptest! {
        #![proptest_config(proptest_config())]

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
