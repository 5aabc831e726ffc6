//! Applying versioned migrations: the flow every SQL store shares. A store
//! supplies its migrations and how one is applied; it takes its own lock
//! around [`apply_migrations`] (an advisory lock, `GET_LOCK`, SQLite's
//! write lock), since databases differ there.

use chrono::Utc;
use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};
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

/// What a store's database writes where the shared migration flow leaves it
/// a choice; static text only, so that nothing configurable reaches it.
#[derive(Debug, Clone, Copy)]
pub struct MigrationsDialect {
    /// The statement that creates a schema, with `{schema}` where its quoted
    /// name goes.
    pub create_schema: &'static str,
    /// The migrations table's definition after its name in `CREATE TABLE IF
    /// NOT EXISTS`: the columns `version`, `description` and `applied_at`,
    /// then any table options.
    pub table: &'static str,
    /// The placeholders of version, description and applied-at in the
    /// statement that records a version.
    pub record_values: &'static str,
    /// Text after that statement's values (empty, or what makes a
    /// concurrent record of the same version harmless).
    pub record_suffix: &'static str,
}

/// A store's migrations rendered for its tables, with what runs around them:
/// the schema to create, the migrations table, and the hash its lock is
/// made of.
#[derive(Debug, Clone)]
pub struct Migrations<S> {
    /// [`lock_hash`] of `txmsg migrate <migrations table>`: each store makes
    /// the lock that serialises its migrations from it (an advisory lock
    /// key, a `GET_LOCK` name), so that every process on the same tables
    /// takes the same lock and processes on other tables do not wait.
    pub lock_hash: u64,
    /// The schema's name and the statement that creates it, if one is set.
    pub create_schema: Option<(String, SqlStr)>,
    /// The migrations table, qualified and quoted.
    pub table_name: String,
    /// The migrations table's statements.
    pub table: MigrationsSql,
    /// The migrations, oldest first.
    pub list: Vec<Migration<S>>,
}

impl<S> Migrations<S> {
    /// The migrations `list` of a store on `tables`, whose names it quotes
    /// with `quote`, in `dialect`.
    pub fn new(
        tables: &txmsg_core::Tables,
        quote: char,
        dialect: &MigrationsDialect,
        list: Vec<Migration<S>>,
    ) -> Self {
        let table_name = tables.qualified(tables.migrations(), quote);
        // Only validated identifiers, quoted, and the dialect's static text
        // are formatted into these statements.
        let sql = |text: String| AssertSqlSafe(text).into_sql_str();
        Migrations {
            lock_hash: lock_hash(&format!("txmsg migrate {table_name}")),
            create_schema: tables.schema().map(|s| {
                let quoted = format!("{quote}{s}{quote}");
                (
                    s.to_string(),
                    sql(dialect.create_schema.replace("{schema}", &quoted)),
                )
            }),
            table: MigrationsSql {
                create: sql(format!(
                    "CREATE TABLE IF NOT EXISTS {table_name} {}",
                    dialect.table
                )),
                applied: sql(format!("SELECT version FROM {table_name}")),
                record: sql(format!(
                    "INSERT INTO {table_name} (version, description, applied_at) VALUES ({}){}",
                    dialect.record_values, dialect.record_suffix
                )),
            },
            table_name,
            list,
        }
    }

    /// Applies the migrations not yet recorded on `conn`, as
    /// [`apply_migrations`] does; the caller holds the lock and has created
    /// the schema.
    ///
    /// # Errors
    ///
    /// As [`apply_migrations`].
    pub async fn apply<D: Dialect>(&self, conn: &mut Conn<D>, store: &str) -> Result<()>
    where
        S: Step<D>,
    {
        apply_migrations::<D, S>(conn, &self.table, &self.list, store).await
    }

    /// Every migration as one SQL script, as [`migration_script`] writes
    /// it: the schema first if one is set; `store` names the store in the
    /// script's heading, `now` is the database's expression for the current
    /// time.
    pub fn script<D: Dialect>(&self, store: &str, now: &str) -> String
    where
        S: Step<D>,
    {
        let target = ScriptTarget {
            store,
            before: self.create_schema.iter().map(|(_, s)| s.as_str()).collect(),
            migrations_table: self.table_name.clone(),
            now,
        };
        migration_script::<D, S>(target, &self.table, &self.list)
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

#[cfg(test)]
mod tests {
    use super::*;

    const DIALECT: MigrationsDialect = MigrationsDialect {
        create_schema: "CREATE SCHEMA {schema}",
        table: "(version int, description text, applied_at text)",
        record_values: "?, ?, ?",
        record_suffix: " ON CONFLICT DO NOTHING",
    };

    fn in_app(quote: char) -> Migrations<SqlStr> {
        let tables = txmsg_core::Tables::default()
            .with_schema("app")
            .and_then(|t| t.with_migrations("done"))
            .expect("valid names");
        Migrations::new(&tables, quote, &DIALECT, Vec::new())
    }

    #[test]
    fn the_statements_name_the_qualified_quoted_table() {
        let m = in_app('`');
        assert_eq!(m.table_name, "`app`.`done`");
        assert_eq!(
            m.table.create.as_str(),
            "CREATE TABLE IF NOT EXISTS `app`.`done` (version int, description text, applied_at text)"
        );
        assert_eq!(m.table.applied.as_str(), "SELECT version FROM `app`.`done`");
        assert_eq!(
            m.table.record.as_str(),
            "INSERT INTO `app`.`done` (version, description, applied_at) VALUES (?, ?, ?) \
             ON CONFLICT DO NOTHING"
        );
        let (schema, create) = m.create_schema.expect("a schema is set");
        assert_eq!(schema, "app");
        assert_eq!(create.as_str(), "CREATE SCHEMA `app`");
        assert!(
            Migrations::<SqlStr>::new(&txmsg_core::Tables::default(), '"', &DIALECT, Vec::new())
                .create_schema
                .is_none()
        );
    }

    #[test]
    fn the_lock_hash_follows_the_table() {
        assert_eq!(in_app('"').lock_hash, in_app('"').lock_hash);
        assert_eq!(
            in_app('"').lock_hash,
            lock_hash("txmsg migrate \"app\".\"done\"")
        );
        let other =
            Migrations::<SqlStr>::new(&txmsg_core::Tables::default(), '"', &DIALECT, Vec::new());
        assert_ne!(in_app('"').lock_hash, other.lock_hash);
    }
}
