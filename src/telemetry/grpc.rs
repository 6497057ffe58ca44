//! The standard gRPC server metrics (`grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_handling_seconds`, `grpc_server_msg_received_total`,
//! `grpc_server_msg_sent_total`, with the `grpc_service`, `grpc_method`, `grpc_type` and
//! `grpc_code` labels dashboards expect) for every service of the gRPC port, as a tower layer
//! around tonic's router.
//!
//! The methods are known when the server starts (from the services' descriptors), each with its
//! counters resolved in advance: a call finds its method by its path and counts into atomics,
//! spread over per-thread shards as the decision counters are. A path no service serves is
//! counted under `grpc_service="unknown"`, so that a client cannot add series.
//!
//! A stream is counted message by message (the length-prefixed gRPC frames of the request and
//! response bodies), and its code is taken when it ends: from `grpc-status` in the trailers, or
//! in the headers of a trailers-only answer, OK when absent; a stream the client dropped first
//! is `Canceled`.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::Message;
use tonic::{body::Body, codegen::http};

use super::{SHARDS, shard_index};

/// The gRPC codes by number, as Go's `codes.Code` names them (the names the standard metrics
/// carry).
pub(crate) const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

/// Upper bounds of the `grpc_server_handling_seconds` buckets: from 100 µs (a check takes a few
/// µs) to 10 s (Watch streams last longer and land in +Inf).
pub(crate) const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// One method's labels.
pub(crate) struct MethodInfo {
    pub(crate) service: String,
    pub(crate) method: String,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub(crate) kind: &'static str,
}

/// One method's counters in one shard.
#[repr(align(128))]
pub(crate) struct Cells {
    started: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    handled: [AtomicU64; CODES.len()],
    /// Per bucket (not cumulative), the last for +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Cells {
    fn default() -> Self {
        Cells {
            started: AtomicU64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            handled: std::array::from_fn(|_| AtomicU64::new(0)),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// The totals of one method, summed over the shards at scrape time.
#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) started: u64,
    pub(crate) received: u64,
    pub(crate) sent: u64,
    pub(crate) handled: [u64; CODES.len()],
    pub(crate) buckets: [u64; BUCKETS.len() + 1],
    pub(crate) sum_seconds: f64,
}

/// Every method of the port and its counters.
pub(crate) struct GrpcMetrics {
    pub(crate) methods: Vec<MethodInfo>,
    /// By path (`/package.Service/Method`).
    index: HashMap<String, usize, foldhash::fast::RandomState>,
    /// `[shard][method]`.
    shards: Vec<Box<[Cells]>>,
}

impl GrpcMetrics {
    /// The methods of the services in these encoded file descriptor sets; a last entry counts
    /// every other path.
    pub(crate) fn new(descriptor_sets: &[&[u8]]) -> Self {
        let mut methods = Vec::new();
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    let name = match file.package() {
                        "" => service.name().to_owned(),
                        p => format!("{p}.{}", service.name()),
                    };
                    for m in &service.method {
                        let kind = match (m.client_streaming(), m.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        methods.push(MethodInfo {
                            service: name.clone(),
                            method: m.name().to_owned(),
                            kind,
                        });
                    }
                }
            }
        }
        let mut index = HashMap::default();
        methods.retain(|m| {
            let path = format!("/{}/{}", m.service, m.method);
            if index.contains_key(&path) {
                return false;
            }
            index.insert(path, index.len());
            true
        });
        methods.push(MethodInfo {
            service: "unknown".into(),
            method: "unknown".into(),
            kind: "unknown",
        });
        let shards = (0..SHARDS)
            .map(|_| (0..methods.len()).map(|_| Cells::default()).collect())
            .collect();
        GrpcMetrics {
            methods,
            index,
            shards,
        }
    }

    /// The method `path` (`/package.Service/Method`) is counted under: the unknown method for a
    /// path no service serves.
    pub(crate) fn method(&self, path: &str) -> usize {
        self.index
            .get(path)
            .copied()
            .unwrap_or(self.methods.len() - 1)
    }

    fn cells(&self, method: usize) -> &Cells {
        &self.shards[shard_index()][method]
    }

    /// The totals of `method` over every shard.
    pub(crate) fn totals(&self, method: usize) -> Totals {
        let mut t = Totals::default();
        let mut sum_ns = 0u64;
        for shard in &self.shards {
            let c = &shard[method];
            t.started += c.started.load(Ordering::Relaxed);
            t.received += c.received.load(Ordering::Relaxed);
            t.sent += c.sent.load(Ordering::Relaxed);
            for (i, h) in c.handled.iter().enumerate() {
                t.handled[i] += h.load(Ordering::Relaxed);
            }
            for (i, b) in c.buckets.iter().enumerate() {
                t.buckets[i] += b.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(c.sum_ns.load(Ordering::Relaxed));
        }
        t.sum_seconds = sum_ns as f64 / 1e9;
        t
    }
}

/// The layer: wraps tonic's router (`Server::builder().layer(…)`).
#[derive(Clone)]
pub(crate) struct GrpcMetricsLayer(pub(crate) Arc<GrpcMetrics>);

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

impl<S, ResBody> tower_service::Service<http::Request<Body>> for GrpcMetricsService<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<ResBody>>,
    ResBody: HttpBody<Data = Bytes> + Unpin,
{
    type Response = http::Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = self.metrics.method(req.uri().path());
        self.metrics
            .cells(method)
            .started
            .fetch_add(1, Ordering::Relaxed);
        let req = req.map(|body| {
            Body::new(RecvBody {
                inner: body,
                frames: Framer::default(),
                metrics: self.metrics.clone(),
                method,
            })
        });
        MetricsFuture {
            inner: self.inner.call(req),
            call: Some(Call {
                metrics: self.metrics.clone(),
                method,
                start: Instant::now(),
                done: false,
            }),
        }
    }
}

/// One call in progress: counted as handled once, with its code, when it ends (`Canceled` when
/// dropped unfinished).
struct Call {
    metrics: Arc<GrpcMetrics>,
    method: usize,
    start: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: usize) {
        if self.done {
            return;
        }
        self.done = true;
        let cells = self.metrics.cells(self.method);
        cells.handled[code.min(CODES.len() - 1)].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let seconds = ns as f64 / 1e9;
        let bucket = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        cells.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        cells.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(CANCELED);
    }
}

/// The code in a `grpc-status` value (`Unknown` when it is not a known code).
fn code_of(map: &http::HeaderMap) -> Option<usize> {
    let v = map.get("grpc-status")?;
    Some(
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|c| *c < CODES.len())
            .unwrap_or(UNKNOWN),
    )
}

pin_project_lite::pin_project! {
    pub(crate) struct MetricsFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Output = Result<http::Response<MetricsBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(res) => {
                let header_code = code_of(res.headers());
                Ok(res.map(|inner| MetricsBody {
                    inner,
                    frames: Framer::default(),
                    header_code,
                    call,
                }))
            }
            Err(e) => {
                if let Some(call) = &mut call {
                    call.finish(UNKNOWN);
                }
                Err(e)
            }
        })
    }
}

/// The response body: counts the messages sent, and ends the call with its code.
pub(crate) struct MetricsBody<B> {
    inner: B,
    frames: Framer,
    header_code: Option<usize>,
    call: Option<Call>,
}

impl<B> HttpBody for MetricsBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = this.frames.feed(data);
                    if n > 0
                        && let Some(call) = &this.call
                    {
                        call.metrics
                            .cells(call.method)
                            .sent
                            .fetch_add(n, Ordering::Relaxed);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = code_of(trailers).or(this.header_code).unwrap_or(0);
                    if let Some(call) = &mut this.call {
                        call.finish(code);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(call) = &mut this.call {
                    call.finish(UNKNOWN);
                }
            }
            None => {
                let code = this.header_code.unwrap_or(0);
                if let Some(call) = &mut this.call {
                    call.finish(code);
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request body: counts the messages received.
struct RecvBody {
    inner: Body,
    frames: Framer,
    metrics: Arc<GrpcMetrics>,
    method: usize,
}

impl HttpBody for RecvBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = this.frames.feed(data);
            if n > 0 {
                this.metrics
                    .cells(this.method)
                    .received
                    .fetch_add(n, Ordering::Relaxed);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Follows gRPC's length-prefixed messages (a flag byte, a 4-byte big-endian length, the
/// message) across body chunks, counting those completed.
#[derive(Default)]
struct Framer {
    /// Header bytes read of the current message (0 to 4 after the flag).
    header: u8,
    length: u32,
    /// Message bytes still to come.
    remaining: u64,
}

impl Framer {
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut done = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len() as u64);
                self.remaining -= take;
                data = &data[take as usize..];
                if self.remaining == 0 {
                    done += 1;
                }
                continue;
            }
            let byte = data[0];
            data = &data[1..];
            if self.header > 0 {
                self.length = (self.length << 8) | u32::from(byte);
            }
            self.header += 1;
            if self.header == 5 {
                self.header = 0;
                self.remaining = u64::from(self.length);
                self.length = 0;
                if self.remaining == 0 {
                    done += 1;
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn framing_counts_messages_across_chunks() {
        let mut all = message(3);
        all.extend(message(0));
        all.extend(message(300));
        for split in [1, 2, 5, 7, 100, all.len()] {
            let mut f = Framer::default();
            let n: u64 = all.chunks(split).map(|c| f.feed(c)).sum();
            assert_eq!(n, 3, "chunks of {split}");
            assert_eq!((f.header, f.remaining), (0, 0));
        }
    }

    #[test]
    fn methods_come_from_the_descriptors() {
        let m = GrpcMetrics::new(&[tonic_health::pb::FILE_DESCRIPTOR_SET]);
        let check = m.method("/grpc.health.v1.Health/Check");
        assert_eq!(m.methods[check].kind, "unary");
        assert_eq!(m.methods[check].service, "grpc.health.v1.Health");
        assert_eq!(m.methods[check].method, "Check");
        let watch = m.method("/grpc.health.v1.Health/Watch");
        assert_eq!(m.methods[watch].kind, "server_stream");
        assert_eq!(m.method("/x.Y/Z"), m.methods.len() - 1);
        assert_eq!(m.methods[m.method("/x.Y/Z")].service, "unknown");
    }
}
