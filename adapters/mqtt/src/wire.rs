//! CloudEvents over MQTT 5 (binary content mode): envelope <-> publish.

use rumqttc::v5::mqttbytes::v5::PublishProperties;
use txmsg_core::Envelope;
use txmsg_core::cloudevents::{Binding, CONTENT_TYPE, Incoming};
use txmsg_core::consumer::Undecodable;

/// The user property carrying the message id (a UUIDv7).
pub const TXMSG_ID_PROPERTY: &str = txmsg_core::cloudevents::TXMSG_ID;

/// The MQTT topic of `topic` under `prefix`.
pub(crate) fn mqtt_topic(prefix: &str, topic: &str) -> String {
    format!("{prefix}{topic}")
}

/// How CloudEvents travel in MQTT 5 user properties: `ce-` attributes,
/// names compared exactly (MQTT compares strings byte for byte), the content
/// type as the publish property of its own.
const BINDING: Binding = Binding::new("user property", &["ce-"]);

/// The publish properties of `envelope`: the content type, and the pairs
/// of [`Binding::encode`] as user properties.
pub(crate) fn encode(envelope: &Envelope, source: &str) -> PublishProperties {
    PublishProperties {
        content_type: Some(CONTENT_TYPE.into()),
        user_properties: BINDING.encode(envelope, source),
        ..PublishProperties::default()
    }
}

/// An upper bound of the size of the PUBLISH packet carrying a payload of
/// `payload` bytes to `topic` with `props`.
pub(crate) fn packet_size(topic: &str, props: &PublishProperties, payload: usize) -> usize {
    let props_len: usize = props
        .user_properties
        .iter()
        .map(|(k, v)| 5 + k.len() + v.len())
        .sum::<usize>()
        + props.content_type.as_ref().map_or(0, |c| 3 + c.len());
    // fixed header (5) + topic (2 + len) + packet id (2) + property length (4)
    5 + 2 + topic.len() + 2 + 4 + props_len + payload
}

/// Reads a received publish back into an envelope, by the rules of
/// [`Binding::decode`].
///
/// `mqtt_topic` is the topic it arrived on; `prefix` is stripped from it
/// for the topic an event without `ce-type` gets.
pub(crate) fn decode(
    prefix: &str,
    mqtt_topic: &str,
    props: Option<&PublishProperties>,
    payload: &[u8],
) -> Result<Envelope, Undecodable> {
    let topic = mqtt_topic.strip_prefix(prefix).unwrap_or(mqtt_topic);
    let mut incoming = Incoming::new(topic, payload.to_vec());
    if let Some(p) = props {
        incoming.content_type.clone_from(&p.content_type);
        incoming.headers.clone_from(&p.user_properties);
    }
    BINDING.decode(incoming)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use txmsg_core::TRACEPARENT;
    use uuid::Uuid;

    use super::*;

    fn envelope() -> Envelope {
        let mut e = Envelope::new(
            Uuid::now_v7(),
            "orders.placed",
            "k-1",
            br#"{"a":1}"#.to_vec(),
            Utc::now(),
        );
        e.key = Some("order-1".into());
        e.headers.insert(TRACEPARENT.into(), "00-ab-cd-01".into());
        e.headers.insert("x-tenant".into(), "acme".into());
        e.headers.insert("ce-id".into(), "spoofed".into());
        e
    }

    #[test]
    fn decode_inverts_encode() {
        let e = envelope();
        let props = encode(&e, "/src");
        assert_eq!(props.content_type.as_deref(), Some(CONTENT_TYPE));
        let got = decode("p/", "p/orders.placed", Some(&props), &e.payload);
        let Ok(got) = got else {
            panic!("undecodable: {got:?}");
        };
        assert_eq!(got.id, e.id);
        assert_eq!(got.topic, e.topic);
        assert_eq!(got.key, e.key);
        assert_eq!(got.idempotency_key, "k-1", "attributes win over headers");
        assert_eq!(got.headers.get(TRACEPARENT), e.headers.get(TRACEPARENT));
        assert_eq!(
            got.headers.get("x-tenant").map(String::as_str),
            Some("acme")
        );
        assert_eq!(got.created_at, e.created_at);
        assert_eq!(got.payload, e.payload);
    }

    #[test]
    fn packet_size_counts_everything() {
        let e = envelope();
        let props = encode(&e, "/src");
        let size = packet_size("p/orders.placed", &props, e.payload.len());
        assert!(size > e.payload.len() + 200, "{size}");
    }

    #[test]
    fn missing_id_or_wrong_type_is_undecodable() {
        let e = envelope();
        assert!(decode("p/", "p/t", None, b"{}").is_err());
        let mut props = encode(&e, "/src");
        props.content_type = Some("text/plain".into());
        assert!(decode("p/", "p/t", Some(&props), b"{}").is_err());
        let foreign = PublishProperties {
            user_properties: vec![("ce-id".into(), "x".into())],
            ..PublishProperties::default()
        };
        let Ok(got) = decode("p/", "p/t", Some(&foreign), b"{}") else {
            panic!("a foreign event decodes");
        };
        assert_eq!(got.topic, "t");
    }
}

/// Properties over arbitrary envelopes: what [`encode`] writes decodes back
/// to the same envelope (the decoding rules are tested in
/// `txmsg_core::cloudevents`).
#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use txmsg_core::TRACEPARENT;
    use txmsg_testkit::wire::{envelopes, proptest_config};

    use super::*;

    /// An envelope with any text in every field; header names other than
    /// the attributes (`traceparent` aside, which travels as itself).
    fn envelope() -> impl Strategy<Value = Envelope> {
        let names = prop_oneof!["(?s).{0,30}", Just(TRACEPARENT.to_owned())]
            .prop_filter("not an attribute", |n: &String| {
                !n.starts_with("ce-") && n != TXMSG_ID_PROPERTY
            });
        envelopes("(?s).", names)
    }

    proptest! {
        #![proptest_config(proptest_config())]

        #[test]
        fn decode_inverts_encode(
            env in envelope(),
            source in "(?s).{0,40}",
            prefix in "(?s).{0,10}",
        ) {
            let props = encode(&env, &source);
            let on = mqtt_topic(&prefix, &env.topic);
            prop_assert!(packet_size(&on, &props, env.payload.len()) > env.payload.len());
            let got = decode(&prefix, &on, Some(&props), &env.payload)
                .expect("what encode writes decodes");
            let mut expected = env;
            expected.headers.insert("ce-source".to_owned(), source);
            prop_assert_eq!(got, expected);
        }
    }
}
