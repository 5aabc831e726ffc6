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
//! - An acknowledgement is `XACK`. A nacked delivery is claimed back at once
//!   (`XCLAIM`) and delivered again. A delivery that is neither acknowledged
//!   nor nacked (dropped, or its subscription or process gone) stays in the
//!   group's pending entries list; once it has been idle for
//!   [`RedisConfig::claim_idle`], any subscription of the group takes it over
//!   (`XAUTOCLAIM`) and delivers it again, marked redelivered. A
//!   subscription keeps the deliveries it holds from going idle, so a slow
//!   handler does not lose its delivery to another consumer.
//!
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
//! With [`RedisConfig::max_len`], streams are trimmed (`MAXLEN ~`): entries
//! trimmed before a group read them are never delivered to it.
//!
//! # TLS
//!
//! With the `tls` feature, a `rediss://` URL (or `valkeys://`) connects
//! through rustls. The server's certificate is checked against the system's
//! trust store, or only against the CA file of
//! [`RedisConfig::tls_ca_file`]; [`RedisConfig::tls_client_auth`] adds a
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
mod wire;

pub use broker::RedisBroker;
pub use config::RedisConfig;
pub use wire::{
    FIELD_CONTENT_TYPE, FIELD_DATA, FIELD_ID, FIELD_PARTITIONKEY, FIELD_SOURCE, FIELD_SPECVERSION,
    FIELD_TIME, FIELD_TRACEPARENT, FIELD_TXMSG_ID, FIELD_TYPE, HEADER_PREFIX,
};
