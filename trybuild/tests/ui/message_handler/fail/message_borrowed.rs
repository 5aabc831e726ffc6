use txmsg::{Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[derive(serde::Deserialize)]
struct Note<'a> {
    text: &'a str,
}

// The message is delivered, decoded and handed over: it is owned.
#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(tx: &mut Tx<'_, sqlx::Sqlite>, order: &OrderPlaced) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id);
    Ok(())
}

#[message_handler(topic = "orders.noted", group = "billing")]
async fn note<'a>(tx: &mut Tx<'_, sqlx::Sqlite>, note: Note<'a>) -> Result<(), txmsg::Error> {
    let _ = (tx, note.text);
    Ok(())
}

fn main() {}
