//! Rows to envelopes and dead letters, and back.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::mysql::MySqlRow;
use txmsg_core::consumer::ConsumerDeadLetter;
use txmsg_core::{Envelope, Headers, Result};
use uuid::Uuid;

/// Headers as the JSON object text they are stored as.
pub(crate) fn headers_to_json(headers: &Headers) -> String {
    Value::Object(
        headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
    .to_string()
}

/// Headers from their JSON object text. Rows written by other tools may hold
/// values that are not strings; those are kept as their JSON text, and text
/// that is not a JSON object gives no headers.
fn headers_from_json(text: &str) -> Headers {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        _ => Headers::new(),
    }
}

/// An envelope from a row holding the columns of
/// [`ENVELOPE_COLUMNS`](crate::sql::ENVELOPE_COLUMNS), read by name.
pub(crate) fn envelope(row: &MySqlRow) -> Result<Envelope> {
    let mut env = Envelope::new(
        row.try_get::<Uuid, _>("id")?,
        row.try_get::<String, _>("topic")?,
        row.try_get::<String, _>("idempotency_key")?,
        row.try_get::<Vec<u8>, _>("payload")?,
        row.try_get::<DateTime<Utc>, _>("created_at")?,
    );
    env.key = row.try_get("key")?;
    env.headers = headers_from_json(&row.try_get::<String, _>("headers")?);
    env.expires_at = row.try_get("expires_at")?;
    env.attempts = u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0);
    Ok(env)
}

/// Attempts as stored (`INT`); counts beyond its range are kept as its largest value.
pub(crate) fn attempts_to_int(attempts: u32) -> i32 {
    i32::try_from(attempts).unwrap_or(i32::MAX)
}

/// A consumer dead letter from a row holding the columns of
/// `CONSUMER_DEAD_COLUMNS`, read by name.
pub(crate) fn consumer_dead_letter(row: &MySqlRow) -> Result<ConsumerDeadLetter> {
    let mut env = Envelope::new(
        row.try_get::<Uuid, _>("envelope_id")?,
        row.try_get::<String, _>("topic")?,
        row.try_get::<String, _>("idempotency_key")?,
        row.try_get::<Vec<u8>, _>("payload")?,
        row.try_get::<DateTime<Utc>, _>("created_at")?,
    );
    env.key = row.try_get("key")?;
    env.headers = headers_from_json(&row.try_get::<String, _>("headers")?);
    Ok(ConsumerDeadLetter::new(
        row.try_get::<Uuid, _>("id")?,
        row.try_get::<String, _>("consumer_group")?,
        env,
        row.try_get::<String, _>("reason")?,
        u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
        row.try_get::<DateTime<Utc>, _>("dead_at")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_tolerate_other_json() {
        let mut h = Headers::new();
        h.insert("traceparent".into(), "00-abc-def-01".into());
        h.insert("x".into(), String::new());
        assert_eq!(headers_from_json(&headers_to_json(&h)), h);
        let got = headers_from_json(r#"{"n": 1, "s": "v"}"#);
        assert_eq!(got.get("n").map(String::as_str), Some("1"));
        assert_eq!(got.get("s").map(String::as_str), Some("v"));
        assert!(headers_from_json("[1]").is_empty());
        assert!(headers_from_json("not json").is_empty());
    }
}
