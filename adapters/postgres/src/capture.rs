//! How a PostgreSQL store captures producers' messages: rows of the outbox
//! table, or records of the write-ahead log, and the record format.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use txmsg_core::{Envelope, Ident, Result};
use uuid::Uuid;

/// How producers' messages are captured: see
/// [`TableStore::with_capture`](txmsg_sql::TableStore::with_capture).
///
/// # Examples
///
/// ```
/// use txmsg_postgres::Capture;
///
/// # fn demo() -> txmsg_core::Result<()> {
/// let capture = Capture::log("txmsg")?;
/// assert_eq!(capture.prefix(), Some("txmsg"));
/// assert!(Capture::log("not a prefix").is_err());
/// assert_eq!(Capture::default(), Capture::Table);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Capture {
    /// A row of the outbox table per message, published by a
    /// [`Relay`](txmsg_core::Relay): the default.
    #[default]
    Table,
    /// A logical decoding message per message, written with
    /// `pg_logical_emit_message(true, prefix, record)` in the producer's
    /// transaction: no outbox row. A [`LogRelay`](crate::LogRelay) reads
    /// the records from a replication slot, in commit order. A message with
    /// an explicit idempotency key also writes the key to a narrow table
    /// (`<outbox>_keys`), so that a repeated key is still refused; a
    /// message without one writes nothing but the record. Half messages
    /// stay on the outbox table.
    Log {
        /// The prefix of the records: a relay reads only its own.
        prefix: Ident,
    },
}

impl Capture {
    /// Log capture with records under `prefix`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](txmsg_core::Error::Config) for `log_prefix` if `prefix` is not an identifier
    /// (ASCII letters, digits and `_`, not starting with a digit).
    pub fn log(prefix: &str) -> Result<Self> {
        Ok(Capture::Log {
            prefix: Ident::for_field("log_prefix", prefix)?,
        })
    }

    /// The records' prefix, in log capture.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            Capture::Table => None,
            Capture::Log { prefix } => Some(prefix.as_str()),
        }
    }
}

/// The version of the record format this build writes and reads.
const RECORD_VERSION: u32 = 1;

/// A record's header: every field of the envelope but the payload, as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    v: u32,
    id: Uuid,
    topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    idempotency_key: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
    created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<DateTime<Utc>>,
}

/// `envelope` as a log record: its header as one line of JSON (JSON text
/// holds no raw newline), a newline, then the payload's bytes as they are.
pub(crate) fn encode(envelope: &Envelope) -> Vec<u8> {
    let header = Header {
        v: RECORD_VERSION,
        id: envelope.id,
        topic: envelope.topic.clone(),
        key: envelope.key.clone(),
        idempotency_key: envelope.idempotency_key.clone(),
        headers: envelope
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        created_at: envelope.created_at,
        expires_at: envelope.expires_at,
    };
    // A struct of strings, maps of strings, ids and times always serializes.
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(&envelope.payload);
    out
}

/// The envelope of a log record.
///
/// # Errors
///
/// The reason, when the record is not one this build can read: no header
/// line, a header that is not the JSON it writes, or a newer version.
pub(crate) fn decode(record: &[u8]) -> std::result::Result<Envelope, String> {
    let Some(end) = record.iter().position(|b| *b == b'\n') else {
        return Err("a txmsg log record without its header line".to_owned());
    };
    let header: Header = serde_json::from_slice(&record[..end])
        .map_err(|e| format!("a txmsg log record whose header cannot be read: {e}"))?;
    if header.v != RECORD_VERSION {
        return Err(format!(
            "a txmsg log record of version {} (this build reads version {RECORD_VERSION})",
            header.v
        ));
    }
    let mut envelope = Envelope::new(
        header.id,
        header.topic,
        header.idempotency_key,
        record[end + 1..].to_vec(),
        header.created_at,
    );
    envelope.key = header.key;
    envelope.expires_at = header.expires_at;
    envelope.headers.extend(header.headers);
    Ok(envelope)
}

/// Whether `envelope` carries an idempotency key of its own: without one,
/// the key is the message id, which no other message can have.
pub(crate) fn has_own_key(envelope: &Envelope) -> bool {
    envelope.idempotency_key != envelope.id.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        let mut e = Envelope::new(
            Uuid::now_v7(),
            "orders.placed",
            "order-1",
            b"{\"id\":1}\n\x00\xff".to_vec(),
            Utc::now(),
        );
        e.key = Some("k\n1".into());
        e.headers.insert("a\nb".into(), "c\"d".into());
        e.expires_at = Some(Utc::now());
        e
    }

    #[test]
    fn a_record_gives_back_its_envelope() {
        let e = envelope();
        let back = decode(&encode(&e)).expect("a record of this build");
        assert_eq!(back, e);
        let mut bare = Envelope::new(Uuid::now_v7(), "t", "x", Vec::new(), Utc::now());
        bare.idempotency_key = bare.id.to_string();
        assert_eq!(decode(&encode(&bare)).expect("record"), bare);
        assert!(!has_own_key(&bare));
        assert!(has_own_key(&e));
    }

    #[test]
    fn an_unreadable_record_names_why() {
        assert!(
            decode(b"no header line")
                .unwrap_err()
                .contains("header line")
        );
        assert!(
            decode(b"{\"v\":1}\npayload")
                .unwrap_err()
                .contains("cannot be read")
        );
        let mut newer = encode(&envelope());
        assert_eq!(&newer[..6], b"{\"v\":1");
        newer[5] = b'2';
        assert!(decode(&newer).unwrap_err().contains("version 2"));
    }
}
