//! The shapes only `#[check_back]` cares about, on top of the shared model
//! of the function (`common::sig`, `common::types`): its one parameter and
//! the `CheckStatus` it answers with.

use syn::{PathArguments, Type};

use crate::common::sig::{last_segment, peel};

/// Whether `ty` is `CheckStatus` (under any path ending in `CheckStatus`).
pub(crate) fn is_check_status(ty: &Type) -> bool {
    last_segment(peel(ty), "CheckStatus")
        .is_some_and(|last| matches!(last.arguments, PathArguments::None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_status() {
        for good in [
            "CheckStatus",
            "txmsg::half::CheckStatus",
            "::txmsg::half::CheckStatus",
            "(CheckStatus)",
        ] {
            let ty: Type = syn::parse_str(good).unwrap();
            assert!(is_check_status(&ty), "{good}");
        }
        for bad in ["Status", "CheckStatus<u8>", "&CheckStatus", "()", "bool"] {
            let ty: Type = syn::parse_str(bad).unwrap();
            assert!(!is_check_status(&ty), "{bad}");
        }
    }
}
