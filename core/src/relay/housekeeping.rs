//! Housekeeping beside publishing: purging sent rows and counting the
//! outbox for the gauges.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::error::error_chain;
use crate::{Broker, Store};

/// Deletes sent rows older than `sent_retention`, one batch at a time with a
/// pause between batches, so that a large backlog never holds locks for long
/// and producers keep committing meanwhile.
pub(super) async fn purge_loop<S: Store, B: Broker>(
    shared: Arc<Shared<S, B>>,
    stop: CancellationToken,
) {
    let Some(retention) = shared
        .config
        .sent_retention
        .and_then(|r| chrono::Duration::from_std(r).ok())
    else {
        return;
    };
    let mut tick = tokio::time::interval(shared.config.purge_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            let before = shared.now() - retention;
            let started = std::time::Instant::now();
            match shared
                .store
                .purge_sent(before, shared.config.purge_batch)
                .await
            {
                Ok(n) => {
                    if n > 0 {
                        metrics::counter!(crate::metrics::SENT_PURGED_TOTAL).increment(n);
                        tracing::debug!(rows = n, "purged sent rows");
                    }
                    if n < u64::from(shared.config.purge_batch) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging sent rows failed; trying at the next interval");
                    break;
                }
            }
            // Let producers and the other loops at the table between
            // batches: rest at least as long as the batch took.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(crate::backoff::purge_pause(started.elapsed())) => {}
            }
        }
    }
}

/// Sets the outbox gauges from [`Store::stats`] and
/// [`Store::pending_by_topic`] every `stats_interval` (the first time at
/// start). Off the publish path: a slow or failing count
/// delays only the next reading.
pub(super) async fn stats_loop<S: Store, B: Broker>(
    shared: Arc<Shared<S, B>>,
    stop: CancellationToken,
) {
    let Some(every) = shared.config.stats_interval else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown = std::collections::HashSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Cancel safe: `stats` is one read-only transaction.
        let stats = tokio::select! {
            () = stop.cancelled() => return,
            stats = shared.store.stats() => stats,
        };
        match stats {
            Ok(stats) => crate::metrics::record_outbox(&stats, shared.now()),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "counting the outbox failed; trying at the next interval");
                continue;
            }
        }
        // By topic, from the pending rows only.
        let now = shared.now();
        let topics = tokio::select! {
            () = stop.cancelled() => return,
            topics = shared.store.pending_by_topic() => topics,
        };
        match topics {
            Ok(topics) => shown = crate::metrics::record_topics(&topics, shown, now),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "counting the outbox by topic failed; trying at the next interval");
            }
        }
    }
}
