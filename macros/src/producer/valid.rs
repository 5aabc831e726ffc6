//! Every check `#[transactional_message]` makes before generating code.
//!
//! All problems are collected and reported together, each at the token that
//! is wrong. Checks that need the type checker (the payload is `Serialize`,
//! the error is `From<txmsg::Error>`) are left to rustc through spanned
//! bounds in the expansion.

use syn::{Error, Expr, ExprLit, ExprPath, Ident, Lit, PatType, Path, PathArguments, Type};

use super::args::{self, ATTR, Args, DEFAULT_CHECK_AFTER_MILLIS, Half, Ttl};
use super::sig;
use super::{Mode, Producer};
use crate::common::args::RawArg;
use crate::common::sig::{Input, Sig, peel};
use crate::common::types::first_impl_trait;
use crate::common::valid::{
    check_crate, check_qualifiers, check_result, check_topic, known_args, missing, string_literal,
    type_to_string,
};
use crate::diag::{Errors, join};

/// What a `self` receiver stands in place of, for its message.
const TX_FIRST: &str = "whose first parameter is `&mut txmsg::Tx<'_, DB>`";
/// The same, for half producers.
const PAYLOAD_FIRST: &str = "whose first parameter is the payload `&M`";

/// Checks the arguments and the function, and returns what the expansion
/// needs, or every error found.
///
/// The function's shape depends on `half`: when the arguments cannot be
/// read at all, it is checked as a producer without `half`.
pub(crate) fn check<'a>(raw: syn::Result<Vec<RawArg>>, sig: &Sig<'a>) -> syn::Result<Producer<'a>> {
    let half = raw
        .as_ref()
        .is_ok_and(|raw| raw.iter().any(|arg| arg.name.is_ident("half")));
    let args = raw.and_then(check_args);
    let shape = if half {
        check_half_shape(sig)
    } else {
        check_tx_shape(sig)
    };
    let (mut args, (tx, params, payload, error)) = join(args, shape)?;
    let mode = match tx {
        Some((tx, db)) => Mode::Tx { tx, db },
        None => Mode::Half(args.half.take().unwrap_or_default()),
    };
    Ok(Producer {
        func: sig.func,
        args,
        mode,
        params,
        payload,
        error,
    })
}

/// What the shape checks find: the transaction's name and database type
/// (none for a half producer), the parameters `_and_commit` forwards, the
/// payload type and the error type.
type Shape<'a> = (
    Option<(&'a Ident, &'a Type)>,
    Vec<&'a PatType>,
    &'a Type,
    &'a Type,
);

/// A producer that joins the caller's transaction:
/// `async fn(tx: &mut Tx<'_, DB>, ..) -> Result<M, E>`.
fn check_tx_shape<'a>(sig: &Sig<'a>) -> syn::Result<Shape<'a>> {
    let shape = join(
        check_qualifiers(sig, &ATTR, TX_FIRST),
        join(check_tx(sig), check_output(sig)),
    );
    let ((), ((tx, db, params), (payload, error))) = shape?;
    Ok((Some((tx, db)), params, payload, error))
}

/// A half producer: `async fn(msg: &M, ..) -> Result<T, E>`.
fn check_half_shape<'a>(sig: &Sig<'a>) -> syn::Result<Shape<'a>> {
    let shape = join(
        check_qualifiers(sig, &ATTR, PAYLOAD_FIRST),
        join(check_half_params(sig), check_half_output(sig)),
    );
    let ((), ((payload, params), error)) = shape?;
    Ok((None, params, payload, error))
}

/// Checks names and values of the attribute's arguments.
fn check_args(raw: Vec<RawArg>) -> syn::Result<Args> {
    let mut errors = Errors::default();
    let known = known_args(raw, &ATTR, &mut errors);
    let missing_topic = || missing("topic", &ATTR, "topic = \"orders.placed\"");
    let topic_written = known.written("topic");
    let is_half = known.name("half").is_some();
    for (key, example) in [
        ("check_back", "check_back = payment_state"),
        ("check_after", "check_after = \"10s\""),
    ] {
        if let Some(name) = known.name(key).filter(|_| !is_half) {
            errors.push(Error::new_spanned(
                name,
                format!(
                    "`{key}` requires `half` in `#[transactional_message]`: only half producers \
                     are checked back, as in `#[transactional_message(topic = \"...\", half, \
                     {example})]`"
                ),
            ));
        }
    }
    let mut topic = None;
    let mut key = None;
    let mut idempotency_key = None;
    let mut ttl = None;
    let mut check_back = None;
    let mut check_after = None;
    let mut krate = None;
    for (name, value) in known.args {
        let checked = match name.as_str() {
            "topic" => {
                check_topic(value, "topic", "\"orders.placed\"", &ATTR).map(|v| topic = Some(v))
            }
            "key" => {
                key = Some(value);
                Ok(())
            }
            "idempotency_key" => {
                idempotency_key = Some(value);
                Ok(())
            }
            "ttl" => check_ttl(value).map(|v| ttl = Some(v)),
            "check_back" => check_back_path(value).map(|v| check_back = Some(v)),
            "check_after" => {
                check_duration(value, "check_after", "\"10s\"").map(|v| check_after = Some(v))
            }
            _ => check_crate(value, &ATTR).map(|v| krate = Some(v)),
        };
        if let Err(error) = checked {
            errors.push(error);
        }
    }
    if !topic_written {
        errors.push(missing_topic());
    }
    errors.finish(())?;
    let topic = topic.ok_or_else(missing_topic)?;
    let half = is_half.then(|| Half {
        check_back,
        check_after: check_after.unwrap_or(DEFAULT_CHECK_AFTER_MILLIS),
    });
    Ok(Args {
        topic,
        key,
        idempotency_key,
        ttl,
        half,
        krate,
    })
}

/// `ttl`: a string literal is a duration checked here; anything else is an
/// expression whose type rustc checks (`Duration` or `Option<Duration>`).
fn check_ttl(value: Expr) -> syn::Result<Ttl> {
    if is_string_literal(&value) {
        check_duration(value, "ttl", "\"30m\"").map(Ttl::Millis)
    } else {
        Ok(Ttl::Expr(value))
    }
}

/// Whether `value` is a string literal (possibly in an invisible group).
fn is_string_literal(value: &Expr) -> bool {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(_), ..
        }) => true,
        Expr::Group(group) => is_string_literal(&group.expr),
        _ => false,
    }
}

/// A duration (`ttl`, `check_after`), in milliseconds.
fn check_duration(value: Expr, key: &str, example: &str) -> syn::Result<u64> {
    let lit = string_literal(value, key, example, &ATTR)?;
    let text = lit.value();
    args::parse_duration(&text).map_err(|reason| {
        Error::new(
            lit.span(),
            format!("invalid {key} `{text}` in `#[transactional_message]`: {reason}"),
        )
    })
}

/// `check_back = path`: a path without generic arguments.
fn check_back_path(value: Expr) -> syn::Result<Path> {
    match value {
        Expr::Path(ExprPath {
            attrs,
            qself: None,
            path,
        }) if attrs.is_empty()
            && path
                .segments
                .iter()
                .all(|segment| matches!(segment.arguments, PathArguments::None)) =>
        {
            Ok(path)
        }
        Expr::Group(group) => check_back_path(*group.expr),
        other => Err(Error::new_spanned(
            other,
            "expected the path of a `#[check_back]` function for `check_back` in \
             `#[transactional_message]`, as in `check_back = payment_state`",
        )),
    }
}

/// The transaction parameter (first, named, `&mut Tx<'_, DB>`) and the
/// parameters after it.
#[allow(clippy::type_complexity)]
fn check_tx<'a>(sig: &Sig<'a>) -> syn::Result<(&'a Ident, &'a Type, Vec<&'a PatType>)> {
    let (first, db, rest) = crate::common::valid::check_tx(sig, &ATTR)?;
    let Some(name) = sig::binding(&first.pat) else {
        return Err(Error::new_spanned(
            &first.pat,
            "expected a name for the transaction parameter of a `#[transactional_message]` \
             function, as in `tx: &mut txmsg::Tx<'_, DB>`",
        ));
    };
    Ok((name, db, rest))
}

/// The payload type `M` of a half producer's first parameter `&M`, and all
/// the parameters (the payload included), which `_and_commit` forwards.
fn check_half_params<'a>(sig: &Sig<'a>) -> syn::Result<(&'a Type, Vec<&'a PatType>)> {
    const EXPECTED: &str = "expected the payload `msg: &M` as the first parameter of a \
                            `#[transactional_message(half)]` function";
    let typed: Vec<_> = sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            Input::Typed { arg, tx } => Some((*arg, tx.is_some())),
            Input::Receiver(_) => None,
        })
        .collect();
    let Some((first, _)) = typed.first() else {
        return Err(Error::new(sig.func.sig.paren_token.span.join(), EXPECTED));
    };
    if let Some((tx, _)) = typed.iter().find(|(_, is_tx)| *is_tx) {
        return Err(Error::new_spanned(
            tx,
            "`#[transactional_message(half)]` functions do their local work outside the \
             store's transaction: take the payload `&M` as the first parameter, not a `Tx`",
        ));
    }
    let params = typed.iter().map(|(arg, _)| *arg).collect();
    let ty = &*first.ty;
    let by_reference = |elem: &Type| {
        Error::new_spanned(
            ty,
            format!(
                "the payload of a `#[transactional_message(half)]` function is stored before \
                 its body runs, take it by shared reference: expected `&{}` rather than `{}`",
                type_to_string(elem),
                type_to_string(ty)
            ),
        )
    };
    match peel(ty) {
        Type::Reference(reference) if reference.mutability.is_none() => {
            if let Some(found) = first_impl_trait(&reference.elem) {
                return Err(Error::new_spanned(
                    found,
                    "the payload of a `#[transactional_message(half)]` function cannot be \
                     `impl Trait`, expected a concrete type",
                ));
            }
            Ok((&reference.elem, params))
        }
        Type::Reference(reference) => Err(by_reference(&reference.elem)),
        _ => Err(by_reference(ty)),
    }
}

/// The error type of a half producer's `Result<T, E>` return type.
fn check_half_output<'a>(sig: &Sig<'a>) -> syn::Result<&'a Type> {
    let (_, error) = check_result(
        sig,
        "expected the return type `Result<T, E>` of a `#[transactional_message(half)]` \
         function, where `E: From<txmsg::Error>`",
    )?;
    Ok(error)
}

/// The payload and error types of the `Result<M, E>` return type.
fn check_output<'a>(sig: &Sig<'a>) -> syn::Result<(&'a Type, &'a Type)> {
    check_result(
        sig,
        "expected the return type `Result<M, E>` of a `#[transactional_message]` function, \
         where `M: Serialize` is the message payload and `E: From<txmsg::Error>`",
    )
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::{ToTokens, quote};
    use syn::ItemFn;

    use super::*;
    use crate::common::valid::MAX_TOPIC_LEN;

    const GOOD_FN: &str =
        "async fn f(tx: &mut Tx<'_, Sqlite>, id: i64) -> Result<Order, Error> { loop {} }";

    fn check_tokens(args: TokenStream, func: &str) -> syn::Result<String> {
        let func: ItemFn = syn::parse_str(func)?;
        let sig = Sig::new(&func);
        check(args::parse(args), &sig).map(|p| p.args.topic.value())
    }

    /// The messages of every error, in order.
    fn messages(args: TokenStream, func: &str) -> Vec<String> {
        match check_tokens(args, func) {
            Ok(_) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn args_messages(args: TokenStream) -> Vec<String> {
        messages(args, GOOD_FN)
    }

    #[test]
    fn accepts_all_arguments() {
        let func: ItemFn = syn::parse_str(GOOD_FN).unwrap();
        let sig = Sig::new(&func);
        let raw = args::parse(quote! {
            topic = "orders.placed",
            key = id,
            idempotency_key = format!("order-{id}"),
            ttl = "2h",
            crate = "::my_txmsg",
        });
        let p = check(raw, &sig).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.args.topic.value(), "orders.placed");
        assert_eq!(p.args.key.to_token_stream().to_string(), "id");
        assert!(p.args.idempotency_key.is_some());
        assert!(matches!(p.args.ttl, Some(Ttl::Millis(7_200_000))));
        assert_eq!(p.args.krate.to_token_stream().to_string(), ":: my_txmsg");
        let Mode::Tx { tx, db } = &p.mode else {
            panic!("not a half producer")
        };
        assert_eq!(*tx, "tx");
        assert_eq!(db.to_token_stream().to_string(), "Sqlite");
        assert_eq!(p.params.len(), 1);
        assert_eq!(p.payload.to_token_stream().to_string(), "Order");
        assert_eq!(p.error.to_token_stream().to_string(), "Error");
    }

    #[test]
    fn topic_alone_is_enough() {
        assert_eq!(
            check_tokens(quote!(topic = "orders"), GOOD_FN).unwrap(),
            "orders"
        );
        assert!(args_messages(quote!(topic = "orders",)).is_empty());
    }

    #[test]
    fn unknown_argument_lists_the_names() {
        assert_eq!(
            args_messages(quote!(topic = "a", group = "b")),
            [
                "unknown argument `group` to `#[transactional_message]`, expected one of: \
              topic, key, idempotency_key, ttl, half, check_back, check_after, crate"
            ]
        );
    }

    #[test]
    fn unknown_argument_suggests_a_near_miss() {
        let messages = args_messages(quote!(topik = "a"));
        assert_eq!(
            messages[0],
            "unknown argument `topik` to `#[transactional_message]`, expected one of: \
             topic, key, idempotency_key, ttl, half, check_back, check_after, crate; \
             did you mean `topic`?"
        );
        assert_eq!(messages.len(), 1, "not also a missing topic: {messages:?}");
        assert!(args_messages(quote!(topic = "a", a::topic = 1))[0].contains("`a::topic`"));
    }

    #[test]
    fn repeated_argument_is_reported_at_its_second_occurrence() {
        let func: ItemFn = syn::parse_str(GOOD_FN).unwrap();
        let sig = Sig::new(&func);
        let second = quote!(key);
        let raw = args::parse(quote!(key = 1, topic = "a", #second = 2));
        let error = check(raw, &sig).err().unwrap();
        assert_eq!(
            error.to_string(),
            "duplicate argument `key` to `#[transactional_message]`, \
             expected each argument at most once"
        );
        let messages = args_messages(quote!(topic = "a", topic = "b", topic = "c"));
        assert_eq!(messages.len(), 2);
    }

    #[test]
    fn missing_topic_is_reported() {
        let expected = "missing `topic = \"...\"` in `#[transactional_message]`, \
                        as in `#[transactional_message(topic = \"orders.placed\")]`";
        assert_eq!(args_messages(TokenStream::new()), [expected]);
        assert_eq!(args_messages(quote!(key = 1)), [expected]);
    }

    #[test]
    fn a_bad_topic_is_not_also_missing() {
        assert_eq!(args_messages(quote!(topic = 5)).len(), 1);
        assert_eq!(args_messages(quote!(topic)).len(), 1);
    }

    #[test]
    fn values_must_have_the_right_shape() {
        assert_eq!(
            args_messages(quote!(topic = ORDERS)),
            [
                "expected a string literal for `topic` in `#[transactional_message]`, \
              as in `topic = \"orders.placed\"`"
            ]
        );
        assert_eq!(
            args_messages(quote!(topic)),
            ["expected `topic = \"...\"` in `#[transactional_message]`"]
        );
        assert_eq!(
            args_messages(quote!(topic = "a", key)),
            ["expected `key = <expression>` in `#[transactional_message]`"]
        );
        assert_eq!(
            args_messages(quote!(topic = "a", crate = "not a path")),
            [
                "expected a path such as \"my_txmsg\" or \"::my_txmsg\" for `crate` \
              in `#[transactional_message]`, found \"not a path\""
            ]
        );
    }

    #[test]
    fn topic_follows_the_runtime_rule() {
        for good in [
            "orders",
            "orders.placed",
            "billing-v2.invoice_created",
            "a.b.c",
        ] {
            assert!(args_messages(quote!(topic = #good)).is_empty(), "{good}");
        }
        let cases = [
            ("", "must not be empty"),
            (
                "orders.*",
                "may contain only ASCII letters, digits, `.`, `-` and `_`",
            ),
            (
                "a b",
                "may contain only ASCII letters, digits, `.`, `-` and `_`",
            ),
            (
                "é",
                "may contain only ASCII letters, digits, `.`, `-` and `_`",
            ),
            (
                ".a",
                "must not start or end with `.` or contain an empty segment",
            ),
            (
                "a.",
                "must not start or end with `.` or contain an empty segment",
            ),
            (
                "a..b",
                "must not start or end with `.` or contain an empty segment",
            ),
        ];
        for (bad, reason) in cases {
            assert_eq!(
                args_messages(quote!(topic = #bad)),
                [format!(
                    "invalid topic `{bad}` in `#[transactional_message]`: {reason}"
                )]
            );
        }
        let long = "x".repeat(MAX_TOPIC_LEN + 1);
        assert!(args_messages(quote!(topic = #long))[0].ends_with("must be at most 200 bytes"));
        let longest = "x".repeat(MAX_TOPIC_LEN);
        assert!(args_messages(quote!(topic = #longest)).is_empty());
    }

    #[test]
    fn ttl_is_checked() {
        assert_eq!(
            args_messages(quote!(topic = "a", ttl = "30 minutes")),
            [
                "invalid ttl `30 minutes` in `#[transactional_message]`: expected a whole number \
              and a unit, one of `ms`, `s`, `m`, `h`, `d`, as in \"30m\""
            ]
        );
        assert_eq!(
            args_messages(quote!(topic = "a", ttl = "0s")),
            ["invalid ttl `0s` in `#[transactional_message]`: \
              expected a duration greater than zero"]
        );
    }

    #[test]
    fn ttl_may_be_an_expression() {
        let func: ItemFn = syn::parse_str(GOOD_FN).unwrap();
        let sig = Sig::new(&func);
        for (tokens, expr) in [
            (quote!(topic = "a", ttl = ttl), "ttl"),
            (quote!(topic = "a", ttl = 5), "5"),
            (
                quote!(topic = "a", ttl = Duration::from_secs(30)),
                "Duration :: from_secs (30)",
            ),
        ] {
            let p = check(args::parse(tokens), &sig).unwrap_or_else(|e| panic!("{e}"));
            let Some(Ttl::Expr(found)) = &p.args.ttl else {
                panic!("not an expression: {expr}")
            };
            assert_eq!(found.to_token_stream().to_string(), expr);
        }
        assert_eq!(
            args_messages(quote!(topic = "a", ttl)),
            ["expected `ttl = \"...\" or <expression>` in `#[transactional_message]`"]
        );
    }

    #[test]
    fn every_argument_error_is_reported() {
        let messages = args_messages(quote!(topic = "a b", ttl = "soon", kye = 1, ttl = "1s"));
        assert_eq!(messages.len(), 4, "{messages:#?}");
    }

    #[test]
    fn syntax_errors_come_with_signature_errors() {
        let messages = messages(quote!(topic = "a" key = 1), "fn f() {}");
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert_eq!(messages[0], "expected `,`");
    }

    fn sig_messages(func: &str) -> Vec<String> {
        messages(quote!(topic = "a"), func)
    }

    const NOT_TX: &str = "expected `&mut txmsg::Tx<'_, DB>` as the first parameter of a \
                          `#[transactional_message]` function";
    const NOT_RESULT: &str = "expected the return type `Result<M, E>` of a \
                              `#[transactional_message]` function, where `M: Serialize` is \
                              the message payload and `E: From<txmsg::Error>`";

    #[test]
    fn accepts_the_documented_shapes() {
        for func in [
            GOOD_FN,
            "pub async fn f(tx: &mut txmsg::Tx<'_, sqlx::Sqlite>) -> Result<(), E> { loop {} }",
            "pub(crate) async fn f<'a>(mut tx: &mut Tx<'a, Sqlite>, s: &'a str) \
             -> std::result::Result<M<'a>, E> { loop {} }",
            "async fn f(tx: &mut Tx<'_, Sqlite>, (a, b): (u8, u8), _: u8) -> Result<M, E> \
             where 'static: 'static { loop {} }",
        ] {
            assert!(
                sig_messages(func).is_empty(),
                "{func}: {:?}",
                sig_messages(func)
            );
        }
    }

    #[test]
    fn not_async() {
        assert_eq!(
            sig_messages("fn f(tx: &mut Tx<'_, Sqlite>) -> Result<M, E> { loop {} }"),
            ["`#[transactional_message]` functions must be `async fn`"]
        );
    }

    #[test]
    fn unsafe_and_extern() {
        let messages = sig_messages(
            "async unsafe extern \"C\" fn f(tx: &mut Tx<'_, Sqlite>) -> Result<M, E> { loop {} }",
        );
        assert_eq!(messages.len(), 2, "{messages:?}");
    }

    #[test]
    fn generics() {
        let messages = sig_messages(
            "async fn f<'a, T, const N: usize>(tx: &mut Tx<'a, Sqlite>, t: T) -> Result<M, E> \
             { loop {} }",
        );
        assert_eq!(
            messages,
            ["`#[transactional_message]` functions cannot have type or const parameters, \
                 expected lifetime parameters only"; 2]
        );
    }

    #[test]
    fn receivers() {
        let messages =
            sig_messages("async fn f(&self, tx: &mut Tx<'_, Sqlite>) -> Result<M, E> { loop {} }");
        assert_eq!(
            messages,
            [
                "`#[transactional_message]` functions cannot take `self`, expected a free \
              function whose first parameter is `&mut txmsg::Tx<'_, DB>`"
            ]
        );
    }

    #[test]
    fn transaction_parameter() {
        assert_eq!(
            sig_messages("async fn f() -> Result<M, E> { loop {} }"),
            [NOT_TX]
        );
        assert_eq!(
            sig_messages("async fn f(id: i64) -> Result<M, E> { loop {} }"),
            [NOT_TX]
        );
        assert_eq!(
            sig_messages("async fn f(tx: &Tx<'_, Sqlite>) -> Result<M, E> { loop {} }"),
            [NOT_TX]
        );
        assert_eq!(
            sig_messages(
                "async fn f(id: i64, tx: &mut Tx<'_, Sqlite>) -> Result<M, E> { loop {} }"
            ),
            [
                "the `&mut txmsg::Tx<'_, DB>` parameter of a `#[transactional_message]` \
              function must come first"
            ]
        );
        assert_eq!(
            sig_messages("async fn f(_: &mut Tx<'_, Sqlite>) -> Result<M, E> { loop {} }"),
            [
                "expected a name for the transaction parameter of a `#[transactional_message]` \
              function, as in `tx: &mut txmsg::Tx<'_, DB>`"
            ]
        );
    }

    #[test]
    fn return_type() {
        for func in [
            "async fn f(tx: &mut Tx<'_, Sqlite>) { }",
            "async fn f(tx: &mut Tx<'_, Sqlite>) -> Order { loop {} }",
            "async fn f(tx: &mut Tx<'_, Sqlite>) -> Option<Order> { loop {} }",
        ] {
            assert_eq!(sig_messages(func), [NOT_RESULT], "{func}");
        }
        assert_eq!(
            sig_messages("async fn f(tx: &mut Tx<'_, Sqlite>) -> txmsg::Result<Order> { loop {} }"),
            [format!(
                "{NOT_RESULT}; this `Result` alias hides `E`, write it out, \
                 as in `Result<Order, txmsg::Error>`"
            )]
        );
    }

    #[test]
    fn every_signature_error_is_reported() {
        let messages = sig_messages("fn f<T>(id: T) -> T { loop {} }");
        assert_eq!(messages.len(), 4, "{messages:#?}");
    }

    const HALF_FN: &str =
        "async fn f(payment: &Payment, card: String) -> Result<Receipt, Error> { loop {} }";

    fn half_messages(func: &str) -> Vec<String> {
        messages(quote!(topic = "a", half), func)
    }

    fn half_of(args: TokenStream, func: &str) -> (Option<String>, u64, String, usize) {
        let func: ItemFn = syn::parse_str(func).unwrap();
        let sig = Sig::new(&func);
        let p = check(args::parse(args), &sig).unwrap_or_else(|e| panic!("{e}"));
        let Mode::Half(half) = &p.mode else {
            panic!("not a half producer")
        };
        (
            half.check_back
                .as_ref()
                .map(|path| path.to_token_stream().to_string()),
            half.check_after,
            p.payload.to_token_stream().to_string(),
            p.params.len(),
        )
    }

    #[test]
    fn half_producers() {
        assert_eq!(
            half_of(quote!(topic = "a", half), HALF_FN),
            (None, 6_000, "Payment".to_owned(), 2)
        );
        assert_eq!(
            half_of(
                quote!(
                    half,
                    topic = "a",
                    check_back = checks::payment_state,
                    check_after = "1m",
                    key = payment.id,
                ),
                HALF_FN
            ),
            (
                Some("checks :: payment_state".to_owned()),
                60_000,
                "Payment".to_owned(),
                2
            )
        );
        for func in [
            "async fn f(p: &'static Payment) -> Result<(), E> { loop {} }",
            "pub(crate) async fn f<'a>(_: &'a Note<'a>) -> std::result::Result<u8, E> \
             { loop {} }",
            "async fn f(p: &Payment, (a, b): (u8, u8), x: impl Display) -> Result<(), E> \
             { loop {} }",
        ] {
            assert!(
                half_messages(func).is_empty(),
                "{func}: {:?}",
                half_messages(func)
            );
        }
    }

    #[test]
    fn half_arguments() {
        let needs_half = |key: &str, example: &str| {
            format!(
                "`{key}` requires `half` in `#[transactional_message]`: only half producers \
                 are checked back, as in `#[transactional_message(topic = \"...\", half, \
                 {example})]`"
            )
        };
        assert_eq!(
            args_messages(quote!(topic = "a", check_back = payment_state)),
            [needs_half("check_back", "check_back = payment_state")]
        );
        assert_eq!(
            args_messages(quote!(topic = "a", check_after = "10s")),
            [needs_half("check_after", "check_after = \"10s\"")]
        );
        assert_eq!(
            messages(quote!(topic = "a", half = true), HALF_FN),
            ["`half` takes no value in `#[transactional_message]`, expected `half` alone"]
        );
        assert_eq!(
            messages(
                quote!(topic = "a", half, check_back = "payment_state"),
                HALF_FN
            ),
            [
                "expected the path of a `#[check_back]` function for `check_back` in \
              `#[transactional_message]`, as in `check_back = payment_state`"
            ]
        );
        assert_eq!(
            messages(quote!(topic = "a", half, check_back = f::<u8>), HALF_FN).len(),
            1
        );
        assert_eq!(
            messages(quote!(topic = "a", half, check_back), HALF_FN),
            ["expected `check_back = <path>` in `#[transactional_message]`"]
        );
        assert_eq!(
            messages(quote!(topic = "a", half, check_after = "6"), HALF_FN),
            [
                "invalid check_after `6` in `#[transactional_message]`: expected a whole number \
              and a unit, one of `ms`, `s`, `m`, `h`, `d`, as in \"30m\""
            ]
        );
    }

    #[test]
    fn half_signatures() {
        const EXPECTED: &str = "expected the payload `msg: &M` as the first parameter of a \
                                `#[transactional_message(half)]` function";
        assert_eq!(
            half_messages("async fn f() -> Result<(), E> { loop {} }"),
            [EXPECTED]
        );
        let not_tx = "`#[transactional_message(half)]` functions do their local work outside \
                      the store's transaction: take the payload `&M` as the first parameter, \
                      not a `Tx`";
        assert_eq!(
            half_messages("async fn f(tx: &mut Tx<'_, Sqlite>, p: &P) -> Result<P, E> { loop {} }"),
            [not_tx]
        );
        assert_eq!(
            half_messages("async fn f(p: &P, tx: &mut Tx<'_, Sqlite>) -> Result<P, E> { loop {} }"),
            [not_tx]
        );
        assert_eq!(
            half_messages("async fn f(p: Payment) -> Result<(), E> { loop {} }"),
            [
                "the payload of a `#[transactional_message(half)]` function is stored before its \
              body runs, take it by shared reference: expected `&Payment` rather than `Payment`"
            ]
        );
        assert_eq!(
            half_messages("async fn f(p: &mut Payment) -> Result<(), E> { loop {} }"),
            [
                "the payload of a `#[transactional_message(half)]` function is stored before its \
              body runs, take it by shared reference: expected `&Payment` rather than \
              `&mut Payment`"
            ]
        );
        assert_eq!(
            half_messages("async fn f(p: &impl Serialize) -> Result<(), E> { loop {} }"),
            [
                "the payload of a `#[transactional_message(half)]` function cannot be \
              `impl Trait`, expected a concrete type"
            ]
        );
        assert_eq!(
            half_messages("async fn f(p: &P) -> Option<()> { loop {} }"),
            [
                "expected the return type `Result<T, E>` of a `#[transactional_message(half)]` \
              function, where `E: From<txmsg::Error>`"
            ]
        );
        assert_eq!(
            half_messages("async fn f(&self, p: &P) -> Result<(), E> { loop {} }"),
            [
                "`#[transactional_message]` functions cannot take `self`, expected a free \
              function whose first parameter is the payload `&M`"
            ]
        );
        // not async, a type parameter, no payload, not a Result
        assert_eq!(half_messages("fn f<T>() -> T { loop {} }").len(), 4);
    }
}
