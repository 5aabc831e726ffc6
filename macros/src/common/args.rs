//! Splitting an attribute's arguments into `name = value` pairs.
//!
//! Parsing keeps every value as an expression; which names exist and what
//! their values must look like is checked afterwards (see
//! [`valid::known_args`](super::valid::known_args)), so that all mistakes
//! are reported at once.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::{Expr, Path, Token};

/// An attribute macro, as its messages describe it.
pub(crate) struct Attr {
    /// The attribute's name, without `#[]`: `transactional_message`.
    pub(crate) name: &'static str,
    /// The argument names it accepts, in the order the docs list them.
    pub(crate) keys: &'static [&'static str],
    /// Those of `keys` written alone, without a value: `half`.
    pub(crate) flags: &'static [&'static str],
    /// What the value of each argument looks like, for messages: `"..."`,
    /// `<expression>`, `5`.
    pub(crate) placeholder: fn(&str) -> &'static str,
    /// Names other libraries use for an argument, and the argument's name
    /// here (`max_retries` for `max_attempts`), for suggestions that edit
    /// distance cannot make.
    pub(crate) synonyms: &'static [(&'static str, &'static str)],
}

/// One argument as written: `name = value`, or a bare `name`.
pub(crate) struct RawArg {
    /// The name, a path as written (`topic`, or a mistake like `a::b`).
    pub(crate) name: Path,
    /// The value after `=`, if there is one.
    pub(crate) value: Option<Expr>,
}

/// Splits the arguments of `#[attr(...)]` into [`RawArg`]s.
///
/// Fails only on syntax that cannot be read at all, such as a missing comma.
pub(crate) fn parse(tokens: TokenStream, attr: &Attr) -> syn::Result<Vec<RawArg>> {
    let mut raw = Vec::new();
    let parser = syn::meta::parser(|meta| {
        let value = if meta.input.peek(Token![=]) {
            Some(meta.value()?.parse::<Expr>()?)
        } else if meta.input.is_empty() || meta.input.peek(Token![,]) {
            None
        } else {
            let name = path_to_string(&meta.path);
            return Err(meta.input.error(format!(
                "expected `=` after `{name}` in `#[{}]`, as in `{name} = ...`",
                attr.name
            )));
        };
        raw.push(RawArg {
            name: meta.path,
            value,
        });
        Ok(())
    });
    parser.parse2(tokens)?;
    Ok(raw)
}

/// `a::b` for a path, for messages.
pub(crate) fn path_to_string(path: &Path) -> String {
    let mut s = String::new();
    if path.leading_colon.is_some() {
        s.push_str("::");
    }
    for (i, segment) in path.segments.iter().enumerate() {
        if i > 0 {
            s.push_str("::");
        }
        s.push_str(&segment.ident.to_string());
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use quote::quote;

    use super::*;

    /// An attribute for tests.
    pub(crate) const TEST: Attr = Attr {
        name: "test_attr",
        keys: &["topic", "key", "flag", "crate"],
        flags: &["flag"],
        placeholder: |key| {
            if key == "key" {
                "<expression>"
            } else {
                "\"...\""
            }
        },
        synonyms: &[("routing_key", "key")],
    };

    fn names(raw: &[RawArg]) -> Vec<String> {
        raw.iter().map(|arg| path_to_string(&arg.name)).collect()
    }

    #[test]
    fn empty_arguments_parse_to_nothing() {
        assert!(parse(TokenStream::new(), &TEST).unwrap().is_empty());
    }

    #[test]
    fn keeps_every_argument_in_order() {
        let raw = parse(
            quote!(topic = "a", key = order.id, key = format!("x"), crate = "x",),
            &TEST,
        )
        .unwrap();
        assert_eq!(names(&raw), ["topic", "key", "key", "crate"]);
        assert!(raw.iter().all(|arg| arg.value.is_some()));
        assert!(matches!(raw[1].value, Some(Expr::Field(_))));
        assert!(matches!(raw[2].value, Some(Expr::Macro(_))));
    }

    #[test]
    fn keeps_unknown_repeated_and_bare_names_for_validation() {
        let raw = parse(quote!(topic = "a", topic = "b", half, a::b = 1), &TEST).unwrap();
        assert_eq!(names(&raw), ["topic", "topic", "half", "a::b"]);
        assert!(raw[2].value.is_none());
    }

    #[test]
    fn keyword_names_parse() {
        let raw = parse(quote!(crate = "x", type = 1), &TEST).unwrap();
        assert_eq!(names(&raw), ["crate", "type"]);
    }

    #[test]
    fn missing_comma_is_a_syntax_error() {
        let err = parse(quote!(topic = "a" key = b), &TEST).err().unwrap();
        assert_eq!(err.to_string(), "expected `,`");
    }

    #[test]
    fn list_syntax_asks_for_equals() {
        let err = parse(quote!(topic("a")), &TEST).err().unwrap();
        assert_eq!(
            err.to_string(),
            "expected `=` after `topic` in `#[test_attr]`, as in `topic = ...`"
        );
    }

    #[test]
    fn paths_print_as_written() {
        for text in ["a", "a::b", "::a::b"] {
            let path: Path = syn::parse_str(text).unwrap();
            assert_eq!(path_to_string(&path), text);
        }
    }
}
