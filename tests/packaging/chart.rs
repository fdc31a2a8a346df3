//! The Helm chart, the rendered manifests, the examples and the Dockerfile.
//!
//! The chart is rendered and linted by the real Helm v4 engine (PyPI's
//! helm-python-sdk, driven by hack/chart.py), never by a template imitation.
//! Every rendered object must deserialize into its k8s-openapi type and
//! serialize back to the same JSON, which catches misspelled fields that a
//! plain deserialize would drop. The wiring between containers, volumes and
//! values is then checked by following it: socket paths through mounts to
//! host paths, probe ports to container ports, and container flags against
//! the binary's own `--help`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    Container, Namespace, Pod, PodSpec, Probe, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::api::storage::v1::CSIDriver;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};
use serde_json::Value;

pub(crate) const RELEASE: &str = "cert-csi";
pub(crate) const NAMESPACE: &str = "cert-csi";
/// The node plugin's DaemonSet, ServiceAccount and RBAC: csi-driver's
/// object name, whatever the release (see chart_csi_driver.rs).
pub(crate) const NODE: &str = "cert-manager-csi-driver";
const DEPLOY: &str = "deploy/cert-csi.yaml";
const CUSTOM_VALUES: &str = "tests/chart/values-custom.yaml";
const CHART_CRDS: &str = "charts/cert-csi/files/crds.yaml";
const SDK: &str = "helm-python-sdk==0.2.2";

pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

// ---------------------------------------------------------------------------
// Running the Helm engine
// ---------------------------------------------------------------------------

/// Runs `python3 hack/chart.py ARGS`. `None` means the engine is not
/// installed and the test may skip; under CI=true that is a failure, since
/// hack/test installs it.
pub(crate) fn chart_py(args: &[&str]) -> Option<Output> {
    let output = Command::new("python3")
        .arg(repo().join("hack/chart.py"))
        .args(args)
        .current_dir(repo())
        .output();
    let missing = match output {
        Ok(out) if out.status.code() == Some(3) => {
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
        Ok(out) => return Some(out),
        Err(e) => format!("cannot run python3: {e}"),
    };
    let message = format!(
        "the Helm engine is not available: {}\nhack/test installs it; by hand: pip install {SDK}",
        missing.trim()
    );
    if in_ci() {
        panic!("{message}");
    }
    eprintln!("skipping: {message}");
    None
}

/// Like [`chart_py`], and the command must succeed.
pub(crate) fn chart_py_ok(args: &[&str]) -> Option<String> {
    let out = chart_py(args)?;
    assert!(
        out.status.success(),
        "hack/chart.py {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).expect("hack/chart.py prints UTF-8"))
}

/// Every non-empty document of a multi-document YAML stream.
pub(crate) fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

pub(crate) fn render(args: &[&str]) -> Option<Vec<Value>> {
    let mut full = vec!["render"];
    full.extend_from_slice(args);
    chart_py_ok(&full).map(|text| yaml_documents(&text))
}

/// The default render, shared by the tests (the engine takes a moment to
/// load).
fn default_docs() -> Option<&'static [Value]> {
    static DOCS: OnceLock<Option<Vec<Value>>> = OnceLock::new();
    DOCS.get_or_init(|| render(&[])).as_deref()
}

fn custom_docs() -> Option<&'static [Value]> {
    static DOCS: OnceLock<Option<Vec<Value>>> = OnceLock::new();
    DOCS.get_or_init(|| render(&["-f", CUSTOM_VALUES]))
        .as_deref()
}

// ---------------------------------------------------------------------------
// Values, read independently of the engine
// ---------------------------------------------------------------------------

pub(crate) fn read_yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The values a render used: the chart's defaults with the file on top.
fn values(file: Option<&str>) -> Value {
    let mut v = read_yaml("charts/cert-csi/values.yaml");
    if let Some(file) = file {
        merge(&mut v, &read_yaml(file));
    }
    v
}

fn vstr<'a>(values: &'a Value, pointer: &str) -> &'a str {
    values
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("values{pointer} is not a string"))
}

fn vint(values: &Value, pointer: &str) -> i32 {
    values
        .pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("values{pointer} is not an integer")) as i32
}

// ---------------------------------------------------------------------------
// Typed objects
// ---------------------------------------------------------------------------

/// The first place two JSON values differ, as a JSON pointer.
fn first_difference(path: String, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(format!("{path}/{k}"), p, q),
                (p, q) => Some(format!("{path}/{k}: {p:?} vs {q:?}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(format!("{path}/{i}"), p, q)),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

/// Deserializes into `T` and demands that nothing was lost: a misspelled
/// field deserializes fine (k8s-openapi ignores unknown fields) but does not
/// come back.
pub(crate) fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let what = format!(
        "{} {}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    );
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what} does not deserialize: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    if let Some(diff) = first_difference(String::new(), doc, &back) {
        panic!("{what}: a field is unknown to k8s-openapi or changed in a round trip ({diff})");
    }
    object
}

/// Checks every document against its type; returns the kinds seen.
pub(crate) fn check_all_typed(docs: &[Value]) -> Vec<String> {
    let mut kinds = Vec::new();
    for doc in docs {
        let api = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        match (api, kind) {
            ("apps/v1", "DaemonSet") => {
                typed::<DaemonSet>(doc);
            }
            ("apps/v1", "Deployment") => {
                typed::<Deployment>(doc);
            }
            ("policy/v1", "PodDisruptionBudget") => {
                typed::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(doc);
            }
            ("storage.k8s.io/v1", "CSIDriver") => {
                typed::<CSIDriver>(doc);
            }
            ("v1", "ServiceAccount") => {
                typed::<ServiceAccount>(doc);
            }
            ("v1", "Service") => {
                typed::<Service>(doc);
            }
            ("v1", "Namespace") => {
                typed::<Namespace>(doc);
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                typed::<ClusterRole>(doc);
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                typed::<ClusterRoleBinding>(doc);
            }
            ("rbac.authorization.k8s.io/v1", "Role") => {
                typed::<Role>(doc);
            }
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                typed::<RoleBinding>(doc);
            }
            ("policy.cert-manager.io/v1alpha1", "CertificateRequestPolicy") => {
                typed::<cert_csi::api::CertificateRequestPolicy>(doc);
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                typed::<CustomResourceDefinition>(doc);
            }
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                typed::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>(
                    doc,
                );
            }
            // No k8s-openapi type: check the shape prometheus-operator needs.
            ("monitoring.coreos.com/v1", "PodMonitor") => {
                assert!(doc["spec"]["selector"]["matchLabels"].is_object(), "{doc}");
                let endpoints = doc["spec"]["podMetricsEndpoints"]
                    .as_array()
                    .expect("podMetricsEndpoints");
                assert!(!endpoints.is_empty());
                for e in endpoints {
                    assert!(e["port"].is_string() && e["path"].is_string(), "{e}");
                }
            }
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                assert!(doc["spec"]["selector"]["matchLabels"].is_object(), "{doc}");
                let endpoints = doc["spec"]["endpoints"].as_array().expect("endpoints");
                assert!(!endpoints.is_empty());
                for e in endpoints {
                    assert!(e["port"].is_string() && e["path"].is_string(), "{e}");
                }
            }
            other => panic!("the chart renders an unexpected object {other:?}"),
        }
        kinds.push(kind.to_owned());
    }
    kinds
}

pub(crate) fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

pub(crate) fn get<T: DeserializeOwned + Serialize>(docs: &[Value], kind: &str, name: &str) -> T {
    typed(find(docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name} rendered")))
}

pub(crate) fn count(docs: &[Value], kind: &str) -> usize {
    docs.iter().filter(|d| d["kind"] == kind).count()
}

pub(crate) fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The value of `--flag=value` in a container's args.
pub(crate) fn flag<'a>(c: &'a Container, name: &str) -> &'a str {
    let prefix = format!("{name}=");
    let found: Vec<&str> = c
        .args
        .iter()
        .flatten()
        .filter_map(|a| a.strip_prefix(&prefix))
        .collect();
    assert_eq!(found.len(), 1, "container {} must pass {name} once", c.name);
    found[0]
}

/// Follows a path inside a container through its volume mounts to the
/// hostPath it lands on: (host path, volume name, propagation).
fn host_path(spec: &PodSpec, c: &Container, path: &str) -> (String, String, Option<String>) {
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| path == m.mount_path || path.starts_with(&format!("{}/", m.mount_path)))
        .max_by_key(|m| m.mount_path.len())
        .unwrap_or_else(|| panic!("{path} in container {} is on no volume", c.name));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("volume {} is not declared", mount.name));
    let host = &volume
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("volume {} is not a hostPath", volume.name))
        .path;
    let rest = &path[mount.mount_path.len()..];
    (
        format!("{host}{rest}"),
        mount.name.clone(),
        mount.mount_propagation.clone(),
    )
}

/// The numeric port a probe targets, resolving a named port within its
/// container (as the kubelet does).
pub(crate) fn probe_port(c: &Container, probe: &Probe) -> i32 {
    let get = probe.http_get.as_ref().expect("an httpGet probe");
    match &get.port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("container {} has no port named {name}", c.name))
                .container_port
        }
    }
}

fn declared_ports(spec: &PodSpec) -> BTreeSet<i32> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| p.container_port)
        .collect()
}

fn port_of_address(address: &str) -> i32 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{address} has no port"))
}

// ---------------------------------------------------------------------------
// The engine: lint, render, schema
// ---------------------------------------------------------------------------

#[test]
fn lint_reports_no_problems() {
    for args in [&["lint"][..], &["lint", "-f", CUSTOM_VALUES]] {
        let Some(out) = chart_py(args) else { return };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "helm lint ({}) found problems:\n{stdout}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("linted 1 chart(s): 0 problem(s)"),
            "{stdout}"
        );
    }
}

#[test]
fn default_and_custom_renders_are_all_typed() {
    let Some(default) = default_docs() else {
        return;
    };
    let kinds = check_all_typed(default);
    let tally = |kinds: &[String]| {
        let mut t = BTreeMap::new();
        for k in kinds {
            *t.entry(k.clone()).or_insert(0) += 1;
        }
        t
    };
    let expected: BTreeMap<String, usize> = [
        ("ServiceAccount", 2),
        // cert-manager.io's four and CertificateRequestPolicy's.
        ("CustomResourceDefinition", 5),
        // The node's, the controller's, and one per default policy (`use`).
        ("ClusterRole", 4),
        ("ClusterRoleBinding", 4),
        ("CertificateRequestPolicy", 2),
        ("Service", 2),
        ("DaemonSet", 1),
        ("Deployment", 1),
        // The controller's two replicas: one leads by a Lease that the Role
        // grants, the budget keeps one up through drains.
        ("Role", 1),
        ("RoleBinding", 1),
        ("PodDisruptionBudget", 1),
        ("CSIDriver", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n))
    .collect();
    assert_eq!(tally(&kinds), expected);

    let custom = custom_docs().expect("rendered when the default did");
    let kinds = tally(&check_all_typed(custom));
    // crds.enabled and metrics.enabled are off in the custom values; the
    // webhook (on there) brings its own Service and configuration.
    assert_eq!(kinds.get("CustomResourceDefinition"), None);
    assert_eq!(kinds.get("Service"), Some(&1));
    assert_eq!(kinds.get("MutatingWebhookConfiguration"), Some(&1));
    assert_eq!(kinds.get("DaemonSet"), Some(&1));
}

#[test]
fn the_round_trip_check_catches_a_misspelled_field() {
    let doc = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"selektor": {"a": "b"}},
    });
    let caught = std::panic::catch_unwind(|| typed::<Service>(&doc)).unwrap_err();
    let message = caught.downcast_ref::<String>().unwrap();
    assert!(message.contains("/spec/selektor"), "{message}");
}

#[test]
fn a_values_typo_is_rejected_by_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    for (typo, yaml) in [
        ("kubletRootDir", "app:\n  kubletRootDir: /data/kubelet\n"),
        ("metric", "metric:\n  enabled: false\n"),
        (
            "serviceMonitr",
            "metrics:\n  serviceMonitr:\n    enabled: true\n",
        ),
        // Near misses of csi-driver's keys, which neither chart knows.
        ("imageRegistri", "imageRegistri: quay.io\n"),
        (
            "continueOnNotReadi",
            "app:\n  driver:\n    continueOnNotReadi: true\n",
        ),
        ("intervall", "metrics:\n  podmonitor:\n    intervall: 30s\n"),
        (
            "defaultReference",
            "livenessProbeImage:\n  defaultReference: \":v1\"\n",
        ),
    ] {
        let file = dir.path().join(format!("{typo}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let file = file.to_str().unwrap();
        for command in ["render", "lint"] {
            let Some(out) = chart_py(&[command, "-f", file]) else {
                return;
            };
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                out.status.code(),
                Some(1),
                "{command} accepted {typo}:\n{all}"
            );
            assert!(
                all.contains(&format!("additional properties '{typo}' not allowed")),
                "{command} {typo}: the message must name the key:\n{all}"
            );
        }
    }
    // And a wrong type, not only a wrong name.
    let Some(out) = chart_py(&["render", "--set-json", r#"metrics={"port":"9402"}"#]) else {
        return;
    };
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/metrics/port"));
}

#[test]
fn deploy_manifest_is_the_default_render() {
    // The policies, the chart's hooks, are their own file: applied once the
    // release's CRDs are served.
    let Some(policies) = chart_py_ok(&["deploy", "--stdout", "--part", "policies"]) else {
        return;
    };
    let committed_policies =
        std::fs::read_to_string(repo().join("deploy/cert-csi-policies.yaml")).unwrap_or_default();
    assert!(
        policies == committed_policies,
        "deploy/cert-csi-policies.yaml is out of date with charts/cert-csi.\n\
         Regenerate it with:\n    python3 hack/chart.py deploy"
    );
    let policy_docs = yaml_documents(&committed_policies);
    check_all_typed(&policy_docs);
    assert_eq!(
        count(&policy_docs, "CertificateRequestPolicy"),
        policy_docs.len()
    );
    assert_eq!(policy_docs.len(), 2);
    let Some(generated) = chart_py_ok(&["deploy", "--stdout"]) else {
        return;
    };
    let committed = std::fs::read_to_string(repo().join(DEPLOY)).unwrap_or_default();
    if generated != committed {
        let line = generated
            .lines()
            .zip(committed.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "the line counts differ".to_owned(),
                |i| format!("line {} differs", i + 1),
            );
        panic!(
            "{DEPLOY} is out of date with charts/cert-csi ({line}).\n\
             Regenerate it with:\n    python3 hack/chart.py deploy"
        );
    }
    let docs = yaml_documents(&committed);
    check_all_typed(&docs);
    assert_eq!(
        count(&docs, "CertificateRequestPolicy"),
        0,
        "hooks are in their own file"
    );
    // It creates its own namespace first, so `kubectl apply -f` works alone.
    assert_eq!(docs[0]["kind"], "Namespace");
    assert_eq!(docs[0]["metadata"]["name"], NAMESPACE);
    for doc in &docs[1..] {
        let ns = &doc["metadata"]["namespace"];
        assert!(ns.is_null() || ns == NAMESPACE, "{}", doc["metadata"]);
    }
}

#[test]
fn chart_version_follows_the_crate() {
    let chart = read_yaml("charts/cert-csi/Chart.yaml");
    assert_eq!(chart["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
}

// ---------------------------------------------------------------------------
// The node plugin
// ---------------------------------------------------------------------------

/// The DaemonSet's wiring, checked against the values that produced it.
fn check_node(docs: &[Value], values: &Value) {
    let root = vstr(values, "/app/kubeletRootDir").trim_end_matches('/');
    let driver = vstr(values, "/app/driver/name");
    let data_dir = vstr(values, "/app/driver/csiDataDir").trim_end_matches('/');
    let liveness_port = vint(values, "/app/livenessProbe/port");
    let metrics_port = vint(values, "/metrics/port");

    let ds: DaemonSet = get(docs, "DaemonSet", NODE);
    let spec = ds.spec.unwrap().template.spec.unwrap();
    let registrar = container(&spec, "node-driver-registrar");
    let probe_sidecar = container(&spec, "livenessprobe");
    let node = container(&spec, "cert-csi");

    // One socket: where the registrar, the livenessprobe and the driver
    // meet, and what the kubelet is told to call.
    let socket = format!("{root}/plugins/{driver}/csi.sock");
    let registrar_socket = host_path(&spec, registrar, flag(registrar, "--csi-address")).0;
    let probe_socket = host_path(&spec, probe_sidecar, flag(probe_sidecar, "--csi-address")).0;
    let endpoint = flag(node, "--endpoint")
        .strip_prefix("unix://")
        .expect("--endpoint is a unix:// address");
    let driver_socket = host_path(&spec, node, endpoint).0;
    assert_eq!(registrar_socket, socket);
    assert_eq!(probe_socket, socket);
    assert_eq!(driver_socket, socket);
    assert_eq!(flag(registrar, "--kubelet-registration-path"), socket);
    // The registrar's fixed registration directory is the kubelet's.
    assert_eq!(
        host_path(&spec, registrar, "/registration").0,
        format!("{root}/plugins_registry")
    );

    assert_eq!(flag(node, "--driver-name"), driver);
    assert_eq!(flag(node, "--data-root"), data_dir);

    // Target paths arrive as host paths, so the pods directory is mounted at
    // its host path; both it and the data directory propagate both ways.
    let pods = format!("{root}/pods");
    for (path, what) in [(pods.as_str(), "pods"), (data_dir, "data")] {
        let (host, _, propagation) = host_path(&spec, node, path);
        assert_eq!(
            host, path,
            "the {what} directory is mounted at its host path"
        );
        assert_eq!(propagation.as_deref(), Some("Bidirectional"), "{what}");
    }
    // csi-driver's data directory, when its volumes are to be taken over:
    // passed as the host path it is mounted at, with the host's mounts (its
    // tmpfs) reaching the container.
    let adopt = values
        .pointer("/app/driver/adoptCsiDriverDataDir")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim_end_matches('/');
    let adopt_flag = node
        .args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix("--adopt-csi-driver-data-root="));
    if adopt.is_empty() {
        assert_eq!(adopt_flag, None, "nothing to adopt, no flag");
    } else {
        assert_eq!(adopt_flag, Some(adopt));
        let (host, _, propagation) = host_path(&spec, node, adopt);
        assert_eq!(host, adopt, "csi-driver's directory at its host path");
        assert_eq!(propagation.as_deref(), Some("HostToContainer"));
    }
    for c in [registrar, probe_sidecar] {
        for m in c.volume_mounts.iter().flatten() {
            assert_ne!(
                m.mount_propagation.as_deref(),
                Some("Bidirectional"),
                "{}",
                c.name
            );
        }
    }

    let node_id = node
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_ID")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|f| f.field_ref.as_ref())
        .expect("NODE_ID from a fieldRef");
    assert_eq!(node_id.field_path, "spec.nodeName");

    // Privileges: only the driver is privileged (Bidirectional propagation
    // needs it); the sidecars have no capabilities and cannot escalate.
    assert_eq!(
        spec.security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let sc = node.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(true));
    assert_eq!(sc.run_as_user, Some(0));
    for c in &spec.containers {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        if c.name != "cert-csi" {
            assert_ne!(sc.privileged, Some(true), "{}", c.name);
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            let drop = sc.capabilities.as_ref().and_then(|k| k.drop.clone());
            assert_eq!(drop, Some(vec!["ALL".to_owned()]), "{}", c.name);
        }
    }

    // Probes: liveness through the livenessprobe sidecar, readiness on the
    // driver's own metrics port; each port is one a container declares.
    let declared = declared_ports(&spec);
    let liveness = node.liveness_probe.as_ref().expect("driver liveness probe");
    assert_eq!(
        liveness.http_get.as_ref().unwrap().path.as_deref(),
        Some("/healthz")
    );
    assert_eq!(probe_port(node, liveness), liveness_port);
    assert_eq!(
        flag(probe_sidecar, "--http-endpoint"),
        format!(":{liveness_port}")
    );
    let readiness = node
        .readiness_probe
        .as_ref()
        .expect("driver readiness probe");
    assert_eq!(
        readiness.http_get.as_ref().unwrap().path.as_deref(),
        Some("/readyz")
    );
    assert_eq!(probe_port(node, readiness), metrics_port);
    for port in [liveness_port, metrics_port] {
        assert!(
            declared.contains(&port),
            "port {port} is not declared: {declared:?}"
        );
    }
    // The driver serves on the port the readiness probe calls.
    let address = node
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "METRICS_ADDRESS")
        .and_then(|e| e.value.clone())
        .or_else(|| {
            node.args
                .iter()
                .flatten()
                .find_map(|a| a.strip_prefix("--metrics-address=").map(str::to_owned))
        })
        .expect("the node plugin is given a metrics address");
    assert_eq!(port_of_address(&address), metrics_port);

    assert_eq!(ds.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(spec.service_account_name.as_deref(), Some(NODE));
}

#[test]
fn node_plugin_wiring_with_default_values() {
    let Some(docs) = default_docs() else { return };
    check_node(docs, &values(None));
}

#[test]
fn node_plugin_wiring_with_custom_values() {
    let Some(docs) = custom_docs() else { return };
    let values = values(Some(CUSTOM_VALUES));
    check_node(docs, &values);
    let ds: DaemonSet = get(docs, "DaemonSet", NODE);
    let spec = ds.spec.unwrap().template.spec.unwrap();
    let node = container(&spec, "cert-csi");
    assert_eq!(
        node.image.as_deref(),
        Some("registry.example.com/platform/cert-csi:v9.9.9-rc.1")
    );
    assert_eq!(node.image_pull_policy.as_deref(), Some("Always"));
    // A csi-driver-era integer verbosity maps onto a filter the binary takes.
    assert_eq!(flag(node, "--log-level"), "trace");
    assert_eq!(flag(node, "--log-format"), "json");
    assert_eq!(flag(node, "--publish-timeout"), "1m30s");
    assert_eq!(flag(node, "--max-request-rate"), "0.5");
    assert_eq!(flag(node, "--renewal-retry-max"), "10m");
    let deploy: Deployment = get(docs, "Deployment", &format!("{RELEASE}-controller"));
    let controller_spec = deploy.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        flag(container(&controller_spec, "cert-csi"), "--controllers"),
        "-approver"
    );
    // A digest beside a tag pins the sidecar, and both are kept
    // (repo:tag@digest), as csi-driver's chart writes it.
    let registrar = container(&spec, "node-driver-registrar");
    assert_eq!(
        registrar.image.as_deref(),
        Some(
            "mirror.example.com/csi-node-driver-registrar:v2.13.0@sha256:0000000000000000000000000000000000000000000000000000000000000001"
        )
    );
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(spec.tolerations.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        spec.image_pull_secrets.as_ref().unwrap()[0].name,
        "registry-credentials"
    );
    let requests = node.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(requests["memory"].0, "32Mi");
}

#[test]
fn default_images_use_the_chart_app_version() {
    let Some(docs) = default_docs() else { return };
    let chart = read_yaml("charts/cert-csi/Chart.yaml");
    let expected = format!("cert-csi:{}", chart["appVersion"].as_str().unwrap());
    let ds: DaemonSet = get(docs, "DaemonSet", NODE);
    let deploy: Deployment = get(docs, "Deployment", &format!("{RELEASE}-controller"));
    for spec in [
        ds.spec.unwrap().template.spec.unwrap(),
        deploy.spec.unwrap().template.spec.unwrap(),
    ] {
        assert_eq!(
            container(&spec, "cert-csi").image.as_deref(),
            Some(&*expected)
        );
    }
}

// ---------------------------------------------------------------------------
// The controller
// ---------------------------------------------------------------------------

#[test]
fn controller_deployment() {
    let Some(docs) = default_docs() else { return };
    let values = values(None);
    let deploy: Deployment = get(docs, "Deployment", &format!("{RELEASE}-controller"));
    let spec = deploy.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some(&*format!("{RELEASE}-controller"))
    );
    let c = container(&spec, "cert-csi");
    assert_eq!(c.args.as_ref().unwrap()[0], "controller");
    assert_eq!(flag(c, "--cluster-resource-namespace"), NAMESPACE);
    assert_eq!(
        flag(c, "--approve-issuers"),
        "issuers.cert-manager.io/*,clusterissuers.cert-manager.io/*"
    );
    let metrics_port = vint(&values, "/metrics/port");
    assert_eq!(port_of_address(flag(c, "--metrics-address")), metrics_port);
    let declared = declared_ports(&spec);
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let probe = probe.as_ref().expect("controller probes");
        assert_eq!(probe.http_get.as_ref().unwrap().path.as_deref(), Some(path));
        assert_eq!(probe_port(c, probe), metrics_port);
        assert!(declared.contains(&metrics_port));
    }
    // The controller needs no root and no capabilities.
    let pod_sc = spec.security_context.as_ref().unwrap();
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_eq!(
        pod_sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|k| k.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
}

#[test]
fn controller_can_be_switched_off() {
    let Some(docs) = render(&["--set-json", r#"controller={"enabled":false}"#]) else {
        return;
    };
    check_all_typed(&docs);
    for doc in &docs {
        let name = doc["metadata"]["name"].as_str().unwrap();
        assert!(
            !name.contains("controller"),
            "{} {name} rendered",
            doc["kind"]
        );
    }
    assert_eq!(count(&docs, "DaemonSet"), 1);
}

// ---------------------------------------------------------------------------
// Flags, CSIDriver, RBAC, metrics, CRDs
// ---------------------------------------------------------------------------

/// Every `--flag` a subcommand's `--help` lists, and every environment
/// variable it reads (`[env: NAME=]`).
fn accepted(subcommand: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args([subcommand, "--help"])
        .output()
        .expect("run cert-csi --help");
    assert!(out.status.success(), "cert-csi {subcommand} --help failed");
    let help = String::from_utf8(out.stdout).unwrap();
    let flags = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_alphanumeric())
                .to_owned()
        })
        .collect();
    let envs = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next())
        .map(str::to_owned)
        .collect();
    (flags, envs)
}

fn accepted_flags(subcommand: &str) -> BTreeSet<String> {
    accepted(subcommand).0
}

fn check_flags_accepted(docs: &[Value]) {
    let mut checked = 0;
    for (kind, name) in [
        ("DaemonSet", NODE.to_owned()),
        ("Deployment", format!("{RELEASE}-controller")),
    ] {
        let doc = find(docs, kind, &name).unwrap_or_else(|| panic!("no {kind} {name}"));
        let spec: PodSpec =
            serde_json::from_value(doc["spec"]["template"]["spec"].clone()).unwrap();
        let c = container(&spec, "cert-csi");
        // The image's ENTRYPOINT is the binary: the chart passes arguments only.
        assert_eq!(c.command, None, "{kind} must not override the entrypoint");
        let args = c.args.as_ref().unwrap();
        let subcommand = args[0].as_str();
        let (accepted, envs) = accepted(subcommand);
        for var in c.env.iter().flatten() {
            // The node plugin's --metrics-address (env METRICS_ADDRESS, as
            // the controller's) is being added beside this chart; until it
            // exists the variable is set but unread. Once the flag exists,
            // the name must match.
            let pending = var.name == "METRICS_ADDRESS" && !accepted.contains("--metrics-address");
            assert!(
                envs.contains(&var.name) || pending,
                "{kind} sets {} but `cert-csi {subcommand}` reads only {envs:?}",
                var.name
            );
        }
        for arg in &args[1..] {
            let name = arg.split('=').next().unwrap();
            assert!(
                accepted.contains(name),
                "{kind} passes {name} but `cert-csi {subcommand}` accepts only {accepted:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "too few flags checked: {checked}");
}

#[test]
fn containers_pass_only_flags_the_binary_accepts() {
    let Some(docs) = default_docs() else { return };
    check_flags_accepted(docs);
    check_flags_accepted(custom_docs().unwrap());
    // The check itself can fail.
    let accepted = accepted_flags("node");
    assert!(accepted.contains("--endpoint") && !accepted.contains("--endpiont"));
}

#[test]
fn csidriver_in_both_modes() {
    let Some(default) = default_docs() else {
        return;
    };
    let custom = custom_docs().unwrap();
    for (docs, values, tokens) in [
        (default, values(None), false),
        (custom, values(Some(CUSTOM_VALUES)), true),
    ] {
        assert_eq!(values["app"]["driver"]["useTokenRequest"], tokens);
        let name = vstr(&values, "/app/driver/name");
        let driver: CSIDriver = get(docs, "CSIDriver", name);
        let spec = driver.spec;
        // Left to its default, as csi-driver leaves it: the field is
        // immutable (chart_csi_driver.rs).
        assert_eq!(spec.attach_required, None);
        assert_eq!(spec.pod_info_on_mount, Some(true));
        assert_eq!(
            spec.volume_lifecycle_modes,
            Some(vec!["Ephemeral".to_owned()])
        );
        if tokens {
            let requests = spec.token_requests.expect("tokenRequests");
            assert_eq!(requests.len(), 1);
            assert_eq!(requests[0].audience, "");
            assert_eq!(spec.requires_republish, Some(true));
        } else {
            assert_eq!(spec.token_requests, None);
            assert_ne!(spec.requires_republish, Some(true));
        }
    }
}

pub(crate) fn rule(
    groups: &[&str],
    resources: &[&str],
    verbs: &[&str],
    names: &[&str],
) -> PolicyRule {
    let strings = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        non_resource_urls: None,
    }
}

/// Each granted (group, resource, verb, resourceName) once.
/// What the policy approver needs: policies and their status, the `use`
/// check, owner pods and namespace labels, and RBAC changes to re-evaluate.
fn policy_approver_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["policy.cert-manager.io"],
            &["certificaterequestpolicies"],
            &["list", "watch"],
            &[],
        ),
        rule(
            &["policy.cert-manager.io"],
            &["certificaterequestpolicies/status"],
            &["patch"],
            &[],
        ),
        rule(
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
            &["create"],
            &[],
        ),
        rule(&[""], &["pods", "namespaces"], &["get"], &[]),
        rule(
            &["rbac.authorization.k8s.io"],
            &[
                "roles",
                "rolebindings",
                "clusterroles",
                "clusterrolebindings",
            ],
            &["list", "watch"],
            &[],
        ),
    ]
}

pub(crate) fn grants(rules: &[PolicyRule]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in rules {
        let names = r
            .resource_names
            .clone()
            .unwrap_or_else(|| vec!["*".to_owned()]);
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    for n in &names {
                        out.insert(format!("{g}/{res} {v} {n}"));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn spiffe_approver_and_webhook_with_custom_values() {
    let Some(docs) = custom_docs() else { return };
    let deployment: Deployment = get(docs, "Deployment", &format!("{RELEASE}-controller"));
    let spec = deployment.spec.unwrap().template.spec.unwrap();
    let c = container(&spec, "cert-csi");
    assert_eq!(flag(c, "--spiffe-trust-domain"), "example.org");
    assert_eq!(
        flag(c, "--spiffe-issuer"),
        "clusterissuers.cert-manager.io/spiffe-ca"
    );
    assert_eq!(flag(c, "--spiffe-duration"), "30m");
    assert_eq!(flag(c, "--spiffe-key-types"), "P-256");
    assert_eq!(flag(c, "--spiffe-node-accounts"), "platform:certs-node");
    assert_eq!(flag(c, "--webhook-address"), "0.0.0.0:9444");
    assert_eq!(flag(c, "--webhook-ca-duration"), "720h");
    assert_eq!(flag(c, "--webhook-leaf-duration"), "24h");
    let service_name = flag(c, "--webhook-service-name");
    assert!(declared_ports(&spec).contains(&9444));

    let service: Service = get(docs, "Service", service_name);
    let port = &service.spec.unwrap().ports.unwrap()[0];
    assert_eq!(
        port.target_port,
        Some(IntOrString::String("webhook".into()))
    );
    let hooks: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        get(docs, "MutatingWebhookConfiguration", "cert-csi-webhook");
    let hook = &hooks.webhooks.unwrap()[0];
    let target = hook.client_config.service.as_ref().unwrap();
    assert_eq!(
        (target.name.as_str(), target.port),
        (service_name, Some(port.port))
    );
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    assert!(
        hook.client_config.ca_bundle.is_none(),
        "the controller injects the CA"
    );

    let controller: ClusterRole = get(docs, "ClusterRole", &format!("{RELEASE}-controller"));
    let granted = grants(controller.rules.as_deref().unwrap());
    for extra in [
        rule(&[""], &["pods"], &["get"], &[]),
        rule(
            &["admissionregistration.k8s.io"],
            &["mutatingwebhookconfigurations"],
            &["get", "update"],
            &["cert-csi-webhook"],
        ),
        rule(
            &["cert-manager.io"],
            &["signers"],
            &["approve"],
            &["clusterissuers.cert-manager.io/spiffe-ca"],
        ),
    ] {
        let want = grants(&[extra]);
        assert!(want.is_subset(&granted), "{want:?} not in {granted:?}");
    }
}

/// `controller.policyApprover`: off by default (no flag, no grant, no
/// policy CRD); on, the controller gets `--policy-approver`, exactly the
/// grants the policy approver uses, and the CertificateRequestPolicy CRD
/// unless `installCRD` is off.
#[test]
fn policy_approver_is_on_by_default_with_its_policies_and_switches_off() {
    let Some(defaults) = default_docs() else {
        return;
    };
    let policy_grants = policy_approver_rules();
    let policy_crd = "certificaterequestpolicies.policy.cert-manager.io";
    let controller_sa = format!("system:serviceaccount:{RELEASE}:{RELEASE}-controller");
    let node_sa = format!("system:serviceaccount:{RELEASE}:{NODE}");
    // Who may `use` each rendered policy: "kind:name" of every subject of
    // every ClusterRoleBinding whose role grants `use` on it by name.
    let users_of = |docs: &[Value], policy: &str| -> BTreeSet<String> {
        let roles: Vec<ClusterRole> = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .map(typed)
            .collect();
        let grants_use = |role: &str| {
            roles.iter().any(|r| {
                r.metadata.name.as_deref() == Some(role)
                    && grants(r.rules.as_deref().unwrap_or_default()).contains(&format!(
                        "policy.cert-manager.io/certificaterequestpolicies use {policy}"
                    ))
            })
        };
        docs.iter()
            .filter(|d| d["kind"] == "ClusterRoleBinding")
            .map(typed::<ClusterRoleBinding>)
            .filter(|b| grants_use(&b.role_ref.name))
            .flat_map(|b| b.subjects.unwrap_or_default())
            .map(|s| match s.kind.as_str() {
                "ServiceAccount" => format!(
                    "system:serviceaccount:{}:{}",
                    s.namespace.unwrap_or_default(),
                    s.name
                ),
                _ => format!("{}:{}", s.kind, s.name),
            })
            .collect()
    };
    let check = |docs: &[Value], on: bool, crd: bool| {
        let deployment: Deployment = get(docs, "Deployment", &format!("{RELEASE}-controller"));
        let spec = deployment.spec.unwrap().template.spec.unwrap();
        let c = container(&spec, "cert-csi");
        let has_flag = c.args.iter().flatten().any(|a| a == "--policy-approver");
        assert_eq!(has_flag, on, "{:?}", c.args);
        let role: ClusterRole = get(docs, "ClusterRole", &format!("{RELEASE}-controller"));
        let granted = grants(role.rules.as_deref().unwrap());
        for extra in &policy_grants {
            let want = grants(std::slice::from_ref(extra));
            assert_eq!(want.is_subset(&granted), on, "{want:?} in {granted:?}");
        }
        assert_eq!(
            find(docs, "CustomResourceDefinition", policy_crd).is_some(),
            crd
        );
    };
    // On by default, with the CRD and both policies, each usable by its
    // own component only and installed after its CRD (a Helm hook).
    check_all_typed(defaults);
    check(defaults, true, true);
    let policies: Vec<cert_csi::api::CertificateRequestPolicy> = defaults
        .iter()
        .filter(|d| d["kind"] == "CertificateRequestPolicy")
        .map(typed)
        .collect();
    let names: Vec<&str> = policies
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["cert-csi-csi-volumes", "cert-csi-certificates"]);
    for p in &policies {
        let hook = p.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            hook.get("helm.sh/hook").map(String::as_str),
            Some("post-install,post-upgrade"),
            "a policy created before its CRD is served fails the install"
        );
    }
    let volumes = &policies[0].spec;
    let allowed = volumes.allowed.as_ref().unwrap();
    assert_ne!(allowed.is_ca, Some(true), "CSI volumes get no CA");
    let usages = allowed.usages.clone().unwrap_or_default();
    for refused in [
        "cert sign",
        "crl sign",
        "ocsp signing",
        "code signing",
        "any",
    ] {
        assert!(
            !usages.iter().any(|u| u == refused),
            "{refused} in {usages:?}"
        );
    }
    assert!(allowed.ip_addresses.is_none() && allowed.email_addresses.is_none());
    assert_eq!(
        volumes
            .constraints
            .as_ref()
            .and_then(|c| c.max_duration.as_deref()),
        Some("2160h")
    );
    assert_eq!(policies[1].spec.allowed.as_ref().unwrap().is_ca, Some(true));
    assert_eq!(
        users_of(defaults, "cert-csi-csi-volumes"),
        BTreeSet::from([node_sa.clone()])
    );
    assert_eq!(
        users_of(defaults, "cert-csi-certificates"),
        BTreeSet::from([controller_sa.clone()])
    );
    // Pods that make their own requests may use the CSI volume policy;
    // extra requesters may use the Certificate one; values reach the rules.
    let Some(tuned) = render(&[
        "--set-json",
        r#"app={"driver":{"useTokenRequest":true}}"#,
        "--set-json",
        r#"controller={"policyApprover":{"csiVolumesPolicy":{"clusterDomain":"corp.internal","trustDomain":"example.org","minDuration":"1h"},"certificatesPolicy":{"extraSubjects":[{"kind":"ServiceAccount","name":"cert-manager","namespace":"cert-manager"}]}}}"#,
    ]) else {
        return;
    };
    check_all_typed(&tuned);
    assert_eq!(
        users_of(&tuned, "cert-csi-csi-volumes"),
        BTreeSet::from([node_sa, "Group:system:serviceaccounts".to_owned()])
    );
    assert_eq!(
        users_of(&tuned, "cert-csi-certificates"),
        BTreeSet::from([
            controller_sa,
            "system:serviceaccount:cert-manager:cert-manager".to_owned()
        ])
    );
    let tuned_volumes: cert_csi::api::CertificateRequestPolicy =
        get(&tuned, "CertificateRequestPolicy", "cert-csi-csi-volumes");
    let text = serde_json::to_string(&tuned_volumes.spec).unwrap();
    for want in [
        ".svc.corp.internal",
        "spiffe://example.org/ns/",
        r#""minDuration":"1h""#,
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
    // Each policy can be left out; then nobody is bound to use it.
    let Some(no_volumes) = render(&[
        "--set-json",
        r#"controller={"policyApprover":{"csiVolumesPolicy":{"enabled":false}}}"#,
    ]) else {
        return;
    };
    assert!(
        find(
            &no_volumes,
            "CertificateRequestPolicy",
            "cert-csi-csi-volumes"
        )
        .is_none()
    );
    assert!(users_of(&no_volumes, "cert-csi-csi-volumes").is_empty());
    assert!(
        find(
            &no_volumes,
            "CertificateRequestPolicy",
            "cert-csi-certificates"
        )
        .is_some()
    );
    // Switched off: cert-manager's approve-everything approver, no
    // policies, no CRD, no grants.
    let Some(off) = render(&[
        "--set-json",
        r#"controller={"policyApprover":{"enabled":false}}"#,
    ]) else {
        return;
    };
    check(&off, false, false);
    assert_eq!(count(&off, "CertificateRequestPolicy"), 0);
    let rendered: CustomResourceDefinition =
        typed(find(defaults, "CustomResourceDefinition", policy_crd).unwrap());
    let mut want = cert_csi::api::policy_crds().remove(0);
    let mut got = rendered;
    got.metadata.labels = None;
    got.metadata.annotations = None;
    want.metadata.labels = None;
    assert_eq!(got, want);
    let Some(no_crd) = render(&[
        "--set-json",
        r#"controller={"policyApprover":{"installCRD":false}}"#,
    ]) else {
        return;
    };
    check(&no_crd, true, false);
}

#[test]
fn chart_policy_crd_is_the_binarys() {
    const FILE: &str = "charts/cert-csi/files/policy-crds.yaml";
    let out = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args(["crds", "--policy"])
        .output()
        .expect("run cert-csi crds --policy");
    assert!(out.status.success());
    let committed = std::fs::read_to_string(repo().join(FILE)).unwrap_or_default();
    assert!(
        committed.as_bytes() == out.stdout.as_slice(),
        "{FILE} is out of date with `cert-csi crds --policy`; regenerate it with:\n    \
         cargo run -q -- crds --policy > {FILE}"
    );
}

#[test]
fn rbac_is_least_privilege_per_component() {
    let Some(docs) = default_docs() else { return };
    let node: ClusterRole = get(docs, "ClusterRole", NODE);
    let expected_node = [
        rule(
            &["cert-manager.io"],
            &["certificaterequests"],
            &["create", "delete", "get", "list", "watch"],
            &[],
        ),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"], &[]),
    ];
    assert_eq!(
        grants(node.rules.as_deref().unwrap()),
        grants(&expected_node)
    );

    let controller: ClusterRole = get(docs, "ClusterRole", &format!("{RELEASE}-controller"));
    let expected_controller = [
        rule(
            &["cert-manager.io"],
            &["certificaterequests"],
            &["get", "list", "watch", "create", "delete"],
            &[],
        ),
        rule(
            &["cert-manager.io"],
            &["certificaterequests/status"],
            &["update"],
            &[],
        ),
        rule(
            &["cert-manager.io"],
            &["signers"],
            &["approve"],
            &[
                "issuers.cert-manager.io/*",
                "clusterissuers.cert-manager.io/*",
            ],
        ),
        rule(
            &["cert-manager.io"],
            &["certificates", "issuers", "clusterissuers"],
            &["get", "list", "watch"],
            &[],
        ),
        rule(
            &["cert-manager.io"],
            &[
                "certificates/status",
                "issuers/status",
                "clusterissuers/status",
            ],
            &["update"],
            &[],
        ),
        rule(
            &[""],
            &["secrets"],
            &["get", "list", "watch", "create", "update", "delete"],
            &[],
        ),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"], &[]),
    ];
    // The policy approver (on by default) adds its own.
    let expected_controller: Vec<PolicyRule> = expected_controller
        .into_iter()
        .chain(policy_approver_rules())
        .collect();
    assert_eq!(
        grants(controller.rules.as_deref().unwrap()),
        grants(&expected_controller)
    );
    for r in controller
        .rules
        .iter()
        .flatten()
        .chain(node.rules.iter().flatten())
    {
        assert!(!r.verbs.iter().any(|v| v == "*"), "wildcard verb: {r:?}");
        assert!(
            !r.resources.iter().flatten().any(|v| v == "*"),
            "wildcard resource: {r:?}"
        );
    }

    // The one Role: leader election, on exactly its Lease, in the
    // release's namespace (the default of leaderElection.namespace), bound
    // to the controller's ServiceAccount.
    assert_eq!(count(docs, "Role"), 1, "the default render has one Role");
    assert_eq!(count(docs, "RoleBinding"), 1, "and one RoleBinding");
    let election = format!("{RELEASE}-controller-leader-election");
    let role: Role = get(docs, "Role", &election);
    assert_eq!(role.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(
        grants(role.rules.as_deref().unwrap()),
        grants(&[
            rule(&["coordination.k8s.io"], &["leases"], &["create"], &[]),
            rule(
                &["coordination.k8s.io"],
                &["leases"],
                &["get", "update"],
                &["cert-csi-controller"]
            ),
        ])
    );
    let binding: RoleBinding = get(docs, "RoleBinding", &election);
    assert_eq!(binding.role_ref.name, election);
    let subjects = binding.subjects.unwrap();
    assert_eq!(
        (subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
        (&*format!("{RELEASE}-controller"), Some(NAMESPACE))
    );

    // Each binding gives its role to the ServiceAccount its pods run as.
    for name in [NODE.to_owned(), format!("{RELEASE}-controller")] {
        let sa: ServiceAccount = get(docs, "ServiceAccount", &name);
        assert_eq!(sa.metadata.namespace.as_deref(), Some(NAMESPACE));
        let binding: ClusterRoleBinding = get(docs, "ClusterRoleBinding", &name);
        assert_eq!(
            (
                binding.role_ref.kind.as_str(),
                binding.role_ref.name.as_str()
            ),
            ("ClusterRole", &*name)
        );
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(
            (
                subjects[0].kind.as_str(),
                subjects[0].name.as_str(),
                subjects[0].namespace.as_deref()
            ),
            ("ServiceAccount", &*name, Some(NAMESPACE))
        );
    }
    // The approve grant follows controller.approveIssuers, plus the SPIFFE
    // approver's issuer (on in the custom values).
    let custom = custom_docs().unwrap();
    let controller: ClusterRole = get(custom, "ClusterRole", &format!("{RELEASE}-controller"));
    let signers = controller
        .rules
        .iter()
        .flatten()
        .find(|r| r.resources.as_deref() == Some(&["signers".to_owned()][..]))
        .unwrap();
    assert_eq!(
        signers.resource_names.as_deref(),
        Some(
            &[
                "issuers.cert-manager.io/*".to_owned(),
                "clusterissuers.cert-manager.io/spiffe-ca".to_owned()
            ][..]
        )
    );
}

/// Labels a Service's selector picks, compared with a pod template's.
pub(crate) fn selects(service: &Service, template_labels: &BTreeMap<String, String>) -> bool {
    let selector = service
        .spec
        .as_ref()
        .unwrap()
        .selector
        .clone()
        .unwrap_or_default();
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| template_labels.get(k) == Some(v))
}

#[test]
fn metrics_services_and_service_monitors() {
    let Some(docs) = render(&[
        "--set-json",
        r#"metrics={"serviceMonitor":{"enabled":true,"labels":{"release":"prom"}}}"#,
    ]) else {
        return;
    };
    check_all_typed(&docs);
    let port = vint(&values(None), "/metrics/port");
    let ds: DaemonSet = get(&docs, "DaemonSet", NODE);
    let deploy: Deployment = get(&docs, "Deployment", &format!("{RELEASE}-controller"));
    for (component, template) in [
        ("node", ds.spec.unwrap().template),
        ("controller", deploy.spec.unwrap().template),
    ] {
        let labels = template.metadata.unwrap().labels.unwrap();
        let service: Service = get(&docs, "Service", &format!("{RELEASE}-{component}-metrics"));
        assert!(
            selects(&service, &labels),
            "{component}: the Service selects no pod"
        );
        let ports = service.spec.as_ref().unwrap().ports.clone().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, port);
        // The target is a port the component's container declares.
        let IntOrString::String(target) = ports[0].target_port.clone().unwrap() else {
            panic!("targetPort by name")
        };
        let spec = template.spec.unwrap();
        let declared = container(&spec, "cert-csi")
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(&*target))
            .unwrap_or_else(|| panic!("{component} declares no port {target}"));
        assert_eq!(declared.container_port, port);

        let monitor = find(&docs, "ServiceMonitor", &format!("{RELEASE}-{component}"))
            .unwrap_or_else(|| panic!("no ServiceMonitor for {component}"));
        assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
        let service_labels = service.metadata.labels.clone().unwrap();
        for (k, v) in monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(
                service_labels.get(k).map(String::as_str),
                v.as_str(),
                "{component}: {k}"
            );
        }
        assert_eq!(
            monitor["spec"]["endpoints"][0]["port"],
            ports[0].name.clone().unwrap()
        );
        assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    }
    // Off by default.
    assert_eq!(count(default_docs().unwrap(), "ServiceMonitor"), 0);
}

fn cert_csi_crds() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .arg("crds")
        .output()
        .expect("run cert-csi crds");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn chart_crds_are_the_binarys() {
    let committed = std::fs::read_to_string(repo().join(CHART_CRDS)).unwrap_or_default();
    assert!(
        committed == cert_csi_crds(),
        "{CHART_CRDS} is out of date with `cert-csi crds`.\n\
         Regenerate it with:\n    cargo run -q -- crds > {CHART_CRDS}"
    );
}

#[test]
fn rendered_crds_are_the_binarys_plus_labels() {
    let Some(docs) = default_docs() else { return };
    let rendered: Vec<CustomResourceDefinition> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .map(typed)
        .collect();
    let mut expected = cert_csi::api::crds();
    expected.extend(cert_csi::api::policy_crds());
    assert_eq!(rendered.len(), expected.len());
    for (mut got, want) in rendered.into_iter().zip(expected) {
        let labels = got.metadata.labels.take().unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], RELEASE);
        // crds.keep (default true): helm uninstall leaves them, and with them
        // every certificate resource in the cluster.
        let annotations = got.metadata.annotations.take().unwrap();
        assert_eq!(annotations["helm.sh/resource-policy"], "keep");
        assert_eq!(got, want);
    }
    let Some(unkept) = render(&["--set-json", r#"crds={"keep":false}"#]) else {
        return;
    };
    let crd = find(
        &unkept,
        "CustomResourceDefinition",
        "certificates.cert-manager.io",
    )
    .unwrap();
    assert!(
        crd["metadata"]["annotations"]
            .get("helm.sh/resource-policy")
            .is_none()
    );
}

// ---------------------------------------------------------------------------
// Examples
// ---------------------------------------------------------------------------

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn example_pods_are_valid_and_their_volumes_parse() {
    use cert_csi::volume::{PublishInput, kubelet};
    let files = example_files();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    for needed in [
        "issuer.yaml",
        "tls-pod.yaml",
        "mtls-pair.yaml",
        "pkcs12-pod.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "deploy/examples/{needed} is missing"
        );
    }
    let driver = vstr(&values(None), "/app/driver/name").to_owned();

    let mut issuers = BTreeSet::new();
    let mut pods = Vec::new();
    let mut services = Vec::new();
    for file in &files {
        for doc in yaml_documents(&std::fs::read_to_string(file).unwrap()) {
            match doc["kind"].as_str().unwrap() {
                "ClusterIssuer" => {
                    let issuer: cert_csi::api::ClusterIssuer = serde_json::from_value(doc).unwrap();
                    assert!(issuer.spec.ca.is_some() || issuer.spec.self_signed.is_some());
                    issuers.insert(issuer.metadata.name.unwrap());
                }
                "Pod" => pods.push(typed::<Pod>(&doc)),
                "Service" => services.push(typed::<Service>(&doc)),
                "ConfigMap" => {
                    typed::<k8s_openapi::api::core::v1::ConfigMap>(&doc);
                }
                other => panic!("{}: unexpected {other}", file.display()),
            }
        }
    }

    let mut volumes = 0;
    let mut pkcs12 = false;
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap();
        let spec = pod.spec.as_ref().unwrap();
        for volume in spec.volumes.iter().flatten() {
            let Some(csi) = &volume.csi else { continue };
            assert_eq!(csi.driver, driver, "{name}");
            assert_eq!(
                csi.read_only,
                Some(true),
                "{name}: cert-csi serves volumes read-only"
            );
            // What the kubelet would send for this pod.
            let mut context: std::collections::HashMap<String, String> = csi
                .volume_attributes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            context.insert(kubelet::POD_NAME.into(), name.clone());
            context.insert(kubelet::POD_NAMESPACE.into(), "default".into());
            context.insert(
                kubelet::POD_UID.into(),
                "5b2c9e54-1f0e-4d8a-9a43-6f1d2f0c7a11".into(),
            );
            context.insert(kubelet::SERVICE_ACCOUNT_NAME.into(), "default".into());
            context.insert(kubelet::EPHEMERAL.into(), "true".into());
            let input = PublishInput {
                volume_id: "csi-0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
                target_path: "/var/lib/kubelet/pods/5b2c9e54-1f0e-4d8a-9a43-6f1d2f0c7a11/volumes/kubernetes.io~csi/tls/mount",
                readonly: true,
                volume_mount_group: None,
                context: &context,
            };
            let spec = cert_csi::volume::parse(&input)
                .unwrap_or_else(|e| panic!("{name}: volume {}: {e}", volume.name));
            assert!(spec.warnings.is_empty(), "{name}: {:?}", spec.warnings);
            assert!(
                issuers.contains(&spec.issuer.name),
                "{name}: issuer {} is not in the examples",
                spec.issuer.name
            );
            assert_eq!(spec.issuer.kind, "ClusterIssuer");
            pkcs12 |= spec.pkcs12.is_some();
            volumes += 1;
        }
    }
    assert!(volumes >= 4, "{volumes} cert-csi volumes in the examples");
    assert!(pkcs12, "one example uses PKCS#12");

    // Each Service selects a pod and targets a port it declares.
    for service in &services {
        let sspec = service.spec.as_ref().unwrap();
        let pod = pods
            .iter()
            .find(|p| {
                selects(
                    service,
                    p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                )
            })
            .expect("the Service selects an example pod");
        let pspec = pod.spec.as_ref().unwrap();
        for port in sspec.ports.iter().flatten() {
            if let Some(IntOrString::String(name)) = &port.target_port {
                assert!(
                    pspec
                        .containers
                        .iter()
                        .flat_map(|c| c.ports.iter().flatten())
                        .any(|p| p.name.as_deref() == Some(name)),
                    "targetPort {name}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

/// Dockerfile instructions with their arguments, continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((op.to_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_builds_the_binary_the_chart_runs() {
    let steps = dockerfile();
    let froms: Vec<&str> = steps
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let (builder_image, builder) = froms[0]
        .split_once(" AS ")
        .expect("the first stage is named");
    let version = builder_image
        .strip_prefix("rust:")
        .and_then(|v| v.split('-').next())
        .expect("the builder is an official rust image");
    // The toolchain is at least the crate's rust-version.
    let parse = |v: &str| {
        v.split('.')
            .map(|n| n.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let msrv = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        parse(version) >= parse(msrv),
        "rust:{version} is older than rust-version {msrv}"
    );
    let runtime = froms.last().unwrap();
    assert!(
        runtime.starts_with("gcr.io/distroless/") || *runtime == "scratch",
        "minimal runtime image: {runtime}"
    );

    let bin = Path::new(env!("CARGO_BIN_EXE_cert-csi"))
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let build = steps
        .iter()
        .find(|(op, a)| op == "RUN" && a.contains("cargo build"))
        .expect("a cargo build step");
    for needed in ["--locked", &format!("--bin {bin}")] {
        assert!(
            build.1.contains(needed),
            "cargo build lacks {needed}: {}",
            build.1
        );
    }
    // An optimised build: --release, or a profile of Cargo.toml that
    // inherits from release (the image's adds LTO); its output directory
    // is the profile's name.
    let profile = build
        .1
        .split_whitespace()
        .skip_while(|w| *w != "--profile")
        .nth(1);
    let out_dir = match profile {
        Some(name) => {
            let section = format!("[profile.{name}]");
            let body = manifest
                .split_once(section.as_str())
                .unwrap_or_else(|| panic!("--profile {name}: no {section} in Cargo.toml"))
                .1;
            let body = body.split("\n[").next().unwrap_or_default();
            assert!(
                body.contains("inherits = \"release\""),
                "{section} does not inherit from release:{body}"
            );
            name.to_owned()
        }
        None => {
            assert!(
                build.1.contains("--release"),
                "an unoptimised build: {}",
                build.1
            );
            "release".to_owned()
        }
    };
    assert!(
        build.1.contains(&format!("target/{out_dir}/{bin}")),
        "{}",
        build.1
    );

    // The runtime stage copies only the binary from the builder.
    let runtime_copies: Vec<&str> = steps
        .iter()
        .skip_while(|(op, a)| !(op == "FROM" && a.as_str() == *runtime))
        .filter(|(op, _)| op == "COPY")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(runtime_copies.len(), 1, "{runtime_copies:?}");
    assert!(runtime_copies[0].starts_with(&format!("--from={builder} ")));
    let (_, installed) = runtime_copies[0].rsplit_once(' ').unwrap();

    let entrypoint = steps
        .iter()
        .rev()
        .find(|(op, _)| op == "ENTRYPOINT")
        .expect("an ENTRYPOINT");
    let entrypoint: Vec<String> =
        serde_json::from_str(&entrypoint.1).expect("exec-form ENTRYPOINT");
    assert_eq!(entrypoint, [installed.to_owned()]);
    assert_eq!(Path::new(installed).file_name().unwrap(), bin.as_str());
    let user = steps
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .expect("a USER");
    assert_ne!(user.1.split(':').next(), Some("0"), "non-root by default");

    // The build context holds every file the build reads: each target of
    // the package and build.rs, copied and not excluded by .dockerignore.
    let copied: Vec<String> = steps
        .iter()
        .take_while(|(op, a)| !(op == "FROM" && a.as_str() == *runtime))
        .filter(|(op, _)| op == "COPY")
        .flat_map(|(_, a)| {
            let words: Vec<&str> = a.split_whitespace().collect();
            words[..words.len() - 1]
                .iter()
                .map(|w| w.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let included: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        ".dockerignore starts from nothing"
    );
    let metadata = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        metadata.status.success(),
        "{}",
        String::from_utf8_lossy(&metadata.stderr)
    );
    let metadata: Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let mut needed = vec![
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "proto".to_owned(),
    ];
    for target in metadata["packages"][0]["targets"].as_array().unwrap() {
        let kinds = target["kind"].as_array().unwrap();
        // Tests and examples are discovered, not declared: cargo builds
        // without them.
        if kinds.iter().any(|k| k == "test" || k == "example") {
            continue;
        }
        let path = Path::new(target["src_path"].as_str().unwrap());
        let relative = path
            .strip_prefix(repo())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        needed.push(relative);
    }
    for path in &needed {
        let top = path.split('/').next().unwrap();
        assert!(
            copied.iter().any(|c| c == top || c == path),
            "the Dockerfile does not copy {path}"
        );
        assert!(
            included.iter().any(|c| *c == top || c == path),
            ".dockerignore excludes {path}"
        );
    }
}

/// The SPIFFE driver's DaemonSet and CSIDriver, and the trust bundle, in
/// both request modes (issue 9).
#[test]
fn spiffe_driver_and_trust_bundle() {
    for (mode, source_flag, source) in [
        ("pod-token", "configMap", "cert-manager/trust:ca.crt"),
        ("node-account", "secret", "platform/roots:bundle.pem"),
    ] {
        let mode_json = format!("spiffe.driver.requestMode={mode:?}");
        let source_json = format!("trustBundle.{source_flag}={source:?}");
        let Some(docs) = render(&[
            "--set-json",
            "spiffe.driver.enabled=true",
            "--set-json",
            r#"spiffe.driver.issuer.name="spiffe-ca""#,
            "--set-json",
            &mode_json,
            "--set-json",
            &source_json,
        ]) else {
            return;
        };
        check_all_typed(&docs);
        assert_eq!(count(&docs, "DaemonSet"), 2, "{mode}");
        assert_eq!(count(&docs, "CSIDriver"), 2, "{mode}");

        let driver: CSIDriver = get(&docs, "CSIDriver", "spiffe.csi.cert-manager.io");
        let spec = driver.spec;
        assert_eq!(spec.attach_required, None);
        let requests = spec.token_requests.expect("tokenRequests");
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].audience, "");
        assert_eq!(spec.requires_republish, Some(true));
        assert_eq!(spec.pod_info_on_mount, Some(true));

        let ds: DaemonSet = get(&docs, "DaemonSet", &format!("{RELEASE}-spiffe-node"));
        let pod = ds.spec.unwrap().template.spec.unwrap();
        let c = container(&pod, "cert-csi");
        assert_eq!(flag(c, "--driver-name"), "spiffe.csi.cert-manager.io");
        assert_eq!(flag(c, "--spiffe-request-mode"), mode);
        assert_eq!(flag(c, "--spiffe-issuer-name"), "spiffe-ca");
        let trust_flag = match source_flag {
            "configMap" => "--trust-bundle-configmap",
            _ => "--trust-bundle-secret",
        };
        assert_eq!(flag(c, trust_flag), source);
        // Every argument is one the binary accepts.
        let (accepted, _) = accepted("node");
        for arg in &c.args.as_ref().unwrap()[1..] {
            let name = arg.split('=').next().unwrap();
            assert!(
                accepted.contains(name),
                "the SPIFFE DaemonSet passes {name}"
            );
        }
        // Its own socket and node state, apart from the other driver's.
        let (data, _, propagation) = host_path(&pod, c, flag(c, "--data-root"));
        assert_eq!(data, "/var/lib/cert-csi-spiffe");
        assert_eq!(propagation.as_deref(), Some("Bidirectional"));
        let registrar = container(&pod, "node-driver-registrar");
        assert_eq!(
            flag(registrar, "--kubelet-registration-path"),
            "/var/lib/kubelet/plugins/spiffe.csi.cert-manager.io/csi.sock"
        );
        // The other driver follows the same bundle.
        let node: DaemonSet = get(&docs, "DaemonSet", NODE);
        let node_pod = node.spec.unwrap().template.spec.unwrap();
        assert_eq!(flag(container(&node_pod, "cert-csi"), trust_flag), source);

        // RBAC: the plugin creates requests only in node-account mode; in
        // pod-token mode every ServiceAccount may create them instead.
        let role: ClusterRole = get(&docs, "ClusterRole", &format!("{RELEASE}-spiffe-node"));
        let granted = grants(role.rules.as_deref().unwrap());
        let create = grants(&[rule(
            &["cert-manager.io"],
            &["certificaterequests"],
            &["create"],
            &[],
        )]);
        let requester = find(
            &docs,
            "ClusterRoleBinding",
            &format!("{RELEASE}-spiffe-requester"),
        );
        if mode == "node-account" {
            assert!(create.is_subset(&granted), "{granted:?}");
            assert!(requester.is_none());
        } else {
            assert!(create.is_disjoint(&granted), "{granted:?}");
            let binding: ClusterRoleBinding = typed(requester.expect("requester binding"));
            let subject = &binding.subjects.unwrap()[0];
            assert_eq!(
                (subject.kind.as_str(), subject.name.as_str()),
                ("Group", "system:serviceaccounts")
            );
        }

        // The trust bundle's one object, readable by both plugins.
        let (object, _key) = source.split_once(':').unwrap();
        let (namespace, name) = object.split_once('/').unwrap();
        let trust_role = docs
            .iter()
            .find(|d| {
                d["kind"] == "Role" && d["metadata"]["name"] == format!("{RELEASE}-trust-bundle")
            })
            .expect("trust bundle Role");
        assert_eq!(trust_role["metadata"]["namespace"], namespace);
        let trust_role: Role = typed(trust_role);
        let resource = if source_flag == "configMap" {
            "configmaps"
        } else {
            "secrets"
        };
        assert_eq!(
            grants(trust_role.rules.as_deref().unwrap()),
            grants(&[rule(&[""], &[resource], &["get", "list", "watch"], &[name])])
        );
        let binding = docs
            .iter()
            .find(|d| {
                d["kind"] == "RoleBinding"
                    && d["metadata"]["name"] == format!("{RELEASE}-trust-bundle")
            })
            .expect("trust bundle RoleBinding");
        let binding: RoleBinding = typed(binding);
        let subjects: BTreeSet<String> = binding
            .subjects
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            subjects,
            BTreeSet::from([NODE.to_owned(), format!("{RELEASE}-spiffe-node")])
        );
    }
}

/// The controller's container arguments and pod template in a render.
fn controller_pod(docs: &[Value]) -> (Vec<String>, Deployment) {
    let deployment: Deployment = get(docs, "Deployment", &format!("{RELEASE}-controller"));
    let spec = deployment.spec.clone().unwrap().template.spec.unwrap();
    let args = container(&spec, "cert-csi").args.clone().unwrap();
    (args, deployment)
}

#[test]
fn controller_runs_two_replicas_with_leader_election_and_a_budget() {
    let Some(docs) = default_docs() else { return };
    let (args, deployment) = controller_pod(docs);
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    for flag in [
        format!("--leader-election-namespace={NAMESPACE}"),
        "--leader-election-lease-duration=60s".into(),
        "--leader-election-renew-deadline=40s".into(),
        "--leader-election-retry-period=15s".into(),
    ] {
        assert!(args.contains(&flag), "{flag} missing from {args:?}");
    }
    // The holder identity starts with the pod's name.
    let pod = spec.template.spec.unwrap();
    let env = container(&pod, "cert-csi").env.clone().unwrap();
    let pod_name = env.iter().find(|e| e.name == "POD_NAME").expect("POD_NAME");
    assert_eq!(
        pod_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.name")
    );
    // The budget selects exactly the controller's pods and keeps one.
    let pdb: k8s_openapi::api::policy::v1::PodDisruptionBudget = get(
        docs,
        "PodDisruptionBudget",
        &format!("{RELEASE}-controller"),
    );
    let pdb_spec = pdb.spec.unwrap();
    assert_eq!(
        pdb_spec.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(
        pdb_spec.selector.unwrap().match_labels,
        spec.selector.match_labels
    );

    // Another namespace moves the Lease, its flag and its Role together.
    let Some(moved) = render(&[
        "--set-json",
        r#"controller.leaderElection.namespace="kube-system""#,
    ]) else {
        return;
    };
    let (args, _) = controller_pod(&moved);
    assert!(args.contains(&"--leader-election-namespace=kube-system".to_owned()));
    let role: Role = get(
        &moved,
        "Role",
        &format!("{RELEASE}-controller-leader-election"),
    );
    assert_eq!(role.metadata.namespace.as_deref(), Some("kube-system"));

    // Off: one replica acts without a Lease, and no Lease is granted.
    let off = render(&[
        "--set-json",
        "controller.leaderElection.enabled=false",
        "--set-json",
        "controller.replicaCount=1",
        "--set-json",
        "controller.podDisruptionBudget.enabled=false",
    ])
    .unwrap();
    let (args, _) = controller_pod(&off);
    assert!(
        args.contains(&"--leader-elect=false".to_owned()),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a.starts_with("--leader-election-")));
    assert_eq!(count(&off, "Role"), 0);
    assert_eq!(count(&off, "PodDisruptionBudget"), 0);

    // Two replicas without a Lease would both sign: the render refuses.
    let out = chart_py(&["render", "--set", "controller.leaderElection.enabled=false"]).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("controller.replicaCount above 1 needs controller.leaderElection.enabled"),
        "{stderr}"
    );
}

#[test]
fn the_node_plugins_environment_names_its_data_root_for_cert_csi_status() {
    let Some(docs) = default_docs() else { return };
    let daemonset: DaemonSet = get(docs, "DaemonSet", NODE);
    let spec = daemonset.spec.unwrap().template.spec.unwrap();
    let c = container(&spec, "cert-csi");
    let env = c.env.clone().unwrap();
    let data_root = env
        .iter()
        .find(|e| e.name == "DATA_ROOT")
        .and_then(|e| e.value.clone())
        .expect("DATA_ROOT set");
    assert_eq!(data_root, flag(c, "--data-root"));
}
