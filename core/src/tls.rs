//! The TLS settings the network brokers share: the files of a connection,
//! checked once for every adapter.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Checks a TLS file setting (`tls_ca_file`, `tls_client_auth`) of
/// adapter crate `adapter` when it is set: refused without the adapter's
/// `tls` feature (`tls_enabled`), and refused if empty. Whether the file
/// can be read is checked when it is used.
fn check_file_setting(
    field: &'static str,
    path: &Path,
    tls_enabled: bool,
    adapter: &str,
) -> Result<()> {
    if !tls_enabled {
        return Err(Error::config(
            field,
            format!("needs the `tls` feature of {adapter} (the `tls` feature of txmsg)"),
        ));
    }
    if path.as_os_str().is_empty() {
        return Err(Error::config(field, "must not be an empty path"));
    }
    Ok(())
}

/// The TLS files of a broker's connection: the CA certificates to trust
/// instead of the system's trust store, and a client certificate with its
/// private key for mutual TLS. Only the paths are kept; the files are read
/// when the broker connects, and a file that cannot be read or used then is
/// an [`Error::Config`] naming the setting.
///
/// Given to a broker's settings (`NatsConfig::tls`, `RedisConfig::tls`,
/// `MqttConfig::tls`), which refuse it when their crate was built without
/// its `tls` feature. `Debug` shows the paths, never the key's contents.
///
/// # Examples
///
/// ```
/// use txmsg_core::tls::TlsFiles;
///
/// let files = TlsFiles::default()
///     .with_ca_file("/etc/ssl/billing-ca.pem")?
///     .with_client_auth("/etc/ssl/app.pem", "/etc/ssl/app.key")?;
/// assert!(files.ca_file().is_some());
/// assert!(TlsFiles::default().with_ca_file("").is_err());
/// # Ok::<(), txmsg_core::Error>(())
/// ```
///
/// Deserialized, e.g. from a service's config file, as
/// `{ "ca_file": "…", "client_auth": { "cert": "…", "key": "…" } }`
/// (either may be left out), with the same checks as the setters:
///
/// ```
/// use txmsg_core::tls::TlsFiles;
///
/// let files: TlsFiles = serde_json::from_str(
///     r#"{ "client_auth": { "cert": "/etc/ssl/app.pem", "key": "/etc/ssl/app.key" } }"#,
/// )?;
/// assert!(files.ca_file().is_none() && files.client_auth().is_some());
/// assert!(serde_json::from_str::<TlsFiles>(r#"{ "ca_file": "" }"#).is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "TlsPaths")]
#[non_exhaustive]
pub struct TlsFiles {
    ca_file: Option<PathBuf>,
    client_auth: Option<(PathBuf, PathBuf)>,
}

/// [`TlsFiles`] as written in a config file, before the setters check it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsPaths {
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    client_auth: Option<ClientAuthPaths>,
}

/// A client certificate and its key, as written in a config file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientAuthPaths {
    cert: PathBuf,
    key: PathBuf,
}

impl TryFrom<TlsPaths> for TlsFiles {
    type Error = Error;

    fn try_from(paths: TlsPaths) -> Result<Self> {
        let mut files = TlsFiles::default();
        if let Some(ca_file) = paths.ca_file {
            files = files.with_ca_file(ca_file)?;
        }
        if let Some(ClientAuthPaths { cert, key }) = paths.client_auth {
            files = files.with_client_auth(cert, key)?;
        }
        Ok(files)
    }
}

impl TlsFiles {
    /// Trusts only the CA certificates in the PEM file at `path`, instead of
    /// the system's trust store.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `tls_ca_file` if the path is empty.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        check_path("tls_ca_file", &path)?;
        self.ca_file = Some(path);
        Ok(self)
    }

    /// Authenticates with the client certificate chain in the PEM file
    /// `cert` and its private key in the PEM file `key` (mutual TLS).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `tls_client_auth` if a path is empty.
    pub fn with_client_auth(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<Self> {
        let (cert, key) = (cert.into(), key.into());
        check_path("tls_client_auth", &cert)?;
        check_path("tls_client_auth", &key)?;
        self.client_auth = Some((cert, key));
        Ok(self)
    }

    /// The PEM file of the trusted CAs, if set.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The PEM files of the client certificate chain and its key, if set.
    pub fn client_auth(&self) -> Option<(&Path, &Path)> {
        self.client_auth
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()))
    }

    /// Whether no file is set.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_auth.is_none()
    }

    /// These files, for adapter crate `adapter` built with its `tls`
    /// feature or not (`tls_enabled`): refused without it, naming the first
    /// setting that is set.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `tls_ca_file` or `tls_client_auth`.
    pub fn for_adapter(self, tls_enabled: bool, adapter: &str) -> Result<Self> {
        if let Some(path) = &self.ca_file {
            check_file_setting("tls_ca_file", path, tls_enabled, adapter)?;
        }
        if let Some((cert, _)) = &self.client_auth {
            check_file_setting("tls_client_auth", cert, tls_enabled, adapter)?;
        }
        Ok(self)
    }

    /// Refuses files set for a connection that does not use TLS (`uses_tls`
    /// false), which would silently not use them; `why` says what the URL
    /// is instead.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `tls_ca_file` or `tls_client_auth`.
    pub fn check_used(&self, uses_tls: bool, why: &str) -> Result<()> {
        if uses_tls {
            return Ok(());
        }
        let field = if self.ca_file.is_some() {
            "tls_ca_file"
        } else if self.client_auth.is_some() {
            "tls_client_auth"
        } else {
            return Ok(());
        };
        Err(Error::config(
            field,
            format!("is set, but {why}, so the connection would not use TLS"),
        ))
    }
}

fn check_path(field: &'static str, path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::config(field, "must not be an empty path"));
    }
    Ok(())
}

/// The PEM contents of [`TlsFiles`], read and checked once for every
/// broker whose `tls` feature is on.
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
impl TlsFiles {
    /// The certificates of [`ca_file`](Self::ca_file), or `None` when it is
    /// not set (the system's trust store is used).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `tls_ca_file` if the file cannot be read, is not
    /// PEM, or holds no certificate.
    pub fn ca_certificates(
        &self,
    ) -> Result<Option<Vec<rustls::pki_types::CertificateDer<'static>>>> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        certificates("tls_ca_file", path).map(Some)
    }

    /// The certificate chain and private key of
    /// [`client_auth`](Self::client_auth), or `None` when it is not set.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `tls_client_auth` if a file cannot be read, is
    /// not PEM of its kind, or the certificate file holds no certificate. No
    /// message quotes a file's contents.
    #[allow(clippy::type_complexity)]
    pub fn client_identity(
        &self,
    ) -> Result<
        Option<(
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        )>,
    > {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject as _;

        let Some((cert, key)) = &self.client_auth else {
            return Ok(None);
        };
        let chain = certificates("tls_client_auth", cert)?;
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("tls_client_auth", key, &e))?;
        Ok(Some((chain, key)))
    }

    /// Reads and checks every file that is set, as
    /// [`ca_certificates`](Self::ca_certificates) and
    /// [`client_identity`](Self::client_identity) do: for a client that reads
    /// the files itself, so that a bad file is refused when the broker is
    /// configured rather than at its first connection.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `tls_ca_file` or `tls_client_auth`.
    pub fn check_contents(&self) -> Result<()> {
        self.ca_certificates()?;
        self.client_identity()?;
        Ok(())
    }
}

/// The certificates in the PEM file at `path`: at least one.
#[cfg(feature = "tls")]
fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| pem_error(field, path, &e))?;
    if certs.is_empty() {
        return Err(Error::config(
            field,
            format!("`{}` holds no certificate", path.display()),
        ));
    }
    Ok(certs)
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

/// Makes rustls's `ring` provider the process default when the process has
/// none: clients that ask rustls for the default (the Redis and NATS
/// clients) find none in a build that holds two providers (`ring` and
/// `aws-lc-rs`) until one is installed. A provider installed by the
/// application is kept.
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: either way there is one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: Error) -> &'static str {
        match e {
            Error::Config { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn files_are_checked_where_they_are_set_and_used() {
        assert_eq!(
            field(TlsFiles::default().with_ca_file("").unwrap_err()),
            "tls_ca_file"
        );
        assert_eq!(
            field(
                TlsFiles::default()
                    .with_client_auth("c.pem", "")
                    .unwrap_err()
            ),
            "tls_client_auth"
        );
        let files = TlsFiles::default()
            .with_client_auth("c.pem", "k.pem")
            .unwrap();
        assert_eq!(
            files.client_auth(),
            Some((Path::new("c.pem"), Path::new("k.pem")))
        );
        assert_eq!(
            field(files.clone().for_adapter(false, "txmsg-x").unwrap_err()),
            "tls_client_auth"
        );
        assert!(files.clone().for_adapter(true, "txmsg-x").is_ok());
        assert!(TlsFiles::default().for_adapter(false, "txmsg-x").is_ok());
        assert_eq!(
            field(files.check_used(false, "the URL is plain").unwrap_err()),
            "tls_client_auth"
        );
        assert!(files.check_used(true, "").is_ok());
        assert!(TlsFiles::default().check_used(false, "").is_ok());
    }
}
