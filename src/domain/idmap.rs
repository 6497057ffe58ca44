//! [`IdMap`]: the model's maps from an object's id to the object, holding each object once and
//! finding it by the id it carries, so a slot is the object itself rather than a second copy of
//! its id beside it. At a million keys that is a third of the key map's table.

use std::{
    borrow::Borrow,
    fmt,
    hash::{BuildHasher, Hash},
    sync::Arc,
};

use hashbrown::{HashTable, hash_table::Entry};

use super::{KeySpec, Project, Team, User};

/// An object with an id that identifies it within its map.
pub trait HasId {
    type Id: Hash + Eq + Clone;
    fn id(&self) -> &Self::Id;
}

impl HasId for Team {
    type Id = Arc<str>;

    fn id(&self) -> &Arc<str> {
        &self.id
    }
}

impl HasId for Arc<User> {
    type Id = Arc<str>;

    fn id(&self) -> &Arc<str> {
        &self.id
    }
}

impl HasId for Project {
    type Id = Arc<str>;

    fn id(&self) -> &Arc<str> {
        &self.id
    }
}

impl HasId for Arc<KeySpec> {
    type Id = compact_str::CompactString;

    fn id(&self) -> &compact_str::CompactString {
        &self.prefix
    }
}

/// Ids come from an origin (a policy file, an authenticated Admin call), never from a Check, so
/// a fast hasher is enough; each map has its own random seed. An id and its borrowed forms hash
/// alike (`Borrow`'s contract), so lookups may use either.
type Hasher = foldhash::fast::RandomState;

/// A map from id to object whose slots hold only the object. Its API follows `HashMap<V::Id, V>`
/// where the model uses it; an id passed to [`IdMap::insert`] must be the object's own.
#[derive(Clone)]
pub struct IdMap<V> {
    table: HashTable<V>,
    hasher: Hasher,
}

impl<V: HasId> IdMap<V> {
    fn hash<Q: Hash + ?Sized>(&self, id: &Q) -> u64 {
        self.hasher.hash_one(id)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Makes room for `additional` more objects.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let hasher = &self.hasher;
        self.table.reserve(additional, |v| hasher.hash_one(v.id()));
    }

    pub fn get<Q>(&self, id: &Q) -> Option<&V>
    where
        V::Id: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.table.find(self.hash(id), |v| v.id().borrow() == id)
    }

    /// The object `id`, to change in place. Its id must stay as it is.
    pub fn get_mut<Q>(&mut self, id: &Q) -> Option<&mut V>
    where
        V::Id: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(id);
        self.table.find_mut(hash, |v| v.id().borrow() == id)
    }

    pub fn contains_key<Q>(&self, id: &Q) -> bool
    where
        V::Id: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(id).is_some()
    }

    /// Inserts `value` under its id (`id`, which the caller names for readability and must be
    /// `value`'s own), returning the object it replaces.
    pub fn insert(&mut self, id: V::Id, value: V) -> Option<V> {
        debug_assert!(
            id == *value.id(),
            "an IdMap object is inserted under its own id"
        );
        self.put(value)
    }

    /// Inserts `value` under its own id, returning the object it replaces.
    pub(crate) fn put(&mut self, value: V) -> Option<V> {
        let hash = self.hash(value.id());
        let hasher = &self.hasher;
        match self
            .table
            .entry(hash, |v| v.id() == value.id(), |v| hasher.hash_one(v.id()))
        {
            Entry::Occupied(mut slot) => Some(std::mem::replace(slot.get_mut(), value)),
            Entry::Vacant(slot) => {
                slot.insert(value);
                None
            }
        }
    }

    pub fn remove<Q>(&mut self, id: &Q) -> Option<V>
    where
        V::Id: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(id);
        match self.table.find_entry(hash, |v| v.id().borrow() == id) {
            Ok(slot) => Some(slot.remove().0),
            Err(_) => None,
        }
    }

    /// Every (id, object) pair, in no particular order.
    /// Keeps only the objects for which `keep` is true.
    #[cfg(test)]
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&V::Id, &mut V) -> bool) {
        self.table.retain(|v| {
            let id = v.id().clone();
            keep(&id, v)
        });
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&V::Id, &V)> + '_ {
        self.table.iter().map(|v| (v.id(), v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &V::Id> + '_ {
        self.table.iter().map(|v| v.id())
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.table.iter()
    }
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            table: HashTable::new(),
            hasher: Hasher::default(),
        }
    }
}

impl<V: HasId, Q> std::ops::Index<&Q> for IdMap<V>
where
    V::Id: Borrow<Q>,
    Q: Hash + Eq + fmt::Debug + ?Sized,
{
    type Output = V;

    /// The object `id`; panics when there is none (tests and known-present ids only).
    fn index(&self, id: &Q) -> &V {
        self.get(id)
            .unwrap_or_else(|| panic!("no object {id:?} in the map"))
    }
}

impl<V: HasId + PartialEq> PartialEq for IdMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.values().all(|v| other.get(v.id()) == Some(v))
    }
}

impl<V: HasId + Eq> Eq for IdMap<V> {}

impl<V: HasId + fmt::Debug> fmt::Debug for IdMap<V>
where
    V::Id: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a, V: HasId> IntoIterator for &'a IdMap<V> {
    type Item = (&'a V::Id, &'a V);
    type IntoIter =
        std::iter::Map<hashbrown::hash_table::Iter<'a, V>, fn(&'a V) -> (&'a V::Id, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.table.iter().map(|v| (v.id(), v))
    }
}

impl<V: HasId> IntoIterator for IdMap<V> {
    type Item = (V::Id, V);
    type IntoIter = std::iter::Map<hashbrown::hash_table::IntoIter<V>, fn(V) -> (V::Id, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.table.into_iter().map(|v| (v.id().clone(), v))
    }
}

impl<V: HasId> Extend<(V::Id, V)> for IdMap<V> {
    fn extend<I: IntoIterator<Item = (V::Id, V)>>(&mut self, items: I) {
        for (id, value) in items {
            self.insert(id, value);
        }
    }
}

impl<V: HasId> FromIterator<(V::Id, V)> for IdMap<V> {
    fn from_iter<I: IntoIterator<Item = (V::Id, V)>>(items: I) -> Self {
        let mut map = IdMap::default();
        map.extend(items);
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(id: &str, name: &str) -> Team {
        Team {
            id: id.into(),
            name: name.into(),
            active: true,
        }
    }

    #[test]
    fn behaves_as_a_map_by_id() {
        let mut m = IdMap::default();
        assert!(m.insert("a".into(), team("a", "A")).is_none());
        assert!(m.put(team("b", "B")).is_none());
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("a").map(|t| t.name.as_str()), Some("A"));
        let old = m.put(team("a", "A2")).expect("replaced");
        assert_eq!(old.name, "A");
        assert_eq!(m.len(), 2);
        m.get_mut("b").expect("b").active = false;
        assert!(!m.get("b").expect("b").active);
        assert!(m.get("c").is_none() && !m.contains_key("c"));
        assert_eq!(m.remove("a").map(|t| t.name), Some("A2".to_string()));
        assert!(m.remove("a").is_none());
        let mut ids: Vec<_> = m.keys().map(|k| k.to_string()).collect();
        ids.sort();
        assert_eq!(ids, ["b"]);
    }

    #[test]
    fn equality_ignores_order_and_seed() {
        let a: IdMap<Team> = (0..100)
            .map(|i| team(&i.to_string(), "x"))
            .map(|t| (t.id.clone(), t))
            .collect();
        let b: IdMap<Team> = (0..100)
            .rev()
            .map(|i| team(&i.to_string(), "x"))
            .map(|t| (t.id.clone(), t))
            .collect();
        assert_eq!(a, b);
        let mut c = b.clone();
        c.get_mut("7").expect("7").name = "y".into();
        assert_ne!(a, c);
        c.remove("7");
        assert_ne!(a, c);
        let mut grown = IdMap::default();
        grown.reserve(1000);
        grown.extend(a.clone());
        assert_eq!(grown, a);
        grown.retain(|id, _| id.len() == 1);
        assert_eq!(grown.len(), 10);
    }
}
