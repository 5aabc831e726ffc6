//! Names in the user's scope that the generated code must not pick up, and
//! `crate = "..."` for a renamed dependency.
#![allow(dead_code)]

extern crate txmsg as messaging;

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Txmsg(#[from] messaging::Error),
    #[error("declined")]
    Declined,
}

// A crate-wide alias, as many applications have.
type Result<T, E = AppError> = std::result::Result<T, E>;

// Look-alikes of what the expansion uses.
struct Error;
struct Message;
struct Outbox;
struct HalfOutbox;
struct Prepared;
struct Envelope;
struct Duration;
struct String;
struct Box;
struct Sized;
struct Database;
trait From {}
mod serde {}
mod core {}
mod inventory {}

// A module of the user's named `txmsg`.
mod txmsg {
    pub mod __private {}
}

#[derive(::serde::Serialize, ::serde::Deserialize)]
struct PaymentRequested {
    order: i64,
}

#[messaging::check_back(topic = "payments.requested", crate = "messaging")]
async fn payment_state(
    payment: &PaymentRequested,
) -> Result<messaging::half::CheckStatus, AppError> {
    if payment.order < 0 {
        return Err(AppError::Declined);
    }
    Ok(messaging::half::CheckStatus::Commit)
}

#[messaging::check_back(topic = "payments.refunded", crate = "messaging")]
async fn refund_state(
    envelope: &messaging::Envelope,
) -> Result<messaging::half::CheckStatus, std::string::String> {
    let _ = envelope;
    Ok(messaging::half::CheckStatus::Unknown)
}

#[messaging::transactional_message(
    topic = "payments.requested",
    half,
    check_back = payment_state,
    key = payment.order,
    crate = "messaging",
)]
async fn charge(payment: &PaymentRequested) -> Result<i64, AppError> {
    Ok(payment.order)
}

#[messaging::transactional_message(
    topic = "payments.refunded",
    half,
    check_back = refund_state,
    ttl = "1d",
    check_after = "1m",
    crate = "messaging"
)]
async fn refund(order: &i64) -> Result<(), AppError> {
    let _ = order;
    Ok(())
}

async fn run(outbox: &messaging::half::HalfOutbox<sqlx::Sqlite>) -> Result<()> {
    charge_and_commit(outbox, &PaymentRequested { order: 1 }).await?;
    refund_and_commit(outbox, &1).await
}

fn main() {
    let _ = run;
}
