use std::sync::Arc;

use txmsg::{Envelope, State, Tx, message_handler};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    id: i64,
}

#[derive(Clone)]
struct AppState {
    currency: Arc<str>,
}

#[derive(Clone, Copy)]
struct Limits {
    max_cents: i64,
}

// States after the message, before and after the envelope.
#[message_handler(topic = "orders.placed", group = "billing")]
async fn bill(
    tx: &mut Tx<'_, sqlx::Sqlite>,
    order: OrderPlaced,
    app: State<AppState>,
    envelope: &Envelope,
    State(limits): txmsg::State<Limits>,
) -> Result<(), txmsg::Error> {
    let _ = (tx, order.id, &app.currency, envelope, limits.max_cents);
    Ok(())
}

// A state without the envelope.
#[message_handler(topic = "orders.cancelled", group = "billing")]
async fn cancel(
    _tx: &mut Tx<'_, sqlx::Sqlite>,
    _id: i64,
    _app: State<AppState>,
) -> Result<(), txmsg::Error> {
    Ok(())
}

fn main() {
    let handlers = txmsg::consumer::registered_handlers();
    let bill = handlers.iter().find(|h| h.name.ends_with("::bill")).unwrap();
    let names: Vec<&str> = bill.states.iter().map(|s| (s.name)()).collect();
    assert_eq!(names.len(), 2);
    assert!(names[0].ends_with("::AppState") && names[1].ends_with("::Limits"), "{names:?}");
}
