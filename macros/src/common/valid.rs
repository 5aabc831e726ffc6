//! Checks every macro makes the same way, with the same wording: argument
//! names, string literals, topic names, `crate = "..."`, the qualifiers of
//! the function, its transaction parameter and its `Result` return type.

use proc_macro2::Span;
use quote::ToTokens;
use syn::{Error, Expr, ExprLit, GenericParam, Lit, LitStr, PatType, Path, Type};

use super::args::{Attr, RawArg, path_to_string};
use super::sig::{Input, Output, Sig};
use super::types::first_impl_trait;
use crate::diag::{Errors, did_you_mean};

/// Longest topic accepted, in bytes, as in the runtime's `MAX_TOPIC_LEN`.
pub(crate) const MAX_TOPIC_LEN: usize = 200;

/// The arguments whose names the attribute accepts, each with a value.
pub(crate) struct Known {
    /// `(name, value)` in the order written, each name at most once.
    pub(crate) args: Vec<(String, Expr)>,
    /// Every accepted name written, with a value or not, as written (the
    /// first time), for errors that point at it.
    seen: Vec<(String, Path)>,
    /// The names unknown arguments were taken for (`group` for `grup`).
    suggested: Vec<&'static str>,
}

impl Known {
    /// Whether `key` was written, or misspelled, so that a key with a bad
    /// value or a typo is not also reported as missing.
    pub(crate) fn written(&self, key: &str) -> bool {
        self.seen.iter().any(|(name, _)| name == key) || self.suggested.contains(&key)
    }

    /// The name `key` as written, if it was: for a flag, whether it is set;
    /// for any key, where to point at it.
    pub(crate) fn name(&self, key: &str) -> Option<&Path> {
        self.seen
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, path)| path)
    }
}

/// Sorts `raw` into the known arguments, reporting into `errors` every name
/// the attribute does not accept, every repeated name (at its second
/// occurrence), every name written without a value and every flag written
/// with one. Flags are not in [`Known::args`]: see [`Known::name`].
pub(crate) fn known_args(raw: Vec<RawArg>, attr: &Attr, errors: &mut Errors) -> Known {
    let mut known = Known {
        args: Vec::new(),
        seen: Vec::new(),
        suggested: Vec::new(),
    };
    for RawArg { name: path, value } in raw {
        let name = path_to_string(&path);
        if !attr.keys.contains(&name.as_str()) {
            let suggestion = suggest(&name, attr);
            errors.push(unknown_argument(&path, &name, suggestion, attr));
            known.suggested.extend(suggestion);
            continue;
        }
        if known.seen.iter().any(|(seen, _)| *seen == name) {
            errors.push(Error::new_spanned(
                &path,
                format!(
                    "duplicate argument `{name}` to `#[{}]`, expected each argument at most once",
                    attr.name
                ),
            ));
            continue;
        }
        known.seen.push((name.clone(), path.clone()));
        let flag = attr.flags.contains(&name.as_str());
        match value {
            Some(value) if flag => errors.push(Error::new_spanned(
                value,
                format!(
                    "`{name}` takes no value in `#[{}]`, expected `{name}` alone",
                    attr.name
                ),
            )),
            None if flag => {}
            Some(value) => known.args.push((name, value)),
            None => errors.push(Error::new_spanned(
                &path,
                format!(
                    "expected `{name} = {}` in `#[{}]`",
                    (attr.placeholder)(&name),
                    attr.name
                ),
            )),
        }
    }
    known
}

/// The argument an unknown `name` most likely stands for.
fn suggest(name: &str, attr: &Attr) -> Option<&'static str> {
    let synonym = attr
        .synonyms
        .iter()
        .find(|(synonym, _)| *synonym == name)
        .map(|(_, key)| *key);
    synonym.or_else(|| did_you_mean(name, attr.keys))
}

/// The error for a name the attribute does not accept.
fn unknown_argument(path: &Path, name: &str, suggestion: Option<&str>, attr: &Attr) -> Error {
    let mut message = format!(
        "unknown argument `{name}` to `#[{}]`, expected one of: {}",
        attr.name,
        attr.keys.join(", ")
    );
    if let Some(close) = suggestion {
        message.push_str(&format!("; did you mean `{close}`?"));
    }
    Error::new_spanned(path, message)
}

/// The error for a required argument that is not there, at the attribute:
/// "missing `topic = "..."` in `#[attr]`, as in `#[attr(example)]`".
pub(crate) fn missing(key: &str, attr: &Attr, example: &str) -> Error {
    Error::new(
        Span::call_site(),
        format!(
            "missing `{key} = {}` in `#[{name}]`, as in `#[{name}({example})]`",
            (attr.placeholder)(key),
            name = attr.name,
        ),
    )
}

/// `value` as a string literal, or an error saying what `key` expects.
pub(crate) fn string_literal(
    value: Expr,
    key: &str,
    example: &str,
    attr: &Attr,
) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit),
        Expr::Group(group) => string_literal(*group.expr, key, example, attr),
        other => Err(Error::new_spanned(
            other,
            format!(
                "expected a string literal for `{key}` in `#[{}]`, as in `{key} = {example}`",
                attr.name
            ),
        )),
    }
}

/// A string literal that follows the runtime's topic rule, for `key`
/// (`topic`, or `group`, which has the same rule).
pub(crate) fn check_topic(
    value: Expr,
    key: &str,
    example: &str,
    attr: &Attr,
) -> syn::Result<LitStr> {
    let lit = string_literal(value, key, example, attr)?;
    let text = lit.value();
    match topic_rule_broken(&text) {
        None => Ok(lit),
        Some(reason) => Err(Error::new(
            lit.span(),
            format!("invalid {key} `{text}` in `#[{}]`: {reason}", attr.name),
        )),
    }
}

/// The rule `topic` breaks, if any: the runtime's `validate_topic` rule,
/// restated (this crate cannot depend on the runtime) with the same wording.
pub(crate) fn topic_rule_broken(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        return Some("must not be empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Some("must be at most 200 bytes");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Some("may contain only ASCII letters, digits, `.`, `-` and `_`");
    }
    if topic.starts_with('.') || topic.ends_with('.') || topic.contains("..") {
        return Some("must not start or end with `.` or contain an empty segment");
    }
    None
}

/// The path of a renamed `txmsg` dependency.
pub(crate) fn check_crate(value: Expr, attr: &Attr) -> syn::Result<Path> {
    let lit = string_literal(value, "crate", "\"my_txmsg\"", attr)?;
    lit.parse::<Path>().map_err(|_| {
        Error::new(
            lit.span(),
            format!(
                "expected a path such as \"my_txmsg\" or \"::my_txmsg\" for `crate` \
                 in `#[{}]`, found \"{}\"",
                attr.name,
                lit.value()
            ),
        )
    })
}

/// The qualifiers and generics: an `async fn`, safe, not `extern`, generic
/// over lifetimes only, no `self`.
///
/// `first` completes "expected a free function ..." in the message for a
/// `self` receiver: "whose first parameter is `&mut txmsg::Tx<'_, DB>`".
pub(crate) fn check_qualifiers(sig: &Sig<'_>, attr: &Attr, first: &str) -> syn::Result<()> {
    let name = attr.name;
    let mut errors = Errors::default();
    let fn_sig = &sig.func.sig;
    if fn_sig.asyncness.is_none() {
        errors.push(Error::new(
            fn_sig.fn_token.span,
            format!("`#[{name}]` functions must be `async fn`"),
        ));
    }
    if let Some(unsafety) = &fn_sig.unsafety {
        errors.push(Error::new(
            unsafety.span,
            format!("`#[{name}]` functions cannot be `unsafe`, expected a safe `async fn`"),
        ));
    }
    if let Some(abi) = &fn_sig.abi {
        errors.push(Error::new_spanned(
            abi,
            format!("`#[{name}]` functions cannot be `extern`, expected a Rust `async fn`"),
        ));
    }
    for param in &fn_sig.generics.params {
        if !matches!(param, GenericParam::Lifetime(_)) {
            errors.push(Error::new_spanned(
                param,
                format!(
                    "`#[{name}]` functions cannot have type or const parameters, \
                     expected lifetime parameters only"
                ),
            ));
        }
    }
    for input in &sig.inputs {
        if let Input::Receiver(receiver) = input {
            errors.push(Error::new_spanned(
                receiver,
                format!(
                    "`#[{name}]` functions cannot take `self`, expected a free function {first}"
                ),
            ));
        }
    }
    errors.finish(())
}

/// No `impl Trait` in the signature: the generated code names the types
/// outside the function.
pub(crate) fn check_no_impl_trait(sig: &Sig<'_>, attr: &Attr) -> syn::Result<()> {
    let mut errors = Errors::default();
    let mut types: Vec<&Type> = sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            Input::Typed { arg, .. } => Some(&*arg.ty),
            Input::Receiver(_) => None,
        })
        .collect();
    if let syn::ReturnType::Type(_, ty) = &sig.func.sig.output {
        types.push(ty);
    }
    for ty in types {
        if let Some(found) = first_impl_trait(ty) {
            errors.push(Error::new_spanned(
                found,
                format!(
                    "`#[{}]` functions cannot use `impl Trait` in their signature, \
                     expected concrete types",
                    attr.name
                ),
            ));
        }
    }
    errors.finish(())
}

/// The transaction parameter (first, `&mut Tx<'_, DB>`), its database type
/// `DB`, and the parameters after it.
#[allow(clippy::type_complexity)]
pub(crate) fn check_tx<'a>(
    sig: &Sig<'a>,
    attr: &Attr,
) -> syn::Result<(&'a PatType, &'a Type, Vec<&'a PatType>)> {
    let expected = format!(
        "expected `&mut txmsg::Tx<'_, DB>` as the first parameter of a `#[{}]` function",
        attr.name
    );
    let mut typed = sig.inputs.iter().filter_map(|input| match input {
        Input::Typed { arg, tx } => Some((*arg, tx.as_ref())),
        Input::Receiver(_) => None,
    });
    let Some((first, first_tx)) = typed.next() else {
        return Err(Error::new(sig.func.sig.paren_token.span.join(), expected));
    };
    let rest: Vec<_> = typed.collect();
    let Some(tx) = first_tx else {
        if let Some((misplaced, _)) = rest.iter().find(|(_, tx)| tx.is_some()) {
            return Err(Error::new_spanned(
                misplaced,
                format!(
                    "the `&mut txmsg::Tx<'_, DB>` parameter of a `#[{}]` function must come first",
                    attr.name
                ),
            ));
        }
        return Err(Error::new_spanned(first, expected));
    };
    Ok((first, tx.db, rest.into_iter().map(|(arg, _)| arg).collect()))
}

/// The success and error types of a `Result<T, E>` return type, or an error
/// with the message `expected`, at the return type (or where it would be).
pub(crate) fn check_result<'a>(sig: &Sig<'a>, expected: &str) -> syn::Result<(&'a Type, &'a Type)> {
    match sig.output {
        Output::Result { ok, error } => Ok((ok, error)),
        Output::ShortResult { ty, ok } => Err(Error::new_spanned(
            ty,
            format!(
                "{expected}; this `Result` alias hides `E`, write it out, as in `Result<{}, {}>`",
                type_to_string(ok),
                error_of_alias(ty)
            ),
        )),
        Output::Other(ty) => Err(Error::new_spanned(ty, expected)),
        Output::Default => Err(Error::new(sig.func.sig.paren_token.span.close(), expected)),
    }
}

/// The error type an alias such as `anyhow::Result<T>` most likely hides:
/// `anyhow::Error`, by the convention crates follow; `txmsg::Error` for a
/// bare `Result<T>`, whose definition we cannot see.
fn error_of_alias(ty: &Type) -> String {
    if let Type::Path(path) = super::sig::peel(ty)
        && path.qself.is_none()
        && path.path.segments.len() > 1
    {
        let mut error = path.path.clone();
        if let Some(last) = error.segments.last_mut() {
            last.ident = syn::Ident::new("Error", last.ident.span());
            last.arguments = syn::PathArguments::None;
        }
        return path_to_string(&error);
    }
    "txmsg::Error".to_owned()
}

/// A type as users write it, more or less: `Vec<a::B>` rather than the
/// token stream's `Vec < a :: B >`.
pub(crate) fn type_to_string(ty: &Type) -> String {
    let text = ty.to_token_stream().to_string();
    [
        (" :: ", "::"),
        (":: ", "::"),
        (" < ", "<"),
        (" >", ">"),
        ("& ", "&"),
        (" ,", ","),
    ]
    .iter()
    .fold(text, |text, (from, to)| text.replace(from, to))
}

#[cfg(test)]
mod tests {
    use quote::quote;
    use syn::ItemFn;

    use super::*;
    use crate::common::args::{self, tests::TEST};

    fn known_messages(tokens: proc_macro2::TokenStream) -> (Vec<String>, Vec<String>) {
        let mut errors = Errors::default();
        let known = known_args(args::parse(tokens, &TEST).unwrap(), &TEST, &mut errors);
        let names = known.args.into_iter().map(|(name, _)| name).collect();
        let messages = match errors.finish(()) {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        };
        (names, messages)
    }

    #[test]
    fn sorts_arguments() {
        let (names, messages) = known_messages(quote!(topic = "a", kye = 1, key, topic = "b"));
        assert_eq!(names, ["topic"]);
        assert_eq!(
            messages,
            [
                "unknown argument `kye` to `#[test_attr]`, expected one of: topic, key, flag, \
                 crate; did you mean `key`?",
                "expected `key = <expression>` in `#[test_attr]`",
                "duplicate argument `topic` to `#[test_attr]`, expected each argument at most once",
            ]
        );
    }

    #[test]
    fn a_misspelled_key_is_not_also_missing() {
        let mut errors = Errors::default();
        let raw = args::parse(quote!(topik = "a", crate = "b"), &TEST).unwrap();
        let known = known_args(raw, &TEST, &mut errors);
        assert!(known.written("topic"));
        assert!(known.written("crate"));
        assert!(!known.written("key"));
        // A typo is not the key itself: the key may still follow.
        let raw = args::parse(quote!(topik = "a", topic = "b"), &TEST).unwrap();
        let known = known_args(raw, &TEST, &mut errors);
        assert_eq!(known.args.len(), 1);
    }

    #[test]
    fn flags_take_no_value() {
        let mut errors = Errors::default();
        let raw = args::parse(quote!(flag, topic = "a"), &TEST).unwrap();
        let known = known_args(raw, &TEST, &mut errors);
        assert!(known.name("flag").is_some());
        assert!(known.name("key").is_none());
        assert_eq!(known.args.len(), 1);
        assert!(errors.finish(()).is_ok());

        let (names, messages) = known_messages(quote!(flag = true, flag));
        assert!(names.is_empty());
        assert_eq!(
            messages,
            [
                "`flag` takes no value in `#[test_attr]`, expected `flag` alone",
                "duplicate argument `flag` to `#[test_attr]`, expected each argument at most once",
            ]
        );
    }

    #[test]
    fn synonyms_are_suggested() {
        let (_, messages) = known_messages(quote!(routing_key = 1));
        assert_eq!(
            messages,
            [
                "unknown argument `routing_key` to `#[test_attr]`, expected one of: topic, key, \
              flag, crate; did you mean `key`?"
            ]
        );
    }

    #[test]
    fn missing_names_the_key_and_shows_an_example() {
        assert_eq!(
            missing("topic", &TEST, "topic = \"a\"").to_string(),
            "missing `topic = \"...\"` in `#[test_attr]`, as in `#[test_attr(topic = \"a\")]`"
        );
    }

    #[test]
    fn topic_rule() {
        for good in [
            "orders",
            "orders.placed",
            "billing-v2.invoice_created",
            "a.b.c",
        ] {
            assert_eq!(topic_rule_broken(good), None, "{good}");
        }
        let only = Some("may contain only ASCII letters, digits, `.`, `-` and `_`");
        let segment = Some("must not start or end with `.` or contain an empty segment");
        for (bad, reason) in [
            ("", Some("must not be empty")),
            ("orders.*", only),
            ("a b", only),
            ("a/b", only),
            ("é", only),
            (".a", segment),
            ("a.", segment),
            ("a..b", segment),
        ] {
            assert_eq!(topic_rule_broken(bad), reason, "{bad:?}");
        }
        assert_eq!(topic_rule_broken(&"x".repeat(MAX_TOPIC_LEN)), None);
        assert_eq!(
            topic_rule_broken(&"x".repeat(MAX_TOPIC_LEN + 1)),
            Some("must be at most 200 bytes")
        );
    }

    #[test]
    fn check_topic_names_the_key() {
        let error = check_topic(syn::parse_quote!("a b"), "group", "\"billing\"", &TEST)
            .err()
            .unwrap();
        assert_eq!(
            error.to_string(),
            "invalid group `a b` in `#[test_attr]`: \
             may contain only ASCII letters, digits, `.`, `-` and `_`"
        );
        let error = check_topic(syn::parse_quote!(GROUP), "group", "\"billing\"", &TEST)
            .err()
            .unwrap();
        assert_eq!(
            error.to_string(),
            "expected a string literal for `group` in `#[test_attr]`, as in `group = \"billing\"`"
        );
    }

    #[test]
    fn short_results_get_a_hint() {
        for (ty, hint) in [
            ("txmsg::Result<()>", "as in `Result<(), txmsg::Error>`"),
            ("anyhow::Result<()>", "as in `Result<(), anyhow::Error>`"),
            ("std::io::Result<u8>", "as in `Result<u8, std::io::Error>`"),
            ("Result<Vec<u8>>", "as in `Result<Vec<u8>, txmsg::Error>`"),
        ] {
            let func: ItemFn = syn::parse_str(&format!("async fn f() -> {ty} {{}}")).unwrap();
            let error = check_result(&Sig::new(&func), "expected").err().unwrap();
            assert_eq!(
                error.to_string(),
                format!("expected; this `Result` alias hides `E`, write it out, {hint}")
            );
        }
    }

    #[test]
    fn types_print_as_written() {
        for text in [
            "Order",
            "Vec<Order>",
            "Option<Vec<a::B>>",
            "&'a str",
            "::a::B<C, D>",
            "()",
        ] {
            let ty: Type = syn::parse_str(text).unwrap();
            assert_eq!(type_to_string(&ty), text);
        }
    }

    #[test]
    fn qualifiers_name_the_attribute() {
        let func: ItemFn = syn::parse_str("fn f() {}").unwrap();
        let error = check_qualifiers(&Sig::new(&func), &TEST, "").err().unwrap();
        assert_eq!(
            error.to_string(),
            "`#[test_attr]` functions must be `async fn`"
        );
    }
}
