//! Registrations no single macro call can see: two check-backs for one
//! topic, two handlers for one (topic, group). Both are refused when the
//! worker or consumer starts, naming both functions. A test binary of its
//! own, since registrations are global to a program.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use txmsg::Tx;
use txmsg::consumer::{Consumer, ConsumerConfig};
use txmsg::half::{CheckBackConfig, CheckBackWorker, CheckStatus};
use txmsg_core::{Error, Store};
use txmsg_memory::MemoryBroker;
use txmsg_sqlite::SqliteStore;

#[derive(Debug, serde::Deserialize)]
struct Payment {
    _id: u32,
}

#[txmsg::check_back(topic = "payments.charged")]
async fn first_check(_p: &Payment) -> Result<CheckStatus, std::convert::Infallible> {
    Ok(CheckStatus::Unknown)
}

#[txmsg::check_back(topic = "payments.charged")]
async fn second_check(_p: &Payment) -> Result<CheckStatus, std::convert::Infallible> {
    Ok(CheckStatus::Unknown)
}

#[txmsg::message_handler(topic = "orders.placed", group = "billing")]
async fn bill(_tx: &mut Tx<'_, sqlx::Sqlite>, _p: Payment) -> Result<(), std::convert::Infallible> {
    Ok(())
}

#[txmsg::message_handler(topic = "orders.placed", group = "billing")]
async fn bill_again(
    _tx: &mut Tx<'_, sqlx::Sqlite>,
    _p: Payment,
) -> Result<(), std::convert::Infallible> {
    Ok(())
}

async fn store() -> SqliteStore {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test]
async fn two_check_backs_for_one_topic_are_refused_naming_both() {
    let err = CheckBackWorker::new(store().await, CheckBackConfig::default())
        .unwrap()
        .start()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                field: "check_back",
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("first_check") && text.contains("second_check"),
        "{text}"
    );
}

#[tokio::test]
async fn two_handlers_for_one_topic_and_group_are_refused_naming_both() {
    let consumer = Consumer::new(
        store().await,
        MemoryBroker::new(),
        ConsumerConfig::new("billing"),
    )
    .unwrap();
    let err = consumer.start().await.unwrap_err();
    assert!(matches!(err, Error::Config { field: "group", .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("::bill`") && text.contains("bill_again"),
        "{text}"
    );
}
