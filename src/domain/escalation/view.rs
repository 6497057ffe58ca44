//! The two sides of a write the rule compares: the model as a store holds it, and an
//! [`Overlay`] of changes laid over it without a copy.

use std::{borrow::Cow, collections::HashMap, sync::Arc};

use compact_str::CompactString;

use crate::domain::{
    Catalog, IndexedModel, KeySpec, KeyType, Project, RequestorId, Team, User, model::Change,
};

/// One side of a write: the model before it or after it.
pub(crate) trait View {
    fn catalog(&self) -> &Catalog;
    fn key(&self, prefix: &str) -> Option<&Arc<KeySpec>>;
    fn team(&self, id: &str) -> Option<&Team>;
    fn user(&self, id: &str) -> Option<&Arc<User>>;
    fn project(&self, id: &str) -> Option<&Project>;
    /// Every key of `requestor`, whatever its status.
    fn keys_of(&self, requestor: &RequestorId) -> Vec<Arc<KeySpec>>;
    /// Every key (a scan: only for changes to teams and roles, which touch many keys).
    fn each_key(&self, f: &mut dyn FnMut(&Arc<KeySpec>));

    /// The team a key acts in: its own, or its project's.
    fn key_team(&self, key: &KeySpec) -> Option<Arc<str>> {
        match key.key_type {
            KeyType::Team => key.team.clone(),
            KeyType::Project => self.project(&key.owner).map(|p| p.team.clone()),
        }
    }
}

impl View for IndexedModel {
    fn catalog(&self) -> &Catalog {
        &self.model().catalog
    }
    fn key(&self, prefix: &str) -> Option<&Arc<KeySpec>> {
        self.model().keys.get(prefix)
    }
    fn team(&self, id: &str) -> Option<&Team> {
        self.model().teams.get(id)
    }
    fn user(&self, id: &str) -> Option<&Arc<User>> {
        self.model().users.get(id)
    }
    fn project(&self, id: &str) -> Option<&Project> {
        self.model().projects.get(id)
    }
    fn keys_of(&self, requestor: &RequestorId) -> Vec<Arc<KeySpec>> {
        IndexedModel::keys_of(self, requestor).cloned().collect()
    }
    fn each_key(&self, f: &mut dyn FnMut(&Arc<KeySpec>)) {
        self.model().keys.values().for_each(f);
    }
}

/// A model with changes laid over it, without copying the model: what `base` would be after
/// `changes` (or, given a write's undo, what it was before).
pub(crate) struct Overlay<'m> {
    base: &'m IndexedModel,
    catalog: Cow<'m, Catalog>,
    keys: HashMap<CompactString, Option<Arc<KeySpec>>>,
    teams: HashMap<Arc<str>, Option<Team>>,
    users: HashMap<Arc<str>, Option<Arc<User>>>,
    projects: HashMap<Arc<str>, Option<Project>>,
}

impl<'m> Overlay<'m> {
    pub(crate) fn new(base: &'m IndexedModel, changes: &[Change]) -> Self {
        let touches_catalog = changes.iter().any(|c| {
            matches!(
                c,
                Change::PutRole(_)
                    | Change::RemoveRole(_)
                    | Change::PutEntitlement(_)
                    | Change::RemoveEntitlement(_)
            )
        });
        let mut overlay = Overlay {
            base,
            catalog: Cow::Borrowed(&base.model().catalog),
            keys: HashMap::new(),
            teams: HashMap::new(),
            users: HashMap::new(),
            projects: HashMap::new(),
        };
        if touches_catalog {
            let mut catalog = base.model().catalog.clone();
            for c in changes {
                match c {
                    Change::PutRole(role) => catalog.put_role(role.clone()),
                    Change::RemoveRole(id) => catalog.remove_role(id),
                    Change::PutEntitlement(id) => {
                        catalog.add_entitlement(id);
                    }
                    Change::RemoveEntitlement(id) => {
                        catalog.remove_entitlement(id);
                    }
                    _ => {}
                }
            }
            overlay.catalog = Cow::Owned(catalog);
        }
        for c in changes {
            match c {
                Change::PutKey(k) => {
                    overlay.keys.insert(k.prefix.clone(), Some(k.clone()));
                }
                Change::RemoveKey(p) => {
                    overlay.keys.insert(CompactString::from(&**p), None);
                }
                Change::PutTeam(t) => {
                    overlay.teams.insert(t.id.clone(), Some(t.clone()));
                }
                Change::RemoveTeam(id) => {
                    overlay.teams.insert(id.clone(), None);
                }
                Change::PutUser(u) => {
                    overlay.users.insert(u.id.clone(), Some(u.clone()));
                }
                Change::RemoveUser(id) => {
                    overlay.users.insert(id.clone(), None);
                }
                Change::PutProject(p) => {
                    overlay.projects.insert(p.id.clone(), Some(p.clone()));
                }
                Change::RemoveProject(id) => {
                    overlay.projects.insert(id.clone(), None);
                }
                Change::PutRole(_)
                | Change::RemoveRole(_)
                | Change::PutEntitlement(_)
                | Change::RemoveEntitlement(_)
                | Change::PutRoutes(_)
                | Change::ResetRoutes => {}
            }
        }
        overlay
    }
}

impl View for Overlay<'_> {
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    fn key(&self, prefix: &str) -> Option<&Arc<KeySpec>> {
        match self.keys.get(prefix) {
            Some(laid) => laid.as_ref(),
            None => self.base.model().keys.get(prefix),
        }
    }
    fn team(&self, id: &str) -> Option<&Team> {
        match self.teams.get(id) {
            Some(laid) => laid.as_ref(),
            None => self.base.model().teams.get(id),
        }
    }
    fn user(&self, id: &str) -> Option<&Arc<User>> {
        match self.users.get(id) {
            Some(laid) => laid.as_ref(),
            None => self.base.model().users.get(id),
        }
    }
    fn project(&self, id: &str) -> Option<&Project> {
        match self.projects.get(id) {
            Some(laid) => laid.as_ref(),
            None => self.base.model().projects.get(id),
        }
    }
    fn keys_of(&self, requestor: &RequestorId) -> Vec<Arc<KeySpec>> {
        let mut out: Vec<Arc<KeySpec>> = self
            .base
            .keys_of(requestor)
            .filter(|k| !self.keys.contains_key(&k.prefix))
            .cloned()
            .collect();
        out.extend(
            self.keys
                .values()
                .flatten()
                .filter(|k| RequestorId::of(k) == *requestor)
                .cloned(),
        );
        out
    }
    fn each_key(&self, f: &mut dyn FnMut(&Arc<KeySpec>)) {
        for k in self.base.model().keys.values() {
            if !self.keys.contains_key(&k.prefix) {
                f(k);
            }
        }
        self.keys.values().flatten().for_each(f);
    }
}
