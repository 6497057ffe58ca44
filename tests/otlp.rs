//! OTLP span export (`serve --otlp-endpoint`): the real binary sends its spans to a real
//! OTLP/gRPC collector (the `TraceService` of `opentelemetry-proto`, served by tonic in this
//! test). A Check and an ext_authz Check with a sampled `traceparent` each arrive as a span of
//! the caller's trace, a child of the caller's span, flushed at SIGTERM; requests without a
//! `traceparent` or with an unsampled one export nothing; a malformed URL exits 2.
//!
//! `cargo test --test otlp`

mod common;

use std::{
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{envoy_check, keys, repo_path, spawn_policy};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind},
};
use rolegate::grpc::pb::{self, authorizer_client::AuthorizerClient};
use tokio_stream::wrappers::TcpListenerStream;

/// The caller's trace and span of the Check, sampled.
const CHECK_TRACE: (&str, &str) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
/// The caller's trace and span of the ext_authz Check, sampled.
const ENVOY_TRACE: (&str, &str) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
/// A trace the caller does not sample.
const UNSAMPLED: &str = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-00";

fn traceparent((trace, span): (&str, &str)) -> String {
    format!("00-{trace}-{span}-01")
}

/// Every span the collector received, with its resource's `service.name`.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| string_value(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn string_value(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// A span's attribute as text (`true`, `NO_GRANT`).
fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|kv| kv.key == key)?;
    match value.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

impl Collector {
    /// Serves the collector on an ephemeral loopback port; returns its URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.0.lock().unwrap().clone()
    }
}

/// A Check of `jobs.cancel` on a `globex` job, with `traceparent` when given.
fn check(traceparent: Option<&str>) -> tonic::Request<pb::CheckRequest> {
    let mut req = tonic::Request::new(common::check(
        keys::DANA_SCIENTIST,
        "jobs.cancel",
        "globex",
        "",
    ));
    if let Some(t) = traceparent {
        req.metadata_mut().insert("traceparent", t.parse().unwrap());
    }
    req
}

/// SIGTERM, then the exit status (within 30 s), serving the collector meanwhile.
async fn terminate(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rolegate did not exit within 30 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sampled_requests_export_a_child_of_the_callers_span() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let policy = repo_path("deploy/examples/policy.yaml");
    let (child, url) = spawn_policy(&policy, &["--otlp-endpoint", &endpoint]);
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut authorizer = AuthorizerClient::new(channel.clone());
    let mut envoy = AuthorizationClient::new(channel);

    // Sampled: one span each.
    let allowed = authorizer
        .check(check(Some(&traceparent(CHECK_TRACE))))
        .await
        .unwrap()
        .into_inner();
    assert!(allowed.allowed);
    let dana = format!("ApiKey {}", keys::DANA_SCIENTIST);
    let envoy_trace = traceparent(ENVOY_TRACE);
    envoy
        .check(envoy_check(
            "DELETE",
            "/api/jobs/job-1",
            &[("authorization", &dana), ("traceparent", &envoy_trace)],
        ))
        .await
        .unwrap();
    // Not sampled, or no trace context at all: nothing.
    authorizer.check(check(None)).await.unwrap();
    authorizer.check(check(Some(UNSAMPLED))).await.unwrap();
    envoy
        .check(envoy_check(
            "DELETE",
            "/api/jobs/job-1",
            &[("authorization", &dana)],
        ))
        .await
        .unwrap();
    envoy
        .check(envoy_check(
            "DELETE",
            "/api/jobs/job-1",
            &[("authorization", &dana), ("traceparent", UNSAMPLED)],
        ))
        .await
        .unwrap();

    // The exporter batches every few seconds; SIGTERM flushes what is queued.
    let status = terminate(child).await;
    assert!(status.success(), "{status}");

    let spans = collector.spans();
    let traces: Vec<_> = spans
        .iter()
        .map(|(_, s)| hex::encode(&s.trace_id))
        .collect();
    assert_eq!(
        spans.len(),
        2,
        "exactly the two sampled requests: {traces:?}"
    );
    for ((trace, parent), name, reason) in [
        (CHECK_TRACE, "rolegate.v1.Authorizer/Check", "ALLOWED"),
        (
            ENVOY_TRACE,
            "envoy.service.auth.v3.Authorization/Check",
            "ALLOWED",
        ),
    ] {
        let (service, span) = spans
            .iter()
            .find(|(_, s)| hex::encode(&s.trace_id) == trace)
            .unwrap_or_else(|| panic!("no span of trace {trace}: {traces:?}"));
        assert_eq!(service, "rolegate");
        assert_eq!(hex::encode(&span.parent_span_id), parent, "{name}");
        assert_ne!(hex::encode(&span.span_id), parent, "a span of its own");
        assert_eq!(span.span_id.len(), 8);
        assert_eq!(span.name, name);
        assert_eq!(span.kind, SpanKind::Server as i32, "{name}");
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        assert_eq!(attribute(span, "rolegate.allowed").as_deref(), Some("true"));
        assert_eq!(attribute(span, "rolegate.reason").as_deref(), Some(reason));
    }
    let front_ends: Vec<_> = spans
        .iter()
        .filter_map(|(_, s)| attribute(s, "rolegate.front_end"))
        .collect();
    assert!(front_ends.contains(&"check".to_owned()), "{front_ends:?}");
    assert!(
        front_ends.contains(&"ext_authz".to_owned()),
        "{front_ends:?}"
    );
}

#[test]
fn a_malformed_endpoint_is_refused_at_start() {
    let policy = repo_path("deploy/examples/policy.yaml");
    for (flag, env) in [
        (Some("localhost:4317"), None),
        (Some("http://localhost:4317/v1/traces"), None),
        (None, Some("ftp://collector:4317")),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rolegate"));
        command.args(["serve", "--policy"]).arg(&policy).args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ]);
        if let Some(url) = flag {
            command.args(["--otlp-endpoint", url]);
        }
        if let Some(url) = env {
            command.env("ROLEGATE_OTLP_ENDPOINT", url);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag:?} {env:?}: {stderr}");
        assert!(stderr.contains("--otlp-endpoint"), "{stderr}");
        assert!(stderr.contains("http://localhost:4317"), "{stderr}");
    }
}
