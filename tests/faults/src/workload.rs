//! What the processes do: the business table, the producer, the handlers
//! and the counts the verdict is made of.
//!
//! Message `n` is an order: producer `n % producers` writes it, on key
//! `p{producer}-k{n % keys}`, with idempotency key `order-{n}`. A producer
//! writes its orders in increasing `n`, one at a time, so each key's orders
//! are committed (and must be published and applied) in increasing `n`.
//!
//! Each consumer group records every application of a message as a row of
//! `fault_effects` with no unique constraint, so an order applied twice is
//! two rows and is counted, not hidden by a constraint error.

use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres};
use txmsg::Tx;

/// The topic every order goes to.
pub(crate) const TOPIC: &str = "faults.orders";
/// The group served by one consumer process at a time: per-key order is
/// checked on it.
pub(crate) const ORDERED: &str = "ordered";
/// The group served by two competing consumer processes.
pub(crate) const SHARED: &str = "shared";

/// The message of an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Placed {
    /// The order's number.
    pub(crate) n: i64,
    /// Its ordering key.
    pub(crate) key: String,
}

/// The ordering key of order `n`.
pub(crate) fn key_of(n: i64, producers: i64, keys: i64) -> String {
    format!("p{}-k{}", n % producers, (n / producers) % keys)
}

/// Writes order `n` and its outbox row in one transaction.
#[txmsg::transactional_message(
    topic = "faults.orders",
    key = key_of(n, producers, keys),
    idempotency_key = format!("order-{n}"),
)]
pub(crate) async fn place(
    tx: &mut Tx<'_, Postgres>,
    n: i64,
    producers: i64,
    keys: i64,
) -> Result<Placed, txmsg::Error> {
    let key = key_of(n, producers, keys);
    sqlx::query("INSERT INTO fault_orders (n, producer, key) VALUES ($1, $2, $3)")
        .bind(n)
        .bind(n % producers)
        .bind(&key)
        .execute(&mut **tx)
        .await?;
    Ok(Placed { n, key })
}

async fn apply(tx: &mut Tx<'_, Postgres>, group: &str, order: &Placed) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO fault_effects (grp, n, key) VALUES ($1, $2, $3)")
        .bind(group)
        .bind(order.n)
        .bind(&order.key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The ordered group's handler.
#[txmsg::message_handler(topic = "faults.orders", group = "ordered", max_attempts = 20)]
pub(crate) async fn apply_ordered(
    tx: &mut Tx<'_, Postgres>,
    order: Placed,
) -> Result<(), sqlx::Error> {
    apply(tx, ORDERED, &order).await
}

/// The shared group's handler.
#[txmsg::message_handler(topic = "faults.orders", group = "shared", max_attempts = 20)]
pub(crate) async fn apply_shared(
    tx: &mut Tx<'_, Postgres>,
    order: Placed,
) -> Result<(), sqlx::Error> {
    apply(tx, SHARED, &order).await
}

/// Creates the business tables.
pub(crate) async fn create_schema(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE fault_orders (
             n BIGINT PRIMARY KEY,
             producer BIGINT NOT NULL,
             key TEXT NOT NULL,
             committed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());
         CREATE TABLE fault_effects (
             id BIGSERIAL PRIMARY KEY,
             grp TEXT NOT NULL,
             n BIGINT NOT NULL,
             key TEXT NOT NULL);
         CREATE INDEX fault_effects_grp ON fault_effects (grp, n);",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The next order producer `producer` has to write: after its highest
/// committed one.
pub(crate) async fn resume_point(
    pool: &PgPool,
    producer: i64,
    producers: i64,
) -> Result<i64, sqlx::Error> {
    let last: Option<i64> =
        sqlx::query_scalar("SELECT max(n) FROM fault_orders WHERE producer = $1")
            .bind(producer)
            .fetch_one(pool)
            .await?;
    Ok(last.map_or(producer, |n| n + producers))
}

/// What one group did with the committed orders.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct GroupCount {
    /// Rows in `fault_effects` for the group.
    pub(crate) effects: i64,
    /// Distinct orders among them.
    pub(crate) distinct: i64,
    /// Applications beyond the first of an order.
    pub(crate) applied_twice: i64,
    /// Committed orders with no effect.
    pub(crate) lost: i64,
    /// Effects of orders that were never committed.
    pub(crate) phantom: i64,
    /// Keys whose effects are not in increasing order.
    pub(crate) keys_out_of_order: i64,
}

/// Counts what `group` applied against what was committed.
pub(crate) async fn count_group(pool: &PgPool, group: &str) -> Result<GroupCount, sqlx::Error> {
    let (effects, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT n) FROM fault_effects WHERE grp = $1")
            .bind(group)
            .fetch_one(pool)
            .await?;
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fault_orders o
          WHERE NOT EXISTS (SELECT 1 FROM fault_effects e WHERE e.grp = $1 AND e.n = o.n)",
    )
    .bind(group)
    .fetch_one(pool)
    .await?;
    let phantom: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fault_effects e
          WHERE e.grp = $1 AND NOT EXISTS (SELECT 1 FROM fault_orders o WHERE o.n = e.n)",
    )
    .bind(group)
    .fetch_one(pool)
    .await?;
    // A key is out of order when one of its effects has a lower order number
    // than the effect applied before it.
    let keys_out_of_order: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT key) FROM (
             SELECT key, n, lag(n) OVER (PARTITION BY key ORDER BY id) AS prev
               FROM fault_effects WHERE grp = $1) s
          WHERE prev IS NOT NULL AND n <= prev",
    )
    .bind(group)
    .fetch_one(pool)
    .await?;
    Ok(GroupCount {
        effects,
        distinct,
        applied_twice: effects - distinct,
        lost,
        phantom,
        keys_out_of_order,
    })
}

/// Committed orders.
pub(crate) async fn committed(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM fault_orders")
        .fetch_one(pool)
        .await
}

/// Outbox rows by state: (pending, sent, dead).
pub(crate) async fn outbox_states(pool: &PgPool) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'pending'),
                count(*) FILTER (WHERE state = 'sent'),
                count(*) FILTER (WHERE state = 'dead')
           FROM txmsg_outbox",
    )
    .fetch_one(pool)
    .await
}

/// Effects applied so far by `group`.
pub(crate) async fn effects(pool: &PgPool, group: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(DISTINCT n) FROM fault_effects WHERE grp = $1")
        .bind(group)
        .fetch_one(pool)
        .await
}

/// Consumer dead letters of every group.
pub(crate) async fn consumer_dead(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM txmsg_consumer_dead")
        .fetch_one(pool)
        .await
}
