//! Checks of configuration values, with one wording for each kind of limit,
//! so that every configuration of every txmsg crate refuses a bad value the
//! same way.
//!
//! Each check returns the value when it is within its limits, and otherwise
//! [`Error::Config`] for the field, saying what the limit is:
//!
//! ```
//! use std::time::Duration;
//! use txmsg_core::check;
//!
//! let lease = check::at_least("lease", Duration::from_secs(30), Duration::from_secs(1))?;
//! assert_eq!(lease, Duration::from_secs(30));
//!
//! let err = check::positive("batch", 0u32).unwrap_err();
//! assert_eq!(err.to_string(), "invalid configuration: `batch` must be greater than zero");
//! # Ok::<(), txmsg_core::Error>(())
//! ```

use std::time::Duration;

use crate::{Error, Result};

/// A value a limit can be put on.
pub trait Bounded: PartialOrd + Copy {
    /// The zero of its kind.
    const ZERO: Self;

    /// The value as an error shows it: `5 s`, `100 ms`, `1024`.
    fn show(&self) -> String;
}

impl Bounded for Duration {
    const ZERO: Self = Duration::ZERO;

    fn show(&self) -> String {
        if self.subsec_nanos() == 0 {
            format!("{} s", self.as_secs())
        } else if self.subsec_nanos().is_multiple_of(1_000_000) {
            format!("{} ms", self.as_millis())
        } else {
            format!("{self:?}")
        }
    }
}

macro_rules! bounded_int {
    ($($t:ty),*) => {$(
        impl Bounded for $t {
            const ZERO: Self = 0;

            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

bounded_int!(u8, u16, u32, u64, usize, i32, i64);

/// `value` unless it is zero.
///
/// # Errors
///
/// [`Error::Config`] for `field`: "must be greater than zero".
pub fn positive<T: Bounded>(field: &'static str, value: T) -> Result<T> {
    if value > T::ZERO {
        Ok(value)
    } else {
        Err(Error::config(field, "must be greater than zero"))
    }
}

/// `value` if it is at least `min`.
///
/// # Errors
///
/// [`Error::Config`] for `field`: "must be at least `min`".
pub fn at_least<T: Bounded>(field: &'static str, value: T, min: T) -> Result<T> {
    if value >= min {
        Ok(value)
    } else {
        Err(Error::config(
            field,
            format!("must be at least {}", min.show()),
        ))
    }
}

/// `value` if it is from `min` to `max`, both included.
///
/// # Errors
///
/// [`Error::Config`] for `field`: "must be from `min` to `max`".
pub fn within<T: Bounded>(field: &'static str, value: T, min: T, max: T) -> Result<T> {
    if min <= value && value <= max {
        Ok(value)
    } else {
        Err(Error::config(
            field,
            format!("must be from {} to {}", min.show(), max.show()),
        ))
    }
}

/// `value` if it is a whole number of seconds from `min` to `max`, both
/// included (for protocols that count in seconds).
///
/// # Errors
///
/// [`Error::Config`] for `field`: "must be whole seconds from `min` to
/// `max`".
pub fn whole_seconds(
    field: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration> {
    if value.subsec_nanos() == 0 && min <= value && value <= max {
        Ok(value)
    } else {
        Err(Error::config(
            field,
            format!(
                "must be whole seconds from {} to {}",
                min.show(),
                max.show()
            ),
        ))
    }
}

/// `value` if it is above zero and at most `max`, the value of `max_field`:
/// the first delay of a backoff, which must not pass its last.
///
/// # Errors
///
/// [`Error::Config`] for `field`: "must be greater than zero and at most
/// `max_field`".
pub fn backoff(
    field: &'static str,
    value: Duration,
    max_field: &'static str,
    max: Duration,
) -> Result<Duration> {
    if value.is_zero() || value > max {
        Err(Error::config(
            field,
            format!("must be greater than zero and at most {max_field}"),
        ))
    } else {
        Ok(value)
    }
}

/// `value` unless it is empty.
///
/// # Errors
///
/// [`Error::Config`] for `field`: "must not be empty".
pub fn not_empty<S: AsRef<str>>(field: &'static str, value: S) -> Result<S> {
    if value.as_ref().is_empty() {
        Err(Error::config(field, "must not be empty"))
    } else {
        Ok(value)
    }
}

/// `value` if it is at most `max` bytes long.
///
/// # Errors
///
/// [`Error::Config`] for `field`: "must be at most `max` bytes".
pub fn at_most_bytes<S: AsRef<str>>(field: &'static str, value: S, max: usize) -> Result<S> {
    if value.as_ref().len() <= max {
        Ok(value)
    } else {
        Err(Error::config(field, format!("must be at most {max} bytes")))
    }
}

/// `value` if it is `min` to `max` bytes long, both included.
///
/// # Errors
///
/// [`Error::Config`] for `field`: "must be `min` to `max` bytes long".
pub fn byte_len<S: AsRef<str>>(field: &'static str, value: S, min: usize, max: usize) -> Result<S> {
    let len = value.as_ref().len();
    if min <= len && len <= max {
        Ok(value)
    } else {
        Err(Error::config(
            field,
            format!("must be {min} to {max} bytes long"),
        ))
    }
}

/// `value` if it holds only ASCII letters, digits, `-` and `_`: a name
/// that every broker takes as it is.
///
/// # Errors
///
/// [`Error::Config`] for `field`: "may hold only ASCII letters, digits,
/// `-` and `_`".
pub fn word<S: AsRef<str>>(field: &'static str, value: S) -> Result<S> {
    if value
        .as_ref()
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(value)
    } else {
        Err(Error::config(
            field,
            "may hold only ASCII letters, digits, `-` and `_`",
        ))
    }
}

/// A setting's value as a config file writes it: durations as `"30s"` or
/// `"1h 30m"` (through humantime-serde), everything else as serde reads it.
/// The configs' fields read through [`setting`].
pub trait Setting: Sized {
    /// Reads the value.
    ///
    /// # Errors
    ///
    /// The deserializer's, for a value of the wrong kind.
    fn read<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error>;
}

impl Setting for Duration {
    fn read<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        humantime_serde::deserialize(d)
    }
}

impl Setting for Option<Duration> {
    fn read<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        humantime_serde::deserialize(d)
    }
}

macro_rules! plain_setting {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            fn read<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                serde::Deserialize::deserialize(d)
            }
        }
    )*};
}

plain_setting!(
    bool,
    u16,
    u32,
    u64,
    usize,
    Option<u64>,
    String,
    crate::DeadKeyPolicy,
    crate::tls::TlsFiles
);

/// Reads a setting ([`Setting`]): the `deserialize_with` of every field of
/// the configs that [`broker_settings!`](crate::broker_settings) and the
/// runners' configs define.
///
/// # Errors
///
/// The deserializer's, for a value of the wrong kind.
pub fn setting<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Setting,
{
    T::read(d)
}

/// Writes a broker's config from one list of its settings: the struct
/// (`Debug`, `Clone`, `PartialEq`, `Eq`, deserializable with serde, every
/// setting defaulted, unknown keys refused, `#[non_exhaustive]`), its
/// `Default`, and for each checked setting a getter named after the field,
/// documented with the setting's doc, and a `with_` setter that runs one of
/// this module's checks on the value, naming the field. Plain fields
/// (`name: Type = default;`, listed first) get their accessors by hand. The
/// struct's docs end with a paragraph on deserializing it.
///
/// It adds the CloudEvents `source` every broker has (default `/txmsg`,
/// checked by [`check_source`](crate::cloudevents::check_source)), and with
/// `tls "<crate>" { <docs> }` the TLS files, refused without the crate's
/// `tls` feature, both with their accessors.
///
/// It also writes `validate`, which runs every setter on the config's own
/// values, as a deserialized config needs: first the caller's
/// `fn with_plain_settings_of(self, from: &Self) -> Result<Self>`, which
/// sets the plain fields from `from` through their setters, then `source`,
/// the checked settings and the TLS files.
///
/// The calling crate depends on `serde` (with `derive`).
///
/// ```
/// use std::time::Duration;
///
/// txmsg_core::broker_settings! {
///     /// A broker's settings.
///     pub struct DemoConfig {
///         /// How long a delivery may stay unsettled.
///         ack_wait / with_ack_wait: Duration = Duration::from_secs(30),
///             unless "it is at least 1 s" = at_least(Duration::from_secs(1)),
///     }
/// }
///
/// impl DemoConfig {
///     // No plain settings: nothing to set.
///     fn with_plain_settings_of(self, _: &Self) -> txmsg_core::Result<Self> {
///         Ok(self)
///     }
/// }
///
/// assert!(DemoConfig::default().with_ack_wait(Duration::ZERO).is_err());
/// let config: DemoConfig = serde_json::from_str(r#"{ "ack_wait": "2s" }"#)?;
/// assert_eq!(config.ack_wait(), Duration::from_secs(2));
/// assert_eq!(config.source(), "/txmsg");
/// let config: DemoConfig = serde_json::from_str(r#"{ "ack_wait": "0s" }"#)?;
/// assert!(config.validate().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[macro_export]
macro_rules! broker_settings {
    (
        $(#[$meta:meta])*
        pub struct $config:ident {
            $( $plain:ident : $plain_ty:ty = $plain_default:expr; )*
            $(
                $(#[doc = $doc:literal])+
                $field:ident / $with:ident : $ty:ty = $default:expr,
                    unless $rule:literal = $check:ident ( $($arg:expr),* )
            ),* $(,)?
        }
        $( tls $adapter:literal { $(#[doc = $tls_doc:literal])+ } )?
    ) => {
        $(#[$meta])*
        ///
        /// It deserializes with serde, from a service's config file or
        /// environment, as [the guide's configuration reference][guide]
        /// shows; [`validate`](Self::validate) then checks it as the setters
        /// do (connecting checks it too).
        ///
        /// [guide]: https://github.com/txmsg/txmsg/blob/main/docs/guide.md#4-configuration-reference
        #[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
        #[serde(default)]
        #[non_exhaustive]
        #[serde(deny_unknown_fields)]
        pub struct $config {
            $(
                #[serde(deserialize_with = "txmsg_core::check::setting")]
                $plain: $plain_ty,
            )*
            #[serde(deserialize_with = "txmsg_core::check::setting")]
            source: String,
            $(
                #[serde(deserialize_with = "txmsg_core::check::setting")]
                tls: $crate::broker_settings!(@tls_files $adapter),
            )?
            $(
                #[serde(deserialize_with = "txmsg_core::check::setting")]
                $field: $ty,
            )*
        }

        impl Default for $config {
            fn default() -> Self {
                $config {
                    $( $plain: $plain_default, )*
                    source: "/txmsg".to_owned(),
                    $( tls: <$crate::broker_settings!(@tls_files $adapter)>::default(), )?
                    $( $field: $default, )*
                }
            }
        }

        impl $config {
            $(
                $(#[doc = $doc])+
                pub fn $field(&self) -> $ty {
                    self.$field
                }

                #[doc = concat!(
                    "Sets [`", stringify!($field), "`](Self::", stringify!($field), ").\n\n",
                    "# Errors\n\n",
                    "[`Error::Config`](txmsg_core::Error::Config) for `", stringify!($field),
                    "` unless ", $rule, "."
                )]
                pub fn $with(mut self, $field: $ty) -> $crate::Result<Self> {
                    self.$field = $crate::check::$check(stringify!($field), $field $(, $arg)*)?;
                    Ok(self)
                }
            )*
        }
        impl $config {
            /// Checks every setting as its setter does: what a deserialized
            /// config needs before use. Connecting the broker runs it.
            ///
            /// # Errors
            ///
            /// [`Error::Config`](txmsg_core::Error::Config) naming the first
            /// setting that breaks its rule.
            pub fn validate(&self) -> $crate::Result<()> {
                $crate::broker_settings!(@validate self $(, $adapter)?;
                    $config::default()
                        .with_plain_settings_of(self)?
                        .with_source(self.source.clone())?
                        $( .$with(self.$field)? )*
                );
                Ok(())
            }
        }
        $crate::broker_settings!(@source $config);
        $( $crate::broker_settings!(@tls $config, $adapter, $(#[doc = $tls_doc])+); )?
    };
    (@tls_files $adapter:literal) => {
        $crate::tls::TlsFiles
    };
    (@validate $from:expr, $adapter:literal; $checked:expr) => {
        $checked.with_tls($from.tls.clone())?
    };
    (@validate $from:expr; $checked:expr) => {
        $checked
    };
    (@source $config:ident) => {
        impl $config {
            /// The CloudEvents `source` of every message published.
            pub fn source(&self) -> &str {
                &self.source
            }

            /// Sets [`source`](Self::source) (default `/txmsg`), by the rule
            /// every broker shares
            /// ([`check_source`](txmsg_core::cloudevents::check_source)).
            ///
            /// # Errors
            ///
            /// [`Error::Config`](txmsg_core::Error::Config) for `source` if
            /// `check_source` refuses it.
            pub fn with_source(mut self, source: impl Into<String>) -> $crate::Result<Self> {
                self.source = $crate::cloudevents::check_source(source)?;
                Ok(self)
            }
        }
    };
    (@tls $config:ident, $adapter:literal, $(#[doc = $doc:literal])+) => {
        impl $config {
            /// The TLS files connections use.
            pub fn tls(&self) -> &$crate::tls::TlsFiles {
                &self.tls
            }

            $(#[doc = $doc])+
            ///
            /// # Errors
            ///
            #[doc = concat!(
                "[`Error::Config`](txmsg_core::Error::Config) for the file set first ",
                "without the `tls` feature of ", $adapter, "."
            )]
            pub fn with_tls(mut self, files: $crate::tls::TlsFiles) -> $crate::Result<Self> {
                self.tls = files.for_adapter(cfg!(feature = "tls"), $adapter)?;
                Ok(self)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(e: Error) -> String {
        match e {
            Error::Config { reason, .. } => reason,
            other => panic!("not a config error: {other:?}"),
        }
    }

    #[test]
    fn each_limit_has_one_wording() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(positive("f", 3u32).unwrap(), 3);
        assert_eq!(
            reason(positive("f", Duration::ZERO).unwrap_err()),
            "must be greater than zero"
        );
        assert_eq!(
            reason(at_least("f", ms(500), s(1)).unwrap_err()),
            "must be at least 1 s"
        );
        assert_eq!(within("f", ms(100), ms(100), s(60)).unwrap(), ms(100));
        assert_eq!(
            reason(within("f", ms(5), ms(10), s(60)).unwrap_err()),
            "must be from 10 ms to 60 s"
        );
        assert_eq!(
            reason(within("f", 2000u32, 1, 1024).unwrap_err()),
            "must be from 1 to 1024"
        );
        assert!(whole_seconds("f", s(5), s(5), s(65_535)).is_ok());
        assert_eq!(
            reason(whole_seconds("f", ms(5_500), s(5), s(65_535)).unwrap_err()),
            "must be whole seconds from 5 s to 65535 s"
        );
        assert_eq!(not_empty("f", "a").unwrap(), "a");
        assert_eq!(reason(not_empty("f", "").unwrap_err()), "must not be empty");
        assert_eq!(at_most_bytes("f", "", 2).unwrap(), "");
        assert_eq!(
            reason(at_most_bytes("f", "abc", 2).unwrap_err()),
            "must be at most 2 bytes"
        );
        assert_eq!(byte_len("f", "ab", 1, 2).unwrap(), "ab");
        for bad in ["", "abc"] {
            assert_eq!(
                reason(byte_len("f", bad, 1, 2).unwrap_err()),
                "must be 1 to 2 bytes long"
            );
        }
        assert_eq!(word("f", "a-Z_9").unwrap(), "a-Z_9");
        for bad in ["a.b", "é", "a b"] {
            assert_eq!(
                reason(word("f", bad).unwrap_err()),
                "may hold only ASCII letters, digits, `-` and `_`"
            );
        }
        assert!(backoff("min", ms(10), "max", s(1)).is_ok());
        for bad in [Duration::ZERO, s(2)] {
            assert_eq!(
                reason(backoff("min", bad, "max", s(1)).unwrap_err()),
                "must be greater than zero and at most max"
            );
        }
    }

    #[test]
    fn durations_show_in_the_unit_they_are_whole_in() {
        assert_eq!(Duration::from_secs(86_400).show(), "86400 s");
        assert_eq!(Duration::from_millis(1_500).show(), "1500 ms");
        assert_eq!(Duration::from_micros(1_500).show(), "1.5ms");
    }
}
