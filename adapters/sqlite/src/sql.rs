//! Every statement the store runs, built once from the validated table names.
//!
//! Table names are [`Ident`]s (ASCII letters, digits and `_`), quoted with
//! `"`; every value is a bind parameter. Nothing else is ever pasted into SQL.
//!
//! The claim statements join with `CROSS JOIN`, which SQLite never reorders:
//! without statistics its planner may otherwise scan the whole outbox in id
//! order rather than look up the few rows a claim is about.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};
use txmsg_core::{Error, Ident, Result, Tables};
use txmsg_sql::{
    IdList, InboxStatements, MigrationsSql, OutboxInsert, OwnStatements, SettleSql, Statements,
    Stmt,
};

use crate::migrate::{self, Rendered};

/// The envelope columns, in the order [`crate::row::envelope`] reads them.
const ENVELOPE_COLUMNS: &str =
    r#"id, topic, "key", idempotency_key, payload, headers, created_at, expires_at, attempts"#;

/// The consumer dead-letter columns, in the order the insert binds them.
const CONSUMER_DEAD_COLUMNS: &str = r#"id, consumer_group, topic, "key", idempotency_key, headers,
    payload, envelope_id, created_at, reason, attempts, dead_at"#;

/// The table names, rendered for SQL.
#[derive(Debug)]
pub(crate) struct Names {
    /// `"outbox"`, quoted.
    outbox: String,
    /// `"inbox"`, quoted.
    inbox: String,
    /// `"migrations"`, quoted.
    migrations: String,
    /// The consumer dead-letter table, quoted.
    consumer_dead: String,
    /// The outbox name unquoted, to prefix index names with.
    outbox_bare: String,
    /// The inbox name unquoted, to prefix index names with.
    inbox_bare: String,
    /// The consumer dead-letter table unquoted, to prefix index names with.
    consumer_dead_bare: String,
}

impl Names {
    /// Renders `tables`, refusing a schema (SQLite has none) and an inbox
    /// name that leaves no name for the consumer dead-letter table (see
    /// [`consumer_dead_table`]).
    pub(crate) fn new(tables: &Tables) -> Result<Self> {
        if let Some(schema) = tables.schema() {
            return Err(Error::config(
                "schema",
                format!(
                    "is not supported by sqlite, which has no schemas (got {schema:?}); \
                     name the tables instead, or use a separate database file"
                ),
            ));
        }
        let consumer_dead = consumer_dead_table(tables)?;
        let quote = |name: &Ident| tables.qualified(name, '"');
        Ok(Names {
            outbox: quote(tables.outbox()),
            inbox: quote(tables.inbox()),
            migrations: quote(tables.migrations()),
            consumer_dead: quote(&consumer_dead),
            outbox_bare: tables.outbox().as_str().to_owned(),
            inbox_bare: tables.inbox().as_str().to_owned(),
            consumer_dead_bare: consumer_dead.as_str().to_owned(),
        })
    }

    /// Fills the `{outbox}`, `{inbox}`, `{migrations}`, `{consumer_dead}`
    /// (quoted names) and `{outbox_bare}`, `{inbox_bare}`,
    /// `{consumer_dead_bare}` (unquoted, for index names) placeholders of
    /// `template`.
    pub(crate) fn render(&self, template: &str) -> SqlStr {
        sql(self.render_text(template))
    }

    fn render_text(&self, template: &str) -> String {
        template
            .replace("{outbox_bare}", &self.outbox_bare)
            .replace("{inbox_bare}", &self.inbox_bare)
            .replace("{consumer_dead_bare}", &self.consumer_dead_bare)
            .replace("{outbox}", &self.outbox)
            .replace("{inbox}", &self.inbox)
            .replace("{migrations}", &self.migrations)
            .replace("{consumer_dead}", &self.consumer_dead)
    }
}

/// The consumer dead-letter table's name: `txmsg_consumer_dead` beside the
/// default inbox table, `<inbox>_dead` beside a renamed one.
///
/// # Errors
///
/// [`Error::Config`] for `inbox_table` if the derived name would be longer
/// than [`MAX_IDENT_LEN`](txmsg_core::MAX_IDENT_LEN) (the limit every store applies, so that one
/// configuration works on all of them), or would be the name of the outbox or
/// migrations table or of the outbox's dead-row index.
fn consumer_dead_table(tables: &Tables) -> Result<Ident> {
    let dead = tables.consumer_dead()?;
    // Tables and indexes share one namespace; the outbox's dead-row index is
    // `<outbox>_dead`.
    if format!("{}_dead", tables.outbox()) == dead.as_str() {
        return Err(Error::config(
            "inbox_table",
            format!(
                "leaves no name for its dead-letter table: `{dead}` is an index of the outbox table"
            ),
        ));
    }
    Ok(dead)
}

/// Wraps a statement built from validated identifiers only.
fn sql(s: String) -> SqlStr {
    // Shared, so cloning a statement for each execution is a reference count.
    AssertSqlSafe(Arc::<str>::from(s)).into_sql_str()
}

/// `head` followed by `(?first, ?first+1, ...)`, prepared for the usual
/// list lengths.
fn id_list(names: &Names, head: &str, first: usize) -> Stmt {
    Stmt::id_list(IdList::new(&IdList::SIZES, |n| {
        let list: Vec<String> = (first..first + n).map(|i| format!("?{i}")).collect();
        names.render(&format!("{head} ({})", list.join(", ")))
    }))
}

/// The statements only SQLite runs: migrations and the claim.
#[derive(Debug)]
pub struct Own {
    /// Claim with heads found in id order ([`HEADS_IN_ID_ORDER`]).
    pub(crate) claim_in_id_order: SqlStr,
    /// Claim with heads found per key ([`HEADS_BY_KEY`]).
    pub(crate) claim_by_key: SqlStr,
    pub(crate) migrations: MigrationsSql,
    pub(crate) rendered: Vec<Rendered>,
}

/// The statements of one store.
pub(crate) type Sql = Statements<Own>;

impl OwnStatements for Own {
    /// Every statement of a store on `tables`.
    ///
    /// # Errors
    ///
    /// As [`Names::new`].
    fn statements(tables: &Tables) -> Result<Sql> {
        let names = Names::new(tables)?;
        Ok(with_names(&names))
    }
}

/// Every statement of a store on the tables `names` names.
pub(crate) fn with_names(names: &Names) -> Sql {
    let stmt = |template: &str| Stmt::new(names.render(template));
    let own = Own {
        claim_in_id_order: names.render(&claim(HEADS_IN_ID_ORDER)),
        claim_by_key: names.render(&claim(HEADS_BY_KEY)),
        migrations: MigrationsSql {
            create: names.render(CREATE_MIGRATIONS),
            applied: names.render("SELECT version FROM {migrations}"),
            record: names.render(
                "INSERT INTO {migrations} (version, description, applied_at) VALUES (?1, ?2, ?3)",
            ),
        },
        rendered: migrate::render(names),
    };
    Statements {
        // One statement: `ON CONFLICT DO NOTHING` leaves the transaction
        // usable when the idempotency key was seen before.
        insert: OutboxInsert {
            insert: stmt(INSERT),
            unchecked: None,
            holder: None,
            notify: None,
        },
        // The list is numbered from `?2`: `?1` is the time or the owner.
        mark_sent: id_list(names, MARK_SENT, 2).bind_order(&[1, 0]),
        mark_failed: stmt(MARK_FAILED),
        mark_dead: stmt(MARK_DEAD),
        release: id_list(names, RELEASE, 2).bind_order(&[1, 0]),
        dead_letters: stmt(&DEAD_LETTERS.replace("{columns}", ENVELOPE_COLUMNS)),
        replay: stmt(REPLAY),
        purge_sent: stmt(PURGE_SENT),
        stats: stmt(STATS),
        topic_stats: stmt(TOPIC_STATS),
        pending_by_topic: stmt(PENDING_BY_TOPIC),
        dead_letter: stmt(&DEAD_LETTER.replace("{columns}", ENVELOPE_COLUMNS)),
        purge_dead: stmt(PURGE_DEAD),
        prepare: names.render(PREPARE),
        prepare_holder: None,
        settle: SettleSql {
            commit: names.render(RESOLVE_COMMIT),
            rollback: names.render(RESOLVE_ROLLBACK),
            state_of: names.render("SELECT state FROM {outbox} WHERE id = ?1"),
            after_commit: None,
        },
        claim_prepared: stmt(&CLAIM_PREPARED.replace("{columns}", ENVELOPE_COLUMNS)),
        record_check: stmt(RECORD_CHECK),
        mark_prepared_dead: stmt(MARK_PREPARED_DEAD),
        resume: stmt(RESUME),
        inbox: InboxStatements {
            record: names.render(INBOX_RECORD),
            remove_dead: names.render("DELETE FROM {consumer_dead} WHERE id = ?1"),
            add_dead: stmt(&CONSUMER_DEAD_ADD.replace("{columns}", CONSUMER_DEAD_COLUMNS)),
            dead_letters: stmt(&CONSUMER_DEAD_LIST.replace("{columns}", CONSUMER_DEAD_COLUMNS)),
            dead_letter: stmt(&CONSUMER_DEAD_GET.replace("{columns}", CONSUMER_DEAD_COLUMNS)),
            purge: stmt(INBOX_PURGE),
            dead_groups: stmt(
                "SELECT consumer_group, count(*) AS n FROM {consumer_dead} \
                 GROUP BY consumer_group ORDER BY consumer_group",
            ),
            count: stmt(
                "SELECT count(*) AS n FROM {inbox} WHERE consumer_group = ?1 AND processed_at < ?2",
            ),
        },
        own,
    }
}

fn claim(heads: &str) -> String {
    CLAIM
        .replace("{heads}", heads)
        .replace("{columns}", ENVELOPE_COLUMNS)
}

/// Inserts a pending row, leased to `?9` until `?10` unless the row has a key
/// and an earlier row of that key is pending or dead without belonging to
/// `?9` (then unleased, so the poller keeps the key's order). A row whose
/// (topic, idempotency key) exists is left alone and nothing is returned.
///
/// `?1` id, `?2` topic, `?3` key, `?4` idempotency key, `?5` payload,
/// `?6` headers, `?7` created at (and first due), `?8` expires at,
/// `?9` lease owner, `?10` lease until.
const INSERT: &str = r#"
INSERT INTO {outbox} (id, topic, "key", idempotency_key, payload, headers, state, attempts,
                      next_attempt_at, lease_owner, lease_until, checks, expires_at, created_at)
SELECT ?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7,
       CASE WHEN w.unleased THEN NULL ELSE ?9 END,
       CASE WHEN w.unleased THEN NULL ELSE ?10 END,
       0, ?8, ?7
FROM (
    SELECT ?9 IS NULL OR (?3 IS NOT NULL AND (
        EXISTS (
            SELECT 1 FROM {outbox} e
            WHERE e.state = 'pending' AND e.topic = ?2 AND e."key" = ?3 AND e.id < ?1
              AND (e.lease_owner IS NULL OR e.lease_owner <> ?9))
        -- Dead rows never hold a lease.
        OR EXISTS (
            SELECT 1 FROM {outbox} e
            WHERE e.state = 'dead' AND e.topic = ?2 AND e."key" = ?3 AND e.id < ?1)
    )) AS unleased
) AS w
WHERE true
ON CONFLICT (topic, idempotency_key) DO NOTHING
RETURNING lease_owner IS NOT NULL AS leased
"#;

/// Leases the rows a relay may publish now: `{heads}` is one of
/// [`HEADS_IN_ID_ORDER`] and [`HEADS_BY_KEY`], which pick the first rows to
/// claim as `heads (id, topic, "key")`; this statement adds their followers
/// and takes the lease, in one statement.
///
/// - `budget`: how many followers fit in `?3` after the heads.
/// - `sized`: for each keyed head, how many pending rows follow it, counted
///   in the index only, at most `?4`.
/// - `takers`: the keyed heads, in id order, as long as the followers of the
///   heads before them may not fill the budget. Later heads could not get a
///   follower in, so their rows are never read. (A follower that cannot be
///   claimed now still counts against its head, so a claim can come back
///   short of `?3` when a key's rows are interrupted by leased or retrying
///   ones; the rest waits for the next claim.)
/// - `followers`: each taker's next pending rows (at most `?4`, none past a
///   dead row when `?2`), with the number of rows before each (itself
///   included) that cannot be claimed now; only the unbroken claimable
///   prefix (`blocked = 0`) is kept.
/// - `picked`: the followers that fill the budget, heads in id order first.
///
/// `?1` now, `?2` dead parks key, `?3` limit, `?4` per-key limit,
/// `?5` lease owner, `?6` lease until; `?7` is used by the heads.
const CLAIM: &str = r#"
WITH RECURSIVE {heads},
budget (n) AS (SELECT ?3 - count(*) FROM heads),
sized AS (
    SELECT h.id, h.topic, h."key",
           (SELECT count(*) FROM (
                SELECT 1 FROM {outbox} p
                WHERE p.state = 'pending' AND p.topic = h.topic AND p."key" = h."key"
                  AND p.id > h.id
                LIMIT ?4)) AS most
    FROM heads h
    WHERE h."key" IS NOT NULL
),
takers AS MATERIALIZED (
    SELECT id, topic, "key" FROM (
        SELECT id, topic, "key",
               coalesce(SUM(most) OVER (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING
                                                          AND 1 PRECEDING), 0) AS before
        FROM sized)
    WHERE before < (SELECT n FROM budget)
),
followers AS (
    SELECT f.id, h.id AS head,
           SUM(CASE WHEN f.next_attempt_at <= ?1
                         AND (f.lease_until IS NULL OR f.lease_until < ?1)
                    THEN 0 ELSE 1 END)
               OVER (PARTITION BY h.id ORDER BY f.id ROWS UNBOUNDED PRECEDING) AS blocked
    FROM takers h
    CROSS JOIN {outbox} f ON f.id IN (
        SELECT p.id FROM {outbox} p
        WHERE p.state = 'pending' AND p.topic = h.topic AND p."key" = h."key" AND p.id > h.id
          AND NOT (?2 AND EXISTS (
              SELECT 1 FROM {outbox} d
              WHERE d.state = 'dead' AND d.topic = h.topic AND d."key" = h."key"
                AND d.id > h.id AND d.id < p.id))
        ORDER BY p.id
        LIMIT ?4)
),
picked AS (
    SELECT id, ROW_NUMBER() OVER (ORDER BY head, id) AS n FROM followers WHERE blocked = 0
)
UPDATE {outbox} SET lease_owner = ?5, lease_until = ?6
WHERE id IN (
    SELECT id FROM heads
    UNION ALL
    SELECT id FROM picked WHERE n <= (SELECT n FROM budget))
RETURNING {columns}
"#;

/// Heads among the `?7` oldest pending rows: due, unleased (or the lease ran
/// out), and keyless or the first pending row of their key with no dead row
/// before it when `?2`; at most `?3`, in id order.
///
/// Cheap when heads are dense (keyless rows, many keys): it reads about as
/// many rows as it returns. Behind a long run of one key's rows it finds
/// few; then the store goes on with [`HEADS_BY_KEY`].
const HEADS_IN_ID_ORDER: &str = r#"heads AS MATERIALIZED (
    SELECT h.id, h.topic, h."key"
    FROM (SELECT id FROM {outbox} WHERE state = 'pending' ORDER BY id LIMIT ?7) AS s
    CROSS JOIN {outbox} h ON h.id = s.id
    WHERE h.next_attempt_at <= ?1
      AND (h.lease_until IS NULL OR h.lease_until < ?1)
      AND (h."key" IS NULL OR (
          NOT EXISTS (
              SELECT 1 FROM {outbox} e
              WHERE e.state = 'pending' AND e.topic = h.topic AND e."key" = h."key"
                AND e.id < h.id)
          AND NOT (?2 AND EXISTS (
              SELECT 1 FROM {outbox} e
              WHERE e.state = 'dead' AND e.topic = h.topic AND e."key" = h."key"
                AND e.id < h.id))))
    ORDER BY h.id
    LIMIT ?3
)"#;

/// The same heads, found per key: `walk` visits each (topic, key) with
/// pending rows once, through the pending-key index, landing on the key's
/// first pending row (one index seek per key, however many rows the key
/// has); keyless heads come from the keyless index. At most `?3`, in id
/// order.
const HEADS_BY_KEY: &str = r#"walk (id) AS (
    SELECT (SELECT f.id FROM {outbox} f
            WHERE f.state = 'pending' AND f."key" IS NOT NULL
            ORDER BY f.topic, f."key", f.id LIMIT 1)
    UNION ALL
    -- Two seeks rather than a row-value comparison, which SQLite would
    -- answer by scanning the rest of the topic.
    SELECT coalesce(
               (SELECT n.id FROM {outbox} n
                WHERE n.state = 'pending' AND n."key" IS NOT NULL
                  AND n.topic = c.topic AND n."key" > c."key"
                ORDER BY n.topic, n."key", n.id LIMIT 1),
               (SELECT n.id FROM {outbox} n
                WHERE n.state = 'pending' AND n."key" IS NOT NULL AND n.topic > c.topic
                ORDER BY n.topic, n."key", n.id LIMIT 1))
    FROM walk w CROSS JOIN {outbox} c ON c.id = w.id
),
heads AS MATERIALIZED (
    SELECT h.id, h.topic, h."key" FROM walk w CROSS JOIN {outbox} h ON h.id = w.id
    WHERE h.next_attempt_at <= ?1
      AND (h.lease_until IS NULL OR h.lease_until < ?1)
      AND NOT (?2 AND EXISTS (
          SELECT 1 FROM {outbox} e
          WHERE e.state = 'dead' AND e.topic = h.topic AND e."key" = h."key" AND e.id < h.id))
    UNION ALL
    SELECT id, topic, "key" FROM (
        SELECT k.id, k.topic, k."key" FROM {outbox} k
        WHERE k.state = 'pending' AND k."key" IS NULL
          AND k.next_attempt_at <= ?1
          AND (k.lease_until IS NULL OR k.lease_until < ?1)
        ORDER BY k.id
        LIMIT ?3)
    ORDER BY id
    LIMIT ?3
)"#;

/// `?1` sent at, then the ids.
const MARK_SENT: &str = "UPDATE {outbox} \
     SET state = 'sent', sent_at = ?1, lease_owner = NULL, lease_until = NULL \
     WHERE state = 'pending' AND id IN";

/// `?1` owner, then the ids.
const RELEASE: &str = "UPDATE {outbox} SET lease_owner = NULL, lease_until = NULL \
     WHERE state = 'pending' AND lease_owner = ?1 AND id IN";

/// `?1` id, `?2` owner, `?3` next attempt at, `?4` error.
const MARK_FAILED: &str = "UPDATE {outbox} \
     SET attempts = attempts + 1, next_attempt_at = ?3, last_error = ?4, \
         lease_owner = NULL, lease_until = NULL \
     WHERE id = ?1 AND state = 'pending' AND lease_owner = ?2";

/// `?1` id, `?2` owner, `?3` reason, `?4` dead at.
const MARK_DEAD: &str = "UPDATE {outbox} \
     SET state = 'dead', last_error = ?3, dead_at = ?4, lease_owner = NULL, lease_until = NULL, \
         attempts = CASE WHEN state = 'pending' THEN attempts + 1 ELSE attempts END \
     WHERE id = ?1 AND state IN ('pending', 'prepared') \
       AND (lease_owner IS NULL OR lease_owner = ?2)";

/// `?1` topic or null, `?2` key or null, `?3` limit.
const DEAD_LETTERS: &str = r#"SELECT {columns}, last_error, dead_at FROM {outbox}
WHERE state = 'dead' AND (?1 IS NULL OR topic = ?1) AND (?2 IS NULL OR "key" = ?2)
ORDER BY dead_at, id
LIMIT ?3"#;

/// `?1` id, `?2` due at. Replaying a dead half message delivers it: it is
/// an ordinary message from then on, so it loses its half mark.
const REPLAY: &str = "UPDATE {outbox} \
     SET state = 'pending', attempts = 0, next_attempt_at = ?2, dead_at = NULL, \
         lease_owner = NULL, lease_until = NULL, half = 0 \
     WHERE id = ?1 AND state = 'dead'";

/// `?1` sent before, `?2` limit.
const PURGE_SENT: &str = "DELETE FROM {outbox} WHERE id IN (\
     SELECT id FROM {outbox} WHERE state = 'sent' AND sent_at < ?1 ORDER BY sent_at LIMIT ?2)";

const STATS: &str = "SELECT \
     (SELECT count(*) FROM {outbox} WHERE state = 'pending') AS pending, \
     (SELECT min(created_at) FROM {outbox} WHERE state = 'pending') AS oldest, \
     (SELECT count(*) FROM {outbox} WHERE state = 'dead') AS dead, \
     (SELECT count(*) FROM {outbox} WHERE state = 'sent') AS sent, \
     (SELECT count(*) FROM {outbox} WHERE state = 'prepared') AS prepared";

/// `?1` sent since. Every row is read: for operators only.
const TOPIC_STATS: &str = "SELECT topic, \
     sum(state = 'pending') AS pending, \
     sum(state = 'prepared') AS prepared, \
     min(CASE WHEN state = 'pending' THEN created_at END) AS oldest, \
     sum(state = 'dead') AS dead, \
     sum(state = 'sent' AND sent_at >= ?1) AS sent_since \
     FROM {outbox} GROUP BY topic ORDER BY topic";

/// Pending rows only, through the index of pending rows.
const PENDING_BY_TOPIC: &str = "SELECT topic, count(*) AS pending, min(created_at) AS oldest \
     FROM {outbox} WHERE state = 'pending' GROUP BY topic ORDER BY topic";

/// `?1` id.
const DEAD_LETTER: &str =
    "SELECT {columns}, last_error, dead_at FROM {outbox} WHERE id = ?1 AND state = 'dead'";

/// `?1` topic or null, `?2` key or null, `?3` dead before, `?4` limit.
const PURGE_DEAD: &str = r#"DELETE FROM {outbox} WHERE state = 'dead' AND id IN (
    SELECT id FROM {outbox}
    WHERE state = 'dead' AND (?1 IS NULL OR topic = ?1) AND (?2 IS NULL OR "key" = ?2)
      AND coalesce(dead_at, created_at) < ?3
    ORDER BY dead_at, id
    LIMIT ?4)"#;

/// Inserts a prepared half message, unleased (only the check-back worker
/// leases prepared rows), its first check due at `?9`. A row whose (topic,
/// idempotency key) exists is left alone.
///
/// `?1` id, `?2` topic, `?3` key, `?4` idempotency key, `?5` payload,
/// `?6` headers, `?7` created at, `?8` expires at, `?9` first check at.
const PREPARE: &str = r#"
INSERT INTO {outbox} (id, topic, "key", idempotency_key, payload, headers, state, attempts,
                      next_attempt_at, checks, half, expires_at, created_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'prepared', 0, ?7, 0, 1, ?9, ?8)
ON CONFLICT (topic, idempotency_key) DO NOTHING
"#;

/// `?1` now, `?2` id. The fence: only a row that is still prepared.
const RESOLVE_COMMIT: &str = "UPDATE {outbox} \
     SET state = 'pending', next_attempt_at = ?1, lease_owner = NULL, lease_until = NULL, \
         half = 0 \
     WHERE id = ?2 AND state = 'prepared'";

/// `?1` id. The fence: only a row that is still prepared.
const RESOLVE_ROLLBACK: &str = "DELETE FROM {outbox} WHERE id = ?1 AND state = 'prepared'";

/// Leases due prepared rows (unleased or the lease ran out), oldest first.
///
/// `?1` owner, `?2` lease until, `?3` now, `?4` limit.
const CLAIM_PREPARED: &str = "UPDATE {outbox} SET lease_owner = ?1, lease_until = ?2 \
     WHERE id IN (\
         SELECT id FROM {outbox} \
         WHERE state = 'prepared' AND next_attempt_at <= ?3 \
           AND (lease_until IS NULL OR lease_until < ?3) \
         ORDER BY id \
         LIMIT ?4) \
     RETURNING {columns}, checks";

/// `?1` id, `?2` owner, `?3` next check at, `?4` checks to add (0 or 1).
const RECORD_CHECK: &str = "UPDATE {outbox} \
     SET checks = checks + ?4, next_attempt_at = ?3, lease_owner = NULL, lease_until = NULL \
     WHERE id = ?1 AND state = 'prepared' AND lease_owner = ?2";

/// `?1` id, `?2` owner, `?3` reason, `?4` at.
const MARK_PREPARED_DEAD: &str = "UPDATE {outbox} \
     SET state = 'dead', last_error = ?3, dead_at = ?4, lease_owner = NULL, lease_until = NULL \
     WHERE id = ?1 AND state = 'prepared' AND lease_owner = ?2";

/// `?1` id, `?2` first check at. Only a half message that went dead while
/// prepared.
const RESUME: &str = "UPDATE {outbox} \
     SET state = 'prepared', checks = 0, next_attempt_at = ?2, dead_at = NULL, \
         lease_owner = NULL, lease_until = NULL \
     WHERE id = ?1 AND state = 'dead' AND half = 1";

/// `?1` group, `?2` topic, `?3` idempotency key, `?4` processed at.
///
/// `ON CONFLICT DO NOTHING` rather than catching the constraint error, which
/// would leave the handler's transaction to roll back. Concurrent handlers
/// cannot both get here: their transactions begin with `BEGIN IMMEDIATE`, so
/// the second waits for the first to end and then sees its key (or not, if it
/// rolled back). A key recorded before the inbox kept topics (empty topic)
/// counts for every topic: one more primary-key probe.
const INBOX_RECORD: &str = "INSERT INTO {inbox} (consumer_group, topic, idempotency_key, processed_at) \
     SELECT ?1, ?2, ?3, ?4 \
     WHERE NOT EXISTS (SELECT 1 FROM {inbox} \
       WHERE consumer_group = ?1 AND topic = '' AND idempotency_key = ?3) \
     ON CONFLICT (consumer_group, topic, idempotency_key) DO NOTHING";

/// `?1` processed before, `?2` limit, `?3` group; the oldest first.
const INBOX_PURGE: &str = "DELETE FROM {inbox} WHERE (consumer_group, topic, idempotency_key) IN (\
     SELECT consumer_group, topic, idempotency_key FROM {inbox} \
     WHERE consumer_group = ?3 AND processed_at < ?1 ORDER BY processed_at LIMIT ?2)";

/// `?1` id, `?2` group, `?3` topic, `?4` key, `?5` idempotency key,
/// `?6` headers, `?7` payload, `?8` envelope id, `?9` created at,
/// `?10` reason, `?11` attempts, `?12` dead at. Adding the same dead letter
/// twice (a retry after a lost reply) keeps the first.
const CONSUMER_DEAD_ADD: &str = "INSERT INTO {consumer_dead} ({columns}) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
     ON CONFLICT (id) DO NOTHING";

/// `?1` group, `?2` topic or null, `?3` key or null, `?4` limit.
const CONSUMER_DEAD_LIST: &str = r#"SELECT {columns} FROM {consumer_dead}
WHERE consumer_group = ?1 AND (?2 IS NULL OR topic = ?2) AND (?3 IS NULL OR "key" = ?3)
ORDER BY dead_at, id
LIMIT ?4"#;

/// `?1` group, `?2` id.
const CONSUMER_DEAD_GET: &str =
    "SELECT {columns} FROM {consumer_dead} WHERE consumer_group = ?1 AND id = ?2";

const CREATE_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS {migrations} (\
     version INTEGER NOT NULL PRIMARY KEY, \
     description TEXT NOT NULL, \
     applied_at INTEGER NOT NULL\
     ) STRICT";

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_name(tables: &Tables) -> Result<String> {
        Names::new(tables).map(|n| n.consumer_dead_bare)
    }

    #[test]
    fn consumer_dead_table_is_named_after_the_inbox() {
        assert_eq!(
            dead_name(&Tables::default()).unwrap(),
            "txmsg_consumer_dead"
        );
        let renamed = Tables::default().with_inbox("events_in").unwrap();
        assert_eq!(dead_name(&renamed).unwrap(), "events_in_dead");
        let names = Names::new(&renamed).unwrap();
        assert_eq!(
            names.render_text("{consumer_dead} {consumer_dead_bare}_group {inbox}"),
            "\"events_in_dead\" events_in_dead_group \"events_in\""
        );
        let fits = Tables::default().with_inbox(&"i".repeat(58)).unwrap();
        assert_eq!(dead_name(&fits).unwrap().len(), txmsg_core::MAX_IDENT_LEN);
    }

    #[test]
    fn an_inbox_name_without_room_for_its_dead_letters_is_refused() {
        let clash = Tables::default()
            .with_inbox("events")
            .unwrap()
            .with_migrations("events_dead")
            .unwrap();
        let index_clash = Tables::default().with_outbox("txmsg_consumer").unwrap();
        for tables in [clash, index_clash] {
            assert_eq!(
                txmsg_testkit::config::field_of(Names::new(&tables)),
                "inbox_table"
            );
        }
    }
}
