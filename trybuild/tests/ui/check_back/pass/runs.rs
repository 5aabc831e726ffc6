//! Runs the registered check-backs as the check-back worker does: found
//! through `registered_check_backs()`, called through their `call` with an
//! envelope carrying a JSON payload. The verdict comes from the business
//! data, in an in-memory SQLite database.
use std::sync::OnceLock;

use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use sqlx::types::Uuid;
use sqlx::types::chrono::Utc;
use txmsg::half::{CheckBackWorker, CheckStatus, registered_check_backs};
use txmsg::sqlite::SqliteStore;
use txmsg::{Envelope, check_back};

static PAYMENTS: OnceLock<SqlitePool> = OnceLock::new();

#[derive(serde::Serialize, serde::Deserialize)]
struct PaymentRequested {
    order: i64,
}

/// The payment's state, as the payment service recorded it.
#[check_back(topic = "payments.requested")]
async fn payment_state(payment: &PaymentRequested) -> Result<CheckStatus, sqlx::Error> {
    let Some(pool) = PAYMENTS.get() else {
        return Ok(CheckStatus::Unknown);
    };
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM payments WHERE id = ?")
        .bind(payment.order)
        .fetch_optional(pool)
        .await?;
    Ok(match state.as_deref() {
        Some("paid") => CheckStatus::Commit,
        Some("failed") | None => CheckStatus::Rollback,
        Some(_) => CheckStatus::Unknown,
    })
}

#[check_back(topic = "audit.logged")]
async fn audit_state(envelope: &Envelope) -> Result<CheckStatus, String> {
    if envelope.idempotency_key.starts_with("audit-") {
        Ok(CheckStatus::Commit)
    } else {
        Err(format!("no audit line {}", envelope.idempotency_key))
    }
}

fn envelope(topic: &str, key: &str, payload: &[u8]) -> Envelope {
    Envelope::new(Uuid::now_v7(), topic, key, payload.to_vec(), Utc::now())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // One connection: an in-memory database is per connection.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::query("CREATE TABLE payments (id INTEGER PRIMARY KEY, state TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO payments (id, state) VALUES (1, 'paid'), (2, 'failed'), (3, 'pending')",
    )
    .execute(&pool)
    .await
    .unwrap();
    PAYMENTS.set(pool).unwrap();

    // Registered, sorted by topic, with where they are.
    let all = registered_check_backs();
    let topics: Vec<_> = all.iter().map(|c| c.topic).collect();
    assert_eq!(topics, ["audit.logged", "payments.requested"]);
    let payments = all[1];
    assert!(
        payments.name.ends_with("::payment_state"),
        "{}",
        payments.name
    );
    assert!(payments.file.ends_with("runs.rs"), "{}", payments.file);
    assert!(payments.line > 0);
    assert!(all[0].name.ends_with("::audit_state"), "{}", all[0].name);

    // One per topic, as a worker checks when it starts.
    let by_topic = CheckBackWorker::<SqliteStore>::check_backs().unwrap();
    assert_eq!(by_topic.len(), 2);

    // The payload is decoded, and the verdict read from the database.
    let states = txmsg::adapter::States::default();
    for (payload, verdict) in [
        (&br#"{"order":1}"#[..], CheckStatus::Commit),
        (br#"{"order":2}"#, CheckStatus::Rollback),
        (br#"{"order":3}"#, CheckStatus::Unknown),
        (br#"{"order":4}"#, CheckStatus::Rollback),
    ] {
        let env = envelope("payments.requested", "k", payload);
        assert_eq!((payments.call)(&env, &states).await, Ok(verdict));
    }

    // A payload that does not decode is an error, which the worker counts as
    // Unknown.
    let env = envelope("payments.requested", "k", br#"{"id":1}"#);
    let error = (payments.call)(&env, &states).await.unwrap_err();
    assert!(error.contains("payload does not match"), "{error}");

    // An envelope check-back sees the envelope; its error is its text.
    let audit = all[0];
    let env = envelope("audit.logged", "audit-1", b"\"started\"");
    assert_eq!((audit.call)(&env, &states).await, Ok(CheckStatus::Commit));
    let env = envelope("audit.logged", "other", b"null");
    assert_eq!(
        (audit.call)(&env, &states).await,
        Err("no audit line other".to_owned())
    );

    // The function itself is unchanged.
    assert_eq!(
        payment_state(&PaymentRequested { order: 1 }).await.unwrap(),
        CheckStatus::Commit
    );
}
