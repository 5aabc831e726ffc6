//! SQLite as a [`Dialect`] of the shared SQL layer: times as unix
//! microseconds, ids as 16-byte blobs, headers as JSON text.

use sqlx::sqlite::SqliteQueryResult;
use sqlx::{Executor, Row, Sqlite, SqliteConnection};
use txmsg_core::Result;
use txmsg_sql::{Arg, Dialect, SqlQuery, SqlRow};

use crate::row::{headers_json, micros};

/// SQLite's bindings.
#[derive(Debug)]
pub(crate) struct SqliteDialect;

impl Dialect for SqliteDialect {
    type Db = Sqlite;

    fn executor<'c>(conn: &'c mut SqliteConnection) -> impl Executor<'c, Database = Sqlite> + 'c {
        conn
    }

    fn bind<'q>(query: SqlQuery<'q, Self>, arg: Arg<'_>) -> SqlQuery<'q, Self> {
        match arg {
            Arg::Id(id) => query.bind(id),
            Arg::OptId(id) => query.bind(id),
            Arg::Time(t) => query.bind(micros(t)),
            Arg::OptTime(t) => query.bind(t.map(micros)),
            Arg::Text(text) => query.bind(text),
            Arg::OptText(text) => query.bind(text),
            Arg::Int(n) => query.bind(n),
            Arg::Bool(b) => query.bind(b),
            Arg::Bytes(bytes) => query.bind(bytes),
            Arg::Headers(headers) => query.bind(headers_json(headers)),
        }
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn text(row: &SqlRow<Self>, index: usize) -> Result<Option<String>> {
        Ok(row.try_get(index)?)
    }
}
