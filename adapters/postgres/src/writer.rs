//! The outbox writer producers use inside their own transaction, and the
//! inbox writer handlers use inside theirs.

use std::sync::Arc;

use sqlx::{PgConnection, Postgres};
use txmsg_core::{BoxFuture, Envelope, Inserted, Lease, OutboxWriter, Result};

use crate::sql::Sql;
use txmsg_sql::headers_to_json;

/// Inserts outbox rows on the caller's connection, in one statement each.
#[derive(Debug)]
pub(crate) struct PgWriter {
    pub(crate) sql: Arc<Sql>,
    /// Channel to `NOTIFY` when a row is left for relays of other processes.
    pub(crate) notify: Option<txmsg_core::Ident>,
}

impl OutboxWriter<Postgres> for PgWriter {
    fn insert<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        envelope: &'a Envelope,
        lease: Option<Lease>,
    ) -> BoxFuture<'a, Result<Inserted>> {
        Box::pin(async move {
            // `ON CONFLICT DO NOTHING` rather than catching the unique
            // violation: an error would abort the caller's transaction, while
            // no inserted row leaves it usable.
            let inserted = if envelope.key.is_none() || lease.is_none() {
                self.insert_plain(conn, envelope, lease).await?
            } else {
                self.insert_checked(conn, envelope, lease).await?
            };
            if let (Inserted::Unleased, Some(channel)) = (inserted, &self.notify) {
                // Delivered at commit, and only then; repeats within one
                // transaction are folded into one by PostgreSQL.
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(channel.as_str())
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(inserted)
        })
    }
}

impl PgWriter {
    /// A row with an ordering key, asked to be leased: leased only if no
    /// earlier row of its key is pending or dead under another owner.
    async fn insert_checked(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        lease: Option<Lease>,
    ) -> Result<Inserted> {
        let leased: Option<bool> = sqlx::query_scalar(self.sql.own.insert.clone())
            .bind(envelope.id)
            .bind(&envelope.topic)
            .bind(envelope.key.as_deref())
            .bind(&envelope.idempotency_key)
            .bind(envelope.payload.as_slice())
            .bind(headers_to_json(&envelope.headers))
            .bind(envelope.created_at)
            .bind(envelope.expires_at)
            .bind(lease.map(|l| l.owner))
            .bind(lease.map(|l| l.until))
            .fetch_optional(&mut *conn)
            .await?;
        Ok(match leased {
            None => Inserted::Duplicate,
            Some(true) => Inserted::Leased,
            Some(false) => Inserted::Unleased,
        })
    }

    /// A row without an ordering key, or without a lease: nothing to check,
    /// leased whenever a lease is given.
    async fn insert_plain(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        lease: Option<Lease>,
    ) -> Result<Inserted> {
        let headers = (!envelope.headers.is_empty()).then(|| headers_to_json(&envelope.headers));
        let done = sqlx::query(self.sql.own.insert_plain.clone())
            .bind(envelope.id)
            .bind(&envelope.topic)
            .bind(envelope.key.as_deref())
            .bind(&envelope.idempotency_key)
            .bind(envelope.payload.as_slice())
            .bind(headers)
            .bind(envelope.created_at)
            .bind(envelope.expires_at)
            .bind(lease.map(|l| l.owner))
            .bind(lease.map(|l| l.until))
            .execute(&mut *conn)
            .await?;
        Ok(match (done.rows_affected(), lease) {
            (0, _) => Inserted::Duplicate,
            (_, Some(_)) => Inserted::Leased,
            (_, None) => Inserted::Unleased,
        })
    }
}
