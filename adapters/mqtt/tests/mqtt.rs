//! Integration tests against a real MQTT 5 server (Mosquitto ≥ 2), found
//! through `MQTT_URL` (default `mqtt://127.0.0.1:1884`, the Mosquitto of `scripts/mosquitto.conf`).
//!
//! Runs every case of the broker conformance suite that MQTT meets; for
//! `group_members_share_messages`, which MQTT cannot meet (the server
//! does not move a message queued for one member of a shared subscription
//! to another when the first is at its receive maximum), it checks the
//! documented behaviour instead.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use txmsg_core::consumer::{SubscribeSpec, Subscription};
use txmsg_core::{Broker, Envelope};
use txmsg_mqtt::{MqttBroker, MqttConfig};
use txmsg_testkit::broker as suite;
use txmsg_testkit::proxy::TcpProxy;
use uuid::Uuid;

fn url() -> String {
    std::env::var("MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1884".to_owned())
}

/// A broker with a topic prefix of its own, and a conformance prefix.
async fn broker() -> (MqttBroker, String) {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let config = MqttConfig::default()
        .with_topic_prefix(&format!("txmsg-test/{id}/"))
        .expect("a valid topic prefix");
    let url = url();
    let broker = match MqttBroker::connect(&url, config).await {
        Ok(b) => b,
        Err(e) => panic!("cannot reach the MQTT server at MQTT_URL={url}: {e:?}"),
    };
    (broker, format!("c{}", &id[20..]))
}

/// A topic prefix of its own per conformance case.
struct Mqtt(MqttBroker);

impl suite::BrokerFixture for Mqtt {
    type Broker = MqttBroker;

    async fn start() -> Self {
        Mqtt(broker().await.0)
    }

    async fn broker(&self) -> MqttBroker {
        self.0.clone()
    }

    async fn finish(self) {}
}

// Every case but `group_members_share_messages`, which MQTT cannot keep
// as stated (see the crate docs: a member at its receive maximum gets its
// share queued); `group_members_share_messages_as_documented` below holds
// it to what MQTT does. The slow-consumer case needs the server settings
// of `scripts/mosquitto.conf`.
txmsg_testkit::broker_conformance!(Mqtt:
    delivers_every_field,
    one_idempotency_key_on_two_topics_is_two_messages,
    every_group_gets_every_message,
    nack_redelivers,
    dropped_delivery_is_redelivered,
    dropped_subscription_redelivers,
    per_key_order_is_kept,
    handed_back_message_holds_its_key,
    order_across_a_restart_of_the_only_consumer,
    large_and_empty_payloads,
    queue_outlives_its_subscribers,
    subscribe_refuses_bad_specs,
    slow_consumer_loses_nothing,
);

/// A delivery held for 3 s is not delivered again while its session lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_delivery_is_not_redelivered() {
    let (b, prefix) = broker().await;
    suite::held_delivery_is_not_redelivered(&b, &prefix, Duration::from_secs(3)).await;
}

/// The broker, connected through a proxy that cuts its connections, comes
/// back by itself: publishes are confirmed again, the group gets what was
/// published after the outage, and nothing confirmed before is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_reconnects_after_connection_drop() {
    let id = Uuid::now_v7().simple().to_string();
    let config = MqttConfig::default()
        .with_topic_prefix(&format!("txmsg-test/{id}/"))
        .expect("a valid topic prefix");
    let (proxy, via_proxy) = TcpProxy::for_url(&url(), 1883).await;
    suite::reconnects_after_connection_drop(
        || async move {
            match MqttBroker::connect(&via_proxy, config).await {
                Ok(b) => b,
                Err(e) => panic!("cannot reach the MQTT server at MQTT_URL={}: {e:?}", url()),
            }
        },
        &proxy,
        &format!("r{}", &id[20..]),
    )
    .await;
}

/// A subscription whose connection stays down longer than its reconnect
/// attempts last ends (`next` returns `None`, so the consumer runtime
/// subscribes again) rather than waiting forever, and subscribing again
/// once the server is back resumes its session: the message it held
/// unsettled comes again, and messages published meanwhile arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_ends_after_a_long_outage_and_resubscribing_resumes_it() {
    let id = Uuid::now_v7().simple().to_string();
    let config = MqttConfig::default()
        .with_topic_prefix(&format!("txmsg-test/{id}/"))
        .expect("a valid topic prefix");
    let (proxy, via_proxy) = TcpProxy::for_url(&url(), 1883).await;
    let b = MqttBroker::connect(&via_proxy, config)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the MQTT server at MQTT_URL={}: {e:?}", url()));
    let topic = format!("r{}.long", &id[20..]);
    let group_spec = spec("g", &topic, 4);
    let mut sub = b.subscribe(&group_spec).await.expect("subscribe");
    let held_msg = envelope(&topic, 0);
    b.publish(&held_msg).await.expect("publish");
    let held = tokio::time::timeout(suite::WAIT, sub.next())
        .await
        .expect("a delivery")
        .expect("the subscription is open");
    assert_eq!(held.message.as_ref().expect("decodable").id, held_msg.id);

    proxy.set_down();
    let end = tokio::time::timeout(suite::WAIT, sub.next())
        .await
        .expect("the subscription ends while the server stays unreachable");
    assert!(end.is_none(), "nothing can be delivered during the outage");
    drop(held);
    proxy.set_up();

    let later = envelope(&topic, 1);
    let deadline = std::time::Instant::now() + suite::WAIT;
    while let Err(e) = b.publish(&later).await {
        assert!(e.is_retryable(), "{e:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "no publish after the outage: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut again = b.subscribe(&group_spec).await.expect("subscribe again");
    let mut got = BTreeSet::new();
    while got.len() < 2 {
        let d = tokio::time::timeout(suite::WAIT, again.next())
            .await
            .expect("the resumed session delivers")
            .expect("the subscription is open");
        let e = d.message.as_ref().expect("decodable").clone();
        if e.id == held_msg.id {
            assert!(
                d.redelivered,
                "the held message comes again marked redelivered"
            );
        }
        got.insert(e.id);
        d.ack().await.expect("ack");
    }
    assert_eq!(got, BTreeSet::from([held_msg.id, later.id]));
}

fn envelope(topic: &str, n: usize) -> Envelope {
    let id = Uuid::now_v7();
    Envelope::new(
        id,
        topic,
        format!("n-{n}-{id}"),
        format!(r#"{{"n":{n}}}"#).into_bytes(),
        Utc::now(),
    )
}

fn spec(group: &str, topic: &str, prefetch: u16) -> SubscribeSpec {
    SubscribeSpec {
        group: group.to_owned(),
        topic: topic.to_owned(),
        prefetch,
    }
}

/// Receives and acknowledges deliveries until none arrives for `quiet`.
async fn drain(sub: &mut Subscription, quiet: Duration) -> Vec<Uuid> {
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(quiet, sub.next()).await {
        got.push(d.message.as_ref().expect("a decodable delivery").id);
        d.ack().await.expect("ack");
    }
    got
}

/// Members of one group (one shared subscription) share its messages:
/// each message goes to exactly one member, none is lost. A message the
/// server handed to a member that holds its `prefetch` unsettled waits for
/// that member (MQTT does not move it to another member); it arrives once
/// the member settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_share_messages_as_documented() {
    const N: usize = 20;
    let (b, prefix) = broker().await;
    let topic = format!("{prefix}.share");
    let group = format!("{prefix}.g");
    let mut a = b.subscribe(&spec(&group, &topic, 1)).await.unwrap();
    let mut m = b.subscribe(&spec(&group, &topic, 1)).await.unwrap();
    let sent: Vec<Envelope> = (0..N).map(|n| envelope(&topic, n)).collect();
    for e in &sent {
        b.publish(e).await.unwrap();
    }
    let held = tokio::time::timeout(suite::WAIT, a.next())
        .await
        .unwrap()
        .unwrap();
    let mut got = vec![held.message.as_ref().unwrap().id];
    let from_m = drain(&mut m, Duration::from_secs(1)).await;
    assert!(!from_m.is_empty(), "the other member gets its share");
    assert!(
        from_m.len() < N - 1,
        "messages queued for the holding member wait for it"
    );
    got.extend(from_m);
    held.ack().await.unwrap();
    got.extend(drain(&mut a, Duration::from_secs(1)).await);
    got.extend(drain(&mut m, suite::QUIET).await);
    let ids: BTreeSet<Uuid> = got.iter().copied().collect();
    assert_eq!(got.len(), ids.len(), "a message was delivered twice");
    assert_eq!(
        ids,
        sent.iter().map(|e| e.id).collect(),
        "a message was lost"
    );
}

/// A closed port is a retryable `BrokerUnavailable`, not a hang.
#[tokio::test]
async fn closed_port_is_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        MqttBroker::connect(&format!("mqtt://127.0.0.1:{port}"), MqttConfig::default()),
    )
    .await
    .expect("connecting to a closed port must fail fast")
    .unwrap_err();
    assert!(err.is_broker_unavailable(), "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
}

/// A malformed URL is a configuration error naming `url`.
#[tokio::test]
async fn bad_url_is_a_config_error() {
    for url in ["http://127.0.0.1", "mqtt://", "mqtt://host:notaport"] {
        let err = MqttBroker::connect(url, MqttConfig::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, txmsg_core::Error::Config { field: "url", .. }),
            "{url}: {err:?}"
        );
    }
}

/// `Debug` never shows the password.
#[tokio::test]
async fn debug_hides_the_password() {
    let url = url();
    let with_password = url.replacen("mqtt://", "mqtt://someone:hunter2@", 1);
    // Mosquitto may accept or refuse the login; either way nothing leaks.
    match MqttBroker::connect(&with_password, MqttConfig::default()).await {
        Ok(b) => assert!(!format!("{b:?}").contains("hunter2")),
        Err(e) => assert!(!format!("{e:?} {e}").contains("hunter2")),
    }
}

/// A message larger than `max_packet_size` is refused before it is sent,
/// with an error that retrying cannot fix.
#[tokio::test]
async fn oversize_message_is_refused() {
    let (b, prefix) = broker().await;
    let small = MqttBroker::connect(
        &url(),
        b.config()
            .clone()
            .with_max_packet_size(4096)
            .expect("a valid size"),
    )
    .await
    .expect("connect");
    let mut e = envelope(&format!("{prefix}.big"), 1);
    e.payload = vec![b'1'; 8192];
    let err = small.publish(&e).await.expect_err("too large");
    assert!(
        matches!(err, txmsg_core::Error::PayloadTooLarge { limit: 4096, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

/// A delivery handed back after its subscription was closed (the
/// connection is gone) is handed back all the same: the session keeps it
/// unacknowledged and the server sends it again. The call says so rather
/// than failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_back_after_the_connection_closed_succeeds() {
    let (broker, prefix) = broker().await;
    let topic = format!("{prefix}.handback");
    let group = spec(&format!("{prefix}.g"), &topic, 4);
    let mut sub = broker.subscribe(&group).await.expect("subscribe");
    let sent = [envelope(&topic, 0), envelope(&topic, 1)];
    for e in &sent {
        broker.publish(e).await.expect("publish");
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a delivery within 10 s")
            .expect("the subscription is open");
        held.push(d);
    }
    // The consumer stops: it closes the subscription, then hands back what
    // it holds (as the runtime does), after the connection has gone.
    let late = sub.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for d in held.into_iter().chain(late) {
        d.nack().await.expect("a hand-back after close");
    }
    drop(sub);

    let mut again = broker.subscribe(&group).await.expect("subscribe again");
    let got = drain(&mut again, Duration::from_secs(3)).await;
    let ids: BTreeSet<Uuid> = got.into_iter().collect();
    assert_eq!(
        ids,
        sent.iter().map(|e| e.id).collect(),
        "both are delivered again"
    );
}
