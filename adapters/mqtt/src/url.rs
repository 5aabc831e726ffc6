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
        let (tls, rest) = if let Some(rest) = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
        {
            (false, rest)
        } else if let Some(rest) = url
            .strip_prefix("mqtts://")
            .or_else(|| url.strip_prefix("ssl://"))
        {
            (true, rest)
        } else {
            return Err(bad(
                "must start with `mqtt://` or `tcp://`, or `mqtts://` or `ssl://` for TLS",
            ));
        };
        if tls && !cfg!(feature = "tls") {
            return Err(bad(
                "`mqtts://` needs the `tls` feature of txmsg-mqtt (the `tls` feature of txmsg)",
            ));
        }
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') {
            return Err(bad("must not have a path or query"));
        }
        let (credentials, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                if user.is_empty() {
                    return Err(bad("has an empty user name"));
                }
                (Some((user.to_owned(), password.to_owned())), hostport)
            }
            None => (None, rest),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(bad("has an unclosed `[`"));
            };
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let port = match port {
            None if tls => TLS_PORT,
            None => PLAIN_PORT,
            Some(p) => p.parse::<u16>().map_err(|_| bad("has a bad port"))?,
        };
        Ok(Endpoint {
            host: host.to_owned(),
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
