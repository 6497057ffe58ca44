//! Where rolegate's objects live in etcd, and how changes become etcd operations and back.
//!
//! Under the prefix (`/rolegate/` by default):
//!
//! | key | value |
//! |---|---|
//! | `meta` | `{"layout":1}`: written once, by the instance that bootstraps the prefix |
//! | `rev` | the write marker: every write of rolegate puts it in the same transaction, so its `mod_revision` is the revision of the last rolegate write |
//! | `o/<kind>/<id>` | one object (`o/team/acme`, `o/key/<prefix>`, `o/role/<id>`, `o/routes`, …), its record as the embedded store keeps it ([`crate::origin::record`]) |
//! | `h/<revision>` | the administration history of one write transaction ([`crate::domain::history`]'s encoding), put in that transaction. Named by the marker's revision the write followed (20 digits, zero-padded, so that key order is commit order; a transaction's own revision is not known before it commits): the entry's revision is the key's `mod_revision` |

use std::collections::HashMap;

use super::pb::{
    etcdserverpb::{
        Compare, DeleteRangeRequest, PutRequest, RequestOp, compare, request_op::Request,
    },
    mvccpb::{Event, event::EventType},
};
use crate::{
    domain::{Interner, model::Change},
    origin::record::{self, CorruptRecord},
};

/// The layout this build writes and reads (the `layout` of the `meta` key).
pub(crate) const LAYOUT_VERSION: u32 = 1;

/// The keys of one rolegate state in etcd.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyKind<'a> {
    Meta,
    Marker,
    /// An object, by its record key (`team/acme`).
    Object(&'a str),
    /// Something rolegate did not write: ignored.
    Other,
}

/// The smallest key after every key that starts with `prefix` (etcd's `range_end` of a prefix).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte is 0xff: the range runs to the end of the key space.
    vec![0]
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Self {
        Layout {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The range of every key of the state: `[prefix, prefix_end)`.
    pub(crate) fn range(&self) -> (Vec<u8>, Vec<u8>) {
        let start = self.prefix.as_bytes().to_vec();
        let end = prefix_end(&start);
        (start, end)
    }

    pub(crate) fn meta(&self) -> Vec<u8> {
        format!("{}meta", self.prefix).into_bytes()
    }

    pub(crate) fn marker(&self) -> Vec<u8> {
        format!("{}rev", self.prefix).into_bytes()
    }

    /// The history key of the write that follows the marker's revision `marker`.
    pub(crate) fn history_key(&self, marker: i64) -> Vec<u8> {
        format!("{}h/{:020}", self.prefix, marker.max(0)).into_bytes()
    }

    /// The range of every history key.
    pub(crate) fn history_range(&self) -> (Vec<u8>, Vec<u8>) {
        let start = format!("{}h/", self.prefix).into_bytes();
        let end = prefix_end(&start);
        (start, end)
    }

    /// The range of the keys of the state: the whole prefix but the history keys, which sort
    /// before every other key of it (`h/` < `meta` < `o/` < `rev`).
    pub(crate) fn state_range(&self) -> (Vec<u8>, Vec<u8>) {
        let (_, history_end) = self.history_range();
        let (_, end) = self.range();
        (history_end, end)
    }

    /// Deletes the history keys of the writes that followed a revision below `bound`.
    pub(crate) fn history_below(&self, bound: i64) -> RequestOp {
        let (start, _) = self.history_range();
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: start,
                range_end: self.history_key(bound),
                ..Default::default()
            })),
        }
    }

    fn object(&self, record_key: &str) -> Vec<u8> {
        format!("{}o/{record_key}", self.prefix).into_bytes()
    }

    /// What `key` is.
    pub(crate) fn kind<'k>(&self, key: &'k [u8]) -> KeyKind<'k> {
        let Some(rest) = key.strip_prefix(self.prefix.as_bytes()) else {
            return KeyKind::Other;
        };
        match rest {
            b"meta" => KeyKind::Meta,
            b"rev" => KeyKind::Marker,
            _ => match rest.strip_prefix(b"o/").map(std::str::from_utf8) {
                Some(Ok(record_key)) => KeyKind::Object(record_key),
                _ => KeyKind::Other,
            },
        }
    }

    /// The operations that store `changes`, one per object (the last change of an object wins,
    /// as applying them in order would leave it; etcd refuses a transaction that names a key
    /// twice).
    pub(crate) fn ops(&self, changes: &[Change]) -> Vec<RequestOp> {
        let entries: Vec<(String, Option<Vec<u8>>)> =
            changes.iter().map(record::object_entry).collect();
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        for (i, (key, _)) in entries.iter().enumerate() {
            last.insert(key, i);
        }
        entries
            .iter()
            .enumerate()
            .filter(|(i, (key, _))| last.get(key.as_str()) == Some(i))
            .map(|(_, (key, value))| match value {
                Some(value) => put(self.object(key), value.clone()),
                None => RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key: self.object(key),
                        ..Default::default()
                    })),
                },
            })
            .collect()
    }

    /// The change an event of an object key stands for (`None`: not an object of the state).
    pub(crate) fn change_of(
        &self,
        event: &Event,
        ids: &mut Interner,
    ) -> Option<Result<Change, CorruptRecord>> {
        let kv = event.kv.as_ref()?;
        let KeyKind::Object(record_key) = self.kind(&kv.key) else {
            return None;
        };
        let named = |r: Result<Change, CorruptRecord>| {
            r.map_err(|e| CorruptRecord(format!("{}o/{record_key}: {}", self.prefix, e.0)))
        };
        Some(named(match event.r#type() {
            EventType::Put => record::decode_object(ids, record_key, &kv.value),
            EventType::Delete => record::removal_of(record_key),
        }))
    }
}

/// A put of `value` at `key`.
pub(crate) fn put(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

/// `key`'s `mod_revision` is `revision` (0: the key does not exist).
pub(crate) fn mod_revision_is(key: Vec<u8>, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key,
        target_union: Some(compare::TargetUnion::ModRevision(revision)),
        range_end: Vec::new(),
    }
}

/// `key` was never created (or was deleted).
pub(crate) fn absent(key: Vec<u8>) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key,
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
        range_end: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::origin::etcd::pb::mvccpb::KeyValue;

    #[test]
    fn keys_and_ranges() {
        let l = Layout::new("/rolegate/");
        assert_eq!(l.range(), (b"/rolegate/".to_vec(), b"/rolegate0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(l.kind(b"/rolegate/meta"), KeyKind::Meta);
        assert_eq!(l.kind(b"/rolegate/rev"), KeyKind::Marker);
        assert_eq!(l.kind(b"/rolegate/o/team/a/b"), KeyKind::Object("team/a/b"));
        assert_eq!(l.kind(b"/rolegate/other"), KeyKind::Other);
        assert_eq!(l.kind(b"/elsewhere/o/team/a"), KeyKind::Other);
        // History keys sort in commit order, outside the state's range.
        assert_eq!(
            l.history_key(42),
            b"/rolegate/h/00000000000000000042".to_vec()
        );
        assert!(l.history_key(9) < l.history_key(10));
        let (state_start, state_end) = l.state_range();
        assert_eq!(state_end, l.range().1);
        assert!(l.history_key(i64::MAX) < state_start && state_start < l.meta());
        assert_eq!(l.kind(&l.history_key(3)), KeyKind::Other);
    }

    #[test]
    fn changes_become_one_operation_per_object_and_events_become_changes_again() {
        let l = Layout::new("/p/");
        let team = |name: &str| {
            Change::PutTeam(crate::domain::Team {
                id: "acme".into(),
                name: name.into(),
                active: true,
            })
        };
        let changes = vec![
            team("first"),
            Change::RemoveKey("Key0001".into()),
            team("second"),
        ];
        let ops = l.ops(&changes);
        assert_eq!(ops.len(), 2, "{ops:?}");
        let mut ids = Interner::default();
        let mut back = Vec::new();
        for op in ops {
            let event = match op.request.unwrap() {
                Request::RequestPut(p) => Event {
                    r#type: EventType::Put as i32,
                    kv: Some(KeyValue {
                        key: p.key,
                        value: p.value,
                        ..Default::default()
                    }),
                    prev_kv: None,
                },
                Request::RequestDeleteRange(d) => Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: d.key,
                        ..Default::default()
                    }),
                    prev_kv: None,
                },
                other => panic!("{other:?}"),
            };
            back.push(l.change_of(&event, &mut ids).unwrap().unwrap());
        }
        assert_eq!(
            back,
            vec![Change::RemoveKey("Key0001".into()), team("second")]
        );

        // A deleted prebuilt role is the built-in role again; a deleted custom one is gone.
        let deleted = |key: &str| Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            }),
            prev_kv: None,
        };
        let prebuilt = l.change_of(&deleted("/p/o/role/AUDITOR"), &mut ids);
        assert!(matches!(prebuilt, Some(Ok(Change::PutRole(r))) if r.id == Arc::from("AUDITOR")));
        let custom = l.change_of(&deleted("/p/o/role/MINE"), &mut ids);
        assert_eq!(custom.unwrap().unwrap(), Change::RemoveRole("MINE".into()));
        assert!(l.change_of(&deleted("/p/rev"), &mut ids).is_none());
        let corrupt = Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: b"/p/o/team/x".to_vec(),
                value: b"{not json".to_vec(),
                ..Default::default()
            }),
            prev_kv: None,
        };
        let err = l.change_of(&corrupt, &mut ids).unwrap().unwrap_err();
        assert!(err.to_string().contains("/p/o/team/x"), "{err}");
    }
}
