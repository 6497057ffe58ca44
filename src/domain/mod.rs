//! The authorization model, as plain Rust: no gRPC, no async runtime, no I/O.
//!
//! - [`Scope`]: OWN < TEAM < ALL.
//! - [`Catalog`]: the known entitlements and the roles that bundle them ([`catalog`] holds the
//!   built-in default: the platform's prebuilt user roles, the system roles SYSTEM_KEY and
//!   FOLLOWER, and TEAM_ROLE).
//! - [`ApiKey`]: `<prefix>.<secret>` parsing and SHA-256 hashing of secrets.
//! - [`Model`]: teams, users, projects, keys, roles and the route table, with the validation
//!   rules of the model (docs/catalog.md).
//! - [`RouteSpec`]: a route of the HTTP API (which entitlement a request needs).
//! - [`KeyEntry`] / [`Requestor`]: what one decision needs, precomputed when bindings change.
//! - [`decide`]: the pure decision function.
//! - [`admin`]: administrative writes as commands, each judged by the [`escalation`] rule.
//! - [`history`]: who made each revision, and which entries a reader of `audit.read` sees.
//! - [`watch_access`]: whether a key may Watch, and receive secret hashes.

pub mod admin;
pub(crate) mod catalog;
pub mod decide;
pub(crate) mod entry;
pub(crate) mod escalation;
pub mod explain;
pub mod history;
pub(crate) mod idmap;
pub(crate) mod indexed;
pub(crate) mod intern;
pub mod key;
pub mod model;
pub mod privileges;
pub(crate) mod route;
pub(crate) mod scope;
pub(crate) mod watch_access;

pub use catalog::{Catalog, Grant, Role, RoleType, is_valid_entitlement};

/// The longest id (of a team, user, project or resource) accepted from the network.
pub(crate) const MAX_ID_LEN: usize = 256;
pub use decide::{Decision, Reason, ResourceRef, authenticate, decide, decide_presented};
pub use entry::{EntitlementGrants, GrantSet, KeyEntry, Requestor, RequestorId};
pub(crate) use idmap::IdMap;
pub use indexed::IndexedModel;
pub(crate) use intern::Interner;
pub use key::{ApiKey, Expiry, ExpiryOutOfRange, KeyStatus, KeyType, MalformedKey, SecretHash};
pub use model::{KeySpec, Model, ModelViolation, OwnerError, Project, Team, TeamList, User};
pub use route::{RouteSpec, ValueSource};
pub use scope::Scope;
pub(crate) use watch_access::{WatchDenied, watch_access};
