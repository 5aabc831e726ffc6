//! PostgreSQL as a [`Dialect`](txmsg_sql::Dialect) of the shared SQL layer:
//! native uuid and timestamptz, headers as jsonb.

use sqlx::Postgres;

/// The bindings of this database.
#[derive(Debug)]
pub(crate) struct PgDialect;

txmsg_sql::native_dialect!(
    PgDialect,
    Postgres,
    serde_json::Value,
    txmsg_sql::headers_to_json,
    txmsg_sql::headers_from_json
);
