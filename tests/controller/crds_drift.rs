//! The CRDs: the committed copy matches the binary, and the schemas are ones
//! a real API server accepts and that keep every field cert-csi uses.
//!
//! The tests at the end judge with a real control plane (`hack/kube`,
//! kube-apiserver v1.37): the CRDs of `deploy/crds` and of the chart are
//! applied and become Established, every manifest in `deploy/` and every
//! chart render passes a server-side dry run, and objects of every kind,
//! fully populated from the Rust types, come back from the server unpruned.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use cert_csi::api::{
    CaIssuer, Certificate, CertificateAdditionalOutputFormat, CertificateCondition,
    CertificateKeystores, CertificatePrivateKey, CertificateRequest, CertificateRequestCondition,
    CertificateRequestSpec, CertificateRequestStatus, CertificateSecretTemplate, CertificateSpec,
    CertificateStatus, ClusterIssuer, ConditionStatus, Issuer, IssuerCondition, IssuerRef,
    IssuerSpec, IssuerStatus, JksKeystore, NameConstraintItem, NameConstraints, OtherName,
    PemBytes, Pkcs12Keystore, SecretKeySelector, SelfSignedIssuer, X509Subject, crds, crds_yaml,
};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::storage::v1::CSIDriver;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps,
    JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};
use serde_json::{Value, json};

const COMMITTED: &str = "deploy/crds/cert-manager.io.yaml";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_crds_match_the_binary() {
    let output = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .arg("crds")
        .output()
        .expect("run cert-csi crds");
    assert!(
        output.status.success(),
        "cert-csi crds failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8(output.stdout).unwrap();
    let committed = std::fs::read_to_string(repo().join(COMMITTED)).unwrap_or_default();
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
            "{COMMITTED} is out of date with the Rust types in src/api ({line}).\n\
             Regenerate it with:\n    cargo run -q -- crds > {COMMITTED}"
        );
    }
}

/// The policy CRD (`cert-csi crds --policy`) is committed beside the others.
#[test]
fn committed_policy_crd_matches_the_binary() {
    const POLICY: &str = "deploy/crds/policy.cert-manager.io.yaml";
    let output = Command::new(env!("CARGO_BIN_EXE_cert-csi"))
        .args(["crds", "--policy"])
        .output()
        .expect("run cert-csi crds --policy");
    assert!(output.status.success(), "{output:?}");
    let generated = String::from_utf8(output.stdout).unwrap();
    let committed = std::fs::read_to_string(repo().join(POLICY)).unwrap_or_default();
    assert!(
        generated == committed,
        "{POLICY} is out of date with src/api/policy.rs; regenerate it with:\n    \
         cargo run -q -- crds --policy > {POLICY}"
    );
    let crd: CustomResourceDefinition =
        serde_yaml_ng::from_str(generated.trim_start_matches("---\n")).unwrap();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("certificaterequestpolicies.policy.cert-manager.io")
    );
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(version(&crd).name, "v1alpha1");
}

#[test]
fn output_is_deterministic_and_parses() {
    let first = crds_yaml().unwrap();
    assert_eq!(first, crds_yaml().unwrap());
    let docs: Vec<CustomResourceDefinition> = first
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect();
    assert_eq!(docs, crds());
}

fn by_kind(kind: &str) -> CustomResourceDefinition {
    crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap()
}

fn version(crd: &CustomResourceDefinition) -> &CustomResourceDefinitionVersion {
    assert_eq!(crd.spec.versions.len(), 1);
    &crd.spec.versions[0]
}

fn root_schema(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    version(crd)
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap()
}

#[test]
fn names_scope_and_order() {
    let all = crds();
    let names: Vec<_> = all
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "certificaterequests.cert-manager.io",
            "certificates.cert-manager.io",
            "issuers.cert-manager.io",
            "clusterissuers.cert-manager.io"
        ]
    );
    let expected: [(&str, &[&str], &str, &str); 4] = [
        (
            "CertificateRequest",
            &["cr", "crs"],
            "Namespaced",
            "certificaterequests",
        ),
        (
            "Certificate",
            &["cert", "certs"],
            "Namespaced",
            "certificates",
        ),
        ("Issuer", &[], "Namespaced", "issuers"),
        ("ClusterIssuer", &["ciss"], "Cluster", "clusterissuers"),
    ];
    for (kind, short, scope, plural) in expected {
        let crd = by_kind(kind);
        assert_eq!(crd.spec.group, "cert-manager.io");
        assert_eq!(crd.spec.scope, scope, "{kind}");
        assert_eq!(crd.spec.names.plural, plural, "{kind}");
        assert_eq!(
            crd.spec.names.short_names.clone().unwrap_or_default(),
            short,
            "{kind}"
        );
        assert_eq!(
            crd.spec.names.categories.clone().unwrap(),
            ["cert-manager"],
            "{kind}"
        );
        let v = version(&crd);
        assert_eq!(
            (v.name.as_str(), v.served, v.storage),
            ("v1", true, true),
            "{kind}"
        );
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind}: status subresource"
        );
    }
}

#[test]
fn printer_columns() {
    let ready = r#".status.conditions[?(@.type=="Ready")].status"#;
    let expected: [(&str, &[(&str, &str)]); 4] = [
        (
            "CertificateRequest",
            &[
                (
                    "Approved",
                    r#".status.conditions[?(@.type=="Approved")].status"#,
                ),
                (
                    "Denied",
                    r#".status.conditions[?(@.type=="Denied")].status"#,
                ),
                ("Ready", ready),
                ("Issuer", ".spec.issuerRef.name"),
                ("Requester", ".spec.username"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
        (
            "Certificate",
            &[
                ("Ready", ready),
                ("Secret", ".spec.secretName"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
        (
            "Issuer",
            &[("Ready", ready), ("Age", ".metadata.creationTimestamp")],
        ),
        (
            "ClusterIssuer",
            &[("Ready", ready), ("Age", ".metadata.creationTimestamp")],
        ),
    ];
    for (kind, columns) in expected {
        let crd = by_kind(kind);
        let have = version(&crd).additional_printer_columns.clone().unwrap();
        // Columns kubectl shows by default (priority 0), in order.
        let default: Vec<_> = have
            .iter()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(default, columns, "{kind}");
        let age = have.iter().find(|c| c.name == "Age").unwrap();
        assert_eq!(age.type_, "date", "{kind}");
    }
}

/// Walks every schema node and checks the rules of a structural schema
/// (Kubernetes "Specifying a structural schema"): every node has a type unless
/// it preserves unknown fields; no `$ref`; every object either lists its
/// properties, has additionalProperties, or preserves unknown fields.
fn check_structural(path: &str, schema: &JSONSchemaProps, problems: &mut Vec<String>) {
    let preserve = schema.x_kubernetes_preserve_unknown_fields == Some(true);
    let int_or_string = schema.x_kubernetes_int_or_string == Some(true);
    if schema.type_.is_none() && !preserve && !int_or_string {
        problems.push(format!("{path}: no type"));
    }
    if schema.ref_path.is_some() {
        problems.push(format!("{path}: $ref is not allowed"));
    }
    if schema.properties.is_some() && schema.additional_properties.is_some() {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    for (name, list) in [
        ("anyOf", &schema.any_of),
        ("oneOf", &schema.one_of),
        ("allOf", &schema.all_of),
    ] {
        for (i, sub) in list.iter().flatten().enumerate() {
            // Inside logical junctors, types and descriptions are forbidden.
            if sub.type_.is_some() || sub.description.is_some() {
                problems.push(format!(
                    "{path}/{name}/{i}: type or description inside {name}"
                ));
            }
        }
    }
    match schema.type_.as_deref() {
        Some("object") => {
            let has_shape = schema.properties.is_some() || schema.additional_properties.is_some();
            if !has_shape && !preserve && path != "/metadata" {
                problems.push(format!(
                    "{path}: object without properties would be pruned empty"
                ));
            }
        }
        Some("array") if schema.items.is_none() => {
            problems.push(format!("{path}: array without items"))
        }
        _ => {}
    }
    for (name, sub) in schema.properties.iter().flatten() {
        check_structural(&format!("{path}/{name}"), sub, problems);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(sub)) = &schema.additional_properties {
        check_structural(&format!("{path}/*"), sub, problems);
    }
    match &schema.items {
        Some(JSONSchemaPropsOrArray::Schema(sub)) => {
            check_structural(&format!("{path}[]"), sub, problems)
        }
        Some(JSONSchemaPropsOrArray::Schemas(_)) => {
            problems.push(format!("{path}: tuple items are not allowed"))
        }
        None => {}
    }
}

#[test]
fn schemas_are_structural() {
    for crd in crds() {
        let mut problems = Vec::new();
        let root = root_schema(&crd);
        assert_eq!(root.type_.as_deref(), Some("object"));
        // The API server owns metadata's schema and refuses a CRD whose root
        // metadata says more than its type (a description included).
        assert_eq!(
            root.properties.as_ref().unwrap()["metadata"],
            JSONSchemaProps {
                type_: Some("object".to_owned()),
                ..Default::default()
            },
            "{}: metadata",
            crd.spec.names.kind
        );
        check_structural("", root, &mut problems);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn raw_issuer_blocks_preserve_unknown_fields() {
    for kind in ["Issuer", "ClusterIssuer"] {
        let crd = by_kind(kind);
        let props = root_schema(&crd).properties.as_ref().unwrap();
        let spec = props["spec"].properties.as_ref().unwrap();
        let status = props["status"].properties.as_ref().unwrap();
        for (where_, block) in [
            ("spec.acme", &spec["acme"]),
            ("spec.vault", &spec["vault"]),
            ("spec.venafi", &spec["venafi"]),
            ("status.acme", &status["acme"]),
        ] {
            assert_eq!(block.type_.as_deref(), Some("object"), "{kind} {where_}");
            assert_eq!(
                block.x_kubernetes_preserve_unknown_fields,
                Some(true),
                "{kind} {where_}"
            );
        }
        // The modelled types do not preserve unknown fields: they are typed.
        assert_eq!(spec["ca"].x_kubernetes_preserve_unknown_fields, None);
        assert_eq!(spec["ca"].required.clone().unwrap(), ["secretName"]);
        assert!(
            spec["ca"]
                .properties
                .as_ref()
                .unwrap()
                .contains_key("issuingCertificateURLs")
        );
    }
}

/// Removes what an API server would prune with this schema and reports
/// values whose type does not match, so a fixture that passes was both kept
/// whole and accepted.
fn prune_and_check(
    path: &str,
    schema: &JSONSchemaProps,
    value: &mut Value,
    problems: &mut Vec<String>,
) {
    if value.is_null() {
        if schema.nullable != Some(true) {
            problems.push(format!("{path}: null where not nullable"));
        }
        return;
    }
    let type_ok = match schema.type_.as_deref() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        problems.push(format!("{path}: {value} is not of type {:?}", schema.type_));
        return;
    }
    if let Some(allowed) = &schema.enum_
        && !allowed.iter().any(|a| a.0 == *value)
    {
        problems.push(format!("{path}: {value} is not one of the enum values"));
    }
    if schema.format.as_deref() == Some("date-time")
        && value
            .as_str()
            .is_some_and(|s| s.parse::<jiff::Timestamp>().is_err())
    {
        problems.push(format!("{path}: {value} is not an RFC 3339 time"));
    }
    match value {
        Value::Object(map) => {
            for required in schema.required.iter().flatten() {
                if !map.contains_key(required) {
                    problems.push(format!("{path}/{required}: required but missing"));
                }
            }
            let preserve = schema.x_kubernetes_preserve_unknown_fields == Some(true);
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child = format!("{path}/{key}");
                if let Some(sub) = schema.properties.as_ref().and_then(|p| p.get(&key)) {
                    // The API server validates metadata by its own rules.
                    if child != "/metadata" {
                        prune_and_check(&child, sub, map.get_mut(&key).unwrap(), problems);
                    }
                } else if let Some(JSONSchemaPropsOrBool::Schema(sub)) =
                    &schema.additional_properties
                {
                    prune_and_check(&child, sub, map.get_mut(&key).unwrap(), problems);
                } else if !preserve {
                    map.remove(&key);
                }
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(sub)) = &schema.items {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_and_check(&format!("{path}[{i}]"), sub, item, problems);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn fixtures_survive_pruning_and_validate() {
    let dir = repo().join("tests/fixtures/cert-manager");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let original: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let crd = by_kind(original["kind"].as_str().unwrap());
        let mut pruned = original.clone();
        let mut problems = Vec::new();
        prune_and_check("", root_schema(&crd), &mut pruned, &mut problems);
        assert!(problems.is_empty(), "{}: {problems:#?}", path.display());
        assert_eq!(
            pruned,
            original,
            "{}: the schema prunes fields",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 4);
}

/// The pruning check above must be able to fail.
#[test]
fn pruning_check_detects_undeclared_and_mistyped_fields() {
    let crd = by_kind("Certificate");
    let mut value = serde_json::json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "x"},
        "spec": {"secretName": "x", "issuerRef": {"name": "ca"}, "undeclared": 1, "duration": 5},
    });
    let mut problems = Vec::new();
    prune_and_check("", root_schema(&crd), &mut value, &mut problems);
    assert!(value["spec"].get("undeclared").is_none());
    assert_eq!(
        problems,
        ["/spec/duration: 5 is not of type Some(\"string\")"]
    );
}

// ---------------------------------------------------------------------------
// Judged by a real API server
// ---------------------------------------------------------------------------

/// The chart's Helm engine, which hack/test installs.
const CHART_SDK: &str = "helm-python-sdk==0.2.2";
const DEPLOY: &str = "deploy/cert-csi.yaml";
/// The chart's hooks (its default CertificateRequestPolicies), applied after
/// DEPLOY once its CRDs are served.
const DEPLOY_POLICIES: &str = "deploy/cert-csi-policies.yaml";
const CUSTOM_VALUES: &str = "tests/chart/values-custom.yaml";
/// The field manager of this file's own server-side applies.
const MANAGER: &str = "cert-csi-crds-drift";

/// Warnings the real server may give about the manifests, each with the
/// reason it is accepted. Any other warning fails the test.
const ACCEPTED_WARNINGS: &[(&str, &str)] = &[(
    "spec.serviceAccountTokenInSecrets is unset",
    "a CSIDriver with tokenRequests (app.driver.useTokenRequest, the SPIFFE \
     driver): cert-csi reads the token from the volume context and keeps it \
     out of logs and state (SECRET_CONTEXT_KEYS), not from NodePublish's \
     secrets, so true would break it; writing false needs CSIDriverSpec's \
     field, which k8s-openapi has from its v1_35 types on",
)];

/// A real control plane in a directory of its own. The cluster is the first
/// field, so it is torn down (hack/kube down) before the directory goes.
struct Real {
    cluster: test_kit::RealCluster,
    _dir: tempfile::TempDir,
}

impl Real {
    /// Panics, naming the fix, when the tools are not built: a test that
    /// needs the real server must not pass without one.
    fn up() -> Real {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = test_kit::RealCluster::up(&dir.path().join("kube"));
        Real { cluster, _dir: dir }
    }

    async fn client(&self) -> Client {
        self.cluster.client().await
    }

    /// kubectl with `stdin` piped in; its output whatever the exit status.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.cluster.kubectl();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("run kubectl (hack/build-tools builds it into .tools/bin)");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .expect("write kubectl's stdin");
        }
        child.wait_with_output().expect("kubectl's output")
    }

    /// kubectl that must succeed; its stdout.
    fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
    }

    /// `kubectl apply --server-side --validate=strict -f -` of a YAML
    /// stream plus `extra` flags (`--dry-run=server`, `-n NS`). Strict
    /// validation makes a field the server does not know an error instead
    /// of a field silently dropped. Returns the server's warnings.
    fn apply(&self, what: &str, yaml: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["apply", "--server-side", "--validate=strict", "-f", "-"];
        args.extend_from_slice(extra);
        let out = self.kubectl(&args, Some(yaml));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "the real API server refused {what} (kubectl {}):\n{stderr}",
            args.join(" ")
        );
        stderr
            .lines()
            .filter_map(|l| l.strip_prefix("Warning: "))
            .map(str::to_owned)
            .collect()
    }

    /// `kubectl wait --for condition=Established` on every CRD named.
    fn wait_established(&self, names: &[String]) {
        let crds: Vec<String> = names.iter().map(|n| format!("crd/{n}")).collect();
        let mut args = vec!["wait", "--for", "condition=Established", "--timeout=60s"];
        args.extend(crds.iter().map(String::as_str));
        self.kubectl_ok(&args, None);
    }
}

fn assert_no_unexpected_warnings(what: &str, warnings: &[String]) {
    let unexpected: Vec<&String> = warnings
        .iter()
        .filter(|w| !ACCEPTED_WARNINGS.iter().any(|(known, _)| w.contains(known)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{what}: the real API server warns:\n{unexpected:#?}"
    );
}

/// `python3 hack/chart.py render ARGS`: the chart through the real Helm v4
/// engine. A missing engine fails the test with the way to install it.
fn render_chart(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(repo().join("hack/chart.py"))
        .arg("render")
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 hack/chart.py: {e}"));
    let hint = if out.status.code() == Some(3) {
        format!("\nhack/test installs the Helm engine; by hand: pip install {CHART_SDK}")
    } else {
        String::new()
    };
    assert!(
        out.status.success(),
        "hack/chart.py render {} failed ({}):\n{}{hint}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).expect("hack/chart.py prints UTF-8")
}

/// A csi-driver values file using every key of csi-driver's chart.
const CSI_DRIVER_VALUES: &str = "tests/chart/values-csi-driver-all.yaml";

/// The chart renders the server judges: default values, tests/chart.rs's
/// custom values, csi-driver's every key, and every remaining switch on (the SPIFFE driver in
/// node-account mode with a trust bundle Secret in another namespace, the
/// webhook and the SPIFFE approver).
fn chart_renders() -> Vec<(String, String)> {
    let everything = [
        "--set-json",
        "spiffe.driver.enabled=true",
        "--set-json",
        r#"spiffe.driver.issuer.name="spiffe-ca""#,
        "--set-json",
        r#"spiffe.driver.requestMode="node-account""#,
        "--set-json",
        r#"trustBundle.secret="platform/roots:bundle.pem""#,
        "--set-json",
        "webhook.enabled=true",
        "--set-json",
        r#"spiffe.approver={"enabled":true,"issuer":"clusterissuers.cert-manager.io/spiffe-ca"}"#,
    ];
    vec![
        ("the chart (default values)".to_owned(), render_chart(&[])),
        (
            format!("the chart (-f {CUSTOM_VALUES})"),
            render_chart(&["-f", CUSTOM_VALUES]),
        ),
        (
            "the chart (SPIFFE driver, trust bundle, webhook, SPIFFE approver)".to_owned(),
            render_chart(&everything),
        ),
        // Every key of csi-driver's chart away from its default.
        (
            format!("the chart (-f {CSI_DRIVER_VALUES})"),
            render_chart(&["-f", CSI_DRIVER_VALUES]),
        ),
    ]
}

/// Every non-empty document of a YAML stream.
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("the YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_stream(docs: &[&Value]) -> String {
    docs.iter()
        .map(|d| format!("---\n{}", serde_yaml_ng::to_string(d).unwrap()))
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `.yaml` files directly in `dir`, sorted, as repository paths.
fn yaml_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| format!("{dir}/{}", p.file_name().unwrap().to_str().unwrap()))
        .collect();
    files.sort();
    files
}

fn crd_names() -> Vec<String> {
    crds()
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect()
}

/// Creates a namespace for real (an existing one is fine) with `labels`,
/// and its `default` ServiceAccount, which the real server's admission
/// wants before it takes a pod and the controller manager makes only a
/// moment after the namespace.
async fn ensure_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    match Api::<ServiceAccount>::namespaced(client.clone(), name)
        .create(&PostParams::default(), &account)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating ServiceAccount {name}/default: {e}"),
    }
}

/// The first place where `have` lacks or changes what `want` says; what
/// the server added (defaults, status, managed fields) is ignored.
fn first_loss(path: &str, want: &Value, have: &Value) -> Option<String> {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().find_map(|(key, value)| {
            let child = format!("{path}/{key}");
            match h.get(key) {
                Some(got) => first_loss(&child, value, got),
                None => Some(format!("{child}: dropped by the server")),
            }
        }),
        (Value::Array(w), Value::Array(h)) if w.len() == h.len() => w
            .iter()
            .zip(h)
            .enumerate()
            .find_map(|(i, (a, b))| first_loss(&format!("{path}[{i}]"), a, b)),
        _ if want == have => None,
        _ => Some(format!("{path}: {want} became {have}")),
    }
}

/// Checks the served CRDs: Established and NamesAccepted, no
/// NonStructuralSchema, and the schema stored exactly as generated (the
/// server dropped nothing from it).
async fn check_served_crds(client: &Client, step: &str) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for want in crds() {
        let name = want.metadata.name.clone().unwrap();
        let live = api.get(&name).await.expect("get CRD");
        let conditions = live
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let status = |type_: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == type_)
                .map(|c| (c.status.clone(), c.message.clone()))
        };
        for type_ in ["Established", "NamesAccepted"] {
            assert_eq!(
                status(type_).map(|s| s.0).as_deref(),
                Some("True"),
                "{step}: {name}: {conditions:#?}"
            );
        }
        assert_eq!(
            status("NonStructuralSchema"),
            None,
            "{step}: {name}: the server found the schema not structural"
        );
        assert_eq!(
            live.spec.versions.len(),
            want.spec.versions.len(),
            "{step}: {name}"
        );
        for (live, want) in live.spec.versions.iter().zip(&want.spec.versions) {
            let live = serde_json::to_value(&live.schema).unwrap();
            let want = serde_json::to_value(&want.schema).unwrap();
            if let Some(loss) = first_loss("", &want, &live) {
                panic!("{step}: {name}: the stored schema differs: {loss}");
            }
            assert_eq!(live, want, "{step}: {name}: the server added to the schema");
        }
        assert_eq!(
            live.spec.names.short_names, want.spec.names.short_names,
            "{step}: {name}"
        );
        assert_eq!(live.spec.scope, want.spec.scope, "{step}: {name}");
    }
}

/// Item 1: `deploy/crds` and the chart's rendered CRDs go in with
/// `kubectl apply --server-side`, become Established, and are stored as
/// generated; kubectl then resolves their short names and category.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_establishes_deploy_and_chart_crds() {
    let real = Real::up();
    let client = real.client().await;

    let committed = read(COMMITTED);
    let warnings = real.apply(COMMITTED, &committed, &[]);
    assert_no_unexpected_warnings(COMMITTED, &warnings);
    real.wait_established(&crd_names());
    check_served_crds(&client, COMMITTED).await;

    // Discovery serves them under their short names and category.
    real.kubectl_ok(&["get", "cr,crs,cert,certs,issuers,ciss", "-A"], None);
    real.kubectl_ok(&["get", "cert-manager", "-A"], None);

    // The chart's CRDs over them, as helm upgrade after a manifest install
    // would: the same schemas, now with the chart's labels and keep policy.
    let rendered = render_chart(&[]);
    let docs = yaml_documents(&rendered);
    let chart_crds: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(
        chart_crds.len(),
        5,
        "the default render has cert-manager.io's four CRDs and CertificateRequestPolicy's"
    );
    let what = "the chart's CRDs";
    let warnings = real.apply(what, &yaml_stream(&chart_crds), &[]);
    assert_no_unexpected_warnings(what, &warnings);
    real.wait_established(&crd_names());
    check_served_crds(&client, what).await;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in chart_crds {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let live = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
        if let Some(loss) = first_loss("", &doc["metadata"], &live["metadata"]) {
            panic!("{what}: {name}: metadata {loss}");
        }
        assert_eq!(
            live["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}"
        );
    }
}

/// Item 2: every manifest in `deploy/` and `deploy/examples/` and every
/// chart render passes `kubectl apply --server-side --dry-run=server` with
/// strict field validation and no unexpected warning, once the CRDs and the
/// namespaces they name exist. The example pods written for the restricted
/// Pod Security Standard (those that run as non-root) pass where it is
/// enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_manifest_passes_a_server_side_dry_run() {
    let real = Real::up();
    let client = real.client().await;
    let mut all_crds = crds();
    all_crds.extend(cert_csi::api::policy_crds());
    test_kit::real::install_crds(&client, &all_crds).await;

    let examples = yaml_files("deploy/examples");
    assert!(examples.len() >= 4, "examples: {examples:?}");
    let mut sources: Vec<(String, String)> = yaml_files("deploy")
        .into_iter()
        .chain(yaml_files("deploy/crds"))
        .chain(examples.iter().cloned())
        .map(|path| {
            let text = read(&path);
            (path, text)
        })
        .collect();
    assert!(sources.iter().any(|(p, _)| p == DEPLOY));
    assert!(sources.iter().any(|(p, _)| p == DEPLOY_POLICIES));
    sources.extend(chart_renders());

    // The examples go in the kubeconfig's namespace.
    ensure_namespace(&client, "default", &[]).await;
    let mut kinds = BTreeSet::new();
    for (what, text) in &sources {
        let docs = yaml_documents(text);
        assert!(!docs.is_empty(), "{what} is empty");
        // A dry run creates nothing, so what the documents live in (or a
        // Namespace document among them declares) must exist for real.
        for doc in &docs {
            kinds.insert(doc["kind"].as_str().unwrap_or_default().to_owned());
            let namespace = match doc["kind"].as_str() {
                Some("Namespace") => doc["metadata"]["name"].as_str(),
                _ => doc["metadata"]["namespace"].as_str(),
            };
            if let Some(namespace) = namespace {
                ensure_namespace(&client, namespace, &[]).await;
            }
        }
        let warnings = real.apply(what, text, &["--dry-run=server"]);
        assert_no_unexpected_warnings(what, &warnings);
    }
    for kind in [
        "CustomResourceDefinition",
        "CSIDriver",
        "DaemonSet",
        "Deployment",
        "MutatingWebhookConfiguration",
        "ClusterIssuer",
        "Pod",
    ] {
        assert!(kinds.contains(kind), "no {kind} was judged: {kinds:?}");
    }

    // Pod Security: where "restricted" is enforced, the hardened examples
    // are admitted, and a pod that is not hardened is refused (so the
    // enforcement is on).
    let restricted = "restricted";
    ensure_namespace(
        &client,
        restricted,
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let mut hardened = 0;
    for path in &examples {
        for doc in yaml_documents(&read(path)) {
            if doc["kind"] != "Pod" || doc["spec"]["securityContext"]["runAsNonRoot"] != true {
                continue;
            }
            let what = format!("{path}: pod {}", doc["metadata"]["name"]);
            let warnings = real.apply(
                &what,
                &yaml_stream(&[&doc]),
                &["--dry-run=server", "-n", restricted],
            );
            assert_no_unexpected_warnings(&what, &warnings);
            hardened += 1;
        }
    }
    assert!(hardened >= 3, "hardened example pods: {hardened}");
    let bare = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]},
    });
    let out = real.kubectl(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-n",
            restricted,
            "-f",
            "-",
        ],
        Some(&yaml_stream(&[&bare])),
    );
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("PodSecurity"),
        "a pod without a securityContext is refused where restricted is enforced: {out:?}"
    );
}

/// The install documented in deploy/cert-csi.yaml (`kubectl apply
/// --server-side -f deploy/cert-csi.yaml`) works for real, twice (an
/// upgrade), and the server holds every field the manifest sets. The
/// CSIDrivers of the other renders (token requests; the SPIFFE driver) are
/// applied for real too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_manifest_and_csidrivers_apply_for_real() {
    let real = Real::up();
    let client = real.client().await;

    // As the README says: the release, its CRDs served, then the policies.
    let mut policy_crd = crd_names();
    policy_crd.extend(
        cert_csi::api::policy_crds()
            .into_iter()
            .filter_map(|c| c.metadata.name),
    );
    for file in [DEPLOY, DEPLOY_POLICIES] {
        let text = read(file);
        let docs = yaml_documents(&text);
        for round in ["install", "re-apply"] {
            let what = format!("{file} ({round})");
            let warnings = real.apply(&what, &text, &[]);
            assert_no_unexpected_warnings(&what, &warnings);
        }
        if file == DEPLOY {
            real.wait_established(&policy_crd);
            check_served_crds(&client, DEPLOY).await;
        }
        let live: Value =
            serde_json::from_str(&real.kubectl_ok(&["get", "-o", "json", "-f", "-"], Some(&text)))
                .unwrap();
        let items = live["items"].as_array().unwrap();
        assert_eq!(items.len(), docs.len());
        for (doc, item) in docs.iter().zip(items) {
            let what = format!("{file}: {} {}", doc["kind"], doc["metadata"]["name"]);
            assert_eq!(
                (&doc["kind"], &doc["metadata"]["name"]),
                (&item["kind"], &item["metadata"]["name"]),
                "{what}"
            );
            if let Some(loss) = first_loss("", doc, item) {
                panic!("{what}: {loss}");
            }
        }
    }

    let mut drivers = BTreeSet::new();
    for (what, rendered) in chart_renders() {
        for doc in yaml_documents(&rendered)
            .into_iter()
            .filter(|d| d["kind"] == "CSIDriver")
        {
            let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
            let what = format!("{what}: CSIDriver {name}");
            let warnings = real.apply(&what, &yaml_stream(&[&doc]), &[]);
            assert_no_unexpected_warnings(&what, &warnings);
            let live = Api::<CSIDriver>::all(client.clone())
                .get(&name)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let live = serde_json::to_value(live).unwrap();
            if let Some(loss) = first_loss("", &doc["spec"], &live["spec"]) {
                panic!("{what}: spec {loss}");
            }
            drivers.insert(name);
        }
    }
    assert_eq!(
        drivers,
        BTreeSet::from([
            "certs.example.com".to_owned(),
            "csi.cert-manager.io".to_owned(),
            "spiffe.csi.cert-manager.io".to_owned(),
        ])
    );
}

// -- Item 3: objects round-trip unpruned ------------------------------------

fn strings(values: &[&str]) -> Option<Vec<String>> {
    Some(values.iter().map(|v| (*v).to_owned()).collect())
}

fn at(seconds: i64) -> Option<Time> {
    Some(Time(jiff::Timestamp::from_second(seconds).unwrap()))
}

fn pairs(values: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// A Certificate with every field the Rust type has set: the literals
/// name every field (no `..Default::default()`), so a new field does not
/// compile until it is set here, and [`assert_fully_populated`] checks that
/// none is left `None`. The combination need not make sense to a signer
/// (isCA with server auth, literalSubject beside subject); the schema is
/// what is judged.
fn full_certificate() -> Certificate {
    let item = |dns: &str| NameConstraintItem {
        dns_domains: strings(&[dns]),
        ip_ranges: strings(&["10.0.0.0/8"]),
        email_addresses: strings(&["example.com"]),
        uri_domains: strings(&["cluster.local"]),
    };
    let mut certificate = Certificate::new(
        "full",
        CertificateSpec {
            secret_name: "full-tls".into(),
            issuer_ref: IssuerRef::cluster_issuer("full-ca"),
            common_name: Some("full.demo.svc".into()),
            dns_names: strings(&["full.demo.svc", "full.demo.svc.cluster.local"]),
            ip_addresses: strings(&["10.0.0.10", "fd00::10"]),
            uris: strings(&["spiffe://cluster.local/ns/demo/sa/full"]),
            email_addresses: strings(&["ops@example.com"]),
            other_names: Some(vec![OtherName {
                oid: Some("1.3.6.1.4.1.311.20.2.3".into()),
                utf8_value: Some("full@demo.example.com".into()),
            }]),
            subject: Some(X509Subject {
                organizations: strings(&["Example Ltd"]),
                countries: strings(&["GB"]),
                organizational_units: strings(&["Platform"]),
                localities: strings(&["London"]),
                provinces: strings(&["Greater London"]),
                street_addresses: strings(&["1 Example Street"]),
                postal_codes: strings(&["SW1A 2AA"]),
                serial_number: Some("12345".into()),
            }),
            literal_subject: Some("CN=full,O=Example Ltd,C=GB".into()),
            duration: Some("720h".into()),
            renew_before: Some("240h".into()),
            renew_before_percentage: Some(30),
            is_ca: Some(true),
            usages: strings(&["digital signature", "cert sign", "server auth"]),
            private_key: Some(CertificatePrivateKey {
                algorithm: Some("ECDSA".into()),
                size: Some(384),
                encoding: Some("PKCS8".into()),
                rotation_policy: Some("Always".into()),
            }),
            signature_algorithm: Some("ECDSAWithSHA384".into()),
            secret_template: Some(CertificateSecretTemplate {
                annotations: pairs(&[("reflector.example.com/reflection-allowed", "true")]),
                labels: pairs(&[("team", "platform")]),
            }),
            keystores: Some(CertificateKeystores {
                jks: Some(JksKeystore {
                    create: true,
                    password_secret_ref: Some(SecretKeySelector {
                        name: "jks-password".into(),
                        key: Some("password".into()),
                    }),
                    password: Some("changeit".into()),
                    alias: Some("full".into()),
                }),
                pkcs12: Some(Pkcs12Keystore {
                    create: false,
                    password_secret_ref: Some(SecretKeySelector {
                        name: "p12-password".into(),
                        key: Some("password".into()),
                    }),
                    password: Some("changeit".into()),
                    profile: Some("Modern2023".into()),
                }),
            }),
            additional_output_formats: Some(vec![
                CertificateAdditionalOutputFormat {
                    type_: "DER".into(),
                },
                CertificateAdditionalOutputFormat {
                    type_: "CombinedPEM".into(),
                },
            ]),
            revision_history_limit: Some(3),
            encode_usages_in_request: Some(false),
            name_constraints: Some(NameConstraints {
                critical: Some(true),
                permitted: Some(item("demo.svc")),
                excluded: Some(item("evil.example")),
            }),
        },
    );
    certificate.metadata.namespace = Some("demo".into());
    certificate.metadata.labels = pairs(&[("app", "full")]);
    certificate.status = Some(CertificateStatus {
        conditions: Some(vec![CertificateCondition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            reason: Some("Ready".into()),
            message: Some("Certificate is up to date and has not expired".into()),
            last_transition_time: at(1_740_823_202),
            observed_generation: Some(1),
        }]),
        not_before: at(1_740_823_201),
        not_after: at(1_743_415_201),
        renewal_time: at(1_742_551_201),
        revision: Some(2),
        next_private_key_secret_name: Some("full-tls-x7k2p".into()),
        failed_issuance_attempts: Some(1),
        last_failure_time: at(1_740_736_800),
    });
    certificate
}

/// A CertificateRequest with every field set, as the webhook and signer
/// leave it.
fn full_certificate_request() -> CertificateRequest {
    let csr = "-----BEGIN CERTIFICATE REQUEST-----\nMIIBIzCBygIBADAXMRUwEwYDVQQDDAxhcHAuZGVtby5zdmM=\n-----END CERTIFICATE REQUEST-----\n";
    let chain = "-----BEGIN CERTIFICATE-----\nMIIBrjCCAVWgAwIBAgIU\n-----END CERTIFICATE-----\n";
    let mut request = CertificateRequest::new(
        "full-1",
        CertificateRequestSpec {
            request: PemBytes::from(csr),
            issuer_ref: IssuerRef::issuer("full-ca"),
            duration: Some("2160h0m0s".into()),
            is_ca: Some(false),
            usages: strings(&["digital signature", "key encipherment", "server auth"]),
            username: Some("system:serviceaccount:demo:app".into()),
            uid: Some("1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d".into()),
            groups: strings(&["system:serviceaccounts", "system:authenticated"]),
            extra: Some(BTreeMap::from([(
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec!["app-7c9d5b6f8-abcde".to_owned()],
            )])),
        },
    );
    request.metadata.namespace = Some("demo".into());
    request.metadata.annotations = pairs(&[("cert-manager.io/certificate-name", "full")]);
    request.status = Some(CertificateRequestStatus {
        conditions: Some(vec![
            CertificateRequestCondition {
                type_: "Approved".into(),
                status: ConditionStatus::True,
                reason: Some("cert-manager.io".into()),
                message: Some("Certificate request has been approved by cert-manager.io".into()),
                last_transition_time: at(1_740_823_200),
            },
            CertificateRequestCondition {
                type_: "Ready".into(),
                status: ConditionStatus::True,
                reason: Some("Issued".into()),
                message: Some("Certificate fetched from issuer successfully".into()),
                last_transition_time: at(1_740_823_201),
            },
        ]),
        certificate: Some(PemBytes::from(chain)),
        ca: Some(PemBytes::from(chain)),
        failure_time: at(1_740_823_202),
    });
    request
}

/// An issuer spec with every type set at once: the server does not enforce
/// "exactly one" (cert-csi does, in `issuer_type`), and every block must
/// survive. The raw blocks hold nested objects that must not be pruned.
fn full_issuer_spec() -> IssuerSpec {
    IssuerSpec {
        self_signed: Some(SelfSignedIssuer {
            crl_distribution_points: strings(&["http://crl.example.com/self.crl"]),
        }),
        ca: Some(CaIssuer {
            secret_name: "full-ca-key-pair".into(),
            crl_distribution_points: strings(&["http://crl.example.com/full.crl"]),
            ocsp_servers: strings(&["http://ocsp.example.com"]),
            issuing_certificate_urls: strings(&["http://ca.example.com/full.crt"]),
        }),
        acme: Some(json!({
            "server": "https://acme.example.com/directory",
            "privateKeySecretRef": {"name": "acme-account"},
            "solvers": [{"http01": {"ingress": {"podTemplate": {"spec": {"nodeSelector": {"a": "b"}}}}}}],
        })),
        vault: Some(json!({
            "server": "https://vault.example.com",
            "path": "pki/sign/example",
            "auth": {"appRole": {"path": "approle", "roleId": "r", "secretRef": {"name": "s", "key": "k"}}},
        })),
        venafi: Some(json!({
            "zone": "Default",
            "cloud": {"apiTokenSecretRef": {"name": "venafi", "key": "token"}},
        })),
    }
}

fn full_issuer_status() -> IssuerStatus {
    IssuerStatus {
        conditions: Some(vec![IssuerCondition {
            type_: "Ready".into(),
            status: ConditionStatus::True,
            reason: Some("KeyPairVerified".into()),
            message: Some("Signing CA verified".into()),
            last_transition_time: at(1_740_733_200),
            observed_generation: Some(1),
        }]),
        acme: Some(json!({
            "uri": "https://acme.example.com/acct/1",
            "lastRegisteredEmail": "ops@example.com",
            "nested": {"kept": [1, {"deep": true}]},
        })),
    }
}

/// Every property path of a schema below `path` (`.field`, `[]` for array
/// items, `.*` for map values); a block that preserves unknown fields is
/// one leaf.
fn schema_paths(path: &str, schema: &JSONSchemaProps, out: &mut BTreeSet<String>) {
    out.insert(path.to_owned());
    if schema.x_kubernetes_preserve_unknown_fields == Some(true) {
        return;
    }
    for (name, sub) in schema.properties.iter().flatten() {
        schema_paths(&format!("{path}.{name}"), sub, out);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(sub)) = &schema.additional_properties {
        schema_paths(&format!("{path}.*"), sub, out);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(sub)) = &schema.items {
        schema_paths(&format!("{path}[]"), sub, out);
    }
}

/// The schema paths that `value` sets.
fn value_paths(path: &str, schema: &JSONSchemaProps, value: &Value, out: &mut BTreeSet<String>) {
    out.insert(path.to_owned());
    if schema.x_kubernetes_preserve_unknown_fields == Some(true) {
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if let Some(sub) = schema.properties.as_ref().and_then(|p| p.get(key)) {
                    value_paths(&format!("{path}.{key}"), sub, child, out);
                } else if let Some(JSONSchemaPropsOrBool::Schema(sub)) =
                    &schema.additional_properties
                {
                    value_paths(&format!("{path}.*"), sub, child, out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(sub)) = &schema.items {
                for item in items {
                    value_paths(&format!("{path}[]"), sub, item, out);
                }
            }
        }
        _ => {}
    }
}

/// Every spec and status field the CRD declares is set in `objects`, so
/// their round trip checks the whole schema.
fn assert_fully_populated(kind: &str, objects: &[Value]) {
    let crd = by_kind(kind);
    let root = root_schema(&crd);
    let mut declared = BTreeSet::new();
    let mut set = BTreeSet::new();
    for part in ["spec", "status"] {
        let schema = &root.properties.as_ref().unwrap()[part];
        schema_paths(part, schema, &mut declared);
        for object in objects {
            value_paths(part, schema, &object[part], &mut set);
        }
    }
    let unset: Vec<&String> = declared.difference(&set).collect();
    assert!(
        unset.is_empty(),
        "{kind}: the fully populated objects leave {unset:?} unset, so no round trip checks them; set them in this file"
    );
}

/// The first difference between what was sent and what came back.
fn first_difference(path: &str, sent: &Value, back: &Value) -> Option<String> {
    if let Some(loss) = first_loss(path, sent, back) {
        return Some(loss);
    }
    // Anything the server added inside spec or status.
    first_loss(path, back, sent).map(|added| format!("added by the server: {added}"))
}

/// Writes `object` with server-side apply (strict field validation: an
/// undeclared field is an error, not a silent prune), its status through
/// the status subresource, reads it back with the Rust type, and checks that
/// spec, status, labels and annotations are exactly what was written.
/// Returns what was written, as JSON.
async fn round_trip<K>(api: &Api<K>, object: &K) -> Value
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let sent = serde_json::to_value(object).unwrap();
    let name = object.meta().name.clone().unwrap();
    let what = format!("{} {name}", sent["kind"].as_str().unwrap());
    let params = PatchParams::apply(MANAGER).validation_strict();
    let mut body = sent.clone();
    body.as_object_mut().unwrap().remove("status");
    api.patch(&name, &params, &Patch::Apply(&body))
        .await
        .unwrap_or_else(|e| panic!("the real API server refused {what}: {e}"));
    if !sent["status"].is_null() {
        let status = json!({
            "apiVersion": sent["apiVersion"],
            "kind": sent["kind"],
            "metadata": {"name": name, "namespace": sent["metadata"]["namespace"]},
            "status": sent["status"],
        });
        api.patch_status(&name, &params, &Patch::Apply(&status))
            .await
            .unwrap_or_else(|e| panic!("the real API server refused {what}'s status: {e}"));
    }
    let back = api.get(&name).await.unwrap();
    let got = serde_json::to_value(&back).unwrap();
    for part in ["spec", "status"] {
        if let Some(diff) = first_difference(part, &sent[part], &got[part]) {
            panic!("{what}: {diff}");
        }
    }
    for part in ["labels", "annotations"] {
        if let Some(loss) = first_loss(part, &sent["metadata"][part], &got["metadata"][part]) {
            panic!("{what}: metadata {loss}");
        }
    }
    sent
}

/// Only what a user writes: no uid, resourceVersion, generation or owner
/// (the garbage collector would delete an object whose owner is missing).
fn as_written(mut doc: Value) -> Value {
    let metadata = doc["metadata"].as_object_mut().unwrap();
    metadata.retain(|k, _| ["name", "namespace", "labels", "annotations"].contains(&k.as_str()));
    doc
}

/// Item 3: fully populated objects of the four kinds, built from the Rust
/// types, the cert-manager fixtures and the example ClusterIssuer come back
/// from the real server exactly as written: the structural schemas prune
/// nothing cert-csi writes. kubectl's printer columns show their values,
/// and the server does prune and refuse what the schemas do not declare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_round_trips_through_a_real_server_unpruned() {
    let real = Real::up();
    let client = real.client().await;
    test_kit::real::install_crds(&client, &crds()).await;
    for namespace in ["demo", "cert-manager", "default"] {
        ensure_namespace(&client, namespace, &[]).await;
    }
    let certificates: Api<Certificate> = Api::namespaced(client.clone(), "demo");
    let requests: Api<CertificateRequest> = Api::namespaced(client.clone(), "demo");
    let issuers: Api<Issuer> = Api::namespaced(client.clone(), "demo");
    let cluster_issuers: Api<ClusterIssuer> = Api::all(client.clone());

    // Fully populated, from the Rust types.
    let certificate = round_trip(&certificates, &full_certificate()).await;
    assert_fully_populated("Certificate", &[certificate]);
    let request = round_trip(&requests, &full_certificate_request()).await;
    assert_fully_populated("CertificateRequest", &[request]);
    let mut issuer = Issuer::new("full-ca", full_issuer_spec());
    issuer.metadata.namespace = Some("demo".into());
    issuer.status = Some(full_issuer_status());
    let issuer = round_trip(&issuers, &issuer).await;
    assert_fully_populated("Issuer", &[issuer]);
    let mut cluster_issuer = ClusterIssuer::new("full-ca", full_issuer_spec());
    cluster_issuer.status = Some(full_issuer_status());
    let cluster_issuer = round_trip(&cluster_issuers, &cluster_issuer).await;
    assert_fully_populated("ClusterIssuer", &[cluster_issuer]);

    // Objects as cert-manager and its users write them.
    let mut fixtures = 0;
    for path in yaml_files("tests/fixtures/cert-manager") {
        let doc = as_written(serde_yaml_ng::from_str(&read(&path)).unwrap());
        let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("default");
        ensure_namespace(&client, namespace, &[]).await;
        let sent = match doc["kind"].as_str().unwrap() {
            "Certificate" => {
                round_trip(
                    &Api::<Certificate>::namespaced(client.clone(), namespace),
                    &serde_json::from_value(doc.clone()).unwrap(),
                )
                .await
            }
            "CertificateRequest" => {
                round_trip(
                    &Api::<CertificateRequest>::namespaced(client.clone(), namespace),
                    &serde_json::from_value(doc.clone()).unwrap(),
                )
                .await
            }
            "Issuer" => {
                round_trip(
                    &Api::<Issuer>::namespaced(client.clone(), namespace),
                    &serde_json::from_value(doc.clone()).unwrap(),
                )
                .await
            }
            "ClusterIssuer" => {
                round_trip(
                    &cluster_issuers,
                    &serde_json::from_value(doc.clone()).unwrap(),
                )
                .await
            }
            other => panic!("{path}: unexpected kind {other}"),
        };
        // The Rust types wrote exactly what the fixture says.
        assert_eq!(sent, doc, "{path}");
        fixtures += 1;
    }
    assert!(fixtures >= 4);

    // The example ClusterIssuer, applied as its comment says, reads back
    // whole through the Rust type.
    let example = "deploy/examples/issuer.yaml";
    let text = read(example);
    let warnings = real.apply(example, &text, &[]);
    assert_no_unexpected_warnings(example, &warnings);
    for doc in yaml_documents(&text) {
        assert_eq!(doc["kind"], "ClusterIssuer", "{example}");
        let name = doc["metadata"]["name"].as_str().unwrap();
        let back = cluster_issuers.get(name).await.unwrap();
        let back = serde_json::to_value(&back).unwrap();
        if let Some(diff) = first_difference("spec", &doc["spec"], &back["spec"]) {
            panic!("{example}: {diff}");
        }
    }

    // The server evaluates the printer columns' JSONPaths.
    let table = real.kubectl_ok(&["get", "crs", "-n", "demo", "full-1"], None);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "APPROVED",
            "DENIED",
            "READY",
            "ISSUER",
            "REQUESTER",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        [
            "full-1",
            "True",
            "True",
            "full-ca",
            "system:serviceaccount:demo:app"
        ]
    );
    let table = real.kubectl_ok(&["get", "certs", "-n", "demo", "full"], None);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["full", "True", "full-tls"]);

    // The checks above have teeth: the server prunes an undeclared field
    // (and strict validation refuses it), and refuses a mistyped one.
    let mut undeclared = serde_json::to_value(full_certificate()).unwrap();
    undeclared["metadata"]["name"] = json!("undeclared");
    undeclared["spec"]["undeclared"] = json!(1);
    undeclared.as_object_mut().unwrap().remove("status");
    let strict = certificates
        .patch(
            "undeclared",
            &PatchParams::apply(MANAGER).validation_strict(),
            &Patch::Apply(&undeclared),
        )
        .await;
    assert!(
        matches!(&strict, Err(kube::Error::Api(s)) if s.message.contains("undeclared")),
        "{strict:?}"
    );
    // A plain create (no field validation asked for) is taken, pruned.
    let resource = kube::core::ApiResource::erase::<Certificate>(&());
    let raw_api =
        Api::<kube::core::DynamicObject>::namespaced_with(client.clone(), "demo", &resource);
    raw_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(undeclared.clone()).unwrap(),
        )
        .await
        .unwrap();
    let raw = raw_api.get("undeclared").await.unwrap();
    assert_eq!(raw.data["spec"].get("undeclared"), None, "pruned");
    assert_eq!(raw.data["spec"]["secretName"], "full-tls");
    let mut mistyped = undeclared.clone();
    mistyped["metadata"]["name"] = json!("mistyped");
    mistyped["spec"]
        .as_object_mut()
        .unwrap()
        .remove("undeclared");
    mistyped["spec"]["duration"] = json!(5);
    let refused = raw_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(mistyped).unwrap(),
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("spec.duration")),
        "{refused:?}"
    );
}
