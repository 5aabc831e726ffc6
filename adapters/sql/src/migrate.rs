//! Applying versioned migrations: the flow every SQL store shares. A store
//! supplies its migrations and how one is applied; it takes its own lock
//! around [`apply_migrations`] (an advisory lock, `GET_LOCK`, SQLite's
//! write lock), since databases differ there.

use chrono::Utc;
use sqlx::SqlStr;
use txmsg_core::{BoxFuture, Result};

use crate::dialect::{Arg, Conn, Dialect, execute, fetch_all};

/// The statements of the migrations table.
#[derive(Debug, Clone)]
pub struct MigrationsSql {
    /// Creates the migrations table if it is missing.
    pub create: SqlStr,
    /// Every applied version, in a column `version`.
    pub applied: SqlStr,
    /// Records a version: parameters version, description, applied at.
    pub record: SqlStr,
}

/// One migration of a store, rendered for its tables: its version, what it
/// does, and its steps in order.
#[derive(Debug, Clone)]
pub struct Migration<S> {
    /// Its version, increasing from 1.
    pub version: i64,
    /// What it does, recorded in the migrations table.
    pub description: &'static str,
    /// Its steps.
    pub steps: Vec<S>,
}

/// One step of a migration, as its store applies it.
pub trait Step<D: Dialect>: Send + Sync {
    /// Applies it on `conn`.
    fn apply<'a>(&'a self, conn: &'a mut Conn<D>) -> BoxFuture<'a, Result<()>>;
}

/// A step that is SQL text, run as a script (it may hold several
/// statements, a PostgreSQL `DO` block among them).
impl<D: Dialect> Step<D> for SqlStr {
    fn apply<'a>(&'a self, conn: &'a mut Conn<D>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::raw_sql(self.clone())
                .execute(D::executor(conn))
                .await?;
            Ok(())
        })
    }
}

/// Applies the migrations among `migrations` not yet recorded, oldest
/// first, recording each; `store` names the store crate in the warning a
/// database migrated by a newer txmsg gets (its tables may have columns
/// this version does not know; it runs on them as they are).
///
/// Runs on `conn` as it is: the caller holds the lock (and the transaction,
/// where the database has transactional DDL).
///
/// # Errors
///
/// [`txmsg_core::Error::Database`] if the versions of `migrations` are not
/// 1, 2, 3, ... in order, or if a statement failed; the migrations applied
/// before it stay recorded only if the caller commits.
pub async fn apply_migrations<D: Dialect, S: Step<D>>(
    conn: &mut Conn<D>,
    sql: &MigrationsSql,
    migrations: &[Migration<S>],
    store: &str,
) -> Result<()> {
    // A store's own mistake, found by its first migrate (every conformance
    // suite runs one) before anything is applied.
    if let Some((i, m)) = migrations
        .iter()
        .enumerate()
        .find(|(i, m)| i64::try_from(i + 1).ok() != Some(m.version))
    {
        return Err(sqlx::Error::Protocol(format!(
            "{store}: migration `{}` is number {} but has version {}",
            m.description,
            i + 1,
            m.version
        ))
        .into());
    }
    execute::<D>(conn, &sql.create, &[]).await?;
    let applied = fetch_all::<D>(conn, &sql.applied, &[])
        .await?
        .iter()
        .map(|row| D::int(row, "version"))
        .filter_map(Result::transpose)
        .collect::<Result<Vec<i64>>>()?;
    for m in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        for step in &m.steps {
            step.apply(conn).await?;
        }
        let record = [
            Arg::Int(m.version),
            Arg::Text(m.description),
            Arg::Time(Utc::now()),
        ];
        execute::<D>(conn, &sql.record, &record).await?;
        tracing::info!(
            version = m.version,
            description = m.description,
            "applied txmsg migration"
        );
    }
    let known = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(newest) = applied.iter().copied().max().filter(|v| *v > known) {
        tracing::warn!(
            database = newest,
            known,
            store,
            "the txmsg tables were migrated by a newer version of this store; \
             running on them as they are"
        );
    }
    Ok(())
}
