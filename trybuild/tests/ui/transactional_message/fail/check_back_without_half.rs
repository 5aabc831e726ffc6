use txmsg::half::CheckStatus;
use txmsg::{Tx, check_back, transactional_message};

#[derive(serde::Serialize, serde::Deserialize)]
struct PaymentRequested {
    order: i64,
}

#[check_back(topic = "payments.requested")]
async fn payment_state(payment: &PaymentRequested) -> Result<CheckStatus, txmsg::Error> {
    let _ = payment.order;
    Ok(CheckStatus::Commit)
}

#[transactional_message(topic = "payments.requested", check_back = payment_state)]
async fn charge(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: i64,
) -> Result<PaymentRequested, txmsg::Error> {
    let _ = tx;
    Ok(PaymentRequested { order })
}

fn main() {}
