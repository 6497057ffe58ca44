//! The route map in force: compiled from the state's route table when it changes, the previous
//! map kept when a new table does not compile.

use std::sync::Arc;

use crate::{domain::RouteSpec, state::unix_now};

use super::{
    Authz,
    routes::{self, RouteError, RouteTable},
};

/// The compiled map in force and the revision of the state's table it stands for.
pub(super) struct Installed {
    pub(super) table: Arc<RouteTable>,
    /// [`State::routes_revision`](crate::state::State::routes_revision) when it was installed: a table that failed to compile still
    /// moves this on (the previous map stays), so it is not compiled again on every request.
    pub(super) revision: u64,
    /// Whether the map is the built-in default.
    pub(super) default: bool,
}

/// A route table of the state that did not compile.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct RouteFailure {
    pub(crate) revision: u64,
    pub(crate) error: String,
    pub(crate) at_unix: i64,
}

/// What `/status` shows of the route map.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct RouteStatus {
    /// `default` (the built-in table) or `state` (the origin's table).
    pub(crate) table: &'static str,
    pub(crate) routes: usize,
    /// The revision of the state's table the map in force was compiled from.
    pub(crate) revision: u64,
    /// The last table of the state that did not compile (the previous map kept serving).
    pub(crate) last_error: Option<RouteFailure>,
}

impl Authz {
    /// Installs a table given directly (`None`: the default map), in place of the state's until
    /// the state's table next changes (tests, benchmarks). On error the map in force stays.
    pub fn set_routes(&self, specs: Option<&[RouteSpec]>) -> Result<usize, RouteError> {
        let table = match specs {
            Some(specs) => Arc::new(RouteTable::compile(specs)?),
            None => routes::default_table(),
        };
        let n = table.len();
        let revision = self.state.routes_revision();
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Installed {
            table,
            revision,
            default: specs.is_none(),
        };
        Ok(n)
    }

    /// The route map in force: the one compiled from the state's current table. Checking that it
    /// is current costs one atomic load; only the first request after the table changed (unless
    /// [`Authz::follow_routes`] was quicker) compiles the new one.
    pub(crate) fn routes(&self) -> Arc<RouteTable> {
        let want = self.state.routes_revision();
        {
            let installed = self.routes.read().unwrap_or_else(|p| p.into_inner());
            if installed.revision == want {
                return installed.table.clone();
            }
        }
        self.refresh_routes()
    }

    /// Compiles the state's table when the map in force is not compiled from it. A table that
    /// does not compile leaves the map in force and is reported on `/status`.
    pub(super) fn refresh_routes(&self) -> Arc<RouteTable> {
        let _one = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        let active = self.state.routes();
        {
            let installed = self.routes.read().unwrap_or_else(|p| p.into_inner());
            if installed.revision == active.revision {
                return installed.table.clone();
            }
        }
        let compiled = match &active.specs {
            Some(specs) => RouteTable::compile(specs).map(Arc::new),
            None => Ok(routes::default_table()),
        };
        let mut installed = self.routes.write().unwrap_or_else(|p| p.into_inner());
        installed.revision = active.revision;
        match compiled {
            Ok(table) => {
                tracing::info!(
                    routes = table.len(),
                    table = if active.specs.is_some() {
                        "state"
                    } else {
                        "default"
                    },
                    revision = active.revision,
                    "route map installed"
                );
                installed.table = table;
                installed.default = active.specs.is_none();
                *self.route_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(err) => {
                tracing::error!(
                    error = %err,
                    revision = active.revision,
                    "the state's route table does not compile; the route map in force stays"
                );
                *self.route_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(RouteFailure {
                    revision: active.revision,
                    error: err.to_string(),
                    at_unix: unix_now(),
                });
            }
        }
        installed.table.clone()
    }

    /// Compiles each new route table of the state as soon as it is applied, until `stop` is
    /// raised, so that requests seldom find a table to compile.
    pub(crate) async fn follow_routes(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tables = self.state.subscribe_routes();
        loop {
            drop(tables.borrow_and_update());
            self.refresh_routes();
            tokio::select! {
                changed = tables.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// The route map in force, for `/status`.
    pub(crate) fn route_status(&self) -> RouteStatus {
        let (table, routes, revision) = {
            let installed = self.routes.read().unwrap_or_else(|p| p.into_inner());
            let kind = if installed.default {
                "default"
            } else {
                "state"
            };
            (kind, installed.table.len(), installed.revision)
        };
        RouteStatus {
            table,
            routes,
            revision,
            last_error: self
                .route_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
