//! Starting and stopping the long-running tasks of the relay, the consumer
//! and the check-back worker: one stop signal, one set of tasks, one way to
//! shut them down.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::panic_message;

/// The tasks of one running component and the signal that stops them.
///
/// Clones share both. Tasks watch [`stop_signal`](Tasks::stop_signal) and
/// finish their work when it fires; [`shutdown`](Tasks::shutdown) fires it and
/// waits for them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tasks {
    stop: CancellationToken,
    tracker: TaskTracker,
    /// The first task that ended before the stop signal, and why.
    failed: Arc<Mutex<Option<(&'static str, String)>>>,
}

/// Whether a running component (a relay, a consumer, a check-back worker)
/// still does its work: for readiness and liveness probes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Every task runs.
    Running,
    /// Shutdown began (or ended): the tasks are stopping or stopped.
    Stopped,
    /// A task ended on its own before shutdown, so the component no longer
    /// does all its work: the task's name and why it ended (the panic's
    /// message). Its messages are safe (whatever it held is delivered again
    /// or claimed by another process); restart the component.
    Failed {
        /// The task: `relay`, `consumer`, `inbox purge`, `check-back`.
        task: &'static str,
        /// Why it ended.
        reason: String,
    },
}

impl Health {
    /// Whether the component runs: [`Health::Running`].
    pub fn is_running(&self) -> bool {
        matches!(self, Health::Running)
    }
}

impl Tasks {
    pub(crate) fn new() -> Self {
        Tasks::default()
    }

    /// The signal the tasks watch: cancelled once shutdown begins.
    pub(crate) fn stop_signal(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Spawns `task` on the current Tokio runtime. A panic ends the task, not
    /// the process; it is logged naming `what`, never dropped silently.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    pub(crate) fn spawn<F>(&self, what: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, failed) = (self.stop.clone(), Arc::clone(&self.failed));
        self.tracker.spawn(async move {
            let reason = match AssertUnwindSafe(task).catch_unwind().await {
                Err(panic) => {
                    let message = panic_message(&*panic);
                    tracing::error!(task = what, panic = %message, "txmsg task panicked");
                    format!("panicked: {message}")
                }
                Ok(()) => "ended before shutdown".to_owned(),
            };
            if !stop.is_cancelled() {
                let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
                failed.get_or_insert((what, reason));
            }
        });
    }

    /// Whether every task runs, shutdown began, or a task ended on its own.
    pub(crate) fn health(&self) -> Health {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        match &*failed {
            Some((task, reason)) => Health::Failed {
                task,
                reason: reason.clone(),
            },
            None if self.stop.is_cancelled() => Health::Stopped,
            None => Health::Running,
        }
    }

    /// Fires the stop signal and waits until every task has finished.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the tasks keep stopping; calling again waits again.
    pub(crate) async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Waits until every task of `set` has ended.
///
/// # Cancel safety
///
/// Cancel safe: the tasks not yet joined stay in `set`.
pub(crate) async fn join_all<T: 'static>(set: &mut JoinSet<T>) {
    while set.join_next().await.is_some() {}
}

/// Waits up to `limit` for every task of `set` to end; whether they all did
/// (those left stay in `set`).
pub(crate) async fn join_all_within<T: 'static>(set: &mut JoinSet<T>, limit: Duration) -> bool {
    tokio::time::timeout(limit, join_all(set)).await.is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn shutdown_stops_every_task_and_waits_for_it() {
        let tasks = Tasks::new();
        let finished = Arc::new(AtomicU32::new(0));
        for _ in 0..3 {
            let (stop, finished) = (tasks.stop_signal(), Arc::clone(&finished));
            tasks.spawn("test", async move {
                stop.cancelled().await;
                tokio::task::yield_now().await;
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(tasks.health(), Health::Running);
        tasks.spawn("panics", async { panic!("boom") });
        // The panicking task ends at once; the others wait for the stop.
        for _ in 0..100 {
            if !tasks.health().is_running() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            tasks.health(),
            Health::Failed {
                task: "panics",
                reason: "panicked: boom".to_owned()
            }
        );
        tasks.shutdown().await;
        assert_eq!(finished.load(Ordering::SeqCst), 3);
        // Again: nothing left to wait for.
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn tasks_that_end_at_shutdown_leave_the_health_stopped() {
        let tasks = Tasks::new();
        let stop = tasks.stop_signal();
        tasks.spawn("waits", async move { stop.cancelled().await });
        assert!(tasks.health().is_running());
        tasks.shutdown().await;
        assert_eq!(tasks.health(), Health::Stopped);
    }
}
