//! What the registrations of `#[message_handler]` and `#[check_back]`
//! functions share: where they are written, and collecting them.

/// `` `name` (file:line) ``: where a registered function is written, for
/// messages that point at it.
pub(crate) fn location(name: &str, file: &str, line: u32) -> String {
    format!("`{name}` ({file}:{line})")
}

/// Every registered `T`, sorted by `key` (the order `inventory` yields them
/// in is unspecified).
pub(crate) fn sorted<T, K>(key: impl FnMut(&&'static T) -> K) -> Vec<&'static T>
where
    T: inventory::Collect,
    K: Ord,
{
    let mut all: Vec<&'static T> = inventory::iter::<T>.into_iter().collect();
    all.sort_by_key(key);
    all
}
