//! The arguments of `#[message_handler(...)]`.
//!
//! Splitting them into `name = value` pairs is shared with the other macros
//! (`common::args`); this file says which names exist and what a checked
//! set of arguments holds.

use proc_macro2::TokenStream;
use syn::{LitStr, Path};

use crate::common::args::{self, Attr, RawArg};

/// `#[message_handler]`, as messages describe it.
pub(crate) const ATTR: Attr = Attr {
    name: "message_handler",
    keys: &["topic", "group", "max_attempts", "crate"],
    flags: &[],
    placeholder: |key| match key {
        "max_attempts" => "5",
        _ => "\"...\"",
    },
    synonyms: &[
        ("max_retries", "max_attempts"),
        ("retries", "max_attempts"),
        ("attempts", "max_attempts"),
        ("consumer_group", "group"),
        ("group_id", "group"),
    ],
};

/// Attempts before a failing message is dead, when `max_attempts` is not
/// given.
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Splits the attribute's arguments into [`RawArg`]s.
///
/// Fails only on syntax that cannot be read at all, such as a missing comma.
pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Vec<RawArg>> {
    args::parse(tokens, &ATTR)
}

/// The arguments once checked: everything the expansion needs.
pub(crate) struct Args {
    /// The topic the handler consumes, a valid topic name.
    pub(crate) topic: LitStr,
    /// The consumer group, which follows the topic rule.
    pub(crate) group: LitStr,
    /// Attempts before a failing message is dead: at least 1.
    pub(crate) max_attempts: u32,
    /// Path of the `txmsg` crate, if renamed; `::txmsg` otherwise.
    pub(crate) krate: Option<Path>,
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
            group = "billing",
            max_attempts = 3,
            crate = "my_txmsg",
        })
        .unwrap();
        let names: Vec<_> = raw.iter().map(|arg| path_to_string(&arg.name)).collect();
        assert_eq!(names, ATTR.keys);
        assert!(raw.iter().all(|arg| arg.value.is_some()));
    }

    #[test]
    fn list_syntax_asks_for_equals() {
        let err = parse(quote!(group("billing"))).err().unwrap();
        assert_eq!(
            err.to_string(),
            "expected `=` after `group` in `#[message_handler]`, as in `group = ...`"
        );
    }

    #[test]
    fn synonyms_point_at_known_keys() {
        for (_, key) in ATTR.synonyms {
            assert!(ATTR.keys.contains(key), "{key}");
        }
    }
}
