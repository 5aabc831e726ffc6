use txmsg::check_back;
use txmsg::half::CheckStatus;

#[derive(serde::Deserialize)]
struct PaymentRequested {
    order: i64,
}

// A check-back is per topic, not per consumer group.
#[check_back(topic = "payments.requested", group = "billing")]
async fn payment_state(payment: &PaymentRequested) -> Result<CheckStatus, txmsg::Error> {
    let _ = payment.order;
    Ok(CheckStatus::Commit)
}

#[check_back(topik = "payments.refunded")]
async fn refund_state(payment: &PaymentRequested) -> Result<CheckStatus, txmsg::Error> {
    let _ = payment.order;
    Ok(CheckStatus::Commit)
}

fn main() {}
