//! SQLite as a [`Dialect`] of the shared SQL layer: times as unix
//! microseconds, ids as 16-byte blobs, headers as JSON text.

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteQueryResult;
use sqlx::{Executor, Row, Sqlite, SqliteConnection};
use txmsg_core::{Headers, Result};
use txmsg_sql::{Arg, Dialect, SqlQuery, SqlRow};
use uuid::Uuid;

/// A time as stored: unix microseconds. Always written by the caller (never
/// SQLite's own clock), so comparisons are exact and a test clock drives
/// leases and retries.
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// SQLite as a backend of the shared SQL store:
/// [`SqliteStore`](crate::SqliteStore) is a
/// [`TableStore`](txmsg_sql::TableStore) over it.
#[derive(Debug)]
pub struct SqliteBackend;

impl Dialect for SqliteBackend {
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
            Arg::Headers(headers) => query.bind(txmsg_sql::headers_to_text(headers)),
            Arg::Ids(ids) => Self::bind_ids(query, ids),
        }
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn id(row: &SqlRow<Self>, name: &str) -> Result<Uuid> {
        Ok(row.try_get(name)?)
    }

    fn text(row: &SqlRow<Self>, name: &str) -> Result<Option<String>> {
        Ok(row.try_get(name)?)
    }

    fn bytes(row: &SqlRow<Self>, name: &str) -> Result<Vec<u8>> {
        Ok(row.try_get(name)?)
    }

    fn time(row: &SqlRow<Self>, name: &str) -> Result<Option<DateTime<Utc>>> {
        row.try_get::<Option<i64>, _>(name)?
            .map(|v| {
                DateTime::from_timestamp_micros(v).ok_or_else(|| {
                    sqlx::Error::ColumnDecode {
                        index: name.to_owned(),
                        source: format!("{v} is not a time in microseconds").into(),
                    }
                    .into()
                })
            })
            .transpose()
    }

    fn int(row: &SqlRow<Self>, name: &str) -> Result<Option<i64>> {
        Ok(row.try_get(name)?)
    }

    fn count(row: &SqlRow<Self>, name: &str) -> Result<u64> {
        let n: Option<i64> = row.try_get(name)?;
        Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
    }

    fn headers(row: &SqlRow<Self>, name: &str) -> Result<Headers> {
        txmsg_sql::headers_from_text(row.try_get(name)?)
    }
}
