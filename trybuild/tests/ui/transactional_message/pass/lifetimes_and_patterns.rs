//! Lifetimes, patterns, `impl Trait` and awkward names in the signature.
#![deny(unused_lifetimes, unused_mut)]
use std::fmt::Display;

use txmsg::{Tx, transactional_message};

#[derive(serde::Serialize)]
struct Note<'a> {
    order: i64,
    text: &'a str,
}

// Named lifetimes, in the payload too; `'b` is used by the transaction only,
// so `note_and_commit` does without it.
#[transactional_message(topic = "orders.noted", key = order)]
pub(crate) async fn note<'a, 'b>(
    tx: &'b mut Tx<'_, sqlx::Sqlite>,
    order: i64,
    text: &'a str,
) -> Result<Note<'a>, txmsg::Error>
where
    'a: 'b,
{
    let _ = tx;
    Ok(Note { order, text })
}

// Patterns, `mut`, `impl Trait`, and a parameter named like the generated one.
#[transactional_message(topic = "orders.tagged", key = tag)]
async fn tag(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    (order, _): (i64, i64),
    _: (),
    mut count: u32,
    tag: impl Display + Send,
    outbox: &str,
) -> Result<String, txmsg::Error> {
    count += 1;
    let _ = tx;
    Ok(format!("{order}/{count}/{tag}/{outbox}"))
}

// A raw identifier as the name.
#[transactional_message(topic = "orders.matched")]
async fn r#match(tx: &mut Tx<'_, sqlx::Sqlite>) -> Result<(), txmsg::Error> {
    let _ = tx;
    Ok(())
}

async fn run(outbox: &txmsg::Outbox<sqlx::Sqlite>) -> txmsg::Result<()> {
    let text = String::from("leave at the door");
    let noted = note_and_commit(outbox, 1, &text).await?;
    assert_eq!(noted.text, text);
    tag_and_commit(outbox, (1, 2), (), 0, "vip", "main").await?;
    match_and_commit(outbox).await?;
    Ok(())
}

fn main() {
    let _ = run;
}
