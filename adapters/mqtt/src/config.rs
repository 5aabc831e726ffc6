//! Validated settings of an [`MqttBroker`](crate::MqttBroker).

use std::time::Duration;

use txmsg_core::{Error, Result, check};

use crate::url::Endpoint;

txmsg_core::broker_settings! {
    /// Settings of an [`MqttBroker`](crate::MqttBroker), validated as they are set.
    ///
    /// # TLS
    ///
    /// An `mqtts://` URL (or `ssl://`, port 8883 by default) connects over TLS;
    /// it needs the crate's `tls` feature, and without it
    /// [`MqttBroker::connect`](crate::MqttBroker::connect) refuses the URL with
    /// [`Error::Config`] for `url` rather than connecting in plain text. The
    /// server's certificate is checked against the system's trust store, or only
    /// against [`TlsFiles::ca_file`](txmsg_core::tls::TlsFiles::ca_file) when that is set;
    /// [`TlsFiles::client_auth`](txmsg_core::tls::TlsFiles::client_auth) adds a client certificate
    /// (mutual TLS). The TLS options are refused for a plain `mqtt://` URL,
    /// which would not use them.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use txmsg_mqtt::MqttConfig;
    ///
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = MqttConfig::default()
    ///     .with_topic_prefix("shop/")?
    ///     .with_source("/orders")?
    ///     .with_keep_alive(Duration::from_secs(30))?;
    /// assert_eq!(config.topic_prefix(), "shop/");
    /// # Ok(()) }
    /// ```
    pub struct MqttConfig {
        topic_prefix: String = "txmsg/".to_owned();
        client_id_prefix: String = "txmsg-".to_owned();
        /// The MQTT keep-alive interval (default 30 s).
        keep_alive / with_keep_alive: Duration = Duration::from_secs(30), unless "it is 5 s to 65535 s, in whole seconds" = whole_seconds(Duration::from_secs(5), Duration::from_secs(u64::from(u16::MAX))),
        /// How long the broker keeps a subscription's session (its
        /// unacknowledged and queued messages) after the connection drops
        /// (default 1 h). Subscriptions connect with `clean_start = false`, so
        /// a reconnect resumes the session and gets its unacknowledged
        /// messages again. Zero makes every session end with its connection.
        session_expiry / with_session_expiry: Duration = Duration::from_secs(3600), unless "it is whole seconds below `u32::MAX` s" = whole_seconds(Duration::ZERO, Duration::from_secs(u64::from(u32::MAX) - 1)),
        /// How long a connection attempt may take (default 5 s).
        connect_timeout / with_connect_timeout: Duration = Duration::from_secs(5), unless "it is whole seconds from 1 s to 1 h" = whole_seconds(Duration::from_secs(1), Duration::from_secs(3600)),
        /// How long a publish waits for its PUBACK (default 30 s); past it
        /// the publish fails with a retryable error.
        publish_timeout / with_publish_timeout: Duration = Duration::from_secs(30), unless "it is greater than zero" = positive(),
        /// The largest MQTT packet this client sends or accepts (default
        /// 16 MiB; the broker's own limit applies as well).
        max_packet_size / with_max_packet_size: u32 = 16 * 1024 * 1024, unless "it is 1024 bytes to 256 MiB" = within(1024, 256 * 1024 * 1024),
    }
    tls "txmsg-mqtt" {
        /// Sets the TLS files of `mqtts://` connections: a CA file trusted
        /// instead of the system's roots, a client certificate and key (see
        /// [`TlsFiles`](txmsg_core::tls::TlsFiles); read when the broker connects).
    }
}

/// Longest topic prefix, in bytes.
const MAX_PREFIX_LEN: usize = 128;

/// Longest client id prefix, in bytes (a UUID is appended to it).
const MAX_CLIENT_ID_PREFIX_LEN: usize = 64;

impl MqttConfig {
    /// Sets what every MQTT topic starts with (default `txmsg/`): topic
    /// `orders.placed` is published to `<prefix>orders.placed`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the prefix holds a wildcard (`+`, `#`), a NUL or
    /// control character, starts with `$`, or is longer than 128 bytes.
    pub fn with_topic_prefix(mut self, prefix: &str) -> Result<Self> {
        check::at_most_bytes("topic_prefix", prefix, MAX_PREFIX_LEN)?;
        if prefix.starts_with('$') {
            return Err(Error::config("topic_prefix", "must not start with `$`"));
        }
        if prefix
            .chars()
            .any(|c| c == '+' || c == '#' || c.is_control())
        {
            return Err(Error::config(
                "topic_prefix",
                "must not hold `+`, `#` or control characters",
            ));
        }
        self.topic_prefix = prefix.to_owned();
        Ok(self)
    }

    /// Sets what every MQTT client id starts with (default `txmsg-`); a
    /// UUID is appended, one per connection.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless it is 1 to 64 ASCII letters, digits, `-`
    /// or `_`.
    pub fn with_client_id_prefix(mut self, prefix: &str) -> Result<Self> {
        let prefix = check::byte_len("client_id_prefix", prefix, 1, MAX_CLIENT_ID_PREFIX_LEN)?;
        self.client_id_prefix = check::word("client_id_prefix", prefix)?.to_owned();
        Ok(self)
    }

    /// The topic prefix.
    pub fn topic_prefix(&self) -> &str {
        &self.topic_prefix
    }

    /// The client id prefix.
    pub fn client_id_prefix(&self) -> &str {
        &self.client_id_prefix
    }

    /// The server at `url`, with the transport these settings ask for.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `url` if it is malformed or asks for TLS
    /// without the `tls` feature; for `tls_ca_file` or `tls_client_auth` if
    /// they are set for a plain URL, or their files cannot be read or used.
    /// No message quotes the URL.
    pub(crate) fn endpoint(&self, url: &str) -> Result<Endpoint> {
        let mut endpoint = Endpoint::parse(url)?;
        if endpoint.tls {
            endpoint.transport = self.tls_transport()?;
        } else {
            self.tls.check_used(false, "the URL is not `mqtts://`")?;
        }
        Ok(endpoint)
    }

    /// TLS through rustls with the `ring` provider, trusting the CA file or
    /// the system's roots, with the client certificate when one is set.
    #[cfg(feature = "tls")]
    fn tls_transport(&self) -> Result<rumqttc::Transport> {
        use std::sync::Arc;

        let mut roots = rustls::RootCertStore::empty();
        match self.tls.ca_certificates()? {
            Some(certs) => {
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        Error::config("tls_ca_file", format!("holds a bad certificate: {e}"))
                    })?;
                }
            }
            None => {
                // Unreadable system certificates are skipped, as browsers do.
                let (added, _) =
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if added == 0 {
                    return Err(Error::config(
                        "tls_ca_file",
                        "is not set, and the system trust store holds no certificate",
                    ));
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::config("url", format!("no TLS version can be offered: {e}")))?
            .with_root_certificates(roots);
        let config = match self.tls.client_identity()? {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::config(
                    "tls_client_auth",
                    format!("the certificate and key cannot be used: {e}"),
                )
            })?,
            None => builder.with_no_client_auth(),
        };
        Ok(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
        ))
    }

    /// Never reached: [`Endpoint::parse`] refuses TLS URLs without the `tls`
    /// feature.
    #[cfg(not(feature = "tls"))]
    fn tls_transport(&self) -> Result<rumqttc::Transport> {
        Err(Error::config(
            "url",
            "`mqtts://` needs the `tls` feature of txmsg-mqtt (the `tls` feature of txmsg)",
        ))
    }

    // For `validate` (see `broker_settings!`).
    fn with_plain_settings_of(self, from: &Self) -> Result<Self> {
        self.with_topic_prefix(&from.topic_prefix)?
            .with_client_id_prefix(&from.client_id_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(not(feature = "tls"))]
    use txmsg_testkit::config::field_of;

    txmsg_testkit::deserialized_config_is_checked!(MqttConfig; |c| crate::MqttBroker::connect("mqtt://127.0.0.1:1", c);
        r#"{ "topic_prefix": "billing/", "client_id_prefix": "billing", "source": "/billing", "keep_alive": "30s", "session_expiry": "1h", "connect_timeout": "1s", "publish_timeout": "2s", "max_packet_size": 4096 }"#;
        r#"{ "max_packet_size": 0 }"#; "max_packet_size");

    #[test]
    fn defaults() {
        let c = MqttConfig::default();
        assert_eq!(c.topic_prefix(), "txmsg/");
        assert_eq!(c.keep_alive(), Duration::from_secs(30));
    }

    #[test]
    fn refuses_bad_values() {
        for bad in ["a/+/", "#", "$SYS/", "a\u{0}b"] {
            assert!(matches!(
                MqttConfig::default().with_topic_prefix(bad),
                Err(Error::Config {
                    field: "topic_prefix",
                    ..
                })
            ));
        }
        assert!(MqttConfig::default().with_topic_prefix("").is_ok());
        assert!(MqttConfig::default().with_client_id_prefix("a b").is_err());
        assert!(MqttConfig::default().with_client_id_prefix("").is_err());
        assert!(
            MqttConfig::default()
                .with_keep_alive(Duration::from_secs(1))
                .is_err()
        );
        assert!(
            MqttConfig::default()
                .with_keep_alive(Duration::from_millis(5500))
                .is_err()
        );
        assert!(
            MqttConfig::default()
                .with_publish_timeout(Duration::ZERO)
                .is_err()
        );
        assert!(MqttConfig::default().with_max_packet_size(10).is_err());
        assert!(MqttConfig::default().with_source("").is_err());
    }

    #[test]
    fn a_plain_url_is_plain_tcp() {
        let e = MqttConfig::default()
            .endpoint("mqtt://u:s3cr3t-pw@127.0.0.1:1883")
            .unwrap();
        assert!(!e.tls);
        assert!(matches!(e.transport, rumqttc::Transport::Tcp));
        assert!(!format!("{e:?} {e}").contains("s3cr3t-pw"));
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_tls_a_tls_url_or_option_is_a_config_error() {
        assert_eq!(
            field_of(MqttConfig::default().endpoint("mqtts://127.0.0.1")),
            "url"
        );
        txmsg_testkit::config::assert_tls_files_need_the_feature(|f| {
            MqttConfig::default().with_tls(f)
        });
    }

    #[cfg(feature = "tls")]
    mod tls {

        use super::*;

        #[test]
        fn tls_files_are_checked() {
            txmsg_testkit::config::assert_tls_files_checked(
                |f, url| MqttConfig::default().with_tls(f)?.endpoint(url),
                Some("mqtt://127.0.0.1"),
                "mqtts://h",
            );
        }

        #[test]
        fn a_tls_url_gets_a_tls_transport() {
            // The system trust store of this machine is used.
            let e = MqttConfig::default()
                .endpoint("mqtts://u:s3cr3t-pw@broker.example.com")
                .unwrap();
            assert!(e.tls);
            assert_eq!(e.port, 8883);
            assert!(matches!(
                e.transport,
                rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(_))
            ));
            assert!(!format!("{e:?} {e}").contains("s3cr3t-pw"));
        }
    }
}
