//! A seeded synthetic world for benchmarks, tests and examples: one copy, `#[path]`-included by
//! `benches/decide.rs`, `tests/no_alloc.rs` and `examples/memory_1m.rs`.
//!
//! Deterministic for a given `(keys, seed)`: a xorshift64* generator, no `rand`. The shape
//! follows the platform: about 1,000 teams (fewer for small worlds), users with one or two team
//! keys each in one team, roles drawn from DATA_SCIENTIST / DEVELOPER / ACCOUNT_ADMIN / AUDITOR
//! (a tenth of the keys with two of them), about 5% project keys (role SYSTEM_KEY, one to three
//! keys per project, projects belonging to teams), and about 1% inactive keys. Prefixes and
//! secrets are 20 characters of `[A-Za-z0-9]`, as the SDKs make them.
//!
//! Every active key yields a [`Probe`]: the full key string and a resource that its own roles
//! allow for `jobs.read` (the key's team, owned by the key itself), so that every probe is an
//! allowed check whatever the role: AUDITOR by ALL, ACCOUNT_ADMIN by TEAM, the others by OWN.

#![allow(dead_code)] // each includer uses a different part

use std::sync::Arc;

use compact_str::CompactString;
use rolegate::domain::{
    Expiry, KeySpec, KeyStatus, KeyType, Project, ResourceRef, SecretHash, Team, TeamList, User,
    model::{Change, RoleLists},
};
use rolegate::state::{ChangeSet, State};

/// The entitlement every probe is allowed.
pub(crate) const ENTITLEMENT: &str = "jobs.read";

/// The user roles keys are drawn from, with their weights (out of 100).
const USER_ROLES: [(&str, u64); 4] = [
    ("DATA_SCIENTIST", 40),
    ("DEVELOPER", 35),
    ("ACCOUNT_ADMIN", 15),
    ("AUDITOR", 10),
];

/// xorshift64*: small, fast, good enough to scatter ids and roles.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        // Never zero, and decorrelated from small seeds.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub(crate) fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// `len` characters of `[A-Za-z0-9]`.
    pub(crate) fn alnum(&mut self, len: usize) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| CHARS[self.below(CHARS.len() as u64) as usize] as char)
            .collect()
    }

    fn user_role(&mut self) -> &'static str {
        let mut roll = self.below(100);
        for (role, weight) in USER_ROLES {
            if roll < weight {
                return role;
            }
            roll -= weight;
        }
        unreachable!("the weights add up to 100")
    }

    /// Fisher–Yates.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// An allowed check: [`Probe::key`] may use [`ENTITLEMENT`] on [`Probe::resource`].
pub(crate) struct Probe {
    /// `prefix.secret`, held inline: a server decodes the presented key into a buffer that is
    /// still in the CPU cache when it checks it, so a probe's key must not cost a cache miss of
    /// its own (as a separately allocated string read in shuffled order would).
    key: [u8; KEY_LEN],
    /// The key's team (a project key's is its project's).
    pub(crate) team: Arc<str>,
}

/// Length of a generated prefix (and of a secret).
pub(crate) const PREFIX_LEN: usize = 20;
/// Length of a generated key: prefix, dot, secret.
const KEY_LEN: usize = 2 * PREFIX_LEN + 1;

impl Probe {
    fn new(key: &str, team: &Arc<str>) -> Self {
        Probe {
            key: key
                .as_bytes()
                .try_into()
                .expect("generated keys have KEY_LEN bytes"),
            team: team.clone(),
        }
    }

    /// The whole key, `prefix.secret`.
    pub(crate) fn key(&self) -> &str {
        std::str::from_utf8(&self.key).expect("generated keys are ASCII")
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.key()[..PREFIX_LEN]
    }

    /// A named resource the key's own grants cover: a job of its team that it owns.
    pub(crate) fn resource(&self) -> ResourceRef<'_> {
        ResourceRef {
            team_id: &self.team,
            owner_key_prefix: self.prefix(),
            owner_user_id: "",
        }
    }

    /// The same prefix with a secret that does not match.
    pub(crate) fn wrong_key(&self) -> String {
        let secret = &self.key()[PREFIX_LEN + 1..];
        // Rotating the secret by one character keeps it well formed and makes it differ
        // (generated secrets are never one repeated character, in practice).
        format!("{}.{}{}", self.prefix(), &secret[1..], &secret[..1])
    }
}

/// A generated world: the changes that load it, and one probe per active key, shuffled.
pub(crate) struct World {
    pub(crate) changes: Vec<Change>,
    pub(crate) probes: Vec<Probe>,
    pub(crate) keys: usize,
    pub(crate) teams: usize,
    pub(crate) users: usize,
    pub(crate) projects: usize,
}

/// Draws a key's prefix, secret and status; an active key gets a probe.
fn new_key(
    rng: &mut Rng,
    probes: &mut Vec<Probe>,
    team: &Arc<str>,
) -> (CompactString, SecretHash, KeyStatus) {
    let prefix = rng.alnum(PREFIX_LEN);
    let secret = rng.alnum(PREFIX_LEN);
    let status = if rng.percent(1) {
        KeyStatus::Inactive
    } else {
        KeyStatus::Active
    };
    if status == KeyStatus::Active {
        probes.push(Probe::new(&format!("{prefix}.{secret}"), team));
    }
    (
        CompactString::from(prefix),
        SecretHash::of_secret(&secret),
        status,
    )
}

/// Generates a world of exactly `keys` keys.
pub(crate) fn generate(keys: usize, seed: u64) -> World {
    let mut rng = Rng::new(seed);
    let team_count = (keys / 10).clamp(1, 1_000);
    let mut role_lists = RoleLists::default();
    let mut changes = Vec::with_capacity(keys + keys / 2 + team_count);
    let mut probes = Vec::with_capacity(keys);

    let team_ids: Vec<Arc<str>> = (0..team_count)
        .map(|t| Arc::from(format!("team-{t:04}")))
        .collect();
    let team_lists: Vec<TeamList> = team_ids.iter().map(|t| [t.clone()].into()).collect();
    for id in &team_ids {
        changes.push(Change::PutTeam(Team {
            id: id.clone(),
            name: format!("Team {id}"),
            active: true,
        }));
    }

    let mut key_specs: Vec<Arc<KeySpec>> = Vec::with_capacity(keys);

    let (mut users, mut projects) = (0usize, 0usize);
    let mut made = 0usize;
    while made < keys {
        let t = rng.below(team_count as u64) as usize;
        let team = &team_ids[t];
        if rng.percent(5) {
            // A project of the team, with one to three SYSTEM_KEY keys.
            let id: Arc<str> = Arc::from(format!("proj-{projects:07}"));
            projects += 1;
            changes.push(Change::PutProject(Project {
                id: id.clone(),
                team: team.clone(),
                name: format!("Project {id}"),
            }));
            let n = (1 + rng.below(3) as usize).min(keys - made);
            for _ in 0..n {
                let (prefix, secret_hash, status) = new_key(&mut rng, &mut probes, team);
                key_specs.push(Arc::new(KeySpec {
                    prefix,
                    secret_hash,
                    key_type: KeyType::Project,
                    owner: id.clone(),
                    team: None,
                    roles: role_lists.canonical(["SYSTEM_KEY"]),
                    status,
                    expires_at: Expiry::NEVER,
                }));
            }
            made += n;
        } else {
            // A user of the team, with one or two keys.
            let id: Arc<str> = Arc::from(format!("user-{users:07}"));
            users += 1;
            changes.push(Change::PutUser(Arc::new(User {
                id: id.clone(),
                name: format!("User {id}").into(),
                active: true,
                // One shared list per team, as the origins intern them.
                teams: team_lists[t].clone(),
            })));
            let n = (1 + rng.below(2) as usize).min(keys - made);
            for _ in 0..n {
                let (prefix, secret_hash, status) = new_key(&mut rng, &mut probes, team);
                let roles = if rng.percent(10) {
                    role_lists.canonical([rng.user_role(), rng.user_role()])
                } else {
                    role_lists.canonical([rng.user_role()])
                };
                key_specs.push(Arc::new(KeySpec {
                    prefix,
                    secret_hash,
                    key_type: KeyType::Team,
                    owner: id.clone(),
                    team: Some(team.clone()),
                    roles,
                    status,
                    expires_at: Expiry::NEVER,
                }));
            }
            made += n;
        }
    }
    // Keys after the users and projects they refer to, as `Model::diff` orders them.
    changes.extend(key_specs.into_iter().map(Change::PutKey));
    // Adjacent probes would otherwise share a requestor: scatter them.
    rng.shuffle(&mut probes);
    World {
        changes,
        probes,
        keys,
        teams: team_count,
        users,
        projects,
    }
}

/// Generates a world and loads it into a new [`State`] in one change set. Returns the state and
/// the probes (the changes are consumed).
pub(crate) fn load(keys: usize, seed: u64) -> (State, Vec<Probe>) {
    let world = generate(keys, seed);
    let state = State::new();
    state
        .apply(ChangeSet {
            revision: 1,
            changes: world.changes,
        })
        .expect("the first change set applies");
    assert_eq!(state.counts().keys, keys, "generated prefixes are unique");
    (state, world.probes)
}
