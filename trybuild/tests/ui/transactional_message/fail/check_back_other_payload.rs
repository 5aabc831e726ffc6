use txmsg::half::CheckStatus;
use txmsg::{check_back, transactional_message};

#[derive(serde::Serialize, serde::Deserialize)]
struct PaymentRequested {
    order: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RefundRequested {
    order: i64,
}

mod checks {
    use super::*;

    #[check_back(topic = "payments.refunded")]
    pub(crate) async fn refund_state(
        refund: &RefundRequested,
    ) -> Result<CheckStatus, txmsg::Error> {
        let _ = refund.order;
        Ok(CheckStatus::Unknown)
    }
}

// Names the check-back of refunds, which takes another payload.
#[transactional_message(topic = "payments.requested", half, check_back = checks::refund_state)]
async fn charge(payment: &PaymentRequested) -> Result<(), txmsg::Error> {
    let _ = payment.order;
    Ok(())
}

fn main() {}
