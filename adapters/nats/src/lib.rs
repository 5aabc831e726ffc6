//! NATS JetStream broker for [txmsg](https://docs.rs/txmsg), on
//! [async-nats](https://docs.rs/async-nats), with publish acknowledgements.
//!
//! [`NatsBroker`] implements [`Broker`](txmsg_core::Broker): the relay hands
//! it each committed message, and it resolves only once JetStream has
//! stored the message and answered with a PubAck, so a row is marked sent
//! only after the broker has it (at least once out).
//!
//! # Stream and subjects
//!
//! One JetStream stream (default `TXMSG`, file storage) takes every subject
//! under the configured prefix (default `txmsg.>`); it is created when the
//! broker connects and does not exist yet. A stream that exists keeps every
//! setting its operator gave it (limits, replicas, storage, description):
//! connect only adds txmsg's subjects and sets the configured duplicate
//! window, when they differ. Topic `orders.placed` is published on subject
//! `txmsg.orders.placed`.
//!
//! # Wire format
//!
//! CloudEvents in binary content mode over NATS headers (the attribute
//! headers use the `ce-` prefix of the CloudEvents HTTP binding):
//!
//! | NATS                    | value                                   |
//! |-------------------------|-----------------------------------------|
//! | subject                 | `<prefix>.<topic>`                      |
//! | header `Nats-Msg-Id`    | `<topic>/<idempotency key>` (JetStream deduplication) |
//! | header `ce-id`          | idempotency key                         |
//! | header `ce-type`        | topic                                   |
//! | header `ce-source`      | [`NatsConfig::source`]                  |
//! | header `ce-specversion` | `1.0`                                   |
//! | header `ce-time`        | creation time, RFC 3339                 |
//! | header `ce-partitionkey`| ordering key, when there is one         |
//! | header `traceparent`    | W3C trace context, when there is one    |
//! | header `content-type`   | `application/json`                      |
//! | header `txmsg-id`       | message id (UUIDv7)                     |
//! | other headers           | the message's other headers, as is      |
//! | payload                 | the JSON payload, byte for byte         |
//!
//! Deliveries are read back from the table above (header names without
//! regard to case); messages of other producers in that form are read too.
//! One without `ce-id`, or with a content type other than JSON, reaches the
//! consumer as an [`Undecodable`](txmsg_core::consumer::Undecodable) with
//! the reason.
//!
//! # Consumer groups
//!
//! [`Broker::subscribe`](txmsg_core::Broker::subscribe) creates (or reuses)
//! a durable pull consumer per (group, topic), named by
//! [`NatsBroker::durable_name`], filtered on the topic's subject, with
//! explicit acks. All subscriptions of a group pull from that one consumer,
//! so they share its messages. Each subscription holds at most its
//! `prefetch` deliveries unsettled (the adapter pulls no more than that);
//! the consumer's `max_ack_pending` ([`NatsConfig::max_ack_pending`]) caps
//! the group as a whole. A delivery still held (its handler retrying, or
//! waiting behind another message of its key) is kept in progress (`+WPI`
//! every third of `ack_wait`), so the server does not deliver it again. An
//! ack is a double ack (the server confirms it); a nack is a confirmed
//! `Nak`, and the subscription asks for nothing more until the server has
//! it, so the message comes back at once, marked redelivered, before later
//! messages of its key. A delivery dropped unsettled is a `Nak` too. When a
//! subscription is closed, it asks for nothing more and passes on what its
//! open pull request still brings, so that a stopping consumer hands it
//! back after what it holds, in delivery order; when it is dropped, those
//! are handed back.
//!
//! # What NATS does not promise
//!
//! - **A new group sees old messages.** Consumers use deliver policy
//!   `All`: a group's first subscribe starts at the oldest message the
//!   stream still holds on that subject, not at "now". With the stream's
//!   default limits (no age or size limit) that is every message ever
//!   published to the topic; give the stream limits of your own (connect
//!   keeps them) or delete the consumer with
//!   [`NatsBroker::delete_group_consumer`] to start over.
//! - **Deduplication is bounded by the window.** A republish with the same
//!   `Nats-Msg-Id` is acknowledged and dropped only within
//!   [`NatsConfig::duplicate_window`]; after it, the message is stored and
//!   delivered again. Consumers must still deduplicate on the idempotency
//!   key.
//! - **Order.** With one subscription, messages arrive in stream order, so
//!   per key in publish order, and a nacked delivery comes back before
//!   later messages of its key; a delivery of a crashed process comes back
//!   after `ack_wait`, after later messages, and the subscriptions of one
//!   group see no common order.
//! - **The stream's limits win.** `max_age`, `max_msgs` and `max_bytes`
//!   (with discard old) delete messages whether or not their groups
//!   acknowledged them: size them above the largest backlog a group can
//!   build.
//! - **Crashes wait for `ack_wait`.** Deliveries of a process that dies
//!   without a word (no Nak sent) come back after
//!   [`NatsConfig::ack_wait`]. A delivery dropped outside a tokio runtime
//!   also waits for it.
//! - **Size.** A message larger than the server's `max_payload` (1 MiB by
//!   default) is refused with a permanent error.
//! - **Outages.** async-nats reconnects by itself. While it knows the
//!   connection is down, publishes fail at once with
//!   [`Error::BrokerUnavailable`](txmsg_core::Error::BrokerUnavailable); a
//!   connection that died silently makes a publish fail (retryable) after
//!   [`NatsConfig::publish_timeout`]. Subscriptions keep pulling across
//!   reconnects rather than ending.
//!
//! ```no_run
//! use txmsg_nats::{NatsBroker, NatsConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = NatsBroker::connect(
//!     "nats://127.0.0.1:4222",
//!     NatsConfig::default().with_source("/orders")?,
//! )
//! .await?;
//! # let _ = broker;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! | feature | enables                                             | default |
//! |---------|-----------------------------------------------------|---------|
//! | `tls`   | `tls://` servers, through rustls with the `ring` provider | no |
//!
//! With `tls`, a `tls://` server URL connects through rustls, and so does a
//! `nats://` one whose server asks for TLS. The server's certificate is
//! checked against the system's trust store plus the CA file of
//! the [`NatsConfig::tls`] CA file ([`TlsFiles::ca_file`](txmsg_core::tls::TlsFiles::ca_file)); [`TlsFiles::client_auth`](txmsg_core::tls::TlsFiles::client_auth) adds a
//! client certificate and key (mutual TLS). Setting either makes TLS
//! required, so the client never falls back to plain text. When the process
//! has no default rustls crypto provider, connecting installs rustls's `ring`
//! provider as the default.
//!
//! Without `tls`, only plain `nats://` connections work: a `tls://` URL and
//! the TLS settings are refused with
//! [`Error::Config`](txmsg_core::Error::Config). A client built with options
//! of your own can be passed to [`NatsBroker::with_client`].
//!
//! Credentials in the URL (`nats://user:password@host`, `nats://token@host`)
//! are never shown: `Debug` shows neither the URL nor the credentials, and no
//! error message quotes the URL.

mod broker;
mod config;
mod wire;

pub use broker::NatsBroker;
pub use config::NatsConfig;
pub use wire::{CLOUDEVENTS_PREFIX, MSG_ID_HEADER, TXMSG_ID_HEADER};
