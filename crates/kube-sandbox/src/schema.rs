//! Structural-schema handling for custom resources: pruning of undeclared
//! fields, defaulting, and the value checks that the real server makes.
//! Pure functions over `serde_json::Value`.

use serde_json::{Map, Value};

use super::error::FieldError;

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool).unwrap_or(false)
}

/// Removes fields the schema does not declare, drops `null`s where the
/// schema does not allow them, and fills in `default`s, as kube-apiserver
/// does for a custom resource. `apiVersion`, `kind` and `metadata` at the
/// top level (and of embedded resources) are always kept.
///
/// Returns the paths of the fields it removed (not counting dropped nulls),
/// which `fieldValidation=Strict` turns into an error.
pub fn prune(object: &mut Value, schema: &Value) -> Vec<String> {
    let mut removed = Vec::new();
    prune_at(object, schema, true, "", &mut removed);
    removed
}

fn prune_at(
    v: &mut Value,
    schema: &Value,
    is_resource: bool,
    path: &str,
    removed: &mut Vec<String>,
) {
    match v {
        Value::Object(map) => prune_object(map, schema, is_resource, path, removed),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    let p = format!("{path}[{i}]");
                    prune_at(
                        item,
                        item_schema,
                        flag(item_schema, "x-kubernetes-embedded-resource"),
                        &p,
                        removed,
                    );
                }
            }
        }
        _ => {}
    }
}

fn prune_object(
    map: &mut Map<String, Value>,
    schema: &Value,
    is_resource: bool,
    path: &str,
    removed: &mut Vec<String>,
) {
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        if is_resource && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let sub = props.and_then(|p| p.get(&key)).or(match additional {
            Some(s @ Value::Object(_)) => Some(s),
            _ => None,
        });
        match sub {
            Some(sub) => {
                let value = map.get_mut(&key).expect("key listed above");
                if value.is_null() && !flag(sub, "nullable") {
                    map.remove(&key);
                } else {
                    prune_at(
                        value,
                        sub,
                        flag(sub, "x-kubernetes-embedded-resource"),
                        &join(path, &key),
                        removed,
                    );
                }
            }
            None => {
                let keep = preserve || additional.and_then(Value::as_bool).unwrap_or(false);
                if !keep {
                    map.remove(&key);
                    removed.push(join(path, &key));
                }
            }
        }
    }
    if let Some(props) = props {
        for (key, sub) in props {
            if let Some(default) = sub.get("default").filter(|d| !d.is_null())
                && !map.contains_key(key)
            {
                let mut d = default.clone();
                prune_at(
                    &mut d,
                    sub,
                    flag(sub, "x-kubernetes-embedded-resource"),
                    "",
                    &mut Vec::new(),
                );
                map.insert(key.clone(), d);
            }
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks types, `required`, `enum` and size limits, returning every problem.
/// Run after [`prune`], so only declared fields are seen.
pub fn validate(object: &Value, schema: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_at(object, schema, "", true, &mut errs);
    errs
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn validate_at(
    v: &Value,
    schema: &Value,
    path: &str,
    is_resource: bool,
    errs: &mut Vec<FieldError>,
) {
    let shown = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if !flag(schema, "nullable") && schema.get("type").is_some() {
            errs.push(FieldError::invalid(
                shown,
                "null",
                format!(
                    "{shown} in body must be of type {}",
                    schema["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let actual = type_name(v);
    if flag(schema, "x-kubernetes-int-or-string") {
        if !matches!(actual, "integer" | "string") {
            errs.push(FieldError::invalid(
                shown,
                actual,
                format!("{shown} in body must be of type integer or string: {actual:?}"),
            ));
            return;
        }
    } else if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let ok = want == actual || (want == "number" && actual == "integer");
        if !ok {
            errs.push(FieldError::invalid(
                shown,
                actual,
                format!("{shown} in body must be of type {want}: {actual:?}"),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let names: Vec<String> = allowed
            .iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| a.to_string())
            })
            .collect();
        let shown_value = v
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        errs.push(FieldError::unsupported(shown, shown_value, &names));
    }
    match v {
        Value::String(s) => {
            if schema.get("format").and_then(Value::as_str) == Some("byte") {
                use base64::Engine as _;
                if base64::engine::general_purpose::STANDARD.decode(s).is_err() {
                    errs.push(FieldError::invalid(
                        shown,
                        s.clone(),
                        format!("{shown} in body must be of type byte: {s:?}"),
                    ));
                }
            }
            let n = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && n > max
            {
                errs.push(FieldError::too_long(shown, max as usize));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && n < min
            {
                errs.push(FieldError::invalid(
                    shown,
                    s.clone(),
                    format!("{shown} in body should be at least {min} chars long"),
                ));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                errs.push(FieldError::invalid(
                    shown,
                    n.to_string(),
                    format!("{shown} in body should be greater than or equal to {min}"),
                ));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                errs.push(FieldError::invalid(
                    shown,
                    n.to_string(),
                    format!("{shown} in body should be less than or equal to {max}"),
                ));
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                errs.push(FieldError::invalid(
                    shown,
                    items.len().to_string(),
                    format!("must have at most {max} items"),
                ));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                errs.push(FieldError::invalid(
                    shown,
                    items.len().to_string(),
                    format!("{shown} in body should have at least {min} items"),
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_at(item, item_schema, &format!("{path}[{i}]"), false, errs);
                }
            }
        }
        Value::Object(map) => {
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        errs.push(FieldError::required(join(path, r), ""));
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in map {
                if is_resource && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(sub) = props.and_then(|p| p.get(k)).or(additional) {
                    validate_at(
                        child,
                        sub,
                        &join(path, k),
                        flag(sub, "x-kubernetes-embedded-resource"),
                        errs,
                    );
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "maxLength": 5},
                        "blob": {"type": "string", "format": "byte"},
                        "mode": {"type": "string", "enum": ["A", "B"], "default": "A"},
                        "port": {"x-kubernetes-int-or-string": true},
                        "count": {"type": "integer", "minimum": 1},
                        "opt": {"type": "string", "nullable": true},
                        "list": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "integer"}}}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "anything": {"type": "object", "additionalProperties": true},
                        "embedded": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object"}}}
                    }
                },
                "status": {"type": "object", "properties": {"ok": {"type": "boolean"}}}
            }
        })
    }

    #[test]
    fn prunes_undeclared_fields_recursively() {
        let mut obj = json!({
            "apiVersion": "x/v1", "kind": "K",
            "metadata": {"name": "n", "labels": {"a": "b"}},
            "junk": 1,
            "spec": {
                "name": "a", "extra": true, "count": 2, "opt": null, "port": null,
                "list": [{"x": 1, "y": 2}],
                "free": {"any": {"thing": 1}},
                "labels": {"k": "v"},
                "anything": {"z": [1]},
                "embedded": {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "e"}, "spec": {}, "data": {}}
            },
            "status": {"ok": true, "bad": 1}
        });
        let mut removed = prune(&mut obj, &schema());
        removed.sort();
        assert_eq!(
            removed,
            vec![
                "junk",
                "spec.embedded.data",
                "spec.extra",
                "spec.list[0].y",
                "status.bad"
            ]
        );
        assert_eq!(
            obj,
            json!({
                "apiVersion": "x/v1", "kind": "K",
                "metadata": {"name": "n", "labels": {"a": "b"}},
                "spec": {
                    "name": "a", "count": 2, "opt": null, "mode": "A",
                    "list": [{"x": 1}],
                    "free": {"any": {"thing": 1}},
                    "labels": {"k": "v"},
                    "anything": {"z": [1]},
                    "embedded": {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "e"}, "spec": {}}
                },
                "status": {"ok": true}
            })
        );
    }

    #[test]
    fn a_schema_without_properties_prunes_everything_below_it() {
        let mut obj = json!({"kind": "K", "spec": {"a": 1}});
        prune(
            &mut obj,
            &json!({"type": "object", "properties": {"spec": {"type": "object"}}}),
        );
        assert_eq!(obj, json!({"kind": "K", "spec": {}}));
    }

    #[test]
    fn validation_finds_each_problem() {
        let s = schema();
        assert!(
            validate(
                &json!({"spec": {"name": "ok", "port": "https", "count": 1}}),
                &s
            )
            .is_empty()
        );
        assert!(validate(&json!({"spec": {"name": "ok", "port": 443}}), &s).is_empty());
        let errs = validate(
            &json!({"spec": {"mode": "C", "count": 0, "port": true, "list": [{"x": "1"}], "labels": {"a": 1}}, "status": {"ok": "yes"}}),
            &s,
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for want in [
            "spec.name",
            "spec.mode",
            "spec.count",
            "spec.port",
            "spec.list[0].x",
            "spec.labels.a",
            "status.ok",
        ] {
            assert!(fields.contains(&want), "{want} missing from {errs:?}");
        }
        let errs = validate(&json!({"spec": {"name": "toolong"}}), &s);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.name");
        assert!(validate(&json!({"spec": {"name": "a", "blob": "aGk="}}), &s).is_empty());
        let errs = validate(&json!({"spec": {"name": "a", "blob": "not base64!"}}), &s);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.blob");
        let errs = validate(&json!({"spec": "str"}), &s);
        assert_eq!(
            errs[0].to_string(),
            r#"spec: Invalid value: "string": spec in body must be of type object: "string""#
        );
    }
}
