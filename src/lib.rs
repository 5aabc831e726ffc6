//! Reliable messaging with eventual consistency for Rust services.
//!
//! A service function that changes its database and must tell the world about
//! it is annotated once; txmsg writes the message to an outbox table in the
//! same local transaction, publishes it to the broker right after commit, and
//! republishes anything a crash left behind. The guarantee: **a message is
//! delivered if and only if its local transaction committed, at least once.**
//!
//! ```no_run
//! use txmsg::sqlite::SqliteStore;
//! use txmsg::memory::MemoryBroker;
//! use txmsg::prelude::*;
//! use txmsg::{Outbox, Relay, RelayConfig, Tx};
//!
//! #[derive(serde::Serialize)]
//! struct OrderPlaced { id: i64, total_cents: i64 }
//!
//! #[txmsg::transactional_message(topic = "orders.placed", key = id, idempotency_key = format!("order-{id}"))]
//! async fn place_order(
//!     tx: &mut Tx<'_, sqlx::Sqlite>,
//!     id: i64,
//!     total_cents: i64,
//! ) -> Result<OrderPlaced, txmsg::Error> {
//!     sqlx::query("INSERT INTO orders (id, total_cents) VALUES (?, ?)")
//!         .bind(id)
//!         .bind(total_cents)
//!         .execute(&mut **tx)
//!         .await?;
//!     Ok(OrderPlaced { id, total_cents })
//! }
//!
//! # async fn run() -> txmsg::Result<()> {
//! let store = SqliteStore::connect("sqlite::memory:").await?;
//! store.migrate().await?;
//! let relay = Relay::new(store.clone(), MemoryBroker::new(), RelayConfig::default())?.start();
//! let outbox = Outbox::new(&store).with_relay(&relay);
//!
//! // One call: begin, run the body, write the message, commit, publish.
//! place_order_and_commit(&outbox, 1, 4200).await?;
//!
//! // Or compose several calls in the caller's transaction.
//! let mut tx = outbox.begin().await?;
//! place_order(&mut tx, 2, 100).await?;
//! place_order(&mut tx, 3, 250).await?;
//! tx.commit().await?;
//! relay.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! | feature    | enables                                              | default |
//! |------------|------------------------------------------------------|---------|
//! | `sqlite`   | [`sqlite::SqliteStore`], the embedded store            | no      |
//! | `memory`   | [`memory::MemoryBroker`], the in-process broker       | no      |
//! | `postgres` | [`postgres::PgStore`] (sqlx, PostgreSQL ≥ 12)         | no      |
//! | `rabbitmq` | [`rabbitmq::RabbitBroker`] (lapin, publisher confirms)| no      |
//! | `mysql`    | [`mysql::MySqlStore`] (sqlx, MariaDB >= 10.6, MySQL 8) | no |
//! | `nats`     | [`nats::NatsBroker`] (JetStream, publish acks, durable pull consumers) | no |
//! | `redis`    | [`redis::RedisBroker`] (Redis Streams, consumer groups) | no |
//! | `mqtt`     | [`mqtt::MqttBroker`] (MQTT 5, QoS 1, shared subscriptions) | no |
//! | `rocketmq` | [`rocketmq::RocketBroker`] (SEND_OK confirms, a message queue per key, ordered consumption) | no |
//! | `opentelemetry` | `traceparent` captured when a message is written; handler spans continue the trace | no |
//! | `testing`  | [`testing`]: an in-memory harness with a manual clock, fault injection and awaitable hooks | no |
//! | `tls`      | TLS (rustls) in every enabled network store and broker: `sslmode`/`ssl-mode`, `amqps://`, `tls://`, `rediss://`, `mqtts://` | no |
#![cfg_attr(docsrs, feature(doc_cfg))]
// The feature table links each feature's item; with the feature off, the
// link goes to the item's page on docs.rs, so the docs build with any set of
// features. The empty line ends the table, so the definitions are read as
// definitions.
#![doc = ""]
#![cfg_attr(
    not(feature = "sqlite"),
    doc = "[`sqlite::SqliteStore`]: https://docs.rs/txmsg-sqlite/latest/txmsg_sqlite/struct.SqliteStore.html"
)]
#![cfg_attr(
    not(feature = "memory"),
    doc = "[`memory::MemoryBroker`]: https://docs.rs/txmsg-memory/latest/txmsg_memory/struct.MemoryBroker.html"
)]
#![cfg_attr(
    not(feature = "postgres"),
    doc = "[`postgres::PgStore`]: https://docs.rs/txmsg-postgres/latest/txmsg_postgres/type.PgStore.html"
)]
#![cfg_attr(
    not(feature = "rabbitmq"),
    doc = "[`rabbitmq::RabbitBroker`]: https://docs.rs/txmsg-rabbitmq/latest/txmsg_rabbitmq/struct.RabbitBroker.html"
)]
#![cfg_attr(
    not(feature = "mysql"),
    doc = "[`mysql::MySqlStore`]: https://docs.rs/txmsg-mysql/latest/txmsg_mysql/type.MySqlStore.html"
)]
#![cfg_attr(
    not(feature = "nats"),
    doc = "[`nats::NatsBroker`]: https://docs.rs/txmsg-nats/latest/txmsg_nats/struct.NatsBroker.html"
)]
#![cfg_attr(
    not(feature = "redis"),
    doc = "[`redis::RedisBroker`]: https://docs.rs/txmsg-redis/latest/txmsg_redis/struct.RedisBroker.html"
)]
#![cfg_attr(
    not(feature = "mqtt"),
    doc = "[`mqtt::MqttBroker`]: https://docs.rs/txmsg-mqtt/latest/txmsg_mqtt/struct.MqttBroker.html"
)]
#![cfg_attr(
    not(feature = "rocketmq"),
    doc = "[`rocketmq::RocketBroker`]: https://docs.rs/txmsg-rocketmq/latest/txmsg_rocketmq/struct.RocketBroker.html"
)]
#![cfg_attr(
    not(feature = "testing"),
    doc = "[`testing`]: https://docs.rs/txmsg/latest/txmsg/testing/index.html"
)]

pub use txmsg_core::consumer;
pub use txmsg_core::half;
pub use txmsg_core::metrics;
pub use txmsg_core::tls;
pub use txmsg_core::{
    Broker, Clock, DeadFilter, DeadKeyPolicy, DeadLetter, Envelope, Error, HalfStore, Headers,
    Health, Ident, Message, Outbox, OutboxStats, Relay, RelayConfig, RelayHandle, Result, SqlStore,
    State, Store, SystemClock, Tables, TopicStats, Tx, validate_topic,
};
pub use txmsg_macros::{check_back, message_handler, transactional_message};

/// The sqlx txmsg is built on (0.9), so that a service writes its business
/// SQL with the same types the transaction ([`Tx`]) carries: with another
/// sqlx version in the service, `sqlx::Postgres` and `txmsg::sqlx::Postgres`
/// are different types and nothing fits. Depend on `sqlx = "0.9"` with the
/// features of your database, or use this re-export.
///
/// ```
/// use txmsg::sqlx::{Database, Transaction};
///
/// fn takes<DB: Database>(_: &mut txmsg::Tx<'_, DB>) {}
/// fn same_types<DB: Database>(_: &mut Transaction<'static, DB>) {}
/// ```
pub use sqlx;

/// The traits whose methods users call: `use txmsg::prelude::*;`.
pub mod prelude {
    pub use txmsg_core::{Broker, HalfStore, SqlStore, Store};
}

/// Building blocks for adapters and for code that drives the runtime by hand.
pub mod adapter {
    pub use txmsg_core::cloudevents;
    pub use txmsg_core::{
        BoxError, BoxFuture, ClaimRequest, Failure, HalfWriter, Inserted, Lease, MAX_IDENT_LEN,
        MAX_TOPIC_LEN, OutboxWriter, StateType, States, TRACEPARENT, TRACESTATE,
    };
}

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[doc(inline)]
pub use txmsg_postgres as postgres;

#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
#[doc(inline)]
pub use txmsg_mysql as mysql;

#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
#[doc(inline)]
pub use txmsg_sqlite as sqlite;

#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
#[doc(inline)]
pub use txmsg_rabbitmq as rabbitmq;

#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
#[doc(inline)]
pub use txmsg_nats as nats;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[doc(inline)]
pub use txmsg_redis as redis;

#[cfg(feature = "mqtt")]
#[cfg_attr(docsrs, doc(cfg(feature = "mqtt")))]
#[doc(inline)]
pub use txmsg_mqtt as mqtt;

#[cfg(feature = "rocketmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rocketmq")))]
#[doc(inline)]
pub use txmsg_rocketmq as rocketmq;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
#[doc(inline)]
pub use txmsg_memory as memory;

// Not public API: what the macros' generated code refers to. Anything here may
// change in any release.
#[doc(hidden)]
pub mod __private {
    pub use core::any::type_name;
    pub use core::convert::From;
    pub use core::future::Future;
    pub use core::marker::{Send, Sized};
    pub use core::option::Option::{self, Some};
    pub use core::result::Result::{self, Err, Ok};
    pub use core::time::Duration;
    pub use core::{concat, file, line, module_path};
    pub use std::boxed::Box;
    pub use std::string::String;

    pub use core::any::TypeId;
    pub use inventory;
    pub use serde;
    pub use txmsg_core::consumer::{AnyCtx, HandlerOutcome, HandlerRecord, run_handler};
    pub use txmsg_core::half::{
        CheckBackRecord, CheckStatus, HalfMessage, HalfOutbox, HalfProducer, Prepared,
        ResolveOutcome, run_check_back,
    };
    pub use txmsg_core::{
        BoxFuture, Envelope, Error, Message, Outbox, State, StateType, States, Tx,
    };
    pub use uuid::Uuid;

    /// Fixes the output type of the user's body, so that `?` inside it
    /// converts errors into the declared error type.
    #[inline(always)]
    pub fn typed<T, F: Future<Output = T>>(f: F) -> F {
        f
    }

    /// A type that can be the payload of a message: any `Serialize` type.
    ///
    /// Generated code builds messages through it, at the payload type of a
    /// `#[transactional_message]` function, so that a payload that is not
    /// `Serialize` gets this error message, there. (`Serialize` is a bound of
    /// the impl rather than a supertrait, so that rustc reports this trait.)
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the payload of a transactional message: it does not implement `serde::Serialize`",
        label = "the payload must implement `serde::Serialize`",
        note = "for local types consider adding `#[derive(serde::Serialize)]` to `{Self}`"
    )]
    pub trait Payload {
        /// `Message::new(topic, self)`.
        fn to_message(&self, topic: &str) -> Result<Message, Error>;
    }

    #[diagnostic::do_not_recommend]
    impl<T: ?Sized + serde::Serialize> Payload for T {
        #[inline]
        fn to_message(&self, topic: &str) -> Result<Message, Error> {
            Message::new(topic, self)
        }
    }

    /// A value that can be a message key (ordering or idempotency): any
    /// `Display` type.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a message key: it does not implement `std::fmt::Display`",
        label = "keys are turned into strings with `Display`"
    )]
    pub trait Key {
        /// The key as a `String`.
        fn to_key(&self) -> String;
    }

    #[diagnostic::do_not_recommend]
    impl<T: ?Sized + core::fmt::Display> Key for T {
        #[inline]
        fn to_key(&self) -> String {
            self.to_string()
        }
    }

    /// A value that can be the time to live of a message, given as an
    /// expression (`ttl = <expr>`): a `Duration`, or an `Option<Duration>`
    /// whose `None` means no expiry.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a ttl: expected a `std::time::Duration` or `Option<Duration>`",
        label = "expected a `Duration` or `Option<Duration>` (`None` for no expiry)",
        note = "a string literal such as `ttl = \"30m\"` is checked at compile time"
    )]
    pub trait IntoTtl {
        /// The time to live, `None` for none.
        fn into_ttl(self) -> Option<Duration>;
    }

    impl IntoTtl for Duration {
        #[inline]
        fn into_ttl(self) -> Option<Duration> {
            Some(self)
        }
    }

    impl IntoTtl for Option<Duration> {
        #[inline]
        fn into_ttl(self) -> Option<Duration> {
            self
        }
    }

    /// Sets the time to live of `message`, if there is one.
    #[inline]
    pub fn with_ttl(message: Message, ttl: Option<Duration>) -> Message {
        match ttl {
            Some(ttl) => message.ttl(ttl),
            None => message,
        }
    }

    /// A type that can be the message of a `#[message_handler]`: any
    /// `DeserializeOwned` type.
    ///
    /// Generated code calls the runtime from a function generic over the
    /// message type, bounded by this trait and given the user's type: a
    /// message that is not `DeserializeOwned` gets this error message, at its
    /// type, once. (`DeserializeOwned` is a supertrait, so that the bound
    /// implies the runtime's, and a bound of the impl, so that rustc reports
    /// this trait.)
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the message of a `#[message_handler]`: it does not implement `serde::Deserialize`",
        label = "the message must implement `serde::de::DeserializeOwned`",
        note = "for local types consider adding `#[derive(serde::Deserialize)]` to `{Self}`"
    )]
    pub trait HandlerMessage: serde::de::DeserializeOwned {}

    #[diagnostic::do_not_recommend]
    impl<T: serde::de::DeserializeOwned> HandlerMessage for T {}

    /// A type that can be the error of a `#[message_handler]`: any `Display`
    /// type, whose text becomes the reason of a dead letter. Used as
    /// [`HandlerMessage`] is.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the error of a `#[message_handler]`: it does not implement `std::fmt::Display`",
        label = "the error must implement `std::fmt::Display`",
        note = "its text becomes the reason of the dead letter when the handler gives up"
    )]
    pub trait HandlerError: core::fmt::Display {}

    #[diagnostic::do_not_recommend]
    impl<T: core::fmt::Display> HandlerError for T {}

    /// A database a half producer's `_and_commit` can prepare messages in:
    /// any sqlx database. (The facade does not depend on sqlx; generated code
    /// names it through this trait.)
    pub trait Database: txmsg_core::__private::sqlx::Database {}

    impl<T: txmsg_core::__private::sqlx::Database> Database for T {}

    /// Implemented by the type `#[check_back]` declares next to its function,
    /// for each payload type the function can check: its `M` for `&M`, every
    /// type for `&Envelope`. A half producer's `check_back = path` requires it
    /// for its payload.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a check-back for `{M}`",
        label = "this check-back takes another payload type",
        note = "a half producer's `check_back` must take `&{M}` (or `&txmsg::Envelope`)"
    )]
    pub trait CheckBackFor<M: ?Sized> {}

    /// Compiles only if `C` is a check-back for payload `M`.
    #[inline(always)]
    pub fn assert_check_back<M: ?Sized, C: CheckBackFor<M>>() {}

    /// A type that can be the message of a `#[check_back]`: any
    /// `DeserializeOwned` type. Used as [`HandlerMessage`] is.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the message of a `#[check_back]`: it does not implement `serde::Deserialize`",
        label = "the message must implement `serde::de::DeserializeOwned`",
        note = "for local types consider adding `#[derive(serde::Deserialize)]` to `{Self}`"
    )]
    pub trait CheckBackMessage: serde::de::DeserializeOwned {}

    #[diagnostic::do_not_recommend]
    impl<T: serde::de::DeserializeOwned> CheckBackMessage for T {}

    /// A type that can be the error of a `#[check_back]`: any `Display` type,
    /// whose text is logged when the check fails (which counts as Unknown).
    /// Used as [`HandlerMessage`] is.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the error of a `#[check_back]`: it does not implement `std::fmt::Display`",
        label = "the error must implement `std::fmt::Display`",
        note = "a failed check is logged with this text and counts as `Unknown`"
    )]
    pub trait CheckBackError: core::fmt::Display {}

    #[diagnostic::do_not_recommend]
    impl<T: core::fmt::Display> CheckBackError for T {}

    /// Runs a `#[check_back]` that takes the `&Envelope`: the verdict, or the
    /// error's text (which the worker counts as Unknown).
    /// A `#[check_back]` of the `&Envelope` as generated code calls it: the
    /// envelope and the worker's states in, `None` if a state it takes is
    /// missing.
    pub type EnvelopeCheck<E> =
        for<'t> fn(&'t Envelope, &'t States) -> Option<BoxFuture<'t, Result<CheckStatus, E>>>;

    pub async fn run_envelope_check_back<E: core::fmt::Display>(
        envelope: &Envelope,
        states: &States,
        check: EnvelopeCheck<E>,
    ) -> Result<CheckStatus, String> {
        match check(envelope, states) {
            Some(call) => call.await.map_err(|e| e.to_string()),
            None => Err(txmsg_core::half::MISSING_STATE.to_owned()),
        }
    }

    /// A type that can be the `T` of a handler's or check-back's `State<T>`
    /// parameter: `Clone + Send + Sync + 'static`, so that its runner can
    /// keep one value and give each call a clone. Used as
    /// [`HandlerMessage`] is.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be the state of a handler or check-back: it must be `Clone + Send + Sync + 'static`",
        label = "taken as `State<{Self}>` here",
        note = "wrap what cannot be cloned in an `Arc`, and derive `Clone`"
    )]
    pub trait AppState: Clone + Send + Sync + 'static {}

    #[diagnostic::do_not_recommend]
    impl<T: Clone + Send + Sync + 'static> AppState for T {}

    /// The value of state type `T`, bounded by [`AppState`] so that a type
    /// that cannot be state gets its message, at the parameter.
    #[inline]
    pub fn state<T: AppState>(states: &States) -> Option<State<T>> {
        states.get::<T>()
    }
}
