//! Paths and spans for generated code.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote_spanned};
use syn::Path;

/// The path of the runtime's hidden module, `::txmsg::__private` by default
/// or `{krate}::__private` for a renamed dependency, with every token at
/// `span`.
pub(crate) fn private_path(krate: Option<&Path>, span: Span) -> TokenStream {
    match krate {
        Some(path) => {
            let path = respan(path.to_token_stream(), span);
            quote_spanned!(span=> #path::__private)
        }
        None => quote_spanned!(span=> ::txmsg::__private),
    }
}

/// `tokens` with every span set to `span`.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                token = TokenTree::Group(respanned);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    #[test]
    fn respan_reaches_into_groups() {
        let span = Span::call_site();
        let out = respan(quote!(a::<(b, [c])>), span);
        assert_eq!(out.to_string(), quote!(a::<(b, [c])>).to_string());
    }

    #[test]
    fn private_paths() {
        let span = Span::call_site();
        assert_eq!(
            private_path(None, span).to_string(),
            quote!(::txmsg::__private).to_string()
        );
        let krate: Path = syn::parse_quote!(crate::reexports::txmsg);
        assert_eq!(
            private_path(Some(&krate), span).to_string(),
            quote!(crate::reexports::txmsg::__private).to_string()
        );
    }
}
