//! Code generation for a checked [`Handler`]. Nothing here can fail.
//!
//! The user's function is emitted exactly as written, so that it stays
//! callable (from tests, say). Next to it, inside `const _: () = { ... };`,
//! come an adapter with the signature the runtime calls, the type-erased
//! entry point, and the `inventory` registration of a `HandlerRecord`.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{AttrStyle, LitStr};

use super::{Extra, Handler};
use crate::common::expand::private_path;

/// The user's function and its registration.
pub(crate) fn expand(h: &Handler<'_>) -> TokenStream {
    let func = h.func;
    let name = &func.sig.ident;
    let krate = h.args.krate.as_ref();
    let private = private_path(krate, Span::call_site());
    let db = h.db;
    let message = h.message;
    let error = h.error;

    // The registration exists exactly when the function does, and calling a
    // deprecated function from it is not the user's doing.
    let cfgs = func
        .attrs
        .iter()
        .filter(|attr| matches!(attr.style, AttrStyle::Outer) && attr.path().is_ident("cfg"));

    // The checks that need the type checker: `run_handler` is called from a
    // function generic over the message and error types, whose bounds carry
    // our diagnostics and imply `run_handler`'s. It is called with the user's
    // type tokens, and the bounds are spanned at them too, so a message that
    // is not `DeserializeOwned` or an error that is not `Display` is reported
    // there, once, with our message.
    let message_bound = {
        let span = message.span();
        let private = private_path(krate, span);
        quote_spanned!(span=> #private::HandlerMessage + #private::Send + 'static)
    };
    let error_bound = {
        let span = error.span();
        let private = private_path(krate, span);
        quote_spanned!(span=> #private::HandlerError + 'static)
    };

    // The `State<T>`s the function takes, each fetched from the consumer's
    // states by a call spanned at its `T`, so that a type that cannot be
    // state is reported there. A missing one makes the adapter return
    // `None` (the consumer checks them all at start).
    let states: Vec<&syn::Type> = h
        .extras
        .iter()
        .filter_map(|extra| match extra {
            Extra::State(ty) => Some(*ty),
            Extra::Envelope => None,
        })
        .collect();
    let state_names: Vec<proc_macro2::Ident> = (0..states.len())
        .map(|i| proc_macro2::Ident::new(&format!("__txmsg_state_{i}"), Span::call_site()))
        .collect();
    let fetches = states.iter().zip(&state_names).map(|(ty, var)| {
        let span = ty.span();
        let private = private_path(krate, span);
        let fetch = quote_spanned!(span=> #private::state::<#ty>);
        quote!(let #var = #fetch(__txmsg_states)?;)
    });
    let state_types = states.iter().map(|ty| {
        quote! {
            #private::StateType {
                id: #private::TypeId::of::<#ty>,
                name: #private::type_name::<#ty>,
            }
        }
    });

    // The call of the user's function, spanned at its name so that a future
    // that is not `Send` is reported there.
    let call = {
        let span = name.span();
        let private = private_path(krate, span);
        // The arguments keep call-site hygiene, as the parameters they name
        // do, also when the function comes from a `macro_rules!` expansion.
        let mut next_state = state_names.iter();
        let extras = h.extras.iter().map(|extra| match extra {
            Extra::Envelope => quote!(__txmsg_envelope),
            Extra::State(_) => {
                let var = next_state.next();
                quote!(#var)
            }
        });
        let args = quote!(__txmsg_tx, __txmsg_message #(, #extras)*);
        quote_spanned!(span=> #private::Some(#private::Box::pin(#name(#args))))
    };
    let envelope_param = if h.extras.iter().any(|e| matches!(e, Extra::Envelope)) {
        quote!(__txmsg_envelope)
    } else {
        quote!(_)
    };
    let states_param = if states.is_empty() {
        quote!(_)
    } else {
        quote!(__txmsg_states)
    };

    let topic = &h.args.topic;
    let group = &h.args.group;
    let max_attempts = Literal::u32_unsuffixed(h.args.max_attempts);
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

        #(#cfgs)*
        #[allow(deprecated)]
        const _: () = {
            fn __txmsg_adapter<'t>(
                __txmsg_tx: &'t mut #private::Tx<'static, #db>,
                __txmsg_message: #message,
                #envelope_param: &'t #private::Envelope,
                #states_param: &'t #private::States,
            ) -> #private::Option<#private::BoxFuture<'t, #private::Result<(), #error>>> {
                #(#fetches)*
                #call
            }

            fn __txmsg_call<'a>(
                __txmsg_ctx: &'a #private::AnyCtx,
                __txmsg_envelope: &'a #private::Envelope,
                __txmsg_replay: #private::Option<#private::Uuid>,
            ) -> #private::BoxFuture<'a, #private::HandlerOutcome> {
                __txmsg_run::<#message, #error>(
                    __txmsg_ctx,
                    __txmsg_envelope,
                    __txmsg_replay,
                    __txmsg_adapter,
                )
            }

            fn __txmsg_run<'a, __TxmsgMessage, __TxmsgError>(
                __txmsg_ctx: &'a #private::AnyCtx,
                __txmsg_envelope: &'a #private::Envelope,
                __txmsg_replay: #private::Option<#private::Uuid>,
                __txmsg_handler: for<'t> fn(
                    &'t mut #private::Tx<'static, #db>,
                    __TxmsgMessage,
                    &'t #private::Envelope,
                    &'t #private::States,
                ) -> #private::Option<#private::BoxFuture<'t, #private::Result<(), __TxmsgError>>>,
            ) -> #private::BoxFuture<'a, #private::HandlerOutcome>
            where
                __TxmsgMessage: #message_bound,
                __TxmsgError: #error_bound,
            {
                #private::Box::pin(#private::run_handler::<#db, __TxmsgMessage, __TxmsgError, _>(
                    __txmsg_ctx,
                    __txmsg_envelope,
                    __txmsg_replay,
                    __txmsg_handler,
                ))
            }

            #private::inventory::submit! {
                #private::HandlerRecord {
                    topic: #topic,
                    group: #group,
                    max_attempts: #max_attempts,
                    name: #private::concat!(#private::module_path!(), "::", #fn_name),
                    file: #file,
                    line: #line,
                    database: #private::type_name::<#db>,
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
    use crate::common::sig::Sig;
    use crate::handler::{args, valid};

    fn expand_tokens(args: TokenStream, func: TokenStream) -> syn::File {
        let func: ItemFn = syn::parse2(func).unwrap();
        let sig = Sig::new(&func);
        let handler = valid::check(args::parse(args), &sig).unwrap_or_else(|e| panic!("{e}"));
        syn::parse2(expand(&handler)).unwrap()
    }

    fn registration(file: &syn::File) -> &ItemConst {
        match &file.items[1] {
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

    /// `tokens` printed without spaces, so that `> >` and `>>` compare equal.
    fn squeeze(tokens: impl ToTokens) -> String {
        tokens.to_token_stream().to_string().replace(' ', "")
    }

    const HANDLER: &str = "
        /// Bills an order.
        #[inline]
        pub(crate) async fn bill(
            tx: &mut txmsg::Tx<'_, sqlx::Sqlite>,
            order: OrderPlaced,
            envelope: &txmsg::Envelope,
        ) -> Result<(), BillingError> {
            Ok(())
        }";

    #[test]
    fn keeps_the_function_as_written() {
        let func: ItemFn = syn::parse_str(HANDLER).unwrap();
        let file = expand_tokens(
            quote!(topic = "orders.placed", group = "billing"),
            func.to_token_stream(),
        );
        assert_eq!(
            file.items[0].to_token_stream().to_string(),
            func.to_token_stream().to_string()
        );
    }

    #[test]
    fn registers_the_handler() {
        let func: ItemFn = syn::parse_str(HANDLER).unwrap();
        let file = expand_tokens(
            quote!(topic = "orders.placed", group = "billing", max_attempts = 3),
            func.to_token_stream(),
        );
        let registration = squeeze(registration(&file));
        for expected in [
            quote!(fn __txmsg_adapter<'t>(
                __txmsg_tx: &'t mut ::txmsg::__private::Tx<'static, sqlx::Sqlite>,
                __txmsg_message: OrderPlaced,
                __txmsg_envelope: &'t ::txmsg::__private::Envelope,
                _: &'t ::txmsg::__private::States,
            ) -> ::txmsg::__private::Option<::txmsg::__private::BoxFuture<'t, ::txmsg::__private::Result<(), BillingError>>>),
            quote!(::txmsg::__private::Some(::txmsg::__private::Box::pin(
                bill(__txmsg_tx, __txmsg_message, __txmsg_envelope)
            ))),
            quote!(__txmsg_run::<OrderPlaced, BillingError>(
                __txmsg_ctx,
                __txmsg_envelope,
                __txmsg_replay,
                __txmsg_adapter,
            )),
            quote!(where
                __TxmsgMessage: ::txmsg::__private::HandlerMessage + ::txmsg::__private::Send + 'static,
                __TxmsgError: ::txmsg::__private::HandlerError + 'static,
            ),
            quote!(
                ::txmsg::__private::run_handler::<sqlx::Sqlite, __TxmsgMessage, __TxmsgError, _>
            ),
            quote!(::txmsg::__private::inventory::submit!),
            quote!(topic: "orders.placed", group: "billing", max_attempts: 3,),
            quote!(name: ::txmsg::__private::concat!(::txmsg::__private::module_path!(), "::", "bill"),),
            quote!(database: ::txmsg::__private::type_name::<sqlx::Sqlite>,),
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
    fn without_the_envelope_the_adapter_ignores_it() {
        let file = expand_tokens(
            quote!(topic = "a", group = "b"),
            quote!(
                async fn f(tx: &mut Tx<'_, Db>, m: M) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let registration = squeeze(registration(&file));
        assert!(registration.contains(&squeeze(quote!(_: &'t ::txmsg::__private::Envelope))));
        assert!(
            registration.contains(&squeeze(quote!(::txmsg::__private::Box::pin(f(
                __txmsg_tx,
                __txmsg_message
            )))))
        );
        assert!(registration.contains("max_attempts:5,"), "{registration}");
    }

    #[test]
    fn states_are_passed_in_the_order_written() {
        let file = expand_tokens(
            quote!(topic = "a", group = "b"),
            quote!(
                async fn f(
                    tx: &mut Tx<'_, Db>,
                    m: M,
                    a: State<A>,
                    e: &Envelope,
                    b: State<B>,
                ) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let registration = squeeze(registration(&file));
        for expected in [
            quote!(__txmsg_states: &'t ::txmsg::__private::States,),
            quote!(let __txmsg_state_0 = ::txmsg::__private::state::<A>(__txmsg_states)?;),
            quote!(let __txmsg_state_1 = ::txmsg::__private::state::<B>(__txmsg_states)?;),
            quote!(f(
                __txmsg_tx,
                __txmsg_message,
                __txmsg_state_0,
                __txmsg_envelope,
                __txmsg_state_1
            )),
            quote!(states: &[
                ::txmsg::__private::StateType {
                    id: ::txmsg::__private::TypeId::of::<A>,
                    name: ::txmsg::__private::type_name::<A>,
                },
                ::txmsg::__private::StateType {
                    id: ::txmsg::__private::TypeId::of::<B>,
                    name: ::txmsg::__private::type_name::<B>,
                }
            ],),
        ] {
            let expected = squeeze(expected);
            assert!(
                registration.contains(&expected),
                "{expected}\nin\n{registration}"
            );
        }
    }

    #[test]
    fn cfg_attributes_apply_to_the_registration() {
        let file = expand_tokens(
            quote!(topic = "a", group = "b"),
            quote! {
                #[cfg(feature = "billing")]
                #[deprecated]
                #[doc = "x"]
                async fn f(tx: &mut Tx<'_, Db>, m: M) -> Result<(), E> {
                    #![allow(unused)]
                    Ok(())
                }
            },
        );
        let attrs: Vec<_> = registration(&file)
            .attrs
            .iter()
            .map(|a| a.to_token_stream().to_string())
            .collect();
        assert_eq!(
            attrs,
            [
                quote!(#[cfg(feature = "billing")]).to_string(),
                quote!(#[allow(deprecated)]).to_string()
            ]
        );
    }

    #[test]
    fn raw_names_are_registered_without_the_prefix() {
        let file = expand_tokens(
            quote!(topic = "a", group = "b"),
            quote!(
                async fn r#match(tx: &mut Tx<'_, Db>, m: M) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let registration = squeeze(registration(&file));
        assert!(registration.contains(r#""::","match""#), "{registration}");
        assert!(registration.contains("Box::pin(r#match("), "{registration}");
    }

    #[test]
    fn a_renamed_crate_is_used_everywhere() {
        let file = expand_tokens(
            quote!(topic = "a", group = "b", crate = "::my_txmsg"),
            quote!(
                async fn f(tx: &mut Tx<'_, Db>, m: M, e: &Envelope) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let all = idents(&file.to_token_stream());
        assert!(!all.iter().any(|i| i == "txmsg"));
        assert!(all.iter().any(|i| i == "my_txmsg"));
    }
}
