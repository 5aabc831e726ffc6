//! The wire format: CloudEvents in binary content mode over NATS headers.

use std::str::FromStr;
use txmsg_core::cloudevents::{Binding, Incoming};

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use txmsg_core::consumer::Undecodable;
use txmsg_core::{Envelope, Error, Result};

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
pub(crate) const CONTENT_TYPE_HEADER: &str = "content-type";

/// How CloudEvents travel in NATS headers: `ce-` attributes, names compared
/// without regard to case (NATS headers are HTTP-like), the content type as
/// a header, and `Nats-Msg-Id` kept for JetStream.
pub(crate) const BINDING: Binding = Binding::new("header", &[CLOUDEVENTS_PREFIX])
    .case_insensitive()
    .content_type_header(CONTENT_TYPE_HEADER)
    .transport_headers(&[MSG_ID_HEADER]);

/// The headers `envelope` is published with: the pairs of
/// [`Binding::encode`] (the CloudEvents attributes, `content-type`,
/// `txmsg-id` and every other envelope header, `traceparent` included)
/// and `Nats-Msg-Id` = [`msg_id`].
///
/// # Errors
///
/// A permanent [`Error::Broker`] if a header name or value cannot travel
/// in a NATS header (non-ASCII or `:` in a name, a line break in a value).
pub(crate) fn encode(envelope: &Envelope, source: &str) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in BINDING.encode(envelope, source) {
        let Ok(name) = HeaderName::from_str(&name) else {
            return Err(Error::broker_permanent(format!(
                "header name `{}` cannot travel in a nats header",
                name.escape_debug()
            )));
        };
        headers.insert(name, value_of(&value)?);
    }
    headers.insert(MSG_ID_HEADER, value_of(&msg_id(envelope))?);
    Ok(headers)
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

/// Reads a message that arrived on `topic` (the subject less the prefix) as
/// an envelope, by the rules of [`Binding::decode`]: the inverse of
/// [`encode`], and what any producer writing CloudEvents in binary
/// content mode over NATS headers sends. Of a repeated header the first
/// value counts.
pub(crate) fn decode(
    topic: &str,
    nats_headers: Option<&HeaderMap>,
    body: Vec<u8>,
) -> std::result::Result<Envelope, Undecodable> {
    let mut incoming = Incoming::new(topic, body);
    if let Some(map) = nats_headers {
        for (name, values) in map.iter() {
            if let Some(value) = values.first() {
                let name: &str = name.as_ref();
                incoming
                    .headers
                    .push((name.to_owned(), value.as_str().to_owned()));
            }
        }
    }
    BINDING.decode(incoming)
}

#[cfg(test)]
mod tests {
    use txmsg_testkit::wire::sample_envelope;

    use super::*;

    fn envelope() -> Envelope {
        sample_envelope()
    }

    #[test]
    fn round_trip() {
        let env = envelope();
        let headers = encode(&env, "/shop").unwrap();
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
        // The envelope's own headers (`traceparent`, `tenant`) and the
        // source come back; `ce-id` and `txmsg-id` do not.
        let mut expected = env.clone();
        expected.headers.insert("ce-source".into(), "/shop".into());
        assert_eq!(got, expected);
    }

    #[test]
    fn refuses_bad_headers() {
        let mut env = envelope();
        env.headers.insert("bad:name".into(), "x".into());
        assert!(!encode(&env, "/s").unwrap_err().is_retryable());
        let mut env = envelope();
        env.headers.insert("x".into(), "a\r\nb".into());
        assert!(!encode(&env, "/s").unwrap_err().is_retryable());
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
/// with an envelope or a reason; what [`encode`] writes decodes back to
/// the same envelope.
#[cfg(test)]
mod props {
    use chrono::Utc;
    use proptest::prelude::*;
    use txmsg_core::TRACEPARENT;
    use txmsg_testkit::wire::{envelopes, proptest_config};
    use uuid::Uuid;

    use super::*;

    /// An envelope every field of which can travel in NATS headers, with
    /// header names that none of the mapped ones matches in any case.
    fn envelope() -> impl Strategy<Value = Envelope> {
        let names = "[!-9;-~]{0,30}".prop_filter("not a mapped header", |n: &String| {
            let lower = n.to_ascii_lowercase();
            !lower.starts_with("ce-")
                && ![CONTENT_TYPE_HEADER, MSG_ID_HEADER, TXMSG_ID_HEADER]
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(n))
                && (lower != TRACEPARENT || n == TRACEPARENT)
        });
        envelopes("[^\r\n]", names)
    }

    proptest! {
        #![proptest_config(proptest_config())]

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
            match encode(&env, &source) {
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
            let headers = encode(&env, &source)
                .expect("every field fits");
            let got = decode(&env.topic, Some(&headers), env.payload.clone())
                .expect("what encode writes decodes");
            let mut expected = env.clone();
            expected.headers.insert("ce-source".to_owned(), source);
            prop_assert_eq!(got, expected);
        }
    }
}
