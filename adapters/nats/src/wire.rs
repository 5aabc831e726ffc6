//! The wire format: CloudEvents in binary content mode over NATS headers.

use std::str::FromStr;

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
pub const TXMSG_ID_HEADER: &str = "txmsg-id";

/// The JetStream header that the stream deduplicates on; it carries the
/// idempotency key.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The header carrying the payload's media type.
const CONTENT_TYPE_HEADER: &str = "content-type";

/// The CloudEvents specification version published.
const SPEC_VERSION: &str = "1.0";

/// Content type of every payload (the CloudEvents `datacontenttype`).
const CONTENT_TYPE: &str = "application/json";

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
    /// is (`traceparent` included), then `Nats-Msg-Id` and `ce-id` = the
    /// idempotency key, `ce-type` = the topic, `ce-source`,
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
        put(MSG_ID_HEADER, &envelope.idempotency_key)?;
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

/// Whether `content_type` is `application/json`, parameters aside.
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(CONTENT_TYPE))
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
        assert_eq!(headers.get(MSG_ID_HEADER).unwrap().as_str(), "order-7");
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
