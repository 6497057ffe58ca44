//! `rolegate bench-etcd`: the etcd origin's speed, every figure a ratio against etcd itself
//! measured in the same run, round after round (the machine's speed drifts by the minute):
//!
//! - **propagation**: an Admin write through one instance until a Check with its revision as
//!   `min_revision` has answered on every instance, against etcd's own put until the event has
//!   reached as many watchers;
//! - **writes**: single-key Admin writes from concurrent clients through one instance, against
//!   raw etcd puts of a value of the same size from as many clients;
//! - **apply**: one `Apply` of thousands of new keys, against one etcd transaction of as many puts;
//! - **check**: Check throughput on an instance on etcd, against one serving the same state
//!   from the policy file;
//! - **start**: from a large state (a policy loaded into etcd in the layout), the time until an
//!   instance is ready against a plain paged read of the prefix, and its resident memory
//!   against the policy-file origin's with the same file.
//!
//! The instances are `rolegate serve` processes of this binary, on loopback ports.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rolegate::{
    domain::key::{SecretHash, generate_prefix},
    grpc::pb::{self, admin_client::AdminClient, authorizer_client::AuthorizerClient},
    origin::etcd::{
        EtcdConnect, PAGE,
        pb::etcdserverpb::{
            PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
            kv_client::KvClient, request_op, watch_client::WatchClient, watch_request,
        },
        raw,
    },
};
use tokio::{sync::mpsc, task::JoinSet};
use tonic::{
    Request,
    transport::{Channel, Endpoint},
};

use super::{
    CheckTarget,
    load::{self, LoadShape},
    rounds::{self, Labels},
};
use crate::cli::{client::Target, output::say};

/// The longest one instance may take to become ready (a bound: a million keys take seconds).
const READY_WITHIN: Duration = Duration::from_secs(600);

/// The longest one write may take to become visible everywhere before the run is failed.
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub(crate) struct BenchEtcdArgs {
    /// A client URL of the etcd to measure on (a cluster of one's own: prefixes under
    /// /bench-etcd- are written). Its --max-txn-ops and --max-request-bytes must hold an
    /// Apply of --apply-keys keys (see docs/etcd.md).
    #[arg(long, env = "ROLEGATE_ETCD_ENDPOINTS")]
    etcd: String,
    /// The figure to measure; `all` is every one but `start`, which needs --policy.
    #[arg(long, value_enum, default_value_t = Figure::All)]
    figure: Figure,
    /// Rounds of each figure, each the etcd baseline and then rolegate.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,
    /// The policy the instances start with (on an empty prefix, with --seed).
    #[arg(long, default_value = "deploy/examples/policy.yaml")]
    seed: PathBuf,
    /// A SYSTEM_OWNER key of --seed, for the Admin writes.
    #[arg(long, env = "ROLEGATE_API_KEY", hide_env_values = true)]
    admin_key: String,
    /// A key of --seed allowed the check below (check figure).
    #[arg(long, env = "ROLEGATE_CHECK_KEY", hide_env_values = true)]
    check_key: String,
    #[command(flatten)]
    check: CheckTarget,
    /// propagation: instances that must all see a write (the first takes it).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=64))]
    instances: u64,
    /// propagation: writes per round.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    writes: u64,
    /// writes: concurrent clients.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    clients: u64,
    /// writes, check: how long each side runs per round.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// apply: new keys in one Apply.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    apply_keys: u64,
    /// start: the policy file of the large state (`scripts/policy-1m.py`), loaded into etcd
    /// under its own prefix when that prefix is empty.
    #[arg(long)]
    policy: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Figure {
    Propagation,
    Writes,
    Apply,
    Check,
    Start,
    All,
}

/// A `rolegate serve` of this binary, killed when dropped.
struct Instance {
    child: Child,
    grpc: String,
    log: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    /// Starts `serve` with `args` on free loopback ports; returns it once `/readyz` answers 200,
    /// with the time that took.
    async fn start(args: &[String]) -> anyhow::Result<(Instance, Duration)> {
        let (grpc, http) = (free_port()?, free_port()?);
        let log = std::env::temp_dir().join(format!("rolegate-bench-etcd-{grpc}.log"));
        let exe = std::env::current_exe().context("finding this binary")?;
        let started = Instant::now();
        let child = Command::new(exe)
            .arg("serve")
            .args(args)
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc}")])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("creating the instance's log")?)
            .spawn()
            .context("starting rolegate serve")?;
        let mut instance = Instance {
            child,
            grpc: format!("http://127.0.0.1:{grpc}"),
            log,
        };
        while !ready(http).await {
            if let Some(status) = instance.child.try_wait()? {
                bail!(
                    "rolegate serve {} ended ({status}); its log: {}",
                    args.join(" "),
                    instance.log.display()
                );
            }
            ensure!(
                started.elapsed() < READY_WITHIN,
                "rolegate serve was not ready within {READY_WITHIN:?}; its log: {}",
                instance.log.display()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = started.elapsed();
        let _ = std::fs::remove_file(&instance.log);
        instance.log = PathBuf::new();
        Ok((instance, took))
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(self.grpc.clone())?.connect().await?)
    }

    /// Resident memory now, in bytes (`VmRSS`).
    fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmRSS in /proc/PID/status")?;
        Ok(kb * 1024)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether `GET /readyz` on the HTTP port answers 200.
async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let asked = s
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let mut head = [0u8; 12];
    asked.is_ok() && s.read_exact(&mut head).await.is_ok() && head.ends_with(b" 200")
}

/// `message` with `key` in the `authorization: ApiKey` metadata.
fn authed<T>(key: &str, message: T) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        format!("ApiKey {key}")
            .parse()
            .context("the key has characters that cannot be sent")?,
    );
    Ok(req)
}

/// `values`' median and range, as one line's end.
fn spread(values: &[f64], unit: &str) -> String {
    let median = rounds::median(values).unwrap_or_default();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "median {median:.3}{unit} (range {min:.3}–{max:.3}) of {} rounds",
        values.len()
    )
}

fn ms(d: u64) -> f64 {
    d as f64 / 1000.0
}

pub(crate) async fn run(args: BenchEtcdArgs) -> anyhow::Result<()> {
    let etcd = Endpoint::from_shared(args.etcd.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to etcd at {}", args.etcd))?;
    let tag = generate_prefix()[..8].to_ascii_lowercase();
    let prefix = format!("/bench-etcd-{tag}/");
    let bench = Bench {
        args: &args,
        etcd,
        prefix,
        tag,
    };
    let all = args.figure == Figure::All;
    say!(
        "etcd {}; {} rounds per figure, each etcd first, then rolegate",
        args.etcd,
        args.rounds
    );
    if matches!(
        args.figure,
        Figure::Propagation | Figure::Writes | Figure::Apply | Figure::Check | Figure::All
    ) {
        // The instances of the small state, on one prefix: the first bootstraps it from --seed.
        let wanted = match args.figure {
            Figure::Propagation | Figure::All => args.instances as usize,
            _ => 1,
        };
        let mut instances = bench.instances(wanted).await?;
        if all || args.figure == Figure::Propagation {
            bench.propagation(&instances).await?;
        }
        // The other figures measure one instance: the rest would only take the CPU from it.
        instances.truncate(1);
        if all || args.figure == Figure::Writes {
            bench.writes(&instances[0]).await?;
        }
        if all || args.figure == Figure::Apply {
            bench.apply(&instances[0]).await?;
        }
        if all || args.figure == Figure::Check {
            bench.check(&instances[0]).await?;
        }
    }
    if args.figure == Figure::Start || (all && args.policy.is_some()) {
        let policy = args
            .policy
            .as_deref()
            .context("--figure start needs --policy FILE (scripts/policy-1m.py writes one)")?;
        bench.start(policy).await?;
    }
    Ok(())
}

struct Bench<'a> {
    args: &'a BenchEtcdArgs,
    etcd: Channel,
    /// The prefix of this run's small state.
    prefix: String,
    /// A tag naming this run's objects.
    tag: String,
}

impl Bench<'_> {
    fn connect(&self) -> EtcdConnect {
        EtcdConnect {
            endpoints: vec![self.args.etcd.clone()],
            tls: Default::default(),
            user: None,
            dial_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(60),
        }
    }

    /// `n` instances on this run's prefix, the first bootstrapping it from --seed.
    async fn instances(&self, n: usize) -> anyhow::Result<Vec<Instance>> {
        let secret: [u8; 16] = rand::random();
        let hash = SecretHash::of_secret(&hex::encode(secret)).to_hex();
        let args = vec![
            "--etcd-endpoints".to_owned(),
            self.args.etcd.clone(),
            "--etcd-prefix".to_owned(),
            self.prefix.clone(),
            "--seed".to_owned(),
            self.args.seed.display().to_string(),
            "--bootstrap-key-sha256".to_owned(),
            hash,
            "--max-message-bytes".to_owned(),
            (64 * 1024 * 1024).to_string(),
        ];
        let mut started = Vec::with_capacity(n);
        for _ in 0..n {
            started.push(Instance::start(&args).await?.0);
        }
        say!("{n} rolegate instance(s) on etcd, prefix {}", self.prefix);
        Ok(started)
    }

    /// Creates a team, and per key a user of it and a team key; returns the keys' prefixes.
    async fn keys(
        &self,
        admin: &mut AdminClient<Channel>,
        name: &str,
        n: usize,
    ) -> anyhow::Result<Vec<String>> {
        let key = &self.args.admin_key;
        let team = format!("{name}-{}", self.tag);
        admin
            .create_team(authed(
                key,
                pb::TeamRequest {
                    team: Some(pb::Team {
                        id: team.clone(),
                        name: name.into(),
                        active: true,
                    }),
                },
            )?)
            .await
            .with_context(|| format!("creating team {team}"))?;
        let mut prefixes = Vec::with_capacity(n);
        for i in 0..n {
            let user = format!("{team}-{i}");
            admin
                .create_user(authed(
                    key,
                    pb::UserRequest {
                        user: Some(pb::User {
                            id: user.clone(),
                            name: name.into(),
                            active: true,
                            teams: vec![team.clone()],
                        }),
                    },
                )?)
                .await
                .with_context(|| format!("creating user {user}"))?;
            let prefix = format!("{}{}{i:04}", &name[..1].to_ascii_uppercase(), self.tag);
            admin
                .create_key(authed(
                    key,
                    pb::CreateKeyRequest {
                        prefix: prefix.clone(),
                        key_type: pb::KeyType::Team as i32,
                        user,
                        team: team.clone(),
                        ..Default::default()
                    },
                )?)
                .await
                .with_context(|| format!("creating key {prefix}"))?;
            prefixes.push(prefix);
        }
        Ok(prefixes)
    }

    /// Propagation: p99 of write → visible on every instance, against etcd's put → event on
    /// as many watchers.
    async fn propagation(&self, instances: &[Instance]) -> anyhow::Result<()> {
        let n = instances.len();
        let writes = self.args.writes as usize;
        let mut admin = AdminClient::new(instances[0].channel().await?);
        let key = self.keys(&mut admin, "prop", 1).await?.remove(0);
        let mut checkers = Vec::with_capacity(n);
        for i in instances {
            checkers.push(AuthorizerClient::new(i.channel().await?));
        }
        let watchers = Watchers::open(&self.args.etcd, n).await?;
        say!(
            "propagation: a write until it is visible on {n} instances (a Check with its revision as min_revision answered on each), {writes} writes per round; etcd: a put until its event reached {n} watchers"
        );
        let (mut ratios, mut p99s) = (Vec::new(), Vec::new());
        for round in 1..=self.args.rounds {
            let base = watchers.measure(&self.etcd, writes).await?;
            let ours =
                write_until_visible(&mut admin, &checkers, &self.args.admin_key, &key, writes)
                    .await?;
            let (b, o) = (
                ms(base.value_at_quantile(0.99)),
                ms(ours.value_at_quantile(0.99)),
            );
            say!(
                "round {round}  etcd p50 {:.2} ms p99 {b:.2} ms   rolegate p50 {:.2} ms p99 {o:.2} ms max {:.2} ms   ratio of p99s {:.2}",
                ms(base.value_at_quantile(0.5)),
                ms(ours.value_at_quantile(0.5)),
                ms(ours.max()),
                o / b
            );
            ratios.push(o / b);
            p99s.push(o);
        }
        say!("propagation p99 / etcd's p99: {}", spread(&ratios, "×"));
        say!("propagation p99: {}", spread(&p99s, " ms"));
        Ok(())
    }

    /// Writes: writes/s of `clients` Admin writers against as many raw etcd putters.
    async fn writes(&self, instance: &Instance) -> anyhow::Result<()> {
        let clients = self.args.clients as usize;
        let mut admin = AdminClient::new(instance.channel().await?);
        let keys = self.keys(&mut admin, "writes", clients).await?;
        let size = self.record_size(&keys[0]).await?;
        say!(
            "writes: {clients} clients, each updating its own key's expiry through the Admin API, {:?} per round; etcd: {clients} clients putting {size}-byte values (a key's record) to their own key",
            self.args.duration
        );
        let mut ratios = Vec::new();
        for round in 1..=self.args.rounds {
            let base = self.etcd_puts(clients, size).await?;
            let ours = self.admin_writes(instance, &keys).await?;
            say!(
                "round {round}  etcd {base:.0} puts/s   rolegate {ours:.0} writes/s   ratio {:.3}",
                ours / base
            );
            ratios.push(ours / base);
        }
        say!("writes/s / etcd's puts/s: {}", spread(&ratios, "×"));
        Ok(())
    }

    /// The size of a key's record in etcd.
    async fn record_size(&self, prefix: &str) -> anyhow::Result<usize> {
        let key = format!("{}o/key/{prefix}", self.prefix).into_bytes();
        let got = KvClient::new(self.etcd.clone())
            .range(RangeRequest {
                key,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(got
            .kvs
            .first()
            .context("the key's record is not in etcd")?
            .value
            .len())
    }

    async fn etcd_puts(&self, clients: usize, size: usize) -> anyhow::Result<f64> {
        let until = Instant::now() + self.args.duration;
        let mut tasks = JoinSet::new();
        for i in 0..clients {
            let channel = Endpoint::from_shared(self.args.etcd.clone())?
                .connect()
                .await?;
            let key = format!("/bench-etcd-{}-puts/{i}", self.tag).into_bytes();
            tasks.spawn(async move {
                let mut kv = KvClient::new(channel);
                let mut done = 0u64;
                while Instant::now() < until {
                    kv.put(PutRequest {
                        key: key.clone(),
                        value: vec![b'x'; size],
                        ..Default::default()
                    })
                    .await?;
                    done += 1;
                }
                Ok::<_, tonic::Status>(done)
            });
        }
        let started = Instant::now();
        let mut done = 0;
        while let Some(n) = tasks.join_next().await {
            done += n??;
        }
        Ok(done as f64 / started.elapsed().as_secs_f64())
    }

    async fn admin_writes(&self, instance: &Instance, keys: &[String]) -> anyhow::Result<f64> {
        let until = Instant::now() + self.args.duration;
        let mut tasks = JoinSet::new();
        for prefix in keys {
            let mut admin = AdminClient::new(instance.channel().await?);
            let (prefix, key) = (prefix.clone(), self.args.admin_key.clone());
            tasks.spawn(async move {
                let mut done = 0u64;
                while Instant::now() < until {
                    done += 1;
                    let update = pb::UpdateKeyRequest {
                        prefix: prefix.clone(),
                        expires_at: Some(4_102_444_800 + done as i64),
                        ..Default::default()
                    };
                    admin.update_key(authed(&key, update)?).await?;
                }
                Ok::<_, anyhow::Error>(done)
            });
        }
        let started = Instant::now();
        let mut done = 0;
        while let Some(n) = tasks.join_next().await {
            done += n??;
        }
        Ok(done as f64 / started.elapsed().as_secs_f64())
    }

    /// Apply: one `Apply` of --apply-keys new keys, against one etcd transaction of as many
    /// puts of the same size.
    async fn apply(&self, instance: &Instance) -> anyhow::Result<()> {
        let n = self.args.apply_keys as usize;
        let mut admin = AdminClient::new(instance.channel().await?)
            .max_encoding_message_size(usize::MAX)
            .max_decoding_message_size(usize::MAX);
        let probe = self.keys(&mut admin, "apply", 1).await?.remove(0);
        let size = self.record_size(&probe).await?;
        say!(
            "apply: one Apply of {n} new keys (one revision); etcd: one transaction of {n} puts of {size} bytes"
        );
        let (mut ratios, mut times) = (Vec::new(), Vec::new());
        for round in 1..=self.args.rounds {
            let ops: Vec<RequestOp> = (0..n)
                .map(|i| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: format!("/bench-etcd-{}-txn/{round}/{i}", self.tag).into_bytes(),
                        value: vec![b'x'; size],
                        ..Default::default()
                    })),
                })
                .collect();
            let started = Instant::now();
            KvClient::new(self.etcd.clone())
                .max_encoding_message_size(usize::MAX)
                .txn(TxnRequest {
                    success: ops,
                    ..Default::default()
                })
                .await
                .context("etcd's transaction (raise --max-txn-ops and --max-request-bytes)")?;
            let base = started.elapsed().as_secs_f64();
            let document = self.apply_document(round, n);
            let started = Instant::now();
            let answer = admin
                .apply(authed(
                    &self.args.admin_key,
                    pb::ApplyRequest {
                        document,
                        ..Default::default()
                    },
                )?)
                .await
                .context("the Apply")?
                .into_inner();
            let ours = started.elapsed().as_secs_f64();
            ensure!(
                answer.changes.len() > n,
                "the Apply changed {} objects, not {n} keys and their owners",
                answer.changes.len()
            );
            say!(
                "round {round}  etcd txn {:.0} ms   rolegate Apply {:.0} ms (revision {})   ratio {:.2}",
                base * 1e3,
                ours * 1e3,
                answer.revision,
                ours / base
            );
            ratios.push(ours / base);
            times.push(ours * 1e3);
        }
        say!("Apply time / etcd's txn time: {}", spread(&ratios, "×"));
        say!("Apply of {n} keys: {}", spread(&times, " ms"));
        Ok(())
    }

    /// A policy document of a team, a user and `n` new team keys (nothing pruned).
    fn apply_document(&self, round: u64, n: usize) -> String {
        use std::fmt::Write;
        let team = format!("apply-{}-{round}", self.tag);
        let mut doc = format!(
            "version: 1\nteams:\n  - {{ id: {team}, name: apply, status: active }}\nusers:\n  - {{ id: {team}, name: apply, teams: [{team}] }}\nkeys:\n"
        );
        for i in 0..n {
            let prefix = format!("A{}{round:03}{i:07}", self.tag);
            let hash = SecretHash::of_secret(&prefix).to_hex();
            let _ = writeln!(
                doc,
                "  - {{ prefix: {prefix}, secret_sha256: {hash}, type: team, user: {team}, team: {team}, roles: [DEVELOPER], status: active }}"
            );
        }
        doc
    }

    /// Check: requests/s of an instance on etcd against one serving --seed from the file.
    async fn check(&self, on_etcd: &Instance) -> anyhow::Result<()> {
        let (from_file, _) =
            Instance::start(&["--policy".to_owned(), self.args.seed.display().to_string()]).await?;
        let request = self.args.check.request(self.args.check_key.clone());
        let shape = |grpc: &str| -> anyhow::Result<LoadShape> {
            Ok(LoadShape {
                endpoint: Target::tcp(Endpoint::from_shared(grpc.to_owned())?),
                concurrency: 64,
                connections: 4,
                duration: self.args.duration,
                warmup: Duration::from_secs(1),
            })
        };
        let (file_shape, etcd_shape) = (shape(&from_file.grpc)?, shape(&on_etcd.grpc)?);
        say!(
            "check: 64 callers on 4 connections, the same state from the policy file (baseline) and from etcd"
        );
        let labels = Labels {
            baseline: "policy file",
            target: "etcd",
            ratio_of: "the policy-file origin",
        };
        let done = rounds::alternate(
            self.args.rounds as usize,
            labels,
            true,
            async || load::run_load(&file_shape, request.clone()).await,
            async || load::run_load(&etcd_shape, request.clone()).await,
        )
        .await?;
        let ratios: Vec<f64> = done.iter().filter_map(rounds::Round::ratio).collect();
        ensure!(
            done.iter().all(|r| r.target.allowed == r.target.requests),
            "checks on the etcd-backed instance were not all allowed: is --check-key allowed {} on team {}?",
            self.args.check.entitlement,
            self.args.check.team
        );
        say!(
            "Check requests/s on etcd / policy file: {}",
            spread(&ratios, "×")
        );
        Ok(())
    }

    /// Start: a large state in etcd; ready time against a plain paged read, and resident memory
    /// against the policy-file origin's.
    async fn start(&self, policy: &Path) -> anyhow::Result<()> {
        let name = policy
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!("/bench-etcd-start-{name}/");
        let connect = self.connect();
        if !raw::is_bootstrapped(&connect, &prefix).await? {
            let started = Instant::now();
            let loaded = rolegate::origin::policy_file::load(policy)
                .with_context(|| format!("reading {}", policy.display()))?;
            let written = raw::load_model(&connect, &prefix, &loaded.model, 5_000).await?;
            say!(
                "start: loaded {} objects of {} into etcd under {prefix} in {:.1?} (revision {})",
                written.objects,
                policy.display(),
                started.elapsed(),
                written.revision
            );
        }
        say!(
            "start: an instance on etcd until /readyz answers 200, against a plain read of the prefix in pages of {PAGE} keys; resident memory once ready against `serve --policy` of the same file"
        );
        let on_etcd = [
            "--etcd-endpoints".to_owned(),
            self.args.etcd.clone(),
            "--etcd-prefix".to_owned(),
            prefix.clone(),
        ];
        let from_file = ["--policy".to_owned(), policy.display().to_string()];
        let (mut ratios, mut rss_ratios, mut readies) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=self.args.rounds {
            let (keys, base) = read_prefix(&self.etcd, &prefix).await?;
            let (instance, ready) = Instance::start(&on_etcd).await?;
            let etcd_rss = instance.rss()?;
            drop(instance);
            let (file_instance, file_ready) = Instance::start(&from_file).await?;
            let file_rss = file_instance.rss()?;
            drop(file_instance);
            let (ratio, rss_ratio) = (
                ready.as_secs_f64() / base.as_secs_f64(),
                etcd_rss as f64 / file_rss as f64,
            );
            say!(
                "round {round}  etcd read of {keys} keys {:.2} s   ready on etcd {:.2} s (ratio {ratio:.2})   RSS on etcd {} MiB, from the file {} MiB (ready in {:.2} s), ratio {rss_ratio:.3}",
                base.as_secs_f64(),
                ready.as_secs_f64(),
                etcd_rss >> 20,
                file_rss >> 20,
                file_ready.as_secs_f64(),
            );
            ratios.push(ratio);
            rss_ratios.push(rss_ratio);
            readies.push(ready.as_secs_f64());
        }
        say!("ready time / etcd's read time: {}", spread(&ratios, "×"));
        say!("ready time: {}", spread(&readies, " s"));
        say!(
            "RSS on etcd / from the policy file: {}",
            spread(&rss_ratios, "×")
        );
        Ok(())
    }
}

/// Reads every key under `prefix` at one revision, in pages of [`PAGE`]: how many, how long.
async fn read_prefix(etcd: &Channel, prefix: &str) -> anyhow::Result<(usize, Duration)> {
    let mut kv = KvClient::new(etcd.clone()).max_decoding_message_size(usize::MAX);
    // Every prefix here ends in '/': the range ends where '/' becomes '0'.
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut key = prefix.as_bytes().to_vec();
    let (mut at, mut keys) = (0, 0);
    let started = Instant::now();
    loop {
        let page = kv
            .range(RangeRequest {
                key: key.clone(),
                range_end: end.clone(),
                limit: PAGE,
                revision: at,
                ..Default::default()
            })
            .await?
            .into_inner();
        if at == 0 {
            at = page.header.map_or(0, |h| h.revision);
        }
        keys += page.kvs.len();
        match page.kvs.last() {
            Some(last) if page.more => {
                key = last.key.clone();
                key.push(0);
            }
            _ => break,
        }
    }
    Ok((keys, started.elapsed()))
}

/// Writes `writes` times, one after the other, each until a Check with its revision as
/// `min_revision` has answered on every checker; the latencies in µs.
async fn write_until_visible(
    admin: &mut AdminClient<Channel>,
    checkers: &[AuthorizerClient<Channel>],
    admin_key: &str,
    prefix: &str,
    writes: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = Histogram::<u64>::new(3)?;
    for n in 0..writes {
        let started = Instant::now();
        let update = pb::UpdateKeyRequest {
            prefix: prefix.to_owned(),
            expires_at: Some(4_102_444_800 + n as i64),
            ..Default::default()
        };
        let revision = admin
            .update_key(authed(admin_key, update)?)
            .await
            .context("the write")?
            .into_inner()
            .revision;
        let mut checks = JoinSet::new();
        for checker in checkers {
            let mut checker = checker.clone();
            let request = pb::CheckRequest {
                api_key: admin_key.to_owned(),
                entitlement: "keys.read".into(),
                resource: Some(pb::Resource {
                    team_id: String::new(),
                    owner_key_prefix: prefix.to_owned(),
                    owner_user_id: String::new(),
                }),
                min_revision: revision,
            };
            checks.spawn(async move { checker.check(request).await });
        }
        while let Some(answer) = checks.join_next().await {
            answer?.context("a Check with min_revision")?;
        }
        latencies.record(started.elapsed().as_micros() as u64)?;
    }
    Ok(latencies)
}

/// Watchers of one etcd key, each on its own connection, as instances each hold their own.
struct Watchers {
    key: Vec<u8>,
    count: usize,
    /// (revision, when) of every event any watcher received.
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<(i64, Instant)>>,
    _streams: JoinSet<()>,
}

impl Watchers {
    async fn open(url: &str, count: usize) -> anyhow::Result<Watchers> {
        let key = format!("/bench-etcd-watch/{}", generate_prefix()).into_bytes();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut streams = JoinSet::new();
        for _ in 0..count {
            let channel = Endpoint::from_shared(url.to_owned())?.connect().await?;
            let (requests, incoming) = mpsc::channel(1);
            requests
                .send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(
                        WatchCreateRequest {
                            key: key.clone(),
                            ..Default::default()
                        },
                    )),
                })
                .await?;
            let mut stream = WatchClient::new(channel)
                .watch(tokio_stream::wrappers::ReceiverStream::new(incoming))
                .await?
                .into_inner();
            let created = stream.message().await?.context("etcd ended the watch")?;
            ensure!(created.created, "etcd did not create the watch");
            let tx = tx.clone();
            streams.spawn(async move {
                let _requests = requests;
                while let Ok(Some(response)) = stream.message().await {
                    let now = Instant::now();
                    for event in response.events {
                        let revision = event.kv.map_or(0, |kv| kv.mod_revision);
                        let _ = tx.send((revision, now));
                    }
                }
            });
        }
        Ok(Watchers {
            key,
            count,
            events: tokio::sync::Mutex::new(rx),
            _streams: streams,
        })
    }

    /// Puts the key `writes` times, one after the other, each until every watcher has its
    /// event; the latencies in µs.
    async fn measure(&self, etcd: &Channel, writes: usize) -> anyhow::Result<Histogram<u64>> {
        let mut kv = KvClient::new(etcd.clone());
        let mut events = self.events.lock().await;
        let mut latencies = Histogram::<u64>::new(3)?;
        for n in 0..writes {
            let started = Instant::now();
            let put = kv
                .put(PutRequest {
                    key: self.key.clone(),
                    value: n.to_string().into_bytes(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let revision = put.header.map_or(0, |h| h.revision);
            let (mut seen, mut last) = (0, started);
            while seen < self.count {
                let (r, at) = tokio::time::timeout(VISIBLE_WITHIN, events.recv())
                    .await
                    .context("a watcher did not get the event")?
                    .context("a watch ended")?;
                if r == revision {
                    seen += 1;
                    last = last.max(at);
                }
            }
            latencies.record(last.duration_since(started).as_micros() as u64)?;
        }
        Ok(latencies)
    }
}
