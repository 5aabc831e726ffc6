//! `#[transactional_message]`: parse, then validate, then expand.
//!
//! - `args.rs` names the attribute's arguments (splitting them into
//!   `name = value` pairs is shared, in `common::args`);
//! - `sig.rs` adds what this macro needs to the shared model of the
//!   function (`common::sig`);
//! - `valid.rs` checks both and reports every mistake at once, each at its
//!   token, and returns a [`Producer`];
//! - `expand.rs` turns a [`Producer`] into code, and cannot fail.

mod args;
mod expand;
mod sig;
mod valid;

use proc_macro2::TokenStream;
use syn::{Ident, ItemFn, PatType, Type};

use self::args::{Args, Half};
use crate::common::sig::Sig;
use crate::{common, diag};

/// A checked `#[transactional_message]` function: everything the expansion
/// needs, borrowed from the parsed function.
pub(crate) struct Producer<'a> {
    /// The function as written.
    pub(crate) func: &'a ItemFn,
    /// The checked attribute arguments (but for `half`, moved to `mode`).
    pub(crate) args: Args,
    /// Whether the message joins the caller's transaction or is a half
    /// message.
    pub(crate) mode: Mode<'a>,
    /// The parameters `_and_commit` forwards: those after the transaction,
    /// or all of them for a half producer.
    pub(crate) params: Vec<&'a PatType>,
    /// The payload type `M`: of `Result<M, E>`, or of a half producer's
    /// first parameter `&M`.
    pub(crate) payload: &'a Type,
    /// The error type `E` of `Result<_, E>`.
    pub(crate) error: &'a Type,
}

/// The two kinds of producer.
pub(crate) enum Mode<'a> {
    /// `async fn(tx: &mut Tx<'_, DB>, ..) -> Result<M, E>`: the message is
    /// written in the caller's transaction.
    Tx {
        /// Name of the transaction parameter (the first one).
        tx: &'a Ident,
        /// The database type `DB` of `&mut Tx<'_, DB>`.
        db: &'a Type,
    },
    /// `half`: `async fn(msg: &M, ..) -> Result<T, E>`, whose message is
    /// stored prepared before the body runs, then committed or rolled back.
    Half(Half),
}

/// Expands `#[transactional_message(args)] item`.
///
/// On any error, the item is emitted unchanged next to the errors.
pub(crate) fn transactional_message(args: TokenStream, item: TokenStream) -> TokenStream {
    let func = match common::parse_fn(item.clone(), &args::ATTR) {
        Ok(func) => func,
        Err(tokens) => return tokens,
    };
    let sig = Sig::new(&func);
    match valid::check(args::parse(args), &sig) {
        Ok(producer) => expand::expand(&producer),
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
    fn valid_input_expands_to_two_functions() {
        let out = transactional_message(
            quote!(topic = "orders.placed"),
            quote! {
                async fn place(tx: &mut Tx<'_, Sqlite>, id: i64) -> Result<Order, Error> {
                    Ok(Order { id })
                }
            },
        );
        let file: syn::File = syn::parse2(out).unwrap();
        assert_eq!(file.items.len(), 2);
    }

    #[test]
    fn invalid_input_keeps_the_function_and_adds_the_errors() {
        let item = quote! {
            fn place(id: i64) -> Order { Order { id } }
        };
        let out = transactional_message(quote!(topik = "x"), item.clone());
        assert!(out.to_string().starts_with(&item.to_string()));
        // unknown argument (taken for `topic`), not async, no transaction,
        // not a Result
        assert_eq!(compile_errors(&out), 4, "{out}");
    }

    #[test]
    fn other_items_are_refused() {
        let out = transactional_message(
            quote!(topic = "a"),
            quote!(
                struct S;
            ),
        );
        assert!(
            out.to_string()
                .contains("can only be used on an `async fn` with a body")
        );
        let out = transactional_message(
            quote!(topic = "a"),
            quote!(
                async fn f(&self) -> u8;
            ),
        );
        assert!(
            out.to_string()
                .contains("can only be used on an `async fn` with a body")
        );
    }

    #[test]
    fn unparsable_items_keep_the_syntax_error() {
        let item = quote!(async fn f() { let });
        let out = transactional_message(quote!(topic = "a"), item.clone());
        assert!(out.to_string().starts_with(&item.to_string()));
        assert_eq!(compile_errors(&out), 1);
    }
}
