//! PostgreSQL as a [`Dialect`](txmsg_sql::Dialect) of the shared SQL layer:
//! native uuid and timestamptz, headers as jsonb.

use sqlx::Postgres;

/// PostgreSQL as a backend of the shared SQL store: [`PgStore`](crate::PgStore)
/// is a [`TableStore`](txmsg_sql::TableStore) over it.
#[derive(Debug)]
pub struct PgBackend;

txmsg_sql::native_dialect!(
    PgBackend,
    Postgres,
    serde_json::Value,
    txmsg_sql::headers_to_json,
    txmsg_sql::headers_from_json,
    array
);
