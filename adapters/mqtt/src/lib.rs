//! MQTT 5 broker for [txmsg](https://docs.rs/txmsg), on
//! [rumqttc](https://docs.rs/rumqttc) (its `v5` client), with PUBACK
//! confirms.
//!
//! [`MqttBroker`] implements [`Broker`](txmsg_core::Broker). Topic
//! `orders.placed` is published to the MQTT topic `<prefix>orders.placed`
//! (prefix [`MqttConfig::topic_prefix`], `txmsg/` by default) at QoS 1, and
//! a publish resolves `Ok` only once its PUBACK arrived, so a row is marked
//! sent only after the server has it (at least once out). Publishes are
//! pipelined on one connection; a PUBACK with an error reason is an error,
//! a missing one a retryable error after [`MqttConfig::publish_timeout`],
//! and a lost connection [`Error::BrokerUnavailable`](txmsg_core::Error::BrokerUnavailable)
//! for every publish awaiting its PUBACK (the next publish connects again).
//! A message larger than [`MqttConfig::max_packet_size`] is refused with
//! [`Error::PayloadTooLarge`](txmsg_core::Error::PayloadTooLarge) before it
//! is sent.
//!
//! # Wire format
//!
//! CloudEvents MQTT 5 binding, binary content mode: the payload is the
//! JSON body byte for byte, the attributes are user properties.
//!
//! | MQTT 5                            | value                                 |
//! |-----------------------------------|---------------------------------------|
//! | topic                             | topic prefix + topic                  |
//! | QoS                               | 1                                     |
//! | content type                      | `application/json`                    |
//! | user property `ce-id`             | idempotency key                       |
//! | user property `ce-type`           | topic                                 |
//! | user property `ce-source`         | [`MqttConfig::source`]                |
//! | user property `ce-specversion`    | `1.0`                                 |
//! | user property `ce-time`           | creation time, RFC 3339               |
//! | user property `ce-partitionkey`   | ordering key, when there is one       |
//! | user property `traceparent`       | W3C trace context, when there is one  |
//! | user property `txmsg-id`          | message id (UUIDv7)                   |
//! | other user properties             | the message's other headers, as is    |
//! | payload                           | the JSON payload                      |
//!
//! Deliveries are read back from the table above, by the rules every
//! broker shares ([`Binding::decode`](txmsg_core::cloudevents::Binding::decode)).
//! Events from other producers are read too: without `ce-type` the topic is
//! the MQTT topic less the prefix, without a `txmsg-id` that is a UUID a
//! fresh id is given, without `ce-time` the time of receipt is used. A
//! message with no `ce-id` or a content type other than JSON reaches the
//! consumer as an [`Undecodable`](txmsg_core::consumer::Undecodable) with
//! the reason.
//!
//! # Subscriptions
//!
//! A group subscribes with the shared subscription
//! `$share/<group>/<prefix><topic>` at QoS 1 (MQTT 5; Mosquitto 2 and later
//! support it), one MQTT connection and persistent session
//! (`clean_start = false`, expiry [`MqttConfig::session_expiry`]) per
//! [`Subscription`](txmsg_core::consumer::Subscription). The subscription's
//! `prefetch` is the session's receive maximum; deliveries are acknowledged
//! by hand (PUBACK on [`Delivery::ack`](txmsg_core::consumer::Delivery::ack)).
//! When a subscription is dropped, its session is kept, and the group's next
//! subscription through the same [`MqttBroker`] resumes it, getting the
//! messages queued for it and its unacknowledged ones again (marked
//! redelivered).
//!
//! When its connection drops, a subscription reconnects and resumes its
//! session by itself; after a few failed attempts in a row (about three
//! seconds when the server refuses connections) it ends instead: its
//! `next` returns `None`, and the consumer runtime subscribes again, which
//! resumes the session once the server is reachable. The publishing
//! connection is opened again by the next publish; publishes during an
//! outage fail with
//! [`Error::BrokerUnavailable`](txmsg_core::Error::BrokerUnavailable).
//!
//! # Server settings
//!
//! The PUBACK says that the server has the message, not that it will keep
//! it for the group: Mosquitto keeps at most `max_queued_messages` (1 000
//! by default) and `max_queued_bytes` per session beyond those in flight,
//! and drops the rest without telling anyone, after the publisher got its
//! PUBACK (the relay has marked them sent). A group whose consumer is slow
//! or down for a while then loses confirmed messages. MQTT mode needs a
//! server that keeps every queued message; for Mosquitto:
//!
//! ```text
//! max_queued_messages 0
//! max_queued_bytes 0
//! persistence true
//! persistence_location /var/lib/mosquitto/
//! ```
//!
//! The adapter cannot read the server's settings; the tests of this crate
//! run against a Mosquitto configured this way (`scripts/mosquitto.conf`),
//! and the conformance case for a slow consumer (2 000 messages past a held
//! delivery) fails on one with the defaults.
//!
//! # What MQTT cannot promise
//!
//! - **No negative ack.** MQTT has no way to give one message back. A
//!   nacked delivery, or one dropped unsettled, makes the subscription
//!   disconnect and resume its session: the server then sends *every*
//!   unacknowledged message of that subscription again, marked redelivered
//!   (consumers deduplicate by idempotency key, so this is safe, but it
//!   costs a reconnect). Redelivery happens only on reconnect; with a
//!   session expiry of zero, nothing is redelivered.
//! - **No group queue before the first subscribe.** A group exists on the
//!   server only as the shared subscriptions of live or persisted sessions;
//!   messages published before it first subscribed never reach it (the
//!   suite does not ask for this either).
//! - **A group's messages wait in its members' sessions, not in a group
//!   queue.** The server hands each message to one member of the shared
//!   subscription, round robin, connected or not. A member at its receive
//!   maximum (`prefetch`) gets its share queued: it waits for that member
//!   and is not moved to another one. A persisted session of a
//!   subscription that ended keeps getting its share; the group's next
//!   subscription through the same [`MqttBroker`] resumes it, but a session
//!   left behind by a process that ended is resumed by nobody: its messages
//!   are lost when it expires. Keep [`MqttConfig::session_expiry`] longer
//!   than any outage you ride out, and know that a crashed process's
//!   sessions hold messages until then.
//! - **Ordering only per subscriber.** Messages of a key arrive in publish
//!   order at one subscription (one session, QoS 1, one publishing
//!   connection); across the members of a group the server spreads them
//!   round robin, so two members may handle messages of one key at once
//!   and out of order. A nack's redelivery also comes after messages sent
//!   meanwhile.
//! - **Retained messages, QoS 2 and MQTT 3.1.1 are not used.** MQTT 3.1.1
//!   has neither user properties nor shared subscriptions in the standard.
//!
//! # TLS
//!
//! With the `tls` feature, an `mqtts://` URL (or `ssl://`; port 8883 by
//! default) connects through rustls with the `ring` provider. The server's
//! certificate is checked against the system's trust store, or only against
//! the CA file of the [`MqttConfig::tls`] CA file ([`TlsFiles::ca_file`](txmsg_core::tls::TlsFiles::ca_file));
//! [`TlsFiles::client_auth`](txmsg_core::tls::TlsFiles::client_auth) adds a client certificate and key (mutual
//! TLS). Without the feature, an `mqtts://` URL and the TLS settings are
//! refused with [`Error::Config`](txmsg_core::Error::Config), never used in
//! plain text.
//!
//! The password of a URL (`mqtt://user:password@host`) is never shown:
//! `Debug` shows the server and the user only, and no error message quotes
//! the URL.
//!
//! # Feature flags
//!
//! | feature | enables                                                  | default |
//! |---------|----------------------------------------------------------|---------|
//! | `tls`   | `mqtts://` URLs, through rustls with the `ring` provider | no      |
//!
//! # Examples
//!
//! ```no_run
//! use txmsg_mqtt::{MqttBroker, MqttConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = MqttBroker::connect(
//!     "mqtt://127.0.0.1:1883",
//!     MqttConfig::default().with_topic_prefix("shop/")?.with_source("/orders")?,
//! )
//! .await?;
//! assert_eq!(broker.mqtt_topic("orders.placed"), "shop/orders.placed");
//! # Ok(()) }
//! ```

mod broker;
mod config;
mod url;
mod wire;

pub use broker::MqttBroker;
pub use config::MqttConfig;
pub use wire::TXMSG_ID_PROPERTY;
