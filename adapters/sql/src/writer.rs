//! The half-message writer every SQL store hands producers.

use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use sqlx::SqlStr;
use txmsg_core::half::{Decision, ResolveOutcome};
use txmsg_core::{BoxFuture, Envelope, HalfWriter, Inserted, Result};
use uuid::Uuid;

use crate::dialect::{Arg, Conn, Dialect, execute, fetch_optional};
use crate::half::{SettleSql, settle};

/// Prepares and settles half messages on a producer's connection, for a
/// store of dialect `D`.
pub struct SqlHalfWriter<D> {
    prepare: SqlStr,
    holder: Option<SqlStr>,
    settle: SettleSql,
    after_commit_arg: Option<String>,
    dialect: PhantomData<fn() -> D>,
}

impl<D> fmt::Debug for SqlHalfWriter<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlHalfWriter")
            .field("after_commit_arg", &self.after_commit_arg)
            .finish_non_exhaustive()
    }
}

impl<D> SqlHalfWriter<D> {
    /// A writer with `prepare`, which inserts a prepared row unless its
    /// (topic, idempotency key) exists, with the parameters id, topic, key,
    /// idempotency key, payload, headers, first check at, created at,
    /// expires at (the order the text of a statement with positional `?`
    /// parameters has); and with `settle`, run with `after_commit_arg` (see
    /// [`settle`]).
    pub fn new(prepare: SqlStr, settle: SettleSql, after_commit_arg: Option<String>) -> Self {
        SqlHalfWriter {
            prepare,
            holder: None,
            settle,
            after_commit_arg,
            dialect: PhantomData,
        }
    }
}

impl<D> SqlHalfWriter<D> {
    /// Tells an insert from a duplicate by reading which row holds the
    /// (topic, idempotency key) with `holder` (parameters topic and
    /// idempotency key, column `id`), for a database that counts a
    /// duplicate as a changed row (MySQL's `ON DUPLICATE KEY UPDATE` with
    /// found rows).
    #[must_use]
    pub fn with_holder(mut self, holder: SqlStr) -> Self {
        self.holder = Some(holder);
        self
    }
}

impl<D: Dialect> HalfWriter<D::Db> for SqlHalfWriter<D> {
    fn prepare<'a>(
        &'a self,
        conn: &'a mut Conn<D>,
        envelope: &'a Envelope,
        check_at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Inserted>> {
        Box::pin(async move {
            let args = [
                Arg::Id(envelope.id),
                Arg::Text(&envelope.topic),
                Arg::OptText(envelope.key.as_deref()),
                Arg::Text(&envelope.idempotency_key),
                Arg::Bytes(&envelope.payload),
                Arg::Headers(&envelope.headers),
                Arg::Time(check_at),
                Arg::Time(envelope.created_at),
                Arg::OptTime(envelope.expires_at),
            ];
            let changed = execute::<D>(conn, &self.prepare, &args).await?;
            let inserted = match &self.holder {
                None => changed > 0,
                Some(holder) => {
                    let key = [
                        Arg::Text(&envelope.topic),
                        Arg::Text(&envelope.idempotency_key),
                    ];
                    match fetch_optional::<D>(conn, holder, &key).await? {
                        Some(row) => D::id(&row, "id")? == envelope.id,
                        None => false,
                    }
                }
            };
            Ok(if inserted {
                Inserted::Unleased
            } else {
                Inserted::Duplicate
            })
        })
    }

    fn resolve<'a>(
        &'a self,
        conn: &'a mut Conn<D>,
        id: Uuid,
        decision: Decision,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<ResolveOutcome>> {
        Box::pin(settle::<D>(
            conn,
            &self.settle,
            id,
            decision,
            now,
            self.after_commit_arg.as_deref(),
        ))
    }
}

/// Records inbox keys and removes replayed dead letters on a handler's
/// connection, in one statement each, for a store of dialect `D`.
pub struct SqlInbox<D> {
    record: SqlStr,
    remove_dead: SqlStr,
    dialect: PhantomData<fn() -> D>,
}

impl<D> fmt::Debug for SqlInbox<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlInbox").finish_non_exhaustive()
    }
}

impl<D> SqlInbox<D> {
    /// A writer with `record`, which inserts a key unless the group has it
    /// (parameters group, topic, idempotency key, processed at; one row
    /// changed when it is new), and `remove_dead`, which deletes a consumer
    /// dead letter by id.
    pub fn new(record: SqlStr, remove_dead: SqlStr) -> Self {
        SqlInbox {
            record,
            remove_dead,
            dialect: PhantomData,
        }
    }
}

impl<D: Dialect> txmsg_core::consumer::InboxWriter<D::Db> for SqlInbox<D> {
    fn record<'a>(
        &'a self,
        conn: &'a mut Conn<D>,
        group: &'a str,
        topic: &'a str,
        idempotency_key: &'a str,
        at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let args = [
                Arg::Text(group),
                Arg::Text(topic),
                Arg::Text(idempotency_key),
                Arg::Time(at),
            ];
            Ok(execute::<D>(conn, &self.record, &args).await? == 1)
        })
    }

    fn remove_dead<'a>(&'a self, conn: &'a mut Conn<D>, id: Uuid) -> BoxFuture<'a, Result<bool>> {
        Box::pin(
            async move { Ok(execute::<D>(conn, &self.remove_dead, &[Arg::Id(id)]).await? > 0) },
        )
    }
}
