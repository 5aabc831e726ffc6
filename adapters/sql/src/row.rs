//! Rows as envelopes and dead letters, and headers as stored: once for every
//! SQL store, over its dialect's column getters.

use chrono::{DateTime, Utc};
use serde_json::Value;
use txmsg_core::consumer::ConsumerDeadLetter;
use txmsg_core::{DeadLetter, Envelope, Headers, Result};

use crate::dialect::{Dialect, SqlRow};

/// A decoding error for `column`.
fn decode_error(column: &str, message: impl Into<String>) -> txmsg_core::Error {
    let message: String = message.into();
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: message.into(),
    }
    .into()
}

fn required<T>(value: Option<T>, column: &str) -> Result<T> {
    value.ok_or_else(|| decode_error(column, "is NULL"))
}

fn text<D: Dialect>(row: &SqlRow<D>, column: &str) -> Result<String> {
    required(D::text(row, column)?, column)
}

fn time<D: Dialect>(row: &SqlRow<D>, column: &str) -> Result<DateTime<Utc>> {
    required(D::time(row, column)?, column)
}

/// Attempts or checks as stored: out of range (a row written by hand) is an
/// error, not a silent 0.
fn count<D: Dialect>(row: &SqlRow<D>, column: &str) -> Result<u32> {
    let n = required(D::int(row, column)?, column)?;
    u32::try_from(n).map_err(|_| decode_error(column, format!("{n} is out of range")))
}

/// Attempts as an `int` column stores them: beyond its range, its largest
/// value.
pub fn attempts_to_int(attempts: u32) -> i32 {
    i32::try_from(attempts).unwrap_or(i32::MAX)
}

/// The message columns both tables have: the id in column `id_column`,
/// `topic`, `key`, `idempotency_key`, `payload`, `headers`, `created_at`.
fn message<D: Dialect>(row: &SqlRow<D>, id_column: &str) -> Result<Envelope> {
    let mut env = Envelope::new(
        D::id(row, id_column)?,
        text::<D>(row, "topic")?,
        text::<D>(row, "idempotency_key")?,
        D::bytes(row, "payload")?,
        time::<D>(row, "created_at")?,
    );
    env.key = D::text(row, "key")?;
    env.headers = D::headers(row, "headers")?;
    Ok(env)
}

/// An envelope from a row holding the columns `id`, `topic`, `key`,
/// `idempotency_key`, `payload`, `headers`, `created_at`, `expires_at` and
/// `attempts`, read by name.
///
/// # Errors
///
/// [`txmsg_core::Error::Database`] if a column is missing, `NULL` where it
/// may not be, or holds something else.
pub fn envelope<D: Dialect>(row: &SqlRow<D>) -> Result<Envelope> {
    let mut env = message::<D>(row, "id")?;
    env.expires_at = D::time(row, "expires_at")?;
    env.attempts = count::<D>(row, "attempts")?;
    Ok(env)
}

/// A dead outbox row: the envelope's columns, `last_error` (the reason) and
/// `dead_at` (when it went dead; its creation time if a row written by hand
/// has none).
///
/// # Errors
///
/// As [`envelope`].
pub fn dead_letter<D: Dialect>(row: &SqlRow<D>) -> Result<DeadLetter> {
    let envelope = envelope::<D>(row)?;
    let reason = D::text(row, "last_error")?.unwrap_or_default();
    let dead_at = D::time(row, "dead_at")?.unwrap_or(envelope.created_at);
    Ok(DeadLetter::new(envelope, reason, dead_at))
}

/// A consumer dead letter from a row holding the columns `id`,
/// `consumer_group`, `topic`, `key`, `idempotency_key`, `headers`,
/// `payload`, `envelope_id`, `created_at`, `reason`, `attempts` and
/// `dead_at`, read by name.
///
/// # Errors
///
/// As [`envelope`].
pub fn consumer_dead_letter<D: Dialect>(row: &SqlRow<D>) -> Result<ConsumerDeadLetter> {
    let env = message::<D>(row, "envelope_id")?;
    Ok(ConsumerDeadLetter::new(
        D::id(row, "id")?,
        text::<D>(row, "consumer_group")?,
        env,
        text::<D>(row, "reason")?,
        count::<D>(row, "attempts")?,
        time::<D>(row, "dead_at")?,
    ))
}

/// Headers as the JSON object they are stored as.
pub fn headers_to_json(headers: &Headers) -> Value {
    Value::Object(
        headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Headers as the JSON object text they are stored as (where the column is
/// text rather than a JSON type).
pub fn headers_to_text(headers: &Headers) -> String {
    headers_to_json(headers).to_string()
}

/// Headers from their stored JSON object. Rows written by other tools may
/// hold values that are not strings: those are kept as their JSON text.
///
/// # Errors
///
/// [`txmsg_core::Error::Database`] if `value` is not a JSON object: the row
/// cannot be read, and the store says so rather than dropping its headers.
pub fn headers_from_json(value: Value) -> Result<Headers> {
    match value {
        Value::Object(map) => Ok(map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect()),
        other => Err(decode_error(
            "headers",
            format!("is not a JSON object: {}", kind(&other)),
        )),
    }
}

/// Headers from their stored JSON text, as [`headers_from_json`].
///
/// # Errors
///
/// As [`headers_from_json`], and if `text` is not JSON.
pub fn headers_from_text(text: String) -> Result<Headers> {
    let value = serde_json::from_str(&text)
        .map_err(|e| decode_error("headers", format!("is not JSON: {e}")))?;
    headers_from_json(value)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_other_json_is_refused() {
        let mut h = Headers::new();
        h.insert("traceparent".into(), "00-abc-def-01".into());
        h.insert("x".into(), String::new());
        assert_eq!(headers_from_json(headers_to_json(&h)).unwrap(), h);
        let odd = headers_from_text(r#"{"n": 1, "s": "v"}"#.to_owned()).unwrap();
        assert_eq!(odd.get("n").map(String::as_str), Some("1"));
        assert_eq!(odd.get("s").map(String::as_str), Some("v"));
        for bad in ["[1]", "null", "not json", "\"s\""] {
            assert!(headers_from_text(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn attempts_beyond_an_int_are_its_largest_value() {
        assert_eq!(attempts_to_int(7), 7);
        assert_eq!(attempts_to_int(u32::MAX), i32::MAX);
    }
}
