//! What a SQL store's database supplies, and statements run over it.

use chrono::{DateTime, Utc};
use sqlx::query::Query;
use sqlx::{Database, Executor, SqlStr};
use txmsg_core::{Headers, Result};
use uuid::Uuid;

/// A connection of dialect `D`.
pub type Conn<D> = <<D as Dialect>::Db as Database>::Connection;

/// A row of dialect `D`.
pub type SqlRow<D> = <<D as Dialect>::Db as Database>::Row;

/// A statement of dialect `D` with its arguments.
pub type SqlQuery<'q, D> =
    Query<'q, <D as Dialect>::Db, <<D as Dialect>::Db as Database>::Arguments>;

/// A value bound to a statement, in the terms every dialect can bind: each
/// dialect stores times, ids, headers and id lists its own way.
///
/// Every dialect binds every kind (no wildcard): a kind added here is a
/// compile error in each dialect until it says how it stores it.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// A message or owner id.
    Id(Uuid),
    /// An id or `NULL`.
    OptId(Option<Uuid>),
    /// A point in time.
    Time(DateTime<Utc>),
    /// A point in time or `NULL`.
    OptTime(Option<DateTime<Utc>>),
    /// Text.
    Text(&'a str),
    /// Text or `NULL`.
    OptText(Option<&'a str>),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Bytes.
    Bytes(&'a [u8]),
    /// Headers, as the dialect stores them.
    Headers(&'a Headers),
    /// A list of ids, for `IN (...)` or `= ANY(...)`: see
    /// [`Stmt`](crate::Stmt) for how it is bound.
    Ids(&'a [Uuid]),
}

/// What a database supplies to the shared SQL layer.
pub trait Dialect: std::fmt::Debug + Send + Sync + 'static {
    /// The sqlx database.
    type Db: Database<Arguments: sqlx::IntoArguments<Self::Db>>;

    /// The connection as an sqlx executor. Every connection is one; saying
    /// it here, once per dialect, spares generic code the bound on every
    /// function.
    fn executor<'c>(conn: &'c mut Conn<Self>) -> impl Executor<'c, Database = Self::Db> + 'c;

    /// `query` with `arg` bound as its next parameter.
    fn bind<'q>(query: SqlQuery<'q, Self>, arg: Arg<'_>) -> SqlQuery<'q, Self>;

    /// `query` with `ids` bound as one array parameter where the database
    /// has arrays; by default, each id as a parameter of its own (for a
    /// statement with as many placeholders).
    fn bind_ids<'q>(query: SqlQuery<'q, Self>, ids: &[Uuid]) -> SqlQuery<'q, Self> {
        ids.iter().fold(query, |q, id| Self::bind(q, Arg::Id(*id)))
    }

    /// How many rows a statement changed.
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;

    /// Column `name` of `row` as an id.
    ///
    /// # Errors
    ///
    /// [`txmsg_core::Error::Database`] if the column is missing or holds
    /// something else (so for each getter below).
    fn id(row: &SqlRow<Self>, name: &str) -> Result<Uuid>;

    /// Column `name` of `row` as text, `None` for `NULL`.
    ///
    /// # Errors
    ///
    /// As [`id`](Self::id).
    fn text(row: &SqlRow<Self>, name: &str) -> Result<Option<String>>;

    /// Column `name` of `row` as bytes.
    ///
    /// # Errors
    ///
    /// As [`id`](Self::id).
    fn bytes(row: &SqlRow<Self>, name: &str) -> Result<Vec<u8>>;

    /// Column `name` of `row` as a time, `None` for `NULL`.
    ///
    /// # Errors
    ///
    /// As [`id`](Self::id).
    fn time(row: &SqlRow<Self>, name: &str) -> Result<Option<DateTime<Utc>>>;

    /// Column `name` of `row` as an integer (attempts, checks), `None` for
    /// `NULL`.
    ///
    /// # Errors
    ///
    /// As [`id`](Self::id).
    fn int(row: &SqlRow<Self>, name: &str) -> Result<Option<i64>>;

    /// Column `name` of `row` as a count (`COUNT(*)` and sums of counts);
    /// `NULL` and negative values count as zero.
    ///
    /// # Errors
    ///
    /// As [`id`](Self::id).
    fn count(row: &SqlRow<Self>, name: &str) -> Result<u64>;

    /// Column `name` of `row` as headers.
    ///
    /// # Errors
    ///
    /// As [`id`](Self::id), and if the stored value is not a JSON object.
    fn headers(row: &SqlRow<Self>, name: &str) -> Result<Headers>;
}

fn query<'q, D: Dialect>(sql: &SqlStr, args: &[Arg<'_>]) -> SqlQuery<'q, D> {
    args.iter()
        .fold(sqlx::query(sql.clone()), |q, arg| D::bind(q, *arg))
}

/// Runs `sql` with `args` on `conn`; how many rows it changed.
///
/// # Errors
///
/// [`txmsg_core::Error::Database`] if the statement failed.
pub async fn execute<D: Dialect>(
    conn: &mut Conn<D>,
    sql: &SqlStr,
    args: &[Arg<'_>],
) -> Result<u64> {
    let done = query::<D>(sql, args).execute(D::executor(conn)).await?;
    Ok(D::rows_affected(&done))
}

/// Runs `sql` with `args` on `conn`; its first row, if any.
///
/// # Errors
///
/// [`txmsg_core::Error::Database`] if the statement failed.
pub async fn fetch_optional<D: Dialect>(
    conn: &mut Conn<D>,
    sql: &SqlStr,
    args: &[Arg<'_>],
) -> Result<Option<SqlRow<D>>> {
    Ok(query::<D>(sql, args)
        .fetch_optional(D::executor(conn))
        .await?)
}

/// Runs `sql` with `args` on `conn`; every row.
///
/// # Errors
///
/// [`txmsg_core::Error::Database`] if the statement failed.
pub async fn fetch_all<D: Dialect>(
    conn: &mut Conn<D>,
    sql: &SqlStr,
    args: &[Arg<'_>],
) -> Result<Vec<SqlRow<D>>> {
    Ok(query::<D>(sql, args).fetch_all(D::executor(conn)).await?)
}

/// Implements [`Dialect`] for `$dialect` on database `$db` whose driver
/// binds and reads ids (`Uuid`), times (`DateTime<Utc>`), text, bytes and
/// integers natively, as PostgreSQL and MySQL do. Headers are stored as
/// `$headers` (a JSON value or JSON text), written with `$to(&Headers)` and
/// read with `$from($headers) -> Result<Headers>`.
///
/// An optional last argument says how an id list ([`Arg::Ids`]) is bound:
/// `array` (one array parameter, PostgreSQL) or `each` (a parameter per id,
/// the default).
///
/// One definition for such databases, so their dialects cannot drift apart.
#[macro_export]
macro_rules! native_dialect {
    ($dialect:ty, $db:ty, $headers:ty, $to:path, $from:path) => {
        $crate::native_dialect!($dialect, $db, $headers, $to, $from, each);
    };
    ($dialect:ty, $db:ty, $headers:ty, $to:path, $from:path, array) => {
        $crate::native_dialect!(@impl $dialect, $db, $headers, $to, $from,
            fn bind_ids<'q>(
                query: $crate::SqlQuery<'q, Self>,
                ids: &[$crate::__private::uuid::Uuid],
            ) -> $crate::SqlQuery<'q, Self> {
                query.bind(ids.to_vec())
            }
        );
    };
    ($dialect:ty, $db:ty, $headers:ty, $to:path, $from:path, each) => {
        $crate::native_dialect!(@impl $dialect, $db, $headers, $to, $from,);
    };
    (@impl $dialect:ty, $db:ty, $headers:ty, $to:path, $from:path, $($bind_ids:item)?) => {
        impl $crate::Dialect for $dialect {
            type Db = $db;

            fn executor<'c>(
                conn: &'c mut $crate::Conn<Self>,
            ) -> impl $crate::__private::sqlx::Executor<'c, Database = $db> + 'c {
                conn
            }

            fn bind<'q>(
                query: $crate::SqlQuery<'q, Self>,
                arg: $crate::Arg<'_>,
            ) -> $crate::SqlQuery<'q, Self> {
                use $crate::Arg;
                match arg {
                    Arg::Id(id) => query.bind(id),
                    Arg::OptId(id) => query.bind(id),
                    Arg::Time(t) => query.bind(t),
                    Arg::OptTime(t) => query.bind(t),
                    Arg::Text(text) => query.bind(text),
                    Arg::OptText(text) => query.bind(text),
                    Arg::Int(n) => query.bind(n),
                    Arg::Bool(b) => query.bind(b),
                    Arg::Bytes(bytes) => query.bind(bytes),
                    Arg::Headers(headers) => query.bind($to(headers)),
                    Arg::Ids(ids) => Self::bind_ids(query, ids),
                }
            }

            $($bind_ids)?

            fn rows_affected(
                done: &<$db as $crate::__private::sqlx::Database>::QueryResult,
            ) -> u64 {
                done.rows_affected()
            }

            fn id(
                row: &$crate::SqlRow<Self>,
                name: &str,
            ) -> $crate::__private::txmsg_core::Result<$crate::__private::uuid::Uuid> {
                Ok($crate::__private::sqlx::Row::try_get(row, name)?)
            }

            fn text(
                row: &$crate::SqlRow<Self>,
                name: &str,
            ) -> $crate::__private::txmsg_core::Result<Option<String>> {
                Ok($crate::__private::sqlx::Row::try_get(row, name)?)
            }

            fn bytes(
                row: &$crate::SqlRow<Self>,
                name: &str,
            ) -> $crate::__private::txmsg_core::Result<Vec<u8>> {
                Ok($crate::__private::sqlx::Row::try_get(row, name)?)
            }

            fn time(
                row: &$crate::SqlRow<Self>,
                name: &str,
            ) -> $crate::__private::txmsg_core::Result<
                Option<$crate::__private::chrono::DateTime<$crate::__private::chrono::Utc>>,
            > {
                Ok($crate::__private::sqlx::Row::try_get(row, name)?)
            }

            fn int(
                row: &$crate::SqlRow<Self>,
                name: &str,
            ) -> $crate::__private::txmsg_core::Result<Option<i64>> {
                // The integer columns read through here (attempts, checks)
                // are 32-bit on these databases.
                Ok(
                    $crate::__private::sqlx::Row::try_get::<Option<i32>, _>(row, name)?
                        .map(i64::from),
                )
            }

            fn count(
                row: &$crate::SqlRow<Self>,
                name: &str,
            ) -> $crate::__private::txmsg_core::Result<u64> {
                let n = $crate::__private::sqlx::Row::try_get::<Option<i64>, _>(row, name)?;
                Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
            }

            fn headers(
                row: &$crate::SqlRow<Self>,
                name: &str,
            ) -> $crate::__private::txmsg_core::Result<$crate::__private::txmsg_core::Headers> {
                $from($crate::__private::sqlx::Row::try_get::<$headers, _>(
                    row, name,
                )?)
            }
        }
    };
}
