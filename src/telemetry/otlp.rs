//! OTLP export of rolegate's own spans (`--otlp-endpoint`): a request whose `traceparent` is
//! sampled gets a `decision` span, a child of the caller's span in the caller's trace, sent over
//! OTLP/gRPC to a collector in batches.
//!
//! Only those requests pay anything: without a `traceparent`, or with an unsampled one, no span
//! is made (the front ends only parse the header). The spans go through `tracing` with the
//! target [`TARGET`], which only the OpenTelemetry layer listens to, so the logs stay as they
//! are; the sampler drops any span that has no sampled parent, so nothing else is exported.

use opentelemetry::{
    Context,
    trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
        TracerProvider as _,
    },
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    trace::{Sampler, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{Layer, Registry, filter::Targets};

use super::{FrontEnd, TraceContext};

/// The `tracing` target of the spans that are exported.
pub(crate) const TARGET: &str = "rolegate::otlp";

/// Why span export cannot start.
#[derive(Debug, thiserror::Error)]
#[error("the OTLP exporter cannot be set up (--otlp-endpoint): {0}")]
pub struct OtlpError(String);

/// `--otlp-endpoint`: the URL of an OTLP/gRPC collector, `http://HOST:PORT` (or `https://`),
/// with no path beyond `/`, no query and no credentials.
pub fn parse_endpoint(text: &str) -> Result<String, String> {
    const EXPECTED: &str = "an http:// or https:// URL of an OTLP/gRPC collector, such as \
                            http://localhost:4317";
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{e}: expected {EXPECTED}"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(format!("expected {EXPECTED}"));
    }
    if authority.contains('@') {
        return Err(
            "credentials do not belong in the URL: pass them as headers \
                    (OTEL_EXPORTER_OTLP_HEADERS)"
                .into(),
        );
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "an OTLP/gRPC endpoint has no path or query: expected {EXPECTED}"
        ));
    }
    Ok(text.to_owned())
}

/// The running exporter: flushed and stopped by [`OtlpExport::shutdown`].
pub struct OtlpExport {
    provider: SdkTracerProvider,
}

impl OtlpExport {
    /// Sets up the exporter to `endpoint` (checked by [`parse_endpoint`]). The collector is
    /// connected to lazily: while it cannot be reached, batches fail (logged as errors) and
    /// are dropped, and the next batch tries again. Must be called within a tokio runtime, which carries
    /// the gRPC connection.
    pub fn start(endpoint: &str) -> Result<Self, OtlpError> {
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| OtlpError(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            // A span is recorded only under a sampled remote parent; the front ends make none
            // otherwise, and this keeps it so.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .with_resource(resource())
            .build();
        Ok(OtlpExport { provider })
    }

    /// The `tracing` layer that turns the spans of [`TARGET`] into OpenTelemetry spans.
    pub fn layer(&self) -> impl Layer<Registry> + Send + Sync + 'static {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("rolegate"))
            .with_filter(Targets::new().with_target(TARGET, tracing::Level::DEBUG))
    }

    /// Exports the spans still queued (waiting at most 5 s for the collector) and stops.
    pub fn shutdown(self) {
        match self.provider.shutdown() {
            Ok(()) => tracing::info!("OTLP spans flushed"),
            Err(err) => tracing::warn!(error = %err, "OTLP spans could not all be flushed"),
        }
    }
}

/// The process's resource: `service.name` is `rolegate` unless `OTEL_SERVICE_NAME` names it
/// (read, with `OTEL_RESOURCE_ATTRIBUTES`, by the SDK's own detectors).
fn resource() -> Resource {
    let builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        builder.build()
    } else {
        builder.with_service_name("rolegate").build()
    }
}

/// The span a traced decision runs in, entered. Exported (a child of the caller's span) when
/// `export` is on and the caller sampled the trace; otherwise the debug-level span the logs show
/// with `RUST_LOG=rolegate=debug`, free unless that is enabled.
pub(crate) fn decision_span(
    front: FrontEnd,
    trace: TraceContext,
    export: bool,
) -> tracing::span::EnteredSpan {
    if !(export && trace.sampled()) {
        return tracing::debug_span!(
            "decision",
            front_end = front.as_str(),
            trace_id = trace.trace_id(),
            span_id = trace.span_id()
        )
        .entered();
    }
    let span = tracing::debug_span!(
        target: TARGET,
        "decision",
        otel.name = span_name(front),
        otel.kind = "server",
        rolegate.front_end = front.as_str(),
        rolegate.allowed = tracing::field::Empty,
        rolegate.reason = tracing::field::Empty,
    );
    if let Some(parent) = remote_parent(trace) {
        // Fails only when no OpenTelemetry layer is installed (rolegate embedded as a library
        // without one): the span is then not exported at all.
        let _ = span.set_parent(parent);
    }
    span.entered()
}

/// Records a decision's outcome on its span (a no-op on a span that is not exported).
pub(crate) fn record_outcome(span: &tracing::Span, allowed: bool, reason: &str) {
    span.record("rolegate.allowed", allowed);
    span.record("rolegate.reason", reason);
}

/// The span's name: the RPC as OpenTelemetry's conventions name it (`service/method`).
fn span_name(front: FrontEnd) -> &'static str {
    match front {
        FrontEnd::Check => "rolegate.v1.Authorizer/Check",
        FrontEnd::CheckBatch => "rolegate.v1.Authorizer/CheckBatch",
        FrontEnd::ExtAuthz => "envoy.service.auth.v3.Authorization/Check",
        FrontEnd::HttpAuth => "rolegate.http_auth",
    }
}

/// The caller's span as an OpenTelemetry parent context.
fn remote_parent(trace: TraceContext) -> Option<Context> {
    let trace_id = TraceId::from_hex(trace.trace_id()).ok()?;
    let span_id = SpanId::from_hex(trace.span_id()).ok()?;
    let parent = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    Some(Context::new().with_remote_span_context(parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        for good in [
            "http://localhost:4317",
            "http://127.0.0.1:4317/",
            "https://collector.example:4317",
            "http://[::1]:4317",
        ] {
            assert_eq!(parse_endpoint(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "localhost:4317",
            "not a url",
            "ftp://localhost:4317",
            "unix:/run/otel.sock",
            "http://",
            "http://localhost:4317/v1/traces",
            "http://localhost:4317?x=1",
            "http://user:secret@localhost:4317",
        ] {
            let err = parse_endpoint(bad).expect_err(bad);
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn the_caller_is_the_parent() {
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let cx = remote_parent(t).unwrap();
        let parent = cx.span().span_context().clone();
        assert_eq!(
            parent.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.is_remote() && parent.is_sampled());
    }
}
