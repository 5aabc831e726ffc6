//! Starting and stopping the long-running tasks of the relay, the consumer
//! and the check-back worker: one stop signal, one set of tasks, one way to
//! shut them down.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
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
        self.tracker.spawn(async move {
            if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
                tracing::error!(task = what, panic = %panic_message(&*panic), "txmsg task panicked");
            }
        });
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
        tasks.spawn("panics", async { panic!("boom") });
        tasks.shutdown().await;
        assert_eq!(finished.load(Ordering::SeqCst), 3);
        // Again: nothing left to wait for.
        tasks.shutdown().await;
    }
}
