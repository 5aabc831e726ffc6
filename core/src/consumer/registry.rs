//! Handlers registered by `#[message_handler]`, collected with `inventory`.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::inbox::InboxWriter;
use crate::store::BoxFuture;
use crate::{Clock, Envelope, Outbox, StateType, States, Tx};

/// The type-erased context a registered handler runs in; it is a
/// [`HandlerCtx`] of the handler's database.
pub type AnyCtx = dyn Any + Send + Sync;

/// How generated code calls a handler: context, message, and the id of the
/// dead letter being replayed, if any.
pub type HandlerFn =
    for<'a> fn(&'a AnyCtx, &'a Envelope, Option<Uuid>) -> BoxFuture<'a, HandlerOutcome>;

/// A `#[message_handler]`, registered at compile time.
///
/// Built by the macro; the consumer runtime of a group finds its handlers
/// among all records, sorted by topic, so no hand-written list is needed.
/// Two records with the same (topic, group) are refused when the consumer
/// starts, naming both: the macro cannot see other crates' handlers.
#[derive(Clone, Copy)]
pub struct HandlerRecord {
    /// Topic the handler consumes.
    pub topic: &'static str,
    /// Consumer group it belongs to.
    pub group: &'static str,
    /// Attempts before a failing message is dead.
    pub max_attempts: u32,
    /// Path of the handler function (`module_path!()::name`).
    pub name: &'static str,
    /// Source file of the handler.
    pub file: &'static str,
    /// Line of the handler.
    pub line: u32,
    /// Name of the handler's sqlx database type.
    pub database: fn() -> &'static str,
    /// The `State<T>` types the handler takes, which its consumer must be
    /// given ([`Consumer::with_state`](super::Consumer::with_state)).
    pub states: &'static [StateType],
    /// The generated entry point.
    pub call: HandlerFn,
}

impl fmt::Debug for HandlerRecord {
    // The entry points are function pointers: where the handler is written
    // says more than their addresses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (topic, group, db) = (self.topic, self.group, (self.database)());
        write!(
            f,
            "HandlerRecord({topic} for {group} on {db}, {}",
            self.location()
        )?;
        write!(f, ", max_attempts {})", self.max_attempts)
    }
}

impl HandlerRecord {
    /// `name (file:line)`, for messages that point at the handler.
    pub fn location(&self) -> String {
        crate::registry::location(self.name, self.file, self.line)
    }
}

inventory::collect!(HandlerRecord);

/// Every registered handler, sorted by (group, topic, name).
pub fn registered_handlers() -> Vec<&'static HandlerRecord> {
    crate::registry::sorted::<HandlerRecord, _>(|h| (h.group, h.topic, h.name))
}

/// How one handler call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerOutcome {
    /// The handler ran and its transaction (with the inbox key) committed.
    Applied,
    /// The inbox already had the key: the handler did not run.
    Duplicate,
    /// The handler (or its transaction) failed; trying again may succeed.
    Failed(String),
    /// The message can never be handled (its payload does not deserialize
    /// into the handler's type, ...): dead at once, with this reason.
    Poison(String),
    /// The handler was registered for another database than the consumer's.
    WrongDatabase(&'static str),
}

/// What a handler of database `DB` runs with: where to begin transactions,
/// the inbox, the group.
pub struct HandlerCtx<DB: sqlx::Database> {
    pub(crate) outbox: Outbox<DB>,
    pub(crate) inbox: Arc<dyn InboxWriter<DB>>,
    pub(crate) group: String,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) states: States,
}

impl<DB: sqlx::Database> fmt::Debug for HandlerCtx<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerCtx")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// Runs one handler call: decode the payload, begin a transaction, record
/// the inbox key, run `handler`, remove the replayed dead letter (if any),
/// commit. Called by generated code.
pub async fn run_handler<DB, M, E, F>(
    ctx: &AnyCtx,
    envelope: &Envelope,
    replay: Option<Uuid>,
    handler: F,
) -> HandlerOutcome
where
    DB: sqlx::Database,
    M: DeserializeOwned,
    E: fmt::Display,
    F: for<'t> FnOnce(
        &'t mut Tx<'static, DB>,
        M,
        &'t Envelope,
        &'t States,
    ) -> Option<BoxFuture<'t, Result<(), E>>>,
{
    let Some(ctx) = ctx.downcast_ref::<HandlerCtx<DB>>() else {
        return HandlerOutcome::WrongDatabase(std::any::type_name::<DB>());
    };
    let message: M = match serde_json::from_slice(&envelope.payload) {
        Ok(m) => m,
        Err(e) => {
            return HandlerOutcome::Poison(format!(
                "payload does not match `{}`: {e}",
                std::any::type_name::<M>()
            ));
        }
    };
    let mut tx = match ctx.outbox.begin().await {
        Ok(tx) => tx,
        Err(e) => return HandlerOutcome::Failed(crate::error::error_chain(&e)),
    };
    let now = ctx.clock.now();
    let fresh = ctx
        .inbox
        .record(
            &mut tx,
            &ctx.group,
            &envelope.topic,
            &envelope.idempotency_key,
            now,
        )
        .await;
    match fresh {
        Ok(true) => {}
        Ok(false) => {
            // Nothing was written; the replayed dead letter (if any) was
            // applied before, so it can go.
            if let Some(id) = replay {
                if let Err(e) = ctx.inbox.remove_dead(&mut tx, id).await {
                    return HandlerOutcome::Failed(crate::error::error_chain(&e));
                }
                if let Err(e) = tx.commit().await {
                    return HandlerOutcome::Failed(crate::error::error_chain(&e));
                }
            }
            return HandlerOutcome::Duplicate;
        }
        Err(e) => return HandlerOutcome::Failed(crate::error::error_chain(&e)),
    }
    // `None` when a `State<T>` the handler takes is missing: the consumer
    // checks them all at start, so only a consumer built by hand gets here.
    let Some(call) = handler(&mut tx, message, envelope, &ctx.states) else {
        return HandlerOutcome::Failed(
            "a `State<T>` the handler takes was not given to the consumer".into(),
        );
    };
    if let Err(e) = call.await {
        // Dropping the transaction rolls back the effects and the inbox key.
        return HandlerOutcome::Failed(e.to_string());
    }
    if let Some(id) = replay
        && let Err(e) = ctx.inbox.remove_dead(&mut tx, id).await
    {
        return HandlerOutcome::Failed(crate::error::error_chain(&e));
    }
    match tx.commit().await {
        Ok(()) => HandlerOutcome::Applied,
        Err(e) => HandlerOutcome::Failed(crate::error::error_chain(&e)),
    }
}
