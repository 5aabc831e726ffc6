//! The inbox writer handlers use inside their transaction.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::MySql;
use sqlx::mysql::MySqlConnection;
use txmsg_core::consumer::InboxWriter;
use txmsg_core::{BoxFuture, Result};
use uuid::Uuid;

use txmsg_sql::SqlInbox;

use crate::MySqlBackend;
use crate::sql::Sql;

/// Records inbox keys and removes replayed dead letters on the handler's
/// connection, in one statement each.
#[derive(Debug)]
pub(crate) struct MySqlInbox {
    pub(crate) sql: Arc<Sql>,
    /// The shared writer, for what MySQL does as every store does.
    pub(crate) shared: SqlInbox<MySqlBackend>,
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
            .inbox
            .without_legacy_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(group);
        if known_clean {
            return Ok(false);
        }
        let sql = &self.sql.own.inbox;
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
            let done = sqlx::query(self.sql.inbox.record.clone())
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
        self.shared.remove_dead(conn, id)
    }
}
