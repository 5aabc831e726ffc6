//! Check-back functions registered by `#[check_back]`.

use std::collections::HashMap;
use std::fmt;

use serde::de::DeserializeOwned;

use crate::store::BoxFuture;
use crate::{Envelope, Error, StateType, States};

/// A check-back's verdict on a prepared message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckStatus {
    /// The local work committed: deliver the message.
    Commit,
    /// The local work rolled back (or never happened): delete the message.
    Rollback,
    /// Not known yet: check again later.
    Unknown,
}

/// How generated code calls a check-back: the prepared message and the
/// worker's states in, the verdict (or the error text, which counts as
/// Unknown) out.
pub type CheckBackFn =
    for<'a> fn(&'a Envelope, &'a States) -> BoxFuture<'a, Result<CheckStatus, String>>;

/// A `#[check_back]`, registered at compile time.
///
/// One per topic: a second one for a topic is refused when a
/// [`CheckBackWorker`](super::CheckBackWorker) starts, naming both.
#[derive(Clone, Copy)]
pub struct CheckBackRecord {
    /// Topic whose prepared messages it resolves.
    pub topic: &'static str,
    /// Path of the function (`module_path!()::name`).
    pub name: &'static str,
    /// Source file.
    pub file: &'static str,
    /// Line.
    pub line: u32,
    /// The `State<T>` types the function takes, which its worker must be
    /// given ([`CheckBackWorker::with_state`](super::CheckBackWorker::with_state)).
    pub states: &'static [StateType],
    /// The generated entry point.
    pub call: CheckBackFn,
}

impl fmt::Debug for CheckBackRecord {
    // The entry point is a function pointer: where the check-back is
    // written says more than its address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckBackRecord({}, {})", self.topic, self.location())
    }
}

impl CheckBackRecord {
    /// `name (file:line)`, for messages that point at the function.
    pub fn location(&self) -> String {
        crate::registry::location(self.name, self.file, self.line)
    }
}

inventory::collect!(CheckBackRecord);

/// Every registered check-back, sorted by (topic, name).
pub fn registered_check_backs() -> Vec<&'static CheckBackRecord> {
    crate::registry::sorted::<CheckBackRecord, _>(|c| (c.topic, c.name))
}

/// Every registered check-back by topic, checked: one per topic. What a
/// [`CheckBackWorker`](super::CheckBackWorker) or a broker's own
/// transactional producer answers check-backs with.
///
/// # Errors
///
/// [`Error::Config`] for `check_back`, naming both functions of a topic that
/// has two.
pub fn check_backs_by_topic() -> crate::Result<HashMap<&'static str, &'static CheckBackRecord>> {
    let mut by_topic: HashMap<&'static str, &'static CheckBackRecord> = HashMap::new();
    for c in registered_check_backs() {
        if let Some(first) = by_topic.insert(c.topic, c) {
            return Err(Error::config(
                "check_back",
                format!(
                    "two check-backs for topic `{}`: {} and {}",
                    c.topic,
                    first.location(),
                    c.location()
                ),
            ));
        }
    }
    Ok(by_topic)
}

/// Decodes the payload as `M` and runs `check` on it. Called by generated
/// code; an undecodable payload or an error is reported as text (the worker
/// counts it as Unknown).
pub async fn run_check_back<M, E, F>(
    envelope: &Envelope,
    states: &States,
    check: F,
) -> Result<CheckStatus, String>
where
    M: DeserializeOwned,
    E: fmt::Display,
    F: for<'t> FnOnce(&'t M, &'t States) -> Option<BoxFuture<'t, Result<CheckStatus, E>>>,
{
    let message: M = serde_json::from_slice(&envelope.payload).map_err(|e| {
        format!(
            "payload does not match `{}`: {e}",
            std::any::type_name::<M>()
        )
    })?;
    match check(&message, states) {
        Some(call) => call.await.map_err(|e| e.to_string()),
        None => Err(MISSING_STATE.to_owned()),
    }
}

/// Why a check-back that takes a `State<T>` its worker lacks did not run
/// (the worker checks them all at start, so only a worker built by hand
/// gets here).
pub const MISSING_STATE: &str = "a `State<T>` the check-back takes was not given to the worker";
