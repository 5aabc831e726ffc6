//! The error type of the txmsg runtime.

use std::fmt;

/// A boxed error from a backend driver, kept as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as its default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in txmsg.
///
/// Match on the variant or use the predicates ([`Error::is_duplicate`],
/// [`Error::is_retryable`], ...); never on the message text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message with this idempotency key was already written for this topic.
    ///
    /// The transaction that tried to write it again must roll back; the one-call
    /// producer form does so itself.
    #[error("duplicate message: topic `{topic}` already has idempotency key `{idempotency_key}`")]
    Duplicate {
        /// Topic of the message.
        topic: String,
        /// The idempotency key that was seen before.
        idempotency_key: String,
    },

    /// A half message was rolled back (by its check-back) before its producer committed it.
    #[error("message {id} was rolled back before it could be committed")]
    RolledBack {
        /// Id of the message.
        id: uuid::Uuid,
    },

    /// A half-message producer's local work failed, but its check-back had
    /// already answered Commit (the work outlived the first check): the
    /// message is committed and will be delivered. The caller must
    /// compensate the effects the message announces, or retry the work so
    /// that it succeeds.
    #[error(
        "the local work failed after the check-back committed message {id} of topic `{topic}`: it will be delivered; compensate"
    )]
    CommittedByCheckBack {
        /// Id of the message.
        id: uuid::Uuid,
        /// Topic of the message.
        topic: String,
    },

    /// The payload could not be turned into JSON, or JSON into the payload type.
    #[error("payload of topic `{topic}` could not be (de)serialized")]
    Payload {
        /// Topic of the message.
        topic: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// The payload is larger than the configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of the encoded payload, in bytes.
        size: usize,
        /// The configured limit, in bytes.
        limit: usize,
    },

    /// A topic name that the brokers would reject.
    #[error("invalid topic `{topic}`: {reason}")]
    InvalidTopic {
        /// The topic as given.
        topic: String,
        /// What rule it broke.
        reason: &'static str,
    },

    /// A configuration value broke a rule; nothing was executed.
    #[error("invalid configuration: `{field}` {reason}")]
    Config {
        /// The configuration field.
        field: &'static str,
        /// What rule it broke, and the value where it is safe to show.
        reason: String,
    },

    /// The database failed or refused a statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// No connection to the database could be opened: the server refused
    /// it, could not be reached, or turned the login down.
    #[error("cannot connect to the database at {address}")]
    Connect {
        /// Where the database was looked for: `host:port`, or a socket or
        /// file path. Never the password.
        address: String,
        /// What the driver reported.
        #[source]
        source: sqlx::Error,
    },

    /// The broker failed, refused or did not confirm a message.
    #[error("broker error: {message}")]
    Broker {
        /// What happened.
        message: String,
        /// Whether trying again later may succeed (connection lost, timeout, nack).
        retryable: bool,
        /// The driver's error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The broker cannot be reached (connection refused, lost or closing);
    /// nothing is wrong with the message. The relay does not count this as a
    /// failed attempt: it releases the message and pauses publishing.
    #[error("broker unavailable: {message}")]
    BrokerUnavailable {
        /// What happened.
        message: String,
        /// The driver's error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The backend cannot do this.
    #[error("unsupported by this backend: {0}")]
    Unsupported(&'static str),

    /// The runtime is shutting down and took no new work.
    #[error("txmsg is shutting down")]
    Shutdown,
}

impl Error {
    /// [`Error::Duplicate`] for `envelope`'s topic and idempotency key.
    pub fn duplicate_of(envelope: &crate::Envelope) -> Self {
        Error::Duplicate {
            topic: envelope.topic.clone(),
            idempotency_key: envelope.idempotency_key.clone(),
        }
    }

    /// Whether this is [`Error::Duplicate`]: the message was already written.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Error::Duplicate { .. })
    }

    /// Whether this is [`Error::RolledBack`].
    pub fn is_rolled_back(&self) -> bool {
        matches!(self, Error::RolledBack { .. })
    }

    /// Whether trying the same operation again later may succeed.
    ///
    /// True for lost connections, timeouts, broker nacks and database errors
    /// other than constraint violations; false for bad input and configuration.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Broker { retryable, .. } => *retryable,
            Error::BrokerUnavailable { .. } | Error::Connect { .. } => true,
            Error::Database(e) => {
                !matches!(
                    e,
                    sqlx::Error::Database(d) if d.is_unique_violation() || d.is_check_violation()
                        || d.is_foreign_key_violation()
                ) && !matches!(e, sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_))
            }
            _ => false,
        }
    }

    /// A broker error that may succeed if tried again.
    pub fn broker(message: impl fmt::Display, source: impl Into<BoxError>) -> Self {
        Error::Broker {
            message: message.to_string(),
            retryable: true,
            source: Some(source.into()),
        }
    }

    /// A broker error that will fail again the same way.
    pub fn broker_permanent(message: impl fmt::Display) -> Self {
        Error::Broker {
            message: message.to_string(),
            retryable: false,
            source: None,
        }
    }

    /// The broker cannot be reached.
    pub fn broker_unavailable(message: impl fmt::Display, source: Option<BoxError>) -> Self {
        Error::BrokerUnavailable {
            message: message.to_string(),
            source,
        }
    }

    /// Whether this is [`Error::BrokerUnavailable`].
    pub fn is_broker_unavailable(&self) -> bool {
        matches!(self, Error::BrokerUnavailable { .. })
    }

    /// A configuration error for `field`.
    pub fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            field,
            reason: reason.into(),
        }
    }
}

/// `e` and its sources, joined with `: `.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let text = cause.to_string();
        // An error that shows its cause in its own message (as
        // `Error::Database` does) is not repeated.
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = cause.source();
    }
    s
}

/// The text of a caught panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_error_shows_its_cause_once() {
        let err = Error::from(sqlx::Error::PoolTimedOut);
        assert_eq!(
            err.to_string(),
            "database error: pool timed out while waiting for an open connection"
        );
        assert_eq!(error_chain(&err), err.to_string());
    }

    #[test]
    fn a_connect_error_names_the_address_and_chains_its_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let err = Error::Connect {
            address: "127.0.0.1:1".to_owned(),
            source: sqlx::Error::Io(io),
        };
        assert!(err.is_retryable());
        let shown = error_chain(&err);
        assert!(
            shown.starts_with("cannot connect to the database at 127.0.0.1:1: ")
                && shown.contains("Connection refused"),
            "{shown}"
        );
    }
}
