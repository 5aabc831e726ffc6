//! Passwords are never shown: not by `Debug`, not in connection errors.
//!
//! Runs against the PostgreSQL at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`).

use txmsg_postgres::PgStore;

/// The password of every URL built here.
const PASSWORD: &str = "s3cr3t-pw";

/// `url` with `PASSWORD` as its password, for its user or `default_user`.
fn with_password(url: &str, default_user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (user, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            (if user.is_empty() { default_user } else { user }, host)
        }
        None => (default_user, authority),
    };
    format!("{scheme}://{user}:{PASSWORD}@{host}{path}")
}

/// Everything an error shows: `Display`, `Debug` and every source's `Display`.
fn everything_shown(err: &(dyn std::error::Error + 'static)) -> String {
    let mut shown = format!("{err} {err:?}");
    let mut source = err.source();
    while let Some(s) = source {
        shown.push_str(&format!(" {s}"));
        source = s.source();
    }
    shown
}

/// Fails if `err` shows the password anywhere.
fn assert_hidden(err: &(dyn std::error::Error + 'static)) {
    let shown = everything_shown(err);
    assert!(!shown.contains(PASSWORD), "the password leaked: {shown}");
}

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
    let store = PgStore::new(pool, txmsg_core::Tables::default());
    let shown = format!("{store:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains("txmsg_outbox"), "{shown}");

    // The server may not check the password (trust); if it does, it refuses
    // it, and the refusal must not show it either.
    match PgStore::connect(&with_password(&database_url(), "postgres")).await {
        Ok(store) => {
            let shown = format!("{store:?}");
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(shown.contains("txmsg_outbox"), "{shown}");
        }
        Err(e) => assert_hidden(&e),
    }
    let url = with_password(&database_url(), "x");
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
        assert_hidden(&err);
    }
}
