use txmsg::transactional_message;

#[derive(serde::Serialize)]
struct PaymentRequested {
    order: i64,
}

#[transactional_message(topic = "payments.requested", half, check_after = "6 seconds")]
async fn charge(payment: &PaymentRequested) -> Result<(), txmsg::Error> {
    let _ = payment.order;
    Ok(())
}

fn main() {}
