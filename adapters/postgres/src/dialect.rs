//! PostgreSQL as a [`Dialect`](txmsg_sql::Dialect) of the shared SQL layer:
//! native uuid and timestamptz, headers as jsonb.

use sqlx::Postgres;

use crate::row::headers_to_json;

/// The bindings of this database.
#[derive(Debug)]
pub(crate) struct PgDialect;

txmsg_sql::native_dialect!(PgDialect, Postgres, headers_to_json);
