//! Code generation for a checked [`Producer`]. Nothing here can fail.
//!
//! Two items are emitted. For a producer that joins the caller's
//! transaction: the user's function with a body that runs the original body
//! and then enqueues the message in that transaction, and
//! `{name}_and_commit`, which runs it in a transaction of its own. For a half
//! producer: the user's function unchanged, and `{name}_and_commit`, which
//! stores the message prepared, runs the function, and commits or rolls the
//! message back.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{
    AttrStyle, Attribute, FnArg, GenericParam, Generics, Ident, Lifetime, Pat, Signature, Token,
    Type, WherePredicate,
};

use super::args::{Half, Ttl};
use super::sig;
use super::{Mode, Producer};

/// The user's function and its `_and_commit` companion.
pub(crate) fn expand(p: &Producer<'_>) -> TokenStream {
    let (producer, and_commit) = match &p.mode {
        Mode::Tx { tx, db } => (producer_fn(p, tx), and_commit_fn(p, db)),
        Mode::Half(half) => (p.func.to_token_stream(), half_and_commit_fn(p, half)),
    };
    quote! {
        #producer
        #and_commit
    }
}

/// The user's function: attributes, visibility and signature as written; the
/// body runs the original block, then writes the message.
///
/// The block runs as an `async move` block, so that the function's future is
/// `Send` whenever the parameters are, as without the macro (a block that
/// borrowed them would need them `Sync`). The transaction parameter is moved
/// to `__txmsg_tx` first, and the block gets a reborrow under the parameter's
/// name: moving that into the block leaves the transaction usable afterwards.
/// `typed` fixes the block's output type, so `?` inside it converts errors
/// into `E`, and `return` returns from the block.
fn producer_fn(p: &Producer<'_>, tx: &Ident) -> TokenStream {
    let func = p.func;
    let outer = func
        .attrs
        .iter()
        .filter(|attr| matches!(attr.style, AttrStyle::Outer));
    let inner = func
        .attrs
        .iter()
        .filter(|attr| matches!(attr.style, AttrStyle::Inner(_)));
    let vis = &func.vis;
    let (sig, tx_mut) = signature(p);
    let block = &func.block;
    let private = private_path(p, Span::call_site());
    let payload = p.payload;
    let error = p.error;
    let topic = &p.args.topic;
    let Keys {
        eval: keys,
        set: set_keys,
    } = keys(p);
    let new_message = new_message(p);
    let from_error = from_error(p);

    quote! {
        #(#outer)*
        #vis #sig {
            #(#inner)*
            #keys
            let __txmsg_tx = #tx;
            let #tx_mut #tx = &mut *__txmsg_tx;
            let __txmsg_result = #private::typed::<#private::Result<#payload, #error>, _>(
                async move #block
            )
            .await;
            match __txmsg_result {
                #private::Ok(__txmsg_payload) => {
                    let __txmsg_enqueued = match #new_message(&__txmsg_payload, #topic) {
                        #private::Ok(__txmsg_message) => {
                            #set_keys
                            #private::Tx::enqueue(&mut *__txmsg_tx, __txmsg_message).await
                        }
                        #private::Err(__txmsg_error) => #private::Err(__txmsg_error),
                    };
                    match __txmsg_enqueued {
                        #private::Ok(_) => #private::Ok(__txmsg_payload),
                        #private::Err(__txmsg_error) => #private::Err(#from_error(__txmsg_error)),
                    }
                }
                #private::Err(__txmsg_error) => #private::Err(__txmsg_error),
            }
        }
    }
}

/// The signature as written, but for a `mut` on the transaction parameter,
/// which goes to the reborrow the body sees (see [`producer_fn`]).
fn signature(p: &Producer<'_>) -> (Signature, Option<Token![mut]>) {
    let mut sig = p.func.sig.clone();
    let mut tx_mut = None;
    // Validation made the first parameter the transaction, bound to a name.
    if let Some(FnArg::Typed(arg)) = sig.inputs.first_mut()
        && let Pat::Ident(pat) = &mut *arg.pat
    {
        tx_mut = pat.mutability.take();
    }
    (sig, tx_mut)
}

/// `{name}_and_commit`: begins a transaction, calls the user's function,
/// commits on `Ok` and rolls back on `Err`.
fn and_commit_fn(p: &Producer<'_>, db: &Type) -> TokenStream {
    let func = p.func;
    let name = &func.sig.ident;
    let and_commit = and_commit_name(p);
    let attrs = func.attrs.iter().filter(|attr| kept_on_and_commit(attr));
    let vis = &func.vis;
    let generics = and_commit_generics(p);
    let where_clause = &generics.where_clause;
    let output = &func.sig.output;
    let private = private_path(p, Span::call_site());
    let from_error = from_error(p);
    let Forwarded {
        params,
        names: forwarded,
        outbox,
    } = forwarded(p);

    let doc = format!(
        " Runs `{name}` in a transaction of its own: begins it on `{outbox}`, commits it if \
         `{name}` returns `Ok` (handing the message to the outbox's relay, if it has one) and \
         rolls it back if it returns `Err`."
    );
    let doc_origin = " Generated by `#[transactional_message]`.";

    quote! {
        #(#attrs)*
        #[doc = #doc]
        #[doc = ""]
        #[doc = #doc_origin]
        #[allow(dead_code)]
        #vis async fn #and_commit #generics (
            #outbox: &#private::Outbox<#db>,
            #(#params),*
        ) #output #where_clause {
            let mut __txmsg_tx = match #private::Outbox::begin(#outbox).await {
                #private::Ok(__txmsg_tx) => __txmsg_tx,
                #private::Err(__txmsg_error) => return #private::Err(#from_error(__txmsg_error)),
            };
            match #name(&mut __txmsg_tx, #(#forwarded),*).await {
                #private::Ok(__txmsg_payload) => match #private::Tx::commit(__txmsg_tx).await {
                    #private::Ok(()) => #private::Ok(__txmsg_payload),
                    #private::Err(__txmsg_error) => #private::Err(#from_error(__txmsg_error)),
                },
                #private::Err(__txmsg_error) => {
                    // Dropping the transaction rolls it back too; rolling back
                    // here returns the connection to the pool at once. The
                    // function's error matters more than a failed rollback.
                    let _ = #private::Tx::rollback(__txmsg_tx).await;
                    #private::Err(__txmsg_error)
                }
            }
        }
    }
}

/// `{name}_and_commit` of a half producer: stores the message prepared,
/// calls the user's function, commits the message on `Ok` and rolls it back
/// on `Err`. Generic over the keeper of the half message (a store's
/// `HalfOutbox`, a broker's half producer), which nothing else in the
/// signature names.
fn half_and_commit_fn(p: &Producer<'_>, half: &Half) -> TokenStream {
    let func = p.func;
    let name = &func.sig.ident;
    let and_commit = and_commit_name(p);
    let attrs = func.attrs.iter().filter(|attr| kept_on_and_commit(attr));
    let vis = &func.vis;
    let generics = and_commit_generics(p);
    let private = private_path(p, Span::call_site());
    // The user's generic parameters (lifetimes only), then the keeper.
    let params = &generics.params;
    let comma = (!params.is_empty() && !params.trailing_punct()).then(|| quote!(,));
    let generics_with_db = quote!(<#params #comma __TxmsgHalf: #private::HalfProducer>);
    let where_clause = &generics.where_clause;
    let output = &func.sig.output;
    let topic = &p.args.topic;
    let from_error = from_error(p);
    let Forwarded {
        params,
        names: forwarded,
        outbox,
    } = forwarded(p);
    // Validation made the payload `&M` the first parameter.
    let payload_arg = forwarded.first();
    let Keys {
        eval: keys,
        set: set_keys,
    } = keys(p);
    let new_message = new_message(p);
    let check_after = half.check_after;

    // `check_back = path` takes this payload: `path` is also the name of a
    // type that `#[check_back]` declares, which implements
    // `CheckBackFor<M>` for the payload it takes. The call is spanned at
    // `path`, so a mismatch is reported there.
    let assert_check_back = half.check_back.as_ref().map(|path| {
        let span = path.span();
        let private = private_path(p, span);
        let payload = p.payload;
        quote_spanned!(span=> #private::assert_check_back::<#payload, #path>();)
    });

    let doc = format!(
        " Runs `{name}` as a half message: stores the message prepared on `{outbox}`, calls \
         `{name}`, then commits the message if it returned `Ok` and rolls it back if it \
         returned `Err`. If this future is dropped or panics in between, the message stays \
         prepared and the topic's check-back decides."
    );
    let doc_origin = " Generated by `#[transactional_message(half)]`.";

    quote! {
        #(#attrs)*
        #[doc = #doc]
        #[doc = ""]
        #[doc = #doc_origin]
        #[allow(dead_code)]
        #vis async fn #and_commit #generics_with_db (
            #outbox: &__TxmsgHalf,
            #(#params),*
        ) #output #where_clause {
            #assert_check_back
            #keys
            let __txmsg_prepared = match #new_message(#payload_arg, #topic) {
                #private::Ok(__txmsg_message) => {
                    #set_keys
                    #private::HalfProducer::prepare(
                        #outbox,
                        __txmsg_message,
                        #private::Duration::from_millis(#check_after),
                    )
                    .await
                }
                #private::Err(__txmsg_error) => #private::Err(__txmsg_error),
            };
            let __txmsg_prepared = match __txmsg_prepared {
                #private::Ok(__txmsg_prepared) => __txmsg_prepared,
                #private::Err(__txmsg_error) => return #private::Err(#from_error(__txmsg_error)),
            };
            match #name(#(#forwarded),*).await {
                #private::Ok(__txmsg_value) => {
                    match #private::HalfMessage::commit(__txmsg_prepared).await {
                        #private::Ok(()) => #private::Ok(__txmsg_value),
                        #private::Err(__txmsg_error) => {
                            #private::Err(#from_error(__txmsg_error))
                        }
                    }
                }
                #private::Err(__txmsg_error) => {
                    // The function's error matters more than a failed
                    // rollback, which leaves the message to its check-back.
                    // But if the check-back committed the message first, it
                    // will be delivered: the caller is told so instead.
                    let __txmsg_id = #private::HalfMessage::id(&__txmsg_prepared);
                    let __txmsg_topic = #private::String::from(#private::HalfMessage::topic(&__txmsg_prepared));
                    match #private::HalfMessage::rollback(__txmsg_prepared).await {
                        #private::Ok(#private::ResolveOutcome::AlreadyCommitted) => #private::Err(#from_error(
                            #private::Error::CommittedByCheckBack {
                                id: __txmsg_id,
                                topic: __txmsg_topic,
                            },
                        )),
                        _ => #private::Err(__txmsg_error),
                    }
                }
            }
        }
    }
}

/// `{name}_and_commit`, at the function's name.
fn and_commit_name(p: &Producer<'_>) -> Ident {
    let name = &p.func.sig.ident;
    format_ident!("{}_and_commit", name.unraw(), span = name.span())
}

/// The parameters of `_and_commit` and the names it forwards them by.
struct Forwarded {
    /// `name: Type`, for the signature.
    params: Vec<TokenStream>,
    /// The names, for the call.
    names: Vec<Ident>,
    /// The name of the outbox parameter, unlike any of them.
    outbox: Ident,
}

/// Parameters are forwarded by name. Patterns that bind no single name
/// (`(a, b): (u8, u8)`, `_: u8`) get one, and so does a parameter named like
/// the function, which would hide it.
fn forwarded(p: &Producer<'_>) -> Forwarded {
    let name = &p.func.sig.ident;
    let (params, names): (Vec<_>, Vec<_>) = p
        .params
        .iter()
        .enumerate()
        .map(|(i, param)| {
            let ty = &param.ty;
            let name = match sig::binding(&param.pat) {
                Some(binding) if binding != name => binding.clone(),
                _ => format_ident!("__txmsg_arg{}", i, span = param.pat.span()),
            };
            (quote!(#name: #ty), name)
        })
        .unzip();
    let outbox = if names.iter().any(|name| name == "outbox") {
        format_ident!("__txmsg_outbox")
    } else {
        format_ident!("outbox")
    };
    Forwarded {
        params,
        names,
        outbox,
    }
}

/// The message's keys and time to live.
struct Keys {
    /// Statements that evaluate the keys into `String`s, and a `ttl`
    /// expression into an `Option<Duration>`: before the body, which may
    /// move the parameters they use.
    eval: TokenStream,
    /// Statements that set them on `__txmsg_message`.
    set: TokenStream,
}

fn keys(p: &Producer<'_>) -> Keys {
    let private = private_path(p, Span::call_site());
    let key = p.args.key.as_ref().map(|expr| {
        let to_key = to_key(p, expr);
        quote!(let __txmsg_key: #private::String = #to_key;)
    });
    let idempotency_key = p.args.idempotency_key.as_ref().map(|expr| {
        let to_key = to_key(p, expr);
        quote!(let __txmsg_idempotency_key: #private::String = #to_key;)
    });
    let set_key = key.as_ref().map(|_| quote!(.key(__txmsg_key)));
    let set_idempotency_key = idempotency_key
        .as_ref()
        .map(|_| quote!(.idempotency_key(__txmsg_idempotency_key)));
    let (ttl, set_ttl, with_ttl) = match &p.args.ttl {
        None => (None, None, None),
        Some(Ttl::Millis(millis)) => (
            None,
            Some(quote!(.ttl(#private::Duration::from_millis(#millis)))),
            None,
        ),
        Some(Ttl::Expr(expr)) => {
            let into_ttl = into_ttl(p, expr);
            (
                Some(quote! {
                    let __txmsg_ttl: #private::Option<#private::Duration> = #into_ttl;
                }),
                None,
                Some(quote! {
                    let __txmsg_message = #private::with_ttl(__txmsg_message, __txmsg_ttl);
                }),
            )
        }
    };
    Keys {
        eval: quote!(#key #idempotency_key #ttl),
        set: quote! {
            let __txmsg_message = __txmsg_message #set_key #set_idempotency_key #set_ttl;
            #with_ttl
        },
    }
}

/// `Message::new(topic, &payload)` through the `Payload` trait, spanned at
/// `M`: a payload that is not `Serialize` is reported there, once.
fn new_message(p: &Producer<'_>) -> TokenStream {
    let payload = p.payload;
    let span = payload.span();
    let private = private_path(p, span);
    quote_spanned!(span=> <#payload as #private::Payload>::to_message)
}

/// The user's generics without the lifetimes only the transaction parameter
/// used: `_and_commit` has no such parameter, and an unused lifetime would
/// trip `unused_lifetimes`. Bounds and `where` predicates naming a dropped
/// lifetime go too; the call then infers it as the local borrow.
fn and_commit_generics(p: &Producer<'_>) -> Generics {
    let mut used = Lifetimes::default();
    for param in &p.params {
        used.visit_type(&param.ty);
    }
    used.visit_return_type(&p.func.sig.output);
    let kept = |lifetime: &Lifetime| {
        lifetime.ident == "static" || lifetime.ident == "_" || used.0.contains(&lifetime.ident)
    };

    let mut generics = p.func.sig.generics.clone();
    generics.params = generics
        .params
        .into_iter()
        .filter_map(|param| match param {
            GenericParam::Lifetime(mut def) => {
                def.bounds = def.bounds.into_iter().filter(kept).collect();
                kept(&def.lifetime).then_some(GenericParam::Lifetime(def))
            }
            other => Some(other),
        })
        .collect();
    if let Some(where_clause) = &mut generics.where_clause {
        where_clause.predicates = std::mem::take(&mut where_clause.predicates)
            .into_iter()
            .filter_map(|predicate| match predicate {
                WherePredicate::Lifetime(mut predicate) => {
                    predicate.bounds = predicate.bounds.into_iter().filter(kept).collect();
                    (kept(&predicate.lifetime) && !predicate.bounds.is_empty())
                        .then_some(WherePredicate::Lifetime(predicate))
                }
                other => {
                    let mut named = Lifetimes::default();
                    named.visit_where_predicate(&other);
                    named
                        .0
                        .iter()
                        .all(|ident| used.0.contains(ident))
                        .then_some(other)
                }
            })
            .collect();
    }
    generics
}

/// The lifetimes a piece of syntax names.
#[derive(Default)]
struct Lifetimes(Vec<proc_macro2::Ident>);

impl Visit<'_> for Lifetimes {
    fn visit_lifetime(&mut self, lifetime: &Lifetime) {
        if lifetime.ident != "static" && lifetime.ident != "_" {
            self.0.push(lifetime.ident.clone());
        }
    }
}

/// Attributes of the user's function that also apply to `_and_commit`: it
/// must exist under the same `cfg`, and allowed lints stay allowed.
fn kept_on_and_commit(attr: &Attribute) -> bool {
    matches!(attr.style, AttrStyle::Outer)
        && ["cfg", "allow", "deprecated"]
            .iter()
            .any(|name| attr.path().is_ident(name))
}

/// `<E as From<txmsg::Error>>::from`, spanned at `E` so that an error type
/// without that conversion is reported there.
fn from_error(p: &Producer<'_>) -> TokenStream {
    let error = p.error;
    let span = error.span();
    let private = private_path(p, span);
    quote_spanned!(span=> <#error as #private::From<#private::Error>>::from)
}

/// `Key::to_key(&(expr))`, the expression's value as a `String` through
/// `Display`, spanned at the expression so that a key that is not `Display`
/// is reported there.
fn to_key(p: &Producer<'_>, expr: &syn::Expr) -> TokenStream {
    let span = expr.span();
    let private = private_path(p, span);
    quote_spanned!(span=> #private::Key::to_key(&(#expr)))
}

/// `IntoTtl::into_ttl(expr)`, the expression's value as an
/// `Option<Duration>`, spanned at the expression so that a value of another
/// type is reported there.
fn into_ttl(p: &Producer<'_>, expr: &syn::Expr) -> TokenStream {
    let span = expr.span();
    let private = private_path(p, span);
    quote_spanned!(span=> #private::IntoTtl::into_ttl(#expr))
}

/// The path of the runtime's hidden module, with every token at `span`.
fn private_path(p: &Producer<'_>, span: Span) -> TokenStream {
    crate::common::expand::private_path(p.args.krate.as_ref(), span)
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenTree;
    use quote::{ToTokens, quote};
    use syn::ItemFn;

    use super::*;

    use crate::common::sig::Sig;
    use crate::producer::{args, valid};

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

    fn expand_str(args: TokenStream, func: TokenStream) -> syn::File {
        let func: ItemFn = syn::parse2(func).unwrap();
        let sig = Sig::new(&func);
        let producer = valid::check(args::parse(args), &sig).unwrap_or_else(|e| panic!("{e}"));
        syn::parse2(expand(&producer)).unwrap()
    }

    fn item_fn(file: &syn::File, i: usize) -> &ItemFn {
        match &file.items[i] {
            syn::Item::Fn(func) => func,
            other => panic!("expected a fn, got {}", other.to_token_stream()),
        }
    }

    #[test]
    fn keeps_the_signature_and_adds_and_commit() {
        let file = expand_str(
            quote!(topic = "orders.placed", key = id, ttl = "30s"),
            quote! {
                /// Places an order.
                #[inline]
                pub(crate) async fn place<'a>(
                    mut tx: &mut txmsg::Tx<'_, sqlx::Sqlite>,
                    id: i64,
                    note: &'a str,
                ) -> Result<Order, MyError> {
                    Ok(Order { id })
                }
            },
        );
        let user = item_fn(&file, 0);
        assert_eq!(user.attrs.len(), 2);
        // As written, but for the `mut` of the transaction, which goes to the
        // reborrow the body sees.
        assert_eq!(
            user.sig.to_token_stream().to_string(),
            quote! {
                async fn place<'a>(
                    tx: &mut txmsg::Tx<'_, sqlx::Sqlite>,
                    id: i64,
                    note: &'a str,
                ) -> Result<Order, MyError>
            }
            .to_string()
        );
        let body = user.block.to_token_stream().to_string();
        assert!(body.contains("let __txmsg_tx = tx ; let mut tx = & mut * __txmsg_tx ;"));
        assert!(body.contains("async move { Ok (Order { id }) }"), "{body}");
        assert!(
            body.contains("enqueue (& mut * __txmsg_tx , __txmsg_message)"),
            "{body}"
        );
        assert!(
            body.contains(":: txmsg :: __private :: Key :: to_key (& (id))"),
            "{body}"
        );
        assert!(body.contains("from_millis (30000u64)"), "{body}");
        assert!(
            body.contains("< Order as :: txmsg :: __private :: Payload > :: to_message"),
            "{body}"
        );
        assert!(body.contains("\"orders.placed\""), "{body}");

        let and_commit = item_fn(&file, 1);
        assert_eq!(and_commit.sig.ident, "place_and_commit");
        assert!(and_commit.sig.asyncness.is_some());
        assert_eq!(and_commit.vis.to_token_stream().to_string(), "pub (crate)");
        assert_eq!(
            and_commit.sig.inputs.to_token_stream().to_string(),
            quote!(outbox: &::txmsg::__private::Outbox<sqlx::Sqlite>, id: i64, note: &'a str)
                .to_string()
        );
        assert_eq!(and_commit.sig.generics.params.len(), 1);
        let docs = and_commit
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .count();
        assert_eq!(docs, 3);
        assert!(!and_commit.attrs.iter().any(|a| a.path().is_ident("inline")));
    }

    #[test]
    fn forwards_parameters_without_a_name() {
        let file = expand_str(
            quote!(topic = "a"),
            quote! {
                async fn f(
                    tx: &mut Tx<'_, Db>,
                    (a, b): (u8, u8),
                    _: u8,
                    mut c: u8,
                    outbox: u8,
                    f: u8,
                ) -> Result<(), E> { Ok(()) }
            },
        );
        let and_commit = item_fn(&file, 1);
        assert_eq!(
            and_commit.sig.inputs.to_token_stream().to_string(),
            quote! {
                __txmsg_outbox: &::txmsg::__private::Outbox<Db>,
                __txmsg_arg0: (u8, u8),
                __txmsg_arg1: u8,
                c: u8,
                outbox: u8,
                __txmsg_arg4: u8
            }
            .to_string()
        );
        let body = and_commit.block.to_token_stream().to_string();
        let call = "f (& mut __txmsg_tx , __txmsg_arg0 , __txmsg_arg1 , c , outbox , __txmsg_arg4)";
        assert!(body.contains(call), "{body}");
    }

    #[test]
    fn without_keys_or_ttl_the_message_is_plain() {
        let file = expand_str(
            quote!(topic = "a"),
            quote!(
                async fn f(tx: &mut Tx<'_, Db>) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let body = item_fn(&file, 0).block.to_token_stream().to_string();
        assert!(!body.contains("__txmsg_key"));
        assert!(!body.contains("ttl"));
    }

    #[test]
    fn a_ttl_expression_is_evaluated_before_the_body() {
        let eval = squeeze(quote! {
            let __txmsg_ttl: ::txmsg::__private::Option<::txmsg::__private::Duration> =
                ::txmsg::__private::IntoTtl::into_ttl(ttl);
        });
        let set = squeeze(quote! {
            let __txmsg_message = ::txmsg::__private::with_ttl(__txmsg_message, __txmsg_ttl);
        });
        let file = expand_str(
            quote!(topic = "a", ttl = ttl),
            quote!(
                async fn f(tx: &mut Tx<'_, Db>, ttl: Option<Duration>) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let body = squeeze(&item_fn(&file, 0).block);
        let (eval_at, body_at, set_at) =
            (body.find(&eval), body.find("asyncmove"), body.find(&set));
        assert!(eval_at.is_some() && set_at.is_some(), "{body}");
        assert!(eval_at < body_at && body_at < set_at, "{body}");
        assert!(!body.contains(".ttl("), "{body}");

        let file = expand_str(
            quote!(topic = "a", half, ttl = ttl),
            quote!(
                async fn f(m: &M, ttl: Duration) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let body = squeeze(&item_fn(&file, 1).block);
        let (eval_at, set_at, prepare_at) = (
            body.find(&eval),
            body.find(&set),
            body.find("HalfProducer::prepare"),
        );
        assert!(eval_at.is_some() && set_at.is_some(), "{body}");
        assert!(eval_at < set_at && set_at < prepare_at, "{body}");
    }

    #[test]
    fn a_renamed_crate_is_used_everywhere() {
        let file = expand_str(
            quote!(topic = "a", key = 1, crate = "::my_txmsg"),
            quote!(
                async fn f(tx: &mut Tx<'_, Db>) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let all = file.to_token_stream();
        let all_idents = idents(&all);
        assert!(!all_idents.iter().any(|i| i == "txmsg"));
        assert!(all_idents.iter().any(|i| i == "my_txmsg"));
    }

    #[test]
    fn raw_names_get_a_valid_companion() {
        let file = expand_str(
            quote!(topic = "a"),
            quote!(
                async fn r#move(tx: &mut Tx<'_, Db>) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        assert_eq!(item_fn(&file, 1).sig.ident, "move_and_commit");
    }

    #[test]
    fn inner_attributes_stay_in_the_body() {
        let file = expand_str(
            quote!(topic = "a"),
            quote! {
                #[cfg(test)]
                #[allow(unused)]
                #[doc = "x"]
                async fn f(tx: &mut Tx<'_, Db>) -> Result<(), E> {
                    #![allow(clippy::all)]
                    Ok(())
                }
            },
        );
        let user = item_fn(&file, 0);
        assert_eq!(user.attrs.len(), 4, "3 outer + 1 inner");
        let and_commit = item_fn(&file, 1);
        let kept: Vec<_> = and_commit
            .attrs
            .iter()
            .map(|a| a.path().to_token_stream().to_string())
            .filter(|p| p != "doc")
            .collect();
        assert_eq!(kept, ["cfg", "allow", "allow"]);
    }

    #[test]
    fn and_commit_keeps_only_the_lifetimes_it_uses() {
        let file = expand_str(
            quote!(topic = "a"),
            quote! {
                async fn f<'a: 'b + 'static, 'b, 'c>(tx: &'b mut Tx<'c, Db>, s: &'a str)
                    -> Result<M<'a>, E>
                where
                    'a: 'b,
                    'static: 'a,
                    &'b (): Sized,
                    &'a (): Sized,
                { loop {} }
            },
        );
        let generics = &item_fn(&file, 1).sig.generics;
        assert_eq!(
            generics.to_token_stream().to_string(),
            quote!(<'a: 'static>).to_string()
        );
        assert_eq!(
            generics.where_clause.to_token_stream().to_string(),
            quote!(where 'static: 'a, &'a (): Sized).to_string()
        );

        let file = expand_str(
            quote!(topic = "a"),
            quote! {
                async fn f<'t>(tx: &mut Tx<'t, Db>) -> Result<(), E> where 't: 't { loop {} }
            },
        );
        let sig = &item_fn(&file, 1).sig;
        assert!(sig.generics.params.is_empty());
        let printed = item_fn(&file, 1).sig.to_token_stream().to_string();
        assert!(!printed.contains("where"), "{printed}");
        assert!(
            !printed.contains('<') || !printed.contains("'t"),
            "{printed}"
        );
    }

    fn squeeze(tokens: impl ToTokens) -> String {
        tokens.to_token_stream().to_string().replace(' ', "")
    }

    const HALF: &str = "
        /// Charges a card.
        pub(crate) async fn charge<'a>(
            payment: &'a Payment,
            card: &'a str,
            (a, b): (u8, u8),
        ) -> Result<Receipt, PayError> {
            Ok(Receipt)
        }";

    #[test]
    fn half_keeps_the_function_as_written() {
        let func: ItemFn = syn::parse_str(HALF).unwrap();
        let file = expand_str(
            quote!(topic = "payments.requested", half),
            func.to_token_stream(),
        );
        assert_eq!(file.items.len(), 2);
        assert_eq!(
            item_fn(&file, 0).to_token_stream().to_string(),
            func.to_token_stream().to_string()
        );
    }

    #[test]
    fn half_and_commit_prepares_calls_and_resolves() {
        let func: ItemFn = syn::parse_str(HALF).unwrap();
        let file = expand_str(
            quote!(
                topic = "payments.requested",
                half,
                check_back = checks::payment_state,
                key = payment.id,
                ttl = "1h",
            ),
            func.to_token_stream(),
        );
        let and_commit = item_fn(&file, 1);
        assert_eq!(and_commit.sig.ident, "charge_and_commit");
        assert_eq!(and_commit.vis.to_token_stream().to_string(), "pub (crate)");
        assert_eq!(
            squeeze(&and_commit.sig),
            squeeze(quote! {
                async fn charge_and_commit<'a, __TxmsgHalf: ::txmsg::__private::HalfProducer>(
                    outbox: &__TxmsgHalf,
                    payment: &'a Payment,
                    card: &'a str,
                    __txmsg_arg2: (u8, u8)
                ) -> Result<Receipt, PayError>
            })
        );
        let body = squeeze(&and_commit.block);
        let mut at = 0;
        // In this order.
        for expected in [
            quote!(::txmsg::__private::assert_check_back::<Payment, checks::payment_state>();),
            quote!(let __txmsg_key: ::txmsg::__private::String =
                ::txmsg::__private::Key::to_key(&(payment.id));),
            quote!(<Payment as ::txmsg::__private::Payload>::to_message(
                payment,
                "payments.requested"
            )),
            quote!(.key(__txmsg_key).ttl(::txmsg::__private::Duration::from_millis(3600000u64))),
            quote!(::txmsg::__private::HalfProducer::prepare(
                outbox,
                __txmsg_message,
                ::txmsg::__private::Duration::from_millis(6000u64),
            )),
            quote!(charge(payment, card, __txmsg_arg2).await),
            quote!(::txmsg::__private::HalfMessage::commit(__txmsg_prepared).await),
            quote!(<PayError as ::txmsg::__private::From<::txmsg::__private::Error>>::from),
            quote!(::txmsg::__private::HalfMessage::rollback(__txmsg_prepared).await),
        ] {
            let expected = squeeze(expected);
            let found = body[at..].find(&expected);
            assert!(found.is_some(), "{expected}\nafter {at} in\n{body}");
            at += found.unwrap_or(0);
        }
    }

    #[test]
    fn half_without_check_back_asserts_nothing() {
        let file = expand_str(
            quote!(topic = "a", half, check_after = "500ms"),
            quote!(
                async fn f(m: &M) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let body = squeeze(&item_fn(&file, 1).block);
        assert!(!body.contains("assert_check_back"), "{body}");
        assert!(body.contains("from_millis(500u64)"), "{body}");
    }

    #[test]
    fn half_with_a_renamed_crate() {
        let file = expand_str(
            quote!(topic = "a", half, check_back = c, crate = "my_txmsg"),
            quote!(
                async fn f(m: &M) -> Result<(), E> {
                    Ok(())
                }
            ),
        );
        let all_idents = idents(&file.to_token_stream());
        assert!(!all_idents.iter().any(|i| i == "txmsg"));
        assert!(all_idents.iter().any(|i| i == "my_txmsg"));
    }
}
