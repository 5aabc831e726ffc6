//! `#[check_back]`: parse, then validate, then expand.
//!
//! - `args.rs` names the attribute's arguments (splitting them into
//!   `name = value` pairs is shared, in `common::args`);
//! - `sig.rs` adds the shapes only check-backs care about (the
//!   `CheckStatus` answer) to the shared model of the function
//!   (`common::sig`, `common::types`);
//! - `valid.rs` checks both and reports every mistake at once, each at its
//!   token, and returns a [`CheckBack`];
//! - `expand.rs` turns a [`CheckBack`] into code, and cannot fail.

mod args;
mod expand;
mod sig;
mod valid;

use proc_macro2::TokenStream;
use syn::{ItemFn, Type};

use self::args::Args;
use crate::common::sig::Sig;
use crate::{common, diag};

/// A checked `#[check_back]` function: everything the expansion needs,
/// borrowed from the parsed function.
pub(crate) struct CheckBack<'a> {
    /// The function as written.
    pub(crate) func: &'a ItemFn,
    /// The checked attribute arguments.
    pub(crate) args: Args,
    /// The message type `M` of a `&M` parameter; `None` for
    /// `&txmsg::Envelope`.
    pub(crate) message: Option<&'a Type>,
    /// The `T` of each `State<T>` parameter, in order.
    pub(crate) states: Vec<&'a Type>,
    /// The error type `E` of `Result<CheckStatus, E>`.
    pub(crate) error: &'a Type,
}

/// Expands `#[check_back(args)] item`.
///
/// On any error, the item is emitted unchanged next to the errors.
pub(crate) fn check_back(args: TokenStream, item: TokenStream) -> TokenStream {
    let func = match common::parse_fn(item.clone(), &args::ATTR) {
        Ok(func) => func,
        Err(tokens) => return tokens,
    };
    let sig = Sig::new(&func);
    match valid::check(args::parse(args), &sig) {
        Ok(check_back) => expand::expand(&check_back),
        Err(error) => diag::item_with_error(item, error),
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn compile_errors(tokens: &TokenStream) -> usize {
        tokens.to_string().matches("compile_error").count()
    }

    #[test]
    fn valid_input_expands_to_the_function_its_type_and_its_registration() {
        let out = check_back(
            quote!(topic = "payments.requested"),
            quote! {
                async fn payment_state(p: &Payment) -> Result<CheckStatus, Error> {
                    Ok(CheckStatus::Commit)
                }
            },
        );
        let file: syn::File = syn::parse2(out).unwrap();
        assert_eq!(file.items.len(), 3);
        assert!(matches!(file.items[0], syn::Item::Fn(_)));
        assert!(matches!(file.items[1], syn::Item::Enum(_)));
        assert!(matches!(file.items[2], syn::Item::Const(_)));
    }

    #[test]
    fn invalid_input_keeps_the_function_and_adds_the_errors() {
        let item = quote! {
            fn payment_state(p: Payment) -> bool { true }
        };
        let out = check_back(quote!(topik = "x"), item.clone());
        assert!(out.to_string().starts_with(&item.to_string()));
        // unknown argument (taken for `topic`), not async, not a reference,
        // not a Result
        assert_eq!(compile_errors(&out), 4, "{out}");
    }

    #[test]
    fn other_items_are_refused() {
        let out = check_back(
            quote!(topic = "a"),
            quote!(
                struct S;
            ),
        );
        assert!(
            out.to_string()
                .contains("`#[check_back]` can only be used on an `async fn` with a body")
        );
    }
}
