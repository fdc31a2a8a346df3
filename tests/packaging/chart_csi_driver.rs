//! Switching from cert-manager's csi-driver chart to cert-csi's.
//!
//! A csi-driver user runs `helm upgrade <release> charts/cert-csi -f
//! their-values.yaml`. That works only if (1) every key of their values
//! file passes cert-csi's schema and keeps its meaning, and (2) every object
//! both charts make can be updated in place: Kubernetes refuses a change to
//! an immutable field (a CSIDriver's attachRequired and volumeLifecycleModes,
//! a DaemonSet's selector, a binding's roleRef), and helm upgrade then fails
//! half way.
//!
//! csi-driver's chart is rendered by the same real Helm engine from its
//! pinned module (hack/tools/csi-driver/go.mod, fetched through the Go
//! module proxy): its own values.yaml and values.schema.json are the
//! reference, not a list written here. Both renders are then applied, one
//! over the other, to the real API server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::api::rbac::v1::ClusterRole;
use serde_json::{Value, json};

use super::chart::{
    NODE, chart_py, chart_py_ok, check_all_typed, container, find, flag, get, grants, in_ci,
    read_yaml, render, repo, rule, yaml_documents,
};

/// Every key of csi-driver's chart, each away from its default.
const ALL_KEYS: &str = "tests/chart/values-csi-driver-all.yaml";
/// What csi-driver's docs install with: the release and namespace both
/// charts are rendered under.
const UPSTREAM_RELEASE: &str = "cert-manager-csi-driver";
const UPSTREAM_NAMESPACE: &str = "cert-manager";

// ---------------------------------------------------------------------------
// csi-driver's chart
// ---------------------------------------------------------------------------

/// The csi-driver chart directory in the Go module cache, or `None` (skip)
/// when Go is missing outside CI.
fn upstream_chart() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("go")
            .args([
                "mod",
                "download",
                "-json",
                "github.com/cert-manager/csi-driver",
            ])
            .env("GOTOOLCHAIN", "local")
            .current_dir(repo().join("hack/tools/csi-driver"))
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let message = format!("cannot run go to fetch csi-driver's chart: {e}");
                assert!(!in_ci(), "{message}");
                eprintln!("skipping: {message}");
                return None;
            }
        };
        assert!(
            out.status.success(),
            "go mod download github.com/cert-manager/csi-driver failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: Value = serde_json::from_slice(&out.stdout).expect("go mod download -json");
        let dir = Path::new(info["Dir"].as_str().expect("Dir")).join("deploy/charts/csi-driver");
        assert!(
            dir.join("Chart.yaml").is_file(),
            "{} holds no chart",
            dir.display()
        );
        Some(dir)
    })
    .as_deref()
}

fn upstream_values_file() -> Option<String> {
    upstream_chart().map(|dir| dir.join("values.yaml").display().to_string())
}

/// Both charts rendered with the same values, release and namespace:
/// (csi-driver's, cert-csi's).
fn render_both(args: &[&str], release: &str) -> Option<(Vec<Value>, Vec<Value>)> {
    let chart = upstream_chart()?.display().to_string();
    let mut common = args.to_vec();
    common.extend_from_slice(&["--name", release, "--namespace", UPSTREAM_NAMESPACE]);
    let mut upstream = common.clone();
    upstream.extend_from_slice(&["--chart", &chart]);
    let theirs = render(&upstream)?;
    let ours = render(&common)?;
    Some((theirs, ours))
}

fn key(doc: &Value) -> (String, String, String) {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let namespace = doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (kind, namespace, name)
}

/// The leaf keys of csi-driver's values.schema.json, as dotted paths.
fn upstream_keys(dir: &Path) -> BTreeMap<String, Value> {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("values.schema.json")).unwrap())
            .unwrap();
    let defs = &schema["$defs"];
    fn walk(defs: &Value, def: &Value, path: &str, out: &mut BTreeMap<String, Value>) {
        match def.get("properties").and_then(Value::as_object) {
            Some(properties) => {
                for (name, property) in properties {
                    let reference = property["$ref"].as_str().expect("each property is a $ref");
                    let target = &defs[reference.trim_start_matches("#/$defs/")];
                    let path = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    walk(defs, target, &path, out);
                }
            }
            None => {
                out.insert(
                    path.to_owned(),
                    def.get("default").cloned().unwrap_or(Value::Null),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(defs, &defs["helm-values"], "", &mut out);
    out
}

fn at<'a>(values: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(values, |v, k| v.get(k))
}

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

#[test]
fn the_all_keys_file_sets_every_csi_driver_key_away_from_its_default() {
    let Some(dir) = upstream_chart() else { return };
    let keys = upstream_keys(dir);
    // The schema and the file must agree with csi-driver's values.yaml, so
    // a walk that found nothing cannot pass.
    assert!(
        keys.len() > 50,
        "{} keys in csi-driver's schema",
        keys.len()
    );
    let upstream_values: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap())
            .unwrap();
    let file = read_yaml(ALL_KEYS);
    for (path, schema_default) in &keys {
        let set = at(&file, path).unwrap_or_else(|| panic!("{ALL_KEYS} does not set {path}"));
        for default in [Some(schema_default), at(&upstream_values, path)]
            .into_iter()
            .flatten()
        {
            assert_ne!(set, default, "{ALL_KEYS}: {path} is csi-driver's default");
        }
    }
}

/// Every object's labels, and every pod template's.
fn all_labels(docs: &[Value]) -> Vec<(String, &serde_json::Map<String, Value>)> {
    let mut out = Vec::new();
    for doc in docs {
        let (kind, _, name) = key(doc);
        let labels = doc["metadata"]["labels"]
            .as_object()
            .unwrap_or_else(|| panic!("{kind} {name} has no labels"));
        out.push((format!("{kind} {name}"), labels));
        if let Some(labels) = doc["spec"]["template"]["metadata"]["labels"].as_object() {
            out.push((format!("{kind} {name} pods"), labels));
        }
    }
    out
}

fn pod_spec(docs: &[Value], kind: &str, name: &str) -> PodSpec {
    let doc = find(docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name}"));
    serde_json::from_value(doc["spec"]["template"]["spec"].clone()).unwrap()
}

fn notes(args: &[&str]) -> Option<String> {
    let mut full = vec!["render", "--notes"];
    full.extend_from_slice(args);
    chart_py_ok(&full)
}

#[test]
fn csi_driver_values_files_install_with_their_meaning() {
    let Some(defaults) = upstream_values_file() else {
        return;
    };
    let app_version = read_yaml("charts/cert-csi/Chart.yaml")["appVersion"]
        .as_str()
        .unwrap()
        .to_owned();

    // csi-driver's own values.yaml, as `helm show values` gives it.
    let Some(docs) = render(&["-f", &defaults]) else {
        return;
    };
    check_all_typed(&docs);
    let pod = pod_spec(&docs, "DaemonSet", NODE);
    // Its image names are composed as csi-driver composes them
    // (imageRegistry/imageNamespace/name), with cert-csi's image for the
    // driver and cert-csi's pinned sidecar tags.
    let images: Vec<&str> = pod
        .containers
        .iter()
        .map(|c| c.image.as_deref().unwrap())
        .collect();
    assert_eq!(
        images,
        [
            "quay.io/jetstack/csi-node-driver-registrar:v2.13.0".to_owned(),
            "quay.io/jetstack/livenessprobe:v2.15.0".to_owned(),
            format!("quay.io/jetstack/cert-csi:{app_version}"),
        ]
    );
    let driver = container(&pod, "cert-csi");
    assert_eq!(flag(driver, "--data-root"), "/tmp/cert-manager-csi-driver");
    assert_eq!(flag(driver, "--driver-name"), "csi.cert-manager.io");
    // And NOTES.txt says what it read differently.
    let text = notes(&["-f", &defaults]).unwrap();
    for said in [
        "image.name cert-manager-csi-driver is csi-driver's image",
        "nodeDriverRegistrarImage._defaultReference",
        "livenessProbeImage._defaultReference",
    ] {
        assert!(text.contains(said), "NOTES.txt lacks {said:?}:\n{text}");
    }

    // Every key, each away from its default.
    let Some((theirs, docs)) = render_both(&["-f", ALL_KEYS], UPSTREAM_RELEASE) else {
        return;
    };
    check_all_typed(&docs);
    let values = read_yaml(ALL_KEYS);

    // Images: exactly what csi-driver renders for the same values.
    let their_pod = pod_spec(&theirs, "DaemonSet", NODE);
    let pod = pod_spec(&docs, "DaemonSet", NODE);
    for (theirs, ours) in [
        ("node-driver-registrar", "node-driver-registrar"),
        ("liveness-probe", "livenessprobe"),
        ("cert-manager-csi-driver", "cert-csi"),
    ] {
        let want = container(&their_pod, theirs);
        let got = container(&pod, ours);
        assert_eq!(got.image, want.image, "{ours}");
        assert_eq!(got.image_pull_policy, want.image_pull_policy, "{ours}");
    }
    // commonLabels on every object and every pod.
    for (what, labels) in all_labels(&docs) {
        assert_eq!(
            labels.get("example.com/team"),
            Some(&json!("platform")),
            "{what}: commonLabels missing"
        );
    }
    let ds = find(&docs, "DaemonSet", NODE).unwrap();
    assert_eq!(
        ds["metadata"]["annotations"]["example.com/rollout"], "careful",
        "daemonSetAnnotations"
    );
    // The pod-level keys, as csi-driver applies them.
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(pod.host_network, their_pod.host_network);
    // Only csi-driver's DaemonSet: the SPIFFE plugin on the host network
    // would take the same ports on every node.
    let with_spiffe = render(&[
        "-f",
        ALL_KEYS,
        "--set-json",
        r#"spiffe={"driver":{"enabled":true,"issuer":{"name":"ca"}}}"#,
    ])
    .unwrap();
    let spiffe_pod = pod_spec(&with_spiffe, "DaemonSet", "cert-csi-spiffe-node");
    assert_eq!(spiffe_pod.host_network, None);
    let spiffe_ds = find(&with_spiffe, "DaemonSet", "cert-csi-spiffe-node").unwrap();
    assert_eq!(
        spiffe_ds["metadata"]["annotations"]["example.com/rollout"],
        "careful"
    );
    assert_eq!(pod.priority_class_name, their_pod.priority_class_name);
    assert_eq!(pod.node_selector, their_pod.node_selector);
    assert_eq!(pod.affinity, their_pod.affinity);
    assert_eq!(pod.tolerations, their_pod.tolerations);
    assert_eq!(pod.image_pull_secrets, their_pod.image_pull_secrets);
    let template = &ds["spec"]["template"]["metadata"];
    assert_eq!(template["labels"]["example.com/tier"], "node", "podLabels");
    assert_eq!(
        template["annotations"]["example.com/owner"], "platform",
        "podAnnotations"
    );
    let driver = container(&pod, "cert-csi");
    assert_eq!(
        driver.resources,
        container(&their_pod, "cert-manager-csi-driver").resources
    );
    // app.*: the driver, its directories and ports, the verbosity.
    assert_eq!(flag(driver, "--driver-name"), "certs.example.com");
    assert_eq!(flag(driver, "--data-root"), "/var/run/certs-example");
    assert_eq!(flag(driver, "--kubelet-root-dir"), "/data/kubelet");
    assert_eq!(flag(driver, "--log-level"), "debug", "app.logLevel 4");
    // app.driver.kubernetesAPIQPS and kubernetesAPIBurst: the same flags,
    // with the same values, as upstream's template passes.
    let their_driver = container(&their_pod, "cert-manager-csi-driver");
    assert_eq!(flag(driver, "--kube-api-qps"), "50");
    assert_eq!(flag(driver, "--kube-api-burst"), "100");
    for name in [
        "--kube-api-qps",
        "--kube-api-burst",
        "--continue-on-not-ready",
    ] {
        assert_eq!(flag(driver, name), flag(their_driver, name), "{name}");
    }
    // app.driver.podReadinessGates: one --pod-readiness-gate each, in order,
    // as upstream passes them; and the node may read pods for them.
    let gates = |c: &Container| -> Vec<String> {
        c.args
            .iter()
            .flatten()
            .filter_map(|a| a.strip_prefix("--pod-readiness-gate="))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        gates(driver),
        ["pod-ip:ipv6", "pod-condition:NetworkAttached=True"]
    );
    assert_eq!(gates(driver), gates(their_driver));
    let node_role: ClusterRole = get(&docs, "ClusterRole", NODE);
    assert!(
        node_role.rules.iter().flatten().any(|r| r.resources.as_deref()
            == Some(&["pods".to_owned()][..])
            && r.verbs == ["get"]),
        "the gates need get on pods: {:?}",
        node_role.rules
    );
    let registrar = container(&pod, "node-driver-registrar");
    assert_eq!(
        flag(registrar, "--kubelet-registration-path"),
        "/data/kubelet/plugins/certs.example.com/csi.sock"
    );
    let ports: BTreeSet<i32> = driver
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(
        ports,
        BTreeSet::from([9899, 9502]),
        "liveness and metrics ports"
    );
    let csidriver = find(&docs, "CSIDriver", "certs.example.com").expect("app.driver.name");
    assert_eq!(
        csidriver["spec"]["requiresRepublish"], true,
        "app.driver.useTokenRequest"
    );
    // openshift.securityContextConstraint: the node plugin may use it.
    let role: ClusterRole = get(&docs, "ClusterRole", NODE);
    let scc = grants(&[rule(
        &["security.openshift.io"],
        &["securitycontextconstraints"],
        &["use"],
        &["cert-csi-privileged"],
    )]);
    assert!(scc.is_subset(&grants(role.rules.as_deref().unwrap())));
    // metrics.enabled=false: no Services, no monitor (as csi-driver then
    // makes no PodMonitor either).
    for kind in ["Service", "PodMonitor", "ServiceMonitor"] {
        assert!(
            !docs
                .iter()
                .any(|d| d["kind"] == kind && d["metadata"]["name"] != "cert-csi-webhook"),
            "{kind} rendered with metrics.enabled=false"
        );
    }
    assert!(find(&theirs, "PodMonitor", NODE).is_none());
    // The keys cert-csi does not implement are named.
    let text = notes(&["-f", ALL_KEYS]).unwrap();
    for key in [
        "nodeDriverRegistrarImage._defaultReference",
        "livenessProbeImage._defaultReference",
        "metrics.enabled=false",
    ] {
        assert!(text.contains(key), "NOTES.txt does not name {key}:\n{text}");
    }
    // Implemented now: not named.
    for key in [
        "app.driver.continueOnNotReady",
        "app.driver.podReadinessGates",
    ] {
        assert!(!text.contains(key), "NOTES.txt names {key}:\n{text}");
    }
    assert!(
        values["app"]["driver"]["continueOnNotReady"] == true,
        "the file sets what NOTES.txt is checked for"
    );
    // A later csi-driver key is accepted and named too; the default
    // render names nothing.
    let text = notes(&["--set-json", r#"app={"driver":{"gateBackoff":"5s"}}"#]).unwrap();
    assert!(text.contains("app.driver.gateBackoff"), "{text}");
    let text = notes(&[]).unwrap();
    assert!(!text.contains("WARNING"), "{text}");
}

/// Metrics on, and no endpointAdditionalProperties: csi-driver v0.15.0
/// renders those at the wrong indentation, which is not valid YAML.
const METRICS_ON: &str =
    r#"metrics={"enabled":true,"podmonitor":{"endpointAdditionalProperties":null}}"#;

#[test]
fn the_podmonitor_is_csi_drivers() {
    let args = ["-f", ALL_KEYS, "--set-json", METRICS_ON];
    let Some((theirs, docs)) = render_both(&args, UPSTREAM_RELEASE) else {
        return;
    };
    check_all_typed(&docs);
    let want = find(&theirs, "PodMonitor", NODE).expect("csi-driver's PodMonitor");
    let got = find(&docs, "PodMonitor", NODE).expect("a PodMonitor of the same name");
    assert_eq!(got["metadata"]["namespace"], want["metadata"]["namespace"]);
    for (key, value) in want["metadata"]["labels"].as_object().unwrap() {
        if key.starts_with("app.kubernetes.io/") || key == "helm.sh/chart" {
            continue; // the chart's own identity
        }
        assert_eq!(&got["metadata"]["labels"][key], value, "label {key}");
    }
    assert_eq!(
        got["metadata"]["annotations"],
        want["metadata"]["annotations"]
    );
    assert_eq!(
        got["spec"]["namespaceSelector"],
        want["spec"]["namespaceSelector"]
    );
    let endpoint = &got["spec"]["podMetricsEndpoints"][0];
    for field in ["path", "interval", "scrapeTimeout", "honorLabels"] {
        assert_eq!(
            endpoint[field], want["spec"]["podMetricsEndpoints"][0][field],
            "{field}"
        );
    }
    // endpointAdditionalProperties goes into the endpoint.
    let with_extra =
        render(&["-f", ALL_KEYS, "--set-json", r#"metrics={"enabled":true}"#]).unwrap();
    check_all_typed(&with_extra);
    let extra = find(&with_extra, "PodMonitor", NODE).unwrap();
    assert_eq!(
        extra["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["targetLabel"],
        "instance"
    );
    assert_eq!(
        extra["spec"]["podMetricsEndpoints"][0]["port"],
        endpoint["port"]
    );
    // It selects the node plugin's pods, on a port they declare.
    let ds: DaemonSet = get(&docs, "DaemonSet", NODE);
    let template = ds.spec.unwrap().template;
    let labels = template.metadata.unwrap().labels.unwrap();
    for (k, v) in got["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            labels.get(k).map(String::as_str),
            v.as_str(),
            "selector {k}"
        );
    }
    let port = endpoint["port"].as_str().unwrap();
    assert!(
        template.spec.unwrap().containers.iter().any(|c| c
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some(port))),
        "no container declares port {port}"
    );
}

// ---------------------------------------------------------------------------
// Immutable fields
// ---------------------------------------------------------------------------

/// A CSIDriver's fields as the API server stores them, defaults filled in
/// (storage/v1 defaulting): what an update compares.
fn csidriver_fields(doc: &Value) -> Value {
    let spec = &doc["spec"];
    let or = |field: &str, default: Value| spec.get(field).cloned().unwrap_or(default);
    json!({
        "attachRequired": or("attachRequired", json!(true)),
        "podInfoOnMount": or("podInfoOnMount", json!(false)),
        "volumeLifecycleModes": or("volumeLifecycleModes", json!(["Persistent"])),
        "storageCapacity": or("storageCapacity", json!(false)),
        "fsGroupPolicy": or("fsGroupPolicy", json!("ReadWriteOnceWithFSType")),
        "seLinuxMount": or("seLinuxMount", json!(false)),
    })
}

/// Checks every object both renders make: the same immutable fields, and a
/// workload selector that still selects its own pods.
fn check_updatable(
    theirs: &[Value],
    ours: &[Value],
    what: &str,
) -> BTreeSet<(String, String, String)> {
    let mine: BTreeMap<_, _> = ours.iter().map(|d| (key(d), d)).collect();
    let mut shared = BTreeSet::new();
    for old in theirs {
        let k = key(old);
        let Some(new) = mine.get(&k) else { continue };
        shared.insert(k.clone());
        let name = format!("{what}: {} {}/{}", k.0, k.1, k.2);
        assert_eq!(old["apiVersion"], new["apiVersion"], "{name}");
        match k.0.as_str() {
            "CSIDriver" => assert_eq!(csidriver_fields(old), csidriver_fields(new), "{name}"),
            "DaemonSet" | "Deployment" | "StatefulSet" => {
                assert_eq!(old["spec"]["selector"], new["spec"]["selector"], "{name}");
                let labels = &new["spec"]["template"]["metadata"]["labels"];
                for (label, value) in new["spec"]["selector"]["matchLabels"].as_object().unwrap() {
                    assert_eq!(&labels[label], value, "{name}: template label {label}");
                }
            }
            "ClusterRoleBinding" | "RoleBinding" => {
                assert_eq!(old["roleRef"], new["roleRef"], "{name}")
            }
            "Service" => {
                for field in ["clusterIP", "type"] {
                    assert_eq!(old["spec"][field], new["spec"][field], "{name}: {field}");
                }
            }
            _ => {}
        }
    }
    shared
}

#[test]
fn objects_both_charts_make_have_csi_drivers_immutable_fields() {
    let Some(defaults) = upstream_values_file() else {
        return;
    };
    let cases: [(&str, Vec<&str>); 4] = [
        ("no values", vec![]),
        ("csi-driver's values.yaml", vec!["-f", &defaults]),
        ("every key", vec!["-f", ALL_KEYS]),
        (
            "every key, token requests off, metrics on",
            vec![
                "-f",
                ALL_KEYS,
                "--set-json",
                r#"app={"driver":{"useTokenRequest":false}}"#,
                "--set-json",
                METRICS_ON,
            ],
        ),
    ];
    for release in [UPSTREAM_RELEASE, "certs"] {
        for (what, args) in &cases {
            let what = format!("{what}, release {release}");
            let Some((theirs, ours)) = render_both(args, release) else {
                return;
            };
            let shared = check_updatable(&theirs, &ours, &what);
            // The node plugin's objects are csi-driver's, updated in place:
            // an upgrade keeps them and replaces the pods node by node.
            // Nothing csi-driver made is left for helm to delete.
            let all: BTreeSet<_> = theirs.iter().map(key).collect();
            assert_eq!(shared, all, "{what}: csi-driver objects cert-csi lacks");
            let kinds: BTreeSet<&str> = shared.iter().map(|k| k.0.as_str()).collect();
            for kind in [
                "DaemonSet",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "CSIDriver",
            ] {
                assert!(kinds.contains(kind), "{what}: no shared {kind}");
            }
        }
    }
}

#[test]
fn the_comparison_catches_a_changed_immutable_field() {
    let Some((theirs, ours)) = render_both(&[], UPSTREAM_RELEASE) else {
        return;
    };
    for (kind, pointer, value) in [
        ("CSIDriver", "/spec/attachRequired", json!(false)),
        (
            "CSIDriver",
            "/spec/volumeLifecycleModes",
            json!(["Ephemeral", "Persistent"]),
        ),
        (
            "DaemonSet",
            "/spec/selector/matchLabels/app",
            json!("cert-csi"),
        ),
        (
            "ClusterRoleBinding",
            "/roleRef/name",
            json!("cert-csi-node"),
        ),
    ] {
        let mut changed = ours.clone();
        let doc = changed
            .iter_mut()
            .find(|d| d["kind"] == kind && (kind == "CSIDriver" || d["metadata"]["name"] == NODE))
            .unwrap();
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        doc.pointer_mut(parent).unwrap()[field] = value;
        let caught = std::panic::catch_unwind(|| check_updatable(&theirs, &changed, "mutated"));
        assert!(caught.is_err(), "a changed {kind} {pointer} went unnoticed");
    }
}

// ---------------------------------------------------------------------------
// On the real API server
// ---------------------------------------------------------------------------

/// kubectl with the cluster's admin kubeconfig; panics on failure unless
/// `may_fail`. Returns (success, stdout, stdout and stderr).
fn kubectl(
    cluster: &test_kit::RealCluster,
    args: &[&str],
    may_fail: bool,
) -> (bool, String, String) {
    let out = cluster.kubectl().args(args).output().expect("run kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        may_fail || out.status.success(),
        "kubectl {} failed:\n{text}",
        args.join(" ")
    );
    (out.status.success(), stdout, text)
}

/// (kind/namespace/name → uid) of the objects in `file`, as they are live.
fn live_uids(cluster: &test_kit::RealCluster, file: &Path) -> BTreeMap<String, String> {
    let (_, stdout, _) = kubectl(
        cluster,
        &["get", "-f", file.to_str().unwrap(), "-o", "json"],
        false,
    );
    let list: Value = serde_json::from_str(&stdout).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let (kind, ns, name) = key(item);
            (
                format!("{kind}/{ns}/{name}"),
                item["metadata"]["uid"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn render_text(args: &[&str], chart: Option<&str>) -> Option<String> {
    let mut full = vec![
        "render",
        "--name",
        UPSTREAM_RELEASE,
        "--namespace",
        UPSTREAM_NAMESPACE,
    ];
    full.extend_from_slice(args);
    if let Some(chart) = chart {
        full.extend_from_slice(&["--chart", chart]);
    }
    chart_py_ok(&full)
}

#[test]
fn helm_upgrade_from_csi_driver_updates_every_object_in_place_on_a_real_api_server() {
    if test_kit::Backend::from_env() != test_kit::Backend::Real {
        eprintln!(
            "skipping: the sandbox does not enforce immutable fields; run with CERT_CSI_TEST_API=real (hack/test does)"
        );
        return;
    }
    let Some(chart) = upstream_chart() else {
        return;
    };
    let chart = chart.display().to_string();
    let Some(defaults) = upstream_values_file() else {
        return;
    };
    // chart_py skips (None) only when the engine is missing outside CI.
    if chart_py(&["lint"]).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = test_kit::RealCluster::up(&dir.path().join("kube"));
    kubectl(
        &cluster,
        &["create", "namespace", UPSTREAM_NAMESPACE],
        false,
    );

    // Helm 3 upgrades with a three-way merge of the old manifest, the new
    // one and the live object (what client-side `kubectl apply` does with
    // its last-applied annotation); Helm 4 can apply server-side. Both,
    // each with a values file a csi-driver user may have.
    let passes: [(&str, &[&str], &[&str]); 2] = [
        (
            "client-side apply, csi-driver's values.yaml",
            &["-f", &defaults],
            &[],
        ),
        (
            "server-side apply, every key",
            &["-f", ALL_KEYS],
            &[
                "--server-side",
                "--field-manager",
                "helm",
                "--force-conflicts",
            ],
        ),
    ];
    for (what, values, apply_flags) in passes {
        let upstream = render_text(values, Some(&chart)).unwrap();
        let ours = render_text(values, None).unwrap();
        let up_file = dir.path().join("csi-driver.yaml");
        let our_file = dir.path().join("cert-csi.yaml");
        let hooks_file = dir.path().join("cert-csi-hooks.yaml");
        std::fs::write(&up_file, &upstream).unwrap();
        // Helm applies the release's objects, then its post-upgrade hooks
        // (the default CertificateRequestPolicies, whose CRD the release
        // itself installs).
        let (hooks, release): (Vec<Value>, Vec<Value>) = yaml_documents(&ours)
            .into_iter()
            .partition(|d| d["metadata"]["annotations"]["helm.sh/hook"].is_string());
        let as_file = |docs: &[Value]| -> String {
            docs.iter()
                .map(|d| serde_json::to_string(d).unwrap())
                .collect::<Vec<_>>()
                .join("\n---\n")
        };
        std::fs::write(&our_file, as_file(&release)).unwrap();
        std::fs::write(&hooks_file, as_file(&hooks)).unwrap();
        assert!(!hooks.is_empty(), "{what}: the render has no hooks");

        let apply = |file: &Path, may_fail: bool| {
            let mut args = vec!["apply", "-f", file.to_str().unwrap()];
            args.extend_from_slice(apply_flags);
            kubectl(&cluster, &args, may_fail)
        };
        apply(&up_file, false);
        let before = live_uids(&cluster, &up_file);
        assert!(before.len() >= 5, "{what}: {before:?}");

        let (ok, _, output) = apply(&our_file, true);
        assert!(
            ok,
            "{what}: cert-csi's manifests do not apply over csi-driver's:\n{output}"
        );
        // The same objects, updated: none was replaced.
        assert_eq!(live_uids(&cluster, &up_file), before, "{what}");
        // Then the hooks, once the CRDs the release brought are served.
        kubectl(
            &cluster,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/certificaterequestpolicies.policy.cert-manager.io",
            ],
            false,
        );
        let (ok, _, output) = apply(&hooks_file, true);
        assert!(ok, "{what}: the post-upgrade hooks do not apply:\n{output}");
        assert_eq!(
            live_uids(&cluster, &hooks_file).len(),
            hooks.len(),
            "{what}"
        );
        let (_, text, _) = kubectl(
            &cluster,
            &[
                "get",
                "daemonset",
                "-n",
                UPSTREAM_NAMESPACE,
                NODE,
                "-o",
                "json",
            ],
            false,
        );
        let ds: Value = serde_json::from_str(&text).unwrap();
        let containers: Vec<&str> = ds["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            containers,
            ["node-driver-registrar", "livenessprobe", "cert-csi"],
            "{what}: the DaemonSet now runs cert-csi"
        );

        // The check has teeth: the immutable fields cert-csi used to set
        // differently are refused by this server.
        let docs = yaml_documents(&ours);
        for (kind, pointer, value) in [
            ("CSIDriver", "/spec/attachRequired", json!(false)),
            (
                "DaemonSet",
                "/spec/selector/matchLabels/app",
                json!("cert-csi"),
            ),
        ] {
            let mut doc = docs
                .iter()
                .find(|d| {
                    d["kind"] == kind && (kind == "CSIDriver" || d["metadata"]["name"] == NODE)
                })
                .unwrap()
                .clone();
            let (parent, field) = pointer.rsplit_once('/').unwrap();
            doc.pointer_mut(parent).unwrap()[field] = value.clone();
            if kind == "DaemonSet" {
                doc["spec"]["template"]["metadata"]["labels"]["app"] = value;
            }
            let file = dir.path().join("changed.json");
            std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
            let (ok, _, output) = apply(&file, true);
            assert!(
                !ok && output.contains("immutable"),
                "{what}: the server accepted a changed {kind} {pointer}:\n{output}"
            );
        }

        for file in [&hooks_file, &our_file] {
            kubectl(
                &cluster,
                &["delete", "--wait", "-f", file.to_str().unwrap()],
                false,
            );
        }
    }
}

// ---------------------------------------------------------------------------
// csi-driver-spiffe's value names
// ---------------------------------------------------------------------------

#[test]
fn csi_driver_spiffe_value_names_set_the_spiffe_driver_and_approver() {
    let spiffe = r#"spiffe={"driver":{"enabled":true,"volumeFileName":{"cert":"svid.pem","key":"svid_key.pem","ca":"bundle.pem"},"sourceCABundle":"/etc/spiffe-ca/ca.pem","volumes":[{"name":"spiffe-ca","configMap":{"name":"spiffe-ca"}}],"volumeMounts":[{"name":"spiffe-ca","mountPath":"/etc/spiffe-ca","readOnly":true}]},"approver":{"enabled":true,"issuer":"clusterissuers.cert-manager.io/spiffe-ca"}}"#;
    let app = r#"app={"trustDomain":"example.org","issuer":{"name":"spiffe-ca","kind":"Issuer","group":"example.com"},"certificateRequestDuration":"30m","extraCertificateRequestAnnotations":"team=payments,cost-center=42"}"#;
    let Some(docs) = render(&["--set-json", spiffe, "--set-json", app]) else {
        return;
    };
    check_all_typed(&docs);
    let node = pod_spec(&docs, "DaemonSet", "cert-csi-spiffe-node");
    let driver = container(&node, "cert-csi");
    for (name, value) in [
        ("--spiffe-trust-domain", "example.org"),
        ("--spiffe-duration", "30m"),
        ("--spiffe-issuer-name", "spiffe-ca"),
        ("--spiffe-issuer-kind", "Issuer"),
        ("--spiffe-issuer-group", "example.com"),
        // csi-driver-spiffe's own flags, from its value names.
        ("--file-name-certificate", "svid.pem"),
        ("--file-name-key", "svid_key.pem"),
        ("--file-name-ca", "bundle.pem"),
        (
            "--extra-certificate-request-annotations",
            "team=payments,cost-center=42",
        ),
        ("--source-ca-bundle", "/etc/spiffe-ca/ca.pem"),
    ] {
        assert_eq!(flag(driver, name), value, "node {name}");
    }
    // The bundle's file reaches the container through the extra volume.
    assert!(
        driver
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "spiffe-ca" && m.mount_path == "/etc/spiffe-ca"),
        "{:?}",
        driver.volume_mounts
    );
    assert!(node.volumes.iter().flatten().any(|v| v.name == "spiffe-ca"));
    let controller = pod_spec(&docs, "Deployment", "cert-csi-controller");
    let approver = container(&controller, "cert-csi");
    assert_eq!(flag(approver, "--spiffe-trust-domain"), "example.org");
    assert_eq!(flag(approver, "--spiffe-duration"), "30m");

    // Both names saying the same is fine; saying different things fails,
    // naming both.
    let same = r#"spiffe={"driver":{"enabled":true,"trustDomain":"example.org","issuer":{"name":"spiffe-ca"}}}"#;
    let Some(docs) = render(&[
        "--set-json",
        same,
        "--set-json",
        r#"app={"trustDomain":"example.org"}"#,
    ]) else {
        return;
    };
    let node = pod_spec(&docs, "DaemonSet", "cert-csi-spiffe-node");
    assert_eq!(
        flag(container(&node, "cert-csi"), "--spiffe-trust-domain"),
        "example.org"
    );
    for (set, alias, key) in [
        (
            r#"spiffe={"driver":{"enabled":true,"trustDomain":"other.org","issuer":{"name":"ca"}}}"#,
            r#"app={"trustDomain":"example.org"}"#,
            "spiffe.driver.trustDomain",
        ),
        (
            r#"spiffe={"driver":{"enabled":true,"duration":"2h","issuer":{"name":"ca"}}}"#,
            r#"app={"certificateRequestDuration":"30m"}"#,
            "spiffe.driver.duration",
        ),
        (
            r#"spiffe={"driver":{"enabled":true,"issuer":{"name":"ca"}}}"#,
            r#"app={"issuer":{"name":"other-ca"}}"#,
            "spiffe.driver.issuer.name",
        ),
    ] {
        let Some(out) = chart_py(&["render", "--set-json", set, "--set-json", alias]) else {
            return;
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{alias} beside {set}: {stderr}");
        assert!(
            stderr.contains(key) && stderr.contains("csi-driver-spiffe's name"),
            "{stderr}"
        );
    }
}

#[test]
fn csi_driver_spiffe_runtime_issuance_configmap_sets_the_flags_and_a_role_on_it() {
    // csi-driver-spiffe's value name, without any issuer: the ConfigMap
    // will name it.
    let Some(docs) = render(&[
        "--set-json",
        r#"spiffe={"driver":{"enabled":true}}"#,
        "--set-json",
        r#"app={"runtimeIssuanceConfigMap":"spiffe-issuance"}"#,
    ]) else {
        return;
    };
    check_all_typed(&docs);
    let node = pod_spec(&docs, "DaemonSet", "cert-csi-spiffe-node");
    let driver = container(&node, "cert-csi");
    assert_eq!(
        flag(driver, "--runtime-issuance-config-map-name"),
        "spiffe-issuance"
    );
    assert_eq!(
        flag(driver, "--runtime-issuance-config-map-namespace"),
        "cert-csi"
    );
    assert!(
        !driver
            .args
            .iter()
            .flatten()
            .any(|a| a.starts_with("--spiffe-issuer-name")),
        "no issuer name flag without an issuer"
    );
    let role: k8s_openapi::api::rbac::v1::Role =
        get(&docs, "Role", "cert-csi-spiffe-node-runtime-issuance");
    assert_eq!(
        grants(role.rules.as_deref().unwrap()),
        grants(&[rule(
            &[""],
            &["configmaps"],
            &["get", "list", "watch"],
            &["spiffe-issuance"]
        )])
    );
    // Neither an issuer nor the ConfigMap: refused, naming both.
    let out = chart_py(&[
        "render",
        "--set-json",
        r#"spiffe={"driver":{"enabled":true}}"#,
    ])
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("runtimeIssuanceConfigMap"),
        "{stderr}"
    );
}

#[test]
fn csi_driver_spiffe_approver_signer_name_is_the_spiffe_approvers_issuer() {
    let Some(docs) = render(&[
        "--set-json",
        r#"spiffe={"approver":{"enabled":true}}"#,
        "--set-json",
        r#"app={"approver":{"signerName":"clusterissuers.cert-manager.io/spiffe-ca"}}"#,
    ]) else {
        return;
    };
    let controller = pod_spec(&docs, "Deployment", "cert-csi-controller");
    assert_eq!(
        flag(container(&controller, "cert-csi"), "--spiffe-issuer"),
        "clusterissuers.cert-manager.io/spiffe-ca"
    );
    // The approve grant names it too, as csi-driver-spiffe's role does.
    let role: k8s_openapi::api::rbac::v1::ClusterRole =
        get(&docs, "ClusterRole", "cert-csi-controller");
    assert!(
        role.rules.iter().flatten().any(|r| r
            .resource_names
            .iter()
            .flatten()
            .any(|n| n == "clusterissuers.cert-manager.io/spiffe-ca")),
        "{:?}",
        role.rules
    );
}
