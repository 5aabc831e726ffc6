// The check-back worker needs a store that keeps half messages.
use txmsg::half::{CheckBackConfig, CheckBackWorker};

#[derive(Debug, Clone)]
struct NotAStore;

fn main() {
    let _ = CheckBackWorker::new(NotAStore, CheckBackConfig::default());
}
