//! The arguments of `#[check_back(...)]`.
//!
//! Splitting them into `name = value` pairs is shared with the other macros
//! (`common::args`); this file says which names exist and what a checked
//! set of arguments holds.

use proc_macro2::TokenStream;
use syn::{LitStr, Path};

use crate::common::args::{self, Attr, RawArg};

/// `#[check_back]`, as messages describe it.
pub(crate) const ATTR: Attr = Attr {
    name: "check_back",
    keys: &["topic", "crate"],
    flags: &[],
    placeholder: |_| "\"...\"",
    synonyms: &[],
};

/// Splits the attribute's arguments into [`RawArg`]s.
///
/// Fails only on syntax that cannot be read at all, such as a missing comma.
pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Vec<RawArg>> {
    args::parse(tokens, &ATTR)
}

/// The arguments once checked: everything the expansion needs.
pub(crate) struct Args {
    /// The topic whose prepared messages the function resolves, a valid
    /// topic name.
    pub(crate) topic: LitStr,
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
        let raw = parse(quote!(topic = "payments.requested", crate = "my_txmsg")).unwrap();
        let names: Vec<_> = raw.iter().map(|arg| path_to_string(&arg.name)).collect();
        assert_eq!(names, ATTR.keys);
        assert!(raw.iter().all(|arg| arg.value.is_some()));
    }
}
