//! `Admin.ListRoutes`: the route table the proxy front ends enforce, and where it came from.

use crate::{authz::routes::default_routes, grpc::pb, state::State};

/// The origin a server's route table comes from when it is not the built-in default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RouteSource {
    /// A policy file's `routes:` (its path).
    PolicyFile(String),
    /// The embedded store (its data directory).
    Store(String),
    /// A hub this server follows (its address).
    Hub(String),
    /// Not said (a service built without an origin, in tests).
    #[default]
    Unknown,
}

impl RouteSource {
    /// The `source` and `origin` fields of the answer.
    fn describe(&self) -> (&'static str, &str) {
        match self {
            RouteSource::PolicyFile(path) => ("policy_file", path),
            RouteSource::Store(dir) => ("store", dir),
            RouteSource::Hub(url) => ("hub", url),
            RouteSource::Unknown => ("origin", ""),
        }
    }
}

/// The answer of `ListRoutes`: the state's table (the built-in one when it has none), read with
/// the revision it is at.
pub fn list(state: &State, source: &RouteSource) -> pb::ListRoutesResponse {
    let (revision, active) = state.read_model(|_| (state.revision(), state.routes()));
    let (routes, source, origin) = match &active.specs {
        Some(specs) => {
            let (source, origin) = source.describe();
            (specs.iter().map(Into::into).collect(), source, origin)
        }
        None => (
            default_routes().iter().map(Into::into).collect(),
            "default",
            "",
        ),
    };
    pb::ListRoutesResponse {
        routes,
        source: source.to_owned(),
        origin: origin.to_owned(),
        routes_revision: active.revision,
        revision,
    }
}
