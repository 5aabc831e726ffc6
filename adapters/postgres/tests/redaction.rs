//! Passwords are never shown: not by `Debug`, not in connection errors.
//!
//! Runs against the PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`).

use txmsg_postgres::PgStore;
use txmsg_testkit::redaction::{assert_hidden, with_password};

/// The password of every URL built here.
const PASSWORD: &str = "s3cr3t-pw";

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

#[tokio::test]
async fn debug_and_connection_errors_never_show_the_password() {
    // A store on a pool whose options hold the password.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy(&format!("postgres://app:{PASSWORD}@127.0.0.1:1/app"))
        .expect("a valid URL");
    let store = PgStore::new(pool, txmsg_core::Tables::default()).expect("store");
    let shown = format!("{store:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains("txmsg_outbox"), "{shown}");

    // The server may not check the password (trust); if it does, it refuses
    // it, and the refusal must not show it either.
    match PgStore::connect(&with_password(&database_url(), "postgres", PASSWORD)).await {
        Ok(store) => {
            let shown = format!("{store:?}");
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(shown.contains("txmsg_outbox"), "{shown}");
        }
        Err(e) => assert_hidden(&e, PASSWORD),
    }
    let url = with_password(&database_url(), "x", PASSWORD);
    let (server, _) = url.rsplit_once('/').expect("a URL with a database");
    for url in [
        // A database that does not exist (or a password the server refuses).
        format!("{server}/txmsg_no_such_database"),
        // Not a port number.
        format!("postgres://app:{PASSWORD}@127.0.0.1:port/app"),
        format!("postgres://app:{PASSWORD}@127.0.0.1:5432/app?sslmode=bogus"),
    ] {
        let err = PgStore::connect(&url)
            .await
            .expect_err("no store on a missing database or a malformed URL");
        assert_hidden(&err, PASSWORD);
    }
}
