//! Conversions between rows and envelopes or dead letters.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use txmsg_core::consumer::ConsumerDeadLetter;
use txmsg_core::{DeadLetter, Envelope, Headers, Result};
use uuid::Uuid;

/// A time as stored: unix microseconds.
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn decode_error(column: &str, message: impl Into<String>) -> sqlx::Error {
    let message: String = message.into();
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: message.into(),
    }
}

fn time(column: &str, v: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| decode_error(column, format!("{v} is not a time in microseconds")).into())
}

fn get_time(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>> {
    time(column, row.try_get(column)?)
}

fn get_opt_time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>> {
    row.try_get::<Option<i64>, _>(column)?
        .map(|v| time(column, v))
        .transpose()
}

/// Headers as stored: a JSON object of strings.
pub(crate) fn headers_json(headers: &Headers) -> String {
    // A map of strings always serializes; fall back to an empty object anyway.
    serde_json::to_string(headers).unwrap_or_else(|_| String::from("{}"))
}

fn headers(row: &SqliteRow) -> Result<Headers> {
    let headers: String = row.try_get("headers")?;
    Ok(
        serde_json::from_str(&headers).map_err(|e| sqlx::Error::ColumnDecode {
            index: "headers".to_owned(),
            source: Box::new(e),
        })?,
    )
}

fn attempts(row: &SqliteRow) -> Result<u32> {
    let attempts: i64 = row.try_get("attempts")?;
    Ok(u32::try_from(attempts)
        .map_err(|_| decode_error("attempts", format!("{attempts} is out of range")))?)
}

/// Reads the envelope columns of a row.
pub(crate) fn envelope(row: &SqliteRow) -> Result<Envelope> {
    let id: Uuid = row.try_get("id")?;
    let topic: String = row.try_get("topic")?;
    let idempotency_key: String = row.try_get("idempotency_key")?;
    let payload: Vec<u8> = row.try_get("payload")?;
    let mut env = Envelope::new(
        id,
        topic,
        idempotency_key,
        payload,
        get_time(row, "created_at")?,
    );
    env.key = row.try_get("key")?;
    env.headers = headers(row)?;
    env.expires_at = get_opt_time(row, "expires_at")?;
    env.attempts = attempts(row)?;
    Ok(env)
}

/// Reads a dead row: the envelope, its reason and when it went dead.
pub(crate) fn dead_letter(row: &SqliteRow) -> Result<DeadLetter> {
    let reason: Option<String> = row.try_get("last_error")?;
    let dead_at = get_opt_time(row, "dead_at")?
        .ok_or_else(|| decode_error("dead_at", "a dead row has no dead_at"))?;
    Ok(DeadLetter::new(
        envelope(row)?,
        reason.unwrap_or_default(),
        dead_at,
    ))
}

/// Reads a consumer dead letter: the message as delivered, the group, the
/// reason, the attempts and when it went dead.
pub(crate) fn consumer_dead_letter(row: &SqliteRow) -> Result<ConsumerDeadLetter> {
    let mut env = Envelope::new(
        row.try_get::<Uuid, _>("envelope_id")?,
        row.try_get::<String, _>("topic")?,
        row.try_get::<String, _>("idempotency_key")?,
        row.try_get::<Vec<u8>, _>("payload")?,
        get_time(row, "created_at")?,
    );
    env.key = row.try_get("key")?;
    env.headers = headers(row)?;
    Ok(ConsumerDeadLetter::new(
        row.try_get::<Uuid, _>("id")?,
        row.try_get::<String, _>("consumer_group")?,
        env,
        row.try_get::<String, _>("reason")?,
        attempts(row)?,
        get_time(row, "dead_at")?,
    ))
}
