//! `mqtt://` URLs.

use std::fmt;

use txmsg_core::{Error, Result};

/// Where the MQTT server is, and who to log in as.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) credentials: Option<(String, String)>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Endpoint {
    /// Parses `mqtt://[user[:password]@]host[:port]`.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let bad = |rule: &str| Error::config("url", rule.to_owned());
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| bad("must start with `mqtt://` or `tcp://` (TLS is not supported)"))?;
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
            None => 1883,
            Some(p) => p.parse::<u16>().map_err(|_| bad("has a bad port"))?,
        };
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            credentials,
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
        assert!(Endpoint::parse("mqtts://h").is_err());
        assert!(Endpoint::parse("mqtt://h:x").is_err());
        assert!(Endpoint::parse("mqtt://:1883").is_err());
    }
}
