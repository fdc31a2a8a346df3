//! The object store: one ordered map per resource, one global
//! resourceVersion counter, a bounded ring of recent changes for watches
//! that resume, and a broadcast channel for live fan-out.
//!
//! Objects are kept serialized (a few hundred bytes for a small Secret) next
//! to the little metadata that selectors and garbage collection read, so
//! 100,000 objects stay compact and lists copy bytes rather than re-encode.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use super::resources::{Registry, ResKey};

/// One stored object version.
#[derive(Debug)]
pub struct Obj {
    /// The JSON document, `metadata.resourceVersion` included.
    pub json: Box<[u8]>,
    pub rv: u64,
    pub labels: Box<[(Box<str>, Box<str>)]>,
    pub uid: Box<str>,
    /// UIDs from `metadata.ownerReferences`.
    pub owners: Box<[Box<str>]>,
}

impl Obj {
    /// Serializes `v` (which must carry `metadata.resourceVersion = rv`).
    pub fn new(v: &Value, rv: u64) -> Arc<Obj> {
        let meta = &v["metadata"];
        let labels = meta
            .get("labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str().into(), v.as_str()?.into())))
                    .collect()
            })
            .unwrap_or_default();
        let owners = meta
            .get("ownerReferences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.get("uid")?.as_str().map(Into::into))
                    .collect()
            })
            .unwrap_or_default();
        Arc::new(Obj {
            json: serde_json::to_vec(v)
                .expect("a JSON value always serializes")
                .into_boxed_slice(),
            rv,
            labels,
            uid: meta
                .get("uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into(),
            owners,
        })
    }

    pub fn value(&self) -> Value {
        serde_json::from_slice(&self.json).expect("stored objects are valid JSON")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watchers see it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: EventType,
    pub res: ResKey,
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub obj: Arc<Obj>,
    /// The version before a modification, so selector watches can tell
    /// "stopped matching" (sent as DELETED) from "still matches".
    pub prev: Option<Arc<Obj>>,
}

/// `(namespace or "", name)`.
pub type Key = (String, String);

pub struct State {
    pub rv: u64,
    pub registry: Registry,
    collections: HashMap<ResKey, BTreeMap<Key, Arc<Obj>>>,
    /// uid → where the object lives, for ownerReference garbage collection.
    uids: HashMap<Box<str>, (ResKey, Key)>,
    /// owner uid → uids of the objects whose ownerReferences name it. Without
    /// it every delete scanned every object for dependents, which made the
    /// controller benchmark (hack/bench P7) quadratic in the object count.
    dependents: HashMap<Box<str>, BTreeSet<Box<str>>>,
    ring: VecDeque<Arc<Change>>,
    window: usize,
    /// Changes with rv > floor are all in the ring; older ones are gone.
    pub floor: u64,
    tx: broadcast::Sender<Arc<Change>>,
}

/// How many changes may wait in the live channel for a slow watcher before
/// it has to catch up from the ring (or get 410 Gone).
const LIVE_CAPACITY: usize = 4096;

impl State {
    pub fn new(registry: Registry, window: usize) -> State {
        let (tx, _) = broadcast::channel(LIVE_CAPACITY);
        State {
            rv: 0,
            registry,
            collections: HashMap::new(),
            uids: HashMap::new(),
            dependents: HashMap::new(),
            ring: VecDeque::with_capacity(window.min(65_536)),
            window: window.max(1),
            floor: 0,
            tx,
        }
    }

    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn get(&self, res: &str, ns: &str, name: &str) -> Option<&Arc<Obj>> {
        self.collections
            .get(res)?
            .get(&(ns.to_string(), name.to_string()))
    }

    pub fn locate_uid(&self, uid: &str) -> Option<&(ResKey, Key)> {
        self.uids.get(uid)
    }

    /// Stores `obj` and records the change. `obj.rv` must be a fresh rv.
    pub fn put(&mut self, res: &ResKey, key: Key, obj: Arc<Obj>) -> EventType {
        let coll = self.collections.entry(res.clone()).or_default();
        let prev = coll.insert(key.clone(), obj.clone());
        if let Some(p) = &prev {
            if p.uid != obj.uid {
                self.uids.remove(&p.uid);
            }
            self.unlink_owners(p);
        }
        self.link_owners(&obj);
        self.uids
            .insert(obj.uid.clone(), (res.clone(), key.clone()));
        let kind = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(kind, res, key, obj, prev);
        kind
    }

    /// Removes an object; the DELETED change carries `last` (the final state
    /// with a fresh rv).
    pub fn remove(&mut self, res: &ResKey, key: &Key, last: Arc<Obj>) -> Option<Arc<Obj>> {
        let prev = self.collections.get_mut(res)?.remove(key)?;
        self.uids.remove(&prev.uid);
        self.unlink_owners(&prev);
        self.record(
            EventType::Deleted,
            res,
            key.clone(),
            last,
            Some(prev.clone()),
        );
        Some(prev)
    }

    fn record(
        &mut self,
        kind: EventType,
        res: &ResKey,
        key: Key,
        obj: Arc<Obj>,
        prev: Option<Arc<Obj>>,
    ) {
        let change = Arc::new(Change {
            rv: obj.rv,
            kind,
            res: res.clone(),
            namespace: key.0.into(),
            name: key.1.into(),
            obj,
            prev,
        });
        if self.ring.len() == self.window
            && let Some(old) = self.ring.pop_front()
        {
            self.floor = old.rv;
        }
        self.ring.push_back(change.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(change);
    }

    /// Drops a whole resource (its CRD went away) without events per object:
    /// watchers of it are ended by the caller.
    pub fn drop_collection(&mut self, res: &str) -> Vec<(Key, Arc<Obj>)> {
        let items: Vec<(Key, Arc<Obj>)> = self
            .collections
            .remove(res)
            .map(|c| c.into_iter().collect())
            .unwrap_or_default();
        for (_, o) in &items {
            self.uids.remove(&o.uid);
            self.unlink_owners(o);
        }
        items
    }

    fn link_owners(&mut self, obj: &Obj) {
        for owner in &obj.owners {
            self.dependents
                .entry(owner.clone())
                .or_default()
                .insert(obj.uid.clone());
        }
    }

    fn unlink_owners(&mut self, obj: &Obj) {
        for owner in &obj.owners {
            if let Some(set) = self.dependents.get_mut(owner) {
                set.remove(&obj.uid);
                if set.is_empty() {
                    self.dependents.remove(owner);
                }
            }
        }
    }

    /// Objects of `res` in key order, from `after` (exclusive), limited to
    /// namespace `ns` when given.
    pub fn scan<'a>(
        &'a self,
        res: &str,
        ns: Option<&'a str>,
        after: Option<&Key>,
    ) -> impl Iterator<Item = (&'a Key, &'a Arc<Obj>)> + 'a {
        let start = match (after, ns) {
            (Some(k), _) => Bound::Excluded(k.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        self.collections
            .get(res)
            .into_iter()
            .flat_map(move |c| c.range((start.clone(), Bound::Unbounded)))
            .take_while(move |(k, _)| ns.is_none_or(|ns| k.0 == ns))
    }

    pub fn count(&self, res: &str) -> usize {
        self.collections.get(res).map_or(0, BTreeMap::len)
    }

    /// Whether anything of any resource remains in namespace `ns`.
    pub fn namespace_has_objects(&self, ns: &str) -> bool {
        self.collections.iter().any(|(_, c)| {
            c.range((ns.to_string(), String::new())..)
                .next()
                .is_some_and(|(k, _)| k.0 == ns)
        })
    }

    /// Every (resource, key) stored in namespace `ns`.
    pub fn objects_in_namespace(&self, ns: &str) -> Vec<(ResKey, Key)> {
        let mut out = Vec::new();
        for (res, c) in &self.collections {
            for (k, _) in c
                .range((ns.to_string(), String::new())..)
                .take_while(|(k, _)| k.0 == ns)
            {
                out.push((res.clone(), k.clone()));
            }
        }
        out
    }

    /// Objects that name `uid` as an owner.
    pub fn dependents_of(&self, uid: &str) -> Vec<(ResKey, Key)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|dependent| self.uids.get(dependent).cloned())
            .collect()
    }

    /// Changes after `rv` (for watches that resume), or `None` if some of
    /// them have already left the ring.
    pub fn changes_since(&self, rv: u64) -> Option<Vec<Arc<Change>>> {
        if rv < self.floor {
            return None;
        }
        // The ring is ordered by rv: skip to the first change after `rv`.
        let start = self.ring.partition_point(|c| c.rv <= rv);
        Some(self.ring.range(start..).cloned().collect())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, rv: u64, labels: Value) -> Arc<Obj> {
        Obj::new(
            &json!({"metadata": {"name": name, "uid": format!("u-{name}"), "resourceVersion": rv.to_string(), "labels": labels}}),
            rv,
        )
    }

    #[test]
    fn ring_keeps_the_window_and_reports_the_floor() {
        let mut s = State::new(Registry::default(), 3);
        let res: ResKey = Arc::from("secrets");
        for i in 1..=5u64 {
            let rv = s.next_rv();
            s.put(
                &res,
                ("ns".into(), format!("o{i}")),
                obj(&format!("o{i}"), rv, json!({})),
            );
        }
        assert_eq!(s.floor, 2);
        assert!(s.changes_since(1).is_none(), "rv 2 has left the ring");
        let got: Vec<u64> = s.changes_since(2).unwrap().iter().map(|c| c.rv).collect();
        assert_eq!(got, vec![3, 4, 5]);
        assert_eq!(s.changes_since(4).unwrap().len(), 1);
        assert!(s.changes_since(5).unwrap().is_empty());
    }

    #[test]
    fn scan_is_ordered_and_namespace_bounded() {
        let mut s = State::new(Registry::default(), 100);
        let res: ResKey = Arc::from("configmaps");
        for (ns, name) in [("b", "2"), ("a", "1"), ("b", "1"), ("c", "1")] {
            let rv = s.next_rv();
            s.put(
                &res,
                (ns.into(), name.into()),
                obj(name, rv, json!({"k": ns})),
            );
        }
        let all: Vec<String> = s
            .scan("configmaps", None, None)
            .map(|(k, _)| format!("{}/{}", k.0, k.1))
            .collect();
        assert_eq!(all, vec!["a/1", "b/1", "b/2", "c/1"]);
        let b: Vec<String> = s
            .scan("configmaps", Some("b"), None)
            .map(|(k, _)| k.1.clone())
            .collect();
        assert_eq!(b, vec!["1", "2"]);
        let after: Vec<String> = s
            .scan("configmaps", Some("b"), Some(&("b".into(), "1".into())))
            .map(|(k, _)| k.1.clone())
            .collect();
        assert_eq!(after, vec!["2"]);
        assert!(s.namespace_has_objects("c"));
        assert!(!s.namespace_has_objects("d"));
        assert_eq!(s.objects_in_namespace("b").len(), 2);
    }

    #[test]
    fn uid_index_follows_puts_and_removes() {
        let mut s = State::new(Registry::default(), 10);
        let res: ResKey = Arc::from("secrets");
        let key: Key = ("ns".into(), "a".into());
        let rv = s.next_rv();
        s.put(&res, key.clone(), obj("a", rv, json!({})));
        assert_eq!(s.locate_uid("u-a").unwrap().1, key);
        let rv = s.next_rv();
        let last = obj("a", rv, json!({}));
        s.remove(&res, &key, last);
        assert!(s.locate_uid("u-a").is_none());
        assert!(s.get("secrets", "ns", "a").is_none());
    }

    #[test]
    fn obj_extracts_labels_and_owners() {
        let v = json!({"metadata": {"name": "x", "uid": "1", "labels": {"a": "b"}, "ownerReferences": [{"uid": "o1"}, {"uid": "o2"}]}});
        let o = Obj::new(&v, 7);
        assert_eq!(&*o.labels[0].0, "a");
        assert_eq!(o.owners.len(), 2);
        assert_eq!(o.value(), v);
    }
}
