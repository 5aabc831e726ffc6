//! Passwords are never shown: not by `Debug`, not in connection errors.
//!
//! Runs against the MySQL or MariaDB at `MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`).

use txmsg_mysql::MySqlStore;
use txmsg_testkit::redaction::{assert_hidden, with_password};

/// The password of every URL built here.
const PASSWORD: &str = "s3cr3t-pw";

fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

#[tokio::test]
async fn debug_and_connection_errors_never_show_the_password() {
    // A store on a pool whose options hold the password.
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .connect_lazy(&format!("mysql://app:{PASSWORD}@127.0.0.1:1/app"))
        .expect("a valid URL");
    let store = MySqlStore::new(pool, txmsg_core::Tables::default()).expect("store");
    let shown = format!("{store:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains("txmsg_outbox"), "{shown}");

    // The user of the default URL has no password, so the server refuses
    // this one; if a server accepts it, its store must not show it.
    match MySqlStore::connect(&with_password(&mysql_url(), "root", PASSWORD)).await {
        Ok(store) => {
            let shown = format!("{store:?}");
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(shown.contains("txmsg_outbox"), "{shown}");
        }
        Err(e) => assert_hidden(&e, PASSWORD),
    }
    let url = with_password(&mysql_url(), "x", PASSWORD);
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
        assert_hidden(&err, PASSWORD);
    }
}
