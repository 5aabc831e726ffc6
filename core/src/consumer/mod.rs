//! The receiving side: subscriptions, deliveries, the inbox, registered
//! handlers and the [`Consumer`] runtime that applies each message once per
//! consumer group.

mod config;
mod delivery;
mod inbox;
mod observe;
mod registry;
mod runtime;
mod worker;

pub use config::ConsumerConfig;
pub use delivery::{Acker, CLOSE_TIMEOUT, Delivery, SubscribeSpec, Subscription, Undecodable};
pub use inbox::{ConsumerDeadLetter, InboxStore, InboxWriter};
pub use observe::{Handled, Settlement};
pub use registry::{
    AnyCtx, HandlerCtx, HandlerFn, HandlerOutcome, HandlerRecord, registered_handlers, run_handler,
};
pub use runtime::{Consumer, ConsumerHandle, ConsumerStats};
