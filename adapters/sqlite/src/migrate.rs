//! Versioned migrations.
//!
//! Each version is applied once, recorded in the migrations table, and all
//! pending versions run in one `BEGIN IMMEDIATE` transaction: two processes
//! migrating at once serialize, and the second finds nothing left to do.
//! A later version is one more entry at the end of [`MIGRATIONS`].

use sqlx::{SqlStr, SqlitePool};
use txmsg_core::Result;

use crate::dialect::SqliteBackend;

use crate::sql::{Names, Sql};

/// One schema version. Statements use the `{outbox}`, `{inbox}`,
/// `{consumer_dead}`, `{outbox_bare}`, `{inbox_bare}` and
/// `{consumer_dead_bare}` placeholders for the table names.
struct Migration {
    version: i64,
    description: &'static str,
    statements: &'static [&'static str],
}

/// Every version, oldest first. Never edit a released entry; add a new one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "outbox and inbox tables",
        statements: &[
            // Ids are UUIDv7 stored as their 16 bytes: SQLite compares blobs with
            // memcmp, so they sort in write order like the uuid type elsewhere,
            // at under half the size of the text form. Times are unix
            // microseconds, always written by the caller, so comparisons are exact.
            r#"CREATE TABLE {outbox} (
            id BLOB NOT NULL PRIMARY KEY,
            topic TEXT NOT NULL,
            "key" TEXT,
            idempotency_key TEXT NOT NULL,
            payload BLOB NOT NULL,
            headers TEXT NOT NULL DEFAULT '{}',
            state TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('prepared', 'pending', 'sent', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL,
            lease_owner BLOB,
            lease_until INTEGER,
            checks INTEGER NOT NULL DEFAULT 0,
            expires_at INTEGER,
            last_error TEXT,
            created_at INTEGER NOT NULL,
            sent_at INTEGER,
            dead_at INTEGER,
            UNIQUE (topic, idempotency_key)
        ) STRICT"#,
            // Pending rows in id order: what the poller scans first.
            r#"CREATE INDEX "{outbox_bare}_pending" ON {outbox} (id) WHERE state = 'pending'"#,
            // Order per key: "is there an earlier pending row of this key" and
            // "the key's next rows" are one seek each, and the claim can visit
            // each key with pending rows once, however many rows it has.
            r#"CREATE INDEX "{outbox_bare}_pending_key" ON {outbox} (topic, "key", id)
            WHERE state = 'pending' AND "key" IS NOT NULL"#,
            r#"CREATE INDEX "{outbox_bare}_pending_keyless" ON {outbox} (id)
            WHERE state = 'pending' AND "key" IS NULL"#,
            // Dead rows park their key.
            r#"CREATE INDEX "{outbox_bare}_dead_key" ON {outbox} (topic, "key", id)
            WHERE state = 'dead'"#,
            // The dead-letter list, oldest first, and retention of sent rows.
            r#"CREATE INDEX "{outbox_bare}_dead" ON {outbox} (dead_at, id) WHERE state = 'dead'"#,
            r#"CREATE INDEX "{outbox_bare}_sent" ON {outbox} (sent_at) WHERE state = 'sent'"#,
            r#"CREATE TABLE {inbox} (
            consumer_group TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            processed_at INTEGER NOT NULL,
            PRIMARY KEY (consumer_group, idempotency_key)
        ) STRICT, WITHOUT ROWID"#,
            r#"CREATE INDEX "{inbox_bare}_processed" ON {inbox} (processed_at)"#,
        ],
    },
    Migration {
        version: 2,
        description: "consumer dead letters",
        statements: &[
            // Retention of inbox keys: in version 1 already, added where
            // missing.
            r#"CREATE INDEX IF NOT EXISTS "{inbox_bare}_processed" ON {inbox} (processed_at)"#,
            // The message as it was delivered: its id (`envelope_id`), topic,
            // key, idempotency key (empty for a message that could not be
            // read), headers and exact payload bytes; why and when the group
            // gave up. A rowid table: payloads may be large.
            r#"CREATE TABLE {consumer_dead} (
                id BLOB NOT NULL PRIMARY KEY,
                consumer_group TEXT NOT NULL,
                topic TEXT NOT NULL,
                "key" TEXT,
                idempotency_key TEXT NOT NULL,
                headers TEXT NOT NULL DEFAULT '{}',
                payload BLOB NOT NULL,
                envelope_id BLOB NOT NULL,
                created_at INTEGER NOT NULL,
                reason TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                dead_at INTEGER NOT NULL
            ) STRICT"#,
            // A group's dead letters, oldest first.
            r#"CREATE INDEX "{consumer_dead_bare}_group" ON {consumer_dead}
                (consumer_group, dead_at, id)"#,
        ],
    },
    Migration {
        version: 3,
        description: "half messages",
        statements: &[
            // Marks a prepared half message. Committing it clears the mark
            // (the row is then an ordinary message); a row that goes dead
            // while prepared keeps it, which is what lets an operator resume it.
            "ALTER TABLE {outbox} ADD COLUMN half INTEGER NOT NULL DEFAULT 0 CHECK (half IN (0, 1))",
            // Prepared rows in id order: what the check-back worker scans.
            r#"CREATE INDEX IF NOT EXISTS "{outbox_bare}_prepared" ON {outbox} (id)
            WHERE state = 'prepared'"#,
        ],
    },
    Migration {
        version: 4,
        description: "inbox keyed by topic",
        statements: &[
            // Idempotency keys are unique per topic, so the inbox key is
            // (group, topic, idempotency key). SQLite cannot change a
            // primary key: the table is rebuilt. Keys recorded before keep
            // an empty topic and count for every topic until purged.
            r#"CREATE TABLE "{inbox_bare}_v4" (
            consumer_group TEXT NOT NULL,
            topic TEXT NOT NULL DEFAULT '',
            idempotency_key TEXT NOT NULL,
            processed_at INTEGER NOT NULL,
            PRIMARY KEY (consumer_group, topic, idempotency_key)
        ) STRICT, WITHOUT ROWID"#,
            r#"INSERT INTO "{inbox_bare}_v4" (consumer_group, topic, idempotency_key, processed_at)
            SELECT consumer_group, '', idempotency_key, processed_at FROM {inbox}"#,
            "DROP TABLE {inbox}",
            r#"ALTER TABLE "{inbox_bare}_v4" RENAME TO {inbox}"#,
            r#"CREATE INDEX "{inbox_bare}_processed" ON {inbox} (processed_at)"#,
        ],
    },
];

/// A migration with the table names filled in.
pub(crate) type Rendered = txmsg_sql::Migration<SqlStr>;

/// Renders every migration for `names`.
pub(crate) fn render(names: &Names) -> Vec<Rendered> {
    MIGRATIONS
        .iter()
        .map(|m| Rendered {
            version: m.version,
            description: m.description,
            steps: m.statements.iter().map(|s| names.render(s)).collect(),
        })
        .collect()
}

/// Applies the versions not yet recorded, in one `BEGIN IMMEDIATE`
/// transaction: SQLite's write lock keeps concurrent calls apart.
pub(crate) async fn run(pool: &SqlitePool, sql: &Sql, migrations: &[Rendered]) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    txmsg_sql::apply_migrations::<SqliteBackend, _>(
        &mut tx,
        &sql.own.migrations,
        migrations,
        "txmsg-sqlite",
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sqlx::sqlite::SqlitePoolOptions;
    use txmsg_core::Tables;

    use super::*;
    use crate::sql::with_names;

    /// An empty in-memory database, its statements and its migrations.
    async fn fresh() -> (SqlitePool, Sql, Vec<Rendered>) {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let names = Names::new(&Tables::default()).unwrap();
        (pool, with_names(&names), render(&names))
    }

    #[tokio::test]
    async fn misnumbered_migrations_are_refused_before_anything_runs() {
        let (pool, sql, migrations) = fresh().await;
        let err = run(&pool, &sql, &migrations[1..]).await.unwrap_err();
        let shown = txmsg_core::__private::error_chain(&err);
        assert!(shown.contains("is number 1 but has version 2"), "{shown}");
        let tables: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(tables, 0, "nothing was created");
    }

    #[tokio::test]
    async fn version_2_upgrades_a_version_1_database_keeping_its_rows() {
        let (pool, sql, migrations) = fresh().await;
        run(&pool, &sql, &migrations[..1]).await.unwrap();
        sqlx::query(
            "INSERT INTO txmsg_outbox (id, topic, idempotency_key, payload, next_attempt_at, created_at) \
             VALUES (x'01', 't', 'k', x'31', 1, 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO txmsg_inbox (consumer_group, idempotency_key, processed_at) VALUES ('g', 'k', 1)",
        )
        .execute(&pool)
        .await
        .unwrap();

        run(&pool, &sql, &migrations).await.unwrap();
        run(&pool, &sql, &migrations).await.unwrap();
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM txmsg_migrations ORDER BY version")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(versions, [1, 2, 3, 4]);
        let count = |table: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {table}"
                )))
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        assert_eq!(count("txmsg_outbox").await, 1);
        assert_eq!(count("txmsg_inbox").await, 1);
        assert_eq!(count("txmsg_consumer_dead").await, 0);
    }
}
