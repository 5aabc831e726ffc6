//! What every broker's CloudEvents binding shares: txmsg writes CloudEvents
//! 1.0 in binary content mode (the payload is the JSON body, the attributes
//! travel as headers or properties), and reads that mode back from any
//! producer.
//!
//! The adapters map their own headers; the rules they must agree on live
//! here: the spec version written, the one content type read, and the
//! name of txmsg's message id header.

/// The CloudEvents spec version txmsg writes.
pub const SPEC_VERSION: &str = "1.0";

/// The content type of a txmsg payload.
pub const CONTENT_TYPE: &str = "application/json";

/// The header (or property, or field) that carries txmsg's message id, a
/// UUIDv7, beside the CloudEvents `id` (the idempotency key).
pub const TXMSG_ID: &str = "txmsg-id";

/// Whether a content type is JSON as txmsg reads it: `application/json`,
/// in any letter case, with parameters (`; charset=utf-8`) allowed.
///
/// Other `+json` types are not: `application/cloudevents+json` is the
/// structured content mode, whose body is the whole event rather than its
/// data, and reading it as the payload would hand the handler the wrong
/// document.
///
/// # Examples
///
/// ```
/// use txmsg_core::cloudevents::is_json;
///
/// assert!(is_json("application/json"));
/// assert!(is_json("Application/JSON; charset=utf-8"));
/// assert!(!is_json("application/cloudevents+json"));
/// assert!(!is_json("text/plain"));
/// ```
pub fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(CONTENT_TYPE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_application_json_is_json() {
        for yes in [
            "application/json",
            " application/json ",
            "APPLICATION/JSON;charset=utf-8",
            "application/json; charset=\"utf-8\"; x=y",
        ] {
            assert!(is_json(yes), "{yes}");
        }
        for no in [
            "",
            "application/cloudevents+json",
            "application/vnd.api+json",
            "application/jsonx",
            "text/json",
            "json",
            "application/json-seq",
        ] {
            assert!(!is_json(no), "{no}");
        }
    }
}
