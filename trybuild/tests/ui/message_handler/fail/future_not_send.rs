use std::rc::Rc;

use txmsg::{Tx, message_handler};

// Consumers run handlers on a multi-threaded runtime: an `Rc` held across
// an `.await` makes the handler's future not `Send`.
#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(tx: &mut Tx<'_, sqlx::Sqlite>, id: i64) -> Result<(), txmsg::Error> {
    let seen = Rc::new(id);
    sqlx::query("SELECT ?").bind(*seen).execute(&mut **tx).await?;
    drop(seen);
    Ok(())
}

fn main() {}
