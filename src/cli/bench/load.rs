//! One load run: callers issuing calls back to back on shared connections for a warm-up and a
//! measured time, their latencies merged into one report.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rolegate::grpc::pb::{self, authorizer_client::AuthorizerClient};
use tonic::{Status, transport::Channel};

use crate::cli::client::Target;

/// What one load run measured.
#[derive(Clone, Debug)]
pub(crate) struct LoadReport {
    pub(crate) requests: u64,
    pub(crate) allowed: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) p999: Duration,
    pub(crate) max: Duration,
}

impl LoadReport {
    pub(crate) fn requests_per_second(&self) -> f64 {
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
pub(crate) trait Caller: Send + 'static {
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

/// Runs a load of `request` to `rolegate.v1.Authorizer/Check` and reports on it.
pub(crate) async fn run_load(
    shape: &LoadShape,
    request: pb::CheckRequest,
) -> Result<LoadReport, tonic::transport::Error> {
    drive(shape, move |channel| CheckCaller {
        client: AuthorizerClient::new(channel),
        request: request.clone(),
    })
    .await
}

/// How a load run is shaped, whatever it calls.
#[derive(Clone, Debug)]
pub(crate) struct LoadShape {
    /// The server (from [`crate::cli::client::endpoint`]).
    pub(crate) endpoint: Target,
    /// Callers issuing requests back to back.
    pub(crate) concurrency: usize,
    /// HTTP/2 connections the callers share.
    pub(crate) connections: usize,
    /// How long to measure.
    pub(crate) duration: Duration,
    /// Run this long first without recording.
    pub(crate) warmup: Duration,
}

/// Opens the connections, runs `shape.concurrency` callers made by `caller` back to back for the
/// warm-up and the measured time, and merges what they recorded.
pub(crate) async fn drive<C: Caller>(
    shape: &LoadShape,
    caller: impl Fn(Channel) -> C,
) -> Result<LoadReport, tonic::transport::Error> {
    let mut channels = Vec::new();
    for _ in 0..shape.connections.max(1) {
        let target = shape.endpoint.clone().tune(|e| e.tcp_nodelay(true));
        channels.push(target.connect().await?);
    }
    let start = Instant::now();
    let warm_until = start + shape.warmup;
    let end = warm_until + shape.duration;
    let mut tasks = Vec::new();
    for i in 0..shape.concurrency.max(1) {
        let caller = caller(channels[i % channels.len()].clone());
        tasks.push(tokio::spawn(run_caller(caller, warm_until, end)));
    }
    let mut hist = histogram();
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

/// Latencies in nanoseconds, from 1 ns to a minute, to 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

/// One caller's calls until `end`, recording those that start after `warm_until`: their
/// latencies, how many were allowed and how many failed.
async fn run_caller(
    mut caller: impl Caller,
    warm_until: Instant,
    end: Instant,
) -> (Histogram<u64>, u64, u64) {
    let mut hist = histogram();
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
}
