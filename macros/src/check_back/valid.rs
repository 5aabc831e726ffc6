//! Every check `#[check_back]` makes before generating code.
//!
//! All problems are collected and reported together, each at the token that
//! is wrong. Checks that need the type checker (the message is
//! `DeserializeOwned`, the error is `Display`) are left to rustc through
//! spanned bounds in the expansion.

use quote::quote;
use syn::{Error, PatType, Type};

use super::CheckBack;
use super::args::{ATTR, Args};
use super::sig::is_check_status;
use crate::common::args::RawArg;
use crate::common::sig::{Input, Sig, peel};
use crate::common::types::{
    EnvelopeShape, envelope_shape, first_borrow, first_impl_trait, state_type,
};
use crate::common::valid::{
    check_crate, check_no_impl_trait, check_qualifiers, check_result, check_topic, known_args,
    missing, type_to_string,
};
use crate::diag::{Errors, join};

/// What a `self` receiver stands in place of, for its message.
const PARAM: &str = "whose parameter is `&M` or `&txmsg::Envelope`";

/// How the attribute is written with its required arguments, for messages.
const EXAMPLE: &str = "topic = \"payments.requested\"";

/// Checks the arguments and the function, and returns what the expansion
/// needs, or every error found.
pub(crate) fn check<'a>(
    raw: syn::Result<Vec<RawArg>>,
    sig: &Sig<'a>,
) -> syn::Result<CheckBack<'a>> {
    let args = raw.and_then(check_args);
    let shape = join(
        join(
            check_qualifiers(sig, &ATTR, PARAM),
            check_no_impl_trait(sig, &ATTR),
        ),
        join(check_param(sig), check_output(sig)),
    );
    let (args, (_, ((message, states), error))) = join(args, shape)?;
    Ok(CheckBack {
        func: sig.func,
        args,
        message,
        states,
        error,
    })
}

/// Checks names and values of the attribute's arguments.
fn check_args(raw: Vec<RawArg>) -> syn::Result<Args> {
    let mut errors = Errors::default();
    let known = known_args(raw, &ATTR, &mut errors);
    let topic_written = known.written("topic");
    let mut topic = None;
    let mut krate = None;
    for (name, value) in known.args {
        let checked = match name.as_str() {
            "topic" => check_topic(value, "topic", "\"payments.requested\"", &ATTR)
                .map(|v| topic = Some(v)),
            _ => check_crate(value, &ATTR).map(|v| krate = Some(v)),
        };
        if let Err(error) = checked {
            errors.push(error);
        }
    }
    if !topic_written {
        errors.push(missing("topic", &ATTR, EXAMPLE));
    }
    errors.finish(())?;
    Ok(Args {
        topic: topic.ok_or_else(|| missing("topic", &ATTR, EXAMPLE))?,
        krate,
    })
}

/// The parameters: the message type `M` of `&M` (`None` for
/// `&txmsg::Envelope`), then the `T` of each `State<T>`.
fn check_param<'a>(sig: &Sig<'a>) -> syn::Result<(Option<&'a Type>, Vec<&'a Type>)> {
    const COUNT: &str = "expected the parameters of a `#[check_back]` function: \
                         `message: &M` or `envelope: &txmsg::Envelope`, then optionally \
                         `State<T>` parameters";
    let typed: Vec<_> = sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            Input::Typed { arg, tx } => Some((*arg, tx.is_some())),
            Input::Receiver(_) => None,
        })
        .collect();
    let (first, rest) = match typed.as_slice() {
        // A `self` alone is reported by `check_qualifiers`.
        [] if sig.inputs.is_empty() => {
            return Err(Error::new(sig.func.sig.paren_token.span.join(), COUNT));
        }
        [] => return Ok((None, Vec::new())),
        [first, rest @ ..] => (first, rest),
    };
    if first.1 {
        return Err(Error::new_spanned(
            first.0,
            "`#[check_back]` functions get no transaction: they look at the business data \
             on their own, expected `message: &M` or `envelope: &txmsg::Envelope` as the \
             first parameter",
        ));
    }
    if state_type(&first.0.ty).is_some() {
        return Err(Error::new_spanned(
            first.0,
            "expected `message: &M` or `envelope: &txmsg::Envelope` as the first parameter \
             of a `#[check_back]` function, before the `State<T>` parameters",
        ));
    }
    let mut states = Vec::new();
    let mut extra = Vec::new();
    for (arg, _) in rest {
        match state_type(&arg.ty) {
            Some(inner) => states.push(inner),
            None => extra.push(*arg),
        }
    }
    let message = check_message(first.0);
    if !extra.is_empty() {
        let count = Error::new_spanned(quote!(#(#extra),*), COUNT);
        return Err(match message {
            Ok(_) => count,
            Err(mut e) => {
                e.combine(count);
                e
            }
        });
    }
    Ok((message?, states))
}

/// `&M` or `&Envelope`.
fn check_message(arg: &PatType) -> syn::Result<Option<&Type>> {
    let ty = &*arg.ty;
    match envelope_shape(ty) {
        EnvelopeShape::Shared => return Ok(None),
        EnvelopeShape::Mut => {
            return Err(Error::new_spanned(
                ty,
                "expected `&txmsg::Envelope` as the parameter of a `#[check_back]` function; \
                 the envelope is shared, take it by `&`",
            ));
        }
        EnvelopeShape::Owned => {
            return Err(Error::new_spanned(
                ty,
                "expected `&txmsg::Envelope` as the parameter of a `#[check_back]` function; \
                 take it by reference",
            ));
        }
        EnvelopeShape::Other => {}
    }
    let by_reference = |elem: &Type| {
        Error::new_spanned(
            ty,
            format!(
                "`#[check_back]` functions take the message by shared reference, \
                 expected `&{}` rather than `{}`",
                type_to_string(elem),
                type_to_string(ty)
            ),
        )
    };
    let message = match peel(ty) {
        Type::Reference(reference) if reference.mutability.is_none() => &*reference.elem,
        Type::Reference(reference) => return Err(by_reference(&reference.elem)),
        _ => return Err(by_reference(ty)),
    };
    if first_impl_trait(message).is_some() {
        // Reported by `check_no_impl_trait`.
        return Ok(Some(message));
    }
    match first_borrow(message, false) {
        Some(borrow) => Err(Error::new_spanned(
            borrow,
            "the message type of a `#[check_back]` function cannot borrow, \
             expected an owned type (`M: DeserializeOwned`)",
        )),
        None => Ok(Some(message)),
    }
}

/// The error type of the `Result<CheckStatus, E>` return type.
fn check_output<'a>(sig: &Sig<'a>) -> syn::Result<&'a Type> {
    const EXPECTED: &str = "expected the return type `Result<CheckStatus, E>` of a \
                            `#[check_back]` function, where `E: Display`";
    let (ok, error) = check_result(sig, EXPECTED)?;
    if !is_check_status(ok) {
        return Err(Error::new_spanned(
            ok,
            format!(
                "{EXPECTED}; a check-back answers with `txmsg::half::CheckStatus`: \
                 `Commit`, `Rollback` or `Unknown`"
            ),
        ));
    }
    if first_impl_trait(error).is_some() {
        // Reported by `check_no_impl_trait`.
        return Ok(error);
    }
    match first_borrow(error, true) {
        Some(borrow) => Err(Error::new_spanned(
            borrow,
            "the error type of a `#[check_back]` function cannot borrow, \
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
    use crate::check_back::args;

    const GOOD_FN: &str = "async fn f(payment: &Payment) -> Result<CheckStatus, Error> { loop {} }";

    fn check_str(args: TokenStream, func: &str) -> syn::Result<(String, Option<String>, String)> {
        let func: ItemFn = syn::parse_str(func)?;
        let sig = Sig::new(&func);
        check(args::parse(args), &sig).map(|c| {
            (
                c.args.topic.value(),
                c.message.map(|m| m.to_token_stream().to_string()),
                c.error.to_token_stream().to_string(),
            )
        })
    }

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
        messages(quote!(topic = "a"), func)
    }

    const COUNT: &str = "expected the parameters of a `#[check_back]` function: \
                         `message: &M` or `envelope: &txmsg::Envelope`, then optionally \
                         `State<T>` parameters";
    const NOT_RESULT: &str = "expected the return type `Result<CheckStatus, E>` of a \
                              `#[check_back]` function, where `E: Display`";

    #[test]
    fn accepts_all_arguments() {
        let (topic, message, error) = check_str(
            quote!(topic = "payments.requested", crate = "::my_txmsg"),
            GOOD_FN,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(topic, "payments.requested");
        assert_eq!(message.as_deref(), Some("Payment"));
        assert_eq!(error, "Error");
    }

    #[test]
    fn accepts_the_documented_shapes() {
        for func in [
            GOOD_FN,
            "pub async fn f(e: &txmsg::Envelope) -> Result<txmsg::half::CheckStatus, String> \
             { loop {} }",
            "pub(crate) async fn f<'a>(_: &'a Vec<Payment>) \
             -> std::result::Result<CheckStatus, &'static str> { loop {} }",
        ] {
            assert!(
                sig_messages(func).is_empty(),
                "{func}: {:?}",
                sig_messages(func)
            );
        }
        let (_, message, _) = check_str(
            quote!(topic = "a"),
            "async fn f(e: &Envelope) -> Result<CheckStatus, E> { loop {} }",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(message, None);
    }

    #[test]
    fn arguments() {
        assert_eq!(
            args_messages(TokenStream::new()),
            ["missing `topic = \"...\"` in `#[check_back]`, \
              as in `#[check_back(topic = \"payments.requested\")]`"]
        );
        assert_eq!(
            args_messages(quote!(topik = "a")),
            [
                "unknown argument `topik` to `#[check_back]`, expected one of: topic, crate; \
              did you mean `topic`?"
            ]
        );
        assert_eq!(
            args_messages(quote!(topic = "a", group = "b")),
            ["unknown argument `group` to `#[check_back]`, expected one of: topic, crate"]
        );
        assert_eq!(
            args_messages(quote!(topic = "a", topic = "b")),
            ["duplicate argument `topic` to `#[check_back]`, expected each argument at most once"]
        );
        assert_eq!(
            args_messages(quote!(topic = "a b")),
            ["invalid topic `a b` in `#[check_back]`: \
              may contain only ASCII letters, digits, `.`, `-` and `_`"]
        );
    }

    #[test]
    fn shared_checks_name_this_attribute() {
        assert_eq!(
            sig_messages("fn f(m: &M) -> Result<CheckStatus, E> { loop {} }"),
            ["`#[check_back]` functions must be `async fn`"]
        );
        assert_eq!(
            sig_messages("async fn f<T>(m: &T) -> Result<CheckStatus, E> { loop {} }"),
            [
                "`#[check_back]` functions cannot have type or const parameters, \
              expected lifetime parameters only"
            ]
        );
        assert_eq!(
            sig_messages("async fn f(&self, m: &M) -> Result<CheckStatus, E> { loop {} }"),
            [
                "`#[check_back]` functions cannot take `self`, expected a free function \
              whose parameter is `&M` or `&txmsg::Envelope`"
            ]
        );
        assert_eq!(
            sig_messages("async fn f(&self) -> Result<CheckStatus, E> { loop {} }").len(),
            1
        );
        assert_eq!(
            sig_messages("async fn f(m: &impl Msg) -> Result<CheckStatus, E> { loop {} }"),
            [
                "`#[check_back]` functions cannot use `impl Trait` in their signature, \
              expected concrete types"
            ]
        );
    }

    #[test]
    fn parameter_count() {
        assert_eq!(
            sig_messages("async fn f() -> Result<CheckStatus, E> { loop {} }"),
            [COUNT]
        );
        assert_eq!(
            sig_messages("async fn f(m: &M, e: &Envelope) -> Result<CheckStatus, E> { loop {} }"),
            [COUNT]
        );
    }

    #[test]
    fn state_parameters_follow_the_message() {
        let func: ItemFn = syn::parse_str(
            "async fn f(e: &Envelope, a: State<App>, b: txmsg::State<Clients>) \
             -> Result<CheckStatus, E> { loop {} }",
        )
        .unwrap();
        let sig = Sig::new(&func);
        let c = check(args::parse(quote!(topic = "a")), &sig).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.message.is_none());
        let states: Vec<String> = c.states.iter().map(|t| type_to_string(t)).collect();
        assert_eq!(states, ["App", "Clients"]);
        assert_eq!(
            sig_messages("async fn f(s: State<App>, m: &M) -> Result<CheckStatus, E> { loop {} }"),
            [
                "expected `message: &M` or `envelope: &txmsg::Envelope` as the first parameter \
                 of a `#[check_back]` function, before the `State<T>` parameters"
            ]
        );
    }

    #[test]
    fn parameter_shape() {
        assert_eq!(
            sig_messages("async fn f(m: Payment) -> Result<CheckStatus, E> { loop {} }"),
            [
                "`#[check_back]` functions take the message by shared reference, \
              expected `&Payment` rather than `Payment`"
            ]
        );
        assert_eq!(
            sig_messages("async fn f(m: &mut Payment) -> Result<CheckStatus, E> { loop {} }"),
            [
                "`#[check_back]` functions take the message by shared reference, \
              expected `&Payment` rather than `&mut Payment`"
            ]
        );
        assert_eq!(
            sig_messages("async fn f(e: Envelope) -> Result<CheckStatus, E> { loop {} }"),
            [
                "expected `&txmsg::Envelope` as the parameter of a `#[check_back]` function; \
              take it by reference"
            ]
        );
        assert_eq!(
            sig_messages("async fn f(e: &mut Envelope) -> Result<CheckStatus, E> { loop {} }")
                .len(),
            1
        );
        assert!(
            sig_messages(
                "async fn f(tx: &mut Tx<'_, Sqlite>) -> Result<CheckStatus, E> { loop {} }"
            )[0]
            .starts_with("`#[check_back]` functions get no transaction")
        );
        assert_eq!(
            sig_messages("async fn f<'a>(m: &Note<'a>) -> Result<CheckStatus, E> { loop {} }"),
            [
                "the message type of a `#[check_back]` function cannot borrow, \
              expected an owned type (`M: DeserializeOwned`)"
            ]
        );
    }

    #[test]
    fn return_type() {
        for func in [
            "async fn f(m: &M) { }",
            "async fn f(m: &M) -> CheckStatus { loop {} }",
        ] {
            assert_eq!(sig_messages(func), [NOT_RESULT], "{func}");
        }
        assert_eq!(
            sig_messages("async fn f(m: &M) -> Result<bool, E> { loop {} }"),
            [format!(
                "{NOT_RESULT}; a check-back answers with `txmsg::half::CheckStatus`: \
                 `Commit`, `Rollback` or `Unknown`"
            )]
        );
        assert_eq!(
            sig_messages("async fn f(m: &M) -> txmsg::Result<CheckStatus> { loop {} }"),
            [format!(
                "{NOT_RESULT}; this `Result` alias hides `E`, write it out, \
                 as in `Result<CheckStatus, txmsg::Error>`"
            )]
        );
        assert_eq!(
            sig_messages("async fn f<'a>(m: &M) -> Result<CheckStatus, &'a str> { loop {} }"),
            [
                "the error type of a `#[check_back]` function cannot borrow, \
              expected an owned type or `'static` references"
            ]
        );
    }

    #[test]
    fn every_error_is_reported() {
        // unknown argument, missing topic, not async, a type parameter, two
        // parameters, not a Result
        let messages = messages(
            quote!(grp = "a"),
            "fn f<T>(a: &T, b: &T) -> bool { loop {} }",
        );
        assert_eq!(messages.len(), 6, "{messages:#?}");
    }
}
