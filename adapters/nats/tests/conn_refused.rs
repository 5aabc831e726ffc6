//! A NATS server that refuses connections (a closed port).

use std::time::{Duration, Instant};

use txmsg_nats::{NatsBroker, NatsConfig};

#[tokio::test(flavor = "multi_thread")]
async fn closed_port_is_a_retryable_error() {
    let config = NatsConfig::default()
        .with_connect_timeout(Duration::from_secs(3))
        .expect("a valid timeout");
    let started = Instant::now();
    let err = NatsBroker::connect("nats://127.0.0.1:1", config)
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.is_broker_unavailable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
