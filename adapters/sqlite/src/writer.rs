//! The producers' row writer, and the handlers' inbox writer.

use chrono::{DateTime, Utc};
use sqlx::{SqlStr, Sqlite, SqliteConnection};
use txmsg_core::consumer::InboxWriter;
use txmsg_core::{BoxFuture, Envelope, Inserted, Lease, OutboxWriter, Result};
use uuid::Uuid;

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

/// Records inbox keys and removes replayed dead letters on the handler's
/// connection (inside its transaction), in one statement each.
#[derive(Debug)]
pub(crate) struct SqliteInbox {
    record: SqlStr,
    remove_dead: SqlStr,
}

impl SqliteInbox {
    pub(crate) fn new(record: SqlStr, remove_dead: SqlStr) -> Self {
        SqliteInbox {
            record,
            remove_dead,
        }
    }
}

impl InboxWriter<Sqlite> for SqliteInbox {
    fn record<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        group: &'a str,
        topic: &'a str,
        idempotency_key: &'a str,
        at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(self.record.clone())
                .bind(group)
                .bind(topic)
                .bind(idempotency_key)
                .bind(micros(at))
                .execute(conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn remove_dead<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        id: Uuid,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(self.remove_dead.clone())
                .bind(id)
                .execute(conn)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }
}
