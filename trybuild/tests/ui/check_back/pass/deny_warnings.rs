//! Generated code raises no warning, even with strict lints.
#![deny(
    warnings,
    missing_docs,
    rust_2018_idioms,
    unused_qualifications,
    unused_lifetimes
)]
#![deny(unreachable_pub, unused_results, clippy::all)]

use txmsg::half::CheckStatus;
use txmsg::half::HalfOutbox;
use txmsg::{Envelope, check_back, transactional_message};

/// The payload.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PaymentRequested {
    order: i64,
}

/// Public and documented.
#[check_back(topic = "payments.requested")]
pub async fn payment_state(payment: &PaymentRequested) -> Result<CheckStatus, txmsg::Error> {
    if payment.order < 0 {
        return Err(txmsg::Error::Unsupported("negative ids"));
    }
    Ok(CheckStatus::Commit)
}

/// Private, of the envelope.
#[check_back(topic = "payments.refunded")]
async fn refund_state(envelope: &Envelope) -> Result<CheckStatus, txmsg::Error> {
    let _ = envelope;
    Ok(CheckStatus::Unknown)
}

/// Public, with every argument; its `_and_commit` is never called.
#[transactional_message(
    topic = "payments.requested",
    half,
    check_back = payment_state,
    check_after = "10s",
    key = payment.order,
    idempotency_key = format!("pay-{}", payment.order),
    ttl = "1h",
)]
pub async fn charge<'a>(
    payment: &'a PaymentRequested,
    card: &'a str,
) -> Result<&'a str, txmsg::Error> {
    let _ = payment;
    Ok(card)
}

/// Private, with a body that never returns normally.
#[transactional_message(topic = "payments.refunded", half, check_back = refund_state)]
async fn refund(order: &i64) -> Result<(), txmsg::Error> {
    Err(txmsg::Error::Unsupported(if *order < 0 {
        "negative"
    } else {
        "never"
    }))
}

async fn run(outbox: &HalfOutbox<sqlx::Sqlite>) -> txmsg::Result<()> {
    refund_and_commit(outbox, &1).await
}

fn main() {
    let _ = run;
}
