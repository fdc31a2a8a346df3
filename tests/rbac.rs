//! The chart's RBAC, proven against real traffic.
//!
//! The chart is rendered by the real Helm engine (hack/chart.py). The node
//! plugin (the real binary, on a real socket, with real mounts) and the
//! controller (the real binary, with the Deployment's own arguments) run
//! under ServiceAccount tokens of the chart's ServiceAccounts, and go
//! through a publish, a renewal, an unpublish and a Certificate cycle
//! against the sandbox. The sandbox records who made every request; each
//! (verb, resource, namespace, name) a component used must then be allowed
//! by the rendered Roles and ClusterRoles bound to its ServiceAccount,
//! evaluated with Kubernetes' RBAC rules. Granted rules that the traffic
//! never used are printed (run with `--nocapture`), not failed on, since
//! some are needed on paths this cycle does not take:
//! - `signers approve`: cert-manager's webhook checks it with a
//!   SubjectAccessReview; the controller itself never sends it;
//! - `leases`: for leader election, which is still to come;
//! - `get` on issuers, clusterissuers and certificates: the controller
//!   re-reads after a write conflict, which only a race produces;
//! - `patch events` (controller): a repeated Event is patched, not created;
//! - `get certificaterequests` (node): resuming a publish that timed out.
//!
//! The sandbox does not enforce RBAC, so a missing grant shows up here as a
//! request that was made but is not allowed, never as a failed publish.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cert_csi::api::{
    CaIssuer, Certificate, CertificatePrivateKey, CertificateRequest, CertificateSpec,
    ClusterIssuer, Issuer, IssuerRef, IssuerSpec, SelfSignedIssuer,
};
use cert_csi::sandbox::RequestRecord;
use cert_csi::volume::keys;
use common::{Env, Options, Policy, served_leaf};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use serde::Deserialize;
use serde_json::{Value, json};

/// The release and namespace of the default install (as in tests/chart.rs).
const NAMESPACE: &str = "cert-csi";
/// Where the test's workloads run.
const WORKLOAD_NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// RBAC, evaluated as the Kubernetes authorizer evaluates it
// ---------------------------------------------------------------------------

/// One request, in the terms RBAC decides on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    verb: String,
    group: String,
    resource: String,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

impl Access {
    fn from_record(r: &RequestRecord) -> Access {
        Access {
            verb: r.verb.clone(),
            group: r.group.clone(),
            resource: r.resource.clone(),
            subresource: r.subresource.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        }
    }

    /// `resource/subresource`, as RBAC rules spell it.
    fn combined_resource(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {group}/{}", self.verb, self.combined_resource())?;
        match &self.namespace {
            Some(ns) => write!(f, " in namespace {ns}")?,
            None => write!(f, " (cluster scope)")?,
        }
        if let Some(name) = &self.name {
            write!(f, " name {name}")?;
        }
        Ok(())
    }
}

/// The identity the sandbox attributed a request to.
struct User<'a> {
    name: &'a str,
    groups: &'a [String],
}

/// A rule that reaches a user through a binding.
#[derive(Clone, Debug)]
struct Grant {
    /// E.g. `ClusterRole cert-csi-node via ClusterRoleBinding cert-csi-node`.
    source: String,
    /// `None` for a ClusterRoleBinding (every namespace and cluster-scoped
    /// resources); a RoleBinding's namespace otherwise.
    scope: Option<String>,
    rule: PolicyRule,
}

/// The RBAC objects of a rendered chart.
#[derive(Default)]
struct Rbac {
    cluster_roles: BTreeMap<String, ClusterRole>,
    /// By (namespace, name).
    roles: BTreeMap<(String, String), Role>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    role_bindings: Vec<RoleBinding>,
}

fn typed<T: for<'de> Deserialize<'de>>(doc: &Value) -> T {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "rendered {} {} does not deserialize: {e}",
            doc["kind"], doc["metadata"]["name"]
        )
    })
}

impl Rbac {
    fn from_docs(docs: &[Value]) -> Rbac {
        let mut p = Rbac::default();
        for doc in docs {
            match doc["kind"].as_str() {
                Some("ClusterRole") => {
                    let role: ClusterRole = typed(doc);
                    assert!(
                        role.aggregation_rule.is_none(),
                        "ClusterRole {:?} aggregates other roles; this test evaluates only literal rules",
                        role.metadata.name
                    );
                    p.cluster_roles
                        .insert(role.metadata.name.clone().unwrap_or_default(), role);
                }
                Some("Role") => {
                    let role: Role = typed(doc);
                    let key = (
                        role.metadata.namespace.clone().unwrap_or_default(),
                        role.metadata.name.clone().unwrap_or_default(),
                    );
                    p.roles.insert(key, role);
                }
                Some("ClusterRoleBinding") => p.cluster_role_bindings.push(typed(doc)),
                Some("RoleBinding") => p.role_bindings.push(typed(doc)),
                _ => {}
            }
        }
        p
    }

    /// Every rule bound to `user`, with the scope of its binding. A binding
    /// whose role is missing is a broken chart, and panics.
    fn grants_for(&self, user: &User) -> Vec<Grant> {
        let mut grants = Vec::new();
        for b in &self.cluster_role_bindings {
            let name = b.metadata.name.clone().unwrap_or_default();
            if !b
                .subjects
                .iter()
                .flatten()
                .any(|s| subject_matches(s, None, user))
            {
                continue;
            }
            assert_eq!(
                b.role_ref.kind, "ClusterRole",
                "ClusterRoleBinding {name}: roleRef.kind must be ClusterRole"
            );
            let role = self.cluster_roles.get(&b.role_ref.name).unwrap_or_else(|| {
                panic!(
                    "ClusterRoleBinding {name} refers to ClusterRole {} that the chart does not render",
                    b.role_ref.name
                )
            });
            for rule in role.rules.iter().flatten() {
                grants.push(Grant {
                    source: format!(
                        "ClusterRole {} via ClusterRoleBinding {name}",
                        b.role_ref.name
                    ),
                    scope: None,
                    rule: rule.clone(),
                });
            }
        }
        for b in &self.role_bindings {
            let name = b.metadata.name.clone().unwrap_or_default();
            let ns = b.metadata.namespace.clone().unwrap_or_else(|| {
                panic!("RoleBinding {name} has no metadata.namespace; render with a namespace")
            });
            if !b
                .subjects
                .iter()
                .flatten()
                .any(|s| subject_matches(s, Some(&ns), user))
            {
                continue;
            }
            let rules = match b.role_ref.kind.as_str() {
                "Role" => self
                    .roles
                    .get(&(ns.clone(), b.role_ref.name.clone()))
                    .unwrap_or_else(|| {
                        panic!(
                            "RoleBinding {ns}/{name} refers to Role {ns}/{} that the chart does not render",
                            b.role_ref.name
                        )
                    })
                    .rules
                    .clone(),
                "ClusterRole" => self
                    .cluster_roles
                    .get(&b.role_ref.name)
                    .unwrap_or_else(|| {
                        panic!(
                            "RoleBinding {ns}/{name} refers to ClusterRole {} that the chart does not render",
                            b.role_ref.name
                        )
                    })
                    .rules
                    .clone(),
                other => panic!("RoleBinding {ns}/{name}: roleRef.kind {other:?} is neither Role nor ClusterRole"),
            };
            for rule in rules.into_iter().flatten() {
                grants.push(Grant {
                    source: format!(
                        "{} {} via RoleBinding {ns}/{name}",
                        b.role_ref.kind, b.role_ref.name
                    ),
                    scope: Some(ns.clone()),
                    rule,
                });
            }
        }
        grants
    }
}

/// Whether a binding's subject names `user`. A ServiceAccount subject
/// without a namespace means the RoleBinding's own namespace, as the
/// authorizer reads it.
fn subject_matches(subject: &Subject, binding_ns: Option<&str>, user: &User) -> bool {
    match subject.kind.as_str() {
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .or(binding_ns)
                .unwrap_or_default();
            user.name == format!("system:serviceaccount:{ns}:{}", subject.name)
        }
        "User" => user.name == subject.name,
        "Group" => user.groups.contains(&subject.name),
        _ => false,
    }
}

/// Whether `rule` allows `access`, as Kubernetes' RBAC authorizer decides
/// (verbs, apiGroups and resources with `*`, `*/subresource`, and
/// resourceNames, which only a request naming one object can satisfy).
fn rule_allows(rule: &PolicyRule, access: &Access) -> bool {
    let verb = rule.verbs.iter().any(|v| v == "*" || *v == access.verb);
    let group = rule
        .api_groups
        .iter()
        .flatten()
        .any(|g| g == "*" || *g == access.group);
    let combined = access.combined_resource();
    let resource = rule.resources.iter().flatten().any(|r| {
        r == "*"
            || *r == combined
            || access
                .subresource
                .as_ref()
                .is_some_and(|sub| r.strip_prefix("*/") == Some(sub.as_str()))
    });
    let names = match rule.resource_names.as_deref() {
        None | Some([]) => true,
        Some(names) => access
            .name
            .as_ref()
            .is_some_and(|n| names.iter().any(|x| x == n)),
    };
    verb && group && resource && names
}

/// Whether `grant` allows `access`: a RoleBinding's rules apply only to
/// objects in its namespace, never to cluster-scoped ones.
fn grant_allows(grant: &Grant, access: &Access) -> bool {
    let in_scope = match &grant.scope {
        None => true,
        Some(ns) => access.namespace.as_deref() == Some(ns.as_str()),
    };
    in_scope && rule_allows(&grant.rule, access)
}

/// One verb on one resource of one group in one granted rule: the unit in
/// which unused grants are reported.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Atom {
    source: String,
    scope: Option<String>,
    verb: String,
    group: String,
    resource: String,
    names: Vec<String>,
}

impl Atom {
    fn as_grant(&self) -> Grant {
        Grant {
            source: self.source.clone(),
            scope: self.scope.clone(),
            rule: PolicyRule {
                verbs: vec![self.verb.clone()],
                api_groups: Some(vec![self.group.clone()]),
                resources: Some(vec![self.resource.clone()]),
                resource_names: (!self.names.is_empty()).then(|| self.names.clone()),
                non_resource_urls: None,
            },
        }
    }
}

impl std::fmt::Display for Atom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {group}/{}", self.verb, self.resource)?;
        if !self.names.is_empty() {
            write!(f, " names {:?}", self.names)?;
        }
        if let Some(ns) = &self.scope {
            write!(f, " in namespace {ns}")?;
        }
        write!(f, "  [{}]", self.source)
    }
}

/// Every grant split into atoms (a rule with two verbs on three resources
/// is six atoms), so a rule that is half used shows its unused half.
fn atoms(grants: &[Grant]) -> Vec<Atom> {
    let mut out = BTreeSet::new();
    for g in grants {
        for verb in &g.rule.verbs {
            for group in g.rule.api_groups.iter().flatten() {
                for resource in g.rule.resources.iter().flatten() {
                    out.insert(Atom {
                        source: g.source.clone(),
                        scope: g.scope.clone(),
                        verb: verb.clone(),
                        group: group.clone(),
                        resource: resource.clone(),
                        names: g.rule.resource_names.clone().unwrap_or_default(),
                    });
                }
            }
        }
    }
    out.into_iter().collect()
}

/// What one component's traffic says about its grants.
struct Verdict {
    /// Distinct accesses with how often each was made.
    used: BTreeMap<Access, usize>,
    /// Accesses no grant allows.
    denied: Vec<Access>,
    /// Atoms no access needed.
    unused: Vec<Atom>,
}

fn judge(grants: &[Grant], accesses: &[Access]) -> Verdict {
    let mut used: BTreeMap<Access, usize> = BTreeMap::new();
    for a in accesses {
        *used.entry(a.clone()).or_default() += 1;
    }
    let denied = used
        .keys()
        .filter(|a| !grants.iter().any(|g| grant_allows(g, a)))
        .cloned()
        .collect();
    let unused = atoms(grants)
        .into_iter()
        .filter(|atom| {
            let g = atom.as_grant();
            !used.keys().any(|a| grant_allows(&g, a))
        })
        .collect();
    Verdict {
        used,
        denied,
        unused,
    }
}

// ---------------------------------------------------------------------------
// The evaluator's own tests
// ---------------------------------------------------------------------------

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    let strings = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        non_resource_urls: None,
    }
}

fn access(verb: &str, group: &str, resource: &str, ns: Option<&str>, name: Option<&str>) -> Access {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (resource.to_string(), None),
    };
    Access {
        verb: verb.into(),
        group: group.into(),
        resource,
        subresource,
        namespace: ns.map(str::to_string),
        name: name.map(str::to_string),
    }
}

#[test]
fn a_rule_matches_verb_group_and_resource_exactly_or_by_wildcard() {
    let r = rule(
        &["cert-manager.io"],
        &["certificaterequests"],
        &["get", "create"],
        &[],
    );
    let get = access(
        "get",
        "cert-manager.io",
        "certificaterequests",
        Some("a"),
        Some("x"),
    );
    assert!(rule_allows(&r, &get));
    assert!(!rule_allows(
        &r,
        &Access {
            verb: "delete".into(),
            ..get.clone()
        }
    ));
    assert!(!rule_allows(
        &r,
        &Access {
            group: "".into(),
            ..get.clone()
        }
    ));
    assert!(!rule_allows(
        &r,
        &Access {
            resource: "certificates".into(),
            ..get.clone()
        }
    ));
    assert!(rule_allows(&rule(&["*"], &["*"], &["*"], &[]), &get));
    // The core group is "", which "cert-manager.io" does not cover.
    let pods = access("get", "", "pods", Some("a"), Some("p"));
    assert!(rule_allows(&rule(&[""], &["pods"], &["get"], &[]), &pods));
    assert!(!rule_allows(&r, &pods));
}

#[test]
fn a_subresource_needs_its_own_grant_or_a_star_prefix() {
    let status = access(
        "patch",
        "cert-manager.io",
        "certificaterequests/status",
        Some("a"),
        Some("x"),
    );
    assert!(!rule_allows(
        &rule(
            &["cert-manager.io"],
            &["certificaterequests"],
            &["patch"],
            &[]
        ),
        &status
    ));
    assert!(rule_allows(
        &rule(
            &["cert-manager.io"],
            &["certificaterequests/status"],
            &["patch"],
            &[]
        ),
        &status
    ));
    assert!(rule_allows(
        &rule(&["cert-manager.io"], &["*/status"], &["patch"], &[]),
        &status
    ));
    assert!(!rule_allows(
        &rule(&["cert-manager.io"], &["*/finalize"], &["patch"], &[]),
        &status
    ));
    // "*/status" does not cover the object itself.
    let object = access(
        "patch",
        "cert-manager.io",
        "certificaterequests",
        Some("a"),
        Some("x"),
    );
    assert!(!rule_allows(
        &rule(&["cert-manager.io"], &["*/status"], &["patch"], &[]),
        &object
    ));
}

#[test]
fn resource_names_allow_only_requests_that_name_a_listed_object() {
    let r = rule(
        &[""],
        &["configmaps"],
        &["get", "list", "create"],
        &["bundle"],
    );
    assert!(rule_allows(
        &r,
        &access("get", "", "configmaps", Some("a"), Some("bundle"))
    ));
    assert!(!rule_allows(
        &r,
        &access("get", "", "configmaps", Some("a"), Some("other"))
    ));
    // A list or a create names no object, so resourceNames cannot allow it.
    assert!(!rule_allows(
        &r,
        &access("list", "", "configmaps", Some("a"), None)
    ));
    assert!(!rule_allows(
        &r,
        &access("create", "", "configmaps", Some("a"), None)
    ));
}

#[test]
fn bindings_grant_by_subject_and_role_bindings_only_in_their_namespace() {
    let docs: Vec<Value> = vec![
        json!({"kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1",
               "metadata": {"name": "reader"},
               "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}),
        json!({"kind": "Role", "apiVersion": "rbac.authorization.k8s.io/v1",
               "metadata": {"name": "leases", "namespace": "sys"},
               "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["update"]}]}),
        json!({"kind": "RoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1",
               "metadata": {"name": "leases", "namespace": "sys"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leases"},
               // No namespace: the RoleBinding's own.
               "subjects": [{"kind": "ServiceAccount", "name": "ctl"}]}),
        json!({"kind": "RoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1",
               "metadata": {"name": "read-here", "namespace": "team"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"},
               "subjects": [{"kind": "Group", "name": "system:serviceaccounts:sys"}]}),
    ];
    let policy = Rbac::from_docs(&docs);
    let groups = vec![
        "system:serviceaccounts".to_string(),
        "system:serviceaccounts:sys".to_string(),
    ];
    let ctl = User {
        name: "system:serviceaccount:sys:ctl",
        groups: &groups,
    };
    let grants = policy.grants_for(&ctl);
    assert_eq!(grants.len(), 2, "{grants:?}");
    let allowed = |a: Access| grants.iter().any(|g| grant_allows(g, &a));
    assert!(allowed(access(
        "update",
        "coordination.k8s.io",
        "leases",
        Some("sys"),
        Some("l")
    )));
    assert!(!allowed(access(
        "update",
        "coordination.k8s.io",
        "leases",
        Some("other"),
        Some("l")
    )));
    // A ClusterRole through a RoleBinding: its namespace only, and nothing
    // cluster-scoped.
    assert!(allowed(access(
        "get",
        "",
        "secrets",
        Some("team"),
        Some("s")
    )));
    assert!(!allowed(access(
        "get",
        "",
        "secrets",
        Some("sys"),
        Some("s")
    )));
    assert!(!allowed(access("get", "", "secrets", None, Some("s"))));
    // Another ServiceAccount of the same name elsewhere gets nothing.
    let none: Vec<String> = Vec::new();
    let stranger = User {
        name: "system:serviceaccount:team:ctl",
        groups: &none,
    };
    assert!(policy.grants_for(&stranger).is_empty());
}

#[test]
fn the_verdict_lists_denied_accesses_and_unused_atoms() {
    let grants = vec![Grant {
        source: "ClusterRole test".into(),
        scope: None,
        rule: rule(
            &["cert-manager.io"],
            &["certificaterequests"],
            &["get", "delete"],
            &[],
        ),
    }];
    let used = vec![
        access(
            "get",
            "cert-manager.io",
            "certificaterequests",
            Some("a"),
            Some("x"),
        ),
        access(
            "get",
            "cert-manager.io",
            "certificaterequests",
            Some("a"),
            Some("x"),
        ),
        access(
            "create",
            "cert-manager.io",
            "certificaterequests",
            Some("a"),
            None,
        ),
    ];
    let v = judge(&grants, &used);
    assert_eq!(v.used.values().sum::<usize>(), 3);
    assert_eq!(v.denied, vec![used[2].clone()]);
    let unused: Vec<&str> = v.unused.iter().map(|a| a.verb.as_str()).collect();
    assert_eq!(unused, vec!["delete"]);
}

// ---------------------------------------------------------------------------
// The chart
// ---------------------------------------------------------------------------

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The chart rendered with default values, or `None` (skip) when the Helm
/// engine is not installed outside CI; hack/test installs it.
fn render_default_chart() -> Option<Vec<Value>> {
    let out = Command::new("python3")
        .arg(repo().join("hack/chart.py"))
        .arg("render")
        .current_dir(repo())
        .output();
    let missing = match out {
        // hack/chart.py exits 3 when the engine is not installed.
        Ok(o) if o.status.code() == Some(3) => String::from_utf8_lossy(&o.stderr).into_owned(),
        Ok(o) => {
            assert!(
                o.status.success(),
                "hack/chart.py render failed ({}):\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            let text = String::from_utf8(o.stdout).expect("hack/chart.py prints UTF-8");
            return Some(
                serde_yaml_ng::Deserializer::from_str(&text)
                    .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
                    .filter(|v| !v.is_null())
                    .collect(),
            );
        }
        Err(e) => format!("cannot run python3: {e}"),
    };
    let message = format!("the Helm engine is not available: {}", missing.trim());
    if in_ci() {
        panic!("{message} (hack/test installs it, and CI=true)");
    }
    eprintln!("skipping: {message}");
    None
}

fn only<T: for<'de> Deserialize<'de>>(docs: &[Value], kind: &str) -> T {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind} in the default render");
    typed(found[0])
}

/// The chart's container `cert-csi` of a pod template.
fn cert_csi_container(containers: &[Container], owner: &str) -> Container {
    containers
        .iter()
        .find(|c| c.name == "cert-csi")
        .unwrap_or_else(|| panic!("{owner} has no container named cert-csi"))
        .clone()
}

/// The long flag of an argument (`--a=b` or `--a`), for filtering.
fn flag_name(arg: &str) -> &str {
    arg.split('=').next().unwrap_or(arg)
}

// ---------------------------------------------------------------------------
// The controller, as the chart's Deployment runs it
// ---------------------------------------------------------------------------

/// `cert-csi controller` as a subprocess, stopped by pid on drop.
struct ControllerProcess {
    child: Child,
    log: PathBuf,
}

impl ControllerProcess {
    fn start(args: &[String], kubeconfig: &Path) -> ControllerProcess {
        let log = common::test_log_path("rbac-controller");
        let file = std::fs::File::options().append(true).open(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
            .args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn cert-csi controller");
        ControllerProcess { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the controller exited ({status}); log:\n{}", self.log());
        }
    }

    /// SIGTERM, then SIGKILL if it lingers; always reaped.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- last lines of the controller's log ----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        self.stop();
    }
}

/// Waits (test side) until `done` holds for object `name`, or panics with
/// the controller's log.
async fn wait_for<K, F>(
    api: Api<K>,
    name: &str,
    what: &str,
    controller: &mut ControllerProcess,
    done: F,
) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(&K) -> bool + Send + 'static,
{
    controller.assert_running();
    let cond = move |o: Option<&K>| o.is_some_and(&done);
    match tokio::time::timeout(WAIT, await_condition(api, name, cond)).await {
        Ok(Ok(Some(obj))) => obj,
        Ok(other) => panic!(
            "waiting for {what}: {other:?}\ncontroller log:\n{}",
            controller.log()
        ),
        Err(_) => panic!(
            "{what} did not happen within {WAIT:?}\ncontroller log:\n{}",
            controller.log()
        ),
    }
}

// ---------------------------------------------------------------------------
// The end-to-end test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_allows_all_real_traffic_of_node_plugin_and_controller() {
    if !common::require_root("chart_rbac_allows_all_real_traffic_of_node_plugin_and_controller") {
        return;
    }
    let Some(docs) = render_default_chart() else {
        return;
    };
    let policy = Rbac::from_docs(&docs);
    let daemonset: DaemonSet = only(&docs, "DaemonSet");
    let deployment: Deployment = only(&docs, "Deployment");
    let node_pod = daemonset.spec.unwrap().template.spec.unwrap();
    let controller_pod = deployment.spec.unwrap().template.spec.unwrap();
    // The identities the workloads actually run as, not names guessed here.
    let node_sa = node_pod
        .service_account_name
        .clone()
        .expect("the DaemonSet names its ServiceAccount");
    let controller_sa = controller_pod
        .service_account_name
        .clone()
        .expect("the Deployment names its ServiceAccount");
    for sa in [&node_sa, &controller_sa] {
        assert!(
            docs.iter().any(|d| d["kind"] == "ServiceAccount"
                && d["metadata"]["name"] == **sa
                && d["metadata"]["namespace"] == NAMESPACE),
            "the chart renders no ServiceAccount {NAMESPACE}/{sa}"
        );
    }
    let node_container = cert_csi_container(&node_pod.containers, "the DaemonSet");
    let controller_container = cert_csi_container(&controller_pod.containers, "the Deployment");

    // The node plugin runs with the DaemonSet's flags, except those the
    // harness must set for a test (socket, data root, kubeconfig, node id,
    // a free metrics port, a shorter publish timeout, debug logs).
    let harness_flags = [
        "--endpoint",
        "--data-root",
        "--kubeconfig",
        "--node-id",
        "--metrics-address",
        "--publish-timeout",
        "--log-level",
    ];
    let node_args: Vec<String> = node_container.args.clone().unwrap_or_default();
    assert_eq!(node_args.first().map(String::as_str), Some("node"));
    let node_extra: Vec<&str> = node_args[1..]
        .iter()
        .map(String::as_str)
        .filter(|a| !harness_flags.contains(&flag_name(a)))
        .collect();
    // The harness's in-process controller and approver stay out of it:
    // the controller process below, under its chart ServiceAccount,
    // approves and signs.
    let mut env = Env::start_with_args(
        Options {
            publish_timeout: "30s",
            policy: Policy::Ignore,
            controller: false,
        },
        &node_extra,
    )
    .await;
    let admin = env.client.clone();

    // The install: the chart's namespace and ServiceAccounts.
    for ns in [NAMESPACE, WORKLOAD_NS] {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        match Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &namespace)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("creating namespace {ns}: {e}"),
        }
    }
    env.create_service_account(NAMESPACE, &node_sa).await;
    env.create_service_account(NAMESPACE, &controller_sa).await;

    // Tokens as a real cluster hands them to the two workloads: projected
    // ServiceAccount tokens that the kubelet requests through the
    // TokenRequest API, bound to the component's pod (a DaemonSet pod on
    // this node, a Deployment pod). The RBAC decision only reads the user
    // and groups, which binding does not change, but a bound token is
    // what the components really carry.
    let dir = tempfile::tempdir().unwrap();
    let mut kubeconfigs = Vec::new();
    for (pod_name, sa) in [
        ("cert-csi-node-x7k2p", &node_sa),
        ("cert-csi-controller-5d8f9-q2w4r", &controller_sa),
    ] {
        let pod = env.create_pod(NAMESPACE, pod_name, sa).await;
        let tokens: Value = serde_json::from_str(&env.kubelet_tokens(&pod, &[""]).await).unwrap();
        let token = tokens[""]["token"]
            .as_str()
            .expect("the TokenRequest answer carries a token")
            .to_string();
        let path = dir.path().join(format!("{sa}.kubeconfig"));
        env.sandbox()
            .write_kubeconfig_for_token(&path, &token)
            .expect("write kubeconfig");
        kubeconfigs.push(path);
    }
    let node_user = format!("system:serviceaccount:{NAMESPACE}:{node_sa}");
    let controller_user = format!("system:serviceaccount:{NAMESPACE}:{controller_sa}");

    // The controller with the Deployment's arguments (among them
    // --cluster-resource-namespace and --approve-issuers), on a free
    // metrics port.
    let mut controller_args: Vec<String> = controller_container.args.clone().unwrap_or_default();
    assert_eq!(
        controller_args.first().map(String::as_str),
        Some("controller")
    );
    controller_args.retain(|a| flag_name(a) != "--metrics-address");
    controller_args.push("--metrics-address=127.0.0.1:0".into());
    let mut controller = ControllerProcess::start(&controller_args, &kubeconfigs[1]);
    // The node plugin under its own token from here on, startup included.
    env.restart_plugin_as(kubeconfigs[0].clone()).await;

    // The Certificate cycle, all by the controller: a SelfSigned
    // ClusterIssuer signs a CA Certificate whose Secret lands in the
    // cluster resource namespace; a CA ClusterIssuer uses it; a leaf
    // Certificate in a workload namespace gets its Secret.
    let cluster_issuers: Api<ClusterIssuer> = Api::all(admin.clone());
    let pp = PostParams::default();
    cluster_issuers
        .create(
            &pp,
            &ClusterIssuer::new(
                "selfsigned",
                IssuerSpec {
                    self_signed: Some(SelfSignedIssuer::default()),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    let ecdsa = || CertificatePrivateKey {
        algorithm: Some("ECDSA".into()),
        ..Default::default()
    };
    Api::<Certificate>::namespaced(admin.clone(), NAMESPACE)
        .create(
            &pp,
            &Certificate::new(
                "root-ca",
                CertificateSpec {
                    secret_name: "root-ca".into(),
                    issuer_ref: IssuerRef::cluster_issuer("selfsigned"),
                    common_name: Some("cert-csi rbac test root".into()),
                    is_ca: Some(true),
                    private_key: Some(ecdsa()),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    cluster_issuers
        .create(
            &pp,
            &ClusterIssuer::new(
                "ca",
                IssuerSpec {
                    ca: Some(CaIssuer {
                        secret_name: "root-ca".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    wait_for(
        cluster_issuers.clone(),
        "ca",
        "ClusterIssuer ca Ready",
        &mut controller,
        ClusterIssuer::is_ready,
    )
    .await;
    // A namespaced Issuer's status goes through issuers/status.
    let issuers: Api<Issuer> = Api::namespaced(admin.clone(), WORKLOAD_NS);
    issuers
        .create(
            &pp,
            &Issuer::new(
                "local",
                IssuerSpec {
                    self_signed: Some(SelfSignedIssuer::default()),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    wait_for(
        issuers,
        "local",
        "Issuer shop/local Ready",
        &mut controller,
        Issuer::is_ready,
    )
    .await;

    // A leaf, then a reissue after a spec change: the Secret is replaced
    // and, with revisionHistoryLimit 1, the first request is deleted.
    let leafs: Api<Certificate> = Api::namespaced(admin.clone(), WORKLOAD_NS);
    leafs
        .create(
            &pp,
            &Certificate::new(
                "web",
                CertificateSpec {
                    secret_name: "web-tls".into(),
                    issuer_ref: IssuerRef::cluster_issuer("ca"),
                    dns_names: Some(vec!["web.shop.svc".into()]),
                    private_key: Some(ecdsa()),
                    revision_history_limit: Some(1),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    let at_revision = |n: i32| {
        move |c: &Certificate| {
            c.is_ready() && !c.is_issuing() && c.status.as_ref().and_then(|s| s.revision) == Some(n)
        }
    };
    wait_for(
        leafs.clone(),
        "web",
        "Certificate shop/web Ready at revision 1",
        &mut controller,
        at_revision(1),
    )
    .await;
    leafs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dnsNames": ["web.shop.svc", "api.shop.svc"]}})),
        )
        .await
        .unwrap();
    wait_for(
        leafs.clone(),
        "web",
        "Certificate shop/web Ready at revision 2",
        &mut controller,
        at_revision(2),
    )
    .await;
    let secret = wait_for(
        Api::<Secret>::namespaced(admin.clone(), WORKLOAD_NS),
        "web-tls",
        "Secret shop/web-tls with the reissued certificate",
        &mut controller,
        |s: &Secret| {
            s.data
                .as_ref()
                .and_then(|d| d.get("tls.crt"))
                .and_then(|c| cert_csi::pki::parse_chain(&c.0).ok())
                .is_some_and(|chain| chain[0].sans.dns_names.iter().any(|n| n == "api.shop.svc"))
        },
    )
    .await;
    let chain = cert_csi::pki::parse_chain(&secret.data.unwrap()["tls.crt"].0)
        .expect("tls.crt of shop/web-tls is a PEM chain");
    assert!(
        chain[0].issuer.contains("cert-csi rbac test root"),
        "shop/web-tls is not signed by the CA ClusterIssuer: issuer {}",
        chain[0].issuer
    );
    let requests: Api<CertificateRequest> = Api::namespaced(admin.clone(), WORKLOAD_NS);
    let deadline = Instant::now() + WAIT;
    while requests.get_opt("web-1").await.unwrap().is_some() {
        controller.assert_running();
        assert!(
            Instant::now() < deadline,
            "revisionHistoryLimit 1 did not remove request shop/web-1 within {WAIT:?}\ncontroller log:\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The node plugin: publish, at least one renewal in place, unpublish.
    let pod = env.create_pod(WORKLOAD_NS, "app-0", "app").await;
    let volume = env.volume(
        &pod,
        "tls",
        &[
            (keys::ISSUER_NAME, "ca"),
            (keys::ISSUER_KIND, "ClusterIssuer"),
            (keys::KEY_ALGORITHM, "ECDSA"),
            (keys::DNS_NAMES, "app.shop.svc"),
            // Renewal about six seconds after issuance.
            (keys::DURATION, "20s"),
            (keys::RENEW_BEFORE, "14s"),
        ],
    );
    env.publish_ok(&volume).await;
    let first = served_leaf(&volume, "tls.crt").serial_hex;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if served_leaf(&volume, "tls.crt").serial_hex != first {
            break;
        }
        controller.assert_running();
        assert!(
            Instant::now() < deadline,
            "no renewal within 20 s of a 20 s certificate with renew-before 14 s\nnode log:\n{}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.unpublish(&volume.volume_id, &volume.target_path)
        .await
        .expect("unpublish");
    env.assert_no_trace(&volume).await;

    // A volume that cannot be issued: a SelfSigned issuer signs only with
    // the key in a Secret it is pointed at, which a CSI volume never has,
    // so the controller fails the request. The plugin then reports the
    // failure as an Event on the pod; the kubelet retries once and the
    // repeat goes to the same Event.
    let failing = env.volume(
        &pod,
        "selfsigned",
        &[
            (keys::ISSUER_NAME, "selfsigned"),
            (keys::ISSUER_KIND, "ClusterIssuer"),
            (keys::KEY_ALGORITHM, "ECDSA"),
            (keys::DNS_NAMES, "app.shop.svc"),
        ],
    );
    for attempt in 1..=2 {
        let result = env.publish(&failing).await;
        assert!(
            result.is_err(),
            "attempt {attempt}: a volume from a SelfSigned issuer was published\nnode log:\n{}",
            env.log()
        );
    }
    env.unpublish(&failing.volume_id, &failing.target_path)
        .await
        .expect("unpublish of a volume whose publish failed");
    // Events are sent in the background; wait for this one so the request
    // log below holds it.
    let events: Api<Event> = Api::namespaced(admin.clone(), WORKLOAD_NS);
    let deadline = Instant::now() + WAIT;
    loop {
        let list = events.list(&Default::default()).await.unwrap().items;
        if list.iter().any(|e| {
            e.reason.as_deref() == Some("IssuanceFailed")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("app-0")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no IssuanceFailed Event on pod shop/app-0 within {WAIT:?}; Events: {list:?}\nnode log:\n{}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The controller's shutdown traffic counts too.
    controller.stop();
    common::assert_no_secrets_in_log(&controller.log);
    let log = env.sandbox().request_log();

    // The verdict, per component.
    let mut failures = Vec::new();
    for (component, user) in [
        ("node plugin", &node_user),
        ("controller", &controller_user),
    ] {
        let records: Vec<&RequestRecord> = log.iter().filter(|r| r.user == **user).collect();
        let groups = records
            .first()
            .map(|r| r.groups.clone())
            .unwrap_or_default();
        let grants = policy.grants_for(&User {
            name: user,
            groups: &groups,
        });
        let accesses: Vec<Access> = records.iter().map(|r| Access::from_record(r)).collect();
        let verdict = judge(&grants, &accesses);
        println!("== {component} ({user}): {} requests", accesses.len());
        for (a, n) in &verdict.used {
            println!("   used {n:>4} x {a}");
        }
        for atom in &verdict.unused {
            println!("   granted, never used: {atom}");
        }
        for a in &verdict.denied {
            failures.push(format!("{component} ({user}): {a}"));
        }
        // The traffic must be the component's own: were the token ignored,
        // its requests would carry another user and this would be empty.
        let made = |verb: &str, resource: &str| {
            verdict
                .used
                .keys()
                .any(|a| a.verb == verb && a.combined_resource() == resource)
        };
        let expected: &[(&str, &str)] = if component == "node plugin" {
            &[
                ("create", "certificaterequests"),
                ("delete", "certificaterequests"),
                ("watch", "certificaterequests"),
                ("create", "events"),
            ]
        } else {
            &[
                ("watch", "certificaterequests"),
                ("create", "secrets"),
                ("watch", "certificates"),
                ("watch", "clusterissuers"),
                ("update", "issuers/status"),
                ("update", "secrets"),
                ("delete", "certificaterequests"),
            ]
        };
        for (verb, resource) in expected {
            assert!(
                made(verb, resource),
                "the {component} never made {verb} {resource} as {user}; its requests: {:?}",
                verdict
                    .used
                    .keys()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            );
        }
    }
    // Status writes go through a subresource, which needs its own grant.
    assert!(
        log.iter().any(|r| r.user == controller_user
            && r.resource == "certificaterequests"
            && r.subresource.as_deref() == Some("status")),
        "the controller never wrote a CertificateRequest's status as {controller_user}"
    );
    // The node made at least two requests for the volume (issue and
    // renewal), under its token.
    let creates = log
        .iter()
        .filter(|r| {
            r.user == node_user && r.verb == "create" && r.resource == "certificaterequests"
        })
        .count();
    assert!(
        creates >= 2,
        "the node plugin created {creates} CertificateRequests; expected issue and renewal"
    );
    assert!(
        failures.is_empty(),
        "requests the chart's RBAC does not allow (add them to the component's Role or ClusterRole):\n{}",
        failures.join("\n")
    );
    env.finish().await;
}
