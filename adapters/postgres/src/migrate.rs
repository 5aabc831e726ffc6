//! Versioned migrations of the outbox and inbox tables.
//!
//! Each migration is a SQL template whose placeholders (`{outbox}`, `{inbox}`,
//! `{consumer_dead}` and the index names) are replaced with the configured,
//! validated and quoted names when the store is built. A new version is one
//! more entry at the end of [`MIGRATIONS`]; a shipped entry is never edited.

use sqlx::PgPool;
use txmsg_core::Result;

use crate::dialect::PgBackend;
use crate::sql::Sql;

/// One migration.
#[derive(Debug)]
pub(crate) struct Migration {
    /// Version, increasing from 1.
    pub(crate) version: i32,
    /// What it does, recorded in the migrations table.
    pub(crate) description: &'static str,
    /// SQL template, possibly several statements.
    pub(crate) sql: &'static str,
}

/// Every migration, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "outbox and inbox tables",
        sql: V1_OUTBOX_AND_INBOX,
    },
    Migration {
        version: 2,
        description: "consumer dead letters",
        sql: V2_CONSUMER_DEAD,
    },
    Migration {
        version: 3,
        description: "half messages",
        sql: V3_HALF_MESSAGES,
    },
    Migration {
        version: 4,
        description: "outbox fillfactor 50",
        sql: V4_OUTBOX_FILLFACTOR,
    },
    Migration {
        version: 5,
        description: "inbox keyed by topic",
        sql: V5_INBOX_TOPIC,
    },
    Migration {
        version: 6,
        description: "idempotency keys of log capture",
        sql: V6_LOG_KEYS,
    },
    Migration {
        version: 7,
        description: "log capture keys by time, for their purge",
        sql: V7_LOG_KEYS_CREATED,
    },
];

// The poller's index is on `id` rather than `next_attempt_at`: a claim reads
// pending rows in id order and stops at its limit, while an index on the due
// time would make it check and sort every due row of a backlog first.
const V1_OUTBOX_AND_INBOX: &str = "
CREATE TABLE {outbox} (
    id uuid PRIMARY KEY,
    topic text NOT NULL,
    key text NULL,
    idempotency_key text NOT NULL,
    payload bytea NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}',
    state text NOT NULL CHECK (state IN ('prepared', 'pending', 'sent', 'dead')),
    attempts int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    lease_owner uuid NULL,
    lease_until timestamptz NULL,
    checks int NOT NULL DEFAULT 0,
    expires_at timestamptz NULL,
    last_error text NULL,
    created_at timestamptz NOT NULL,
    sent_at timestamptz NULL,
    dead_at timestamptz NULL,
    UNIQUE (topic, idempotency_key)
);
CREATE INDEX {outbox_pending_idx} ON {outbox} (id) WHERE state = 'pending';
CREATE INDEX {outbox_key_idx} ON {outbox} (topic, key, id) WHERE state IN ('pending', 'dead');
CREATE TABLE {inbox} (
    consumer_group text NOT NULL,
    idempotency_key text NOT NULL,
    processed_at timestamptz NOT NULL,
    PRIMARY KEY (consumer_group, idempotency_key)
);
CREATE INDEX {inbox_processed_idx} ON {inbox} (processed_at);
";

// The inbox's retention index is in version 1 already; `IF NOT EXISTS` adds it
// to tables that lack it. Dead letters keep the message as it was delivered:
// its id (`envelope_id`), topic, key, idempotency key (empty for a message
// that could not be read), headers and exact payload bytes.
const V2_CONSUMER_DEAD: &str = "
CREATE INDEX IF NOT EXISTS {inbox_processed_idx} ON {inbox} (processed_at);
CREATE TABLE {consumer_dead} (
    id uuid PRIMARY KEY,
    consumer_group text NOT NULL,
    topic text NOT NULL,
    key text NULL,
    idempotency_key text NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}',
    payload bytea NOT NULL,
    envelope_id uuid NOT NULL,
    created_at timestamptz NOT NULL,
    reason text NOT NULL,
    attempts int NOT NULL DEFAULT 0,
    dead_at timestamptz NOT NULL
);
CREATE INDEX {consumer_dead_idx} ON {consumer_dead} (consumer_group, dead_at, id);
";

// `half` marks a prepared half message. Committing it clears the mark (the
// row is then an ordinary message); a row that goes dead while prepared keeps
// it, which is what lets an operator resume it. The check-back worker reads
// prepared rows in id order, as the poller reads pending ones.
const V3_HALF_MESSAGES: &str = "
ALTER TABLE {outbox} ADD COLUMN IF NOT EXISTS half boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS {outbox_prepared_idx} ON {outbox} (id) WHERE state = 'prepared';
";

// A claim leases each row it takes (`lease_owner`, `lease_until`, neither of
// them indexed). With room left on the row's page PostgreSQL makes that a HOT
// update: a new row version on the same page and no new index entries. On
// full pages (the default fillfactor, 100) every lease wrote one entry into
// each of the table's four indexes. Measured on 100 000 pending rows drained
// in claims of 500: 91 % of the lease updates were HOT at 50, 40 % at 70, 2 %
// at 100, and the relay drained 11 % faster at 50 than at 100 (95 % interval
// 4 to 18 %, BENCHMARKS.md). The cost is space: pages are filled to half when
// rows are inserted. Changing the setting only takes a brief lock and applies
// to pages filled from then on.
const V4_OUTBOX_FILLFACTOR: &str = "
ALTER TABLE {outbox} SET (fillfactor = 50);
";

// Idempotency keys are unique per topic, so the inbox key is (group, topic,
// idempotency key). Keys recorded before keep an empty topic and count for
// every topic (the record statement looks for them too) until retention
// purges them. The primary key's name depends on how the table was created,
// so it is looked up. Adding a column with a constant default rewrites
// nothing; the new primary key index is built once.
const V5_INBOX_TOPIC: &str = "
ALTER TABLE {inbox} ADD COLUMN IF NOT EXISTS topic text NOT NULL DEFAULT '';
DO $txmsg$
DECLARE pk text;
BEGIN
    SELECT conname INTO pk FROM pg_constraint
    WHERE conrelid = '{inbox}'::regclass AND contype = 'p';
    IF pk IS NOT NULL THEN
        EXECUTE format('ALTER TABLE {inbox} DROP CONSTRAINT %I', pk);
    END IF;
END
$txmsg$;
ALTER TABLE {inbox} ADD PRIMARY KEY (consumer_group, topic, idempotency_key);
";

/// Applies the migrations not yet recorded, all in one transaction.
///
/// The transaction first takes an advisory lock derived from the migrations
/// table's name, so concurrent calls (several processes starting at once) run
/// one after the other, and the later ones find nothing left to do.
pub(crate) async fn migrate(pool: &PgPool, sql: &Sql) -> Result<()> {
    let sql = &sql.own;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(sql.migrate_lock_key())
        .execute(&mut *tx)
        .await?;
    if let Some((schema, create)) = &sql.migrations.create_schema {
        // Checked first: CREATE SCHEMA IF NOT EXISTS needs the CREATE right on
        // the database even when the schema is already there.
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema)
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            sqlx::query(create.clone()).execute(&mut *tx).await?;
        }
    }
    sql.migrations
        .apply::<PgBackend>(&mut tx, "txmsg-postgres")
        .await?;
    tx.commit().await?;
    Ok(())
}

// Log capture writes no outbox row; a message with an idempotency key of its
// own writes the key here, so that a repeated one is refused as in the
// outbox. Plain `CREATE TABLE`: a table of the user's of that name is an
// error at migrate, never taken over.
const V6_LOG_KEYS: &str = "
CREATE TABLE {outbox_keys} (
    topic text NOT NULL,
    idempotency_key text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (topic, idempotency_key)
);
";

// The log relay purges keys past their retention, oldest first.
const V7_LOG_KEYS_CREATED: &str = "
CREATE INDEX {outbox_keys_created_idx} ON {outbox_keys} (created_at);
";
