//! `Admin.ListRoutes`: the route table the proxy front ends enforce, and where it came from.

use crate::{authz::routes::default_routes, grpc::pb, origin::RouteSource, state::State};

/// The `source` and `origin` fields of the answer for a table that came from `source`.
fn describe(source: &RouteSource) -> (&'static str, &str) {
    match source {
        RouteSource::PolicyFile(path) => ("policy_file", path),
        RouteSource::Store(dir) => ("store", dir),
        RouteSource::Hub(url) => ("hub", url),
        RouteSource::Etcd(cluster) => ("etcd", cluster),
    }
}

/// The answer of `ListRoutes`: the state's table (the built-in one when it has none), read with
/// the revision it is at.
pub(crate) fn list(state: &State, source: &RouteSource) -> pb::ListRoutesResponse {
    let (revision, active) = state.read_model(|_| (state.revision(), state.routes()));
    let (routes, source, origin) = match &active.specs {
        Some(specs) => {
            let (source, origin) = describe(source);
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
