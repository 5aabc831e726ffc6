// A half-message producer's outbox needs a store that keeps half messages.
use txmsg::half::HalfOutbox;

#[derive(Debug, Clone)]
struct NotAStore;

fn main() {
    let _ = HalfOutbox::<sqlx::Sqlite>::new(&NotAStore);
}
