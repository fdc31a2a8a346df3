//! The CRDs: the committed copy matches the binary, and the schemas are ones
//! a real API server accepts and that keep every field cert-csi uses.

use std::path::Path;
use std::process::Command;

use cert_csi::api::{crds, crds_yaml};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps,
    JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

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
