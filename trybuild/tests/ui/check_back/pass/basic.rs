//! Check-backs of a payload and of the envelope, and half producers that
//! name them, in the same module or another one.
use txmsg::half::CheckStatus;
use txmsg::half::HalfOutbox;
use txmsg::{Envelope, check_back, transactional_message};

#[derive(serde::Serialize, serde::Deserialize)]
struct PaymentRequested {
    order: i64,
    cents: i64,
}

#[derive(Debug, thiserror::Error)]
enum PayError {
    #[error(transparent)]
    Txmsg(#[from] txmsg::Error),
    #[error("card declined")]
    Declined,
}

mod checks {
    use super::*;

    /// Whether the payment of an order went through.
    #[check_back(topic = "payments.requested")]
    pub(crate) async fn payment_state(payment: &PaymentRequested) -> Result<CheckStatus, PayError> {
        Ok(if payment.cents > 0 {
            CheckStatus::Commit
        } else {
            CheckStatus::Rollback
        })
    }

    // An envelope check-back fits every payload.
    #[check_back(topic = "payments.refunded")]
    pub(crate) async fn refund_state(envelope: &Envelope) -> Result<CheckStatus, String> {
        if envelope.payload.is_empty() {
            return Err("empty payload".into());
        }
        Ok(CheckStatus::Unknown)
    }
}

#[transactional_message(
    topic = "payments.requested",
    half,
    check_back = checks::payment_state,
    key = payment.order,
)]
async fn charge(payment: &PaymentRequested, card: String) -> Result<String, PayError> {
    if card.is_empty() {
        return Err(PayError::Declined);
    }
    Ok(format!("charged {} to {card}", payment.cents))
}

#[transactional_message(topic = "payments.refunded", half, check_back = checks::refund_state)]
async fn refund(order: &i64) -> Result<(), PayError> {
    let _ = order;
    Ok(())
}

// The check-back is still a plain function.
async fn direct() -> Result<CheckStatus, PayError> {
    let payment = PaymentRequested { order: 1, cents: 0 };
    checks::payment_state(&payment).await
}

async fn run(outbox: &HalfOutbox<sqlx::Sqlite>) -> Result<(), PayError> {
    let payment = PaymentRequested {
        order: 1,
        cents: 4200,
    };
    let receipt: String = charge_and_commit(outbox, &payment, "4242".into()).await?;
    let _ = receipt;
    refund_and_commit(outbox, &1).await?;
    Ok(())
}

fn main() {
    let _ = (run, direct);
}
