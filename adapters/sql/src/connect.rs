//! What every SQL store checks and reports when it connects.

use sqlx::{ConnectOptions, Connection};
use txmsg_core::{Error, Result};

/// Refuses `url` unless its scheme is one of `schemes` (`store` names the
/// store in the message). Only the scheme is shown, never the URL: another
/// database's could hold a password.
///
/// # Errors
///
/// [`Error::Config`] for `url`.
pub fn check_scheme(url: &str, schemes: &[&str], store: &str) -> Result<()> {
    let scheme = url
        .split_once(':')
        .map(|(s, _)| s.to_ascii_lowercase())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+'));
    if scheme.as_deref().is_some_and(|s| schemes.contains(&s)) {
        return Ok(());
    }
    let wanted: Vec<String> = schemes
        .iter()
        .map(|s| {
            if *s == "sqlite" {
                "`sqlite:`".to_owned()
            } else {
                format!("`{s}://`")
            }
        })
        .collect();
    let got = match scheme {
        Some(s) => format!("`{s}:`"),
        None => "no scheme".to_owned(),
    };
    Err(Error::config(
        "url",
        format!(
            "must be a {} url for {store}, got {got}",
            wanted.join(" or ")
        ),
    ))
}

/// Where `url` points, as errors show it: `host:port` (`default_port` when
/// the URL gives none), the path of a file or socket; never the user or
/// password.
pub fn address_of(url: &str, default_port: u16) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => match parsed.host_str() {
            Some(host) if !host.is_empty() => {
                format!("{host}:{}", parsed.port().unwrap_or(default_port))
            }
            _ => parsed.path().to_owned(),
        },
        Err(_) => "an unreadable url".to_owned(),
    }
}

/// `url` read as the connect options `O` of a driver; `kind` names the url
/// the store expects in the error (`"a postgres"`: "is not a postgres
/// url").
///
/// # Errors
///
/// [`Error::Config`] for `url`, with the driver's reason.
pub fn connect_options<O: ConnectOptions>(url: &str, kind: &str) -> Result<O> {
    O::from_str(url).map_err(|e| Error::config("url", format!("is not {kind} url: {e}")))
}

/// Opens one connection with `options` and closes it again, so that a server
/// that refuses or cannot be reached is reported at once, naming where it
/// was looked for ([`address_of`] `url`) and why. A pool retries a failed
/// connection until its acquire timeout (30 s) and then reports only that
/// it timed out.
///
/// # Errors
///
/// [`Error::Connect`] with the driver's error as its source.
pub async fn connect_once<C: Connection>(
    options: &<C as Connection>::Options,
    url: &str,
    default_port: u16,
) -> Result<()> {
    let conn = C::connect_with(options)
        .await
        .map_err(|source| Error::Connect {
            address: address_of(url, default_port),
            source,
        })?;
    // The pool opens its own; this one has told what it had to.
    let _ = conn.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_never_shows_the_password() {
        assert_eq!(
            address_of("postgres://app:s3cret@db.example.com/app", 5432),
            "db.example.com:5432"
        );
        assert_eq!(
            address_of("mysql://root:pw@127.0.0.1:3307/test", 3306),
            "127.0.0.1:3307"
        );
        assert_eq!(address_of("sqlite:data/orders.db", 0), "data/orders.db");
    }

    #[test]
    fn another_scheme_is_named_without_the_url() {
        let err = check_scheme(
            "mysql://root:pw@h/x",
            &["postgres", "postgresql"],
            "PgStore",
        )
        .unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains(
                "must be a `postgres://` or `postgresql://` url for PgStore, got `mysql:`"
            ),
            "{shown}"
        );
        assert!(!shown.contains("pw"), "{shown}");
        assert!(check_scheme("POSTGRES://h/x", &["postgres"], "PgStore").is_ok());
        assert!(check_scheme("sqlite::memory:", &["sqlite"], "SqliteStore").is_ok());
        let none = check_scheme("127.0.0.1:5432", &["postgres"], "PgStore").unwrap_err();
        assert!(none.to_string().contains("got no scheme"), "{none}");
    }
}
