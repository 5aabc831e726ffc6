//! What several of core's test files share.

pub(crate) mod spans;
