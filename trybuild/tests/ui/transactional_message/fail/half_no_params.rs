use txmsg::transactional_message;

#[derive(serde::Serialize)]
struct PaymentRequested {
    order: i64,
}

// The payload is returned, as for a producer of the outbox.
#[transactional_message(topic = "payments.requested", half)]
async fn charge() -> Result<PaymentRequested, txmsg::Error> {
    Ok(PaymentRequested { order: 1 })
}

fn main() {}
