//! Passwords are never shown: not by `Debug`, not in connection errors.
//!
//! Runs against the MQTT server at `MQTT_URL` (default
//! `mqtt://127.0.0.1:1884`, the Mosquitto of `scripts/mosquitto.conf`).

use std::time::Duration;
use txmsg_testkit::redaction::{assert_hidden, with_password};

use txmsg_mqtt::{MqttBroker, MqttConfig};

/// The password of every URL built here.
const PASSWORD: &str = "s3cr3t-pw";

fn mqtt_url() -> String {
    std::env::var("MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1884".to_owned())
}

#[tokio::test]
async fn debug_and_connection_errors_never_show_the_password() {
    // A server that allows anonymous clients ignores the password; one that
    // checks it refuses it: either way it is not shown.
    let url = with_password(&mqtt_url(), "txmsg", PASSWORD);
    match MqttBroker::connect(&url, MqttConfig::default()).await {
        Ok(broker) => {
            let shown = format!("{broker:?}");
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(shown.contains("txmsg"), "{shown}");
        }
        Err(e) => assert_hidden(&e, PASSWORD),
    }
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let config = MqttConfig::default()
        .with_connect_timeout(Duration::from_secs(2))
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
        assert_hidden(&err, PASSWORD);
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
        .with_topic_prefix(&format!("txmsg-test/{}/", uuid::Uuid::now_v7().simple()))
        .and_then(|c| c.with_connect_timeout(Duration::from_secs(2)))
        .expect("valid settings");
    txmsg_testkit::broker::no_password_in_logs(
        move |url: String| {
            let config = config.clone();
            async move { MqttBroker::connect(&url, config).await }
        },
        &with_password(&mqtt_url(), "txmsg", PASSWORD),
        &format!("mqtt://app:{PASSWORD}@127.0.0.1:{closed_port}"),
        PASSWORD,
        "redact",
    )
    .await;
}
