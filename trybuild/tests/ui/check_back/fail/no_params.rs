use txmsg::check_back;
use txmsg::half::CheckStatus;

#[check_back(topic = "payments.requested")]
async fn payment_state() -> Result<CheckStatus, txmsg::Error> {
    Ok(CheckStatus::Unknown)
}

fn main() {}
