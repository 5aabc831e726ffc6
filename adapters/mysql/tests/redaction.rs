//! Passwords are never shown: not by `Debug`, not in connection errors.
//!
//! Runs against the MySQL or MariaDB at `MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`).

use txmsg_mysql::MySqlStore;

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

fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

#[tokio::test]
async fn debug_and_connection_errors_never_show_the_password() {
    // A store on a pool whose options hold the password.
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .connect_lazy(&format!("mysql://app:{PASSWORD}@127.0.0.1:1/app"))
        .expect("a valid URL");
    let store = MySqlStore::new(pool, txmsg_core::Tables::default());
    let shown = format!("{store:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains("txmsg_outbox"), "{shown}");

    // The user of the default URL has no password, so the server refuses
    // this one; if a server accepts it, its store must not show it.
    match MySqlStore::connect(&with_password(&mysql_url(), "root")).await {
        Ok(store) => {
            let shown = format!("{store:?}");
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(shown.contains("txmsg_outbox"), "{shown}");
        }
        Err(e) => assert_hidden(&e),
    }
    let url = with_password(&mysql_url(), "x");
    let (server, _) = url.rsplit_once('/').expect("a URL with a database");
    for url in [
        // A database that does not exist (or a password the server refuses).
        format!("{server}/txmsg_no_such_database"),
        // Not a port number.
        format!("mysql://app:{PASSWORD}@127.0.0.1:port/app"),
        format!("mysql://app:{PASSWORD}@127.0.0.1:3306/app?ssl-mode=bogus"),
    ] {
        let err = MySqlStore::connect(&url)
            .await
            .expect_err("no store on a missing database or a malformed URL");
        assert_hidden(&err);
    }
}
