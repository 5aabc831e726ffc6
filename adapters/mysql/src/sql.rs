//! Every SQL statement of the store, rendered once from validated table names.
//!
//! Table and database names come from [`Tables`], whose identifiers are
//! validated (ASCII letters, digits, `_`) and are quoted here with backticks;
//! every value is a bind parameter. That is what makes the `AssertSqlSafe`
//! wrappers around these strings sound.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};
use txmsg_core::{Result, Tables};
use txmsg_sql::{
    IdList, InboxStatements, Migrations, MigrationsDialect, OutboxInsert, OwnStatements,
    QuotedTables, SettleSql, Statements, Stmt,
};

use crate::migrate::{MIGRATIONS, Step, Table};

/// Columns an [`Envelope`](txmsg_core::Envelope) is read from, in this order.
pub(crate) const ENVELOPE_COLUMNS: &str =
    "id, topic, `key`, idempotency_key, payload, headers, attempts, created_at, expires_at";

/// Columns a [`ConsumerDeadLetter`](txmsg_core::consumer::ConsumerDeadLetter)
/// is read from, in this order.
const CONSUMER_DEAD_COLUMNS: &str = "id, consumer_group, topic, `key`, idempotency_key, headers, \
     payload, envelope_id, created_at, reason, attempts, dead_at";

/// Which argument each `?` of the outbox insert takes, in the logical
/// order: 0 id, 1 topic, 2 key, 3 idempotency key, 4 payload, 5 headers,
/// 6 created at, 7 expires at, 8 lease owner, 9 lease until. The text has
/// id, topic, key, idempotency key, payload, headers, next attempt at
/// (created at), lease owner, lease until, created at, expires at, then for
/// the order check: key, topic, key, id, lease owner.
const INSERT_ORDER: &[usize] = &[0, 1, 2, 3, 4, 5, 6, 8, 9, 6, 7, 2, 1, 2, 0, 8];

/// The placeholder a statement with an id list has where the list goes.
const IDS: &str = "{ids}";

/// `sql` as a statement for the shared SQL layer: only validated, quoted
/// table names are formatted into it; values are bound.
fn sql_str(sql: String) -> SqlStr {
    AssertSqlSafe(sql).into_sql_str()
}

/// One SQL string of this store only, cheap to clone into a query.
#[derive(Debug, Clone)]
pub(crate) struct Text(Arc<str>);

impl Text {
    fn new(sql: String) -> Self {
        Text(sql.into())
    }

    /// The statement for `sqlx::query` and friends.
    ///
    /// Only table names are formatted into the string, validated and quoted;
    /// values are bound.
    pub(crate) fn get(&self) -> AssertSqlSafe<Arc<str>> {
        AssertSqlSafe(Arc::clone(&self.0))
    }

    /// The statement with its `{ids}` list made of `n` pairs of
    /// placeholders `(?, ?)` (at least one), for as many bound pairs.
    pub(crate) fn with_pairs(&self, n: usize) -> AssertSqlSafe<String> {
        let list = vec!["(?, ?)"; n.max(1)].join(", ");
        AssertSqlSafe(self.0.replace(IDS, &list))
    }

    /// The statement with its `{ids}` list made of `n` placeholders (at
    /// least one), for as many bound ids.
    pub(crate) fn with_ids(&self, n: usize) -> AssertSqlSafe<String> {
        let list = vec!["?"; n.max(1)].join(", ");
        AssertSqlSafe(self.0.replace(IDS, &list))
    }
}

/// A step of a migration, rendered for the configured tables.
#[derive(Debug, Clone)]
pub(crate) enum RenderedStep {
    /// A statement that is idempotent by itself.
    Sql(SqlStr),
    /// `then`, unless `exists` (a count in `information_schema` over the
    /// schema, `table` and `name`) finds the column or index already there:
    /// MySQL has no `IF NOT EXISTS` for them.
    Unless {
        exists: &'static str,
        schema: Option<String>,
        table: String,
        name: &'static str,
        then: SqlStr,
    },
}

/// A migration, rendered for the configured tables.
pub(crate) type RenderedMigration = txmsg_sql::Migration<RenderedStep>;

/// Whether a column exists: schema, table, column.
const COLUMN_EXISTS: &str = "SELECT COUNT(*) FROM information_schema.COLUMNS \
     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND COLUMN_NAME = ?";

/// Whether an index exists: schema, table, index.
const INDEX_EXISTS: &str = "SELECT COUNT(*) FROM information_schema.STATISTICS \
     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND INDEX_NAME = ?";

/// MySQL's migrations table, database and record statements. A version
/// recorded twice by racing processes is harmless.
const MIGRATIONS_DIALECT: MigrationsDialect = MigrationsDialect {
    create_schema: "CREATE DATABASE IF NOT EXISTS {schema} \
                    CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
    table: "(version INT NOT NULL PRIMARY KEY, description VARCHAR(255) NOT NULL, \
            applied_at DATETIME(6) NOT NULL) \
            ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    record_values: "?, ?, ?",
    record_suffix: " ON DUPLICATE KEY UPDATE version = version",
};

/// The inbox statements only MySQL runs, and what the inbox learnt of the
/// tables.
#[derive(Debug)]
pub(crate) struct OwnInbox {
    pub(crate) has_legacy_keys: Text,
    pub(crate) is_legacy_key: Text,
    pub(crate) purge_delete: Text,
    /// Groups seen to have no key recorded before the inbox kept topics.
    /// No such key is written any more, so a group stays in the set (until
    /// the next migration), and its records skip the look-up.
    pub(crate) without_legacy_keys: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl OwnStatements for Own {
    /// Every statement of a store on `tables`. MySQL's placeholders are
    /// positional, so each shared statement says which argument fills each.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `inbox_table` if its name leaves no name for the
    /// consumer dead-letter table.
    fn statements(tables: &Tables) -> Result<Sql> {
        let names = QuotedTables::new(tables, '`')?;
        let o = &names.outbox;
        let cols = ENVELOPE_COLUMNS;
        let render = |template: &str| names.render(template);
        let table_name = |table: Table| match table {
            Table::Outbox => tables.outbox().to_string(),
            Table::Inbox => tables.inbox().to_string(),
        };
        let migrations = Migrations::new(
            tables,
            '`',
            &MIGRATIONS_DIALECT,
            MIGRATIONS
                .iter()
                .map(|m| RenderedMigration {
                    version: i64::from(m.version),
                    description: m.description,
                    steps: m
                        .steps
                        .iter()
                        .map(|step| {
                            let unless = |exists, table, name, then: &str| RenderedStep::Unless {
                                exists,
                                schema: tables.schema().map(ToString::to_string),
                                table: table_name(table),
                                name,
                                then: sql_str(render(then)),
                            };
                            match *step {
                                Step::Sql(text) => RenderedStep::Sql(sql_str(render(text))),
                                Step::AddColumn {
                                    table,
                                    column,
                                    alter,
                                } => unless(COLUMN_EXISTS, table, column, alter),
                                Step::AddIndex {
                                    table,
                                    index,
                                    create,
                                } => unless(INDEX_EXISTS, table, index, create),
                            }
                        })
                        .collect(),
                })
                .collect(),
        );
        let (inbox, own_inbox) = inbox_statements(&names.inbox, &names.consumer_dead);

        // 1 topic, 2 idempotency key. The row holding the key, read with
        // a lock so that it is the latest committed version, and whether
        // it is leased.
        let insert = format!(
            "INSERT INTO {o} (id, topic, `key`, idempotency_key, payload, headers, state, \
             attempts, next_attempt_at, lease_owner, lease_until, checks, half, \
             created_at, expires_at) \
             SELECT ?, ?, ?, ?, ?, ?, 'pending', 0, ?, \
             CASE WHEN b.blocked THEN NULL ELSE ? END, \
             CASE WHEN b.blocked THEN NULL ELSE ? END, \
             0, FALSE, ?, ? \
             FROM (SELECT (? IS NOT NULL AND EXISTS (\
               SELECT 1 FROM {o} p \
               WHERE p.topic = ? AND p.`key` = ? AND p.id < ? \
               AND p.state IN ('pending', 'dead') \
               AND (p.lease_owner IS NULL OR p.lease_owner <> ?))) AS blocked) AS b"
        );
        let commit = CommitSql {
            insert: insert.clone(),
            insert_order: INSERT_ORDER,
            leased_of: format!(
                "SELECT CAST(lease_owner IS NOT NULL AS SIGNED) AS leased FROM {o} WHERE id = ?"
            ),
            held: sql_str(format!(
                "SELECT 1 AS held FROM {o} WHERE topic = ? AND idempotency_key = ?"
            )),
        };
        let inserted = sql_str(format!(
            "SELECT id, CAST(lease_owner IS NOT NULL AS SIGNED) AS leased FROM {o} \
                     WHERE topic = ? AND idempotency_key = ? LOCK IN SHARE MODE"
        ));

        Ok(Statements {
            // 1 sent at, then the ids.
            mark_sent: stmt_ids(format!(
                "UPDATE {o} SET state = 'sent', sent_at = ?, lease_owner = NULL, lease_until = NULL \
                     WHERE state = 'pending' AND id IN ({IDS})"
            ))
            .bind_order(&[1, 0]),

            // 1 next attempt at, 2 error, 3 id, 4 owner.
            mark_failed: stmt(format!(
                "UPDATE {o} SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE id = ? AND lease_owner = ? AND state = 'pending'"
            ))
            .bind_order(&[2, 3, 0, 1]),

            // 1 reason, 2 dead at, 3 id, 4 owner.
            mark_dead: stmt(format!(
                // `attempts` first: MySQL assigns left to right, with the new
                // values of the columns already set.
                "UPDATE {o} SET \
                     attempts = CASE WHEN state = 'pending' THEN attempts + 1 ELSE attempts END, \
                     state = 'dead', last_error = ?, dead_at = ?, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE id = ? AND state IN ('pending', 'prepared') \
                     AND (lease_owner = ? OR lease_owner IS NULL)"
            ))
            .bind_order(&[2, 3, 0, 1]),

            // 1 owner, then the ids.
            release: stmt_ids(format!(
                "UPDATE {o} SET lease_owner = NULL, lease_until = NULL \
                     WHERE lease_owner = ? AND state = 'pending' AND id IN ({IDS})"
            ))
            .bind_order(&[1, 0]),

            // 1, 2 topic or NULL, 3, 4 key or NULL, 5 limit.
            dead_letters: stmt(format!(
                "SELECT {cols}, last_error, dead_at FROM {o} \
                     WHERE state = 'dead' \
                     AND (? IS NULL OR topic = ?) \
                     AND (? IS NULL OR `key` = ?) \
                     ORDER BY dead_at, id \
                     LIMIT ?"
            ))
            .bind_order(&[0, 0, 1, 1, 2]),

            // 1 next attempt at, 2 id. Replaying a dead half message delivers
            // it: it is an ordinary message from then on, so it loses its
            // half mark.
            replay: stmt(format!(
                "UPDATE {o} SET state = 'pending', attempts = 0, next_attempt_at = ?, \
                     lease_owner = NULL, lease_until = NULL, dead_at = NULL, half = FALSE \
                     WHERE id = ? AND state = 'dead'"
            ))
            .bind_order(&[1, 0]),

            // 1 before, 2 limit. No ORDER BY: the first matching rows found
            // are as good as any. SKIP LOCKED keeps the purge from waiting on
            // anything else.
            purge_sent: stmt(format!(
                "SELECT id FROM {o} WHERE state = 'sent' AND sent_at < ? \
                     LIMIT ? FOR UPDATE SKIP LOCKED"
            )),

            stats: stmt(format!(
                "SELECT COUNT(CASE WHEN state = 'pending' THEN 1 END) AS pending, \
                     MIN(CASE WHEN state = 'pending' THEN created_at END) AS oldest, \
                     COUNT(CASE WHEN state = 'dead' THEN 1 END) AS dead, \
                     COUNT(CASE WHEN state = 'sent' THEN 1 END) AS sent, \
                     COUNT(CASE WHEN state = 'prepared' THEN 1 END) AS prepared \
                     FROM {o}"
            )),

            // 1 sent since. Every row is read: for operators only.
            topic_stats: stmt(format!(
                "SELECT topic, \
                     COUNT(CASE WHEN state = 'pending' THEN 1 END) AS pending, \
                     COUNT(CASE WHEN state = 'prepared' THEN 1 END) AS prepared, \
                     MIN(CASE WHEN state = 'pending' THEN created_at END) AS oldest, \
                     COUNT(CASE WHEN state = 'dead' THEN 1 END) AS dead, \
                     COUNT(CASE WHEN state = 'sent' AND sent_at >= ? THEN 1 END) AS sent_since \
                     FROM {o} GROUP BY topic ORDER BY topic"
            )),

            // Pending rows only, through the state index.
            pending_by_topic: stmt(format!(
                "SELECT topic, COUNT(*) AS pending, MIN(created_at) AS oldest \
                     FROM {o} WHERE state = 'pending' GROUP BY topic ORDER BY topic"
            )),

            // 1 id.
            dead_letter: stmt(format!(
                "SELECT {cols}, last_error, dead_at FROM {o} WHERE id = ? AND state = 'dead'"
            )),

            // 1, 2 topic or NULL, 3, 4 key or NULL, 5 dead before, 6 limit.
            // SKIP LOCKED, as `purge_sent`.
            purge_dead: stmt(format!(
                "SELECT id FROM {o} WHERE state = 'dead' \
                     AND (? IS NULL OR topic = ?) \
                     AND (? IS NULL OR `key` = ?) \
                     AND COALESCE(dead_at, created_at) < ? \
                     ORDER BY dead_at, id \
                     LIMIT ? FOR UPDATE SKIP LOCKED"
            ))
            .bind_order(&[0, 0, 1, 1, 2, 3]),

            // 1 now, 2 now, 3 limit. SKIP LOCKED keeps concurrent workers
            // apart; the rows are then leased by id (`claim_lease`).
            claim_prepared: stmt(format!(
                "SELECT {cols}, checks FROM {o} \
                     WHERE state = 'prepared' AND next_attempt_at <= ? \
                     AND (lease_until IS NULL OR lease_until < ?) \
                     ORDER BY id \
                     LIMIT ? \
                     FOR UPDATE SKIP LOCKED"
            ))
            .bind_order(&[2, 2, 3]),

            // 1 checks to add (0 or 1), 2 next check at, 3 id, 4 owner.
            record_check: stmt(format!(
                "UPDATE {o} SET checks = checks + ?, next_attempt_at = ?, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE id = ? AND lease_owner = ? AND state = 'prepared'"
            ))
            .bind_order(&[3, 2, 0, 1]),

            // 1 reason, 2 at, 3 id, 4 owner.
            mark_prepared_dead: stmt(format!(
                "UPDATE {o} SET state = 'dead', last_error = ?, dead_at = ?, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE id = ? AND lease_owner = ? AND state = 'prepared'"
            ))
            .bind_order(&[2, 3, 0, 1]),

            // 1 first check at, 2 id. Only a half message that went dead
            // while prepared.
            resume: stmt(format!(
                "UPDATE {o} SET state = 'prepared', checks = 0, next_attempt_at = ?, \
                     lease_owner = NULL, lease_until = NULL, dead_at = NULL \
                     WHERE id = ? AND state = 'dead' AND half"
            ))
            .bind_order(&[1, 0]),
            prepare_holder: Some(inserted.clone()),
            // 1 id, 2 topic, 3 key, 4 idempotency key, 5 payload, 6 headers,
            // 7 first check at, 8 created_at, 9 expires_at.
            // Not leased: only the check-back worker leases prepared rows.
            prepare: sql_str(format!(
                "INSERT INTO {o} (id, topic, `key`, idempotency_key, payload, headers, state, \
                     attempts, next_attempt_at, checks, half, created_at, expires_at) \
                     VALUES (?, ?, ?, ?, ?, ?, 'prepared', 0, ?, 0, TRUE, ?, ?) \
                     ON DUPLICATE KEY UPDATE id = id"
            )),

            // 1 now, 2 id. The fence: only a row that is still prepared.
            settle: SettleSql {
                commit: sql_str(format!(
                    "UPDATE {o} SET state = 'pending', next_attempt_at = ?, \
                         lease_owner = NULL, lease_until = NULL, half = FALSE \
                         WHERE id = ? AND state = 'prepared'"
                )),
                rollback: sql_str(format!(
                    "DELETE FROM {o} WHERE id = ? AND state = 'prepared'"
                )),
                // A locking read: the latest committed state.
                state_of: sql_str(format!(
                    "SELECT state FROM {o} WHERE id = ? LOCK IN SHARE MODE"
                )),
                after_commit: None,
            },

            insert: OutboxInsert {
                // 1 id, 2 topic, 3 key, 4 idempotency key, 5 payload, 6 headers,
                // 7 next attempt at (created at), 8 lease owner, 9 lease until, 10 created at,
                // 11 expires at, then for the order check: 12 key, 13 topic,
                // 14 key, 15 id, 16 lease owner.
                //
                // The row is leased to the owner unless an earlier row of its key
                // is pending or dead and not the owner's: then the poller must
                // publish this one after it, so it goes in unleased. A duplicate
                // (same topic and idempotency key) changes nothing; the driver asks
                // for found rows, so it counts as changed too: `holder` tells
                // them apart by reading which row holds the key. Not `INSERT
                // IGNORE`, which would hide other errors.
                insert: stmt(format!("{insert} ON DUPLICATE KEY UPDATE id = id"))
                    .bind_order(INSERT_ORDER),
                unchecked: None,
                holder: Some(Stmt::new(inserted.clone())),
                notify: None,
            },
            inbox,
            own: Own {
                migrate_lock: format!("txmsg_migrate_{:016x}", migrations.lock_hash),
                migrations,
                inbox: own_inbox,
                commit,

                // 1 now, 2 now, 3 dead_parks_key, 4 limit.
                //
                // A head is a due, unleased (or lease-expired) pending row that is
                // first of its key. This read takes no locks: in MariaDB a locking
                // read with SKIP LOCKED would skip locked rows inside the order
                // check too, and so would take a row whose earlier row another
                // claimer holds for a head. The heads found are locked next
                // (`claim_heads_lock`).
                claim_heads: Text::new(format!(
                    "SELECT o.id FROM {o} o \
                     WHERE o.state = 'pending' AND o.next_attempt_at <= ? \
                     AND (o.lease_until IS NULL OR o.lease_until < ?) \
                     AND (o.`key` IS NULL OR NOT EXISTS (\
                       SELECT 1 FROM {o} e \
                       WHERE e.topic = o.topic AND e.`key` = o.`key` AND e.id < o.id \
                       AND e.state IN ('pending', 'dead') AND (e.state = 'pending' OR ?))) \
                     ORDER BY o.id \
                     LIMIT ?"
                )),

                // 1 now, 2 now, then the head ids. Locking the heads is what keeps
                // two relays off one key at once: the later rows of a key are only
                // ever claimed as followers of its head, in the transaction that
                // holds the head's row lock, and a concurrent claimer skips the
                // locked head (SKIP LOCKED) while every later row of that key
                // still has the earlier pending row in front of it. After commit
                // the head is leased, so it is still pending and still blocks its
                // key. The head's own conditions are checked again under the lock.
                claim_heads_lock: Text::new(format!(
                    "SELECT id, topic, `key` FROM {o} FORCE INDEX (PRIMARY) \
                     WHERE state = 'pending' AND next_attempt_at <= ? \
                     AND (lease_until IS NULL OR lease_until < ?) \
                     AND id IN ({IDS}) \
                     ORDER BY id \
                     FOR UPDATE SKIP LOCKED"
                )),

                // 1 now, 2 now, 3 topic, 4 key, 5 head id, 6 dead_parks_key,
                // 7 per-key limit.
                //
                // The rows after one head that could block or follow it, in key
                // order; the caller keeps the unbroken prefix of claimable ones.
                // With dead rows not parking their key they are skipped here.
                claim_followers: Text::new(format!(
                    "SELECT id, CAST((state = 'pending' AND next_attempt_at <= ? \
                       AND (lease_until IS NULL OR lease_until < ?)) AS SIGNED) AS claimable \
                     FROM {o} \
                     WHERE topic = ? AND `key` = ? AND id > ? \
                     AND state IN ('pending', 'dead') AND (state = 'pending' OR ?) \
                     ORDER BY id \
                     LIMIT ?"
                )),

                // 1 now, then the ids. The conditions are checked again: a
                // follower is not locked before this statement, and its last
                // owner may have finished it meanwhile.
                claim_lock: Text::new(format!(
                    "SELECT {cols} FROM {o} FORCE INDEX (PRIMARY) \
                     WHERE state = 'pending' AND (lease_until IS NULL OR lease_until < ?) \
                     AND id IN ({IDS}) \
                     FOR UPDATE"
                )),

                // 1 owner, 2 until, then the ids (locked by `claim_lock`).
                claim_lease: Text::new(format!(
                    "UPDATE {o} FORCE INDEX (PRIMARY) SET lease_owner = ?, lease_until = ? \
                     WHERE id IN ({IDS})"
                )),

                // The ids picked (and locked) by `purge_sent`.
                purge_delete: Text::new(format!(
                    "DELETE FROM {o} WHERE state = 'sent' AND id IN ({IDS})"
                )),

                // The ids picked (and locked) by `purge_dead_pick`.
                purge_dead_delete: Text::new(format!(
                    "DELETE FROM {o} WHERE state = 'dead' AND id IN ({IDS})"
                )),
            },
        })
    }
}

/// Statements on the inbox table `i` and the dead-letter table `d`, both
/// qualified and quoted: the shared ones and MySQL's own.
fn inbox_statements(i: &str, d: &str) -> (InboxStatements, OwnInbox) {
    let cols = CONSUMER_DEAD_COLUMNS;
    let shared = InboxStatements {
        // 1 group, 2 topic, 3 idempotency key, 4 processed at; see
        // `MySqlInbox::record`.
        //
        // `ON DUPLICATE KEY UPDATE` rather than catching the duplicate
        // key error. A duplicate sets `LAST_INSERT_ID(1)`, which the
        // reply carries as its insert id (0 for an insert: the table has
        // no auto-increment column); the affected-row count cannot tell
        // them apart, as the driver asks for found rows. A concurrent
        // transaction that inserted the same key holds its index entry:
        // this insert waits for it to end, then inserts (it rolled back)
        // or does nothing (it committed).
        record: sql_str(format!(
            "INSERT INTO {i} (consumer_group, topic, idempotency_key, processed_at) \
             VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE \
             processed_at = IF(LAST_INSERT_ID(1) = 1, processed_at, processed_at)"
        )),

        remove_dead: sql_str(format!("DELETE FROM {d} WHERE id = ?")),

        // 1 id, 2 group, 3 topic, 4 key, 5 idempotency key, 6 headers,
        // 7 payload, 8 envelope id, 9 created at, 10 reason, 11 attempts,
        // 12 dead at. Adding the same dead letter twice (a retry after a
        // lost reply) keeps the first.
        add_dead: stmt(format!(
            "INSERT INTO {d} ({cols}) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE id = id"
        )),

        // 1 group, 2, 3 topic or NULL, 4, 5 key or NULL, 6 limit.
        dead_letters: stmt(format!(
            "SELECT {cols} FROM {d} \
             WHERE consumer_group = ? \
             AND (? IS NULL OR topic = ?) \
             AND (? IS NULL OR `key` = ?) \
             ORDER BY dead_at, id \
             LIMIT ?"
        ))
        .bind_order(&[0, 1, 1, 2, 2, 3]),

        // 1 group, 2 id.
        dead_letter: stmt(format!(
            "SELECT {cols} FROM {d} WHERE consumer_group = ? AND id = ?"
        )),

        // 1 group, 2 processed before, 3 limit. Picks the keys to delete
        // (see `MySqlBackend::purge`). As `purge_sent`: no ORDER BY, and
        // SKIP LOCKED so the purge never waits on a handler.
        purge: stmt(format!(
            "SELECT topic, idempotency_key FROM {i} \
             WHERE consumer_group = ? AND processed_at < ? \
             LIMIT ? FOR UPDATE SKIP LOCKED"
        ))
        .bind_order(&[2, 0, 1]),

        dead_groups: stmt(format!(
            "SELECT consumer_group, COUNT(*) AS n FROM {d} \
             GROUP BY consumer_group ORDER BY consumer_group"
        )),

        count: stmt(format!(
            "SELECT COUNT(*) AS n FROM {i} WHERE consumer_group = ? AND processed_at < ?"
        )),
    };
    let own = OwnInbox {
        // 1 group. Whether the group has keys recorded before the inbox
        // kept topics (empty topic). Plain reads: no locks. Such keys
        // are never written again, so once a group has none it never has.
        has_legacy_keys: Text::new(format!(
            "SELECT EXISTS (SELECT 1 FROM {i} WHERE consumer_group = ? AND topic = '')"
        )),

        // 1 group, 2 idempotency key.
        is_legacy_key: Text::new(format!(
            "SELECT EXISTS (SELECT 1 FROM {i} \
             WHERE consumer_group = ? AND topic = '' AND idempotency_key = ?)"
        )),

        // 1 group, then the (topic, key) pairs picked (and locked) by the
        // shared `purge`.
        purge_delete: Text::new(format!(
            "DELETE FROM {i} WHERE consumer_group = ? AND (topic, idempotency_key) IN ({IDS})"
        )),

        without_legacy_keys: std::sync::Mutex::default(),
    };
    (shared, own)
}

/// The statements only MySQL runs, and what the inbox learnt of the tables.
#[derive(Debug)]
pub struct Own {
    /// Name of the `GET_LOCK` lock that serialises migrations on these tables.
    pub(crate) migrate_lock: String,
    /// The migrations, and what runs around them (the database to create is
    /// the schema).
    pub(crate) migrations: Migrations<RenderedStep>,
    /// A claim's first step: the due heads, read without locks.
    pub(crate) claim_heads: Text,
    /// Locks the heads still claimable, skipping those locked elsewhere.
    pub(crate) claim_heads_lock: Text,
    /// The rows after each head of its key.
    pub(crate) claim_followers: Text,
    /// Locks the followers taken.
    pub(crate) claim_lock: Text,
    /// Leases the locked rows.
    pub(crate) claim_lease: Text,
    /// Deletes the sent rows a purge picked.
    pub(crate) purge_delete: Text,
    /// Deletes the dead rows a purge picked.
    pub(crate) purge_dead_delete: Text,
    /// The inbox's own statements and what it learnt of the tables.
    pub(crate) inbox: OwnInbox,
    /// What a transaction's messages are written with `COMMIT` with.
    pub(crate) commit: CommitSql,
}

/// The statements of the messages written with `COMMIT`, as text the
/// writer fills with literals.
#[derive(Debug, Clone)]
pub(crate) struct CommitSql {
    /// The outbox insert without `ON DUPLICATE KEY UPDATE`: a repeated key
    /// is an error, which ends the script before `COMMIT`.
    pub(crate) insert: String,
    /// Which argument (in the logical order) each `?` of `insert` takes.
    pub(crate) insert_order: &'static [usize],
    /// Whether the row of id `?` went in leased, as `leased`.
    pub(crate) leased_of: String,
    /// A committed row with topic `?` and idempotency key `?`, if any.
    pub(crate) held: SqlStr,
}

/// The statements of one store.
pub(crate) type Sql = Statements<Own>;

/// `sql` as a statement of the shared store.
fn stmt(sql: String) -> Stmt {
    Stmt::new(sql_str(sql))
}

/// `sql` as a statement of the shared store with an id list (`{ids}`),
/// prepared for the usual lengths.
fn stmt_ids(sql: String) -> Stmt {
    Stmt::id_list(IdList::new(&IdList::SIZES, |n| {
        sql_str(sql.replace(IDS, &vec!["?"; n].join(", ")))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_use_qualified_quoted_names() {
        let tables = Tables::default()
            .with_schema("app")
            .unwrap()
            .with_outbox("events")
            .unwrap();
        let sql = Own::statements(&tables).unwrap();
        assert!(sql.mark_sent.as_str().contains("`app`.`events`"));
        for m in &sql.own.migrations.list {
            for step in &m.steps {
                let text = match step {
                    RenderedStep::Sql(s) | RenderedStep::Unless { then: s, .. } => s.as_str(),
                };
                assert!(!text.contains('{'), "{text}");
                assert!(!text.contains('"'), "{text}");
            }
        }
        assert!(!sql.insert.insert.as_str().contains("IGNORE"));
    }

    #[test]
    fn id_lists_have_one_placeholder_per_id() {
        let sql = Own::statements(&Tables::default()).unwrap();
        let AssertSqlSafe(text) = sql.own.claim_lease.with_ids(3);
        assert!(text.contains("IN (?, ?, ?)"), "{text}");
        // Shared id lists are prepared for a few lengths; the longest here.
        assert!(sql.mark_sent.as_str().contains("IN (?, ?, ?, ?"));
    }

    #[test]
    fn an_inbox_without_a_name_for_its_dead_letters_is_refused() {
        txmsg_testkit::config::assert_dead_letter_name_clash_refused(Own::statements);
    }

    #[test]
    fn lock_name_depends_on_the_tables_and_fits() {
        let lock = |t: &Tables| Own::statements(t).unwrap().own.migrate_lock;
        let a = lock(&Tables::default());
        let b = lock(&Tables::default().with_schema("b").unwrap());
        assert_ne!(a, b);
        assert!(a.len() <= 64);
        assert_eq!(a, lock(&Tables::default()));
    }
}
