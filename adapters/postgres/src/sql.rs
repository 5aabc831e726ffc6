//! Every SQL statement of the store, rendered once from validated table names.
//!
//! Table, schema and index names come from [`Tables`], whose identifiers are
//! validated (ASCII letters, digits, `_`) and are quoted here; every value is a
//! bind parameter. That is what makes the `AssertSqlSafe` wrappers around these
//! strings sound.

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};
use txmsg_core::{Ident, MAX_IDENT_LEN, Result, Tables};
use txmsg_sql::{
    InboxStatements, Migrations, MigrationsDialect, OutboxInsert, OwnStatements, QuotedTables,
    SettleSql, Statements, Stmt,
};

use crate::migrate::MIGRATIONS;

/// Columns an [`Envelope`](txmsg_core::Envelope) is read from, in this order.
const ENVELOPE_COLUMNS: &str =
    "id, topic, key, idempotency_key, payload, headers, attempts, created_at, expires_at";

/// Columns a [`ConsumerDeadLetter`](txmsg_core::consumer::ConsumerDeadLetter)
/// is read from, in this order.
const CONSUMER_DEAD_COLUMNS: &str = "id, consumer_group, topic, key, idempotency_key, headers, \
     payload, envelope_id, created_at, reason, attempts, dead_at";

/// `sql` as a statement for the shared SQL layer: only validated, quoted
/// table names are formatted into it; values are bound.
fn sql_str(sql: String) -> SqlStr {
    AssertSqlSafe(sql).into_sql_str()
}

/// `sql` as a statement of the shared store.
fn stmt(sql: String) -> Stmt {
    Stmt::new(sql_str(sql))
}

/// A migration, rendered for the configured tables: one script.
pub(crate) type RenderedMigration = txmsg_sql::Migration<SqlStr>;

/// PostgreSQL's migrations table, schema and record statements.
const MIGRATIONS_DIALECT: MigrationsDialect = MigrationsDialect {
    create_schema: "CREATE SCHEMA IF NOT EXISTS {schema}",
    table: "(version int PRIMARY KEY, description text NOT NULL, \
            applied_at timestamptz NOT NULL)",
    record_values: "$1, $2, $3",
    record_suffix: "",
};

/// The statements only PostgreSQL runs: migrations and the claim.
#[derive(Debug)]
pub struct Own {
    /// The migrations, and what runs around them.
    pub(crate) migrations: Migrations<SqlStr>,
    /// The outbox insert sent with `COMMIT`.
    pub(crate) commit_insert: CommitInsert,
    pub(crate) claim_heads: SqlStr,
    pub(crate) claim_followers: SqlStr,
    pub(crate) claim_lease: SqlStr,
}

impl Own {
    /// Key of the advisory lock that serialises migrations on these tables.
    pub(crate) fn migrate_lock_key(&self) -> i64 {
        i64::from_ne_bytes(self.migrations.lock_hash.to_ne_bytes())
    }
}

/// The outbox insert a producer's transaction sends with its `COMMIT`:
/// templates with `$1` to `$10` as [`OutboxInsert::insert`], filled with
/// literals by [`PgOutboxWriter`](crate::writer::PgOutboxWriter).
#[derive(Debug, Clone)]
pub(crate) struct CommitInsert {
    /// In table mode.
    pub(crate) table: TableInserts,
    /// In log capture.
    pub(crate) log: LogInserts,
    /// The tables' schema, as a unique violation names it.
    pub(crate) schema: Option<String>,
}

/// The statements of a commit in table mode.
#[derive(Debug, Clone)]
pub(crate) struct TableInserts {
    /// With the per-key check: returns one row, `leased`.
    pub(crate) checked: String,
    /// Without it, for a row with no key or no lease: returns nothing, as
    /// such a row goes in leased exactly when it has a lease.
    pub(crate) unchecked: String,
    /// $1 topic, $2 idempotency key: whether a row holds them, read after
    /// a unique violation to name the duplicate.
    pub(crate) held: SqlStr,
    /// The outbox table, as a unique violation names it.
    pub(crate) name: String,
}

/// The statements of log capture.
#[derive(Debug, Clone)]
pub(crate) struct LogInserts {
    /// $1 topic, $2 idempotency key, $3 created at. No `ON CONFLICT`: a
    /// repeated key aborts the transaction.
    pub(crate) key_insert: String,
    /// $1 topic, $2 idempotency key: whether a key is taken.
    pub(crate) key_held: SqlStr,
    /// The keys table, as a unique violation names it.
    pub(crate) keys: String,
    /// $1 prefix, $2 record.
    pub(crate) emit: String,
    /// The log relay's dead letters, written to the outbox table.
    pub(crate) dead_insert: String,
    /// The log relay's messages of a parked key, written to the outbox
    /// table as pending rows.
    pub(crate) park_insert: String,
    /// The keys with a pending or dead row in the outbox table.
    pub(crate) parked_keys: String,
    /// Deletes keys written before $1, at most $2.
    pub(crate) keys_purge: String,
}

/// The statements of one store.
pub(crate) type Sql = Statements<Own>;

/// `"<table><suffix>"`, the base shortened so the name fits PostgreSQL's
/// identifier limit instead of being truncated (and colliding) by the server.
fn index_name(table: &Ident, suffix: &str) -> String {
    let name = table.as_str();
    let room = MAX_IDENT_LEN.saturating_sub(suffix.len());
    // Identifiers are ASCII, so any byte offset is a char boundary.
    let base = name.get(..room.min(name.len())).unwrap_or(name);
    format!("\"{base}{suffix}\"")
}

impl OwnStatements for Own {
    /// Every statement of a store on `tables`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `inbox_table` if its name leaves no name for the
    /// consumer dead-letter table.
    fn statements(tables: &Tables) -> Result<Sql> {
        {
            let names = QuotedTables::new(tables, '"')?;
            let o = &names.outbox;
            let cols = ENVELOPE_COLUMNS;
            let returning = ENVELOPE_COLUMNS
                .split(", ")
                .map(|c| format!("o.{c}"))
                .collect::<Vec<_>>()
                .join(", ");
            let dead = &names.consumer_dead_name;

            let keys_name = index_name(tables.outbox(), "_keys");
            let keys = match tables.schema() {
                Some(schema) => format!("\"{schema}\".{keys_name}"),
                None => keys_name.clone(),
            };
            let render = |template: &str| {
                names
                    .render(template)
                    .replace("{outbox_keys}", &keys)
                    .replace(
                        "{outbox_keys_created_idx}",
                        &index_name(tables.outbox(), "_keys_created_idx"),
                    )
                    .replace("{consumer_dead_idx}", &index_name(dead, "_group_idx"))
                    .replace(
                        "{outbox_pending_idx}",
                        &index_name(tables.outbox(), "_pending_idx"),
                    )
                    .replace(
                        "{outbox_prepared_idx}",
                        &index_name(tables.outbox(), "_prepared_idx"),
                    )
                    .replace("{outbox_key_idx}", &index_name(tables.outbox(), "_key_idx"))
                    .replace(
                        "{inbox_processed_idx}",
                        &index_name(tables.inbox(), "_processed_idx"),
                    )
            };
            let migrations = MIGRATIONS
                .iter()
                .map(|m| RenderedMigration {
                    version: i64::from(m.version),
                    description: m.description,
                    steps: vec![sql_str(render(m.sql))],
                })
                .collect();
            // The insert with its per-key check, $1 id, $2 topic, $3 key,
            // $4 idempotency key, $5 payload, $6 headers, $7 created_at,
            // $8 expires_at, $9 lease owner, $10 lease until.
            //
            // The row is leased to $9 unless an earlier row of its key is
            // pending or dead and not $9's: then the poller must publish this
            // one after it, so it goes in unleased.
            let checked = format!(
                "INSERT INTO {o} AS n (id, topic, key, idempotency_key, payload, headers, state, \
                 attempts, next_attempt_at, lease_owner, lease_until, created_at, expires_at) \
                 SELECT $1, $2, $3, $4, $5, $6, 'pending', 0, $7, \
                 CASE WHEN b.blocked THEN NULL ELSE $9::uuid END, \
                 CASE WHEN b.blocked THEN NULL ELSE $10::timestamptz END, \
                 $7, $8 \
                 FROM (SELECT $3::text IS NOT NULL AND EXISTS (\
                   SELECT 1 FROM {o} p \
                   WHERE p.topic = $2 AND p.key = $3 AND p.id < $1 \
                   AND p.state IN ('pending', 'dead') \
                   AND (p.lease_owner IS NULL OR p.lease_owner <> $9)) AS blocked) AS b"
            );
            // The same without its per-key check, for the rows that do not
            // need it: a row without an ordering key has no earlier row to
            // wait for, and a row written without a lease is unleased either
            // way. A plain `VALUES` insert, which PostgreSQL plans and runs
            // for markedly less than the `INSERT ... SELECT` (measured in
            // BENCHMARKS.md).
            let unchecked = format!(
                "INSERT INTO {o} AS n (id, topic, key, idempotency_key, payload, headers, state, \
                 attempts, next_attempt_at, lease_owner, lease_until, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $9, $10, $7, $8)"
            );
            let on_conflict = "ON CONFLICT (topic, idempotency_key) DO NOTHING";
            // Sent with COMMIT: no `ON CONFLICT`, so that a duplicate aborts
            // the transaction; one row, `leased`, and the relays woken
            // (`{wake}`) if it went in unleased.
            let with_commit = |insert: &str| {
                format!(
                    "WITH n AS ({insert} RETURNING n.lease_owner IS NOT NULL AS leased) \
                     SELECT leased::int::int8 AS leased{{wake}} FROM n"
                )
            };
            let commit_insert = CommitInsert {
                table: TableInserts {
                    checked: with_commit(&checked),
                    // Goes in leased whenever it has a lease: nothing to read
                    // back.
                    unchecked: unchecked.clone(),
                    held: sql_str(format!(
                        "SELECT 1 AS held FROM {o} WHERE topic = $1 AND idempotency_key = $2"
                    )),
                    name: tables.outbox().to_string(),
                },
                log: LogInserts {
                    // The key of a message that has one, then the record.
                    // $1 topic, $2 idempotency key, $3 created at.
                    key_insert: format!(
                        "INSERT INTO {keys} (topic, idempotency_key, created_at) VALUES ($1, $2, $3)"
                    ),
                    key_held: sql_str(format!(
                        "SELECT 1 AS held FROM {keys} WHERE topic = $1 AND idempotency_key = $2"
                    )),
                    keys: keys_name.trim_matches('"').to_owned(),
                    // $1 prefix, $2 record.
                    emit: "SELECT pg_logical_emit_message(true, $1, $2)".to_owned(),
                    // $1 id, $2 topic, $3 key, $4 idempotency key, $5 payload,
                    // $6 headers, $7 attempts, $8 created at, $9 expires at,
                    // $10 reason, $11 dead at.
                    dead_insert: format!(
                        "INSERT INTO {o} (id, topic, key, idempotency_key, payload, headers, state, \
                         attempts, next_attempt_at, created_at, expires_at, last_error, dead_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, 'dead', $7, $8, $8, $9, $10, $11) \
                         ON CONFLICT DO NOTHING"
                    ),
                    // $1 id, $2 topic, $3 key, $4 idempotency key, $5 payload,
                    // $6 headers, $7 created at, $8 expires at. Written again
                    // after a crash: the first write stands.
                    park_insert: format!(
                        "INSERT INTO {o} (id, topic, key, idempotency_key, payload, headers, state, \
                         attempts, next_attempt_at, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, now(), $7, $8) \
                         ON CONFLICT DO NOTHING"
                    ),
                    // Picked once (a materialized CTE), skipping keys a
                    // concurrent purge holds, as `purge_sent`.
                    keys_purge: format!(
                        "WITH picked AS MATERIALIZED (\
                           SELECT topic, idempotency_key FROM {keys} WHERE created_at < $1 \
                           LIMIT $2 FOR UPDATE SKIP LOCKED) \
                         DELETE FROM {keys} AS k USING picked \
                         WHERE k.topic = picked.topic AND k.idempotency_key = picked.idempotency_key"
                    ),
                    parked_keys: format!(
                        "SELECT DISTINCT topic, key FROM {o} \
                         WHERE key IS NOT NULL AND state IN ('pending', 'dead')"
                    ),
                },
                schema: tables.schema().map(ToString::to_string),
            };
            let insert = OutboxInsert {
                insert: stmt(format!(
                    "{checked} {on_conflict} \
                     RETURNING (n.lease_owner IS NOT NULL)::int::int8 AS leased"
                )),
                // No `RETURNING`: the affected row count says whether it was
                // a duplicate.
                unchecked: Some(stmt(format!("{unchecked} {on_conflict}"))),
                holder: None,
                // Delivered at commit, and only then; repeats within one
                // transaction are folded into one by PostgreSQL.
                notify: Some(sql_str("SELECT pg_notify($1, '')".to_owned())),
            };
            let own = Own {
                commit_insert,
                migrations: Migrations::new(tables, '"', &MIGRATIONS_DIALECT, migrations),

                // $1 now, $2 dead_parks_key, $3 limit.
                //
                // A head is a due, unleased (or lease-expired) pending row that is
                // first of its key. Locking the heads is what keeps two relays off
                // one key at once: the later rows of a key are only ever claimed
                // as followers of its head, in the transaction that holds the
                // head's row lock, and a concurrent claimer skips the locked head
                // (SKIP LOCKED) while every later row of that key still has the
                // earlier pending row in front of it. After commit the head is
                // leased, so it is still pending and still blocks its key.
                claim_heads: sql_str(format!(
                    "SELECT o.id, o.topic, o.key FROM {o} o \
                     WHERE o.state = 'pending' AND o.next_attempt_at <= $1 \
                     AND (o.lease_until IS NULL OR o.lease_until < $1) \
                     AND (o.key IS NULL OR NOT EXISTS (\
                       SELECT 1 FROM {o} e \
                       WHERE e.topic = o.topic AND e.key = o.key AND e.id < o.id \
                       AND e.state IN ('pending', 'dead') AND (e.state = 'pending' OR $2))) \
                     ORDER BY o.id \
                     LIMIT $3 \
                     FOR UPDATE OF o SKIP LOCKED"
                )),

                // $1 head ids, $2 head topics, $3 head keys, $4 now,
                // $5 dead_parks_key, $6 per-key limit.
                //
                // The rows after each head that could block or follow it, in key
                // order; the caller keeps the unbroken prefix of claimable ones.
                // With dead rows not parking their key they are skipped here.
                claim_followers: sql_str(format!(
                    "SELECT h.id AS head, f.id, f.claimable FROM \
                     unnest($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY AS h(id, topic, key, ord) \
                     CROSS JOIN LATERAL (\
                       SELECT o.id, (o.state = 'pending' AND o.next_attempt_at <= $4 \
                         AND (o.lease_until IS NULL OR o.lease_until < $4)) AS claimable \
                       FROM {o} o \
                       WHERE o.topic = h.topic AND o.key = h.key AND o.id > h.id \
                       AND o.state IN ('pending', 'dead') AND (o.state = 'pending' OR $5) \
                       ORDER BY o.id \
                       LIMIT $6) AS f \
                     ORDER BY h.ord, f.id"
                )),

                // $1 ids, $2 owner, $3 until, $4 now.
                //
                // The conditions are checked again: a follower is not locked
                // before this statement, and its last owner may have finished it
                // meanwhile.
                claim_lease: sql_str(format!(
                    "UPDATE {o} SET lease_owner = $2, lease_until = $3 \
                     WHERE id = ANY($1) AND state = 'pending' \
                     AND (lease_until IS NULL OR lease_until < $4) \
                     RETURNING {cols}"
                )),
            };
            Ok(Statements {
                own,
                insert,
                inbox: inbox_statements(&names.inbox, &names.consumer_dead),
                prepare_holder: None,
                mark_sent: stmt(format!(
                    "UPDATE {o} SET state = 'sent', sent_at = $2, lease_owner = NULL, lease_until = NULL \
                     WHERE id = ANY($1) AND state = 'pending'"
                )),

                mark_failed: stmt(format!(
                    "UPDATE {o} SET attempts = attempts + 1, next_attempt_at = $3, last_error = $4, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE id = $1 AND lease_owner = $2 AND state = 'pending'"
                )),

                mark_dead: stmt(format!(
                    "UPDATE {o} SET state = 'dead', last_error = $3, dead_at = $4, \
                     attempts = CASE WHEN state = 'pending' THEN attempts + 1 ELSE attempts END, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE id = $1 AND state IN ('pending', 'prepared') \
                     AND (lease_owner = $2 OR lease_owner IS NULL)"
                )),

                release: stmt(format!(
                    "UPDATE {o} SET lease_owner = NULL, lease_until = NULL \
                     WHERE id = ANY($1) AND lease_owner = $2 AND state = 'pending'"
                )),

                // $1 topic or NULL, $2 key or NULL, $3 limit.
                dead_letters: stmt(format!(
                    "SELECT {cols}, last_error, dead_at FROM {o} \
                     WHERE state = 'dead' \
                     AND ($1::text IS NULL OR topic = $1) \
                     AND ($2::text IS NULL OR key = $2) \
                     ORDER BY dead_at, id \
                     LIMIT $3"
                )),

                // Replaying a dead half message delivers it: it is an ordinary
                // message from then on, so it loses its half mark.
                replay: stmt(format!(
                    "UPDATE {o} SET state = 'pending', attempts = 0, next_attempt_at = $2, \
                     lease_owner = NULL, lease_until = NULL, dead_at = NULL, half = false \
                     WHERE id = $1 AND state = 'dead'"
                )),

                // No ORDER BY: the first matching rows found are as good as any,
                // and sorting would read every sent row. SKIP LOCKED keeps the
                // purge from waiting on anything else. A materialized CTE is
                // evaluated once: a subquery under `IN` may run again and delete
                // more than the limit.
                purge_sent: stmt(format!(
                    "WITH picked AS MATERIALIZED (\
                       SELECT id FROM {o} WHERE state = 'sent' AND sent_at < $1 \
                       LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     DELETE FROM {o} AS o USING picked WHERE o.id = picked.id"
                )),

                stats: stmt(format!(
                    "SELECT count(*) FILTER (WHERE state = 'pending') AS pending, \
                     min(created_at) FILTER (WHERE state = 'pending') AS oldest, \
                     count(*) FILTER (WHERE state = 'dead') AS dead, \
                     count(*) FILTER (WHERE state = 'sent') AS sent, \
                     count(*) FILTER (WHERE state = 'prepared') AS prepared \
                     FROM {o}"
                )),

                // $1 sent since. Every row is read: for operators only.
                topic_stats: stmt(format!(
                    "SELECT topic, \
                     count(*) FILTER (WHERE state = 'pending') AS pending, \
                     count(*) FILTER (WHERE state = 'prepared') AS prepared, \
                     min(created_at) FILTER (WHERE state = 'pending') AS oldest, \
                     count(*) FILTER (WHERE state = 'dead') AS dead, \
                     count(*) FILTER (WHERE state = 'sent' AND sent_at >= $1) AS sent_since \
                     FROM {o} GROUP BY topic ORDER BY topic"
                )),

                // From the partial index of pending rows.
                pending_by_topic: stmt(format!(
                    "SELECT topic, count(*) AS pending, min(created_at) AS oldest \
                     FROM {o} WHERE state = 'pending' GROUP BY topic ORDER BY topic"
                )),

                // $1 id.
                dead_letter: stmt(format!(
                    "SELECT {cols}, last_error, dead_at FROM {o} WHERE id = $1 AND state = 'dead'"
                )),

                // $1 topic or NULL, $2 key or NULL, $3 dead before, $4 limit.
                // SKIP LOCKED, as `purge_sent`. The rows are picked in a
                // materialized CTE, evaluated once, as in `claim_prepared`: a
                // subquery under `IN` may run again and go past its limit.
                purge_dead: stmt(format!(
                    "WITH picked AS MATERIALIZED (\
                       SELECT id FROM {o} WHERE state = 'dead' \
                       AND ($1::text IS NULL OR topic = $1) \
                       AND ($2::text IS NULL OR key = $2) \
                       AND COALESCE(dead_at, created_at) < $3 \
                       ORDER BY dead_at, id \
                       LIMIT $4 FOR UPDATE SKIP LOCKED) \
                     DELETE FROM {o} AS o USING picked \
                     WHERE o.id = picked.id AND o.state = 'dead'"
                )),

                // $1 id, $2 topic, $3 key, $4 idempotency key, $5 payload,
                // $6 headers, $7 created_at, $8 expires_at, $9 first check at.
                // Not leased: only the check-back worker leases prepared rows.
                prepare: sql_str(format!(
                    "INSERT INTO {o} (id, topic, key, idempotency_key, payload, headers, state, \
                     attempts, next_attempt_at, checks, half, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'prepared', 0, $7, 0, true, $8, $9) \
                     ON CONFLICT (topic, idempotency_key) DO NOTHING"
                )),

                // $1 now, $2 id. The fence: only a row that is still prepared.
                settle: SettleSql {
                    commit: sql_str(format!(
                        "UPDATE {o} SET state = 'pending', next_attempt_at = $1, \
                         lease_owner = NULL, lease_until = NULL, half = false \
                         WHERE id = $2 AND state = 'prepared'"
                    )),
                    rollback: sql_str(format!(
                        "DELETE FROM {o} WHERE id = $1 AND state = 'prepared'"
                    )),
                    state_of: sql_str(format!("SELECT state FROM {o} WHERE id = $1")),
                    // Wakes relays of other processes, when a channel is set.
                    after_commit: Some(sql_str("SELECT pg_notify($1, '')".to_owned())),
                },

                // $1 owner, $2 until, $3 now, $4 limit. One statement, so one
                // transaction: SKIP LOCKED keeps concurrent workers apart. The
                // rows are picked in a materialized CTE, evaluated once: a
                // subquery under `IN` may be planned so that it runs again and
                // goes past its limit.
                claim_prepared: stmt(format!(
                    "WITH picked AS MATERIALIZED (\
                       SELECT id FROM {o} \
                       WHERE state = 'prepared' AND next_attempt_at <= $3 \
                       AND (lease_until IS NULL OR lease_until < $3) \
                       ORDER BY id \
                       LIMIT $4 \
                       FOR UPDATE SKIP LOCKED) \
                     UPDATE {o} AS o SET lease_owner = $1, lease_until = $2 \
                     FROM picked WHERE o.id = picked.id \
                     RETURNING {returning}, o.checks"
                )),

                // $1 id, $2 owner, $3 next check at, $4 checks to add (0 or 1).
                record_check: stmt(format!(
                    "UPDATE {o} SET checks = checks + $4, next_attempt_at = $3, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE id = $1 AND lease_owner = $2 AND state = 'prepared'"
                )),

                // $1 id, $2 owner, $3 reason, $4 at.
                mark_prepared_dead: stmt(format!(
                    "UPDATE {o} SET state = 'dead', last_error = $3, dead_at = $4, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE id = $1 AND lease_owner = $2 AND state = 'prepared'"
                )),

                // $1 id, $2 first check at. Only a half message that went dead
                // while prepared.
                resume: stmt(format!(
                    "UPDATE {o} SET state = 'prepared', checks = 0, next_attempt_at = $2, \
                     lease_owner = NULL, lease_until = NULL, dead_at = NULL \
                     WHERE id = $1 AND state = 'dead' AND half"
                )),
            })
        }
    }
}

/// Statements on the inbox table `i` and the dead-letter table `d`, both
/// qualified and quoted.
fn inbox_statements(i: &str, d: &str) -> InboxStatements {
    {
        let cols = CONSUMER_DEAD_COLUMNS;
        InboxStatements {
            // $1 group, $2 topic, $3 idempotency key, $4 processed at.
            //
            // `ON CONFLICT DO NOTHING` rather than catching the unique
            // violation, which would abort the handler's transaction. A
            // concurrent transaction that inserted the same key holds its
            // index entry: this insert waits for it to end, then inserts (it
            // rolled back) or does nothing (it committed). A key recorded
            // before the inbox kept topics (empty topic) counts for every
            // topic: one more primary-key probe, a plain (non-locking) read.
            // No such key is written any more, so the probe cannot race.
            record: sql_str(format!(
                "INSERT INTO {i} (consumer_group, topic, idempotency_key, processed_at) \
                 SELECT $1::text, $2::text, $3::text, $4::timestamptz \
                 WHERE NOT EXISTS (SELECT 1 FROM {i} \
                   WHERE consumer_group = $1 AND topic = '' AND idempotency_key = $3) \
                 ON CONFLICT (consumer_group, topic, idempotency_key) DO NOTHING"
            )),

            remove_dead: sql_str(format!("DELETE FROM {d} WHERE id = $1")),

            // $1 id, $2 group, $3 topic, $4 key, $5 idempotency key,
            // $6 headers, $7 payload, $8 envelope id, $9 created at,
            // $10 reason, $11 attempts, $12 dead at. Adding the same dead
            // letter twice (a retry after a lost reply) keeps the first.
            add_dead: stmt(format!(
                "INSERT INTO {d} ({cols}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (id) DO NOTHING"
            )),

            // $1 group, $2 topic or NULL, $3 key or NULL, $4 limit.
            dead_letters: stmt(format!(
                "SELECT {cols} FROM {d} \
                 WHERE consumer_group = $1 \
                 AND ($2::text IS NULL OR topic = $2) \
                 AND ($3::text IS NULL OR key = $3) \
                 ORDER BY dead_at, id \
                 LIMIT $4"
            )),

            // $1 group, $2 id.
            dead_letter: stmt(format!(
                "SELECT {cols} FROM {d} WHERE consumer_group = $1 AND id = $2"
            )),

            dead_groups: stmt(format!(
                "SELECT consumer_group, count(*) AS n FROM {d} \
                 GROUP BY consumer_group ORDER BY consumer_group"
            )),

            // $1 group, $2 processed before.
            count: stmt(format!(
                "SELECT count(*) AS n FROM {i} WHERE consumer_group = $1 AND processed_at < $2"
            )),

            // $1 processed before, $2 limit, $3 group. As `purge_sent`: no ORDER BY,
            // and SKIP LOCKED so the purge never waits on a handler.
            // Materialized for the same reason.
            purge: stmt(format!(
                "WITH picked AS MATERIALIZED (\
                   SELECT consumer_group, topic, idempotency_key FROM {i} \
                   WHERE consumer_group = $3 AND processed_at < $1 \
                   LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 DELETE FROM {i} AS i USING picked \
                 WHERE i.consumer_group = picked.consumer_group \
                   AND i.topic = picked.topic \
                   AND i.idempotency_key = picked.idempotency_key"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_fit_the_identifier_limit() {
        let long = Ident::new(&"t".repeat(MAX_IDENT_LEN)).unwrap();
        let name = index_name(&long, "_pending_idx");
        assert_eq!(name.len(), MAX_IDENT_LEN + 2);
        assert!(name.ends_with("_pending_idx\""));
        assert_eq!(
            index_name(&Ident::new("o").unwrap(), "_key_idx"),
            "\"o_key_idx\""
        );
    }

    /// The statements of the tables `outbox` and `inbox` in schema `app`.
    fn in_app(outbox: &str, inbox: &str) -> Sql {
        let tables = Tables::default()
            .with_schema("app")
            .unwrap()
            .with_outbox(outbox)
            .unwrap()
            .with_inbox(inbox)
            .unwrap();
        Own::statements(&tables).unwrap()
    }

    /// The script of migration `version`, checked to be the one at its place.
    fn migration(sql: &Sql, version: i64) -> &str {
        let m = &sql.own.migrations.list[usize::try_from(version - 1).unwrap()];
        assert_eq!(m.version, version);
        m.steps[0].as_str()
    }

    /// Asserts that the migration script `text` holds every one of `names`
    /// and none of the template's `placeholders`.
    fn assert_rendered(text: &str, names: &[&str], placeholders: &[&str]) {
        for name in names {
            assert!(text.contains(name), "{name} in {text}");
        }
        for placeholder in placeholders {
            assert!(!text.contains(placeholder), "{placeholder} in {text}");
        }
    }

    #[test]
    fn statements_use_qualified_quoted_names() {
        let sql = in_app("events", "txmsg_inbox");
        assert!(sql.mark_sent.as_str().contains("\"app\".\"events\""));
        assert_rendered(
            migration(&sql, 1),
            &["\"app\".\"txmsg_inbox\"", "\"events_pending_idx\""],
            &["{outbox}", "{inbox}", "_idx}"],
        );
    }

    #[test]
    fn an_inbox_without_a_name_for_its_dead_letters_is_refused() {
        txmsg_testkit::config::assert_dead_letter_name_clash_refused(Own::statements);
    }

    #[test]
    fn version_2_creates_the_dead_letter_table_beside_the_inbox() {
        let sql = in_app("txmsg_outbox", "events_in");
        assert_rendered(
            migration(&sql, 2),
            &[
                "CREATE TABLE \"app\".\"events_in_dead\"",
                "\"events_in_dead_group_idx\"",
                "IF NOT EXISTS \"events_in_processed_idx\"",
            ],
            &["{inbox", "{consumer_dead", "_idx}"],
        );
        let inbox = &sql.inbox;
        assert!(inbox.record.as_str().contains("\"app\".\"events_in\""));
        assert!(inbox.purge.as_str().contains("SKIP LOCKED"));
    }

    #[test]
    fn version_3_adds_the_half_mark_and_the_prepared_index() {
        let sql = in_app("events", "txmsg_inbox");
        assert_rendered(
            migration(&sql, 3),
            &[
                "ALTER TABLE \"app\".\"events\" ADD COLUMN IF NOT EXISTS half",
                "\"events_prepared_idx\"",
            ],
            &["_idx}"],
        );
        assert!(sql.claim_prepared.as_str().contains("SKIP LOCKED"));
        assert!(sql.mark_dead.as_str().contains("'prepared'"));
    }

    #[test]
    fn lock_key_depends_on_the_tables() {
        let key = |t: &Tables| Own::statements(t).unwrap().own.migrate_lock_key();
        let a = key(&Tables::default());
        let b = key(&Tables::default().with_schema("b").unwrap());
        assert_ne!(a, b);
        assert_eq!(a, key(&Tables::default()));
    }
}
