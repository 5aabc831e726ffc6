//! In-process broker for txmsg: demos, examples and tests without external
//! services.
//!
//! [`MemoryBroker`] implements [`Broker`](txmsg_core::Broker) in memory. It
//! confirms a publish once the message is in the queue of every consumer
//! group subscribed to its topic and with every observer
//! ([`MemoryBroker::observe`]). Consumer groups behave as on a real broker:
//! one queue per (group, topic) that outlives its subscribers, competing
//! consumers, a prefetch limit, and redelivery of whatever is nacked or
//! dropped unsettled (a consumer that crashed between its commit and its
//! acknowledgement). It keeps nothing across restarts, so it is no
//! replacement for a real broker in production. Faults are injected with
//! [`MemoryBroker::set_down`] and [`MemoryBroker::reject_if`].

mod broker;

pub use broker::{MemoryBroker, MemorySubscription};
