use txmsg::{Envelope, Tx, message_handler};

// No message.
#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(tx: &mut Tx<'_, sqlx::Sqlite>) -> Result<(), txmsg::Error> {
    let _ = tx;
    Ok(())
}

// The envelope but no message.
#[message_handler(topic = "orders.cancelled", group = "billing")]
async fn refund(tx: &mut Tx<'_, sqlx::Sqlite>, envelope: &Envelope) -> Result<(), txmsg::Error> {
    let _ = (tx, envelope);
    Ok(())
}

fn main() {}
