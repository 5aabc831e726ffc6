//! Fixtures for the wire-format tests of the broker adapters: one sample
//! envelope, and proptest strategies for envelopes a transport can carry.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use txmsg_core::{Envelope, TRACEPARENT};
use uuid::Uuid;

/// An envelope with every field set: topic `orders.placed`, idempotency key
/// `order-7`, ordering key `7`, a `traceparent` and a `tenant` header, the
/// payload `{}`, created 2024-05-06 07:08:09 UTC.
pub fn sample_envelope() -> Envelope {
    let at = Utc
        .with_ymd_and_hms(2024, 5, 6, 7, 8, 9)
        .single()
        .expect("a valid time");
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

/// 256 cases, no failure files: what the wire properties run with.
pub fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Payloads: any bytes, cut-off JSON, and a few over 1 MiB.
pub fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..256),
        1 => (0usize..15).prop_map(|n| br#"{"order":7,"x":"y"}"#[..n].to_vec()),
        1 => (1usize << 20..(1 << 20) + 8).prop_map(|n| vec![b'{'; n]),
    ]
}

/// Times RFC 3339 can write, to the nanosecond.
pub fn times() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..253_402_300_799, 0u32..1_000_000_000)
        .prop_map(|(s, n)| Utc.timestamp_opt(s, n).single().expect("in chrono's range"))
}

/// Envelopes whose topic, keys and header values match the regex `text`
/// (the topic and values up to 40 characters, the idempotency key 1 to
/// 300), with up to 8 headers named by `names`.
pub fn envelopes(
    text: &'static str,
    names: impl Strategy<Value = String>,
) -> impl Strategy<Value = Envelope> {
    let text_of = |len: &str| format!("{text}{{{len}}}");
    (
        any::<u128>(),
        proptest::string::string_regex(&text_of("0,40")).expect("a valid regex"),
        proptest::string::string_regex(&text_of("1,300")).expect("a valid regex"),
        proptest::option::of(
            proptest::string::string_regex(&text_of("0,40")).expect("a valid regex"),
        ),
        proptest::collection::btree_map(
            names,
            proptest::string::string_regex(&text_of("0,40")).expect("a valid regex"),
            0..8,
        ),
        bodies(),
        times(),
    )
        .prop_map(
            |(id, topic, idempotency_key, key, headers, payload, created_at)| {
                let mut env = Envelope::new(
                    Uuid::from_u128(id),
                    topic,
                    idempotency_key,
                    payload,
                    created_at,
                );
                env.key = key;
                env.headers = headers;
                env
            },
        )
}
