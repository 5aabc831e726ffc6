//! Helpers for the tests that check no password is ever shown: URLs that
//! carry one, and everything an error shows.

/// `url` with `password` as its password, for the URL's user or
/// `default_user` when it has none.
///
/// # Examples
///
/// ```
/// use txmsg_testkit::redaction::with_password;
///
/// assert_eq!(
///     with_password("nats://127.0.0.1:4222", "app", "s3cr3t"),
///     "nats://app:s3cr3t@127.0.0.1:4222"
/// );
/// assert_eq!(
///     with_password("postgres://pg:old@h/db?x=1", "app", "s3cr3t"),
///     "postgres://pg:s3cr3t@h/db?x=1"
/// );
/// ```
///
/// # Panics
///
/// If `url` has no scheme.
pub fn with_password(url: &str, default_user: &str, password: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        panic!("a URL with a scheme, not {url:?}");
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (user, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            (if user.is_empty() { default_user } else { user }, host)
        }
        None => (default_user, authority),
    };
    format!("{scheme}://{user}:{password}@{host}{path}")
}

/// Everything an error shows: its `Display`, its `Debug` and the `Display`
/// of every source.
pub fn everything_shown(err: &(dyn std::error::Error + 'static)) -> String {
    let mut shown = format!("{err} {err:?}");
    let mut source = err.source();
    while let Some(s) = source {
        shown.push_str(&format!(" {s}"));
        source = s.source();
    }
    shown
}

/// Fails if `err` shows `password` anywhere.
///
/// # Panics
///
/// When it does, with what it shows.
pub fn assert_hidden(err: &(dyn std::error::Error + 'static), password: &str) {
    let shown = everything_shown(err);
    assert!(!shown.contains(password), "the password leaked: {shown}");
}
