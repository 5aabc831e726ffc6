//! Code generation for a checked [`CheckBack`]. Nothing here can fail.
//!
//! The user's function is emitted exactly as written, so that it stays
//! callable (from tests, say). Next to it come a type of the same name,
//! which half producers name in `check_back = path` to have their payload
//! checked against the function's at compile time, and, inside
//! `const _: () = { ... };`, the impl that records that payload, an adapter
//! with the signature the runtime calls, the type-erased entry point, and
//! the `inventory` registration of a `CheckBackRecord`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{AttrStyle, LitStr};

use super::CheckBack;
use crate::common::expand::private_path;

/// The user's function, its type and its registration.
pub(crate) fn expand(c: &CheckBack<'_>) -> TokenStream {
    let func = c.func;
    let name = &func.sig.ident;
    let vis = &func.vis;
    let krate = c.args.krate.as_ref();
    let private = private_path(krate, Span::call_site());
    let error = c.error;

    // The type and the registration exist exactly when the function does,
    // and calling a deprecated function from them is not the user's doing.
    let cfgs: Vec<_> = func
        .attrs
        .iter()
        .filter(|attr| matches!(attr.style, AttrStyle::Outer) && attr.path().is_ident("cfg"))
        .collect();

    // The error type's check, as `#[message_handler]` does it: the entry
    // point is generic over it, bounded by a trait that carries our
    // diagnostic, spanned at the user's type.
    let error_bound = {
        let span = error.span();
        let private = private_path(krate, span);
        quote_spanned!(span=> #private::CheckBackError + 'static)
    };

    // The `State<T>`s the function takes, fetched as `#[message_handler]`
    // fetches them: each by a call spanned at its `T`; a missing one makes
    // the adapter return `None` (the worker checks them all at start).
    let state_names: Vec<proc_macro2::Ident> = (0..c.states.len())
        .map(|i| proc_macro2::Ident::new(&format!("__txmsg_state_{i}"), Span::call_site()))
        .collect();
    let fetches: Vec<TokenStream> = c
        .states
        .iter()
        .zip(&state_names)
        .map(|(ty, var)| {
            let span = ty.span();
            let private = private_path(krate, span);
            let fetch = quote_spanned!(span=> #private::state::<#ty>);
            quote!(let #var = #fetch(__txmsg_states)?;)
        })
        .collect();
    let state_types = c.states.iter().map(|ty| {
        quote! {
            #private::StateType {
                id: #private::TypeId::of::<#ty>,
                name: #private::type_name::<#ty>,
            }
        }
    });
    let states_param = if c.states.is_empty() {
        quote!(_)
    } else {
        quote!(__txmsg_states)
    };

    // The call of the user's function, spanned at its name so that a future
    // that is not `Send` is reported there.
    let call = {
        let span = name.span();
        let private = private_path(krate, span);
        // The arguments keep call-site hygiene, as the parameters they name
        // do, also when the function comes from a `macro_rules!` expansion.
        let args = quote!(__txmsg_message #(, #state_names)*);
        quote_spanned!(span=> #private::Some(#private::Box::pin(#name(#args))))
    };

    let by_payload = match c.message {
        Some(message) => {
            let message_bound = {
                let span = message.span();
                let private = private_path(krate, span);
                quote_spanned!(span=> #private::CheckBackMessage + #private::Send + 'static)
            };
            quote! {
                impl #private::CheckBackFor<#message> for #name {}

                fn __txmsg_adapter<'t>(
                    __txmsg_message: &'t #message,
                    #states_param: &'t #private::States,
                ) -> #private::Option<#private::BoxFuture<'t, #private::Result<#private::CheckStatus, #error>>> {
                    #(#fetches)*
                    #call
                }

                fn __txmsg_call<'a>(
                    __txmsg_envelope: &'a #private::Envelope,
                    __txmsg_states: &'a #private::States,
                ) -> #private::BoxFuture<'a, #private::Result<#private::CheckStatus, #private::String>> {
                    __txmsg_run::<#message, #error>(__txmsg_envelope, __txmsg_states, __txmsg_adapter)
                }

                fn __txmsg_run<'a, __TxmsgMessage, __TxmsgError>(
                    __txmsg_envelope: &'a #private::Envelope,
                    __txmsg_states: &'a #private::States,
                    __txmsg_check: for<'t> fn(
                        &'t __TxmsgMessage,
                        &'t #private::States,
                    ) -> #private::Option<#private::BoxFuture<'t, #private::Result<#private::CheckStatus, __TxmsgError>>>,
                ) -> #private::BoxFuture<'a, #private::Result<#private::CheckStatus, #private::String>>
                where
                    __TxmsgMessage: #message_bound,
                    __TxmsgError: #error_bound,
                {
                    #private::Box::pin(#private::run_check_back::<__TxmsgMessage, __TxmsgError, _>(
                        __txmsg_envelope,
                        __txmsg_states,
                        __txmsg_check,
                    ))
                }
            }
        }
        // The envelope fits every payload; the payload is not decoded.
        None => quote! {
            impl<__TxmsgMessage: ?#private::Sized> #private::CheckBackFor<__TxmsgMessage>
                for #name
            {
            }

            fn __txmsg_adapter<'t>(
                __txmsg_message: &'t #private::Envelope,
                #states_param: &'t #private::States,
            ) -> #private::Option<#private::BoxFuture<'t, #private::Result<#private::CheckStatus, #error>>> {
                #(#fetches)*
                #call
            }

            fn __txmsg_call<'a>(
                __txmsg_envelope: &'a #private::Envelope,
                __txmsg_states: &'a #private::States,
            ) -> #private::BoxFuture<'a, #private::Result<#private::CheckStatus, #private::String>> {
                __txmsg_run::<#error>(__txmsg_envelope, __txmsg_states, __txmsg_adapter)
            }

            fn __txmsg_run<'a, __TxmsgError>(
                __txmsg_envelope: &'a #private::Envelope,
                __txmsg_states: &'a #private::States,
                __txmsg_check: for<'t> fn(
                    &'t #private::Envelope,
                    &'t #private::States,
                ) -> #private::Option<#private::BoxFuture<'t, #private::Result<#private::CheckStatus, __TxmsgError>>>,
            ) -> #private::BoxFuture<'a, #private::Result<#private::CheckStatus, #private::String>>
            where
                __TxmsgError: #error_bound,
            {
                #private::Box::pin(#private::run_envelope_check_back::<__TxmsgError>(
                    __txmsg_envelope,
                    __txmsg_states,
                    __txmsg_check,
                ))
            }
        },
    };

    let topic = &c.args.topic;
    let fn_name = LitStr::new(&name.unraw().to_string(), name.span());
    let (file, line) = {
        let span = name.span();
        let private = private_path(krate, span);
        (
            quote_spanned!(span=> #private::file!()),
            quote_spanned!(span=> #private::line!()),
        )
    };

    quote! {
        #func

        // Named by `check_back = path` in half producers; a fn and a type may
        // share a name. Uninhabited, and only its impls matter.
        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code, unreachable_pub)]
        #vis enum #name {}

        #(#cfgs)*
        #[allow(deprecated)]
        const _: () = {
            #by_payload

            #private::inventory::submit! {
                #private::CheckBackRecord {
                    topic: #topic,
                    name: #private::concat!(#private::module_path!(), "::", #fn_name),
                    file: #file,
                    line: #line,
                    states: &[#(#state_types),*],
                    call: __txmsg_call,
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenTree;
    use quote::ToTokens;
    use syn::{Item, ItemConst, ItemFn};

    use super::*;
    use crate::check_back::{args, valid};
    use crate::common::sig::Sig;

    fn expand_tokens(args: TokenStream, func: TokenStream) -> syn::File {
        let func: ItemFn = syn::parse2(func).unwrap();
        let sig = Sig::new(&func);
        let c = valid::check(args::parse(args), &sig).unwrap_or_else(|e| panic!("{e}"));
        syn::parse2(expand(&c)).unwrap()
    }

    fn registration(file: &syn::File) -> &ItemConst {
        match &file.items[2] {
            Item::Const(item) => item,
            other => panic!("expected a const, got {}", other.to_token_stream()),
        }
    }

    /// Every identifier in `tokens`, groups included.
    fn idents(tokens: &TokenStream) -> Vec<proc_macro2::Ident> {
        tokens
            .clone()
            .into_iter()
            .flat_map(|token| match token {
                TokenTree::Ident(ident) => vec![ident],
                TokenTree::Group(group) => idents(&group.stream()),
                _ => Vec::new(),
            })
            .collect()
    }

    fn squeeze(tokens: impl ToTokens) -> String {
        tokens.to_token_stream().to_string().replace(' ', "")
    }

    const CHECK_BACK: &str = "
        /// Whether the payment went through.
        #[cfg(feature = \"payments\")]
        pub(crate) async fn payment_state(payment: &Payment) -> Result<CheckStatus, PayError> {
            Ok(CheckStatus::Commit)
        }";

    #[test]
    fn keeps_the_function_and_declares_a_type_of_its_name() {
        let func: ItemFn = syn::parse_str(CHECK_BACK).unwrap();
        let file = expand_tokens(quote!(topic = "payments.requested"), func.to_token_stream());
        assert_eq!(
            file.items[0].to_token_stream().to_string(),
            func.to_token_stream().to_string()
        );
        let Item::Enum(ty) = &file.items[1] else {
            panic!("expected an enum")
        };
        assert_eq!(ty.ident, "payment_state");
        assert!(ty.variants.is_empty());
        assert_eq!(ty.vis.to_token_stream().to_string(), "pub (crate)");
        let attrs: Vec<_> = ty
            .attrs
            .iter()
            .map(|a| a.path().to_token_stream().to_string())
            .collect();
        assert_eq!(attrs, ["cfg", "doc", "allow"]);
        let attrs: Vec<_> = registration(&file)
            .attrs
            .iter()
            .map(|a| a.to_token_stream().to_string())
            .collect();
        assert_eq!(
            attrs,
            [
                quote!(#[cfg(feature = "payments")]).to_string(),
                quote!(#[allow(deprecated)]).to_string()
            ]
        );
    }

    #[test]
    fn registers_a_check_back_of_the_payload() {
        let func: ItemFn = syn::parse_str(CHECK_BACK).unwrap();
        let file = expand_tokens(quote!(topic = "payments.requested"), func.to_token_stream());
        let registration = squeeze(registration(&file));
        for expected in [
            quote!(impl ::txmsg::__private::CheckBackFor<Payment> for payment_state {}),
            quote!(::txmsg::__private::Some(::txmsg::__private::Box::pin(
                payment_state(__txmsg_message)
            ))),
            quote!(__txmsg_run::<Payment, PayError>(
                __txmsg_envelope,
                __txmsg_states,
                __txmsg_adapter
            )),
            quote!(where
                __TxmsgMessage: ::txmsg::__private::CheckBackMessage + ::txmsg::__private::Send + 'static,
                __TxmsgError: ::txmsg::__private::CheckBackError + 'static,
            ),
            quote!(::txmsg::__private::run_check_back::<__TxmsgMessage, __TxmsgError, _>),
            quote!(::txmsg::__private::inventory::submit!),
            quote!(topic: "payments.requested",),
            quote!(name: ::txmsg::__private::concat!(::txmsg::__private::module_path!(), "::", "payment_state"),),
            quote!(states: &[],),
            quote!(call: __txmsg_call,),
        ] {
            let expected = squeeze(expected);
            assert!(
                registration.contains(&expected),
                "{expected}\nin\n{registration}"
            );
        }
    }

    #[test]
    fn states_are_fetched_spanned_at_their_types_and_registered() {
        let file = expand_tokens(
            quote!(topic = "a"),
            quote!(
                async fn check(
                    p: &Payment,
                    api: State<Api>,
                    db: State<Db>,
                ) -> Result<CheckStatus, E> {
                    Ok(CheckStatus::Unknown)
                }
            ),
        );
        let registration = squeeze(registration(&file));
        for expected in [
            quote!(let __txmsg_state_0 = ::txmsg::__private::state::<Api>(__txmsg_states)?;),
            quote!(let __txmsg_state_1 = ::txmsg::__private::state::<Db>(__txmsg_states)?;),
            quote!(check(__txmsg_message, __txmsg_state_0, __txmsg_state_1)),
            quote!(id: ::txmsg::__private::TypeId::of::<Api>,),
            quote!(name: ::txmsg::__private::type_name::<Db>,),
        ] {
            let expected = squeeze(expected);
            assert!(
                registration.contains(&expected),
                "{expected}\nin\n{registration}"
            );
        }
    }

    #[test]
    fn an_envelope_check_back_fits_every_payload() {
        let file = expand_tokens(
            quote!(topic = "a"),
            quote!(
                async fn r#match(e: &txmsg::Envelope) -> Result<CheckStatus, E> {
                    Ok(CheckStatus::Unknown)
                }
            ),
        );
        let registration = squeeze(registration(&file));
        for expected in [
            quote!(
                impl<__TxmsgMessage: ?::txmsg::__private::Sized>
                    ::txmsg::__private::CheckBackFor<__TxmsgMessage> for r#match
                {
                }
            ),
            quote!(::txmsg::__private::run_envelope_check_back::<__TxmsgError>),
            quote!(__txmsg_run::<E>(
                __txmsg_envelope,
                __txmsg_states,
                __txmsg_adapter
            )),
            quote!("::", "match"),
        ] {
            let expected = squeeze(expected);
            assert!(
                registration.contains(&expected),
                "{expected}\nin\n{registration}"
            );
        }
        assert!(!registration.contains("run_check_back"), "{registration}");
    }

    #[test]
    fn a_renamed_crate_is_used_everywhere() {
        let file = expand_tokens(
            quote!(topic = "a", crate = "::my_txmsg"),
            quote!(
                async fn f(m: &M) -> Result<CheckStatus, E> {
                    Ok(CheckStatus::Commit)
                }
            ),
        );
        let all = idents(&file.to_token_stream());
        assert!(!all.iter().any(|i| i == "txmsg"));
        assert!(all.iter().any(|i| i == "my_txmsg"));
    }
}
