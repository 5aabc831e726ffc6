//! The fast path: rows this process's transactions wrote, handed over from
//! memory right after commit and published one key at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{FastMsg, KeyId, Shared, drain, key_of};
use crate::{Broker, Store};

/// Messages from committed transactions of this process.
pub(super) async fn fast_loop<S: Store, B: Broker>(
    shared: Arc<Shared<S, B>>,
    mut rx: mpsc::Receiver<FastMsg>,
    stop: CancellationToken,
) {
    // Keys with a message in flight, and what waits behind it.
    let mut queues: HashMap<KeyId, VecDeque<FastMsg>> = HashMap::new();
    let mut running: JoinSet<bool> = JoinSet::new();
    // The key and transaction of each running task, so that a task that
    // ends in a panic still frees its key (held back, its row retried after
    // its lease).
    let mut keys: HashMap<tokio::task::Id, (KeyId, Uuid)> = HashMap::new();
    let spawn = |running: &mut JoinSet<bool>,
                 keys: &mut HashMap<tokio::task::Id, (KeyId, Uuid)>,
                 msg: FastMsg| {
        let shared = Arc::clone(&shared);
        let key = key_of(&msg.envelope).map(|key| (key, msg.lease.owner));
        let task = running.spawn(async move {
            let span = shared.publish_span(&msg.envelope, 1, "fast");
            let lease = msg.lease;
            let outcome = shared
                .publish_one(&msg.envelope, lease)
                .instrument(span)
                .await;
            shared.holds_key(outcome)
        });
        if let Some(key) = key {
            keys.insert(task.id(), key);
        }
    };
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, failed) = match done {
                    Ok((id, failed)) => (id, failed),
                    Err(e) => {
                        tracing::error!(error = %e, "a fast-path publish task failed; its key is held back");
                        (e.id(), true)
                    }
                };
                let Some((key, owner)) = keys.remove(&id) else { continue };
                if failed {
                    shared.hold(key.clone(), owner);
                    let waiting: Vec<FastMsg> = queues.remove(&key).into_iter().flatten().collect();
                    shared.release_fast(&waiting).await;
                } else if let Some(next) = queues.get_mut(&key).and_then(VecDeque::pop_front) {
                    spawn(&mut running, &mut keys, next);
                } else {
                    queues.remove(&key);
                }
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                match key_of(&msg.envelope) {
                    None => spawn(&mut running, &mut keys, msg),
                    Some(key) => {
                        if shared.divert(&key, msg.lease.owner, shared.now()) {
                            fail_point!("txmsg::relay::fast_release_held");
                            shared.release(&[msg.envelope.id], msg.lease.owner).await;
                        } else if let Some(q) = queues.get_mut(&key) {
                            q.push_back(msg);
                        } else {
                            queues.insert(key, VecDeque::new());
                            spawn(&mut running, &mut keys, msg);
                        }
                    }
                }
            }
        }
    }
    // Shutting down: no new fast-path work; what waits is released for the
    // next relay, what is in flight gets the shutdown timeout. A transaction
    // may have reserved a slot before shutdown and commit after it: wait
    // (bounded) until every slot is used or given back, so that its row is
    // released too rather than left leased until the lease runs out.
    shared.accepting.store(false, Ordering::Release);
    let mut waiting: Vec<FastMsg> = queues.into_values().flatten().collect();
    let deadline = tokio::time::Instant::now() + shared.config.shutdown_timeout;
    loop {
        while let Ok(msg) = rx.try_recv() {
            waiting.push(msg);
        }
        let all_back = shared.fast_probe.capacity() == shared.fast_probe.max_capacity();
        if all_back || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            msg = rx.recv() => waiting.extend(msg),
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    rx.close();
    shared.release_fast(&waiting).await;
    drain(&mut running, shared.config.shutdown_timeout).await;
}
