//! MySQL and MariaDB as a [`Dialect`](txmsg_sql::Dialect) of the shared SQL
//! layer: ids as 16-byte binaries, times as DATETIME(6) in UTC, headers as
//! JSON text.

use sqlx::MySql;

/// MySQL and MariaDB as a backend of the shared SQL store:
/// [`MySqlStore`](crate::MySqlStore) is a
/// [`TableStore`](txmsg_sql::TableStore) over it.
#[derive(Debug)]
pub struct MySqlBackend;

txmsg_sql::native_dialect!(
    MySqlBackend,
    MySql,
    String,
    txmsg_sql::headers_to_text,
    txmsg_sql::headers_from_text
);
