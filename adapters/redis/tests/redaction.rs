//! Passwords are never shown: not by `Debug`, not in connection errors.
//!
//! Runs against the Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`).

use txmsg_redis::{RedisBroker, RedisConfig};
use txmsg_testkit::redaction::{assert_hidden, with_password};

/// The password of every URL built here.
const PASSWORD: &str = "s3cr3t-pw";

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

#[tokio::test]
async fn debug_and_connection_errors_never_show_the_password() {
    // A server without ACLs may take or refuse the password: either way it
    // is not shown.
    let url = with_password(&redis_url(), "default", PASSWORD);
    match RedisBroker::connect(&url, RedisConfig::default()).await {
        Ok(broker) => {
            let shown = format!("{broker:?}");
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(shown.contains(":***@"), "{shown}");
        }
        Err(e) => assert_hidden(&e, PASSWORD),
    }
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    for url in [
        // Nothing listens there.
        format!("redis://app:{PASSWORD}@127.0.0.1:{closed_port}/0"),
        format!("unix:///nonexistent/txmsg-redis.sock?pass={PASSWORD}"),
        // Not a database number.
        format!("redis://app:{PASSWORD}@127.0.0.1:6379/db"),
        // Not a Redis URL.
        format!("http://app:{PASSWORD}@127.0.0.1:6379"),
    ] {
        let err = RedisBroker::connect(&url, RedisConfig::default())
            .await
            .expect_err("no broker on a closed port or a malformed URL");
        assert_hidden(&err, PASSWORD);
    }
}

/// Connecting (to a closed port and to the server), publishing and
/// receiving log nothing that shows the password, at any level.
#[tokio::test(flavor = "multi_thread")]
async fn no_password_in_logs() {
    let prefix = format!("txmsg-test-{}:", uuid::Uuid::now_v7().simple());
    let config = RedisConfig::default()
        .with_key_prefix(&prefix)
        .expect("a valid prefix");
    txmsg_testkit::broker::no_password_in_logs(
        move |url: String| {
            let config = config.clone();
            async move { RedisBroker::connect(&url, config).await }
        },
        &with_password(&redis_url(), "default", PASSWORD),
        &format!("redis://default:{PASSWORD}@127.0.0.1:1"),
        PASSWORD,
        "redact",
    )
    .await;
}
