//! The arguments of `#[transactional_message(...)]`.
//!
//! Splitting them into `name = value` pairs is shared with the other macros
//! (`common::args`); this file says which names exist and what a checked
//! set of arguments holds.

use proc_macro2::TokenStream;
use syn::{Expr, LitStr, Path};

use crate::common::args::{self, Attr, RawArg};

/// `#[transactional_message]`, as messages describe it.
pub(crate) const ATTR: Attr = Attr {
    name: "transactional_message",
    keys: &[
        "topic",
        "key",
        "idempotency_key",
        "ttl",
        "half",
        "check_back",
        "check_after",
        "crate",
    ],
    flags: &["half"],
    placeholder: |key| match key {
        "key" | "idempotency_key" => "<expression>",
        "ttl" => "\"...\" or <expression>",
        "check_back" => "<path>",
        _ => "\"...\"",
    },
    synonyms: &[("ordering_key", "key"), ("routing_key", "key")],
};

/// Splits the attribute's arguments into [`RawArg`]s.
///
/// Fails only on syntax that cannot be read at all, such as a missing comma.
pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Vec<RawArg>> {
    args::parse(tokens, &ATTR)
}

/// The arguments once checked: everything the expansion needs.
pub(crate) struct Args {
    /// The topic, a valid topic name.
    pub(crate) topic: LitStr,
    /// Ordering key expression, turned into a `String` through `Display`.
    pub(crate) key: Option<Expr>,
    /// Idempotency key expression, turned into a `String` through `Display`.
    pub(crate) idempotency_key: Option<Expr>,
    /// Time to live: a literal checked at compile time, or an expression.
    pub(crate) ttl: Option<Ttl>,
    /// Set for a half producer (`half`): what it needs beyond the above.
    pub(crate) half: Option<Half>,
    /// Path of the `txmsg` crate, if renamed; `::txmsg` otherwise.
    pub(crate) krate: Option<Path>,
}

/// `ttl = ...`: how long the message may wait for delivery.
pub(crate) enum Ttl {
    /// `ttl = "30m"`: milliseconds (never zero), checked at compile time.
    Millis(u64),
    /// `ttl = <expr>`: a `Duration` or an `Option<Duration>` (`None` for no
    /// expiry), evaluated per call before the body runs.
    Expr(Expr),
}

/// The arguments only a half producer has.
pub(crate) struct Half {
    /// `check_back = path`: the `#[check_back]` function the producer names,
    /// checked at compile time to take its payload.
    pub(crate) check_back: Option<Path>,
    /// Time from preparing the message to its first check-back, in
    /// milliseconds (never zero).
    pub(crate) check_after: u64,
}

/// Time to the first check-back when `check_after` is not given: 6 s, as in
/// RocketMQ.
pub(crate) const DEFAULT_CHECK_AFTER_MILLIS: u64 = 6_000;

impl Default for Half {
    fn default() -> Self {
        Half {
            check_back: None,
            check_after: DEFAULT_CHECK_AFTER_MILLIS,
        }
    }
}

/// Parses a duration (`ttl`, `check_after`) such as `"500ms"`, `"30s"`,
/// `"30m"`, `"2h"` or `"1d"` into milliseconds.
///
/// # Errors
///
/// What was expected instead, for the message.
pub(crate) fn parse_duration(text: &str) -> Result<u64, &'static str> {
    const NOT_A_DURATION: &str =
        "expected a whole number and a unit, one of `ms`, `s`, `m`, `h`, `d`, as in \"30m\"";
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60 * 1_000,
        "h" => 60 * 60 * 1_000,
        "d" => 24 * 60 * 60 * 1_000,
        _ => return Err(NOT_A_DURATION),
    };
    if number.is_empty() {
        return Err(NOT_A_DURATION);
    }
    const TOO_LARGE: &str = "expected at most 2^64 - 1 milliseconds";
    let number: u64 = number.parse().map_err(|_| TOO_LARGE)?;
    if number == 0 {
        return Err("expected a duration greater than zero");
    }
    number.checked_mul(millis_per_unit).ok_or(TOO_LARGE)
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;
    use crate::common::args::path_to_string;

    #[test]
    fn keeps_every_argument_in_order() {
        let raw = parse(quote! {
            topic = "orders.placed",
            key = order.id,
            idempotency_key = format!("order-{}", order.id),
            ttl = "30m",
            half,
            check_back = payment_state,
            check_after = "10s",
            crate = "my_txmsg",
        })
        .unwrap();
        let names: Vec<_> = raw.iter().map(|arg| path_to_string(&arg.name)).collect();
        assert_eq!(names, ATTR.keys);
        let bare: Vec<_> = raw
            .iter()
            .filter(|arg| arg.value.is_none())
            .map(|arg| path_to_string(&arg.name))
            .collect();
        assert_eq!(bare, ATTR.flags);
    }

    #[test]
    fn list_syntax_asks_for_equals() {
        let err = parse(quote!(topic("a"))).err().unwrap();
        assert_eq!(
            err.to_string(),
            "expected `=` after `topic` in `#[transactional_message]`, as in `topic = ...`"
        );
    }

    #[test]
    fn ttl_units() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("30m"), Ok(1_800_000));
        assert_eq!(parse_duration("2h"), Ok(7_200_000));
        assert_eq!(parse_duration("1d"), Ok(86_400_000));
    }

    #[test]
    fn ttl_rejects_bad_text() {
        for bad in [
            "", "30", "m", "30 m", "30min", "1.5h", "-1s", "+1s", "1h30m", "30M", " 30s",
        ] {
            let reason = parse_duration(bad).unwrap_err();
            assert!(
                reason.starts_with("expected a whole number and a unit"),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_duration("0s"),
            Err("expected a duration greater than zero")
        );
        assert_eq!(
            parse_duration("0ms"),
            Err("expected a duration greater than zero")
        );
        for big in ["99999999999999999999ms", "999999999999999999d"] {
            assert_eq!(
                parse_duration(big),
                Err("expected at most 2^64 - 1 milliseconds"),
                "{big}"
            );
        }
    }
}
