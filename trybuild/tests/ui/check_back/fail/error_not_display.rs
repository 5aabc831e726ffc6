use txmsg::check_back;
use txmsg::half::CheckStatus;

#[derive(serde::Deserialize)]
struct PaymentRequested {
    order: i64,
}

#[derive(Debug)]
struct CheckError;

#[check_back(topic = "payments.requested")]
async fn payment_state(payment: &PaymentRequested) -> Result<CheckStatus, CheckError> {
    let _ = payment.order;
    Ok(CheckStatus::Commit)
}

fn main() {}
