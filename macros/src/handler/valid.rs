//! Every check `#[message_handler]` makes before generating code.
//!
//! All problems are collected and reported together, each at the token that
//! is wrong. Checks that need the type checker (the message is
//! `DeserializeOwned`, the error is `Display`) are left to rustc through
//! spanned bounds in the expansion.

use quote::{ToTokens, quote};
use syn::{Error, Expr, ExprLit, Lit, PatType, Type, UnOp};

use super::args::{ATTR, Args, DEFAULT_MAX_ATTEMPTS};
use super::sig::is_unit;
use super::{Extra, Handler};
use crate::common::args::RawArg;
use crate::common::sig::{Sig, peel};
use crate::common::types::{
    EnvelopeShape, envelope_shape, first_borrow, first_impl_trait, state_type,
};
use crate::common::valid::{
    check_crate, check_no_impl_trait, check_qualifiers, check_result, check_topic, known_args,
    missing, type_to_string,
};
use crate::diag::{Errors, join};

/// What a `self` receiver stands in place of, for its message.
const TX_FIRST: &str = "whose first parameter is `&mut txmsg::Tx<'_, DB>`";

/// How the attribute is written with its required arguments, for messages.
const EXAMPLE: &str = "topic = \"orders.placed\", group = \"billing\"";

/// Checks the arguments and the function, and returns what the expansion
/// needs, or every error found.
pub(crate) fn check<'a>(raw: syn::Result<Vec<RawArg>>, sig: &Sig<'a>) -> syn::Result<Handler<'a>> {
    let args = raw.and_then(check_args);
    let shape = join(
        join(
            check_qualifiers(sig, &ATTR, TX_FIRST),
            check_no_impl_trait(sig, &ATTR),
        ),
        join(check_params(sig), check_output(sig)),
    );
    let (args, (_, ((db, message, extras), error))) = join(args, shape)?;
    Ok(Handler {
        func: sig.func,
        args,
        db,
        message,
        extras,
        error,
    })
}

/// Checks names and values of the attribute's arguments.
fn check_args(raw: Vec<RawArg>) -> syn::Result<Args> {
    let mut errors = Errors::default();
    let known = known_args(raw, &ATTR, &mut errors);
    let unwritten: Vec<&str> = ["topic", "group"]
        .into_iter()
        .filter(|key| !known.written(key))
        .collect();
    let mut topic = None;
    let mut group = None;
    let mut max_attempts = DEFAULT_MAX_ATTEMPTS;
    let mut krate = None;
    for (name, value) in known.args {
        let checked = match name.as_str() {
            "topic" => {
                check_topic(value, "topic", "\"orders.placed\"", &ATTR).map(|v| topic = Some(v))
            }
            "group" => check_topic(value, "group", "\"billing\"", &ATTR).map(|v| group = Some(v)),
            "max_attempts" => check_max_attempts(value).map(|v| max_attempts = v),
            _ => check_crate(value, &ATTR).map(|v| krate = Some(v)),
        };
        if let Err(error) = checked {
            errors.push(error);
        }
    }
    for key in unwritten {
        errors.push(missing(key, &ATTR, EXAMPLE));
    }
    errors.finish(())?;
    Ok(Args {
        topic: topic.ok_or_else(|| missing("topic", &ATTR, EXAMPLE))?,
        group: group.ok_or_else(|| missing("group", &ATTR, EXAMPLE))?,
        max_attempts,
        krate,
    })
}

/// `max_attempts`: an integer literal, at least 1, that fits a `u32`.
fn check_max_attempts(value: Expr) -> syn::Result<u32> {
    let invalid = |tokens: &dyn ToTokens, text: &str, reason: &str| {
        Error::new_spanned(
            tokens,
            format!("invalid max_attempts `{text}` in `#[message_handler]`: {reason}"),
        )
    };
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => {
            let text = lit.base10_digits();
            if !matches!(lit.suffix(), "" | "u32") {
                return Err(invalid(&lit, &lit.to_string(), "expected a `u32`"));
            }
            match lit.base10_parse::<u32>() {
                Ok(0) => Err(invalid(&lit, text, "expected at least 1 attempt")),
                Ok(n) => Ok(n),
                Err(_) => Err(invalid(&lit, text, "expected at most 4294967295 attempts")),
            }
        }
        Expr::Unary(unary) if matches!(unary.op, UnOp::Neg(_)) => match &*unary.expr {
            Expr::Lit(ExprLit {
                lit: Lit::Int(lit), ..
            }) => Err(invalid(
                &unary,
                &format!("-{}", lit.base10_digits()),
                "expected at least 1 attempt",
            )),
            _ => Err(not_an_integer(&unary)),
        },
        Expr::Group(group) => check_max_attempts(*group.expr),
        other => Err(not_an_integer(&other)),
    }
}

/// The error for a `max_attempts` that is not an integer literal.
fn not_an_integer(value: &dyn ToTokens) -> Error {
    Error::new_spanned(
        value,
        "expected an integer literal for `max_attempts` in `#[message_handler]`, \
         as in `max_attempts = 5`",
    )
}

/// The parameters: the transaction's database, the message type, and what
/// follows the message (the envelope and `State<T>`s, in the order written).
fn check_params<'a>(sig: &Sig<'a>) -> syn::Result<(&'a Type, &'a Type, Vec<Extra<'a>>)> {
    let (_, db, rest) = crate::common::valid::check_tx(sig, &ATTR)?;
    const COUNT: &str = "expected the parameters of a `#[message_handler]` function: \
                         `tx: &mut txmsg::Tx<'_, DB>, message: M`, then optionally \
                         `envelope: &txmsg::Envelope` and `State<T>` parameters";
    let Some((message, after)) = rest.split_first() else {
        return Err(Error::new(sig.func.sig.paren_token.span.join(), COUNT));
    };
    let envelope_first = envelope_shape(&message.ty) == EnvelopeShape::Shared;
    if envelope_first || state_type(&message.ty).is_some() {
        let what = if envelope_first {
            "`&txmsg::Envelope`"
        } else {
            "`State<T>` parameters"
        };
        let message_follows = after
            .iter()
            .any(|p| envelope_shape(&p.ty) != EnvelopeShape::Shared && state_type(&p.ty).is_none());
        let text = if message_follows {
            let what = if envelope_first {
                "`&txmsg::Envelope` parameter"
            } else {
                "`State<T>` parameter"
            };
            format!("the {what} of a `#[message_handler]` function must come after the message")
        } else {
            format!(
                "expected `message: M` as the second parameter of a `#[message_handler]` \
                 function, before the {what}"
            )
        };
        return Err(Error::new_spanned(message, text));
    }
    let mut errors = Errors::default();
    let message = check_message(message).map_err(|e| errors.push(e)).ok();
    let mut extras = Vec::new();
    let mut unknown = Vec::new();
    let mut envelope_seen = false;
    for param in after {
        if let Some(inner) = state_type(&param.ty) {
            extras.push(Extra::State(inner));
        } else if envelope_shape(&param.ty) != EnvelopeShape::Other {
            if envelope_seen {
                errors.push(Error::new_spanned(
                    param,
                    "a `#[message_handler]` function takes the `&txmsg::Envelope` once",
                ));
            }
            envelope_seen = true;
            if let Err(e) = check_envelope(param) {
                errors.push(e);
            }
            extras.push(Extra::Envelope);
        } else {
            unknown.push(param);
        }
    }
    if !unknown.is_empty() {
        errors.push(Error::new_spanned(
            quote!(#(#unknown),*),
            "expected `&txmsg::Envelope` or `State<T>` parameters after the message of a \
             `#[message_handler]` function",
        ));
    }
    errors.finish(())?;
    match message {
        Some(message) => Ok((db, message, extras)),
        // Reported above.
        None => Err(Error::new(sig.func.sig.paren_token.span.join(), COUNT)),
    }
}

/// The message type: owned, so that it can be `DeserializeOwned` and named
/// by the generated code.
fn check_message(arg: &PatType) -> syn::Result<&Type> {
    let ty = &*arg.ty;
    if first_impl_trait(ty).is_some() {
        // Reported by `check_no_impl_trait`.
        return Ok(ty);
    }
    if let Type::Reference(reference) = peel(ty) {
        return Err(Error::new_spanned(
            ty,
            format!(
                "`#[message_handler]` functions take the message by value, expected `{}` \
                 rather than `{}`",
                type_to_string(&reference.elem),
                type_to_string(ty)
            ),
        ));
    }
    match first_borrow(ty, false) {
        Some(borrow) => Err(Error::new_spanned(
            borrow,
            "the message type of a `#[message_handler]` function cannot borrow, \
             expected an owned type (`M: DeserializeOwned`)",
        )),
        None => Ok(ty),
    }
}

/// The envelope parameter: `&txmsg::Envelope`.
fn check_envelope(arg: &PatType) -> syn::Result<()> {
    const EXPECTED: &str =
        "expected `&txmsg::Envelope` as the envelope parameter of a `#[message_handler]` function";
    let hint = match envelope_shape(&arg.ty) {
        EnvelopeShape::Shared => return Ok(()),
        EnvelopeShape::Mut => "; the envelope is shared, take it by `&`",
        EnvelopeShape::Owned => "; take it by reference",
        EnvelopeShape::Other => "",
    };
    Err(Error::new_spanned(&arg.ty, format!("{EXPECTED}{hint}")))
}

/// The error type of the `Result<(), E>` return type.
fn check_output<'a>(sig: &Sig<'a>) -> syn::Result<&'a Type> {
    const EXPECTED: &str = "expected the return type `Result<(), E>` of a `#[message_handler]` \
                            function, where `E: Display`";
    let (ok, error) = check_result(sig, EXPECTED)?;
    if !is_unit(ok) {
        return Err(Error::new_spanned(
            ok,
            format!("{EXPECTED}; a handler returns `()` when it succeeds"),
        ));
    }
    if first_impl_trait(error).is_some() {
        // Reported by `check_no_impl_trait`.
        return Ok(error);
    }
    match first_borrow(error, true) {
        Some(borrow) => Err(Error::new_spanned(
            borrow,
            "the error type of a `#[message_handler]` function cannot borrow, \
             expected an owned type or `'static` references",
        )),
        None => Ok(error),
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;
    use quote::{ToTokens, quote};
    use syn::ItemFn;

    use super::*;
    use crate::handler::args;

    const GOOD_FN: &str = "async fn f(tx: &mut Tx<'_, Sqlite>, order: Order, envelope: &Envelope) \
                           -> Result<(), Error> { loop {} }";

    fn check_str(
        args: TokenStream,
        func: &str,
    ) -> syn::Result<(Args, String, String, bool, String)> {
        let func: ItemFn = syn::parse_str(func)?;
        let sig = Sig::new(&func);
        check(args::parse(args), &sig).map(|h| {
            (
                h.args,
                type_to_string(h.db),
                type_to_string(h.message),
                h.extras.iter().any(|e| matches!(e, Extra::Envelope)),
                type_to_string(h.error),
            )
        })
    }

    /// The messages of every error, in order.
    fn messages(args: TokenStream, func: &str) -> Vec<String> {
        match check_str(args, func) {
            Ok(_) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn args_messages(args: TokenStream) -> Vec<String> {
        messages(args, GOOD_FN)
    }

    fn sig_messages(func: &str) -> Vec<String> {
        messages(quote!(topic = "orders.placed", group = "billing"), func)
    }

    #[test]
    fn accepts_all_arguments() {
        let (args, db, message, takes_envelope, error) = check_str(
            quote!(
                topic = "orders.placed",
                group = "billing",
                max_attempts = 3,
                crate = "::my_txmsg"
            ),
            GOOD_FN,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.topic.value(), "orders.placed");
        assert_eq!(args.group.value(), "billing");
        assert_eq!(args.max_attempts, 3);
        assert_eq!(args.krate.to_token_stream().to_string(), ":: my_txmsg");
        assert_eq!(
            (db.as_str(), message.as_str(), error.as_str()),
            ("Sqlite", "Order", "Error")
        );
        assert!(takes_envelope);
    }

    #[test]
    fn max_attempts_defaults_to_five() {
        let (args, ..) = check_str(quote!(group = "billing", topic = "orders.placed",), GOOD_FN)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.max_attempts, 5);
        assert!(args.krate.is_none());
    }

    #[test]
    fn unknown_argument_lists_the_names() {
        assert_eq!(
            args_messages(quote!(topic = "a", group = "b", key = id)),
            [
                "unknown argument `key` to `#[message_handler]`, expected one of: \
              topic, group, max_attempts, crate"
            ]
        );
    }

    #[test]
    fn unknown_argument_suggests_a_near_miss_or_a_synonym() {
        assert_eq!(
            args_messages(quote!(topic = "a", grup = "b")),
            [
                "unknown argument `grup` to `#[message_handler]`, expected one of: \
              topic, group, max_attempts, crate; did you mean `group`?"
            ]
        );
        for other in ["max_retries", "retries", "attempts", "max_attempt"] {
            let name = syn::Ident::new(other, proc_macro2::Span::call_site());
            let messages = args_messages(quote!(topic = "a", group = "b", #name = 3));
            assert_eq!(messages.len(), 1, "{messages:?}");
            assert!(
                messages[0].ends_with("did you mean `max_attempts`?"),
                "{messages:?}"
            );
        }
        assert!(
            args_messages(quote!(topic = "a", consumer_group = "b"))[0]
                .ends_with("did you mean `group`?")
        );
    }

    #[test]
    fn repeated_argument_is_reported_at_its_second_occurrence() {
        assert_eq!(
            args_messages(quote!(topic = "a", group = "b", group = "c")),
            ["duplicate argument `group` to `#[message_handler]`, \
              expected each argument at most once"]
        );
    }

    #[test]
    fn missing_topic_and_group_are_reported() {
        let topic = "missing `topic = \"...\"` in `#[message_handler]`, \
                     as in `#[message_handler(topic = \"orders.placed\", group = \"billing\")]`";
        let group = "missing `group = \"...\"` in `#[message_handler]`, \
                     as in `#[message_handler(topic = \"orders.placed\", group = \"billing\")]`";
        assert_eq!(args_messages(TokenStream::new()), [topic, group]);
        assert_eq!(args_messages(quote!(group = "b")), [topic]);
        assert_eq!(
            args_messages(quote!(topic = "a", max_attempts = 2)),
            [group]
        );
        // Bad values are not also missing.
        assert_eq!(args_messages(quote!(topic = 1, group)).len(), 2);
    }

    #[test]
    fn topic_and_group_follow_the_topic_rule() {
        assert_eq!(
            args_messages(quote!(topic = "orders.*", group = "billing")),
            ["invalid topic `orders.*` in `#[message_handler]`: \
              may contain only ASCII letters, digits, `.`, `-` and `_`"]
        );
        assert_eq!(
            args_messages(quote!(topic = "a", group = "billing service")),
            ["invalid group `billing service` in `#[message_handler]`: \
              may contain only ASCII letters, digits, `.`, `-` and `_`"]
        );
        assert_eq!(
            args_messages(quote!(topic = "a", group = "")),
            ["invalid group `` in `#[message_handler]`: must not be empty"]
        );
        assert_eq!(
            args_messages(quote!(topic = "a", group = BILLING)),
            [
                "expected a string literal for `group` in `#[message_handler]`, \
              as in `group = \"billing\"`"
            ]
        );
        for good in ["billing", "billing-v2", "eu.billing_service"] {
            assert!(
                args_messages(quote!(topic = "a", group = #good)).is_empty(),
                "{good}"
            );
        }
    }

    #[test]
    fn max_attempts_is_a_positive_u32_literal() {
        let with = |value: TokenStream| {
            args_messages(quote!(topic = "a", group = "b", max_attempts = #value))
        };
        for good in [quote!(1), quote!(5u32), quote!(4294967295)] {
            assert!(with(good.clone()).is_empty(), "{good}");
        }
        assert_eq!(
            with(quote!(0)),
            ["invalid max_attempts `0` in `#[message_handler]`: expected at least 1 attempt"]
        );
        assert_eq!(
            with(quote!(-3)),
            ["invalid max_attempts `-3` in `#[message_handler]`: expected at least 1 attempt"]
        );
        assert_eq!(
            with(quote!(4294967296)),
            [
                "invalid max_attempts `4294967296` in `#[message_handler]`: \
              expected at most 4294967295 attempts"
            ]
        );
        assert_eq!(
            with(quote!(5u8)),
            ["invalid max_attempts `5u8` in `#[message_handler]`: expected a `u32`"]
        );
        let not_a_literal = "expected an integer literal for `max_attempts` in \
                             `#[message_handler]`, as in `max_attempts = 5`";
        for bad in [
            quote!(ATTEMPTS),
            quote!("5"),
            quote!(2 + 3),
            quote!(-x),
            quote!(5.0),
        ] {
            assert_eq!(with(bad.clone()), [not_a_literal], "{bad}");
        }
        assert_eq!(
            args_messages(quote!(topic = "a", group = "b", max_attempts)),
            ["expected `max_attempts = 5` in `#[message_handler]`"]
        );
    }

    #[test]
    fn every_argument_error_is_reported() {
        // unknown `grp`, repeated `topic`, invalid topic, invalid
        // max_attempts, missing group
        let messages = args_messages(quote!(
            topic = "a b",
            max_attempts = 0,
            grp = 1,
            topic = "c"
        ));
        assert_eq!(messages.len(), 5, "{messages:#?}");
    }

    const NOT_TX: &str = "expected `&mut txmsg::Tx<'_, DB>` as the first parameter of a \
                          `#[message_handler]` function";
    const COUNT: &str = "expected the parameters of a `#[message_handler]` function: \
                         `tx: &mut txmsg::Tx<'_, DB>, message: M`, then optionally \
                         `envelope: &txmsg::Envelope` and `State<T>` parameters";
    const NOT_ENVELOPE: &str = "expected `&txmsg::Envelope` as the envelope parameter of a \
                                `#[message_handler]` function";
    const NOT_EXTRA: &str = "expected `&txmsg::Envelope` or `State<T>` parameters after the \
                             message of a `#[message_handler]` function";
    const NOT_RESULT: &str = "expected the return type `Result<(), E>` of a \
                              `#[message_handler]` function, where `E: Display`";

    #[test]
    fn accepts_the_documented_shapes() {
        for func in [
            GOOD_FN,
            "async fn f(tx: &mut Tx<'_, Sqlite>, order: Order) -> Result<(), Error> { loop {} }",
            "pub(crate) async fn f<'a>(mut tx: &'a mut txmsg::Tx<'_, sqlx::Postgres>, \
             (a, b): (i64, i64), _: &'a txmsg::Envelope) -> std::result::Result<(), String> \
             { loop {} }",
            "async fn f(_: &mut Tx<Sqlite>, m: Cow<'static, str>) -> Result<(), &'static str> \
             { loop {} }",
            "async fn f(tx: &mut Tx<'_, Sqlite>, m: Vec<Order>) -> Result<((),), E> { loop {} }",
        ] {
            let (func, ok) = (func, sig_messages(func));
            if func.contains("((),)") {
                assert_eq!(ok.len(), 1, "a 1-tuple is not `()`");
            } else {
                assert!(ok.is_empty(), "{func}: {ok:?}");
            }
        }
    }

    #[test]
    fn shared_checks_name_this_attribute() {
        assert_eq!(
            sig_messages("fn f(tx: &mut Tx<'_, Sqlite>, m: M) -> Result<(), E> { loop {} }"),
            ["`#[message_handler]` functions must be `async fn`"]
        );
        assert_eq!(
            sig_messages(
                "async fn f<T>(tx: &mut Tx<'_, Sqlite>, m: T) -> Result<(), E> { loop {} }"
            ),
            [
                "`#[message_handler]` functions cannot have type or const parameters, \
              expected lifetime parameters only"
            ]
        );
        assert_eq!(
            sig_messages(
                "async fn f(&self, tx: &mut Tx<'_, Sqlite>, m: M) -> Result<(), E> { loop {} }"
            ),
            [
                "`#[message_handler]` functions cannot take `self`, expected a free function \
              whose first parameter is `&mut txmsg::Tx<'_, DB>`"
            ]
        );
    }

    #[test]
    fn transaction_parameter() {
        assert_eq!(
            sig_messages("async fn f() -> Result<(), E> { loop {} }"),
            [NOT_TX]
        );
        assert_eq!(
            sig_messages("async fn f(m: M, e: &Envelope) -> Result<(), E> { loop {} }"),
            [NOT_TX]
        );
        assert_eq!(
            sig_messages(
                "async fn f(tx: &mut sqlx::Transaction<'_, Sqlite>, m: M) -> Result<(), E> \
                 { loop {} }"
            ),
            [NOT_TX]
        );
        assert_eq!(
            sig_messages("async fn f(m: M, tx: &mut Tx<'_, Sqlite>) -> Result<(), E> { loop {} }"),
            [
                "the `&mut txmsg::Tx<'_, DB>` parameter of a `#[message_handler]` function \
              must come first"
            ]
        );
    }

    #[test]
    fn parameter_count() {
        assert_eq!(
            sig_messages("async fn f(tx: &mut Tx<'_, Sqlite>) -> Result<(), E> { loop {} }"),
            [COUNT]
        );
        assert_eq!(
            sig_messages(
                "async fn f(tx: &mut Tx<'_, Sqlite>, m: M, e: &Envelope, n: u32) \
                 -> Result<(), E> { loop {} }"
            ),
            [NOT_EXTRA]
        );
    }

    #[test]
    fn message_parameter() {
        assert_eq!(
            sig_messages(
                "async fn f(tx: &mut Tx<'_, Sqlite>, m: &Order) -> Result<(), E> { loop {} }"
            ),
            [
                "`#[message_handler]` functions take the message by value, expected `Order` \
              rather than `&Order`"
            ]
        );
        let borrows = "the message type of a `#[message_handler]` function cannot borrow, \
                       expected an owned type (`M: DeserializeOwned`)";
        for message in ["Note<'a>", "Note<'_>", "Vec<&'static str>", "(i64, &str)"] {
            let func = format!(
                "async fn f<'a>(tx: &mut Tx<'_, Sqlite>, m: {message}) -> Result<(), E> \
                 {{ loop {{}} }}"
            );
            assert_eq!(sig_messages(&func), [borrows], "{message}");
        }
        assert_eq!(
            sig_messages(
                "async fn f(tx: &mut Tx<'_, Sqlite>, e: &Envelope) -> Result<(), E> { loop {} }"
            ),
            [
                "expected `message: M` as the second parameter of a `#[message_handler]` \
              function, before the `&txmsg::Envelope`"
            ]
        );
        assert_eq!(
            sig_messages(
                "async fn f(tx: &mut Tx<'_, Sqlite>, e: &Envelope, m: M) -> Result<(), E> \
                 { loop {} }"
            ),
            [
                "the `&txmsg::Envelope` parameter of a `#[message_handler]` function \
              must come after the message"
            ]
        );
        assert_eq!(
            sig_messages(
                "async fn f(tx: &mut Tx<'_, Sqlite>, s: State<App>, m: M) -> Result<(), E> \
                 { loop {} }"
            ),
            [
                "the `State<T>` parameter of a `#[message_handler]` function \
              must come after the message"
            ]
        );
    }

    #[test]
    fn state_parameters_follow_the_message_in_any_order_with_the_envelope() {
        let extras = |func: &str| {
            let func: ItemFn = syn::parse_str(func).unwrap();
            let sig = Sig::new(&func);
            let h = check(args::parse(quote!(topic = "a", group = "b")), &sig)
                .unwrap_or_else(|e| panic!("{e}"));
            h.extras
                .iter()
                .map(|e| match e {
                    Extra::Envelope => "envelope".to_owned(),
                    Extra::State(ty) => type_to_string(ty),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            extras(
                "async fn f(tx: &mut Tx<'_, Pg>, m: M, a: State<App>, e: &Envelope, \
                 b: txmsg::State<Arc<Clients>>) -> Result<(), E> { loop {} }"
            ),
            ["App", "envelope", "Arc<Clients>"]
        );
        assert_eq!(
            sig_messages(
                "async fn f(tx: &mut Tx<'_, Sqlite>, m: M, e: &Envelope, d: &Envelope) \
                 -> Result<(), E> { loop {} }"
            ),
            ["a `#[message_handler]` function takes the `&txmsg::Envelope` once"]
        );
    }

    #[test]
    fn envelope_parameter() {
        let with = |envelope: &str| {
            sig_messages(&format!(
                "async fn f(tx: &mut Tx<'_, Sqlite>, m: M, e: {envelope}) -> Result<(), E> \
                 {{ loop {{}} }}"
            ))
        };
        assert_eq!(
            with("&mut Envelope"),
            [format!(
                "{NOT_ENVELOPE}; the envelope is shared, take it by `&`"
            )]
        );
        assert_eq!(
            with("Envelope"),
            [format!("{NOT_ENVELOPE}; take it by reference")]
        );
        assert_eq!(with("&str"), [NOT_EXTRA]);
        assert_eq!(with("u32"), [NOT_EXTRA]);
    }

    #[test]
    fn impl_trait_is_refused() {
        let expected = "`#[message_handler]` functions cannot use `impl Trait` in their \
                        signature, expected concrete types";
        for func in [
            "async fn f(tx: &mut Tx<'_, Sqlite>, m: impl Msg) -> Result<(), E> { loop {} }",
            "async fn f(tx: &mut Tx<'_, impl Db>, m: M) -> Result<(), E> { loop {} }",
            "async fn f(tx: &mut Tx<'_, Sqlite>, m: M) -> Result<(), impl Display> { loop {} }",
        ] {
            assert_eq!(sig_messages(func), [expected], "{func}");
        }
    }

    #[test]
    fn return_type() {
        for func in [
            "async fn f(tx: &mut Tx<'_, Sqlite>, m: M) { }",
            "async fn f(tx: &mut Tx<'_, Sqlite>, m: M) -> () { }",
            "async fn f(tx: &mut Tx<'_, Sqlite>, m: M) -> Option<()> { loop {} }",
        ] {
            assert_eq!(sig_messages(func), [NOT_RESULT], "{func}");
        }
        assert_eq!(
            sig_messages("async fn f(tx: &mut Tx<'_, Sqlite>, m: M) -> Result<u8, E> { loop {} }"),
            [format!(
                "{NOT_RESULT}; a handler returns `()` when it succeeds"
            )]
        );
        assert_eq!(
            sig_messages(
                "async fn f(tx: &mut Tx<'_, Sqlite>, m: M) -> anyhow::Result<()> { loop {} }"
            ),
            [format!(
                "{NOT_RESULT}; this `Result` alias hides `E`, write it out, \
                 as in `Result<(), anyhow::Error>`"
            )]
        );
        assert_eq!(
            sig_messages(
                "async fn f<'a>(tx: &mut Tx<'_, Sqlite>, m: M) -> Result<(), &'a str> { loop {} }"
            ),
            [
                "the error type of a `#[message_handler]` function cannot borrow, \
              expected an owned type or `'static` references"
            ]
        );
    }

    #[test]
    fn every_signature_error_is_reported() {
        // not async, a type parameter, no transaction, not a `Result`
        let messages = sig_messages("fn f<T>(m: T) -> T { loop {} }");
        assert_eq!(messages.len(), 4, "{messages:#?}");
    }

    #[test]
    fn syntax_errors_come_with_signature_errors() {
        let messages = messages(quote!(topic = "a" group = "b"), "fn f() {}");
        assert_eq!(messages[0], "expected `,`");
        assert_eq!(messages.len(), 4, "{messages:#?}");
    }
}
