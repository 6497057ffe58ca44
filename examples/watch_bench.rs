//! Watch benchmarks, each against a real gRPC server on a loopback socket in this process:
//!
//! - `latency`: 1,000 subscribers; time from a committed change (just before `State::apply`) to
//!   the end-of-revision event received by each subscriber; p50 / p99 / max.
//! - `idle`: resident memory (VmRSS) the server adds for 10,000 idle watchers, which a child
//!   process opens, so that the figure is the server's alone.
//! - `catchup`: a follower (`UpstreamOrigin`, as `serve --upstream` runs it) catches up from a
//!   full snapshot of a hub holding 1,000,000 keys; time until it has applied the hub's revision.
//!
//! `cargo run --release --example watch_bench -- [latency|idle|catchup|all]`

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rolegate::{
    domain::{
        Expiry, KeySpec, KeyStatus, KeyType, Project, SecretHash, Team, TeamList, User,
        model::{Change, canonical_roles},
    },
    grpc::{
        AuthorizerService,
        authorizer::AuthorizerLimits,
        pb::{self, authorizer_client::AuthorizerClient, authorizer_server::AuthorizerServer},
    },
    state::{ChangeSet, State, changelog::LogLimits},
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

#[path = "../benches/support/world.rs"]
mod world;

// The allocator of the `rolegate` binary, so that the figures are those of `serve`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

async fn serve(state: Arc<State>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
                AuthorizerServer::new(AuthorizerService::new(state, AuthorizerLimits::default()))
                    .max_encoding_message_size(64 * 1024 * 1024),
            )
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// The key the subscribers present: a project key with the FOLLOWER role (Watch, with secret
/// hashes). No benchmark changes it, so each revision's grant check is one cache lookup.
const FOLLOWER_KEY: &str = "BenchFollowerKey01.bench-follower-secret";

/// A small world plus one owner key (SYSTEM_OWNER) and one follower key (FOLLOWER), applied as
/// revision 1.
fn owner_changes() -> Vec<Change> {
    vec![
        Change::PutTeam(Team {
            id: "bench-owners".into(),
            name: "Bench owners".into(),
            active: true,
        }),
        Change::PutUser(Arc::new(User {
            id: "bench-owner".into(),
            name: "Bench owner".into(),
            active: true,
            teams: TeamList::default(),
        })),
        Change::PutKey(Arc::new(KeySpec {
            prefix: "BenchOwnerKey0001".into(),
            secret_hash: SecretHash::of_secret("bench-owner-secret"),
            key_type: KeyType::Team,
            owner: "bench-owner".into(),
            team: Some("bench-owners".into()),
            roles: canonical_roles(["SYSTEM_OWNER"]),
            status: KeyStatus::Active,
            expires_at: Expiry::NEVER,
        })),
        Change::PutProject(Project {
            id: "bench-followers".into(),
            team: "bench-owners".into(),
            name: "Bench followers".into(),
        }),
        Change::PutKey(Arc::new(KeySpec {
            prefix: "BenchFollowerKey01".into(),
            secret_hash: SecretHash::of_secret("bench-follower-secret"),
            key_type: KeyType::Project,
            owner: "bench-followers".into(),
            team: None,
            roles: canonical_roles(["FOLLOWER"]),
            status: KeyStatus::Active,
            expires_at: Expiry::NEVER,
        })),
    ]
}

async fn channels(url: &str, n: usize) -> Vec<AuthorizerClient<tonic::transport::Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(AuthorizerClient::connect(url.to_owned()).await.unwrap());
    }
    out
}

async fn latency() {
    const SUBSCRIBERS: usize = 1000;
    const REVISIONS: u64 = 200;
    let state = Arc::new(State::new());
    let mut changes = world::generate(10_000, 7).changes;
    changes.extend(owner_changes());
    state
        .apply(ChangeSet {
            revision: 1,
            changes,
        })
        .unwrap();
    let url = serve(state.clone()).await;
    let clients = channels(&url, SUBSCRIBERS / 100).await;
    // Commit instants, as nanoseconds since `epoch`, by revision.
    let epoch = Instant::now();
    let committed: Arc<Vec<AtomicU64>> =
        Arc::new((0..REVISIONS + 2).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut c = clients[i % clients.len()].clone();
        let committed = committed.clone();
        let mut stream = c
            .watch(pb::WatchRequest {
                start_revision: 2,
                api_key: FOLLOWER_KEY.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        tasks.push(tokio::spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let mut seen = 0;
            while let Some(ev) = stream.message().await.unwrap() {
                if ev.end_of_revision {
                    let at = epoch.elapsed().as_nanos() as u64;
                    let c = committed[ev.revision as usize].load(Ordering::Acquire);
                    hist.record((at - c) / 1000).unwrap();
                    seen += 1;
                    if seen == REVISIONS {
                        break;
                    }
                }
            }
            hist
        }));
    }
    let base = state.model();
    for r in 0..REVISIONS {
        let revision = r + 2;
        let prefix = format!("LatencyKey{r:06}");
        let key = KeySpec {
            prefix: prefix.as_str().into(),
            ..(**base.keys.get("BenchOwnerKey0001").unwrap()).clone()
        };
        committed[revision as usize].store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
        state
            .apply(ChangeSet {
                revision,
                changes: vec![Change::PutKey(Arc::new(key))],
            })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    println!(
        "latency: {SUBSCRIBERS} subscribers x {REVISIONS} revisions ({} events): commit -> event p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        all.len(),
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.value_at_quantile(0.999),
        all.max()
    );
}

const IDLE_WATCHERS: usize = 10_000;

/// 10,000 idle watchers: the server's resident memory before and after they subscribe. The
/// watchers are opened by a child process (`watch_bench idle-clients URL`), so the figure is the
/// server's alone.
async fn idle() {
    let state = Arc::new(State::new());
    // More watchers than the default limit of a server.
    state.change_log().set_limits(LogLimits {
        max_subscribers: IDLE_WATCHERS,
        ..Default::default()
    });
    let mut changes = world::generate(10_000, 7).changes;
    changes.extend(owner_changes());
    state
        .apply(ChangeSet {
            revision: 1,
            changes,
        })
        .unwrap();
    let url = serve(state.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_mib();
    let mut clients = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["idle-clients", &url])
        .spawn()
        .expect("the watchers' process");
    while state.change_log().status().subscribers < IDLE_WATCHERS as u64 {
        if let Ok(Some(status)) = clients.try_wait() {
            panic!("the watchers' process ended: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_mib();
    println!(
        "idle: {IDLE_WATCHERS} idle watchers over {} connections (opened by another process): server RSS {before:.1} -> {after:.1} MiB (+{:.1} MiB, {:.1} KiB per watcher)",
        IDLE_WATCHERS / 100,
        after - before,
        (after - before) * 1024.0 / IDLE_WATCHERS as f64
    );
    clients.kill().ok();
    clients.wait().ok();
}

/// The child of [`idle`]: opens the watchers and holds them until killed.
async fn idle_clients(url: &str) {
    let clients = channels(url, IDLE_WATCHERS / 100).await;
    let mut streams = Vec::with_capacity(IDLE_WATCHERS);
    for i in 0..IDLE_WATCHERS {
        let mut c = clients[i % clients.len()].clone();
        streams.push(
            c.watch(pb::WatchRequest {
                bookmark_interval_ms: 0,
                api_key: FOLLOWER_KEY.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
        );
    }
    std::future::pending::<()>().await;
}

async fn catchup(keys: usize) {
    let hub = Arc::new(State::new());
    let t = Instant::now();
    let mut changes = world::generate(keys, 7).changes;
    changes.extend(owner_changes());
    let generated = t.elapsed();
    hub.apply(ChangeSet {
        revision: 1,
        changes,
    })
    .unwrap();
    println!(
        "catchup: hub: {} keys generated in {:.2} s, State::apply of them in {:.2} s",
        hub.counts().keys,
        generated.as_secs_f64(),
        (t.elapsed() - generated).as_secs_f64()
    );
    let url = serve(hub.clone()).await;

    // The transfer alone: the snapshot read to its end marker, decoded, nothing applied.
    let t = Instant::now();
    let mut c = AuthorizerClient::connect(url.clone())
        .await
        .unwrap()
        .max_decoding_message_size(64 * 1024 * 1024);
    let mut stream = c
        .watch_batched(pb::WatchRequest {
            snapshot: true,
            include_secret_hashes: true,
            api_key: FOLLOWER_KEY.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut events, mut messages) = (0usize, 0usize);
    'read: while let Some(batch) = stream.message().await.unwrap() {
        messages += 1;
        for ev in batch.events {
            events += 1;
            if matches!(ev.event, Some(pb::watch_event::Event::SnapshotEnd(_))) {
                break 'read;
            }
        }
    }
    drop(stream);
    println!(
        "catchup: snapshot transfer alone (WatchBatched, decoded, not applied): {events} events in {messages} messages, {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let follower_state = Arc::new(State::new());
    let grpc_hub = rolegate::grpc::follow::GrpcHub::new(
        &url,
        FOLLOWER_KEY.into(),
        rolegate::tls::client::ClientTls::default(),
    )
    .unwrap();
    let follower =
        rolegate::origin::upstream::UpstreamOrigin::new(grpc_hub, follower_state.clone());
    let status = follower.view().status;
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    tokio::spawn(follower.follow(stop_rx));
    let mut rev = follower_state.subscribe_revision();
    rev.wait_for(|r| *r >= 1).await.unwrap();
    let took = start.elapsed();
    assert_eq!(follower_state.counts().keys, hub.counts().keys);
    // The timings are recorded just after the revision is published.
    let timing = loop {
        if let Some(t) = status.lock().unwrap().last_snapshot {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    println!(
        "catchup: follower applied a full snapshot of {} keys in {:.2} s (connect, snapshot stream, validate, load): {timing:?}",
        follower_state.counts().keys,
        took.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if which == "latency" || which == "all" {
        latency().await;
    }
    if which == "idle" || which == "all" {
        idle().await;
    }
    if which == "idle-clients" {
        idle_clients(&std::env::args().nth(2).expect("idle-clients URL")).await;
    }
    if which == "catchup" || which == "all" {
        // The hub's key count: 1,000,000 unless given (a smaller world for profiling).
        let keys = std::env::args()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or(1_000_000);
        catchup(keys).await;
    }
}
