//! Settings of a [`NatsBroker`](crate::NatsBroker).

use std::time::Duration;

use txmsg_core::{Error, Result, check};

txmsg_core::broker_settings! {
    /// Settings of a [`NatsBroker`](crate::NatsBroker), checked as they are set.
    ///
    /// | setting | default | meaning |
    /// |---------|---------|---------|
    /// | [`stream`](Self::stream) | `"TXMSG"` | JetStream stream holding every message |
    /// | [`subject_prefix`](Self::subject_prefix) | `"txmsg"` | topic `orders.placed` is published on `txmsg.orders.placed`; the stream takes `txmsg.>` |
    /// | [`duplicate_window`](Self::duplicate_window) | 2 min | how long the stream remembers a `Nats-Msg-Id` to drop a republish |
    /// | [`ack_wait`](Self::ack_wait) | 30 s | how long a delivery may stay unsettled before the server delivers it again |
    /// | [`max_ack_pending`](Self::max_ack_pending) | 1000 | most unsettled deliveries of one group, over all its subscriptions |
    /// | [`replicas`](Self::replicas) | 1 | servers of a JetStream cluster that keep the stream, when the broker creates it |
    /// | [`connect_timeout`](Self::connect_timeout) | 10 s | longest the first connect may take |
    /// | [`publish_timeout`](Self::publish_timeout) | 10 s | longest a publish waits for its PubAck |
    /// | [`source`](Self::source) | `"/txmsg"` | the CloudEvents `source` attribute of every message |
    /// | [`tls`](Self::tls) | none (the system's roots, no client certificate) | the PEM files of the trusted CAs, and of a client certificate and key, for TLS |
    ///
    /// # TLS
    ///
    /// A `tls://` server URL connects over TLS; so does a `nats://` one whose
    /// server asks for TLS, and any URL once a TLS option is set (the client
    /// then requires TLS and never falls back to plain text). TLS needs the
    /// crate's `tls` feature: without it a `tls://` URL is refused with
    /// [`Error::Config`] for `url`, and so are the TLS options. The server's
    /// certificate is checked against the system's trust store, plus
    /// [`TlsFiles::ca_file`](txmsg_core::tls::TlsFiles::ca_file) when that is set.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use txmsg_nats::NatsConfig;
    ///
    /// let config = NatsConfig::default()
    ///     .with_stream("BILLING")?
    ///     .with_subject_prefix("billing")?
    ///     .with_duplicate_window(Duration::from_secs(600))?;
    /// assert_eq!(config.stream(), "BILLING");
    /// assert_eq!(config.subject("orders.placed"), "billing.orders.placed");
    ///
    /// assert!(NatsConfig::default().with_stream("no.dots").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub struct NatsConfig {
        stream: String = "TXMSG".to_owned();
        subject_prefix: String = "txmsg".to_owned();
        /// How long the stream remembers a message's `Nats-Msg-Id` (its
        /// idempotency key): a message published again within the window is
        /// acknowledged and dropped.
        duplicate_window / with_duplicate_window: Duration = Duration::from_secs(120), unless "it is at least 1 s" = at_least(Duration::from_secs(1)),
        /// How long a delivery may stay unsettled before the server delivers
        /// it again (the consumers' `ack_wait`). Deliveries that are nacked
        /// or dropped come back at once; this bounds the wait for those of a
        /// consumer that vanished without a word.
        ack_wait / with_ack_wait: Duration = Duration::from_secs(30), unless "it is at least 1 s" = at_least(Duration::from_secs(1)),
        /// The most deliveries one group may have unsettled over all its
        /// subscriptions (the consumers' `max_ack_pending`). Each
        /// subscription is further held to its own `prefetch`.
        max_ack_pending / with_max_ack_pending: u32 = 1000, unless "it is greater than zero" = positive(),
        /// How many servers of a JetStream cluster keep the stream (its
        /// `num_replicas`): 3 or 5 survive the loss of one or two servers;
        /// a single server keeps only 1 and refuses more. Used when the
        /// broker creates the stream; an existing stream keeps the replicas
        /// its operator gave it (a different count is logged as a warning).
        replicas / with_replicas: usize = 1, unless "it is 1 to 5" = within(1, 5),
        /// The longest the first connect may take.
        connect_timeout / with_connect_timeout: Duration = Duration::from_secs(10), unless "it is greater than zero" = positive(),
        /// The longest a publish waits for its PubAck; after that it fails
        /// with a retryable error.
        publish_timeout / with_publish_timeout: Duration = Duration::from_secs(10), unless "it is greater than zero" = positive(),
    }
    tls "txmsg-nats" {
        /// Sets the TLS files: CA certificates trusted beside the system's
        /// roots, a client certificate and key (see [`TlsFiles`](txmsg_core::tls::TlsFiles); read when
        /// the broker connects). Once any is set, the client requires TLS.
    }
}

/// Longest stream name accepted, in bytes.
const MAX_STREAM_LEN: usize = 64;

/// Longest subject prefix accepted, in bytes.
const MAX_PREFIX_LEN: usize = 128;

impl NatsConfig {
    // For `validate` (see `broker_settings!`).
    fn with_plain_settings_of(self, from: &Self) -> Result<Self> {
        self.with_stream(from.stream.clone())?
            .with_subject_prefix(from.subject_prefix.clone())
    }

    /// Names the JetStream stream, created (or updated) when the broker
    /// connects, that stores every message published under the subject
    /// prefix.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `stream` if the name is empty, longer than 64
    /// bytes, or contains anything but ASCII letters, digits, `-` and `_`.
    pub fn with_stream(mut self, stream: impl Into<String>) -> Result<Self> {
        let stream = check::byte_len("stream", stream.into(), 1, MAX_STREAM_LEN)?;
        if !stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::config(
                "stream",
                "may only contain ASCII letters, digits, `-` and `_`",
            ));
        }
        self.stream = stream;
        Ok(self)
    }

    /// Sets the subject prefix: topic `t` is published on subject
    /// `<prefix>.t`, and the stream takes the subjects `<prefix>.>`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `subject_prefix` if it is empty, longer than
    /// 128 bytes, has an empty token (`a..b`, a leading or trailing `.`) or
    /// contains anything but ASCII letters, digits, `-`, `_` and `.`.
    pub fn with_subject_prefix(mut self, prefix: impl Into<String>) -> Result<Self> {
        let prefix = check::byte_len("subject_prefix", prefix.into(), 1, MAX_PREFIX_LEN)?;
        if prefix.split('.').any(str::is_empty) {
            return Err(Error::config(
                "subject_prefix",
                "may not have empty tokens (`..`, or a leading or trailing `.`)",
            ));
        }
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(Error::config(
                "subject_prefix",
                "may only contain ASCII letters, digits, `-`, `_` and `.`",
            ));
        }
        self.subject_prefix = prefix;
        Ok(self)
    }

    /// The stream name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The subject prefix.
    pub fn subject_prefix(&self) -> &str {
        &self.subject_prefix
    }

    /// The client options for connecting to `url` with these settings.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `url` if one of its servers asks for TLS
    /// (`tls://`, `wss://`) without the `tls` feature; for `tls_ca_file` or
    /// `tls_client_auth` if a file they name does not exist. No message
    /// quotes the URL.
    ///
    /// The credentials of the URL are taken out of it and given to the
    /// client as options, so that the URL handed to the client (which logs
    /// the server address on every connect attempt) holds no secret; the
    /// URL without them is returned with the options.
    pub(crate) fn connect_options(
        &self,
        url: &str,
    ) -> Result<(async_nats::ConnectOptions, String)> {
        if !cfg!(feature = "tls") && url.split(',').any(asks_for_tls) {
            return Err(Error::config(
                "url",
                "a `tls://` server needs the `tls` feature of txmsg-nats \
                 (the `tls` feature of txmsg)",
            ));
        }
        let (servers, credentials) = without_credentials(url)?;
        let mut options = async_nats::ConnectOptions::new()
            .name("txmsg")
            .connection_timeout(self.connect_timeout);
        options = match credentials {
            Some(Credentials::UserPassword(user, password)) => {
                options.user_and_password(user, password)
            }
            Some(Credentials::Token(token)) => options.token(token),
            None => options,
        };
        Ok((self.tls_options(options)?, servers))
    }

    /// `options` with the TLS settings, if any.
    #[cfg(feature = "tls")]
    fn tls_options(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions> {
        txmsg_core::tls::ensure_crypto_provider();
        // The client reads the files when it connects; checked here so that
        // a bad file is refused now, for its own setting.
        self.tls.check_contents()?;
        if let Some(path) = self.tls.ca_file() {
            options = options
                .add_root_certificates(path.to_owned())
                .require_tls(true);
        }
        if let Some((cert, key)) = self.tls.client_auth() {
            options = options
                .add_client_certificate(cert.to_owned(), key.to_owned())
                .require_tls(true);
        }
        Ok(options)
    }

    /// `options` as they are: without the `tls` feature no TLS option can
    /// be set.
    #[cfg(not(feature = "tls"))]
    fn tls_options(
        &self,
        options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions> {
        Ok(options)
    }

    /// The subject `topic` is published on: `<prefix>.<topic>`.
    pub fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.subject_prefix)
    }

    /// The subjects the stream takes: `<prefix>.>`.
    pub fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }

    /// The topic of `subject`, if it is under the prefix.
    pub(crate) fn topic_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.subject_prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|t| !t.is_empty())
    }
}

/// Credentials found in a server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credentials {
    /// `user:password@`.
    UserPassword(String, String),
    /// `token@`.
    Token(String),
}

/// `url` (a comma-separated list of servers) with the user information
/// taken out of every server, and the credentials it held. Servers that
/// name different credentials are refused: the client has one set.
fn without_credentials(url: &str) -> Result<(String, Option<Credentials>)> {
    let mut found: Option<Credentials> = None;
    let mut servers = Vec::new();
    for server in url.split(',') {
        let server = server.trim();
        let (scheme, rest) = match server.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, server),
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let host = match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let credentials = match userinfo.split_once(':') {
                    Some((user, password)) => {
                        Credentials::UserPassword(user.to_owned(), password.to_owned())
                    }
                    None => Credentials::Token(userinfo.to_owned()),
                };
                match &found {
                    Some(other) if *other != credentials => {
                        return Err(Error::config(
                            "url",
                            "its servers name different credentials; give every server the same ones",
                        ));
                    }
                    _ => found = Some(credentials),
                }
                host
            }
            None => authority,
        };
        servers.push(match scheme {
            Some(scheme) => format!("{scheme}://{host}{tail}"),
            None => format!("{host}{tail}"),
        });
    }
    Ok((servers.join(","), found))
}

/// Whether the server address `server` (one entry of a URL list) asks for
/// TLS: `tls://` or `wss://`.
fn asks_for_tls(server: &str) -> bool {
    server.trim().split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("tls") || scheme.eq_ignore_ascii_case("wss")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use txmsg_testkit::config::field_of;

    txmsg_testkit::deserialized_config_is_checked!(NatsConfig; |c| crate::NatsBroker::connect("nats://127.0.0.1:1", c);
        r#"{ "stream": "BILLING", "subject_prefix": "billing", "duplicate_window": "10m", "ack_wait": "5s", "max_ack_pending": 10, "replicas": 3, "connect_timeout": "1s", "publish_timeout": "2s", "source": "/billing" }"#;
        r#"{ "stream": "no.dots" }"#; "stream");

    #[test]
    fn replicas_are_one_to_five() {
        assert_eq!(NatsConfig::default().replicas(), 1);
        assert_eq!(
            NatsConfig::default().with_replicas(5).unwrap().replicas(),
            5
        );
        for bad in [0, 6] {
            let err = NatsConfig::default().with_replicas(bad).unwrap_err();
            assert_eq!(field_of(Err::<(), _>(err)), "replicas");
        }
    }

    #[test]
    fn validates() {
        let c = NatsConfig::default();
        assert!(c.clone().with_stream("").is_err());
        assert!(c.clone().with_stream("a.b").is_err());
        assert!(c.clone().with_stream("a b").is_err());
        assert!(c.clone().with_stream("A_b-1").is_ok());
        assert!(c.clone().with_subject_prefix("a..b").is_err());
        assert!(c.clone().with_subject_prefix("a.*").is_err());
        assert!(c.clone().with_subject_prefix(".a").is_err());
        assert!(c.clone().with_subject_prefix("a.b").is_ok());
        assert!(c.clone().with_duplicate_window(Duration::ZERO).is_err());
        assert!(c.clone().with_ack_wait(Duration::from_millis(10)).is_err());
        assert!(c.clone().with_max_ack_pending(0).is_err());
        assert!(c.clone().with_connect_timeout(Duration::ZERO).is_err());
        assert!(c.clone().with_publish_timeout(Duration::ZERO).is_err());
        assert!(c.clone().with_source("a\nb").is_err());
    }

    #[test]
    fn tls_servers_are_recognised() {
        assert!(asks_for_tls("tls://h:4222"));
        assert!(asks_for_tls(" TLS://h"));
        assert!(asks_for_tls("wss://h"));
        assert!(!asks_for_tls("nats://h"));
        assert!(!asks_for_tls("h:4222"));
    }

    #[test]
    fn credentials_leave_the_url() {
        let (servers, credentials) =
            without_credentials("nats://u:s3cr3t-pw@127.0.0.1:4222, nats://u:s3cr3t-pw@h2")
                .unwrap();
        assert_eq!(servers, "nats://127.0.0.1:4222,nats://h2");
        assert_eq!(
            credentials,
            Some(Credentials::UserPassword("u".into(), "s3cr3t-pw".into()))
        );
        let (servers, credentials) = without_credentials("tok3n@h:4222/x").unwrap();
        assert_eq!(servers, "h:4222/x");
        assert_eq!(credentials, Some(Credentials::Token("tok3n".into())));
        assert_eq!(
            without_credentials("nats://h").unwrap(),
            ("nats://h".to_owned(), None)
        );
        let err = without_credentials("nats://a:1@h1,nats://b:2@h2").unwrap_err();
        assert!(!err.to_string().contains('1') || !err.to_string().contains("a:1"));
        assert_eq!(
            field_of(without_credentials("nats://a:1@h1,nats://b:2@h2")),
            "url"
        );
    }

    #[test]
    fn plain_urls_need_no_tls() {
        assert!(
            NatsConfig::default()
                .connect_options("nats://u:s3cr3t-pw@127.0.0.1:4222")
                .is_ok()
        );
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_tls_a_tls_url_or_option_is_a_config_error() {
        for url in ["tls://127.0.0.1:4222", "nats://a:4222,tls://b:4222"] {
            assert_eq!(field_of(NatsConfig::default().connect_options(url)), "url");
        }
        txmsg_testkit::config::assert_tls_files_need_the_feature(|f| {
            NatsConfig::default().with_tls(f)
        });
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_options() {
        assert!(
            NatsConfig::default()
                .connect_options("tls://127.0.0.1:4222")
                .is_ok()
        );
        txmsg_testkit::config::assert_tls_files_checked(
            |f, url| NatsConfig::default().with_tls(f)?.connect_options(url),
            None,
            "tls://h:4222",
        );
    }

    #[test]
    fn subjects() {
        let c = NatsConfig::default();
        assert_eq!(c.subject("orders.placed"), "txmsg.orders.placed");
        assert_eq!(c.stream_subjects(), "txmsg.>");
        assert_eq!(c.topic_of("txmsg.orders.placed"), Some("orders.placed"));
        assert_eq!(c.topic_of("txmsgx.orders"), None);
        assert_eq!(c.topic_of("other.orders"), None);
    }
}
