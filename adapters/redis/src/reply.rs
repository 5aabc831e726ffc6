//! Reading Redis replies: the shapes of RESP2 and RESP3 replies to the
//! stream commands, taken apart once for the broker and its subscriptions.

use redis::Value;

/// The parts of an entry id, for ordering.
pub(crate) fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (
        ms.parse().unwrap_or(u64::MAX),
        seq.parse().unwrap_or(u64::MAX),
    )
}

/// The (field, value) pairs of a map reply, or of a flat array of them.
pub(crate) fn pairs(value: Value) -> Vec<(Value, Value)> {
    match value {
        Value::Map(pairs) => pairs,
        other => {
            let mut flat = array(other).into_iter();
            let mut pairs = Vec::new();
            while let (Some(n), Some(v)) = (flat.next(), flat.next()) {
                pairs.push((n, v));
            }
            pairs
        }
    }
}

/// What one element of an `XINFO GROUPS` or `XINFO CONSUMERS` reply says
/// of its group or consumer: the name, the pending count, and the value of
/// one more field.
pub(crate) struct Info {
    pub(crate) name: Option<String>,
    pub(crate) pending: u64,
    /// The value of the field asked for (`last-delivered-id`, `idle`).
    pub(crate) other: Option<Value>,
}

/// The [`Info`] of one element of an `XINFO` reply, with the field `other`.
pub(crate) fn info(element: Value, other: &str) -> Info {
    let mut info = Info {
        name: None,
        pending: 0,
        other: None,
    };
    for (field, value) in pairs(element) {
        match text(field).as_deref() {
            Some("name") => info.name = text(value),
            Some("pending") => info.pending = integer(value),
            Some(name) if name == other => info.other = Some(value),
            _ => {}
        }
    }
    info
}

/// A reply as a number (0 for anything else).
pub(crate) fn integer(value: Value) -> u64 {
    match value {
        Value::Int(n) => u64::try_from(n).unwrap_or(0),
        other => text(other).and_then(|t| t.parse().ok()).unwrap_or(0),
    }
}

/// One entry: its id and its fields.
pub(crate) type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// The elements of an array reply (none for anything else).
pub(crate) fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        Value::Attribute { data, .. } => array(*data),
        _ => Vec::new(),
    }
}

/// A reply as text, for ids and names.
pub(crate) fn text(value: Value) -> Option<String> {
    bytes(value).and_then(|b| String::from_utf8(b).ok())
}

/// A reply as bytes, for field names and values.
fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// The (stream, entries) pairs of an `XREADGROUP` reply.
pub(crate) fn streams(value: Value) -> Vec<(Value, Value)> {
    match value {
        Value::Map(pairs) => pairs,
        other => array(other)
            .into_iter()
            .filter_map(|pair| {
                let mut parts = array(pair).into_iter();
                Some((parts.next()?, parts.next()?))
            })
            .collect(),
    }
}

/// The entries of an array of `[id, [field, value, ...]]`; entries that
/// are gone (nil) are left out.
pub(crate) fn entries(value: Value) -> Vec<Entry> {
    array(value)
        .into_iter()
        .filter_map(|entry| {
            let mut parts = array(entry).into_iter();
            let id = parts.next().and_then(text)?;
            let fields = match parts.next()? {
                Value::Map(pairs) => pairs
                    .into_iter()
                    .filter_map(|(n, v)| Some((bytes(n)?, bytes(v)?)))
                    .collect(),
                other => {
                    let mut flat = array(other).into_iter();
                    let mut fields = Vec::new();
                    while let (Some(n), Some(v)) = (flat.next(), flat.next()) {
                        if let (Some(n), Some(v)) = (bytes(n), bytes(v)) {
                            fields.push((n, v));
                        }
                    }
                    fields
                }
            };
            Some((id, fields))
        })
        .collect()
}
