//! Passwords are never shown: not by `Debug`, not in connection errors.
//!
//! Runs against the NATS server at `NATS_URL` (default
//! `nats://127.0.0.1:4222`).

use std::time::Duration;
use txmsg_testkit::redaction::{assert_hidden, with_password};

use txmsg_nats::{NatsBroker, NatsConfig};

/// The password of every URL built here.
const PASSWORD: &str = "s3cr3t-pw";

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_and_connection_errors_never_show_the_password() {
    let config = NatsConfig::default()
        .with_stream(format!("REDACT_{}", uuid::Uuid::now_v7().simple()))
        .and_then(|c| c.with_subject_prefix(format!("redact{}", uuid::Uuid::now_v7().simple())))
        .and_then(|c| c.with_connect_timeout(Duration::from_secs(3)))
        .expect("valid settings");
    // A server without authentication ignores the password; one with it
    // refuses it: either way it is not shown.
    let url = with_password(&nats_url(), "txmsg", PASSWORD);
    match NatsBroker::connect(&url, config.clone()).await {
        Ok(broker) => {
            let shown = format!("{broker:?}");
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(shown.contains(config.stream()), "{shown}");
            broker
                .delete_stream()
                .await
                .expect("the test's stream is deleted");
        }
        Err(e) => assert_hidden(&e, PASSWORD),
    }
    for url in [
        // Nothing listens on port 1.
        format!("nats://app:{PASSWORD}@127.0.0.1:1"),
        // Not a port number.
        format!("nats://app:{PASSWORD}@127.0.0.1:port"),
        // Not a NATS URL.
        format!("http://app:{PASSWORD}@127.0.0.1:4222"),
    ] {
        let err = NatsBroker::connect(&url, config.clone())
            .await
            .expect_err("no broker on a closed port or a malformed URL");
        assert_hidden(&err, PASSWORD);
    }
}

/// Connecting (to a closed port and to the server), publishing and
/// receiving log nothing that shows the password, at any level: the
/// driver logs the server's address on every connect attempt.
#[tokio::test(flavor = "multi_thread")]
async fn no_password_in_logs() {
    let config = NatsConfig::default()
        .with_stream(format!("REDACT_{}", uuid::Uuid::now_v7().simple()))
        .and_then(|c| c.with_subject_prefix(format!("redact{}", uuid::Uuid::now_v7().simple())))
        .and_then(|c| c.with_connect_timeout(Duration::from_secs(3)))
        .expect("valid settings");
    let connect_config = config.clone();
    txmsg_testkit::broker::no_password_in_logs(
        move |url: String| {
            let config = connect_config.clone();
            async move { NatsBroker::connect(&url, config).await }
        },
        &with_password(&nats_url(), "txmsg", PASSWORD),
        &format!("nats://app:{PASSWORD}@127.0.0.1:1"),
        PASSWORD,
        "redact",
    )
    .await;
    if let Ok(broker) = NatsBroker::connect(&nats_url(), config).await {
        let _ = broker.delete_stream().await;
    }
}
