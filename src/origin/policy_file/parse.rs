//! The policy file's format: a declarative YAML description of the whole state, parsed with
//! locations so that every error names the file, line, column and object.

use std::{collections::HashMap, fmt, path::Path, sync::Arc};

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::domain::{
    Catalog, Expiry, Grant, Interner, KeySpec, KeyStatus, KeyType, Model, Project, Role, RoleType,
    RouteSpec, Scope, SecretHash, Team, User, ValueSource,
    catalog::is_valid_entitlement,
    catalog::{SYSTEM_KEY, TEAM_ROLE, canonical_role_id},
    model::{ObjectRef, RoleLists, is_valid_role_id},
};

/// One problem in a policy file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyProblem {
    pub(crate) line: u64,
    pub(crate) column: u64,
    /// The object at fault, e.g. `keys[3] (prefix FraudKey01)`; empty for syntax errors.
    pub(crate) object: String,
    pub(crate) message: String,
}

/// Why a policy file was refused: every problem found, each with its location.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub(crate) file: String,
    pub problems: Vec<PolicyProblem>,
}

impl PolicyError {
    /// One problem at `line` of `file`.
    pub(crate) fn at(file: &str, line: u64, message: impl Into<String>) -> Self {
        PolicyError {
            file: file.to_owned(),
            problems: vec![PolicyProblem {
                line,
                column: 1,
                object: String::new(),
                message: message.into(),
            }],
        }
    }

    /// A problem with the file as a whole (it cannot be read, it is empty, ...), located at
    /// line 0.
    pub(crate) fn whole_file(file: &str, message: impl Into<String>) -> Self {
        PolicyError {
            file: file.to_owned(),
            problems: vec![PolicyProblem {
                line: 0,
                column: 0,
                object: String::new(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            // A problem of the whole file (it cannot be read, it is empty) has no position.
            match p.line {
                0 => write!(f, "{}: ", self.file)?,
                line => write!(f, "{}:{line}:{}: ", self.file, p.column)?,
            }
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
    let text = std::fs::read_to_string(path)
        .map_err(|e| PolicyError::whole_file(&file, format!("cannot read the file: {e}")))?;
    parse_file(&text, &file)
}

/// Parses the text of a policy file: like [`parse`], except that a file with no content at all
/// (empty, or only whitespace, comments and document markers) is refused. Such a file is
/// usually one being written, or a volume not mounted yet; taken as a policy, it would make
/// every key unknown (and every follower of this instance would copy that outage).
pub fn parse_file(text: &str, file: &str) -> Result<Policy, PolicyError> {
    if is_blank(text) {
        return Err(PolicyError::whole_file(
            file,
            "the file is empty (no content but whitespace or comments): an empty file is taken \
             for one not written yet, never for a policy without keys (write `{}` for a \
             deliberately empty policy)",
        ));
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

/// The parser's message without the " at line L, column C" it ends with: the problem is shown
/// as `file:L:C: message`, so the position is said once.
fn without_position(message: &str, line: u64, column: u64) -> String {
    let suffix = format!(" at line {line}, column {column}");
    message.strip_suffix(&suffix).unwrap_or(message).to_owned()
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
    let doc: PolicyDoc =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| first_problem(&e, file))?;
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

/// A YAML or shape error of `file` as its one problem, located.
pub(crate) fn first_problem(e: &serde_saphyr::Error, file: &str) -> PolicyError {
    let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
    PolicyError {
        file: file.to_owned(),
        problems: vec![PolicyProblem {
            line,
            column,
            object: String::new(),
            message: without_position(&first_line(&e.to_string()), line, column),
        }],
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
        let mut model = Model {
            catalog: self.catalog(&doc.entitlements, &doc.roles),
            ..Model::default()
        };
        // Ids repeat (every key names a team and a user or project, every user its teams): one
        // allocation each, shared by every object that names it, and one per distinct team list.
        let mut ids = Interner::default();
        self.teams_users_projects(&doc, &mut ids, &mut model);
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
        model.routes = doc.routes.map(|routes| self.route_table(&routes));
        Policy { model }
    }

    /// The built-in catalog with the file's entitlements and roles.
    fn catalog(
        &mut self,
        entitlements: &[Spanned<EntitlementDoc>],
        roles: &[Spanned<RoleDoc>],
    ) -> Catalog {
        let mut catalog = Catalog::builtin();
        for (i, e) in entitlements.iter().enumerate() {
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
        for (i, r) in roles.iter().enumerate() {
            if let Some(role) = self.role(i, r, &catalog) {
                catalog.put_role(Arc::new(role));
            }
        }
        catalog
    }

    fn teams_users_projects(&mut self, doc: &PolicyDoc, ids: &mut Interner, model: &mut Model) {
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
    }

    /// The routes that parse, each recorded with its location. The table's own rules
    /// (entitlements in the catalog, no two routes matching the same requests) are the model's:
    /// `Model::validate` reports them at the route's location.
    fn route_table(&mut self, routes: &[Spanned<RouteDoc>]) -> Arc<[RouteSpec]> {
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
        let expires_at = self.expiry(doc.expires_at.as_deref(), at, name);
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

    /// `expires_at`: absent (never), or an RFC 3339 time within [`Expiry::RANGE`].
    fn expiry(&mut self, text: Option<&str>, at: Location, name: &str) -> Option<Expiry> {
        let Some(text) = text else {
            return Some(Expiry::NEVER);
        };
        let message = match OffsetDateTime::parse(text, &Rfc3339) {
            Ok(t) => match Expiry::at(t.unix_timestamp()) {
                Ok(expiry) => return Some(expiry),
                Err(_) => format!("expires_at {text:?} is out of range: {}", Expiry::RANGE),
            },
            Err(e) => format!("expires_at {text:?} is not an RFC 3339 time: {e}"),
        };
        self.fail(at, name, message);
        None
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
