//! Half messages: settling a prepared row, shared by the producers' writer
//! and the check-back worker's store method.

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;
use txmsg_core::Result;
use txmsg_core::half::{Decision, ResolveOutcome};
use uuid::Uuid;

use crate::row::micros;
use crate::sql::Settle;

/// How often the conditional update is tried again when the row turns out to
/// be prepared after all (an operator resumed it in between).
const ATTEMPTS: usize = 3;

/// Settles prepared row `id`, only if it is still prepared (the fence), and
/// otherwise reports what it found: the update or delete first, then, when it
/// touched nothing, a fresh read of the row's state.
pub(crate) async fn resolve(
    conn: &mut SqliteConnection,
    sql: &Settle,
    id: Uuid,
    resolve: Decision,
    now: DateTime<Utc>,
) -> Result<ResolveOutcome> {
    for _ in 0..ATTEMPTS {
        let done = match resolve {
            Decision::Commit => {
                sqlx::query(sql.commit.clone())
                    .bind(id)
                    .bind(micros(now))
                    .execute(&mut *conn)
                    .await?
            }
            Decision::Rollback => {
                sqlx::query(sql.rollback.clone())
                    .bind(id)
                    .execute(&mut *conn)
                    .await?
            }
        };
        if done.rows_affected() > 0 {
            return Ok(ResolveOutcome::Done);
        }
        let state: Option<String> = sqlx::query_scalar(sql.state_of.clone())
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        match state.as_deref() {
            None => return Ok(ResolveOutcome::AlreadyRolledBack),
            Some("dead") => return Ok(ResolveOutcome::Dead),
            Some("prepared") => continue,
            Some(_) => return Ok(ResolveOutcome::AlreadyCommitted),
        }
    }
    Err(sqlx::Error::Protocol(format!(
        "prepared message {id} kept changing while it was being settled"
    ))
    .into())
}
