//! The changes between two models.

use std::{borrow::Borrow, sync::Arc};

use super::{Change, Model};
use crate::domain::{IdMap, idmap::HasId};

impl Model {
    /// The changes that turn `self` into `new`: puts first (entitlements, roles, teams, users,
    /// projects, keys, the route table), then removals in the reverse order, so that every
    /// prefix of the list only refers to objects that exist.
    pub fn diff(&self, new: &Model) -> Vec<Change> {
        let mut changes = Vec::new();
        let old_ents = self.catalog.added_entitlements();
        let new_ents = new.catalog.added_entitlements();
        for ent in new_ents.iter().filter(|e| !old_ents.contains(e)) {
            changes.push(Change::PutEntitlement(ent.clone()));
        }
        let mut roles: Vec<_> = new
            .catalog
            .roles()
            .filter(|r| self.catalog.role(&r.id) != Some(*r))
            .cloned()
            .collect();
        roles.sort_by(|a, b| a.id.cmp(&b.id));
        changes.extend(roles.into_iter().map(Change::PutRole));
        put_changed(&self.teams, &new.teams, Change::PutTeam, &mut changes);
        put_changed(&self.users, &new.users, Change::PutUser, &mut changes);
        put_changed(
            &self.projects,
            &new.projects,
            Change::PutProject,
            &mut changes,
        );
        put_changed(&self.keys, &new.keys, Change::PutKey, &mut changes);
        // The route table after the entitlements it may name are put, before those the old
        // table named are removed.
        match (&self.routes, &new.routes) {
            (old, Some(routes)) if old.as_deref() != Some(&**routes) => {
                changes.push(Change::PutRoutes(routes.clone()));
            }
            (Some(_), None) => changes.push(Change::ResetRoutes),
            _ => {}
        }
        removed(
            &self.keys,
            &new.keys,
            |p| Change::RemoveKey(Arc::from(p.as_str())),
            &mut changes,
        );
        removed(
            &self.projects,
            &new.projects,
            |id| Change::RemoveProject(id.clone()),
            &mut changes,
        );
        removed(
            &self.users,
            &new.users,
            |id| Change::RemoveUser(id.clone()),
            &mut changes,
        );
        removed(
            &self.teams,
            &new.teams,
            |id| Change::RemoveTeam(id.clone()),
            &mut changes,
        );
        let mut gone_roles: Vec<_> = self
            .catalog
            .roles()
            .filter(|r| new.catalog.role(&r.id).is_none())
            .map(|r| r.id.clone())
            .collect();
        gone_roles.sort();
        changes.extend(gone_roles.into_iter().map(Change::RemoveRole));
        for ent in old_ents.iter().filter(|e| !new_ents.contains(e)) {
            changes.push(Change::RemoveEntitlement(ent.clone()));
        }
        changes
    }
}

fn put_changed<V>(old: &IdMap<V>, new: &IdMap<V>, put: fn(V) -> Change, out: &mut Vec<Change>)
where
    V: HasId + Clone + PartialEq,
    V::Id: Ord + std::ops::Deref<Target = str> + Borrow<str>,
{
    let mut ids: Vec<_> = new
        .iter()
        .filter(|(id, v)| old.get(&***id) != Some(*v))
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    out.extend(ids.into_iter().map(|id| put(new[&**id].clone())));
}

fn removed<V>(
    old: &IdMap<V>,
    new: &IdMap<V>,
    remove: impl Fn(&V::Id) -> Change,
    out: &mut Vec<Change>,
) where
    V: HasId,
    V::Id: Ord + std::ops::Deref<Target = str> + Borrow<str>,
{
    let mut ids: Vec<_> = old.keys().filter(|id| !new.contains_key(&***id)).collect();
    ids.sort();
    out.extend(ids.into_iter().map(remove));
}
