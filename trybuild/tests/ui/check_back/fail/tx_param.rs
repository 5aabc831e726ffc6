use txmsg::half::CheckStatus;
use txmsg::{Tx, check_back};

#[check_back(topic = "payments.requested")]
async fn payment_state(tx: &mut Tx<'_, sqlx::Sqlite>) -> Result<CheckStatus, txmsg::Error> {
    let _ = tx;
    Ok(CheckStatus::Commit)
}

fn main() {}
