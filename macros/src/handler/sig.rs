//! The shapes only `#[message_handler]` cares about, on top of the shared
//! model of the function (`common::sig`, `common::types`): the unit success
//! type.

use syn::Type;

use crate::common::sig::peel;

/// Whether `ty` is `()`.
pub(crate) fn is_unit(ty: &Type) -> bool {
    matches!(peel(ty), Type::Tuple(tuple) if tuple.elems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(text: &str) -> Type {
        syn::parse_str(text).unwrap()
    }

    #[test]
    fn units() {
        assert!(is_unit(&ty("()")));
        assert!(is_unit(&ty("(())")));
        assert!(!is_unit(&ty("(u8,)")));
        assert!(!is_unit(&ty("Unit")));
    }
}
