//! The CloudEvents structured content mode, read on every binding: the whole
//! event (attributes and data) is the JSON body, with content type
//! `application/cloudevents+json` (what Dapr and many HTTP-first producers
//! send). txmsg writes binary mode only; consumers read both.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    Binding, DATACONTENTTYPE, ID, Incoming, PARTITIONKEY, SOURCE, SPEC_VERSION, SPECVERSION, TIME,
    TYPE, is_json,
};
use crate::consumer::Undecodable;
use crate::{Envelope, Headers, TRACEPARENT, TRACESTATE};

/// The content type of a structured CloudEvent in JSON.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The content type of a batch of structured CloudEvents, which a message
/// of one envelope cannot carry.
const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// Whether `content_type` (parameters such as `charset` aside) is that of a
/// structured CloudEvent, or of a batch of them.
pub(super) fn structured_kind(content_type: &str) -> Option<bool> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(STRUCTURED_CONTENT_TYPE) {
        Some(false)
    } else if essence.eq_ignore_ascii_case(BATCH_CONTENT_TYPE) {
        Some(true)
    } else {
        None
    }
}

impl Binding {
    /// Reads a structured-mode message: the rules of binary mode, with the
    /// attributes taken from the JSON body instead of headers.
    ///
    /// - The body must be a JSON object with `specversion` `1.0` and a
    ///   non-empty string `id` (the idempotency key).
    /// - `type` is the topic (else the topic it arrived on), `partitionkey`
    ///   the ordering key, `time` (RFC 3339) the creation time (else the
    ///   transport's timestamp, else now), `traceparent` and `tracestate`
    ///   the trace context.
    /// - The payload is `data` as JSON text, or the bytes of `data_base64`;
    ///   a `datacontenttype` other than JSON is undecodable, as in binary
    ///   mode.
    /// - `source` is kept as the binding's `source` header, and every other
    ///   attribute whose value is text under its own name; the transport's
    ///   headers are kept as binary mode keeps them, less any binary-mode
    ///   attribute headers (the event's attributes are the ones read).
    pub(super) fn decode_structured(
        &self,
        incoming: Incoming,
        batch: bool,
    ) -> Result<Envelope, Undecodable> {
        if batch {
            let reason = format!(
                "a batch of CloudEvents (`{BATCH_CONTENT_TYPE}`) cannot be one message: \
                 send one event per message"
            );
            return Err(self.undecodable(reason, incoming));
        }
        let event = match serde_json::from_slice::<Value>(&incoming.body) {
            Ok(Value::Object(event)) => event,
            Ok(_) => {
                let reason = "structured CloudEvent is not a JSON object".to_owned();
                return Err(self.undecodable(reason, incoming));
            }
            Err(e) => {
                let reason = format!("structured CloudEvent is not JSON: {e}");
                return Err(self.undecodable(reason, incoming));
            }
        };
        match self.read_event(event, &incoming) {
            Ok(envelope) => Ok(envelope),
            Err(reason) => Err(self.undecodable(reason, incoming)),
        }
    }

    fn read_event(
        &self,
        mut event: Map<String, Value>,
        incoming: &Incoming,
    ) -> Result<Envelope, String> {
        let text = |event: &Map<String, Value>, name: &str| {
            event.get(name).and_then(Value::as_str).map(str::to_owned)
        };
        match text(&event, SPECVERSION) {
            Some(v) if v == SPEC_VERSION => {}
            other => {
                return Err(format!(
                    "unsupported CloudEvents specversion {}: expected `{SPEC_VERSION}`",
                    other.map_or_else(
                        || "(none)".to_owned(),
                        |v| format!("`{}`", v.escape_debug())
                    )
                ));
            }
        }
        let Some(idempotency_key) = text(&event, ID).filter(|id| !id.is_empty()) else {
            return Err("missing CloudEvents id (structured event `id`)".to_owned());
        };
        if let Some(content_type) = text(&event, DATACONTENTTYPE).filter(|c| !is_json(c)) {
            return Err(format!(
                "unsupported datacontenttype `{}`: expected JSON data",
                content_type.escape_debug()
            ));
        }
        let payload = match (event.remove("data"), event.remove("data_base64")) {
            (Some(_), Some(_)) => {
                return Err("a CloudEvent has `data` or `data_base64`, not both".to_owned());
            }
            (Some(data), None) => data.to_string().into_bytes(),
            (None, Some(Value::String(encoded))) => base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|e| format!("`data_base64` is not base64: {e}"))?,
            (None, Some(_)) => return Err("`data_base64` is not a string".to_owned()),
            (None, None) => b"null".to_vec(),
        };
        let topic = text(&event, TYPE)
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| incoming.topic.clone());
        let created_at = text(&event, TIME)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or(incoming.timestamp)
            .unwrap_or_else(Utc::now);
        let mut headers = Headers::new();
        for (name, value) in &incoming.headers {
            // Attributes in headers beside a structured event are not read:
            // the event's own win, and a copy would only mislead.
            let dropped = self.content_type_header.is_some_and(|c| self.same(name, c))
                || self.transport_headers.iter().any(|t| self.same(name, t))
                || self.attribute_of(name).is_some();
            if !dropped {
                self.keep_header(&mut headers, name, value);
            }
        }
        let mut key = None;
        for (name, value) in event {
            let Value::String(value) = value else {
                continue;
            };
            match name.as_str() {
                ID | TYPE | TIME | SPECVERSION | DATACONTENTTYPE => {}
                PARTITIONKEY => key = Some(value),
                SOURCE => {
                    headers.insert(self.attribute(SOURCE), value);
                }
                TRACEPARENT | TRACESTATE => {
                    headers.insert(name, value);
                }
                _ => {
                    headers.entry(name).or_insert(value);
                }
            }
        }
        let id = headers
            .remove(super::TXMSG_ID)
            .and_then(|id| Uuid::parse_str(&id).ok())
            .unwrap_or_else(Uuid::now_v7);
        let mut envelope = Envelope::new(id, topic, idempotency_key, payload, created_at);
        envelope.key = key;
        envelope.headers = headers;
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::ALL;
    use super::*;

    fn structured(binding: &Binding, body: &str) -> Incoming {
        let mut m = Incoming::new("arrived.on", body.as_bytes().to_vec());
        match binding.content_type_header {
            Some(header) => m.headers.push((
                header.to_owned(),
                "application/cloudevents+json; charset=utf-8".into(),
            )),
            None => m.content_type = Some(STRUCTURED_CONTENT_TYPE.into()),
        }
        m
    }

    #[test]
    fn every_binding_reads_a_structured_event() {
        let body = r#"{
            "specversion": "1.0", "id": "order-7", "source": "/dapr/shop",
            "type": "orders.placed", "time": "2024-05-06T07:08:09Z",
            "partitionkey": "7", "traceparent": "00-abc-def-01", "tracestate": "v=1",
            "datacontenttype": "application/json", "tenant": "acme",
            "data": {"id": 7, "total_cents": 4200}
        }"#;
        for binding in &ALL {
            let got = binding.decode(structured(binding, body)).unwrap();
            assert_eq!(got.idempotency_key, "order-7", "{binding:?}");
            assert_eq!(got.topic, "orders.placed");
            assert_eq!(got.key.as_deref(), Some("7"));
            assert_eq!(got.created_at.to_rfc3339(), "2024-05-06T07:08:09+00:00");
            let data: Value = serde_json::from_slice(&got.payload).unwrap();
            assert_eq!(data, serde_json::json!({"id": 7, "total_cents": 4200}));
            assert_eq!(got.headers.get(TRACEPARENT).unwrap(), "00-abc-def-01");
            assert_eq!(got.headers.get(TRACESTATE).unwrap(), "v=1");
            assert_eq!(got.headers.get("tenant").unwrap(), "acme");
            assert_eq!(
                got.headers.get(&binding.attribute(SOURCE)).unwrap(),
                "/dapr/shop"
            );
            assert_eq!(got.headers.len(), 4, "{:?}", got.headers);
        }
    }

    #[test]
    fn data_base64_is_the_payload_and_the_topic_falls_back() {
        let body = r#"{"specversion":"1.0","id":"x","data_base64":"eyJhIjoxfQ=="}"#;
        for binding in &ALL {
            let got = binding.decode(structured(binding, body)).unwrap();
            assert_eq!(got.payload, br#"{"a":1}"#);
            assert_eq!(got.topic, "arrived.on");
            assert_eq!(got.key, None);
        }
    }

    #[test]
    fn what_cannot_be_read_is_undecodable_with_its_reason() {
        let cases = [
            ("{", "structured CloudEvent is not JSON"),
            ("[1]", "structured CloudEvent is not a JSON object"),
            (
                r#"{"id":"x"}"#,
                "unsupported CloudEvents specversion (none)",
            ),
            (
                r#"{"specversion":"0.3","id":"x"}"#,
                "unsupported CloudEvents specversion `0.3`",
            ),
            (
                r#"{"specversion":"1.0"}"#,
                "missing CloudEvents id (structured event `id`)",
            ),
            (r#"{"specversion":"1.0","id":""}"#, "missing CloudEvents id"),
            (
                r#"{"specversion":"1.0","id":"x","datacontenttype":"text/xml","data":"<a/>"}"#,
                "unsupported datacontenttype `text/xml`",
            ),
            (
                r#"{"specversion":"1.0","id":"x","data":1,"data_base64":"AA=="}"#,
                "not both",
            ),
            (
                r#"{"specversion":"1.0","id":"x","data_base64":"%%"}"#,
                "is not base64",
            ),
        ];
        for binding in &ALL {
            for (body, reason) in cases {
                let err = binding.decode(structured(binding, body)).unwrap_err();
                assert!(err.reason.contains(reason), "{body}: {}", err.reason);
                assert_eq!(err.topic, "arrived.on");
                assert_eq!(err.body, body.as_bytes());
            }
        }
    }

    #[test]
    fn a_batch_is_refused_by_name() {
        for binding in &ALL {
            let mut m = structured(binding, "[]");
            match binding.content_type_header {
                Some(header) => m.headers = vec![(header.to_owned(), BATCH_CONTENT_TYPE.into())],
                None => m.content_type = Some(BATCH_CONTENT_TYPE.into()),
            }
            let err = binding.decode(m).unwrap_err();
            assert!(
                err.reason.contains("batch of CloudEvents"),
                "{}",
                err.reason
            );
        }
    }
}
