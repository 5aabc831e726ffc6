use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct PaymentRequested {
    order: i64,
}

// Written as a producer of the outbox, marked `half`.
#[transactional_message(topic = "payments.requested", half)]
async fn charge(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    payment: &PaymentRequested,
) -> Result<(), txmsg::Error> {
    let _ = (tx, payment.order);
    Ok(())
}

fn main() {}
