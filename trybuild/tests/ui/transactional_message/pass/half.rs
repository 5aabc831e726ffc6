//! Half producers: with a check-back of their payload, of the envelope, or
//! none (one registered elsewhere for the topic, found at run time).
use txmsg::half::CheckStatus;
use txmsg::half::HalfOutbox;
use txmsg::{Envelope, check_back, transactional_message};

#[derive(serde::Serialize, serde::Deserialize)]
struct PaymentRequested {
    order: i64,
    cents: i64,
}

#[check_back(topic = "payments.requested")]
async fn payment_state(payment: &PaymentRequested) -> Result<CheckStatus, txmsg::Error> {
    let _ = payment;
    Ok(CheckStatus::Unknown)
}

#[check_back(topic = "audit.logged")]
async fn audit_state(envelope: &Envelope) -> Result<CheckStatus, txmsg::Error> {
    let _ = envelope;
    Ok(CheckStatus::Commit)
}

// The payload first, then anything; `T` is free.
#[transactional_message(
    topic = "payments.requested",
    half,
    check_back = payment_state,
    key = payment.order,
    idempotency_key = format!("pay-{}-{attempt}", payment.order),
    check_after = "30s",
)]
async fn charge(
    payment: &PaymentRequested,
    attempt: u32,
    card: String,
) -> Result<(String, u32), txmsg::Error> {
    let _ = payment.cents;
    Ok((card, attempt))
}

// Any payload type fits an envelope check-back.
#[transactional_message(topic = "audit.logged", half, check_back = audit_state)]
async fn log_line(line: &str) -> Result<usize, txmsg::Error> {
    Ok(line.len())
}

#[transactional_message(topic = "audit.logged", half, check_back = audit_state)]
async fn log_number(n: &u64) -> Result<(), txmsg::Error> {
    let _ = n;
    Ok(())
}

// No `check_back`: one must be registered for the topic, somewhere.
#[transactional_message(topic = "shipments.booked", half)]
async fn book(order: &i64, _: u8, (a, b): (u8, u8)) -> Result<u8, txmsg::Error> {
    let _ = order;
    Ok(a + b)
}

async fn run(outbox: &HalfOutbox<sqlx::Sqlite>) -> txmsg::Result<()> {
    let payment = PaymentRequested {
        order: 1,
        cents: 4200,
    };
    let (card, attempt) = charge_and_commit(outbox, &payment, 1, "4242".into()).await?;
    assert_eq!((card.as_str(), attempt), ("4242", 1));
    assert_eq!(log_line_and_commit(outbox, "hello").await?, 5);
    log_number_and_commit(outbox, &7).await?;
    assert_eq!(book_and_commit(outbox, &1, 0, (1, 2)).await?, 3);
    // The function itself is unchanged.
    assert_eq!(charge(&payment, 2, "x".into()).await?.1, 2);
    Ok(())
}

// The generated futures can run on a multi-threaded runtime.
fn assert_send<T: Send>(_: &T) {}

#[allow(dead_code)]
fn futures_are_send(outbox: &HalfOutbox<sqlx::Sqlite>, payment: &PaymentRequested) {
    assert_send(&charge_and_commit(outbox, payment, 1, String::new()));
    assert_send(&book_and_commit(outbox, &1, 0, (1, 2)));
    assert_send(&run(outbox));
}

fn main() {
    let _ = run;
}
