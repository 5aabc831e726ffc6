//! RabbitMQ broker for [txmsg](https://docs.rs/txmsg), on
//! [lapin](https://docs.rs/lapin), with publisher confirms.
//!
//! [`RabbitBroker`] implements [`Broker`](txmsg_core::Broker): the relay hands
//! it each committed message, and it resolves only once RabbitMQ has
//! confirmed the message, so a row is marked sent only after the broker has
//! it (at least once out). Messages go to one durable topic exchange with the
//! topic as routing key, as persistent JSON in CloudEvents binary content mode,
//! so consumers in any language can read them:
//!
//! | AMQP                                  | value                                   |
//! |---------------------------------------|-----------------------------------------|
//! | routing key                           | topic                                   |
//! | `content_type`                        | `application/json`                      |
//! | `delivery_mode`                       | 2 (persistent)                          |
//! | `message_id`                          | idempotency key                         |
//! | `timestamp`                           | creation time (seconds)                 |
//! | header `cloudEvents_id`               | idempotency key                         |
//! | header `cloudEvents_type`             | topic                                   |
//! | header `cloudEvents_source`           | [`RabbitConfig::source`]                |
//! | header `cloudEvents_specversion`      | `1.0`                                   |
//! | header `cloudEvents_time`             | creation time, RFC 3339                 |
//! | header `cloudEvents_partitionkey`     | ordering key, when there is one         |
//! | header `cloudEvents_traceparent`      | W3C trace context, when there is one    |
//! | header `txmsg-id`                     | message id (UUIDv7)                     |
//! | other headers                         | the message's other headers, as is      |
//! | body                                  | the JSON payload, byte for byte         |
//!
//! Consumer groups subscribe through [`Broker::subscribe`](txmsg_core::Broker::subscribe):
//! each (group, topic) gets a durable queue named `<exchange>.<group>.<topic>`,
//! bound with the topic as routing key and consumed with the group's
//! prefetch, so every group gets every message and the consumers of one
//! group share them. Deliveries are read back from the table above; messages
//! from other producers in CloudEvents binary content mode are read too
//! (`cloudEvents:` prefixes, the `message_id` property and the routing key
//! stand in for missing attributes), and one that cannot be read (no id,
//! another content type) reaches the consumer as an
//! [`Undecodable`](txmsg_core::consumer::Undecodable) with the reason.
//! [`RabbitCodec`] writes and reads this format for programs that publish or
//! consume with lapin directly.
//!
//! The broker reconnects by itself after the connection drops; publishes
//! during the outage fail at once with a retryable error, and the relay
//! tries them again later. Subscriptions end with the connection, and the
//! consumer runtime subscribes again.
//!
//! ```no_run
//! use txmsg_rabbitmq::{RabbitBroker, RabbitConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = RabbitBroker::connect(
//!     "amqp://guest:guest@127.0.0.1:5672/%2f",
//!     RabbitConfig::default().with_source("/orders")?,
//! )
//! .await?;
//! broker.bind_queue("billing", "orders.#").await?;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! | feature | enables                                  | default |
//! |---------|------------------------------------------|---------|
//! | `tls`   | `amqps://` URLs, through rustls          | no      |
//!
//! With `tls`, an `amqps://` URL (port 5671 by default) connects through
//! rustls, checking the server's certificate against the system's trust
//! store. Without it, an `amqps://` URL is refused with
//! [`Error::Config`](txmsg_core::Error::Config) rather than used in plain
//! text.
//!
//! The password of the URL is never shown: `Debug` and the connect span show
//! the URL with `***` in its place, and no error message quotes the URL.

mod broker;
mod config;
mod confirm;
mod consume;
mod link;
mod url;
mod wire;

pub use broker::RabbitBroker;
pub use config::{QueueType, RabbitConfig};
pub use wire::{CLOUDEVENTS_PREFIX, RabbitCodec, TXMSG_ID_HEADER};
