//! What `#[transactional_message]` needs to know about the function beyond
//! the shared model (`common::sig`): which parameters bind a plain name, so
//! that the transaction can be reborrowed under it and the others forwarded
//! by it.

use syn::{Ident, Pat};

/// The name a parameter binds, if its pattern is a plain name (`tx`,
/// `mut tx`): not `_`, not `ref x`, not a destructuring pattern.
pub(crate) fn binding(pat: &Pat) -> Option<&Ident> {
    match pat {
        Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => Some(&p.ident),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_only() {
        for (pat, name) in [("tx", Some("tx")), ("mut c", Some("c"))] {
            let pat = Pat::parse_single.parse_str(pat).unwrap();
            assert_eq!(binding(&pat).map(ToString::to_string).as_deref(), name);
        }
        for pat in ["_", "(a, b)", "ref x", "x @ 1..=2", "S { a }"] {
            let pat = Pat::parse_single.parse_str(pat).unwrap();
            assert!(binding(&pat).is_none(), "{pat:?}");
        }
    }

    use syn::parse::Parser;
}
