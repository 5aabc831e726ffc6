//! Opening the store the URL names, and turning its errors into one line.

use std::path::Path;
use std::time::Duration;

use txmsg::mysql::MySqlStore;
use txmsg::postgres::PgStore;
use txmsg::sqlite::SqliteStore;
use txmsg::{Error, Tables};

use crate::args::DbArgs;

/// Connections the tool opens at most.
const MAX_CONNECTIONS: u32 = 4;

/// What went wrong, ready to print.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The command line asked for something that makes no sense (exit 2).
    Usage(String),
    /// The command failed (exit 1).
    Failed(String),
}

/// What the error messages need to know.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// The outbox table, as written in SQL.
    pub(crate) outbox: String,
    /// How long connecting may take.
    pub(crate) connect_timeout: Duration,
}

/// The store the URL names.
#[derive(Debug)]
pub(crate) enum AnyStore {
    /// `postgres://`, `postgresql://`.
    Postgres(PgStore),
    /// `mysql://`, `mariadb://`.
    MySql(MySqlStore),
    /// `sqlite:`.
    Sqlite(SqliteStore),
}

/// The database kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Postgres,
    MySql,
    Sqlite,
}

fn kind(url: &str) -> Result<Kind, Failure> {
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => Ok(Kind::Postgres),
        Some("mysql" | "mariadb") => Ok(Kind::MySql),
        Some("sqlite") => Ok(Kind::Sqlite),
        Some(other) if !other.is_empty() && !other.contains(['/', '@']) => {
            Err(Failure::Usage(format!(
                "unsupported database URL scheme `{other}:`: expected postgres://, mysql://, mariadb:// or sqlite:"
            )))
        }
        _ => Err(Failure::Usage(
            "the database URL has no scheme: expected postgres://, mysql://, mariadb:// or sqlite:"
                .to_owned(),
        )),
    }
}

/// The tables the options name, validated.
pub(crate) fn tables(db: &DbArgs) -> Result<Tables, Failure> {
    let bad = |e: Error| Failure::Usage(describe(&e, None));
    let mut tables = Tables::default();
    if let Some(schema) = &db.schema {
        tables = tables.with_schema(schema).map_err(bad)?;
    }
    if let Some(name) = &db.outbox_table {
        tables = tables.with_outbox(name).map_err(bad)?;
    }
    if let Some(name) = &db.inbox_table {
        tables = tables.with_inbox(name).map_err(bad)?;
    }
    if let Some(name) = &db.migrations_table {
        tables = tables.with_migrations(name).map_err(bad)?;
    }
    Ok(tables)
}

/// The file an SQLite URL names, if it names one (not `:memory:`).
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// Opens the store `url` names. Unless `create` (for `migrate`), an SQLite
/// file that does not exist is an error rather than a new empty database.
pub(crate) async fn connect(
    url: &str,
    tables: Tables,
    create: bool,
    ctx: &Context,
) -> Result<AnyStore, Failure> {
    let failed = |e: Error| Failure::Failed(describe(&e, Some(ctx)));
    // The server refusing the connection (unknown user or database, bad
    // password) is a connection failure, not a refused statement.
    let refused = |e: sqlx::Error| match e {
        sqlx::Error::Database(d) => Failure::Failed(format!(
            "could not connect to the database: {}",
            d.message()
        )),
        other => failed(Error::Database(other)),
    };
    match kind(url)? {
        Kind::Postgres => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .acquire_timeout(ctx.connect_timeout)
                .connect(url)
                .await
                .map_err(refused)?;
            Ok(AnyStore::Postgres(
                PgStore::new(pool, tables).map_err(failed)?,
            ))
        }
        Kind::MySql => {
            let url = mysql_url(url);
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .acquire_timeout(ctx.connect_timeout)
                .connect(&url)
                .await
                .map_err(refused)?;
            Ok(AnyStore::MySql(
                MySqlStore::new(pool, tables).map_err(failed)?,
            ))
        }
        Kind::Sqlite => {
            if !create
                && let Some(path) = sqlite_path(url)
                && !Path::new(path).exists()
            {
                return Err(Failure::Failed(format!(
                    "the SQLite database `{path}` does not exist: run `txmsg migrate` first"
                )));
            }
            SqliteStore::connect_with(url, tables)
                .await
                .map(AnyStore::Sqlite)
                .map_err(failed)
        }
    }
}

/// `url` as sqlx takes it: sqlx knows MariaDB by the `mysql` scheme.
fn mysql_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => format!("mysql://{rest}"),
        _ => url.to_owned(),
    }
}

/// The migrations of the store `url` names, on `tables`, as one SQL script,
/// without connecting: the URL only says which database it is.
pub(crate) fn migration_script(url: &str, tables: Tables) -> Result<String, Failure> {
    let failed = |e: Error| Failure::Failed(describe(&e, None));
    let lazy = |e: sqlx::Error| failed(Error::Database(e));
    Ok(match kind(url)? {
        Kind::Postgres => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .connect_lazy(url)
                .map_err(lazy)?;
            PgStore::new(pool, tables)
                .map_err(failed)?
                .migration_script()
        }
        Kind::MySql => {
            let url = mysql_url(url);
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .connect_lazy(&url)
                .map_err(lazy)?;
            MySqlStore::new(pool, tables)
                .map_err(failed)?
                .migration_script()
        }
        Kind::Sqlite => {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .connect_lazy(url)
                .map_err(lazy)?;
            SqliteStore::new(pool, tables)
                .map_err(failed)?
                .migration_script()
        }
    })
}

/// Whether the database says a table or schema is missing.
fn missing_table(e: &dyn sqlx::error::DatabaseError) -> bool {
    let code = e.code();
    let code = code.as_deref().unwrap_or("");
    // PostgreSQL: undefined_table, invalid_schema_name. MySQL: no such
    // table, unknown database. SQLite: generic error with this text.
    matches!(code, "42P01" | "3F000" | "42S02")
        || e.message().contains("no such table")
        || e.message().contains("doesn't exist")
}

/// An error and its causes, joined with `: `.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// One line that says what went wrong, without the URL or its password.
pub(crate) fn describe(err: &Error, ctx: Option<&Context>) -> String {
    let Error::Database(e) = err else {
        return chain(err);
    };
    match e {
        sqlx::Error::Configuration(c) => format!("invalid database URL: {c}"),
        sqlx::Error::PoolTimedOut => match ctx {
            Some(ctx) => format!(
                "could not connect to the database within {}s (see --connect-timeout)",
                ctx.connect_timeout.as_secs_f64()
            ),
            None => "could not connect to the database in time".to_owned(),
        },
        sqlx::Error::Io(io) => format!("could not connect to the database: {io}"),
        sqlx::Error::Tls(tls) => format!("TLS with the database failed: {tls}"),
        sqlx::Error::Database(d) if missing_table(d.as_ref()) => {
            let outbox = ctx.map(|c| c.outbox.as_str()).unwrap_or("txmsg_outbox");
            format!(
                "the txmsg tables are not there (outbox {outbox}): run `txmsg migrate` first, \
                 with the same --schema and table options ({})",
                d.message()
            )
        }
        sqlx::Error::Database(d) => format!("the database refused: {}", d.message()),
        other => format!("database error: {}", chain(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_choose_the_database() {
        assert_eq!(kind("postgres://h/db").ok(), Some(Kind::Postgres));
        assert_eq!(kind("postgresql://h/db").ok(), Some(Kind::Postgres));
        assert_eq!(kind("mariadb://h/db").ok(), Some(Kind::MySql));
        assert_eq!(kind("MYSQL://h/db").ok(), Some(Kind::MySql));
        assert_eq!(kind("sqlite:app.db").ok(), Some(Kind::Sqlite));
        assert!(matches!(kind("redis://h"), Err(Failure::Usage(m)) if m.contains("`redis:`")));
        assert!(matches!(kind("app.db"), Err(Failure::Usage(m)) if m.contains("no scheme")));
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite:app.db"), Some("app.db"));
        assert_eq!(
            sqlite_path("sqlite:///tmp/a.db?mode=rwc"),
            Some("/tmp/a.db")
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }
}
