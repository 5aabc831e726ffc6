//! A payment step whose local work is a call to an external payment API:
//! not in the outbox's database, so it cannot share a transaction with the
//! message. The message is a *half message*: stored prepared before the
//! call, committed or rolled back by its outcome; when the process dies in
//! between, the `#[check_back]` asks the API what happened.
//!
//! ```text
//! cargo run -p txmsg-example-payment
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use txmsg::consumer::SubscribeSpec;
use txmsg::half::HalfOutbox;
use txmsg::half::{CheckBackConfig, CheckBackWorker, CheckStatus};
use txmsg::memory::MemoryBroker;
use txmsg::prelude::*;
use txmsg::sqlite::SqliteStore;
use txmsg::{Relay, RelayConfig, State};

const TOPIC: &str = "payments.charged";

/// The event: a payment was captured.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PaymentCaptured {
    payment_id: String,
    order_id: i64,
    amount_cents: i64,
}

/// The simulated payment provider: what it knows about each payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProviderState {
    Captured,
    Declined,
}

/// A client of the payment provider, shared by the producer and the
/// check-back (which gets it as `State<Provider>`). Here the provider is
/// simulated in memory.
#[derive(Debug, Clone, Default)]
struct Provider {
    payments: Arc<Mutex<HashMap<String, ProviderState>>>,
}

impl Provider {
    /// What the provider knows of a payment.
    fn state(&self, payment_id: &str) -> Option<ProviderState> {
        self.payments
            .lock()
            .ok()
            .and_then(|p| p.get(payment_id).copied())
    }

    /// Captures the payment, or declines amounts over 10 000.
    async fn charge(&self, payment: &PaymentCaptured) -> Result<(), PaymentError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let state = if payment.amount_cents > 10_000 {
            ProviderState::Declined
        } else {
            ProviderState::Captured
        };
        if let Ok(mut p) = self.payments.lock() {
            p.insert(payment.payment_id.clone(), state);
        }
        match state {
            ProviderState::Captured => Ok(()),
            ProviderState::Declined => Err(PaymentError::Declined),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PaymentError {
    #[error("the provider declined the payment")]
    Declined,
    #[error(transparent)]
    Txmsg(#[from] txmsg::Error),
}

/// How the demo makes a call end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// Runs to the end.
    No,
    /// The process dies after the provider captured the payment, before the
    /// message is committed.
    AfterCharge,
    /// The process dies before the provider was called at all.
    BeforeCharge,
}

/// The payment step. The message is stored prepared before this body runs;
/// `Ok` commits it, `Err` rolls it back.
#[txmsg::transactional_message(
    topic = "payments.charged",
    half,
    check_back = payment_status,
    check_after = "100ms",
    key = payment.order_id,
    idempotency_key = payment.payment_id,
)]
async fn charge(
    payment: &PaymentCaptured,
    provider: &Provider,
    crash: Crash,
) -> Result<(), PaymentError> {
    if crash == Crash::BeforeCharge {
        std::future::pending::<()>().await;
    }
    provider.charge(payment).await?;
    if crash == Crash::AfterCharge {
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// Asks the provider what became of a payment whose producer vanished.
#[txmsg::check_back(topic = "payments.charged")]
async fn payment_status(
    payment: &PaymentCaptured,
    provider: State<Provider>,
) -> Result<CheckStatus, PaymentError> {
    Ok(match provider.state(&payment.payment_id) {
        Some(ProviderState::Captured) => CheckStatus::Commit,
        Some(ProviderState::Declined) => CheckStatus::Rollback,
        // The provider never saw it: the charge did not happen.
        None => CheckStatus::Rollback,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let path = std::env::temp_dir().join(format!("txmsg-payment-{}.db", uuid::Uuid::now_v7()));
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display())).await?;
    store.migrate().await?;
    let broker = MemoryBroker::new();
    let spec = SubscribeSpec {
        group: "ledger".into(),
        topic: TOPIC.into(),
        prefetch: 64,
    };
    let mut ledger = broker.subscribe(&spec).await?;
    let relay = Relay::new(store.clone(), broker.clone(), RelayConfig::default())?.start();
    let outbox = HalfOutbox::new(&store).with_relay(&relay);
    let config = CheckBackConfig::default()
        .with_interval(Duration::from_millis(200))
        .with_poll_interval(Duration::from_millis(50));
    let provider = Provider::default();
    let worker = CheckBackWorker::new(store.clone(), config)?
        .with_relay(&relay)
        .with_state(provider.clone())
        .start()?;

    println!("txmsg payment demo on SQLite + the in-process broker");
    let payments = [
        (1, 4_200, Crash::No),
        (2, 25_000, Crash::No),
        (3, 1_999, Crash::AfterCharge),
        (4, 800, Crash::BeforeCharge),
        (5, 3_141, Crash::No),
    ];
    for (order_id, amount_cents, crash) in payments {
        let payment = PaymentCaptured {
            payment_id: format!("pay-{order_id}"),
            order_id,
            amount_cents,
        };
        let call = charge_and_commit(&outbox, &payment, &provider, crash);
        match crash {
            Crash::No => match call.await {
                Ok(()) => println!("order {order_id}: payment captured, message committed"),
                Err(e) => println!("order {order_id}: {e}; message rolled back"),
            },
            _ => {
                // The process "dies" mid-call: the message stays prepared.
                let _ = tokio::time::timeout(Duration::from_millis(50), call).await;
                println!(
                    "order {order_id}: crashed {crash:?}; the message is left prepared for the check-back"
                );
            }
        }
    }

    // The ledger sees what was published; wait for the check-backs to settle.
    let mut published: BTreeMap<String, u32> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let stats = store.stats().await?;
        let wait = if stats.prepared == 0 {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        };
        match tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + wait),
            ledger.next(),
        )
        .await
        {
            Ok(Some(d)) => {
                if let Ok(e) = &d.message {
                    *published.entry(e.idempotency_key.clone()).or_default() += 1;
                }
                let _ = d.ack().await;
            }
            _ if stats.prepared == 0 || tokio::time::Instant::now() >= deadline => break,
            _ => {}
        }
    }
    worker.shutdown().await;
    relay.shutdown().await;
    let stats = store.stats().await?;
    store.pool().close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }

    let captured: BTreeSet<String> = provider
        .payments
        .lock()
        .map(|p| {
            p.iter()
                .filter(|(_, s)| **s == ProviderState::Captured)
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    println!();
    println!("captured by the provider  : {captured:?}");
    println!(
        "published payments.charged: {:?}",
        published.keys().collect::<Vec<_>>()
    );
    println!(
        "outbox                    : {} sent, {} prepared, {} dead",
        stats.sent, stats.prepared, stats.dead
    );
    let exactly: BTreeSet<String> = published.keys().cloned().collect();
    if exactly == captured && published.values().all(|n| *n == 1) && stats.prepared == 0 {
        println!("OK: a message was published for every captured payment, once, and for no other");
        Ok(())
    } else {
        Err("inconsistent: see above".into())
    }
}
