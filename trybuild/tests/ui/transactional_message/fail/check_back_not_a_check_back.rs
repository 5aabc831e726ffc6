use txmsg::half::CheckStatus;
use txmsg::transactional_message;

#[derive(serde::Serialize)]
struct PaymentRequested {
    order: i64,
}

// A plain function, without `#[check_back]`.
async fn payment_state(payment: &PaymentRequested) -> Result<CheckStatus, txmsg::Error> {
    let _ = payment.order;
    Ok(CheckStatus::Commit)
}

#[transactional_message(topic = "payments.requested", half, check_back = payment_state)]
async fn charge(payment: &PaymentRequested) -> Result<(), txmsg::Error> {
    let _ = payment.order;
    Ok(())
}

fn main() {}
