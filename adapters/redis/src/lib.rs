//! Redis Streams broker for txmsg.
//!
//! [`RedisBroker`] implements [`txmsg_core::Broker`] on Redis Streams:
//!
//! - Every topic is one stream, at key `<prefix><topic>` (the prefix is
//!   [`RedisConfig::key_prefix`], `txmsg:` by default).
//! - A publish is one `XADD` of the message in CloudEvents binary mode (fields
//!   [`FIELD_ID`] and its siblings, the payload in [`FIELD_DATA`]); the entry id Redis replies
//!   with is the confirm.
//! - A consumer group of txmsg is a consumer group of the stream, created by
//!   its first subscribe (`XGROUP CREATE ... $ MKSTREAM`), so it receives what
//!   is published after that. Every subscription is a consumer of its own in
//!   the group, reading with `XREADGROUP`.
//! - An acknowledgement is `XACK`. A hand-back (a nack, or a delivery
//!   dropped unsettled) moves the entry to the group's `txmsg-handed-back`
//!   consumer, idle, and the subscription claims it back (`XCLAIM`) and
//!   delivers it again before anything newer, marked redelivered; if the
//!   subscription is gone, the group's next subscription takes it first.
//! - A new subscription first takes over, in stream order, what was handed
//!   back and what consumers that are gone (a crashed process) still hold,
//!   and reads nothing newer before them: a restarted consumer keeps each
//!   key's order. A consumer holding entries is gone when it has not
//!   refreshed them for three read ticks (`min(block, claim_idle / 3)`) and
//!   a response timeout; the new subscription watches that long at most,
//!   and only when another consumer holds entries and was quiet lately.
//! - Entries held by a live consumer for longer than
//!   [`RedisConfig::claim_idle`] would be taken over (`XAUTOCLAIM`) by
//!   another subscription of the group; a subscription keeps the entries it
//!   holds fresh, so only those of a stuck process are.
//! - A subscription that ends removes its consumer from the group when it
//!   holds nothing (`XGROUP DELCONSUMER`); gone consumers are removed once
//!   their entries were taken over.

//! # What Redis promises
//!
//! An entry id from `XADD` means the entry is in the server's memory. Whether
//! it survives a restart of Redis depends on the server's persistence
//! settings (AOF with `appendfsync always` or `everysec`, RDB snapshots), and
//! with replication an entry acknowledged by a primary may be lost in a
//! failover unless `WAIT` is used. A Redis without persistence, like the one
//! the tests of this crate run against, keeps nothing across a restart. The
//! at-least-once promise of txmsg holds only as far as the server keeps what
//! it acknowledged.
//!
//! # Stream growth
//!
//! A stream keeps its entries after every group acknowledged them: without
//! trimming it grows without bound. [`RedisBroker::trim_acknowledged`]
//! deletes what every group of a stream acknowledged and nothing else; call
//! it periodically. [`RedisConfig::max_len`] trims by count on every
//! publish (`MAXLEN ~`) whatever was acknowledged: entries trimmed before a
//! group read them are never delivered to it, and an entry trimmed after it
//! was delivered and before it was acknowledged reaches the group as an
//! [`Undecodable`](txmsg_core::consumer::Undecodable) delivery saying so
//! (the consumer keeps it as a dead letter; its content is lost). Keep
//! `max_len` well above the largest backlog, or leave it off.
//!
//! # TLS
//!
//! With the `tls` feature, a `rediss://` URL (or `valkeys://`) connects
//! through rustls. The server's certificate is checked against the system's
//! trust store, or only against the CA file of
//! the [`RedisConfig::tls`] CA file ([`TlsFiles::ca_file`](txmsg_core::tls::TlsFiles::ca_file)); [`TlsFiles::client_auth`](txmsg_core::tls::TlsFiles::client_auth) adds a
//! client certificate and key (mutual TLS). `#insecure` URLs (no certificate
//! check) are refused. Without the feature, a `rediss://` URL and the TLS
//! settings are refused with
//! [`Error::Config`](txmsg_core::Error::Config), never used in plain text.
//! When the process has no default rustls crypto provider, connecting over
//! TLS installs rustls's `ring` provider as the default.
//!
//! The password of a URL (`redis://user:password@host`, or `?pass=` of a
//! `unix://` URL) is never shown: `Debug` and the connect span show the URL
//! with `***` in its place, and no error message quotes the URL.
//!
//! # Feature flags
//!
//! | feature | enables                                                   | default |
//! |---------|-----------------------------------------------------------|---------|
//! | `tls`   | `rediss://` URLs, through rustls with the `ring` provider | no      |

mod broker;
mod config;
mod consume;
mod reply;
mod wire;

pub use broker::RedisBroker;
pub use config::RedisConfig;
pub use wire::{
    FIELD_CONTENT_TYPE, FIELD_DATA, FIELD_ID, FIELD_PARTITIONKEY, FIELD_SOURCE, FIELD_SPECVERSION,
    FIELD_TIME, FIELD_TRACEPARENT, FIELD_TXMSG_ID, FIELD_TYPE, HEADER_PREFIX,
};
