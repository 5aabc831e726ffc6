//! Settling a half message: the fenced commit or rollback every SQL store
//! shares, used by the producer's writer and the check-back worker.

use chrono::{DateTime, Utc};
use sqlx::SqlStr;
use txmsg_core::Result;
use txmsg_core::half::{Decision, ResolveOutcome};
use uuid::Uuid;

use crate::dialect::{Arg, Conn, Dialect, execute, fetch_optional};

/// How often the conditional update is tried again when the row turns out to
/// be prepared after all (an operator resumed it in between).
const ATTEMPTS: usize = 3;

/// The statements that settle a prepared row.
#[derive(Debug, Clone)]
pub struct SettleSql {
    /// Makes the row pending, due at the first parameter (a time), only
    /// while it is prepared; the second parameter is its id. (The order is
    /// the one the text of a statement with positional `?` parameters has.)
    pub commit: SqlStr,
    /// Deletes the row whose id is the parameter, only while it is prepared.
    pub rollback: SqlStr,
    /// The state of the row whose id is the parameter.
    pub state_of: SqlStr,
    /// Run after a commit that took effect, with the text given to
    /// [`settle`] (PostgreSQL's `NOTIFY` of relays in other processes).
    pub after_commit: Option<SqlStr>,
}

/// Settles prepared row `id`, only if it is still prepared (the fence), and
/// otherwise reports what it found.
///
/// Each statement runs on its own (autocommit on a pool connection, or inside
/// the caller's transaction): the update or delete first, then, when it
/// touched nothing, a fresh read of the row's state. A commit that took
/// effect runs [`SettleSql::after_commit`] with `after_commit_arg`, when
/// both are set.
///
/// # Errors
///
/// [`txmsg_core::Error::Database`] if a statement failed, or if the row
/// kept turning back to prepared.
pub async fn settle<D: Dialect>(
    conn: &mut Conn<D>,
    sql: &SettleSql,
    id: Uuid,
    decision: Decision,
    now: DateTime<Utc>,
    after_commit_arg: Option<&str>,
) -> Result<ResolveOutcome> {
    for _ in 0..ATTEMPTS {
        let changed = match decision {
            Decision::Commit => {
                execute::<D>(conn, &sql.commit, &[Arg::Time(now), Arg::Id(id)]).await?
            }
            Decision::Rollback => execute::<D>(conn, &sql.rollback, &[Arg::Id(id)]).await?,
        };
        if changed > 0 {
            if let (Decision::Commit, Some(statement), Some(arg)) =
                (decision, &sql.after_commit, after_commit_arg)
            {
                execute::<D>(conn, statement, &[Arg::Text(arg)]).await?;
            }
            return Ok(ResolveOutcome::Done);
        }
        let state = match fetch_optional::<D>(conn, &sql.state_of, &[Arg::Id(id)]).await? {
            Some(row) => D::text(&row, "state")?,
            None => None,
        };
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
