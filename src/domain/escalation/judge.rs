//! The checks of the rule, object by object (see the module above for the terms).

use std::{collections::BTreeSet, sync::Arc};

use compact_str::CompactString;

use super::{Actor, OWNER_ROLE, Reach, Refusal, View, describe, no_team, reach, usable_owner};
use crate::domain::{
    KeySpec, KeyStatus, RequestorId, Role, Scope, catalog::TEAM_ROLE, model::ObjectRef,
};

pub(super) struct Judge<'a, B, A> {
    pub(super) actor: &'a Actor,
    pub(super) before: &'a B,
    pub(super) after: &'a A,
    pub(super) now: i64,
    /// Requestors acted against: each must be within the caller's administration before.
    pub(super) acted: BTreeSet<RequestorId>,
    /// Requestors a credential was minted for: each must be within it after.
    pub(super) minted: BTreeSet<RequestorId>,
    /// Keys that were usable SYSTEM_OWNER keys before the write and may not be after it.
    pub(super) owner_risk: Vec<CompactString>,
}

impl<B: View, A: View> Judge<'_, B, A> {
    fn deny(&self, why: String) -> Refusal {
        Refusal::Denied(format!("key {} may not {why}", self.actor.prefix))
    }

    /// Requires `entitlement` at TEAM over `team` (or ALL).
    pub(super) fn over_team(
        &self,
        entitlement: &str,
        team: &str,
        what: &str,
    ) -> Result<(), Refusal> {
        if self.actor.holds(entitlement, Scope::Team, Some(team)) {
            Ok(())
        } else {
            Err(self.deny(format!(
                "{what}: it needs {entitlement} at TEAM over team {team}, or at ALL"
            )))
        }
    }

    /// Requires `entitlement` at ALL.
    pub(super) fn at_all(&self, entitlement: &str, what: &str) -> Result<(), Refusal> {
        if self.actor.holds(entitlement, Scope::All, None) {
            Ok(())
        } else {
            Err(self.deny(format!("{what}: it needs {entitlement} at ALL")))
        }
    }

    /// Requires every ALL grant of `role` (in `catalog`) to be one the caller may hand out.
    fn role_within(&self, role: &Role, what: &str) -> Result<(), Refusal> {
        for g in role.grants.iter().filter(|g| g.scope == Scope::All) {
            if !self.actor.may_hand_out_all(&g.entitlement) {
                return Err(self.deny(format!(
                    "{what}: role {} grants {} at ALL, which the caller does not hold at ALL",
                    role.id, g.entitlement
                )));
            }
        }
        Ok(())
    }

    pub(super) fn object(&mut self, object: &ObjectRef) -> Result<(), Refusal> {
        match object {
            ObjectRef::Entitlement(id) => {
                let (b, a) = (
                    self.before.catalog().has_entitlement(id),
                    self.after.catalog().has_entitlement(id),
                );
                match (b, a) {
                    (false, true) => self.at_all("roles.create", &format!("add entitlement {id}")),
                    (true, false) => {
                        self.at_all("roles.update", &format!("remove entitlement {id}"))
                    }
                    _ => Ok(()),
                }
            }
            ObjectRef::Role(id) => self.role(id),
            ObjectRef::Team(id) => self.team(id),
            ObjectRef::User(id) => self.user(id),
            ObjectRef::Project(id) => self.project(id),
            ObjectRef::Key(prefix) => self.key(prefix),
            // The route table decides which entitlement every proxied request needs: changing it
            // is as wide as redefining the roles.
            ObjectRef::Routes | ObjectRef::Route(_) => {
                self.at_all("roles.update", "change the route table")
            }
        }
    }

    fn role(&mut self, id: &Arc<str>) -> Result<(), Refusal> {
        let before = self.before.catalog().role(id).cloned();
        let after = self.after.catalog().role(id).cloned();
        if before == after {
            return Ok(());
        }
        let what = format!("define role {id}");
        match &before {
            None => self.at_all("roles.create", &what)?,
            Some(_) => self.at_all("roles.update", &what)?,
        }
        if let Some(role) = &after {
            self.role_within(role, &what)?;
        }
        // Lock-out: the owner role keeps every grant it has.
        if &**id == OWNER_ROLE {
            let kept =
                |g: &crate::domain::Grant| after.as_ref().is_some_and(|a| a.grants.contains(g));
            if let Some(lost) = before
                .iter()
                .flat_map(|b| b.grants.iter())
                .find(|g| !kept(g))
            {
                return Err(Refusal::LockOut(format!(
                    "the change would take {} at {} from {OWNER_ROLE}: the role that can always \
                     administer the store keeps its grants",
                    lost.entitlement, lost.scope
                )));
            }
        }
        // A change to a role's grants changes every holder: each must be administered.
        let every_key = &**id == TEAM_ROLE;
        let mut holders: Vec<Arc<KeySpec>> = Vec::new();
        self.before.each_key(&mut |k| {
            if every_key || k.roles.contains(id) {
                holders.push(k.clone());
            }
        });
        for key in holders {
            let team = self.before.key_team(&key).unwrap_or_else(no_team);
            if !self.actor.administers(&team) {
                return Err(self.deny(format!(
                    "{what}: key {} holds it and its team {team} is not administered by the caller",
                    key.prefix
                )));
            }
            self.acted.insert(RequestorId::of(&key));
        }
        Ok(())
    }

    fn keys_in_team(&self, team: &str) -> Vec<Arc<KeySpec>> {
        let mut out = Vec::new();
        self.before.each_key(&mut |k| {
            if self.before.key_team(k).is_some_and(|t| &*t == team) {
                out.push(k.clone());
            }
        });
        out
    }

    fn team(&mut self, id: &Arc<str>) -> Result<(), Refusal> {
        let before = self.before.team(id).cloned();
        let after = self.after.team(id).cloned();
        let what = format!("change team {id}");
        match (&before, &after) {
            (None, None) => Ok(()),
            (None, Some(_)) => self.at_all("accounts.update", &format!("create team {id}")),
            (Some(b), a) => {
                match a {
                    None => self.at_all("accounts.update", &format!("delete team {id}"))?,
                    Some(_) => self.over_team("accounts.update", id, &what)?,
                }
                let active_after = a.as_ref().is_some_and(|a| a.active);
                if b.active != active_after {
                    // Every key of the team stops (or starts) acting: its holders are acted
                    // against (or get back their credentials).
                    for key in self.keys_in_team(id) {
                        let requestor = RequestorId::of(&key);
                        if b.active {
                            if usable_owner(self.before, &key, self.now) {
                                self.owner_risk.push(key.prefix.clone());
                            }
                            self.acted.insert(requestor);
                        } else {
                            self.minted.insert(requestor);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn user(&mut self, id: &Arc<str>) -> Result<(), Refusal> {
        let before = self.before.user(id).cloned();
        let after = self.after.user(id).cloned();
        if before == after {
            return Ok(());
        }
        let requestor = RequestorId::User(id.clone());
        // Self-service: a user may rename itself.
        if let (Some(b), Some(a)) = (&before, &after)
            && self.actor.requestor == requestor
            && b.active == a.active
            && b.teams == a.teams
            && self.actor.holds("profile.update", Scope::Own, None)
        {
            return Ok(());
        }
        // The user's teams: listed before and after, and those of its keys.
        let mut teams: BTreeSet<Arc<str>> = BTreeSet::new();
        for u in before.iter().chain(after.iter()) {
            teams.extend(u.teams.iter().cloned());
        }
        teams.extend(reach(self.before, &requestor).teams);
        let entitlement = if before.is_none() {
            "users.create"
        } else {
            "users.update"
        };
        let what = match (&before, &after) {
            (None, _) => format!("create user {id}"),
            (_, None) => format!("delete user {id}"),
            _ => format!("change user {id}"),
        };
        if teams.is_empty() {
            self.at_all(entitlement, &what)?;
        }
        for team in &teams {
            self.over_team(entitlement, team, &what)?;
        }
        let active_before = before.as_ref().is_some_and(|u| u.active);
        let active_after = after.as_ref().is_some_and(|u| u.active);
        if active_before && !active_after {
            for key in self.before.keys_of(&requestor) {
                if usable_owner(self.before, &key, self.now) {
                    self.owner_risk.push(key.prefix.clone());
                }
            }
        } else if !active_before && active_after && before.is_some() {
            self.minted.insert(requestor.clone());
        }
        // Any change to an existing user (its name too) is a change to its requestor.
        if before.is_some() {
            self.acted.insert(requestor);
        }
        Ok(())
    }

    /// A team's projects are administered with `projects.create` / `projects.update` over the
    /// team, or with the team's own administration (`accounts.update` over it).
    pub(super) fn over_projects(
        &self,
        entitlement: &str,
        team: &str,
        what: &str,
    ) -> Result<(), Refusal> {
        if self.actor.holds("accounts.update", Scope::Team, Some(team)) {
            return Ok(());
        }
        self.over_team(entitlement, team, what)
    }

    fn project(&mut self, id: &Arc<str>) -> Result<(), Refusal> {
        let before = self.before.project(id).cloned();
        let after = self.after.project(id).cloned();
        if before == after {
            return Ok(());
        }
        let requestor = RequestorId::Project(id.clone());
        match (&before, &after) {
            (None, None) => {}
            (None, Some(a)) => {
                self.over_projects("projects.create", &a.team, &format!("create project {id}"))?
            }
            (Some(b), None) => {
                self.over_projects("projects.update", &b.team, &format!("delete project {id}"))?;
                self.acted.insert(requestor);
            }
            (Some(b), Some(a)) => {
                let what = format!("change project {id}");
                self.over_projects("projects.update", &b.team, &what)?;
                self.over_projects("projects.update", &a.team, &what)?;
                if a.team != b.team {
                    // Its keys move to another team: handed to whoever administers it.
                    self.minted.insert(requestor.clone());
                }
                self.acted.insert(requestor);
            }
        }
        Ok(())
    }

    fn key(&mut self, prefix: &Arc<str>) -> Result<(), Refusal> {
        let before = self.before.key(prefix).cloned();
        let after = self.after.key(prefix).cloned();
        if before == after {
            return Ok(());
        }
        if let Some(b) = &before
            && usable_owner(self.before, b, self.now)
        {
            self.owner_risk.push(b.prefix.clone());
        }
        let same_holder = match (&before, &after) {
            (Some(b), Some(a)) => {
                RequestorId::of(b) == RequestorId::of(a)
                    && self.before.key_team(b) == self.after.key_team(a)
                    && b.key_type == a.key_type
            }
            _ => false,
        };
        if same_holder {
            let (b, a) = (before.unwrap(), after.unwrap());
            return self.update_key(&b, &a);
        }
        if let Some(b) = &before {
            self.remove_key(b)?;
        }
        if let Some(a) = &after {
            self.create_key(a)?;
        }
        Ok(())
    }

    fn team_of_before(&self, key: &KeySpec) -> Arc<str> {
        self.before.key_team(key).unwrap_or_else(no_team)
    }

    fn remove_key(&mut self, b: &KeySpec) -> Result<(), Refusal> {
        let requestor = RequestorId::of(b);
        if requestor == self.actor.requestor && self.actor.holds("keys.update", Scope::Own, None) {
            return Ok(()); // self-service: deleting one's own key
        }
        let team = self.team_of_before(b);
        self.over_team("keys.update", &team, &format!("delete key {}", b.prefix))?;
        self.acted.insert(requestor);
        Ok(())
    }

    fn create_key(&mut self, a: &KeySpec) -> Result<(), Refusal> {
        let what = format!("create key {}", a.prefix);
        let team = self.after.key_team(a).unwrap_or_else(no_team);
        self.over_team("keys.create", &team, &what)?;
        self.bind(&a.roles, &[], &team, &what)?;
        self.minted.insert(RequestorId::of(a));
        Ok(())
    }

    /// Binding `roles` (those not in `had`) to a key of `team`.
    fn bind(
        &self,
        roles: &[Arc<str>],
        had: &[Arc<str>],
        team: &str,
        what: &str,
    ) -> Result<(), Refusal> {
        for id in roles.iter().filter(|r| !had.contains(r)) {
            // An unknown role is left to validation, which names it.
            if let Some(role) = self.after.catalog().role(id) {
                self.role_within(role, &format!("{what} (binding role {id} in team {team})"))?;
            }
        }
        Ok(())
    }

    fn update_key(&mut self, b: &KeySpec, a: &KeySpec) -> Result<(), Refusal> {
        let requestor = RequestorId::of(b);
        let expiry = |k: &KeySpec| k.expires_at.unix().unwrap_or(i64::MAX);
        let reactivated = b.status != KeyStatus::Active && a.status == KeyStatus::Active;
        let deactivated = b.status == KeyStatus::Active && a.status != KeyStatus::Active;
        let roles_changed = b.roles != a.roles;
        let extended = expiry(a) > expiry(b);
        let shortened = expiry(a) < expiry(b);
        let rekeyed = a.secret_hash != b.secret_hash;
        let what = format!("change key {}", b.prefix);

        // Self-service: deactivate, re-key or shorten one's own key (never widen it).
        if requestor == self.actor.requestor
            && !reactivated
            && !roles_changed
            && !extended
            && self.actor.holds("keys.update", Scope::Own, None)
        {
            return Ok(());
        }
        let team = self.team_of_before(b);
        self.over_team("keys.update", &team, &what)?;
        self.bind(&a.roles, &b.roles, &team, &what)?;
        let stripped = b.roles.iter().any(|r| !a.roles.contains(r));
        if deactivated || stripped || shortened || rekeyed || b.status != a.status {
            self.acted.insert(requestor.clone());
        }
        if reactivated || roles_changed || extended || rekeyed {
            self.minted.insert(requestor);
        }
        Ok(())
    }

    /// Whether `requestor` is within the caller's administration in `view`; why not, if not.
    fn within(&self, view: &impl View, requestor: &RequestorId) -> Result<(), String> {
        let Reach { teams, power } = reach(view, requestor);
        if let Some(team) = teams.iter().find(|t| !self.actor.administers(t)) {
            return Err(format!(
                "{} holds a key in team {team}, which the caller does not administer",
                describe(requestor)
            ));
        }
        if let Some(e) = power.iter().find(|e| !self.actor.may_hand_out_all(e)) {
            return Err(format!(
                "{} holds {e} at ALL, which the caller does not hold at ALL",
                describe(requestor)
            ));
        }
        Ok(())
    }

    pub(super) fn finish(self) -> Result<(), Refusal> {
        for requestor in &self.acted {
            self.within(self.before, requestor)
                .map_err(|why| self.deny(format!("act against {}: {why}", describe(requestor))))?;
        }
        for requestor in &self.minted {
            self.within(self.after, requestor).map_err(|why| {
                self.deny(format!(
                    "obtain a credential acting as {}: {why}",
                    describe(requestor)
                ))
            })?;
        }
        self.lock_out()
    }

    /// No write may leave the store without a usable SYSTEM_OWNER key.
    fn lock_out(&self) -> Result<(), Refusal> {
        let lost = self.owner_risk.iter().any(|p| {
            !self
                .after
                .key(p)
                .is_some_and(|k| usable_owner(self.after, k, self.now))
        });
        if !lost {
            return Ok(());
        }
        // The caller's own keys first: an owner usually keeps one.
        let own = self.after.keys_of(&self.actor.requestor);
        if own.iter().any(|k| usable_owner(self.after, k, self.now)) {
            return Ok(());
        }
        let mut remains = false;
        self.after.each_key(&mut |k| {
            remains = remains || usable_owner(self.after, k, self.now);
        });
        if remains {
            Ok(())
        } else {
            Err(Refusal::LockOut(format!(
                "the change would leave no active, unexpired {OWNER_ROLE} key of an active user \
                 and team, and nobody could administer the store; create or reactivate another \
                 {OWNER_ROLE} key first"
            )))
        }
    }
}
