//! The `rolegate` command: `serve` the sidecar, `check` a decision, `validate` a policy file,
//! make and hash `keys`, and `bench` a server.

mod cli;

use std::{io::Read, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rolegate::{
    app::{self, AppError, Listeners},
    bench::{self, LoadSpec},
    config::{LogFormat, ServeConfig},
    domain::key::{SecretHash, generate_key, generate_prefix},
    grpc::pb::{self, authorizer_client::AuthorizerClient},
    origin::policy_file,
    tls::client::{self, ClientTlsArgs},
};
use tonic::transport::Endpoint;

mod watch_cli;

// mimalloc returns freed memory to the system, so the resident size after loading a large
// policy reflects the state kept rather than the parser's garbage, and it is fast on the
// allocation-heavy gRPC paths.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// rolegate: API-key authorization sidecar.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: serve a policy file (reloaded when it changes) or the embedded store
    /// (--data-dir, writable through the Admin API) over gRPC and HTTP.
    Serve(Box<ServeConfig>),
    /// Ask a running sidecar for a decision. Exits 0 when allowed, 1 when denied, 2 on error.
    Check(CheckArgs),
    /// Check a policy file; print every problem with its location. Exits 1 when it is invalid.
    Validate {
        /// The policy file.
        file: PathBuf,
    },
    /// Make and hash API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Drive Check over gRPC and report requests/s and latency percentiles.
    Bench(BenchArgs),
    #[command(flatten)]
    Admin(cli::admin::AdminCommand),
    /// Follow a sidecar's change feed: print one event per line. Exits 3 after a reset.
    Watch(watch_cli::WatchArgs),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new key (once: store it now) and the secret_sha256 line for the policy file.
    New {
        /// The key's public prefix, 4 to 64 characters of [A-Za-z0-9_-]; random when omitted.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Print the secret_sha256 of an existing key (`-` reads the key from standard input).
    Hash {
        /// The whole key, `<prefix>.<secret>`.
        key: String,
    },
    #[command(flatten)]
    Admin(Box<cli::admin::KeysAdmin>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Args)]
struct CheckArgs {
    /// The sidecar's gRPC address (https:// for TLS).
    #[arg(long, env = "ROLEGATE_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// The API key to check, `<prefix>.<secret>`.
    #[arg(long, env = "ROLEGATE_API_KEY", hide_env_values = true)]
    key: String,
    /// The entitlement, e.g. jobs.cancel.
    #[arg(long)]
    entitlement: String,
    /// The team the data belongs to.
    #[arg(long, default_value = "")]
    team: String,
    /// The prefix of the key that owns the data.
    #[arg(long, default_value = "")]
    owner_key: String,
    /// The user that owns the data.
    #[arg(long, default_value = "")]
    owner_user: String,
    /// Answer only from a state at least this fresh.
    #[arg(long, default_value_t = 0)]
    min_revision: u64,
    /// Give up after this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Args)]
struct BenchArgs {
    /// The sidecar's gRPC address (https:// for TLS).
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
    /// The API key to check.
    #[arg(
        long,
        env = "ROLEGATE_API_KEY",
        hide_env_values = true,
        default_value = "DanaScienceKey000001.dev-only-danascience"
    )]
    key: String,
    /// The entitlement to check.
    #[arg(long, default_value = "jobs.cancel")]
    entitlement: String,
    /// The resource's team.
    #[arg(long, default_value = "globex")]
    team: String,
    /// The resource's owner key.
    #[arg(long, default_value = "GusDevKey00000000001")]
    owner_key: String,
    /// First run the same load against a no-op tonic service in this process, and print the ratio.
    #[arg(long)]
    baseline: bool,
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum BenchMode {
    /// rolegate.v1.Authorizer/Check.
    #[default]
    Check,
    /// envoy.service.auth.v3.Authorization/Check with Envoy-shaped requests.
    ExtAuthz,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => serve(*config),
        Command::Check(args) => exit_on_error(runtime().and_then(|rt| rt.block_on(check(args)))),
        Command::Validate { file } => validate(&file),
        Command::Watch(args) => {
            exit_on_error(runtime().and_then(|rt| rt.block_on(watch_cli::watch(args))))
        }
        Command::Keys(cmd) => exit_on_error(keys(cmd).map(|()| ExitCode::SUCCESS)),
        Command::Bench(args) => {
            exit_on_error(runtime().and_then(|rt| rt.block_on(run_bench(args))))
        }
        Command::Admin(cmd) => exit_on_error(cli::admin::run(cmd).map(|()| ExitCode::SUCCESS)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn exit_on_error(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(2)
    })
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn serve(config: ServeConfig) -> ExitCode {
    init_logs(config.log_format);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        let listeners = Listeners::bind(&config).await.map_err(AppError::Http)?;
        app::run(config, listeners, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(AppError::Policy(err)) => {
            tracing::error!("the policy file cannot be loaded:\n{err}");
            ExitCode::from(2)
        }
        Err(AppError::Tls(err)) => {
            tracing::error!(error = %err, "TLS cannot be set up");
            ExitCode::from(2)
        }
        // The store cannot be used as it is (damaged, unreadable, in use): an operator has to
        // act, as for a bad policy file.
        Err(err @ AppError::Store(_)) => {
            tracing::error!("{err}");
            ExitCode::from(2)
        }
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::from(1)
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let channel = client::endpoint(&args.addr, &args.tls.clone().into())?
        .timeout(args.timeout)
        .connect_timeout(args.timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.addr))?;
    let mut client = AuthorizerClient::new(channel);
    let resource = pb::Resource {
        team_id: args.team,
        owner_key_prefix: args.owner_key,
        owner_user_id: args.owner_user,
    };
    let response = client
        .check(pb::CheckRequest {
            api_key: args.key,
            entitlement: args.entitlement,
            resource: Some(resource),
            min_revision: args.min_revision,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    print_decision(&response, args.output);
    Ok(if response.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn enum_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

fn print_decision(r: &pb::CheckResponse, output: Output) {
    let scope = enum_name(r.scope().as_str_name(), "SCOPE_");
    let reason = enum_name(r.reason().as_str_name(), "REASON_");
    if output == Output::Json {
        let principal = r.principal.as_ref().map(|p| {
            serde_json::json!({
                "key_prefix": p.key_prefix,
                "key_type": enum_name(p.key_type().as_str_name(), "KEY_TYPE_"),
                "user_id": p.user_id,
                "project_id": p.project_id,
                "team_id": p.team_id,
                "roles": p.roles,
            })
        });
        let json = serde_json::json!({
            "allowed": r.allowed,
            "scope": scope,
            "reason": reason,
            "message": r.message,
            "principal": principal,
            "filter_team_ids": r.filter_team_ids,
            "filter_owner_key_prefixes": r.filter_owner_key_prefixes,
            "filter_owner_user_id": r.filter_owner_user_id,
            "revision": r.revision,
        });
        println!("{json}");
        return;
    }
    println!("allowed:  {}", r.allowed);
    println!("scope:    {scope}");
    println!("reason:   {reason} ({})", r.message);
    if let Some(p) = &r.principal {
        let who = if p.project_id.is_empty() {
            format!("user {}", p.user_id)
        } else {
            format!("project {}", p.project_id)
        };
        println!(
            "key:      {} ({}, {who}, team {}, roles [{}])",
            p.key_prefix,
            enum_name(p.key_type().as_str_name(), "KEY_TYPE_").to_lowercase(),
            p.team_id,
            p.roles.join(", ")
        );
    }
    let filtered = !(r.filter_team_ids.is_empty()
        && r.filter_owner_key_prefixes.is_empty()
        && r.filter_owner_user_id.is_empty());
    if filtered {
        let none = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        println!("filter:   teams [{}]", none(&r.filter_team_ids));
        println!(
            "          owner keys [{}]",
            none(&r.filter_owner_key_prefixes)
        );
        if !r.filter_owner_user_id.is_empty() {
            println!("          owner user {}", r.filter_owner_user_id);
        }
    }
    println!("revision: {}", r.revision);
}

fn validate(file: &std::path::Path) -> ExitCode {
    match policy_file::load(file) {
        Ok(policy) => {
            let m = &policy.model;
            println!(
                "{}: ok ({} teams, {} users, {} projects, {} keys, {} roles{})",
                file.display(),
                m.teams.len(),
                m.users.len(),
                m.projects.len(),
                m.keys.len(),
                m.catalog.roles().count(),
                m.routes
                    .as_ref()
                    .map(|r| format!(", {} routes", r.len()))
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            eprintln!("{}: {} problem(s)", file.display(), err.problems.len());
            ExitCode::from(1)
        }
    }
}

fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Admin(cmd) => cli::admin::run_keys(*cmd)?,
        KeysCommand::New { prefix } => {
            let prefix = prefix.unwrap_or_else(generate_prefix);
            let new =
                generate_key(&prefix).map_err(|e| anyhow::anyhow!("--prefix {prefix:?}: {e}"))?;
            println!("{}", new.key);
            println!("secret_sha256: {}", new.hash.to_hex());
            eprintln!(
                "The key above is shown once and stored nowhere; keep it now. Put the secret_sha256 line in the policy file."
            );
        }
        KeysCommand::Hash { key } => {
            let key = if key == "-" {
                let mut buf = String::new();
                std::io::stdin()
                    .read_to_string(&mut buf)
                    .context("reading the key from standard input")?;
                buf.trim().to_owned()
            } else {
                key
            };
            let parsed =
                rolegate::domain::ApiKey::parse(&key).map_err(|e| anyhow::anyhow!("{e}"))?;
            let hash: SecretHash = parsed.secret_hash();
            println!("prefix: {}", parsed.prefix);
            println!("secret_sha256: {}", hash.to_hex());
        }
    }
    Ok(())
}

async fn run_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.mode == BenchMode::ExtAuthz {
        return run_ext_authz_bench(args).await;
    }
    let request = pb::CheckRequest {
        api_key: args.key.clone(),
        entitlement: args.entitlement.clone(),
        resource: Some(pb::Resource {
            team_id: args.team.clone(),
            owner_key_prefix: args.owner_key.clone(),
            owner_user_id: String::new(),
        }),
        min_revision: 0,
    };
    let target = client::endpoint(&args.addr, &args.tls.clone().into())?;
    let spec = |endpoint: Endpoint| LoadSpec {
        endpoint,
        concurrency: args.concurrency,
        connections: args.connections,
        duration: args.duration,
        warmup: args.warmup,
        request: request.clone(),
    };
    println!(
        "load: {} callers on {} connections, {:?} warm-up, {:?} measured",
        args.concurrency, args.connections, args.warmup, args.duration
    );
    let noop = args.baseline.then(bench::start_noop_server);
    let labels = bench::Labels {
        baseline: "no-op tonic",
        target: "rolegate",
    };
    compare(&args, target, labels, noop, async |endpoint| {
        bench::run_load(&spec(endpoint)).await
    })
    .await
}

/// Drives `load` against the server at `--addr` for `--rounds` rounds, each first against a
/// no-op service of this process (started by `noop`, with `--baseline`), and prints every round
/// and the median.
async fn compare<N>(
    args: &BenchArgs,
    target: Endpoint,
    labels: bench::Labels,
    noop: Option<N>,
    load: impl AsyncFn(Endpoint) -> Result<bench::LoadReport, tonic::transport::Error>,
) -> anyhow::Result<ExitCode>
where
    N: Future<Output = std::io::Result<std::net::SocketAddr>>,
{
    let noop = match noop {
        Some(start) => Some(start.await.context("starting the no-op service")?),
        None => None,
    };
    bench::alternate(
        args.rounds as usize,
        labels,
        args.baseline,
        async || -> anyhow::Result<_> {
            let addr = noop.context("no baseline server")?;
            let baseline = Endpoint::from_shared(format!("http://{addr}"))?;
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

async fn run_ext_authz_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    use bench::ext_authz::{ExtAuthzLoad, envoy_like_request, run_load, start_noop_server};
    let target = client::endpoint(&args.addr, &args.tls.clone().into())?;
    let spec = |endpoint: Endpoint| ExtAuthzLoad {
        endpoint,
        concurrency: args.concurrency,
        connections: args.connections,
        duration: args.duration,
        warmup: args.warmup,
        request: envoy_like_request(&args.key, &args.method, &args.path),
    };
    println!(
        "ext_authz load: {} {} — {} callers on {} connections, {:?} warm-up, {:?} measured",
        args.method, args.path, args.concurrency, args.connections, args.warmup, args.duration
    );
    let noop = args.baseline.then(start_noop_server);
    let labels = bench::Labels {
        baseline: "no-op ext_authz",
        target: "rolegate",
    };
    compare(&args, target, labels, noop, async |endpoint| {
        run_load(&spec(endpoint)).await
    })
    .await
}
