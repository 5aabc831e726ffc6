use std::sync::Arc;

use txmsg::half::CheckStatus;
use txmsg::{Envelope, State, check_back};

#[derive(serde::Deserialize)]
struct PaymentRequested {
    order: i64,
}

#[derive(Clone)]
struct Provider {
    url: Arc<str>,
}

#[check_back(topic = "payments.requested")]
async fn payment_state(
    payment: &PaymentRequested,
    provider: State<Provider>,
) -> Result<CheckStatus, txmsg::Error> {
    let _ = (payment.order, &provider.url);
    Ok(CheckStatus::Unknown)
}

#[check_back(topic = "refunds.requested")]
async fn refund_state(
    envelope: &Envelope,
    State(provider): State<Provider>,
) -> Result<CheckStatus, txmsg::Error> {
    let _ = (&envelope.id, provider.url);
    Ok(CheckStatus::Unknown)
}

fn main() {
    let all = txmsg::half::registered_check_backs();
    assert!(all.iter().all(|c| c.states.len() == 1));
}
