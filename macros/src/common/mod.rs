//! What the macros share: splitting attribute arguments, the model of the
//! annotated function and the shapes of its types, the checks whose wording must not drift apart (topic
//! names, `crate = "..."`, qualifiers, the transaction parameter), and the
//! paths generated code uses.
//!
//! Messages name the attribute they come from, so every helper takes the
//! [`Attr`](args::Attr) it reports for.

pub(crate) mod args;
pub(crate) mod expand;
pub(crate) mod sig;
pub(crate) mod types;
pub(crate) mod valid;

use proc_macro2::{Span, TokenStream};
use syn::ItemFn;

use self::args::Attr;

/// The annotated item as a function with a body, or the tokens to emit
/// instead: the item unchanged, followed by the error.
pub(crate) fn parse_fn(item: TokenStream, attr: &Attr) -> Result<ItemFn, TokenStream> {
    match syn::parse2::<ItemFn>(item.clone()) {
        Ok(func) => Ok(func),
        Err(error) => {
            let error = if syn::parse2::<syn::Item>(item.clone()).is_ok() {
                // Valid Rust, just not a function with a body.
                syn::Error::new(
                    Span::call_site(),
                    format!(
                        "`#[{}]` can only be used on an `async fn` with a body",
                        attr.name
                    ),
                )
            } else {
                error
            };
            Err(crate::diag::item_with_error(item, error))
        }
    }
}
