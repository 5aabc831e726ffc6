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

    /// The step as SQL text for a migration tool of the user's own (see
    /// [`migration_script`]): what it runs on a database that does not
    /// have it yet.
    fn script(&self) -> String;
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

    fn script(&self) -> String {
        self.as_str().to_owned()
    }
}

/// A store's table names, qualified and quoted for its SQL text, and its
/// statement templates filled in with them.
#[derive(Debug, Clone)]
pub struct QuotedTables {
    /// The outbox.
    pub outbox: String,
    /// The inbox.
    pub inbox: String,
    /// The migrations table.
    pub migrations: String,
    /// The consumer dead-letter table.
    pub consumer_dead: String,
    /// The consumer dead-letter table's own name, neither qualified nor
    /// quoted (to name its indexes after).
    pub consumer_dead_name: txmsg_core::Ident,
}

impl QuotedTables {
    /// The names of `tables`, each quoted with `quote`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](txmsg_core::Error::Config) for `inbox_table` if its
    /// name leaves no name for the consumer dead-letter table.
    pub fn new(tables: &txmsg_core::Tables, quote: char) -> txmsg_core::Result<Self> {
        let consumer_dead_name = tables.consumer_dead()?;
        Ok(QuotedTables {
            outbox: tables.qualified(tables.outbox(), quote),
            inbox: tables.qualified(tables.inbox(), quote),
            migrations: tables.qualified(tables.migrations(), quote),
            consumer_dead: tables.qualified(&consumer_dead_name, quote),
            consumer_dead_name,
        })
    }

    /// `template` with `{outbox}`, `{inbox}` and `{consumer_dead}` replaced
    /// by the quoted names.
    pub fn render(&self, template: &str) -> String {
        template
            .replace("{outbox}", &self.outbox)
            .replace("{inbox}", &self.inbox)
            .replace("{consumer_dead}", &self.consumer_dead)
    }
}

/// Where a [`migration_script`] records each version, as `migrate` does.
#[derive(Debug, Clone)]
pub struct ScriptTarget<'a> {
    /// The store, named in the script's heading (`txmsg-postgres`, ...).
    pub store: &'a str,
    /// Statements run before the migrations (creating the schema).
    pub before: Vec<&'a str>,
    /// The migrations table, qualified and quoted.
    pub migrations_table: String,
    /// The database's expression for the current time, in the migrations
    /// table's `applied_at` type.
    pub now: &'a str,
}

impl<'a> ScriptTarget<'a> {
    /// The target of `store` (named in the script's heading) on `tables`,
    /// whose migrations table is quoted with `quote`; `now` is the
    /// database's expression for the current time. Nothing runs before the
    /// migrations.
    pub fn new(store: &'a str, tables: &txmsg_core::Tables, quote: char, now: &'a str) -> Self {
        ScriptTarget {
            store,
            before: Vec::new(),
            migrations_table: tables.qualified(tables.migrations(), quote),
            now,
        }
    }

    /// Runs `statements` before the migrations: creating the schema.
    pub fn with_before(mut self, statements: impl IntoIterator<Item = &'a str>) -> Self {
        self.before = statements.into_iter().collect();
        self
    }
}

/// Every migration as one SQL script, for teams whose migrations run
/// through a tool of their own (sqlx migrate, refinery, Flyway): the
/// migrations table, then each migration's steps followed by the row that
/// records it. Applied once, in order, it leaves the database as `migrate`
/// would; `migrate` then finds every version recorded and changes nothing.
///
/// The script holds only text of txmsg's own and the names of the
/// configured tables, which were checked as identifiers and quoted when the
/// store was built.
pub fn migration_script<D: Dialect, S: Step<D>>(
    target: ScriptTarget<'_>,
    sql: &MigrationsSql,
    migrations: &[Migration<S>],
) -> String {
    let last = migrations.last().map_or(0, |m| m.version);
    let mut out = format!(
        "-- txmsg tables ({store}), migrations 1 to {last}.\n\
         -- Apply once, in order; txmsg's `migrate` then finds every version\n\
         -- recorded in {table} and changes nothing.\n\n",
        store = target.store,
        table = target.migrations_table,
    );
    for statement in &target.before {
        push_statement(&mut out, statement);
    }
    push_statement(&mut out, sql.create.as_str());
    for m in migrations {
        out.push_str(&format!("\n-- {}: {}\n", m.version, m.description));
        for step in &m.steps {
            push_statement(&mut out, &step.script());
        }
        push_statement(
            &mut out,
            &format!(
                "INSERT INTO {} (version, description, applied_at) VALUES ({}, '{}', {})",
                target.migrations_table,
                m.version,
                m.description.replace('\'', "''"),
                target.now
            ),
        );
    }
    out
}

/// A 64-bit FNV-1a hash of `text`: the same in every build and every
/// process, so that each store derives the lock that serialises its
/// migrations (an advisory lock key, a `GET_LOCK` name) from the name of
/// its migrations table, and concurrent processes agree on it.
///
/// # Examples
///
/// ```
/// assert_eq!(txmsg_sql::lock_hash(""), 0xcbf2_9ce4_8422_2325);
/// assert_ne!(txmsg_sql::lock_hash("a"), txmsg_sql::lock_hash("b"));
/// ```
pub fn lock_hash(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Appends `statement`, trimmed and ended with `;`, on lines of its own.
fn push_statement(out: &mut String, statement: &str) {
    let statement = statement.trim();
    out.push_str(statement);
    if !statement.ends_with(';') {
        out.push(';');
    }
    out.push('\n');
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
