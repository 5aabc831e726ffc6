//! Runtime of [txmsg](https://docs.rs/txmsg): envelopes, the [`Store`] and
//! [`Broker`] traits, transactions that carry messages ([`Tx`]), and the
//! [`Relay`] that publishes them.
//!
//! Users depend on the `txmsg` crate, which re-exports this one; adapters
//! depend on this crate alone.
#![cfg_attr(docsrs, feature(doc_cfg))]

/// A fail point of the fault tests: `fail::fail_point!` with the
/// `failpoints` feature, nothing without it (the `fail` crate is not even
/// compiled then).
macro_rules! fail_point {
    ($($args:tt)*) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($($args)*);
    };
}

mod backoff;
mod broker;
pub mod check;
mod clock;
pub mod cloudevents;
mod config;
pub mod consumer;
mod envelope;
mod error;
pub mod half;
pub mod metrics;
mod registry;
mod relay;
mod state;
mod store;
mod task;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
pub mod tls;
mod topic;
mod trace;
mod tx;

pub use broker::{Broker, broker_publish_span, broker_subscribe_span};
pub use clock::{Clock, SystemClock};
pub use config::{DeadKeyPolicy, Ident, MAX_IDENT_LEN, RelayConfig, Tables};
pub use envelope::{Envelope, Headers, Message, TRACEPARENT, TRACESTATE};
pub use error::{BoxError, Error, Result};
pub use relay::{Relay, RelayHandle};
pub use state::{State, StateType, States};
pub use store::{
    BoxFuture, ClaimRequest, DeadFilter, DeadLetter, Failure, HalfStore, HalfWriter, Inserted,
    Lease, OutboxStats, OutboxWriter, SqlStore, Store, TopicStats, Waker,
};
pub use task::Health;
pub use topic::{MAX_TOPIC_LEN, validate_topic};
pub use tx::{Outbox, Tx};

/// Support for generated code and adapters: not public API, may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::error::error_chain;
    pub use sqlx;
}
