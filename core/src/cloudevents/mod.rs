//! The CloudEvents binary content mode, once for every broker: txmsg writes
//! CloudEvents 1.0 in binary content mode (the payload is the JSON body, the
//! attributes travel as headers, properties or fields), and reads that mode
//! back from any producer, as well as the structured content mode
//! (`application/cloudevents+json`, the whole event as the JSON body).
//!
//! A broker adapter describes its protocol binding with a [`Binding`] (the
//! attribute prefix, how header names compare, what it calls a header) and
//! moves text pairs between its own header type and the codec:
//! [`Binding::encode`] gives the pairs an envelope travels with, and
//! [`Binding::decode`] reads an [`Incoming`] message back, with one rule and
//! one wording per reason for every broker.
//!
//! # Examples
//!
//! ```
//! use txmsg_core::cloudevents::{Binding, Incoming};
//! use txmsg_core::{Envelope, Headers};
//!
//! const HTTP_LIKE: Binding = Binding::new("header", &["ce-"]).case_insensitive();
//!
//! let mut envelope = Envelope::new(
//!     uuid::Uuid::now_v7(),
//!     "orders.placed",
//!     "order-7",
//!     b"{}".to_vec(),
//!     chrono::Utc::now(),
//! );
//! envelope.key = Some("7".into());
//! let pairs = HTTP_LIKE.encode(&envelope, "/shop");
//! assert!(pairs.contains(&("ce-id".to_owned(), "order-7".to_owned())));
//!
//! let mut incoming = Incoming::new("orders.placed", b"{}".to_vec());
//! incoming.headers = pairs;
//! let read = HTTP_LIKE.decode(incoming).unwrap();
//! assert_eq!(read.idempotency_key, "order-7");
//! assert_eq!(read.key.as_deref(), Some("7"));
//! assert_eq!(read.headers.get("ce-source").map(String::as_str), Some("/shop"));
//! ```

mod structured;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

pub use structured::STRUCTURED_CONTENT_TYPE;

use crate::consumer::Undecodable;
use crate::{Envelope, Headers, TRACEPARENT, TRACESTATE};

/// The CloudEvents spec version txmsg writes.
pub const SPEC_VERSION: &str = "1.0";

/// The content type of a txmsg payload.
pub const CONTENT_TYPE: &str = "application/json";

/// The header (or property, or field) that carries txmsg's message id, a
/// UUIDv7, beside the CloudEvents `id` (the idempotency key).
pub const TXMSG_ID: &str = "txmsg-id";

/// Longest CloudEvents `source` accepted, in bytes.
pub const MAX_SOURCE_LEN: usize = 4096;

/// Checks the CloudEvents `source` a broker is configured with: a
/// URI-reference (`/billing`, `urn:shop:orders`, `https://shop.example/orders`)
/// of 1 to [`MAX_SOURCE_LEN`] bytes, so without whitespace or control
/// characters. Every broker applies this one rule.
///
/// # Errors
///
/// [`Error::Config`](crate::Error::Config) for `source`.
///
/// # Examples
///
/// ```
/// use txmsg_core::cloudevents::check_source;
///
/// assert_eq!(check_source("/billing")?, "/billing");
/// assert!(check_source("").is_err());
/// assert!(check_source("two words").is_err());
/// # Ok::<(), txmsg_core::Error>(())
/// ```
pub fn check_source(source: impl Into<String>) -> crate::Result<String> {
    let source = crate::check::byte_len("source", source.into(), 1, MAX_SOURCE_LEN)?;
    if source.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(crate::Error::config(
            "source",
            "must be a URI-reference: no whitespace or control characters",
        ));
    }
    Ok(source)
}

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

// The attributes an envelope takes its fields from. `specversion` and
// `datacontenttype` are read and dropped; every other attribute (`source`
// among them) stays a header.
const ID: &str = "id";
const TYPE: &str = "type";
const TIME: &str = "time";
const PARTITIONKEY: &str = "partitionkey";
const SOURCE: &str = "source";
const SPECVERSION: &str = "specversion";
const DATACONTENTTYPE: &str = "datacontenttype";

/// How one broker carries CloudEvents attributes: the protocol binding's
/// header prefix and naming, given once per adapter as a constant.
///
/// Every broker decodes by the same rules (see [`Binding::decode`]); what
/// differs is only what is declared here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    carrier: &'static str,
    prefixes: &'static [&'static str],
    case_insensitive: bool,
    content_type_header: Option<&'static str>,
    transport_headers: &'static [&'static str],
    header_prefix: Option<&'static str>,
    traceparent_attribute: bool,
}

impl Binding {
    /// A binding whose attributes travel as `carrier`s (the word reasons
    /// use: `header`, `field`, `user property`) named `<prefix><attribute>`.
    ///
    /// The first prefix is the one written; when a message carries an
    /// attribute under several, the earlier prefix wins. Names compare
    /// exactly and the content type is the transport's own (see the other
    /// constructors' methods to change either).
    pub const fn new(carrier: &'static str, prefixes: &'static [&'static str]) -> Self {
        Binding {
            carrier,
            prefixes,
            case_insensitive: false,
            content_type_header: None,
            transport_headers: &[],
            header_prefix: None,
            traceparent_attribute: false,
        }
    }

    /// Header names compare without regard to ASCII case (as in HTTP and
    /// NATS), and a `traceparent` header in any case is read as
    /// [`TRACEPARENT`].
    pub const fn case_insensitive(mut self) -> Self {
        self.case_insensitive = true;
        self
    }

    /// The content type travels as the header `name` (when the transport
    /// has no property of its own for it).
    pub const fn content_type_header(mut self, name: &'static str) -> Self {
        self.content_type_header = Some(name);
        self
    }

    /// Headers the transport sets and reads itself (a deduplication id, for
    /// one): not part of the envelope, so left out when decoding.
    pub const fn transport_headers(mut self, names: &'static [&'static str]) -> Self {
        self.transport_headers = names;
        self
    }

    /// Envelope headers travel as `<prefix><name>` (for a transport whose
    /// fields also hold the payload); read back without the prefix.
    pub const fn header_prefix(mut self, prefix: &'static str) -> Self {
        self.header_prefix = Some(prefix);
        self
    }

    /// `traceparent` travels as an attribute (`<prefix>traceparent`), as
    /// the AMQP binding's distributed tracing extension has it, instead of
    /// as a plain header.
    pub const fn traceparent_attribute(mut self) -> Self {
        self.traceparent_attribute = true;
        self
    }

    /// What a header is called on this broker, for reasons and errors.
    pub const fn carrier(&self) -> &'static str {
        self.carrier
    }

    /// The name attribute `attribute` is written under.
    pub fn attribute(&self, attribute: &str) -> String {
        format!(
            "{}{attribute}",
            self.prefixes.first().copied().unwrap_or("")
        )
    }

    fn same(&self, a: &str, b: &str) -> bool {
        if self.case_insensitive {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    }

    fn strip<'a>(&self, name: &'a str, prefix: &str) -> Option<&'a str> {
        let head = name.get(..prefix.len())?;
        self.same(head, prefix).then(|| &name[prefix.len()..])
    }

    /// The attribute `name` carries, with the index of its prefix.
    fn attribute_of<'a>(&self, name: &'a str) -> Option<(usize, &'a str)> {
        self.prefixes
            .iter()
            .enumerate()
            .find_map(|(i, prefix)| Some((i, self.strip(name, prefix)?)))
    }

    /// The text pairs `envelope` travels with, `source` being the
    /// CloudEvents `source`: the attributes `id` (the idempotency key),
    /// `type` (the topic), `source`, `specversion`, `time` (RFC 3339),
    /// `partitionkey` (the ordering key, when there is one), `traceparent`,
    /// the content type when it is a header of this binding, [`TXMSG_ID`],
    /// then every other envelope header. An envelope header whose name is
    /// one of these is left out: the attributes win.
    ///
    /// The broker adds what its transport needs beside these (properties,
    /// a deduplication id) and refuses pairs it cannot carry.
    pub fn encode(&self, envelope: &Envelope, source: &str) -> Vec<(String, String)> {
        let mut pairs = Vec::with_capacity(9 + envelope.headers.len());
        pairs.push((self.attribute(ID), envelope.idempotency_key.clone()));
        pairs.push((self.attribute(TYPE), envelope.topic.clone()));
        pairs.push((self.attribute(SOURCE), source.to_owned()));
        pairs.push((self.attribute(SPECVERSION), SPEC_VERSION.to_owned()));
        let time = envelope
            .created_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true);
        pairs.push((self.attribute(TIME), time));
        if let Some(key) = &envelope.key {
            pairs.push((self.attribute(PARTITIONKEY), key.clone()));
        }
        for trace in [TRACEPARENT, TRACESTATE] {
            if let Some(value) = envelope.headers.get(trace) {
                let name = if self.traceparent_attribute {
                    self.attribute(trace)
                } else {
                    trace.to_owned()
                };
                pairs.push((name, value.clone()));
            }
        }
        if let Some(name) = self.content_type_header {
            pairs.push((name.to_owned(), CONTENT_TYPE.to_owned()));
        }
        pairs.push((TXMSG_ID.to_owned(), envelope.id.to_string()));
        let reserved = pairs.len();
        for (name, value) in &envelope.headers {
            if name == TRACEPARENT || name == TRACESTATE {
                continue;
            }
            let name = match self.header_prefix {
                Some(prefix) => format!("{prefix}{name}"),
                None => name.clone(),
            };
            if pairs[..reserved].iter().any(|(n, _)| self.same(n, &name))
                || self.transport_headers.iter().any(|t| self.same(t, &name))
            {
                continue;
            }
            pairs.push((name, value.clone()));
        }
        pairs
    }

    /// Reads a message as an envelope: the inverse of
    /// [`encode`](Self::encode), and what any producer writing CloudEvents in
    /// binary content mode on this binding sends. The rules, in order:
    ///
    /// 1. The content type (the transport's, else the binding's content
    ///    type header) must be absent or JSON ([`is_json`]); anything else
    ///    is undecodable. `application/cloudevents+json` is the structured
    ///    content mode, read from the JSON body by the same rules
    ///    ([`STRUCTURED_CONTENT_TYPE`]); a batch of events is undecodable.
    /// 2. A `partitionkey` attribute whose value could not be read as text,
    ///    with no readable one under another prefix, is undecodable: taken
    ///    as keyless, the message would be handled out of its key's order.
    /// 3. `id` is the idempotency key, else the transport's message id; a
    ///    message without one, or with an empty one, is undecodable.
    /// 4. `type` is the topic, else (absent or empty) the topic the message
    ///    arrived on; `partitionkey` the ordering key; `time` (RFC 3339) the
    ///    creation time, else the transport's timestamp, else now.
    /// 5. [`TXMSG_ID`] is the message id when it is a UUID; otherwise the
    ///    envelope gets a fresh UUIDv7 (the id only names the message; what
    ///    makes handling idempotent is the CloudEvents `id`).
    /// 6. A `traceparent` attribute or header becomes the [`TRACEPARENT`]
    ///    header (the attribute wins). `specversion`, `datacontenttype`, the
    ///    content type header and the transport's own headers are dropped.
    ///    Every other header is kept under the name it arrived with (less
    ///    the binding's header prefix), the first of a repeated name.
    /// 7. The body is the payload, byte for byte.
    ///
    /// An undecodable message keeps the topic it arrived on and every
    /// readable header under the name it arrived with.
    ///
    /// # Errors
    ///
    /// [`Undecodable`], with the reason, for a message the rules refuse.
    pub fn decode(&self, incoming: Incoming) -> Result<Envelope, Undecodable> {
        let declared = incoming.content_type.as_deref().or_else(|| {
            let header = self.content_type_header?;
            let found = incoming.headers.iter().find(|(n, _)| self.same(n, header));
            found.map(|(_, v)| v.as_str())
        });
        if let Some(batch) = declared.and_then(structured::structured_kind) {
            return self.decode_structured(incoming, batch);
        }
        let slots = self.prefixes.len().max(1);
        let mut attributes: Vec<[Option<&str>; 6]> = vec![[None; 6]; slots];
        let mut txmsg_id = None;
        // `traceparent` and `tracestate` as plain headers.
        let mut plain_trace: [Option<&str>; 2] = [None; 2];
        let mut content_type = incoming.content_type.as_deref();
        let mut headers = Headers::new();
        for (name, value) in &incoming.headers {
            let name = name.as_str();
            if self.same(name, TXMSG_ID) {
                txmsg_id.get_or_insert(value.as_str());
                continue;
            }
            if self.content_type_header.is_some_and(|c| self.same(name, c)) {
                if incoming.content_type.is_none() {
                    content_type.get_or_insert(value.as_str());
                }
                continue;
            }
            if self.transport_headers.iter().any(|t| self.same(name, t)) {
                continue;
            }
            if let Some((prefix, attribute)) = self.attribute_of(name) {
                let lower;
                let attribute = if self.case_insensitive {
                    lower = attribute.to_ascii_lowercase();
                    lower.as_str()
                } else {
                    attribute
                };
                let slot = match attribute {
                    ID => Some(0),
                    TYPE => Some(1),
                    TIME => Some(2),
                    PARTITIONKEY => Some(3),
                    TRACEPARENT => Some(4),
                    TRACESTATE => Some(5),
                    SPECVERSION | DATACONTENTTYPE => continue,
                    _ => None,
                };
                if let Some(slot) = slot {
                    attributes[prefix][slot].get_or_insert(value.as_str());
                    continue;
                }
            }
            if let Some(i) = [TRACEPARENT, TRACESTATE]
                .iter()
                .position(|t| self.same(name, t))
            {
                plain_trace[i].get_or_insert(value.as_str());
                continue;
            }
            self.keep_header(&mut headers, name, value);
        }
        let first = |slot: usize| attributes.iter().find_map(|a| a[slot]);

        if let Some(content_type) = content_type.filter(|c| !is_json(c)) {
            let reason = format!(
                "unsupported content type `{}`: expected `{CONTENT_TYPE}` (CloudEvents binary content mode)",
                content_type.escape_debug()
            );
            return Err(self.undecodable(reason, incoming));
        }
        if first(3).is_none()
            && let Some(name) = incoming.unreadable.iter().find(|name| {
                self.attribute_of(name)
                    .is_some_and(|(_, a)| self.same(a, PARTITIONKEY))
            })
        {
            let reason = format!(
                "the ordering key ({} `{}`) is not text",
                self.carrier,
                name.escape_debug()
            );
            return Err(self.undecodable(reason, incoming));
        }
        let Some(idempotency_key) = first(0)
            .or(incoming.message_id.as_deref())
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
        else {
            let reason = format!(
                "missing CloudEvents id ({} `{}`)",
                self.carrier,
                self.attribute(ID)
            );
            return Err(self.undecodable(reason, incoming));
        };
        let topic = first(1)
            .filter(|t| !t.is_empty())
            .unwrap_or(&incoming.topic)
            .to_owned();
        let key = first(3).map(str::to_owned);
        let created_at = first(2)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or(incoming.timestamp)
            .unwrap_or_else(Utc::now);
        let id = txmsg_id
            .and_then(|id| Uuid::parse_str(id).ok())
            .unwrap_or_else(Uuid::now_v7);
        for (i, trace) in [TRACEPARENT, TRACESTATE].into_iter().enumerate() {
            if let Some(value) = first(4 + i).or(plain_trace[i]) {
                headers.insert(trace.to_owned(), value.to_owned());
            }
        }
        let mut envelope = Envelope::new(id, topic, idempotency_key, incoming.body, created_at);
        envelope.key = key;
        envelope.headers = headers;
        Ok(envelope)
    }

    /// Keeps a header that is no attribute under the name it arrived with,
    /// less the binding's header prefix; the first of a repeated name wins.
    fn keep_header(&self, headers: &mut Headers, name: &str, value: &str) {
        let name = self
            .header_prefix
            .and_then(|p| self.strip(name, p))
            .unwrap_or(name);
        headers
            .entry(name.to_owned())
            .or_insert_with(|| value.to_owned());
    }

    fn undecodable(&self, reason: String, incoming: Incoming) -> Undecodable {
        let mut headers = Headers::new();
        for (name, value) in incoming.headers {
            headers.entry(name).or_insert(value);
        }
        Undecodable {
            reason,
            topic: incoming.topic,
            headers,
            body: incoming.body,
        }
    }
}

/// A message as a broker received it, in the codec's terms: what
/// [`Binding::decode`] reads.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Incoming {
    /// The topic it arrived on (the routing key, the subject less its
    /// prefix): the topic when the message has no `type`.
    pub topic: String,
    /// Its headers whose values are text, in the order they arrived.
    pub headers: Vec<(String, String)>,
    /// The names of headers whose values could not be read as text.
    pub unreadable: Vec<String>,
    /// The transport's own content type property, if it has one.
    pub content_type: Option<String>,
    /// The transport's own message id, if it has one: the idempotency key
    /// when the message has no CloudEvents `id`.
    pub message_id: Option<String>,
    /// The transport's own timestamp, if it has one: the creation time when
    /// the message has no readable `time`.
    pub timestamp: Option<DateTime<Utc>>,
    /// The body: the payload.
    pub body: Vec<u8>,
}

impl Incoming {
    /// A message that arrived on `topic` with `body` and nothing else yet.
    pub fn new(topic: impl Into<String>, body: Vec<u8>) -> Self {
        Incoming {
            topic: topic.into(),
            body,
            ..Incoming::default()
        }
    }
}

impl std::fmt::Debug for Incoming {
    // The body may be large or sensitive: its length only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("topic", &self.topic)
            .field("headers", &self.headers)
            .field("unreadable", &self.unreadable)
            .field("content_type", &self.content_type)
            .field("message_id", &self.message_id)
            .field("timestamp", &self.timestamp)
            .field("body_len", &self.body.len())
            .finish()
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    pub(super) const HTTP: Binding = Binding::new("header", &["ce-"])
        .case_insensitive()
        .content_type_header("content-type")
        .transport_headers(&["Nats-Msg-Id"]);
    pub(super) const AMQP: Binding =
        Binding::new("header", &["cloudEvents_", "cloudEvents:"]).traceparent_attribute();
    pub(super) const FIELDS: Binding = Binding::new("field", &["ce-"])
        .content_type_header("content-type")
        .header_prefix("h-");
    pub(super) const PROPS: Binding = Binding::new("user property", &["ce-"]);
    pub(super) const ALL: [Binding; 4] = [HTTP, AMQP, FIELDS, PROPS];
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    use chrono::TimeZone;

    fn envelope() -> Envelope {
        let at = Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap();
        let mut env = Envelope::new(
            Uuid::now_v7(),
            "orders.placed",
            "order-7",
            b"{}".to_vec(),
            at,
        );
        env.key = Some("7".into());
        env.headers
            .insert(TRACEPARENT.into(), "00-abc-def-01".into());
        env.headers.insert(TRACESTATE.into(), "vendor=abc".into());
        env.headers.insert("tenant".into(), "acme".into());
        env
    }

    fn incoming(pairs: &[(&str, &str)]) -> Incoming {
        let mut m = Incoming::new("arrived.on", b"x".to_vec());
        m.headers = pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        m
    }

    #[test]
    fn every_binding_reads_back_what_it_writes() {
        for binding in ALL {
            let env = envelope();
            let mut m = Incoming::new("other", env.payload.clone());
            m.headers = binding.encode(&env, "/shop");
            let got = binding.decode(m).unwrap();
            assert_eq!(got.id, env.id, "{binding:?}");
            assert_eq!(got.topic, env.topic);
            assert_eq!(got.idempotency_key, env.idempotency_key);
            assert_eq!(got.key, env.key);
            assert_eq!(got.created_at, env.created_at);
            assert_eq!(got.payload, env.payload);
            assert_eq!(got.headers.get(TRACEPARENT).unwrap(), "00-abc-def-01");
            assert_eq!(got.headers.get(TRACESTATE).unwrap(), "vendor=abc");
            assert_eq!(got.headers.get("tenant").unwrap(), "acme");
            let source = format!("{}source", binding.prefixes[0]);
            assert_eq!(got.headers.get(&source).unwrap(), "/shop", "{binding:?}");
            assert_eq!(got.headers.len(), 4, "{:?}", got.headers);
        }
    }

    #[test]
    fn attributes_win_over_envelope_headers_of_their_name() {
        let mut env = envelope();
        env.headers.insert("ce-id".into(), "forged".into());
        env.headers.insert("Nats-Msg-Id".into(), "forged".into());
        let pairs = HTTP.encode(&env, "/s");
        let ids: Vec<_> = pairs.iter().filter(|(n, _)| n == "ce-id").collect();
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].1, "order-7");
        assert!(!pairs.iter().any(|(n, _)| n == "Nats-Msg-Id"));
    }

    #[test]
    fn a_missing_or_empty_id_has_one_reason_per_binding() {
        for binding in ALL {
            let id = binding.attribute("id");
            for m in [incoming(&[]), incoming(&[(id.as_str(), "")])] {
                let bad = binding.decode(m).unwrap_err();
                assert_eq!(
                    bad.reason,
                    format!("missing CloudEvents id ({} `{id}`)", binding.carrier())
                );
                assert_eq!(bad.topic, "arrived.on");
                assert_eq!(bad.body, b"x");
            }
        }
        let mut m = incoming(&[]);
        m.message_id = Some("from-the-transport".into());
        assert_eq!(
            AMQP.decode(m).unwrap().idempotency_key,
            "from-the-transport"
        );
    }

    #[test]
    fn only_json_is_read() {
        for binding in ALL {
            let mut m = incoming(&[("ce-id", "1"), ("cloudEvents_id", "1")]);
            m.content_type = Some("application/xml".into());
            let bad = binding.decode(m).unwrap_err();
            assert!(
                bad.reason
                    .starts_with("unsupported content type `application/xml`"),
                "{}",
                bad.reason
            );
            assert!(bad.headers.contains_key("ce-id"), "mapped headers are kept");
        }
        let bad = FIELDS
            .decode(incoming(&[("ce-id", "1"), ("content-type", "text/plain")]))
            .unwrap_err();
        assert!(bad.reason.contains("text/plain"), "{}", bad.reason);
        let ok = HTTP
            .decode(incoming(&[
                ("CE-ID", "1"),
                ("Content-Type", "Application/JSON; charset=utf-8"),
            ]))
            .unwrap();
        assert_eq!(ok.idempotency_key, "1");
        assert!(ok.headers.is_empty(), "{:?}", ok.headers);
    }

    #[test]
    fn names_compare_as_the_binding_says() {
        let upper = [
            ("CE-ID", "1"),
            ("CE-PARTITIONKEY", "k"),
            ("TraceParent", "tp"),
        ];
        let got = HTTP.decode(incoming(&upper)).unwrap();
        assert_eq!(got.key.as_deref(), Some("k"));
        assert_eq!(got.headers.get(TRACEPARENT).map(String::as_str), Some("tp"));
        let bad = PROPS.decode(incoming(&upper)).unwrap_err();
        assert!(
            bad.reason.starts_with("missing CloudEvents id"),
            "{}",
            bad.reason
        );
    }

    #[test]
    fn a_txmsg_id_that_is_no_uuid_gets_a_fresh_one() {
        for binding in ALL {
            let id = binding.attribute("id");
            let got = binding
                .decode(incoming(&[(id.as_str(), "1"), (TXMSG_ID, "nope")]))
                .unwrap();
            assert_eq!(got.id.get_version_num(), 7);
            assert!(!got.headers.contains_key(TXMSG_ID));
        }
    }

    #[test]
    fn an_unreadable_ordering_key_is_refused_unless_another_is_readable() {
        let mut m = incoming(&[("cloudEvents_id", "1")]);
        m.unreadable = vec!["cloudEvents_partitionkey".into()];
        let bad = AMQP.decode(m.clone()).unwrap_err();
        assert_eq!(
            bad.reason,
            "the ordering key (header `cloudEvents_partitionkey`) is not text"
        );
        m.headers
            .push(("cloudEvents:partitionkey".into(), "k".into()));
        assert_eq!(AMQP.decode(m).unwrap().key.as_deref(), Some("k"));
        let mut m = incoming(&[("ce-id", "1")]);
        m.unreadable = vec!["tenant".into()];
        assert_eq!(FIELDS.decode(m).unwrap().key, None);
    }

    #[test]
    fn the_first_prefix_wins_and_times_fall_back() {
        let at = "2024-05-06T05:08:09.123Z";
        let m = incoming(&[
            ("cloudEvents:id", "colon"),
            ("cloudEvents_id", "underscore"),
            ("cloudEvents:type", "t.colon"),
            ("cloudEvents_time", at),
            ("cloudEvents_traceparent", "attr"),
            ("traceparent", "plain"),
            ("tracestate", "v=plain"),
            ("cloudEvents_specversion", "1.0"),
            ("cloudEvents_source", "/s"),
        ]);
        let got = AMQP.decode(m).unwrap();
        assert_eq!(got.idempotency_key, "underscore");
        assert_eq!(got.topic, "t.colon");
        assert_eq!(got.created_at, DateTime::parse_from_rfc3339(at).unwrap());
        assert_eq!(
            got.headers.get(TRACEPARENT).map(String::as_str),
            Some("attr")
        );
        assert_eq!(
            got.headers.get(TRACESTATE).map(String::as_str),
            Some("v=plain")
        );
        assert_eq!(got.headers.len(), 3, "{:?}", got.headers);
        let stamp = Utc.with_ymd_and_hms(2020, 1, 2, 3, 4, 5).unwrap();
        let mut m = incoming(&[("ce-id", "1"), ("ce-time", "yesterday"), ("ce-type", "")]);
        m.timestamp = Some(stamp);
        let got = PROPS.decode(m).unwrap();
        assert_eq!(got.created_at, stamp);
        assert_eq!(got.topic, "arrived.on");
    }

    #[test]
    fn header_prefix_is_stripped_and_repeats_keep_the_first() {
        let got = FIELDS
            .decode(incoming(&[
                ("ce-id", "1"),
                ("h-tenant", "acme"),
                ("h-tenant", "other"),
                ("loose", "kept"),
            ]))
            .unwrap();
        assert_eq!(got.headers.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(got.headers.get("loose").map(String::as_str), Some("kept"));
    }

    #[test]
    fn one_rule_for_every_source() {
        assert_eq!(check_source("urn:shop:orders").unwrap(), "urn:shop:orders");
        assert!(check_source("x".repeat(MAX_SOURCE_LEN)).is_ok());
        for bad in [
            String::new(),
            "x".repeat(MAX_SOURCE_LEN + 1),
            "a b".into(),
            "a\nb".into(),
            "a\u{7}".into(),
        ] {
            assert!(
                matches!(
                    check_source(bad.clone()),
                    Err(crate::Error::Config {
                        field: "source",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
    }

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

/// Properties over arbitrary messages on every binding: decoding never
/// panics and answers with an envelope or a reason; what
/// [`Binding::encode`] writes decodes back to the same envelope.
#[cfg(test)]
mod props {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::tests_support::*;
    use super::*;

    fn name() -> impl Strategy<Value = String> {
        let known = proptest::sample::select(vec![
            "ce-id",
            "ce-type",
            "ce-time",
            "ce-partitionkey",
            "ce-specversion",
            "ce-datacontenttype",
            "ce-source",
            "cloudEvents_id",
            "cloudEvents:type",
            "cloudEvents_partitionkey",
            "content-type",
            TXMSG_ID,
            TRACEPARENT,
            "h-x",
            "Nats-Msg-Id",
        ]);
        let cased = (known, any::<u64>()).prop_map(|(n, bits)| {
            n.chars()
                .enumerate()
                .map(|(i, c)| {
                    if bits >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect::<String>()
        });
        prop_oneof![2 => cased, 1 => "(?s).{0,12}"]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "(?s).{0,30}",
            1 => Just(String::new()),
            1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
            1 => Just("2024-05-06T07:08:09Z".to_owned()),
            1 => Just("application/json".to_owned()),
        ]
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        (
            "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}",
            "(?s).{1,20}",
            proptest::option::of("(?s).{0,20}"),
            proptest::collection::btree_map("x-[a-z0-9-]{0,10}", "(?s).{0,20}", 0..4),
            0i64..4_102_444_800_000_000,
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(topic, idem, key, headers, micros, payload)| {
                let at = Utc.timestamp_micros(micros).unwrap();
                let mut env = Envelope::new(Uuid::now_v7(), topic, idem, payload, at);
                env.key = key;
                env.headers = headers;
                env
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn decode_never_panics_and_explains_refusals(
            which in 0usize..4,
            headers in proptest::collection::vec((name(), value()), 0..12),
            unreadable in proptest::collection::vec(name(), 0..2),
            content_type in proptest::option::of(value()),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut m = Incoming::new("t.arrived", body.clone());
            m.headers = headers;
            m.unreadable = unreadable;
            m.content_type = content_type;
            match ALL[which].decode(m) {
                Ok(env) => {
                    prop_assert!(!env.idempotency_key.is_empty());
                    prop_assert_eq!(env.payload, body);
                }
                Err(bad) => {
                    prop_assert!(!bad.reason.is_empty());
                    prop_assert_eq!(bad.topic, "t.arrived");
                    prop_assert_eq!(bad.body, body);
                }
            }
        }

        #[test]
        fn decode_inverts_encode(which in 0usize..4, env in envelope(), source in "(?s).{0,20}") {
            let binding = ALL[which];
            let mut m = Incoming::new("elsewhere", env.payload.clone());
            m.headers = binding.encode(&env, &source);
            let got = binding.decode(m).unwrap();
            prop_assert_eq!(got.id, env.id);
            prop_assert_eq!(&got.topic, &env.topic);
            prop_assert_eq!(&got.idempotency_key, &env.idempotency_key);
            prop_assert_eq!(&got.key, &env.key);
            prop_assert_eq!(got.created_at, env.created_at);
            prop_assert_eq!(&got.payload, &env.payload);
            for (name, value) in &env.headers {
                prop_assert_eq!(got.headers.get(name), Some(value), "{}", name);
            }
        }
    }
}
