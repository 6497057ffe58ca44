//! `rolegate bench`: drives Check over gRPC from many concurrent callers and reports
//! requests/s and latency percentiles; optionally first against a no-op tonic service in this
//! process, for the ratio "rolegate / bare tonic". [`ext_authz`] does the same for Envoy's
//! `Authorization/Check`. [`writes`] is `rolegate bench-writes`, the Admin API's durable writes.

mod envoy_request;
pub(crate) mod etcd;
mod ext_authz;
mod load;
mod noop;
mod rounds;
pub(crate) mod writes;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, ValueEnum};
use rolegate::{grpc::pb, tls::client::ClientTlsArgs};
use tonic::transport::Endpoint;

use super::client::Target;

use load::{LoadReport, LoadShape};
use rounds::Labels;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// The server's gRPC address: HOST:PORT (https:// with TLS options, else http://), a URL,
    /// or unix:PATH (a Unix socket).
    #[arg(long, env = "ROLEGATE_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to warm up before measuring.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The API key every check sends, `<prefix>.<secret>` (required: a key of the policy
    /// being served).
    #[arg(long, env = "ROLEGATE_CHECK_KEY", hide_env_values = true)]
    key: Option<String>,
    #[command(flatten)]
    check: CheckTarget,
    /// First run the same load against a no-op tonic service in this process, and print the ratio.
    #[arg(long)]
    baseline: bool,
    /// Run the baseline against the server at this address instead of a no-op service (implies
    /// --baseline): e.g. the same policy served on loopback TCP, to compare --addr unix:PATH
    /// with it.
    #[arg(long)]
    baseline_addr: Option<String>,
    /// What to drive: rolegate's own Check, or Envoy's ext_authz Authorization/Check.
    #[arg(long, value_enum, default_value_t = BenchMode::Check)]
    mode: BenchMode,
    /// ext-authz mode: the HTTP method of the proxied request.
    #[arg(long, default_value = "DELETE")]
    method: String,
    /// ext-authz mode: the path of the proxied request (judged by the route map).
    #[arg(long, default_value = "/api/jobs/job-1234")]
    path: String,
    /// Measure this many rounds, each the baseline (with --baseline) and then the server, and
    /// print every round's ratio and their median: on a shared machine two runs minutes apart
    /// compare the machine's load more than the servers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    rounds: u64,
}

/// What every benchmarked check asks: an entitlement on a resource of a team and owner key.
#[derive(Debug, Clone, Args)]
pub(crate) struct CheckTarget {
    /// The entitlement to check.
    #[arg(long, default_value = "jobs.cancel")]
    pub(crate) entitlement: String,
    /// The resource's team.
    #[arg(long, default_value = "globex")]
    pub(crate) team: String,
    /// The resource's owner key.
    #[arg(long, default_value = "GusDevKey00000000001")]
    pub(crate) owner_key: String,
}

impl CheckTarget {
    /// The Check request `key` sends.
    pub(crate) fn request(&self, key: String) -> pb::CheckRequest {
        pb::CheckRequest {
            api_key: key,
            entitlement: self.entitlement.clone(),
            resource: Some(pb::Resource {
                team_id: self.team.clone(),
                owner_key_prefix: self.owner_key.clone(),
                owner_user_id: String::new(),
            }),
            min_revision: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchMode {
    /// rolegate.v1.Authorizer/Check.
    #[default]
    Check,
    /// envoy.service.auth.v3.Authorization/Check with Envoy-shaped requests.
    ExtAuthz,
}

impl BenchArgs {
    /// The shape of every run, against `endpoint`.
    fn shape(&self, endpoint: Target) -> LoadShape {
        LoadShape {
            endpoint,
            concurrency: self.concurrency,
            connections: self.connections,
            duration: self.duration,
            warmup: self.warmup,
        }
    }
}

/// Runs `rolegate bench` in the mode asked for.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let key = super::client::key_to_check(args.key.clone())?;
    match args.mode {
        BenchMode::Check => run_check(args, key).await,
        BenchMode::ExtAuthz => run_ext_authz(args, key).await,
    }
}

async fn run_check(args: BenchArgs, key: String) -> anyhow::Result<ExitCode> {
    let request = args.check.request(key);
    let target = super::client::endpoint(&args.addr, &args.tls)?;
    println!(
        "load: {} callers on {} connections, {:?} warm-up, {:?} measured",
        args.concurrency, args.connections, args.warmup, args.duration
    );
    let noop = args.baseline.then(noop::start_noop_server);
    let labels = Labels {
        baseline: "no-op tonic",
        target: "rolegate",
        ratio_of: "the no-op baseline",
    };
    compare(&args, target, labels, noop, async |endpoint| {
        load::run_load(&args.shape(endpoint), request.clone()).await
    })
    .await
}

async fn run_ext_authz(args: BenchArgs, key: String) -> anyhow::Result<ExitCode> {
    let target = super::client::endpoint(&args.addr, &args.tls)?;
    let request = envoy_request::envoy_like_request(&key, &args.method, &args.path);
    println!(
        "ext_authz load: {} {} — {} callers on {} connections, {:?} warm-up, {:?} measured",
        args.method, args.path, args.concurrency, args.connections, args.warmup, args.duration
    );
    let noop = args.baseline.then(ext_authz::start_noop_server);
    let labels = Labels {
        baseline: "no-op ext_authz",
        target: "rolegate",
        ratio_of: "the no-op baseline",
    };
    compare(&args, target, labels, noop, async |endpoint| {
        ext_authz::run_load(&args.shape(endpoint), request.clone()).await
    })
    .await
}

/// Drives `load` against the server at `--addr` for `--rounds` rounds, each first against a
/// baseline: a no-op service of this process (started by `noop`, with `--baseline`), or the
/// server at `--baseline-addr`; prints every round and the median.
async fn compare<N>(
    args: &BenchArgs,
    target: Target,
    labels: Labels<'_>,
    noop: Option<N>,
    load: impl AsyncFn(Target) -> Result<LoadReport, tonic::transport::Error>,
) -> anyhow::Result<ExitCode>
where
    N: Future<Output = std::io::Result<SocketAddr>>,
{
    let (baseline, labels) = match &args.baseline_addr {
        Some(addr) => {
            let other = super::client::endpoint(addr, &args.tls)?;
            let labels = Labels {
                baseline: addr,
                target: &args.addr,
                ratio_of: addr,
            };
            (Some(other), labels)
        }
        None => match noop {
            Some(start) => {
                let addr = start.await.context("starting the no-op service")?;
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))?;
                (Some(Target::tcp(endpoint)), labels)
            }
            None => (None, labels),
        },
    };
    rounds::alternate(
        args.rounds as usize,
        labels,
        baseline.is_some(),
        async || -> anyhow::Result<_> {
            let baseline = baseline.clone().context("no baseline server")?;
            Ok(load(baseline).await?)
        },
        async || {
            load(target.clone())
                .await
                .with_context(|| format!("connecting to {}", args.addr))
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
