//! The administration history: who made each committed revision (the caller's key prefix, the
//! Admin RPC or `Apply`, the time), what it touched (the teams whose data changed), and who may
//! read which entries at the scope of `audit.read` they hold. Pure: the origins store the
//! entries in the same commit as the change, in the encoding below.
//!
//! # Encoding (version 1)
//!
//! The entries of one revision are stored together under that revision (the embedded store
//! gives each write its own revision; etcd commits a group of writes as one). The value is a
//! JSON object: `{"v":1,"writes":[{"caller":"<key prefix>","user":"<user id>"|null,
//! "action":"<RPC name>","unix_ms":<i64>,"teams":["<team id>",…],"beyond_teams":<bool>}, …]}`.
//! `v` is the version; a reader refuses any other, and a later version adds fields, never
//! changes these. `user` is the user of the caller's key when it has one (a team key); it
//! decides what an OWN-scoped reader sees. `beyond_teams` is true when the write changed
//! something no single team owns (a role, an entitlement, the route table, a user in no team).

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::{KeySpec, KeyType, Model, admin::Command, model::Change};

/// The encoding version written by this build.
pub const HISTORY_VERSION: u32 = 1;

/// The most entries one stored revision may hold when read back (a group of writes is at most
/// this large; a larger value is corrupt, never allocated for).
pub const MAX_WRITES_PER_REVISION: usize = 4096;

/// One administrative write, as the history keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The revision the write committed as.
    pub revision: u64,
    /// The caller's key prefix (never its secret).
    pub caller: CompactString,
    /// The user of the caller's key, when it is a team key.
    pub caller_user: Option<Arc<str>>,
    /// The Admin RPC (`CreateTeam`, `UpdateKey`, …) or `Apply`.
    pub action: CompactString,
    /// When it was committed, in Unix milliseconds.
    pub unix_ms: i64,
    /// The teams whose data the write changed, sorted.
    pub teams: Vec<Arc<str>>,
    /// Whether it changed something no single team owns.
    pub beyond_teams: bool,
}

/// A stored history value that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("administration history of revision {revision}: {message}")]
pub struct CorruptHistory {
    pub revision: u64,
    pub message: String,
}

#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    v: u32,
    #[serde(borrow)]
    writes: Vec<StoredWrite<'a>>,
}

#[derive(Serialize, Deserialize)]
struct StoredWrite<'a> {
    caller: &'a str,
    user: Option<&'a str>,
    action: &'a str,
    unix_ms: i64,
    teams: Vec<&'a str>,
    beyond_teams: bool,
}

/// The stored value of the entries of one revision.
pub fn encode(entries: &[HistoryEntry]) -> Vec<u8> {
    let stored = Stored {
        v: HISTORY_VERSION,
        writes: entries
            .iter()
            .map(|e| StoredWrite {
                caller: &e.caller,
                user: e.caller_user.as_deref(),
                action: &e.action,
                unix_ms: e.unix_ms,
                teams: e.teams.iter().map(|t| &**t).collect(),
                beyond_teams: e.beyond_teams,
            })
            .collect(),
    };
    serde_json::to_vec(&stored).expect("the history entry serializes")
}

/// The entries of `revision` from their stored value.
pub fn decode(revision: u64, bytes: &[u8]) -> Result<Vec<HistoryEntry>, CorruptHistory> {
    let corrupt = |message: String| CorruptHistory { revision, message };
    let stored: Stored<'_> =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not a history value: {e}")))?;
    if stored.v != HISTORY_VERSION {
        return Err(corrupt(format!(
            "encoding version {} is not known to this build (it reads {HISTORY_VERSION})",
            stored.v
        )));
    }
    if stored.writes.len() > MAX_WRITES_PER_REVISION {
        return Err(corrupt(format!(
            "{} writes in one revision",
            stored.writes.len()
        )));
    }
    Ok(stored
        .writes
        .into_iter()
        .map(|w| HistoryEntry {
            revision,
            caller: w.caller.into(),
            caller_user: w.user.map(Arc::from),
            action: w.action.into(),
            unix_ms: w.unix_ms,
            teams: w.teams.into_iter().map(Arc::from).collect(),
            beyond_teams: w.beyond_teams,
        })
        .collect())
}

impl Command {
    /// The Admin RPC that makes this command (`Apply` for a policy document).
    pub fn rpc_name(&self) -> &'static str {
        match self {
            Command::CreateTeam(_) => "CreateTeam",
            Command::UpdateTeam { .. } => "UpdateTeam",
            Command::DeleteTeam(_) => "DeleteTeam",
            Command::CreateUser(_) => "CreateUser",
            Command::UpdateUser { .. } => "UpdateUser",
            Command::DeleteUser(_) => "DeleteUser",
            Command::CreateProject(_) => "CreateProject",
            Command::UpdateProject { .. } => "UpdateProject",
            Command::DeleteProject(_) => "DeleteProject",
            Command::CreateKey(_) => "CreateKey",
            Command::UpdateKey { .. } => "UpdateKey",
            Command::ReplaceKeySecret { .. } => "ReplaceKeySecret",
            Command::DeleteKey(_) => "DeleteKey",
            Command::CreateRole(_) => "CreateRole",
            Command::UpdateRole(_) => "UpdateRole",
            Command::DeleteRole(_) => "DeleteRole",
            Command::AddEntitlements(_) => "AddEntitlements",
            Command::Apply { .. } => "Apply",
        }
    }
}

/// Who made a write and how, taken before it runs (the write may delete the caller's own key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Author {
    /// The caller's key prefix.
    pub caller: CompactString,
    /// The user of the caller's key, when it is a team key.
    pub caller_user: Option<Arc<str>>,
    /// The RPC name of the command.
    pub action: &'static str,
    /// When, in Unix milliseconds.
    pub unix_ms: i64,
}

impl Author {
    /// The caller `caller` about to run `command` on `model`.
    pub fn of(model: &Model, caller: &str, command: &Command, unix_ms: i64) -> Self {
        Author {
            caller: caller.into(),
            caller_user: model.keys.get(caller).and_then(|k| k.user().cloned()),
            action: command.rpc_name(),
            unix_ms,
        }
    }
}

/// The history entry of a committed write by `author`: `changes` made on the model, which
/// `undo` takes back; `after` is the model with the changes applied. Both the objects as they
/// were and as they are count, so a move from one team to another touches both.
pub fn entry(
    revision: u64,
    author: Author,
    changes: &[Change],
    undo: &[Change],
    after: &Model,
) -> HistoryEntry {
    let mut teams = BTreeSet::new();
    let mut beyond_teams = false;
    let mut key_teams: Option<HashMap<&str, Vec<Arc<str>>>> = None;
    // A project key's team is its project's, which the same write may have removed.
    let project_team = |id: &str| -> Option<Arc<str>> {
        after.projects.get(id).map(|p| p.team.clone()).or_else(|| {
            changes.iter().chain(undo).find_map(|c| match c {
                Change::PutProject(p) if *p.id == *id => Some(p.team.clone()),
                _ => None,
            })
        })
    };
    let key_team = |k: &KeySpec| match k.key_type {
        KeyType::Team => k.team.clone(),
        KeyType::Project => project_team(&k.owner),
    };
    for change in changes.iter().chain(undo) {
        match change {
            Change::PutTeam(t) => {
                teams.insert(t.id.clone());
            }
            Change::RemoveTeam(id) => {
                teams.insert(id.clone());
            }
            Change::PutUser(u) if !u.teams.is_empty() => {
                // A user's keys are in its listed teams (a rule of the model).
                teams.extend(u.teams.iter().cloned());
            }
            Change::PutUser(u) => {
                // A user in no listed team belongs to the teams of its keys: found in one pass
                // over the keys for the whole write, however many users it changes.
                let of_user = key_teams
                    .get_or_insert_with(|| {
                        let mut by_user: HashMap<&str, Vec<Arc<str>>> = HashMap::new();
                        for k in after.keys.values() {
                            if let (Some(user), Some(team)) = (k.user(), key_team(k)) {
                                by_user.entry(&**user).or_default().push(team);
                            }
                        }
                        by_user
                    })
                    .get(&*u.id);
                match of_user {
                    Some(of_user) => teams.extend(of_user.iter().cloned()),
                    None => beyond_teams = true,
                }
            }
            Change::PutProject(p) => {
                teams.insert(p.team.clone());
            }
            Change::PutKey(k) => match key_team(k) {
                Some(t) => {
                    teams.insert(t);
                }
                None => beyond_teams = true,
            },
            // The object as it was is in the other list (a removal's undo puts it back).
            Change::RemoveUser(_) | Change::RemoveProject(_) | Change::RemoveKey(_) => {}
            Change::PutEntitlement(_)
            | Change::RemoveEntitlement(_)
            | Change::PutRole(_)
            | Change::RemoveRole(_)
            | Change::PutRoutes(_)
            | Change::ResetRoutes => beyond_teams = true,
        }
    }
    HistoryEntry {
        revision,
        caller: author.caller,
        caller_user: author.caller_user,
        action: author.action.into(),
        unix_ms: author.unix_ms,
        teams: teams.into_iter().collect(),
        beyond_teams,
    }
}

/// Which history entries a reader of `audit.read` may see, from the scope(s) it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryReader {
    /// `audit.read` at ALL: every entry.
    pub all: bool,
    /// At TEAM: the entries that touched only these teams.
    pub teams: BTreeSet<Arc<str>>,
    /// At OWN: the entries made with these keys …
    pub own_keys: BTreeSet<CompactString>,
    /// … or by this user (with any of its keys).
    pub own_user: Option<Arc<str>>,
}

impl HistoryReader {
    /// Whether the reader may see `entry`. TEAM sees a write that touched at least one team and
    /// nothing beyond the reader's teams (a write that also touched another team, or something
    /// no team owns, would tell of data the reader may not read); OWN sees the writes the
    /// reader's own user (or key) made.
    pub fn sees(&self, entry: &HistoryEntry) -> bool {
        if self.all {
            return true;
        }
        let own = self.own_keys.contains(&entry.caller)
            || (self.own_user.is_some() && self.own_user == entry.caller_user);
        let within_teams = !entry.beyond_teams
            && !entry.teams.is_empty()
            && entry.teams.iter().all(|t| self.teams.contains(t));
        own || within_teams
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Project, Team, TeamList,
        model::tests::{team_key, user},
    };

    fn team(id: &str) -> Team {
        Team {
            id: id.into(),
            name: id.into(),
            active: true,
        }
    }

    fn entry_of(changes: &[Change], undo: &[Change], after: &Model) -> HistoryEntry {
        let author = Author {
            caller: "Caller0001".into(),
            caller_user: Some("alice".into()),
            action: Command::DeleteTeam("x".into()).rpc_name(),
            unix_ms: 1_000,
        };
        entry(7, author, changes, undo, after)
    }

    fn names(e: &HistoryEntry) -> Vec<&str> {
        e.teams.iter().map(|t| &**t).collect()
    }

    #[test]
    fn the_teams_touched_come_from_the_objects_before_and_after() {
        let mut after = Model::default();
        after.projects.insert(
            "web".into(),
            Project {
                id: "web".into(),
                team: "acme".into(),
                name: "Web".into(),
            },
        );
        // A team created: its own team.
        let e = entry_of(
            &[Change::PutTeam(team("acme"))],
            &[Change::RemoveTeam("acme".into())],
            &after,
        );
        assert_eq!((names(&e), e.beyond_teams), (vec!["acme"], false));
        // A key moved from one team to another touches both.
        let k_new = team_key("Key00001", "bob", "beta", &["DEVELOPER"]);
        let k_old = team_key("Key00001", "bob", "acme", &["DEVELOPER"]);
        let e = entry_of(
            &[Change::PutKey(Arc::new(k_new))],
            &[Change::PutKey(Arc::new(k_old.clone()))],
            &after,
        );
        assert_eq!(names(&e), vec!["acme", "beta"]);
        // A deleted key: its team comes from the undo.
        let e = entry_of(
            &[Change::RemoveKey("Key00001".into())],
            &[Change::PutKey(Arc::new(k_old))],
            &after,
        );
        assert_eq!((names(&e), e.beyond_teams), (vec!["acme"], false));
        // A project key: its project's team.
        let mut pk = team_key("Key00002", "web", "acme", &["DEVELOPER"]);
        pk.key_type = KeyType::Project;
        pk.team = None;
        let e = entry_of(
            &[Change::PutKey(Arc::new(pk))],
            &[Change::RemoveKey("Key00002".into())],
            &after,
        );
        assert_eq!(names(&e), vec!["acme"]);
        // A user in no team, a role, the routes: beyond any team.
        let e = entry_of(&[Change::PutUser(Arc::new(user("carol")))], &[], &after);
        assert!(e.beyond_teams);
        let e = entry_of(&[Change::PutEntitlement("x.read".into())], &[], &after);
        assert!(e.beyond_teams && e.teams.is_empty());
        let e = entry_of(&[Change::ResetRoutes], &[], &after);
        assert!(e.beyond_teams);
        // A user in no listed team, with a key: the key's team.
        let mut with_key = after.clone();
        with_key.keys.insert(
            "Key00003".into(),
            Arc::new(team_key("Key00003", "erin", "gamma", &["DEVELOPER"])),
        );
        let e = entry_of(&[Change::PutUser(Arc::new(user("erin")))], &[], &with_key);
        assert_eq!((names(&e), e.beyond_teams), (vec!["gamma"], false));
        // A user in a team: that team.
        let mut dana = user("dana");
        dana.teams = TeamList::from(vec![Arc::from("beta")]);
        let e = entry_of(
            &[Change::PutUser(Arc::new(dana))],
            &[Change::RemoveUser("dana".into())],
            &after,
        );
        assert_eq!((names(&e), e.beyond_teams), (vec!["beta"], false));
        assert_eq!(e.action, "DeleteTeam");
    }

    fn written(caller: &str, user: Option<&str>, teams: &[&str], beyond: bool) -> HistoryEntry {
        HistoryEntry {
            revision: 3,
            caller: caller.into(),
            caller_user: user.map(Arc::from),
            action: "UpdateTeam".into(),
            unix_ms: 5,
            teams: teams.iter().map(|t| Arc::from(*t)).collect(),
            beyond_teams: beyond,
        }
    }

    #[test]
    fn each_scope_sees_its_entries() {
        let acme_only = written("Other0001", Some("zed"), &["acme"], false);
        let acme_and_beta = written("Other0001", Some("zed"), &["acme", "beta"], false);
        let a_role = written("Other0001", Some("zed"), &[], true);
        let alices = written("Alice0001", Some("alice"), &["beta"], true);
        let alices_other_key = written("Alice0002", Some("alice"), &[], true);
        let entries = [
            &acme_only,
            &acme_and_beta,
            &a_role,
            &alices,
            &alices_other_key,
        ];
        let seen = |r: &HistoryReader| -> Vec<bool> { entries.iter().map(|e| r.sees(e)).collect() };

        let all = HistoryReader {
            all: true,
            ..Default::default()
        };
        assert_eq!(seen(&all), [true; 5]);

        // TEAM over acme: only what touched acme alone.
        let team = HistoryReader {
            teams: [Arc::from("acme")].into(),
            ..Default::default()
        };
        assert_eq!(seen(&team), [true, false, false, false, false]);
        let both = HistoryReader {
            teams: [Arc::from("acme"), Arc::from("beta")].into(),
            ..Default::default()
        };
        assert_eq!(seen(&both), [true, true, false, false, false]);

        // OWN: what the reader's user made, with any of its keys; nothing else.
        let own = HistoryReader {
            own_keys: ["Alice0001".into()].into(),
            own_user: Some("alice".into()),
            ..Default::default()
        };
        assert_eq!(seen(&own), [false, false, false, true, true]);
        // A key with no user (a project key) sees what that key made.
        let own_key = HistoryReader {
            own_keys: ["Alice0002".into()].into(),
            ..Default::default()
        };
        assert_eq!(seen(&own_key), [false, false, false, false, true]);
        // Nothing held: nothing seen.
        assert_eq!(seen(&HistoryReader::default()), [false; 5]);
    }

    #[test]
    fn the_encoding_round_trips_and_refuses_what_it_does_not_know() {
        let entries = vec![
            written("Alice0001", Some("alice"), &["acme", "beta"], false),
            written("Proj00001", None, &[], true),
        ];
        let bytes = encode(&entries);
        assert_eq!(decode(3, &bytes).unwrap(), entries);
        // The revision comes from where the value is stored.
        assert!(decode(9, &bytes).unwrap().iter().all(|e| e.revision == 9));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("{\"v\":1,\"writes\":["), "{text}");

        let later = text.replace("\"v\":1", "\"v\":2");
        let err = decode(3, later.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        assert!(decode(3, b"").is_err());
        assert!(decode(3, b"{\"v\":1}").is_err());
    }

    #[test]
    fn every_command_names_its_rpc() {
        assert_eq!(
            Command::Apply {
                document: Box::default(),
                prune: false
            }
            .rpc_name(),
            "Apply"
        );
        assert_eq!(Command::DeleteKey("k".into()).rpc_name(), "DeleteKey");
        let mut m = Model::default();
        m.keys.insert(
            "Key00001".into(),
            Arc::new(team_key("Key00001", "alice", "acme", &["DEVELOPER"])),
        );
        let by = |caller| Author::of(&m, caller, &Command::DeleteKey("k".into()), 1);
        assert_eq!(by("Key00001").caller_user.as_deref(), Some("alice"));
        assert_eq!(by("Key00001").action, "DeleteKey");
        assert_eq!(by("Missing01").caller_user, None);
    }
}
