//! Validated configuration: identifiers for SQL, table names, relay settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::{Error, Result};

/// Longest identifier accepted (PostgreSQL truncates at 63 bytes, MySQL at 64).
pub const MAX_IDENT_LEN: usize = 63;

/// A SQL identifier (schema or table name) that has been validated.
///
/// Only ASCII letters, digits and `_` are accepted, starting with a letter or
/// `_`, at most [`MAX_IDENT_LEN`] bytes. Adapters still quote it when they put
/// it in SQL; values are always bind parameters.
///
/// # Examples
///
/// ```
/// use txmsg_core::Ident;
///
/// assert!(Ident::new("txmsg_outbox").is_ok());
/// assert!(Ident::new("orders; drop table x").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Ident(Arc<str>);

impl Ident {
    /// Validates `name` as an identifier.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] saying which rule the name broke.
    pub fn new(name: &str) -> Result<Self> {
        Self::for_field("identifier", name)
    }

    /// Validates `name`, naming `field` in the error.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `field`, saying which rule the name broke.
    pub fn for_field(field: &'static str, name: &str) -> Result<Self> {
        let first_ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if name.is_empty() {
            return Err(Error::config(field, "must not be empty"));
        }
        if name.len() > MAX_IDENT_LEN {
            return Err(Error::config(
                field,
                format!("must be at most {MAX_IDENT_LEN} bytes"),
            ));
        }
        if !first_ok || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::config(
                field,
                format!(
                    "must start with a letter or `_` and contain only ASCII letters, digits and `_`, got {name:?}"
                ),
            ));
        }
        Ok(Ident(name.into()))
    }

    /// The identifier as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Suffix of the consumer dead-letter table, after the inbox table's name.
const DEAD_SUFFIX: &str = "_dead";

/// The consumer dead-letter table beside the default inbox table.
const DEFAULT_CONSUMER_DEAD: &str = "txmsg_consumer_dead";

/// Where a store keeps its tables.
///
/// Defaults: no schema (the connection's default), `txmsg_outbox`,
/// `txmsg_inbox`, `txmsg_migrations`.
///
/// Deserialized, e.g. from a service's config file, as
/// `{ "schema": "…", "outbox": "…", "inbox": "…", "migrations": "…" }`
/// (each may be left out), with the same checks as the setters:
///
/// ```
/// use txmsg_core::Tables;
///
/// let tables: Tables = serde_json::from_str(r#"{ "schema": "billing", "outbox": "billing_outbox" }"#)?;
/// assert_eq!(tables.outbox().as_str(), "billing_outbox");
/// assert_eq!(tables.inbox().as_str(), "txmsg_inbox");
/// assert!(serde_json::from_str::<Tables>(r#"{ "outbox": "orders; drop table x" }"#).is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "TableNames")]
#[non_exhaustive]
pub struct Tables {
    schema: Option<Ident>,
    outbox: Ident,
    inbox: Ident,
    migrations: Ident,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            schema: None,
            outbox: Ident("txmsg_outbox".into()),
            inbox: Ident("txmsg_inbox".into()),
            migrations: Ident("txmsg_migrations".into()),
        }
    }
}

/// [`Tables`] as written in a config file, before the setters check it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TableNames {
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    outbox: Option<String>,
    #[serde(default)]
    inbox: Option<String>,
    #[serde(default)]
    migrations: Option<String>,
}

impl TryFrom<TableNames> for Tables {
    type Error = Error;

    fn try_from(names: TableNames) -> Result<Self> {
        let mut tables = Tables::default();
        if let Some(schema) = names.schema {
            tables = tables.with_schema(&schema)?;
        }
        if let Some(outbox) = names.outbox {
            tables = tables.with_outbox(&outbox)?;
        }
        if let Some(inbox) = names.inbox {
            tables = tables.with_inbox(&inbox)?;
        }
        if let Some(migrations) = names.migrations {
            tables = tables.with_migrations(&migrations)?;
        }
        Ok(tables)
    }
}

impl Tables {
    /// Puts the tables in `schema` (where the database has schemas).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `schema` is not a valid identifier.
    pub fn with_schema(mut self, schema: &str) -> Result<Self> {
        self.schema = Some(Ident::for_field("schema", schema)?);
        Ok(self)
    }

    /// Names the outbox table.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `name` is not a valid identifier.
    pub fn with_outbox(mut self, name: &str) -> Result<Self> {
        self.outbox = Ident::for_field("outbox_table", name)?;
        Ok(self)
    }

    /// Names the inbox table.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `name` is not a valid identifier.
    pub fn with_inbox(mut self, name: &str) -> Result<Self> {
        let ident = Ident::for_field("inbox_table", name)?;
        // The consumer dead-letter table is named `<inbox>_dead`.
        if name.len() + DEAD_SUFFIX.len() > MAX_IDENT_LEN {
            return Err(Error::config(
                "inbox_table",
                format!(
                    "must be at most {} bytes, so that `<name>{DEAD_SUFFIX}` fits",
                    MAX_IDENT_LEN - DEAD_SUFFIX.len()
                ),
            ));
        }
        self.inbox = ident;
        Ok(self)
    }

    /// Names the table that records applied migrations.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `name` is not a valid identifier.
    pub fn with_migrations(mut self, name: &str) -> Result<Self> {
        self.migrations = Ident::for_field("migrations_table", name)?;
        Ok(self)
    }

    /// The schema, if one was set.
    pub fn schema(&self) -> Option<&Ident> {
        self.schema.as_ref()
    }

    /// The outbox table's name.
    pub fn outbox(&self) -> &Ident {
        &self.outbox
    }

    /// The inbox table's name.
    pub fn inbox(&self) -> &Ident {
        &self.inbox
    }

    /// The table consumer dead letters are kept in, named after the inbox
    /// table: `txmsg_consumer_dead` beside the default inbox, `<inbox>_dead`
    /// beside a renamed one. Every store uses this name.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `inbox_table`, saying why the inbox table's
    /// name leaves no name for its dead letters: the derived name would be
    /// longer than [`MAX_IDENT_LEN`], or it is the outbox or migrations
    /// table.
    ///
    /// # Examples
    ///
    /// ```
    /// use txmsg_core::Tables;
    ///
    /// assert_eq!(Tables::default().consumer_dead().unwrap().as_str(), "txmsg_consumer_dead");
    /// let renamed = Tables::default().with_inbox("events_in").unwrap();
    /// assert_eq!(renamed.consumer_dead().unwrap().as_str(), "events_in_dead");
    /// ```
    pub fn consumer_dead(&self) -> Result<Ident> {
        let name = if self.inbox == Tables::default().inbox {
            DEFAULT_CONSUMER_DEAD.to_owned()
        } else {
            format!("{}{DEAD_SUFFIX}", self.inbox)
        };
        if name.len() > MAX_IDENT_LEN {
            return Err(Error::config(
                "inbox_table",
                format!(
                    "must be at most {} bytes, so that its dead-letter table `{name}` fits in {MAX_IDENT_LEN}",
                    MAX_IDENT_LEN - DEAD_SUFFIX.len()
                ),
            ));
        }
        let dead = Ident::for_field("inbox_table", &name)?;
        for (other, what) in [(&self.outbox, "outbox"), (&self.migrations, "migrations")] {
            if *other == dead {
                return Err(Error::config(
                    "inbox_table",
                    format!(
                        "leaves no name for its dead-letter table: `{dead}` is the {what} table"
                    ),
                ));
            }
        }
        Ok(dead)
    }

    /// The migrations table's name.
    pub fn migrations(&self) -> &Ident {
        &self.migrations
    }

    /// `name` qualified with the schema and quoted with `quote` (e.g. `"` for
    /// PostgreSQL and SQLite, `` ` `` for MySQL).
    pub fn qualified(&self, name: &Ident, quote: char) -> String {
        match &self.schema {
            Some(s) => format!("{quote}{s}{quote}.{quote}{name}{quote}"),
            None => format!("{quote}{name}{quote}"),
        }
    }
}

/// Writes a runner's config from one list of its settings: the struct, with
/// private fields that deserialize as settings do ([`Setting`]) and a
/// `clock` that is not a setting; `defaults()`, which serde starts from
/// (the caller writes the derive and the serde attributes,
/// `#[serde(default = "<Config>::defaults", deny_unknown_fields)]`: serde's
/// names must come from the call site); and
/// for each setting a getter named after the field and a consuming `with_`
/// setter, both documented with the setting's doc, and the same pair for
/// the clock. Fields listed before the settings (`group: String = …;`) are
/// part of the struct and its defaults without accessors; a config without
/// them is `Default` (every setting at its default). Checks run in the
/// config's `validate`, when the runner starts.
macro_rules! settings {
    (@default $config:ident;) => {
        impl Default for $config {
            fn default() -> Self {
                Self::defaults()
            }
        }
    };
    (@default $config:ident; $($extra:ident)+) => {};
    (
        $(#[$meta:meta])*
        pub struct $config:ident {
            $( $extra:ident : $extra_ty:ty = $extra_default:expr; )*
            $( $(#[doc = $doc:literal])+ $field:ident / $with:ident : $ty:ty = $default:expr ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $config {
            $( pub(crate) $extra: $extra_ty, )*
            $(
                #[serde(deserialize_with = "crate::check::setting")]
                pub(crate) $field: $ty,
            )+
            #[serde(skip, default = "crate::config::system_clock")]
            pub(crate) clock: std::sync::Arc<dyn $crate::Clock>,
        }

        impl $config {
            /// Every setting at its default.
            fn defaults() -> Self {
                $config {
                    $( $extra: $extra_default, )*
                    $( $field: $default, )+
                    clock: $crate::config::system_clock(),
                }
            }

            /// The clock of the times this runner writes and waits for.
            /// Default the system clock.
            pub fn clock(&self) -> &std::sync::Arc<dyn $crate::Clock> {
                &self.clock
            }

            /// Sets [`clock`](Self::clock), e.g. a manual clock in tests.
            #[must_use]
            pub fn with_clock(mut self, clock: std::sync::Arc<dyn $crate::Clock>) -> Self {
                self.clock = clock;
                self
            }
            $(
                $(#[doc = $doc])+
                pub fn $field(&self) -> $ty {
                    self.$field
                }

                #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
                #[must_use]
                pub fn $with(mut self, $field: $ty) -> Self {
                    self.$field = $field;
                    self
                }
            )+
        }

        $crate::config::settings!(@default $config; $($extra)*);
    };
}
pub(crate) use settings;

/// Checks a runner's `backoff_min` and `backoff_max` settings: the first
/// retry delay is greater than zero and at most the longest.
pub(crate) fn check_backoff(min: Duration, max: Duration) -> Result<()> {
    crate::check::backoff("backoff_min", min, "backoff_max", max)?;
    Ok(())
}

/// The clock a runner's config starts with.
pub(crate) fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// What the relay does with the later messages of a key whose message went dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeadKeyPolicy {
    /// The key is parked: its later messages wait until an operator replays or
    /// purges the dead one. Keeps order per key strict.
    #[default]
    Park,
    /// The key's later messages go on; the dead one is out of order if replayed.
    Skip,
}

crate::config::settings! {
    /// Settings of a [`Relay`](crate::Relay), validated by [`RelayConfig::validate`]
    /// when the relay is made.
    ///
    /// Start from `Default` and set what you need; each setting has a getter
    /// named after it and a `with_` setter:
    ///
    /// ```
    /// use std::time::Duration;
    /// use txmsg_core::RelayConfig;
    ///
    /// let config = RelayConfig::default()
    ///     .with_max_attempts(5)
    ///     .with_lease(Duration::from_secs(60));
    /// assert_eq!(config.max_attempts(), 5);
    /// assert!(config.validate().is_ok());
    /// ```
    ///
    /// The plain settings deserialize from a service's config file or
    /// environment (any serde format; durations as `"30s"`, `"1h 30m"`; unknown
    /// keys refused; what is left out keeps its default). The clock is not a
    /// setting there. [`Relay::new`](crate::Relay::new) checks the result:
    ///
    /// ```
    /// use std::time::Duration;
    /// use txmsg_core::{DeadKeyPolicy, RelayConfig};
    ///
    /// let config: RelayConfig = serde_json::from_str(
    ///     r#"{ "max_attempts": 5, "lease": "1m", "dead_key_policy": "skip", "sent_retention": null }"#,
    /// )?;
    /// assert_eq!(config.lease(), Duration::from_secs(60));
    /// assert_eq!(config.dead_key_policy(), DeadKeyPolicy::Skip);
    /// assert_eq!(config.sent_retention(), None);
    /// assert_eq!(config.batch_size(), RelayConfig::default().batch_size());
    ///
    /// let bad: RelayConfig = serde_json::from_str(r#"{ "publish_timeout": "2m" }"#)?;
    /// assert!(bad.validate().is_err(), "publish_timeout must be shorter than lease");
    /// assert!(serde_json::from_str::<RelayConfig>(r#"{ "leese": "1m" }"#).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[derive(Clone, Debug, serde::Deserialize)]
    #[non_exhaustive]
    #[serde(default = "RelayConfig::defaults", deny_unknown_fields)]
    pub struct RelayConfig {
        /// Most rows claimed by one poll. Default 500.
        batch_size / with_batch_size: u32 = 500,
        /// Most rows of one key claimed by one poll, after its first. Default 100.
        per_key_batch / with_per_key_batch: u32 = 100,
        /// How long a claimed row (or a row written by this process for the fast
        /// path) belongs to this relay before another may take it. Default 30 s.
        lease / with_lease: Duration = Duration::from_secs(30),
        /// How often the poller looks for rows when nothing wakes it. Default 1 s.
        poll_interval / with_poll_interval: Duration = Duration::from_secs(1),
        /// Attempts before a message is dead. Default 10.
        max_attempts / with_max_attempts: u32 = 10,
        /// First retry delay. Default 200 ms.
        backoff_min / with_backoff_min: Duration = Duration::from_millis(200),
        /// Longest retry delay. Default 60 s.
        backoff_max / with_backoff_max: Duration = Duration::from_secs(60),
        /// Largest payload published, in bytes; larger ones go dead. Default 1 MiB.
        max_payload_bytes / with_max_payload_bytes: usize = 1024 * 1024,
        /// Most publishes awaiting a broker confirm at once. Default 512.
        max_in_flight / with_max_in_flight: usize = 512,
        /// Messages buffered for the fast path; beyond it, new messages go to the
        /// poller. Default 16 384.
        fast_path_capacity / with_fast_path_capacity: usize = 16 * 1024,
        /// Most sent marks written in one statement. Default 512.
        mark_batch / with_mark_batch: usize = 512,
        /// Longest a sent mark waits to be batched. Default 5 ms.
        mark_interval / with_mark_interval: Duration = Duration::from_millis(5),
        /// Longest a publish may wait for the broker's confirm; shorter than `lease`. Default 10 s.
        publish_timeout / with_publish_timeout: Duration = Duration::from_secs(10),
        /// How long shutdown waits for in-flight publishes. Default 10 s.
        shutdown_timeout / with_shutdown_timeout: Duration = Duration::from_secs(10),
        /// What a dead message does to its key. Default [`DeadKeyPolicy::Park`].
        dead_key_policy / with_dead_key_policy: DeadKeyPolicy = DeadKeyPolicy::Park,
        /// How long sent rows are kept before the relay purges them; `None`
        /// keeps them forever. Default 7 days.
        sent_retention / with_sent_retention: Option<Duration> = Some(Duration::from_secs(7 * 24 * 3600)),
        /// How often the relay purges sent rows past `sent_retention`. Default 60 s.
        purge_interval / with_purge_interval: Duration = Duration::from_secs(60),
        /// Most rows one purge statement deletes; a purge deletes batch after
        /// batch, pausing between them, so producers are never blocked by a
        /// long delete. Default 1 000.
        purge_batch / with_purge_batch: u32 = 1_000,
        /// How often the relay reads [`Store::stats`](crate::Store::stats) to
        /// set the outbox gauges ([`OUTBOX_PENDING`](crate::metrics::OUTBOX_PENDING),
        /// [`OUTBOX_OLDEST_PENDING_AGE_SECONDS`](crate::metrics::OUTBOX_OLDEST_PENDING_AGE_SECONDS));
        /// `None` sets no gauges and reads nothing. Default 5 s.
        stats_interval / with_stats_interval: Option<Duration> = Some(Duration::from_secs(5)),
    }
}

impl RelayConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first field that breaks its rule.
    pub fn validate(&self) -> Result<()> {
        use crate::check::{at_least, positive};
        positive("batch_size", self.batch_size)?;
        positive("max_attempts", self.max_attempts)?;
        positive("max_payload_bytes", self.max_payload_bytes)?;
        positive("max_in_flight", self.max_in_flight)?;
        positive("fast_path_capacity", self.fast_path_capacity)?;
        positive("mark_batch", self.mark_batch)?;
        positive("purge_batch", self.purge_batch)?;
        positive("purge_interval", self.purge_interval)?;
        if self.stats_interval.is_some_and(|i| i.is_zero()) {
            return Err(Error::config(
                "stats_interval",
                "must be greater than zero (`None` turns the outbox gauges off)",
            ));
        }
        if self
            .sent_retention
            .is_some_and(|r| chrono::Duration::from_std(r).is_err())
        {
            return Err(Error::config("sent_retention", "is too long"));
        }
        at_least("lease", self.lease, Duration::from_secs(1))?;
        positive("poll_interval", self.poll_interval)?;
        check_backoff(self.backoff_min, self.backoff_max)?;
        if self.publish_timeout >= self.lease {
            return Err(Error::config(
                "publish_timeout",
                "must be shorter than lease, or another relay could publish the same row meanwhile",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ident_refuses_injection_and_names_the_field() {
        let err = Tables::default()
            .with_outbox("orders; drop table x")
            .unwrap_err();
        assert!(matches!(
            err,
            Error::Config {
                field: "outbox_table",
                ..
            }
        ));
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "a\"b",
            "a.b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(Ident::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Ident::new("_Orders_2").unwrap().as_str(), "_Orders_2");
    }

    #[test]
    fn the_consumer_dead_table_is_named_after_the_inbox() {
        let name = |t: &Tables| t.consumer_dead().map(|i| i.to_string());
        assert_eq!(name(&Tables::default()).unwrap(), "txmsg_consumer_dead");
        let renamed = Tables::default().with_inbox("events_in").unwrap();
        assert_eq!(name(&renamed).unwrap(), "events_in_dead");
        let fits = Tables::default().with_inbox(&"i".repeat(58)).unwrap();
        assert_eq!(name(&fits).unwrap().len(), MAX_IDENT_LEN);
        // Too long is refused where the name is set.
        let err = Tables::default().with_inbox(&"i".repeat(59)).unwrap_err();
        assert!(matches!(
            err,
            Error::Config {
                field: "inbox_table",
                ..
            }
        ));
        for (clash, what) in [("outbox", "outbox"), ("migrations", "migrations")] {
            let tables = match clash {
                "outbox" => Tables::default().with_outbox("events_dead"),
                _ => Tables::default().with_migrations("events_dead"),
            };
            let tables = tables.unwrap().with_inbox("events").unwrap();
            let err = tables.consumer_dead().unwrap_err();
            assert!(
                matches!(
                    &err,
                    Error::Config {
                        field: "inbox_table",
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn qualified_quotes_both_parts() {
        let t = Tables::default().with_schema("app").unwrap();
        assert_eq!(t.qualified(t.outbox(), '"'), "\"app\".\"txmsg_outbox\"");
        assert_eq!(
            Tables::default().qualified(&Ident::new("x").unwrap(), '`'),
            "`x`"
        );
    }

    #[test]
    fn relay_config_rules() {
        assert!(RelayConfig::default().validate().is_ok());
        let c = RelayConfig::default().with_max_attempts(0);
        assert!(matches!(
            c.validate(),
            Err(Error::Config {
                field: "max_attempts",
                ..
            })
        ));
        let c = RelayConfig::default().with_publish_timeout(Duration::from_secs(60));
        assert!(matches!(
            c.validate(),
            Err(Error::Config {
                field: "publish_timeout",
                ..
            })
        ));
    }

    #[test]
    fn stats_interval_is_positive_or_off() {
        let c = RelayConfig::default().with_stats_interval(Some(Duration::ZERO));
        assert!(matches!(
            c.validate(),
            Err(Error::Config {
                field: "stats_interval",
                ..
            })
        ));
        let off = RelayConfig::default().with_stats_interval(None);
        assert!(off.validate().is_ok());
        assert_eq!(
            RelayConfig::default().stats_interval,
            Some(Duration::from_secs(5))
        );
    }
}
