//! CloudEvents over MQTT 5 (binary content mode): envelope <-> publish.

use chrono::{DateTime, SecondsFormat, Utc};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use txmsg_core::cloudevents::{CONTENT_TYPE, SPEC_VERSION, is_json};
use txmsg_core::consumer::Undecodable;
use txmsg_core::{Envelope, Headers, TRACEPARENT};
use uuid::Uuid;

/// The user property carrying the message id (a UUIDv7).
pub const TXMSG_ID_PROPERTY: &str = txmsg_core::cloudevents::TXMSG_ID;

const CE_ID: &str = "ce-id";
const CE_TYPE: &str = "ce-type";
const CE_SOURCE: &str = "ce-source";
const CE_SPECVERSION: &str = "ce-specversion";
const CE_TIME: &str = "ce-time";
const CE_PARTITIONKEY: &str = "ce-partitionkey";

/// User property names written from envelope fields; an envelope header
/// of the same name is left out.
const RESERVED: [&str; 8] = [
    CE_ID,
    CE_TYPE,
    CE_SOURCE,
    CE_SPECVERSION,
    CE_TIME,
    CE_PARTITIONKEY,
    TRACEPARENT,
    TXMSG_ID_PROPERTY,
];

/// The MQTT topic of `topic` under `prefix`.
pub(crate) fn mqtt_topic(prefix: &str, topic: &str) -> String {
    format!("{prefix}{topic}")
}

/// The publish properties of `envelope`.
pub(crate) fn encode(envelope: &Envelope, source: &str) -> PublishProperties {
    let mut props: Vec<(String, String)> = vec![
        (CE_ID.into(), envelope.idempotency_key.clone()),
        (CE_TYPE.into(), envelope.topic.clone()),
        (CE_SOURCE.into(), source.to_owned()),
        (CE_SPECVERSION.into(), SPEC_VERSION.into()),
        (
            CE_TIME.into(),
            envelope
                .created_at
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        ),
        (TXMSG_ID_PROPERTY.into(), envelope.id.to_string()),
    ];
    if let Some(key) = &envelope.key {
        props.push((CE_PARTITIONKEY.into(), key.clone()));
    }
    if let Some(tp) = envelope.headers.get(TRACEPARENT) {
        props.push((TRACEPARENT.into(), tp.clone()));
    }
    for (name, value) in &envelope.headers {
        if !RESERVED.contains(&name.as_str()) {
            props.push((name.clone(), value.clone()));
        }
    }
    PublishProperties {
        content_type: Some(CONTENT_TYPE.into()),
        user_properties: props,
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

/// Reads a received publish back into an envelope.
///
/// `mqtt_topic` is the topic it arrived on; `prefix` is stripped from it
/// when `ce-type` is missing.
pub(crate) fn decode(
    prefix: &str,
    mqtt_topic: &str,
    props: Option<&PublishProperties>,
    payload: &[u8],
) -> Result<Envelope, Undecodable> {
    let mut attrs = Headers::new();
    let mut headers = Headers::new();
    let mut content_type = None;
    if let Some(p) = props {
        content_type = p.content_type.clone();
        for (name, value) in &p.user_properties {
            if RESERVED.contains(&name.as_str()) && name != TRACEPARENT {
                attrs.entry(name.clone()).or_insert_with(|| value.clone());
            } else {
                headers.entry(name.clone()).or_insert_with(|| value.clone());
            }
        }
    }
    let fallback_topic = mqtt_topic.strip_prefix(prefix).unwrap_or(mqtt_topic);
    let topic = attrs
        .get(CE_TYPE)
        .cloned()
        .unwrap_or_else(|| fallback_topic.to_owned());
    let undecodable = |reason: String, attrs: &Headers, headers: &Headers| {
        let mut all = headers.clone();
        all.extend(attrs.iter().map(|(k, v)| (k.clone(), v.clone())));
        Undecodable {
            reason,
            topic: topic.clone(),
            headers: all,
            body: payload.to_vec(),
        }
    };
    match content_type.as_deref() {
        None => {}
        Some(ct) if is_json(ct) => {}
        Some(ct) => {
            return Err(undecodable(
                format!("content type `{}` is not CONTENT_TYPE", ct.escape_debug()),
                &attrs,
                &headers,
            ));
        }
    }
    let Some(key) = attrs.get(CE_ID).filter(|id| !id.is_empty()).cloned() else {
        return Err(undecodable(
            "no `ce-id` user property".into(),
            &attrs,
            &headers,
        ));
    };
    let id = match attrs.get(TXMSG_ID_PROPERTY) {
        Some(text) => match Uuid::parse_str(text) {
            Ok(id) => id,
            Err(_) => {
                return Err(undecodable(
                    format!("`{TXMSG_ID_PROPERTY}` is not a UUID"),
                    &attrs,
                    &headers,
                ));
            }
        },
        None => Uuid::now_v7(),
    };
    let created_at = attrs
        .get(CE_TIME)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
    let mut envelope = Envelope::new(id, topic.clone(), key, payload.to_vec(), created_at);
    envelope.key = attrs.get(CE_PARTITIONKEY).cloned();
    envelope.headers = headers;
    Ok(envelope)
}

#[cfg(test)]
mod tests {
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
        e.headers.insert(CE_ID.into(), "spoofed".into());
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
            user_properties: vec![(CE_ID.into(), "x".into())],
            ..PublishProperties::default()
        };
        let Ok(got) = decode("p/", "p/t", Some(&foreign), b"{}") else {
            panic!("a foreign event decodes");
        };
        assert_eq!(got.topic, "t");
    }
}

/// Properties over arbitrary publishes: decoding never panics, and answers
/// with an envelope or a reason; what [`encode`] writes decodes back to the
/// same envelope.
#[cfg(test)]
mod props {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Text a user property could hold, with the values the decoder looks
    /// for.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "(?s).{0,40}",
            1 => Just(String::new()),
            1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
            1 => time().prop_map(|t| t.to_rfc3339()),
            1 => Just("v".repeat(70_000)),
        ]
    }

    /// A user property name: a reserved one or any other.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            1 => proptest::sample::select(RESERVED.to_vec()).prop_map(str::to_owned),
            1 => "(?s).{0,30}",
        ]
    }

    fn content_type() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            Just(CONTENT_TYPE.to_owned()),
            Just("application/cloudevents+json".to_owned()),
            Just("Application/CONTENT_TYPE; charset=utf-8".to_owned()),
            Just("text/plain".to_owned()),
            Just(String::new()),
            "(?s).{0,30}",
        ])
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
        /// An envelope with any text in every field; header names other than
        /// the reserved ones (`traceparent` aside, which travels as itself).
        fn envelope()(
            id in any::<u128>(),
            topic in "(?s).{0,40}",
            idempotency_key in "(?s).{1,300}",
            key in proptest::option::of("(?s).{0,40}"),
            headers in proptest::collection::btree_map(
                prop_oneof![
                    "(?s).{0,30}",
                    Just(TRACEPARENT.to_owned()),
                ]
                .prop_filter("not reserved", |n| {
                    n == TRACEPARENT || !RESERVED.contains(&n.as_str())
                }),
                "(?s).{0,40}",
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
            prefix in "(?s).{0,10}",
            topic in "(?s).{0,40}",
            props in proptest::option::of((
                content_type(),
                proptest::collection::vec((name(), value()), 0..12),
            )),
            payload in body(),
        ) {
            let props = props.map(|(content_type, user_properties)| PublishProperties {
                content_type,
                user_properties,
                ..PublishProperties::default()
            });
            let refused_type = props
                .as_ref()
                .and_then(|p| p.content_type.as_deref())
                .is_some_and(|c| !is_json(c));
            match decode(&prefix, &topic, props.as_ref(), &payload) {
                Ok(env) => {
                    prop_assert!(!refused_type, "a foreign content type must be refused");
                    prop_assert!(!env.idempotency_key.is_empty());
                    prop_assert_eq!(&env.payload, &payload, "the payload is kept byte for byte");
                    for reserved in RESERVED {
                        if reserved != TRACEPARENT {
                            prop_assert!(!env.headers.contains_key(reserved));
                        }
                    }
                }
                Err(bad) => {
                    prop_assert!(!bad.reason.trim().is_empty(), "a refusal says why");
                    prop_assert!(
                        !bad.reason.chars().any(char::is_control),
                        "a reason that reaches logs holds no control characters: {:?}",
                        bad.reason
                    );
                    prop_assert_eq!(&bad.body, &payload, "the body is kept for the dead letter");
                }
            }
        }

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
            prop_assert_eq!(got, env);
        }
    }
}
