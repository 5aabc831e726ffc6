//! The poller: claims rows of other processes, crash leftovers and retries
//! in batches with a lease, and publishes them per key, in order.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{KeyId, Shared, drain, key_of, retry_delay};
use crate::error::error_chain;
use crate::store::ClaimRequest;
use crate::task::join_all;
use crate::{Broker, DeadKeyPolicy, Envelope, Store};

/// Rows of other processes, crash leftovers and retries.
pub(super) async fn poll_loop<S: Store, B: Broker>(
    shared: Arc<Shared<S, B>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut errors = 0u32;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(shared.config.poll_interval) => {}
        }
        // Drain: claim again at once while batches come back full. The next
        // claim runs while the previous batch is still being published (at
        // most two batches at once), so the database round trips of a claim
        // overlap the broker's confirms instead of adding to them. This is
        // as safe as two relays claiming side by side: rows being published
        // are leased, so no claim takes them, and a leased pending row
        // blocks the later rows of its key.
        let mut previous: Option<JoinSet<()>> = None;
        loop {
            if stop.is_cancelled() {
                drain_previous(&shared, &mut previous).await;
                return;
            }
            if let Some(until) = shared.paused_until() {
                let resume = tokio::time::sleep_until(until);
                if !wait_or_drain(&shared, &mut previous, &stop, resume).await {
                    return;
                }
            }
            let now = shared.now();
            let lease = crate::tx::fast_lease(shared.poll_owner, now, shared.config.lease);
            let req = ClaimRequest {
                lease,
                now,
                limit: shared.config.batch_size,
                per_key_limit: shared.config.per_key_batch,
                dead_parks_key: shared.config.dead_key_policy == DeadKeyPolicy::Park,
            };
            let claimed = shared
                .store
                .claim(&req)
                .instrument(tracing::debug_span!("txmsg.relay.claim", limit = req.limit))
                .await;
            let batch = match claimed {
                Ok(batch) => {
                    errors = 0;
                    batch
                }
                Err(e) => {
                    errors = errors.saturating_add(1);
                    let delay = retry_delay(&shared.config, errors, shared.seed);
                    tracing::warn!(error = %error_chain(&e), retry_in = ?delay, "claim failed");
                    let retry = tokio::time::sleep(delay);
                    if !wait_or_drain(&shared, &mut previous, &stop, retry).await {
                        return;
                    }
                    continue;
                }
            };
            let full = batch.len() >= req.limit as usize;
            if batch.is_empty() {
                // The rows left may be behind the keys still in flight:
                // claim again once the previous batch is done.
                match previous.take() {
                    Some(mut running) => {
                        if !settle(&shared, &mut running, &stop).await {
                            return;
                        }
                        continue;
                    }
                    None => break,
                }
            }
            tracing::debug!(count = batch.len(), "claimed");
            let mut running = JoinSet::new();
            for group in group_by_key(batch) {
                let shared = Arc::clone(&shared);
                running.spawn(async move { shared.publish_group(group, lease).await });
            }
            if let Some(mut earlier) = previous.take()
                && !settle(&shared, &mut earlier, &stop).await
            {
                drain(&shared, &mut running).await;
                return;
            }
            if full {
                previous = Some(running);
            } else {
                if !settle(&shared, &mut running, &stop).await {
                    return;
                }
                break;
            }
        }
    }
}

/// Lets the publishes of the batch before, if any, finish (see [`drain`]).
async fn drain_previous<S, B>(shared: &Shared<S, B>, previous: &mut Option<JoinSet<()>>) {
    if let Some(mut running) = previous.take() {
        drain(shared, &mut running).await;
    }
}

/// Waits for `wait`; on shutdown lets the publishes of the batch before
/// finish (see [`drain_previous`]) and returns `false`.
async fn wait_or_drain<S, B>(
    shared: &Shared<S, B>,
    previous: &mut Option<JoinSet<()>>,
    stop: &CancellationToken,
    wait: impl Future<Output = ()>,
) -> bool {
    tokio::select! {
        () = stop.cancelled() => {
            drain_previous(shared, previous).await;
            false
        }
        () = wait => true,
    }
}

/// Waits for every publish of a batch; on shutdown lets them finish (see
/// [`drain`]) and returns `false`.
async fn settle<S: Store, B: Broker>(
    shared: &Shared<S, B>,
    running: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> bool {
    tokio::select! {
        () = join_all(running) => true,
        () = stop.cancelled() => {
            drain(shared, running).await;
            false
        }
    }
}

/// Splits a claimed batch (in id order) into per-key groups, keeping order;
/// every keyless message is a group of its own.
fn group_by_key(batch: Vec<Envelope>) -> Vec<Vec<Envelope>> {
    let mut groups: Vec<Vec<Envelope>> = Vec::new();
    let mut index: HashMap<KeyId, usize> = HashMap::new();
    for env in batch {
        match key_of(&env) {
            None => groups.push(vec![env]),
            Some(k) => match index.get(&k) {
                Some(&i) => groups[i].push(env),
                None => {
                    index.insert(k, groups.len());
                    groups.push(vec![env]);
                }
            },
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn groups_keep_order_per_key() {
        let mk = |key: Option<&str>, n: u8| Envelope {
            id: Uuid::from_u128(u128::from(n)),
            topic: "t".into(),
            key: key.map(Into::into),
            idempotency_key: n.to_string(),
            headers: Default::default(),
            payload: vec![n],
            created_at: Utc::now(),
            expires_at: None,
            attempts: 0,
        };
        let groups = group_by_key(vec![
            mk(Some("a"), 1),
            mk(None, 2),
            mk(Some("b"), 3),
            mk(Some("a"), 4),
            mk(None, 5),
        ]);
        let ids: Vec<Vec<u8>> = groups
            .iter()
            .map(|g| g.iter().map(|e| e.payload[0]).collect())
            .collect();
        assert_eq!(ids, vec![vec![1, 4], vec![2], vec![3], vec![5]]);
    }
}
