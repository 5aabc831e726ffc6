//! RocketMQ broker for txmsg, on the Rust RocketMQ client
//! ([`rocketmq-client-rust`](https://crates.io/crates/rocketmq-client-rust)).
//!
//! [`RocketBroker`] is a [`Broker`](txmsg_core::Broker): the relay publishes
//! the outbox to it, and consumer groups subscribe to it.
//!
//! # Mapping
//!
//! - **Topics.** RocketMQ names hold `[%|a-zA-Z0-9_-]`, txmsg topics hold
//!   `.` and never `|`: topic `orders.placed` is the RocketMQ topic
//!   `<prefix>orders|placed` ([`RocketConfig::topic_prefix`], default none).
//!   Two txmsg topics never share a RocketMQ topic. The broker creates a
//!   topic on its first publish when its `autoCreateTopicEnable` is on;
//!   otherwise create each topic first (`mqadmin updateTopic`).
//! - **Confirms.** A publish is `Ok` only once the broker answered
//!   `SEND_OK`; `FLUSH_DISK_TIMEOUT`, `FLUSH_SLAVE_TIMEOUT`,
//!   `SLAVE_NOT_AVAILABLE`, a failed send and no answer within
//!   [`RocketConfig::send_timeout`] are retryable errors (the message may
//!   be stored; the inbox makes the second copy harmless).
//! - **Order per key.** A message goes to the message queue that
//!   `SelectMessageQueueByHash` picks for its ordering key (the queue a Java
//!   producer picks for the same key), so one key stays in one queue, and
//!   keys spread over the topic's queues. A message without a key goes to
//!   any queue.
//! - **Consumer groups.** A txmsg group consumes each topic as a RocketMQ
//!   consumer group of its own, `<prefix><group>||<topic>` (RocketMQ wants
//!   every consumer of a group to subscribe to the same topics), in
//!   clustering mode, consuming each queue in order:
//!   one delivery of a queue at a time, acknowledged after the handler's
//!   transaction commits (the consumed offset then moves on). A nack
//!   pauses the queue for [`RocketConfig::retry_delay`] and delivers the
//!   message again, before the later messages of its queue. txmsg counts
//!   attempts and dead-letters a message past its `max_attempts` itself,
//!   so RocketMQ's own dead-letter queue is not used. A new group reads
//!   what the topic still holds (RocketMQ's `CONSUME_FROM_FIRST_OFFSET`):
//!   starting at its first subscribe could lose what was published before
//!   a consumer that died stored its first offset. On a topic with a long
//!   history, a new group's inbox sees the old messages once.
//! - **Wire format.** The
//!   [CloudEvents RocketMQ binding](https://github.com/apache/rocketmq-externals/blob/master/rocketmq-cloudevents-binding/rocketmq-transport-binding.md)
//!   in binary mode: attributes as user properties prefixed `CE_`
//!   (`CE_id` the idempotency key, `CE_type` the topic, `CE_contenttype`
//!   `application/json`, ...), the other headers as user properties of
//!   their own names, the payload as the body, the ordering key also as
//!   the message's `KEYS`. A header that RocketMQ reserves (`KEYS`,
//!   `TAGS`, ...) or that holds the property separators `\u{1}`/`\u{2}`
//!   cannot be sent: publishing it fails for good, with the reason. A
//!   message from a plain RocketMQ producer without `CE_id` is known by
//!   RocketMQ's message id. RocketMQ refuses an empty body: an empty
//!   payload travels as one zero byte with [`PROPERTY_EMPTY_BODY`] set.
//!
//! # Members of a group, and the rebalance
//!
//! RocketMQ shares a topic among a group's members by message queue: each
//! queue is read by one member at a time, which holds the queue's lock at
//! the broker. The client rebalances, and takes the locks of the queues it
//! was given, every 20 s by default (the Java client's values, read from the
//! process's environment as `rocketmq.client.rebalance.waitInterval` and
//! `rocketmq.client.rebalance.lockInterval`, in milliseconds). So when a
//! member starts, stops or dies, its queues move to the others within about
//! that interval, and a queue whose lock was not had at once waits for the
//! next round: deliveries of that queue pause, then go on in order. Shorter
//! intervals move queues sooner at the cost of more requests to the broker;
//! this workspace's tests use 2 s (`.cargo/config.toml`).
//!
//! Three consequences differ from the brokers whose members compete per
//! message: a member holding one unsettled delivery holds its whole queue
//! (other keys of that queue wait, keys of other queues flow); a member
//! cannot hold several unsettled deliveries of one queue; and a delivery
//! handed back by a member that stopped comes again without a redelivered
//! mark (RocketMQ's orderly consumption keeps no delivery count across
//! members), so the inbox, not the mark, tells a repeat.

mod broker;
mod config;
mod half;
mod wire;

pub use wire::{
    PROPERTY_CONTENT_TYPE, PROPERTY_EMPTY_BODY, PROPERTY_ID, PROPERTY_TXMSG_ID, PROPERTY_TYPE,
};

pub use broker::RocketBroker;
pub use config::RocketConfig;
pub use half::{RocketHalf, RocketHalfProducer, RocketHalfProducerBuilder};
