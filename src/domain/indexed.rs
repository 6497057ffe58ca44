//! [`IndexedModel`]: a writable origin's copy of the model with the one index the Admin rules
//! need, every key of each requestor, kept up to date as changes are applied. The escalation
//! rule asks "which keys does this user (or project) hold?" on every write; without the index
//! that is a scan of every key.

use std::{collections::HashMap, ops::Deref, sync::Arc};

use compact_str::CompactString;
use smallvec::SmallVec;

use super::{KeySpec, Model, Project, RequestorId, Team, model::Change};

/// The prefixes of one requestor's keys (most have one or two).
type Prefixes = SmallVec<[CompactString; 2]>;

/// A model and the keys of each requestor, changed only through [`IndexedModel::apply`].
#[derive(Clone, Debug, Default)]
pub struct IndexedModel {
    model: Model,
    /// Every key of each requestor, whatever its status. Hashed for speed: ids come from the
    /// origin, never from a caller's choice of hash input.
    by_requestor: HashMap<RequestorId, Prefixes, foldhash::fast::RandomState>,
}

impl Deref for IndexedModel {
    type Target = Model;

    fn deref(&self) -> &Model {
        &self.model
    }
}

impl From<Model> for IndexedModel {
    fn from(model: Model) -> Self {
        let mut by_requestor: HashMap<RequestorId, Prefixes, _> = HashMap::default();
        for key in model.keys.values() {
            by_requestor
                .entry(RequestorId::of(key))
                .or_default()
                .push(key.prefix.clone());
        }
        IndexedModel {
            model,
            by_requestor,
        }
    }
}

impl PartialEq<Model> for IndexedModel {
    fn eq(&self, other: &Model) -> bool {
        self.model == *other
    }
}

impl IndexedModel {
    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Every key of `requestor`, whatever its status.
    pub(crate) fn keys_of<'m>(
        &'m self,
        requestor: &RequestorId,
    ) -> impl Iterator<Item = &'m Arc<KeySpec>> {
        self.by_requestor
            .get(requestor)
            .into_iter()
            .flatten()
            .filter_map(|prefix| self.model.keys.get(prefix))
    }

    /// Applies one change to the model and the index.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::PutKey(key) => {
                if let Some(old) = self.model.keys.get(key.prefix.as_str()) {
                    let old = RequestorId::of(old);
                    self.unindex(&old, &key.prefix);
                }
                self.by_requestor
                    .entry(RequestorId::of(key))
                    .or_default()
                    .push(key.prefix.clone());
            }
            Change::RemoveKey(prefix) => {
                if let Some(old) = self.model.keys.get(&**prefix) {
                    let old = RequestorId::of(old);
                    self.unindex(&old, prefix);
                }
            }
            _ => {}
        }
        self.model.apply(change);
    }

    fn unindex(&mut self, requestor: &RequestorId, prefix: &str) {
        if let Some(list) = self.by_requestor.get_mut(requestor) {
            list.retain(|p| p.as_str() != prefix);
            if list.is_empty() {
                self.by_requestor.remove(requestor);
            }
        }
    }

    /// Applies `changes` and returns the changes that undo them, in the order to apply.
    pub(crate) fn apply_with_undo(&mut self, changes: &[Change]) -> Vec<Change> {
        let mut undo = Vec::with_capacity(changes.len());
        for change in changes {
            undo.push(self.inverse(change));
            self.apply(change);
        }
        undo.reverse();
        undo
    }

    #[cfg(test)]
    /// Applies `changes`, validates the result, and undoes them when it breaks a rule. Returns the
    /// undo on success (see [`Model::validate_after`]).
    pub(crate) fn apply_valid(
        &mut self,
        changes: &[Change],
    ) -> Result<Vec<Change>, Vec<super::ModelViolation>> {
        let undo = self.apply_with_undo(changes);
        let violations = self.model.validate_after(changes);
        if violations.is_empty() {
            Ok(undo)
        } else {
            for c in &undo {
                self.apply(c);
            }
            Err(violations)
        }
    }

    /// The change that puts back what `change` replaces or removes.
    fn inverse(&self, change: &Change) -> Change {
        let m = &self.model;
        match change {
            Change::PutEntitlement(id) | Change::RemoveEntitlement(id) => {
                if m.catalog.has_entitlement(id) {
                    Change::PutEntitlement(id.clone())
                } else {
                    Change::RemoveEntitlement(id.clone())
                }
            }
            Change::PutRole(role) => role_inverse(m, &role.id),
            Change::RemoveRole(id) => role_inverse(m, id),
            Change::PutTeam(Team { id, .. }) | Change::RemoveTeam(id) => match m.teams.get(id) {
                Some(t) => Change::PutTeam(t.clone()),
                None => Change::RemoveTeam(id.clone()),
            },
            Change::PutUser(user) => user_inverse(m, &user.id),
            Change::RemoveUser(id) => user_inverse(m, id),
            Change::PutProject(Project { id, .. }) | Change::RemoveProject(id) => {
                match m.projects.get(id) {
                    Some(p) => Change::PutProject(p.clone()),
                    None => Change::RemoveProject(id.clone()),
                }
            }
            Change::PutKey(k) => key_inverse(m, &k.prefix),
            Change::RemoveKey(prefix) => key_inverse(m, prefix),
            Change::PutRoutes(_) | Change::ResetRoutes => match &m.routes {
                Some(routes) => Change::PutRoutes(routes.clone()),
                None => Change::ResetRoutes,
            },
        }
    }

    /// Replaces the whole model (after reading it back from disk).
    pub(crate) fn replace(&mut self, model: Model) {
        *self = IndexedModel::from(model);
    }
}

fn user_inverse(model: &Model, id: &Arc<str>) -> Change {
    match model.users.get(id) {
        Some(u) => Change::PutUser(u.clone()),
        None => Change::RemoveUser(id.clone()),
    }
}

fn role_inverse(model: &Model, id: &Arc<str>) -> Change {
    match model.catalog.role(id) {
        Some(r) if r.id == *id => Change::PutRole(r.clone()),
        _ => Change::RemoveRole(id.clone()),
    }
}

fn key_inverse(model: &Model, prefix: &str) -> Change {
    match model.keys.get(prefix) {
        Some(k) => Change::PutKey(k.clone()),
        None => Change::RemoveKey(prefix.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::tests::{model, project_key, team_key};

    fn prefixes(m: &IndexedModel, requestor: &RequestorId) -> Vec<String> {
        let mut out: Vec<String> = m.keys_of(requestor).map(|k| k.prefix.to_string()).collect();
        out.sort();
        out
    }

    #[test]
    fn the_index_follows_puts_moves_removals_and_undo() {
        let mut m = IndexedModel::from(model(vec![
            team_key("AliceKey01", "alice", "acme", &["DEVELOPER"]),
            team_key("AliceKey02", "alice", "globex", &[]),
            team_key("BobKey0001", "bob", "acme", &[]),
        ]));
        let alice = RequestorId::User("alice".into());
        let bob = RequestorId::User("bob".into());
        assert_eq!(prefixes(&m, &alice), ["AliceKey01", "AliceKey02"]);
        let before = m.model().clone();
        // A key that changes owner moves between requestors; a removed key leaves its list.
        let moved = Arc::new(team_key("AliceKey02", "bob", "globex", &[]));
        let undo = m.apply_with_undo(&[
            Change::PutKey(moved),
            Change::RemoveKey("BobKey0001".into()),
        ]);
        assert_eq!(prefixes(&m, &alice), ["AliceKey01"]);
        assert_eq!(prefixes(&m, &bob), ["AliceKey02"]);
        for c in &undo {
            m.apply(c);
        }
        assert!(m == before, "undo restores the model");
        assert_eq!(prefixes(&m, &alice), ["AliceKey01", "AliceKey02"]);
        assert_eq!(prefixes(&m, &bob), ["BobKey0001"]);
        let rebuilt = IndexedModel::from(m.model().clone());
        for requestor in [&alice, &bob] {
            assert_eq!(prefixes(&rebuilt, requestor), prefixes(&m, requestor));
        }
        assert_eq!(rebuilt.by_requestor.len(), m.by_requestor.len());
    }

    #[test]
    fn project_keys_are_indexed_under_their_project() {
        let mut base = model(vec![]);
        base.projects.insert(
            "fraud".into(),
            Project {
                id: "fraud".into(),
                team: "acme".into(),
                name: String::new(),
            },
        );
        let mut m = IndexedModel::from(base);
        m.apply(&Change::PutKey(Arc::new(project_key(
            "FraudKey01",
            "fraud",
            &["SYSTEM_KEY"],
        ))));
        assert_eq!(
            prefixes(&m, &RequestorId::Project("fraud".into())),
            ["FraudKey01"]
        );
        assert!(prefixes(&m, &RequestorId::User("fraud".into())).is_empty());
    }
}
