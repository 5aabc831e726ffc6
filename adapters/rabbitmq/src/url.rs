//! The broker's URL: parsed once, never shown with its password.

use std::fmt::{self, Write as _};

use lapin::uri::AMQPUri;
use txmsg_core::{Error, Result};

/// A parsed `amqp://` or `amqps://` URL and a form of it that is safe to log.
#[derive(Clone)]
pub(crate) struct BrokerUrl {
    uri: AMQPUri,
    redacted: String,
}

impl BrokerUrl {
    /// Parses `url`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `url` if it is not an AMQP URL, or is an
    /// `amqps://` URL without the `tls` feature (which would otherwise
    /// connect in plain text); the message never quotes the URL, which may
    /// hold a password.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let uri: AMQPUri = url.parse().map_err(|e: String| {
            // Some parser messages quote the input, password included.
            let reason = if e.contains(url) || e.contains('@') || e.contains('\'') {
                "is not a valid amqp:// or amqps:// URL".to_owned()
            } else {
                format!(
                    "is not a valid amqp:// or amqps:// URL: {}",
                    e.to_lowercase()
                )
            };
            Error::config("url", reason)
        })?;
        if !cfg!(feature = "tls") && uri.scheme == lapin::uri::AMQPScheme::AMQPS {
            return Err(Error::config(
                "url",
                "`amqps://` needs the `tls` feature of txmsg-rabbitmq (the `tls` feature of txmsg)",
            ));
        }
        let redacted = redact(&uri);
        Ok(BrokerUrl { uri, redacted })
    }

    /// The parsed URL, password included: for connecting only.
    pub(crate) fn uri(&self) -> &AMQPUri {
        &self.uri
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted, f)
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// `scheme://user:***@host:port/vhost`, or without `:***` when there is no password.
fn redact(uri: &AMQPUri) -> String {
    let auth = &uri.authority;
    let mut out = format!("{}://", uri.scheme);
    encode_into(&mut out, &auth.userinfo.username);
    if !auth.userinfo.password.is_empty() {
        out.push_str(":***");
    }
    let _ = write!(out, "@{}:{}/", auth.host, auth.port);
    encode_into(&mut out, &uri.vhost);
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password() {
        let url = BrokerUrl::parse("amqp://guest:s3cr%40t@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(url.to_string(), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(url.uri().authority.userinfo.password, "s3cr@t");
        assert!(!format!("{url:?} {url}").contains("s3cr"));
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn amqps_needs_the_tls_feature() {
        match BrokerUrl::parse("amqps://svc:s3cr3t-pw@rabbit.example.com/prod") {
            Err(Error::Config {
                field: "url",
                reason,
            }) => assert!(!reason.contains("s3cr3t-pw"), "{reason}"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn keeps_vhost_and_user() {
        let url = BrokerUrl::parse("amqps://svc@rabbit.example.com/prod").unwrap();
        assert_eq!(
            url.to_string(),
            "amqps://svc:***@rabbit.example.com:5671/prod"
        );
    }

    #[test]
    fn bad_url_is_a_config_error_without_the_password() {
        for bad in [
            "http://u:hunter2@host/",
            "amqp:hunter2",
            "not a url hunter2",
        ] {
            txmsg_testkit::config::assert_refused_without(BrokerUrl::parse(bad), "url", "hunter2");
        }
    }
}
