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
    // After a stop: no new fast-path work; what was handed over already is
    // published until nothing is left or the flush deadline (see
    // `RelayHandle::shutdown`). A transaction may have reserved a slot
    // before the stop and commit after it: its message is awaited too, so
    // that its row is published or released rather than left leased.
    let mut stopping = false;
    loop {
        if stopping && queues.is_empty() && running.is_empty() && slots_back(&shared) {
            break;
        }
        tokio::select! {
            biased;
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                shared.accepting.store(false, Ordering::Release);
            }
            () = shared.deadline.cancelled(), if stopping => break,
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
            // A slot given back unused wakes nothing: look again.
            () = tokio::time::sleep(Duration::from_millis(5)), if stopping => {}
        }
    }
    // Past the deadline (or with nothing left): what still waits is
    // released for the next relay; running publishes release their own
    // rows if they have not reached the broker yet.
    shared.accepting.store(false, Ordering::Release);
    rx.close();
    let mut waiting: Vec<FastMsg> = queues.into_values().flatten().collect();
    while let Ok(msg) = rx.try_recv() {
        waiting.push(msg);
    }
    shared.release_fast(&waiting).await;
    drain(&shared, &mut running).await;
}

/// Whether every fast-path slot is back: none reserved by a transaction,
/// none holding a message not yet received.
fn slots_back<S, B>(shared: &Shared<S, B>) -> bool {
    shared.fast_probe.capacity() == shared.fast_probe.max_capacity()
}
