use txmsg::check_back;

#[derive(serde::Deserialize)]
struct PaymentRequested {
    order: i64,
}

// Answers with a `bool` rather than a `CheckStatus`.
#[check_back(topic = "payments.requested")]
async fn payment_state(payment: &PaymentRequested) -> Result<bool, txmsg::Error> {
    Ok(payment.order > 0)
}

fn main() {}
