//! The layer the txmsg SQL stores share.
//!
//! A store crate supplies a [`Backend`]: its [`Dialect`] (how its database
//! binds each kind of value ([`Arg`]), reads a column, and counts affected
//! rows), its statements' text ([`Statements`]), how it connects, migrates
//! and claims. Everything written over that is here once, for every SQL
//! store: the store itself ([`TableStore`], which implements every store
//! trait), running statements ([`Stmt`]), reading rows as envelopes and dead
//! letters ([`envelope`], [`dead_letter`], [`consumer_dead_letter`]) and a
//! claim's first rows ([`Heads`]), applying migrations
//! ([`apply_migrations`], under a lock named with [`lock_hash`]), settling
//! half messages ([`settle`]) and the outbox, half-message and inbox
//! writers. A store crate keeps its SQL text and what truly differs between
//! databases.
//!
//! Generic sqlx code usually needs a bound such as `for<'c> &'c mut
//! DB::Connection: Executor<'c>` on every function; [`Dialect::executor`]
//! says it once per dialect instead.

mod claim;
mod connect;
mod dialect;
mod half;
mod migrate;
mod row;
mod stmt;
mod store;
mod template;
mod writer;

pub use claim::Heads;
pub use connect::{address_of, check_scheme, connect_once, connect_options};
pub use dialect::{Arg, Conn, Dialect, SqlQuery, SqlRow, execute, fetch_all, fetch_optional};
pub use half::{SettleSql, settle};
pub use migrate::{
    Migration, Migrations, MigrationsDialect, MigrationsSql, QuotedTables, ScriptTarget, Step,
    apply_migrations, lock_hash, migration_script,
};
pub use row::{
    attempts_to_int, consumer_dead_letter, dead_letter, envelope, headers_from_json,
    headers_from_text, headers_to_json, headers_to_text,
};
pub use stmt::{IdList, Stmt};
pub use store::{
    Backend, DEFAULT_MAX_CONNECTIONS, InboxStatements, Notifying, OwnStatements, Purge, Statements,
    StoreConfig, TableStore, read_claimed,
};
pub use template::Template;
pub use writer::{
    OutboxInsert, SqlHalfWriter, SqlInbox, SqlOutboxWriter, first_held, inserted_with_commit,
    needs_key_check, outbox_args, repeated_key, run_script,
};

#[doc(hidden)]
pub mod __private {
    pub use chrono;
    pub use sqlx;
    pub use txmsg_core;
    pub use uuid;
}
