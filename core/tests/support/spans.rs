//! A tracing layer that notes every span opened while a test runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A span's name and its fields, as text.
pub(crate) type SpanFields = (String, HashMap<String, String>);

/// Spans opened while the test runs, in the order opened, with their ids.
/// Install it for the test's thread with [`SpanLog::install`].
#[derive(Debug, Clone, Default)]
pub(crate) struct SpanLog(Arc<Mutex<Vec<(tracing::span::Id, SpanFields)>>>);

impl SpanLog {
    /// A new log, the default subscriber of this thread until the guard is
    /// dropped.
    pub(crate) fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        use tracing_subscriber::layer::SubscriberExt;
        let log = SpanLog::default();
        let guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(log.clone()));
        (log, guard)
    }

    /// The fields of the first span named `name`.
    #[allow(dead_code)] // Not every test file asks by name.
    pub(crate) fn first(&self, name: &str) -> Option<HashMap<String, String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(_, (n, _))| n == name)
            .map(|(_, (_, fields))| fields.clone())
    }

    /// The name and fields of the span with `id`.
    #[allow(dead_code)] // Not every test file asks by id.
    pub(crate) fn by_id(&self, id: &tracing::span::Id) -> Option<SpanFields> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, span)| span.clone())
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanLog {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Fields(HashMap<String, String>);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().to_owned(), format!("{value:?}"));
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.insert(field.name().to_owned(), value.to_owned());
            }
        }
        let mut fields = Fields(HashMap::new());
        attrs.record(&mut fields);
        if let Ok(mut log) = self.0.lock() {
            log.push((id.clone(), (attrs.metadata().name().to_owned(), fields.0)));
        }
    }
}
