use txmsg::check_back;
use txmsg::half::CheckStatus;

#[derive(serde::Deserialize)]
struct PaymentRequested {
    order: i64,
}

#[check_back(topic = "payments.requested")]
async fn payment_state(
    payment: &PaymentRequested,
    pool: &sqlx::SqlitePool,
) -> Result<CheckStatus, txmsg::Error> {
    let _ = (payment.order, pool);
    Ok(CheckStatus::Commit)
}

fn main() {}
