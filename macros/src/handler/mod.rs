//! `#[message_handler]`: parse, then validate, then expand.
//!
//! - `args.rs` names the attribute's arguments (splitting them into
//!   `name = value` pairs is shared, in `common::args`);
//! - `sig.rs` adds the shapes only handlers care about (the envelope
//!   parameter, owned types) to the shared model of the function
//!   (`common::sig`);
//! - `valid.rs` checks both and reports every mistake at once, each at its
//!   token, and returns a [`Handler`];
//! - `expand.rs` turns a [`Handler`] into code, and cannot fail.

mod args;
mod expand;
mod sig;
mod valid;

use proc_macro2::TokenStream;
use syn::{ItemFn, Type};

use self::args::Args;
use crate::common::sig::Sig;
use crate::{common, diag};

/// A checked `#[message_handler]` function: everything the expansion needs,
/// borrowed from the parsed function.
pub(crate) struct Handler<'a> {
    /// The function as written.
    pub(crate) func: &'a ItemFn,
    /// The checked attribute arguments.
    pub(crate) args: Args,
    /// The database type `DB` of `&mut Tx<'_, DB>`.
    pub(crate) db: &'a Type,
    /// The message type `M` of the second parameter.
    pub(crate) message: &'a Type,
    /// What follows the message, in the order written.
    pub(crate) extras: Vec<Extra<'a>>,
    /// The error type `E` of `Result<(), E>`.
    pub(crate) error: &'a Type,
}

/// A parameter after the message.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Extra<'a> {
    /// `&txmsg::Envelope`.
    Envelope,
    /// `State<T>`, with its `T`.
    State(&'a Type),
}

/// Expands `#[message_handler(args)] item`.
///
/// On any error, the item is emitted unchanged next to the errors.
pub(crate) fn message_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    let func = match common::parse_fn(item.clone(), &args::ATTR) {
        Ok(func) => func,
        Err(tokens) => return tokens,
    };
    let sig = Sig::new(&func);
    match valid::check(args::parse(args), &sig) {
        Ok(handler) => expand::expand(&handler),
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
    fn valid_input_expands_to_the_function_and_its_registration() {
        let out = message_handler(
            quote!(topic = "orders.placed", group = "billing"),
            quote! {
                async fn on_order(tx: &mut Tx<'_, Sqlite>, order: Order) -> Result<(), Error> {
                    Ok(())
                }
            },
        );
        let file: syn::File = syn::parse2(out).unwrap();
        assert_eq!(file.items.len(), 2);
        assert!(matches!(file.items[0], syn::Item::Fn(_)));
        assert!(matches!(file.items[1], syn::Item::Const(_)));
    }

    #[test]
    fn invalid_input_keeps_the_function_and_adds_the_errors() {
        let item = quote! {
            fn on_order(order: Order) -> u8 { 0 }
        };
        let out = message_handler(quote!(topik = "x"), item.clone());
        assert!(out.to_string().starts_with(&item.to_string()));
        // unknown argument (taken for `topic`), missing group, not async, no
        // transaction, not a Result
        assert_eq!(compile_errors(&out), 5, "{out}");
    }

    #[test]
    fn other_items_are_refused() {
        let out = message_handler(
            quote!(topic = "a", group = "b"),
            quote!(
                struct S;
            ),
        );
        assert!(
            out.to_string()
                .contains("`#[message_handler]` can only be used on an `async fn` with a body")
        );
    }

    #[test]
    fn unparsable_items_keep_the_syntax_error() {
        let item = quote!(async fn f() { let });
        let out = message_handler(quote!(topic = "a", group = "b"), item.clone());
        assert!(out.to_string().starts_with(&item.to_string()));
        assert_eq!(compile_errors(&out), 1);
    }
}
