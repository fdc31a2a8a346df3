//! Object-metadata validation, as strict as kube-apiserver's, so that code
//! which passes against the sandbox does not fail on a real cluster.

use serde_json::{Map, Value};

use super::error::FieldError;

pub const DNS1123_SUBDOMAIN_MAX: usize = 253;
pub const DNS1123_LABEL_MAX: usize = 63;
pub const QUALIFIED_NAME_MAX: usize = 63;
pub const LABEL_VALUE_MAX: usize = 63;
/// kube-apiserver's limit on the summed size of all annotation keys and values.
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

const SUBDOMAIN_HELP: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_HELP: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_HELP: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_HELP: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, without the length limit.
fn is_dns_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_lower_alnum(b[0])
        && is_lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
}

/// Problems with `s` as an RFC 1123 label (namespace names).
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_LABEL_MAX {
        errs.push(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !is_dns_label_chars(s) {
        errs.push(LABEL_HELP.to_string());
    }
    errs
}

/// Problems with `s` as an RFC 1123 subdomain (most object names).
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if s.is_empty() || !s.split('.').all(is_dns_label_chars) {
        errs.push(SUBDOMAIN_HELP.to_string());
    }
    errs
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    !b.is_empty()
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter()
            .all(|&c| alnum(c) || c == b'-' || c == b'_' || c == b'.')
}

/// Problems with a label or annotation key: an optional DNS-subdomain prefix
/// and `/`, then a name of at most 63 characters.
pub fn qualified_name(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|e| format!("prefix part {e}")),
                );
            }
            *name
        }
        _ => {
            errs.push(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
                .to_string(),
            );
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else {
        if name.len() > QUALIFIED_NAME_MAX {
            errs.push(format!(
                "name part must be no more than {QUALIFIED_NAME_MAX} characters"
            ));
        }
        if !is_qualified_name_part(name) {
            errs.push(QUALIFIED_HELP.to_string());
        }
    }
    errs
}

/// Problems with a label value (may be empty).
pub fn label_value(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > LABEL_VALUE_MAX {
        errs.push(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    if !v.is_empty() && !is_qualified_name_part(v) {
        errs.push(LABEL_VALUE_HELP.to_string());
    }
    errs
}

/// How a resource's object names are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    Subdomain,
    Label,
}

pub fn name_errors(rule: NameRule, name: &str) -> Vec<String> {
    match rule {
        NameRule::Subdomain => dns1123_subdomain(name),
        NameRule::Label => dns1123_label(name),
    }
}

fn string_map<'a>(
    meta: &'a Map<String, Value>,
    field: &str,
    errs: &mut Vec<FieldError>,
) -> Vec<(&'a str, &'a str)> {
    match meta.get(field) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => {
            let mut out = Vec::with_capacity(m.len());
            for (k, v) in m {
                match v {
                    Value::String(s) => out.push((k.as_str(), s.as_str())),
                    other => errs.push(FieldError::invalid(
                        format!("metadata.{field}[{k}]"),
                        other.to_string(),
                        "must be a string",
                    )),
                }
            }
            out
        }
        Some(other) => {
            errs.push(FieldError::invalid(
                format!("metadata.{field}"),
                other.to_string(),
                "must be a map of string keys to string values",
            ));
            Vec::new()
        }
    }
}

/// Validates `metadata` of an object about to be stored. `name` is checked
/// only when present (generateName is resolved before this runs).
pub fn validate_metadata(meta: &Map<String, Value>, rule: NameRule) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match meta.get("name").and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(name) => {
            for e in name_errors(rule, name) {
                errs.push(FieldError::invalid("metadata.name", name, e));
            }
        }
    }
    for (k, v) in string_map(meta, "labels", &mut errs) {
        for e in qualified_name(k) {
            errs.push(FieldError::invalid("metadata.labels", k, e));
        }
        for e in label_value(v) {
            errs.push(FieldError::invalid("metadata.labels", v, e));
        }
    }
    let mut total = 0usize;
    for (k, v) in string_map(meta, "annotations", &mut errs) {
        // The real server checks annotation keys lower-cased.
        for e in qualified_name(&k.to_ascii_lowercase()) {
            errs.push(FieldError::invalid("metadata.annotations", k, e));
        }
        total += k.len() + v.len();
    }
    if total > ANNOTATIONS_MAX_BYTES {
        errs.push(FieldError::too_long(
            "metadata.annotations",
            ANNOTATIONS_MAX_BYTES,
        ));
    }
    if let Some(f) = meta.get("finalizers") {
        match f.as_array() {
            Some(list) => {
                for item in list {
                    match item.as_str() {
                        Some(s) => {
                            for e in qualified_name(s) {
                                errs.push(FieldError::invalid("metadata.finalizers", s, e));
                            }
                        }
                        None => errs.push(FieldError::invalid(
                            "metadata.finalizers",
                            item.to_string(),
                            "must be a string",
                        )),
                    }
                }
            }
            None if f.is_null() => {}
            None => errs.push(FieldError::invalid(
                "metadata.finalizers",
                f.to_string(),
                "must be a list of strings",
            )),
        }
    }
    if let Some(refs) = meta.get("ownerReferences").and_then(Value::as_array) {
        for (i, r) in refs.iter().enumerate() {
            for field in ["apiVersion", "kind", "name", "uid"] {
                if r.get(field)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    errs.push(FieldError::required(
                        format!("metadata.ownerReferences[{i}].{field}"),
                        "",
                    ));
                }
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subdomains() {
        for ok in [
            "a",
            "a.b",
            "foo-bar.example.com",
            "0",
            "x1-2-3",
            &"a".repeat(253),
        ] {
            assert!(dns1123_subdomain(ok).is_empty(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a_b",
            "a b",
            &"a".repeat(254),
            "é",
        ] {
            assert!(!dns1123_subdomain(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        assert!(dns1123_label("kube-system").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
        assert!(dns1123_label(&"a".repeat(63)).is_empty());
        assert!(!dns1123_label(&"a".repeat(64)).is_empty());
    }

    #[test]
    fn qualified_names() {
        for ok in [
            "app",
            "App_1.x-y",
            "example.com/app",
            "a/B",
            &"a".repeat(63),
            &format!("{}/x", "a".repeat(253)),
        ] {
            assert!(qualified_name(ok).is_empty(), "{ok}");
        }
        for bad in [
            "",
            "/app",
            "app/",
            "a/b/c",
            "_app",
            "app-",
            "Example.com/app",
            &"a".repeat(64),
            &format!("{}/x", "a".repeat(254)),
        ] {
            assert!(!qualified_name(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn label_values() {
        for ok in ["", "v", "V1.2_3-x", &"a".repeat(63)] {
            assert!(label_value(ok).is_empty(), "{ok}");
        }
        for bad in ["-v", "v-", "a/b", "a b", &"a".repeat(64)] {
            assert!(!label_value(bad).is_empty(), "{bad}");
        }
    }

    fn meta(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn metadata_checks_name_labels_annotations() {
        assert!(
            validate_metadata(
                &meta(json!({"name": "ok", "labels": {"a": "b"}})),
                NameRule::Subdomain
            )
            .is_empty()
        );
        let errs = validate_metadata(&meta(json!({})), NameRule::Subdomain);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "metadata.name");
        let errs = validate_metadata(&meta(json!({"name": "a.b"})), NameRule::Label);
        assert_eq!(errs.len(), 1);
        let errs = validate_metadata(
            &meta(json!({"name": "ok", "labels": {"bad key": "v", "k": "bad value"}})),
            NameRule::Subdomain,
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        let errs = validate_metadata(
            &meta(json!({"name": "ok", "labels": {"k": 1}})),
            NameRule::Subdomain,
        );
        assert_eq!(errs.len(), 1);
        let big = "x".repeat(ANNOTATIONS_MAX_BYTES);
        let errs = validate_metadata(
            &meta(json!({"name": "ok", "annotations": {"k": big}})),
            NameRule::Subdomain,
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "metadata.annotations");
        // Upper-case annotation keys are accepted (checked lower-cased).
        assert!(
            validate_metadata(
                &meta(json!({"name": "ok", "annotations": {"Example.COM/Key": "v"}})),
                NameRule::Subdomain
            )
            .is_empty()
        );
        let errs = validate_metadata(
            &meta(
                json!({"name": "ok", "ownerReferences": [{"apiVersion": "v1", "kind": "Secret", "name": "o"}]}),
            ),
            NameRule::Subdomain,
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "metadata.ownerReferences[0].uid");
    }
}
