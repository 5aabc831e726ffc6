//! Checks shared by the TLS settings of the network adapters.

use std::path::Path;

use crate::{Error, Result};

/// Checks a TLS file setting (`tls_ca_file`, `tls_client_auth`) of
/// adapter crate `adapter` when it is set: refused without the adapter's
/// `tls` feature (`tls_enabled`), and refused if empty. Whether the file
/// can be read is checked when it is used.
///
/// # Errors
///
/// [`Error::Config`] naming `field`.
///
/// # Examples
///
/// ```
/// use std::path::Path;
///
/// let refused = txmsg_core::tls::check_file_setting("tls_ca_file", Path::new("ca.pem"), false, "txmsg-nats");
/// assert!(refused.unwrap_err().to_string().contains("`tls` feature of txmsg-nats"));
/// assert!(txmsg_core::tls::check_file_setting("tls_ca_file", Path::new(""), true, "txmsg-nats").is_err());
/// ```
pub fn check_file_setting(
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
