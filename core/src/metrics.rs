//! Names of the metrics txmsg records through the `metrics` facade.
//!
//! txmsg never installs a recorder: install one (for example a Prometheus
//! exporter) in your application to collect these. Labels come from small
//! fixed sets (topic, consumer group, outcome), never from keys or ids.
//!
//! | name | type | labels | meaning |
//! |------|------|--------|---------|
//! | [`txmsg_outbox_pending`](OUTBOX_PENDING) | gauge | none | outbox rows waiting to be published |
//! | [`txmsg_outbox_oldest_pending_age_seconds`](OUTBOX_OLDEST_PENDING_AGE_SECONDS) | gauge | none | age of the oldest pending row, 0 when none is pending |
//! | [`txmsg_outbox_prepared`](OUTBOX_PREPARED) | gauge | none | half messages stored prepared, not yet committed or rolled back |
//! | [`txmsg_outbox_topic_pending`](OUTBOX_TOPIC_PENDING) | gauge | `topic` | rows of the topic waiting to be published |
//! | [`txmsg_outbox_topic_oldest_pending_age_seconds`](OUTBOX_TOPIC_OLDEST_PENDING_AGE_SECONDS) | gauge | `topic` | age of the topic's oldest pending row, 0 when none is pending |
//! | [`txmsg_inbox_keys`](INBOX_KEYS) | gauge | `group` | inbox keys the group holds, set after each inbox purge |
//! | [`txmsg_published_total`](PUBLISHED_TOTAL) | counter | `topic` | messages the broker confirmed |
//! | [`txmsg_publish_duration_seconds`](PUBLISH_DURATION_SECONDS) | histogram | `topic` | time from sending a message to the broker's confirm |
//! | [`txmsg_publish_retries_total`](PUBLISH_RETRIES_TOTAL) | counter | `topic` | failed publish attempts that will be retried |
//! | [`txmsg_dead_letters_total`](DEAD_LETTERS_TOTAL) | counter | `topic`, `side` (`outbox`, `consumer`), `group` (consumer side) | messages that went dead: outbox rows (relay, check-back worker) and consumer dead letters |
//! | [`txmsg_sent_purged_total`](SENT_PURGED_TOTAL) | counter | none | sent outbox rows purged after their retention |
//! | [`txmsg_check_backs_total`](CHECK_BACKS_TOTAL) | counter | `topic`, `outcome` (`commit`, `rollback`, `unknown`, `error`) | check-backs of half messages that ran |
//! | [`txmsg_consumed_total`](CONSUMED_TOTAL) | counter | `topic`, `group`, `outcome` (`applied`, `duplicate`, `dead`, `requeued`) | deliveries a consumer group settled |
//! | [`txmsg_inbox_duplicates_total`](INBOX_DUPLICATES_TOTAL) | counter | `topic`, `group` | redeliveries recognised in the inbox and skipped |
//! | [`txmsg_handle_duration_seconds`](HANDLE_DURATION_SECONDS) | histogram | `topic`, `group` | time a handler call took, its transaction included |
//! | [`txmsg_log_slot_lag_bytes`](LOG_SLOT_LAG_BYTES) | gauge | `slot` | PostgreSQL log capture: WAL bytes between the server's end and the position the relay confirmed |
//! | [`txmsg_log_oldest_unconfirmed_age_seconds`](LOG_OLDEST_UNCONFIRMED_AGE_SECONDS) | gauge | `slot` | PostgreSQL log capture: age of the oldest message read but not yet confirmed, 0 when none |
//! | [`txmsg_log_slot_invalidated`](LOG_SLOT_INVALIDATED) | gauge | `slot` | PostgreSQL log capture: 1 once the relay stopped because its slot is gone or invalidated |
//!
//! Counters and histograms are recorded as things happen. The outbox gauges
//! are set by each running relay from [`Store::stats`](crate::Store::stats)
//! and [`Store::pending_by_topic`](crate::Store::pending_by_topic) every
//! [`stats_interval`](crate::RelayConfig::stats_interval) (5 s by default);
//! they count the whole outbox table, so every relay on the same table sets
//! the same values. To have one relay report them (one count per interval
//! for the database), give the others `stats_interval: None`, which turns
//! the gauges and their queries off; so should a process with relays on
//! several outbox tables for all but one. The inbox gauge is set by each
//! consumer for its group after its inbox purge
//! ([`purge_interval`](crate::consumer::ConsumerConfig::purge_interval)).
//! The log capture's gauges are set every second by the PostgreSQL log
//! relay reading the slot (a waiting relay sets none); it also counts what
//! it publishes and dead-letters in the counters above.
//!
//! # Installing an exporter
//!
//! Install the recorder once, early in `main` and before any relay, consumer
//! or check-back worker starts: txmsg describes its metrics (help text and
//! units) when the first of them starts, and a recorder installed later
//! misses those descriptions. With the Prometheus exporter
//! (`metrics-exporter-prometheus`, feature `http-listener`), which serves
//! `/metrics` on its own listener:
//!
//! ```ignore
//! use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
//!
//! PrometheusBuilder::new()
//!     .with_http_listener(([127, 0, 0, 1], 9464))
//!     // Durations as Prometheus histograms (the default renders summaries).
//!     .set_buckets_for_metric(
//!         Matcher::Suffix("duration_seconds".into()),
//!         &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
//!     )?
//!     .install()?;
//! // ... then start the relay and the consumers ...
//! ```
//!
//! The `txmsg-example-metrics` example in the repository runs exactly this
//! next to an order flow; its test scrapes the endpoint.

use std::collections::HashSet;
use std::sync::Once;

use chrono::{DateTime, Utc};
use metrics::Unit;

use crate::store::{OutboxStats, TopicStats};

/// Outbox rows waiting to be published, set by the relay every
/// [`stats_interval`](crate::RelayConfig::stats_interval). Gauge, no labels.
pub const OUTBOX_PENDING: &str = "txmsg_outbox_pending";
/// Age of the oldest pending outbox row (0 when none is pending), set by the
/// relay every [`stats_interval`](crate::RelayConfig::stats_interval).
/// Gauge, seconds, no labels.
pub const OUTBOX_OLDEST_PENDING_AGE_SECONDS: &str = "txmsg_outbox_oldest_pending_age_seconds";
/// Half messages stored prepared (not yet committed or rolled back), set by
/// the relay every [`stats_interval`](crate::RelayConfig::stats_interval).
/// Gauge, no labels.
pub const OUTBOX_PREPARED: &str = "txmsg_outbox_prepared";
/// Outbox rows waiting to be published, by `topic`, set with the other
/// outbox gauges. A topic with nothing pending reads 0. Gauge.
pub const OUTBOX_TOPIC_PENDING: &str = "txmsg_outbox_topic_pending";
/// Age of the oldest pending row of a `topic` (0 when none is pending), set
/// with the other outbox gauges. Gauge, seconds.
pub const OUTBOX_TOPIC_OLDEST_PENDING_AGE_SECONDS: &str =
    "txmsg_outbox_topic_oldest_pending_age_seconds";
/// Inbox keys a consumer `group` holds (what it would recognise as
/// redeliveries), set after each inbox purge. Gauge.
pub const INBOX_KEYS: &str = "txmsg_inbox_keys";

/// Messages the broker confirmed, by `topic`. Counter.
pub const PUBLISHED_TOTAL: &str = "txmsg_published_total";
/// Time from sending a message to the broker's confirm, by `topic`. Histogram, seconds.
pub const PUBLISH_DURATION_SECONDS: &str = "txmsg_publish_duration_seconds";
/// Failed publish attempts that will be retried, by `topic`. Counter.
pub const PUBLISH_RETRIES_TOTAL: &str = "txmsg_publish_retries_total";
/// Messages that went dead, by `topic` and `side`: `outbox` (the relay or
/// the check-back worker gave up on an outbox row) or `consumer` (a group's
/// handler gave up; with its `group`). Counter.
pub const DEAD_LETTERS_TOTAL: &str = "txmsg_dead_letters_total";

/// Sent outbox rows the relay purged after their retention. Counter.
pub const SENT_PURGED_TOTAL: &str = "txmsg_sent_purged_total";

/// Messages a consumer group settled, by `topic`, `group` and `outcome`
/// (`applied`, `duplicate`, `dead`, `requeued`). Counter.
pub const CONSUMED_TOTAL: &str = "txmsg_consumed_total";
/// Redeliveries a consumer group recognised in its inbox and skipped, by
/// `topic` and `group`. Counter.
pub const INBOX_DUPLICATES_TOTAL: &str = "txmsg_inbox_duplicates_total";
/// Time a handler call took, including its transaction, by `topic` and
/// `group`. Histogram, seconds.
pub const HANDLE_DURATION_SECONDS: &str = "txmsg_handle_duration_seconds";

/// PostgreSQL log capture: WAL bytes between the end of the server's WAL
/// (as last heard) and the position the relay confirmed to its `slot`:
/// what the server keeps for the slot, at least. Gauge, bytes.
pub const LOG_SLOT_LAG_BYTES: &str = "txmsg_log_slot_lag_bytes";
/// PostgreSQL log capture: age of the oldest message the relay of `slot`
/// read and has not yet confirmed (0 when none waits). Gauge, seconds.
pub const LOG_OLDEST_UNCONFIRMED_AGE_SECONDS: &str = "txmsg_log_oldest_unconfirmed_age_seconds";
/// PostgreSQL log capture: 1 once the relay of `slot` stopped because the
/// slot is gone or PostgreSQL invalidated it (its WAL was removed); 0 while
/// it reads. Gauge.
pub const LOG_SLOT_INVALIDATED: &str = "txmsg_log_slot_invalidated";

/// Check-backs that ran, by `topic` and `outcome` (`commit`, `rollback`,
/// `unknown`, `error`). Counter.
pub const CHECK_BACKS_TOTAL: &str = "txmsg_check_backs_total";

static DESCRIBE: Once = Once::new();

/// What a metric records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric as recorders describe it.
struct Description {
    name: &'static str,
    kind: Kind,
    unit: Option<Unit>,
    help: &'static str,
}

impl Description {
    const fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Description {
            name,
            kind,
            unit: None,
            help,
        }
    }

    const fn seconds(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Description {
            unit: Some(Unit::Seconds),
            ..Description::new(name, kind, help)
        }
    }
}

/// Every metric txmsg records, in the order they are described.
const ALL: [Description; 18] = [
    Description::new(
        OUTBOX_PENDING,
        Kind::Gauge,
        "outbox rows waiting to be published",
    ),
    Description::seconds(
        OUTBOX_OLDEST_PENDING_AGE_SECONDS,
        Kind::Gauge,
        "age of the oldest pending outbox row, 0 when none is pending",
    ),
    Description::new(
        OUTBOX_PREPARED,
        Kind::Gauge,
        "half messages stored prepared, not yet committed or rolled back",
    ),
    Description::new(
        OUTBOX_TOPIC_PENDING,
        Kind::Gauge,
        "outbox rows of the topic waiting to be published",
    ),
    Description::seconds(
        OUTBOX_TOPIC_OLDEST_PENDING_AGE_SECONDS,
        Kind::Gauge,
        "age of the topic's oldest pending outbox row, 0 when none is pending",
    ),
    Description::new(
        INBOX_KEYS,
        Kind::Gauge,
        "inbox keys the consumer group holds",
    ),
    Description::new(
        PUBLISHED_TOTAL,
        Kind::Counter,
        "messages the broker confirmed",
    ),
    Description::seconds(
        PUBLISH_DURATION_SECONDS,
        Kind::Histogram,
        "time from sending a message to the broker's confirm",
    ),
    Description::new(
        PUBLISH_RETRIES_TOTAL,
        Kind::Counter,
        "failed publish attempts that will be retried",
    ),
    Description::new(DEAD_LETTERS_TOTAL, Kind::Counter, "messages that went dead"),
    Description::new(
        SENT_PURGED_TOTAL,
        Kind::Counter,
        "sent outbox rows purged after their retention",
    ),
    Description::new(
        CHECK_BACKS_TOTAL,
        Kind::Counter,
        "check-backs that ran, by outcome",
    ),
    Description::new(
        CONSUMED_TOTAL,
        Kind::Counter,
        "messages a consumer group settled",
    ),
    Description::new(
        INBOX_DUPLICATES_TOTAL,
        Kind::Counter,
        "redeliveries skipped through the inbox",
    ),
    Description::seconds(
        HANDLE_DURATION_SECONDS,
        Kind::Histogram,
        "time a handler call took, including its transaction",
    ),
    Description::new(
        LOG_SLOT_LAG_BYTES,
        Kind::Gauge,
        "WAL bytes between the server's end and the log relay's confirmed position",
    ),
    Description::seconds(
        LOG_OLDEST_UNCONFIRMED_AGE_SECONDS,
        Kind::Gauge,
        "age of the oldest message the log relay read and has not confirmed",
    ),
    Description::new(
        LOG_SLOT_INVALIDATED,
        Kind::Gauge,
        "1 once the log relay stopped because its slot is gone or invalidated",
    ),
];

/// Describes every metric to the installed recorder, once per process, for
/// recorders that show help text. Relays, consumers and check-back workers
/// call it when they start; a component of another crate that records
/// these metrics does the same.
pub fn describe() {
    DESCRIBE.call_once(|| {
        for m in &ALL {
            metrics::with_recorder(|recorder| {
                let (name, help) = (m.name.into(), m.help.into());
                match m.kind {
                    Kind::Counter => recorder.describe_counter(name, m.unit, help),
                    Kind::Gauge => recorder.describe_gauge(name, m.unit, help),
                    Kind::Histogram => recorder.describe_histogram(name, m.unit, help),
                }
            });
        }
    });
}

/// Sets the outbox gauges from `stats`, read at `now`.
pub(crate) fn record_outbox(stats: &OutboxStats, now: DateTime<Utc>) {
    // A gauge is an f64: exact up to 2^53 rows.
    metrics::gauge!(OUTBOX_PENDING).set(stats.pending as f64);
    metrics::gauge!(OUTBOX_OLDEST_PENDING_AGE_SECONDS)
        .set(oldest_pending_age(stats.oldest_pending, now));
    metrics::gauge!(OUTBOX_PREPARED).set(stats.prepared as f64);
}

/// Sets the per-topic outbox gauges from `topics`, read at `now`; a topic
/// of `shown` (those set before) that is no longer counted reads 0 again.
/// Returns the topics now shown.
pub(crate) fn record_topics(
    topics: &[TopicStats],
    shown: HashSet<String>,
    now: DateTime<Utc>,
) -> HashSet<String> {
    let mut now_shown = HashSet::with_capacity(topics.len());
    for t in topics {
        let topic = t.topic.clone();
        metrics::gauge!(OUTBOX_TOPIC_PENDING, "topic" => topic.clone()).set(t.pending as f64);
        metrics::gauge!(OUTBOX_TOPIC_OLDEST_PENDING_AGE_SECONDS, "topic" => topic.clone())
            .set(oldest_pending_age(t.oldest_pending, now));
        now_shown.insert(topic);
    }
    for gone in shown.difference(&now_shown) {
        metrics::gauge!(OUTBOX_TOPIC_PENDING, "topic" => gone.clone()).set(0.0);
        metrics::gauge!(OUTBOX_TOPIC_OLDEST_PENDING_AGE_SECONDS, "topic" => gone.clone()).set(0.0);
    }
    now_shown
}

/// Seconds since `oldest` at `now`: 0 when nothing is pending, and 0 rather
/// than negative when the row's clock was ahead of ours.
fn oldest_pending_age(oldest: Option<DateTime<Utc>>, now: DateTime<Utc>) -> f64 {
    oldest
        .and_then(|t| (now - t).to_std().ok())
        .map_or(0.0, |age| age.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_pending_age_is_seconds_and_never_negative() {
        let now = Utc::now();
        assert_eq!(oldest_pending_age(None, now), 0.0);
        let age = oldest_pending_age(Some(now - chrono::Duration::milliseconds(2_500)), now);
        assert!((age - 2.5).abs() < 1e-9, "{age}");
        assert_eq!(
            oldest_pending_age(Some(now + chrono::Duration::seconds(3)), now),
            0.0
        );
    }

    #[test]
    fn names_follow_the_convention() {
        for Description {
            name, kind, unit, ..
        } in ALL
        {
            assert!(name.starts_with("txmsg_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert_eq!(name.ends_with("_total"), kind == Kind::Counter, "{name}");
            if kind == Kind::Histogram {
                assert!(name.ends_with("_seconds"), "{name}");
            }
            assert_eq!(
                name.ends_with("_seconds"),
                unit == Some(Unit::Seconds),
                "{name}"
            );
        }
    }
}
