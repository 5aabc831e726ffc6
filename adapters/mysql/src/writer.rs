//! The outbox writer producers use inside their own transaction, and the
//! inbox writer handlers use inside theirs.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::MySql;
use sqlx::Row;
use sqlx::mysql::MySqlConnection;
use txmsg_core::consumer::InboxWriter;
use txmsg_core::{BoxFuture, Envelope, Inserted, Lease, OutboxWriter, Result};
use uuid::Uuid;

use crate::sql::Sql;

/// Inserts outbox rows on the caller's connection.
#[derive(Debug)]
pub(crate) struct MySqlWriter {
    pub(crate) sql: Arc<Sql>,
}

/// Which row holds `envelope`'s topic and idempotency key after an insert,
/// and whether it is leased: `None` when it is another row (a duplicate).
async fn holder(
    conn: &mut MySqlConnection,
    sql: &Sql,
    envelope: &Envelope,
) -> Result<Option<bool>> {
    let row = sqlx::query(sql.own.inserted.clone())
        .bind(&envelope.topic)
        .bind(&envelope.idempotency_key)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        // The id was taken by a row with another key: not inserted either.
        return Ok(None);
    };
    let id: Uuid = row.try_get("id")?;
    if id != envelope.id {
        return Ok(None);
    }
    let leased: Option<i64> = row.try_get("leased")?;
    Ok(Some(leased.unwrap_or(0) != 0))
}

impl OutboxWriter<MySql> for MySqlWriter {
    fn insert<'a>(
        &'a self,
        conn: &'a mut MySqlConnection,
        envelope: &'a Envelope,
        lease: Option<Lease>,
    ) -> BoxFuture<'a, Result<Inserted>> {
        Box::pin(async move {
            // `ON DUPLICATE KEY UPDATE id = id` rather than catching the
            // duplicate key error or `INSERT IGNORE` (which would hide other
            // errors too). The driver asks for found rows, so the affected
            // count is 1 for a duplicate as well: the row holding the key,
            // read back, tells them apart.
            let key = envelope.key.as_deref();
            let owner = lease.map(|l| l.owner);
            sqlx::query(self.sql.own.insert.get())
                .bind(envelope.id)
                .bind(&envelope.topic)
                .bind(key)
                .bind(&envelope.idempotency_key)
                .bind(envelope.payload.as_slice())
                .bind(txmsg_sql::headers_to_text(&envelope.headers))
                .bind(envelope.created_at)
                .bind(owner)
                .bind(lease.map(|l| l.until))
                .bind(envelope.created_at)
                .bind(envelope.expires_at)
                .bind(key)
                .bind(&envelope.topic)
                .bind(key)
                .bind(envelope.id)
                .bind(owner)
                .execute(&mut *conn)
                .await?;
            Ok(match holder(conn, &self.sql, envelope).await? {
                None => Inserted::Duplicate,
                Some(true) => Inserted::Leased,
                Some(false) => Inserted::Unleased,
            })
        })
    }
}

/// Records inbox keys and removes replayed dead letters on the handler's
/// connection, in one statement each.
#[derive(Debug)]
pub(crate) struct MySqlInbox {
    pub(crate) sql: Arc<Sql>,
}

impl MySqlInbox {
    /// Whether `group` recorded `idempotency_key` before the inbox kept
    /// topics: such a key counts for every topic.
    async fn is_legacy_key(
        &self,
        conn: &mut MySqlConnection,
        group: &str,
        idempotency_key: &str,
    ) -> Result<bool> {
        let known_clean = self
            .sql
            .own
            .without_legacy_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(group);
        if known_clean {
            return Ok(false);
        }
        let sql = &self.sql.own;
        let any: bool = sqlx::query_scalar(sql.has_legacy_keys.get())
            .bind(group)
            .fetch_one(&mut *conn)
            .await?;
        if !any {
            sql.without_legacy_keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(group.to_owned());
            return Ok(false);
        }
        Ok(sqlx::query_scalar(sql.is_legacy_key.get())
            .bind(group)
            .bind(idempotency_key)
            .fetch_one(&mut *conn)
            .await?)
    }
}

impl InboxWriter<MySql> for MySqlInbox {
    fn record<'a>(
        &'a self,
        conn: &'a mut MySqlConnection,
        group: &'a str,
        topic: &'a str,
        idempotency_key: &'a str,
        at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            if self
                .is_legacy_key(&mut *conn, group, idempotency_key)
                .await?
            {
                return Ok(false);
            }
            let done = sqlx::query(self.sql.own.inbox_record.get())
                .bind(group)
                .bind(topic)
                .bind(idempotency_key)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            // A duplicate reports `LAST_INSERT_ID(1)` as its insert id.
            Ok(done.rows_affected() == 1 && done.last_insert_id() == 0)
        })
    }

    fn remove_dead<'a>(
        &'a self,
        conn: &'a mut MySqlConnection,
        id: Uuid,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = sqlx::query(self.sql.inbox.remove_dead.clone())
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() > 0)
        })
    }
}
