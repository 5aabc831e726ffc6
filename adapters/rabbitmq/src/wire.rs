//! The wire format: CloudEvents in binary content mode over AMQP 0-9-1.

use chrono::SecondsFormat;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use txmsg_core::{Envelope, Error, Result, TRACEPARENT};

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
pub const TXMSG_ID_HEADER: &str = "txmsg-id";

/// The CloudEvents specification version published.
const SPEC_VERSION: &str = "1.0";

/// Content type of every payload (the CloudEvents `datacontenttype`).
const CONTENT_TYPE: &str = "application/json";

/// AMQP 0-9-1 delivery mode of a message stored on disk.
const PERSISTENT: u8 = 2;

/// Header values shared by every message of one broker.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    source: LongString,
}

impl Wire {
    /// The shared values for a broker whose CloudEvents `source` is `source`.
    pub(crate) fn new(source: &str) -> Self {
        Wire {
            source: source.into(),
        }
    }

    /// The routing key and properties `envelope` is published with.
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
    pub(crate) fn encode(&self, envelope: &Envelope) -> Result<(ShortString, BasicProperties)> {
        let routing_key = ShortString::try_new(envelope.topic.as_str()).map_err(|_| {
            Error::broker_permanent(format!(
                "topic of {} bytes is longer than the 255 bytes an amqp routing key allows",
                envelope.topic.len()
            ))
        })?;

        let mut headers = FieldTable::default();
        for (name, value) in &envelope.headers {
            if name == TRACEPARENT {
                continue;
            }
            let key = ShortString::try_new(name.as_str()).map_err(|_| {
                Error::broker_permanent(format!(
                    "header name of {} bytes is longer than the 255 bytes amqp allows",
                    name.len()
                ))
            })?;
            headers.insert(key, text(value));
        }
        // The names below are constants far shorter than 255 bytes.
        headers.insert(ce!("id").into(), text(&envelope.idempotency_key));
        headers.insert(ce!("type").into(), text(&envelope.topic));
        headers.insert(
            ce!("source").into(),
            AMQPValue::LongString(self.source.clone()),
        );
        headers.insert(ce!("specversion").into(), text(SPEC_VERSION));
        let time = envelope
            .created_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true);
        headers.insert(ce!("time").into(), text(&time));
        if let Some(key) = &envelope.key {
            headers.insert(ce!("partitionkey").into(), text(key));
        }
        if let Some(traceparent) = envelope.headers.get(TRACEPARENT) {
            headers.insert(ce!("traceparent").into(), text(traceparent));
        }
        headers.insert(TXMSG_ID_HEADER.into(), text(&envelope.id.to_string()));

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
}

/// A string header value.
fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

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

    fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
        props.headers().as_ref().and_then(|h| h.inner().get(name))
    }

    #[test]
    fn maps_cloudevents_attributes() {
        let env = envelope();
        let (rk, props) = Wire::new("/shop").encode(&env).unwrap();
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
        let (_, props) = Wire::new("/shop").encode(&env).unwrap();
        assert_eq!(header(&props, "cloudEvents_partitionkey"), None);
        assert_eq!(header(&props, "cloudEvents_traceparent"), None);
    }

    #[test]
    fn attributes_win_over_envelope_headers() {
        let mut env = envelope();
        env.headers.insert("cloudEvents_id".into(), "forged".into());
        let (_, props) = Wire::new("/shop").encode(&env).unwrap();
        assert_eq!(header(&props, "cloudEvents_id"), Some(&text("order-7")));
    }

    #[test]
    fn long_idempotency_key_still_travels_as_the_id() {
        let mut env = envelope();
        env.idempotency_key = "k".repeat(300);
        let (_, props) = Wire::new("/shop").encode(&env).unwrap();
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
        let err = Wire::new("/shop").encode(&env).unwrap_err();
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
        let err = Wire::new("/shop").encode(&env).unwrap_err();
        assert!(!err.is_retryable());
    }
}
