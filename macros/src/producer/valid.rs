//! Every check `#[transactional_message]` makes before generating code.
//!
//! All problems are collected and reported together, each at the token that
//! is wrong. Checks that need the type checker (the payload is `Serialize`,
//! the error is `From<txmsg::Error>`) are left to rustc through spanned
//! bounds in the expansion.

use syn::{Error, Expr, Ident, PatType, Type};

use super::Producer;
use super::args::{self, ATTR, Args};
use super::sig;
use crate::common::args::RawArg;
use crate::common::sig::Sig;
use crate::common::valid::{
    check_crate, check_qualifiers, check_result, check_topic, known_args, missing, string_literal,
};
use crate::diag::{Errors, join};

/// Checks the arguments and the function, and returns what the expansion
/// needs, or every error found.
pub(crate) fn check<'a>(raw: syn::Result<Vec<RawArg>>, sig: &Sig<'a>) -> syn::Result<Producer<'a>> {
    let args = raw.and_then(check_args);
    let shape = join(
        check_qualifiers(sig, &ATTR),
        join(check_tx(sig), check_output(sig)),
    );
    let (args, ((), ((tx, db, params), (payload, error)))) = join(args, shape)?;
    Ok(Producer {
        func: sig.func,
        args,
        tx,
        db,
        params,
        payload,
        error,
    })
}

/// Checks names and values of the attribute's arguments.
fn check_args(raw: Vec<RawArg>) -> syn::Result<Args> {
    let mut errors = Errors::default();
    let known = known_args(raw, &ATTR, &mut errors);
    let missing_topic = || missing("topic", &ATTR, "topic = \"orders.placed\"");
    let topic_written = known.written("topic");
    let mut topic = None;
    let mut key = None;
    let mut idempotency_key = None;
    let mut ttl = None;
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
    Ok(Args {
        topic,
        key,
        idempotency_key,
        ttl,
        krate,
    })
}

/// A time to live, in milliseconds.
fn check_ttl(value: Expr) -> syn::Result<u64> {
    let lit = string_literal(value, "ttl", "\"30m\"", &ATTR)?;
    let text = lit.value();
    args::parse_ttl(&text).map_err(|reason| {
        Error::new(
            lit.span(),
            format!("invalid ttl `{text}` in `#[transactional_message]`: {reason}"),
        )
    })
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
        "async fn f(tx: &mut Tx<'_, Sqlite>, id: i64) -> Result<Order, Error> { todo!() }";

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
        assert_eq!(p.args.ttl, Some(7_200_000));
        assert_eq!(p.args.krate.to_token_stream().to_string(), ":: my_txmsg");
        assert_eq!(p.tx, "tx");
        assert_eq!(p.db.to_token_stream().to_string(), "Sqlite");
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
            args_messages(quote!(topic = "a", half)),
            [
                "unknown argument `half` to `#[transactional_message]`, expected one of: \
              topic, key, idempotency_key, ttl, crate"
            ]
        );
        assert_eq!(
            args_messages(quote!(topic = "a", check_back = my_check)),
            [
                "unknown argument `check_back` to `#[transactional_message]`, expected one of: \
              topic, key, idempotency_key, ttl, crate"
            ]
        );
    }

    #[test]
    fn unknown_argument_suggests_a_near_miss() {
        let messages = args_messages(quote!(topik = "a"));
        assert_eq!(
            messages[0],
            "unknown argument `topik` to `#[transactional_message]`, expected one of: \
             topic, key, idempotency_key, ttl, crate; did you mean `topic`?"
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
            args_messages(quote!(topic = "a", ttl = 30)),
            [
                "expected a string literal for `ttl` in `#[transactional_message]`, \
              as in `ttl = \"30m\"`"
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
            "pub async fn f(tx: &mut txmsg::Tx<'_, sqlx::Sqlite>) -> Result<(), E> { todo!() }",
            "pub(crate) async fn f<'a>(mut tx: &mut Tx<'a, Sqlite>, s: &'a str) \
             -> std::result::Result<M<'a>, E> { todo!() }",
            "async fn f(tx: &mut Tx<'_, Sqlite>, (a, b): (u8, u8), _: u8) -> Result<M, E> \
             where 'static: 'static { todo!() }",
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
            sig_messages("fn f(tx: &mut Tx<'_, Sqlite>) -> Result<M, E> { todo!() }"),
            ["`#[transactional_message]` functions must be `async fn`"]
        );
    }

    #[test]
    fn unsafe_and_extern() {
        let messages = sig_messages(
            "async unsafe extern \"C\" fn f(tx: &mut Tx<'_, Sqlite>) -> Result<M, E> { todo!() }",
        );
        assert_eq!(messages.len(), 2, "{messages:?}");
    }

    #[test]
    fn generics() {
        let messages = sig_messages(
            "async fn f<'a, T, const N: usize>(tx: &mut Tx<'a, Sqlite>, t: T) -> Result<M, E> \
             { todo!() }",
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
            sig_messages("async fn f(&self, tx: &mut Tx<'_, Sqlite>) -> Result<M, E> { todo!() }");
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
            sig_messages("async fn f() -> Result<M, E> { todo!() }"),
            [NOT_TX]
        );
        assert_eq!(
            sig_messages("async fn f(id: i64) -> Result<M, E> { todo!() }"),
            [NOT_TX]
        );
        assert_eq!(
            sig_messages("async fn f(tx: &Tx<'_, Sqlite>) -> Result<M, E> { todo!() }"),
            [NOT_TX]
        );
        assert_eq!(
            sig_messages(
                "async fn f(id: i64, tx: &mut Tx<'_, Sqlite>) -> Result<M, E> { todo!() }"
            ),
            [
                "the `&mut txmsg::Tx<'_, DB>` parameter of a `#[transactional_message]` \
              function must come first"
            ]
        );
        assert_eq!(
            sig_messages("async fn f(_: &mut Tx<'_, Sqlite>) -> Result<M, E> { todo!() }"),
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
            "async fn f(tx: &mut Tx<'_, Sqlite>) -> Order { todo!() }",
            "async fn f(tx: &mut Tx<'_, Sqlite>) -> Option<Order> { todo!() }",
        ] {
            assert_eq!(sig_messages(func), [NOT_RESULT], "{func}");
        }
        assert_eq!(
            sig_messages("async fn f(tx: &mut Tx<'_, Sqlite>) -> txmsg::Result<Order> { todo!() }"),
            [format!(
                "{NOT_RESULT}; this `Result` alias hides `E`, write it out, \
                 as in `Result<Order, txmsg::Error>`"
            )]
        );
    }

    #[test]
    fn every_signature_error_is_reported() {
        let messages = sig_messages("fn f<T>(id: T) -> T { todo!() }");
        assert_eq!(messages.len(), 4, "{messages:#?}");
    }
}
