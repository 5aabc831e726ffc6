//! The mark writer: sent marks, written in batches.

use std::sync::Arc;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Shared, retry_delay};
use crate::error::error_chain;
use crate::{Broker, Store};

/// Writes sent marks in batches.
///
/// Runs until `done` fires, which [`run`] does once every publisher has
/// finished (including the shutdown drain), then flushes what is left: a
/// confirm that arrives during shutdown is still marked.
pub(super) async fn mark_loop<S: Store, B: Broker>(
    shared: Arc<Shared<S, B>>,
    mut rx: mpsc::UnboundedReceiver<Uuid>,
    mut done: tokio::sync::oneshot::Receiver<()>,
) {
    let max = shared.config.mark_batch;
    let mut batch = Vec::with_capacity(max);
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = &mut done => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let deadline = tokio::time::sleep(shared.config.mark_interval);
        tokio::pin!(deadline);
        while batch.len() < max {
            tokio::select! {
                m = rx.recv() => match m { Some(id) => batch.push(id), None => break },
                () = &mut deadline => break,
            }
        }
        write_marks(&shared, &mut batch).await;
    }
    // The publishers are done; flush what they confirmed.
    while let Ok(id) = rx.try_recv() {
        batch.push(id);
        if batch.len() >= max {
            write_marks(&shared, &mut batch).await;
        }
    }
    write_marks(&shared, &mut batch).await;
}

async fn write_marks<S: Store, B: Broker>(shared: &Shared<S, B>, batch: &mut Vec<Uuid>) {
    if batch.is_empty() {
        return;
    }
    let mut tries = 0u32;
    loop {
        match shared.store.mark_sent(batch, shared.now()).await {
            Ok(()) => break,
            Err(e) if tries < 5 => {
                tries += 1;
                let delay = retry_delay(&shared.config, tries, shared.seed);
                tracing::warn!(error = %error_chain(&e), retry_in = ?delay, "could not mark messages sent");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::error!(error = %error_chain(&e), count = batch.len(), "could not mark messages sent; they will be published again");
                break;
            }
        }
    }
    batch.clear();
}
