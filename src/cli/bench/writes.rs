//! `rolegate bench-writes`: durable single-key writes through the Admin API from concurrent
//! clients, and the latency of a Check issued right after each write with the write's revision
//! as min_revision.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use hdrhistogram::Histogram;
use rolegate::{
    domain::key::generate_prefix,
    grpc::pb::{self, admin_client::AdminClient, authorizer_client::AuthorizerClient},
};
use tonic::transport::Channel;

use crate::cli::{
    client::{Conn, admin, call, channel, failed},
    output::say,
};

#[derive(Args, Debug)]
pub(crate) struct BenchWritesArgs {
    /// Concurrent writers, each updating its own key.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[command(flatten)]
    conn: Conn,
}

/// What one client measured: write latencies, check latencies (µs) and failed calls.
type Measured = (Histogram<u64>, Histogram<u64>, u64);

/// Each client flips its own key's expiry (a durable single-key write), then immediately asks
/// for a Check with the write's revision as min_revision on a separate connection.
pub(crate) async fn run(args: BenchWritesArgs) -> anyhow::Result<()> {
    let conn = &args.conn;
    let keys = set_up(conn, args.clients).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for key in keys {
        let admin = admin(conn).await?;
        let authz = AuthorizerClient::new(channel(conn).await?);
        let (stop, conn) = (stop.clone(), conn.clone());
        tasks.push(tokio::spawn(async move {
            write_and_check(admin, authz, conn, key, stop).await
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut writes = Histogram::<u64>::new(3)?;
    let mut checks = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for t in tasks {
        let (w, c, e) = t.await??;
        writes.add(w)?;
        checks.add(c)?;
        errors += e;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    say!(
        "writes: {} in {:.1?} from {} clients = {:.0} writes/s; latency p50 {:.2} ms, p99 {:.2} ms; {errors} errors",
        writes.len(),
        elapsed,
        args.clients,
        writes.len() as f64 / elapsed.as_secs_f64(),
        ms(&writes, 0.5),
        ms(&writes, 0.99),
    );
    say!(
        "check right after each write (min_revision = the write's revision): {} checks, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        checks.len(),
        ms(&checks, 0.5),
        ms(&checks, 0.99),
        checks.max() as f64 / 1000.0,
    );
    Ok(())
}

/// Creates a team `bench-<tag>`, one user in it per client and a team key for each; returns
/// the keys.
async fn set_up(conn: &Conn, clients: usize) -> anyhow::Result<Vec<String>> {
    let mut setup = admin(conn).await?;
    let tag = generate_prefix()[..8].to_ascii_lowercase();
    let team = format!("bench-{tag}");
    let user = format!("bench-{tag}");
    let bench_team = pb::Team {
        id: team.clone(),
        name: "bench".into(),
        active: true,
    };
    setup
        .create_team(call(
            conn,
            pb::TeamRequest {
                team: Some(bench_team),
            },
        )?)
        .await
        .map_err(failed)?;
    // One user per client: each write touches one key of one requestor, as a platform's
    // writes do.
    let mut keys = Vec::new();
    for i in 0..clients {
        let user = format!("{user}-{i}");
        let member = pb::User {
            id: user.clone(),
            name: "bench".into(),
            active: true,
            teams: vec![team.clone()],
        };
        setup
            .create_user(call(conn, pb::UserRequest { user: Some(member) })?)
            .await
            .map_err(failed)?;
        let key = pb::CreateKeyRequest {
            prefix: format!("Bench{tag}{i:04}"),
            key_type: pb::KeyType::Team as i32,
            user: user.clone(),
            team: team.clone(),
            ..Default::default()
        };
        let r = setup
            .create_key(call(conn, key)?)
            .await
            .map_err(failed)?
            .into_inner();
        keys.push(r.api_key);
    }
    Ok(keys)
}

/// One client: until `stop`, moves its key's expiry by a second and then checks the key with
/// the write's revision as min_revision.
async fn write_and_check(
    mut admin: AdminClient<Channel>,
    mut authz: AuthorizerClient<Channel>,
    conn: Conn,
    key: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Measured> {
    let prefix = key
        .split_once('.')
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default();
    let mut writes = Histogram::<u64>::new(3)?;
    let mut checks = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    let far = 4_102_444_800; // 2100-01-01
    let mut n: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let t = Instant::now();
        let update = pb::UpdateKeyRequest {
            prefix: prefix.clone(),
            expires_at: Some(far + n),
            ..Default::default()
        };
        let revision = match admin.update_key(call(&conn, update)?).await {
            Ok(r) => r.into_inner().revision,
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        writes.record(t.elapsed().as_micros() as u64)?;
        let t = Instant::now();
        let checked = authz
            .check(pb::CheckRequest {
                api_key: key.clone(),
                entitlement: "keys.read".into(),
                resource: Some(pb::Resource {
                    team_id: String::new(),
                    owner_key_prefix: prefix.clone(),
                    owner_user_id: String::new(),
                }),
                min_revision: revision,
            })
            .await;
        match checked {
            Ok(r) if r.get_ref().allowed => checks.record(t.elapsed().as_micros() as u64)?,
            _ => errors += 1,
        }
    }
    Ok((writes, checks, errors))
}
