use txmsg::check_back;
use txmsg::half::CheckStatus;

#[derive(serde::Deserialize)]
struct PaymentRequested {
    order: i64,
}

#[check_back(topic = "payments.requested")]
async fn payment_state(payment: &PaymentRequested) -> CheckStatus {
    let _ = payment.order;
    CheckStatus::Commit
}

fn main() {}
