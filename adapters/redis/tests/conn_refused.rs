//! A Redis that refuses connections: a closed port.

use txmsg_redis::{RedisBroker, RedisConfig};

#[tokio::test]
async fn closed_port_is_a_retryable_error() {
    // Bind a port and close it again: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let url = format!("redis://127.0.0.1:{port}");
    match RedisBroker::connect(&url, RedisConfig::default()).await {
        Ok(b) => panic!("connected to a closed port: {b:?}"),
        Err(e) => {
            assert!(e.is_retryable(), "{e:?}");
            assert!(e.is_broker_unavailable(), "{e:?}");
        }
    }
}
