//! The producers' row writer, and the handlers' inbox writer.

use sqlx::{SqlStr, Sqlite, SqliteConnection};
use txmsg_core::{BoxFuture, Envelope, Inserted, Lease, OutboxWriter, Result};

use crate::dialect::micros;

/// Inserts outbox rows on the caller's connection (inside its transaction).
#[derive(Debug)]
pub(crate) struct SqliteWriter {
    insert: SqlStr,
}

impl SqliteWriter {
    pub(crate) fn new(insert: SqlStr) -> Self {
        SqliteWriter { insert }
    }
}

impl OutboxWriter<Sqlite> for SqliteWriter {
    fn insert<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        envelope: &'a Envelope,
        lease: Option<Lease>,
    ) -> BoxFuture<'a, Result<Inserted>> {
        Box::pin(async move {
            // One statement: `ON CONFLICT DO NOTHING` leaves the transaction
            // usable when the idempotency key was seen before.
            let leased: Option<bool> = sqlx::query_scalar(self.insert.clone())
                .bind(envelope.id)
                .bind(envelope.topic.as_str())
                .bind(envelope.key.as_deref())
                .bind(envelope.idempotency_key.as_str())
                .bind(envelope.payload.as_slice())
                .bind(txmsg_sql::headers_to_text(&envelope.headers))
                .bind(micros(envelope.created_at))
                .bind(envelope.expires_at.map(micros))
                .bind(lease.map(|l| l.owner))
                .bind(lease.map(|l| micros(l.until)))
                .fetch_optional(conn)
                .await?;
            Ok(match leased {
                None => Inserted::Duplicate,
                Some(true) => Inserted::Leased,
                Some(false) => Inserted::Unleased,
            })
        })
    }
}
