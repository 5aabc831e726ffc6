//! Names of the metrics txmsg records through the `metrics` facade.
//!
//! txmsg never installs a recorder: install one (for example a Prometheus
//! exporter) in your application to collect these. Labels come from small
//! fixed sets (the topic), never from keys or ids.

use std::sync::Once;

/// Messages the broker confirmed, by `topic`. Counter.
pub const PUBLISHED_TOTAL: &str = "txmsg_published_total";
/// Time from sending a message to the broker's confirm, by `topic`. Histogram, seconds.
pub const PUBLISH_DURATION_SECONDS: &str = "txmsg_publish_duration_seconds";
/// Failed publish attempts that will be retried, by `topic`. Counter.
pub const PUBLISH_RETRIES_TOTAL: &str = "txmsg_publish_retries_total";
/// Messages that went dead, by `topic`. Counter.
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

/// Check-backs that ran, by `topic` and `outcome` (`commit`, `rollback`,
/// `unknown`, `error`). Counter.
pub const CHECK_BACKS_TOTAL: &str = "txmsg_check_backs_total";

static DESCRIBE: Once = Once::new();

/// Describes every metric once per process, for recorders that show help text.
pub(crate) fn describe() {
    DESCRIBE.call_once(|| {
        metrics::describe_counter!(PUBLISHED_TOTAL, "messages the broker confirmed");
        metrics::describe_histogram!(
            PUBLISH_DURATION_SECONDS,
            metrics::Unit::Seconds,
            "time from sending a message to the broker's confirm"
        );
        metrics::describe_counter!(
            PUBLISH_RETRIES_TOTAL,
            "failed publish attempts that will be retried"
        );
        metrics::describe_counter!(DEAD_LETTERS_TOTAL, "messages that went dead");
        metrics::describe_counter!(
            SENT_PURGED_TOTAL,
            "sent outbox rows purged after their retention"
        );
        metrics::describe_counter!(CHECK_BACKS_TOTAL, "check-backs that ran, by outcome");
        metrics::describe_counter!(CONSUMED_TOTAL, "messages a consumer group settled");
        metrics::describe_counter!(
            INBOX_DUPLICATES_TOTAL,
            "redeliveries skipped through the inbox"
        );
        metrics::describe_histogram!(
            HANDLE_DURATION_SECONDS,
            metrics::Unit::Seconds,
            "time a handler call took, including its transaction"
        );
    });
}
