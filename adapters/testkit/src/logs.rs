//! Everything a test process logs, at every level, captured in memory.
//!
//! [`capture`] installs a global `tracing` subscriber at the `TRACE` level
//! (the first call in a process; later calls share it) that writes every
//! event, with its fields and the fields of its spans, into a buffer that
//! [`Captured::text`] reads. Cases such as
//! [`broker::no_password_in_logs`](crate::broker::no_password_in_logs) use it
//! to check what a driver or adapter shows in its logs.
//!
//! Run such tests one per process (as `cargo nextest` does), or accept that
//! the buffer also holds what other tests of the process logged.
//!
//! # Examples
//!
//! ```
//! let logs = txmsg_testkit::logs::capture();
//! tracing::debug!(server = "nats://127.0.0.1:4222", "connecting");
//! assert!(logs.text().contains("connecting"));
//! ```
//!
//! # Panics
//!
//! [`capture`] panics if another global subscriber was installed first.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tracing_subscriber::fmt::MakeWriter;

/// The logs of this process since [`capture`] was first called.
#[derive(Debug, Clone)]
pub struct Captured {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    /// Everything logged so far, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        let buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

/// Where the subscriber writes: the shared buffer.
#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Captures every log event of this process from now on, at every level.
///
/// # Panics
///
/// If a global `tracing` subscriber other than this one is installed.
pub fn capture() -> Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(Sink(Arc::clone(&buffer)))
                .finish();
            if let Err(e) = tracing::subscriber::set_global_default(subscriber) {
                panic!("cannot capture the logs: {e}");
            }
            Captured { buffer }
        })
        .clone()
}
