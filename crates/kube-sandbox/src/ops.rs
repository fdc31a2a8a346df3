//! The verbs: create, get, list, update, patch, delete, deletecollection and
//! the start of a watch, with the real server's rules for server-set fields,
//! status subresources, generation, finalizers, namespaces and garbage
//! collection. Every write happens under one lock, so the resourceVersion
//! order is the commit order.

use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use rand::Rng as _;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::admission;
use super::error::{ApiError, FieldError};
use super::json::string_list;
use super::patch;
use super::resources::{self, Builtin, Registry, ResKey, ResourceDef};
use super::schema;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Change, EventType, Key, Obj, State};
use super::validation;

/// The current time as the API writes timestamps (RFC 3339, whole seconds).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A random version-4 UUID, as the API server gives objects and admission
/// reviews.
pub(crate) fn new_uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The five characters the real server appends to `generateName`.
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn not_found(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::NotFound {
        group: def.group.clone(),
        resource: def.plural.clone(),
        name: name.to_string(),
    }
}

fn invalid(def: &ResourceDef, name: &str, causes: Vec<FieldError>) -> ApiError {
    ApiError::Invalid {
        group: def.group.clone(),
        kind: def.kind.clone(),
        name: name.to_string(),
        causes,
    }
}

fn meta(v: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    v.get("metadata")
        .and_then(Value::as_object)
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v["metadata"].is_object() {
        v["metadata"] = json!({});
    }
    v["metadata"].as_object_mut().expect("made an object above")
}

fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    meta(v).get(field).and_then(Value::as_str)
}

fn finalizers(v: &Value) -> Vec<String> {
    string_list(meta(v).get("finalizers"))
}

/// The parts of an object that count for `metadata.generation`.
fn spec_part(v: &Value) -> Map<String, Value> {
    let mut m = v.as_object().cloned().unwrap_or_default();
    for k in ["metadata", "status", "apiVersion", "kind"] {
        m.remove(k);
    }
    m
}

/// Options of a create, update or patch.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteOpts {
    /// `dryRun=All`: validate and answer, store nothing.
    pub dry_run: bool,
    /// `fieldValidation=Strict`: fields a custom resource's schema does not
    /// declare are an error instead of being dropped.
    pub strict: bool,
    /// Create keeps `metadata.uid` and `creationTimestamp` from the body: the
    /// admission path commits the very object validating webhooks approved,
    /// which a dry run already gave its server-set fields.
    pub preserve_system_fields: bool,
}

/// Options of a delete, from the query and the DeleteOptions body.
#[derive(Debug, Default, Clone)]
pub struct DeleteOpts {
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    /// Strategic merge patch, applied as a JSON merge patch: the sandbox has
    /// no per-field patch strategies (list merge keys), so lists in the patch
    /// replace lists in the object, as with merge patch.
    Strategic,
    /// Server-side apply, applied as a merge patch that may create the
    /// object; managed fields are not tracked, so fields dropped from a later
    /// apply are not removed.
    Apply,
}

/// What a list returns.
pub struct ListPage {
    pub items: Vec<Arc<Obj>>,
    pub rv: u64,
    pub continue_token: Option<String>,
}

/// Changes a lagging watcher missed, and a fresh live channel.
pub type CatchUp = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

/// What a watch starts from.
pub struct WatchStart {
    pub initial: Vec<Arc<Change>>,
    pub rx: broadcast::Receiver<Arc<Change>>,
    pub rv: u64,
}

pub struct Store {
    state: Mutex<State>,
}

impl Store {
    pub fn new(window: usize) -> Store {
        let state = State::new(Registry::new(resources::builtins()), window);
        let store = Store {
            state: Mutex::new(state),
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            store
                .create_in("namespaces", "v1", None, json!({"metadata": {"name": ns}}))
                .expect("the initial namespaces are valid");
        }
        store
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves no half-written object
        // (each write is one map insert), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.lock().registry.lookup(group, version, plural)
    }

    fn def(&self, key: &str) -> Arc<ResourceDef> {
        self.lock()
            .registry
            .get(key)
            .cloned()
            .expect("built-in resource")
    }

    /// Creates through the normal path; for setup inside the sandbox.
    pub fn create_in(
        &self,
        res: &str,
        version: &str,
        ns: Option<&str>,
        body: Value,
    ) -> Result<Value, ApiError> {
        let def = self.def(res);
        self.create(&def, version, ns, body, WriteOpts::default())
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Arc<Obj>, ApiError> {
        self.lock()
            .get(&def.key(), ns.unwrap_or(""), name)
            .cloned()
            .ok_or_else(|| not_found(def, name))
    }

    pub fn list(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let (list_rv, after) = match continue_token {
            Some(t) if !t.is_empty() => {
                let c = decode_continue(t)?;
                (Some(c.0), Some(c.1))
            }
            _ => (None, None),
        };
        let st = self.lock();
        let rv = list_rv.unwrap_or(st.rv);
        let res = def.key();
        let limit = limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut last_key = None;
        let mut more = false;
        // A selector that pins the name reads one entry, not the collection.
        let single;
        let iter: Box<dyn Iterator<Item = (&Key, &Arc<Obj>)>> =
            match (fields.exact("metadata.name"), after.is_none()) {
                (Some(name), true) if ns.is_some() || !def.namespaced => {
                    single = (ns.unwrap_or("").to_string(), name.to_string());
                    Box::new(
                        st.get(&res, &single.0, &single.1)
                            .map(|o| (&single, o))
                            .into_iter(),
                    )
                }
                _ => Box::new(st.scan(&res, ns, after.as_ref())),
            };
        for (key, obj) in iter {
            if !matches(key, obj, labels, fields) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                break;
            }
            items.push(obj.clone());
            last_key = Some(key.clone());
        }
        let continue_token = match (more, last_key) {
            (true, Some(k)) => Some(encode_continue(rv, &k)),
            _ => None,
        };
        Ok(ListPage {
            items,
            rv,
            continue_token,
        })
    }

    pub fn create(
        &self,
        def: &Arc<ResourceDef>,
        version: &str,
        ns: Option<&str>,
        mut body: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        check_type(def, version, &mut body)?;
        check_namespace(def, ns, &mut body)?;
        let mut st = self.lock();
        self.create_locked(&mut st, def, version, ns, body, opts)
    }

    fn create_locked(
        &self,
        st: &mut State,
        def: &Arc<ResourceDef>,
        version: &str,
        ns: Option<&str>,
        mut body: Value,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        check_namespace(def, ns, &mut body)?;
        let ns_key = ns.unwrap_or("").to_string();
        let m = meta_mut(&mut body);
        let has_name = m
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name
            && let Some(prefix) = m
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
        {
            let prefix = prefix.to_string();
            let name = (0..16)
                .map(|_| format!("{prefix}{}", name_suffix()))
                .find(|n| st.get(&def.key(), &ns_key, n).is_none())
                .ok_or_else(|| ApiError::AlreadyExists {
                    group: def.group.clone(),
                    resource: def.plural.clone(),
                    name: prefix.clone(),
                })?;
            m.insert("name".into(), json!(name));
        }
        let name = meta_str(&body, "name").unwrap_or_default().to_string();
        prepare_object(def, version, &mut body, None, opts.strict)?;
        let mut causes = validation::validate_metadata(meta(&body), def.name_rule);
        if let Some(gn) = meta_str(&body, "generateName").filter(|g| !g.is_empty()) {
            // The generated name is checked above; the prefix must be valid on its own.
            let probe = format!("{gn}a");
            for e in validation::name_errors(def.name_rule, &probe) {
                causes.push(FieldError::invalid("metadata.generateName", gn, e));
            }
        }
        if def.builtin == Some(Builtin::Crd) {
            match resources::from_crd(&body) {
                Ok(new_def) => {
                    if let Some(existing) = st.registry.get(&new_def.key())
                        && existing.builtin.is_some()
                    {
                        causes.push(FieldError::invalid(
                            "spec.names.plural",
                            &new_def.plural,
                            "is already served by a built-in resource",
                        ));
                    }
                }
                Err(errs) => causes.extend(errs),
            }
        }
        if !causes.is_empty() {
            return Err(invalid(def, &name, causes));
        }
        if let Some(ns) = ns {
            let ns_obj = st
                .get("namespaces", "", ns)
                .ok_or_else(|| ApiError::NotFound {
                    group: String::new(),
                    resource: "namespaces".into(),
                    name: ns.to_string(),
                })?;
            if ns_obj.value()["metadata"]
                .get("deletionTimestamp")
                .is_some()
            {
                return Err(ApiError::Forbidden {
                    group: def.group.clone(),
                    resource: def.plural.clone(),
                    name: name.clone(),
                    message: format!(
                        "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        qualified(def)
                    ),
                });
            }
        }
        if st.get(&def.key(), &ns_key, &name).is_some() {
            return Err(ApiError::AlreadyExists {
                group: def.group.clone(),
                resource: def.plural.clone(),
                name,
            });
        }
        let m = meta_mut(&mut body);
        for k in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "selfLink",
            "managedFields",
        ] {
            m.remove(k);
        }
        let keep = |m: &Map<String, Value>, k: &str| {
            opts.preserve_system_fields
                && m.get(k)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
        };
        if !keep(m, "uid") {
            m.insert("uid".into(), json!(new_uid()));
        }
        if !keep(m, "creationTimestamp") {
            m.insert("creationTimestamp".into(), json!(now()));
        }
        m.insert("generation".into(), json!(1));
        if opts.dry_run {
            return Ok(body);
        }
        let rv = st.next_rv();
        meta_mut(&mut body).insert("resourceVersion".into(), json!(rv.to_string()));
        st.put(&def.key(), (ns_key, name.clone()), Obj::new(&body, rv));
        match def.builtin {
            Some(Builtin::Crd) => {
                if let Ok(new_def) = resources::from_crd(&body) {
                    st.registry.insert(new_def);
                }
            }
            Some(Builtin::Namespace) => {
                // The real control plane's service-account controller adds
                // a `default` ServiceAccount to every namespace.
                let sa = self.def_locked(st, "serviceaccounts");
                let _ = self.create_locked(
                    st,
                    &sa,
                    "v1",
                    Some(&name),
                    json!({"metadata": {"name": "default"}}),
                    WriteOpts::default(),
                );
            }
            _ => {}
        }
        Ok(body)
    }

    fn def_locked(&self, st: &State, key: &str) -> Arc<ResourceDef> {
        st.registry.get(key).cloned().expect("built-in resource")
    }

    /// PUT of the object or of its `/status`.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        def: &Arc<ResourceDef>,
        version: &str,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
        status_only: bool,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        check_type(def, version, &mut body)?;
        check_namespace(def, ns, &mut body)?;
        match meta_str(&body, "name") {
            Some(n) if n == name => {}
            Some(n) => {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            None => {
                meta_mut(&mut body).insert("name".into(), json!(name));
            }
        }
        let mut st = self.lock();
        let old = st
            .get(&def.key(), ns.unwrap_or(""), name)
            .cloned()
            .ok_or_else(|| not_found(def, name))?;
        match meta_str(&body, "resourceVersion").filter(|s| !s.is_empty()) {
            Some(rv) if rv != old.rv.to_string() => {
                return Err(ApiError::Conflict {
                    group: def.group.clone(),
                    resource: def.plural.clone(),
                    name: name.to_string(),
                });
            }
            Some(_) => {}
            None if def.unconditional_update => {}
            None => {
                return Err(invalid(
                    def,
                    name,
                    vec![FieldError::invalid(
                        "metadata.resourceVersion",
                        "0x0",
                        "must be specified for an update",
                    )],
                ));
            }
        }
        self.finish_update(
            &mut st,
            def,
            version,
            ns,
            name,
            &old,
            body,
            status_only,
            opts,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        def: &Arc<ResourceDef>,
        version: &str,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        patch_doc: Value,
        status_only: bool,
        opts: WriteOpts,
    ) -> Result<(Value, bool), ApiError> {
        let mut st = self.lock();
        let Some(old) = st.get(&def.key(), ns.unwrap_or(""), name).cloned() else {
            if kind != PatchKind::Apply || status_only {
                return Err(not_found(def, name));
            }
            let mut body = patch_doc;
            check_type(def, version, &mut body)?;
            check_namespace(def, ns, &mut body)?;
            if meta_str(&body, "name").is_some_and(|n| n != name) {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object does not match the name on the URL ({name})"
                )));
            }
            meta_mut(&mut body).insert("name".into(), json!(name));
            return self
                .create_locked(&mut st, def, version, ns, body, opts)
                .map(|v| (v, true));
        };
        let old_v = old.value();
        let mut new = old_v.clone();
        match kind {
            PatchKind::Merge | PatchKind::Strategic => patch::merge_patch(&mut new, &patch_doc),
            PatchKind::Apply => {
                let mut body = patch_doc;
                check_type(def, version, &mut body)?;
                patch::merge_patch(&mut new, &body);
            }
            PatchKind::Json => patch::json_patch(&mut new, &patch_doc).map_err(|e| {
                invalid(
                    def,
                    name,
                    vec![FieldError::invalid(
                        "<patch>",
                        patch_doc.to_string(),
                        e.to_string(),
                    )],
                )
            })?,
        }
        let mut causes = Vec::new();
        if meta_str(&new, "name") != Some(name) {
            causes.push(FieldError::invalid(
                "metadata.name",
                meta_str(&new, "name").unwrap_or(""),
                "field is immutable",
            ));
        }
        if meta_str(&new, "namespace") != meta_str(&old_v, "namespace") {
            causes.push(FieldError::invalid(
                "metadata.namespace",
                meta_str(&new, "namespace").unwrap_or(""),
                "field is immutable",
            ));
        }
        if !causes.is_empty() {
            return Err(invalid(def, name, causes));
        }
        if meta_str(&new, "resourceVersion")
            .is_some_and(|rv| !rv.is_empty() && rv != old.rv.to_string())
        {
            return Err(ApiError::Conflict {
                group: def.group.clone(),
                resource: def.plural.clone(),
                name: name.to_string(),
            });
        }
        self.finish_update(
            &mut st,
            def,
            version,
            ns,
            name,
            &old,
            new,
            status_only,
            opts,
        )
        .map(|v| (v, false))
    }

    /// The shared tail of PUT and PATCH: keep server-owned fields, isolate
    /// status, validate, bump generation, store, and finish a deletion that
    /// was waiting on finalizers.
    #[allow(clippy::too_many_arguments)]
    fn finish_update(
        &self,
        st: &mut State,
        def: &Arc<ResourceDef>,
        version: &str,
        ns: Option<&str>,
        name: &str,
        old: &Obj,
        body: Value,
        status_only: bool,
        opts: WriteOpts,
    ) -> Result<Value, ApiError> {
        let old_v = old.value();
        let mut new = if status_only {
            let mut merged = old_v.clone();
            match body.get("status") {
                Some(s) => merged["status"] = s.clone(),
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            merged
        } else {
            let mut b = body;
            if def.status_subresource {
                match old_v.get("status") {
                    Some(s) => b["status"] = s.clone(),
                    None => {
                        if let Some(m) = b.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            b
        };
        {
            let old_meta = meta(&old_v).clone();
            let m = meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
            ] {
                match old_meta.get(k) {
                    Some(v) => {
                        m.insert(k.into(), v.clone());
                    }
                    None => {
                        m.remove(k);
                    }
                }
            }
            m.remove("selfLink");
            m.remove("managedFields");
            m.insert("resourceVersion".into(), json!(old.rv.to_string()));
        }
        prepare_object(def, version, &mut new, Some(&old_v), opts.strict)?;
        let mut causes = validation::validate_metadata(meta(&new), def.name_rule);
        if meta(&old_v).contains_key("deletionTimestamp") {
            let before = finalizers(&old_v);
            for f in finalizers(&new) {
                if !before.contains(&f) {
                    causes.push(FieldError::forbidden("metadata.finalizers", format!("no new finalizers can be added if the object is being deleted, found new finalizer {f:?}")));
                }
            }
        }
        if def.builtin == Some(Builtin::Crd)
            && let Err(errs) = resources::from_crd(&new)
        {
            causes.extend(errs);
        }
        if !causes.is_empty() {
            return Err(invalid(def, name, causes));
        }
        if spec_part(&new) != spec_part(&old_v) {
            let g = meta(&old_v)
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if new == old_v || opts.dry_run {
            // The real server skips no-op writes: same object, same rv.
            return Ok(new);
        }
        let rv = st.next_rv();
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        let key = (ns.unwrap_or("").to_string(), name.to_string());
        st.put(&def.key(), key.clone(), Obj::new(&new, rv));
        if def.builtin == Some(Builtin::Crd)
            && let Ok(d) = resources::from_crd(&new)
        {
            st.registry.insert(d);
        }
        if meta(&new).contains_key("deletionTimestamp")
            && finalizers(&new).is_empty()
            && def.builtin != Some(Builtin::Namespace)
        {
            self.remove_fully(st, def, &key, new.clone());
        }
        Ok(new)
    }

    pub fn delete(
        &self,
        def: &Arc<ResourceDef>,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let key = (ns.unwrap_or("").to_string(), name.to_string());
        let old = st
            .get(&def.key(), &key.0, &key.1)
            .cloned()
            .ok_or_else(|| not_found(def, name))?;
        let precondition = |message: String| ApiError::PreconditionFailed {
            group: def.group.clone(),
            resource: def.plural.clone(),
            name: name.to_string(),
            message,
        };
        if let Some(uid) = &opts.precondition_uid
            && **uid != *old.uid
        {
            return Err(precondition(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                old.uid
            )));
        }
        if let Some(rv) = &opts.precondition_rv
            && *rv != old.rv.to_string()
        {
            return Err(precondition(format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                old.rv
            )));
        }
        let orphan = opts.propagation.as_deref() == Some("Orphan");
        Ok(self.delete_object(&mut st, def, &key, orphan, opts.dry_run))
    }

    pub fn delete_collection(
        &self,
        def: &Arc<ResourceDef>,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        opts: &DeleteOpts,
    ) -> Vec<Value> {
        let mut st = self.lock();
        let res = def.key();
        let keys: Vec<Key> = st
            .scan(&res, ns, None)
            .filter(|(k, o)| matches(k, o, labels, fields))
            .map(|(k, _)| k.clone())
            .collect();
        let orphan = opts.propagation.as_deref() == Some("Orphan");
        // An earlier deletion may have collected a later key (ownership);
        // those come back as Null and are left out.
        keys.iter()
            .map(|k| self.delete_object(&mut st, def, k, orphan, opts.dry_run))
            .filter(|v| !v.is_null())
            .collect()
    }

    /// Deletes one object: marks it when finalizers hold it, removes it
    /// otherwise (and its dependents, and a namespace's content).
    fn delete_object(
        &self,
        st: &mut State,
        def: &Arc<ResourceDef>,
        key: &Key,
        orphan: bool,
        dry_run: bool,
    ) -> Value {
        let Some(old) = st.get(&def.key(), &key.0, &key.1).cloned() else {
            return Value::Null;
        };
        let mut v = old.value();
        let is_ns = def.builtin == Some(Builtin::Namespace);
        if !finalizers(&v).is_empty() || is_ns {
            if !meta(&v).contains_key("deletionTimestamp") {
                let m = meta_mut(&mut v);
                m.insert("deletionTimestamp".into(), json!(now()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                if let Some(g) = m.get("generation").and_then(Value::as_i64) {
                    m.insert("generation".into(), json!(g + 1));
                }
                if is_ns {
                    v["status"] = json!({"phase": "Terminating"});
                }
                if dry_run {
                    return v;
                }
                let rv = st.next_rv();
                meta_mut(&mut v).insert("resourceVersion".into(), json!(rv.to_string()));
                st.put(&def.key(), key.clone(), Obj::new(&v, rv));
            }
            if is_ns && !dry_run {
                for (res, k) in st.objects_in_namespace(&key.1) {
                    if let Some(d) = st.registry.get(&res).cloned() {
                        self.delete_object(st, &d, &k, false, false);
                    }
                }
                if !st.namespace_has_objects(&key.1) && finalizers(&v).is_empty() {
                    self.remove_fully(st, def, key, v.clone());
                }
            }
            return v;
        }
        if dry_run {
            return v;
        }
        if orphan {
            self.orphan_dependents(st, &old.uid);
        }
        self.remove_fully(st, def, key, v)
    }

    fn orphan_dependents(&self, st: &mut State, uid: &str) {
        for (res, k) in st.dependents_of(uid) {
            let Some(obj) = st.get(&res, &k.0, &k.1).cloned() else {
                continue;
            };
            let mut v = obj.value();
            if let Some(refs) = v["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
            }
            let rv = st.next_rv();
            meta_mut(&mut v).insert("resourceVersion".into(), json!(rv.to_string()));
            st.put(&res, k, Obj::new(&v, rv));
        }
    }

    /// Takes an object out of the store, then runs what its absence implies:
    /// a CRD stops serving, dependents are collected, a terminating
    /// namespace that became empty goes too.
    fn remove_fully(
        &self,
        st: &mut State,
        def: &Arc<ResourceDef>,
        key: &Key,
        mut v: Value,
    ) -> Value {
        let rv = st.next_rv();
        meta_mut(&mut v).insert("resourceVersion".into(), json!(rv.to_string()));
        let last = Obj::new(&v, rv);
        let uid = last.uid.clone();
        if st.remove(&def.key(), key, last).is_none() {
            return v;
        }
        if def.builtin == Some(Builtin::Crd)
            && let Ok(served) = resources::from_crd(&v)
        {
            let res = served.key();
            if let Some(served_def) = st.registry.get(&res).cloned() {
                let keys: Vec<Key> = st.scan(&res, None, None).map(|(k, _)| k.clone()).collect();
                for k in keys {
                    if let Some(o) = st.get(&res, &k.0, &k.1).cloned() {
                        self.remove_fully(st, &served_def, &k, o.value());
                    }
                }
            }
            st.registry.remove(&res);
        }
        // Garbage collection: a dependent goes once none of its owners exists.
        for (res, k) in st.dependents_of(&uid) {
            let Some(dep) = st.get(&res, &k.0, &k.1).cloned() else {
                continue;
            };
            let owner_left = dep.owners.iter().any(|o| st.locate_uid(o).is_some());
            if !owner_left && let Some(d) = st.registry.get(&res).cloned() {
                self.delete_object(st, &d, &k, false, false);
            }
        }
        if def.namespaced {
            self.maybe_finish_namespace(st, &key.0);
        }
        v
    }

    fn maybe_finish_namespace(&self, st: &mut State, ns: &str) {
        let Some(obj) = st.get("namespaces", "", ns).cloned() else {
            return;
        };
        let v = obj.value();
        if meta(&v).contains_key("deletionTimestamp")
            && finalizers(&v).is_empty()
            && !st.namespace_has_objects(ns)
        {
            let def = self.def_locked(st, "namespaces");
            self.remove_fully(st, &def, &(String::new(), ns.to_string()), v);
        }
    }

    /// Starts a watch: what to send first, and the live channel, taken
    /// under one lock so no change falls between them.
    pub fn watch(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        rv: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let st = self.lock();
        let res = def.key();
        let rx = st.subscribe();
        let initial = match rv {
            None => st
                .scan(&res, ns, None)
                .map(|(k, o)| {
                    Arc::new(Change {
                        rv: o.rv,
                        kind: EventType::Added,
                        res: res.clone(),
                        namespace: k.0.as_str().into(),
                        name: k.1.as_str().into(),
                        obj: o.clone(),
                        prev: None,
                    })
                })
                .collect(),
            Some(rv) => st
                .changes_since(rv)
                .ok_or_else(|| {
                    ApiError::Expired(format!("too old resource version: {rv} ({})", st.floor + 1))
                })?
                .into_iter()
                .filter(|c| c.res == res)
                .collect(),
        };
        Ok(WatchStart {
            initial,
            rx,
            rv: st.rv,
        })
    }

    /// Changes after `rv` plus a fresh live channel, for a watcher that fell
    /// behind the live channel; `None` when they have left the ring.
    pub fn catch_up(&self, rv: u64) -> Option<CatchUp> {
        let st = self.lock();
        let changes = st.changes_since(rv)?;
        Some((changes, st.subscribe()))
    }

    pub fn registry_snapshot<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        f(&self.lock().registry)
    }

    pub fn count(&self, res: &ResKey) -> usize {
        self.lock().count(res)
    }
}

fn qualified(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        def.plural.clone()
    } else {
        format!("{}.{}", def.plural, def.group)
    }
}

/// Whether a stored object passes the selectors of a list or watch.
pub fn matches(key: &Key, obj: &Obj, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    if !labels.matches(&*obj.labels) {
        return false;
    }
    if fields.is_empty() {
        return true;
    }
    let parsed = std::cell::OnceCell::new();
    fields.matches(|f| match f {
        "metadata.name" => Some(key.1.clone()),
        "metadata.namespace" => Some(key.0.clone()),
        other => {
            let v = parsed.get_or_init(|| obj.value());
            let path = format!("/{}", other.replace('.', "/"));
            v.pointer(&path).map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
        }
    })
}

fn encode_continue(rv: u64, key: &Key) -> String {
    let doc = json!({"rv": rv, "ns": key.0, "name": key.1});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(doc.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "continue key is not valid: {token:?} was not issued by this server; list again without `continue`"
        ))
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let ns = v["ns"].as_str().ok_or_else(bad)?.to_string();
    let name = v["name"].as_str().ok_or_else(bad)?.to_string();
    Ok((rv, (ns, name)))
}

/// What the decoder does to a body before anything else sees it: checks
/// its apiVersion and kind (filling them when absent) and its namespace
/// against the URL's.
pub fn normalize(
    def: &ResourceDef,
    version: &str,
    ns: Option<&str>,
    body: &mut Value,
) -> Result<(), ApiError> {
    check_type(def, version, body)?;
    check_namespace(def, ns, body)
}

/// Checks the body is an object of this resource, filling in apiVersion and
/// kind when absent (as the real server's decoder does).
fn check_type(def: &ResourceDef, version: &str, body: &mut Value) -> Result<(), ApiError> {
    let Some(m) = body.as_object_mut() else {
        return Err(ApiError::BadRequest(format!(
            "the request body must be a JSON object of kind {}",
            def.kind
        )));
    };
    let want_av = def.api_version(version);
    match m.get("apiVersion").and_then(Value::as_str) {
        Some(av) if av != want_av => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
        _ => {}
    }
    match m.get("kind").and_then(Value::as_str) {
        Some(k) if k != def.kind => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )));
        }
        _ => {}
    }
    m.insert("apiVersion".into(), json!(want_av));
    m.insert("kind".into(), json!(def.kind));
    if !m.get("metadata").is_none_or(Value::is_object) {
        return Err(ApiError::BadRequest(
            "metadata must be a JSON object".into(),
        ));
    }
    Ok(())
}

fn check_namespace(def: &ResourceDef, ns: Option<&str>, body: &mut Value) -> Result<(), ApiError> {
    let m = meta_mut(body);
    if def.namespaced {
        let url_ns = ns.unwrap_or("");
        match m.get("namespace").and_then(Value::as_str) {
            Some(b) if !b.is_empty() && b != url_ns => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
            _ => {
                m.insert("namespace".into(), json!(url_ns));
            }
        }
    } else {
        m.remove("namespace");
    }
    Ok(())
}

/// Per-kind preparation of an object about to be stored: status on create,
/// Secret data, CRD status, custom-resource pruning and schema checks.
fn prepare_object(
    def: &ResourceDef,
    version: &str,
    body: &mut Value,
    old: Option<&Value>,
    strict: bool,
) -> Result<(), ApiError> {
    let name = meta_str(body, "name").unwrap_or_default().to_string();
    let creating = old.is_none();
    match def.builtin {
        Some(Builtin::Namespace) if creating => {
            body["status"] = json!({"phase": "Active"});
            body["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        Some(Builtin::Pod) if creating => {
            body["status"] = json!({"phase": "Pending"});
        }
        Some(Builtin::Secret) => prepare_secret(def, &name, body)?,
        Some(
            b @ (Builtin::MutatingWebhookConfiguration | Builtin::ValidatingWebhookConfiguration),
        ) => {
            let kind = if b == Builtin::MutatingWebhookConfiguration {
                admission::HookKind::Mutating
            } else {
                admission::HookKind::Validating
            };
            let causes = admission::prepare_configuration(kind, body);
            if !causes.is_empty() {
                return Err(invalid(def, &name, causes));
            }
        }
        Some(Builtin::ConfigMap) => {
            let mut causes = Vec::new();
            for field in ["data", "binaryData"] {
                if let Some(m) = body.get(field).and_then(Value::as_object) {
                    for k in m.keys() {
                        causes.extend(data_key_errors(field, k));
                    }
                }
            }
            if !causes.is_empty() {
                return Err(invalid(def, &name, causes));
            }
        }
        Some(Builtin::Crd) => {
            let names = body.pointer("/spec/names").cloned().unwrap_or(json!({}));
            let storage: Vec<Value> = body
                .pointer("/spec/versions")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter(|v| v["storage"] == json!(true))
                        .map(|v| v["name"].clone())
                        .collect()
                })
                .unwrap_or_default();
            let stamp = now();
            let cond = |t: &str, reason: &str, msg: &str| json!({"type": t, "status": "True", "reason": reason, "message": msg, "lastTransitionTime": stamp});
            let mut accepted = names.clone();
            if accepted.get("singular").is_none()
                && let Some(k) = names.get("kind").and_then(Value::as_str)
            {
                accepted["singular"] = json!(k.to_ascii_lowercase());
            }
            if accepted.get("listKind").is_none()
                && let Some(k) = names.get("kind").and_then(Value::as_str)
            {
                accepted["listKind"] = json!(format!("{k}List"));
            }
            body["status"] = json!({
                "acceptedNames": accepted,
                "conditions": [
                    cond("NamesAccepted", "NoConflicts", "no conflicts found"),
                    cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                ],
                "storedVersions": storage,
            });
        }
        None => {
            // A custom resource: prune and check against its version's schema.
            let schema = def.version(version).and_then(|v| v.schema.clone());
            if let Some(schema) = schema {
                let removed = schema::prune(body, &schema);
                if strict && !removed.is_empty() {
                    let list: Vec<String> = removed
                        .iter()
                        .map(|f| format!("unknown field {f:?}"))
                        .collect();
                    return Err(ApiError::BadRequest(format!(
                        "{} in version {version:?} cannot be handled as a {}: strict decoding error: {}",
                        def.kind,
                        def.kind,
                        list.join(", ")
                    )));
                }
                let errs = schema::validate(body, &schema);
                if !errs.is_empty() {
                    return Err(invalid(def, &name, errs));
                }
            }
            if creating
                && def.status_subresource
                && let Some(m) = body.as_object_mut()
            {
                m.remove("status");
            }
            body["apiVersion"] = json!(def.api_version(&def.storage_version));
        }
        _ => {}
    }
    Ok(())
}

/// `[-._a-zA-Z0-9]+`, at most 253 characters: keys of Secret and ConfigMap data.
fn data_key_errors(field: &str, k: &str) -> Vec<FieldError> {
    let ok = !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        && k != "."
        && k != "..";
    if ok {
        Vec::new()
    } else {
        vec![FieldError::invalid(
            format!("{field}[{k}]"),
            k,
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
        )]
    }
}

/// Secrets: `stringData` folds into `data` (base64), `data` must be base64,
/// and `type` defaults to Opaque, all as the real server does.
fn prepare_secret(def: &ResourceDef, name: &str, body: &mut Value) -> Result<(), ApiError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let obj = body.as_object_mut().expect("checked to be an object");
    if let Some(sd) = obj.remove("stringData") {
        let Value::Object(sd) = sd else {
            return Err(ApiError::BadRequest(
                "stringData must be a map of string keys to string values".into(),
            ));
        };
        let data = obj.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        for (k, v) in sd {
            let s = v
                .as_str()
                .ok_or_else(|| ApiError::BadRequest(format!("stringData[{k}] must be a string")))?;
            data[k.as_str()] = json!(b64.encode(s));
        }
    }
    let mut causes = Vec::new();
    if let Some(data) = obj.get("data") {
        match data {
            Value::Object(m) => {
                for (k, v) in m {
                    causes.extend(data_key_errors("data", k));
                    let valid = v.as_str().is_some_and(|s| b64.decode(s).is_ok());
                    if !valid {
                        return Err(ApiError::BadRequest(format!(
                            "Secret in version \"v1\" cannot be handled as a Secret: data[{k}] must be a base64-encoded string, got {v}"
                        )));
                    }
                }
            }
            Value::Null => {}
            other => {
                return Err(ApiError::BadRequest(format!(
                    "Secret data must be a map of base64 strings, got {other}"
                )));
            }
        }
    }
    if !causes.is_empty() {
        return Err(invalid(def, name, causes));
    }
    if obj
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        obj.insert("type".into(), json!("Opaque"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Store, Arc<ResourceDef>) {
        let s = Store::new(100);
        let d = s.def("secrets");
        (s, d)
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, &("ns".into(), "a".into()));
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, ("ns".into(), "a".into()))
        );
        assert!(matches!(
            decode_continue("nope"),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn create_sets_server_fields_and_folds_string_data() {
        let (s, d) = store();
        let v = s
            .create(
                &d,
                "v1",
                Some("default"),
                json!({"metadata": {"generateName": "tok-"}, "stringData": {"a": "hi"}}),
                WriteOpts::default(),
            )
            .unwrap();
        let name = v["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("tok-") && name.len() == 9, "{name}");
        assert_eq!(v["data"]["a"], "aGk=");
        assert_eq!(v["type"], "Opaque");
        assert_eq!(v["metadata"]["generation"], 1);
        assert!(v.get("stringData").is_none());
        assert!(v["metadata"]["uid"].as_str().unwrap().len() == 36);
    }

    #[test]
    fn namespace_deletion_takes_its_content() {
        let (s, d) = store();
        let ns = s.def("namespaces");
        s.create(
            &ns,
            "v1",
            None,
            json!({"metadata": {"name": "gone"}}),
            WriteOpts::default(),
        )
        .unwrap();
        s.create(
            &d,
            "v1",
            Some("gone"),
            json!({"metadata": {"name": "a"}}),
            WriteOpts::default(),
        )
        .unwrap();
        s.create(
            &d,
            "v1",
            Some("gone"),
            json!({"metadata": {"name": "held", "finalizers": ["x/y"]}}),
            WriteOpts::default(),
        )
        .unwrap();
        s.delete(&ns, None, "gone", &DeleteOpts::default()).unwrap();
        assert!(s.get(&d, Some("gone"), "a").is_err());
        // The finalizer holds one object, and so the namespace, in Terminating.
        let held = s.get(&d, Some("gone"), "held").unwrap().value();
        assert!(held["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(
            s.get(&ns, None, "gone").unwrap().value()["status"]["phase"],
            "Terminating"
        );
        let err = s
            .create(
                &d,
                "v1",
                Some("gone"),
                json!({"metadata": {"name": "new"}}),
                WriteOpts::default(),
            )
            .unwrap_err();
        assert_eq!(err.code(), 403);
        let mut v = held.clone();
        v["metadata"]["finalizers"] = json!([]);
        s.update(
            &d,
            "v1",
            Some("gone"),
            "held",
            v,
            false,
            WriteOpts::default(),
        )
        .unwrap();
        assert!(s.get(&d, Some("gone"), "held").is_err());
        assert!(
            s.get(&ns, None, "gone").is_err(),
            "an emptied terminating namespace goes"
        );
    }

    #[test]
    fn no_op_update_keeps_the_resource_version() {
        let (s, d) = store();
        let v = s
            .create(
                &d,
                "v1",
                Some("default"),
                json!({"metadata": {"name": "a"}}),
                WriteOpts::default(),
            )
            .unwrap();
        let again = s
            .update(
                &d,
                "v1",
                Some("default"),
                "a",
                v.clone(),
                false,
                WriteOpts::default(),
            )
            .unwrap();
        assert_eq!(
            again["metadata"]["resourceVersion"],
            v["metadata"]["resourceVersion"]
        );
    }
}
