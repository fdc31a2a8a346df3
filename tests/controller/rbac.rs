//! The chart's RBAC, proven by the real authorizer.
//!
//! Only a real kube-apiserver authorizes requests (the sandbox serves
//! everyone), so this test needs `CERT_CSI_TEST_API=real` (hack/test sets
//! it) and fails with a message otherwise. On hack/kube's control plane
//! (`--authorization-mode=Node,RBAC`):
//!
//! 1. The chart is rendered by the real Helm engine (hack/chart.py) and its
//!    RBAC (ServiceAccounts, ClusterRoles, ClusterRoleBindings, Roles,
//!    RoleBindings) is applied, after the release's namespace.
//! 2. The node plugin (the real binary, real mounts, the DaemonSet's
//!    flags) and the controller (the real binary, the Deployment's flags)
//!    run with tokens of their own ServiceAccounts from the TokenRequest
//!    API, never as admin. (The default render has no webhook; the webhook
//!    is served by the controller process and uses its ServiceAccount.)
//! 3. With the full RBAC, every flow succeeds and neither component logs a
//!    denial:
//!    - certificate: SelfSigned ClusterIssuer → CA Certificate → CA
//!      ClusterIssuer; a namespaced Issuer and a Certificate from it; a
//!      leaf Certificate → Secret, then a reissue (new revision, Secret
//!      replaced, the old request deleted by revisionHistoryLimit);
//!    - publish: publish → rotation in place → unpublish, nothing left;
//!    - events: a volume its issuer cannot sign fails twice; the plugin
//!      records it on the pod as one Event series;
//!    - resume: a publish that times out and its retry, which resumes the
//!      same request.
//! 4. Then, for each verb on each resource (and resource name) of each
//!    rule of each rendered role, the role is updated in place without it
//!    (the real authorizer's answer is awaited with SubjectAccessReviews),
//!    both components restart, and the flows run again with fresh objects.
//!    It is proven needed when a flow fails, or when the component logs
//!    the API server's denial of that very verb and resource for its own
//!    user. Anything no flow needs fails the test: remove it from the
//!    chart, or add the flow that needs it. The few verbs used only on
//!    paths no flow can take on purpose are listed in `UNREACHED`, each
//!    with why; `CERT_CSI_RBAC_WHOLE_RULES=1` takes out whole PolicyRules
//!    instead (quicker, and it covers those too).
//!
//! The chart's policy approver is on by default, so requests are approved
//! only through its default CertificateRequestPolicies, applied from the
//! same render; the requester identity they are judged by is stamped by
//! cert-csi's webhook, served in process (as cert-manager's webhook does in
//! a cluster). The `use` grants on those policies are proven like the
//! other rules: without one, the controller says which user cannot use
//! the policy. The publish flow asks for what a pod may have (a service
//! name of its namespace and its own SPIFFE URI); the `policy` flow asks
//! for the CA certificate that issue 16 got through, and it must be denied
//! by the chart's policy, by name.
//!
//! cert-manager's webhook lets only users that may `approve` a request's
//! signer (`signers` in cert-manager.io, by resource name) set its Approved
//! or Denied condition; it is not installed here, so a
//! ValidatingAdmissionPolicy makes the same check with the real
//! authorizer (CEL `authorizer`), and the `signers approve` rule is proven
//! like the others.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cert_csi::api::{
    Certificate, CertificateRequest, CertificateRequestPolicy, ClusterIssuer, Issuer,
};
use cert_csi::controller::leader::LEASE_NAME;
use cert_csi::volume::keys;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use test_kit::{Backend, Env, Options, Policy, VolumeRequest};

/// The release and namespace of the default install (as in tests/chart.rs).
const NAMESPACE: &str = "cert-csi";
/// How long one step of a flow may take before the flow has failed.
const STEP: Duration = Duration::from_secs(30);
/// The node plugin's `--publish-timeout`: issuance takes well under a
/// second here, and the resume flow waits for it twice.
const PUBLISH_TIMEOUT: &str = "5s";
/// The field manager of everything this test applies.
const MANAGER: &str = "cert-csi-rbac-test";

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

fn typed<T: DeserializeOwned>(doc: &Value) -> T {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "rendered {} {} does not deserialize: {e}",
            doc["kind"], doc["metadata"]["name"]
        )
    })
}

fn all_of<T: DeserializeOwned>(docs: &[Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(typed)
        .collect()
}

fn only<T: DeserializeOwned>(docs: &[Value], kind: &str) -> T {
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
// The chart's RBAC on the real server
// ---------------------------------------------------------------------------

/// The RBAC objects of the render, applied as they are or with one rule
/// taken out.
struct Rbac {
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
}

/// One rule of one rendered role, or one verb on one resource of it: what
/// a trial takes out.
#[derive(Clone, Debug)]
struct RuleRef {
    /// `ClusterRole` or `Role`.
    kind: &'static str,
    /// The Role's namespace.
    namespace: Option<String>,
    name: String,
    index: usize,
    /// What is taken out.
    rule: PolicyRule,
    /// What stays in the rule's place (nothing when the whole rule goes).
    remainder: Vec<PolicyRule>,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.rule;
        let groups: Vec<&str> = r
            .api_groups
            .iter()
            .flatten()
            .map(|g| if g.is_empty() { "core" } else { g.as_str() })
            .collect();
        write!(
            f,
            "{} {}{} rule {}: {} {}/{}",
            self.kind,
            self.namespace
                .as_deref()
                .map(|n| format!("{n}/"))
                .unwrap_or_default(),
            self.name,
            self.index,
            r.verbs.join(","),
            groups.join(","),
            r.resources
                .iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        )?;
        if let Some(names) = r.resource_names.as_ref().filter(|n| !n.is_empty()) {
            write!(f, " names {names:?}")?;
        }
        if !self.remainder.is_empty() {
            write!(f, " (the rest of the rule stays)")?;
        }
        Ok(())
    }
}

/// One verb on one resource (`resource` or `resource/subresource`) of one
/// group, with one resource name or none: what one SubjectAccessReview
/// asks and one denial message names.
#[derive(Clone, Debug)]
struct Atom {
    verb: String,
    group: String,
    resource: String,
    name: Option<String>,
    /// Where the grant applies: a Role's or RoleBinding's namespace; `None`
    /// for a ClusterRoleBinding (every namespace and the cluster scope).
    namespace: Option<String>,
}

impl Atom {
    /// What the API server's Forbidden message says about it
    /// (`User "..." cannot VERB resource "RESOURCE" in API group "GROUP"`).
    fn denial_phrase(&self) -> String {
        format!(
            "cannot {} resource \"{}\" in API group \"{}\"",
            self.verb, self.resource, self.group
        )
    }
}

fn atoms_of(rule: &PolicyRule, namespace: Option<&str>) -> Vec<Atom> {
    let names: Vec<Option<String>> = match rule.resource_names.as_ref().filter(|n| !n.is_empty()) {
        Some(names) => names.iter().cloned().map(Some).collect(),
        None => vec![None],
    };
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for name in &names {
                    out.push(Atom {
                        verb: verb.clone(),
                        group: group.clone(),
                        resource: resource.clone(),
                        name: name.clone(),
                        namespace: namespace.map(str::to_string),
                    });
                }
            }
        }
    }
    out
}

impl Rbac {
    fn from_docs(docs: &[Value]) -> Rbac {
        let rbac = Rbac {
            service_accounts: all_of(docs, "ServiceAccount"),
            cluster_roles: all_of(docs, "ClusterRole"),
            cluster_role_bindings: all_of(docs, "ClusterRoleBinding"),
            roles: all_of(docs, "Role"),
            role_bindings: all_of(docs, "RoleBinding"),
        };
        for role in &rbac.cluster_roles {
            assert!(
                role.aggregation_rule.is_none(),
                "ClusterRole {:?} aggregates other roles; this test removes literal rules only",
                role.metadata.name
            );
        }
        rbac
    }

    /// Every rule of every rendered role, in render order.
    fn rules(&self) -> Vec<RuleRef> {
        let mut out = Vec::new();
        for role in &self.cluster_roles {
            for (index, rule) in role.rules.iter().flatten().enumerate() {
                out.push(RuleRef {
                    kind: "ClusterRole",
                    namespace: None,
                    name: role.metadata.name.clone().unwrap_or_default(),
                    index,
                    rule: rule.clone(),
                    remainder: Vec::new(),
                });
            }
        }
        for role in &self.roles {
            for (index, rule) in role.rules.iter().flatten().enumerate() {
                out.push(RuleRef {
                    kind: "Role",
                    namespace: role.metadata.namespace.clone(),
                    name: role.metadata.name.clone().unwrap_or_default(),
                    index,
                    rule: rule.clone(),
                    remainder: Vec::new(),
                });
            }
        }
        out
    }

    /// Every verb on every resource (and resource name) of every rule. The
    /// rule without one is the rule's other verbs, plus this verb on the
    /// other resources, plus this verb on this resource by its other names.
    fn verb_resources(&self) -> Vec<RuleRef> {
        let mut out = Vec::new();
        for whole in self.rules() {
            let rule = &whole.rule;
            let resources = rule.resources.clone().unwrap_or_default();
            let names: Vec<Option<String>> =
                match rule.resource_names.as_ref().filter(|n| n.len() > 1) {
                    Some(names) => names.iter().cloned().map(Some).collect(),
                    None => vec![None],
                };
            for verb in &rule.verbs {
                for resource in &resources {
                    for name in &names {
                        let mut removed = rule.clone();
                        removed.verbs = vec![verb.clone()];
                        removed.resources = Some(vec![resource.clone()]);
                        if let Some(name) = name {
                            removed.resource_names = Some(vec![name.clone()]);
                        }
                        let mut other_verbs = rule.clone();
                        other_verbs.verbs.retain(|v| v != verb);
                        let mut other_resources = rule.clone();
                        other_resources.verbs = vec![verb.clone()];
                        other_resources.resources = Some(
                            resources
                                .iter()
                                .filter(|r| *r != resource)
                                .cloned()
                                .collect(),
                        );
                        // Only when names are split: this verb on this
                        // resource by the rule's other names.
                        let other_names = name.as_ref().map(|name| {
                            let mut r = removed.clone();
                            r.resource_names = Some(
                                rule.resource_names
                                    .iter()
                                    .flatten()
                                    .filter(|n| *n != name)
                                    .cloned()
                                    .collect(),
                            );
                            r
                        });
                        let remainder = [Some(other_verbs), Some(other_resources), other_names]
                            .into_iter()
                            .flatten()
                            .filter(|r| {
                                !r.verbs.is_empty()
                                    && !r.resources.as_ref().is_none_or(Vec::is_empty)
                                    && r.resource_names.as_ref().is_none_or(|n| !n.is_empty())
                            })
                            .collect::<Vec<_>>();
                        out.push(RuleRef {
                            rule: removed,
                            remainder,
                            ..whole.clone()
                        });
                    }
                }
            }
        }
        out
    }

    /// The ServiceAccounts (`system:serviceaccount:NS:NAME`) a role is
    /// bound to, each with the namespace the binding grants it in (`None`:
    /// cluster-wide).
    fn grantees(&self, target: &RuleRef) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        let sa_users = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>,
                        default_ns: Option<&str>| {
            subjects
                .iter()
                .flatten()
                .map(|s| {
                    assert_eq!(
                        s.kind, "ServiceAccount",
                        "the chart binds {} to a {} ({}); this test runs ServiceAccounts only",
                        target.name, s.kind, s.name
                    );
                    let ns = s
                        .namespace
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .or(default_ns)
                        .expect("a ServiceAccount subject has a namespace");
                    format!("system:serviceaccount:{ns}:{}", s.name)
                })
                .collect::<Vec<_>>()
        };
        if target.kind == "ClusterRole" {
            for b in &self.cluster_role_bindings {
                if b.role_ref.kind == "ClusterRole" && b.role_ref.name == target.name {
                    for user in sa_users(&b.subjects, None) {
                        out.push((user, None));
                    }
                }
            }
        }
        for b in &self.role_bindings {
            let ns = b.metadata.namespace.clone();
            let matches = b.role_ref.kind == target.kind
                && b.role_ref.name == target.name
                && (target.kind == "ClusterRole" || ns == target.namespace);
            if matches {
                for user in sa_users(&b.subjects, ns.as_deref()) {
                    out.push((user, ns.clone()));
                }
            }
        }
        out
    }

    /// Creates or updates every object (server-side apply), with `removed`
    /// taken out of its role.
    async fn apply(&self, client: &Client, removed: Option<&RuleRef>) {
        let without =
            |kind: &str, ns: Option<&String>, name: &str, rules: &Option<Vec<PolicyRule>>| {
                let mut rules = rules.clone().unwrap_or_default();
                if let Some(r) = removed
                    && r.kind == kind
                    && r.namespace.as_ref() == ns
                    && r.name == name
                {
                    rules.splice(r.index..=r.index, r.remainder.iter().cloned());
                }
                Some(rules)
            };
        for sa in &self.service_accounts {
            apply_object(client, sa).await;
        }
        for role in &self.cluster_roles {
            let mut role = role.clone();
            role.rules = without(
                "ClusterRole",
                None,
                role.metadata.name.as_deref().unwrap_or_default(),
                &role.rules,
            );
            apply_object(client, &role).await;
        }
        for role in &self.roles {
            let mut role = role.clone();
            role.rules = without(
                "Role",
                role.metadata.namespace.as_ref(),
                role.metadata.name.as_deref().unwrap_or_default(),
                &role.rules,
            );
            apply_object(client, &role).await;
        }
        for b in &self.cluster_role_bindings {
            apply_object(client, b).await;
        }
        for b in &self.role_bindings {
            apply_object(client, b).await;
        }
    }
}

/// Server-side apply of one object, cluster-scoped or namespaced by its
/// metadata.
async fn apply_object<K>(client: &Client, object: &K)
where
    K: Resource<DynamicType = ()> + Clone + serde::Serialize + DeserializeOwned + std::fmt::Debug,
{
    let meta = object.meta();
    let name = meta.name.clone().expect("a rendered object has a name");
    let resource = kube::api::ApiResource::erase::<K>(&());
    let api: Api<kube::api::DynamicObject> = match &meta.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {} {name}: {e}", K::kind(&())));
}

/// The real authorizer's answer for `user` (a ServiceAccount) and `atom`.
async fn allowed(client: &Client, user: &str, atom: &Atom) -> bool {
    let sa_ns = user.split(':').nth(2).unwrap_or_default();
    let (resource, subresource) = match atom.resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (atom.resource.clone(), None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{sa_ns}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(atom.verb.clone()),
                group: Some(atom.group.clone()),
                resource: Some(resource),
                subresource,
                name: atom.name.clone(),
                namespace: atom.namespace.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

/// Waits until the real authorizer gives `user` every atom (`want`
/// true), or denies every one (`want` false).
async fn await_authorizer(client: &Client, user: &str, atoms: &[Atom], want: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut settled = true;
        for atom in atoms {
            if allowed(client, user, atom).await != want {
                settled = false;
                break;
            }
        }
        if settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the API server did not {} {user} {atoms:?} within 20 s of the RBAC update{}",
            if want { "allow" } else { "deny" },
            if want {
                ""
            } else {
                " (another rule may grant the same: then this rule is redundant)"
            }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// cert-manager's approval check, by the real authorizer: setting a
/// request's Approved or Denied condition needs `approve` on
/// `signers.cert-manager.io` named `<resource>.<group>/*` or
/// `<resource>.<group>/[<namespace>.]<name>` of its issuer, as
/// cert-manager's webhook asks with a SubjectAccessReview.
async fn install_approval_check(client: &Client) {
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "cert-manager-approval-check"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["cert-manager.io"],
                "apiVersions": ["*"],
                "operations": ["UPDATE"],
                "resources": ["certificaterequests/status"],
            }]},
            "variables": [
                {"name": "decided", "expression":
                    "has(object.status) && has(object.status.conditions) ? object.status.conditions.filter(c, c.type == 'Approved' || c.type == 'Denied') : []"},
                {"name": "before", "expression":
                    "has(oldObject.status) && has(oldObject.status.conditions) ? oldObject.status.conditions.filter(c, c.type == 'Approved' || c.type == 'Denied') : []"},
                {"name": "changed", "expression":
                    "variables.decided.exists(c, !variables.before.exists(o, o.type == c.type && o.status == c.status))"},
                {"name": "kind", "expression":
                    "has(object.spec.issuerRef.kind) && object.spec.issuerRef.kind != '' ? object.spec.issuerRef.kind : 'Issuer'"},
                {"name": "group", "expression":
                    "has(object.spec.issuerRef.group) && object.spec.issuerRef.group != '' ? object.spec.issuerRef.group : 'cert-manager.io'"},
                {"name": "resource", "expression": "variables.kind.lowerAscii() + 's'"},
                {"name": "wildcard", "expression": "variables.resource + '.' + variables.group + '/*'"},
                {"name": "signer", "expression":
                    "variables.resource + '.' + variables.group + '/' + (variables.kind == 'ClusterIssuer' ? '' : object.metadata.namespace + '.') + object.spec.issuerRef.name"},
            ],
            "validations": [{
                "expression":
                    "!variables.changed || authorizer.group('cert-manager.io').resource('signers').name(variables.wildcard).check('approve').allowed() || authorizer.group('cert-manager.io').resource('signers').name(variables.signer).check('approve').allowed()",
                "messageExpression":
                    "'User \"' + request.userInfo.username + '\" cannot approve resource \"signers\" in API group \"cert-manager.io\" (neither ' + variables.signer + ' nor ' + variables.wildcard + '), so it may not set the Approved or Denied condition'",
                "reason": "Forbidden",
            }],
        },
    }))
    .unwrap();
    apply_object(client, &policy).await;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "cert-manager-approval-check"},
        "spec": {"policyName": "cert-manager-approval-check", "validationActions": ["Deny"]},
    }))
    .unwrap();
    apply_object(client, &binding).await;
}

async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

// ---------------------------------------------------------------------------
// The controller, as the chart's Deployment runs it
// ---------------------------------------------------------------------------

/// `cert-csi controller` as a subprocess, stopped by pid on drop.
struct ControllerProcess {
    child: Mutex<Child>,
    log: PathBuf,
}

impl ControllerProcess {
    fn start(args: &[String], kubeconfig: &Path, label: &str) -> ControllerProcess {
        let log = test_kit::test_log_path(&format!("rbac-controller-{label}"));
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
        ControllerProcess {
            child: Mutex::new(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL if it lingers; always reaped.
    fn stop(&self) {
        test_kit::stop_child(&mut self.child.lock().unwrap(), Duration::from_secs(5));
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

// ---------------------------------------------------------------------------
// The flows
// ---------------------------------------------------------------------------

type Flow = Result<(), String>;

/// Creates `value` (a JSON manifest) through `api`.
async fn create<K>(api: &Api<K>, value: Value) -> Result<K, String>
where
    K: Resource + Clone + serde::Serialize + DeserializeOwned + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value).map_err(|e| format!("manifest: {e}"))?;
    let name = object.meta().name.clone().unwrap_or_default();
    api.create(&PostParams::default(), &object)
        .await
        .map_err(|e| format!("creating {name}: {e}"))
}

/// Polls `name` until `done` holds; fails after [`STEP`] with what it saw.
async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    done: impl Fn(&K) -> bool,
) -> Result<K, String>
where
    K: Resource + Clone + serde::Serialize + DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + STEP;
    loop {
        let last = api
            .get_opt(name)
            .await
            .map_err(|e| format!("{what}: reading {name}: {e}"))?;
        match last {
            Some(o) if done(&o) => return Ok(o),
            last if Instant::now() >= deadline => {
                let status = last
                    .map(|o| serde_json::to_value(&o).unwrap_or_default()["status"].to_string())
                    .unwrap_or_else(|| "absent".into());
                return Err(format!("{what}: not within {STEP:?}; status: {status}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Polls `check` until it returns true; fails after [`STEP`].
async fn wait_until<F, Fut>(what: &str, mut check: F) -> Flow
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let deadline = Instant::now() + STEP;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {STEP:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn leaf_serial(volume: &VolumeRequest) -> Result<String, String> {
    let pem = std::fs::read(volume.file("tls.crt"))
        .map_err(|e| format!("reading {}: {e}", volume.file("tls.crt").display()))?;
    let chain = cert_csi::pki::parse_chain(&pem).map_err(|e| format!("tls.crt: {e}"))?;
    Ok(chain
        .first()
        .ok_or("tls.crt holds no certificate")?
        .serial_hex
        .clone())
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// One run of every flow, with objects named after the trial.
struct Flows<'a> {
    env: &'a Env,
    admin: Client,
    /// Prefix of cluster-scoped names (`t03`).
    prefix: String,
    /// The trial's workload namespace.
    ns: String,
    /// The chart's default policy for requests from CSI volumes.
    csi_policy: String,
    /// Every volume a flow published or tried to, for the cleanup.
    volumes: Mutex<Vec<VolumeRequest>>,
}

impl Flows<'_> {
    async fn run(&self) -> Flow {
        self.certificate()
            .await
            .map_err(|e| format!("certificate flow: {e}"))?;
        create_namespace(&self.admin, &self.ns).await;
        let pod = self.env.create_pod(&self.ns, "app", "app").await;
        self.publish(&pod)
            .await
            .map_err(|e| format!("publish flow: {e}"))?;
        self.policy(&pod)
            .await
            .map_err(|e| format!("policy flow: {e}"))?;
        self.events(&pod)
            .await
            .map_err(|e| format!("events flow: {e}"))?;
        self.resume(&pod)
            .await
            .map_err(|e| format!("resume flow: {e}"))
    }

    /// SelfSigned ClusterIssuer → CA Certificate (its Secret in the
    /// cluster resource namespace) → CA ClusterIssuer; a namespaced
    /// Issuer; a leaf Certificate → Secret, then a reissue.
    async fn certificate(&self) -> Flow {
        let p = &self.prefix;
        let ns = &self.ns;
        create_namespace(&self.admin, ns).await;
        let cluster_issuers: Api<ClusterIssuer> = Api::all(self.admin.clone());
        let selfsigned = format!("{p}-selfsigned");
        create(
            &cluster_issuers,
            json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
                   "metadata": {"name": selfsigned}, "spec": {"selfSigned": {}}}),
        )
        .await?;
        wait_for(
            &cluster_issuers,
            &selfsigned,
            "SelfSigned ClusterIssuer Ready",
            ClusterIssuer::is_ready,
        )
        .await?;
        let root = format!("{p}-root");
        let root_cn = format!("cert-csi rbac test {p} root");
        let cluster_ns_certs: Api<Certificate> = Api::namespaced(self.admin.clone(), NAMESPACE);
        create(
            &cluster_ns_certs,
            json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                   "metadata": {"name": root, "namespace": NAMESPACE},
                   "spec": {"secretName": root, "isCA": true, "commonName": root_cn,
                            "privateKey": {"algorithm": "ECDSA"},
                            "issuerRef": {"name": selfsigned, "kind": "ClusterIssuer", "group": "cert-manager.io"}}}),
        )
        .await?;
        wait_for(
            &cluster_ns_certs,
            &root,
            "CA Certificate Ready",
            Certificate::is_ready,
        )
        .await?;
        let ca = format!("{p}-ca");
        create(
            &cluster_issuers,
            json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
                   "metadata": {"name": ca}, "spec": {"ca": {"secretName": root}}}),
        )
        .await?;
        wait_for(
            &cluster_issuers,
            &ca,
            "CA ClusterIssuer Ready",
            ClusterIssuer::is_ready,
        )
        .await?;
        // A namespaced Issuer's status goes through issuers/status.
        let issuers: Api<Issuer> = Api::namespaced(self.admin.clone(), ns);
        create(
            &issuers,
            json!({"apiVersion": "cert-manager.io/v1", "kind": "Issuer",
                   "metadata": {"name": "local", "namespace": ns}, "spec": {"selfSigned": {}}}),
        )
        .await?;
        wait_for(
            &issuers,
            "local",
            "namespaced Issuer Ready",
            Issuer::is_ready,
        )
        .await?;
        // Its requests are approved by the issuers.cert-manager.io signer
        // name, the CA ClusterIssuer's by the clusterissuers one.
        let certificates: Api<Certificate> = Api::namespaced(self.admin.clone(), ns);
        create(
            &certificates,
            json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                   "metadata": {"name": "local", "namespace": ns},
                   "spec": {"secretName": "local-tls", "commonName": "local",
                            "privateKey": {"algorithm": "ECDSA"},
                            "issuerRef": {"name": "local", "kind": "Issuer", "group": "cert-manager.io"}}}),
        )
        .await?;
        wait_for(
            &certificates,
            "local",
            "Certificate from the namespaced Issuer Ready",
            Certificate::is_ready,
        )
        .await?;

        // A leaf, then a reissue after a spec change: the Secret is
        // replaced and, with revisionHistoryLimit 1, the first request is
        // deleted.
        create(
            &certificates,
            json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                   "metadata": {"name": "web", "namespace": ns},
                   "spec": {"secretName": "web-tls", "dnsNames": [format!("web.{ns}.svc")],
                            "privateKey": {"algorithm": "ECDSA"}, "revisionHistoryLimit": 1,
                            "issuerRef": {"name": ca, "kind": "ClusterIssuer", "group": "cert-manager.io"}}}),
        )
        .await?;
        let at_revision = |n: i32| {
            move |c: &Certificate| {
                c.is_ready()
                    && !c.is_issuing()
                    && c.status.as_ref().and_then(|s| s.revision) == Some(n)
            }
        };
        wait_for(
            &certificates,
            "web",
            "leaf Certificate Ready at revision 1",
            at_revision(1),
        )
        .await?;
        let secrets: Api<Secret> = Api::namespaced(self.admin.clone(), ns);
        let san = |name: String| {
            move |s: &Secret| {
                s.data
                    .as_ref()
                    .and_then(|d| d.get("tls.crt"))
                    .and_then(|c| cert_csi::pki::parse_chain(&c.0).ok())
                    .is_some_and(|chain| chain[0].sans.dns_names.contains(&name))
            }
        };
        wait_for(
            &secrets,
            "web-tls",
            "Secret web-tls",
            san(format!("web.{ns}.svc")),
        )
        .await?;
        certificates
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"dnsNames": [format!("web.{ns}.svc"), format!("api.{ns}.svc")]}})),
            )
            .await
            .map_err(|e| format!("changing the Certificate: {e}"))?;
        wait_for(
            &certificates,
            "web",
            "leaf Certificate Ready at revision 2",
            at_revision(2),
        )
        .await?;
        let secret = wait_for(
            &secrets,
            "web-tls",
            "Secret web-tls reissued",
            san(format!("api.{ns}.svc")),
        )
        .await?;
        let chain = cert_csi::pki::parse_chain(&secret.data.unwrap()["tls.crt"].0)
            .map_err(|e| format!("tls.crt: {e}"))?;
        if !chain[0].issuer.contains(&root_cn) {
            return Err(format!(
                "web-tls is not signed by the CA ClusterIssuer: issuer {}",
                chain[0].issuer
            ));
        }
        let requests: Api<CertificateRequest> = Api::namespaced(self.admin.clone(), ns);
        wait_until("revisionHistoryLimit 1 removing request web-1", || async {
            requests
                .get_opt("web-1")
                .await
                .map(|r| r.is_none())
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Publish → at least one renewal in place → unpublish, nothing left.
    async fn publish(&self, pod: &test_kit::PodRef) -> Flow {
        let volume = self.env.volume(
            pod,
            "tls",
            &[
                (keys::ISSUER_NAME, &format!("{}-ca", self.prefix)),
                (keys::ISSUER_KIND, "ClusterIssuer"),
                (keys::KEY_ALGORITHM, "ECDSA"),
                (keys::DNS_NAMES, &format!("app.{}.svc", self.ns)),
                // The pod's own identity: the one URI the chart's default
                // policy allows (its ServiceAccount is read from the pod).
                (
                    keys::URI_SANS,
                    &format!("spiffe://cluster.local/ns/{}/sa/app", self.ns),
                ),
                // Renewal about four seconds after issuance (renew-before
                // is at most three quarters of the lifetime).
                (keys::DURATION, "16s"),
                (keys::RENEW_BEFORE, "12s"),
            ],
        );
        self.volumes.lock().unwrap().push(volume.clone());
        self.env
            .publish(&volume)
            .await
            .map_err(|s| format!("publish: {}", status_text(&s)))?;
        let first = leaf_serial(&volume)?;
        wait_until(
            "a renewal of a 16 s certificate with renew-before 12 s",
            || {
                let now = leaf_serial(&volume);
                let first = first.clone();
                async move { now.map(|s| s != first) }
            },
        )
        .await?;
        self.env
            .unpublish(&volume.volume_id, &volume.target_path)
            .await
            .map_err(|s| format!("unpublish: {}", status_text(&s)))?;
        let mounts = test_kit::mounts_under(volume.target().parent().unwrap());
        if !mounts.is_empty() {
            return Err(format!("still mounted after unpublish: {mounts:?}"));
        }
        wait_until("the volume's CertificateRequests deleted", || async {
            Ok(self.env.requests_for(&volume).await.is_empty())
        })
        .await
    }

    /// Issue 16's attack with the chart's defaults: a pod asks a CA
    /// ClusterIssuer for an intermediate CA with the API server's name, a
    /// bank's wildcard, another namespace's admin identity and
    /// `system:masters`. The chart's policy denies the request, naming
    /// itself and each refused field, and nothing is mounted.
    async fn policy(&self, pod: &test_kit::PodRef) -> Flow {
        let volume = self.env.volume(
            pod,
            "ca-attempt",
            &[
                (keys::ISSUER_NAME, &format!("{}-ca", self.prefix)),
                (keys::ISSUER_KIND, "ClusterIssuer"),
                (keys::KEY_ALGORITHM, "ECDSA"),
                (keys::IS_CA, "true"),
                (keys::COMMON_NAME, "system:masters"),
                (keys::ORGANIZATIONS, "system:masters"),
                (keys::DNS_NAMES, "kubernetes.default.svc,*.example-bank.com"),
                (
                    keys::URI_SANS,
                    "spiffe://cluster.local/ns/kube-system/sa/admin",
                ),
            ],
        );
        self.volumes.lock().unwrap().push(volume.clone());
        // The plugin deletes a denied request as it fails the publish; the
        // denial reaches the kubelet (and the pod's Event) in its status.
        let denial = match self.env.publish(&volume).await {
            Ok(()) => return Err("the CA attempt was published".into()),
            Err(s) if s.code() == tonic::Code::PermissionDenied => s.message().to_owned(),
            Err(s) => {
                return Err(format!(
                    "the CA attempt: expected PermissionDenied, got {}",
                    status_text(&s)
                ));
            }
        };
        let mounts = test_kit::mounts_under(volume.target().parent().unwrap());
        if !mounts.is_empty() {
            return Err(format!("the denied volume is mounted: {mounts:?}"));
        }
        let policy = format!("No policy approved this request: [{}: ", self.csi_policy);
        let fields = [
            "spec.allowed.isCA",
            "spec.allowed.dnsNames.validations",
            "spec.allowed.uris.validations",
            "spec.allowed.commonName.validations",
            "spec.allowed.subject.organizations.validations",
        ];
        if !denial.contains(&policy) || fields.iter().any(|f| !denial.contains(f)) {
            return Err(format!(
                "the denial does not name the policy {:?} and each of {fields:?}: {denial}",
                self.csi_policy
            ));
        }
        self.env
            .unpublish(&volume.volume_id, &volume.target_path)
            .await
            .map_err(|s| format!("unpublish: {}", status_text(&s)))
    }

    /// A volume its issuer cannot sign (a SelfSigned issuer signs only
    /// with a key from a Secret, which a CSI volume never has): the
    /// controller fails the request, the plugin fails the publish and
    /// says why on the pod. The kubelet retries; the repeat goes to the
    /// same Event (its series).
    async fn events(&self, pod: &test_kit::PodRef) -> Flow {
        let volume = self.env.volume(
            pod,
            "unsignable",
            &[
                (keys::ISSUER_NAME, &format!("{}-selfsigned", self.prefix)),
                (keys::ISSUER_KIND, "ClusterIssuer"),
                (keys::KEY_ALGORITHM, "ECDSA"),
                (keys::DNS_NAMES, &format!("app.{}.svc", self.ns)),
            ],
        );
        self.volumes.lock().unwrap().push(volume.clone());
        for attempt in 1..=2 {
            if self.env.publish(&volume).await.is_ok() {
                return Err(format!(
                    "attempt {attempt}: a volume from a SelfSigned issuer was published"
                ));
            }
        }
        self.env
            .unpublish(&volume.volume_id, &volume.target_path)
            .await
            .map_err(|s| format!("unpublish: {}", status_text(&s)))?;
        let events: Api<Event> = Api::namespaced(self.admin.clone(), &self.ns);
        wait_until(
            "an IssuanceFailed Event on the pod, repeated once",
            || async {
                let list = events
                    .list(&Default::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items;
                Ok(list.iter().any(|e| {
                    e.reason.as_deref() == Some("IssuanceFailed")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("app")
                        && e.series.as_ref().is_some_and(|s| s.count >= 2)
                }))
            },
        )
        .await
    }

    /// A publish that times out keeps its request; the kubelet's retry
    /// resumes that request (reading it back) instead of making another.
    /// Nobody approves requests for an issuer group the controller does
    /// not serve.
    async fn resume(&self, pod: &test_kit::PodRef) -> Flow {
        let volume = self.env.volume(
            pod,
            "pending",
            &[
                (keys::ISSUER_NAME, "external"),
                (keys::ISSUER_KIND, "Issuer"),
                (keys::ISSUER_GROUP, "example.com"),
                (keys::KEY_ALGORITHM, "ECDSA"),
                (keys::DNS_NAMES, &format!("app.{}.svc", self.ns)),
            ],
        );
        self.volumes.lock().unwrap().push(volume.clone());
        let mut names = Vec::new();
        for attempt in 1..=2 {
            match self.env.publish(&volume).await {
                Err(s) if s.code() == tonic::Code::DeadlineExceeded => {}
                Err(s) => {
                    return Err(format!(
                        "attempt {attempt}: expected DeadlineExceeded, got {}",
                        status_text(&s)
                    ));
                }
                Ok(()) => return Err(format!("attempt {attempt}: published")),
            }
            let made: Vec<String> = self
                .env
                .requests_for(&volume)
                .await
                .iter()
                .map(kube::ResourceExt::name_any)
                .collect();
            names.push(made);
        }
        if names[0].len() != 1 || names[0] != names[1] {
            return Err(format!(
                "the retry did not resume the one pending request: requests after each attempt {names:?}"
            ));
        }
        self.env
            .unpublish(&volume.volume_id, &volume.target_path)
            .await
            .map_err(|s| format!("unpublish: {}", status_text(&s)))?;
        wait_until("the pending request deleted", || async {
            Ok(self.env.requests_for(&volume).await.is_empty())
        })
        .await
    }

    /// Unpublishes every volume and deletes the trial's issuers and
    /// Certificates, so nothing of it is left running into the next trial.
    /// Runs with the full RBAC back.
    async fn cleanup(&self) {
        let volumes = self.volumes.lock().unwrap().clone();
        for v in volumes {
            if let Err(s) = self.env.unpublish(&v.volume_id, &v.target_path).await {
                eprintln!("cleanup: unpublish {}: {}", v.volume_name, status_text(&s));
            }
        }
        let dp = DeleteParams::default();
        let p = &self.prefix;
        let cluster_issuers: Api<ClusterIssuer> = Api::all(self.admin.clone());
        for name in [format!("{p}-selfsigned"), format!("{p}-ca")] {
            let _ = cluster_issuers.delete(&name, &dp).await;
        }
        let _ = Api::<Certificate>::namespaced(self.admin.clone(), NAMESPACE)
            .delete(&format!("{p}-root"), &dp)
            .await;
        let _ = Api::<Secret>::namespaced(self.admin.clone(), NAMESPACE)
            .delete(&format!("{p}-root"), &dp)
            .await;
        for name in ["web", "local"] {
            let _ = Api::<Certificate>::namespaced(self.admin.clone(), &self.ns)
                .delete(name, &dp)
                .await;
        }
        let _ = Api::<Issuer>::namespaced(self.admin.clone(), &self.ns)
            .delete("local", &dp)
            .await;
    }
}

// ---------------------------------------------------------------------------
// Trials
// ---------------------------------------------------------------------------

/// Verbs a component uses only on paths that no flow can take on purpose,
/// by (role, verb, resource), with why. Verb-level trials skip them; the
/// whole-rule trials (CERT_CSI_RBAC_WHOLE_RULES=1) still prove their rules.
const UNREACHED: &[(&str, &str, &str, &str)] = &[
    ("cert-csi-controller", "get", "certificates", RE_READ),
    ("cert-csi-controller", "get", "issuers", RE_READ),
    ("cert-csi-controller", "get", "clusterissuers", RE_READ),
    (
        "cert-csi-controller",
        "get",
        "namespaces",
        "the policy approver reads a namespace's labels only for a policy with a \
         namespace.matchLabels selector; the chart's default policies select by issuer \
         (tests/controller/policy.rs proves the matchLabels path)",
    ),
    (
        "cert-csi-controller",
        "patch",
        "events",
        "the controller patches an Event only for a repeat (same object, reason and note \
         within the series window); its Events come once per request or revision, and a \
         failed Certificate retries after an hour",
    ),
];

const RE_READ: &str = "read only after a 409 on a guarded status write (two writers \
    racing; the watch cache serves every other read), which no flow can provoke on purpose";

fn unreached(r: &RuleRef) -> Option<&'static str> {
    let resources = r.rule.resources.as_deref().unwrap_or_default();
    UNREACHED
        .iter()
        .find(|(role, verb, resource, _)| {
            r.name == *role && r.rule.verbs == [*verb] && resources == [*resource]
        })
        .map(|(.., why)| *why)
}

/// What the test needs across trials.
struct Setup {
    admin: Client,
    rbac: Rbac,
    controller_args: Vec<String>,
    node_kubeconfig: PathBuf,
    controller_kubeconfig: PathBuf,
    node_user: String,
    controller_user: String,
    /// The chart's default policy for requests from CSI volumes.
    csi_policy: String,
    /// The chart's default CertificateRequestPolicies.
    policies: Vec<CertificateRequestPolicy>,
}

enum Outcome {
    /// Every flow succeeded.
    Passed,
    /// A flow failed, with why; `denied` when its error carries the API
    /// server's denial of what was removed.
    FlowFailed { why: String, denied: bool },
    /// A component logged the API server's denial of the removed rule.
    Denied {
        component: &'static str,
        line: String,
    },
    /// A component exited.
    Exited {
        component: &'static str,
        status: String,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Passed => write!(f, "every flow passed"),
            Outcome::FlowFailed { why, denied: true } => {
                write!(f, "a flow failed with the denial: {why}")
            }
            Outcome::FlowFailed { why, denied: false } => write!(
                f,
                "a flow failed, but nothing names the denial of what was removed: {why}"
            ),
            Outcome::Denied { component, line } => {
                write!(f, "the {component} logged the denial: {line}")
            }
            Outcome::Exited { component, status } => write!(f, "the {component} exited: {status}"),
        }
    }
}

/// What to look for in one component's log.
struct LogWatch {
    component: &'static str,
    path: PathBuf,
    offset: usize,
    /// A line counts only when it names this user (lower case); `None`
    /// for any line.
    user: Option<String>,
    /// Lower-case phrases, one of which the line must contain.
    phrases: Vec<String>,
}

impl LogWatch {
    fn find(&self) -> Option<String> {
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        let text = String::from_utf8_lossy(bytes.get(self.offset..).unwrap_or_default());
        text.lines()
            .find(|line| {
                // Quotes may come escaped (JSON logs, Debug output).
                let clean = line.replace('\\', "").to_lowercase();
                self.user.as_ref().is_none_or(|u| clean.contains(u))
                    && self.phrases.iter().any(|p| clean.contains(p))
            })
            .map(|l| l.chars().take(600).collect())
    }
}

async fn watch_logs(watches: &[LogWatch], controller: &ControllerProcess) -> Outcome {
    loop {
        for w in watches {
            if let Some(line) = w.find() {
                return Outcome::Denied {
                    component: w.component,
                    line,
                };
            }
        }
        if let Some(status) = controller.exited() {
            return Outcome::Exited {
                component: "controller",
                status: status.to_string(),
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Applies the RBAC without `removed` (all of it when `None`), restarts
/// both components under their tokens, runs the flows until they end or a
/// component logs the denial looked for, then restores the RBAC and
/// cleans up.
async fn trial(env: &mut Env, setup: &Setup, label: &str, removed: Option<&RuleRef>) -> Outcome {
    let admin = &setup.admin;
    setup.rbac.apply(admin, removed).await;
    let grantees = removed.map(|r| setup.rbac.grantees(r)).unwrap_or_default();
    if let Some(r) = removed {
        assert!(!grantees.is_empty(), "{r}: the role is bound to nobody");
        for (user, ns) in &grantees {
            await_authorizer(admin, user, &atoms_of(&r.rule, ns.as_deref()), false).await;
        }
    }
    // The chart's policies made afresh (as its hooks do on every install
    // and upgrade), so that each controller writes their Ready condition.
    let crps: Api<CertificateRequestPolicy> = Api::all(admin.clone());
    for policy in &setup.policies {
        let name = policy.metadata.name.clone().unwrap();
        match crps.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("deleting policy {name}: {e}"),
        }
        crps.create(&PostParams::default(), policy)
            .await
            .unwrap_or_else(|e| panic!("creating policy {name}: {e}"));
    }
    let node_offset = env.log().len();
    env.restart_plugin_as(setup.node_kubeconfig.clone()).await;
    let controller =
        ControllerProcess::start(&setup.controller_args, &setup.controller_kubeconfig, label);
    let component_of = |user: &str| {
        if user == setup.node_user {
            ("node plugin", env.log_path.clone(), node_offset)
        } else if user == setup.controller_user {
            ("controller", controller.log.clone(), 0)
        } else {
            panic!("the chart binds a role to {user}, which runs no component here")
        }
    };
    // A `use` of a CertificateRequestPolicy is asked by the controller's
    // policy approver on the requester's behalf, so the requester's missing
    // grant shows in the controller's log.
    let asked_by_controller = removed.is_some_and(|r| {
        r.rule.verbs == ["use"]
            && r.rule.api_groups.as_deref() == Some(&["policy.cert-manager.io".to_owned()][..])
    });
    let watches: Vec<LogWatch> = match removed {
        Some(r) => grantees
            .iter()
            .map(|(user, ns)| {
                let (component, path, offset) = if asked_by_controller {
                    ("controller", controller.log.clone(), 0)
                } else {
                    component_of(user)
                };
                LogWatch {
                    component,
                    path,
                    offset,
                    user: Some(user.to_lowercase()),
                    phrases: atoms_of(&r.rule, ns.as_deref())
                        .iter()
                        .map(|a| a.denial_phrase().to_lowercase())
                        .collect(),
                }
            })
            .collect(),
        // With every rule, no request may be refused.
        None => [&setup.node_user, &setup.controller_user]
            .into_iter()
            .map(|user| {
                let (component, path, offset) = component_of(user);
                LogWatch {
                    component,
                    path,
                    offset,
                    user: None,
                    // The API server's words for a refusal.
                    phrases: vec!["forbidden".into(), "\" cannot ".into()],
                }
            })
            .collect(),
    };
    let flows = Flows {
        env,
        admin: admin.clone(),
        prefix: label.to_string(),
        ns: format!("{label}-shop"),
        csi_policy: setup.csi_policy.clone(),
        volumes: Mutex::new(Vec::new()),
    };
    let outcome = tokio::select! {
        result = flows.run() => match result {
            Ok(()) => Outcome::Passed,
            Err(why) => Outcome::FlowFailed { why, denied: false },
        },
        seen = watch_logs(&watches, &controller) => seen,
    };
    // A denial can also land after the flows ended (the baseline looks at
    // every line), or be what a flow's error reports.
    let outcome = match outcome {
        Outcome::FlowFailed { why, .. } => {
            let clean = why.replace('\\', "").to_lowercase();
            let denied = watches.iter().any(|w| {
                w.user.as_ref().is_none_or(|u| clean.contains(u))
                    && w.phrases.iter().any(|p| clean.contains(p))
            });
            let logged = watches
                .iter()
                .find_map(|w| w.find().map(|line| (w.component, line)));
            match logged {
                Some((component, line)) if !denied => Outcome::Denied { component, line },
                _ => Outcome::FlowFailed { why, denied },
            }
        }
        Outcome::Passed => watches
            .iter()
            .find_map(|w| {
                w.find().map(|line| Outcome::Denied {
                    component: w.component,
                    line,
                })
            })
            .unwrap_or(Outcome::Passed),
        other => other,
    };
    controller.stop();
    // As a fresh install has no leader Lease, the next trial's controller
    // creates it (so `create` is needed in every trial, not only the first).
    match Api::<Lease>::namespaced(admin.clone(), NAMESPACE)
        .delete(LEASE_NAME, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("deleting the leader Lease: {e}"),
    }
    if let Some(r) = removed {
        setup.rbac.apply(admin, None).await;
        for (user, ns) in &grantees {
            await_authorizer(admin, user, &atoms_of(&r.rule, ns.as_deref()), true).await;
        }
    }
    flows.cleanup().await;
    drop(flows);
    // A fresh, idle plugin with the full RBAC: whatever the one that ran
    // the flows still sends on its way out (an Event series flushed at
    // shutdown) then lands before the next trial's log offset.
    env.restart_plugin_as(setup.node_kubeconfig.clone()).await;
    if removed.is_none() && !matches!(outcome, Outcome::Passed) {
        panic!(
            "with the chart's full RBAC: {outcome}\ncontroller log:\n{}\nnode log (this trial):\n{}",
            controller.log(),
            env.log().get(node_offset..).unwrap_or_default()
        );
    }
    outcome
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_of_the_charts_rbac_is_needed_and_enough_on_a_real_api_server() {
    // Only a real API server authorizes requests: against the sandbox,
    // which serves everyone, this test would prove nothing.
    // Like a missing root: under CI=true a failure, elsewhere a skip that
    // says so.
    if Backend::from_env() != Backend::Real {
        let why = "tests/rbac.rs needs the real API server, whose RBAC authorizer is the judge: \
                   run it with CERT_CSI_TEST_API=real (hack/test does; the tools come from hack/build-tools)";
        assert!(!in_ci(), "{why}");
        eprintln!("skipping: {why}");
        return;
    }
    let test = "every_rule_of_the_charts_rbac_is_needed_and_enough_on_a_real_api_server";
    if !test_kit::require_root(test) {
        return;
    }
    let Some(docs) = render_default_chart() else {
        return;
    };
    let started = Instant::now();
    let rbac = Rbac::from_docs(&docs);
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
            rbac.service_accounts
                .iter()
                .any(|s| s.metadata.name.as_deref() == Some(sa)
                    && s.metadata.namespace.as_deref() == Some(NAMESPACE)),
            "the chart renders no ServiceAccount {NAMESPACE}/{sa}"
        );
    }
    let node_container = cert_csi_container(&node_pod.containers, "the DaemonSet");
    let controller_container = cert_csi_container(&controller_pod.containers, "the Deployment");

    // The node plugin runs with the DaemonSet's flags, except those the
    // harness must set for a test (socket, data root, kubeconfig, node id,
    // a free metrics port, a shorter publish timeout, debug logs, and the
    // simulated kubelet's root).
    let harness_flags = [
        "--endpoint",
        "--data-root",
        "--kubelet-root-dir",
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
    // No approver or controller of the harness's: the controller process
    // below, under its chart ServiceAccount, approves and signs.
    let mut env = Env::start_with_args(
        Options {
            publish_timeout: PUBLISH_TIMEOUT,
            policy: Policy::Ignore,
            controller: false,
        },
        &node_extra,
    )
    .await;
    let admin = env.client.clone();

    // The install: the release's namespace first, then the chart's RBAC.
    create_namespace(&admin, NAMESPACE).await;
    rbac.apply(&admin, None).await;
    install_approval_check(&admin).await;
    // The chart's default CertificateRequestPolicies (post-install hooks in
    // a real install, once their CRD is served), and the webhook that
    // stamps each request's creator, as cert-manager's does in a cluster.
    let policies: Vec<CertificateRequestPolicy> = all_of(&docs, "CertificateRequestPolicy");
    // The policy for CSI volumes: the one that allows no CA.
    let csi_policy = policies
        .iter()
        .find(|p| {
            p.spec
                .allowed
                .as_ref()
                .is_some_and(|a| a.is_ca != Some(true))
        })
        .and_then(|p| p.metadata.name.clone())
        .expect("the default render has a CertificateRequestPolicy for CSI volumes");
    env.cluster.serve_webhook().await;

    // Tokens as a real cluster hands them to the two workloads: projected
    // ServiceAccount tokens that the kubelet requests through the
    // TokenRequest API, bound to the component's pod.
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
            .expect("the TokenRequest answer carries a token");
        let path = dir.path().join(format!("{sa}.kubeconfig"));
        test_kit::real::write_token_kubeconfig(&env.kubeconfig, token, &path);
        kubeconfigs.push(path);
    }

    // The controller with the Deployment's arguments (among them
    // --cluster-resource-namespace and --approve-issuers), on a free
    // metrics port.
    let mut controller_args: Vec<String> = controller_container.args.clone().unwrap_or_default();
    assert_eq!(
        controller_args.first().map(String::as_str),
        Some("controller")
    );
    // The election's timings are shortened so that the leader renews its
    // Lease (an update) within every trial's flows, not only every 15 s.
    let election_timings = [
        "--leader-election-lease-duration=4s",
        "--leader-election-renew-deadline=3s",
        "--leader-election-retry-period=1s",
    ];
    controller_args.retain(|a| {
        flag_name(a) != "--metrics-address"
            && !election_timings
                .iter()
                .any(|t| flag_name(t) == flag_name(a))
    });
    assert!(
        controller_args
            .iter()
            .any(|a| flag_name(a) == "--leader-election-namespace"),
        "the Deployment runs the controller with leader election: {controller_args:?}"
    );
    controller_args.extend(election_timings.iter().map(|t| t.to_string()));
    controller_args.push("--metrics-address=127.0.0.1:0".into());
    let setup = Setup {
        admin: admin.clone(),
        rbac,
        controller_args,
        node_kubeconfig: kubeconfigs[0].clone(),
        controller_kubeconfig: kubeconfigs[1].clone(),
        node_user: format!("system:serviceaccount:{NAMESPACE}:{node_sa}"),
        controller_user: format!("system:serviceaccount:{NAMESPACE}:{controller_sa}"),
        csi_policy,
        policies,
    };
    eprintln!("setup: {:.1} s", started.elapsed().as_secs_f64());

    // Enough: with every rule, every flow succeeds and nothing is refused.
    let t = Instant::now();
    trial(&mut env, &setup, "full", None).await;
    eprintln!(
        "full RBAC: every flow passed in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Needed: without any one verb on one resource (and resource name)
    // of any rule, some flow fails, except the few verbs in UNREACHED.
    // CERT_CSI_RBAC_WHOLE_RULES=1 takes out whole PolicyRules instead
    // (quicker; each rule, UNREACHED ones included, must still be needed).
    let whole_rules = std::env::var("CERT_CSI_RBAC_WHOLE_RULES").is_ok_and(|v| v == "1");
    let removals = if whole_rules {
        setup.rbac.rules()
    } else {
        setup.rbac.verb_resources()
    };
    let mut report = Vec::new();
    let mut unneeded = Vec::new();
    let mut unexplained = Vec::new();
    let removals: Vec<&RuleRef> = removals
        .iter()
        .filter(|r| {
            let reason = (!whole_rules).then(|| unreached(r)).flatten();
            if let Some(reason) = reason {
                let line = format!("{r}\n    not tried: {reason}");
                eprintln!("{line}");
                report.push(line);
            }
            reason.is_none()
        })
        .collect();
    for (i, rule) in removals.iter().enumerate() {
        let t = Instant::now();
        let label = format!("t{i:02}");
        let outcome = trial(&mut env, &setup, &label, Some(rule)).await;
        let line = format!(
            "{rule}\n    without it ({:.1} s): {outcome}",
            t.elapsed().as_secs_f64()
        );
        eprintln!("{line}");
        match outcome {
            Outcome::Passed => unneeded.push(rule.to_string()),
            Outcome::Denied { .. } | Outcome::FlowFailed { denied: true, .. } => {}
            // Failed, but not for the denial: an unrelated failure must not
            // count as proof.
            Outcome::FlowFailed { denied: false, .. } | Outcome::Exited { .. } => {
                unexplained.push(line.clone())
            }
        }
        report.push(line);
    }
    eprintln!(
        "{} removals tried; {:.1} s in all",
        removals.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        unneeded.is_empty(),
        "rules that no flow needs (remove them from the chart, or add the flow that needs them):\n{}\n\nall trials:\n{}",
        unneeded.join("\n"),
        report.join("\n")
    );
    assert!(
        unexplained.is_empty(),
        "removals whose flows failed without the API server's denial of what was removed \
         (an unrelated failure proves nothing):\n{}",
        unexplained.join("\n")
    );
    assert!(!removals.is_empty(), "the chart renders no RBAC rule");
    env.finish().await;
}
