//! `mqtt://` and `mqtts://` URLs.

use std::fmt;

use txmsg_core::{Error, Result};

/// Port of `mqtt://` URLs without one.
const PLAIN_PORT: u16 = 1883;
/// Port of `mqtts://` URLs without one.
const TLS_PORT: u16 = 8883;

/// Where the MQTT server is, who to log in as, and how to get there.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) credentials: Option<(String, String)>,
    /// Whether the URL asked for TLS (`mqtts://`, `ssl://`).
    pub(crate) tls: bool,
    /// Plain TCP, or TLS with its client configuration: set by
    /// [`MqttConfig::endpoint`](crate::MqttConfig).
    pub(crate) transport: rumqttc::Transport,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("tls", &self.tls)
            .finish()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Endpoint {
    /// Parses `mqtt://[user[:password]@]host[:port]` (`tcp://` alike) and
    /// `mqtts://...` (`ssl://` alike), with plain TCP as its transport.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `url` if it is malformed, or asks for TLS
    /// without the `tls` feature. No message quotes the URL.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let bad = |rule: &str| Error::config("url", rule.to_owned());
        let parsed = url::Url::parse(url).map_err(|e| match e {
            url::ParseError::InvalidPort => bad("has a bad port"),
            url::ParseError::EmptyHost => bad("has no host"),
            url::ParseError::RelativeUrlWithoutBase => {
                bad("must start with `mqtt://` or `tcp://`, or `mqtts://` or `ssl://` for TLS")
            }
            _ => bad("is not a well-formed url"),
        })?;
        let tls = match parsed.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => {
                return Err(bad(
                    "must start with `mqtt://` or `tcp://`, or `mqtts://` or `ssl://` for TLS",
                ));
            }
        };
        if tls && !cfg!(feature = "tls") {
            return Err(bad(
                "`mqtts://` needs the `tls` feature of txmsg-mqtt (the `tls` feature of txmsg)",
            ));
        }
        if !matches!(parsed.path(), "" | "/")
            || parsed.query().is_some()
            || parsed.fragment().is_some()
        {
            return Err(bad("must not have a path or query"));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(bad("has no host")),
        };
        // User and password as the URL percent-encodes them (`p%40ss` is
        // `p@ss`), decoded.
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| bad("has a user or password that is not UTF-8 once decoded"))
        };
        let credentials = match (parsed.username(), parsed.password()) {
            ("", None) => None,
            ("", Some(_)) => return Err(bad("has an empty user name")),
            (user, password) => Some((decode(user)?, decode(password.unwrap_or(""))?)),
        };
        let port = parsed
            .port()
            .unwrap_or(if tls { TLS_PORT } else { PLAIN_PORT });
        Ok(Endpoint {
            host,
            port,
            credentials,
            tls,
            transport: rumqttc::Transport::Tcp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let e = Endpoint::parse("mqtt://u:secret@host:1884").ok();
        let Some(e) = e else { panic!("parses") };
        assert_eq!((e.host.as_str(), e.port), ("host", 1884));
        assert!(!format!("{e:?}").contains("secret"));
        let Ok(e) = Endpoint::parse("tcp://127.0.0.1") else {
            panic!("parses")
        };
        assert_eq!(e.port, 1883);
        assert!(!e.tls);
        assert!(Endpoint::parse("http://h").is_err());
        assert!(Endpoint::parse("mqtt://h:x").is_err());
        assert!(Endpoint::parse("mqtt://:1883").is_err());
    }

    #[test]
    fn bad_urls_are_config_errors_that_do_not_quote_them() {
        for bad in [
            "http://u:s3cr3t-pw@h",
            "mqtt://u:s3cr3t-pw@h:x",
            "mqtt://u:s3cr3t-pw@h/path",
            "s3cr3t-pw",
        ] {
            match Endpoint::parse(bad) {
                Err(Error::Config {
                    field: "url",
                    reason,
                }) => assert!(!reason.contains("s3cr3t-pw"), "{reason}"),
                other => panic!("{bad}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn user_and_password_are_percent_decoded() {
        let Ok(e) = Endpoint::parse("mqtt://us%3Aer:p%40ss%2Fw%25rd@h") else {
            panic!("parses")
        };
        assert_eq!(
            e.credentials,
            Some(("us:er".to_owned(), "p@ss/w%rd".to_owned()))
        );
        let Ok(e) = Endpoint::parse("mqtt://[::1]:1884") else {
            panic!("parses")
        };
        assert_eq!((e.host.as_str(), e.port), ("::1", 1884));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_urls_default_to_port_8883() {
        let Ok(e) = Endpoint::parse("mqtts://u:s3cr3t-pw@broker.example.com") else {
            panic!("parses")
        };
        assert!(e.tls);
        assert_eq!(e.port, 8883);
        assert!(!format!("{e:?} {e}").contains("s3cr3t-pw"));
        let Ok(e) = Endpoint::parse("ssl://broker.example.com:18883") else {
            panic!("parses")
        };
        assert!(e.tls);
        assert_eq!(e.port, 18883);
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_urls_need_the_feature() {
        for url in [
            "mqtts://broker.example.com",
            "ssl://broker.example.com:8883",
        ] {
            assert!(
                matches!(
                    Endpoint::parse(url),
                    Err(Error::Config { field: "url", .. })
                ),
                "{url}"
            );
        }
    }
}
