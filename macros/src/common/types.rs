//! Shapes of types the macros look for: the envelope parameter, and types
//! the generated code can name outside the function (no borrows, no
//! `impl Trait`).

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::visit::Visit;
use syn::{BoundLifetimes, GenericParam, Lifetime, PathArguments, Type, TypeImplTrait};

use super::sig::{last_segment, peel};

/// The shape of a parameter that should be `&txmsg::Envelope`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EnvelopeShape {
    /// `&path::to::Envelope`, as expected.
    Shared,
    /// `&mut path::to::Envelope`.
    Mut,
    /// `path::to::Envelope`, by value.
    Owned,
    /// Anything else.
    Other,
}

/// Classifies `ty` against `&txmsg::Envelope` (under any path or alias
/// ending in `Envelope`).
pub(crate) fn envelope_shape(ty: &Type) -> EnvelopeShape {
    let is_envelope = |ty: &Type| {
        last_segment(peel(ty), "Envelope")
            .is_some_and(|last| matches!(last.arguments, PathArguments::None))
    };
    match peel(ty) {
        Type::Reference(reference) if is_envelope(&reference.elem) => {
            if reference.mutability.is_some() {
                EnvelopeShape::Mut
            } else {
                EnvelopeShape::Shared
            }
        }
        ty if is_envelope(ty) => EnvelopeShape::Owned,
        _ => EnvelopeShape::Other,
    }
}

/// The `T` of `State<T>` (under any path ending in `State`), if `ty` is
/// one: an application state parameter.
pub(crate) fn state_type(ty: &Type) -> Option<&Type> {
    let last = last_segment(peel(ty), "State")?;
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.iter().collect::<Vec<_>>().as_slice() {
        [syn::GenericArgument::Type(inner)] => Some(inner),
        _ => None,
    }
}

/// The first `impl Trait` in `ty`, if any.
pub(crate) fn first_impl_trait(ty: &Type) -> Option<&TypeImplTrait> {
    #[derive(Default)]
    struct Find<'a>(Option<&'a TypeImplTrait>);
    impl<'a> Visit<'a> for Find<'a> {
        fn visit_type_impl_trait(&mut self, found: &'a TypeImplTrait) {
            self.0.get_or_insert(found);
        }
    }
    let mut find = Find::default();
    find.visit_type(ty);
    find.0
}

/// The first part of `ty` that borrows, if any, as tokens to point at: a
/// lifetime other than `'static` (and those a `for<'a>` binds), a reference
/// without a lifetime, and, unless `static_refs` allows `&'static T`, any
/// reference.
///
/// Generated code names the message and error types outside the function,
/// where the function's lifetimes do not exist, and a message that borrows
/// cannot be `DeserializeOwned` anyway.
pub(crate) fn first_borrow(ty: &Type, static_refs: bool) -> Option<TokenStream> {
    struct Find {
        static_refs: bool,
        bound: Vec<proc_macro2::Ident>,
        found: Option<TokenStream>,
    }
    impl Find {
        fn borrows(&self, lifetime: &Lifetime) -> bool {
            lifetime.ident != "static" && !self.bound.contains(&lifetime.ident)
        }
    }
    impl<'a> Visit<'a> for Find {
        fn visit_type_reference(&mut self, reference: &'a syn::TypeReference) {
            let borrows = match &reference.lifetime {
                Some(lifetime) if lifetime.ident == "static" => !self.static_refs,
                Some(lifetime) => self.borrows(lifetime),
                None => true,
            };
            if borrows && self.found.is_none() {
                self.found = Some(match &reference.lifetime {
                    Some(lifetime) if lifetime.ident != "static" => lifetime.to_token_stream(),
                    _ => reference.to_token_stream(),
                });
            }
            self.visit_type(&reference.elem);
        }
        fn visit_bound_lifetimes(&mut self, bound: &'a BoundLifetimes) {
            for param in &bound.lifetimes {
                if let GenericParam::Lifetime(def) = param {
                    self.bound.push(def.lifetime.ident.clone());
                }
            }
        }
        // `Fn(&str) -> &str` and `fn(&str)` are higher-ranked: their elided
        // lifetimes borrow nothing.
        fn visit_parenthesized_generic_arguments(
            &mut self,
            _: &'a syn::ParenthesizedGenericArguments,
        ) {
        }
        fn visit_type_bare_fn(&mut self, _: &'a syn::TypeBareFn) {}
        fn visit_lifetime(&mut self, lifetime: &'a Lifetime) {
            if self.found.is_none() && self.borrows(lifetime) {
                self.found = Some(lifetime.to_token_stream());
            }
        }
    }
    let mut find = Find {
        static_refs,
        bound: Vec::new(),
        found: None,
    };
    find.visit_type(ty);
    find.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(text: &str) -> Type {
        syn::parse_str(text).unwrap()
    }

    #[test]
    fn envelope_shapes() {
        for (text, shape) in [
            ("&Envelope", EnvelopeShape::Shared),
            ("&'a txmsg::Envelope", EnvelopeShape::Shared),
            ("&::txmsg::Envelope", EnvelopeShape::Shared),
            ("&(Envelope)", EnvelopeShape::Shared),
            ("&mut Envelope", EnvelopeShape::Mut),
            ("txmsg::Envelope", EnvelopeShape::Owned),
            ("&String", EnvelopeShape::Other),
            ("&Envelope<u8>", EnvelopeShape::Other),
            ("Arc<Envelope>", EnvelopeShape::Other),
            ("&<X as Y>::Envelope", EnvelopeShape::Other),
        ] {
            assert_eq!(envelope_shape(&ty(text)), shape, "{text}");
        }
    }

    #[test]
    fn impl_traits() {
        assert!(first_impl_trait(&ty("impl Display")).is_some());
        assert!(first_impl_trait(&ty("Vec<impl Display>")).is_some());
        assert!(first_impl_trait(&ty("Box<dyn Display>")).is_none());
    }

    #[test]
    fn borrows() {
        let found = |text: &str, static_refs| {
            first_borrow(&ty(text), static_refs).map(|tokens| tokens.to_string())
        };
        for owned in [
            "Order",
            "Vec<String>",
            "Cow<'static, str>",
            "Box<dyn std::error::Error + Send + Sync + 'static>",
            "Box<dyn for<'a> Fn(&'a str) + Send>",
            "Box<dyn Fn(&str) -> &str + Send>",
            "fn(&str) -> usize",
        ] {
            assert_eq!(found(owned, false), None, "{owned}");
        }
        assert_eq!(found("&Order", false).as_deref(), Some("& Order"));
        assert_eq!(
            found("&'static str", false).as_deref(),
            Some("& 'static str")
        );
        assert_eq!(found("&'static str", true), None);
        assert_eq!(found("&str", true).as_deref(), Some("& str"));
        assert_eq!(found("Vec<&'a str>", true).as_deref(), Some("'a"));
        assert_eq!(found("Note<'_>", false).as_deref(), Some("'_"));
        assert_eq!(found("Note<'a>", false).as_deref(), Some("'a"));
    }
}
