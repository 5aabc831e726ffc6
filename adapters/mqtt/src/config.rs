//! Validated settings of an [`MqttBroker`](crate::MqttBroker).

#[cfg(feature = "tls")]
use std::path::Path;
use std::time::Duration;
use txmsg_core::check;

use txmsg_core::cloudevents::check_source;
use txmsg_core::tls::TlsFiles;
use txmsg_core::{Error, Result};

use crate::url::Endpoint;

/// Longest topic prefix, in bytes.
const MAX_PREFIX_LEN: usize = 128;
/// Longest client id prefix, in bytes (a UUID is appended to it).
const MAX_CLIENT_ID_PREFIX_LEN: usize = 64;

/// Settings of an [`MqttBroker`](crate::MqttBroker), validated as they are set.
///
/// # TLS
///
/// An `mqtts://` URL (or `ssl://`, port 8883 by default) connects over TLS;
/// it needs the crate's `tls` feature, and without it
/// [`MqttBroker::connect`](crate::MqttBroker::connect) refuses the URL with
/// [`Error::Config`] for `url` rather than connecting in plain text. The
/// server's certificate is checked against the system's trust store, or only
/// against [`TlsFiles::ca_file`] when that is set;
/// [`TlsFiles::client_auth`] adds a client certificate
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
///
/// It deserializes with serde, from a service's config file or environment,
/// as [the guide's configuration reference][guide] shows;
/// [`validate`](Self::validate) then checks it as the setters do
/// (connecting checks it too).
///
/// [guide]: https://github.com/txmsg/txmsg/blob/main/docs/guide.md#4-configuration-reference
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[non_exhaustive]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    topic_prefix: String,
    client_id_prefix: String,
    source: String,
    #[serde(with = "humantime_serde")]
    keep_alive: Duration,
    #[serde(with = "humantime_serde")]
    session_expiry: Duration,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    publish_timeout: Duration,
    max_packet_size: u32,
    tls: TlsFiles,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            topic_prefix: "txmsg/".to_owned(),
            client_id_prefix: "txmsg-".to_owned(),
            source: "/txmsg".to_owned(),
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(30),
            max_packet_size: 16 * 1024 * 1024,
            tls: TlsFiles::default(),
        }
    }
}

impl MqttConfig {
    /// Checks every setting as its setter does: what a deserialized config
    /// needs before use. [`MqttBroker::connect`](crate::MqttBroker::connect) runs it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first setting that breaks its rule.
    pub fn validate(&self) -> Result<()> {
        MqttConfig::default()
            .with_topic_prefix(&self.topic_prefix)?
            .with_client_id_prefix(&self.client_id_prefix)?
            .with_source(self.source.clone())?
            .with_keep_alive(self.keep_alive)?
            .with_session_expiry(self.session_expiry)?
            .with_connect_timeout(self.connect_timeout)?
            .with_publish_timeout(self.publish_timeout)?
            .with_max_packet_size(self.max_packet_size)?
            .with_tls(self.tls.clone())?;
        Ok(())
    }

    /// Sets what every MQTT topic starts with (default `txmsg/`): topic
    /// `orders.placed` is published to `<prefix>orders.placed`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the prefix holds a wildcard (`+`, `#`), a NUL or
    /// control character, starts with `$`, or is longer than 128 bytes.
    pub fn with_topic_prefix(mut self, prefix: &str) -> Result<Self> {
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(Error::config("topic_prefix", "must be at most 128 bytes"));
        }
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
        if prefix.is_empty() || prefix.len() > MAX_CLIENT_ID_PREFIX_LEN {
            return Err(Error::config(
                "client_id_prefix",
                "must be 1 to 64 bytes long",
            ));
        }
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::config(
                "client_id_prefix",
                "may hold only ASCII letters, digits, `-` and `_`",
            ));
        }
        self.client_id_prefix = prefix.to_owned();
        Ok(self)
    }

    /// Sets the CloudEvents `source` of every message (default `/txmsg`), by
    /// the rule every broker shares ([`check_source`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `source` if [`check_source`] refuses it.
    pub fn with_source(mut self, source: impl Into<String>) -> Result<Self> {
        self.source = check_source(source)?;
        Ok(self)
    }

    /// Sets the MQTT keep-alive interval (default 30 s).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless it is 5 s to 65535 s, in whole seconds.
    pub fn with_keep_alive(mut self, keep_alive: Duration) -> Result<Self> {
        self.keep_alive = check::whole_seconds(
            "keep_alive",
            keep_alive,
            Duration::from_secs(5),
            Duration::from_secs(u64::from(u16::MAX)),
        )?;
        Ok(self)
    }

    /// Sets how long the broker keeps a subscription's session (its
    /// unacknowledged and queued messages) after the connection drops
    /// (default 1 h). Subscriptions connect with `clean_start = false`, so
    /// a reconnect resumes the session and gets its unacknowledged
    /// messages again. Zero makes every session end with its connection.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless it is whole seconds below `u32::MAX` s.
    pub fn with_session_expiry(mut self, expiry: Duration) -> Result<Self> {
        self.session_expiry = check::whole_seconds(
            "session_expiry",
            expiry,
            Duration::ZERO,
            Duration::from_secs(u64::from(u32::MAX) - 1),
        )?;
        Ok(self)
    }

    /// Sets how long a connection attempt may take (default 5 s).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless it is whole seconds from 1 s to 1 h.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Result<Self> {
        self.connect_timeout = check::whole_seconds(
            "connect_timeout",
            timeout,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        Ok(self)
    }

    /// Sets how long a publish waits for its PUBACK (default 30 s); past
    /// it the publish fails with a retryable error.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if zero.
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Result<Self> {
        self.publish_timeout = check::positive("publish_timeout", timeout)?;
        Ok(self)
    }

    /// Sets the largest MQTT packet this client sends or accepts (default
    /// 16 MiB; the broker's own limit applies as well).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if below 1024 bytes or above 256 MiB.
    pub fn with_max_packet_size(mut self, size: u32) -> Result<Self> {
        self.max_packet_size = check::within("max_packet_size", size, 1024, 256 * 1024 * 1024)?;
        Ok(self)
    }

    /// Sets the TLS files of `mqtts://` connections: a CA file trusted
    /// instead of the system's roots, a client certificate and key (see
    /// [`TlsFiles`]; read when the broker connects).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for the file set first without the `tls` feature
    /// of txmsg-mqtt.
    pub fn with_tls(mut self, files: TlsFiles) -> Result<Self> {
        self.tls = files.for_adapter(cfg!(feature = "tls"), "txmsg-mqtt")?;
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

    /// The CloudEvents `source`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The keep-alive interval.
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    /// How long a subscription's session outlives its connection.
    pub fn session_expiry(&self) -> Duration {
        self.session_expiry
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The publish (PUBACK) timeout.
    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    /// The largest packet size.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// The TLS files.
    pub fn tls(&self) -> &TlsFiles {
        &self.tls
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

        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let mut roots = rustls::RootCertStore::empty();
        match self.tls.ca_file() {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| pem_error("tls_ca_file", path, &e))?;
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        Error::config(
                            "tls_ca_file",
                            format!("`{}` holds a bad certificate: {e}", path.display()),
                        )
                    })?;
                }
                if roots.is_empty() {
                    return Err(Error::config(
                        "tls_ca_file",
                        format!("`{}` holds no certificate", path.display()),
                    ));
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
        let config = match self.tls.client_auth() {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| pem_error("tls_client_auth", cert, &e))?;
                if chain.is_empty() {
                    return Err(Error::config(
                        "tls_client_auth",
                        format!("`{}` holds no certificate", cert.display()),
                    ));
                }
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| pem_error("tls_client_auth", key, &e))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    Error::config(
                        "tls_client_auth",
                        format!("the certificate and key cannot be used: {e}"),
                    )
                })?
            }
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
}

/// The config error for a PEM file that could not be read or parsed. Only
/// I/O errors are quoted: parse errors may quote the file, which may be a
/// private key.
#[cfg(feature = "tls")]
fn pem_error(field: &'static str, path: &Path, e: &rustls::pki_types::pem::Error) -> Error {
    match e {
        rustls::pki_types::pem::Error::Io(io) => {
            Error::config(field, format!("cannot read `{}`: {io}", path.display()))
        }
        _ => Error::config(
            field,
            format!(
                "`{}` is not a PEM file of the expected kind",
                path.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(
            field_of(
                TlsFiles::default()
                    .with_ca_file("/etc/ssl/ca.pem")
                    .and_then(|f| MqttConfig::default().with_tls(f))
            ),
            "tls_ca_file"
        );
        assert_eq!(
            field_of(
                TlsFiles::default()
                    .with_client_auth("c.pem", "k.pem")
                    .and_then(|f| MqttConfig::default().with_tls(f))
            ),
            "tls_client_auth"
        );
    }

    #[cfg(feature = "tls")]
    mod tls {
        use txmsg_testkit::temp_file;

        use super::*;

        #[test]
        fn options_with_a_plain_url_are_refused() {
            let c = TlsFiles::default()
                .with_ca_file("/etc/ssl/ca.pem")
                .and_then(|f| MqttConfig::default().with_tls(f))
                .unwrap();
            assert_eq!(field_of(c.endpoint("mqtt://127.0.0.1")), "tls_ca_file");
            let c = TlsFiles::default()
                .with_client_auth("/etc/ssl/c.pem", "/etc/ssl/k.pem")
                .and_then(|f| MqttConfig::default().with_tls(f))
                .unwrap();
            assert_eq!(field_of(c.endpoint("tcp://127.0.0.1")), "tls_client_auth");
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

        #[test]
        fn unreadable_or_bad_files_are_config_errors() {
            let missing = std::env::temp_dir().join("txmsg-mqtt-no-such-ca.pem");
            let c = TlsFiles::default()
                .with_ca_file(&missing)
                .and_then(|f| MqttConfig::default().with_tls(f))
                .unwrap();
            assert_eq!(field_of(c.endpoint("mqtts://h")), "tls_ca_file");

            let empty = temp_file("ca.pem", b"no pem here");
            let c = TlsFiles::default()
                .with_ca_file(&empty)
                .and_then(|f| MqttConfig::default().with_tls(f))
                .unwrap();
            let result = c.endpoint("mqtts://h");
            std::fs::remove_file(&empty).unwrap();
            assert_eq!(field_of(result), "tls_ca_file");

            let garbage = temp_file(
                "ca.pem",
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            );
            let c = TlsFiles::default()
                .with_ca_file(&garbage)
                .and_then(|f| MqttConfig::default().with_tls(f))
                .unwrap();
            let result = c.endpoint("mqtts://h");
            std::fs::remove_file(&garbage).unwrap();
            assert_eq!(field_of(result), "tls_ca_file");

            let key = temp_file(
                "key.pem",
                b"-----BEGIN PRIVATE KEY-----\ns3cr3t-key!\n-----END PRIVATE KEY-----\n",
            );
            let cert = temp_file("cert.pem", b"");
            let c = TlsFiles::default()
                .with_client_auth(&cert, &key)
                .and_then(|f| MqttConfig::default().with_tls(f))
                .unwrap();
            let result = c.endpoint("mqtts://h");
            std::fs::remove_file(&key).unwrap();
            std::fs::remove_file(&cert).unwrap();
            match result {
                Err(Error::Config {
                    field: "tls_client_auth",
                    reason,
                }) => assert!(!reason.contains("s3cr3t-key"), "{reason}"),
                Err(other) => panic!("expected a config error, got {other:?}"),
                Ok(_) => panic!("expected a config error, got an endpoint"),
            }
        }
    }
}
