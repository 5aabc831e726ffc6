//! Helpers for the tests of configuration checks.

use txmsg_core::tls::TlsFiles;
use txmsg_core::{Error, Result, Tables};

/// The field an [`Error::Config`] names.
///
/// # Examples
///
/// ```
/// use txmsg_core::Error;
/// use txmsg_testkit::config::field_of;
///
/// let refused: txmsg_core::Result<()> = Err(Error::Config { field: "url", reason: "no host".into() });
/// assert_eq!(field_of(refused), "url");
/// ```
///
/// # Panics
///
/// If `result` is a value or another error.
pub fn field_of<T>(result: Result<T>) -> &'static str {
    match result {
        Err(Error::Config { field, .. }) => field,
        Err(other) => panic!("expected a config error, got {other:?}"),
        Ok(_) => panic!("expected a config error, got a value"),
    }
}

/// Fails unless `result` is an [`Error::Config`] for `field` whose reason
/// does not quote `secret`: a refused URL must not show its password.
///
/// # Examples
///
/// ```
/// use txmsg_core::Error;
/// use txmsg_testkit::config::assert_refused_without;
///
/// let refused: txmsg_core::Result<()> =
///     Err(Error::Config { field: "url", reason: "not a URL".into() });
/// assert_refused_without(refused, "url", "s3cr3t");
/// ```
///
/// # Panics
///
/// If `result` is a value, another error, a config error for another field,
/// or its reason shows `secret`.
pub fn assert_refused_without<T>(result: Result<T>, field: &str, secret: &str) {
    match result {
        Err(Error::Config { field: f, reason }) if f == field => {
            assert!(
                !reason.contains(secret),
                "the reason shows {secret:?}: {reason}"
            );
        }
        Err(other) => panic!("expected a config error for `{field}`, got {other:?}"),
        Ok(_) => panic!("expected a config error for `{field}`, got a value"),
    }
}

/// Deserializes a broker's settings from `good` (JSON), checks that they
/// validate, and returns them; checks that the settings of `bad` are refused
/// for `field` by `validate` and by `connect` (which must check them before
/// it tries any connection), and that an unknown key is refused when
/// deserializing.
///
/// # Panics
///
/// When any of these does not hold.
pub async fn checked_settings<C, T, Fut>(
    good: &str,
    bad: &str,
    field: &str,
    validate: fn(&C) -> Result<()>,
    connect: impl FnOnce(C) -> Fut,
) -> C
where
    C: serde::de::DeserializeOwned,
    Fut: std::future::Future<Output = Result<T>>,
{
    let config: C = serde_json::from_str(good).expect("good settings deserialize");
    if let Err(e) = validate(&config) {
        panic!("good settings were refused: {e}");
    }
    let refused: C = serde_json::from_str(bad).expect("bad settings deserialize");
    assert_eq!(field_of(validate(&refused)), field);
    assert_eq!(field_of(connect(refused).await), field);
    assert!(
        serde_json::from_str::<C>(r#"{ "unknown_setting": 1 }"#).is_err(),
        "an unknown key is refused"
    );
    config
}

/// Fails unless `statements` refuses, for `inbox_table`, tables whose
/// inbox leaves no name for its dead-letter table (the rule of
/// [`Tables::consumer_dead`](txmsg_core::Tables::consumer_dead), which
/// every store's statements apply).
///
/// # Panics
///
/// If the tables are accepted or refused for another reason.
pub fn assert_dead_letter_name_clash_refused<T>(statements: impl Fn(&Tables) -> Result<T>) {
    let clash = Tables::default()
        .with_outbox("events_dead")
        .and_then(|t| t.with_inbox("events"))
        .expect("valid names");
    assert_eq!(field_of(statements(&clash)), "inbox_table");
}

/// Fails unless a broker built without its `tls` feature refuses TLS files
/// when they are set: `with_tls` sets `files` on the broker's default
/// settings.
///
/// # Panics
///
/// If a CA file or a client certificate is accepted, or refused for another
/// field than its own.
pub fn assert_tls_files_need_the_feature<T>(with_tls: impl Fn(TlsFiles) -> Result<T>) {
    let ca = TlsFiles::default().with_ca_file("/etc/ssl/ca.pem");
    assert_eq!(field_of(ca.and_then(&with_tls)), "tls_ca_file");
    let client = TlsFiles::default().with_client_auth("c.pem", "k.pem");
    assert_eq!(field_of(client.and_then(&with_tls)), "tls_client_auth");
}

/// Fails unless a broker refuses TLS files it would not use or cannot read:
/// `open(files, url)` builds the broker's client settings for `url` with
/// `files`. Files set for `plain_url` (if the broker has URLs that do not
/// use TLS) are refused, and so are files that do not exist for `tls_url`. With `parses_pem`, files that exist but
/// hold no usable PEM are refused too, without quoting the key's contents.
///
/// # Panics
///
/// If any of these is accepted, or refused for another field.
pub fn assert_tls_files_checked<T>(
    open: impl Fn(TlsFiles, &str) -> Result<T>,
    plain_url: Option<&str>,
    tls_url: &str,
) {
    let files = |f: Result<TlsFiles>| f.expect("valid TLS settings");
    if let Some(plain_url) = plain_url {
        let ca = files(TlsFiles::default().with_ca_file("/etc/ssl/ca.pem"));
        assert_eq!(field_of(open(ca, plain_url)), "tls_ca_file");
        let client =
            files(TlsFiles::default().with_client_auth("/etc/ssl/c.pem", "/etc/ssl/k.pem"));
        assert_eq!(field_of(open(client, plain_url)), "tls_client_auth");
    }

    let missing = std::env::temp_dir().join("txmsg-no-such-file.pem");
    let ca = files(TlsFiles::default().with_ca_file(&missing));
    assert_eq!(field_of(open(ca, tls_url)), "tls_ca_file");
    let client = files(TlsFiles::default().with_client_auth(&missing, &missing));
    assert_eq!(field_of(open(client, tls_url)), "tls_client_auth");
    for contents in [
        &b"no pem here"[..],
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    ] {
        let bad = crate::temp_file("ca.pem", contents);
        let result = open(files(TlsFiles::default().with_ca_file(&bad)), tls_url);
        std::fs::remove_file(&bad).expect("the temporary file is removed");
        assert_eq!(field_of(result), "tls_ca_file");
    }

    let key = crate::temp_file(
        "key.pem",
        b"-----BEGIN PRIVATE KEY-----\ns3cr3t-key!\n-----END PRIVATE KEY-----\n",
    );
    let cert = crate::temp_file("cert.pem", b"");
    let result = open(
        files(TlsFiles::default().with_client_auth(&cert, &key)),
        tls_url,
    );
    std::fs::remove_file(&key).expect("the temporary file is removed");
    std::fs::remove_file(&cert).expect("the temporary file is removed");
    assert_refused_without(result, "tls_client_auth", "s3cr3t-key");
}

/// A `#[tokio::test]` named `a_deserialized_config_is_checked_before_connecting`
/// that runs [`checked_settings`] for broker config `$config`, connecting
/// with `$connect` (a closure taking the config), with the JSON settings
/// `$good` (every setting, to catch a renamed one: unknown keys are
/// refused) and `$bad`, which must be refused for `$field`:
/// `deserialized_config_is_checked!(NatsConfig; connect; good; bad; field)`.
#[macro_export]
macro_rules! deserialized_config_is_checked {
    ($config:ty; $connect:expr; $good:literal; $bad:literal; $field:literal) => {
        #[tokio::test]
        async fn a_deserialized_config_is_checked_before_connecting() {
            // Refused before any connection is tried: nothing listens there.
            $crate::config::checked_settings::<$config, _, _>(
                $good,
                $bad,
                $field,
                <$config>::validate,
                $connect,
            )
            .await;
        }
    };
}
