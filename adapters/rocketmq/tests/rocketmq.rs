//! Integration tests against the running RocketMQ name server and broker,
//! found through `ROCKETMQ_URL` (default `rocketmq://127.0.0.1:9876`, what
//! `scripts/rocketmq.sh` starts).

use txmsg_rocketmq::{RocketBroker, RocketConfig};
use txmsg_testkit::broker as suite;

fn url() -> String {
    std::env::var("ROCKETMQ_URL").unwrap_or_else(|_| "rocketmq://127.0.0.1:9876".to_owned())
}

/// A broker whose topics and groups carry a prefix of their own.
async fn broker() -> RocketBroker {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let config = RocketConfig::default()
        .with_topic_prefix(&format!("t{}_", &id[16..]))
        .expect("a valid topic prefix");
    let url = url();
    match RocketBroker::connect(&url, config).await {
        Ok(b) => b,
        Err(e) => panic!("cannot reach RocketMQ at ROCKETMQ_URL={url}: {e:?}"),
    }
}

/// A topic prefix of its own per conformance case.
struct Rocket(RocketBroker);

impl suite::BrokerFixture for Rocket {
    type Broker = RocketBroker;

    async fn start() -> Self {
        Rocket(broker().await)
    }

    async fn broker(&self) -> RocketBroker {
        self.0.clone()
    }

    async fn finish(self) {}
}

txmsg_testkit::broker_conformance!(Rocket);
