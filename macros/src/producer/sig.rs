//! A typed model of the annotated function, borrowing from syn.
//!
//! Building the model never fails: each parameter and the return type are
//! classified by their shape, and `valid.rs` decides what is acceptable.

use syn::{
    FnArg, GenericArgument, Ident, ItemFn, Pat, PatType, PathArguments, Receiver, ReturnType, Type,
    TypePath,
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
    /// `path::to::Result<M, E>`.
    Result {
        /// The payload type `M`.
        payload: &'a Type,
        /// The error type `E`.
        error: &'a Type,
    },
    /// `path::to::Result<M>`, an alias that hides the error type, such as
    /// `txmsg::Result<M>` or `anyhow::Result<M>`.
    ShortResult {
        /// The whole type.
        ty: &'a Type,
        /// The payload type `M`.
        payload: &'a Type,
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
                Some(ResultArgs::Both(payload, error)) => Output::Result { payload, error },
                Some(ResultArgs::Payload(payload)) => Output::ShortResult { ty, payload },
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

/// The name a parameter binds, if its pattern is a plain name (`tx`,
/// `mut tx`): not `_`, not `ref x`, not a destructuring pattern.
pub(crate) fn binding(pat: &Pat) -> Option<&Ident> {
    match pat {
        Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => Some(&p.ident),
        _ => None,
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
    /// `Result<M, E>`.
    Both(&'a Type, &'a Type),
    /// `Result<M>`.
    Payload(&'a Type),
}

/// The arguments if `ty` is `path::to::Result<M, E>` or `path::to::Result<M>`.
fn result_type(ty: &Type) -> Option<ResultArgs<'_>> {
    let args = last_segment_args(peel(ty), "Result")?;
    match args.as_slice() {
        [GenericArgument::Type(payload), GenericArgument::Type(error)] => {
            Some(ResultArgs::Both(payload, error))
        }
        [GenericArgument::Type(payload)] => Some(ResultArgs::Payload(payload)),
        _ => None,
    }
}

/// The generic arguments of `ty` if it is a path (without `<T as Trait>::`)
/// whose last segment is `name<...>`.
fn last_segment_args<'a>(ty: &'a Type, name: &str) -> Option<Vec<&'a GenericArgument>> {
    let Type::Path(TypePath { qself: None, path }) = ty else {
        return None;
    };
    let last = path.segments.last()?;
    if last.ident != name {
        return None;
    }
    match &last.arguments {
        PathArguments::AngleBracketed(args) => Some(args.args.iter().collect()),
        _ => None,
    }
}

/// `ty` without the parentheses and invisible groups (from `macro_rules!`
/// fragments) around it.
fn peel(mut ty: &Type) -> &Type {
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
            let Some(ResultArgs::Both(payload, error)) = result_type(&ty) else {
                panic!()
            };
            assert_eq!(payload.to_token_stream().to_string(), "Order");
            assert!(error.to_token_stream().to_string().ends_with("Error"));
        }
        for ty in [quote!(Result<Order>), quote!(txmsg::Result<Order>)] {
            let ty: Type = syn::parse2(ty).unwrap();
            assert!(matches!(result_type(&ty), Some(ResultArgs::Payload(_))));
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
    fn classifies_a_function() {
        let func: ItemFn = syn::parse_quote! {
            async fn f(tx: &mut Tx<'_, Sqlite>, (a, b): (i64, i64), mut c: u8) -> Result<M, E> {
                todo!()
            }
        };
        let sig = Sig::new(&func);
        assert!(matches!(sig.inputs[0], Input::Typed { tx: Some(_), .. }));
        assert!(matches!(sig.inputs[1], Input::Typed { tx: None, .. }));
        assert!(matches!(sig.output, Output::Result { .. }));
        let Input::Typed { arg, .. } = &sig.inputs[2] else {
            panic!()
        };
        assert_eq!(binding(&arg.pat).unwrap(), "c");
        let Input::Typed { arg, .. } = &sig.inputs[1] else {
            panic!()
        };
        assert!(binding(&arg.pat).is_none());
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
