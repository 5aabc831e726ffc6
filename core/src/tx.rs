//! `Outbox` (the producer's handle) and `Tx` (a local transaction that
//! carries outbox messages).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use tokio::sync::mpsc::OwnedPermit;
use uuid::Uuid;

use crate::relay::{FastMsg, RelayLink};
use crate::store::{Inserted, Lease, OutboxWriter, SqlStore};
use crate::{Clock, Error, Message, Result, SystemClock};

/// The producer's handle on a store: begins transactions that can carry
/// outbox messages, and hands committed messages to a relay.
///
/// Cheap to clone. Without [`with_relay`](Outbox::with_relay), committed
/// messages wait for a relay's poller (in this or another process); with it,
/// they are published right after commit.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> txmsg::Result<()> {
/// use txmsg::prelude::*;
/// use txmsg::sqlite::SqliteStore;
/// use txmsg::{Message, Outbox};
///
/// let store = SqliteStore::connect("sqlite://app.db").await?;
/// let outbox = Outbox::new(&store);
/// let mut tx = outbox.begin().await?;
/// tx.enqueue(Message::new("orders.placed", &42)?).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub struct Outbox<DB: sqlx::Database> {
    inner: Arc<OutboxInner<DB>>,
}

struct OutboxInner<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    writer: Arc<dyn OutboxWriter<DB>>,
    /// The store's [`SqlStore::begin_statement`]. Kept instead of a boxed
    /// `begin` of the store: boxing sqlx's `begin` future (several KiB)
    /// cost every transaction a copy of it, measurable in the producer
    /// benchmark; beginning here keeps that future inside the caller's.
    begin_statement: Option<&'static str>,
    relay: Option<RelayLink>,
    clock: Arc<dyn Clock>,
    /// Commits whose fast-path handoff is still to be lost (fault injection).
    #[cfg(feature = "testing")]
    lost_handoffs: Arc<std::sync::atomic::AtomicU32>,
}

impl<DB: sqlx::Database> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Outbox {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<DB: sqlx::Database> fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("writer", &self.inner.writer)
            .field("relay", &self.inner.relay.as_ref().map(|r| r.owner))
            .finish_non_exhaustive()
    }
}

impl<DB: sqlx::Database> Outbox<DB> {
    /// An outbox on `store`, without a relay in this process.
    pub fn new<S: SqlStore<Database = DB>>(store: &S) -> Self {
        Outbox {
            inner: Arc::new(OutboxInner {
                pool: store.pool().clone(),
                writer: store.writer(),
                begin_statement: store.begin_statement(),
                relay: None,
                clock: Arc::new(SystemClock),
                #[cfg(feature = "testing")]
                lost_handoffs: Arc::default(),
            }),
        }
    }

    /// Hands committed messages to `relay` right after commit (the fast path).
    ///
    /// Messages are written with a fast-path lease (owned by their
    /// transaction), so no relay's poller publishes them meanwhile; the
    /// relay's clock is used for timestamps.
    pub fn with_relay(self, relay: &crate::RelayHandle) -> Self {
        let link = relay.link();
        let inner = OutboxInner {
            pool: self.inner.pool.clone(),
            writer: Arc::clone(&self.inner.writer),
            begin_statement: self.inner.begin_statement,
            clock: Arc::clone(&link.clock),
            relay: Some(link),
            #[cfg(feature = "testing")]
            lost_handoffs: Arc::clone(&self.inner.lost_handoffs),
        };
        Outbox {
            inner: Arc::new(inner),
        }
    }

    /// Fault injection: the next `commits` commits that carry messages for
    /// the relay's fast path, through this outbox, its clones or outboxes
    /// made from it with [`with_relay`](Outbox::with_relay), commit their
    /// messages but never hand them to the relay, as if the process died
    /// right after `COMMIT`.
    ///
    /// Their rows stay leased until the lease runs out; then a
    /// relay's poller publishes them, as it does a crash's leftovers. Replaces
    /// any count set before; `0` turns it off.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn lose_next_handoffs(&self, commits: u32) {
        self.inner
            .lost_handoffs
            .store(commits, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this commit's handoff is to be lost, counting it.
    #[cfg(feature = "testing")]
    fn take_lost_handoff(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.inner
            .lost_handoffs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The connection pool.
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.inner.pool
    }

    /// Begins a transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if no connection could be had or `BEGIN` failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves no transaction open.
    pub async fn begin(&self) -> Result<Tx<'static, DB>> {
        let txn = crate::store::begin_with(&self.inner.pool, self.inner.begin_statement).await?;
        let mut tx = self.wrap(txn);
        if self.inner.writer.writes_with_commit() {
            tx.held = Some(Vec::new());
        }
        Ok(tx)
    }

    /// A connection of the outbox's pool.
    pub(crate) async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<DB>> {
        Ok(self.inner.pool.acquire().await?)
    }

    /// Now, by the outbox's clock (its relay's, when it has one).
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// Wakes the relay's poller, if this outbox has a relay.
    pub(crate) fn wake_relay(&self) {
        if let Some(relay) = &self.inner.relay {
            relay.wake();
        }
    }

    /// Wraps a transaction begun elsewhere, so that messages can be added to it.
    ///
    /// A transaction nested in another (a savepoint, begun on a
    /// transaction) commits into the outer one only, so its messages are not
    /// handed to the fast path at [`Tx::commit`]: they are written without a
    /// lease and the relay's poller publishes them once the outermost
    /// transaction has committed (at its next poll or notification). If the
    /// outer transaction rolls back, they are never published.
    pub fn wrap<'c>(&self, txn: sqlx::Transaction<'c, DB>) -> Tx<'c, DB> {
        let depth =
            <DB::TransactionManager as sqlx_core::transaction::TransactionManager>::get_transaction_depth(&txn);
        Tx {
            txn,
            outbox: self.clone(),
            pending: Vec::new(),
            held: None,
            nudge: false,
            nested: depth > 1,
            fast_owner: Uuid::now_v7(),
        }
    }
}

/// A message held for the commit, with its fast-path reservation if any.
struct Held {
    envelope: crate::Envelope,
    reserved: Option<(Lease, OwnedPermit<FastMsg>)>,
}

/// A local database transaction that also carries outbox messages.
///
/// Derefs to the sqlx connection, so business statements run on it as on any
/// sqlx transaction (`query(..).execute(&mut **tx)` where `tx: &mut Tx`).
/// Messages added with [`enqueue`](Tx::enqueue) commit or roll back with the
/// business rows; after [`commit`](Tx::commit) they are handed to the relay.
/// Dropping a `Tx` without committing rolls it back.
pub struct Tx<'c, DB: sqlx::Database> {
    txn: sqlx::Transaction<'c, DB>,
    outbox: Outbox<DB>,
    pending: Vec<(FastMsg, OwnedPermit<FastMsg>)>,
    /// Messages written with `COMMIT` (where the store can, in a
    /// transaction this outbox began), each with its fast-path
    /// reservation; `None`: each message is written at `enqueue`.
    held: Option<Vec<Held>>,
    nudge: bool,
    /// Begun inside another transaction: its commit is not the one that
    /// makes the rows visible, so nothing goes to the fast path.
    nested: bool,
    /// Lease owner of this transaction's fast-path rows. One per
    /// transaction, not per relay: a later row of a key goes in leased only
    /// past earlier rows of this same transaction, whose hand-offs arrive in
    /// order; a row of another transaction of the key, even one of this
    /// process whose hand-off is still on its way, sends it to the poller,
    /// which publishes it after that row.
    fast_owner: Uuid,
}

impl<DB: sqlx::Database> fmt::Debug for Tx<'_, DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<DB: sqlx::Database> Deref for Tx<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &Self::Target {
        &self.txn
    }
}

impl<DB: sqlx::Database> DerefMut for Tx<'_, DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.txn
    }
}

impl<'c, DB: sqlx::Database> Tx<'c, DB> {
    /// Writes `message` to the outbox in this transaction and returns its id.
    ///
    /// In a transaction begun with [`Outbox::begin`] on a store that writes
    /// messages with `COMMIT` (PostgreSQL), the message is held and written
    /// by [`commit`](Tx::commit), in the same round trip as `COMMIT`; a
    /// duplicate is then reported by `commit`. Otherwise (other stores, and
    /// a transaction made with [`Outbox::wrap`]) it is written here.
    ///
    /// # Errors
    ///
    /// [`Error::Duplicate`] if the topic already has a message with this
    /// idempotency key (the transaction should be rolled back);
    /// [`Error::Database`] if the insert failed.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if dropped, the row may or may not be in the
    /// transaction; roll the transaction back.
    pub async fn enqueue(&mut self, message: Message) -> Result<Uuid> {
        let inner = &self.outbox.inner;
        let now = inner.clock.now();
        let envelope = message.into_envelope(now);
        let span = tracing::debug_span!(
            "txmsg.enqueue",
            topic = %envelope.topic,
            key = envelope.key.as_deref(),
            message_id = %envelope.id,
        );
        // A permit reserves room on the fast path before the row is written, so
        // a leased row is always handed over after commit.
        let reserved = match &inner.relay {
            Some(relay) if !self.nested => relay.reserve(self.fast_owner, now),
            _ => None,
        };
        if let Some(held) = &mut self.held {
            let id = envelope.id;
            span.in_scope(|| tracing::trace!("held for the commit"));
            held.push(Held { envelope, reserved });
            return Ok(id);
        }
        let lease = reserved.as_ref().map(|(lease, _)| *lease);
        let outcome = {
            use tracing::Instrument;
            inner
                .writer
                .insert(&mut self.txn, &envelope, lease)
                .instrument(span)
                .await?
        };
        let id = envelope.id;
        match (outcome, reserved) {
            (Inserted::Duplicate, _) => {
                return Err(Error::Duplicate {
                    topic: envelope.topic,
                    idempotency_key: envelope.idempotency_key,
                });
            }
            (Inserted::Leased, Some((lease, permit))) => {
                self.pending.push((FastMsg { envelope, lease }, permit));
            }
            _ => self.nudge = true,
        }
        Ok(id)
    }

    /// Commits the business rows and the messages together, then hands the
    /// messages to the relay.
    ///
    /// # Errors
    ///
    /// [`Error::Duplicate`] if a message held for the commit (see
    /// [`enqueue`](Tx::enqueue)) has an idempotency key its topic already
    /// has: the transaction is rolled back, business rows included.
    /// [`Error::Database`] if the commit failed; then nothing was written.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if dropped during the commit, the transaction may or
    /// may not have committed. Committed messages are published either way
    /// (by the poller, once their lease runs out).
    pub async fn commit(self) -> Result<()> {
        let Tx {
            txn,
            outbox,
            mut pending,
            held,
            mut nudge,
            nested: _,
            fast_owner: _,
        } = self;
        fail_point!("txmsg::before_commit", |_| Err(Error::Shutdown));
        match held {
            Some(held) if !held.is_empty() => {
                let rows: Vec<_> = held
                    .iter()
                    .map(|h| (&h.envelope, h.reserved.as_ref().map(|(l, _)| *l)))
                    .collect();
                let inserted = outbox.inner.writer.insert_and_commit(txn, &rows).await?;
                drop(rows);
                for (h, inserted) in held.into_iter().zip(inserted) {
                    match (inserted, h.reserved) {
                        (Inserted::Leased, Some((lease, permit))) => pending.push((
                            FastMsg {
                                envelope: h.envelope,
                                lease,
                            },
                            permit,
                        )),
                        _ => nudge = true,
                    }
                }
            }
            _ => txn.commit().await?,
        }
        fail_point!("txmsg::after_commit_before_handoff", |_| Ok(()));
        #[cfg(feature = "testing")]
        if !pending.is_empty() && outbox.take_lost_handoff() {
            // The permits go back unused; the rows wait for their lease to
            // run out.
            return Ok(());
        }
        if let Some(relay) = &outbox.inner.relay {
            for (msg, permit) in pending {
                permit.send(msg);
            }
            if nudge {
                relay.wake();
            }
        }
        Ok(())
    }

    /// Rolls back the business rows and the messages.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] if the rollback failed (the database rolls back
    /// on its own when the connection closes).
    pub async fn rollback(self) -> Result<()> {
        self.txn.rollback().await?;
        Ok(())
    }

    /// The underlying sqlx transaction.
    pub fn as_transaction(&mut self) -> &mut sqlx::Transaction<'c, DB> {
        &mut self.txn
    }

    /// How many messages this transaction carries for the fast path (those
    /// held for the commit with a reservation included: the commit may
    /// still send one of them to the poller, behind an earlier message of
    /// its key).
    pub fn fast_path_len(&self) -> usize {
        self.pending.len()
            + self.held.as_ref().map_or(0, |held| {
                held.iter().filter(|h| h.reserved.is_some()).count()
            })
    }
}

/// Used by the relay to build the lease a fast-path row is written with.
pub(crate) fn fast_lease(
    owner: Uuid,
    now: chrono::DateTime<chrono::Utc>,
    lease: std::time::Duration,
) -> Lease {
    Lease {
        owner,
        until: lease_until(now, lease),
    }
}

/// When a lease of length `lease` taken at `now` runs out.
pub(crate) fn lease_until(
    now: chrono::DateTime<chrono::Utc>,
    lease: std::time::Duration,
) -> chrono::DateTime<chrono::Utc> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(now)
}
