//! Error collection and suggestions shared by the macros.

use proc_macro2::TokenStream;

/// Collects every error found in one pass, so that three mistakes give three
/// errors instead of one per build.
#[derive(Default)]
pub(crate) struct Errors {
    all: Option<syn::Error>,
}

impl Errors {
    /// Records `error` next to the ones already found.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.all {
            Some(all) => all.combine(error),
            None => self.all = Some(error),
        }
    }

    /// `Ok(value)` if nothing was recorded, all the errors otherwise.
    pub(crate) fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.all {
            Some(error) => Err(error),
            None => Ok(value),
        }
    }
}

/// Both values, or every error of the two.
pub(crate) fn join<A, B>(a: syn::Result<A>, b: syn::Result<B>) -> syn::Result<(A, B)> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(mut a), Err(b)) => {
            a.combine(b);
            Err(a)
        }
        (Err(error), Ok(_)) | (Ok(_), Err(error)) => Err(error),
    }
}

/// The item as written, followed by the errors as `compile_error!`s.
///
/// Emitting the item keeps its callers and rust-analyzer working, so the user
/// sees our errors and not a cascade of unresolved names.
pub(crate) fn item_with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let mut tokens = item;
    tokens.extend(error.into_compile_error());
    tokens
}

/// The candidate `name` most likely stands for, if one is close enough.
///
/// Close enough means at most one edit per three characters (at least one),
/// or `name` being the start of the candidate (`idem` for `idempotency_key`).
pub(crate) fn did_you_mean<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    let by_distance = candidates
        .iter()
        .map(|candidate| (edit_distance(name, candidate), *candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate);
    by_distance.or_else(|| {
        candidates
            .iter()
            .copied()
            .find(|candidate| name.len() >= 3 && candidate.starts_with(name))
    })
}

/// Edit distance between `a` and `b`, in chars: insertions, deletions,
/// substitutions and swaps of two neighbours (`kye` is one edit from `key`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between the first i chars of a and the first j of b.
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = d[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = substitution.min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["topic", "key", "idempotency_key", "ttl", "crate"];

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("topic", "topic"), 0);
        assert_eq!(edit_distance("topik", "topic"), 1);
        assert_eq!(edit_distance("tpoic", "topic"), 1);
        assert_eq!(edit_distance("kye", "key"), 1);
        assert_eq!(edit_distance("ca", "abc"), 3);
        assert_eq!(edit_distance("", "ttl"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggests_near_misses() {
        assert_eq!(did_you_mean("topik", KEYS), Some("topic"));
        assert_eq!(did_you_mean("topics", KEYS), Some("topic"));
        assert_eq!(did_you_mean("keys", KEYS), Some("key"));
        assert_eq!(did_you_mean("kye", KEYS), Some("key"));
        assert_eq!(did_you_mean("tpoic", KEYS), Some("topic"));
        assert_eq!(did_you_mean("tll", KEYS), Some("ttl"));
        assert_eq!(did_you_mean("krate", KEYS), Some("crate"));
        assert_eq!(
            did_you_mean("idempotency_kye", KEYS),
            Some("idempotency_key")
        );
        assert_eq!(did_you_mean("idem", KEYS), Some("idempotency_key"));
    }

    #[test]
    fn stays_quiet_when_nothing_is_close() {
        assert_eq!(did_you_mean("half", KEYS), None);
        assert_eq!(did_you_mean("check_back", KEYS), None);
        assert_eq!(did_you_mean("group", KEYS), None);
        assert_eq!(did_you_mean("x", KEYS), None);
    }
}
