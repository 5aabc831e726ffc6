use txmsg::half::CheckStatus;
use txmsg::{State, check_back};

#[derive(serde::Deserialize)]
struct PaymentRequested {
    order: i64,
}

#[derive(Clone)]
struct Provider;

#[check_back(topic = "payments.requested")]
async fn payment_state(
    _provider: State<Provider>,
    payment: &PaymentRequested,
) -> Result<CheckStatus, txmsg::Error> {
    let _ = payment.order;
    Ok(CheckStatus::Unknown)
}

fn main() {}
