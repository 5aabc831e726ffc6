//! Topic names.

use crate::{Error, Result};

/// Longest topic name accepted, in bytes (AMQP short strings allow 255; NATS and
/// MQTT are more generous).
pub const MAX_TOPIC_LEN: usize = 200;

/// Checks that a topic name is usable on every supported broker.
///
/// A topic is 1 to [`MAX_TOPIC_LEN`] bytes of ASCII letters, digits and `.`,
/// `-`, `_`; it neither starts nor ends with `.` and has no empty segment
/// (`a..b`). Wildcards (`*`, `>`, `#`, `+`), spaces and `/` are refused because
/// NATS, AMQP topic exchanges and MQTT give them meaning.
///
/// # Errors
///
/// [`Error::InvalidTopic`] naming the rule that was broken.
///
/// # Examples
///
/// ```
/// use txmsg_core::validate_topic;
///
/// assert!(validate_topic("orders.placed").is_ok());
/// assert!(validate_topic("orders.*").is_err());
/// ```
pub fn validate_topic(topic: &str) -> Result<()> {
    match topic_rule_broken(topic) {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidTopic {
            topic: topic.to_owned(),
            reason,
        }),
    }
}

/// The rule `topic` breaks, if any. Shared with the macro crate's wording.
fn topic_rule_broken(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        return Some("must not be empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Some("must be at most 200 bytes");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Some("may contain only ASCII letters, digits, `.`, `-` and `_`");
    }
    if topic.starts_with('.') || topic.ends_with('.') || topic.contains("..") {
        return Some("must not start or end with `.` or contain an empty segment");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dotted_names() {
        for t in [
            "orders",
            "orders.placed",
            "billing-v2.invoice_created",
            "a.b.c",
        ] {
            assert!(validate_topic(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn refuses_what_brokers_reject() {
        for t in [
            "", "orders.*", "orders.#", "a>b", "a+b", "a b", "a/b", ".a", "a.", "a..b", "é",
        ] {
            assert!(
                matches!(validate_topic(t), Err(Error::InvalidTopic { .. })),
                "{t:?}"
            );
        }
        assert!(validate_topic(&"x".repeat(MAX_TOPIC_LEN + 1)).is_err());
    }
}
