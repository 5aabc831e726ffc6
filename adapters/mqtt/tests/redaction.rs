//! Passwords are never shown: not by `Debug`, not in connection errors.
//!
//! Runs against the MQTT server at `MQTT_URL` (default
//! `mqtt://127.0.0.1:1884`, the Mosquitto of `scripts/mosquitto.conf`).

use std::time::Duration;

use txmsg_mqtt::{MqttBroker, MqttConfig};

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

fn mqtt_url() -> String {
    std::env::var("MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1884".to_owned())
}

#[tokio::test]
async fn debug_and_connection_errors_never_show_the_password() {
    // A server that allows anonymous clients ignores the password; one that
    // checks it refuses it: either way it is not shown.
    let url = with_password(&mqtt_url(), "txmsg");
    match MqttBroker::connect(&url, MqttConfig::default()).await {
        Ok(broker) => {
            let shown = format!("{broker:?}");
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(shown.contains("txmsg"), "{shown}");
        }
        Err(e) => assert_hidden(&e),
    }
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let config = MqttConfig::default()
        .connect_timeout(Duration::from_secs(2))
        .expect("a valid timeout");
    for url in [
        // Nothing listens there.
        format!("mqtt://app:{PASSWORD}@127.0.0.1:{closed_port}"),
        // Not a port number.
        format!("mqtt://app:{PASSWORD}@127.0.0.1:port"),
        // Not an MQTT URL.
        format!("http://app:{PASSWORD}@127.0.0.1:1883"),
    ] {
        let err = MqttBroker::connect(&url, config.clone())
            .await
            .expect_err("no broker on a closed port or a malformed URL");
        assert_hidden(&err);
    }
}

/// Connecting (to a closed port and to the server), publishing and
/// receiving log nothing that shows the password, at any level.
#[tokio::test(flavor = "multi_thread")]
async fn no_password_in_logs() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let config = MqttConfig::default()
        .topic_prefix(&format!("txmsg-test/{}/", uuid::Uuid::now_v7().simple()))
        .and_then(|c| c.connect_timeout(Duration::from_secs(2)))
        .expect("valid settings");
    txmsg_testkit::broker::no_password_in_logs(
        move |url: String| {
            let config = config.clone();
            async move { MqttBroker::connect(&url, config).await }
        },
        &with_password(&mqtt_url(), "txmsg"),
        &format!("mqtt://app:{PASSWORD}@127.0.0.1:{closed_port}"),
        PASSWORD,
        "redact",
    )
    .await;
}
