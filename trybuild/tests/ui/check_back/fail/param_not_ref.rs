use txmsg::check_back;
use txmsg::half::CheckStatus;

#[derive(serde::Deserialize)]
struct PaymentRequested {
    order: i64,
}

// The check-back only looks at the message: it takes it by `&`.
#[check_back(topic = "payments.requested")]
async fn payment_state(payment: PaymentRequested) -> Result<CheckStatus, txmsg::Error> {
    let _ = payment.order;
    Ok(CheckStatus::Commit)
}

fn main() {}
