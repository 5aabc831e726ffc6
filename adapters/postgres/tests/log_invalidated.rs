//! A log relay whose slot PostgreSQL invalidates: it stops and says why,
//! and `LogRelay::status` reports the slot as invalidated.
//!
//! The test sets `max_slot_wal_keep_size` to 1 MB for the whole server and
//! writes WAL until PostgreSQL invalidates the test's idle slot, which
//! would invalidate any other idle slot on the server too: it is ignored in
//! the workspace run, and `scripts/test.sh` runs it alone afterwards
//! (`--run-ignored only`). It puts the setting back when it ends, also
//! when it fails.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use sqlx::{AssertSqlSafe, PgPool};
use txmsg_core::{Message, Outbox, Store, Tables};
use txmsg_memory::MemoryBroker;
use txmsg_postgres::{Capture, LogRelay, LogRelayConfig, PgStore};
use uuid::Uuid;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

async fn set_keep_size(pool: &PgPool, value: &str) {
    // `value` is one of this file's constants.
    sqlx::query(AssertSqlSafe(format!(
        "ALTER SYSTEM SET max_slot_wal_keep_size = '{value}'"
    )))
    .execute(pool)
    .await
    .expect("set max_slot_wal_keep_size");
    sqlx::query("SELECT pg_reload_conf()")
        .execute(pool)
        .await
        .expect("reload");
    // The setting reaches the checkpointer with the reload.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "invalidates every idle slot of the server: scripts/test.sh runs it alone"]
async fn an_invalidated_slot_stops_its_relay_and_is_reported() {
    let pool = PgPool::connect(&url()).await.expect("PostgreSQL");
    let tag = Uuid::now_v7().simple().to_string();
    let (schema, slot) = (format!("txmsg_inv_{tag}"), format!("p_{tag}"));
    let store = PgStore::new(
        pool.clone(),
        Tables::default().with_schema(&schema).expect("schema"),
    )
    .expect("store")
    .with_capture(Capture::log("inv").expect("prefix"));
    store.migrate().await.expect("migrate");
    let config = LogRelayConfig::default()
        .with_slot(&slot)
        .and_then(|c| c.with_publication(&slot))
        .expect("names");
    LogRelay::create_slot(&store, &config).await.expect("slot");
    let mut tx = Outbox::new(&store).begin().await.expect("begin");
    tx.enqueue(Message::new("inv.t", &1).expect("valid"))
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    set_keep_size(&pool, "1MB").await;
    let outcome = AssertUnwindSafe(async {
        // Past the kept size: switch WAL segments, then checkpoint, until
        // PostgreSQL gives the idle slot up.
        let mut lost = false;
        for _ in 0..20 {
            sqlx::query("SELECT pg_logical_emit_message(false, 'inv_filler', repeat('x', 1000))")
                .execute(&pool)
                .await
                .expect("write WAL");
            sqlx::query("SELECT pg_switch_wal()")
                .execute(&pool)
                .await
                .expect("switch");
            sqlx::query("CHECKPOINT")
                .execute(&pool)
                .await
                .expect("checkpoint");
            let status: Option<String> = sqlx::query_scalar(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            )
            .bind(&slot)
            .fetch_one(&pool)
            .await
            .expect("wal_status");
            if status.as_deref() == Some("lost") {
                lost = true;
                break;
            }
        }
        assert!(lost, "PostgreSQL invalidated the idle slot");

        let status = LogRelay::status(&store, &config)
            .await
            .expect("status")
            .expect("the slot is still listed");
        assert!(status.invalidated(), "{status:?}");
        assert_eq!(status.lag_bytes, None, "{status:?}");

        let relay = LogRelay::start(&store, &url(), MemoryBroker::new(), config.clone())
            .await
            .expect("start");
        let mut stopped = false;
        for _ in 0..200 {
            if relay.is_finished() {
                stopped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(stopped, "the relay stops instead of retrying");
        let why = relay.failure().expect("a reason");
        assert!(why.contains(&slot), "names the slot: {why}");
        assert!(
            why.contains("invalidated") || why.contains("can no longer get changes"),
            "says it is invalidated: {why}"
        );
    })
    .catch_unwind()
    .await;
    set_keep_size(&pool, "-1").await;
    let _ = sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&pool)
        .await;
    for statement in [
        format!("DROP PUBLICATION IF EXISTS \"{slot}\""),
        format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
    ] {
        let _ = sqlx::query(AssertSqlSafe(statement)).execute(&pool).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
