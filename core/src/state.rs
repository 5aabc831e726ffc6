//! Application state for handlers and check-backs: `State<T>` parameters,
//! supplied to the [`Consumer`](crate::consumer::Consumer) or
//! [`CheckBackWorker`](crate::half::CheckBackWorker) that runs them.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use crate::{Error, Result};

/// Application state a `#[message_handler]` or `#[check_back]` takes as a
/// parameter: a clone of the value given to its runner with `with_state`.
///
/// Put what handlers share (clients, settings, a pool) in one `Clone` type,
/// cheap to clone (`Arc`s inside), and take it as `State<AppState>` after the
/// function's fixed parameters. Which states a handler takes is recorded at
/// compile time; a runner that lacks one refuses to start, naming the
/// handler and the type.
///
/// # Examples
///
/// ```
/// use txmsg_core::State;
///
/// #[derive(Clone)]
/// struct AppState {
///     region: &'static str,
/// }
///
/// let State(app) = State(AppState { region: "eu" });
/// assert_eq!(app.region, "eu");
/// // It also derefs to the state.
/// assert_eq!(State(AppState { region: "us" }).region, "us");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct State<T>(pub T);

impl<T> Deref for State<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for State<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// A state type a handler or check-back takes, as its registration records
/// it. Built by the macros.
#[derive(Clone, Copy)]
pub struct StateType {
    /// The type's id.
    pub id: fn() -> TypeId,
    /// The type's name, for errors.
    pub name: fn() -> &'static str,
}

impl fmt::Debug for StateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateType({})", (self.name)())
    }
}

/// The states a runner was given, one value per type. Cheap to clone.
///
/// # Examples
///
/// ```
/// use txmsg_core::{State, States};
///
/// let mut states = States::default();
/// states.insert(42u32);
/// states.insert("eu");
/// assert_eq!(states.get::<u32>(), Some(State(42)));
/// assert_eq!(states.get::<&str>(), Some(State("eu")));
/// assert_eq!(states.get::<u64>(), None);
/// ```
#[derive(Clone, Default)]
pub struct States {
    by_type: Arc<HashMap<TypeId, Entry>>,
}

#[derive(Clone)]
struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    name: &'static str,
}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.by_type.values().map(|e| e.name).collect();
        names.sort_unstable();
        f.debug_tuple("States").field(&names).finish()
    }
}

impl States {
    /// Adds `value`, replacing an earlier value of its type.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        let entry = Entry {
            value: Arc::new(value),
            name: std::any::type_name::<T>(),
        };
        Arc::make_mut(&mut self.by_type).insert(TypeId::of::<T>(), entry);
    }

    /// A clone of the value of type `T`, if there is one.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<State<T>> {
        let entry = self.by_type.get(&TypeId::of::<T>())?;
        entry.value.downcast_ref::<T>().cloned().map(State)
    }

    /// Checks that every state `needs` lists is here.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `state`, naming the first missing type, `who`
    /// takes it, and `how` to add it.
    pub fn check(&self, needs: &[StateType], who: &str, how: &str) -> Result<()> {
        match needs.iter().find(|n| !self.by_type.contains_key(&(n.id)())) {
            None => Ok(()),
            Some(missing) => Err(Error::config(
                "state",
                format!(
                    "{who} takes `State<{}>`, but none was given: add it with `{how}`",
                    (missing.name)()
                ),
            )),
        }
    }
}

/// Writes the setters of a runner of registered functions (the consumer,
/// the check-back worker), for a struct with the fields `states: States` and
/// `observer: Option<UnboundedSender<$report>>`: `with_state`, `with_states`
/// and `with_observer`, each with the doc the caller writes above its name.
macro_rules! runner_setters {
    (
        $(#[$state_doc:meta])* fn with_state;
        $(#[$states_doc:meta])* fn with_states;
        $(#[$observer_doc:meta])* fn with_observer($report:ty);
    ) => {
        $(#[$state_doc])*
        pub fn with_state<T: Clone + Send + Sync + 'static>(mut self, state: T) -> Self {
            self.states.insert(state);
            self
        }

        $(#[$states_doc])*
        pub fn with_states(mut self, states: $crate::States) -> Self {
            self.states = states;
            self
        }

        $(#[$observer_doc])*
        pub fn with_observer(
            mut self,
            observer: ::tokio::sync::mpsc::UnboundedSender<$report>,
        ) -> Self {
            self.observer = Some(observer);
            self
        }
    };
}
pub(crate) use runner_setters;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Clients(u8);

    #[test]
    fn a_missing_state_is_named_with_who_takes_it() {
        let needs = [StateType {
            id: TypeId::of::<Clients>,
            name: std::any::type_name::<Clients>,
        }];
        let mut states = States::default();
        let err = states
            .check(&needs, "handler `bill`", "Consumer::with_state")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("handler `bill` takes `State<"), "{text}");
        assert!(text.contains("Clients>`"), "{text}");
        assert!(text.contains("Consumer::with_state"), "{text}");
        states.insert(Clients(1));
        assert!(
            states
                .check(&needs, "handler `bill`", "Consumer::with_state")
                .is_ok()
        );
        assert_eq!(states.get::<Clients>(), Some(State(Clients(1))));
    }

    #[test]
    fn clones_share_nothing_added_later() {
        let mut a = States::default();
        a.insert(1u8);
        let b = a.clone();
        a.insert(2u16);
        assert_eq!(b.get::<u16>(), None);
        assert_eq!(a.get::<u8>(), Some(State(1)));
    }
}
