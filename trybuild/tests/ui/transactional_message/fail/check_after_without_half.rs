use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct PaymentRequested {
    order: i64,
}

#[transactional_message(topic = "payments.requested", check_after = "10s")]
async fn charge(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: i64,
) -> Result<PaymentRequested, txmsg::Error> {
    let _ = tx;
    Ok(PaymentRequested { order })
}

fn main() {}
