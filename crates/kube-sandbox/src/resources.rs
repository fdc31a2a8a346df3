//! What the sandbox serves: built-in resource kinds and those that
//! CustomResourceDefinitions add, with everything discovery, validation and
//! table printing need to know about each.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::error::FieldError;
use super::json::string_list;
use super::jsonpath::JsonPath;
use super::validation::{self, NameRule};

/// Built-in kinds get hand-written table columns and a few special rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Namespace,
    Pod,
    Secret,
    ConfigMap,
    ServiceAccount,
    CoreEvent,
    Event,
    Lease,
    Crd,
    MutatingWebhookConfiguration,
    ValidatingWebhookConfiguration,
}

#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub path: JsonPath,
}

#[derive(Debug, Clone)]
pub struct VersionDef {
    pub name: String,
    /// `openAPIV3Schema` for custom resources; built-ins have none.
    pub schema: Option<Value>,
    pub columns: Vec<PrinterColumn>,
}

#[derive(Debug, Clone)]
pub struct ResourceDef {
    pub group: String,
    /// Served versions, preferred first.
    pub versions: Vec<VersionDef>,
    pub storage_version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Serves `/status`, and main-resource writes leave `.status` alone.
    pub status_subresource: bool,
    pub name_rule: NameRule,
    /// Fields accepted in `fieldSelector`, beyond metadata.name/namespace.
    pub extra_field_labels: Vec<&'static str>,
    /// Whether PUT without `metadata.resourceVersion` is accepted; the real
    /// server refuses it for custom resources and CRDs.
    pub unconditional_update: bool,
    pub builtin: Option<Builtin>,
}

/// `secrets` or `certificaterequests.cert-manager.io`: the key of a resource.
pub type ResKey = Arc<str>;

impl ResourceDef {
    pub fn key(&self) -> ResKey {
        res_key(&self.group, &self.plural)
    }
    pub fn version(&self, v: &str) -> Option<&VersionDef> {
        self.versions.iter().find(|x| x.name == v)
    }
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }
    pub fn field_labels(&self) -> Vec<&str> {
        let mut f = vec!["metadata.name"];
        if self.namespaced {
            f.push("metadata.namespace");
        }
        f.extend(self.extra_field_labels.iter().copied());
        f
    }
}

pub fn res_key(group: &str, plural: &str) -> ResKey {
    if group.is_empty() {
        Arc::from(plural)
    } else {
        Arc::from(format!("{plural}.{group}"))
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
    fields: &[&'static str],
    which: Builtin,
) -> ResourceDef {
    ResourceDef {
        group: group.into(),
        versions: vec![VersionDef {
            name: version.into(),
            schema: None,
            columns: Vec::new(),
        }],
        storage_version: version.into(),
        plural: plural.into(),
        singular: kind.to_ascii_lowercase(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status_subresource: status,
        name_rule: if which == Builtin::Namespace {
            NameRule::Label
        } else {
            NameRule::Subdomain
        },
        extra_field_labels: fields.to_vec(),
        unconditional_update: which != Builtin::Crd,
        builtin: Some(which),
    }
}

/// The resources every sandbox serves from the start.
pub fn builtins() -> Vec<ResourceDef> {
    use Builtin::*;
    let mut pods = builtin(
        "",
        "v1",
        "pods",
        "Pod",
        true,
        &["po"],
        true,
        &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        Pod,
    );
    pods.categories = vec!["all".into()];
    let core_event_fields: &[&'static str] = &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ];
    let mut crd = builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
        &[],
        Crd,
    );
    crd.categories = vec!["api-extensions".into()];
    vec![
        builtin(
            "",
            "v1",
            "namespaces",
            "Namespace",
            false,
            &["ns"],
            true,
            &["status.phase"],
            Namespace,
        ),
        pods,
        builtin(
            "",
            "v1",
            "secrets",
            "Secret",
            true,
            &[],
            false,
            &["type"],
            Secret,
        ),
        builtin(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
            true,
            &["cm"],
            false,
            &[],
            ConfigMap,
        ),
        builtin(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            &["sa"],
            false,
            &[],
            ServiceAccount,
        ),
        builtin(
            "",
            "v1",
            "events",
            "Event",
            true,
            &["ev"],
            false,
            core_event_fields,
            CoreEvent,
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            &["ev"],
            false,
            &[],
            Event,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            &[],
            false,
            &[],
            Lease,
        ),
        crd,
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            false,
            &[],
            false,
            &[],
            MutatingWebhookConfiguration,
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
            false,
            &[],
            false,
            &[],
            ValidatingWebhookConfiguration,
        ),
    ]
}

/// Orders versions as Kubernetes does: GA over beta over alpha, then by
/// major and minor number, then the rest alphabetically.
pub fn version_priority(v: &str) -> (u8, u64, u64, String) {
    let parse = |s: &str| -> Option<(u8, u64, u64)> {
        let rest = s.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: u64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((3, major, 0));
        }
        for (word, rank) in [("beta", 2u8), ("alpha", 1u8)] {
            if let Some(n) = tail.strip_prefix(word) {
                let minor = if n.is_empty() { 0 } else { n.parse().ok()? };
                return Some((rank, major, minor));
            }
        }
        None
    };
    match parse(v) {
        Some((rank, major, minor)) => (rank, major, minor, String::new()),
        None => (0, 0, 0, v.to_string()),
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |acc, k| acc.get(*k))
        .and_then(Value::as_str)
}

/// Reads a CustomResourceDefinition (as JSON) into what the sandbox serves,
/// or says every field that a real server would reject.
pub fn from_crd(crd: &Value) -> Result<ResourceDef, Vec<FieldError>> {
    let mut errs = Vec::new();
    let group = str_at(crd, &["spec", "group"])
        .unwrap_or_default()
        .to_string();
    let plural = str_at(crd, &["spec", "names", "plural"])
        .unwrap_or_default()
        .to_string();
    let kind = str_at(crd, &["spec", "names", "kind"])
        .unwrap_or_default()
        .to_string();
    let name = str_at(crd, &["metadata", "name"]).unwrap_or_default();
    if group.is_empty() {
        errs.push(FieldError::required(
            "spec.group",
            "the API group of the custom resource, e.g. example.com",
        ));
    } else if !group.contains('.') || !validation::dns1123_subdomain(&group).is_empty() {
        errs.push(FieldError::invalid(
            "spec.group",
            &group,
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural", ""));
    } else if !validation::dns1123_label(&plural).is_empty() {
        errs.push(FieldError::invalid(
            "spec.names.plural",
            &plural,
            "a lowercase RFC 1123 label is required",
        ));
    }
    if kind.is_empty() {
        errs.push(FieldError::required("spec.names.kind", ""));
    }
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let namespaced = match str_at(crd, &["spec", "scope"]) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            errs.push(FieldError::unsupported(
                "spec.scope",
                other.unwrap_or(""),
                &["Cluster".to_string(), "Namespaced".to_string()],
            ));
            true
        }
    };
    let mut versions = Vec::new();
    let mut storage = Vec::new();
    let mut status_subresource = false;
    let raw_versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if raw_versions.is_empty() {
        errs.push(FieldError::required(
            "spec.versions",
            "list at least one version",
        ));
    }
    for (i, v) in raw_versions.iter().enumerate() {
        let vname = v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if vname.is_empty() {
            errs.push(FieldError::required(format!("spec.versions[{i}].name"), ""));
        }
        if v.get("storage").and_then(Value::as_bool).unwrap_or(false) {
            storage.push(vname.clone());
        }
        // The real server owns the schema of metadata: at the root it may
        // say nothing but its type, and properties only for name and
        // generateName (found when the real kube-apiserver refused every
        // CRD this project generated with a description on metadata).
        if let Some(meta) = v.pointer("/schema/openAPIV3Schema/properties/metadata")
            && let Some(obj) = meta.as_object()
        {
            let props_ok = obj
                .get("properties")
                .and_then(Value::as_object)
                .is_none_or(|p| p.keys().all(|k| k == "name" || k == "generateName"));
            let only_allowed = obj.keys().all(|k| k == "type" || k == "properties")
                && obj.get("type").is_none_or(|t| t == "object");
            if !(props_ok && only_allowed) {
                errs.push(FieldError::forbidden(
                    format!(
                        "spec.versions[{i}].schema.openAPIV3Schema.properties[metadata]"
                    ),
                    "must not specify anything other than name and generateName, but metadata is implicitly specified",
                ));
            }
        }
        if v.pointer("/subresources/status").is_some() {
            status_subresource = true;
        }
        if !v.get("served").and_then(Value::as_bool).unwrap_or(false) {
            continue;
        }
        let mut columns = Vec::new();
        for (j, c) in v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let json_path = c
                .get("jsonPath")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match JsonPath::parse(json_path) {
                Ok(path) => columns.push(PrinterColumn {
                    name: c
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    type_: c
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("string")
                        .to_string(),
                    format: c
                        .get("format")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    description: c
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    path,
                }),
                Err(e) => errs.push(FieldError::invalid(
                    format!("spec.versions[{i}].additionalPrinterColumns[{j}].jsonPath"),
                    json_path,
                    e.detail,
                )),
            }
        }
        let schema = v.pointer("/schema/openAPIV3Schema").cloned();
        if schema.is_none() {
            errs.push(FieldError::required(
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "schemas are required",
            ));
        }
        versions.push(VersionDef {
            name: vname,
            schema,
            columns,
        });
    }
    if storage.len() != 1 && !raw_versions.is_empty() {
        errs.push(FieldError::invalid(
            "spec.versions",
            format!("{storage:?}"),
            "must have exactly one version marked as storage version",
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(&v.name)));
    let names = crd.pointer("/spec/names").cloned().unwrap_or(Value::Null);
    Ok(ResourceDef {
        singular: str_at(&names, &["singular"])
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_ascii_lowercase()),
        list_kind: str_at(&names, &["listKind"])
            .map(str::to_string)
            .unwrap_or_else(|| format!("{kind}List")),
        short_names: string_list(names.get("shortNames")),
        categories: string_list(names.get("categories")),
        group,
        versions,
        storage_version: storage.remove(0),
        plural,
        kind,
        namespaced,
        status_subresource,
        name_rule: NameRule::Subdomain,
        extra_field_labels: Vec::new(),
        unconditional_update: false,
        builtin: None,
    })
}

/// Every resource currently served, by key.
#[derive(Debug, Default)]
pub struct Registry {
    by_key: BTreeMap<ResKey, Arc<ResourceDef>>,
}

impl Registry {
    pub fn new(defs: impl IntoIterator<Item = ResourceDef>) -> Registry {
        let mut r = Registry::default();
        for d in defs {
            r.insert(d);
        }
        r
    }
    pub fn insert(&mut self, def: ResourceDef) {
        self.by_key.insert(def.key(), Arc::new(def));
    }
    pub fn remove(&mut self, key: &str) -> Option<Arc<ResourceDef>> {
        self.by_key.remove(key)
    }
    pub fn get(&self, key: &str) -> Option<&Arc<ResourceDef>> {
        self.by_key.get(key)
    }
    /// The resource served at `/{group}/{version}/{plural}`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.by_key
            .get(&*res_key(group, plural))
            .filter(|d| d.version(version).is_some())
            .cloned()
    }
    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceDef>> {
        self.by_key.values()
    }
    /// Groups (other than core) with their served versions, preferred first.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in self.by_key.values().filter(|d| !d.group.is_empty()) {
            let vs = out.entry(d.group.clone()).or_default();
            for v in &d.versions {
                if !vs.contains(&v.name) {
                    vs.push(v.name.clone());
                }
            }
        }
        for vs in out.values_mut() {
            vs.sort_by_key(|b| std::cmp::Reverse(version_priority(b)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn version_ordering_follows_kubernetes() {
        let mut vs = vec!["v1alpha1", "v2", "v1beta2", "v1", "foo", "v1beta1", "v10"];
        vs.sort_by_key(|b| std::cmp::Reverse(version_priority(b)));
        assert_eq!(
            vs,
            vec!["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
                "versions": [
                    {"name": "v1alpha1", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object"}}},
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                     "schema": {"openAPIV3Schema": {"type": "object"}},
                     "additionalPrinterColumns": [{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}]},
                    {"name": "v0", "served": false, "storage": false, "schema": {"openAPIV3Schema": {"type": "object"}}}
                ]
            }
        })
    }

    #[test]
    fn reads_a_crd() {
        let d = from_crd(&crd()).unwrap();
        assert_eq!(d.key().as_ref(), "widgets.example.com");
        assert_eq!(
            d.versions
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            vec!["v1", "v1alpha1"]
        );
        assert_eq!(d.storage_version, "v1");
        assert!(d.status_subresource && d.namespaced);
        assert_eq!(d.list_kind, "WidgetList");
        assert_eq!(d.short_names, vec!["wd"]);
        assert_eq!(d.version("v1").unwrap().columns.len(), 1);
        let r = Registry::new([d]);
        assert!(r.lookup("example.com", "v1", "widgets").is_some());
        assert!(r.lookup("example.com", "v0", "widgets").is_none());
        assert_eq!(r.groups()["example.com"], vec!["v1", "v1alpha1"]);
    }

    #[test]
    fn rejects_bad_crds() {
        let mut c = crd();
        c["metadata"]["name"] = json!("wrong.example.com");
        c["spec"]["scope"] = json!("Global");
        c["spec"]["versions"][0]["storage"] = json!(true);
        let errs = from_crd(&c).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["metadata.name", "spec.scope", "spec.versions"]);
        let mut c = crd();
        c["spec"]["group"] = json!("nodot");
        assert_eq!(from_crd(&c).unwrap_err()[0].field, "spec.group");
        // The real server's rule for the root metadata schema.
        let mut c = crd();
        c["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["properties"] =
            json!({"metadata": {"type": "object", "description": "Standard object metadata."}});
        let errs = from_crd(&c).unwrap_err();
        assert_eq!(
            errs[0].field,
            "spec.versions[1].schema.openAPIV3Schema.properties[metadata]"
        );
        let mut c = crd();
        c["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["properties"] = json!({
            "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}}}
        });
        from_crd(&c).unwrap();
    }
}
