//! W3C trace context (`traceparent` and `tracestate`) between the span that
//! writes a message and the span of the handler that applies it.
//!
//! With the `opentelemetry` feature and a `tracing-opentelemetry` layer
//! installed, the writer's span context is captured when the row is written
//! (not when it is published) and the handler's span is made its child.
//! Without them, a `traceparent` header set by hand is still carried and
//! recorded on the handler's span.

/// The `traceparent` of the current span, and its `tracestate` when that is
/// not empty, if the span has a valid span context.
pub(crate) fn current_context() -> Option<(String, Option<String>)> {
    #[cfg(feature = "opentelemetry")]
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            let traceparent = format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            );
            let state = sc.trace_state().header();
            return Some((traceparent, (!state.is_empty()).then_some(state)));
        }
    }
    None
}

/// Makes `span` a child of the remote span described by `traceparent` and
/// `tracestate`. Malformed values are ignored (a malformed `tracestate`
/// alone is dropped).
pub(crate) fn set_parent(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    #[cfg(feature = "opentelemetry")]
    if let Some(sc) = parse(traceparent, tracestate) {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let _ = span.set_parent(cx);
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, traceparent, tracestate);
}

/// Parses a version-00 `traceparent`. Written by hand rather than with the
/// SDK's propagator: the format is four fixed fields, and the SDK is a heavy
/// dependency for a library.
#[cfg(feature = "opentelemetry")]
fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = tracestate
        .and_then(|t| t.parse::<TraceState>().ok())
        .unwrap_or_default();
    let sc = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
    sc.is_valid().then_some(sc)
}

#[cfg(all(test, feature = "opentelemetry"))]
mod tests {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    use super::{current_context, parse, set_parent};

    fn with_otel<R>(f: impl FnOnce() -> R) -> R {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn writer_context_is_captured_and_handler_becomes_its_child() {
        with_otel(|| {
            let writer = tracing::info_span!("place_order");
            let (tp, state) = writer
                .in_scope(current_context)
                .expect("a traceparent inside an OTel span");
            assert_eq!(state, None, "no vendor state was set");
            let writer_trace = writer.context().span().span_context().trace_id();
            assert!(tp.contains(&writer_trace.to_string()), "{tp}");

            let handler = tracing::info_span!("txmsg.handle");
            set_parent(&handler, &tp, Some("vendor=abc,other=1"));
            let handler_trace = handler.context().span().span_context().trace_id();
            assert_eq!(
                handler_trace, writer_trace,
                "the handler's span continues the writer's trace"
            );
        });
    }

    #[test]
    fn tracestate_travels_with_the_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse(tp, Some("vendor=abc,other=1")).unwrap();
        assert_eq!(sc.trace_state().header(), "vendor=abc,other=1");
        assert_eq!(sc.trace_state().get("vendor"), Some("abc"));
        // A malformed state is dropped, the parent kept.
        let sc = parse(tp, Some("not a state")).unwrap();
        assert_eq!(sc.trace_state().header(), "");
        // And a writer's state is captured with its traceparent.
        with_otel(|| {
            let remote = tracing::info_span!("remote");
            set_parent(&remote, tp, Some("vendor=abc"));
            let (_, state) = remote.in_scope(current_context).unwrap();
            assert_eq!(state.as_deref(), Some("vendor=abc"));
        });
    }

    #[test]
    fn no_traceparent_outside_a_span() {
        with_otel(|| assert!(current_context().is_none()));
    }

    #[test]
    fn parses_valid_and_refuses_malformed() {
        let sc = parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            None,
        )
        .unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-é",
        ] {
            assert!(parse(bad, None).is_none(), "{bad:?}");
        }
    }
}
