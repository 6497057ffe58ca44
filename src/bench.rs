//! `rolegate bench`: drives Check over gRPC from many concurrent callers and reports
//! requests/s and latency percentiles; optionally first against a no-op tonic service in this
//! process, for the ratio "rolegate / bare tonic". [`ext_authz`] does the same for Envoy's
//! `Authorization/Check`.

pub mod ext_authz;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    Request, Response, Status,
    transport::{Channel, Endpoint},
};

use crate::grpc::pb::{
    self,
    authorizer_client::AuthorizerClient,
    authorizer_server::{Authorizer, AuthorizerServer},
};

/// One load run's parameters.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// The server (built with [`crate::tls::client::endpoint`]).
    pub endpoint: Endpoint,
    /// Callers issuing requests back to back.
    pub concurrency: usize,
    /// HTTP/2 connections the callers share.
    pub connections: usize,
    pub duration: Duration,
    /// Run this long first without recording.
    pub warmup: Duration,
    pub request: pb::CheckRequest,
}

/// What one load run measured.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub requests: u64,
    pub allowed: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl LoadReport {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>10.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs  max {:>8.1} µs  ({} requests, {} allowed, {} errors)",
            self.requests_per_second(),
            micros(self.p50),
            micros(self.p99),
            micros(self.p999),
            micros(self.max),
            self.requests,
            self.allowed,
            self.errors
        )
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One caller of a load run: issues a call, says whether it was allowed.
pub trait Caller: Send + 'static {
    fn call(&mut self) -> impl Future<Output = Result<bool, Status>> + Send;
}

/// Calls `rolegate.v1.Authorizer/Check`.
struct CheckCaller {
    client: AuthorizerClient<Channel>,
    request: pb::CheckRequest,
}

impl Caller for CheckCaller {
    async fn call(&mut self) -> Result<bool, Status> {
        Ok(self
            .client
            .check(self.request.clone())
            .await?
            .get_ref()
            .allowed)
    }
}

/// Runs the load of `spec` and reports on it.
pub async fn run_load(spec: &LoadSpec) -> Result<LoadReport, tonic::transport::Error> {
    let request = spec.request.clone();
    drive(&spec.shape(), move |channel| CheckCaller {
        client: AuthorizerClient::new(channel),
        request: request.clone(),
    })
    .await
}

/// How a load run is shaped, whatever it calls.
#[derive(Clone, Debug)]
pub struct LoadShape {
    pub endpoint: Endpoint,
    pub concurrency: usize,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
}

impl LoadSpec {
    fn shape(&self) -> LoadShape {
        LoadShape {
            endpoint: self.endpoint.clone(),
            concurrency: self.concurrency,
            connections: self.connections,
            duration: self.duration,
            warmup: self.warmup,
        }
    }
}

/// Opens the connections, runs `shape.concurrency` callers made by `caller` back to back for the
/// warm-up and the measured time, and merges what they recorded.
pub async fn drive<C: Caller>(
    shape: &LoadShape,
    caller: impl Fn(Channel) -> C,
) -> Result<LoadReport, tonic::transport::Error> {
    let mut channels = Vec::new();
    for _ in 0..shape.connections.max(1) {
        channels.push(shape.endpoint.clone().tcp_nodelay(true).connect().await?);
    }
    let start = Instant::now();
    let warm_until = start + shape.warmup;
    let end = warm_until + shape.duration;
    let mut tasks = Vec::new();
    for i in 0..shape.concurrency.max(1) {
        let mut caller = caller(channels[i % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                .expect("static histogram bounds are valid");
            let (mut allowed, mut errors) = (0u64, 0u64);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let result = caller.call().await;
                if t0 < warm_until {
                    continue;
                }
                hist.saturating_record(t0.elapsed().as_nanos() as u64);
                match result {
                    Ok(true) => allowed += 1,
                    Ok(false) => {}
                    Err(_) => errors += 1,
                }
            }
            (hist, allowed, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
    let (mut allowed, mut errors) = (0, 0);
    for task in tasks {
        if let Ok((h, a, e)) = task.await {
            hist.add(h).expect("histograms share bounds");
            allowed += a;
            errors += e;
        }
    }
    let elapsed = Instant::now()
        .saturating_duration_since(warm_until)
        .min(shape.duration)
        .max(Duration::from_millis(1));
    let q = |q: f64| Duration::from_nanos(hist.value_at_quantile(q));
    Ok(LoadReport {
        requests: hist.len(),
        allowed,
        errors,
        elapsed,
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
        max: Duration::from_nanos(hist.max()),
    })
}

/// One round of a comparison: the no-op baseline's run (when there is one), then the target's.
#[derive(Clone, Debug)]
pub struct Round {
    pub baseline: Option<LoadReport>,
    pub target: LoadReport,
}

impl Round {
    /// The target's requests/s over the baseline's.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .map(|b| self.target.requests_per_second() / b.requests_per_second())
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// How `rolegate bench` names the two sides in its output.
#[derive(Clone, Copy, Debug)]
pub struct Labels {
    pub baseline: &'static str,
    pub target: &'static str,
}

/// Runs `rounds` rounds, each the baseline (when `with_baseline`) and then the target, so that
/// both sides sample the same minutes of a machine whose load drifts, and prints each run as it
/// ends. With more than one round it prints each round's ratio and then their median (or, without
/// a baseline, the median requests/s); with one round, what `rolegate bench` always printed.
pub async fn alternate<E>(
    rounds: usize,
    labels: Labels,
    with_baseline: bool,
    mut baseline: impl AsyncFnMut() -> Result<LoadReport, E>,
    mut target: impl AsyncFnMut() -> Result<LoadReport, E>,
) -> Result<Vec<Round>, E> {
    let rounds = rounds.max(1);
    let width = labels.baseline.len().max(labels.target.len()) + 2;
    let prefix = |i: usize| match rounds {
        1 => String::new(),
        _ => format!("round {}/{rounds}  ", i + 1),
    };
    let mut done = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let base = match with_baseline {
            true => {
                let report = baseline().await?;
                println!("{}{:width$}{report}", prefix(i), labels.baseline);
                Some(report)
            }
            false => None,
        };
        let report = target().await?;
        println!("{}{:width$}{report}", prefix(i), labels.target);
        if report.errors > 0 {
            eprintln!("warning: {} calls failed", report.errors);
        }
        let round = Round {
            baseline: base,
            target: report,
        };
        if let (Some(ratio), true) = (round.ratio(), rounds > 1) {
            println!("{}{:width$}{ratio:.3}", prefix(i), "ratio");
        }
        done.push(round);
    }
    let ratios: Vec<f64> = done.iter().filter_map(Round::ratio).collect();
    match (median(&ratios), rounds) {
        (Some(ratio), 1) => {
            println!(
                "{:width$}{ratio:.3} × the no-op baseline's requests/s",
                "ratio"
            )
        }
        (Some(ratio), _) => println!(
            "{:width$}median {ratio:.3} of {rounds} rounds × the no-op baseline's requests/s",
            "ratio"
        ),
        (None, 1) => {}
        (None, _) => {
            let rates: Vec<f64> = done
                .iter()
                .map(|r| r.target.requests_per_second())
                .collect();
            let rate = median(&rates).unwrap_or_default();
            println!(
                "{:width$}median {rate:.0} req/s of {rounds} rounds",
                labels.target
            );
        }
    }
    Ok(done)
}

/// An Authorizer that answers every call with an empty response: the cost of tonic itself.
#[derive(Clone, Copy, Default)]
pub struct NoopAuthorizer;

#[tonic::async_trait]
impl Authorizer for NoopAuthorizer {
    type WatchStream = crate::grpc::watch::WatchStream;

    async fn watch(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("the no-op server has no Watch"))
    }

    type WatchBatchedStream = crate::grpc::watch::BatchedStream;

    async fn watch_batched(
        &self,
        _: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchBatchedStream>, Status> {
        Err(Status::unimplemented("the no-op server has no Watch"))
    }

    async fn check(
        &self,
        _: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        Ok(Response::new(pb::CheckResponse::default()))
    }

    async fn check_batch(
        &self,
        _: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        Ok(Response::new(pb::CheckBatchResponse::default()))
    }
}

/// The connections `listener` accepts, with TCP_NODELAY on: tonic's `tcp_nodelay` applies only
/// to listeners it binds itself, not to `serve_with_incoming`, and without it a small answer
/// written while the previous one is unacknowledged waits for the peer's (delayed) ACK.
pub fn nodelay_incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |conn| {
        conn.and_then(|c| c.set_nodelay(true).map(|()| c))
    })
}

/// Starts the no-op service on an ephemeral loopback port; returns its address.
pub async fn start_noop_server() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizerServer::new(NoopAuthorizer))
            .serve_with_incoming(nodelay_incoming(listener)),
    );
    Ok(addr)
}
