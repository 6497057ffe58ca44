//! The policy file origin: a declarative YAML description of the whole state
//! (`../shared/design/policy-file.md`), parsed with locations so that every error names the
//! file, line, column and object; watched while serving and reloaded into a new revision.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    domain::{
        Catalog, Expiry, Grant, Interner, KeySpec, KeyStatus, KeyType, Model, Project, Role,
        RoleType, RouteSpec, Scope, SecretHash, Team, User, ValueSource,
        catalog::{SYSTEM_KEY, TEAM_ROLE, canonical_role_id},
        model::{ObjectRef, RoleLists, is_valid_role_id},
    },
    state::{ChangeSet, State},
};

/// One problem in a policy file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    pub line: u64,
    pub column: u64,
    /// The object at fault, e.g. `keys[3] (prefix FraudKey01)`; empty for syntax errors.
    pub object: String,
    pub message: String,
}

/// Why a policy file was refused: every problem found, each with its location.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub file: String,
    pub problems: Vec<PolicyProblem>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: ", self.file, p.line, p.column)?;
            if !p.object.is_empty() {
                write!(f, "{}: ", p.object)?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
}

/// A loaded policy: the model, its route table included (`None` when the file gives no
/// `routes:`, the built-in default table).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub model: Model,
}

// ---- the file format -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    version: Option<Spanned<u32>>,
    #[serde(default)]
    entitlements: Vec<Spanned<EntitlementDoc>>,
    #[serde(default)]
    roles: Vec<Spanned<RoleDoc>>,
    #[serde(default)]
    teams: Vec<Spanned<TeamDoc>>,
    #[serde(default)]
    users: Vec<Spanned<UserDoc>>,
    #[serde(default)]
    projects: Vec<Spanned<ProjectDoc>>,
    #[serde(default)]
    keys: Vec<Spanned<KeyDoc>>,
    routes: Option<Vec<Spanned<RouteDoc>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntitlementDoc {
    id: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleDoc {
    id: String,
    #[serde(rename = "type")]
    role_type: Option<String>,
    #[serde(default)]
    grants: Vec<GrantDoc>,
    #[serde(rename = "override", default)]
    override_prebuilt: bool,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantDoc {
    entitlement: String,
    scope: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamDoc {
    id: String,
    name: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserDoc {
    id: String,
    name: Option<String>,
    status: Option<String>,
    #[serde(default)]
    teams: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectDoc {
    id: String,
    team: String,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDoc {
    prefix: String,
    secret_sha256: String,
    #[serde(rename = "type")]
    key_type: String,
    user: Option<String>,
    team: Option<String>,
    project: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    status: Option<String>,
    expires_at: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDoc {
    method: String,
    path: String,
    entitlement: String,
    resource: Option<RouteResourceDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteResourceDoc {
    team: Option<String>,
    owner_key: Option<String>,
    owner_user: Option<String>,
}

// ---- loading ---------------------------------------------------------------------------------

/// Reads and parses the policy file at `path`.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
        file: file.clone(),
        problems: vec![PolicyProblem {
            line: 0,
            column: 0,
            object: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse_file(&text, &file)
}

/// Parses the text of a policy file: like [`parse`], except that a file with no content at all
/// (empty, or only whitespace, comments and document markers) is refused. Such a file is
/// usually one being written, or a volume not mounted yet; taken as a policy, it would make
/// every key unknown (and every follower of this instance would copy that outage).
pub fn parse_file(text: &str, file: &str) -> Result<Policy, PolicyError> {
    if is_blank(text) {
        return Err(PolicyError {
            file: file.to_owned(),
            problems: vec![PolicyProblem {
                line: 0,
                column: 0,
                object: String::new(),
                message: "the file is empty (no content but whitespace or comments): an empty \
                          file is taken for one not written yet, never for a policy without \
                          keys (write `{}` for a deliberately empty policy)"
                    .into(),
            }],
        });
    }
    parse(text, file)
}

/// Whether a YAML text holds nothing: only blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// Parses a policy document; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let mut budget = serde_saphyr::Budget::default();
    // Large policies (a million keys) are legitimate; the limits that remain guard against
    // alias bombs and deep nesting.
    budget.max_reader_input_bytes = None;
    budget.max_events = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_total_scalar_bytes = usize::MAX;
    options.budget = Some(budget);
    let doc: PolicyDoc = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        PolicyError {
            file: file.to_owned(),
            problems: vec![PolicyProblem {
                line,
                column,
                object: String::new(),
                message: first_line(&e.to_string()),
            }],
        }
    })?;
    let mut builder = Builder::default();
    let policy = builder.build(doc);
    let mut problems = builder.problems;
    for v in policy.model.validate() {
        let (object, at) = builder
            .objects
            .get(&v.object)
            .cloned()
            .unwrap_or_else(|| (v.object.to_string(), Location::UNKNOWN));
        problems.push(problem(at, object, format!("{}: {}", v.field, v.message)));
    }
    if problems.is_empty() {
        Ok(policy)
    } else {
        problems.sort_by_key(|p| (p.line, p.column));
        Err(PolicyError {
            file: file.to_owned(),
            problems,
        })
    }
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().trim().to_owned()
}

fn problem(at: Location, object: String, message: String) -> PolicyProblem {
    PolicyProblem {
        line: at.line(),
        column: at.column(),
        object,
        message,
    }
}

/// Turns the document into a model, collecting problems with their locations.
#[derive(Default)]
struct Builder {
    problems: Vec<PolicyProblem>,
    /// Where each object is defined and how to name it in messages.
    objects: HashMap<ObjectRef, (String, Location)>,
    role_lists: RoleLists,
}

impl Builder {
    fn fail(&mut self, at: Location, object: &str, message: impl Into<String>) {
        self.problems
            .push(problem(at, object.to_owned(), message.into()));
    }

    /// Records an object's location; a second definition of the same id is an error.
    fn define(&mut self, object: ObjectRef, name: String, at: Location) -> bool {
        if let Some((_, first)) = self.objects.get(&object) {
            let message = format!("duplicate {object}; first defined at line {}", first.line());
            self.fail(at, &name, message);
            return false;
        }
        self.objects.insert(object, (name, at));
        true
    }

    fn build(&mut self, doc: PolicyDoc) -> Policy {
        if let Some(version) = &doc.version
            && version.value != 1
        {
            self.fail(
                version.referenced,
                "version",
                format!("unsupported version {} (expected 1)", version.value),
            );
        }
        let mut model = Model::default();
        let mut catalog = Catalog::builtin();
        for (i, e) in doc.entitlements.iter().enumerate() {
            let name = format!("entitlements[{i}] ({})", e.value.id);
            if !is_valid_entitlement(&e.value.id) {
                self.fail(e.referenced, &name, "an entitlement id is `resource.action`: lower-case letters, digits, '_' and '-', one dot");
            } else if !catalog.add_entitlement(&e.value.id) {
                self.fail(
                    e.referenced,
                    &name,
                    "this entitlement is already in the catalog",
                );
            }
            self.objects.insert(
                ObjectRef::Entitlement(e.value.id.as_str().into()),
                (name, e.referenced),
            );
        }
        for (i, r) in doc.roles.iter().enumerate() {
            if let Some(role) = self.role(i, r, &catalog) {
                catalog.put_role(Arc::new(role));
            }
        }
        model.catalog = catalog;
        // Ids repeat (every key names a team and a user or project, every user its teams): one
        // allocation each, shared by every object that names it, and one per distinct team list.
        let mut ids = Interner::default();
        for (i, t) in doc.teams.iter().enumerate() {
            let name = format!("teams[{i}] ({})", t.value.id);
            let active = self.active_status(t.value.status.as_deref(), t.referenced, &name);
            let team = Team {
                id: ids.id(&t.value.id),
                name: t.value.name.clone().unwrap_or_default(),
                active,
            };
            self.check_id(&t.value.id, t.referenced, &name);
            if self.define(ObjectRef::Team(team.id.clone()), name, t.referenced) {
                model.teams.insert(team.id.clone(), team);
            }
        }
        for (i, u) in doc.users.iter().enumerate() {
            let name = format!("users[{i}] ({})", u.value.id);
            let active = self.active_status(u.value.status.as_deref(), u.referenced, &name);
            let user = User {
                id: ids.id(&u.value.id),
                name: u.value.name.clone().unwrap_or_default().into(),
                active,
                teams: ids.teams(&u.value.teams),
            };
            self.check_id(&u.value.id, u.referenced, &name);
            if self.define(ObjectRef::User(user.id.clone()), name, u.referenced) {
                model.users.insert(user.id.clone(), Arc::new(user));
            }
        }
        for (i, p) in doc.projects.iter().enumerate() {
            let name = format!("projects[{i}] ({})", p.value.id);
            let project = Project {
                id: ids.id(&p.value.id),
                team: ids.id(&p.value.team),
                name: p.value.name.clone().unwrap_or_default(),
            };
            self.check_id(&p.value.id, p.referenced, &name);
            if self.define(ObjectRef::Project(project.id.clone()), name, p.referenced) {
                model.projects.insert(project.id.clone(), project);
            }
        }
        for (i, k) in doc.keys.iter().enumerate() {
            let name = format!("keys[{i}] (prefix {})", k.value.prefix);
            if let Some(key) = self.key(&name, k, &mut ids)
                && self.define(
                    ObjectRef::Key(key.prefix.as_str().into()),
                    name,
                    k.referenced,
                )
            {
                model.keys.insert(key.prefix.clone(), Arc::new(key));
            }
        }
        // The table's own rules (entitlements in the catalog, no two routes matching the same
        // requests) are the model's: `Model::validate` reports them at the route's location.
        model.routes = doc.routes.map(|routes| {
            let mut table = Vec::with_capacity(routes.len());
            for (i, r) in routes.iter().enumerate() {
                if let Some(spec) = self.route(i, r) {
                    let name = format!("routes[{i}] ({} {})", spec.method, spec.path);
                    self.objects
                        .insert(ObjectRef::Route(table.len()), (name, r.referenced));
                    table.push(spec);
                }
            }
            table.into()
        });
        Policy { model }
    }

    fn check_id(&mut self, id: &str, at: Location, name: &str) {
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            self.fail(
                at,
                name,
                "an id is 1 to 128 printable ASCII characters without spaces",
            );
        }
    }

    fn active_status(&mut self, status: Option<&str>, at: Location, name: &str) -> bool {
        match status {
            None | Some("active") => true,
            Some("inactive") => false,
            Some(other) => {
                self.fail(
                    at,
                    name,
                    format!("unknown status {other:?} (expected active or inactive)"),
                );
                true
            }
        }
    }

    fn role(&mut self, i: usize, r: &Spanned<RoleDoc>, catalog: &Catalog) -> Option<Role> {
        let doc = &r.value;
        let name = format!("roles[{i}] ({})", doc.id);
        let at = r.referenced;
        if !is_valid_role_id(&doc.id) {
            self.fail(at, &name, "a role id is 1 to 64 characters of [A-Z0-9_]");
            return None;
        }
        let canonical = canonical_role_id(&doc.id);
        let prebuilt = catalog.role(canonical).filter(|r| r.prebuilt).cloned();
        let role_type = match (doc.role_type.as_deref(), &prebuilt) {
            (Some("user"), _) => RoleType::User,
            (Some("system"), _) => RoleType::System,
            (Some("implicit"), _) if canonical == TEAM_ROLE => RoleType::Implicit,
            (None, Some(p)) => p.role_type,
            (None, None) => {
                self.fail(
                    at,
                    &name,
                    "a custom role needs `type: user` or `type: system`",
                );
                return None;
            }
            (Some(other), _) => {
                self.fail(
                    at,
                    &name,
                    format!("unknown role type {other:?} (expected user or system)"),
                );
                return None;
            }
        };
        if let Some(p) = &prebuilt {
            if !doc.override_prebuilt {
                self.fail(at, &name, format!("{canonical} is a prebuilt role; add `override: true` to redefine its grants"));
                return None;
            }
            if p.role_type != role_type {
                self.fail(
                    at,
                    &name,
                    format!(
                        "{canonical} is a {} role; an override cannot change its type",
                        p.role_type.as_str()
                    ),
                );
                return None;
            }
        } else if doc.override_prebuilt {
            self.fail(
                at,
                &name,
                format!("`override: true` is only for prebuilt roles; {canonical} is not one"),
            );
        }
        if canonical == SYSTEM_KEY || canonical == TEAM_ROLE || prebuilt.is_some() {
            // fine: an explicit override of a prebuilt role
        }
        let mut grants = Vec::new();
        for g in &doc.grants {
            match g.scope.parse::<Scope>() {
                Ok(scope) => grants.push(Grant {
                    entitlement: g.entitlement.as_str().into(),
                    scope,
                }),
                Err(e) => self.fail(at, &name, format!("grant of {}: {e}", g.entitlement)),
            }
        }
        let id: Arc<str> = canonical.into();
        if !self.define(ObjectRef::Role(id.clone()), name, at) {
            return None;
        }
        Some(Role {
            id,
            role_type,
            grants,
            prebuilt: prebuilt.is_some(),
        })
    }

    fn key(&mut self, name: &str, k: &Spanned<KeyDoc>, ids: &mut Interner) -> Option<KeySpec> {
        let doc = &k.value;
        let at = k.referenced;
        let secret_hash = match doc.secret_sha256.parse::<SecretHash>() {
            Ok(h) => Some(h),
            Err(e) => {
                self.fail(at, name, e.to_string());
                None
            }
        };
        let key_type = match doc.key_type.as_str() {
            "team" => Some(KeyType::Team),
            "project" => Some(KeyType::Project),
            other => {
                self.fail(
                    at,
                    name,
                    format!("unknown key type {other:?} (expected team or project)"),
                );
                None
            }
        };
        let status = match doc
            .status
            .as_deref()
            .unwrap_or("active")
            .parse::<KeyStatus>()
        {
            Ok(s) => Some(s),
            Err(e) => {
                self.fail(at, name, e);
                None
            }
        };
        let expires_at = match &doc.expires_at {
            None => Some(Expiry::NEVER),
            Some(text) => match OffsetDateTime::parse(text, &Rfc3339) {
                Ok(t) => match Expiry::at(t.unix_timestamp()) {
                    Ok(at) => Some(at),
                    Err(_) => {
                        let range = Expiry::RANGE;
                        self.fail(
                            at,
                            name,
                            format!("expires_at {text:?} is out of range: {range}"),
                        );
                        None
                    }
                },
                Err(e) => {
                    self.fail(
                        at,
                        name,
                        format!("expires_at {text:?} is not an RFC 3339 time: {e}"),
                    );
                    None
                }
            },
        };
        let roles = self
            .role_lists
            .canonical(doc.roles.iter().map(String::as_str));
        if roles.len() != doc.roles.len() {
            self.fail(at, name, "a role is listed twice");
        }
        let key_type = key_type?;
        let owner = match KeySpec::owner_of(key_type, doc.user.as_deref(), doc.project.as_deref()) {
            Ok(owner) => Some(ids.id(owner)),
            Err(e) => {
                self.fail(at, name, e.to_string());
                None
            }
        };
        Some(KeySpec {
            prefix: doc.prefix.as_str().into(),
            secret_hash: secret_hash?,
            key_type,
            owner: owner?,
            team: doc.team.as_deref().map(|t| ids.id(t)),
            roles,
            status: status?,
            expires_at: expires_at?,
        })
    }

    /// A route as written, when its sources parse and it is sound alone
    /// ([`RouteSpec::problems`]).
    fn route(&mut self, i: usize, r: &Spanned<RouteDoc>) -> Option<RouteSpec> {
        let doc = &r.value;
        let name = format!("routes[{i}] ({} {})", doc.method, doc.path);
        let at = r.referenced;
        let before = self.problems.len();
        let mut source = |field: &str, text: &Option<String>| -> Option<ValueSource> {
            let text = text.as_ref()?;
            ValueSource::parse(text)
                .map_err(|e| self.fail(at, &name, format!("resource.{field}: {e}")))
                .ok()
        };
        let res = doc.resource.as_ref();
        let spec = RouteSpec {
            method: doc.method.clone(),
            path: doc.path.clone(),
            entitlement: doc.entitlement.clone(),
            team: res.and_then(|r| source("team", &r.team)),
            owner_key: res.and_then(|r| source("owner_key", &r.owner_key)),
            owner_user: res.and_then(|r| source("owner_user", &r.owner_user)),
        };
        for (_, message) in spec.problems() {
            self.fail(at, &name, message);
        }
        (self.problems.len() == before).then_some(spec)
    }
}

/// Whether `id` is `resource.action`: lower-case letters, digits, `_` and `-`, one dot.
pub fn is_valid_entitlement(id: &str) -> bool {
    let Some((resource, action)) = id.split_once('.') else {
        return false;
    };
    let part = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    part(resource) && part(action)
}

// ---- watching --------------------------------------------------------------------------------

/// What the last (re)load did, for `/status`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub path: String,
    /// Unix seconds of the last successful load.
    pub last_reload_unix: Option<i64>,
    pub last_error: Option<String>,
    /// Unix seconds of the last failed load.
    pub last_error_unix: Option<i64>,
    pub reloads: u64,
    pub failed_reloads: u64,
}

/// The policy file origin while serving: the path, what was last loaded, and the status.
pub struct PolicyFileOrigin {
    path: PathBuf,
    state: Arc<State>,
    current: Mutex<Loaded>,
    /// A change seen by the last poll and not loaded yet: the file's identity then (`None`:
    /// it could not be read). It is loaded when the next poll finds the same identity.
    settling: Mutex<Option<Option<Fingerprint>>>,
    status: Arc<Mutex<ReloadStatus>>,
}

/// What one poll of the file found.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Poll {
    /// The file is the one last loaded (or last refused).
    Unchanged,
    /// It changed since the last poll: it may still be being written, so wait for the next.
    Settling,
    /// It changed, and has stayed as it is since the last poll: load it (it must still be this).
    Settled(Option<Fingerprint>),
}

/// How many times a start reads a file that keeps changing while it is read, before giving up.
const START_ATTEMPTS: u32 = 50;
/// The wait between those reads.
const START_RETRY: Duration = Duration::from_millis(100);

/// What identifies the file's content on disk, cheaply: the symlink target's identity and
/// times, so a Kubernetes ConfigMap's `..data` symlink swap is seen like an edit in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
    /// The inode change time (seconds, nanoseconds): moves with every write and metadata
    /// change, even one that sets the modification time back.
    changed: (i64, i64),
}

#[derive(Default)]
struct Loaded {
    fingerprint: Option<Fingerprint>,
    /// SHA-256 of the bytes last loaded: a touch without a change is no new revision.
    digest: [u8; 32],
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows symlinks, so a swapped link shows the new target's identity.
    let meta = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        modified: meta.modified().ok(),
        changed: (meta.ctime(), meta.ctime_nsec()),
    })
}

impl PolicyFileOrigin {
    /// Loads the file into `state` as revision 1; a bad file is an error (the server does not
    /// start on it).
    pub fn start(path: PathBuf, state: Arc<State>) -> Result<Arc<Self>, PolicyError> {
        let origin = Arc::new(PolicyFileOrigin {
            status: Arc::new(Mutex::new(ReloadStatus {
                path: path.display().to_string(),
                ..Default::default()
            })),
            path,
            state,
            current: Mutex::new(Loaded::default()),
            settling: Mutex::new(None),
        });
        // A file that changes while it is read is read again, a little later.
        for _ in 0..START_ATTEMPTS {
            origin.reload()?;
            if origin.state.is_loaded() {
                return Ok(origin);
            }
            std::thread::sleep(START_RETRY);
        }
        Err(PolicyError {
            file: origin.path.display().to_string(),
            problems: vec![PolicyProblem {
                line: 0,
                column: 0,
                object: String::new(),
                message: format!(
                    "the file kept changing while it was read ({START_ATTEMPTS} attempts)"
                ),
            }],
        })
    }

    /// The reload status, shared with the HTTP status endpoint.
    pub fn status(&self) -> Arc<Mutex<ReloadStatus>> {
        self.status.clone()
    }

    /// Re-reads the file at once if it changed on disk (without waiting for it to settle, as
    /// the watcher does). Returns the new revision when the state changed.
    pub fn reload_if_changed(&self) -> Result<Option<u64>, PolicyError> {
        if self.unchanged_on_disk(&fingerprint(&self.path)) {
            return Ok(None);
        }
        self.reload()
    }

    /// Whether `now` is the identity of the file last loaded (or last refused), as far as one
    /// `stat` tells. False while a reload holds the lock: the caller then tries again.
    fn unchanged_on_disk(&self, now: &Option<Fingerprint>) -> bool {
        self.current
            .try_lock()
            .is_ok_and(|current| current.fingerprint == *now)
    }

    /// One poll of the watcher: one `stat`, compared with what was loaded and with what the
    /// previous poll saw. A change is loaded only once the file has kept the same identity
    /// (device, inode, size, modification and change times) across two consecutive polls, so
    /// that a file written in place is not read half-written.
    fn poll(&self) -> Poll {
        let now = fingerprint(&self.path);
        let mut settling = self.settling.lock().unwrap_or_else(|p| p.into_inner());
        if self.unchanged_on_disk(&now) {
            *settling = None;
            return Poll::Unchanged;
        }
        if settling.as_ref() == Some(&now) {
            return Poll::Settled(now);
        }
        *settling = Some(now);
        Poll::Settling
    }

    /// Reads, parses and validates the file; applies the difference as one new revision.
    /// A bad file changes nothing: the last good state keeps serving. A file whose identity
    /// changed while it was read changes nothing either (it is being written): the watcher
    /// loads it once it has settled.
    pub fn reload(&self) -> Result<Option<u64>, PolicyError> {
        self.reload_expecting(None)
    }

    /// [`Self::reload`] of the file the watcher saw settle as `expected`; if it is another by
    /// now, it is left for the next polls.
    fn reload_expecting(
        &self,
        expected: Option<&Option<Fingerprint>>,
    ) -> Result<Option<u64>, PolicyError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let print = fingerprint(&self.path);
        if expected.is_some_and(|e| *e != print) {
            *self.settling.lock().unwrap_or_else(|p| p.into_inner()) = Some(print);
            return Ok(None);
        }
        let read = std::fs::read(&self.path);
        let after = fingerprint(&self.path);
        if after != print {
            tracing::debug!(path = %self.path.display(), "the policy file changed while it was read; waiting for it to settle");
            *self.settling.lock().unwrap_or_else(|p| p.into_inner()) = Some(after);
            return Ok(None);
        }
        let result = read
            .map_err(|e| PolicyError {
                file: self.path.display().to_string(),
                problems: vec![PolicyProblem {
                    line: 0,
                    column: 0,
                    object: String::new(),
                    message: format!("cannot read the file: {e}"),
                }],
            })
            .and_then(|bytes| {
                use sha2::Digest;
                let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
                if self.state.is_loaded() && digest == current.digest {
                    return Ok(None);
                }
                let text = String::from_utf8(bytes).map_err(|_| PolicyError {
                    file: self.path.display().to_string(),
                    problems: vec![PolicyProblem {
                        line: 0,
                        column: 0,
                        object: String::new(),
                        message: "the file is not UTF-8".into(),
                    }],
                })?;
                parse_file(&text, &self.path.display().to_string()).map(|p| Some((p, digest)))
            });
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let now = crate::state::unix_now();
        match result {
            Ok(None) => {
                current.fingerprint = print;
                Ok(None)
            }
            Ok(Some((policy, digest))) => {
                let changes = self.state.model().diff(&policy.model);
                let revision = self.state.revision() + 1;
                let applied = if changes.is_empty() && self.state.is_loaded() {
                    None
                } else {
                    let set = ChangeSet { revision, changes };
                    // Only this origin writes to the state, so the next revision is free.
                    Some(
                        self.state
                            .apply(set)
                            .expect("the policy origin is the only writer"),
                    )
                };
                current.fingerprint = print;
                current.digest = digest;
                status.last_reload_unix = Some(now);
                status.last_error = None;
                status.reloads += 1;
                if let Some(rev) = applied {
                    tracing::info!(path = %self.path.display(), revision = rev, "policy loaded");
                }
                Ok(applied)
            }
            Err(err) => {
                // Remember the fingerprint so a bad file is reported once, not on every poll.
                current.fingerprint = print;
                status.last_error = Some(err.to_string());
                status.last_error_unix = Some(now);
                status.failed_reloads += 1;
                Err(err)
            }
        }
    }

    /// Polls the file every `interval` until `shutdown` resolves, reloading it when it changes.
    /// Polling the resolved path's identity catches edits in place, editors that write a new file
    /// and rename it, and the symlink swap of a Kubernetes ConfigMap.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            // Nearly every tick finds the file unchanged. One `stat` answers that here; handing
            // each tick to the blocking pool and back woke two more threads every second, and on
            // two CPUs shared with Envoy those wake-ups showed in the tail of ext_authz calls
            // (docs/performance.md).
            let settled = match self.poll() {
                Poll::Unchanged => continue,
                Poll::Settling => {
                    tracing::debug!(path = %self.path.display(), "the policy file changed; loading it once it stays unchanged for one poll");
                    continue;
                }
                Poll::Settled(print) => print,
            };
            // Changed, and settled (or unreadable twice): reload.
            let origin = self.clone();
            let outcome =
                tokio::task::spawn_blocking(move || origin.reload_expecting(Some(&settled))).await;
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => tracing::error!(
                    path = %self.path.display(),
                    error = %err,
                    "policy reload failed; the last good state keeps serving"
                ),
                Err(join) => tracing::error!(error = %join, "policy reload task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
