//! A minimal OpenAPI v3 surface. kubectl reads it to learn that the server
//! validates fields itself (`fieldValidation` on PATCH), and then sends
//! `fieldValidation=Strict` instead of validating on the client against a
//! full schema, which the sandbox does not have for built-in kinds.

use serde_json::{Map, Value, json};

use super::resources::Registry;

/// A stable short hash, so kubectl's disk cache notices when CRDs change.
fn fnv(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Every served group version, as `(group, version)`.
fn group_versions(reg: &Registry) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for d in reg.all() {
        for v in &d.versions {
            let gv = (d.group.clone(), v.name.clone());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
    }
    out.sort();
    out
}

/// `/openapi/v3`: one entry per group version.
pub fn root(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (g, v) in group_versions(reg) {
        let doc = group_version(reg, &g, &v)
            .map(|d| d.to_string())
            .unwrap_or_default();
        let p = gv_path(&g, &v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", fnv(&doc))}),
        );
    }
    json!({"paths": paths})
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

/// `/openapi/v3/apis/{group}/{version}`: paths with the GVK of each kind and
/// the query parameters the sandbox honours.
pub fn group_version(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for d in reg
        .all()
        .filter(|d| d.group == group && d.version(version).is_some())
    {
        let gvk = json!([{"group": d.group, "version": version, "kind": d.kind}]);
        let prefix = format!("/{}", gv_path(group, version));
        let item = if d.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", d.plural)
        } else {
            format!("{prefix}/{}/{{name}}", d.plural)
        };
        let op = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", d.kind),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk[0],
                "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation"), param("force")],
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(item, json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
        // A schema that accepts any object; clients that look a kind up by
        // GVK find it, and the server does the real validation.
        let schema_name = format!(
            "{}.{}.{}",
            if group.is_empty() {
                "io.k8s.api.core"
            } else {
                group
            },
            version,
            d.kind
        );
        schemas.insert(
            schema_name,
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true, "x-kubernetes-group-version-kind": gvk}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::builtins;

    #[test]
    fn root_lists_each_group_version_with_a_hash() {
        let reg = Registry::new(builtins());
        let r = root(&reg);
        let url = r["paths"]["api/v1"]["serverRelativeURL"].as_str().unwrap();
        assert!(url.starts_with("/openapi/v3/api/v1?hash="), "{url}");
        assert!(r["paths"]["apis/coordination.k8s.io/v1"].is_object());
    }

    #[test]
    fn group_version_declares_field_validation_on_patch() {
        let reg = Registry::new(builtins());
        let doc = group_version(&reg, "", "v1").unwrap();
        let secret = &doc["paths"]["/api/v1/namespaces/{namespace}/secrets/{name}"]["patch"];
        assert_eq!(secret["x-kubernetes-group-version-kind"]["kind"], "Secret");
        assert!(
            secret["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(doc["paths"]["/api/v1/namespaces/{name}"].is_object());
        assert!(group_version(&reg, "nope.io", "v1").is_none());
    }
}
