//! Passwords are never shown: not by `Debug`, not in connection errors.
//!
//! Runs against the NATS server at `NATS_URL` (default
//! `nats://127.0.0.1:4222`).

use std::time::Duration;

use txmsg_nats::{NatsBroker, NatsConfig};

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

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_and_connection_errors_never_show_the_password() {
    let config = NatsConfig::default()
        .stream(format!("REDACT_{}", uuid::Uuid::now_v7().simple()))
        .and_then(|c| c.subject_prefix(format!("redact{}", uuid::Uuid::now_v7().simple())))
        .and_then(|c| c.connect_timeout(Duration::from_secs(3)))
        .expect("valid settings");
    // A server without authentication ignores the password; one with it
    // refuses it: either way it is not shown.
    let url = with_password(&nats_url(), "txmsg");
    match NatsBroker::connect(&url, config.clone()).await {
        Ok(broker) => {
            let shown = format!("{broker:?}");
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(shown.contains(config.get_stream()), "{shown}");
            broker
                .delete_stream()
                .await
                .expect("the test's stream is deleted");
        }
        Err(e) => assert_hidden(&e),
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
        assert_hidden(&err);
    }
}

/// Connecting (to a closed port and to the server), publishing and
/// receiving log nothing that shows the password, at any level: the
/// driver logs the server's address on every connect attempt.
#[tokio::test(flavor = "multi_thread")]
async fn no_password_in_logs() {
    let config = NatsConfig::default()
        .stream(format!("REDACT_{}", uuid::Uuid::now_v7().simple()))
        .and_then(|c| c.subject_prefix(format!("redact{}", uuid::Uuid::now_v7().simple())))
        .and_then(|c| c.connect_timeout(Duration::from_secs(3)))
        .expect("valid settings");
    let connect_config = config.clone();
    txmsg_testkit::broker::no_password_in_logs(
        move |url: String| {
            let config = connect_config.clone();
            async move { NatsBroker::connect(&url, config).await }
        },
        &with_password(&nats_url(), "txmsg"),
        &format!("nats://app:{PASSWORD}@127.0.0.1:1"),
        PASSWORD,
        "redact",
    )
    .await;
    if let Ok(broker) = NatsBroker::connect(&nats_url(), config).await {
        let _ = broker.delete_stream().await;
    }
}
