//! Settings of a [`RedisBroker`](crate::RedisBroker).

#[cfg(feature = "tls")]
use std::path::Path;
use std::time::Duration;

use txmsg_core::{Error, Result, check};

txmsg_core::broker_settings! {
    /// Settings of a [`RedisBroker`](crate::RedisBroker), checked as they are set.
    ///
    /// | setting | default | meaning |
    /// |---------|---------|---------|
    /// | [`key_prefix`](Self::key_prefix) | `"txmsg:"` | the stream of topic `t` is at key `<prefix>t` |
    /// | [`max_len`](Self::max_len) | none | trim each stream to about this many entries on publish (`MAXLEN ~`) |
    /// | [`claim_idle`](Self::claim_idle) | 30 s | how long a delivery may stay unsettled by a vanished consumer before another consumer of its group takes it over |
    /// | [`block`](Self::block) | 1 s | longest one `XREADGROUP` waits for new entries |
    /// | [`read_count`](Self::read_count) | 100 | most entries one read asks for (never more than the free prefetch) |
    /// | [`source`](Self::source) | `"/txmsg"` | the CloudEvents `source` of every message |
    /// | [`timeouts`](Self::with_timeouts) | 5 s, 5 s | connect and response timeouts |
    /// | [`tls`](Self::tls) | none (the system's roots, no client certificate) | the PEM files of the trusted CAs, and of a client certificate and key, for `rediss://` |
    ///
    /// # TLS
    ///
    /// A `rediss://` URL (or `valkeys://`) connects over TLS; it needs the
    /// crate's `tls` feature, and without it [`RedisBroker::connect`] refuses the
    /// URL with [`Error::Config`] for `url` rather than connecting in plain
    /// text. The server's certificate is checked against the system's trust
    /// store, or only against [`TlsFiles::ca_file`](txmsg_core::tls::TlsFiles::ca_file) when that is
    /// set. The TLS options are refused for a plain `redis://` URL, which would
    /// not use them.
    ///
    /// [`RedisBroker::connect`]: crate::RedisBroker::connect
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use txmsg_redis::RedisConfig;
    ///
    /// let config = RedisConfig::default()
    ///     .with_key_prefix("shop:")?
    ///     .with_max_len(Some(100_000))?
    ///     .with_claim_idle(Duration::from_secs(10))?;
    /// assert_eq!(config.key_prefix(), "shop:");
    ///
    /// assert!(RedisConfig::default().with_key_prefix("no spaces").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub struct RedisConfig {
        key_prefix: String = "txmsg:".to_owned();
        max_len: Option<u64> = None;
        connect_timeout: Duration = Duration::from_secs(5);
        response_timeout: Duration = Duration::from_secs(5);
        /// How long a delivery may stay pending without its consumer keeping
        /// it before any subscription of the group takes it over and delivers
        /// it again: the redelivery delay of a dropped delivery or of the
        /// deliveries of a vanished consumer.
        claim_idle / with_claim_idle: Duration = Duration::from_secs(30), unless "it is 100 ms to one day" = within(Duration::from_millis(100), Duration::from_secs(86_400)),
        /// The longest one read waits for new entries (`BLOCK`).
        block / with_block: Duration = Duration::from_secs(1), unless "it is 10 ms to 60 s" = within(Duration::from_millis(10), Duration::from_secs(60)),
        /// The most entries one read asks for (`COUNT`); a read never asks
        /// for more than the subscription's free prefetch.
        read_count / with_read_count: usize = 100, unless "it is 1 to 10 000" = within(1, 10_000),
    }
    tls "txmsg-redis" {
        /// Sets the TLS files of `rediss://` connections: a CA file trusted
        /// instead of the system's roots, a client certificate and key (see
        /// [`TlsFiles`](txmsg_core::tls::TlsFiles); read when the broker connects).
    }
}

/// Longest key prefix accepted, in bytes.
const MAX_PREFIX_LEN: usize = 128;

impl RedisConfig {
    // For `validate` (see `broker_settings!`).
    fn with_plain_settings_of(self, from: &Self) -> Result<Self> {
        self.with_key_prefix(&from.key_prefix)?
            .with_max_len(from.max_len)?
            .with_timeouts(from.connect_timeout, from.response_timeout)
    }

    /// Sets the prefix of every stream key: topic `orders` is the stream at
    /// `<prefix>orders`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `key_prefix` if it is longer than 128 bytes or
    /// contains anything but printable ASCII without spaces.
    pub fn with_key_prefix(mut self, prefix: &str) -> Result<Self> {
        check::at_most_bytes("key_prefix", prefix, MAX_PREFIX_LEN)?;
        if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::config(
                "key_prefix",
                "may contain only printable ASCII characters without spaces",
            ));
        }
        prefix.clone_into(&mut self.key_prefix);
        Ok(self)
    }

    /// Trims each stream to about `max_len` entries as it is published to
    /// (`XADD ... MAXLEN ~`); `None` (the default) keeps every entry.
    ///
    /// Trimming does not look at consumer groups: entries trimmed before a
    /// group read them are lost to it, and entries trimmed after delivery
    /// but before their ack reach the group as dead letters saying so.
    /// [`RedisBroker::trim_acknowledged`](crate::RedisBroker::trim_acknowledged)
    /// trims only what every group acknowledged.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `max_len` if it is zero.
    pub fn with_max_len(mut self, max_len: Option<u64>) -> Result<Self> {
        if max_len == Some(0) {
            return Err(Error::config("max_len", "must be greater than zero"));
        }
        self.max_len = max_len;
        Ok(self)
    }

    /// Sets the timeout of one connect attempt and of one command's reply
    /// (a blocking read waits [`block`](Self::block) longer).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `timeouts` if either is zero or over 5 minutes.
    pub fn with_timeouts(mut self, connect: Duration, response: Duration) -> Result<Self> {
        let ok = |d: Duration| !d.is_zero() && d <= Duration::from_secs(300);
        if !ok(connect) || !ok(response) {
            return Err(Error::config(
                "timeouts",
                "must be greater than zero and at most 5 minutes",
            ));
        }
        self.connect_timeout = connect;
        self.response_timeout = response;
        Ok(self)
    }

    /// The prefix of every stream key.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The approximate length streams are trimmed to, if any.
    pub fn max_len(&self) -> Option<u64> {
        self.max_len
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The response timeout.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// A client for `url` with these settings, and `url` with its password
    /// masked, for logs and `Debug`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `url` if it is not a Redis URL, or asks for TLS
    /// (`rediss://`) without the `tls` feature; for `tls_ca_file` or
    /// `tls_client_auth` if they are set for a plain URL, or their files
    /// cannot be read or used. No message quotes the URL.
    pub(crate) fn open_client(&self, url: &str) -> Result<(redis::Client, String)> {
        let tls = uses_tls(url);
        if tls && !cfg!(feature = "tls") {
            return Err(Error::config(
                "url",
                "`rediss://` needs the `tls` feature of txmsg-redis \
                 (the `tls` feature of txmsg)",
            ));
        }
        self.tls.check_used(tls, "the URL is not `rediss://`")?;
        let client = self.build_client(url, tls)?;
        Ok((client, redact_url(url)))
    }

    /// A client for `url`, with the TLS settings when `tls`.
    #[cfg(feature = "tls")]
    fn build_client(&self, url: &str, tls: bool) -> Result<redis::Client> {
        use redis::IntoConnectionInfo as _;

        if !tls {
            return redis::Client::open(url).map_err(url_error);
        }
        if url.ends_with("#insecure") {
            return Err(Error::config(
                "url",
                "`#insecure` (no certificate check) is not supported",
            ));
        }
        txmsg_core::tls::ensure_crypto_provider();
        if self.tls.is_empty() {
            return redis::Client::open(url).map_err(url_error);
        }
        let info = url.into_connection_info().map_err(url_error)?;
        // The client parses the files when it connects; checked here so
        // that a bad file is refused now, for its own setting.
        self.tls.check_contents()?;
        let root_cert = match self.tls.ca_file() {
            Some(path) => Some(read_file("tls_ca_file", path)?),
            None => None,
        };
        let client_tls = match self.tls.client_auth() {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read_file("tls_client_auth", cert)?,
                client_key: read_file("tls_client_auth", key)?,
            }),
            None => None,
        };
        let field = if client_tls.is_some() {
            "tls_client_auth"
        } else {
            "tls_ca_file"
        };
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| Error::config(field, format!("cannot be used for TLS: {e}")))
    }

    /// A client for `url` (never TLS: [`open_client`](Self::open_client)
    /// refused it already).
    #[cfg(not(feature = "tls"))]
    fn build_client(&self, url: &str, _tls: bool) -> Result<redis::Client> {
        redis::Client::open(url).map_err(url_error)
    }
}

/// Whether `url` asks for TLS: `rediss://` or `valkeys://`.
fn uses_tls(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    })
}

/// The config error for a URL the client refused. The client's messages
/// about URLs are fixed texts that never quote the URL.
fn url_error(e: redis::RedisError) -> Error {
    Error::config("url", format!("is not a valid redis url: {e}"))
}

/// The bytes of the file at `path`.
#[cfg(feature = "tls")]
fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::config(field, format!("cannot read `{}`: {e}", path.display())))
}

/// `url` with its password masked: the password of the user info
/// (`redis://user:***@host`, or `redis://***@host` for a lone password) and
/// the `pass` or `password` query parameters (`unix:///run/redis.sock?pass=***`).
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = format!("{scheme}://");
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***@");
                }
                None if userinfo.is_empty() => out.push('@'),
                // `redis://password@host` is read as a password alone by some clients.
                None => out.push_str("***@"),
            }
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (tail, None),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _))
                        if key.eq_ignore_ascii_case("pass")
                            || key.eq_ignore_ascii_case("password") =>
                    {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use txmsg_testkit::config::{assert_refused_without, field_of};

    /// `url` as `open_client` shows it, once it accepted it.
    fn shown(url: &str) -> String {
        RedisConfig::default().open_client(url).unwrap().1
    }

    txmsg_testkit::deserialized_config_is_checked!(RedisConfig; |c| crate::RedisBroker::connect("redis://127.0.0.1:1", c);
        r#"{ "key_prefix": "billing:", "max_len": 1000, "claim_idle": "1m", "block": "2s", "read_count": 10, "source": "/billing", "connect_timeout": "1s", "response_timeout": "3s" }"#;
        r#"{ "read_count": 0 }"#; "read_count");

    #[test]
    fn refuses_bad_values() {
        let c = RedisConfig::default();
        assert!(c.clone().with_key_prefix("a b").is_err());
        assert!(c.clone().with_max_len(Some(0)).is_err());
        assert!(c.clone().with_claim_idle(Duration::from_millis(1)).is_err());
        assert!(c.clone().with_block(Duration::ZERO).is_err());
        assert!(c.clone().with_read_count(0).is_err());
        assert!(c.clone().with_source("").is_err());
        assert!(
            c.with_timeouts(Duration::ZERO, Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            redact_url("redis://u:secret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact_url("rediss://secret@h/1"), "rediss://***@h/1");
        assert_eq!(redact_url("redis://u:p@ss@h"), "redis://u:***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redact_url("unix:///run/redis.sock?db=1&pass=secret"),
            "unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            redact_url("redis://h?protocol=resp3&Password=secret#x"),
            "redis://h?protocol=resp3&Password=***#x"
        );
        assert_eq!(redact_url("not a url secret"), "***");
    }

    #[test]
    fn tls_urls_are_recognised() {
        assert!(uses_tls("rediss://h"));
        assert!(uses_tls("REDISS://h"));
        assert!(uses_tls("valkeys://h"));
        assert!(!uses_tls("redis://h"));
        assert!(!uses_tls("unix:///run/redis.sock"));
        assert!(!uses_tls("rediss"));
    }

    #[test]
    fn a_bad_url_is_a_config_error_that_does_not_quote_it() {
        for bad in [
            "http://u:s3cr3t-pw@h",
            "redis://u:s3cr3t-pw@h/notanumber",
            "s3cr3t-pw",
        ] {
            assert_refused_without(RedisConfig::default().open_client(bad), "url", "s3cr3t-pw");
        }
    }

    #[test]
    fn a_plain_url_keeps_the_password_out_of_the_shown_form() {
        assert_eq!(
            shown("redis://app:s3cr3t-pw@127.0.0.1:6379/0"),
            "redis://app:***@127.0.0.1:6379/0"
        );
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_tls_a_tls_url_or_option_is_a_config_error() {
        assert_eq!(
            field_of(RedisConfig::default().open_client("rediss://127.0.0.1:6379")),
            "url"
        );
        txmsg_testkit::config::assert_tls_files_need_the_feature(|f| {
            RedisConfig::default().with_tls(f)
        });
    }

    #[cfg(feature = "tls")]
    mod tls {

        use super::*;

        #[test]
        fn tls_files_are_checked() {
            txmsg_testkit::config::assert_tls_files_checked(
                |f, url| RedisConfig::default().with_tls(f)?.open_client(url),
                Some("redis://127.0.0.1:6379"),
                "rediss://h",
            );
        }

        #[test]
        fn a_tls_url_builds_a_client() {
            assert_eq!(
                shown("rediss://app:s3cr3t-pw@redis.example.com:6380"),
                "rediss://app:***@redis.example.com:6380"
            );
        }

        #[test]
        fn insecure_is_refused() {
            assert_eq!(
                field_of(RedisConfig::default().open_client("rediss://h#insecure")),
                "url"
            );
        }
    }
}
