//! A typed model of the annotated function, borrowing from syn.
//!
//! Building the model never fails: each parameter and the return type are
//! classified by their shape, and each macro's `valid.rs` decides what is
//! acceptable.

use syn::{
    FnArg, GenericArgument, ItemFn, PatType, PathArguments, PathSegment, Receiver, ReturnType,
    Type, TypePath,
};

/// The annotated function, classified.
pub(crate) struct Sig<'a> {
    /// The function as parsed.
    pub(crate) func: &'a ItemFn,
    /// Its parameters, in order.
    pub(crate) inputs: Vec<Input<'a>>,
    /// Its return type.
    pub(crate) output: Output<'a>,
}

/// One parameter.
pub(crate) enum Input<'a> {
    /// `self`, `&self`, `&mut self`, ...
    Receiver(&'a Receiver),
    /// `pattern: Type`.
    Typed {
        /// The parameter as written.
        arg: &'a PatType,
        /// Set if the type has the shape of a transaction, `&mut ..Tx<'_, DB>`.
        tx: Option<TxType<'a>>,
    },
}

/// A type of the shape `&mut path::to::Tx<'c, DB>`.
pub(crate) struct TxType<'a> {
    /// The database type `DB`.
    pub(crate) db: &'a Type,
}

/// The return type.
pub(crate) enum Output<'a> {
    /// No `-> Type`.
    Default,
    /// `path::to::Result<T, E>`.
    Result {
        /// The success type `T`.
        ok: &'a Type,
        /// The error type `E`.
        error: &'a Type,
    },
    /// `path::to::Result<T>`, an alias that hides the error type, such as
    /// `txmsg::Result<T>` or `anyhow::Result<T>`.
    ShortResult {
        /// The whole type.
        ty: &'a Type,
        /// The success type `T`.
        ok: &'a Type,
    },
    /// Anything else.
    Other(&'a Type),
}

impl<'a> Sig<'a> {
    /// Classifies the parameters and return type of `func`.
    pub(crate) fn new(func: &'a ItemFn) -> Self {
        let inputs = func
            .sig
            .inputs
            .iter()
            .map(|input| match input {
                FnArg::Receiver(receiver) => Input::Receiver(receiver),
                FnArg::Typed(arg) => Input::Typed {
                    arg,
                    tx: tx_type(&arg.ty),
                },
            })
            .collect();
        let output = match &func.sig.output {
            ReturnType::Default => Output::Default,
            ReturnType::Type(_, ty) => match result_type(ty) {
                Some(ResultArgs::Both(ok, error)) => Output::Result { ok, error },
                Some(ResultArgs::Ok(ok)) => Output::ShortResult { ty, ok },
                None => Output::Other(ty),
            },
        };
        Sig {
            func,
            inputs,
            output,
        }
    }
}

/// `DB` if `ty` is `&mut path::to::Tx<'c, DB>` (or `&mut Tx<DB>`, the
/// lifetime elided).
fn tx_type(ty: &Type) -> Option<TxType<'_>> {
    let Type::Reference(reference) = peel(ty) else {
        return None;
    };
    reference.mutability?;
    let args = last_segment_args(peel(&reference.elem), "Tx")?;
    let mut lifetimes = 0;
    let mut types = Vec::new();
    for arg in args {
        match arg {
            GenericArgument::Lifetime(_) if types.is_empty() => lifetimes += 1,
            GenericArgument::Type(ty) => types.push(ty),
            _ => return None,
        }
    }
    match (lifetimes, types.as_slice()) {
        (0 | 1, [db]) => Some(TxType { db }),
        _ => None,
    }
}

/// The type arguments of a `Result`.
enum ResultArgs<'a> {
    /// `Result<T, E>`.
    Both(&'a Type, &'a Type),
    /// `Result<T>`.
    Ok(&'a Type),
}

/// The arguments if `ty` is `path::to::Result<T, E>` or `path::to::Result<T>`.
fn result_type(ty: &Type) -> Option<ResultArgs<'_>> {
    let args = last_segment_args(peel(ty), "Result")?;
    match args.as_slice() {
        [GenericArgument::Type(ok), GenericArgument::Type(error)] => {
            Some(ResultArgs::Both(ok, error))
        }
        [GenericArgument::Type(ok)] => Some(ResultArgs::Ok(ok)),
        _ => None,
    }
}

/// The last segment of `ty` if it is a path (without `<T as Trait>::`)
/// whose last segment is called `name`.
pub(crate) fn last_segment<'a>(ty: &'a Type, name: &str) -> Option<&'a PathSegment> {
    let Type::Path(TypePath { qself: None, path }) = ty else {
        return None;
    };
    path.segments.last().filter(|last| last.ident == name)
}

/// The generic arguments of `ty` if it is a path (without `<T as Trait>::`)
/// whose last segment is `name<...>`.
fn last_segment_args<'a>(ty: &'a Type, name: &str) -> Option<Vec<&'a GenericArgument>> {
    match &last_segment(ty, name)?.arguments {
        PathArguments::AngleBracketed(args) => Some(args.args.iter().collect()),
        _ => None,
    }
}

/// `ty` without the parentheses and invisible groups (from `macro_rules!`
/// fragments) around it.
pub(crate) fn peel(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Paren(inner) => ty = &inner.elem,
            Type::Group(inner) => ty = &inner.elem,
            _ => return ty,
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::{ToTokens, quote};

    use super::*;

    fn db_of(ty: Type) -> Option<String> {
        tx_type(&ty).map(|tx| tx.db.to_token_stream().to_string())
    }

    #[test]
    fn recognises_transaction_types() {
        let sqlite = Some("sqlx :: Sqlite".to_owned());
        assert_eq!(db_of(syn::parse_quote!(&mut Tx<'_, sqlx::Sqlite>)), sqlite);
        assert_eq!(
            db_of(syn::parse_quote!(&mut txmsg::Tx<'_, sqlx::Sqlite>)),
            sqlite
        );
        assert_eq!(
            db_of(syn::parse_quote!(&mut ::txmsg::Tx<'c, sqlx::Sqlite>)),
            sqlite
        );
        assert_eq!(
            db_of(syn::parse_quote!(&'a mut Tx<'b, sqlx::Sqlite>)),
            sqlite
        );
        assert_eq!(db_of(syn::parse_quote!(&mut Tx<sqlx::Sqlite>)), sqlite);
        assert_eq!(
            db_of(syn::parse_quote!(&mut (Tx<'_, sqlx::Sqlite>))),
            sqlite
        );
    }

    #[test]
    fn refuses_other_types() {
        for ty in [
            quote!(Tx<'_, Sqlite>),
            quote!(&Tx<'_, Sqlite>),
            quote!(&mut Transaction<'_, Sqlite>),
            quote!(&mut Tx<'_>),
            quote!(&mut Tx<'_, Sqlite, Extra>),
            quote!(&mut Tx<Sqlite, '_>),
            quote!(&mut Tx),
            quote!(&mut <X as Y>::Tx<'_, Sqlite>),
            quote!(&mut sqlx::Transaction<'_, Sqlite>),
            quote!(i64),
        ] {
            assert_eq!(db_of(syn::parse2(ty.clone()).unwrap()), None, "{ty}");
        }
    }

    #[test]
    fn recognises_result_types() {
        for ty in [
            quote!(Result<Order, Error>),
            quote!(std::result::Result<Order, txmsg::Error>),
            quote!((Result<Order, Error>)),
        ] {
            let ty: Type = syn::parse2(ty).unwrap();
            let Some(ResultArgs::Both(ok, error)) = result_type(&ty) else {
                panic!()
            };
            assert_eq!(ok.to_token_stream().to_string(), "Order");
            assert!(error.to_token_stream().to_string().ends_with("Error"));
        }
        for ty in [quote!(Result<Order>), quote!(txmsg::Result<Order>)] {
            let ty: Type = syn::parse2(ty).unwrap();
            assert!(matches!(result_type(&ty), Some(ResultArgs::Ok(_))));
        }
        for ty in [
            quote!(Option<Order>),
            quote!(Result),
            quote!(Result<'a, M, E>),
            quote!(()),
        ] {
            assert!(
                result_type(&syn::parse2(ty.clone()).unwrap()).is_none(),
                "{ty}"
            );
        }
    }

    #[test]
    fn finds_last_segments() {
        let ty: Type = syn::parse_quote!(txmsg::Envelope);
        assert!(last_segment(&ty, "Envelope").is_some());
        assert!(last_segment(&ty, "txmsg").is_none());
        let ty: Type = syn::parse_quote!(<X as Y>::Envelope);
        assert!(last_segment(&ty, "Envelope").is_none());
    }

    #[test]
    fn classifies_a_function() {
        let func: ItemFn = syn::parse_quote! {
            async fn f(tx: &mut Tx<'_, Sqlite>, (a, b): (i64, i64)) -> Result<M, E> {
                loop {}
            }
        };
        let sig = Sig::new(&func);
        assert!(matches!(sig.inputs[0], Input::Typed { tx: Some(_), .. }));
        assert!(matches!(sig.inputs[1], Input::Typed { tx: None, .. }));
        assert!(matches!(sig.output, Output::Result { .. }));
    }

    #[test]
    fn classifies_receivers_and_missing_returns() {
        let func: ItemFn = syn::parse_quote!(
            fn f(&self) {}
        );
        let sig = Sig::new(&func);
        assert!(matches!(sig.inputs[0], Input::Receiver(_)));
        assert!(matches!(sig.output, Output::Default));
    }
}
