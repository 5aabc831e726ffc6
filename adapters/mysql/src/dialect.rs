//! MySQL and MariaDB as a [`Dialect`](txmsg_sql::Dialect) of the shared SQL
//! layer: ids as 16-byte binaries, times as DATETIME(6) in UTC, headers as
//! JSON text.

use sqlx::MySql;

/// The bindings of this database.
#[derive(Debug)]
pub(crate) struct MySqlDialect;

txmsg_sql::native_dialect!(
    MySqlDialect,
    MySql,
    String,
    txmsg_sql::headers_to_text,
    txmsg_sql::headers_from_text
);
